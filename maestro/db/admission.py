"""The queries run strategies decide with: a workflow's runs that hold a slot (admitted, not
ended) and those that wait for one, and stop requests."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import ColumnElement, and_, any_, bindparam, func, or_, select, update
from sqlalchemy.dialects.postgresql import array
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import BindParameter

from maestro.db.direct import DirectStatement
from maestro.db.tables import Run
from maestro.runtime import RunStatus


def _holding_slot(workflow_id: str | BindParameter[str]) -> ColumnElement[bool]:
    """Runs holding a slot: admitted and not ended."""
    return and_(
        Run.workflow_id == workflow_id,
        or_(
            Run.status == RunStatus.running,
            and_(Run.status == RunStatus.queued, Run.admitted_at.is_not(None)),
        ),
    )


def _waiting(workflow_id: str | BindParameter[str]) -> ColumnElement[bool]:
    """Runs waiting for a slot."""
    return and_(
        Run.workflow_id == workflow_id, Run.status == RunStatus.queued, Run.admitted_at.is_(None)
    )


_WORKFLOW_ID: BindParameter[str] = bindparam("workflow_id")
# Every run's admission and end asks it.
_OCCUPANCY = DirectStatement(
    select(
        func.count().filter(_waiting(_WORKFLOW_ID)).label("waiting"),
        func.count().filter(_holding_slot(_WORKFLOW_ID)).label("holding"),
    ).where(
        Run.workflow_id == _WORKFLOW_ID,
        Run.status == any_(array([RunStatus.queued.value, RunStatus.running.value])),
    )
)


async def occupancy(session: AsyncSession, workflow_id: str) -> tuple[int, int]:
    """(runs waiting for a slot, runs holding one), in one query."""
    row = await _OCCUPANCY.fetchrow(session, {"workflow_id": workflow_id})
    assert row is not None  # an aggregate has one row
    return row["waiting"], row["holding"]


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
