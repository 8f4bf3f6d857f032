"""The runs service: the use cases that touch both PostgreSQL and Temporal.

Every start — manual, time, signal — goes through `create_run` (inside the caller's
transaction, so a run exists exactly when its cause is recorded) and then `launch` (after the
commit). A run that was created but never reached Temporal, because a process died in between,
is launched by `launch_pending`, which every API process runs periodically; launching is
idempotent because the Temporal workflow id is derived from the run.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from maestro.db import runs as runs_db
from maestro.db import workflows as workflows_db
from maestro.db.tables import Run, StepRun
from maestro.definitions import WorkflowDefinition, resolve_run_params
from maestro.errors import InvalidRunState, NotFound, Unavailable, WorkflowInactive
from maestro.runtime import (
    BYPASS_SIGNAL,
    RUN_WORKFLOW,
    SA_TRIGGER_KIND,
    SA_VERSION,
    SA_WORKFLOW_ID,
    BypassInput,
    Cause,
    RunInput,
    RunStatus,
    StepStatus,
    temporal_workflow_id,
)
from maestro.settings import TemporalSettings

logger = logging.getLogger(__name__)


class RunsService:
    """Creates, launches and cancels runs; stateless beyond its clients and an immutable cache."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        client: Client,
        settings: TemporalSettings,
        *,
        search_attributes: bool = True,
    ) -> None:
        self._sessions = sessions
        self._client = client
        self._settings = settings
        self._search_attributes = search_attributes
        # Versions are immutable, so their parsed definitions can be kept.
        self._definitions: dict[tuple[str, int], WorkflowDefinition] = {}

    async def definition(
        self, session: AsyncSession, workflow_id: str, version: int
    ) -> WorkflowDefinition:
        key = (workflow_id, version)
        if key not in self._definitions:
            stored = await workflows_db.get_version(session, workflow_id, version)
            self._definitions[key] = WorkflowDefinition.model_validate(stored.definition)
        return self._definitions[key]

    async def create_run(
        self,
        session: AsyncSession,
        workflow_id: str,
        params: dict[str, Any],
        *,
        cause: Cause,
        request_id: str | None = None,
        version: int | None = None,
    ) -> tuple[Run, bool]:
        """In the caller's transaction: a new numbered run, or the one this request id made."""
        # The row lock serialises run numbering and request-id checks per workflow.
        workflow = await workflows_db.get_workflow(session, workflow_id, lock=True)
        if request_id is not None:
            existing = await runs_db.find_by_request_id(session, workflow_id, request_id)
            if existing is not None:
                return existing, False
        if version is None:
            if not workflow.is_active or workflow.active_version is None:
                raise WorkflowInactive(
                    f"workflow {workflow_id!r} is inactive: activate a version "
                    "or start an explicit version"
                )
            version = workflow.active_version
        definition = await self.definition(session, workflow_id, version)
        resolved = resolve_run_params(definition, params)
        workflow.run_counter += 1
        run = Run(
            run_id=RunInput.new_run_id(),
            workflow_id=workflow_id,
            version=version,
            run_number=workflow.run_counter,
            request_id=request_id,
            status=RunStatus.queued,
            params=resolved,
            cause=cause.model_dump(mode="json"),
            temporal_workflow_id=temporal_workflow_id(workflow_id, workflow.run_counter),
            admitted_at=datetime.now(UTC),
        )
        session.add(run)
        await session.flush()
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
        """Start admitted, not yet launched runs on Temporal and record their Temporal run ids."""
        todo = [
            r
            for r in runs
            if r.admitted_at is not None
            and r.temporal_run_id is None
            and r.status == RunStatus.queued
        ]
        if not todo:
            return
        results = await asyncio.gather(
            *(self._start_on_temporal(r) for r in todo), return_exceptions=True
        )
        started = [(r, rid) for r, rid in zip(todo, results, strict=True) if isinstance(rid, str)]
        if started:
            async with self._sessions.begin() as session:
                for run, temporal_run_id in started:
                    run.temporal_run_id = temporal_run_id
                    await runs_db.set_temporal_run_id(session, run.run_id, temporal_run_id)
        failures = [e for e in results if isinstance(e, BaseException)]
        if failures:
            # The runs exist; `launch_pending` retries them. The caller learns Temporal is down.
            raise Unavailable(f"Temporal is unavailable: {failures[0]}") from failures[0]

    async def launch_pending(
        self, older_than: timedelta = timedelta(seconds=5), limit: int = 200
    ) -> int:
        """Launch runs whose launch was interrupted; safe to run from every API process."""
        cutoff = datetime.now(UTC) - older_than
        async with self._sessions.begin() as session:
            query = (
                select(Run)
                .where(
                    Run.temporal_run_id.is_(None),
                    Run.admitted_at.is_not(None),
                    Run.status == RunStatus.queued,
                    Run.created_at < cutoff,
                )
                .order_by(Run.created_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
            runs = list((await session.execute(query)).scalars())
            if runs:
                for run in runs:
                    await self.definition(session, run.workflow_id, run.version)
                logger.info("launching interrupted runs", extra={"count": len(runs)})
                # Launch while holding the row locks so another process skips these runs.
                results = await asyncio.gather(
                    *(self._start_on_temporal(r) for r in runs), return_exceptions=True
                )
                for run, rid in zip(runs, results, strict=True):
                    if isinstance(rid, str):
                        await runs_db.set_temporal_run_id(session, run.run_id, rid)
        return len(runs)

    def _run_input(self, run: Run) -> RunInput:
        return RunInput(
            run_id=run.run_id,
            workflow_id=run.workflow_id,
            version=run.version,
            run_number=run.run_number,
            params=run.params,
            definition=self._definitions[(run.workflow_id, run.version)],
            cause=Cause.model_validate(run.cause),
        )

    async def _start_on_temporal(self, run: Run) -> str:
        if (run.workflow_id, run.version) not in self._definitions:
            async with self._sessions() as session:
                await self.definition(session, run.workflow_id, run.version)
        run_input = self._run_input(run)
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
            handle = await self._client.start_workflow(
                RUN_WORKFLOW,
                run_input,
                id=run.temporal_workflow_id,
                task_queue=self._settings.task_queue,
                search_attributes=search_attributes,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            )
            return handle.result_run_id or ""
        except WorkflowAlreadyStartedError:
            description = await self._client.get_workflow_handle(
                run.temporal_workflow_id
            ).describe()
            return description.run_id
        except RPCError as exc:
            logger.warning("temporal start failed", extra={"run_id": run.run_id, "error": str(exc)})
            raise

    async def cancel_run(self, run_id: str) -> Run:
        """Ask a live run to stop: running steps are cancelled and the run ends `stopped`."""
        async with self._sessions() as session:
            run = await runs_db.get_run(session, run_id)
        if RunStatus(run.status).is_terminal:
            raise InvalidRunState(
                f"run {run_id!r} already ended as {run.status}; "
                "only queued or running runs can be cancelled"
            )
        handle = self._client.get_workflow_handle(run.temporal_workflow_id)
        try:
            description = await handle.describe()
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise Unavailable(f"Temporal is unavailable: {exc}") from exc
            description = None
        if description is None:
            # Never reached Temporal: stopping it is a database matter.
            async with self._sessions.begin() as session:
                await session.execute(
                    update(Run)
                    .where(Run.run_id == run_id, Run.status == RunStatus.queued)
                    .values(
                        status=RunStatus.stopped,
                        error="cancelled before it started",
                        ended_at=datetime.now(UTC),
                    )
                )
                run = await runs_db.get_run(session, run_id)
            return run
        if description.status == WorkflowExecutionStatus.RUNNING:
            try:
                await handle.cancel()
            except RPCError as exc:
                raise Unavailable(f"Temporal is unavailable: {exc}") from exc
        return run

    async def bypass_wait(self, run_id: str, step_id: str) -> Run:
        """Release a step that waits for a signal, as if the signal had come."""
        async with self._sessions() as session:
            run = await runs_db.get_run(session, run_id)
            step = await session.get(StepRun, (run_id, step_id))
        if step is None or step.status != StepStatus.waiting_for_signal:
            status = step.status if step else "not started"
            raise InvalidRunState(
                f"step {step_id!r} of run {run_id!r} is {status}; only a "
                "step that is waiting_for_signal can be bypassed"
            )
        try:
            await self._client.get_workflow_handle(run.temporal_workflow_id).signal(
                BYPASS_SIGNAL, BypassInput(step_id=step_id)
            )
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                raise NotFound(f"run {run_id!r} is no longer running") from exc
            raise Unavailable(f"Temporal is unavailable: {exc}") from exc
        return run
