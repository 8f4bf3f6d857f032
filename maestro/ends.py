"""Run ends: the one door every run's end goes through, with one lock order.

Whatever ends a run — its last step, a failure or a timeout (RunWorkflow's finish), a stop, a
kill, a workflow stop, a last_only replacement — is recorded here. Locks are always taken in
this order: the completion signal's name (`maestro.run.<status>`), the workflow's row, the run's
row, its steps; publishing the completion then takes the downstream workflows' rows. The end is
written only while the run is live (`queued`/`running`), so a run ends exactly once, admits the
next queued runs once and publishes exactly one completion signal (its request id is derived
from the run, so a retried publish is a duplicate).

RunWorkflow's ends (the hot path) take no name lock: the end and the admission commit in one
transaction and the completion signal in a second one, which is retried with the activity if the
process dies in between. Ends decided by the API (stop, kill, workflow stop) commit everything
in one transaction, name lock first, so nothing is left to redo if the process dies.

Every end records its SLA margin (`maestro.sla.record_end`) and its webhook event
(`maestro.outbox.run_ended`) in the transaction that writes it, so an end that committed is
delivered even if the process dies right after.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from maestro import metrics, outbox, sla, strategies
from maestro.db import runs as runs_db
from maestro.db import signals as signals_db
from maestro.db import workflows as workflows_db
from maestro.db.tables import Run, SignalWait, StepRun
from maestro.definitions import FINISH_STATUSES
from maestro.errors import InvalidRunState, Unavailable
from maestro.runtime import FinishRunInput, RunStatus, StepStatus
from maestro.triggers import completion_signal_name

if TYPE_CHECKING:
    from maestro.runs import RunsService
    from maestro.signals import SignalBus

logger = logging.getLogger(__name__)

LIVE = (RunStatus.queued, RunStatus.running)
# A kill of a run that was admitted but not yet started on Temporal starts it this far in the
# future and terminates it at once: the run then exists on Temporal (a launch racing with the
# kill is refused as a duplicate) and none of its code runs.
_KILL_START_DELAY = timedelta(hours=1)


def run_actions(run: Run) -> list[str]:
    """The actions a run's status allows."""
    if RunStatus(run.status) in LIVE:
        return ["stop", "kill"]
    return ["restart"]


def not_allowed(run: Run, action: str) -> InvalidRunState:
    """The 409 for an action the run's status does not allow."""
    allowed = ", ".join(run_actions(run)) or "none"
    return InvalidRunState(
        f"cannot {action} run {run.run_id} (it is {run.status}); allowed actions: {allowed}"
    )


async def skip_waiting(session: AsyncSession, runs: list[Run], reason: str) -> None:
    """In the caller's transaction (which holds the workflow's row lock): runs that waited in
    the queue end `skipped` (last_only replacing them). They never held a slot and publish no
    completion signal."""
    now = datetime.now(UTC)
    for run in runs:
        run.status, run.error, run.ended_at = RunStatus.skipped, reason, now
    await session.flush()


