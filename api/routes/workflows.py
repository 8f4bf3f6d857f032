"""Workflow routes: push definitions, read versions, activate, deactivate, validate."""

from __future__ import annotations

import asyncio
import weakref
from datetime import UTC, datetime, timedelta
from typing import Annotated

import yaml
from fastapi import APIRouter, Query, Request, Response

from api.auth import owners_filter
from api.deps import (
    ActionsDep,
    EndsDep,
    RunsDep,
    SchedulesDep,
    SessionDep,
    SessionsDep,
    SettingsDep,
    WorkflowsDep,
)
from api.routes.runs import run_out
from api.schemas import (
    BIGINT_MAX,
    BackfillIn,
    BackfillOut,
    LastFire,
    PartialJoin,
    PushResult,
    RunOut,
    TriggerOut,
    ValidationResult,
    VersionOut,
    WorkflowOut,
    WorkflowPage,
)
from maestro.branches import BRANCH_PATTERN, PROD, check_qualified_id
from maestro.code_packages import SHA256_PATTERN
from maestro.db import runs as runs_db
from maestro.db import signals as signals_db
from maestro.db import workflows as workflows_db
from maestro.db.tables import Run, Workflow, WorkflowVersion
from maestro.definitions import WorkflowDefinition, parse_definition
from maestro.documents import DocumentTooComplex, load_json, load_yaml
from maestro.errors import InvalidInput, Problem
from maestro.runtime import RunStatus
from maestro.schedules import time_triggers

router = APIRouter(prefix="/workflows", tags=["workflows"])

_DEFINITION = {"$ref": "#/components/schemas/WorkflowDefinition"}
_EXAMPLE = {
    "id": "daily-report",
    "owner": "team-data",
    "params": {"day": {"type": "string", "default": "today"}},
    "steps": [
        {"id": "extract", "type": "noop"},
        {"id": "publish", "type": "noop", "depends_on": ["extract"]},
    ],
    "triggers": [
        {"cron": "0 6 * * *", "timezone": "UTC"},
        {"signal": {"all_of": [{"name": "table.ready"}]}},
    ],
}
_DEFINITION_BODY = {
    "requestBody": {
        "required": True,
        "description": "A workflow definition as JSON, or as YAML (`application/yaml`). Beyond "
        "this schema, a definition is checked as a whole (422 lists every problem): step ids "
        "are unique and `depends_on` names steps of the definition without a cycle, each step's "
        "params fit its type, CEL expressions compile within their cost limits, crons and time "
        "zones parse, retry backoffs are ordered, and param defaults have their param's type.",
        "content": {
            "application/json": {"schema": _DEFINITION, "example": _EXAMPLE},
            "application/yaml": {"schema": _DEFINITION},
        },
    }
}


_YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml")
# Definitions are decoded one at a time per event loop: a decoding thread still takes turns at
# the GIL with the loop, and several at once would leave the loop a small share of it.
_DECODING: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)


async def read_definition(request: Request) -> WorkflowDefinition:
    """The request body decoded as JSON or YAML (by Content-Type) and validated as a definition,
    in a worker thread: both are CPU work that grows with the document, kept off the event
    loop."""
    raw = await request.body()
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip()
    turn = _DECODING.setdefault(asyncio.get_running_loop(), asyncio.Semaphore(1))
    async with turn:
        return await asyncio.to_thread(_definition_from, raw, content_type)


def _definition_from(raw: bytes, content_type: str) -> WorkflowDefinition:
    try:
        if content_type in _YAML_TYPES:
            data = load_yaml(raw)
        elif content_type in ("application/json", ""):
            data = load_json(raw)
        else:
            raise InvalidInput(
                "unsupported content type",
                [
                    Problem(
                        ("header", "content-type"),
                        f"{content_type!r} is not supported; send application/json or "
                        "application/yaml",
                        "content_type",
                    )
                ],
            )
    except DocumentTooComplex as exc:
        raise InvalidInput(
            f"body is over a document limit: {exc}",
            [Problem(("body",), str(exc), "document_too_complex")],
        ) from None
    except (ValueError, yaml.YAMLError) as exc:
        raise InvalidInput(
            "body could not be decoded",
            [Problem(("body",), f"invalid {content_type}: {exc}", "decode_error")],
        ) from None
    return parse_definition(data)


BranchQuery = Annotated[
    str,
    Query(
        pattern=BRANCH_PATTERN,
        description="The branch to deploy to: the workflow is stored as `<id>@<branch>` "
        "(`prod`, the default, keeps the plain id). Within a branch, `on_finish` triggers, "
        "subworkflow steps and the signals its runs emit connect only its own workflows; "
        "outside signals reach every branch that listens.",
    ),
]
WithSchedulesQuery = Annotated[
    bool,
    Query(
        description="Outside `prod`: arm the time triggers (by default a branch's schedules "
        "are created paused); every push restates it"
    ),
]


