"""signal triggers: routes, what publishing looks triggers up by

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28 04:40:00
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def _route(condition: dict) -> str:
    # maestro.triggers.condition_route as of this revision: the name, narrowed by the first
    # param (in key order) that `where` requires to equal a string.
    where = condition.get("where") or {}
    for key in sorted(where):
        if isinstance(where[key], str):
            return f"{condition['name']}?{key}={where[key]}"
    return condition["name"]


def upgrade() -> None:
    op.add_column("signal_triggers", sa.Column("routes", postgresql.ARRAY(sa.Text())))
    bind = op.get_bind()
    rows = bind.execute(sa.text("SELECT workflow_id, trigger_id, spec FROM signal_triggers"))
    for workflow_id, trigger_id, spec in rows.fetchall():
        bind.execute(
            sa.text(
                "UPDATE signal_triggers SET routes = :routes "
                "WHERE workflow_id = :workflow_id AND trigger_id = :trigger_id"
            ),
            {
                "routes": [_route(c) for c in spec["conditions"]],
                "workflow_id": workflow_id,
                "trigger_id": trigger_id,
            },
        )
    op.alter_column("signal_triggers", "routes", nullable=False)
    op.create_index(
        "ix_signal_triggers_routes", "signal_triggers", ["routes"], postgresql_using="gin"
    )


def downgrade() -> None:
    op.drop_index("ix_signal_triggers_routes", table_name="signal_triggers", postgresql_using="gin")
    op.drop_column("signal_triggers", "routes")
