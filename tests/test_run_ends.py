"""One door for run ends, under concurrency: stops, kills, natural ends and last_only starts
mixed on one workflow through two API processes. No deadlock, never more runs holding slots
than the strategy allows, and every run ends once with one completion signal."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter

import httpx
import pytest
from sqlalchemy import and_, func, or_, select, text

from maestro.db.tables import Run, Signal
from maestro.definitions import FINISH_STATUSES
from maestro.embedded import free_port, wait_for_port
from tests.conftest import unique_id
from tests.processes import Processes

pytestmark = [pytest.mark.e2e, pytest.mark.fault, pytest.mark.timeout(400)]

OPERATIONS = 240
CLIENTS = 8


async def deadlocks(sessions) -> int:
    async with sessions() as session:
        await session.execute(text("SELECT pg_stat_clear_snapshot()"))
        return await session.scalar(
            text("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
        )


async def test_stops_kills_ends_and_last_only_starts_race_without_harm(
    settings, sessions, tmp_path, auth_headers
):
    stack = Processes(settings, tmp_path, task_queue="maestro-run-ends")
    stack.start("worker")
    ports = [free_port(), free_port()]
    for port in ports:
        stack.start("api", port=port)
    wid = unique_id("ends")
    rng = random.Random(7)
    holding_seen: list[int] = []
    answers: Counter[tuple[str, int]] = Counter()
    before = await deadlocks(sessions)
    try:
        for port in ports:
            wait_for_port("127.0.0.1", port, timeout=60)
        urls = [f"http://127.0.0.1:{p}/api/v1" for p in ports]
        async with httpx.AsyncClient(timeout=60, headers=auth_headers) as http:
            pushed = await http.post(
                f"{urls[0]}/workflows",
                json={
                    "id": wid,
                    "run_strategy": "last_only",
                    "params": {"s": {"type": "number", "default": 0.2}},
                    "steps": [
                        {"id": "nap", "type": "sleep", "params": {"seconds": {"expr": "params.s"}}}
                    ],
                },
            )
            assert pushed.status_code == 201, pushed.text
            known: list[str] = []
            done = asyncio.Event()

            async def sample() -> None:
                holding = and_(
                    Run.workflow_id == wid,
                    or_(
                        Run.status == "running",
                        and_(Run.status == "queued", Run.admitted_at.is_not(None)),
                    ),
                )
                while not done.is_set():
                    async with sessions() as session:
                        count = await session.scalar(select(func.count()).where(holding))
                    holding_seen.append(count)
                    await asyncio.sleep(0.05)

            async def client(n: int) -> None:
                for _ in range(n):
                    url = rng.choice(urls)
                    action = rng.choices(["start", "stop", "kill"], [4, 3, 3])[0]
                    if action == "start" or not known:
                        seconds = rng.choice([0.05, 0.3, 1.0, 2.0])
                        reply = await http.post(
                            f"{url}/workflows/{wid}/runs", json={"params": {"s": seconds}}
                        )
                        if reply.status_code == 201:
                            known.append(reply.json()["run_id"])
                        action = "start"
                    else:
                        run_id = rng.choice(known[-2:])  # most likely still live
                        reply = await http.post(f"{url}/runs/{run_id}/{action}")
                    answers[(action, reply.status_code)] += 1
                    await asyncio.sleep(rng.random() * 0.1)

            sampler = asyncio.create_task(sample())
            began = time.monotonic()
            await asyncio.gather(*(client(OPERATIONS // CLIENTS) for _ in range(CLIENTS)))
            elapsed = time.monotonic() - began

            async def settled() -> list[Run]:
                async with sessions() as session:
                    runs = list(
                        (await session.execute(select(Run).where(Run.workflow_id == wid))).scalars()
                    )
                return runs if all(r.status not in ("queued", "running") for r in runs) else []

            deadline = time.monotonic() + 120
            runs: list[Run] = []
            while not runs and time.monotonic() < deadline:
                runs = await settled()
                await asyncio.sleep(0.3)
            done.set()
            await sampler
    finally:
        stack.stop_all()
    print(f"\n{OPERATIONS} operations in {elapsed:.1f}s: {dict(answers)}; {len(runs)} runs")
    assert runs, "every run ended"
    assert {code for (_, code) in answers} <= {200, 201, 202, 409}, answers
    assert max(holding_seen) <= 1, f"last_only let {max(holding_seen)} runs hold slots"
    statuses = Counter(r.status for r in runs)
    assert statuses["stopped"] and statuses["succeeded"], statuses
    async with sessions() as session:
        completions = Counter(
            (
                await session.execute(
                    select(Signal.producer["run_id"].astext).where(
                        Signal.producer["workflow_id"].astext == wid,
                        Signal.name.like("maestro.run.%"),
                    )
                )
            ).scalars()
        )
    for run in runs:
        expected = 1 if run.status in FINISH_STATUSES else 0
        assert completions[run.run_id] == expected, (run.run_id, run.status)
    # Runs never overlapped: each started after the one before had ended.
    started = sorted((r for r in runs if r.started_at), key=lambda r: r.started_at)
    for earlier, later in zip(started, started[1:], strict=False):
        assert later.started_at >= earlier.ended_at, (earlier.run_id, later.run_id)
    await asyncio.sleep(1.5)  # PostgreSQL's statistics are flushed about once a second
    assert await deadlocks(sessions) == before
