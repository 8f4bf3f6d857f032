"""What RunWorkflow, the composite steps' workflows and local runs share: which steps are ready,
recording and step activity options."""

from __future__ import annotations

import asyncio
from collections.abc import (
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from datetime import timedelta
from enum import StrEnum
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import CancelledError, FailureError

with workflow.unsafe.imports_passed_through():
    from maestro.definitions import Step
    from maestro.expressions import RUN_ROOTS, ExpressionError, evaluate
    from maestro.runtime import (
        DEFAULT_HEARTBEAT_TIMEOUT,
        DEFAULT_STEP_TIMEOUT,
        RunStatus,
        StepStatus,
        recording_queue,
    )

# Recording must outlive a database restart; it is idempotent, so it retries without limit.
RECORD_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=5)
)
# The quick tries of a local recording before it becomes a regular activity (see _record).
_LOCAL_RECORD_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=0.5),
    maximum_interval=timedelta(seconds=1),
    maximum_attempts=3,
)
# Since this patch, recording (finish_run, record_steps) runs as local activities: in the
# workflow task that decided it, with no activity task or extra workflow task on the server.
# Runs started before it replay their recorded (regular) activities. Runs whose input says
# `local_recording` (all that the current code starts) record locally without asking.
LOCAL_RECORDING_PATCH = "local-recording"
# Since this patch, a run's successes still unrecorded at its end (and emitting no signals) are
# written by finish_run with the end, not by one more record_step_success before it.
FOLD_SUCCESSES_PATCH = "fold-successes-into-end"


class Decision(StrEnum):
    """What happens to a pending step whose turn came."""

    start = "start"  # its dependencies let it run and its `when` holds (or it has none)
    skip = "skip"  # an upstream step blocks it, or its `when` is false
    fail = "fail"  # its `when` cannot be evaluated
    skip_manually = "skip_manually"  # an operator skipped it


def step_decisions(
    order: Sequence[str],
    steps: Mapping[str, Step],
    status: Callable[[str], StepStatus],
    context: Callable[[], dict[str, Any]],
    roots: frozenset[str] = RUN_ROOTS,
    skipped: Collection[str] = (),
) -> Iterator[tuple[Step, Decision, str | None]]:
    """What happens to each pending step whose dependencies have all ended, or that an
    operator skipped (`skipped`), in `order` (with why, unless it starts); pass after pass
    while steps end in them: a step skipped or failed in one pass can release or block others
    in the next. The caller sets each step's status before taking the next one."""
    progressed = True
    while progressed:
        progressed = False
        for step_id in order:
            if status(step_id) is not StepStatus.pending:
                continue
            step = steps[step_id]
            deps = [(d, status(d)) for d in step.depends_on]
            blocked = next(
                (d for d, s in deps if s.is_terminal and not s.lets_downstream_run), None
            )
            if step_id in skipped:
                yield step, Decision.skip_manually, "skipped by an operator"
            elif blocked is not None:
                yield step, Decision.skip, f"upstream step {blocked} is {status(blocked).value}"
            elif not all(s.lets_downstream_run for _, s in deps):
                continue
            elif step.when is None:
                yield step, Decision.start, None
            else:
                try:
                    go = when_holds(step, context(), roots)
                except ExpressionError as exc:
                    yield step, Decision.fail, f"expression error: {exc}"
                else:
                    if go:
                        yield step, Decision.start, None
                    else:
                        yield step, Decision.skip, f"condition is false: {step.when}"
            if status(step_id).is_terminal:
                progressed = True


async def carry_steps(
    running: dict[str, asyncio.Task[Any]],
    schedule: Callable[[dict[str, asyncio.Task[Any]]], None],
    settle: Callable[[str, asyncio.Task[Any]], None],
    wait: Callable[..., Awaitable[Any]] = workflow.wait,
) -> None:
    """Start what `schedule` starts and `settle` each step task as it ends, until nothing runs.
    On a failure or cancellation, cancel what still runs (left in `running`), wait for it and
    raise. `wait`: workflow.wait in workflow code, asyncio.wait outside."""
    try:
        while True:
            schedule(running)
            if not running:
                return
            done, _ = await wait(list(running.values()), return_when=asyncio.FIRST_COMPLETED)
            for step_id, task in list(running.items()):
                if task in done:
                    del running[step_id]
                    settle(step_id, task)
    except BaseException:
        await cancel_all(running.values(), wait)
        raise


