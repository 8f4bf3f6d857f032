"""RunWorkflow on the time-skipping test server, with real activities against PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select
from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowFailureError, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, Worker

from maestro.context import StepContext
from maestro.db import runs as runs_db
from maestro.db import workflows as workflows_db
from maestro.db.tables import Run, Signal, StepRun
from maestro.definitions import parse_definition, resolve_run_params
from maestro.runs import RunsService
from maestro.runtime import (
    RUN_STEP_ACTIVITY,
    RUN_WORKFLOW,
    TIMED_RUN_WORKFLOW,
    FireInput,
    RunInput,
    RunState,
    StepInput,
    StepResult,
    temporal_workflow_id,
)
from maestro.schedules import time_triggers
from maestro.settings import TemporalSettings
from maestro.signals import SignalBus
from tests.conftest import TEST_WORKER, WORKFLOW_TASK_QUEUE
from workers.activities import StepActivities
from workers.schedules import TimedRunWorkflow
from workers.workflow import RunWorkflow

TASK_QUEUE = WORKFLOW_TASK_QUEUE
HISTORIES = Path(__file__).parent / "histories"  # recorded by earlier versions of the code


async def run(
    env: WorkflowEnvironment,
    sessions,
    body: dict,
    params: dict | None = None,
    *,
    local_recording: bool = True,
) -> tuple[RunState, dict[str, dict], str]:
    """Store the definition, create the run row, execute RunWorkflow and return its result,
    the step rows from PostgreSQL, and the Temporal id. `local_recording=False` is the input
    that code before that field wrote."""
    body = {"id": f"wf-{uuid.uuid4().hex[:8]}", **body}
    definition = parse_definition(body)
    async with sessions.begin() as session:
        workflow, version, _ = await workflows_db.push_version(session, definition)
        workflow.run_counter += 1
        resolved = resolve_run_params(definition, params or {})
        run_row = Run(
            run_id=str(uuid.uuid4()),
            workflow_id=definition.id,
            version=version.version,
            run_number=workflow.run_counter,
            status="queued",
            params=resolved,
            cause={"kind": "manual"},
            temporal_workflow_id=temporal_workflow_id(definition.id, workflow.run_counter),
        )
        session.add(run_row)
    run_input = RunInput(
        run_id=run_row.run_id,
        workflow_id=definition.id,
        version=version.version,
        run_number=run_row.run_number,
        params=resolved,
        definition=definition,
        local_recording=local_recording,
    )
    try:
        result = await env.client.execute_workflow(
            RUN_WORKFLOW,
            run_input,
            id=run_row.temporal_workflow_id,
            task_queue=TASK_QUEUE,
            result_type=RunState,
        )
    except WorkflowFailureError as exc:
        # A run that does not succeed fails its Temporal workflow, carrying the state.
        assert isinstance(exc.cause, ApplicationError)
        assert exc.cause.type.startswith("Run") and exc.cause.non_retryable
        result = RunState.model_validate(exc.cause.details[0])
        assert result.status != "succeeded"
    async with sessions.begin() as session:
        stored = await runs_db.get_run(session, run_row.run_id)
        assert stored.status == result.status
        rows = {r.step_id: r for r in await runs_db.list_steps(session, run_row.run_id)}
    return result, rows, run_row.temporal_workflow_id


def statuses(result: RunState) -> dict[str, str]:
    return {s.step_id: s.status.value for s in result.steps}


def py(step_id: str, function: str, *, depends_on=(), **extra) -> dict:
    args = extra.pop("args", {})
    return {
        "id": step_id,
        "type": "python",
        "depends_on": list(depends_on),
        "params": {"entrypoint": f"tests.steps:{function}", "args": args},
        "retry": extra.pop("retry", {"max_attempts": 1}),
        **extra,
    }


async def test_parallel_branches_overlap_and_join(env, sessions):
    result, rows, _ = await run(
        env,
        sessions,
        {
            "steps": [
                {"id": "start", "type": "noop"},
                {"id": "left", "type": "sleep", "params": {"seconds": 1}, "depends_on": ["start"]},
                {"id": "right", "type": "sleep", "params": {"seconds": 1}, "depends_on": ["start"]},
                py("join", "echo", depends_on=["left", "right"]),
            ]
        },
    )
    assert result.status == "succeeded"
    assert set(statuses(result).values()) == {"succeeded"}
    left, right = rows["left"], rows["right"]
    # Both branches ran at the same time: each started before the other ended.
    assert left.started_at < right.ended_at and right.started_at < left.ended_at
    assert rows["join"].started_at >= max(left.ended_at, right.ended_at)
    assert set(rows["join"].outputs["upstream"]) == {"left", "right"}


async def test_when_false_skips_step_and_unreachable_downstream(env, sessions):
    body = {
        "params": {"mode": {"type": "string", "default": "fast"}},
        "steps": [
            {"id": "a", "type": "noop", "params": {"outputs": {"n": 2}}},
            {
                "id": "slow_path",
                "type": "noop",
                "depends_on": ["a"],
                "when": "params.mode == 'slow'",
            },
            {"id": "after_slow", "type": "noop", "depends_on": ["slow_path"]},
            {
                "id": "fast_path",
                "type": "noop",
                "depends_on": ["a"],
                "when": "steps.a.outputs.n > 1",
            },
        ],
    }
    result, rows, _ = await run(env, sessions, body)
    assert result.status == "succeeded"
    assert statuses(result) == {
        "a": "succeeded",
        "slow_path": "skipped",
        "after_slow": "skipped",
        "fast_path": "succeeded",
    }
    assert rows["slow_path"].status == "skipped"
    assert "condition is false" in rows["slow_path"].error
    assert rows["after_slow"].status == "skipped"

    result, _, _ = await run(env, sessions, body, {"mode": "slow"})
    assert statuses(result)["after_slow"] == "succeeded"


async def test_param_expressions_are_evaluated_at_step_start(env, sessions):
    result, rows, _ = await run(
        env,
        sessions,
        {
            "params": {"lr": {"type": "number", "default": 0.1}},
            "steps": [
                {"id": "a", "type": "noop", "params": {"outputs": {"epochs": 3}}},
                py(
                    "b",
                    "echo",
                    depends_on=["a"],
                    args={
                        "scaled": {"expr": "params.lr * 10.0"},
                        "epochs": {"expr": "steps.a.outputs.epochs + 1"},
                        "label": {"expr": "'run-' + string(run.number)"},
                    },
                ),
            ],
        },
    )
    assert result.status == "succeeded"
    assert rows["b"].outputs["args"] == {"scaled": 1.0, "epochs": 4, "label": "run-1"}


async def test_retries_with_backoff_until_success(env, sessions):
    result, rows, temporal_id = await run(
        env,
        sessions,
        {
            "steps": [
                py(
                    "flaky",
                    "flaky",
                    args={"succeed_on": 3},
                    retry={"max_attempts": 5, "initial_backoff": "2s", "backoff_coefficient": 3},
                ),
            ]
        },
    )
    assert result.status == "succeeded"
    assert rows["flaky"].attempt == 3
    assert rows["flaky"].outputs == {"attempt": 3}
    history = await env.client.get_workflow_handle(temporal_id).fetch_history()
    started = [e for e in history.events if e.HasField("activity_task_started_event_attributes")]
    run_steps = [e for e in started if e.activity_task_started_event_attributes.attempt == 3]
    assert run_steps, "the third attempt is recorded in Temporal's history"
    scheduled = next(
        e
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
        and e.activity_task_scheduled_event_attributes.activity_type.name == "run_step"
    )
    policy = scheduled.activity_task_scheduled_event_attributes.retry_policy
    assert policy.maximum_attempts == 5
    assert policy.initial_interval.seconds == 2
    assert policy.backoff_coefficient == 3


async def test_retries_exhausted_fail_the_step_and_the_run(env, sessions):
    result, rows, _ = await run(
        env,
        sessions,
        {
            "steps": [
                py(
                    "flaky",
                    "flaky",
                    args={"succeed_on": 10},
                    retry={"max_attempts": 2, "initial_backoff": "1s"},
                ),
            ]
        },
    )
    assert result.status == "failed"
    assert rows["flaky"].status == "failed"
    assert rows["flaky"].attempt == 2
    assert "attempt 2 fails on purpose" in rows["flaky"].error


async def test_non_retryable_error_type_is_not_retried(env, sessions):
    result, rows, _ = await run(
        env,
        sessions,
        {
            "steps": [
                py(
                    "bad",
                    "fail",
                    retry={"max_attempts": 5, "non_retryable_error_types": ["ValueError"]},
                ),
            ]
        },
    )
    assert result.status == "failed"
    assert rows["bad"].attempt == 1


async def test_fail_after_running_lets_independent_branches_finish(env, sessions):
    result, rows, _ = await run(
        env,
        sessions,
        {
            "steps": [
                py("broken", "fail"),
                {"id": "after_broken", "type": "noop", "depends_on": ["broken"]},
                {"id": "independent", "type": "sleep", "params": {"seconds": 1}},
            ]
        },
    )
    assert result.status == "failed"
    assert statuses(result) == {
        "broken": "failed",
        "after_broken": "skipped",
        "independent": "succeeded",
    }
    assert "failing on purpose" in result.error
    assert rows["after_broken"].error == "upstream step broken is failed"


async def test_fail_immediately_stops_running_steps(env, sessions):
    result, rows, _ = await run(
        env,
        sessions,
        {
            "steps": [
                {"id": "long", "type": "sleep", "params": {"seconds": 30}},
                {**py("broken", "fail"), "failure_mode": "fail_immediately"},
                {"id": "after_long", "type": "noop", "depends_on": ["long"]},
            ]
        },
    )
    assert result.status == "failed"
    assert statuses(result) == {"long": "stopped", "broken": "failed", "after_long": "stopped"}
    assert rows["long"].status == "stopped"
    assert "cancelled" in rows["long"].error


async def test_ignore_failure_completes_with_error_and_continues(env, sessions):
    result, rows, _ = await run(
        env,
        sessions,
        {
            "steps": [
                {**py("optional", "fail"), "failure_mode": "ignore_failure"},
                {"id": "next", "type": "noop", "depends_on": ["optional"]},
            ]
        },
    )
    assert result.status == "succeeded"
    assert statuses(result) == {"optional": "completed_with_error", "next": "succeeded"}
    assert "failing on purpose" in rows["optional"].error


async def test_step_timeout_marks_step_timed_out(env, sessions):
    result, rows, _ = await run(
        env,
        sessions,
        {
            "steps": [
                {
                    "id": "slow",
                    "type": "sleep",
                    "params": {"seconds": 30},
                    "timeout": "1s",
                    "retry": {"max_attempts": 1},
                },
            ]
        },
    )
    assert result.status == "failed"
    assert rows["slow"].status == "timed_out"
    assert "timed out" in rows["slow"].error


async def test_run_timeout_ends_run_as_timed_out(env, sessions):
    result, rows, _ = await run(
        env,
        sessions,
        {
            "timeout": "2s",
            "steps": [
                {"id": "slow", "type": "sleep", "params": {"seconds": 60}},
                {"id": "later", "type": "noop", "depends_on": ["slow"]},
            ],
        },
    )
    assert result.status == "timed_out"
    assert statuses(result) == {"slow": "stopped", "later": "stopped"}
    assert rows["slow"].status == "stopped"


async def test_expression_error_at_runtime_fails_the_step(env, sessions):
    result, rows, _ = await run(
        env,
        sessions,
        {
            "steps": [
                {
                    "id": "a",
                    "type": "noop",
                    "params": {"outputs": {"x": {"expr": "steps.nope.outputs.y"}}},
                },
            ]
        },
    )
    assert result.status == "failed"
    assert "expression error" in rows["a"].error


async def test_history_replays_deterministically(env, sessions):
    _, _, temporal_id = await run(
        env,
        sessions,
        {
            "steps": [
                {"id": "a", "type": "noop"},
                {"id": "b", "type": "noop", "depends_on": ["a"], "when": "true"},
                {"id": "c", "type": "noop", "depends_on": ["a"], "when": "false"},
            ]
        },
    )
    history: WorkflowHistory = await env.client.get_workflow_handle(temporal_id).fetch_history()
    await replay(RunWorkflow, history)
    # Recording is local: the server scheduled activity tasks for the two steps only, and c's
    # skip is a marker in the workflow task that decided it. The run's end rode with b's
    # success (b was the last step), so there is no finish_run marker.
    types = [e.event_type for e in history.events]
    assert types.count(EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED) == 2
    assert types.count(EventType.EVENT_TYPE_MARKER_RECORDED) == 1
    # The input asks for local recording: no patch marker, so no TemporalChangeVersion upsert
    # (a history event and a visibility write per run).
    assert marker_names(history) == {"core_local_activity"}
    assert "TemporalChangeVersion" not in upserted(history)


async def test_a_run_input_from_earlier_code_records_locally_through_the_patch(env, sessions):
    """An input without `local_recording` (written by an API before that field) still records
    locally, deciding by LOCAL_RECORDING_PATCH as it did then; its history replays."""
    steps = [
        {"id": "a", "type": "noop"},
        {"id": "b", "type": "noop", "depends_on": ["a"], "when": "false"},  # a finish_run
    ]
    result, rows, temporal_id = await run(env, sessions, {"steps": steps}, local_recording=False)
    assert result.status == "succeeded" and rows["a"].status == "succeeded"
    assert rows["b"].status == "skipped"
    history = await env.client.get_workflow_handle(temporal_id).fetch_history()
    assert marker_names(history) == {"core_local_activity", "core_patch"}
    assert "TemporalChangeVersion" in upserted(history)  # what the field saves
    types = [e.event_type for e in history.events]
    assert types.count(EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED) == 1
    await replay(RunWorkflow, history)


async def completion_signals(sessions, run_id: str) -> list[str]:
    async with sessions() as session:
        query = select(Signal.name).where(Signal.producer_run_id == run_id)
        return list((await session.execute(query)).scalars())


async def test_the_last_step_records_the_run_end_with_its_own(env, sessions):
    """The last step's activity records the run's end with its success and publishes the
    completion signal: the workflow needs no finish_run, and the outcome is what it would
    have written."""
    result, rows, temporal_id = await run(
        env,
        sessions,
        {
            "steps": [
                {"id": "first", "type": "noop", "params": {"outputs": {"n": 1}}},
                {
                    "id": "last",
                    "type": "noop",
                    "depends_on": ["first"],
                    "params": {"outputs": {"m": 2}},
                },
            ]
        },
    )
    assert statuses(result) == {"first": "succeeded", "last": "succeeded"}
    run_id = rows["last"].run_id
    async with sessions() as session:
        stored = await runs_db.get_run(session, run_id)
    assert stored.status == "succeeded" and stored.error is None
    assert stored.outputs == {"first": {"n": 1}, "last": {"m": 2}}
    assert stored.started_at <= stored.ended_at
    assert rows["last"].status == "succeeded" and rows["last"].ended_at is not None
    assert await completion_signals(sessions, run_id) == ["maestro.run.succeeded"]
    history = await env.client.get_workflow_handle(temporal_id).fetch_history()
    assert marker_names(history) == set()  # no local activity: no finish_run
    await replay(RunWorkflow, history)


async def test_a_run_end_recorded_by_the_last_step_outlives_a_timeout_that_races_it(
    env, sessions, tmp_path
):
    """The run's timeout fires while its last step's attempt is still going (this attempt
    never heartbeats, so the cancellation does not reach it); the attempt then succeeds and
    records the run's end. The run stays `succeeded`, with one completion signal: the
    workflow honours what was recorded instead of writing `timed_out` over it."""
    runs = RunsService(
        sessions, env.client, TemporalSettings(task_queue=TASK_QUEUE), search_attributes=False
    )
    real = StepActivities(
        sessions, tmp_path, SignalBus(sessions, runs, env.client), policy=TEST_WORKER
    )

    @activity.defn(name=RUN_STEP_ACTIVITY)
    async def late_run_step(step_input: StepInput) -> StepResult:
        await asyncio.sleep(2.5)  # past the run's timeout of 1 s
        return await real.run_step(step_input)

    queue = f"late-{uuid.uuid4().hex[:8]}"
    async with Worker(env.client, task_queue=queue, activities=[late_run_step]):
        with env.auto_time_skipping_disabled():
            result, rows, temporal_id = await run(
                env,
                sessions,
                {"timeout": "1s", "steps": [{"id": "only", "type": "noop", "task_queue": queue}]},
            )
    assert result.status == "succeeded" and statuses(result) == {"only": "succeeded"}
    assert rows["only"].status == "succeeded"
    assert await completion_signals(sessions, rows["only"].run_id) == ["maestro.run.succeeded"]
    history = await env.client.get_workflow_handle(temporal_id).fetch_history()
    types = [e.event_type for e in history.events]
    assert EventType.EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED in types  # the race was real
    assert EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED in types
    assert marker_names(history) == set()


async def test_runs_of_one_workflow_ending_together_each_record_their_end_with_their_step(
    env, sessions
):
    """Twenty runs of one workflow end at the same moment: each last step records its run's
    end (no deadlock between them on the workflow's row, so no fallback to finish_run)."""
    definition = parse_definition(
        {"id": f"wf-{uuid.uuid4().hex[:8]}", "steps": [{"id": "only", "type": "noop"}]}
    )
    async with sessions.begin() as session:
        workflow, version, _ = await workflows_db.push_version(session, definition)
        rows = []
        for _ in range(20):
            workflow.run_counter += 1
            rows.append(
                Run(
                    run_id=str(uuid.uuid4()),
                    workflow_id=definition.id,
                    version=version.version,
                    run_number=workflow.run_counter,
                    status="queued",
                    params={},
                    cause={"kind": "manual"},
                    temporal_workflow_id=temporal_workflow_id(definition.id, workflow.run_counter),
                )
            )
        session.add_all(rows)
    # Real time: skipped time would expire the attempts' heartbeat timeouts while they queue.
    with env.auto_time_skipping_disabled():
        results = await _gather_runs(env, definition, version.version, rows)
    assert {r.status for r in results} == {"succeeded"}
    assert {r.status for r in await runs_of(sessions, definition.id)} == {"succeeded"}
    for r in rows:
        history = await env.client.get_workflow_handle(r.temporal_workflow_id).fetch_history()
        assert marker_names(history) == set(), f"run {r.run_number} fell back to finish_run"


async def _gather_runs(env, definition, version: int, rows: list[Run]) -> list[RunState]:
    return await asyncio.gather(
        *(
            env.client.execute_workflow(
                RUN_WORKFLOW,
                RunInput(
                    run_id=r.run_id,
                    workflow_id=definition.id,
                    version=version,
                    run_number=r.run_number,
                    params={},
                    definition=definition,
                    local_recording=True,
                ),
                id=r.temporal_workflow_id,
                task_queue=TASK_QUEUE,
                result_type=RunState,
            )
            for r in rows
        )
    )


@pytest.mark.parametrize("failing", ["recording the end", "publishing the completion"])
async def test_when_the_last_step_cannot_record_the_run_end_the_workflow_does(
    env, sessions, monkeypatch, failing
):
    """A failure while the last step's activity records the run's end (or publishes its
    completion) does not rerun the step: the step's success is written, and the workflow's
    finish_run records the end and publishes the completion, once."""
    calls = 0

    def failing_once(original):
        async def call(*args, **kwargs):
            nonlocal calls
            calls += 1
            if calls == 1:
                raise ConnectionError("the database went away")
            return await original(*args, **kwargs)

        return call

    if failing == "recording the end":
        monkeypatch.setattr(runs_db, "finish_run", failing_once(runs_db.finish_run))
    else:
        monkeypatch.setattr(
            SignalBus, "publish_completion_in", failing_once(SignalBus.publish_completion_in)
        )
    result, rows, temporal_id = await run(
        env, sessions, {"steps": [{"id": "only", "type": "noop", "params": {"outputs": {"k": 1}}}]}
    )
    assert calls == 2  # the activity's try, then finish_run's
    assert result.status == "succeeded"
    only = rows["only"]
    assert only.status == "succeeded" and only.attempt == 1 and only.outputs == {"k": 1}
    async with sessions() as session:
        stored = await runs_db.get_run(session, only.run_id)
    assert stored.status == "succeeded" and stored.outputs == {"only": {"k": 1}}
    assert await completion_signals(sessions, only.run_id) == ["maestro.run.succeeded"]
    history = await env.client.get_workflow_handle(temporal_id).fetch_history()
    assert marker_names(history) == {"core_local_activity"}  # finish_run ran


def upserted(history: WorkflowHistory) -> set[str]:
    """The search attributes the workflow upserted."""
    upserts = [
        e.upsert_workflow_search_attributes_event_attributes.search_attributes
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES
    ]
    return {key for attributes in upserts for key in attributes.indexed_fields}


def marker_names(history: WorkflowHistory) -> set[str]:
    return {
        e.marker_recorded_event_attributes.marker_name
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
    }


async def replay(workflow: type, history: WorkflowHistory) -> None:
    """Replay `history` under the current code of `workflow`; fail with the replay's error."""
    result = await Replayer(
        workflows=[workflow], data_converter=pydantic_data_converter
    ).replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, result.replay_failure


def recorded(
    name: str, workflow_type: str, events: int, end: EventType.ValueType
) -> WorkflowHistory:
    """The history recorded in histories/<name>.json, checked to be the one the test names: a
    whole execution of `workflow_type` with `events` events, closed by `end`."""
    history = WorkflowHistory.from_json(
        name, (HISTORIES / f"{name}.json").read_text(encoding="utf-8")
    )
    started = history.events[0].workflow_execution_started_event_attributes
    assert started.workflow_type.name == workflow_type
    assert len(history.events) == events
    assert history.events[-1].event_type == end
    return history


@pytest.mark.parametrize(
    ("name", "end"),
    [
        ("run_succeeded", EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED),
        ("run_failed", EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED),
    ],
)
async def test_runs_started_before_local_recording_still_replay(name, end):
    """Histories recorded before LOCAL_RECORDING_PATCH (finish_run and record_steps as regular
    activities) replay without nondeterminism under the current code."""
    history = recorded(name, "RunWorkflow", 29, end)
    types = [e.event_type for e in history.events]
    assert EventType.EVENT_TYPE_MARKER_RECORDED not in types  # really the old command order
    await replay(RunWorkflow, history)


async def test_timed_runs_recorded_earlier_still_replay():
    """A TimedRunWorkflow history recorded when it was introduced (MAESTRO_RECORD_HISTORIES=1
    rewrites it) replays under the current code."""
    history = recorded(
        "timed_run", "TimedRunWorkflow", 15, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED
    )
    assert "core_local_activity" in marker_names(history)  # admit_fire ran locally
    await replay(TimedRunWorkflow, history)


async def test_step_start_is_recorded_with_its_end_when_quick_and_at_once_when_slow(env, sessions):
    """A step shorter than RECORD_START_AFTER gets its start written with its end (one
    transaction); a longer one is visible as running while it runs."""
    retry = {"max_attempts": 2, "initial_backoff": "1s"}
    result, rows, _ = await run(
        env,
        sessions,
        {
            "steps": [
                {"id": "quick", "type": "noop"},
                py("flaky", "flaky", args={"succeed_on": 2}, retry=retry, depends_on=["quick"]),
                py("broken", "fail", depends_on=["flaky"]),
            ]
        },
    )
    assert statuses(result) == {"quick": "succeeded", "flaky": "succeeded", "broken": "failed"}
    quick, flaky, broken = rows["quick"], rows["flaky"], rows["broken"]
    assert quick.attempt == 1 and quick.started_at <= quick.ended_at
    assert flaky.attempt == 2 and flaky.started_at <= flaky.ended_at
    assert broken.started_at is not None and "failing on purpose" in broken.error
    async with sessions() as session:
        assert (await runs_db.get_run(session, quick.run_id)).started_at == quick.started_at
    # A start written late (its attempt was cancelled meanwhile) never reopens a finished step.
    async with sessions.begin() as session:
        await runs_db.mark_step_started(session, quick.run_id, "quick", 1, "late", quick.started_at)
    async with sessions() as session:
        rows = {r.step_id: r for r in await runs_db.list_steps(session, quick.run_id)}
    assert rows["quick"].status == "succeeded"

    body = {
        "id": f"wf-{uuid.uuid4().hex[:8]}",
        "steps": [py("slow", "slow", args={"seconds": 2.0})],
    }
    seen_running = False

    async def watch() -> None:
        nonlocal seen_running
        for _ in range(100):
            async with sessions() as session:
                found = await session.execute(
                    select(StepRun.status)
                    .where(StepRun.step_id == "slow")
                    .join(Run, Run.run_id == StepRun.run_id)
                    .where(Run.workflow_id == body["id"])
                )
                if found.scalar_one_or_none() == "running":
                    seen_running = True
                    return
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch())
    result, rows, _ = await run(env, sessions, body)
    await watcher
    assert result.status == "succeeded" and seen_running


