"""Activities: run one step attempt, and record what the workflow decided in PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError

from maestro.context import StepContext
from maestro.db import runs as runs_db
from maestro.runtime import (
    FINISH_RUN_ACTIVITY,
    RECORD_STEPS_ACTIVITY,
    RUN_STEP_ACTIVITY,
    FinishRunInput,
    RecordStepsInput,
    StepInput,
    StepResult,
)
from workers.executors import EXECUTORS

logger = logging.getLogger(__name__)


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


class StepActivities:
    """The activities of RunWorkflow, built with their dependencies."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], runs_dir: Path) -> None:
        self._sessions = sessions
        self._runs_dir = runs_dir

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
        if executor is None:
            raise ApplicationError(
                f"this worker cannot run step type {step.type!r}",
                type="UnknownStepType",
                non_retryable=True,
            )
        async with self._sessions.begin() as session:
            await runs_db.mark_step_started(session, step_input.run_id, step.id, info.attempt)
        work_dir = self._runs_dir / step_input.run_id
        work_dir.mkdir(parents=True, exist_ok=True)
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
            work_dir=work_dir,
            previous_progress=previous,
            _report=progress.report,
        )
        activity.logger.info("step attempt started", extra=log_extra)
        heartbeats = asyncio.create_task(self._heartbeat(progress, info.heartbeat_timeout))
        try:
            result = await executor(ctx, step_input.params)
        except asyncio.CancelledError:
            activity.logger.info("step attempt cancelled", extra=log_extra)
            raise
        except ValidationError as exc:
            await self._record_failed_attempt(step_input, info.attempt, exc)
            raise ApplicationError(
                f"invalid params for a {step.type} step: {exc}",
                type="InvalidStepParams",
                non_retryable=True,
            ) from exc
        except Exception as exc:
            await self._record_failed_attempt(step_input, info.attempt, exc)
            if isinstance(exc, ApplicationError):
                raise
            raise ApplicationError(f"{type(exc).__name__}: {exc}", type=type(exc).__name__) from exc
        finally:
            heartbeats.cancel()
        async with self._sessions.begin() as session:
            await runs_db.mark_step_succeeded(
                session, step_input.run_id, step.id, info.attempt, result.outputs, result.details
            )
        activity.logger.info("step attempt succeeded", extra=log_extra)
        return result

    async def _record_failed_attempt(
        self, step_input: StepInput, attempt: int, exc: BaseException
    ) -> None:
        with contextlib.suppress(Exception):  # the attempt's own failure is what matters
            async with self._sessions.begin() as session:
                await runs_db.mark_attempt_failed(
                    session, step_input.run_id, step_input.step.id, attempt, str(exc)[:4000]
                )

    @staticmethod
    async def _heartbeat(progress: _Progress, timeout: Any) -> None:
        # The worker throttles what reaches the server; beating often keeps cancellation quick.
        interval = 0.5 if timeout is None else max(0.1, min(0.5, timeout.total_seconds() / 4))
        while True:
            activity.heartbeat(progress.latest())
            await asyncio.sleep(interval)

    @activity.defn(name=RECORD_STEPS_ACTIVITY)
    async def record_steps(self, record: RecordStepsInput) -> None:
        """Persist step states that the workflow decided (skipped, failed, stopped, ...)."""
        async with self._sessions.begin() as session:
            await runs_db.record_step_states(session, record.run_id, record.steps)

    @activity.defn(name=FINISH_RUN_ACTIVITY)
    async def finish_run(self, finish: FinishRunInput) -> None:
        """Persist the run's end: status, error, outputs and every step's final state."""
        async with self._sessions.begin() as session:
            await runs_db.finish_run(
                session, finish.run_id, finish.status, finish.error, finish.outputs, finish.steps
            )
        activity.logger.info(
            "run finished", extra={"run_id": finish.run_id, "status": finish.status}
        )
