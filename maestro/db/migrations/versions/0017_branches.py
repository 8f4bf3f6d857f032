"""branches: the branch of workflows, signals, waits and model versions; triggers registered
within their branch

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-30 09:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "workflows",
        sa.Column("branch", sa.String(length=64), server_default="prod", nullable=False),
    )
    op.add_column(
        "workflows",
        sa.Column(
            "schedules_paused", sa.Boolean(), server_default=sa.text("false"), nullable=False
        ),
    )
    op.create_index("ix_workflows_branch", "workflows", ["branch", "id"])
    # NULL: published from outside (no branch).
    op.add_column("signals", sa.Column("branch", sa.String(length=64), nullable=True))
    op.add_column(
        "signal_waits",
        sa.Column("branch", sa.String(length=64), server_default="prod", nullable=False),
    )
    op.add_column(
        "model_versions",
        sa.Column("branch", sa.String(length=64), server_default="prod", nullable=False),
    )
    # Every workflow so far is production's: its triggers are also reached by the signals its
    # branch's runs and steps publish (maestro.triggers.CompiledTrigger.branch_routes).
    op.execute(
        "UPDATE signal_triggers SET routes = "
        "ARRAY(SELECT '@prod/' || r FROM unnest(routes) AS r) || routes"
    )


def downgrade() -> None:
    op.execute(
        "UPDATE signal_triggers SET routes = ARRAY(SELECT r FROM unnest(routes) AS r "
        "WHERE r NOT LIKE '@%')"
    )
    op.drop_column("model_versions", "branch")
    op.drop_column("signal_waits", "branch")
    op.drop_column("signals", "branch")
    op.drop_index("ix_workflows_branch", table_name="workflows")
    op.drop_column("workflows", "schedules_paused")
    op.drop_column("workflows", "branch")
