"""Operator actions on runs: restart, unblock a strict_sequential queue, bypass a wait, skip a
step or an iteration of a foreach or while — and which actions a step's status allows."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from maestro import strategies
from maestro.composites import SKIP_ITERATION_SIGNAL, SkipIterationInput
from maestro.dag import descendants
from maestro.db import iterations as iterations_db
from maestro.db import runs as runs_db
from maestro.db import workflows as workflows_db
from maestro.db.tables import Iteration, Run
from maestro.ends import LIVE, not_allowed
from maestro.errors import InvalidInput, InvalidRunState, NotFound, Problem, Unavailable
from maestro.runs import RunsService
from maestro.runtime import (
    BYPASS_SIGNAL,
    SKIP_STEP_SIGNAL,
    BypassInput,
    Cause,
    RunStatus,
    SkipStepInput,
    StepStatus,
)


def step_actions(run: Run, status: StepStatus) -> list[str]:
    """The actions a step's status allows (only while its run is live)."""
    if RunStatus(run.status) not in LIVE:
        return []
    if status is StepStatus.waiting_for_signal:
        return ["bypass", "skip"]
    if status in (StepStatus.pending, StepStatus.running):
        return ["skip"]
    return []


class RunActions:
    """What an operator does to runs beyond start and stop; new runs go through the start door
    (`RunsService.create_run`), signals to live runs through Temporal."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], runs: RunsService, client: Client
    ) -> None:
        self._sessions = sessions
        self._runs = runs
        self._client = client

    async def restart_run(self, run_id: str, start_from: str) -> Run:
        """A new run of the same version and params. `failed`: reuse the outputs of steps that
        succeeded and run the rest; `beginning`: run everything; a step id: rerun that step
        and everything after it."""
        async with self._sessions() as session:
            original = await runs_db.get_run(session, run_id)
            if RunStatus(original.status) in LIVE:
                raise not_allowed(original, "restart")
            definition = await self._runs.definitions.get(
                session, original.workflow_id, original.version
            )
            steps = {s.step_id: s for s in await runs_db.list_steps(session, run_id)}
        step_ids = [s.id for s in definition.steps]
        if start_from not in ("failed", "beginning", *step_ids):
            raise InvalidInput(
                "invalid restart point",
                [
                    Problem(
                        ("body", "from"),
                        f"{start_from!r} is not 'failed', 'beginning' or a step of "
                        f"this workflow ({', '.join(step_ids)})",
                        "restart_from",
                    )
                ],
            )
        rerun: set[str] = set()
        if start_from == "beginning":
            rerun = set(step_ids)
        elif start_from != "failed":
            rerun = descendants({s.id: s.depends_on for s in definition.steps}, start_from)
        reuse = {
            sid: (row.outputs or {})
            for sid, row in steps.items()
            if row.status == StepStatus.succeeded and sid not in rerun
        }
        cause = Cause(
            kind="restart", detail={"restart_of": run_id, "from": start_from, "reuse": reuse}
        )
        async with self._sessions.begin() as session:
            workflow = await workflows_db.get_workflow(session, original.workflow_id, lock=True)
            # Restarting the run that holds a strict_sequential queue releases it, and the
            # restart goes first: it stands for the run the queue was waiting on.
            retrying = workflow.blocked_by_run_id == run_id
            if retrying:
                workflow.blocked_by_run_id = None
            run, _ = await self._runs.create_run(
                session,
                original.workflow_id,
                dict(original.params),
                cause=cause,
                version=original.version,
                trigger_id=original.trigger_id,
                jump_queue=retrying,
            )
        await self._runs.launch([run])
        return run

    async def unblock(self, workflow_id: str) -> list[Run]:
        """Release a strict_sequential queue held by a failed run."""
        async with self._sessions.begin() as session:
            workflow = await workflows_db.get_workflow(session, workflow_id, lock=True)
            if workflow.blocked_by_run_id is None:
                raise InvalidRunState(f"workflow {workflow_id!r} is not blocked")
            workflow.blocked_by_run_id = None
            strategy = await self._runs.run_strategy(session, workflow, 1)
            admitted = await strategies.admit_waiting(session, workflow, strategy)
        await self._runs.launch(admitted)
        return admitted

    async def bypass_wait(self, run_id: str, step_id: str) -> Run:
        """Release a step that waits for a signal, as if the signal had come."""
        run, step = await self._live_step(run_id, step_id, "bypass")
        await self._signal(run, BYPASS_SIGNAL, BypassInput(step_id=step_id))
        return run

    async def skip_step(self, run_id: str, step_id: str) -> Run:
        """Skip a step that has not finished: the DAG continues as if it succeeded, with no
        outputs (a running step is cancelled first)."""
        run, _ = await self._live_step(run_id, step_id, "skip")
        await self._signal(run, SKIP_STEP_SIGNAL, SkipStepInput(step_id=step_id))
        return run

    async def skip_iteration(self, run_id: str, path: str, index: int) -> Iteration:
        """Skip one iteration of a foreach or while step (`path`: its step id, or the path of
        a nested one): it ends `skipped` (cancelled if it runs) and the others go on."""
        async with self._sessions.begin() as session:
            run = await runs_db.get_run(session, run_id)
            if RunStatus(run.status) not in LIVE:
                raise InvalidRunState(
                    f"cannot skip an iteration of run {run_id!r}: it is {run.status}"
                )
            row = await iterations_db.request_skip(session, run_id, path, index)
            if row is None:
                raise NotFound(f"run {run_id!r} has no iteration {index} of step {path!r}")
            if row.status in iterations_db.ENDED:
                raise InvalidRunState(
                    f"cannot skip iteration {index} of step {path!r}: it is {row.status}"
                )
        if row.temporal_workflow_id is not None:
            # Loaded by the execution that carries it: it must hear of the skip (one that
            # loads it later reads the mark).
            try:
                await self._client.get_workflow_handle(row.temporal_workflow_id).signal(
                    SKIP_ITERATION_SIGNAL, SkipIterationInput(index=index)
                )
            except RPCError as exc:
                if exc.status != RPCStatusCode.NOT_FOUND:
                    raise Unavailable(f"Temporal is unavailable: {exc}") from exc
        return row

    async def _live_step(self, run_id: str, step_id: str, action: str) -> tuple[Run, StepStatus]:
        async with self._sessions() as session:
            run = await runs_db.get_run(session, run_id)
            definition = await self._runs.definitions.get(session, run.workflow_id, run.version)
            row = await runs_db.get_step(session, run_id, step_id)
        if step_id not in {s.id for s in definition.steps}:
            raise NotFound(f"run {run_id!r} has no step {step_id!r}")
        status = StepStatus(row.status) if row else StepStatus.pending
        allowed = step_actions(run, status)
        if action not in allowed:
            raise InvalidRunState(
                f"cannot {action} step {step_id!r}: it is {status.value} in a {run.status} run; "
                f"allowed actions: {', '.join(allowed) or 'none'}"
            )
        return run, status

    async def _signal(self, run: Run, name: str, payload: Any) -> None:
        try:
            await self._client.get_workflow_handle(run.temporal_workflow_id).signal(name, payload)
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                raise InvalidRunState(f"run {run.run_id!r} is not running on Temporal") from exc
            raise Unavailable(f"Temporal is unavailable: {exc}") from exc
