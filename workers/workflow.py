"""RunWorkflow: interprets a definition snapshot as a DAG of step activities."""

from __future__ import annotations

import asyncio
import builtins
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError, TimeoutError

with workflow.unsafe.imports_passed_through():
    from maestro.dag import topological_order
    from maestro.definitions import FailureMode, Step
    from maestro.expressions import ExpressionError, evaluate, resolve_values
    from maestro.runtime import (
        DEFAULT_HEARTBEAT_TIMEOUT,
        DEFAULT_STEP_TIMEOUT,
        FINISH_RUN_ACTIVITY,
        RECORD_STEPS_ACTIVITY,
        RUN_STEP_ACTIVITY,
        FinishRunInput,
        RecordStepsInput,
        RunInput,
        RunState,
        RunStatus,
        StepInput,
        StepResult,
        StepState,
        StepStatus,
    )

# Recording must outlive a database restart; it is idempotent, so it retries without limit.
_RECORD_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=10)
)


class _FailFast(Exception):
    """A `fail_immediately` step failed: stop everything now."""


@workflow.defn(name="RunWorkflow")
class RunWorkflow:
    """One run of one workflow version."""

    def __init__(self) -> None:
        self._input: RunInput | None = None
        self._states: dict[str, StepState] = {}
        self._status = RunStatus.queued
        self._error: str | None = None
        self._unrecorded: list[str] = []

    @workflow.query
    def state(self) -> RunState:
        """Live step states."""
        assert self._input is not None
        return RunState(
            run_id=self._input.run_id,
            status=self._status,
            steps=list(self._states.values()),
            error=self._error,
        )

    @workflow.run
    async def run(self, run_input: RunInput) -> RunState:
        self._input = run_input
        definition = run_input.definition
        order = topological_order({s.id: s.depends_on for s in definition.steps})
        self._steps = {s.id: s for s in definition.steps}
        self._order = order
        self._states = {sid: StepState(step_id=sid) for sid in order}
        self._status = RunStatus.running
        cancelled = False
        try:
            timeout = definition.timeout.total_seconds() if definition.timeout else None
            await asyncio.wait_for(self._drive(), timeout)
            failed = [
                s
                for s in self._states.values()
                if s.status in (StepStatus.failed, StepStatus.timed_out)
            ]
            self._status = RunStatus.failed if failed else RunStatus.succeeded
            if failed:
                self._error = "; ".join(f"step {s.step_id} {s.status}: {s.error}" for s in failed)
        except _FailFast:
            self._status = RunStatus.failed
        except builtins.TimeoutError:
            self._status = RunStatus.timed_out
            self._error = f"run exceeded its timeout of {definition.timeout}"
        except asyncio.CancelledError:
            cancelled = True
            self._status = RunStatus.stopped
            self._error = "run was cancelled"
        for state in self._states.values():
            if not state.status.is_terminal:
                self._set(state.step_id, StepStatus.stopped, error="run ended before this step")
        outputs = {sid: s.outputs for sid, s in self._states.items() if s.outputs}
        await workflow.execute_activity(
            FINISH_RUN_ACTIVITY,
            FinishRunInput(
                run_id=run_input.run_id,
                status=self._status,
                error=self._error,
                steps=list(self._states.values()),
                outputs=outputs,
            ),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=_RECORD_RETRY,
        )
        if cancelled:
            raise asyncio.CancelledError()  # shows the run as Canceled in the Temporal UI
        return self.state()

    def _set(
        self,
        step_id: str,
        status: StepStatus,
        *,
        error: str | None = None,
        outputs: dict[str, Any] | None = None,
    ) -> None:
        state = self._states[step_id]
        state.status = status
        now = workflow.now()
        if status is StepStatus.running:
            state.started_at = now
        elif status.is_terminal:
            state.ended_at = now
        state.error = error
        if outputs is not None:
            state.outputs = outputs
        if status is not StepStatus.running and status is not StepStatus.succeeded:
            self._unrecorded.append(step_id)

    def _context(self) -> dict[str, Any]:
        assert self._input is not None
        info = workflow.info()
        return {
            "params": self._input.params,
            "steps": {
                sid: {"outputs": s.outputs or {}, "status": s.status.value}
                for sid, s in self._states.items()
            },
            "run": {
                "id": self._input.run_id,
                "number": self._input.run_number,
                "workflow_id": self._input.workflow_id,
                "version": self._input.version,
                "started_at": info.start_time.isoformat(),
            },
        }

    async def _drive(self) -> None:
        """Start every step whose dependencies are done, until nothing is left to run."""
        running: dict[str, asyncio.Task[StepResult]] = {}
        recording: list[asyncio.Task[None]] = []
        try:
            while True:
                self._schedule(running)
                if self._unrecorded:
                    recording.append(asyncio.create_task(self._record_unrecorded()))
                if not running:
                    break
                done, _ = await workflow.wait(
                    list(running.values()), return_when=asyncio.FIRST_COMPLETED
                )
                for step_id, task in list(running.items()):
                    if task in done:
                        del running[step_id]
                        self._settle(step_id, task)
            if recording:
                await asyncio.gather(*recording)
        except BaseException:
            for task in running.values():
                task.cancel()
            if running:
                await workflow.wait(list(running.values()))
                for step_id, task in running.items():
                    if not self._states[step_id].status.is_terminal:
                        self._settle(step_id, task, stopping=True)
            raise

    def _schedule(self, running: dict[str, asyncio.Task[StepResult]]) -> None:
        progressed = True
        while progressed:
            progressed = False
            for step_id in self._order:
                state = self._states[step_id]
                if state.status is not StepStatus.pending:
                    continue
                step = self._steps[step_id]
                deps = [self._states[d] for d in step.depends_on]
                blocked = next(
                    (d for d in deps if d.status.is_terminal and not d.status.lets_downstream_run),
                    None,
                )
                if blocked is not None:
                    self._set(
                        step_id,
                        StepStatus.skipped,
                        error=f"upstream step {blocked.step_id} is {blocked.status.value}",
                    )
                    progressed = True
                    continue
                if not all(d.status.lets_downstream_run for d in deps):
                    continue
                context = self._context()
                try:
                    if step.when is not None and not evaluate(step.when, context):
                        self._set(
                            step_id, StepStatus.skipped, error=f"condition is false: {step.when}"
                        )
                        progressed = True
                        continue
                    params = resolve_values(step.params, context)
                except ExpressionError as exc:
                    self._step_failed(step, f"expression error: {exc}")
                    progressed = True
                    continue
                self._set(step_id, StepStatus.running)
                running[step_id] = asyncio.create_task(self._execute(step, params, context))

    async def _execute(
        self, step: Step, params: dict[str, Any], context: dict[str, Any]
    ) -> StepResult:
        assert self._input is not None
        retry = step.retry
        upstream = {d: context["steps"][d]["outputs"] for d in step.depends_on}
        return await workflow.execute_activity(
            RUN_STEP_ACTIVITY,
            StepInput(
                run_id=self._input.run_id,
                workflow_id=self._input.workflow_id,
                run_number=self._input.run_number,
                step=step,
                params=params,
                run_params=self._input.params,
                upstream=upstream,
            ),
            result_type=StepResult,
            task_queue=step.task_queue,
            start_to_close_timeout=step.timeout or DEFAULT_STEP_TIMEOUT,
            heartbeat_timeout=step.heartbeat_timeout or DEFAULT_HEARTBEAT_TIMEOUT,
            retry_policy=RetryPolicy(
                maximum_attempts=retry.max_attempts,
                initial_interval=retry.initial_backoff,
                maximum_interval=retry.maximum_backoff,
                backoff_coefficient=retry.backoff_coefficient,
                non_retryable_error_types=retry.non_retryable_error_types or None,
            ),
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            summary=f"{step.id} ({step.type})",
        )

    def _settle(
        self, step_id: str, task: asyncio.Task[StepResult], *, stopping: bool = False
    ) -> None:
        """Turn a finished activity into the step's status."""
        step = self._steps[step_id]
        try:
            result = task.result()
        except (asyncio.CancelledError, CancelledError):
            self._set(step_id, StepStatus.stopped, error="cancelled")
            return
        except ActivityError as exc:
            cause = exc.cause
            if isinstance(cause, CancelledError) or stopping:
                self._set(step_id, StepStatus.stopped, error="cancelled")
            elif isinstance(cause, TimeoutError):
                self._step_failed(
                    step, f"timed out ({cause.type.name.lower()})", status=StepStatus.timed_out
                )
            else:
                self._step_failed(
                    step,
                    str(cause.message if isinstance(cause, ApplicationError) else cause or exc),
                )
            return
        self._set(step_id, StepStatus.succeeded, outputs=result.outputs)

    def _step_failed(
        self, step: Step, error: str, *, status: StepStatus = StepStatus.failed
    ) -> None:
        if step.failure_mode is FailureMode.ignore_failure:
            self._set(step.id, StepStatus.completed_with_error, error=error, outputs={})
            return
        self._set(step.id, status, error=error)
        if step.failure_mode is FailureMode.fail_immediately:
            self._error = f"step {step.id} {status.value}: {error}"
            raise _FailFast()

    async def _record_unrecorded(self) -> None:
        assert self._input is not None
        states = [self._states[sid].model_copy() for sid in dict.fromkeys(self._unrecorded)]
        self._unrecorded.clear()
        await workflow.execute_activity(
            RECORD_STEPS_ACTIVITY,
            RecordStepsInput(run_id=self._input.run_id, steps=states),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=_RECORD_RETRY,
        )
