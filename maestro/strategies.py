"""Run strategies: whether a new run may start now, waits in the queue, or is dropped — and
which queued runs start when a slot frees. Every decision is taken under the workflow's row
lock, so concurrent starts from any number of processes never exceed the limit. Decisions
count the runs holding a slot and look for a waiting one (the queue's length is counted only
for `max_queued`); runs are loaded only where a strategy acts on them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import and_, bindparam, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import BindParameter

from maestro.db.direct import DirectStatement
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


# The rows of the partial indexes `ix_runs_holding` and `ix_runs_waiting` (migration 0013),
# written as literals so that every plan of a prepared statement can use those indexes: a
# decision then reads the runs holding a slot (at most the limit) and the first waiting ones,
# never the whole queue, however long it is.
_HOLDING_ROWS = text(
    "(runs.status = 'running' OR (runs.status = 'queued' AND runs.admitted_at IS NOT NULL))"
)
_WAITING_ROWS = text("runs.status = 'queued' AND runs.admitted_at IS NULL")


def _holding_slot(workflow_id: str | BindParameter[str]):
    """Runs holding a slot: admitted and not ended."""
    return and_(Run.workflow_id == workflow_id, _HOLDING_ROWS)


def _waiting(workflow_id: str | BindParameter[str]):
    """Runs waiting for a slot."""
    return and_(Run.workflow_id == workflow_id, _WAITING_ROWS)


_WORKFLOW_ID: BindParameter[str] = bindparam("workflow_id")
# Every run's admission and end asks it.
_OCCUPANCY = DirectStatement(
    select(
        # The first waiting run, in the order ix_runs_waiting holds them: never a walk through
        # the table to find one.
        select(Run.run_number)
        .where(_waiting(_WORKFLOW_ID))
        .order_by(Run.run_number)
        .limit(1)
        .scalar_subquery()
        .is_not(None)
        .label("waiting"),
        select(func.count())
        .select_from(Run)
        .where(_holding_slot(_WORKFLOW_ID))
        .scalar_subquery()
        .label("holding"),
    )
)
_WAITING_COUNT = DirectStatement(
    select(func.count()).select_from(Run).where(_waiting(_WORKFLOW_ID))
)


async def _occupancy(session: AsyncSession, workflow_id: str) -> tuple[bool, int]:
    """(whether runs wait for a slot, how many runs hold one), in one query."""
    row = await _OCCUPANCY.fetchrow(session, {"workflow_id": workflow_id})
    assert row is not None  # an aggregate has one row
    return row["waiting"], row["holding"]


async def _runs(session: AsyncSession, condition, limit: int | None = None) -> list[Run]:
    query = select(Run).where(condition).order_by(Run.run_number).limit(limit)
    return list((await session.execute(query)).scalars())


async def decide(
    session: AsyncSession, workflow: Workflow, strategy: RunStrategy, *, jump_queue: bool = False
) -> Admission:
    """What happens to a run that arrives now (the workflow row must be locked);
    `jump_queue` admits it ahead of waiting runs if a slot is free."""
    kind = strategy.kind
    if kind is RunStrategyKind.first_only:
        [first] = await _runs(session, _holding_slot(workflow.id), 1) or [None]
        if first is not None:
            return Admission(False, f"first_only: run {first.run_number} is still running")
        return Admission(True)
    if kind is RunStrategyKind.last_only:
        admitted = await _runs(session, _holding_slot(workflow.id))
        if not admitted:
            return Admission(True)
        # The newcomer waits for the runs it stops; older waiting runs are replaced by it.
        return Admission(False, stop=admitted, drop=await _runs(session, _waiting(workflow.id)))
    blocked = kind is RunStrategyKind.strict_sequential and workflow.blocked_by_run_id
    queued, holding = await _occupancy(session, workflow.id)
    if not blocked and (jump_queue or not queued) and holding < _limit(strategy):
        return Admission(True)
    if strategy.max_queued is not None and queued:
        row = await _WAITING_COUNT.fetchrow(session, {"workflow_id": workflow.id})
        assert row is not None
        if row[0] >= strategy.max_queued:
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
    waiting, holding = await _occupancy(session, workflow.id)
    free = _limit(strategy) - holding
    if free <= 0 or not waiting:
        return []
    if strategy.kind is RunStrategyKind.last_only:
        # Only the newest waits; older ones were dropped on arrival.
        query = select(Run).where(_waiting(workflow.id)).order_by(Run.run_number.desc())
        chosen = list((await session.execute(query.limit(1))).scalars())
    else:
        chosen = await _runs(session, _waiting(workflow.id), free)
    now = datetime.now(UTC)
    for run in chosen:
        run.admitted_at = now
    await session.flush()
    return chosen


async def request_stop(session: AsyncSession, runs: list[Run]) -> None:
    ids = [r.run_id for r in runs]
    if ids:
        await session.execute(
            update(Run)
            .where(Run.run_id.in_(ids), Run.stop_requested_at.is_(None))
            .values(stop_requested_at=datetime.now(UTC))
        )
