"""The event outbox: events recorded in the transaction of the state change that causes them.

An event is written by the database function `maestro_emit_event` (migration 0013): nothing
when no webhook is subscribed to it, else the event and one pending delivery per subscribed
webhook. Its key (`run.failed:<run_id>`) is unique, so a writer that is retried records it once,
and the id receivers see (`evt_...`) is derived from the key. Run ends call `run_ended` from
maestro/ends.py; run starts, step failures and waits are recorded by triggers on `runs` and
`step_runs`; SLA, freshness and schedule misses and stage changes call `record`. The worker's
dispatcher (maestro.webhooks) delivers them after the commit, off the run path.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession

from maestro.db.tables import Run

EVENT_TYPES = (
    "run.started",
    "run.succeeded",
    "run.failed",
    "run.timed_out",
    "run.stopped",
    "step.failed",
    "step.waiting_for_signal",
    "sla.missed",
    "freshness.missed",
    "schedule.missed",
    "model.stage_changed",
)
RUN_END_EVENTS = {f"run.{s}" for s in ("succeeded", "failed", "timed_out", "stopped")}

_EMIT = text("SELECT maestro_emit_event(:key, :type, :workflow_id, :owner, :data)").bindparams(
    bindparam("data", type_=JSONB)
)


async def record(
    session: AsyncSession,
    key: str,
    type: str,
    data: dict[str, Any],
    *,
    workflow_id: str | None = None,
    owner: str | None = None,
) -> None:
    """In the caller's transaction: the event `type` (once per `key`) for every webhook of
    `owner` (default: the workflow's owner) subscribed to it."""
    assert type in EVENT_TYPES, type
    await session.execute(
        _EMIT,
        {"key": key, "type": type, "workflow_id": workflow_id, "owner": owner, "data": data},
    )


async def run_ended(session: AsyncSession, run: Run, sla: dict[str, Any] | None = None) -> None:
    """In the transaction that ends the run: `run.<status>` (ends that are no such event, a
    skipped run, record nothing)."""
    type = f"run.{run.status}"
    if type not in RUN_END_EVENTS:
        return
    data: dict[str, Any] = {
        "run_id": run.run_id,
        "run_number": run.run_number,
        "version": run.version,
        "status": run.status,
        "error": (run.error or "")[:2000] or None,
        "cause": (run.cause or {}).get("kind"),
        "started_at": run.started_at.isoformat() if run.started_at else None,
        "ended_at": run.ended_at.isoformat() if run.ended_at else None,
        "temporal_workflow_id": run.temporal_workflow_id,
    }
    if sla is not None:
        data["sla"] = sla
    await record(session, f"{type}:{run.run_id}", type, data, workflow_id=run.workflow_id)