class RunEnds:
    """Records run ends, admits the next runs, publishes completion signals, launches."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], runs: RunsService, bus: SignalBus
    ) -> None:
        self._sessions = sessions
        self._runs = runs
        self._bus = bus

    # -- RunWorkflow's end --------------------------------------------------------------------

    async def finish(
        self,
        finish: FinishRunInput,
        temporal_run_id: str,
        also: Callable[[AsyncSession], Awaitable[None]] | None = None,
    ) -> Run:
        """The end RunWorkflow decided (with `also`, the last step's success, in the same
        transaction). Idempotent: a retry after a crash publishes what is missing."""
        async with self._sessions.begin() as session:
            workflow = await workflows_db.get_workflow(session, finish.workflow_id, lock=True)
            if also is not None:
                await also(session)
            run, ended = await runs_db.finish_run(
                session,
                finish.run_id,
                finish.status,
                finish.error,
                finish.outputs,
                finish.steps,
                temporal_run_id,
                waits=finish.waits,
            )
            admitted = []
            if ended:
                await self._recorded(session, run)
                admitted = await self._runs.run_ended(session, run, workflow)
        async with self._sessions.begin() as session:
            pending = await self._publish_completion(session, run)
        if ended:
            metrics.RUNS_ENDED.labels(run.status).inc()
        await self._after(admitted, [pending])
        return run

    # -- ends the API decides -------------------------------------------------------------------

    async def stop_run(self, run_id: str) -> Run:
        """Stop gracefully. A run still waiting in the queue ends `stopped` at once; an admitted
        one is cancelled on Temporal (started there first if its launch is still due, so a
        racing launch cannot revive it) and RunWorkflow records its end. If Temporal cannot be
        reached the stop stays requested and the sweeper sends it."""
        run = await self._read(run_id, "stop")
        if run.admitted_at is None:
            ended = await self._end_here(run_id, "stopped before it started", waiting_only=True)
            if ended is not None:
                return ended
            run = await self._read(run_id, "stop")  # admitted meanwhile
        async with self._sessions.begin() as session:
            await strategies.request_stop(session, [run])
        if await self._cancel(run):
            return run
        ended = await self._end_here(run_id, "stopped before it started")
        return ended if ended is not None else await self._read(run_id, None)

    async def kill_run(self, run_id: str) -> Run:
        """Terminate now, without cleanup: the run ends `stopped` with error `killed` and the
        next queued run is admitted. Unavailable (nothing changed) if Temporal cannot be
        reached for a run that may be running there."""
        run = await self._read(run_id, "kill")
        if run.admitted_at is None:
            ended = await self._end_here(run_id, "killed", waiting_only=True)
            if ended is not None:
                return ended
            run = await self._read(run_id, "kill")
        await self._runs.terminate_on_temporal(run, "killed by an operator", _KILL_START_DELAY)
        ended = await self._end_here(run_id, "killed")
        return ended if ended is not None else await self._read(run_id, None)

    async def stop_workflow(self, workflow_id: str) -> list[Run]:
        """Stop every live run of a workflow: runs waiting in the queue end now, admitted ones
        are cancelled (as `stop_run`)."""
        name = completion_signal_name(RunStatus.stopped)
        async with self._sessions.begin() as session:
            await signals_db.lock_names(session, [name])
            await workflows_db.get_workflow(session, workflow_id, lock=True)
            live = list(
                (
                    await session.execute(
                        select(Run)
                        .where(Run.workflow_id == workflow_id, Run.status.in_(list(LIVE)))
                        .order_by(Run.run_number)
                        .with_for_update()
                    )
                ).scalars()
            )
            pendings = []
            for run in live:
                if run.admitted_at is None:
                    await self._end_in(session, run, "workflow stopped")
                    pendings.append(await self._publish_completion(session, run))
            admitted = [r for r in live if r.admitted_at is not None]
            await strategies.request_stop(session, admitted)
        # Runs that waited in the queue held no slot: ending them admits nothing.
        await self._after([], pendings)
        for run in admitted:
            if not await self._cancel(run):
                await self._end_here(run.run_id, "stopped before it started")
        return live

    # -- helpers --------------------------------------------------------------------------------

    async def _cancel(self, run: Run) -> bool:
        """Cancel an admitted run on Temporal (its stop is recorded already); False if Temporal
        has no execution for it (it never started, or is gone), so it is ended here. If
        Temporal cannot be reached, the sweeper sends the stop later."""
        try:
            return await self._runs.cancel_on_temporal(run)
        except Unavailable as exc:
            logger.warning(
                "stop deferred to the sweeper", extra={"run_id": run.run_id, "error": str(exc)}
            )
            return True

    async def _read(self, run_id: str, action: str | None) -> Run:
        async with self._sessions() as session:
            run = await runs_db.get_run(session, run_id)
        if action is not None and RunStatus(run.status) not in LIVE:
            raise not_allowed(run, action)
        return run

    async def _end_here(self, run_id: str, error: str, *, waiting_only: bool = False) -> Run | None:
        """End a live run `stopped` in one transaction with its admission and its completion
        signal. None if the run is no longer live (or, `waiting_only`, was admitted)."""
        name = completion_signal_name(RunStatus.stopped)
        async with self._sessions.begin() as session:
            await signals_db.lock_names(session, [name])
            run = await runs_db.get_run(session, run_id)
            workflow = await workflows_db.get_workflow(session, run.workflow_id, lock=True)
            await session.refresh(run, with_for_update=True)
            if RunStatus(run.status) not in LIVE or (waiting_only and run.admitted_at is not None):
                return None
            await self._end_in(session, run, error)
            to_launch = await self._runs.run_ended(session, run, workflow)
            pending = await self._publish_completion(session, run)
        await self._after(to_launch, [pending])
        return run

    async def _recorded(self, session: AsyncSession, run: Run) -> None:
        """In the end's transaction: the run's SLA margin and its webhook event."""
        definition = await self._runs.definitions.get(session, run.workflow_id, run.version)
        promise = await sla.record_end(session, definition, run)
        await outbox.run_ended(session, run, promise)

    async def _end_in(self, session: AsyncSession, run: Run, error: str) -> None:
        """Write a `stopped` end: the run, its unfinished steps, its open waits."""
        now = datetime.now(UTC)
        run.status, run.error, run.ended_at = RunStatus.stopped, error, now
        steps = await session.execute(
            select(StepRun).where(StepRun.run_id == run.run_id).with_for_update()
        )
        for step in steps.scalars():
            if not StepStatus(step.status).is_terminal:
                step.status, step.ended_at, step.error = StepStatus.stopped, now, error
        await session.flush()
        await session.execute(
            delete(SignalWait).where(
                SignalWait.run_id == run.run_id, SignalWait.matched_signal_id.is_(None)
            )
        )
        await self._recorded(session, run)
        metrics.RUNS_ENDED.labels(run.status).inc()

    async def _publish_completion(self, session: AsyncSession, run: Run) -> Any:
        if run.status not in FINISH_STATUSES:
            return None
        return await self._bus.publish_completion_in(session, run)

    async def _after(self, to_launch: list[Run], pendings: list[Any]) -> None:
        """After the commits: launch admitted runs, then what the completion signals started.
        Failures are left to the sweeper (the database holds the outcome)."""
        try:
            await self._runs.launch(to_launch)
        except Unavailable as exc:
            logger.warning("launch deferred to the sweeper", extra={"error": str(exc)})
        for pending in pendings:
            if pending is not None:
                await self._bus.after_commit(pending)
