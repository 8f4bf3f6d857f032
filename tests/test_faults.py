"""Faults on the run path, with real processes: PostgreSQL stopping while steps finish, and
Temporal away while runs are started. Platform failures never count as a step's failures and
never run a step's finished code again; answers match what was stored."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import select

from api.app import create_app
from maestro.db.engine import create_engine, session_factory, upgrade
from maestro.db.tables import Iteration, Run, StepRun
from maestro.embedded import (
    EmbeddedPostgres,
    free_port,
)
from maestro.keys import create_admin_key
from maestro.settings import Settings
from tests.conftest import unique_id
from tests.processes import Processes, TemporalDevServer
from workers.main import run_worker

pytestmark = [pytest.mark.e2e, pytest.mark.fault, pytest.mark.timeout(300)]


@contextlib.asynccontextmanager
async def stack(settings: Settings, key: str) -> AsyncIterator[httpx.AsyncClient]:
    """The API (in-process, over ASGI) and a worker for `settings`."""
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(settings, stop=stop))
    app = create_app(settings)
    try:
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app),
                base_url="http://maestro",
                headers={"Authorization": f"Bearer {key}"},
            ) as api:
                yield api
    finally:
        stop.set()
        await asyncio.wait_for(worker, 60)


async def until(predicate, timeout: float = 120, every: float = 0.2):
    """Poll `predicate` (a coroutine function) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            found = await predicate()
            if found:
                return found
        await asyncio.sleep(every)
    raise AssertionError(f"{predicate.__name__} not true after {timeout}s")


async def own_database(
    settings: Settings, server: EmbeddedPostgres, tmp_path
) -> tuple[Settings, str]:
    """Settings on `server` (migrated) with a task queue of their own, and an admin key."""
    await asyncio.to_thread(upgrade, server.local_url)
    key = await create_admin_key(server.local_url, "faults")
    own = settings.model_copy(
        update={
            "database_url": server.local_url,
            "data_dir": tmp_path / "data",
            "temporal": settings.temporal.model_copy(
                update={"task_queue": f"faults-{uuid.uuid4().hex[:8]}"}
            ),
        }
    )
    return own, key


async def test_database_outage_as_steps_finish_fails_and_repeats_nothing(settings, tmp_path):
    """Steps whose code finishes while PostgreSQL is down: their success travels with Temporal
    and is recorded when the database is back. No step fails, none runs twice, and the
    outage (longer than the step's three attempts with their backoff) spends no attempt."""
    server = EmbeddedPostgres(tmp_path / "pg", free_port())
    server.start()
    steps_dir = tmp_path / "steps"
    steps_dir.mkdir()
    try:
        own, key = await own_database(settings, server, tmp_path)
        wid = unique_id("outage")
        gate = {"entrypoint": "tests.steps:gated", "args": {"dir": str(steps_dir)}}
        async with stack(own, key) as api:
            pushed = await api.post(
                "/api/v1/workflows",
                json={
                    "id": wid,
                    "run_strategy": {"kind": "parallel", "max_concurrency": 10},
                    "steps": [
                        {"id": "a", "type": "python", "params": gate},
                        {"id": "b", "type": "python", "params": gate, "depends_on": ["a"]},
                    ],
                },
            )
            assert pushed.status_code == 201, pushed.text
            runs = [
                (await api.post(f"/api/v1/workflows/{wid}/runs", json={})).json() for _ in range(3)
            ]
            run_ids = [r["run_id"] for r in runs]

            async def all_started() -> bool:
                return all((steps_dir / f"started-{r}-a").exists() for r in run_ids)

            await until(all_started, 60)
            await asyncio.to_thread(server.stop)
            (steps_dir / "release").touch()
            # Every step a finishes now and b runs: neither can be recorded. Three attempts
            # with the default backoff (1 s, 2 s) would be spent in about 3 s.
            await asyncio.sleep(12)
            down = await api.get(f"/api/v1/runs/{run_ids[0]}")
            assert down.status_code == 503 and down.headers["retry-after"] == "5"
            await asyncio.to_thread(server.start)

            async def all_ended() -> list[dict]:
                bodies = [(await api.get(f"/api/v1/runs/{r}")).json() for r in run_ids]
                return bodies if all(b.get("status") == "succeeded" for b in bodies) else []

            ended = await until(all_ended, 120)
    finally:
        await asyncio.to_thread(server.stop)
    calls = Counter(
        tuple(line.split()[:2]) for line in (steps_dir / "calls").read_text().splitlines()
    )
    assert calls == Counter({(r, s): 1 for r in run_ids for s in ("a", "b")}), calls
    for body in ended:
        attempts = {s["step_id"]: s["attempt"] for s in body["steps"]}
        statuses = {s["step_id"]: s["status"] for s in body["steps"]}
        assert statuses == {"a": "succeeded", "b": "succeeded"}, body
        assert attempts == {"a": 1, "b": 1}, body


