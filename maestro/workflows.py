"""The workflows service: changes to a workflow that must reach both PostgreSQL (versions,
signal-trigger registrations, see `maestro.trigger_registration`) and Temporal (the schedules
of its time triggers)."""

from __future__ import annotations

import logging

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from maestro.branches import PROD, check_qualified_id
from maestro.composites import check_subworkflow_cycle
from maestro.db import code_packages as code_db
from maestro.db import workflows as workflows_db
from maestro.db.tables import CodePackage, Workflow, WorkflowVersion
from maestro.definitions import WorkflowDefinition
from maestro.ends import LIVE
from maestro.errors import Conflict, InvalidInput, NotFound, Problem
from maestro.keys import check_owner
from maestro.runs import RunsService
from maestro.schedules import Schedules
from maestro.secrets import check_references
from maestro.trigger_registration import check_trigger_loop, sync_triggers

logger = logging.getLogger(__name__)


class WorkflowsService:
    """Push, activate, deactivate, pause and resume — then bring the schedules in step."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        runs: RunsService,
        schedules: Schedules,
    ) -> None:
        self._sessions = sessions
        self._runs = runs
        self._definitions = runs.definitions
        self._schedules = schedules

    async def push(
        self,
        definition: WorkflowDefinition,
        code_sha256: str | None = None,
        *,
        branch: str = PROD,
        with_schedules: bool = False,
    ) -> tuple[Workflow, WorkflowVersion, bool]:
        """A new version, activated (its triggers take over) — or the identical one, as is —
        under the definition's id in `branch`. `code_sha256` names the uploaded code package
        its steps run. Outside `prod`, the time triggers are held unless `with_schedules`
        (which every push restates)."""
        workflow_id = check_qualified_id(definition.id, branch)
        held = branch != PROD and not with_schedules
        async with self._sessions.begin() as session:
            code = await self._code_package(session, code_sha256)
            workflow, version, created = await workflows_db.push_version(
                session, definition, code, branch=branch, schedules_paused=held
            )
            if created:
                await check_references(session, definition)
                await check_subworkflow_cycle(session, definition, branch)
                await check_trigger_loop(session, self._definitions, definition, branch)
                await sync_triggers(session, self._definitions, workflow_id)
        if created or branch != PROD:  # a branch's push may arm or hold its schedules
            await self._reconcile(workflow_id)
        return workflow, version, created

    @staticmethod
    async def _code_package(session: AsyncSession, sha256: str | None) -> CodePackage | None:
        if sha256 is None:
            return None
        try:
            return await code_db.get_package(session, sha256)
        except NotFound as exc:
            raise InvalidInput(
                "unknown code package", [Problem(("query", "code"), exc.message, "unknown_code")]
            ) from None

    async def activate(self, workflow_id: str, version: str | int) -> Workflow:
        async with self._sessions.begin() as session:
            workflow = await workflows_db.activate_version(session, workflow_id, version)
            assert workflow.active_version is not None  # just activated
            definition = await self._definitions.get(session, workflow_id, workflow.active_version)
            await check_trigger_loop(session, self._definitions, definition, workflow.branch)
            await sync_triggers(session, self._definitions, workflow_id)
        await self._reconcile(workflow_id)
        return workflow

    async def deactivate(self, workflow_id: str) -> Workflow:
        return await self._set_flags(workflow_id, is_active=False)

    async def pause(self, workflow_id: str) -> Workflow:
        return await self._set_flags(workflow_id, paused=True)

    async def resume(self, workflow_id: str) -> Workflow:
        return await self._set_flags(workflow_id, paused=False)

    async def delete(self, workflow_id: str) -> None:
        """Delete a workflow that has no queued or running runs: its schedules first (so a
        failure leaves the database whole, and reconciliation would restore them), then its
        rows. Conflict while runs are live; Unavailable if Temporal cannot be reached."""
        async with self._sessions() as session:
            await workflows_db.get_workflow(session, workflow_id)
            await self._refuse_live_runs(session, workflow_id)
            schedule_ids = await self._schedules.schedule_ids(session, workflow_id)
        await self._schedules.delete_schedules(schedule_ids)
        async with self._sessions.begin() as session:
            await workflows_db.get_workflow(session, workflow_id, lock=True)
            try:
                # A start may have slipped in after the first check (starts lock this row).
                await self._refuse_live_runs(session, workflow_id)
            except Conflict:
                await self._reconcile(workflow_id)
                raise
            await workflows_db.delete_workflow(session, workflow_id)
        logger.info("workflow deleted", extra={"workflow_id": workflow_id})

    async def delete_branch(self, branch: str, owners: list[str] | None = None) -> list[str]:
        """Delete every workflow of a branch (never `prod`), each as `delete` does (schedules,
        versions, trigger registrations, runs), and return their ids. Refused as a whole when
        a workflow belongs to none of `owners` (given for an owner-limited caller) or has
        queued or running runs."""
        if branch == PROD:
            raise Conflict(
                "prod is the production branch and cannot be deleted as a whole; delete its "
                "workflows one by one (DELETE /api/v1/workflows/{id})"
            )
        async with self._sessions() as session:
            workflows = await workflows_db.branch_workflows(session, branch)
            if not workflows:
                raise NotFound(f"branch {branch!r} has no workflows")
            for workflow in workflows:
                if owners is not None:
                    check_owner(owners, workflow.owner, f"workflow {workflow.id!r}")
                await self._refuse_live_runs(session, workflow.id)
        deleted = []
        for workflow in workflows:
            await self.delete(workflow.id)
            deleted.append(workflow.id)
        logger.info("branch deleted", extra={"branch": branch, "workflows": deleted})
        return deleted

    @staticmethod
    async def _refuse_live_runs(session: AsyncSession, workflow_id: str) -> None:
        live = await workflows_db.count_runs(session, workflow_id, [s.value for s in LIVE])
        if live:
            raise Conflict(
                f"workflow {workflow_id!r} has {live} queued or running run(s); stop them "
                f"first (POST /api/v1/workflows/{workflow_id}/stop) or let them end"
            )

    async def _set_flags(self, workflow_id: str, **flags: bool) -> Workflow:
        async with self._sessions.begin() as session:
            workflow = await workflows_db.get_workflow(session, workflow_id, lock=True)
            for name, value in flags.items():
                setattr(workflow, name, value)
            await session.flush()
            await sync_triggers(session, self._definitions, workflow_id)
        await self._reconcile(workflow_id)
        return workflow

    async def _reconcile(self, workflow_id: str) -> None:
        # The database already holds the truth; if Temporal is unreachable now, the periodic
        # reconciliation of every worker's sweeper catches up.
        if self._runs.temporal_down():
            return
        try:
            await self._schedules.reconcile(workflow_id)
        except Exception as exc:  # noqa: BLE001
            logger.warning(
                "schedule reconciliation failed; it will be retried",
                exc_info=True,
                extra={"workflow_id": workflow_id, "error": str(exc)},
            )
