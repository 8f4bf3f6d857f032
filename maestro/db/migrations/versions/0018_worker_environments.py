"""worker environments: the task queues and installed distributions each worker reports

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07 09:00:00
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "worker_environments",
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("queues_key", sa.Text(), nullable=False),
        sa.Column("task_queues", postgresql.ARRAY(sa.String(length=200)), nullable=False),
        sa.Column("distributions", postgresql.JSONB(), nullable=False),
        sa.Column("markers", postgresql.JSONB(), nullable=False),
        sa.Column(
            "seen_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("host", "queues_key", name=op.f("pk_worker_environments")),
    )


def downgrade() -> None:
    op.drop_table("worker_environments")
