"""The runs service: the use cases that touch both PostgreSQL and Temporal (start, cancel)."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from maestro.db import runs as runs_db
from maestro.db import workflows as workflows_db
from maestro.db.tables import Run
from maestro.definitions import WorkflowDefinition, resolve_run_params
from maestro.errors import InvalidRunState, Unavailable, WorkflowInactive
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


class RunsService:
    """Starts and cancels runs; one instance per process, stateless beyond its clients."""

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

    async def start_run(
        self,
        workflow_id: str,
        params: dict[str, Any],
        *,
        request_id: str | None = None,
        version: int | None = None,
        cause: Cause | None = None,
    ) -> tuple[Run, bool]:
        """Create a run and start it on Temporal; the same request id returns the same run."""
        cause = cause or Cause(kind="manual", request_id=request_id)
        async with self._sessions.begin() as session:
            # The row lock serialises run numbering and request-id checks per workflow.
            workflow = await workflows_db.get_workflow(session, workflow_id, lock=True)
            existing = (
                await runs_db.find_by_request_id(session, workflow_id, request_id)
                if request_id
                else None
            )
            if existing is None:
                if version is None:
                    if not workflow.is_active or workflow.active_version is None:
                        raise WorkflowInactive(
                            f"workflow {workflow_id!r} is inactive: activate a version "
                            "or start an explicit version"
                        )
                    version = workflow.active_version
                stored = await workflows_db.get_version(session, workflow_id, version)
                definition = WorkflowDefinition.model_validate(stored.definition)
                resolved = resolve_run_params(definition, params)
                workflow.run_counter += 1
                run = Run(
                    run_id=str(uuid.uuid4()),
                    workflow_id=workflow_id,
                    version=version,
                    run_number=workflow.run_counter,
                    request_id=request_id,
                    status=RunStatus.queued,
                    params=resolved,
                    cause=cause.model_dump(mode="json"),
                    temporal_workflow_id=temporal_workflow_id(workflow_id, workflow.run_counter),
                )
                session.add(run)
                await session.flush()
                run_input = RunInput(
                    run_id=run.run_id,
                    workflow_id=workflow_id,
                    version=version,
                    run_number=run.run_number,
                    params=resolved,
                    definition=definition,
                    cause=cause,
                )
        if existing is not None:
            if existing.temporal_run_id is None and existing.status == RunStatus.queued:
                await self._resume_start(existing)
            return existing, False
        run.temporal_run_id = await self._start_on_temporal(run_input, run.temporal_workflow_id)
        async with self._sessions.begin() as session:
            await runs_db.set_temporal_run_id(session, run.run_id, run.temporal_run_id)
        return run, True

    async def _resume_start(self, run: Run) -> None:
        """Finish a start that was interrupted between the database and Temporal."""
        async with self._sessions.begin() as session:
            stored = await workflows_db.get_version(session, run.workflow_id, run.version)
        run_input = RunInput(
            run_id=run.run_id,
            workflow_id=run.workflow_id,
            version=run.version,
            run_number=run.run_number,
            params=run.params,
            definition=WorkflowDefinition.model_validate(stored.definition),
            cause=Cause.model_validate(run.cause),
        )
        run.temporal_run_id = await self._start_on_temporal(run_input, run.temporal_workflow_id)
        async with self._sessions.begin() as session:
            await runs_db.set_temporal_run_id(session, run.run_id, run.temporal_run_id)

    async def _start_on_temporal(self, run_input: RunInput, temporal_id: str) -> str:
        search_attributes = None
        if self._search_attributes:
            search_attributes = TypedSearchAttributes(
                [
                    SearchAttributePair(SA_WORKFLOW_ID, run_input.workflow_id),
                    SearchAttributePair(SA_VERSION, run_input.version),
                    SearchAttributePair(SA_TRIGGER_KIND, run_input.cause.kind),
                ]
            )
        try:
            handle = await self._client.start_workflow(
                RUN_WORKFLOW,
                run_input,
                id=temporal_id,
                task_queue=self._settings.task_queue,
                search_attributes=search_attributes,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            )
            return handle.result_run_id or ""
        except WorkflowAlreadyStartedError:
            description = await self._client.get_workflow_handle(temporal_id).describe()
            return description.run_id
        except RPCError as exc:
            logger.warning(
                "temporal start failed", extra={"run_id": run_input.run_id, "error": str(exc)}
            )
            raise Unavailable(f"Temporal is unavailable: {exc}") from exc

    async def cancel_run(self, run_id: str) -> Run:
        """Ask a live run to stop: running steps are cancelled and the run ends `stopped`."""
        async with self._sessions.begin() as session:
            run = await runs_db.get_run(session, run_id)
            if RunStatus(run.status).is_terminal:
                raise InvalidRunState(
                    f"run {run_id!r} already ended as {run.status}; "
                    "only queued or running runs can be cancelled"
                )
        handle = self._client.get_workflow_handle(run.temporal_workflow_id)
        try:
            description = await handle.describe()
            if description.status == WorkflowExecutionStatus.RUNNING:
                await handle.cancel()
        except RPCError as exc:
            raise Unavailable(f"Temporal is unavailable: {exc}") from exc
        return run
