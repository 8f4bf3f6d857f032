"""RunWorkflow: interprets a definition snapshot as a DAG of step activities."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    TimeoutError,
)

from workers.composite import CompositeFailed, run_composite
from workers.workflow_common import (
    FOLD_SUCCESSES_PATCH,
    RECORD_RETRY,
    Decision,
    record,
    run_end,
    step_activity_options,
    step_decisions,
)

with workflow.unsafe.imports_passed_through():
    from maestro.composites import CompositeInput, RunRef
    from maestro.dag import topological_order
    from maestro.definitions import COMPOSITE_TYPES, FailureMode, Step
    from maestro.expressions import RUN_ROOTS, ExpressionError, resolve_values
    from maestro.runtime import (
        BYPASS_SIGNAL,
        FINISH_RUN_ACTIVITY,
        RECORD_STEPS_ACTIVITY,
        RECORD_SUCCESS_ACTIVITY,
        REGISTER_WAITS_ACTIVITY,
        RUN_STEP_ACTIVITY,
        SIGNAL_MATCHED_SIGNAL,
        SKIP_STEP_SIGNAL,
        BypassInput,
        FinishRunInput,
        MatchedSignal,
        RecordStepsInput,
        RecordSuccessesInput,
        RegisterWaitsInput,
        RegisterWaitsResult,
        RunInput,
        RunState,
        RunStatus,
        SkipStepInput,
        StepInput,
        StepResult,
        StepState,
        StepStatus,
        StepSuccess,
        WaitSpec,
        run_variables,
    )


class _FailFast(Exception):
    """A `fail_immediately` step failed: stop everything now."""


class _StepFailed(Exception):
    """A step failed before or without its activity (expression error, wait timeout)."""

    def __init__(self, message: str, status: StepStatus = StepStatus.failed) -> None:
        super().__init__(message)
        self.status = status


@workflow.defn(name="RunWorkflow")
class RunWorkflow:
    """One run of one workflow version."""

    def __init__(self) -> None:
        self._input: RunInput | None = None
        self._states: dict[str, StepState] = {}
        self._status = RunStatus.queued
        self._error: str | None = None
        self._unrecorded: list[str] = []
        self._recorded_by_activity: set[str] = set()  # succeeded: run_step wrote the row
        # Successes run_step could not record (the database was away), and their recording.
        # Successes run_step could not record (the database was away), and the one task that
        # records them: while it waits for the database, later ones join its next batch.
        self._unrecorded_successes: list[StepSuccess] = []
        self._recorder: asyncio.Task[None] | None = None
        self._run_recorded = False  # the last step's activity recorded the run's end
        self._matched: dict[str, dict[int, MatchedSignal]] = {}
        self._bypassed: set[str] = set()
        self._skip: set[str] = set()
        self._running: dict[str, asyncio.Task[StepResult]] = {}
        self._wake = False

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

    @workflow.signal(name=SIGNAL_MATCHED_SIGNAL)
    def signal_matched(self, matched: MatchedSignal) -> None:
        """A signal arrived for a waiting step (delivered by the signal bus)."""
        self._matched.setdefault(matched.step_id, {})[matched.position] = matched

    @workflow.signal(name=BYPASS_SIGNAL)
    def bypass_wait(self, request: BypassInput) -> None:
        """Release a waiting step without its signals."""
        self._bypassed.add(request.step_id)

    @workflow.signal(name=SKIP_STEP_SIGNAL)
    def skip_step(self, request: SkipStepInput) -> None:
        """An operator skips a step: downstream continues as if it succeeded, no outputs."""
        state = self._states.get(request.step_id)
        if state is None or state.status.is_terminal:
            return
        self._skip.add(request.step_id)
        task = self._running.get(request.step_id)
        if task is not None:
            task.cancel()
        self._wake = True

    @workflow.run
    async def run(self, run_input: RunInput) -> RunState:
        return await self._run(run_input)

    async def _run(self, run_input: RunInput, *, cancelled_early: bool = False) -> RunState:
        """Carry one run; `cancelled_early`: a cancellation arrived before the run could start
        (TimedRunWorkflow's admission), so it ends `stopped` at once."""
        self._input = run_input
        definition = run_input.definition
        self._steps = {s.id: s for s in definition.steps}
        self._order = topological_order({s.id: s.depends_on for s in definition.steps})
        self._states = {sid: StepState(step_id=sid) for sid in self._order}
        for step_id, outputs in run_input.reuse.items():
            if step_id in self._states:  # a restart: this step already succeeded
                self._set(
                    step_id,
                    StepStatus.succeeded,
                    outputs=outputs,
                    error=f"reused from run {run_input.cause.detail.get('restart_of')}",
                )
                self._unrecorded.append(step_id)
        self._status = RunStatus.running
        fields = {
            "workflow_id": run_input.workflow_id,
            "run_id": run_input.run_id,
            "run_number": run_input.run_number,
            "version": run_input.version,
        }
        workflow.logger.info("run started", extra=fields)
        cancelled = False
        try:
            if cancelled_early:
                raise asyncio.CancelledError()
            timeout = definition.timeout.total_seconds() if definition.timeout else None
            await asyncio.wait_for(self._drive(), timeout)
            self._status, self._error = run_end(self._states.values())
        except _FailFast:
            self._status = RunStatus.failed
        except builtins.TimeoutError:
            self._status = RunStatus.timed_out
            self._error = f"run exceeded its timeout of {definition.timeout}"
        except asyncio.CancelledError:
            cancelled = True
            self._status = RunStatus.stopped
            self._error = "run was cancelled"
        # Emitted signals must be published before the run's end is. Successes that emit
        # none are written with the end instead: one transaction less per run when the
        # database was away as its steps finished.
        folded: list[StepSuccess] = []
        while True:
            if self._recorder is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await self._recorder
                self._recorder = None
            if (
                self._unrecorded_successes
                and not self._run_recorded
                and not any(s.emits for s in self._unrecorded_successes)
                and workflow.patched(FOLD_SUCCESSES_PATCH)
            ):
                folded, self._unrecorded_successes = self._unrecorded_successes, []
                break
            self._start_recorder()
            if self._recorder is None:
                break
        if self._run_recorded:
            # The last step's activity recorded the run's end, `succeeded`, with its own
            # success: a timeout, stop or skip that arrived meanwhile came too late.
            self._status, self._error, cancelled = RunStatus.succeeded, None, False
        else:
            for state in self._states.values():
                if not state.status.is_terminal:
                    self._set(state.step_id, StepStatus.stopped, error="run ended before this step")
            finish = self._finish_input().model_copy(update={"successes": folded})
            await record(run_input.local_recording, FINISH_RUN_ACTIVITY, finish)
        workflow.logger.info("run ended", extra={**fields, "status": self._status.value})
        if cancelled:
            raise asyncio.CancelledError()  # shows the run as Canceled in the Temporal UI
        if self._status is not RunStatus.succeeded:
            # Shows the run as Failed in the Temporal UI; the state travels in the details.
            raise ApplicationError(
                f"run {self._status.value}: {self._error}",
                self.state(),
                type=f"Run{self._status.value.title().replace('_', '')}",
                non_retryable=True,
            )
        return self.state()

    def _finish_input(self, *, but: str | None = None) -> FinishRunInput:
        """The run's end as it stands (`but`: leaving out that step, the one still running)."""
        assert self._input is not None
        states = [s for sid, s in self._states.items() if sid != but]
        return FinishRunInput(
            run_id=self._input.run_id,
            workflow_id=self._input.workflow_id,
            run_number=self._input.run_number,
            version=self._input.version,
            params=self._input.params,
            status=self._status,
            error=self._error,
            steps=[s for s in states if s.step_id not in self._recorded_by_activity],
            outputs={s.step_id: s.outputs for s in states if s.outputs},
            waits=any(s.wait_for for s in self._input.definition.steps),
        )

    def _ends_run(self, step_id: str) -> FinishRunInput | None:
        """The run's end if `step_id`'s success would end the run `succeeded` (every other
        step is done, none failed): its activity records it then, with the step's own."""
        others = [s for sid, s in self._states.items() if sid != step_id]
        if step_id in self._skip or any(
            not s.status.is_terminal or s.status in (StepStatus.failed, StepStatus.timed_out)
            for s in others
        ):
            return None
        # The run's params stay out: the step's input carries them already.
        return self._finish_input(but=step_id).model_copy(
            update={"status": RunStatus.succeeded, "error": None, "params": {}}
        )

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
        # Activities record `running`, `waiting_for_signal` and `succeeded` themselves.
        if status.is_terminal and status is not StepStatus.succeeded:
            self._unrecorded.append(step_id)

    def _context(self, step_id: str | None = None) -> dict[str, Any]:
        assert self._input is not None
        info = workflow.info()
        matched = self._matched.get(step_id, {}) if step_id else {}
        return {
            "params": self._input.params,
            "steps": {
                sid: {"outputs": s.outputs or {}, "status": s.status.value}
                for sid, s in self._states.items()
            },
            "run": run_variables(
                self._input.run_id,
                self._input.run_number,
                self._input.workflow_id,
                self._input.version,
                info.start_time,
            ),
            "signals": {
                m.name: {"id": m.signal_id, "params": m.params, "payload": m.payload}
                for m in matched.values()
            },
        }

    async def _drive(self) -> None:
        """Start every step whose dependencies are done, until nothing is left to run."""
        running = self._running
        recording: list[asyncio.Task[None]] = []
        try:
            while True:
                self._schedule(running)
                if self._unrecorded:
                    recording.append(asyncio.create_task(self._record_unrecorded()))
                if self._recorder is None or self._recorder.done():
                    self._start_recorder()
                if not running:
                    break
                # Wake on a finished step, or on an operator action (skip) between steps.
                self._wake = False
                wake = asyncio.create_task(workflow.wait_condition(lambda: self._wake))
                done, _ = await workflow.wait(
                    [*running.values(), wake], return_when=asyncio.FIRST_COMPLETED
                )
                if wake not in done:
                    wake.cancel()
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
        for step, decision, why in step_decisions(
            self._order,
            self._steps,
            lambda sid: self._states[sid].status,
            self._context,
            skipped=self._skip,
        ):
            if decision is Decision.skip_manually:
                self._set(step.id, StepStatus.skipped_manually, outputs={}, error=why)
            elif decision is Decision.skip:
                self._set(step.id, StepStatus.skipped, error=why)
            elif decision is Decision.fail:
                self._step_failed(step, why or "")
            else:
                # Marked before the task runs so the next pass does not start it twice.
                self._states[step.id].status = StepStatus.running
                running[step.id] = asyncio.create_task(self._execute(step))

    async def _execute(self, step: Step) -> StepResult:
        assert self._input is not None
        if step.wait_for:
            await self._wait_for_signals(step)
        self._set(step.id, StepStatus.running)
        if step.type in COMPOSITE_TYPES:
            return await self._composite(step)
        context = self._context(step.id)
        try:
            params = resolve_values(step.params, context)
        except ExpressionError as exc:
            raise _StepFailed(f"expression error: {exc}") from None
        return await workflow.execute_activity(
            RUN_STEP_ACTIVITY,
            StepInput(
                run_id=self._input.run_id,
                workflow_id=self._input.workflow_id,
                run_number=self._input.run_number,
                version=self._input.version,
                step=step,
                params=params,
                run_params=self._input.params,
                upstream={d: context["steps"][d]["outputs"] for d in step.depends_on},
                signals=context["signals"],
                finish=self._ends_run(step.id),
            ),
            result_type=StepResult,
            summary=f"{step.id} ({step.type})",
            **step_activity_options(step),
        )

    async def _composite(self, step: Step) -> StepResult:
        """A foreach, subworkflow or while step: shown running, then carried by its child
        workflows (workers.composite); its success is recorded by its finishing activity."""
        assert self._input is not None
        await record(
            True,
            RECORD_STEPS_ACTIVITY,
            RecordStepsInput(run_id=self._input.run_id, steps=[self._states[step.id]]),
        )
        detail = self._input.cause.detail
        reuse_from = detail.get("restart_of") if detail.get("from") == "failed" else None
        composite = CompositeInput(
            run=RunRef(
                run_id=self._input.run_id,
                workflow_id=self._input.workflow_id,
                run_number=self._input.run_number,
                version=self._input.version,
                temporal_workflow_id=workflow.info().workflow_id,
                reuse_from=reuse_from,
            ),
            step=step,
            path=step.id,
            roots=sorted(RUN_ROOTS),
            context=self._context(step.id),
        )
        try:
            return await run_composite(composite)
        except CompositeFailed as exc:
            raise _StepFailed(str(exc)) from None
        except ActivityError as exc:
            cause = exc.cause
            message = cause.message if isinstance(cause, ApplicationError) else str(cause or exc)
            raise _StepFailed(message) from None

    async def _wait_for_signals(self, step: Step) -> None:
        """Register the step's waits, then wait (without polling) for the signal bus to deliver
        a match for each, a bypass, or the earliest timeout."""
        assert self._input is not None
        self._states[step.id].status = StepStatus.waiting_for_signal
        context = self._context()
        try:
            # Resolved together, so all the waits' expressions share one cost budget.
            wheres = resolve_values([w.where for w in step.wait_for], context)
            waits = [
                WaitSpec(position=i, name=w.name, where=where)
                for i, (w, where) in enumerate(zip(step.wait_for, wheres, strict=True))
            ]
        except ExpressionError as exc:
            raise _StepFailed(f"expression error in wait_for: {exc}") from None
        registered = await workflow.execute_activity(
            REGISTER_WAITS_ACTIVITY,
            RegisterWaitsInput(
                run_id=self._input.run_id,
                step_id=step.id,
                temporal_workflow_id=workflow.info().workflow_id,
                waits=waits,
            ),
            result_type=RegisterWaitsResult,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RECORD_RETRY,
        )
        for matched in registered.matched:
            self.signal_matched(matched)

        def released() -> bool:
            got = self._matched.get(step.id, {})
            return step.id in self._bypassed or all(w.position in got for w in waits)

        timeouts = [(w.timeout, w.name) for w in step.wait_for if w.timeout is not None]
        limit = min(timeouts) if timeouts else None
        try:
            await workflow.wait_condition(released, timeout=limit[0] if limit else None)
        except builtins.TimeoutError:
            assert limit is not None  # only a wait with a timeout times out
            raise _StepFailed(
                f"timed out after {limit[0]} waiting for signal {limit[1]!r}", StepStatus.timed_out
            ) from None

    def _settle(
        self, step_id: str, task: asyncio.Task[StepResult], *, stopping: bool = False
    ) -> None:
        """Turn a finished step task into the step's status."""
        step = self._steps[step_id]
        succeeded = task.done() and not task.cancelled() and task.exception() is None
        if succeeded and task.result().run_recorded:
            # Its activity recorded the run's end with its success; nothing overrides that.
            self._run_recorded = True
        elif step_id in self._skip and not stopping:
            self._set(
                step_id, StepStatus.skipped_manually, outputs={}, error="skipped by an operator"
            )
            return
        try:
            result = task.result()
        except (asyncio.CancelledError, CancelledError):
            self._set(step_id, StepStatus.stopped, error="cancelled")
            return
        except _StepFailed as exc:
            self._step_failed(step, str(exc), status=exc.status)
            return
        except ActivityError as exc:
            cause = exc.cause
            if isinstance(cause, CancelledError) or stopping:
                self._set(step_id, StepStatus.stopped, error="cancelled")
            elif isinstance(cause, TimeoutError):
                assert cause.type is not None  # an activity's timeouts all have a type
                self._step_failed(
                    step, f"timed out ({cause.type.name.lower()})", status=StepStatus.timed_out
                )
            else:
                message = (
                    cause.message if isinstance(cause, ApplicationError) else str(cause or exc)
                )
                self._step_failed(step, message)
            return
        self._set(step_id, StepStatus.succeeded, outputs=result.outputs)
        if result.unrecorded is not None:
            self._unrecorded_successes.append(result.unrecorded)
        else:
            self._recorded_by_activity.add(step_id)

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

    def _start_recorder(self) -> None:
        if self._unrecorded_successes:
            self._recorder = asyncio.create_task(self._record_successes())

    async def _record_successes(self) -> None:
        while self._unrecorded_successes:
            successes, self._unrecorded_successes = self._unrecorded_successes, []
            await record(True, RECORD_SUCCESS_ACTIVITY, RecordSuccessesInput(successes=successes))

    async def _record_unrecorded(self) -> None:
        assert self._input is not None
        states = [self._states[sid].model_copy() for sid in dict.fromkeys(self._unrecorded)]
        self._unrecorded.clear()
        await record(
            self._input.local_recording,
            RECORD_STEPS_ACTIVITY,
            RecordStepsInput(run_id=self._input.run_id, steps=states),
        )
