"""Run strategies: whether a new run may start now, waits in the queue, or is dropped — and
which queued runs start when a slot frees. Every decision is taken under the workflow's row
lock, so concurrent starts from any number of processes never exceed the limit. Decisions
count the runs holding a slot and look for a waiting one (the queue's length is counted only
for `max_queued`); runs are loaded only where a strategy acts on them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from maestro.db import admission as admission_db
from maestro.db.tables import Run, Workflow
from maestro.definitions import RunStrategy, RunStrategyKind


@dataclass
class Admission:
    """The decision for a new run."""

    admit: bool
    skip_reason: str | None = None
    # last_only: the runs the newcomer replaces.
    stop: list[Run] = field(default_factory=list)
    drop: list[Run] = field(default_factory=list)


def _limit(strategy: RunStrategy) -> int:
    if strategy.kind is RunStrategyKind.parallel:
        return strategy.max_concurrency
    return 1


async def decide(
    session: AsyncSession, workflow: Workflow, strategy: RunStrategy, *, jump_queue: bool = False
) -> Admission:
    """What happens to a run that arrives now (the workflow row must be locked);
    `jump_queue` admits it ahead of waiting runs if a slot is free."""
    kind = strategy.kind
    if kind is RunStrategyKind.first_only:
        [first] = await admission_db.holding_runs(session, workflow.id, 1) or (None,)
        if first is not None:
            return Admission(False, f"first_only: run {first.run_number} is still running")
        return Admission(True)
    if kind is RunStrategyKind.last_only:
        admitted = await admission_db.holding_runs(session, workflow.id)
        if not admitted:
            return Admission(True)
        # The newcomer waits for the runs it stops; older waiting runs are replaced by it.
        return Admission(
            False, stop=admitted, drop=await admission_db.waiting_runs(session, workflow.id)
        )
    blocked = kind is RunStrategyKind.strict_sequential and workflow.blocked_by_run_id
    queued, holding = await admission_db.occupancy(session, workflow.id)
    if not blocked and (jump_queue or not queued) and holding < _limit(strategy):
        return Admission(True)
    if strategy.max_queued is not None and queued:
        if await admission_db.waiting_count(session, workflow.id) >= strategy.max_queued:
            return Admission(
                False, f"{kind.value}: the queue is full (max_queued={strategy.max_queued})"
            )
    return Admission(False)


async def admit_waiting(
    session: AsyncSession, workflow: Workflow, strategy: RunStrategy
) -> list[Run]:
    """Admit queued runs into the free slots (the workflow row must be locked)."""
    if strategy.kind is RunStrategyKind.strict_sequential and workflow.blocked_by_run_id:
        return []
    waiting, holding = await admission_db.occupancy(session, workflow.id)
    free = _limit(strategy) - holding
    if free <= 0 or not waiting:
        return []
    if strategy.kind is RunStrategyKind.last_only:
        # Only the newest waits; older ones were dropped on arrival.
        chosen = await admission_db.waiting_runs(session, workflow.id, 1, newest=True)
    else:
        chosen = await admission_db.waiting_runs(session, workflow.id, free)
    now = datetime.now(UTC)
    for run in chosen:
        run.admitted_at = now
    await session.flush()
    return chosen


async def request_stop(session: AsyncSession, runs: list[Run]) -> None:
    """Mark these runs to be stopped (sent after the commit, or by the sweeper)."""
    if runs:
        await admission_db.request_stops(session, [r.run_id for r in runs])
