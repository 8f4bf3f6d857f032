"""Prometheus metrics of a Maestro process (API or worker); each process exports its own."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram

if TYPE_CHECKING:
    from maestro.db.tables import Run

SIGNALS = Counter(
    "maestro_signals_received_total", "Signals published, by outcome", ["outcome"]
)  # new | duplicate
TRIGGER_EVALUATIONS = Counter(
    "maestro_trigger_evaluations_total", "What signals did to triggers, by outcome", ["outcome"]
)
TRIGGER_FIRES = Counter(
    "maestro_trigger_fires_total", "Runs started by triggers, by kind", ["kind"]
)  # signal | time | backfill
TRIGGER_LAG = Histogram(
    "maestro_trigger_lag_seconds",
    "From the cause (signal accepted, scheduled time, backfill requested) to the run launched "
    "on Temporal",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
WEBHOOK_ATTEMPTS = Counter(
    "maestro_webhook_attempts_total",
    "Webhook delivery attempts, by what became of the delivery",
    ["outcome"],
)  # delivered | retrying | dead
WEBHOOK_LAG = Histogram(
    "maestro_webhook_delivery_lag_seconds",
    "From an event recorded to its delivery acknowledged by the receiver",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
)
RUNS_ENDED = Counter("maestro_runs_ended_total", "Runs that ended, by status", ["status"])
RUNS = Gauge("maestro_runs", "Runs by status (from the database, at scrape time)", ["status"])
QUEUE_DEPTH = Gauge(
    "maestro_queue_depth",
    "Runs waiting for their run strategy, per workflow (at scrape time)",
    ["workflow_id"],
)
STEP_DURATION = Histogram(
    "maestro_step_duration_seconds",
    "Step attempt durations, by step type and outcome",
    ["type", "outcome"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800, 7200),
)
ITERATIONS_STARTED = Counter(
    "maestro_iterations_started_total",
    "Iterations of composite steps started, by step type",
    ["type"],
)  # foreach | while
ITERATIONS_FINISHED = Counter(
    "maestro_iterations_finished_total",
    "Iterations of composite steps that ended, by outcome",
    ["outcome"],
)  # succeeded | failed | skipped | stopped


def observe_fires(runs: Iterable[Run]) -> None:
    """Count triggered runs just launched on Temporal, with their lag: from the signal that
    created the run (`signal`), the time a schedule fired for (`time`) or the backfill request
    that created the run (`backfill`: its scheduled time may lie far in the past)."""
    now = datetime.now(UTC)
    for run in runs:
        kind = run.cause.get("kind")
        detail = run.cause.get("detail", {})
        if kind == "time" and detail.get("via") == "backfill":
            kind = "backfill"
        if kind in ("signal", "backfill") and run.created_at is not None:
            start = run.created_at
        elif kind == "time" and "scheduled_at" in detail:
            start = datetime.fromisoformat(detail["scheduled_at"])
        else:
            continue
        TRIGGER_FIRES.labels(kind).inc()
        TRIGGER_LAG.labels(kind).observe(max(0.0, (now - start).total_seconds()))


SLA_MISSED = Counter(
    "maestro_sla_missed_total", "Runs still unfinished at their SLA deadline", ["workflow_id"]
)
SLA_MARGIN = Histogram(
    "maestro_sla_margin_seconds",
    "How long before their SLA deadline runs ended (runs that ended in time)",
    buckets=(1, 10, 60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400),
)
FRESHNESS_MISSED = Counter(
    "maestro_freshness_missed_total",
    "Expected data-arrival signals that did not come in time",
    ["workflow_id"],
)