async def test_starts_while_temporal_is_down_answer_at_once_and_run_when_it_is_back(
    settings, database_url, admin_key, tmp_path
):
    """With Temporal killed, a manual start and a signal that starts a run are stored and
    answered at once (201, the run `queued`, waiting for launch), not a 503 after seconds;
    when Temporal is back the sweeper launches them and they succeed, each once."""
    temporal = TemporalDevServer(tmp_path)
    temporal.start()
    own = settings.model_copy(
        update={
            "data_dir": tmp_path / "data",
            "temporal": settings.temporal.model_copy(
                update={
                    "address": f"127.0.0.1:{temporal.port}",
                    "task_queue": f"temporal-down-{uuid.uuid4().hex[:8]}",
                }
            ),
        }
    )
    wid, topic = unique_id("tdown"), f"tdown.{uuid.uuid4().hex[:8]}"
    engine = create_engine(database_url)
    sessions = session_factory(engine)
    try:
        async with stack(own, admin_key) as api:
            pushed = await api.post(
                "/api/v1/workflows",
                json={
                    "id": wid,
                    "run_strategy": {"kind": "parallel", "max_concurrency": 10},
                    "triggers": [{"signal": {"all_of": [{"name": topic}]}}],
                    "steps": [{"id": "a", "type": "noop"}],
                },
            )
            assert pushed.status_code == 201, pushed.text
            temporal.kill()
            timings, run_ids = [], []
            for i in range(3):
                began = time.monotonic()
                started = await api.post(
                    f"/api/v1/workflows/{wid}/runs", json={"request_id": f"r{i}"}
                )
                timings.append(time.monotonic() - began)
                assert started.status_code == 201, started.text
                assert started.json()["status"] == "queued"
                run_ids.append(started.json()["run_id"])
                began = time.monotonic()
                published = await api.post(
                    "/api/v1/signals", json={"name": topic, "params": {"i": i}}
                )
                timings.append(time.monotonic() - began)
                assert published.status_code == 201, published.text
                [run] = published.json()["runs"]
                run_ids.append(run["run_id"])
            # The first call finds Temporal gone (bounded wait); the rest do not wait for it.
            assert timings[0] < 3.0, timings
            assert max(timings[1:]) < 1.0, timings
            repeated = await api.post(f"/api/v1/workflows/{wid}/runs", json={"request_id": "r0"})
            assert repeated.status_code == 200 and repeated.json()["run_id"] == run_ids[0]
            temporal.start()

            async def all_succeeded() -> bool:
                async with sessions() as session:
                    statuses = (
                        (await session.execute(select(Run.status).where(Run.workflow_id == wid)))
                        .scalars()
                        .all()
                    )
                return len(statuses) == 6 and set(statuses) == {"succeeded"}

            await until(all_succeeded, 120)
        async with sessions() as session:
            runs = (
                (await session.execute(select(Run).where(Run.workflow_id == wid))).scalars().all()
            )
            steps = (
                (await session.execute(select(StepRun).where(StepRun.run_id.in_(run_ids))))
                .scalars()
                .all()
            )
        assert sorted(r.run_id for r in runs) == sorted(run_ids)
        assert {(s.run_id, s.attempt) for s in steps} == {(r, 1) for r in run_ids}
    finally:
        temporal.kill()
        await engine.dispose()


async def test_database_outage_inside_steps_spends_no_attempt(settings, tmp_path):
    """A training step that registers its model, and a step that reads its secret, while
    PostgreSQL is down: both wait for the database inside their first attempt, then succeed
    once; the model has exactly one version."""
    server = EmbeddedPostgres(tmp_path / "pg", free_port())
    server.start()
    steps_dir = tmp_path / "steps"
    steps_dir.mkdir()
    try:
        own, key = await own_database(settings, server, tmp_path)
        wid, model, secret = unique_id("inside"), unique_id("model"), unique_id("secret")
        gate = {"entrypoint": "tests.steps:gated", "args": {"dir": str(steps_dir)}}
        async with stack(own, key) as api:
            stored = await api.put(f"/api/v1/secrets/{secret}", json={"value": "s3cr3t-value"})
            assert stored.status_code in (200, 201), stored.text
            pushed = await api.post(
                "/api/v1/workflows",
                json={
                    "id": wid,
                    "steps": [
                        {"id": "gate", "type": "python", "params": gate},
                        {
                            "id": "train",
                            "type": "train",
                            "depends_on": ["gate"],
                            "params": {
                                "entrypoint": "tests.steps:train_fixed",
                                "model_name": model,
                                "args": {"quality": 0.9},
                            },
                        },
                        {
                            "id": "secret",
                            "type": "python",
                            "depends_on": ["gate"],
                            "params": {
                                "entrypoint": "tests.steps:use_secret",
                                "secrets": [secret],
                                "args": {"name": secret},
                            },
                        },
                    ],
                },
            )
            assert pushed.status_code == 201, pushed.text
            run_id = (await api.post(f"/api/v1/workflows/{wid}/runs", json={})).json()["run_id"]

            async def gate_started() -> bool:
                return (steps_dir / f"started-{run_id}-gate").exists()

            await until(gate_started, 60)
            await asyncio.to_thread(server.stop)
            (steps_dir / "release").touch()
            # Both steps start now; three attempts would be spent in about 3 s.
            await asyncio.sleep(12)
            await asyncio.to_thread(server.start)

            async def ended() -> dict | None:
                body = (await api.get(f"/api/v1/runs/{run_id}")).json()
                return body if body.get("status") in ("succeeded", "failed") else None

            body = await until(ended, 120)
            registered = (await api.get(f"/api/v1/models/{model}")).json()
    finally:
        await asyncio.to_thread(server.stop)
    assert body["status"] == "succeeded", body
    steps = {s["step_id"]: s for s in body["steps"]}
    assert {sid: s["attempt"] for sid, s in steps.items()} == {"gate": 1, "train": 1, "secret": 1}
    assert steps["secret"]["outputs"]["sha256"] == hashlib.sha256(b"s3cr3t-value").hexdigest()
    assert [v["version"] for v in registered["versions"]] == [1], registered


