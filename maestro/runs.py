"""The runs service: the use cases that touch both PostgreSQL and Temporal.

Every start — manual, time, signal, restart — goes through `create_run`, inside the caller's
transaction (so a run exists exactly when its cause is recorded), where the run strategy
decides under the workflow's row lock whether it is admitted, waits in the queue or is dropped.
After the commit, `launch` starts admitted runs on Temporal and sends the stops the strategy
asked for. When a run ends, `run_ended` (in the same transaction as its final status) admits
the next queued runs. A process that dies between a commit and Temporal leaves durable marks
(`admitted_at` without a Temporal run id, `stop_requested_at` on a live run) that the sweeper
(`maestro.sweeper`, run by every worker process) finishes; Temporal ids derived from the run
make that idempotent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from maestro import metrics, sla, strategies
from maestro.db import runs as runs_db
from maestro.db import workflows as workflows_db
from maestro.db.engine import autocommit
from maestro.db.tables import Run, Workflow
from maestro.definitions import RunStrategy, RunStrategyKind, resolve_run_params
from maestro.definitions_cache import DefinitionsCache
from maestro.ends import LIVE, skip_waiting
from maestro.errors import (
    Unavailable,
    WorkflowInactive,
)
from maestro.runtime import (
    RUN_WORKFLOW,
    SA_TRIGGER_KIND,
    SA_VERSION,
    SA_WORKFLOW_ID,
    Cause,
    RunInput,
    RunStatus,
    temporal_workflow_id,
)
from maestro.settings import TemporalSettings

logger = logging.getLogger(__name__)

# Launched runs' Temporal run ids are written this long after their start: the write then
# stays off the new runs' way to their first step (it competes for the same cores), and the
# launches of a burst share one statement. The response to the launch carries the ids.
RECORD_RUN_IDS_AFTER = 0.1
# After Temporal was found unreachable, requests leave launches to the sweeper this long (it
# keeps trying every sweep) instead of each waiting for Temporal. A start that gets no answer
# within START_TIMEOUT (a Temporal that accepts connections but does not answer) is left to
# the sweeper too; a slow answer under a burst of starts is not a fault, so the limit is wide.
TEMPORAL_PAUSE = 2.0
START_TIMEOUT = 15.0


class RunsService:
    """Creates and launches runs, and stops them on Temporal; stateless beyond its clients and the
    process's definitions cache."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        client: Client,
        settings: TemporalSettings,
        *,
        search_attributes: bool = True,
        definitions: DefinitionsCache | None = None,
    ) -> None:
        self._sessions = sessions
        self._client = client
        self._settings = settings
        self._search_attributes = search_attributes
        self.definitions = definitions or DefinitionsCache()
        # Workflows whose strategy asked this process to stop runs (sent after the commit;
        # the sweeper covers a process that dies first).
        self._stops_due: set[str] = set()
        # Temporal run ids of launched runs, recorded off the request path and many per
        # statement (launches that end while one write runs join the next); until then, and
        # if the process dies first, the worker or the sweeper records them.
        self._run_ids_due: dict[str, str] = {}
        self._recording: asyncio.Task[None] | None = None
        # Until this loop time, Temporal counts as down: launches are left to the sweeper.
        self._temporal_down_until = 0.0

    @property
    def search_attributes(self) -> bool:
        """Whether runs carry Maestro's search attributes in this namespace."""
        return self._search_attributes

    async def run_strategy(
        self, session: AsyncSession, workflow: Workflow, fallback_version: int
    ) -> RunStrategy:
        """The workflow's run strategy: its active version's (`fallback_version`'s when it has
        none active)."""
        version = workflow.active_version or fallback_version
        return (await self.definitions.get(session, workflow.id, version)).run_strategy

    # -- creating and launching ---------------------------------------------------------------

    async def create_run(
        self,
        session: AsyncSession,
        workflow_id: str,
        params: dict[str, Any],
        *,
        cause: Cause,
        request_id: str | None = None,
        version: int | None = None,
        trigger_id: str | None = None,
        system_params: dict[str, Any] | None = None,
        jump_queue: bool = False,
        fresh_request_id: bool = False,
        consumed: Sequence[int] = (),
        admit_always: bool = False,
    ) -> tuple[Run, bool]:
        """In the caller's transaction: a new numbered run (admitted, queued or skipped by the
        run strategy), or the run this request id made before. `fresh_request_id`: the id
        cannot have been used (it names a signal stored in this transaction), so no lookup.
        `consumed`: the ids of the signals a new run consumes for `trigger_id`, recorded
        `started_run` with it. `admit_always`: admitted whatever the run strategy says (a
        subworkflow's child run, which its parent launches and waits for)."""
        # The row lock serialises numbering, request-id checks and admission per workflow.
        if request_id is not None and not fresh_request_id:
            workflow = await workflows_db.get_workflow(session, workflow_id, lock=True)
            existing = await runs_db.find_by_request_id(session, workflow_id, request_id)
            if existing is not None:
                return existing, False
            workflow.run_counter += 1
        else:
            workflow = await workflows_db.get_workflow(session, workflow_id, count_run=True)
        try:
            if version is None:
                if not workflow.is_active or workflow.active_version is None:
                    raise WorkflowInactive(
                        f"workflow {workflow_id!r} is inactive: activate a "
                        "version or start an explicit version"
                    )
                version = workflow.active_version
            definition = await self.definitions.get(session, workflow_id, version)
            resolved = resolve_run_params(definition, params) | (system_params or {})
            if admit_always:
                decision = strategies.Admission(True)
            else:
                decision = await strategies.decide(
                    session, workflow, definition.run_strategy, jump_queue=jump_queue
                )
        except BaseException:
            workflow.run_counter -= 1  # no run: run numbers stay without gaps
            raise
        now = datetime.now(UTC)
        run = Run(
            run_id=RunInput.new_run_id(),
            workflow_id=workflow_id,
            version=version,
            run_number=workflow.run_counter,
            request_id=request_id,
            status=RunStatus.queued,
            params=resolved,
            cause=cause.model_dump(mode="json"),
            trigger_id=trigger_id,
            temporal_workflow_id=temporal_workflow_id(workflow_id, workflow.run_counter),
            admitted_at=now if decision.admit else None,
        )
        if decision.skip_reason:
            run.status, run.error, run.ended_at = RunStatus.skipped, decision.skip_reason, now
        await runs_db.insert_run(session, run, consumed)
        if not decision.skip_reason:
            await sla.record_deadline(session, definition, run)
        await strategies.request_stop(session, decision.stop)
        if decision.stop:
            self._stops_due.add(workflow_id)
        await skip_waiting(session, decision.drop, f"last_only: replaced by run {run.run_number}")
        return run, True

    async def start_run(
        self,
        workflow_id: str,
        params: dict[str, Any],
        *,
        request_id: str | None = None,
        version: int | None = None,
        cause: Cause | None = None,
    ) -> tuple[Run, bool]:
        """A manual start: create the run and launch it; the same request id returns the same
        run (finishing its launch if a crash interrupted it)."""
        cause = cause or Cause(kind="manual", request_id=request_id)
        async with self._sessions.begin() as session:
            run, created = await self.create_run(
                session, workflow_id, params, cause=cause, request_id=request_id, version=version
            )
        await self.launch([run])
        return run, created

    async def launch(self, runs: Iterable[Run]) -> None:
        """After a commit: start admitted runs on Temporal, record their Temporal run ids, and
        send the stops their workflows' strategies requested. Never raises: a run Temporal does
        not take now stays `queued`, waiting for launch, and the sweeper launches it; while
        Temporal is known to be down, requests do not wait for it at all."""
        runs = list(runs)
        todo = [
            r
            for r in runs
            if r.admitted_at is not None
            and r.temporal_run_id is None
            and r.status == RunStatus.queued
        ]
        if todo and self.temporal_down():
            logger.info("Temporal is down: runs wait for launch", extra={"runs": len(todo)})
            return
        # Runs waiting in their queue (or carried already) start their SLA timers now;
        # `_start_on_temporal` starts those of the runs it launches.
        await self._watch_slas([r for r in runs if r not in todo and r.status in LIVE])
        if todo:
            results = await asyncio.gather(
                *(self.start_on_temporal(r) for r in todo), return_exceptions=True
            )
            started = [
                (r, rid) for r, rid in zip(todo, results, strict=True) if isinstance(rid, str)
            ]
            for run, temporal_run_id in started:
                run.temporal_run_id = temporal_run_id
                self._run_ids_due[run.run_id] = temporal_run_id
            if started and (self._recording is None or self._recording.done()):
                self._recording = asyncio.create_task(self._record_run_ids())
            metrics.observe_fires(r for r, _ in started)
            failures = [e for e in results if isinstance(e, BaseException)]
            if failures:
                logger.warning(
                    "launch failed; the sweeper retries",
                    extra={"runs": len(failures), "error": str(failures[0])},
                )
        due = {r.workflow_id for r in runs} & self._stops_due
        if due and not self.temporal_down():
            self._stops_due -= due
            await self.send_stops(due)

    async def _watch_slas(self, runs: list[Run], *, raising: bool = False) -> None:
        """Start the SLA timers of runs whose definition has an SLA (idempotent). Failures
        are raised for a launch (which is then retried) and logged otherwise (the launch
        starts the timer later)."""
        timed = [
            r
            for r in runs
            if (r.workflow_id, r.version) in self.definitions
            and sla.has_sla(self.definitions.loaded(r.workflow_id, r.version))
        ]
        for run in timed:
            definition = self.definitions.loaded(run.workflow_id, run.version)
            try:
                await sla.watch(self._client, self._settings.task_queue, run, definition)
            except (RPCError, TimeoutError) as exc:
                if raising:
                    raise
                logger.warning(
                    "starting an SLA timer failed; its launch starts it",
                    extra={"run_id": run.run_id, "error": str(exc)},
                )

    def temporal_down(self) -> bool:
        """Whether a call to Temporal failed for being unreachable in the last moments."""
        return asyncio.get_running_loop().time() < self._temporal_down_until

    def _temporal_failed(self, exc: BaseException) -> None:
        if isinstance(exc, RPCError) and exc.status == RPCStatusCode.UNAVAILABLE:
            self._temporal_down_until = asyncio.get_running_loop().time() + TEMPORAL_PAUSE

    async def _record_run_ids(self) -> None:
        await asyncio.sleep(RECORD_RUN_IDS_AFTER)
        while self._run_ids_due:
            batch, self._run_ids_due = self._run_ids_due, {}
            try:
                async with autocommit(self._sessions) as session:
                    await runs_db.set_temporal_run_ids(session, batch)
            except Exception as exc:  # noqa: BLE001 - the worker or the sweeper records them
                logger.warning(
                    "recording Temporal run ids failed",
                    extra={"runs": len(batch), "error": str(exc)},
                )

    async def close(self) -> None:
        """Finish recording the Temporal run ids of launched runs (before the engine closes)."""
        if self._recording is not None:
            await self._recording

    def run_input(self, run: Run) -> RunInput:
        """What RunWorkflow needs to carry this run (its definition must be cached)."""
        cause = Cause.model_validate(run.cause)
        return RunInput(
            run_id=run.run_id,
            workflow_id=run.workflow_id,
            version=run.version,
            run_number=run.run_number,
            params=run.params,
            definition=self.definitions.loaded(run.workflow_id, run.version),
            cause=cause,
            reuse=cause.detail.get("reuse", {}),
            local_recording=True,
        )

    async def start_on_temporal(self, run: Run, start_delay: timedelta | None = None) -> str:
        """Start the run's RunWorkflow (once: its Temporal id is derived from the run);
        returns its Temporal run id. Marks Temporal down when it cannot be reached."""
        if (run.workflow_id, run.version) not in self.definitions:
            async with self._sessions() as session:
                await self.definitions.get(session, run.workflow_id, run.version)
        run_input = self.run_input(run)
        await self._watch_slas([run], raising=True)
        search_attributes = None
        if self._search_attributes:
            search_attributes = TypedSearchAttributes(
                [
                    SearchAttributePair(SA_WORKFLOW_ID, run.workflow_id),
                    SearchAttributePair(SA_VERSION, run.version),
                    SearchAttributePair(SA_TRIGGER_KIND, run_input.cause.kind),
                ]
            )
        try:
            async with asyncio.timeout(START_TIMEOUT):
                try:
                    handle = await self._client.start_workflow(
                        RUN_WORKFLOW,
                        run_input,
                        id=run.temporal_workflow_id,
                        task_queue=self._settings.task_queue,
                        search_attributes=search_attributes,
                        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                        start_delay=start_delay,
                    )
                    temporal_run_id = handle.result_run_id or ""
                except WorkflowAlreadyStartedError:
                    temporal_run_id = (await self._handle(run).describe()).run_id
        except (RPCError, TimeoutError) as exc:
            self._temporal_failed(exc)
            logger.warning("temporal start failed", extra={"run_id": run.run_id, "error": str(exc)})
            raise
        self._temporal_down_until = 0.0
        return temporal_run_id

    async def cancel_on_temporal(self, run: Run) -> bool:
        """Ask RunWorkflow to stop (it records the end); False if Temporal has no such
        execution. An admitted run not yet started there is started first, so that a launch
        racing with the stop cannot run it unstopped."""
        try:
            if run.temporal_run_id is None:
                await self.start_on_temporal(run)
            await self._handle(run).cancel()
        except (RPCError, TimeoutError) as exc:
            if isinstance(exc, RPCError) and exc.status == RPCStatusCode.NOT_FOUND:
                return False
            raise Unavailable(f"Temporal is unavailable: {exc}") from exc
        return True

    async def terminate_on_temporal(self, run: Run, reason: str, start_delay: timedelta) -> None:
        """Terminate the run's RunWorkflow (no cleanup, no end recorded by it). An admitted run
        not yet started there is first started `start_delay` ahead, so none of its code runs
        and a racing launch is refused as a duplicate."""
        try:
            if run.temporal_run_id is None:
                await self.start_on_temporal(run, start_delay=start_delay)
            description = await self._handle(run).describe()
            if description.status == WorkflowExecutionStatus.RUNNING:
                await self._handle(run).terminate(reason=reason)
        except (RPCError, TimeoutError) as exc:
            if isinstance(exc, RPCError) and exc.status == RPCStatusCode.NOT_FOUND:
                return
            raise Unavailable(f"Temporal is unavailable: {exc}") from exc

    # -- ends, admission and stops ----------------------------------------------------------------

    async def run_ended(
        self, session: AsyncSession, run: Run, workflow: Workflow | None = None
    ) -> list[Run]:
        """In the transaction that records a run's end: block a strict_sequential queue after
        a failure, and admit the next queued runs. Returns the runs to launch. `workflow`: the
        run's workflow row, if this transaction has locked it already."""
        if workflow is None:
            workflow = await workflows_db.get_workflow(session, run.workflow_id, lock=True)
        strategy = await self.run_strategy(session, workflow, run.version)
        if strategy.kind is RunStrategyKind.strict_sequential and run.status in (
            RunStatus.failed,
            RunStatus.timed_out,
        ):
            workflow.blocked_by_run_id = run.run_id
        return await strategies.admit_waiting(session, workflow, strategy)

    async def send_stops(
        self, workflow_ids: set[str] | None, *, older_than: timedelta | None = None
    ) -> None:
        """Cancel live runs whose stop was requested (last_only, workflow stop): of these
        workflows (None: of all), requested more than `older_than` ago (None: whenever)."""
        if workflow_ids is not None and not workflow_ids:
            return
        requested_before = None if older_than is None else datetime.now(UTC) - older_than
        async with self._sessions() as session:
            runs = await runs_db.stops_due(session, workflow_ids, requested_before)
        for run in runs:
            try:
                await self._handle(run).cancel()
            except RPCError as exc:
                if exc.status != RPCStatusCode.NOT_FOUND:
                    logger.warning("stop failed", extra={"run_id": run.run_id, "error": str(exc)})

    def _handle(self, run: Run) -> WorkflowHandle:
        return self._client.get_workflow_handle(run.temporal_workflow_id)
