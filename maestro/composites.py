"""Composite steps (foreach, subworkflow, while): what their workflows and activities exchange,
how a foreach's iterations are split so that no Temporal history grows past its budget, and
the checks and actions that reach across runs (subworkflow cycles, skipping one iteration)."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from maestro.branches import PROD, qualified_id
from maestro.definitions import Step
from maestro.runtime import IterationRef, RunInput

FOREACH_WORKFLOW = "ForeachWorkflow"
WHILE_WORKFLOW = "WhileWorkflow"
PREPARE_FOREACH_ACTIVITY = "prepare_foreach"
LOAD_ITERATIONS_ACTIVITY = "load_iterations"
RUN_ITERATION_STEP_ACTIVITY = "run_iteration_step"
RECORD_ITERATIONS_ACTIVITY = "record_iterations"
OPEN_ITERATION_ACTIVITY = "open_iteration"
FINISH_COMPOSITE_ACTIVITY = "finish_composite"
START_SUBWORKFLOW_ACTIVITY = "start_subworkflow"
RESUME_WHILE_ACTIVITY = "resume_while"
SKIP_ITERATION_SIGNAL = "skip_iteration"

# Events one execution may gather before it hands work to children (Temporal's hard limit is
# 51,200; the budget is 10,000, with room left for signals, retries and recording).
HISTORY_BUDGET = 8_000
# Events one iteration costs per body step, at worst: a leaf step's activity (scheduled,
# started, completed) plus a workflow task (scheduled, started, completed) of its own; a
# composite step's child workflow and its prepare/finish activities.
EVENTS_PER_LEAF_STEP = 6
EVENTS_PER_COMPOSITE_STEP = 16
# Children one splitting execution starts, at most (each costs it about 8 events).
FANOUT = 200


def iteration_cost(steps: list[Step]) -> int:
    """History events one iteration of this body costs its carrying execution, at worst."""
    from maestro.definitions import COMPOSITE_TYPES

    return sum(
        EVENTS_PER_COMPOSITE_STEP if s.type in COMPOSITE_TYPES else EVENTS_PER_LEAF_STEP
        for s in steps
    )


def leaf_capacity(steps: list[Step]) -> int:
    """How many iterations one execution carries itself."""
    return max(1, HISTORY_BUDGET // max(1, iteration_cost(steps)))


def split(lo: int, hi: int, capacity: int) -> list[tuple[int, int]]:
    """[lo, hi) cut into at most FANOUT contiguous ranges of equal size (the last shorter)."""
    count = min(FANOUT, math.ceil((hi - lo) / capacity))
    size = math.ceil((hi - lo) / count)
    return [(start, min(hi, start + size)) for start in range(lo, hi, size)]


def slot_budgets(concurrency: int, children: int) -> list[int]:
    """How `concurrency` is shared by the children that run at once: a few slots (so that one
    child's tail overlaps the next one's start), whose budgets add up to `concurrency`."""
    slots = max(1, min(children, concurrency // 100 or 1, 8))
    base, extra = divmod(concurrency, slots)
    return [base + (1 if i < extra else 0) for i in range(slots)]


def iteration_path(path: str, index: int, step_id: str) -> str:
    """The path of a composite step inside iteration `index` of the step at `path`."""
    return f"{path}[{index}].{step_id}"


def subworkflow_request_id(parent_run_id: str, path: str) -> str:
    """The request id of the child run a subworkflow step (at `path`) of a run starts: one
    child per parent run and step."""
    return f"subworkflow:{parent_run_id}:{path}"


class RunRef(BaseModel):
    """The run a composite step belongs to."""

    run_id: str
    workflow_id: str
    run_number: int
    version: int
    temporal_workflow_id: str
    # A restart from `failed`: the run whose succeeded iterations this one reuses.
    reuse_from: str | None = None


class CompositeInput(BaseModel):
    """A composite step to run: where it is, what its expressions see."""

    run: RunRef
    step: Step
    path: str
    roots: list[str]
    context: dict[str, Any]
    # Top level: its step row records it. Inside an iteration: its outputs join that
    # iteration's (and `finishes`: it is the iteration's last step).
    into: IterationRef | None = None
    finishes: bool = False


class PrepareResult(BaseModel):
    count: int
    reused: int = 0


class ForeachInput(BaseModel):
    """One execution of a foreach's iterations [lo, hi), at most `concurrency` at once."""

    composite: CompositeInput
    lo: int
    hi: int
    concurrency: int
    capacity: int


