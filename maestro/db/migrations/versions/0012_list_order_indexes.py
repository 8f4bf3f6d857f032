"""indexes that serve the lists' orders, run strategies' decisions and retention's lookups

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-29 10:00:00

`GET /runs?workflow_id=` read every run of the workflow and sorted them: no index gave one
workflow's runs in `created_at, run_id` order, nor every run's, and the status indexes ended
in `created_at` alone. `GET /signals?since=` read every signal, and so did an owner-limited
key's `GET /signals`. Retention asks, per run,
whether a restart of it is kept and, per signal, whether a step's wait matched it. A run
strategy's decision counted every queued run of the workflow, and admitting the next ones sorted
them all: a burst of 5,000 runs of a `parallel` workflow paid that at every start and end.
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_runs_workflow_created", "runs", ["workflow_id", "created_at", "run_id"])
    op.create_index("ix_runs_created", "runs", ["created_at", "run_id"])
    for name, columns in (
        ("ix_runs_workflow_status_created", ["workflow_id", "status", "created_at", "run_id"]),
        ("ix_runs_status_created", ["status", "created_at", "run_id"]),
    ):
        op.drop_index(name, table_name="runs")
        op.create_index(name, "runs", columns)
    op.execute(
        "CREATE INDEX ix_runs_restart_of ON runs (((cause -> 'detail') ->> 'restart_of'))"
        " WHERE cause ->> 'kind' = 'restart'"
    )
    op.create_index(
        "ix_runs_holding",
        "runs",
        ["workflow_id"],
        postgresql_where="status = 'running' OR (status = 'queued' AND admitted_at IS NOT NULL)",
    )
    op.create_index(
        "ix_runs_waiting",
        "runs",
        ["workflow_id", "run_number"],
        postgresql_where="status = 'queued' AND admitted_at IS NULL",
    )
    op.create_index("ix_signals_created_at", "signals", ["created_at"], postgresql_using="brin")
    op.create_index(
        "ix_signals_producer_owners", "signals", ["producer_owners"], postgresql_using="gin"
    )
    op.create_index(
        "ix_signal_waits_matched_signal_id",
        "signal_waits",
        ["matched_signal_id"],
        postgresql_where="matched_signal_id IS NOT NULL",
    )


def downgrade() -> None:
    op.drop_index("ix_signal_waits_matched_signal_id", table_name="signal_waits")
    op.drop_index("ix_signals_producer_owners", table_name="signals")
    op.drop_index("ix_signals_created_at", table_name="signals")
    op.drop_index("ix_runs_restart_of", table_name="runs")
    op.drop_index("ix_runs_waiting", table_name="runs")
    op.drop_index("ix_runs_holding", table_name="runs")
    for name, columns in (
        ("ix_runs_workflow_status_created", ["workflow_id", "status", "created_at"]),
        ("ix_runs_status_created", ["status", "created_at"]),
    ):
        op.drop_index(name, table_name="runs")
        op.create_index(name, "runs", columns)
    op.drop_index("ix_runs_created", table_name="runs")
    op.drop_index("ix_runs_workflow_created", table_name="runs")
