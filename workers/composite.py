"""Composite steps on Temporal: a foreach's iterations in ForeachWorkflow executions (split
into child executions so that none gathers more than HISTORY_BUDGET events), a while's in
WhileWorkflow (continued as new), a subworkflow as a child RunWorkflow; and the interpreter
of one iteration's body."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    ChildWorkflowError,
    TimeoutError,
)
from temporalio.workflow import ParentClosePolicy

from workers.workflow_common import (
    RECORD_RETRY,
    Decision,
    cancel_all,
    carry_steps,
    record,
    step_activity_options,
    step_decisions,
)

with workflow.unsafe.imports_passed_through():
    from maestro.composites import (
        FINISH_COMPOSITE_ACTIVITY,
        FOREACH_WORKFLOW,
        LOAD_ITERATIONS_ACTIVITY,
        OPEN_ITERATION_ACTIVITY,
        PREPARE_FOREACH_ACTIVITY,
        RECORD_ITERATIONS_ACTIVITY,
        RESUME_WHILE_ACTIVITY,
        RUN_ITERATION_STEP_ACTIVITY,
        SKIP_ITERATION_SIGNAL,
        START_SUBWORKFLOW_ACTIVITY,
        WHILE_WORKFLOW,
        CompositeInput,
        CompositeOutcome,
        FinishCompositeInput,
        ForeachInput,
        ForeachResult,
        IterationEnd,
        LoadIterationsInput,
        LoadIterationsResult,
        OpenIterationInput,
        PrepareResult,
        RecordIterationsInput,
        ResumeWhileInput,
        ResumeWhileResult,
        SkipIterationInput,
        SubworkflowStart,
        WhileInput,
        WhileResult,
        iteration_path,
        leaf_capacity,
        slot_budgets,
        split,
    )
    from maestro.dag import topological_order
    from maestro.definitions import (
        FailureMode,
        ForeachFailureMode,
        ForeachParams,
        Step,
        SubworkflowParams,
        WhileParams,
        composite_params,
    )
    from maestro.expressions import ExpressionError, evaluate, resolve_values
    from maestro.runtime import (
        RUN_WORKFLOW,
        IterationRef,
        RunState,
        StepInput,
        StepResult,
        StepStatus,
        temporal_workflow_id,
    )

# Iteration statuses that need no more work.
_DONE = frozenset({"succeeded", "failed", "skipped", "stopped"})
_SHORT = timedelta(seconds=60)
# Preparing a foreach writes one row per item; at 100,000 items that takes a few seconds.
_PREPARE_TIMEOUT = timedelta(minutes=10)


# Since this patch, a composite step whose child execution was cancelled (its run is stopped)
# ends `stopped` without its finishing activity, and one whose child ended otherwise (timed
# out, terminated) fails the step instead of the workflow task.
CHILD_ENDS_PATCH = "composite-child-ends"


class CompositeFailed(Exception):
    """A composite step failed (its iterations, its child run, or its expressions)."""


async def run_composite(composite: CompositeInput) -> StepResult:
    """Run a composite step to its end; its outputs, or CompositeFailed."""
    step = composite.step
    roots = frozenset(composite.roots)
    spec = composite_params(step, roots)
    outputs: dict[str, Any] | None = None
    child_run_id: str | None = None
    error: str | None = None
    try:
        if isinstance(spec, ForeachParams):
            error = await _foreach(composite, spec)
        elif isinstance(spec, WhileParams):
            result = await workflow.execute_child_workflow(
                WHILE_WORKFLOW,
                WhileInput(composite=composite, capacity=leaf_capacity(spec.steps)),
                id=f"{composite.run.temporal_workflow_id}:{composite.path}",
                result_type=WhileResult,
            )
            error, outputs = result.error, result.outputs
        elif isinstance(spec, SubworkflowParams):
            child_run_id, error, outputs = await _subworkflow(composite, spec)
    except ChildWorkflowError as exc:
        if not workflow.patched(CHILD_ENDS_PATCH):
            raise
        if isinstance(exc.cause, CancelledError):
            raise asyncio.CancelledError() from None
        raise CompositeFailed(_child_error(exc)) from None
    outcome = await workflow.execute_activity(
        FINISH_COMPOSITE_ACTIVITY,
        FinishCompositeInput(
            composite=composite, error=error, outputs=outputs, child_run_id=child_run_id
        ),
        result_type=CompositeOutcome,
        start_to_close_timeout=_PREPARE_TIMEOUT,
        retry_policy=RECORD_RETRY,
    )
    if outcome.error is not None:
        raise CompositeFailed(outcome.error)
    return StepResult(outputs=outcome.outputs)


async def _foreach(composite: CompositeInput, spec: ForeachParams) -> str | None:
    """Prepare the iterations, run them; the failure to report, if any."""
    prepared = await workflow.execute_activity(
        PREPARE_FOREACH_ACTIVITY,
        composite,
        result_type=PrepareResult,
        start_to_close_timeout=_PREPARE_TIMEOUT,
        retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=5)),
    )
    if prepared.count == 0:
        return None
    result = await workflow.execute_child_workflow(
        FOREACH_WORKFLOW,
        ForeachInput(
            composite=composite,
            lo=0,
            hi=prepared.count,
            concurrency=spec.max_concurrency,
            capacity=leaf_capacity(spec.steps),
        ),
        id=f"{composite.run.temporal_workflow_id}:{composite.path}",
        result_type=ForeachResult,
    )
    failed = result.counts.get("failed", 0)
    if failed and spec.failure_mode is not ForeachFailureMode.ignore_failures:
        return (
            f"{failed} of {prepared.count} iterations failed ({spec.failure_mode.value}); "
            f"first: {result.first_error}"
        )
    return None


async def _subworkflow(
    composite: CompositeInput, spec: SubworkflowParams
) -> tuple[str | None, str | None, dict[str, Any] | None]:
    """Create the child run (through the runs service) and carry it as a child RunWorkflow:
    (its run id, the failure to report, None: its outputs are read when it is finished)."""
    start = await workflow.execute_activity(
        START_SUBWORKFLOW_ACTIVITY,
        composite,
        result_type=SubworkflowStart,
        start_to_close_timeout=_SHORT,
        retry_policy=RetryPolicy(
            maximum_interval=timedelta(seconds=5), non_retryable_error_types=["SubworkflowInvalid"]
        ),
    )
    run_input = start.run_input
    child_id = temporal_workflow_id(run_input.workflow_id, run_input.run_number)
    options: dict[str, Any] = {
        "id": child_id,
        "result_type": RunState,
        # A stopped or killed parent asks its children to stop; each records its own end.
        "parent_close_policy": ParentClosePolicy.REQUEST_CANCEL
        if spec.wait
        else ParentClosePolicy.ABANDON,
    }
    if not spec.wait:
        await workflow.start_child_workflow(RUN_WORKFLOW, run_input, **options)
        return run_input.run_id, None, {"run_id": run_input.run_id}
    try:
        await workflow.execute_child_workflow(RUN_WORKFLOW, run_input, **options)
    except ChildWorkflowError as exc:
        if isinstance(exc.cause, CancelledError) and workflow.patched(CHILD_ENDS_PATCH):
            raise  # the parent is stopped: so is this step
        return run_input.run_id, f"subworkflow run {run_input.run_id} {_child_error(exc)}", None
    return run_input.run_id, None, None


def _child_error(exc: ChildWorkflowError) -> str:
    cause = exc.cause
    return cause.message if isinstance(cause, ApplicationError) else str(cause or exc)


class _Iteration:
    """One iteration's body: a small DAG run to its end, each leaf step an activity that
    records its success in the iteration's row, each composite step as at the top level."""

    def __init__(
        self,
        composite: CompositeInput,
        steps: list[Step],
        roots: frozenset[str],
        index: int,
        variables: dict[str, Any],
    ) -> None:
        self.composite = composite
        self.steps = {s.id: s for s in steps}
        self.order = topological_order({s.id: s.depends_on for s in steps})
        self.roots = roots
        self.index = index
        self.variables = variables
        self.status: dict[str, StepStatus] = dict.fromkeys(self.order, StepStatus.pending)
        self.outputs: dict[str, dict[str, Any]] = {}
        self.error: str | None = None
        # The last step's activity recorded the iteration's success with its own.
        self.recorded = False

    def context(self) -> dict[str, Any]:
        outer = self.composite.context
        return {
            **outer,
            "steps": {
                **outer.get("steps", {}),
                **{
                    sid: {"outputs": self.outputs.get(sid, {}), "status": st.value}
                    for sid, st in self.status.items()
                },
            },
            **self.variables,
        }

    async def run(self) -> tuple[str, str | None]:
        """(status, error) of the iteration."""
        await carry_steps({}, self._schedule, self._settle)
        bad = [s for s in self.status.values() if s in _FAILING]
        return ("failed" if bad else "succeeded"), self.error

    def _schedule(self, running: dict[str, asyncio.Task[StepResult]]) -> None:
        for step, decision, why in step_decisions(
            self.order, self.steps, self.status.__getitem__, self.context, self.roots
        ):
            if decision is Decision.fail:
                self._failed(step, why or "")
            elif decision is Decision.start:
                self.status[step.id] = StepStatus.running
                running[step.id] = asyncio.create_task(self._execute(step))
            else:
                self.status[step.id] = StepStatus.skipped

    def _finishes(self, step_id: str) -> bool:
        """Whether this step's success ends the iteration `succeeded`."""
        return all(
            st.is_terminal and st not in _FAILING
            for sid, st in self.status.items()
            if sid != step_id
        )

    async def _execute(self, step: Step) -> StepResult:
        composite = self.composite
        finishes = self._finishes(step.id)
        if step.type in _COMPOSITE:
            return await run_composite(
                composite.model_copy(
                    update={
                        "step": step,
                        "path": iteration_path(composite.path, self.index, step.id),
                        "roots": sorted(self.roots),
                        "context": self.context(),
                        "into": IterationRef(path=composite.path, index=self.index),
                        "finishes": finishes,
                    }
                )
            )
        context = self.context()
        try:
            params = resolve_values(step.params, context, self.roots)
        except ExpressionError as exc:
            raise CompositeFailed(f"expression error: {exc}") from None
        run = composite.run
        result = await workflow.execute_activity(
            RUN_ITERATION_STEP_ACTIVITY,
            StepInput(
                run_id=run.run_id,
                workflow_id=run.workflow_id,
                run_number=run.run_number,
                version=run.version,
                # Its `when` held already; left in, it would fail the input's decoding in the
                # activity, where the body's variables (`item`, `as`, ...) are not known.
                step=step.model_copy(update={"when": None}),
                params=params,
                run_params=composite.context.get("params", {}),
                upstream={d: self.outputs.get(d, {}) for d in step.depends_on},
                iteration=IterationRef(path=composite.path, index=self.index),
                finishes_iteration=finishes,
            ),
            result_type=StepResult,
            summary=f"{composite.path}[{self.index}].{step.id}",
            **step_activity_options(step),
        )
        if finishes:
            self.recorded = True
        return result

    def _settle(self, step_id: str, task: asyncio.Task[StepResult]) -> None:
        step = self.steps[step_id]
        try:
            result = task.result()
        except (asyncio.CancelledError, CancelledError):
            self.status[step_id] = StepStatus.stopped
            self.error = self.error or f"step {step_id} was cancelled"
            return
        except CompositeFailed as exc:
            self._failed(step, str(exc))
            return
        except ActivityError as exc:
            cause = exc.cause
            if isinstance(cause, CancelledError):
                self.status[step_id] = StepStatus.stopped
                return
            if isinstance(cause, TimeoutError):
                assert cause.type is not None  # an activity's timeouts all have a type
                message = f"timed out ({cause.type.name.lower()})"
            elif isinstance(cause, ApplicationError):
                message = cause.message
            else:
                message = str(cause or exc)
            self._failed(step, message)
            return
        self.status[step_id] = StepStatus.succeeded
        self.outputs[step_id] = result.outputs

    def _failed(self, step: Step, error: str) -> None:
        if step.failure_mode is FailureMode.ignore_failure:
            self.status[step.id] = StepStatus.completed_with_error
            return
        self.status[step.id] = StepStatus.failed
        self.error = self.error or f"step {step.id}: {error}"


