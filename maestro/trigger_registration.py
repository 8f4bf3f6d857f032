"""Signal-trigger registration, owned by the workflows side: the active version's signal
triggers registered for the bus to match (live unless the workflow is deactivated or paused),
and the refusal of trigger loops across workflows."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from maestro.branches import PROD, branch_of, qualified_id
from maestro.db import signals as signals_db
from maestro.db import workflows as workflows_db
from maestro.definitions import FINISH_STATUSES, WorkflowDefinition
from maestro.definitions_cache import DefinitionsCache
from maestro.errors import DefinitionInvalid, Problem
from maestro.triggers import CompiledTrigger, compile_signal_triggers, completion_signal_name


async def check_trigger_loop(
    session: AsyncSession,
    definitions: DefinitionsCache,
    definition: WorkflowDefinition,
    branch: str = PROD,
) -> None:
    """Refuse a definition whose triggers would start it again through the completion or
    emitted signals of the runs they start (A -> B -> A), unless it opts in. What a workflow's
    runs publish reaches only its branch, so the loop is looked for there."""
    if definition.allow_trigger_loop:
        return
    new_triggers = [t for t in compile_signal_triggers(definition, branch)]
    own_id = qualified_id(definition.id, branch)
    active: dict[str, WorkflowDefinition] = {own_id: definition}

    async def products(workflow_id: str) -> list[tuple[str, str | None]]:
        if workflow_id not in active:
            workflow = await workflows_db.get_workflow(session, workflow_id)
            assert workflow.active_version is not None  # set by the workflow's first push
            active[workflow_id] = await definitions.get(
                session, workflow_id, workflow.active_version
            )
        emitted: list[tuple[str, str | None]] = [
            (e.name, None) for s in active[workflow_id].steps for e in s.emits
        ]
        return [(completion_signal_name(s), workflow_id) for s in FINISH_STATUSES] + emitted

    def consumes(trigger: CompiledTrigger, made: list[tuple[str, str | None]]) -> bool:
        for condition in trigger.conditions:
            for name, source in made:
                if condition.name != name:
                    continue
                wanted = condition.where.get("workflow_id")
                if source is None or not isinstance(wanted, str) or wanted == source:
                    return True
        return False

    async def successors(workflow_id: str) -> list[str]:
        made = await products(workflow_id)
        found = {own_id} if any(consumes(t, made) for t in new_triggers) else set()
        for row in await signals_db.triggers_listening_to(session, [n for n, _ in made]):
            if (
                row.active
                and row.workflow_id != own_id
                and branch_of(row.workflow_id) == branch
                and consumes(CompiledTrigger.model_validate(row.spec), made)
            ):
                found.add(row.workflow_id)
        return sorted(found)

    path = [own_id]
    visited: set[str] = set()

    async def visit(node: str) -> list[str] | None:
        for nxt in await successors(node):
            if nxt == own_id:
                return [*path, nxt]
            if nxt not in visited:
                visited.add(nxt)
                path.append(nxt)
                found = await visit(nxt)
                if found:
                    return found
                path.pop()
        return None

    loop = await visit(own_id)
    if loop:
        raise DefinitionInvalid(
            "workflow definition is invalid",
            [
                Problem(
                    ("triggers",),
                    f"trigger loop: {' -> '.join(loop)} (each run would start the next); "
                    "set allow_trigger_loop: true if this is intended",
                    "trigger_loop",
                    {"loop": loop},
                )
            ],
        )


async def sync_triggers(
    session: AsyncSession, definitions: DefinitionsCache, workflow_id: str
) -> None:
    """Register the active version's signal triggers, live unless the workflow is
    deactivated or paused (call after push, activate, deactivate, pause, resume)."""
    workflow = await workflows_db.get_workflow(session, workflow_id)
    if workflow.active_version is None:
        return
    definition = await definitions.get(session, workflow_id, workflow.active_version)
    await signals_db.replace_triggers(
        session,
        workflow_id,
        workflow.active_version,
        workflow.is_active and not workflow.paused,
        compile_signal_triggers(definition, workflow.branch),
        workflow.branch,
    )
