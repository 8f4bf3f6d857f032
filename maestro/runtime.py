"""What the API and the workers share about a run on Temporal: names, ids, inputs and results."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel, Field
from temporalio.common import SearchAttributeKey

from maestro.branches import branch_of
from maestro.definitions import Step, WorkflowDefinition

RUN_WORKFLOW = "RunWorkflow"
RUN_STEP_ACTIVITY = "run_step"
RECORD_STEPS_ACTIVITY = "record_steps"
FINISH_RUN_ACTIVITY = "finish_run"
REGISTER_WAITS_ACTIVITY = "register_waits"
RECORD_SUCCESS_ACTIVITY = "record_step_success"


def recording_queue(task_queue: str) -> str:
    """The task queue of recordings that wait for the database (RunWorkflow's on `task_queue`):
    a worker serves it apart from steps, so waiting recordings take no step's slot."""
    return f"{task_queue}.recording"


# What a time trigger's schedule starts: the run itself (TimedRunWorkflow).
TIMED_RUN_WORKFLOW = "TimedRunWorkflow"
ADMIT_FIRE_ACTIVITY = "admit_fire"
# Temporal signals RunWorkflow accepts.
SIGNAL_MATCHED_SIGNAL = "signal_matched"
BYPASS_SIGNAL = "bypass_wait"
SKIP_STEP_SIGNAL = "skip_step"

DEFAULT_STEP_TIMEOUT = timedelta(hours=24)
DEFAULT_HEARTBEAT_TIMEOUT = timedelta(seconds=60)

SA_WORKFLOW_ID = SearchAttributeKey.for_keyword("MaestroWorkflowId")
SA_VERSION = SearchAttributeKey.for_int("MaestroVersion")
SA_TRIGGER_KIND = SearchAttributeKey.for_keyword("MaestroTriggerKind")
SEARCH_ATTRIBUTES = (SA_WORKFLOW_ID, SA_VERSION, SA_TRIGGER_KIND)


class RunStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    stopped = "stopped"
    timed_out = "timed_out"
    # Never ran: its run strategy dropped it (first_only, last_only, a full queue).
    skipped = "skipped"

    @property
    def is_terminal(self) -> bool:
        return self not in (RunStatus.queued, RunStatus.running)


class StepStatus(StrEnum):
    pending = "pending"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    skipped = "skipped"
    completed_with_error = "completed_with_error"
    stopped = "stopped"
    timed_out = "timed_out"
    waiting_for_signal = "waiting_for_signal"
    # An operator skipped it: downstream continues as if it succeeded with no outputs.
    skipped_manually = "skipped_manually"

    @property
    def is_terminal(self) -> bool:
        return self not in (StepStatus.pending, StepStatus.running, StepStatus.waiting_for_signal)

    @property
    def lets_downstream_run(self) -> bool:
        return self in (
            StepStatus.succeeded,
            StepStatus.completed_with_error,
            StepStatus.skipped_manually,
        )


# A run lives in a Temporal execution with one of two ids:
# - `<workflow>-run-<n>` (temporal_workflow_id): every run Maestro starts itself, including a
#   schedule's fire that was queued, and a subworkflow's child run;
# - `maestro:<workflow>:<trigger>:run-<scheduled time>`: a time-triggered run admitted at once,
#   in the execution its Temporal Schedule started. The schedule's action id is
#   scheduled_run_id(schedule id); Temporal appends `-<scheduled time>` to it.
SCHEDULE_PREFIX = "maestro:"


def temporal_workflow_id(workflow_id: str, run_number: int) -> str:
    """The readable Temporal workflow id of a run: unique because `-run-<n>` ends it."""
    return f"{workflow_id}-run-{run_number}"


def trigger_schedule_id(workflow_id: str, trigger_id: str) -> str:
    """The Temporal Schedule of a workflow's time trigger."""
    return f"{SCHEDULE_PREFIX}{workflow_id}:{trigger_id}"


def scheduled_run_id(schedule: str) -> str:
    """The id of the executions a schedule starts, before Temporal appends the time."""
    return f"{schedule}:run"


def temporal_ui_url(
    ui_base: str, namespace: str, temporal_id: str, temporal_run_id: str | None
) -> str:
    """A link that opens the run in the Temporal Web UI."""
    base = f"{ui_base.rstrip('/')}/namespaces/{quote(namespace, safe='')}/workflows/"
    base += quote(temporal_id, safe="")
    return f"{base}/{temporal_run_id}/history" if temporal_run_id else base


class Cause(BaseModel):
    """Why a run exists."""

    kind: str = "manual"
    request_id: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict)


class RunInput(BaseModel):
    """The input of RunWorkflow: everything it needs, including the definition snapshot."""

    run_id: str
    workflow_id: str
    version: int
    run_number: int
    params: dict[str, Any]
    definition: WorkflowDefinition
    cause: Cause = Field(default_factory=Cause)
    # Restart: steps that already succeeded, with their outputs; they are not run again.
    reuse: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # True for every run this code starts: its recording (finish_run, record_steps) runs as
    # local activities without a patch marker, whose TemporalChangeVersion upsert would cost
    # a history event and a visibility write per run. Inputs written by earlier code lack it,
    # and their runs decide by the patch, as they did when they started.
    local_recording: bool = False

    @staticmethod
    def new_run_id() -> str:
        return str(uuid.uuid4())


class StepState(BaseModel):
    """A step's state as the workflow knows it."""

    step_id: str
    status: StepStatus = StepStatus.pending
    attempt: int = 0
    started_at: datetime | None = None
    ended_at: datetime | None = None
    outputs: dict[str, Any] | None = None
    error: str | None = None


