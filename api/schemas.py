"""API-only shapes: responses and the few request bodies that are not a definition."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from maestro.runtime import RunStatus, StepStatus


class WorkflowOut(BaseModel):
    id: str
    owner: str
    active_version: int | None
    latest_version: int
    is_active: bool
    run_count: int
    created_at: datetime
    updated_at: datetime
    definition: dict[str, Any] | None = Field(
        default=None, description="The active version's definition (single-workflow reads only)"
    )


class WorkflowPage(BaseModel):
    items: list[WorkflowOut]
    limit: int
    offset: int


class VersionOut(BaseModel):
    workflow_id: str
    version: int
    active: bool
    content_hash: str
    created_at: datetime
    definition: dict[str, Any]


class PushResult(BaseModel):
    workflow: WorkflowOut
    version: int
    created: bool = Field(description="False when an identical definition already existed")


class ValidationResult(BaseModel):
    valid: bool
    definition: dict[str, Any] = Field(description="The definition with every default filled in")


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


class RunOut(BaseModel):
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
    temporal_ui_url: str
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    error: str | None
    outputs: dict[str, Any] | None
    steps: list[StepOut] | None = Field(default=None, description="Present on single-run reads")


class RunPage(BaseModel):
    items: list[RunOut]
    next_cursor: str | None = Field(description="Pass as `cursor` to get the next page")
