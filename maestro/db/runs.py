"""Runs and their step states."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    ARRAY,
    BigInteger,
    String,
    Table,
    Text,
    any_,
    bindparam,
    delete,
    func,
    literal,
    select,
    text,
    true,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, Insert, array, insert
from sqlalchemy.ext.asyncio import AsyncSession

from maestro.db.direct import DirectStatement, adopt
from maestro.db.tables import Run, SignalMatch, SignalWait, StepRun, Workflow
from maestro.errors import NotFound
from maestro.runtime import RunStatus, StepState, StepStatus


async def subworkflow_children(session: AsyncSession, run_id: str) -> Sequence[Run]:
    """The runs the subworkflow steps of a run started, oldest first."""
    query = (
        select(Run)
        .where(
            Run.cause["kind"].astext == "subworkflow",
            Run.cause["detail"]["parent_run_id"].astext == run_id,
        )
        .order_by(Run.created_at, Run.run_id)
    )
    return (await session.execute(query)).scalars().all()


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
    page = select(Run.run_id)
    if workflow_id:
        page = page.where(Run.workflow_id == workflow_id)
    if status:
        page = page.where(Run.status == status)
    if owners is not None:
        page = page.where(
            Run.workflow_id.in_(select(Workflow.id).where(Workflow.owner.in_(owners)))
        )
    key = tuple_(Run.created_at, Run.run_id)
    if after:
        page = page.where(key > after if oldest_first else key < after)
    order = (
        (Run.created_at, Run.run_id) if oldest_first else (Run.created_at.desc(), Run.run_id.desc())
    )
    # The page's ids first, read from an index alone (each filter has one that ends in
    # `created_at, run_id`), then its rows: a workflow's runs are found in its index, never
    # by walking every run in time order.
    page = page.order_by(*order).limit(limit)
    query = select(Run).where(Run.run_id.in_(page.scalar_subquery())).order_by(*order)
    return (await session.execute(query)).scalars().all()


async def get_step(session: AsyncSession, run_id: str, step_id: str) -> StepRun | None:
    return await session.get(StepRun, (run_id, step_id))


async def list_steps(session: AsyncSession, run_id: str) -> Sequence[StepRun]:
    return (await session.execute(select(StepRun).where(StepRun.run_id == run_id))).scalars().all()


# The statements every run executes are built once, with bind parameters: SQLAlchemy memoizes
# a statement object's cache key, so executing the same object again skips rebuilding and
# re-keying it. (Parameter names differ from column names, which SQLAlchemy reserves.)
_SET_TEMPORAL_RUN_ID = (
    update(Run)
    .where(Run.run_id == bindparam("b_run_id"))
    .values(temporal_run_id=bindparam("b_temporal_run_id"))
)


async def set_temporal_run_id(session: AsyncSession, run_id: str, temporal_run_id: str) -> None:
    await session.execute(
        _SET_TEMPORAL_RUN_ID, {"b_run_id": run_id, "b_temporal_run_id": temporal_run_id}
    )


# `set_config(..., true)` holds for the statement's own transaction: its commit does not wait
# for the disk.
_SET_TEMPORAL_RUN_IDS = DirectStatement(
    text(
        "UPDATE runs SET temporal_run_id = v.temporal_run_id"
        " FROM unnest(CAST(:run_ids AS text[]), CAST(:temporal_run_ids AS text[]))"
        " AS v(run_id, temporal_run_id),"
        " (SELECT set_config('synchronous_commit', 'off', true)) AS without_flush"
        " WHERE runs.run_id = v.run_id AND runs.temporal_run_id IS NULL"
    )
)


async def set_temporal_run_ids(session: AsyncSession, run_ids: dict[str, str]) -> None:
    """Record many launched runs' Temporal run ids in one statement (in an autocommit session,
    one round trip), without waiting for the disk: a write lost in a database crash costs the
    sweeper a describe, nothing more."""
    await _SET_TEMPORAL_RUN_IDS.execute(
        session, {"run_ids": list(run_ids), "temporal_run_ids": list(run_ids.values())}
    )


async def lock_unlaunched(
    session: AsyncSession, admitted_before: datetime, limit: int
) -> list[Run]:
    """Runs admitted before `admitted_before` and still not on Temporal (queued, no Temporal
    run id), oldest first, locked; rows another transaction holds are skipped. A subworkflow's
    child run is left out: its parent launches it, as its child."""
    query = (
        select(Run)
        .where(
            Run.temporal_run_id.is_(None),
            Run.admitted_at.is_not(None),
            Run.status == RunStatus.queued,
            Run.admitted_at < admitted_before,
            Run.cause["kind"].astext != "subworkflow",
        )
        .order_by(Run.created_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list((await session.execute(query)).scalars())


async def stops_due(
    session: AsyncSession,
    workflow_ids: Collection[str] | None = None,
    requested_before: datetime | None = None,
    limit: int = 500,
) -> list[Run]:
    """Live runs on Temporal whose stop was requested (of these workflows; requested before
    `requested_before`)."""
    query = select(Run).where(
        Run.stop_requested_at.is_not(None),
        Run.status.in_([RunStatus.queued, RunStatus.running]),
        Run.temporal_run_id.is_not(None),
    )
    if workflow_ids is not None:
        query = query.where(Run.workflow_id.in_(workflow_ids))
    if requested_before is not None:
        query = query.where(Run.stop_requested_at < requested_before)
    return list((await session.execute(query.limit(limit))).scalars())


async def find_by_temporal_workflow_id(
    session: AsyncSession, temporal_workflow_id: str
) -> Run | None:
    return await session.scalar(select(Run).where(Run.temporal_workflow_id == temporal_workflow_id))


_RUNS = cast(Table, Run.__table__)
_RUN_FIELDS = [c.key for c in _RUNS.c if c.key != "created_at"]
_INSERT_RUN = (
    insert(_RUNS)
    .values(
        {
            # None is SQL NULL in every column, JSON ones included (as the ORM writes it).
            k: bindparam(
                f"r_{k}", type_=JSONB(none_as_null=True) if k == "outputs" else _RUNS.c[k].type
            )
            for k in _RUN_FIELDS
        }
    )
    .returning(_RUNS.c.run_id, _RUNS.c.workflow_id, _RUNS.c.trigger_id, _RUNS.c.created_at)
)
_NEW_RUN = _INSERT_RUN.cte("new_run")
_MATCHES = cast(Table, SignalMatch.__table__)
_CONSUMED = insert(_MATCHES).from_select(
    ["signal_id", "workflow_id", "trigger_id", "outcome", "run_id"],
    select(
        func.unnest(bindparam("signal_ids", type_=ARRAY(BigInteger))),
        _NEW_RUN.c.workflow_id,
        _NEW_RUN.c.trigger_id,
        literal("started_run"),
        _NEW_RUN.c.run_id,
    ),
)
# A run and the matches of the signals it consumes, in one statement (a signal that waited in
# a partial join has a match already: it becomes `started_run`).
_INSERT_RUN_CONSUMING = DirectStatement(
    _CONSUMED.on_conflict_do_update(
        index_elements=["signal_id", "workflow_id", "trigger_id"],
        set_={
            "outcome": _CONSUMED.excluded.outcome,
            "run_id": _CONSUMED.excluded.run_id,
            "detail": None,
            "updated_at": func.now(),
        },
    ).returning(select(_NEW_RUN.c.created_at).scalar_subquery().label("created_at"))
)
_INSERT_RUN_ALONE = DirectStatement(_INSERT_RUN)


async def insert_run(session: AsyncSession, run: Run, consumed: Sequence[int] = ()) -> None:
    """Insert a new run's row, and record the signals it `consumed` as `started_run` for its
    trigger, in one statement; `run` then belongs to the session as if loaded (later changes
    in the transaction are UPDATEs). Cheaper than the ORM's flush on the signal path."""
    values = {f"r_{k}": getattr(run, k) for k in _RUN_FIELDS}
    if consumed:
        row = await _INSERT_RUN_CONSUMING.fetchrow(session, values | {"signal_ids": list(consumed)})
    else:
        row = await _INSERT_RUN_ALONE.fetchrow(session, values)
    assert row is not None  # an INSERT without a conflict clause on runs returns its row
    adopt(
        session, run, {k: values[f"r_{k}"] for k in _RUN_FIELDS} | {"created_at": row["created_at"]}
    )


