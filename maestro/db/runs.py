"""Runs and their step states."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import CTE, delete, func, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from maestro.db.tables import Run, SignalWait, StepRun, Workflow
from maestro.errors import NotFound
from maestro.runtime import RunStatus, StepState, StepStatus


async def get_run(session: AsyncSession, run_id: str, *, lock: bool = False) -> Run:
    run = await session.get(Run, run_id, with_for_update=lock)
    if run is None:
        raise NotFound(f"run {run_id!r} not found")
    return run


async def find_by_request_id(
    session: AsyncSession, workflow_id: str, request_id: str
) -> Run | None:
    query = select(Run).where(Run.workflow_id == workflow_id, Run.request_id == request_id)
    return (await session.execute(query)).scalar_one_or_none()


async def list_runs(
    session: AsyncSession,
    *,
    workflow_id: str | None,
    status: str | None,
    limit: int,
    after: tuple[datetime, str] | None = None,
    oldest_first: bool = False,
    owners: list[str] | None = None,
) -> Sequence[Run]:
    """Newest (or oldest) first; `after` is the (created_at, run_id) of the last run of the
    previous page."""
    query = select(Run)
    if workflow_id:
        query = query.where(Run.workflow_id == workflow_id)
    if status:
        query = query.where(Run.status == status)
    if owners is not None:
        query = query.where(
            Run.workflow_id.in_(select(Workflow.id).where(Workflow.owner.in_(owners)))
        )
    key = tuple_(Run.created_at, Run.run_id)
    if after:
        query = query.where(key > after if oldest_first else key < after)
    if oldest_first:
        query = query.order_by(Run.created_at, Run.run_id)
    else:
        query = query.order_by(Run.created_at.desc(), Run.run_id.desc())
    query = query.limit(limit)
    return (await session.execute(query)).scalars().all()


async def list_steps(session: AsyncSession, run_id: str) -> Sequence[StepRun]:
    return (await session.execute(select(StepRun).where(StepRun.run_id == run_id))).scalars().all()


async def set_temporal_run_id(session: AsyncSession, run_id: str, temporal_run_id: str) -> None:
    await session.execute(
        update(Run).where(Run.run_id == run_id).values(temporal_run_id=temporal_run_id)
    )


def _run_started(run_id: str, temporal_run_id: str, started_at: datetime) -> CTE:
    """The run is running (its Temporal run id is recorded here too, in case the process that
    launched it died before it could): an UPDATE that rides in the step write's statement."""
    return (
        update(Run)
        .where(Run.run_id == run_id, Run.status == RunStatus.queued)
        .values(
            status=RunStatus.running,
            started_at=started_at,
            temporal_run_id=func.coalesce(Run.temporal_run_id, temporal_run_id),
        )
        .returning(Run.run_id)
        .cte("run_started")
    )


async def mark_step_started(
    session: AsyncSession,
    run_id: str,
    step_id: str,
    attempt: int,
    temporal_run_id: str,
    started_at: datetime,
) -> None:
    """An attempt began: the step is running and so is its run (one statement)."""
    values = {"status": StepStatus.running, "attempt": attempt, "error": None}
    await session.execute(
        insert(StepRun)
        .add_cte(_run_started(run_id, temporal_run_id, started_at))
        .values(run_id=run_id, step_id=step_id, started_at=started_at, **values)
        # A late write (its attempt was cancelled meanwhile) never reopens a finished step.
        .on_conflict_do_update(
            index_elements=["run_id", "step_id"], set_=values, where=StepRun.ended_at.is_(None)
        )
    )


async def mark_attempt_failed(
    session: AsyncSession, run_id: str, step_id: str, attempt: int, error: str
) -> None:
    """An attempt failed; the workflow decides later whether the step failed for good."""
    await session.execute(
        update(StepRun)
        .where(StepRun.run_id == run_id, StepRun.step_id == step_id, StepRun.attempt == attempt)
        .values(error=error)
    )


