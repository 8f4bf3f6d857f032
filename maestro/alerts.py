"""What the promise timers find when they fire: a missed SLA, missing data (freshness), each
recorded once as a signal (so workflows can react) and as a webhook event, in one transaction.
The timers themselves are Temporal's (workers/alerts.py): no polling loop."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from maestro import metrics, outbox
from maestro.db import workflows as workflows_db
from maestro.db.tables import Run, RunSla, Signal
from maestro.definitions import Expectation
from maestro.errors import NotFound
from maestro.runtime import RunStatus
from maestro.signals import Producer, SignalBus, SignalIn
from maestro.sla import MISSED_SIGNAL, SlaWatch
from maestro.triggers import where_matches

logger = logging.getLogger(__name__)

FRESHNESS_SIGNAL = "maestro.freshness.missed"
# Signals of the expected name looked at per check (newest first), for `where` conditions.
FRESHNESS_SCAN = 1_000


async def check_sla(
    sessions: async_sessionmaker[AsyncSession], bus: SignalBus, watch: SlaWatch
) -> bool:
    """At the run's deadline: if it is still live (or ended after the deadline without it
    being noticed), record `sla.missed` once: the run's SLA row, the `maestro.sla.missed`
    signal, the webhook event. True if this call recorded it."""
    async with sessions.begin() as session:
        row = await session.get(RunSla, watch.run_id, with_for_update=True)
        run = await session.get(Run, watch.run_id)
        if row is None or run is None or row.missed_at is not None:
            return False
        live = RunStatus(run.status) in (RunStatus.queued, RunStatus.running)
        late = run.ended_at is not None and run.ended_at > row.deadline
        if not (live or late) or run.status == RunStatus.skipped:
            return False
        row.missed_at = datetime.now(UTC)
        params: dict[str, str | int | float | bool] = {
            "workflow_id": run.workflow_id,
            "run_id": run.run_id,
            "run_number": run.run_number,
            "deadline": row.deadline.isoformat(),
            "status": run.status,
        }
        pending = await bus.publish_in(
            session,
            [SignalIn(name=MISSED_SIGNAL, params=params, request_id=f"sla-missed:{run.run_id}")],
            Producer(kind="run", workflow_id=run.workflow_id, run_id=run.run_id),
        )
        await outbox.record(
            session,
            f"sla.missed:{run.run_id}",
            "sla.missed",
            {**params, "version": run.version},
            workflow_id=run.workflow_id,
        )
    await bus.after_commit(pending)
    metrics.SLA_MISSED.labels(run.workflow_id).inc()
    logger.info("sla missed", extra={"run_id": run.run_id, "workflow_id": run.workflow_id})
    return True


class FreshnessCheck(BaseModel):
    """One expectation of one workflow, checked for the day its `by` time fell on."""

    workflow_id: str
    expect_id: str
    at: datetime


def window(expectation: Expectation, at: datetime) -> tuple[datetime, datetime]:
    """The span a signal must have arrived in: from midnight of the day `at` falls on (in the
    expectation's zone) to `at`."""
    local = at.astimezone(ZoneInfo(expectation.timezone))
    midnight = datetime(local.year, local.month, local.day, tzinfo=local.tzinfo)
    return midnight.astimezone(UTC), at.astimezone(UTC)


async def check_freshness(
    sessions: async_sessionmaker[AsyncSession], bus: SignalBus, check: FreshnessCheck
) -> bool | None:
    """At an expectation's `by` time: whether a matching signal arrived that day. If none did,
    record `freshness.missed` once for that day (signal and webhook event). None when the
    workflow or the expectation is gone."""
    from maestro.freshness import expectation_by_id  # the schedules module imports the runs one

    async with sessions.begin() as session:
        try:
            workflow = await workflows_db.get_workflow(session, check.workflow_id)
        except NotFound:
            return None
        if workflow.active_version is None:
            return None
        definition = await bus.runs.definitions.get(session, workflow.id, workflow.active_version)
        expectation = expectation_by_id(definition, check.expect_id)
        if expectation is None:
            return None
        since, until = window(expectation, check.at)
        if await _arrived(session, expectation, since, until):
            return True
        day = check.at.astimezone(ZoneInfo(expectation.timezone)).date().isoformat()
        params: dict[str, str | int | float | bool] = {
            "workflow_id": workflow.id,
            "signal": expectation.signal,
            "expected_by": check.at.astimezone(UTC).isoformat(),
            "day": day,
        }
        key = f"freshness.missed:{workflow.id}:{check.expect_id}:{day}"
        pending = await bus.publish_in(
            session,
            [SignalIn(name=FRESHNESS_SIGNAL, params=params, request_id=key)],
            Producer(kind="alert", workflow_id=workflow.id),
        )
        await outbox.record(
            session,
            key,
            "freshness.missed",
            {**params, "where": expectation.where, "timezone": expectation.timezone},
            workflow_id=workflow.id,
        )
    await bus.after_commit(pending)
    metrics.FRESHNESS_MISSED.labels(workflow.id).inc()
    logger.info("freshness missed", extra={"workflow_id": workflow.id, "day": day})
    return False


async def _arrived(
    session: AsyncSession, expectation: Expectation, since: datetime, until: datetime
) -> bool:
    query = (
        select(Signal.params)
        .where(
            Signal.name == expectation.signal,
            Signal.created_at >= since,
            Signal.created_at <= until + timedelta(seconds=1),
        )
        .order_by(Signal.id.desc())
        .limit(FRESHNESS_SCAN)
    )
    for params in (await session.execute(query)).scalars():
        if where_matches(expectation.where, params):
            return True
    return False