class RunState(BaseModel):
    """The live state of a run (RunWorkflow's `state` query and its result)."""

    run_id: str
    status: RunStatus
    steps: list[StepState]
    error: str | None = None


class StepSuccess(BaseModel):
    """A step attempt's success as PostgreSQL records it: the step's row, and the signals it
    emits (SignalIn fields), published in the same transaction."""

    run_id: str
    workflow_id: str
    step_id: str
    attempt: int
    outputs: dict[str, Any] = Field(default_factory=dict)
    details: dict[str, Any] = Field(default_factory=dict)
    temporal_run_id: str
    # Set when the attempt's start is not recorded yet: written with the success.
    started_at: datetime | None = None
    emits: list[dict[str, Any]] = Field(default_factory=list)


class FinishRunInput(BaseModel):
    """A run's end as the workflow decided it: the input of `finish_run`."""

    run_id: str
    workflow_id: str = ""
    run_number: int = 0
    version: int = 0
    params: dict[str, Any] = Field(default_factory=dict)
    status: RunStatus
    error: str | None = None
    # Final states to write: all but the steps whose success their activity wrote.
    steps: list[StepState]
    outputs: dict[str, Any] = Field(default_factory=dict)
    # Whether any step could have registered signal waits (left-over ones are removed).
    waits: bool = True
    # Successes their attempts could not record (none emits signals): written with the end.
    successes: list[StepSuccess] = Field(default_factory=list)


class IterationRef(BaseModel):
    """An iteration of a composite step: where its body steps' outputs go."""

    path: str
    index: int


class StepInput(BaseModel):
    """The input of the `run_step` activity: one attempt of one step (of a composite step's
    iteration, for `run_iteration_step`)."""

    run_id: str
    workflow_id: str
    run_number: int
    step: Step
    params: dict[str, Any]
    run_params: dict[str, Any]
    upstream: dict[str, dict[str, Any]] = Field(default_factory=dict)
    version: int = 0
    # Signals the step waited for (`wait_for`), by name: {"id", "params", "payload"}.
    signals: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # Set when this is the run's last step and its success ends the run `succeeded`: the
    # attempt that succeeds records the run's end with its own (this step's outputs added),
    # sparing the workflow its finish_run. See StepResult.run_recorded.
    finish: FinishRunInput | None = None
    # A step of a composite step's body: its iteration, and whether its success ends it.
    iteration: IterationRef | None = None
    finishes_iteration: bool = False


class RecordSuccessesInput(BaseModel):
    """Successes the workflow records because their attempts could not (RECORD_SUCCESS)."""

    successes: list[StepSuccess]


class StepResult(BaseModel):
    """What a successful step attempt returns."""

    outputs: dict[str, Any] = Field(default_factory=dict)
    details: dict[str, Any] = Field(default_factory=dict)
    # The attempt recorded the run's end as StepInput.finish asked (and published its
    # completion signal); the workflow then ends `succeeded` without finish_run.
    run_recorded: bool = False
    # The step's code succeeded but recording it failed (the database was away): Temporal
    # keeps the success here and the workflow records it (RECORD_SUCCESS_ACTIVITY, retried
    # until the database is back) instead of the step running again.
    unrecorded: StepSuccess | None = None


class RecordStepsInput(BaseModel):
    run_id: str
    steps: list[StepState]


class WaitSpec(BaseModel):
    """One `wait_for` entry with its `where` values already evaluated."""

    position: int
    name: str
    where: dict[str, Any] = Field(default_factory=dict)


class RegisterWaitsInput(BaseModel):
    run_id: str
    step_id: str
    temporal_workflow_id: str
    waits: list[WaitSpec]


class MatchedSignal(BaseModel):
    """A signal that released a wait, as the workflow receives it."""

    step_id: str
    position: int
    signal_id: int
    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    payload: dict[str, Any] | None = None


class RegisterWaitsResult(BaseModel):
    matched: list[MatchedSignal] = Field(default_factory=list)


class BypassInput(BaseModel):
    step_id: str


class SkipStepInput(BaseModel):
    step_id: str


class FireInput(BaseModel):
    """What a time trigger's schedule starts: which trigger fired."""

    workflow_id: str
    trigger_id: str


class FireRequest(FireInput):
    """A fire with its scheduled time (not the moment it ran)."""

    scheduled_at: datetime


class AdmitFireInput(FireRequest):
    """A fire started as a TimedRunWorkflow execution, which offers to carry the run."""

    temporal_workflow_id: str
    temporal_run_id: str
    # When Temporal started the execution: a fire started later than its trigger's catchup
    # window allows is reported missed instead of run (None: not checked).
    started_at: datetime | None = None


class FireAdmission(BaseModel):
    """The run this execution carries (None: skipped, queued for later, or carried by
    another execution), and whether it may set Maestro's search attributes."""

    run_input: RunInput | None = None
    search_attributes: bool = False


def run_variables(
    run_id: str, number: int, workflow_id: str, version: int, started_at: datetime | None = None
) -> dict[str, Any]:
    """What expressions see as `run` (the one place it is built: the run workflow, a step's
    `emits`, local runs): its id, number, workflow id and branch, version, and start time."""
    variables: dict[str, Any] = {
        "id": run_id,
        "number": number,
        "workflow_id": workflow_id,
        "branch": branch_of(workflow_id),
        "version": version,
    }
    if started_at is not None:
        variables["started_at"] = started_at.isoformat()
    return variables
