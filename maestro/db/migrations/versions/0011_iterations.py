"""iterations of composite steps; runs by parent run

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30 12:00:00

`iterations` holds one row per iteration of a foreach or while step (its item, status,
outputs, error), so that progress and pages of iterations need no Temporal history. Runs that a
subworkflow step started are found by their parent run through an expression index on their
cause.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "iterations",
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("step_path", sa.String(length=300), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("params", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("outputs", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column(
            "steps",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("temporal_workflow_id", sa.String(length=1000), nullable=True),
        sa.Column("skip_requested", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["runs.run_id"],
            name=op.f("fk_iterations_run_id_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("run_id", "step_path", "index", name=op.f("pk_iterations")),
    )
    op.create_index("ix_iterations_status", "iterations", ["run_id", "step_path", "status"])
    op.execute(
        "CREATE INDEX ix_runs_parent_run ON runs ((cause -> 'detail' ->> 'parent_run_id'))"
        " WHERE cause ->> 'kind' = 'subworkflow'"
    )


def downgrade() -> None:
    op.execute("DROP INDEX ix_runs_parent_run")
    op.drop_index("ix_iterations_status", table_name="iterations")
    op.drop_table("iterations")