async def mark_step_succeeded(
    session: AsyncSession,
    run_id: str,
    step_id: str,
    attempt: int,
    outputs: dict,
    details: dict,
    *,
    started: tuple[str, datetime] | None = None,
) -> None:
    """The attempt succeeded (one statement). `started` (Temporal run id, start time) when its
    start is not recorded yet (a quick step): start and end are then written together."""
    values = {
        "status": StepStatus.succeeded,
        "attempt": attempt,
        "ended_at": func.now(),
        "outputs": outputs,
        "details": details,
        "error": None,
    }
    if started is None:
        await session.execute(
            update(StepRun)
            .where(StepRun.run_id == run_id, StepRun.step_id == step_id)
            .values(**values)
        )
        return
    temporal_run_id, started_at = started
    await session.execute(
        insert(StepRun)
        .add_cte(_run_started(run_id, temporal_run_id, started_at))
        .values(run_id=run_id, step_id=step_id, started_at=started_at, **values)
        .on_conflict_do_update(index_elements=["run_id", "step_id"], set_=values)
    )


async def record_step_states(session: AsyncSession, run_id: str, states: list[StepState]) -> None:
    """Write states the workflow decided (skipped, failed for good, stopped, ...)."""
    for state in states:
        values = {"status": state.status, "error": state.error, "ended_at": state.ended_at}
        if state.outputs is not None:
            values["outputs"] = state.outputs
        await session.execute(
            insert(StepRun)
            .values(
                run_id=run_id,
                step_id=state.step_id,
                attempt=state.attempt,
                started_at=state.started_at,
                **values,
            )
            .on_conflict_do_update(index_elements=["run_id", "step_id"], set_=values)
        )


async def finish_run(
    session: AsyncSession,
    run_id: str,
    status: RunStatus,
    error: str | None,
    outputs: dict,
    steps: list[StepState],
    temporal_run_id: str,
    *,
    waits: bool = True,
) -> Run:
    """The run ended: its final status and every step's final state. Returns the run."""
    if waits:
        # Waits the run no longer needs must not catch later signals.
        await session.execute(
            delete(SignalWait).where(
                SignalWait.run_id == run_id, SignalWait.matched_signal_id.is_(None)
            )
        )
    await record_step_states(session, run_id, [s for s in steps if s.status.is_terminal])
    ended = await session.execute(
        update(Run)
        .where(Run.run_id == run_id)
        .values(
            status=status,
            error=error,
            outputs=outputs,
            ended_at=func.now(),
            started_at=func.coalesce(Run.started_at, func.now()),
            temporal_run_id=func.coalesce(Run.temporal_run_id, temporal_run_id),
        )
        .returning(Run)
        .execution_options(populate_existing=True)
    )
    run = ended.scalar_one_or_none()
    if run is None:
        raise NotFound(f"run {run_id!r} not found")
    return run


async def set_step_waiting(session: AsyncSession, run_id: str, step_id: str) -> None:
    """The step waits for a signal (`wait_for`); its run has started."""
    await session.execute(
        update(Run)
        .where(Run.run_id == run_id, Run.status == RunStatus.queued)
        .values(status=RunStatus.running, started_at=func.now())
    )
    values = {"status": StepStatus.waiting_for_signal}
    await session.execute(
        insert(StepRun)
        .values(run_id=run_id, step_id=step_id, attempt=0, **values)
        .on_conflict_do_update(index_elements=["run_id", "step_id"], set_=values)
    )


async def last_run_of_trigger(
    session: AsyncSession, workflow_id: str, trigger_id: str
) -> Run | None:
    query = (
        select(Run)
        .where(Run.workflow_id == workflow_id, Run.trigger_id == trigger_id)
        .order_by(Run.created_at.desc())
        .limit(1)
    )
    return (await session.execute(query)).scalar_one_or_none()