async def test_a_timed_run_carries_its_fire_and_ends_stopped_when_cancelled_at_once(env, sessions):
    """TimedRunWorkflow (what schedules start) admits the fire's run and carries it; cancelled
    as soon as it starts, the run it admitted ends `stopped` rather than staying queued."""
    definition = parse_definition(
        {
            "id": f"wf-{uuid.uuid4().hex[:8]}",
            "triggers": [{"cron": "0 0 1 1 *"}],
            "params": {"run_ts": {"type": "string", "default": ""}},
            "steps": [py("go", "slow", args={"seconds": 1.0})],
        }
    )
    async with sessions.begin() as session:
        await workflows_db.push_version(session, definition)
    [ref] = time_triggers(definition.id, definition)
    fire = FireInput(workflow_id=definition.id, trigger_id=ref.trigger_id)

    result = await env.client.execute_workflow(
        TIMED_RUN_WORKFLOW, fire, id=f"{ref.schedule_id}:run-1", task_queue=TASK_QUEUE
    )
    assert result["status"] == "succeeded"
    [carried] = await runs_of(sessions, definition.id)
    assert carried.status == "succeeded"
    assert carried.temporal_workflow_id == f"{ref.schedule_id}:run-1"
    # One workflow per fire: the admission is a marker, the step the only activity task.
    history = await env.client.get_workflow_handle(f"{ref.schedule_id}:run-1").fetch_history()
    types = [e.event_type for e in history.events]
    assert types.count(EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED) == 1
    # admit_fire; the run's end rode with its only step's success (no finish_run)
    assert types.count(EventType.EVENT_TYPE_MARKER_RECORDED) == 1
    assert marker_names(history) == {"core_local_activity"}  # the admitted input needs no patch
    assert "TemporalChangeVersion" not in upserted(history)
    await replay(TimedRunWorkflow, history)
    if os.environ.get("MAESTRO_RECORD_HISTORIES"):
        (HISTORIES / "timed_run.json").write_text(history.to_json(), encoding="utf-8")

    handle = await env.client.start_workflow(
        TIMED_RUN_WORKFLOW, fire, id=f"{ref.schedule_id}:run-2", task_queue=TASK_QUEUE
    )
    await handle.cancel()
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    assert [r.status for r in await runs_of(sessions, definition.id)] == ["succeeded", "stopped"]


async def runs_of(sessions, workflow_id: str) -> list[Run]:
    async with sessions() as session:
        query = select(Run).where(Run.workflow_id == workflow_id).order_by(Run.run_number)
        return list((await session.execute(query)).scalars())


def test_step_directories_are_made_when_a_step_first_asks_for_them(tmp_path):
    run_dir = tmp_path / "runs" / "r1"
    ctx = StepContext(
        run_id="r1",
        workflow_id="w",
        run_number=1,
        step_id="s",
        attempt=1,
        params={},
        args={},
        upstream={},
        _work_dir=run_dir,
        _artifact_dir=run_dir / "s" / "artifacts",
    )
    assert not run_dir.exists()  # a step that writes no files costs no directory
    assert ctx.work_dir == run_dir and run_dir.is_dir()
    assert not (run_dir / "s").exists()
    assert ctx.artifact_dir == run_dir / "s" / "artifacts"
    assert ctx.artifact_dir.is_dir()
