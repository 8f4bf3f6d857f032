"""Iterations of composite steps: created when a foreach starts, written by the attempts of
their steps and by the workflows that carry them, read as progress and in pages."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from maestro.db.tables import Iteration

# What an iteration's status counts as in progress counts.
ITERATION_STATUSES = ("pending", "running", "succeeded", "failed", "skipped", "stopped")
ENDED = frozenset(ITERATION_STATUSES[2:])

_CREATE = text(
    "INSERT INTO iterations (run_id, step_path, index, status, params)"
    " SELECT :run_id, :path, (e.ordinality - 1)::int, 'pending', e.value"
    " FROM jsonb_array_elements(CAST(:items AS jsonb)) WITH ORDINALITY AS e(value, ordinality)"
    " ON CONFLICT DO NOTHING"
)
_REUSE = text(
    "UPDATE iterations n SET status = 'succeeded', outputs = o.outputs, steps = o.steps,"
    " started_at = o.started_at, ended_at = o.ended_at, error = :note"
    " FROM iterations o"
    " WHERE n.run_id = :run_id AND n.step_path = :path AND n.status = 'pending'"
    " AND o.run_id = :from_run_id AND o.step_path = :path AND o.index = n.index"
    " AND o.status = 'succeeded' AND o.params IS NOT DISTINCT FROM n.params"
)


async def create_iterations(
    session: AsyncSession, run_id: str, path: str, items: list[Any]
) -> None:
    """One pending row per item (a retry finds them made already)."""
    await session.execute(_CREATE, {"run_id": run_id, "path": path, "items": json.dumps(items)})


async def reuse_iterations(session: AsyncSession, run_id: str, path: str, from_run_id: str) -> int:
    """A restart: the iterations that succeeded in `from_run_id` on the same item keep their
    outputs and do not run again. Returns how many."""
    result = await session.execute(
        _REUSE,
        {
            "run_id": run_id,
            "path": path,
            "from_run_id": from_run_id,
            "note": f"reused from run {from_run_id}",
        },
    )
    return result.rowcount  # type: ignore[attr-defined]


async def open_iteration(
    session: AsyncSession, run_id: str, path: str, index: int, params: Any, workflow_id: str
) -> None:
    """A while's iteration begins: its row, running (a retry finds it made already)."""
    await session.execute(
        text(
            "INSERT INTO iterations"
            " (run_id, step_path, index, status, params, started_at, temporal_workflow_id)"
            " VALUES (:run_id, :path, :index, 'running', CAST(:params AS jsonb), now(), :wf)"
            " ON CONFLICT DO NOTHING"
        ),
        {
            "run_id": run_id,
            "path": path,
            "index": index,
            "params": json.dumps(params),
            "wf": workflow_id,
        },
    )


async def load_range(
    session: AsyncSession, run_id: str, path: str, lo: int, hi: int, temporal_workflow_id: str
) -> list[Iteration]:
    """The iterations [lo, hi), now carried by `temporal_workflow_id` (a skip requested from
    now on is signalled to it), in index order."""
    rows = await session.execute(
        update(Iteration)
        .where(
            Iteration.run_id == run_id,
            Iteration.step_path == path,
            Iteration.index >= lo,
            Iteration.index < hi,
        )
        .values(temporal_workflow_id=temporal_workflow_id)
        .returning(Iteration)
        .execution_options(synchronize_session=False)
    )
    return sorted(rows.scalars(), key=lambda r: r.index)


async def request_skip(
    session: AsyncSession, run_id: str, path: str, index: int
) -> Iteration | None:
    """Mark an iteration to be skipped; returns it (with the execution that carries it, if
    one loaded it already), or None if there is no such iteration."""
    row = await session.execute(
        update(Iteration)
        .where(Iteration.run_id == run_id, Iteration.step_path == path, Iteration.index == index)
        .values(skip_requested=True)
        .returning(Iteration)
        .execution_options(synchronize_session=False)
    )
    return row.scalar_one_or_none()


async def step_started(
    session: AsyncSession,
    run_id: str,
    path: str,
    index: int,
    step_id: str,
    attempt: int,
    started_at: datetime,
) -> None:
    """A body step's attempt began: the iteration is running."""
    await session.execute(
        text(
            "UPDATE iterations SET status = 'running',"
            " started_at = coalesce(started_at, CAST(:at AS timestamptz)),"
            " steps = steps || jsonb_build_object(CAST(:step AS text), jsonb_build_object("
            "   'status', 'running', 'attempt', CAST(:attempt AS int)))"
            " WHERE run_id = :run_id AND step_path = :path AND index = :index"
            " AND status IN ('pending', 'running')"
        ),
        {
            "run_id": run_id,
            "path": path,
            "index": index,
            "step": step_id,
            "attempt": attempt,
            "at": started_at,
        },
    )


async def step_attempt_failed(
    session: AsyncSession, run_id: str, path: str, index: int, error: str
) -> None:
    await session.execute(
        update(Iteration)
        .where(Iteration.run_id == run_id, Iteration.step_path == path, Iteration.index == index)
        .values(error=error)
    )


