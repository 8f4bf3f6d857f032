"""Run SLAs: each run's deadline, and the durable Temporal timer that checks it.

A run whose workflow (or the trigger that started it) has an `sla` gets a deadline when it is
created, in the same transaction (`record_deadline`): its cause time (the scheduled time of a
timed run, else when the run was created: the signal accepted, the manual start) plus
`finish_within`, or the first `finish_by` wall-clock time at or after it. When the run is
launched (or, waiting in its queue, handed to `launch`), an `SlaWorkflow` is started for it on
Temporal (its id derived from the run, so starting it again changes nothing): a durable timer
to the deadline, then one activity (maestro.alerts.check_sla) that asks PostgreSQL whether the
run is still live and if so records `sla.missed` once. A run that ends records its margin
(`record_end`, in its end's transaction). No polling loop.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import BaseModel
from sqlalchemy import extract, literal, update
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.client import Client
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from maestro import metrics
from maestro.db.tables import Run, RunSla
from maestro.definitions import (
    IntervalTrigger,
    OnFinishTrigger,
    SignalTrigger,
    Sla,
    TimeTrigger,
    WorkflowDefinition,
)

logger = logging.getLogger(__name__)

SLA_WORKFLOW = "SlaWorkflow"
CHECK_SLA_ACTIVITY = "check_sla"
MISSED_SIGNAL = "maestro.sla.missed"


class SlaWatch(BaseModel):
    """What SlaWorkflow watches: one run and its deadline."""

    run_id: str
    workflow_id: str
    deadline: datetime


def has_sla(definition: WorkflowDefinition) -> bool:
    """Whether any run of this definition can have a deadline."""
    return definition.sla is not None or any(
        getattr(t, "sla", None) is not None for t in definition.triggers
    )


def sla_for(definition: WorkflowDefinition, trigger_id: str | None) -> Sla | None:
    """The SLA of a run started by `trigger_id` (None: manual): the trigger's own, else the
    workflow's."""
    if trigger_id is not None:
        trigger = _trigger(definition, trigger_id)
        if trigger is not None and trigger.sla is not None:
            return trigger.sla
    return definition.sla


def _trigger(
    definition: WorkflowDefinition, trigger_id: str
) -> TimeTrigger | IntervalTrigger | SignalTrigger | OnFinishTrigger | None:
    from maestro.schedules import time_triggers  # imports the runs service, which imports this
    from maestro.triggers import compile_signal_triggers

    for ref in time_triggers(definition.id, definition):
        if ref.trigger_id == trigger_id:
            return ref.trigger
    for compiled in compile_signal_triggers(definition):
        if compiled.trigger_id == trigger_id:
            return definition.triggers[compiled.position]  # type: ignore[return-value]
    return None


def cause_time(run: Run) -> datetime:
    """When the run's clock starts: a timed run's scheduled time, else its creation."""
    scheduled = (run.cause or {}).get("detail", {}).get("scheduled_at")
    if (run.cause or {}).get("kind") == "time" and scheduled:
        return datetime.fromisoformat(scheduled)
    return run.created_at


def deadline(sla: Sla, start: datetime) -> datetime:
    """The deadline an SLA gives a run whose clock started at `start` (UTC)."""
    if sla.finish_within is not None:
        return (start + sla.finish_within).astimezone(UTC)
    assert sla.finish_by is not None
    zone = ZoneInfo(sla.timezone)
    hour, minute = map(int, sla.finish_by.split(":"))
    local = start.astimezone(zone)
    day = local.date()
    for _ in range(3):  # a wall-clock time skipped by a DST change moves to the next day
        at = datetime(day.year, day.month, day.day, hour, minute, tzinfo=zone)
        if at >= local and at.astimezone(UTC).astimezone(zone).hour == hour:
            return at.astimezone(UTC)
        day += timedelta(days=1)
    return (local + timedelta(days=1)).astimezone(UTC)


def run_deadline(definition: WorkflowDefinition, run: Run) -> datetime | None:
    sla = sla_for(definition, run.trigger_id)
    return deadline(sla, cause_time(run)) if sla is not None else None


async def record_deadline(session: AsyncSession, definition: WorkflowDefinition, run: Run) -> None:
    """In the transaction that creates the run: its deadline, if it has an SLA."""
    if not has_sla(definition):
        return
    at = run_deadline(definition, run)
    if at is not None:
        session.add(RunSla(run_id=run.run_id, workflow_id=run.workflow_id, deadline=at))
        await session.flush()


async def record_end(
    session: AsyncSession, definition: WorkflowDefinition, run: Run
) -> dict[str, Any] | None:
    """In the transaction that ends the run: its margin (deadline minus end); what the run's
    end event says of its SLA."""
    if not has_sla(definition):
        return None
    ended = run.ended_at or datetime.now(UTC)
    row = (
        await session.execute(
            update(RunSla)
            .where(RunSla.run_id == run.run_id)
            .values(margin_seconds=_seconds_until(RunSla.deadline, ended))
            .returning(RunSla.deadline, RunSla.missed_at, RunSla.margin_seconds)
        )
    ).one_or_none()
    if row is None:
        return None
    if row.missed_at is None and row.margin_seconds >= 0:
        metrics.SLA_MARGIN.observe(row.margin_seconds)
    return {
        "deadline": row.deadline.isoformat(),
        "margin_seconds": round(row.margin_seconds, 3),
        "missed": row.missed_at is not None or row.margin_seconds < 0,
    }


def _seconds_until(column: Any, moment: datetime) -> Any:
    return extract("epoch", column - literal(moment))


def view(row: RunSla | None) -> dict[str, Any] | None:
    """How a run shows its SLA."""
    if row is None:
        return None
    return {
        "deadline": row.deadline,
        "missed_at": row.missed_at,
        "margin_seconds": row.margin_seconds,
        "status": "missed"
        if row.missed_at is not None or (row.margin_seconds or 0) < 0
        else ("met" if row.margin_seconds is not None else "pending"),
    }


async def watch(client: Client, task_queue: str, run: Run, definition: WorkflowDefinition) -> None:
    """Start the run's SLA timer on Temporal (once: its id is derived from the run)."""
    at = run_deadline(definition, run)
    if at is None:
        return
    try:
        await client.start_workflow(
            SLA_WORKFLOW,
            SlaWatch(run_id=run.run_id, workflow_id=run.workflow_id, deadline=at),
            id=f"{run.temporal_workflow_id}:sla",
            task_queue=task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        )
    except WorkflowAlreadyStartedError:
        pass
