"""Workflow routes: push definitions, read versions, activate, deactivate, validate."""

from __future__ import annotations

import json
from typing import Annotated, Any

import yaml
from fastapi import APIRouter, Query, Request, Response

from api.deps import BusDep, RunsDep, SessionDep
from api.schemas import (
    PartialJoin,
    PushResult,
    TriggerOut,
    ValidationResult,
    VersionOut,
    WorkflowOut,
    WorkflowPage,
)
from maestro.db import signals as signals_db
from maestro.db import workflows as workflows_db
from maestro.db.tables import Workflow, WorkflowVersion
from maestro.definitions import parse_definition
from maestro.errors import InvalidInput, Problem

router = APIRouter(prefix="/workflows", tags=["workflows"])

_DEFINITION_BODY = {
    "requestBody": {
        "required": True,
        "description": "A workflow definition as JSON, or as YAML (`application/yaml`).",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/WorkflowDefinition"}},
            "application/yaml": {"schema": {"$ref": "#/components/schemas/WorkflowDefinition"}},
        },
    }
}


async def read_definition_body(request: Request) -> Any:
    """The request body decoded as JSON or YAML, by Content-Type."""
    raw = await request.body()
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip()
    try:
        if content_type in ("application/yaml", "application/x-yaml", "text/yaml"):
            return yaml.safe_load(raw)
        if content_type in ("application/json", ""):
            return json.loads(raw)
    except (ValueError, yaml.YAMLError) as exc:
        raise InvalidInput(
            "body could not be decoded",
            [Problem(("body",), f"invalid {content_type}: {exc}", "decode_error")],
        ) from None
    raise InvalidInput(
        "unsupported content type",
        [
            Problem(
                ("header", "content-type"),
                f"{content_type!r} is not supported; send application/json or application/yaml",
                "content_type",
            )
        ],
    )


def workflow_out(workflow: Workflow, definition: dict | None = None) -> WorkflowOut:
    return WorkflowOut(
        id=workflow.id,
        owner=workflow.owner,
        active_version=workflow.active_version,
        latest_version=workflow.latest_version,
        is_active=workflow.is_active,
        run_count=workflow.run_counter,
        created_at=workflow.created_at,
        updated_at=workflow.updated_at,
        definition=definition,
    )


def version_out(version: WorkflowVersion, workflow: Workflow) -> VersionOut:
    return VersionOut(
        workflow_id=version.workflow_id,
        version=version.version,
        active=workflow.is_active and workflow.active_version == version.version,
        content_hash=version.content_hash,
        created_at=version.created_at,
        definition=version.definition,
    )


@router.post(
    "",
    response_model=PushResult,
    status_code=201,
    openapi_extra=_DEFINITION_BODY,
    responses={200: {"model": PushResult, "description": "Identical definition existed"}},
)
async def push_workflow(
    request: Request, response: Response, session: SessionDep, bus: BusDep
) -> PushResult:
    """Register a workflow definition: a new version that becomes active (its triggers take
    over), or — when an identical definition was pushed before — that version, unchanged (200,
    nothing written, even if another version is active or the workflow is deactivated)."""
    definition = parse_definition(await read_definition_body(request))
    workflow, version, created = await workflows_db.push_version(session, definition)
    if created:
        await bus.check_trigger_loop(session, definition)
        await bus.sync_triggers(session, definition.id)
    else:
        response.status_code = 200
    await session.refresh(workflow)
    return PushResult(workflow=workflow_out(workflow), version=version.version, created=created)


@router.post("/validate", response_model=ValidationResult, openapi_extra=_DEFINITION_BODY)
async def validate_workflow(request: Request) -> ValidationResult:
    """Check a definition without storing anything: 200 with the normalised definition, or 422
    listing every problem with its location."""
    definition = parse_definition(await read_definition_body(request))
    return ValidationResult(valid=True, definition=definition.model_dump(mode="json"))


