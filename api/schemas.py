"""API-only shapes: responses and the few request bodies that are not a definition."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Query
from pydantic import AliasChoices, AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field

from maestro.runtime import RunStatus, StepStatus
from maestro.signals import MAX_BATCH, TriggerExplanation

BIGINT_MAX = 2**63 - 1  # PostgreSQL's largest bigint: larger ids and offsets are refused
_RFC3339 = re.compile(r"\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d(\.\d{1,6})?([Zz]|[+-]\d\d:\d\d)")


def _rfc3339(value: Any) -> Any:
    # Pydantic alone would also take a number of Unix seconds or a time without a zone.
    if isinstance(value, str) and not _RFC3339.fullmatch(value):
        raise ValueError("not a date and time with a zone, e.g. 2026-11-26T00:00:00Z")
    return value


Since = Annotated[
    AwareDatetime | None,
    BeforeValidator(_rfc3339),
    Query(description="Only entries at or after this time (RFC 3339, e.g. 2026-11-26T00:00:00Z)"),
]


class FromRow(BaseModel):
    """A response read from a database row's attributes. Fields the row does not hold get
    defaults and are filled in by the route; answers always carry them, so the OpenAPI
    document lists them as required."""

    model_config = ConfigDict(
        from_attributes=True, json_schema_serialization_defaults_required=True
    )


class WorkflowOut(FromRow):
    id: str = Field(description="The definition's id; `<id>@<branch>` outside `prod`")
    owner: str
    branch: str = Field(description="`prod`, or the branch the definition was pushed to")
    schedules_paused: bool = Field(
        description="The time triggers are held: a branch pushed without `with_schedules`"
    )
    active_version: int | None
    latest_version: int
    is_active: bool
    paused: bool = Field(description="Triggers are held (manual starts still work)")
    blocked_by_run_id: str | None = Field(
        description="strict_sequential: the failed run holding the queue"
    )
    run_count: int = Field(validation_alias=AliasChoices("run_count", "run_counter"))
    created_at: datetime
    updated_at: datetime
    definition: dict[str, Any] | None = Field(
        default=None, description="The active version's definition (single-workflow reads only)"
    )


class WorkflowPage(BaseModel):
    items: list[WorkflowOut]
    limit: int
    offset: int


class BranchOut(BaseModel):
    branch: str
    workflows: int = Field(description="Workflows deployed to the branch")
    active_workflows: int = Field(description="Of those, the ones not deactivated")


class BranchDeleted(BaseModel):
    branch: str
    deleted: list[str] = Field(description="The ids of the workflows deleted")


class VersionOut(FromRow):
    workflow_id: str
    version: int
    active: bool = False
    content_hash: str = Field(
        description="The definition's hash, combined with the code package's when it has one"
    )
    created_at: datetime
    definition: dict[str, Any]
    code_sha256: str | None = Field(
        default=None, description="The code package its steps run (`maestro deploy`), if any"
    )
    code_uri: str | None = Field(default=None, description="Where that code package is stored")


class CodePackageOut(FromRow):
    sha256: str
    uri: str
    size: int = Field(description="Bytes of the zip")
    files: int = Field(description="How many files it holds")
    created_at: datetime | None
    created: bool = Field(default=False, description="Stored by this request")


class PushResult(BaseModel):
    workflow: WorkflowOut
    version: int
    created: bool = Field(description="False when an identical definition already existed")


class ValidationResult(BaseModel):
    valid: bool
    definition: dict[str, Any] = Field(description="The definition with every default filled in")
    workflow_id: str = Field(description="The id a push to `branch` would store it under")
    branch: str


class StartRunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    params: dict[str, Any] = Field(default_factory=dict)
    request_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="Idempotency key: the same request_id returns the same run",
    )
    version: int | None = Field(
        default=None, ge=1, description="Run this version instead of the active one"
    )


class StepOut(BaseModel):
    step_id: str
    type: str
    status: StepStatus
    attempt: int
    started_at: datetime | None
    ended_at: datetime | None
    outputs: dict[str, Any] | None
    error: str | None
    details: dict[str, Any] | None
    actions: list[str] = Field(description="Actions this step's status allows")
    progress: dict[str, int] | None = Field(
        default=None,
        description="foreach and while steps: how many iterations are in each status "
        "(pending, running, succeeded, failed, skipped, stopped)",
    )


class IterationOut(BaseModel):
    """One iteration of a foreach or while step."""

    index: int
    status: str
    params: Any = Field(description="The item (foreach), or the previous iteration's outputs")
    outputs: dict[str, Any] | None = Field(description="The body steps' outputs by step id")
    steps: dict[str, Any] = Field(description="The body steps' states by step id")
    error: str | None
    started_at: datetime | None
    ended_at: datetime | None


class IterationPage(BaseModel):
    items: list[IterationOut]
    next_cursor: str | None


class RunOut(FromRow):
    run_id: str
    workflow_id: str
    version: int
    run_number: int
    status: RunStatus
    params: dict[str, Any]
    cause: dict[str, Any]
    request_id: str | None
    temporal_workflow_id: str
    temporal_run_id: str | None
    temporal_ui_url: str = ""
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    error: str | None
    outputs: dict[str, Any] | None
    trigger_id: str | None = None
    code_sha256: str | None = Field(
        default=None,
        description="Single-run reads: the code package of the run's version, if it has one",
    )
    actions: list[str] = Field(default=[], description="Actions this run's status allows")
    steps: list[StepOut] | None = Field(default=None, description="Present on single-run reads")
    sla: dict[str, Any] | None = Field(
        default=None,
        description="Single-run reads of runs with an SLA: `deadline`, `status` (pending, met, "
        "missed), `missed_at`, `margin_seconds` (deadline minus end)",
    )


class RunPage(BaseModel):
    items: list[RunOut]
    next_cursor: str | None = Field(description="Pass as `cursor` to get the next page")


class SignalOut(FromRow):
    id: int
    name: str
    seq: int = Field(description="Sequence number within the signal's name")
    params: dict[str, Any]
    payload: dict[str, Any] | None
    request_id: str | None
    producer: dict[str, Any] = Field(description="outside, or the run/step that published it")
    branch: str | None = Field(
        description="The branch of the workflow that published it (or that it was published "
        "for); null: from outside, reaching every branch"
    )
    created_at: datetime


class PublishOut(BaseModel):
    signal: SignalOut
    duplicate: bool = Field(
        description="True when the dedupe key was seen before; nothing was started"
    )
    runs: list[RunOut] = Field(description="Runs this signal started")


class BatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # The route checks the count and then each member, so each problem names its index.
    signals: list[Any] = Field(
        min_length=1,
        description=f"1 to {MAX_BATCH} signals",
        json_schema_extra={
            "items": {"$ref": "#/components/schemas/SignalIn"},
            "maxItems": MAX_BATCH,
        },
    )


class BatchOut(BaseModel):
    results: list[PublishOut]


class SignalPage(BaseModel):
    items: list[SignalOut]
    next_cursor: str | None


class MatchOut(BaseModel):
    workflow_id: str
    trigger_id: str
    outcome: str = Field(
        description="started_run, duplicate_run, join_incomplete, condition_false, "
        "condition_error, superseded, expired, workflow_inactive, workflow_paused, params_invalid"
    )
    run_id: str | None
    detail: str | None
    updated_at: datetime


class SignalDetail(SignalOut):
    matches: list[MatchOut] = Field(
        description="What this signal did to each trigger it reached: the triggers listening "
        "to its name, but for those whose `where` requires a string param it does not carry"
    )
    explain: list[TriggerExplanation] | None = Field(
        default=None,
        description="With `explain=true`: every trigger registered now that listens to the "
        "signal's name, whether the signal would match it now and why not",
    )


class PartialJoin(BaseModel):
    join_key: str
    received: dict[str, int] = Field(description="Signal name -> id of the signal held")
    missing: list[str]
    updated_at: datetime


class LastFire(BaseModel):
    run_id: str
    run_number: int
    status: RunStatus
    fired_at: datetime = Field(description="When the run was created")
    scheduled_at: datetime | None = Field(
        default=None, description="Time triggers: the scheduled time the run is for"
    )
    signal_ids: list[int] | None = Field(
        default=None, description="Signal and on_finish triggers: the signals the run consumed"
    )


class TriggerOut(BaseModel):
    position: int = Field(description="Index in the definition's triggers")
    kind: str = Field(description="time, interval, signal or on_finish")
    trigger_id: str = Field(description="Stable id; unchanged while the trigger is unchanged")
    active: bool = Field(description="Fires now (the workflow is active and not paused)")
    paused: bool = Field(
        description="The workflow is paused or deactivated (time triggers: or a branch's "
        "schedules are held)"
    )
    spec: dict[str, Any]
    next_fires: list[datetime] | None = Field(default=None, description="Time triggers")
    last_fire: LastFire | None = Field(
        default=None,
        description="The last run the trigger started (restarts of it aside); null before any",
    )
    schedule: dict[str, Any] | None = Field(
        default=None, description="The Temporal schedule: id, paused, fires, missed catch-up"
    )
    pending_joins: list[PartialJoin] = Field(default_factory=list)


class BackfillIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start: AwareDatetime = Field(description="Exclusive start (ISO 8601 with a time zone)")
    end: AwareDatetime = Field(description="Inclusive end")


class BackfillOut(BaseModel):
    scheduled_times: int = Field(description="Scheduled times in the range")
    created: int = Field(description="Runs created (times that had no run yet)")
    runs: list[RunOut]


class RestartIn(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: str = Field(
        default="failed", alias="from", description="`failed`, `beginning` or a step id"
    )


class LineageNode(BaseModel):
    id: str = Field(description="`run:<run_id>`, `signal:<id>` or `model:<model name>:<version>`")
    kind: str = Field(description="run, signal or model_version")
    data: dict[str, Any] = Field(description="The node's fields, its `branch` among them")


class LineageEdge(BaseModel):
    source: str
    target: str
    kind: str = Field(
        description="`started` (signal -> run), `produced` (run -> signal), `subworkflow` "
        "(parent run -> the child run one of its subworkflow steps started), `registered` "
        "(run -> model version) or `deployed` (model version -> the run that moved it to a "
        "stage)"
    )


class Lineage(BaseModel):
    root: str
    nodes: list[LineageNode]
    edges: list[LineageEdge]


class ModelVersionOut(FromRow):
    model_name: str
    version: int
    stage: str = Field(description="none, staging, production or archived")
    artifact_uri: str
    metrics: dict[str, Any]
    params: dict[str, Any]
    data_ref: str | None
    run_id: str
    step_id: str
    branch: str = Field(description="The branch of the run that registered it")
    created_at: datetime
    lineage: dict[str, Any] | None = Field(
        default=None, description="The run that trained it and the signals that started that run"
    )


class StageChangeOut(FromRow):
    version: int
    stage: str
    previous_version: int | None
    run_id: str | None
    reason: str
    changed_at: datetime


class ModelOut(FromRow):
    name: str
    owner: str = Field(description="The owner of the workflow that registered the model")
    latest_version: int
    stages: dict[str, int] = Field(default={}, description="stage -> version holding it")
    created_at: datetime
    versions: list[ModelVersionOut] | None = None
    history: list[StageChangeOut] | None = None


class PromoteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stage: Literal["staging", "production"]


class PromoteOut(BaseModel):
    version: ModelVersionOut
    previous_version: int | None = Field(
        description="The version that held the stage before (now archived)"
    )


class ErrorDetail(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorBody(BaseModel):
    """Every error the API returns."""

    error: str = Field(description="A stable code, e.g. definition_invalid, not_found")
    message: str
    detail: list[ErrorDetail] = Field(description="Each problem with its location")