def workflow_out(workflow: Workflow, definition: dict | None = None) -> WorkflowOut:
    return WorkflowOut.model_validate(workflow).model_copy(update={"definition": definition})


def version_out(version: WorkflowVersion, workflow: Workflow) -> VersionOut:
    active = workflow.is_active and workflow.active_version == version.version
    return VersionOut.model_validate(version).model_copy(update={"active": active})


@router.post(
    "",
    response_model=PushResult,
    status_code=201,
    openapi_extra=_DEFINITION_BODY,
    responses={200: {"model": PushResult, "description": "Identical definition existed"}},
)
async def push_workflow(
    request: Request,
    response: Response,
    workflows: WorkflowsDep,
    sessions: SessionsDep,
    code: Annotated[
        str | None,
        Query(
            pattern=SHA256_PATTERN,
            description="The SHA-256 of an uploaded code package (PUT /api/v1/code/{sha256}) "
            "the version's steps run; part of what makes a version identical",
        ),
    ] = None,
    branch: BranchQuery = PROD,
    with_schedules: WithSchedulesQuery = False,
) -> PushResult:
    """Register a workflow definition in a branch (`prod` by default): a new version that
    becomes active (its triggers and schedules take over), or — when an identical definition
    (with the same code package) was pushed before — that version, unchanged (200, nothing
    written but `with_schedules`, even if another version is active or the workflow is
    deactivated). Outside `prod` the workflow's id is `<id>@<branch>` and its time triggers
    are paused unless `with_schedules=true`."""
    definition = await read_definition(request)
    workflow_id = check_qualified_id(definition.id, branch)
    principal = getattr(request.state, "principal", None)
    if principal is not None and principal.owners:
        principal.check_owner(definition.owner)
        async with sessions() as session:
            existing = await session.get(Workflow, workflow_id)
        if existing is not None:  # no taking over another team's workflow by pushing it
            principal.check_owner(existing.owner)
    workflow, version, created = await workflows.push(
        definition, code, branch=branch, with_schedules=with_schedules
    )
    if not created:
        response.status_code = 200
    return PushResult(workflow=workflow_out(workflow), version=version.version, created=created)


@router.post("/validate", response_model=ValidationResult, openapi_extra=_DEFINITION_BODY)
async def validate_workflow(
    request: Request, branch: BranchQuery = PROD, with_schedules: WithSchedulesQuery = False
) -> ValidationResult:
    """Check a definition without storing anything (with the parameters a push would take):
    200 with the normalised definition and the id it would be stored under, or 422 listing
    every problem with its location."""
    definition = await read_definition(request)
    return ValidationResult(
        valid=True,
        definition=definition.model_dump(mode="json"),
        workflow_id=check_qualified_id(definition.id, branch),
        branch=branch,
    )


@router.get("", response_model=WorkflowPage)
async def list_workflows(
    request: Request,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=BIGINT_MAX)] = 0,
    branch: Annotated[
        str | None, Query(pattern=BRANCH_PATTERN, description="Only this branch's workflows")
    ] = None,
) -> WorkflowPage:
    """List workflows by id (those of the key's owners, for an owner-limited key)."""
    rows = await workflows_db.list_workflows(
        session, limit=limit, offset=offset, owners=owners_filter(request), branch=branch
    )
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
async def activate_version(workflow_id: str, version: str, workflows: WorkflowsDep) -> WorkflowOut:
    """Make a version active (this is also rollback) and the workflow active again; new runs,
    triggers and schedules use it."""
    return workflow_out(await workflows.activate(workflow_id, version))


@router.post("/{workflow_id}/deactivate", response_model=WorkflowOut)
async def deactivate_workflow(workflow_id: str, workflows: WorkflowsDep) -> WorkflowOut:
    """Deactivate a workflow: its triggers stop (schedules paused) and starts without an
    explicit version are refused; running runs continue."""
    return workflow_out(await workflows.deactivate(workflow_id))


@router.delete(
    "/{workflow_id}",
    status_code=204,
    responses={409: {"description": "the workflow has queued or running runs"}},
)
async def delete_workflow(workflow_id: str, workflows: WorkflowsDep) -> Response:
    """Delete a workflow: its Temporal schedules, versions, signal-trigger registrations and
    partial joins, its runs and their steps. Signals stay in the log. 409 while it has queued
    or running runs (stop them first with POST /workflows/{id}/stop). Pushing the same id
    again creates a new workflow whose versions and run numbers carry on after the old ones,
    so Temporal workflow ids never repeat."""
    await workflows.delete(workflow_id)
    return Response(status_code=204)


@router.post("/{workflow_id}/pause", response_model=WorkflowOut)
async def pause_workflow(workflow_id: str, workflows: WorkflowsDep) -> WorkflowOut:
    """Pause every trigger (schedules and signal triggers); manual starts still work."""
    return workflow_out(await workflows.pause(workflow_id))


