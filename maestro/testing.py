"""Unit tests for flows: run a workflow, or one of its steps, in-process as `maestro run-local`
does (no PostgreSQL, Temporal or key), and assert on statuses and outputs.

    from maestro.testing import run_flow, run_step

    def test_hello():
        result = run_flow("examples/hello.yaml", {"who": "Ada"})
        assert result.status == "succeeded"
        assert result.steps["count"].outputs["letters"] == 8
        assert result.steps["shout"].status == "skipped"

    def test_count_alone():
        step = run_step("examples/hello.yaml", "count", upstream={"greet": {"stdout_tail": "hi"}})
        assert step.outputs == {"letters": 2, "text": "hi"}

Retries happen at once by default (`backoff=1.0` waits as a deployed run would)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import tempfile
from collections.abc import Coroutine, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from maestro.definitions import WorkflowDefinition, parse_definition
from maestro.local import (
    EmittedSignal,
    IterationOutcome,
    LocalRun,
    StepOutcome,
    load_target,
    pick_workflow,
)
from maestro.runtime import RunStatus, StepStatus

__all__ = [
    "EmittedSignal",
    "IterationOutcome",
    "LocalRun",
    "RunStatus",
    "StepOutcome",
    "StepStatus",
    "arun_flow",
    "arun_step",
    "run_flow",
    "run_step",
]

T = TypeVar("T")
# A flow: a definition, an SDK workflow (anything with `.definition()`), a definition body, or a
# run-local target (a definition file, `path/flow.py`, `package.module`).
Flow = WorkflowDefinition | Mapping[str, Any] | str | Path | Any


def _definitions(flow: Flow, workflow: str | None) -> tuple[WorkflowDefinition, list]:
    """The workflow to run, and every workflow the flow brings (for subworkflow steps)."""
    if isinstance(flow, WorkflowDefinition):
        return flow, [flow]
    if isinstance(flow, Mapping):
        definition = parse_definition(dict(flow))
        return definition, [definition]
    if isinstance(flow, str | Path):
        found = load_target(str(flow))
        return pick_workflow(found, workflow), found
    if callable(getattr(flow, "definition", None)):
        definition = flow.definition()
        if not isinstance(definition, WorkflowDefinition):
            raise TypeError(f"{flow!r}.definition() returned {type(definition).__name__}")
        return definition, [definition]
    raise TypeError(
        f"cannot run {type(flow).__name__}: pass a WorkflowDefinition, an SDK workflow, a "
        "definition body or a target (.yaml, path/flow.py, package.module)"
    )


def _runner(workflows: Iterable[WorkflowDefinition], work_dir: Path | None, backoff: float) -> Any:
    from workers.local import LocalRunner

    root = work_dir or Path(tempfile.mkdtemp(prefix="maestro-test-"))
    return LocalRunner(root, {d.id: d for d in workflows}, backoff=backoff)


async def arun_flow(
    flow: Flow,
    params: Mapping[str, Any] | None = None,
    *,
    workflow: str | None = None,
    also: Iterable[Flow] = (),
    work_dir: Path | None = None,
    backoff: float = 0.0,
) -> LocalRun:
    """Run a flow to its end with `params` (defaults filled in, types checked: ParamsInvalid
    otherwise): `result.status`, `result.steps[id].status / .outputs / .error / .traceback`.
    `workflow`: which one, when the target holds several; `also`: other flows its subworkflow
    steps call; `work_dir`: where work directories and artifacts go (a new temp dir if
    None); `backoff`: the factor on retry delays (0: retry at once)."""
    definition, known = _definitions(flow, workflow)
    known += [_definitions(other, None)[0] for other in also]
    return await _runner(known, work_dir, backoff).run(definition, dict(params or {}))


async def arun_step(
    flow: Flow,
    step_id: str,
    params: Mapping[str, Any] | None = None,
    *,
    upstream: Mapping[str, dict[str, Any]] | None = None,
    workflow: str | None = None,
    work_dir: Path | None = None,
    backoff: float = 0.0,
) -> StepOutcome:
    """Run one step of a flow with the run's `params` and its upstream steps' outputs
    (`upstream`: {step id: outputs}; a step left out has none), as if they had succeeded;
    its `when` still decides. Returns `.status`, `.outputs`, `.error`, `.traceback`."""
    definition, known = _definitions(flow, workflow)
    runner = _runner(known, work_dir, backoff)
    outcome: StepOutcome = await runner.run_step(
        definition, step_id, dict(params or {}), upstream or {}
    )
    return outcome


def run_flow(flow: Flow, params: Mapping[str, Any] | None = None, **options: Any) -> LocalRun:
    """`arun_flow` from sync code (a plain test function): the same arguments."""
    return _sync(arun_flow(flow, params, **options))


def run_step(
    flow: Flow, step_id: str, params: Mapping[str, Any] | None = None, **options: Any
) -> StepOutcome:
    """`arun_step` from sync code (a plain test function): the same arguments."""
    return _sync(arun_step(flow, step_id, params, **options))


def _sync(work: Coroutine[Any, Any, T]) -> T:
    """Run `work` to its end from sync code, also under a running event loop (an async test)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(work)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, work).result()
