"""Workflows and their immutable versions."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import cast

from sqlalchemy import Table, bindparam, delete, func, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from maestro.branches import PROD, qualified_id
from maestro.db.direct import DirectStatement, adopt
from maestro.db.tables import (
    CodePackage,
    DeletedWorkflow,
    Run,
    SignalMatch,
    SignalTriggerRow,
    Workflow,
    WorkflowVersion,
)
from maestro.definitions import WorkflowDefinition
from maestro.errors import NotFound

_GET_WORKFLOW = select(Workflow).where(Workflow.id == bindparam("workflow_id"))
_WORKFLOWS = cast(Table, Workflow.__table__)
# Every run's creation and end locks its workflow's row.
_LOCK_WORKFLOW = DirectStatement(
    select(_WORKFLOWS).where(_WORKFLOWS.c.id == bindparam("workflow_id")).with_for_update()
)
# Lock the row and count one more run in one statement (an UPDATE locks what it changes).
_TAKE_RUN_NUMBER = DirectStatement(
    update(_WORKFLOWS)
    .where(_WORKFLOWS.c.id == bindparam("workflow_id"))
    .values(run_counter=_WORKFLOWS.c.run_counter + 1)
    .returning(*_WORKFLOWS.c)
)


async def get_workflow(
    session: AsyncSession, workflow_id: str, *, lock: bool = False, count_run: bool = False
) -> Workflow:
    """The workflow row, or NotFound; `lock` locks it, `count_run` locks it and adds one to
    its `run_counter` in the same statement (the caller subtracts it again if no run comes
    of it)."""
    workflow: Workflow | None
    if count_run or lock:
        statement = _TAKE_RUN_NUMBER if count_run else _LOCK_WORKFLOW
        row = await statement.fetchrow(session, {"workflow_id": workflow_id})
        workflow = adopt(session, Workflow(), row) if row is not None else None
    else:
        result = await session.execute(_GET_WORKFLOW, {"workflow_id": workflow_id})
        workflow = result.scalar_one_or_none()
    if workflow is None:
        raise NotFound(f"workflow {workflow_id!r} not found")
    return workflow


async def list_workflows(
    session: AsyncSession,
    *,
    limit: int,
    offset: int,
    owners: list[str] | None = None,
    branch: str | None = None,
) -> Sequence[Workflow]:
    query = select(Workflow).order_by(Workflow.id).limit(limit).offset(offset)
    if owners is not None:
        query = query.where(Workflow.owner.in_(owners))
    if branch is not None:
        query = query.where(Workflow.branch == branch)
    return (await session.execute(query)).scalars().all()


WORKFLOW_STATES = ("active", "paused", "blocked", "inactive")


async def search_workflows(
    session: AsyncSession,
    *,
    limit: int,
    offset: int,
    owners: list[str] | None = None,
    owner: str | None = None,
    branch: str | None = None,
    state: str | None = None,
    id_contains: str | None = None,
) -> tuple[Sequence[Workflow], int]:
    """A page of workflows by id, filtered by owner, branch, state
    (`active`, `paused`, `blocked`, `inactive`) and a piece of the id; with the number that
    match."""
    query = select(Workflow)
    if owners is not None:
        query = query.where(Workflow.owner.in_(owners))
    if owner:
        query = query.where(Workflow.owner == owner)
    if branch:
        query = query.where(Workflow.branch == branch)
    if state == "active":
        query = query.where(Workflow.is_active, ~Workflow.paused)
    elif state == "paused":
        query = query.where(Workflow.paused)
    elif state == "blocked":
        query = query.where(Workflow.blocked_by_run_id.is_not(None))
    elif state == "inactive":
        query = query.where(~Workflow.is_active)
    if id_contains:
        escaped = id_contains.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(Workflow.id.ilike(f"%{escaped}%", escape="\\"))
    total = await session.scalar(select(func.count()).select_from(query.subquery()))
    rows = (
        await session.execute(query.order_by(Workflow.id).limit(limit).offset(offset))
    ).scalars()
    return rows.all(), total or 0


async def active_definitions(
    session: AsyncSession, workflows: Sequence[Workflow]
) -> dict[str, dict]:
    """The stored active definition of each workflow that has one, in one query."""
    keys = [(w.id, w.active_version) for w in workflows if w.active_version is not None]
    if not keys:
        return {}
    query = select(WorkflowVersion.workflow_id, WorkflowVersion.definition).where(
        tuple_(WorkflowVersion.workflow_id, WorkflowVersion.version).in_(keys)
    )
    return {workflow_id: definition for workflow_id, definition in await session.execute(query)}


async def branch_workflows(session: AsyncSession, branch: str) -> Sequence[Workflow]:
    """Every workflow of a branch, by id."""
    query = select(Workflow).where(Workflow.branch == branch).order_by(Workflow.id)
    return (await session.execute(query)).scalars().all()


async def list_branches(
    session: AsyncSession, owners: list[str] | None = None
) -> list[tuple[str, int, int]]:
    """Every branch that holds workflows (of `owners`, if given), by name: (branch, workflows,
    active workflows)."""
    query = (
        select(
            Workflow.branch,
            func.count(),
            func.count().filter(Workflow.is_active),
        )
        .group_by(Workflow.branch)
        .order_by(Workflow.branch)
    )
    if owners is not None:
        query = query.where(Workflow.owner.in_(owners))
    return [(b, n, active) for b, n, active in await session.execute(query)]


async def all_workflows(session: AsyncSession) -> Sequence[Workflow]:
    return (await session.execute(select(Workflow))).scalars().all()


def version_hash(definition: WorkflowDefinition, code_sha256: str | None) -> str:
    """What makes a version itself: its definition, and the code package it runs."""
    digest = definition.content_hash()
    if code_sha256 is None:
        return digest
    return hashlib.sha256(f"{digest}:code:{code_sha256}".encode()).hexdigest()


async def push_version(
    session: AsyncSession,
    definition: WorkflowDefinition,
    code: CodePackage | None = None,
    *,
    branch: str = PROD,
    schedules_paused: bool = False,
) -> tuple[Workflow, WorkflowVersion, bool]:
    """Store a definition (with the code package its steps run) under its id in `branch` (see
    `maestro.branches`): a new version (activated) unless an identical one (same definition,
    same code) exists. `schedules_paused` holds the workflow's time triggers (set on every
    push, even of an identical definition)."""
    workflow_id = qualified_id(definition.id, branch)
    # A workflow created again after a delete carries on its former counters.
    former = await session.get(DeletedWorkflow, workflow_id)
    await session.execute(
        insert(Workflow)
        .values(
            id=workflow_id,
            owner=definition.owner,
            branch=branch,
            schedules_paused=schedules_paused,
            latest_version=former.latest_version if former else 0,
            run_counter=former.run_counter if former else 0,
            is_active=True,
        )
        .on_conflict_do_nothing()
    )
    workflow = await get_workflow(session, workflow_id, lock=True)
    if workflow.schedules_paused != schedules_paused:
        workflow.schedules_paused = schedules_paused
        await session.flush()
        await session.refresh(workflow, ["updated_at"])
    digest = version_hash(definition, code.sha256 if code else None)
    existing = (
        await session.execute(
            select(WorkflowVersion).where(
                WorkflowVersion.workflow_id == workflow_id, WorkflowVersion.content_hash == digest
            )
        )
    ).scalar_one_or_none()
    if existing is not None:
        return workflow, existing, False
    workflow.latest_version += 1
    version = WorkflowVersion(
        workflow_id=workflow_id,
        version=workflow.latest_version,
        definition=definition.model_dump(mode="json"),
        content_hash=digest,
        code_sha256=code.sha256 if code else None,
        code_uri=code.uri if code else None,
    )
    session.add(version)
    workflow.active_version = version.version
    workflow.is_active = True
    workflow.owner = definition.owner
    await session.flush()
    return workflow, version, True


async def get_version(session: AsyncSession, workflow_id: str, ref: str | int) -> WorkflowVersion:
    """A version by number, or `active` / `latest`."""
    workflow = await get_workflow(session, workflow_id)
    if ref == "active":
        if workflow.active_version is None:
            raise NotFound(f"workflow {workflow_id!r} has no active version")
        number = workflow.active_version
    elif ref == "latest":
        number = workflow.latest_version
    else:
        try:
            number = int(ref)
        except ValueError:
            raise NotFound(
                f"version {ref!r} of workflow {workflow_id!r} not found "
                "(use a number, 'active' or 'latest')"
            ) from None
    version = await session.get(WorkflowVersion, (workflow_id, number))
    if version is None:
        raise NotFound(f"version {number} of workflow {workflow_id!r} not found")
    return version


async def list_versions(session: AsyncSession, workflow_id: str) -> Sequence[WorkflowVersion]:
    await get_workflow(session, workflow_id)
    query = (
        select(WorkflowVersion)
        .where(WorkflowVersion.workflow_id == workflow_id)
        .order_by(WorkflowVersion.version)
    )
    return (await session.execute(query)).scalars().all()


async def activate_version(session: AsyncSession, workflow_id: str, ref: str | int) -> Workflow:
    """Make a version the active one (also rollback) and re-activate the workflow."""
    version = await get_version(session, workflow_id, ref)
    workflow = await get_workflow(session, workflow_id, lock=True)
    workflow.active_version = version.version
    workflow.is_active = True
    await session.flush()
    return workflow


async def count_runs(session: AsyncSession, workflow_id: str, statuses: Sequence[str]) -> int:
    query = select(func.count()).where(Run.workflow_id == workflow_id, Run.status.in_(statuses))
    return (await session.execute(query)).scalar_one()


async def delete_workflow(session: AsyncSession, workflow_id: str) -> None:
    """Remove a workflow with its versions, runs (steps and waits cascade), signal-trigger
    registrations (partial joins cascade) and its record of consumed signals. Signals stay:
    the log is append-only. Its counters are kept (see DeletedWorkflow); the caller holds the
    workflow's row lock."""
    workflow = await get_workflow(session, workflow_id)
    counters = {"latest_version": workflow.latest_version, "run_counter": workflow.run_counter}
    await session.execute(
        insert(DeletedWorkflow)
        .values(id=workflow_id, **counters)
        .on_conflict_do_update(index_elements=["id"], set_={**counters, "deleted_at": func.now()})
    )
    await session.execute(delete(SignalMatch).where(SignalMatch.workflow_id == workflow_id))
    await session.execute(
        delete(SignalTriggerRow).where(SignalTriggerRow.workflow_id == workflow_id)
    )
    await session.execute(delete(Run).where(Run.workflow_id == workflow_id))
    await session.execute(delete(WorkflowVersion).where(WorkflowVersion.workflow_id == workflow_id))
    await session.execute(delete(Workflow).where(Workflow.id == workflow_id))
