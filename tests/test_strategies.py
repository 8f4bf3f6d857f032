"""Run strategies for manual, time and signal starts, and the run and step actions."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from maestro.db import runs as runs_db
from maestro.db.tables import Run
from maestro.embedded import free_port, wait_for_port
from maestro.runs import RunsService
from maestro.runtime import Cause
from maestro.schedules import Schedules
from maestro.signals import SignalBus
from maestro.sweeper import Sweeper
from tests.conftest import unique_id, wait_for_run, wait_for_step, wait_for_time_runs
from tests.processes import Processes

pytestmark = pytest.mark.usefixtures("worker")


def sleeper(workflow_id: str, strategy, seconds: float = 1.0, **extra) -> dict:
    return {
        "id": workflow_id,
        "run_strategy": strategy,
        "steps": [{"id": "work", "type": "sleep", "params": {"seconds": seconds}}],
        **extra,
    }


async def push(api, body: dict) -> None:
    response = await api.post("/api/v1/workflows", json=body)
    assert response.status_code in (200, 201), response.text


async def start(api, workflow_id: str, **body) -> dict:
    response = await api.post(f"/api/v1/workflows/{workflow_id}/runs", json=body)
    assert response.status_code == 201, response.text
    return response.json()


async def all_runs(sessions, workflow_id: str) -> list[Run]:
    async with sessions() as session:
        query = select(Run).where(Run.workflow_id == workflow_id).order_by(Run.run_number)
        return list((await session.execute(query)).scalars())


def max_overlap(runs: list[Run]) -> int:
    """The most runs that were running at the same moment, from their recorded times."""
    events = []
    for run in runs:
        if run.started_at and run.ended_at:
            events += [(run.started_at, 1), (run.ended_at, -1)]
    current = peak = 0
    for _, delta in sorted(events, key=lambda e: (e[0], e[1])):
        current += delta
        peak = max(peak, current)
    return peak


async def wait_all_ended(sessions, workflow_id: str, count: int, timeout: float = 120) -> list:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        runs = await all_runs(sessions, workflow_id)
        ended = [r for r in runs if r.status not in ("queued", "running")]
        if len(runs) >= count and len(ended) == len(runs):
            return runs
        assert asyncio.get_running_loop().time() < deadline, [r.status for r in runs]
        await asyncio.sleep(0.3)


async def test_sequential_queues_in_arrival_order_across_sources(api, sessions):
    topic = f"seq.{uuid.uuid4().hex[:8]}"
    wid = unique_id("sequential")
    await push(
        api, sleeper(wid, "sequential", 0.5, triggers=[{"signal": {"all_of": [{"name": topic}]}}])
    )
    first = await start(api, wid)
    second = await start(api, wid)
    signalled = (await api.post("/api/v1/signals", json={"name": topic})).json()["runs"][0]
    third = await start(api, wid)
    queued = (
        await api.get(
            "/api/v1/runs", params={"workflow_id": wid, "status": "queued", "order": "oldest"}
        )
    ).json()["items"]
    assert [r["run_id"] for r in queued][-3:] == [
        second["run_id"],
        signalled["run_id"],
        third["run_id"],
    ]
    runs = await wait_all_ended(sessions, wid, 4)
    assert [r.status for r in runs] == ["succeeded"] * 4
    assert max_overlap(runs) == 1
    starts = [r.started_at for r in runs]
    assert starts == sorted(starts), "runs started in arrival order"
    assert first["status"] == "queued" and runs[0].run_id == first["run_id"]


async def test_parallel_limit_holds_for_50_starts_from_two_apis_and_a_schedule(
    settings, sessions, tmp_path, auth_headers, temporal_client
):
    wid = unique_id("parallel")
    stack = Processes(settings, tmp_path, task_queue="maestro-parallel")
    stack.start("worker")
    ports = [free_port(), free_port()]
    for port in ports:
        stack.start("api", port=port)
    try:
        for port in ports:
            wait_for_port("127.0.0.1", port, timeout=60)
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        async with httpx.AsyncClient(timeout=60, headers=auth_headers) as http:
            response = await http.post(
                f"{urls[0]}/api/v1/workflows",
                json=sleeper(
                    wid,
                    {"kind": "parallel", "max_concurrency": 3},
                    0.5,
                    triggers=[{"every": "1s"}],
                    params={
                        "run_ts": {"type": "string", "default": ""},
                        "run_date": {"type": "string", "default": ""},
                    },
                ),
            )
            assert response.status_code == 201
            codes = await asyncio.gather(
                *[
                    http.post(f"{urls[i % 2]}/api/v1/workflows/{wid}/runs", json={})
                    for i in range(50)
                ]
            )
            assert [c.status_code for c in codes] == [201] * 50
            await wait_for_time_runs(sessions, temporal_client, wid, 1)  # the schedule too
            await http.post(f"{urls[1]}/api/v1/workflows/{wid}/pause")
        runs = await wait_all_ended(sessions, wid, 50, timeout=180)
    finally:
        stack.stop_all()
    assert any(r.cause["kind"] == "time" for r in runs), "the schedule started runs too"
    assert len([r for r in runs if r.cause["kind"] == "manual"]) == 50
    assert {r.status for r in runs} == {"succeeded"}
    assert max_overlap(runs) == 3


async def test_first_only_drops_newcomers_while_one_runs(api, sessions):
    wid = unique_id("first-only")
    await push(api, sleeper(wid, "first_only", 1.0))
    first = await start(api, wid)
    dropped = await start(api, wid)
    assert dropped["status"] == "skipped"
    assert "first_only" in dropped["error"]
    assert (await wait_for_run(api, first["run_id"]))["status"] == "succeeded"
    after = await start(api, wid)
    assert after["status"] == "queued"
    assert (await wait_for_run(api, after["run_id"]))["status"] == "succeeded"


async def test_last_only_stops_the_running_run_and_replaces_waiting_ones(api, sessions):
    wid = unique_id("last-only")
    await push(api, sleeper(wid, "last_only", 30))
    first = await start(api, wid)
    await wait_for_step(api, first["run_id"], "work", "running")
    second = await start(api, wid)
    third = await start(api, wid)
    assert (await wait_for_run(api, first["run_id"], timeout=30))["status"] == "stopped"
    assert (await wait_for_run(api, second["run_id"]))["status"] == "skipped"
    await wait_for_step(api, third["run_id"], "work", "running")
    await api.post(f"/api/v1/runs/{third['run_id']}/stop")
    assert (await wait_for_run(api, third["run_id"]))["status"] == "stopped"


async def test_max_queued_overflow_is_skipped(api):
    wid = unique_id("max-queued")
    await push(api, sleeper(wid, {"kind": "sequential", "max_queued": 1}, 1.0))
    await start(api, wid)
    queued = await start(api, wid)
    overflow = await start(api, wid)
    assert queued["status"] == "queued"
    assert overflow["status"] == "skipped" and "queue is full" in overflow["error"]
    await wait_for_run(api, queued["run_id"])


async def assert_held(api, sessions, run: dict, blocked_by: str) -> None:
    """The run waits behind the failed run `blocked_by`: the strategy did not admit it (a
    failed run's end and the admission of the next runs commit together, so this is final
    until an unblock or a restart), hence nothing launches it."""
    workflow = (await api.get(f"/api/v1/workflows/{run['workflow_id']}")).json()
    assert workflow["blocked_by_run_id"] == blocked_by
    async with sessions() as session:
        stored = await session.get(Run, run["run_id"])
    assert stored.status == "queued"
    assert stored.admitted_at is None and stored.temporal_run_id is None


async def test_strict_sequential_blocks_after_failure_until_unblocked(api, sessions):
    wid = unique_id("strict")
    await push(
        api,
        {
            "id": wid,
            "run_strategy": "strict_sequential",
            "params": {"fail": {"type": "boolean", "default": False}},
            "steps": [
                {
                    "id": "work",
                    "type": "shell",
                    "retry": {"max_attempts": 1},
                    "params": {"command": 'test "$MAESTRO_PARAM_FAIL" = false'},
                }
            ],
        },
    )
    failing = await start(api, wid, params={"fail": True})
    assert (await wait_for_run(api, failing["run_id"]))["status"] == "failed"
    held = await start(api, wid)
    await assert_held(api, sessions, held, blocked_by=failing["run_id"])
    unblocked = await api.post(f"/api/v1/workflows/{wid}/unblock")
    assert [r["run_id"] for r in unblocked.json()] == [held["run_id"]]
    assert (await wait_for_run(api, held["run_id"]))["status"] == "succeeded"
    again = await api.post(f"/api/v1/workflows/{wid}/unblock")
    assert again.status_code == 409

    # Restarting the failed run also releases the queue.
    failing2 = await start(api, wid, params={"fail": True})
    await wait_for_run(api, failing2["run_id"])
    held2 = await start(api, wid)
    restarted = await api.post(
        f"/api/v1/runs/{failing2['run_id']}/restart", json={"from": "beginning"}
    )
    assert restarted.status_code == 201
    assert (await wait_for_run(api, restarted.json()["run_id"]))["status"] == "failed"
    # The restart failed again (same params): it blocks anew, the held run still waits.
    await assert_held(api, sessions, held2, blocked_by=restarted.json()["run_id"])
    await api.post(f"/api/v1/workflows/{wid}/unblock")
    assert (await wait_for_run(api, held2["run_id"]))["status"] == "succeeded"


async def test_restart_from_failed_reuses_succeeded_outputs(api, tmp_path: Path):
    wid = unique_id("restart")
    calls, flag = tmp_path / "calls.txt", tmp_path / "fixed"
    await push(
        api,
        {
            "id": wid,
            "steps": [
                {
                    "id": "prepare",
                    "type": "python",
                    "params": {
                        "entrypoint": "tests.steps:count_calls",
                        "args": {"file": str(calls)},
                    },
                },
                {
                    "id": "train",
                    "type": "shell",
                    "depends_on": ["prepare"],
                    "retry": {"max_attempts": 1},
                    "params": {"command": f"test -f {flag} && echo trained"},
                },
                {
                    "id": "report",
                    "type": "noop",
                    "depends_on": ["train"],
                    "params": {"outputs": {"calls": {"expr": "steps.prepare.outputs.calls"}}},
                },
            ],
        },
    )
    run = await start(api, wid)
    failed = await wait_for_run(api, run["run_id"])
    assert failed["status"] == "failed" and failed["actions"] == ["restart"]
    flag.write_text("ok")
    response = await api.post(f"/api/v1/runs/{run['run_id']}/restart", json={"from": "failed"})
    assert response.status_code == 201
    restarted = await wait_for_run(api, response.json()["run_id"])
    assert restarted["status"] == "succeeded"
    assert restarted["cause"]["detail"]["restart_of"] == run["run_id"]
    steps = {s["step_id"]: s for s in restarted["steps"]}
    assert steps["prepare"]["outputs"] == {"calls": 1}
    assert steps["report"]["outputs"] == {"calls": 1}
    assert len(calls.read_text().splitlines()) == 1, "prepare's code ran once"

    from_step = await api.post(f"/api/v1/runs/{run['run_id']}/restart", json={"from": "prepare"})
    await wait_for_run(api, from_step.json()["run_id"])
    assert len(calls.read_text().splitlines()) == 2
    bad = await api.post(f"/api/v1/runs/{run['run_id']}/restart", json={"from": "nope"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "from"]


async def test_skip_a_running_step_lets_the_dag_continue(api):
    wid = unique_id("skip")
    await push(
        api,
        {
            "id": wid,
            "steps": [
                {"id": "slow", "type": "sleep", "params": {"seconds": 60}},
                {"id": "after", "type": "noop", "depends_on": ["slow"]},
            ],
        },
    )
    run = await start(api, wid)
    step = await wait_for_step(api, run["run_id"], "slow", "running")
    assert step["actions"] == ["skip"]
    skipped = await api.post(f"/api/v1/runs/{run['run_id']}/steps/slow/skip")
    assert skipped.status_code == 202
    done = await wait_for_run(api, run["run_id"], timeout=30)
    steps = {s["step_id"]: s for s in done["steps"]}
    assert done["status"] == "succeeded"
    assert steps["slow"]["status"] == "skipped_manually"
    assert steps["after"]["status"] == "succeeded"
    again = await api.post(f"/api/v1/runs/{run['run_id']}/steps/slow/skip")
    assert again.status_code == 409
    assert "allowed actions: none" in again.json()["message"]


async def test_kill_terminates_and_workflow_stop_ends_everything(api, temporal_client):
    wid = unique_id("kill")
    await push(api, sleeper(wid, "sequential", 60))
    first = await start(api, wid)
    await wait_for_step(api, first["run_id"], "work", "running")
    assert (await api.get(f"/api/v1/runs/{first['run_id']}")).json()["actions"] == ["stop", "kill"]
    killed = await api.post(f"/api/v1/runs/{first['run_id']}/kill")
    assert killed.status_code == 202
    body = (await api.get(f"/api/v1/runs/{first['run_id']}")).json()
    assert body["status"] == "stopped" and body["error"] == "killed"
    description = await temporal_client.get_workflow_handle(
        first["temporal_workflow_id"]
    ).describe()
    assert description.status.name == "TERMINATED"
    assert (await api.post(f"/api/v1/runs/{first['run_id']}/kill")).status_code == 409

    running = await start(api, wid)
    waiting = await start(api, wid)
    await wait_for_step(api, running["run_id"], "work", "running")
    stopped = await api.post(f"/api/v1/workflows/{wid}/stop")
    assert {r["run_id"] for r in stopped.json()} == {running["run_id"], waiting["run_id"]}
    assert (await wait_for_run(api, running["run_id"], timeout=30))["status"] == "stopped"
    assert (await wait_for_run(api, waiting["run_id"]))["status"] == "stopped"


async def test_the_sweep_launches_runs_admitted_long_ago_not_those_queued_long_ago(
    api, sessions, settings, temporal_client
):
    """The sweep finishes launches a dead process left undone. A run that waited in the queue
    and was admitted a moment ago is its admitting process's to launch: judged by its creation
    time, another process's sweep raced that launch (and started it on its own task queue)."""
    wid = unique_id("sweep")
    await push(api, sleeper(wid, {"kind": "parallel"}, seconds=0.1))
    runs = RunsService(sessions, temporal_client, settings.temporal)
    sweeper = Sweeper(
        sessions,
        runs,
        SignalBus(sessions, runs, temporal_client),
        Schedules(sessions, runs, temporal_client, settings.temporal),
    )
    async with sessions.begin() as session:
        run, created = await runs.create_run(session, wid, {}, cause=Cause(kind="manual"))
        assert created and run.admitted_at is not None
        run.created_at = datetime.now(UTC) - timedelta(minutes=1)  # queued for a minute
    await sweeper.launch_interrupted()
    async with sessions() as session:
        assert (await session.get(Run, run.run_id)).temporal_run_id is None

    async with sessions.begin() as session:
        (await session.get(Run, run.run_id)).admitted_at = datetime.now(UTC) - timedelta(minutes=1)
    await sweeper.launch_interrupted()  # or the worker's own sweeper, whichever comes first
    assert (await wait_for_run(api, run.run_id))["status"] == "succeeded"