@pytest.mark.timeout(1200)
async def test_a_worker_killed_in_a_10000_iteration_foreach(
    settings, sessions, admin_key, tmp_path
):
    """SIGKILL the only worker while a foreach of 10,000 iterations runs, start another: the
    run succeeds, every iteration succeeded once, and an iteration's code ran again only where
    the killed worker was running it (its success was not written yet)."""
    queue = f"faults-foreach-{uuid.uuid4().hex[:8]}"
    own = settings.model_copy(
        update={"temporal": settings.temporal.model_copy(update={"task_queue": queue})}
    )
    calls = tmp_path / "calls"
    calls.touch()
    count, concurrency = 10_000, 200
    workers = Processes(own, tmp_path, task_queue=queue)
    first = workers.start("worker")
    wid = unique_id("kill-foreach")
    app = create_app(own)
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app),
                base_url="http://maestro",
                headers={"Authorization": f"Bearer {admin_key}"},
            ) as api,
        ):
            body = {"entrypoint": "tests.steps:record_item"}
            pushed = await api.post(
                "/api/v1/workflows",
                json={
                    "id": wid,
                    "steps": [
                        {
                            "id": "each",
                            "type": "foreach",
                            "params": {
                                "items": f"range(0, {count})",
                                "max_concurrency": concurrency,
                                "steps": [
                                    {
                                        "id": "work",
                                        "type": "python",
                                        "params": {
                                            **body,
                                            "args": {"key": {"expr": "item"}, "file": str(calls)},
                                        },
                                        # A step cut by the killed worker is retried 5 s later.
                                        "heartbeat_timeout": "5s",
                                    }
                                ],
                            },
                        }
                    ],
                },
            )
            assert pushed.status_code == 201, pushed.text
            run_id = (await api.post(f"/api/v1/workflows/{wid}/runs", json={})).json()["run_id"]

            async def progress() -> dict:
                run = (await api.get(f"/api/v1/runs/{run_id}")).json()
                return run["steps"][0]["progress"] or {}

            async def a_fifth_done() -> bool:
                return (await progress()).get("succeeded", 0) >= count // 5

            await until(a_fifth_done, 600, every=0.5)
            os.kill(first.pid, signal.SIGKILL)
            first.wait(30)
            killed_at = (await progress())["succeeded"]
            assert killed_at < count, "the foreach ended before the kill"
            second = workers.start("worker")

            async def ended() -> dict | None:
                run = (await api.get(f"/api/v1/runs/{run_id}")).json()
                return run if run["status"] not in ("queued", "running") else None

            run = await until(ended, 900, every=1)
            assert run["status"] == "succeeded", run
            assert run["steps"][0]["progress"]["succeeded"] == count
    finally:
        workers.stop_all()
    lines = [line.split() for line in calls.read_text().splitlines()]
    runs: dict[int, list[int]] = {}
    for key, _attempt, pid in lines:
        runs.setdefault(int(key), []).append(int(pid))
    assert sorted(runs) == list(range(count))  # every iteration's code ran
    again = {key: pids for key, pids in runs.items() if len(pids) > 1}
    for key, pids in again.items():
        # Ran twice: first in the killed worker (cut before its success was written), then
        # once in the new one.
        assert pids == [first.pid, second.pid], (key, pids)
    assert len(again) <= concurrency, len(again)
    async with sessions() as session:
        statuses = Counter(
            (
                await session.execute(
                    select(Iteration.status).where(
                        Iteration.run_id == run_id, Iteration.step_path == "each"
                    )
                )
            ).scalars()
        )
    assert statuses == {"succeeded": count}
