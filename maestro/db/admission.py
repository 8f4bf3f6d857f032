"""The queries run strategies decide with: a workflow's runs that hold a slot (admitted, not
ended) and those that wait for one, and stop requests."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import ColumnElement, and_, bindparam, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import BindParameter

from maestro.db.direct import DirectStatement
from maestro.db.tables import Run

# The rows of the partial indexes `ix_runs_holding` and `ix_runs_waiting` (migration 0012),
# written as literals so that every plan of a prepared statement can use those indexes: a
# decision then reads the runs holding a slot (at most the limit) and the first waiting ones,
# never the whole queue, however long it is.
_HOLDING_ROWS = text(
    "(runs.status = 'running' OR (runs.status = 'queued' AND runs.admitted_at IS NOT NULL))"
)
_WAITING_ROWS = text("runs.status = 'queued' AND runs.admitted_at IS NULL")


def _holding_slot(workflow_id: str | BindParameter[str]) -> ColumnElement[bool]:
    """Runs holding a slot: admitted and not ended."""
    return and_(Run.workflow_id == workflow_id, _HOLDING_ROWS)


def _waiting(workflow_id: str | BindParameter[str]) -> ColumnElement[bool]:
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


async def occupancy(session: AsyncSession, workflow_id: str) -> tuple[bool, int]:
    """(whether runs wait for a slot, how many runs hold one), in one query."""
    row = await _OCCUPANCY.fetchrow(session, {"workflow_id": workflow_id})
    assert row is not None  # an aggregate has one row
    return row["waiting"], row["holding"]


async def waiting_count(session: AsyncSession, workflow_id: str) -> int:
    """How many runs wait for a slot (reads the whole queue: only for `max_queued`)."""
    row = await _WAITING_COUNT.fetchrow(session, {"workflow_id": workflow_id})
    assert row is not None
    return int(row[0])


async def holding_runs(
    session: AsyncSession, workflow_id: str, limit: int | None = None
) -> list[Run]:
    """The workflow's runs holding a slot, oldest first."""
    query = select(Run).where(_holding_slot(workflow_id)).order_by(Run.run_number).limit(limit)
    return list((await session.execute(query)).scalars())


async def waiting_runs(
    session: AsyncSession, workflow_id: str, limit: int | None = None, *, newest: bool = False
) -> list[Run]:
    """The workflow's runs waiting for a slot, oldest first (`newest`: newest first)."""
    order = Run.run_number.desc() if newest else Run.run_number
    query = select(Run).where(_waiting(workflow_id)).order_by(order).limit(limit)
    return list((await session.execute(query)).scalars())


async def request_stops(session: AsyncSession, run_ids: Sequence[str]) -> None:
    """Mark these runs' stop as requested (a stop requested before keeps its time)."""
    await session.execute(
        update(Run)
        .where(Run.run_id.in_(run_ids), Run.stop_requested_at.is_(None))
        .values(stop_requested_at=datetime.now(UTC))
    )