@router.get("", response_model=WorkflowPage)
async def list_workflows(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> WorkflowPage:
    """List workflows by id."""
    rows = await workflows_db.list_workflows(session, limit=limit, offset=offset)
    return WorkflowPage(items=[workflow_out(w) for w in rows], limit=limit, offset=offset)


@router.get("/{workflow_id}", response_model=WorkflowOut)
async def get_workflow(workflow_id: str, session: SessionDep) -> WorkflowOut:
    """A workflow with its active version's definition."""
    workflow = await workflows_db.get_workflow(session, workflow_id)
    definition = None
    if workflow.active_version is not None:
        definition = (await workflows_db.get_version(session, workflow_id, "active")).definition
    return workflow_out(workflow, definition)


@router.get("/{workflow_id}/versions", response_model=list[VersionOut])
async def list_versions(workflow_id: str, session: SessionDep) -> list[VersionOut]:
    """Every version of a workflow, oldest first."""
    workflow = await workflows_db.get_workflow(session, workflow_id)
    return [
        version_out(v, workflow) for v in await workflows_db.list_versions(session, workflow_id)
    ]


@router.get("/{workflow_id}/versions/{version}", response_model=VersionOut)
async def get_version(workflow_id: str, version: str, session: SessionDep) -> VersionOut:
    """One version: a number, `active` or `latest`."""
    stored = await workflows_db.get_version(session, workflow_id, version)
    workflow = await workflows_db.get_workflow(session, workflow_id)
    return version_out(stored, workflow)


@router.post("/{workflow_id}/versions/{version}/activate", response_model=WorkflowOut)
async def activate_version(
    workflow_id: str, version: str, session: SessionDep, bus: BusDep, runs: RunsDep
) -> WorkflowOut:
    """Make a version active (this is also rollback); new runs and triggers use it."""
    workflow = await workflows_db.activate_version(session, workflow_id, version)
    await bus.check_trigger_loop(
        session, await runs.definition(session, workflow_id, workflow.active_version)
    )
    await bus.sync_triggers(session, workflow_id)
    await session.refresh(workflow)
    return workflow_out(workflow)


@router.post("/{workflow_id}/deactivate", response_model=WorkflowOut)
async def deactivate_workflow(workflow_id: str, session: SessionDep) -> WorkflowOut:
    """Deactivate a workflow: triggers stop and starts without an explicit version are refused;
    running runs continue."""
    workflow = await workflows_db.deactivate(session, workflow_id)
    await signals_db.set_triggers_active(session, workflow_id, False)
    await session.refresh(workflow)
    return workflow_out(workflow)


@router.get("/{workflow_id}/triggers", response_model=list[TriggerOut])
async def list_triggers(workflow_id: str, session: SessionDep, runs: RunsDep) -> list[TriggerOut]:
    """The active version's triggers; signal triggers with their partially satisfied joins
    (which signals arrived for which join key, which are still missing)."""
    workflow = await workflows_db.get_workflow(session, workflow_id)
    if workflow.active_version is None:
        return []
    definition = await runs.definition(session, workflow_id, workflow.active_version)
    registered = await signals_db.workflow_triggers(session, workflow_id)
    joins = await signals_db.pending_joins(session, workflow_id)
    out = []
    for position, trigger in enumerate(definition.triggers):
        spec = trigger.model_dump(mode="json", exclude_none=True)
        kind = next(iter(spec)) if len(spec) == 1 else ("time" if "cron" in spec else "interval")
        rows = [r for r in registered if r.position == position] or [None]
        for row in rows:
            names = row.names if row else []
            pending = [
                PartialJoin(
                    join_key=j.join_key,
                    received={n: s["id"] for n, s in j.slots.items()},
                    missing=[n for n in names if n not in j.slots],
                    updated_at=j.updated_at,
                )
                for j in joins
                if row and j.trigger_id == row.trigger_id
            ]
            out.append(
                TriggerOut(
                    position=position,
                    kind=kind,
                    trigger_id=row.trigger_id if row else None,
                    active=workflow.is_active,
                    spec=spec,
                    pending_joins=pending,
                )
            )
    return out