async def test_the_worker_sweeps_a_run_its_admitting_process_never_launched(
    api, sessions, settings, temporal_client
):
    """A run committed as admitted by a process that died before launching it is launched by
    the worker process's own sweeper: nothing here calls a sweep, and the API does not sweep."""
    wid = unique_id("swept")
    await push(api, sleeper(wid, {"kind": "parallel"}, seconds=0.1))
    runs = RunsService(sessions, temporal_client, settings.temporal)
    async with sessions.begin() as session:
        run, created = await runs.create_run(session, wid, {}, cause=Cause(kind="manual"))
        assert created and run.admitted_at is not None
        run.admitted_at = datetime.now(UTC) - timedelta(minutes=1)
    body = await wait_for_run(api, run.run_id, timeout=60)
    assert body["status"] == "succeeded" and body["temporal_run_id"]


async def test_launch_records_temporal_run_ids_off_the_request_path_in_one_statement(
    api, sessions, settings, temporal_client, monkeypatch
):
    """Launched runs' Temporal run ids reach the database without a worker (their task queue
    has none), all of one launch in one statement, and `close` waits for that write."""
    wid = unique_id("runids")
    await push(api, sleeper(wid, {"kind": "parallel", "max_concurrency": 20}))
    nobody = settings.temporal.model_copy(update={"task_queue": unique_id("no-worker")})
    runs = RunsService(sessions, temporal_client, nobody)
    async with sessions.begin() as session:
        created = [
            (await runs.create_run(session, wid, {}, cause=Cause(kind="manual")))[0]
            for _ in range(12)
        ]
    writes: list[int] = []  # the run ids each statement records
    statement = runs_db._SET_TEMPORAL_RUN_IDS  # a direct statement: no cursor events

    class Counted:
        async def execute(self, session, params) -> None:
            writes.append(len(params["run_ids"]))
            await statement.execute(session, params)

    monkeypatch.setattr(runs_db, "_SET_TEMPORAL_RUN_IDS", Counted())
    await runs.launch(created)
    await runs.close()
    assert writes == [12]
    async with sessions() as session:
        stored = {
            r.run_id: r.temporal_run_id
            for r in (await session.execute(select(Run).where(Run.workflow_id == wid))).scalars()
        }
    for run in created:
        handle = temporal_client.get_workflow_handle(run.temporal_workflow_id)
        assert stored[run.run_id] == (await handle.describe()).run_id == run.temporal_run_id
        await handle.terminate("test cleanup")