async def cancel_all(
    tasks: Collection[asyncio.Task[Any]], wait: Callable[..., Awaitable[Any]] = workflow.wait
) -> None:
    """Cancel the tasks and wait until they all ended."""
    for task in tasks:
        task.cancel()
    if tasks:
        await wait(list(tasks))


def run_end(steps: Iterable[Any]) -> tuple[RunStatus, str | None]:
    """How a run whose steps (with `step_id`, `status`, `error`) all ended ends: failed if one
    failed or timed out, saying which and why."""
    failed = [s for s in steps if s.status in (StepStatus.failed, StepStatus.timed_out)]
    if not failed:
        return RunStatus.succeeded, None
    return RunStatus.failed, "; ".join(f"step {s.step_id} {s.status}: {s.error}" for s in failed)


def when_holds(step: Step, context: dict[str, Any], roots: frozenset[str] = RUN_ROOTS) -> bool:
    """Whether the step's `when` holds (ExpressionError if it fails or is not a boolean)."""
    assert step.when is not None
    go = evaluate(step.when, context, roots)
    if not isinstance(go, bool):
        raise ExpressionError(f"`when` must be true or false, got {go!r}")
    return go


def step_activity_options(step: Step) -> dict[str, Any]:
    """How a step's attempts run as an activity: its queue, timeouts and retry policy."""
    retry = step.retry
    return {
        "task_queue": step.task_queue,
        "start_to_close_timeout": step.timeout or DEFAULT_STEP_TIMEOUT,
        "heartbeat_timeout": step.heartbeat_timeout or DEFAULT_HEARTBEAT_TIMEOUT,
        "retry_policy": RetryPolicy(
            # A polling http step fails an attempt per unfinished poll and counts its own
            # failures against max_attempts (workers/executors/http.py).
            maximum_attempts=0 if _polls(step) else retry.max_attempts,
            initial_interval=retry.initial_backoff,
            maximum_interval=retry.maximum_backoff,
            backoff_coefficient=retry.backoff_coefficient,
            non_retryable_error_types=retry.non_retryable_error_types or None,
        ),
        "cancellation_type": workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
    }


def _polls(step: Step) -> bool:
    return step.type == "http" and bool(step.params.get("poll"))


async def record(local: bool, activity: str, arg: Any) -> None:
    """Run an idempotent recording activity: local when the input says so or since
    LOCAL_RECORDING_PATCH, else regular (a run started before the patch). A local attempt
    holds the worker's workflow-task slot while it retries, so after a few quick tries (the
    database is away) it becomes a regular activity on the recording queue, which waits for
    the database inside one heartbeating attempt: no retry for Temporal to schedule every few
    seconds per waiting run, and it is done within a second of the database's return."""
    timeout = timedelta(seconds=30)
    if not (local or workflow.patched(LOCAL_RECORDING_PATCH)):
        await workflow.execute_activity(
            activity, arg, start_to_close_timeout=timeout, retry_policy=RECORD_RETRY
        )
        return
    try:
        await workflow.execute_local_activity(
            activity, arg, start_to_close_timeout=timeout, retry_policy=_LOCAL_RECORD_RETRY
        )
        return
    except CancelledError:
        raise
    except FailureError:
        # A local activity's failure arrives as its cause (an ApplicationError), not wrapped
        # in an ActivityError as a regular activity's is.
        workflow.logger.warning("recording waits for the database", extra={"activity": activity})
    await workflow.execute_activity(
        activity,
        arg,
        task_queue=recording_queue(workflow.info().task_queue),
        start_to_close_timeout=timedelta(hours=1),
        heartbeat_timeout=timedelta(seconds=60),
        retry_policy=RECORD_RETRY,
    )