_FAILING = frozenset({StepStatus.failed, StepStatus.timed_out, StepStatus.stopped})
_COMPOSITE = frozenset({"foreach", "subworkflow", "while"})


def _body(composite: CompositeInput) -> tuple[Any, frozenset[str]]:
    """A foreach's or while's params, and the variables its body's expressions see."""
    roots = frozenset(composite.roots)
    spec = composite_params(composite.step, roots)
    return spec, spec.body_roots(roots)


class _Recorder:
    """Iteration ends the workflow decided, written in batches by one task at a time."""

    def __init__(self, run_id: str, path: str) -> None:
        self.run_id = run_id
        self.path = path
        self.pending: list[IterationEnd] = []
        self.task: asyncio.Task[None] | None = None

    def add(self, index: int, status: str, error: str | None) -> None:
        self.pending.append(
            IterationEnd(index=index, status=status, error=error, ended_at=workflow.now())
        )
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        while self.pending:
            batch, self.pending = self.pending, []
            await record(
                True,
                RECORD_ITERATIONS_ACTIVITY,
                RecordIterationsInput(run_id=self.run_id, path=self.path, ends=batch),
            )

    async def drain(self) -> None:
        while self.task is not None and not self.task.done():
            await self.task
        if self.pending:
            await self._flush()


