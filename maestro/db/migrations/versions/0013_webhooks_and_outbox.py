"""webhooks, the event outbox and deliveries

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-29 12:00:00

`maestro_emit_event(key, type, workflow_id, owner, data)` records one event for every webhook
subscribed to it, in the caller's transaction: nothing when no webhook wants it, else one
`outbox_events` row (its key unique, so a retried writer records it once) and one pending
`webhook_deliveries` row per webhook. Run ends call it from maestro/ends.py; run starts and
step failures and waits reach it through triggers on `runs` and `step_runs`, so every path
that writes those states records the event in the same statement.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "webhooks",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("owner", sa.String(length=200), nullable=False),
        sa.Column("url", sa.String(length=2000), nullable=False),
        sa.Column("events", postgresql.ARRAY(sa.String(length=64)), nullable=False),
        sa.Column("workflow_ids", postgresql.ARRAY(sa.String(length=128)), nullable=True),
        sa.Column("format", sa.String(length=16), nullable=False),
        sa.Column("description", sa.String(length=500), server_default="", nullable=False),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("previous_secret", sa.Text(), nullable=True),
        sa.Column("previous_secret_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhooks")),
    )
    op.create_index("ix_webhooks_owner", "webhooks", ["owner"])
    op.create_table(
        "outbox_events",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("event_key", sa.String(length=400), nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("owner", sa.String(length=200), nullable=False),
        sa.Column("workflow_id", sa.String(length=128), nullable=True),
        sa.Column("data", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox_events")),
        sa.UniqueConstraint("event_key", name=op.f("uq_outbox_events_event_key")),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("webhook_id", sa.String(length=64), nullable=False),
        sa.Column("event_id", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("redelivery_of", sa.BigInteger(), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["webhook_id"],
            ["webhooks.id"],
            name=op.f("fk_webhook_deliveries_webhook_id_webhooks"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["outbox_events.id"],
            name=op.f("fk_webhook_deliveries_event_id_outbox_events"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
    )
    op.create_index(
        "ix_webhook_deliveries_pending",
        "webhook_deliveries",
        ["webhook_id", "id"],
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_index("ix_webhook_deliveries_webhook", "webhook_deliveries", ["webhook_id", "id"])
    op.create_table(
        "webhook_attempts",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("delivery_id", sa.BigInteger(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["webhook_deliveries.id"],
            name=op.f("fk_webhook_attempts_delivery_id_webhook_deliveries"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_attempts")),
    )
    op.create_index("ix_webhook_attempts_delivery", "webhook_attempts", ["delivery_id", "id"])
    op.execute(
        """
        CREATE FUNCTION maestro_emit_event(
            p_key text, p_type text, p_workflow_id text, p_owner text, p_data jsonb
        ) RETURNS void LANGUAGE plpgsql AS $$
        DECLARE
            v_owner text := p_owner;
            v_event bigint;
        BEGIN
            IF v_owner IS NULL THEN
                SELECT owner INTO v_owner FROM workflows WHERE id = p_workflow_id;
            END IF;
            IF NOT EXISTS (
                SELECT 1 FROM webhooks w
                WHERE w.owner = v_owner AND p_type = ANY (w.events)
                  AND (w.workflow_ids IS NULL OR p_workflow_id = ANY (w.workflow_ids))
            ) THEN
                RETURN;
            END IF;
            INSERT INTO outbox_events (event_key, event_id, type, owner, workflow_id, data)
            VALUES (
                p_key,
                'evt_' || left(encode(sha256(convert_to(p_key, 'UTF8')), 'hex'), 32),
                p_type, v_owner, p_workflow_id, p_data
            )
            ON CONFLICT (event_key) DO NOTHING
            RETURNING id INTO v_event;
            IF v_event IS NULL THEN
                RETURN;
            END IF;
            INSERT INTO webhook_deliveries (webhook_id, event_id, status, next_attempt_at)
            SELECT w.id, v_event, 'pending', now() FROM webhooks w
            WHERE w.owner = v_owner AND p_type = ANY (w.events)
              AND (w.workflow_ids IS NULL OR p_workflow_id = ANY (w.workflow_ids))
            ORDER BY w.id;
        END
        $$
        """
    )
    op.execute(
        """
        CREATE FUNCTION maestro_run_started_event() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM maestro_emit_event(
                'run.started:' || NEW.run_id, 'run.started', NEW.workflow_id, NULL,
                jsonb_build_object(
                    'run_id', NEW.run_id, 'run_number', NEW.run_number,
                    'version', NEW.version, 'status', NEW.status,
                    'cause', NEW.cause->>'kind', 'started_at', NEW.started_at,
                    'temporal_workflow_id', NEW.temporal_workflow_id
                )
            );
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER runs_started_event AFTER UPDATE OF status ON runs
        FOR EACH ROW
        WHEN (OLD.status = 'queued' AND NEW.status = 'running')
        EXECUTE FUNCTION maestro_run_started_event()
        """
    )
    op.execute(
        """
        CREATE FUNCTION maestro_step_event() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            v_type text := CASE WHEN NEW.status = 'waiting_for_signal'
                                THEN 'step.waiting_for_signal' ELSE 'step.failed' END;
            v_run runs%ROWTYPE;
        BEGIN
            SELECT * INTO v_run FROM runs WHERE run_id = NEW.run_id;
            PERFORM maestro_emit_event(
                v_type || ':' || NEW.run_id || ':' || NEW.step_id, v_type, v_run.workflow_id,
                NULL,
                jsonb_build_object(
                    'run_id', NEW.run_id, 'run_number', v_run.run_number,
                    'version', v_run.version, 'step_id', NEW.step_id, 'status', NEW.status,
                    'attempt', NEW.attempt, 'error', left(NEW.error, 2000)
                )
            );
            RETURN NULL;
        END
        $$
        """
    )
    for event, when in (
        ("INSERT", "NEW.status IN ('failed', 'timed_out', 'waiting_for_signal')"),
        (
            "UPDATE OF status",
            "NEW.status IN ('failed', 'timed_out', 'waiting_for_signal') "
            "AND OLD.status IS DISTINCT FROM NEW.status",
        ),
    ):
        name = "step_runs_event_" + event.split()[0].lower()
        op.execute(
            f"CREATE TRIGGER {name} AFTER {event} ON step_runs FOR EACH ROW "
            f"WHEN ({when}) EXECUTE FUNCTION maestro_step_event()"
        )


def downgrade() -> None:
    op.execute("DROP TRIGGER step_runs_event_insert ON step_runs")
    op.execute("DROP TRIGGER step_runs_event_update ON step_runs")
    op.execute("DROP FUNCTION maestro_step_event()")
    op.execute("DROP TRIGGER runs_started_event ON runs")
    op.execute("DROP FUNCTION maestro_run_started_event()")
    op.execute("DROP FUNCTION maestro_emit_event(text, text, text, text, jsonb)")
    op.drop_index("ix_webhook_attempts_delivery", table_name="webhook_attempts")
    op.drop_table("webhook_attempts")
    op.drop_index("ix_webhook_deliveries_webhook", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_pending", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_table("outbox_events")
    op.drop_index("ix_webhooks_owner", table_name="webhooks")
    op.drop_table("webhooks")