# The run is running (its Temporal run id is recorded here too, in case the process that
# launched it died before it could): an UPDATE that rides in the step write's statement.
_RUN_STARTED = (
    update(Run)
    .where(Run.run_id == bindparam("b_run_id"), Run.status == RunStatus.queued)
    .values(
        status=RunStatus.running,
        started_at=bindparam("b_started_at"),
        temporal_run_id=func.coalesce(
            Run.temporal_run_id, bindparam("b_temporal_run_id", type_=String)
        ),
    )
    .returning(Run.run_id)
    .cte("run_started")
)


def _step_write_starting_run(values: dict[str, Any]) -> Insert:
    """Upsert a step row with `values`, marking its run started in the same statement."""
    return (
        insert(StepRun)
        .add_cte(_RUN_STARTED)
        .values(
            run_id=bindparam("b_run_id"),
            step_id=bindparam("b_step_id"),
            started_at=bindparam("b_started_at"),
            **values,
        )
    )


_STARTED_VALUES: dict[str, Any] = {
    "status": StepStatus.running,
    "attempt": bindparam("b_attempt"),
    "error": None,
}
# A late write (its attempt was cancelled meanwhile) never reopens a finished step.
_STEP_STARTED = DirectStatement(
    _step_write_starting_run(_STARTED_VALUES).on_conflict_do_update(
        index_elements=["run_id", "step_id"],
        set_=_STARTED_VALUES,
        where=StepRun.ended_at.is_(None),
    )
)
_SUCCEEDED_VALUES = {
    "status": StepStatus.succeeded,
    "attempt": bindparam("b_attempt"),
    "ended_at": func.now(),
    "outputs": bindparam("b_outputs", type_=JSONB),
    "details": bindparam("b_details", type_=JSONB),
    "error": None,
}
_STEP_SUCCEEDED = DirectStatement(
    update(StepRun)
    .where(StepRun.run_id == bindparam("b_run_id"), StepRun.step_id == bindparam("b_step_id"))
    .values(**_SUCCEEDED_VALUES)
)
_STEP_STARTED_AND_SUCCEEDED = DirectStatement(
    _step_write_starting_run(_SUCCEEDED_VALUES).on_conflict_do_update(
        index_elements=["run_id", "step_id"], set_=_SUCCEEDED_VALUES
    )
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
    await _STEP_STARTED.execute(
        session,
        {
            "b_run_id": run_id,
            "b_step_id": step_id,
            "b_attempt": attempt,
            "b_temporal_run_id": temporal_run_id,
            "b_started_at": started_at,
        },
    )


async def mark_attempt_failed(
    session: AsyncSession,
    run_id: str,
    step_id: str,
    attempt: int,
    error: str,
    details: dict[str, Any] | None = None,
) -> None:
    """An attempt failed (with its `details`, a shell step's log tails, when it left any); the
    workflow decides later whether the step failed for good."""
    values: dict[str, Any] = {"error": error}
    if details is not None:
        values["details"] = details
    await session.execute(
        update(StepRun)
        .where(StepRun.run_id == run_id, StepRun.step_id == step_id, StepRun.attempt == attempt)
        .values(**values)
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
        "b_run_id": run_id,
        "b_step_id": step_id,
        "b_attempt": attempt,
        "b_outputs": outputs,
        "b_details": details,
    }
    if started is None:
        await _STEP_SUCCEEDED.execute(session, values)
        return
    temporal_run_id, started_at = started
    await _STEP_STARTED_AND_SUCCEEDED.execute(
        session, {**values, "b_temporal_run_id": temporal_run_id, "b_started_at": started_at}
    )


async def record_step_states(session: AsyncSession, run_id: str, states: list[StepState]) -> None:
    """Write states the workflow decided (skipped, failed for good, stopped, a composite step
    running, ...)."""
    for state in states:
        values: dict[str, Any] = {
            "status": state.status,
            "error": state.error,
            "ended_at": state.ended_at,
        }
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
    starts = [s.started_at for s in states if s.status is StepStatus.running and s.started_at]
    if starts:
        # A composite step began (its work is in child executions): its run is running.
        await session.execute(
            update(Run)
            .where(Run.run_id == run_id, Run.status == RunStatus.queued)
            .values(status=RunStatus.running, started_at=min(starts))
        )


# Only a live run ends: a run ends exactly once, whoever tries.
_RUN_ENDED = DirectStatement(
    update(_RUNS)
    .where(
        _RUNS.c.run_id == bindparam("b_run_id"),
        _RUNS.c.status == any_(array([RunStatus.queued.value, RunStatus.running.value])),
    )
    .values(
        status=bindparam("b_status", type_=String),
        error=bindparam("b_error", type_=Text),
        outputs=bindparam("b_outputs", type_=JSONB),
        ended_at=func.now(),
        started_at=func.coalesce(_RUNS.c.started_at, func.now()),
        temporal_run_id=func.coalesce(
            _RUNS.c.temporal_run_id, bindparam("b_temporal_run_id", type_=String)
        ),
    )
    .returning(*_RUNS.c)
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
) -> tuple[Run, bool]:
    """The run ended: its final status and every step's final state. Returns the run and
    whether this call ended it (False: it had ended already, and is returned as it is).
    The run's row is written first (lock order: run, then its steps)."""
    ended = await _RUN_ENDED.fetchrow(
        session,
        {
            "b_run_id": run_id,
            "b_status": status,
            "b_error": error,
            "b_outputs": outputs,
            "b_temporal_run_id": temporal_run_id,
        },
    )
    if ended is None:
        return await get_run(session, run_id), False
    if waits:
        # Waits the run no longer needs must not catch later signals.
        await session.execute(
            delete(SignalWait).where(
                SignalWait.run_id == run_id, SignalWait.matched_signal_id.is_(None)
            )
        )
    await record_step_states(session, run_id, [s for s in steps if s.status.is_terminal])
    return adopt(session, Run(), ended), True


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


async def last_runs_of_triggers(
    session: AsyncSession, workflow_id: str, trigger_ids: list[str]
) -> dict[str, Run]:
    """The last run each trigger started, in one query: a restart keeps its original's
    trigger but is no fire."""
    if not trigger_ids:
        return {}
    query = (
        select(Run)
        .where(
            Run.workflow_id == workflow_id,
            Run.trigger_id.in_(trigger_ids),
            Run.cause["kind"].astext != "restart",
        )
        .distinct(Run.trigger_id)
        # Runs made in one transaction (a backfill) share `created_at`.
        .order_by(Run.trigger_id, Run.created_at.desc(), Run.run_number.desc())
    )
    rows = (await session.execute(query)).scalars()
    return {run.trigger_id: run for run in rows if run.trigger_id is not None}


async def recent_runs(
    session: AsyncSession, workflow_ids: Sequence[str], per_workflow: int
) -> dict[str, list[Run]]:
    """The newest `per_workflow` runs of each workflow, newest first, in one query (each
    workflow's read from its `created_at` index)."""
    if not workflow_ids:
        return {}
    ids = select(func.unnest(array(list(workflow_ids), type_=String)).column_valued("id")).subquery(
        "ids"
    )
    newest = (
        select(Run.run_id)
        .where(Run.workflow_id == ids.c.id)
        .order_by(Run.created_at.desc(), Run.run_id.desc())
        .limit(per_workflow)
        .lateral()
    )
    query = (
        select(Run)
        .where(Run.run_id.in_(select(newest.c.run_id).select_from(ids.join(newest, true()))))
        .order_by(Run.workflow_id, Run.created_at.desc(), Run.run_id.desc())
    )
    found: dict[str, list[Run]] = {workflow_id: [] for workflow_id in workflow_ids}
    for run in (await session.execute(query)).scalars():
        found[run.workflow_id].append(run)
    return found
