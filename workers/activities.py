"""Activities: run one step attempt, register signal waits, and record what the workflow decided
in PostgreSQL (publishing the signals that steps emit and runs complete)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
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
from maestro.composites import RUN_ITERATION_STEP_ACTIVITY
from maestro.context import StepContext
from maestro.db import iterations as iterations_db
from maestro.db import runs as runs_db
from maestro.db.engine import autocommit
from maestro.db.tables import Run, StepRun
from maestro.definitions import Step
from maestro.ends import RunEnds
from maestro.errors import ConfigurationError, Forbidden, NotFound
from maestro.expressions import ExpressionError, resolve_values
from maestro.outbound import Guard
from maestro.registry import Registry
from maestro.runtime import (
    ADMIT_FIRE_ACTIVITY,
    FINISH_RUN_ACTIVITY,
    RECORD_STEPS_ACTIVITY,
    RECORD_SUCCESS_ACTIVITY,
    REGISTER_WAITS_ACTIVITY,
    RUN_STEP_ACTIVITY,
    AdmitFireInput,
    FinishRunInput,
    FireAdmission,
    RecordStepsInput,
    RecordSuccessesInput,
    RegisterWaitsInput,
    RegisterWaitsResult,
    RunStatus,
    StepInput,
    StepResult,
    StepStatus,
    StepSuccess,
    run_variables,
)
from maestro.schedules import Schedules
from maestro.secrets import Masker, SecretBox, resolve_secrets
from maestro.settings import OutboundSettings, WorkerSettings
from maestro.signals import Producer, SignalBus, SignalIn
from maestro.steps import STEP_TYPES, secret_references, unsafe_params
from workers.code_packages import CodePackages, PackagedCode
from workers.composite_activities import CompositeActivities
from workers.database import outlasting_outage
from workers.executors import EXECUTORS, Executor
from workers.executors.python import CODE_PACKAGE
from workers.executors.services import DatabaseServices
from workers.workdirs import WorkRoot

logger = logging.getLogger(__name__)


def _workflow_run_id(info: activity.Info) -> str:
    """The Temporal run id of the workflow the activity runs for: every Maestro activity has
    one (the SDK's Optional covers activities started outside a workflow)."""
    assert info.workflow_run_id is not None
    return info.workflow_run_id


def _module_allowed(entrypoint: str, allowed: list[str]) -> bool:
    module = entrypoint.partition(":")[0]
    return any(a == "*" or module == a or module.startswith(a + ".") for a in allowed)


def _details(exc: BaseException) -> dict | None:
    """What a failed attempt left to look at (a shell step's log tails), if anything."""
    if isinstance(exc, ApplicationError) and exc.details and isinstance(exc.details[0], dict):
        return exc.details[0]
    return None


def _masked_failure(exc: BaseException, mask: Masker) -> ApplicationError:
    """The failure of an attempt that held secrets, its text masked and without the original
    exception attached (whose message would reach Temporal unmasked)."""
    if isinstance(exc, ApplicationError):
        return ApplicationError(
            mask(exc.message),
            *mask(list(exc.details)),
            type=exc.type,
            non_retryable=exc.non_retryable,
            next_retry_delay=exc.next_retry_delay,
            category=exc.category,
        )
    return ApplicationError(mask(f"{type(exc).__name__}: {exc}"), type=type(exc).__name__)


async def _while_database_away(
    write: Callable[[], Awaitable[Any]], *, always: bool = False
) -> None:
    """Run `write`. As a regular activity (the workflow's fallback when local tries failed),
    or `always`, wait for an unreachable database within the attempt, heartbeating, instead
    of failing it; as a local activity, fail at once so the workflow falls back."""
    if activity.info().is_local and not always:
        await write()
    else:
        await outlasting_outage(write, heartbeat=activity.heartbeat)


class _Progress:
    """The latest progress a step reported, sent by the heartbeat loop (safe from any thread)."""

    def __init__(self, initial: Any) -> None:
        self._lock = threading.Lock()
        self._details = initial
        # Set when the step holds secrets: what it reports goes to Temporal masked.
        self.mask: Masker | None = None

    def report(self, details: Any) -> None:
        if self.mask is not None:
            details = self.mask(details)
        with self._lock:
            self._details = details

    def latest(self) -> Any:
        with self._lock:
            return self._details


def step_executor(step: Step, params: dict[str, Any]) -> tuple[Executor, Any]:
    """The executor of the step's type and its params validated; a step that cannot run as
    defined fails for good."""
    if unsafe := unsafe_params(step.type, step.params):
        # Definitions stored before these checks ran at registration.
        raise ApplicationError(
            "; ".join(f"{'.'.join(map(str, p.loc))}: {p.msg}" for p in unsafe),
            type="UnsafeStepParams",
            non_retryable=True,
        )
    executor = EXECUTORS.get(step.type)
    if executor is None:
        raise ApplicationError(
            f"this worker cannot run step type {step.type!r}",
            type="UnknownStepType",
            non_retryable=True,
        )
    try:
        spec = STEP_TYPES[step.type].model_validate(params)
    except ValidationError as exc:
        raise ApplicationError(
            f"invalid params for a {step.type} step: {exc}",
            type="InvalidStepParams",
            non_retryable=True,
        ) from None
    return executor, spec


def step_failure(exc: Exception) -> ApplicationError:
    """How a step's own exception fails its attempt: retryable, typed by its class."""
    return ApplicationError(f"{type(exc).__name__}: {exc}", type=type(exc).__name__)


def emitted_signals(step_input: StepInput, result: StepResult) -> list[SignalIn]:
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
        "run": run_variables(
            step_input.run_id, step_input.run_number, step_input.workflow_id, step_input.version
        ),
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


# A step attempt that ends sooner than this has its start recorded with its end, in one
# transaction; a longer one shows `running` from this moment on.
RECORD_START_AFTER = 0.1


class _AttemptStart:
    """Records that an attempt started, unless it ends first (see RECORD_START_AFTER)."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        records: _Records,
        info: activity.Info,
        delay: float,
    ) -> None:
        self._sessions = sessions
        self._records = records
        self._run_id = records.step_input.run_id
        self._attempt = info.attempt
        self._temporal_run_id = _workflow_run_id(info)
        self.at = datetime.now(UTC)
        self._write: asyncio.Task[bool] | None = None
        self._timer = asyncio.create_task(self._later(delay))

    async def _later(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self._write = asyncio.create_task(self._record())

    async def _record(self) -> bool:
        try:
            async with autocommit(self._sessions) as session:
                await self._records.started(session, self._attempt, self._temporal_run_id, self.at)
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


class _Records:
    """Where one step attempt is recorded: the run's step row (a step of the DAG)."""

    def __init__(self, activities: StepActivities, step_input: StepInput) -> None:
        self.activities = activities
        self.step_input = step_input

    @property
    def name(self) -> str:
        """The step's name in its run: its work directory and the registry use it."""
        return self.step_input.step.id

    async def earlier_success(self, progress: Any) -> StepResult | None:
        return await self.activities._recorded_success(self.step_input, progress)

    async def started(
        self, session: AsyncSession, attempt: int, temporal_run_id: str, at: datetime
    ) -> None:
        await runs_db.mark_step_started(
            session, self.step_input.run_id, self.step_input.step.id, attempt, temporal_run_id, at
        )

    async def attempt_failed(
        self, session: AsyncSession, attempt: int, error: str, details: dict | None = None
    ) -> None:
        await runs_db.mark_attempt_failed(
            session, self.step_input.run_id, self.step_input.step.id, attempt, error, details
        )

    async def succeeded(
        self, result: StepResult, info: activity.Info, started: tuple[str, datetime] | None
    ) -> StepResult:
        return await self.activities._step_succeeded(self.step_input, result, info, started)


class _IterationRecords(_Records):
    """Where an attempt of a step inside a composite step's iteration is recorded: the
    iteration's row (the last step's success is the iteration's, in the same statement)."""

    @property
    def name(self) -> str:
        ref = self.step_input.iteration
        assert ref is not None
        return f"{ref.path}[{ref.index}].{self.step_input.step.id}"

    def _key(self) -> tuple[str, str, int]:
        ref = self.step_input.iteration
        assert ref is not None
        return self.step_input.run_id, ref.path, ref.index

    async def earlier_success(self, progress: Any) -> StepResult | None:
        async def read() -> dict[str, Any] | None:
            async with self.activities._sessions() as session:
                return await iterations_db.step_success(
                    session, *self._key(), self.step_input.step.id
                )

        outputs = await outlasting_outage(read, heartbeat=lambda: activity.heartbeat(progress))
        return None if outputs is None else StepResult(outputs=outputs)

    async def started(
        self, session: AsyncSession, attempt: int, temporal_run_id: str, at: datetime
    ) -> None:
        await iterations_db.step_started(
            session, *self._key(), self.step_input.step.id, attempt, at
        )

    async def attempt_failed(
        self, session: AsyncSession, attempt: int, error: str, details: dict | None = None
    ) -> None:
        await iterations_db.step_attempt_failed(session, *self._key(), error)

    async def succeeded(
        self, result: StepResult, info: activity.Info, started: tuple[str, datetime] | None
    ) -> StepResult:
        async def write() -> None:
            async with autocommit(self.activities._sessions) as session:
                await iterations_db.step_succeeded(
                    session,
                    *self._key(),
                    self.step_input.step.id,
                    info.attempt,
                    result.outputs,
                    finishes=self.step_input.finishes_iteration,
                    started_at=started[1] if started else None,
                )

        # The success must be written before Temporal hears of it: a retry finds it then.
        await _while_database_away(write, always=True)
        if self.step_input.finishes_iteration:
            metrics.ITERATIONS_FINISHED.labels("succeeded").inc()
        return result


class StepActivities:
    """The activities of RunWorkflow, built with their dependencies."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        work_root: Path,
        bus: SignalBus,
        artifacts: ArtifactStore | None = None,
        policy: WorkerSettings | None = None,
        secret_box: SecretBox | None = None,
        outbound: OutboundSettings | None = None,
        code_cache: Path | None = None,
    ) -> None:
        self._policy = policy or WorkerSettings()
        self._sessions = sessions
        self._work_root = WorkRoot(
            work_root, self._policy.run_as_user, self._policy.run_as_uid_range
        )
        self._work_root.prepare()
        self._bus = bus
        self._secret_box = secret_box
        store = artifacts or LocalArtifactStore(work_root.parent / "artifacts")
        self._code = CodePackages(sessions, store, code_cache or work_root.parent / "code-cache")
        self._services = DatabaseServices(
            sessions=sessions,
            artifacts=store,
            registry=Registry(sessions, bus),
            work_root=self._work_root,
            guard=Guard(outbound or OutboundSettings()),
        )
        self._ends = RunEnds(sessions, bus.runs, bus) if bus is not None else None
        self.composites = CompositeActivities(
            sessions, bus.runs if bus is not None else None, self._policy.max_foreach_items
        )

    @activity.defn(name=RUN_STEP_ACTIVITY)
    async def run_step(self, step_input: StepInput) -> StepResult:
        """Run one attempt of one step, heartbeating while it runs."""
        return await self._attempt(_Records(self, step_input))

    @activity.defn(name=RUN_ITERATION_STEP_ACTIVITY)
    async def run_iteration_step(self, step_input: StepInput) -> StepResult:
        """Run one attempt of one step of a composite step's iteration."""
        return await self._attempt(_IterationRecords(self, step_input))

    async def _attempt(self, records: _Records) -> StepResult:
        step_input = records.step_input
        info = activity.info()
        step = step_input.step
        log_extra = {
            "workflow_id": step_input.workflow_id,
            "run_id": step_input.run_id,
            "step_id": records.name,
            "attempt": info.attempt,
        }
        if self._policy.step_types and step.type not in self._policy.step_types:
            raise ApplicationError(
                f"this worker does not run {step.type!r} steps (it runs "
                f"{', '.join(self._policy.step_types)}); route the step with task_queue",
                type="StepTypeNotAllowed",
                non_retryable=True,
            )
        entrypoint = step_input.params.get("entrypoint")
        code = await self._code_package(step_input) if isinstance(entrypoint, str) else None
        CODE_PACKAGE.set(code)
        packaged = code is not None and code.owns(str(entrypoint).partition(":")[0])
        if (
            isinstance(entrypoint, str)
            and not packaged
            and not _module_allowed(entrypoint, self._policy.allowed_modules)
        ):
            raise ApplicationError(
                f"entrypoint {entrypoint!r} is outside this worker's allowed modules "
                f"({', '.join(self._policy.allowed_modules) or 'none'}); add its module to "
                f"MAESTRO_WORKER__ALLOWED_MODULES",
                type="EntrypointNotAllowed",
                non_retryable=True,
            )
        executor, spec = step_executor(step, step_input.params)
        work_dir = self._work_root.run_dir(step_input.run_id)
        previous = info.heartbeat_details[0] if info.heartbeat_details else None
        if info.attempt > 1:
            done = await records.earlier_success(previous)
            if done is not None:
                activity.logger.info("step had succeeded already", extra=log_extra)
                return done
        progress = _Progress(previous)
        ctx = StepContext(
            run_id=step_input.run_id,
            workflow_id=step_input.workflow_id,
            run_number=step_input.run_number,
            step_id=records.name,
            attempt=info.attempt,
            params=step_input.run_params,
            args={},
            upstream=step_input.upstream,
            _work_dir=work_dir,
            previous_progress=previous,
            _artifact_dir=work_dir / records.name / "artifacts",
            _report=progress.report,
            max_attempts=step.retry.max_attempts,
            _store=self._services.artifacts,
        )
        activity.logger.info("step attempt started", extra=log_extra)
        heartbeats = asyncio.create_task(self._heartbeat(progress, info.heartbeat_timeout))
        began = time.monotonic()
        start = _AttemptStart(self._sessions, records, info, RECORD_START_AFTER)
        mask: Masker | None = None
        try:
            secrets = await self._secrets(step_input, secret_references(spec))
            if secrets:
                ctx.secrets = secrets
                mask = progress.mask = Masker(secrets.values())
            result = await executor(ctx, spec, self._services)
        except asyncio.CancelledError:
            activity.logger.info("step attempt cancelled", extra=log_extra)
            metrics.STEP_DURATION.labels(step.type, "cancelled").observe(time.monotonic() - began)
            await start.settle()
            raise
        except Exception as exc:
            # The latest progress reaches the next attempt even when it came just before
            # the failure (a checkpoint, a polling step's state).
            activity.heartbeat(progress.latest())
            metrics.STEP_DURATION.labels(step.type, "failed").observe(time.monotonic() - began)
            failure = exc if mask is None else _masked_failure(exc, mask)
            await self._record_failed_attempt(records, info.attempt, failure, await start.settle())
            if failure is not exc:
                raise failure from None
            if isinstance(exc, ApplicationError):
                raise
            raise step_failure(exc) from exc
        finally:
            heartbeats.cancel()
        metrics.STEP_DURATION.labels(step.type, "succeeded").observe(time.monotonic() - began)
        if mask is not None:
            result = result.model_copy(
                update={"outputs": mask(result.outputs), "details": mask(result.details)}
            )
        started = await start.settle()
        result = await records.succeeded(result, info, started)
        activity.logger.info("step attempt succeeded", extra=log_extra)
        return result

    async def _code_package(self, step_input: StepInput) -> PackagedCode | None:
        """The code package of the step's workflow version (None: installed code only)."""
        code = await outlasting_outage(
            lambda: self._code.for_version(step_input.workflow_id, step_input.version),
            heartbeat=activity.heartbeat,
        )
        if code is not None and not self._policy.code_packages:
            raise ApplicationError(
                f"version {step_input.version} of {step_input.workflow_id!r} runs a code "
                "package, and this worker does not run code packages "
                "(MAESTRO_WORKER__CODE_PACKAGES=false)",
                type="CodePackagesNotAllowed",
                non_retryable=True,
            )
        return code

    async def _step_succeeded(
        self,
        step_input: StepInput,
        result: StepResult,
        info: activity.Info,
        started: tuple[str, datetime] | None,
    ) -> StepResult:
        """Record a DAG step's success (with the run's end when it is the last step), or hand
        it to the workflow when the database is away."""
        step = step_input.step
        log_extra = {"run_id": step_input.run_id, "step_id": step.id, "attempt": info.attempt}
        emitted = emitted_signals(step_input, result)
        success = StepSuccess(
            run_id=step_input.run_id,
            workflow_id=step_input.workflow_id,
            step_id=step.id,
            attempt=info.attempt,
            outputs=result.outputs,
            details=result.details,
            temporal_run_id=_workflow_run_id(info),
            started_at=started[1] if started else None,
            emits=[e.model_dump() for e in emitted],
        )
        if step_input.finish is not None and not emitted:
            # The run's last step: its success and the run's end in one transaction.
            finish = step_input.finish
            if result.outputs:
                finish = finish.model_copy(
                    update={"outputs": {**finish.outputs, step.id: result.outputs}}
                )
            written = functools.partial(self._write_success, success, [])
            if await self._end_run_with_step(finish, _workflow_run_id(info), written):
                activity.logger.info("step attempt succeeded", extra=log_extra)
                return result.model_copy(update={"run_recorded": True})
        try:
            await self._record_success(success, emitted)
        except Exception as exc:  # noqa: BLE001 - never the step's failure (see StepResult)
            logger.warning(
                "recording a step's success failed; the workflow records it",
                extra={**log_extra, "error": str(exc)},
            )
            return result.model_copy(update={"unrecorded": success})
        return result

    async def _write_success(
        self, success: StepSuccess, emitted: list[SignalIn], session: AsyncSession
    ) -> Any:
        """In the caller's transaction: the step's success and the signals it emits."""
        started = (success.temporal_run_id, success.started_at) if success.started_at else None
        await runs_db.mark_step_succeeded(
            session,
            success.run_id,
            success.step_id,
            success.attempt,
            success.outputs,
            success.details,
            started=started,
        )
        if not emitted:
            return None
        producer = Producer(
            kind="step",
            workflow_id=success.workflow_id,
            run_id=success.run_id,
            step_id=success.step_id,
        )
        return await self._bus.publish_in(session, emitted, producer, lookup=False)

    async def _record_success(self, success: StepSuccess, emitted: list[SignalIn]) -> None:
        # One statement unless the step emits signals: then one transaction for both.
        writing = self._sessions.begin() if emitted else autocommit(self._sessions)
        async with writing as session:
            pending = await self._write_success(success, emitted, session)
        if pending is not None:
            await self._bus.after_commit(pending)

    @activity.defn(name=RECORD_SUCCESS_ACTIVITY)
    async def record_step_success(self, record: RecordSuccessesInput) -> None:
        """Record steps' successes that their attempts could not record (the database was
        away); idempotent, so the workflow retries it until the database is back."""
        for success in record.successes:
            emitted = [SignalIn.model_validate(e) for e in success.emits]
            await _while_database_away(functools.partial(self._record_success, success, emitted))

    async def _recorded_success(self, step_input: StepInput, progress: Any) -> StepResult | None:
        """On a retry: the success an earlier attempt recorded if its result never reached
        Temporal (it died or Temporal was away), so the step's code does not run again. Waits
        for an unreachable database, heartbeating, rather than failing the attempt."""
        key = (step_input.run_id, step_input.step.id)

        async def read() -> tuple[StepRun | None, Run | None]:
            async with self._sessions() as session:
                return await session.get(StepRun, key), await session.get(Run, key[0])

        row, run = await outlasting_outage(read, heartbeat=lambda: activity.heartbeat(progress))
        if row is None or row.status != StepStatus.succeeded:
            return None
        ended = run is not None and run.status == RunStatus.succeeded
        return StepResult(
            outputs=row.outputs or {},
            details=row.details or {},
            run_recorded=ended and step_input.finish is not None,
        )

    async def _secrets(
        self, step_input: StepInput, references: list[tuple[Any, str]]
    ) -> dict[str, str]:
        """The values of the secrets a step names, read now (a new value takes effect on the
        next attempt); a missing or foreign secret fails the step for good."""
        if not references:
            return {}
        names = [name for _, name in references]

        async def read() -> dict[str, str]:
            async with self._sessions() as session:
                return await resolve_secrets(
                    session, self._secret_box, step_input.workflow_id, names
                )

        try:
            return await outlasting_outage(read)
        except (NotFound, Forbidden, ConfigurationError) as exc:
            raise ApplicationError(
                f"step {step_input.step.id!r} cannot have its secrets: {exc.message}",
                type="SecretUnavailable",
                non_retryable=True,
            ) from None

    async def _record_failed_attempt(
        self,
        records: _Records,
        attempt: int,
        exc: BaseException,
        started: tuple[str, datetime] | None,
    ) -> None:
        with contextlib.suppress(Exception):  # the attempt's own failure is what matters
            async with self._sessions.begin() as session:
                if started is not None:
                    await records.started(session, attempt, *started)
                await records.attempt_failed(session, attempt, str(exc)[:4000], _details(exc))

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

        async def write() -> None:
            async with self._sessions.begin() as session:
                await runs_db.record_step_states(session, record.run_id, record.steps)

        await _while_database_away(write)

    @activity.defn(name=REGISTER_WAITS_ACTIVITY)
    async def register_waits(self, request: RegisterWaitsInput) -> RegisterWaitsResult:
        """Record a step's signal waits; returns those already satisfied."""
        return await self._bus.register_waits(request)

    @activity.defn(name=FINISH_RUN_ACTIVITY)
    async def finish_run(self, finish: FinishRunInput) -> None:
        """Record the run's end (through maestro.ends): its status, outputs and every step's
        final state (with the successes their attempts could not record), the next queued
        runs' admission, its completion signal."""
        temporal_run_id = _workflow_run_id(activity.info())
        also = None
        if finish.successes:

            async def also(session: AsyncSession) -> None:
                for success in finish.successes:
                    await self._write_success(success, [], session)

        await _while_database_away(lambda: self._ends.finish(finish, temporal_run_id, also))
        # No log line here: the workflow logs "run ended" with the same fields.

    async def _end_run_with_step(
        self,
        finish: FinishRunInput,
        temporal_run_id: str,
        step_succeeded: Callable[[AsyncSession], Awaitable[None]],
    ) -> bool:
        """Record the last step's success with the run's end. False when that could not be
        done: the step's success is then written alone (the caller's usual path) and the
        workflow's finish_run records the end, as for any run."""
        try:
            await self._ends.finish(finish, temporal_run_id, step_succeeded)
        except Exception as exc:  # noqa: BLE001 - the usual path follows
            logger.warning(
                "recording the run's end with its last step failed; the workflow will",
                extra={"run_id": finish.run_id, "error": str(exc)},
            )
            return False
        return True


class ScheduleActivities:
    """The activity behind TimedRunWorkflow."""

    def __init__(self, schedules: Schedules) -> None:
        self._schedules = schedules

    @activity.defn(name=ADMIT_FIRE_ACTIVITY)
    async def admit_fire(self, request: AdmitFireInput) -> FireAdmission:
        """Create the run of one scheduled time (once); its input if this execution carries it."""
        return await self._schedules.admit_fire(request)