class ForeachResult(BaseModel):
    counts: dict[str, int] = Field(default_factory=dict)
    first_error: str | None = None


class WhileInput(BaseModel):
    """A while's iterations from `index` on; `previous`: the outputs of the one before."""

    composite: CompositeInput
    index: int = 0
    previous: dict[str, Any] = Field(default_factory=dict)
    capacity: int


class WhileResult(BaseModel):
    iterations: int
    outputs: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None


class FinishCompositeInput(BaseModel):
    """A composite step ended: `error` if it failed, else its outputs (`outputs`, or computed
    from its iterations by the foreach's `outputs` expressions)."""

    composite: CompositeInput
    error: str | None = None
    outputs: dict[str, Any] | None = None
    child_run_id: str | None = None


class CompositeOutcome(BaseModel):
    outputs: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None


class LoadIterationsInput(BaseModel):
    run_id: str
    path: str
    lo: int
    hi: int
    temporal_workflow_id: str


class LoadedIteration(BaseModel):
    index: int
    item: Any = None
    status: str
    skip: bool = False


class LoadIterationsResult(BaseModel):
    iterations: list[LoadedIteration]


class IterationEnd(BaseModel):
    index: int
    status: str
    error: str | None = None
    ended_at: datetime


class RecordIterationsInput(BaseModel):
    run_id: str
    path: str
    ends: list[IterationEnd]


class OpenIterationInput(BaseModel):
    run_id: str
    path: str
    index: int
    params: Any = None
    temporal_workflow_id: str


class ResumeWhileInput(BaseModel):
    """A while of a run restarted from `failed`: the run it restarts."""

    run_id: str
    path: str
    from_run_id: str


class ResumeWhileResult(BaseModel):
    """Where the while goes on: the first iteration to run, and `previous` for it."""

    index: int = 0
    previous: dict[str, Any] = Field(default_factory=dict)


class SkipIterationInput(BaseModel):
    index: int


class SubworkflowStart(BaseModel):
    """The child run a subworkflow step starts: RunWorkflow's input for it."""

    run_input: RunInput


def subworkflow_calls(
    steps: list[Step], roots: frozenset[str] | None = None
) -> list[tuple[str, str | int]]:
    """The (workflow, version) every subworkflow step of a DAG calls, bodies included."""
    from maestro.definitions import COMPOSITE_TYPES, SubworkflowParams, composite_params
    from maestro.expressions import RUN_ROOTS

    roots = RUN_ROOTS if roots is None else roots
    found: list[tuple[str, str | int]] = []
    for step in steps:
        if step.type not in COMPOSITE_TYPES:
            continue
        spec = composite_params(step, roots)
        if isinstance(spec, SubworkflowParams):
            found.append((spec.workflow, spec.version))
        else:
            found += subworkflow_calls(spec.steps, spec.body_roots(roots))
    return found


async def check_subworkflow_cycle(session: Any, definition: Any, branch: str = PROD) -> None:
    """Refuse a definition whose subworkflow steps call, through other workflows' active (or
    named) versions, back into it: DefinitionInvalid naming the cycle. In a branch, a
    subworkflow step calls the workflow of the same branch."""
    from maestro.db.workflows import get_version
    from maestro.definitions import WorkflowDefinition
    from maestro.errors import DefinitionInvalid, NotFound, Problem

    def calls_of(body: WorkflowDefinition) -> list[tuple[str, str | int]]:
        return [(qualified_id(w, branch), v) for w, v in subworkflow_calls(body.steps)]

    own_id = qualified_id(definition.id, branch)
    stack: list[tuple[str, list[tuple[str, str | int]]]] = [(own_id, calls_of(definition))]
    path = [own_id]
    seen: set[tuple[str, str | int]] = set()
    while stack:
        _, pending = stack[-1]
        if not pending:
            stack.pop()
            path.pop()
            continue
        workflow_id, version = pending.pop()
        if workflow_id == own_id:
            cycle = [*path, workflow_id]
            raise DefinitionInvalid(
                "workflow definition is invalid",
                [
                    Problem(
                        ("steps",),
                        f"subworkflow cycle: {' -> '.join(cycle)}",
                        "subworkflow_cycle",
                        {"cycle": cycle},
                    )
                ],
            )
        if (workflow_id, version) in seen:
            continue
        seen.add((workflow_id, version))
        try:
            stored = await get_version(session, workflow_id, version)
        except NotFound:
            continue  # started later, the step fails naming it
        callee = WorkflowDefinition.model_validate(stored.definition)
        stack.append((workflow_id, calls_of(callee)))
        path.append(workflow_id)