@router.post("/{workflow_id}/resume", response_model=WorkflowOut)
async def resume_workflow(workflow_id: str, workflows: WorkflowsDep) -> WorkflowOut:
    """Resume the triggers of a paused workflow."""
    return workflow_out(await workflows.resume(workflow_id))


@router.post("/{workflow_id}/stop", response_model=list[RunOut], status_code=202)
async def stop_workflow(workflow_id: str, ends: EndsDep, settings: SettingsDep) -> list[RunOut]:
    """Stop every queued and running run of the workflow; returns the runs it stopped."""
    return [run_out(r, settings) for r in await ends.stop_workflow(workflow_id)]


@router.post("/{workflow_id}/unblock", response_model=list[RunOut])
async def unblock_workflow(
    workflow_id: str, actions: ActionsDep, settings: SettingsDep
) -> list[RunOut]:
    """Release a strict_sequential queue held by a failed run; returns the runs it admitted.
    409 if the workflow is not blocked."""
    return [run_out(r, settings) for r in await actions.unblock(workflow_id)]


@router.post("/{workflow_id}/backfill", response_model=BackfillOut)
async def backfill_workflow(
    workflow_id: str, body: BackfillIn, schedules: SchedulesDep, settings: SettingsDep
) -> BackfillOut:
    """One run per scheduled time of every time trigger in (start, end], through the run
    strategy. Times that already have a run (fired or backfilled) are not run again."""
    created, total = await schedules.backfill(workflow_id, body.start, body.end)
    return BackfillOut(
        scheduled_times=total, created=len(created), runs=[run_out(r, settings) for r in created]
    )


def last_fire(run: Run | None) -> LastFire | None:
    """The run a trigger started last, and its cause: the scheduled time or the signals."""
    if run is None:
        return None
    detail = run.cause.get("detail", {})
    return LastFire(
        run_id=run.run_id,
        run_number=run.run_number,
        status=RunStatus(run.status),
        fired_at=run.created_at,
        scheduled_at=detail.get("scheduled_at"),
        signal_ids=detail.get("signal_ids"),
    )


@router.get("/{workflow_id}/triggers", response_model=list[TriggerOut])
async def list_triggers(
    workflow_id: str,
    session: SessionDep,
    runs: RunsDep,
    schedules: SchedulesDep,
    upcoming: Annotated[int, Query(ge=0, le=100, description="next fire times to list")] = 5,
) -> list[TriggerOut]:
    """The active version's triggers. Time triggers: the next fire times (DST-correct, in UTC),
    the last fire and its run, the Temporal schedule's state. Signal triggers: partially
    satisfied joins (which signals arrived for which join key, which are missing)."""
    workflow = await workflows_db.get_workflow(session, workflow_id)
    if workflow.active_version is None:
        return []
    definition = await runs.definitions.get(session, workflow_id, workflow.active_version)
    registered = await signals_db.workflow_triggers(session, workflow_id)
    joins = await signals_db.pending_joins(session, workflow_id)
    timed = {ref.position: ref for ref in time_triggers(workflow_id, definition)}
    paused = workflow.paused or not workflow.is_active
    schedules_paused = paused or workflow.schedules_paused
    ids = [ref.trigger_id for ref in timed.values()] + [row.trigger_id for row in registered]
    last_runs = await runs_db.last_runs_of_triggers(session, workflow_id, ids)
    now = datetime.now(UTC)
    out = []
    for position, trigger in enumerate(definition.triggers):
        spec = trigger.model_dump(mode="json", exclude_none=True)
        if position in timed:
            ref = timed[position]
            out.append(
                TriggerOut(
                    position=position,
                    kind="time" if "cron" in spec else "interval",
                    trigger_id=ref.trigger_id,
                    active=not schedules_paused,
                    paused=schedules_paused,
                    spec=spec,
                    next_fires=ref.fire_times(now, now + timedelta(days=3660), upcoming),
                    last_fire=last_fire(last_runs.get(ref.trigger_id)),
                    schedule=await schedules.describe(ref),
                )
            )
            continue
        for row in [r for r in registered if r.position == position]:
            pending = [
                PartialJoin(
                    join_key=j.join_key,
                    received={n: s["id"] for n, s in j.slots.items()},
                    missing=[n for n in row.names if n not in j.slots],
                    updated_at=j.updated_at,
                )
                for j in joins
                if j.trigger_id == row.trigger_id
            ]
            out.append(
                TriggerOut(
                    position=position,
                    kind=next(iter(spec)),
                    trigger_id=row.trigger_id,
                    active=row.active,
                    paused=paused,
                    spec=spec,
                    last_fire=last_fire(last_runs.get(row.trigger_id)),
                    pending_joins=pending,
                )
            )
    return out
