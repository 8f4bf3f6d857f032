"""Workflow routes: push definitions, read versions, activate, deactivate, validate."""

from __future__ import annotations

import json
from typing import Annotated, Any

import yaml
from fastapi import APIRouter, Query, Request, Response

from api.deps import SessionDep
from api.schemas import PushResult, ValidationResult, VersionOut, WorkflowOut, WorkflowPage
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
async def push_workflow(request: Request, response: Response, session: SessionDep) -> PushResult:
    """Register a workflow definition: a new version that becomes active, or the existing
    version when an identical definition was pushed before (200, nothing written)."""
    definition = parse_definition(await read_definition_body(request))
    workflow, version, created = await workflows_db.push_version(session, definition)
    if not created:
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
async def activate_version(workflow_id: str, version: str, session: SessionDep) -> WorkflowOut:
    """Make a version active (this is also rollback); new runs and triggers use it."""
    workflow = await workflows_db.activate_version(session, workflow_id, version)
    await session.refresh(workflow)
    return workflow_out(workflow)


@router.post("/{workflow_id}/deactivate", response_model=WorkflowOut)
async def deactivate_workflow(workflow_id: str, session: SessionDep) -> WorkflowOut:
    """Deactivate a workflow: triggers stop and starts without an explicit version are refused;
    running runs continue."""
    workflow = await workflows_db.deactivate(session, workflow_id)
    await session.refresh(workflow)
    return workflow_out(workflow)
