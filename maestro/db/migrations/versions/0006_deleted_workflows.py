"""deleted workflows: the version and run counters a deleted workflow id had used

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27 14:10:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deleted_workflows",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("latest_version", sa.Integer(), nullable=False),
        sa.Column("run_counter", sa.BigInteger(), nullable=False),
        sa.Column(
            "deleted_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deleted_workflows")),
    )


def downgrade() -> None:
    op.drop_table("deleted_workflows")
