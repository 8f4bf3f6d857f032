"""Activities: run one step attempt, register signal waits, and record what the workflow decided
in PostgreSQL (publishing the signals that steps emit and runs complete)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError

from maestro import metrics
from maestro.artifacts import ArtifactStore, LocalArtifactStore
from maestro.context import StepContext
from maestro.db import runs as runs_db
from maestro.db import workflows as workflows_db
from maestro.db.engine import autocommit
from maestro.db.tables import Run
from maestro.expressions import ExpressionError, resolve_values
from maestro.registry import Registry
from maestro.runtime import (
    ADMIT_FIRE_ACTIVITY,
    FINISH_RUN_ACTIVITY,
    FIRE_TIME_TRIGGER_ACTIVITY,
    RECORD_STEPS_ACTIVITY,
    REGISTER_WAITS_ACTIVITY,
    RUN_STEP_ACTIVITY,
    AdmitFireInput,
    FinishRunInput,
    FireAdmission,
    FireRequest,
    RecordStepsInput,
    RegisterWaitsInput,
    RegisterWaitsResult,
    StepInput,
    StepResult,
)
from maestro.schedules import Schedules
from maestro.settings import WorkerSettings
from maestro.signals import Producer, SignalBus, SignalIn
from maestro.steps import STEP_TYPES
from workers.executors import EXECUTORS, Services

logger = logging.getLogger(__name__)


def _module_allowed(entrypoint: str, allowed: list[str]) -> bool:
    module = entrypoint.partition(":")[0]
    return not allowed or any(module == a or module.startswith(a + ".") for a in allowed)


class _Progress:
    """The latest progress a step reported, sent by the heartbeat loop (safe from any thread)."""

    def __init__(self, initial: Any) -> None:
        self._lock = threading.Lock()
        self._details = initial

    def report(self, details: Any) -> None:
        with self._lock:
            self._details = details

    def latest(self) -> Any:
        with self._lock:
            return self._details


# A step attempt that ends sooner than this has its start recorded with its end, in one
# transaction; a longer one shows `running` from this moment on.
RECORD_START_AFTER = 0.1


class _AttemptStart:
    """Records that an attempt started, unless it ends first (see RECORD_START_AFTER)."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        step_input: StepInput,
        info: activity.Info,
        delay: float,
    ) -> None:
        self._sessions = sessions
        self._run_id = step_input.run_id
        self._step_id = step_input.step.id
        self._attempt = info.attempt
        self._temporal_run_id = info.workflow_run_id
        self.at = datetime.now(UTC)
        self._write: asyncio.Task[bool] | None = None
        self._timer = asyncio.create_task(self._later(delay))

    async def _later(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self._write = asyncio.create_task(self._record())

    async def _record(self) -> bool:
        try:
            async with autocommit(self._sessions) as session:
                await runs_db.mark_step_started(
                    session,
                    self._run_id,
                    self._step_id,
                    self._attempt,
                    self._temporal_run_id,
                    self.at,
                )
            return True
        except Exception as exc:  # noqa: BLE001 - written again with the attempt's end
            logger.warning(
                "recording a step start failed", extra={"run_id": self._run_id, "error": str(exc)}
            )
            return False

    async def settle(self) -> tuple[str, datetime] | None:
        """The attempt ended: (Temporal run id, start time) if its start still has to be
        written (with the end), else None."""
        self._timer.cancel()
        if self._write is not None and await asyncio.shield(self._write):
            return None
        return self._temporal_run_id, self.at


class StepActivities:
    """The activities of RunWorkflow, built with their dependencies."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        runs_dir: Path,
        bus: SignalBus,
        artifacts: ArtifactStore | None = None,
        policy: WorkerSettings | None = None,
    ) -> None:
        self._policy = policy or WorkerSettings()
        self._sessions = sessions
        self._runs_dir = runs_dir
        self._bus = bus
        store = artifacts or LocalArtifactStore(runs_dir.parent / "artifacts")
        self._services = Services(sessions, store, Registry(sessions, bus))

    @activity.defn(name=RUN_STEP_ACTIVITY)
    async def run_step(self, step_input: StepInput) -> StepResult:
        """Run one attempt of one step, heartbeating while it runs."""
        info = activity.info()
        step = step_input.step
        log_extra = {
            "workflow_id": step_input.workflow_id,
            "run_id": step_input.run_id,
            "step_id": step.id,
            "attempt": info.attempt,
        }
        executor = EXECUTORS.get(step.type)
        if self._policy.step_types and step.type not in self._policy.step_types:
            raise ApplicationError(
                f"this worker does not run {step.type!r} steps (it runs "
                f"{', '.join(self._policy.step_types)}); route the step with task_queue",
                type="StepTypeNotAllowed",
                non_retryable=True,
            )
        entrypoint = step_input.params.get("entrypoint")
        if isinstance(entrypoint, str) and not _module_allowed(
            entrypoint, self._policy.allowed_modules
        ):
            raise ApplicationError(
                f"entrypoint {entrypoint!r} is outside this worker's allowed modules "
                f"({', '.join(self._policy.allowed_modules)})",
                type="EntrypointNotAllowed",
                non_retryable=True,
            )
        if executor is None:
            raise ApplicationError(
                f"this worker cannot run step type {step.type!r}",
                type="UnknownStepType",
                non_retryable=True,
            )
        try:
            spec = STEP_TYPES[step.type].model_validate(step_input.params)
        except ValidationError as exc:
            raise ApplicationError(
                f"invalid params for a {step.type} step: {exc}",
                type="InvalidStepParams",
                non_retryable=True,
            ) from None
        work_dir = self._runs_dir / step_input.run_id
        previous = info.heartbeat_details[0] if info.heartbeat_details else None
        progress = _Progress(previous)
        ctx = StepContext(
            run_id=step_input.run_id,
            workflow_id=step_input.workflow_id,
            run_number=step_input.run_number,
            step_id=step.id,
            attempt=info.attempt,
            params=step_input.run_params,
            args={},
            upstream=step_input.upstream,
            _work_dir=work_dir,
            previous_progress=previous,
            _artifact_dir=work_dir / step.id / "artifacts",
            _report=progress.report,
        )
        activity.logger.info("step attempt started", extra=log_extra)
        heartbeats = asyncio.create_task(self._heartbeat(progress, info.heartbeat_timeout))
        began = time.monotonic()
        start = _AttemptStart(self._sessions, step_input, info, RECORD_START_AFTER)
        try:
            result = await executor(ctx, spec, self._services)
        except asyncio.CancelledError:
            activity.logger.info("step attempt cancelled", extra=log_extra)
            metrics.STEP_DURATION.labels(step.type, "cancelled").observe(time.monotonic() - began)
            await start.settle()
            raise
        except Exception as exc:
            metrics.STEP_DURATION.labels(step.type, "failed").observe(time.monotonic() - began)
            await self._record_failed_attempt(step_input, info.attempt, exc, await start.settle())
            if isinstance(exc, ApplicationError):
                raise
            raise ApplicationError(f"{type(exc).__name__}: {exc}", type=type(exc).__name__) from exc
        finally:
            heartbeats.cancel()
        metrics.STEP_DURATION.labels(step.type, "succeeded").observe(time.monotonic() - began)
        started = await start.settle()
        emitted = self._emitted(step_input, result)

        async def succeeded(session: AsyncSession) -> None:
            await runs_db.mark_step_succeeded(
                session,
                step_input.run_id,
                step.id,
                info.attempt,
                result.outputs,
                result.details,
                started=started,
            )

        if step_input.finish is not None and not emitted:
            # The run's last step: its success and the run's end in one transaction.
            finish = step_input.finish
            if result.outputs:
                finish = finish.model_copy(
                    update={"outputs": {**finish.outputs, step.id: result.outputs}}
                )
            if await self._end_run_with_step(finish, info.workflow_run_id, succeeded):
                activity.logger.info("step attempt succeeded", extra=log_extra)
                return result.model_copy(update={"run_recorded": True})
        # One statement unless the step emits signals: then one transaction for both.
        writing = self._sessions.begin() if emitted else autocommit(self._sessions)
        async with writing as session:
            await succeeded(session)
            pending = None
            if emitted:
                producer = Producer(
                    kind="step",
                    workflow_id=step_input.workflow_id,
                    run_id=step_input.run_id,
                    step_id=step.id,
                )
                pending = await self._bus.publish_in(session, emitted, producer, lookup=False)
        if pending is not None:
            await self._bus.after_commit(pending)
        activity.logger.info("step attempt succeeded", extra=log_extra)
        return result

    @staticmethod
    def _emitted(step_input: StepInput, result: StepResult) -> list[SignalIn]:
        """The step's `emits`, with expressions evaluated over the run and this step's outputs."""
        step = step_input.step
        if not step.emits:
            return []
        context = {
            "params": step_input.run_params,
            "steps": {
                **{sid: {"outputs": out} for sid, out in step_input.upstream.items()},
                step.id: {"outputs": result.outputs},
            },
            "run": {
                "id": step_input.run_id,
                "number": step_input.run_number,
                "workflow_id": step_input.workflow_id,
                "version": step_input.version,
            },
            "signals": step_input.signals,
        }
        try:
            # Resolved together, so all the emits' expressions share one cost budget.
            params = resolve_values([emit.params for emit in step.emits], context)
            return [
                SignalIn(
                    name=emit.name,
                    params=values,
                    request_id=f"emit:{step_input.run_id}:{step.id}:{i}",
                )
                for i, (emit, values) in enumerate(zip(step.emits, params, strict=True))
            ]
        except (ExpressionError, ValidationError) as exc:
            raise ApplicationError(
                f"cannot build the signals this step emits: {exc}",
                type="InvalidEmit",
                non_retryable=True,
            ) from None

    async def _record_failed_attempt(
        self,
        step_input: StepInput,
        attempt: int,
        exc: BaseException,
        started: tuple[str, datetime] | None,
    ) -> None:
        with contextlib.suppress(Exception):  # the attempt's own failure is what matters
            async with self._sessions.begin() as session:
                if started is not None:
                    await runs_db.mark_step_started(
                        session, step_input.run_id, step_input.step.id, attempt, *started
                    )
                await runs_db.mark_attempt_failed(
                    session, step_input.run_id, step_input.step.id, attempt, str(exc)[:4000]
                )

    @staticmethod
    async def _heartbeat(progress: _Progress, timeout: Any) -> None:
        # The worker throttles what reaches the server; beating often keeps cancellation quick.
        # The first beat waits one interval: a step that ends sooner costs no heartbeat call.
        interval = 0.5 if timeout is None else max(0.1, min(0.5, timeout.total_seconds() / 4))
        while True:
            await asyncio.sleep(interval)
            activity.heartbeat(progress.latest())

    @activity.defn(name=RECORD_STEPS_ACTIVITY)
    async def record_steps(self, record: RecordStepsInput) -> None:
        """Persist step states that the workflow decided (skipped, failed, stopped, ...)."""
        async with self._sessions.begin() as session:
            await runs_db.record_step_states(session, record.run_id, record.steps)

    @activity.defn(name=REGISTER_WAITS_ACTIVITY)
    async def register_waits(self, request: RegisterWaitsInput) -> RegisterWaitsResult:
        """Record a step's signal waits; returns those already satisfied."""
        return await self._bus.register_waits(request)

    @activity.defn(name=FINISH_RUN_ACTIVITY)
    async def finish_run(self, finish: FinishRunInput) -> None:
        """Persist the run's end (status, error, outputs, every step's final state) and admit
        the next queued runs; then publish its completion signal."""
        run, admitted = await self._record_end(finish, activity.info().workflow_run_id)
        pending = await self._publish_end(run)
        await self._bus.runs.launch(admitted)
        await self._bus.after_commit(pending)
        # No log line here: the workflow logs "run ended" with the same fields.

    async def _record_end(
        self,
        finish: FinishRunInput,
        temporal_run_id: str,
        also: Callable[[AsyncSession], Awaitable[None]] | None = None,
    ) -> tuple[Run, list[Run]]:
        """In one transaction: `also` (the last step's success), the run's end, and the
        admission of the next queued runs. Returns the run and the runs to launch."""
        async with self._sessions.begin() as session:
            workflow = None
            if also is not None:
                # The workflow's row lock first, as every run-creating transaction takes it:
                # run_ended's lock would come after this transaction's second write to the
                # run's row, whose foreign-key check share-locks the workflow row, and two
                # such transactions upgrading their share locks deadlock each other.
                workflow = await workflows_db.get_workflow(session, finish.workflow_id, lock=True)
                await also(session)
            run = await runs_db.finish_run(
                session,
                finish.run_id,
                finish.status,
                finish.error,
                finish.outputs,
                finish.steps,
                temporal_run_id,
                waits=finish.waits,
            )
            return run, await self._bus.runs.run_ended(session, run, workflow)

    async def _publish_end(self, run: Run) -> Any:
        """The completion signal, in its own transaction: publishing it takes the signal name's
        lock before the downstream workflows' locks, and taking that after this workflow's row
        lock would deadlock with a downstream run ending at the same moment. A crash between
        the two commits retries the activity; both halves are idempotent."""
        async with self._sessions.begin() as session:
            pending = await self._bus.publish_completion_in(session, run)
        metrics.RUNS_ENDED.labels(run.status).inc()
        return pending

    async def _end_run_with_step(
        self,
        finish: FinishRunInput,
        temporal_run_id: str,
        step_succeeded: Callable[[AsyncSession], Awaitable[None]],
    ) -> bool:
        """Record the last step's success with the run's end and publish its completion.
        False when that could not be done: the step's success is then written alone (the
        caller's usual path) and the workflow's finish_run records the end, as for any run."""
        log_extra = {"run_id": finish.run_id}
        try:
            run, admitted = await self._record_end(finish, temporal_run_id, step_succeeded)
        except Exception as exc:  # noqa: BLE001 - the usual path follows
            logger.warning(
                "recording the run's end with its last step failed; the workflow will",
                extra={**log_extra, "error": str(exc)},
            )
            return False
        try:
            pending = await self._publish_end(run)
        except Exception as exc:  # noqa: BLE001 - finish_run records the end again, publishes
            logger.warning(
                "publishing the run's completion failed; the workflow will",
                extra={**log_extra, "error": str(exc)},
            )
            return False
        with contextlib.suppress(Exception):  # the sweeper launches what was admitted
            await self._bus.runs.launch(admitted)
        await self._bus.after_commit(pending)
        return True


class ScheduleActivities:
    """The activities behind TimedRunWorkflow and FireScheduleWorkflow."""

    def __init__(self, schedules: Schedules) -> None:
        self._schedules = schedules

    @activity.defn(name=ADMIT_FIRE_ACTIVITY)
    async def admit_fire(self, request: AdmitFireInput) -> FireAdmission:
        """Create the run of one scheduled time (once); its input if this execution carries it."""
        return await self._schedules.admit_fire(request)

    @activity.defn(name=FIRE_TIME_TRIGGER_ACTIVITY)
    async def fire_time_trigger(self, request: FireRequest) -> str | None:
        """Create and launch the run of one scheduled time (once, however often it is asked)."""
        run = await self._schedules.fire(request)
        return run.run_id if run else None
