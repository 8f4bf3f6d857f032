"""signal names: a flag that says whether steps wait on the name

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27 21:20:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "signal_names",
        sa.Column("has_waits", sa.Boolean(), server_default=sa.text("false"), nullable=False),
    )
    # Names that open waits already listen to keep being looked up.
    op.execute(
        "INSERT INTO signal_names (name, last_seq, has_waits) "
        "SELECT DISTINCT name, 0, true FROM signal_waits WHERE matched_signal_id IS NULL "
        "ON CONFLICT (name) DO UPDATE SET has_waits = true"
    )


def downgrade() -> None:
    op.drop_column("signal_names", "has_waits")