@workflow.defn(name=FOREACH_WORKFLOW)
class ForeachWorkflow:
    """A foreach's iterations [lo, hi): carried here, or split among child executions."""

    def __init__(self) -> None:
        self._skip: set[int] = set()
        self._running: dict[int, asyncio.Task[tuple[str, str | None]]] = {}

    @workflow.signal(name=SKIP_ITERATION_SIGNAL)
    def skip_iteration(self, request: SkipIterationInput) -> None:
        """An operator skips one iteration (cancelled if it runs)."""
        self._skip.add(request.index)
        task = self._running.get(request.index)
        if task is not None:
            task.cancel()

    @workflow.run
    async def run(self, foreach: ForeachInput) -> ForeachResult:
        if foreach.hi - foreach.lo > foreach.capacity:
            return await self._split(foreach)
        return await self._carry(foreach)

    async def _split(self, foreach: ForeachInput) -> ForeachResult:
        spec = composite_params(foreach.composite.step, frozenset(foreach.composite.roots))
        ranges = split(foreach.lo, foreach.hi, foreach.capacity)
        free = slot_budgets(foreach.concurrency, len(ranges))
        running: dict[asyncio.Task[ForeachResult], int] = {}
        result = ForeachResult(counts={})
        base = workflow.info().workflow_id
        stop = False
        try:
            while (ranges and not stop) or running:
                while ranges and free and not stop:
                    lo, hi = ranges.pop(0)
                    budget = free.pop()
                    child = foreach.model_copy(update={"lo": lo, "hi": hi, "concurrency": budget})
                    task = asyncio.create_task(
                        workflow.execute_child_workflow(
                            FOREACH_WORKFLOW,
                            child,
                            id=f"{base}:{lo}-{hi}",
                            result_type=ForeachResult,
                        )
                    )
                    running[task] = budget
                done, _ = await workflow.wait(list(running), return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    free.append(running.pop(task))
                    part = task.result()
                    for status, count in part.counts.items():
                        result.counts[status] = result.counts.get(status, 0) + count
                    result.first_error = result.first_error or part.first_error
                    if part.counts.get("failed") and spec.failure_mode is (
                        ForeachFailureMode.fail_fast
                    ):
                        stop = True
                        for other in running:
                            other.cancel()
        except BaseException:
            await cancel_all(running)
            raise
        return result

    async def _carry(self, foreach: ForeachInput) -> ForeachResult:
        composite = foreach.composite
        spec, body_roots = _body(composite)
        assert isinstance(spec, ForeachParams)
        loaded = await workflow.execute_activity(
            LOAD_ITERATIONS_ACTIVITY,
            LoadIterationsInput(
                run_id=composite.run.run_id,
                path=composite.path,
                lo=foreach.lo,
                hi=foreach.hi,
                temporal_workflow_id=workflow.info().workflow_id,
            ),
            result_type=LoadIterationsResult,
            start_to_close_timeout=_SHORT,
            retry_policy=RECORD_RETRY,
        )
        recorder = _Recorder(composite.run.run_id, composite.path)
        result = ForeachResult(counts={})
        todo = []
        for it in loaded.iterations:
            if it.status in _DONE:
                result.counts[it.status] = result.counts.get(it.status, 0) + 1
            else:
                if it.skip:
                    self._skip.add(it.index)
                todo.append(it)
        todo.reverse()  # popped from the end: in index order
        running = self._running
        stop = False

        def settle(index: int, status: str, error: str | None, recorded: bool) -> None:
            nonlocal stop
            result.counts[status] = result.counts.get(status, 0) + 1
            if status == "failed":
                result.first_error = result.first_error or f"iteration {index}: {error}"
                if spec.failure_mode is ForeachFailureMode.fail_fast and not stop:
                    stop = True
                    for other in running.values():
                        other.cancel()
            if not recorded:
                recorder.add(index, status, error)

        bodies: dict[int, _Iteration] = {}
        try:
            while (todo and not stop) or running:
                while todo and not stop and len(running) < foreach.concurrency:
                    it = todo.pop()
                    if it.index in self._skip:
                        settle(it.index, "skipped", "skipped by an operator", False)
                        continue
                    variables = {
                        "item": it.item,
                        spec.as_: it.item,
                        "iteration": {"index": it.index},
                    }
                    body = _Iteration(composite, spec.steps, body_roots, it.index, variables)
                    bodies[it.index] = body
                    running[it.index] = asyncio.create_task(body.run())
                if not running:
                    continue
                done, _ = await workflow.wait(
                    list(running.values()), return_when=asyncio.FIRST_COMPLETED
                )
                for index, task in list(running.items()):
                    if task not in done:
                        continue
                    del running[index]
                    body = bodies.pop(index)
                    if task.cancelled() or isinstance(task.exception(), asyncio.CancelledError):
                        if index in self._skip:
                            settle(index, "skipped", "skipped by an operator", False)
                        else:
                            settle(index, "stopped", "stopped: another iteration failed", False)
                        continue
                    status, error = task.result()
                    settle(index, status, error, body.recorded and status == "succeeded")
            if stop:
                for it in todo:
                    settle(it.index, "stopped", "not run: another iteration failed", False)
        except BaseException:
            for task in running.values():
                task.cancel()
            if running:
                await workflow.wait(list(running.values()))
            for index in list(running):
                recorder.add(index, "stopped", "the run was stopped")
            for it in todo:
                recorder.add(it.index, "stopped", "the run was stopped")
            await asyncio.shield(recorder.drain())
            raise
        await recorder.drain()
        return result


# Since this patch, a WhileWorkflow of a run restarted from `failed` first takes over the
# iterations that succeeded in the run it restarts (RESUME_WHILE_ACTIVITY) and goes on from the
# first one that did not.
WHILE_RESUME_PATCH = "while-resume"


@workflow.defn(name=WHILE_WORKFLOW)
class WhileWorkflow:
    """A while's iterations, one after the other; continued as new every `capacity`
    iterations so that its history stays within its budget."""

    def __init__(self) -> None:
        self._skip: set[int] = set()
        self._running: tuple[int, asyncio.Task[tuple[str, str | None]]] | None = None

    @workflow.signal(name=SKIP_ITERATION_SIGNAL)
    def skip_iteration(self, request: SkipIterationInput) -> None:
        """An operator skips one iteration (cancelled if it runs): it ends `skipped` and the
        loop goes on with the outputs of the iteration before it as `previous`."""
        self._skip.add(request.index)
        if self._running is not None and self._running[0] == request.index:
            self._running[1].cancel()

    @workflow.run
    async def run(self, state: WhileInput) -> WhileResult:
        composite = state.composite
        spec, body_roots = _body(composite)
        assert isinstance(spec, WhileParams)
        index, previous = state.index, state.previous
        if state.index == 0 and composite.run.reuse_from and workflow.patched(WHILE_RESUME_PATCH):
            resumed = await workflow.execute_activity(
                RESUME_WHILE_ACTIVITY,
                ResumeWhileInput(
                    run_id=composite.run.run_id,
                    path=composite.path,
                    from_run_id=composite.run.reuse_from,
                ),
                result_type=ResumeWhileResult,
                start_to_close_timeout=_SHORT,
                retry_policy=RECORD_RETRY,
            )
            index, previous = resumed.index, resumed.previous
        carried = 0
        while True:
            variables = {"iteration": {"index": index}, "previous": previous}
            try:
                go = evaluate(spec.condition, {**composite.context, **variables}, body_roots)
                if not isinstance(go, bool):
                    raise ExpressionError(f"`condition` must be true or false, got {go!r}")
            except ExpressionError as exc:
                return WhileResult(iterations=index, error=f"condition: {exc}")
            if not go:
                return WhileResult(iterations=index, outputs={"iterations": index, **previous})
            if index >= spec.max_iterations:
                return WhileResult(
                    iterations=index,
                    error=f"condition still true after max_iterations ({spec.max_iterations})",
                )
            if carried >= state.capacity:
                workflow.continue_as_new(
                    state.model_copy(update={"index": index, "previous": previous})
                )
            await workflow.execute_local_activity(
                OPEN_ITERATION_ACTIVITY,
                OpenIterationInput(
                    run_id=composite.run.run_id,
                    path=composite.path,
                    index=index,
                    params=previous,
                    temporal_workflow_id=workflow.info().workflow_id,
                ),
                start_to_close_timeout=_SHORT,
                retry_policy=RECORD_RETRY,
            )
            body = _Iteration(composite, spec.steps, body_roots, index, variables)
            status, error = await self._iterate(index, body)
            if not (body.recorded and status == "succeeded"):
                recorder = _Recorder(composite.run.run_id, composite.path)
                recorder.add(index, status, error)
                await recorder.drain()
            if status == "failed" or status == "stopped":
                return WhileResult(iterations=index + 1, error=f"iteration {index}: {error}")
            if status == "succeeded":
                previous = body.outputs
            index += 1
            carried += 1

    async def _iterate(self, index: int, body: _Iteration) -> tuple[str, str | None]:
        """Run one iteration's body: (status, error), `skipped` if an operator skipped it."""
        if index in self._skip:
            return "skipped", "skipped by an operator"
        task = asyncio.create_task(body.run())
        self._running = (index, task)
        try:
            await workflow.wait([task])
        except BaseException:
            # The while itself is stopped: its body's steps are cancelled with it.
            task.cancel()
            await workflow.wait([task])
            raise
        finally:
            self._running = None
        if index in self._skip and (
            task.cancelled() or isinstance(task.exception(), asyncio.CancelledError)
        ):
            return "skipped", "skipped by an operator"
        return task.result()