async def step_succeeded(
    session: AsyncSession,
    run_id: str,
    path: str,
    index: int,
    step_id: str,
    attempt: int,
    outputs: dict[str, Any],
    *,
    finishes: bool,
    started_at: datetime | None = None,
) -> None:
    """A body step succeeded: its outputs join the iteration's; `finishes`: it was the
    iteration's last, which succeeds with it (one statement either way)."""
    await session.execute(
        text(
            "UPDATE iterations SET"
            " outputs = coalesce(outputs, '{}'::jsonb) || jsonb_build_object("
            "   CAST(:step AS text), CAST(:outputs AS jsonb)),"
            " steps = steps || jsonb_build_object(CAST(:step AS text), jsonb_build_object("
            "   'status', 'succeeded', 'attempt', CAST(:attempt AS int))),"
            " started_at = coalesce(started_at, CAST(:started_at AS timestamptz), now()),"
            " status = CASE WHEN CAST(:finishes AS boolean) THEN 'succeeded' ELSE 'running' END,"
            " ended_at = CASE WHEN CAST(:finishes AS boolean) THEN now() ELSE ended_at END,"
            " error = CASE WHEN CAST(:finishes AS boolean) THEN NULL ELSE error END"
            " WHERE run_id = :run_id AND step_path = :path AND index = :index"
        ),
        {
            "run_id": run_id,
            "path": path,
            "index": index,
            "step": step_id,
            "attempt": attempt,
            "outputs": json.dumps(outputs),
            "finishes": finishes,
            "started_at": started_at,
        },
    )


async def step_success(
    session: AsyncSession, run_id: str, path: str, index: int, step_id: str
) -> dict[str, Any] | None:
    """The outputs of a body step that succeeded in this iteration (a retried attempt whose
    earlier one succeeded without telling Temporal), or None."""
    row = await session.get(Iteration, (run_id, path, index))
    if row is None or (row.steps or {}).get(step_id, {}).get("status") != "succeeded":
        return None
    return (row.outputs or {}).get(step_id, {})


async def record_states(
    session: AsyncSession, run_id: str, path: str, states: Sequence[dict[str, Any]]
) -> None:
    """Write iteration ends the workflow decided ({index, status, error, ended_at}), many in
    one statement."""
    if not states:
        return
    await session.execute(
        text(
            "UPDATE iterations SET status = v.status, error = coalesce(v.error, iterations.error),"
            " ended_at = v.ended_at, started_at = coalesce(iterations.started_at, v.ended_at)"
            " FROM jsonb_to_recordset(CAST(:states AS jsonb))"
            "   AS v(index int, status text, error text, ended_at timestamptz)"
            " WHERE iterations.run_id = :run_id AND iterations.step_path = :path"
            " AND iterations.index = v.index"
        ),
        {"run_id": run_id, "path": path, "states": json.dumps(list(states), default=str)},
    )


async def counts(
    session: AsyncSession, run_id: str, paths: Sequence[str]
) -> dict[str, dict[str, int]]:
    """Per step path: how many iterations are in each status (every status listed)."""
    if not paths:
        return {}
    rows = await session.execute(
        select(Iteration.step_path, Iteration.status, func.count())
        .where(Iteration.run_id == run_id, Iteration.step_path.in_(list(paths)))
        .group_by(Iteration.step_path, Iteration.status)
    )
    out: dict[str, dict[str, int]] = {}
    for path, status, count in rows:
        out.setdefault(path, dict.fromkeys(ITERATION_STATUSES, 0))[status] = count
    return out


async def page(
    session: AsyncSession,
    run_id: str,
    path: str,
    *,
    status: str | None,
    after: int | None,
    limit: int,
) -> Sequence[Iteration]:
    """Iterations in index order, after index `after`."""
    query = select(Iteration).where(Iteration.run_id == run_id, Iteration.step_path == path)
    if status:
        query = query.where(Iteration.status == status)
    if after is not None:
        query = query.where(Iteration.index > after)
    return (await session.execute(query.order_by(Iteration.index).limit(limit))).scalars().all()


async def outputs_in_order(session: AsyncSession, run_id: str, path: str) -> list[Any]:
    """Every iteration's outputs in index order (None where it did not succeed)."""
    rows = await session.execute(
        select(Iteration.status, Iteration.outputs)
        .where(Iteration.run_id == run_id, Iteration.step_path == path)
        .order_by(Iteration.index)
    )
    return [outputs or {} if status == "succeeded" else None for status, outputs in rows]


async def resume_while(
    session: AsyncSession, run_id: str, path: str, from_run_id: str
) -> tuple[int, dict[str, Any]]:
    """A restart of a while: the iterations of `from_run_id` before its first one that did not
    succeed (or was not skipped) are taken over, the succeeded ones with their outputs.
    Returns the index the while goes on from, and the outputs it sees as `previous`."""
    rows = await session.execute(
        select(Iteration)
        .where(Iteration.run_id == from_run_id, Iteration.step_path == path)
        .order_by(Iteration.index)
    )
    kept: list[Iteration] = []
    for row in rows.scalars():
        if row.index != len(kept) or row.status not in ("succeeded", "skipped"):
            break
        kept.append(row)
    if kept:
        note = f"reused from run {from_run_id}"
        await session.execute(
            insert(Iteration)
            .values(
                [
                    {
                        "run_id": run_id,
                        "step_path": path,
                        "index": row.index,
                        "status": row.status,
                        "params": row.params,
                        "outputs": row.outputs,
                        "steps": row.steps,
                        "error": note if row.status == "succeeded" else row.error,
                        "started_at": row.started_at,
                        "ended_at": row.ended_at,
                    }
                    for row in kept
                ]
            )
            .on_conflict_do_nothing()
        )
    succeeded = [row for row in kept if row.status == "succeeded"]
    return len(kept), (succeeded[-1].outputs or {}) if succeeded else {}
