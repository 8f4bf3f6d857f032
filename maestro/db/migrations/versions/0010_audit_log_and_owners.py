"""audit log; owners of models and signals

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-28 12:00:00

Models get the owner of the workflow that registered their first version; signals get
`producer_owners` (a run's or step's signal: its workflow's owner, filled by a trigger; an
outside signal: the publishing key's owners, set by the insert). Existing rows are filled
where the database still says who produced them: signals of workflows that exist, models
whose first version's run exists, `model.deployed` signals of promotions through the API
(the model's owner). Other outside signals stay NULL: only unlimited keys and keys with
`signals:read` see them.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "models", sa.Column("owner", sa.String(length=200), server_default="", nullable=False)
    )
    op.execute(
        """
        UPDATE models m SET owner = first.owner
        FROM (
            SELECT DISTINCT ON (v.model_name) v.model_name, w.owner
            FROM model_versions v
            JOIN runs r ON r.run_id = v.run_id
            JOIN workflows w ON w.id = r.workflow_id
            ORDER BY v.model_name, v.version
        ) first
        WHERE first.model_name = m.name
        """
    )
    op.add_column(
        "signals",
        sa.Column("producer_owners", postgresql.ARRAY(sa.String(length=200)), nullable=True),
    )
    op.execute(
        """
        UPDATE signals s SET producer_owners = ARRAY[w.owner]
        FROM workflows w
        WHERE w.id = s.producer ->> 'workflow_id'
        """
    )
    op.execute(
        """
        UPDATE signals s SET producer_owners = ARRAY[m.owner]
        FROM models m
        WHERE s.name = 'model.deployed' AND s.producer_owners IS NULL
          AND s.producer ->> 'kind' = 'outside' AND m.name = s.params ->> 'model'
        """
    )
    # A signal a run or step produced names its workflow in `producer`: the trigger fills its
    # owner inside the insert, so no publishing path needs a query for it. The WHEN clause
    # keeps the function from running for outside signals, whose insert sets the owners.
    op.execute(
        """
        CREATE FUNCTION signals_producer_owners() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            NEW.producer_owners := ARRAY(
                SELECT owner FROM workflows WHERE id = NEW.producer ->> 'workflow_id'
            );
            RETURN NEW;
        END
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER signals_producer_owners BEFORE INSERT ON signals
        FOR EACH ROW
        WHEN (NEW.producer_owners IS NULL AND NEW.producer ->> 'workflow_id' IS NOT NULL)
        EXECUTE FUNCTION signals_producer_owners()
        """
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=True),
        sa.Column("key_name", sa.String(length=200), nullable=True),
        sa.Column("owners", postgresql.ARRAY(sa.String(length=200)), nullable=False),
        sa.Column("method", sa.String(length=10), nullable=False),
        sa.Column("path", sa.String(length=2000), nullable=False),
        sa.Column("targets", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    op.create_index("ix_audit_log_key_id", "audit_log", ["key_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_audit_log_key_id", table_name="audit_log")
    op.drop_table("audit_log")
    op.execute("DROP TRIGGER signals_producer_owners ON signals")
    op.execute("DROP FUNCTION signals_producer_owners()")
    op.drop_column("signals", "producer_owners")
    op.drop_column("models", "owner")
