"""The docker-compose topology as plain processes: two API processes and two workers against
one Temporal dev server and one PostgreSQL. Signals and schedules fire exactly once, and runs
spread over both workers."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

import httpx
import pytest
from sqlalchemy import select

from maestro.db.tables import Run, StepRun
from maestro.embedded import free_port, wait_for_port
from tests.conftest import unique_id, wait_for_time_runs
from tests.processes import Processes

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


async def test_two_apis_two_workers_fire_once_and_share_the_work(
    settings, sessions, tmp_path, auth_headers, temporal_client
):
    stack = Processes(settings, tmp_path, task_queue="maestro-topology")
    workers = [stack.start("worker"), stack.start("worker")]
    ports = [free_port(), free_port()]
    for port in ports:
        stack.start("api", port=port)
    topic, wid = f"topo.{uuid.uuid4().hex[:8]}", unique_id("topology")
    try:
        for port in ports:
            wait_for_port("127.0.0.1", port, timeout=60)
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        async with httpx.AsyncClient(timeout=60, headers=auth_headers) as http:
            pushed = await http.post(
                f"{urls[0]}/api/v1/workflows",
                json={
                    "id": wid,
                    "run_strategy": {"kind": "parallel", "max_concurrency": 20},
                    "params": {
                        "run_ts": {"type": "string", "default": ""},
                        "run_date": {"type": "string", "default": ""},
                    },
                    "triggers": [{"signal": {"all_of": [{"name": topic}]}}, {"every": "1s"}],
                    "steps": [
                        {
                            "id": "who",
                            "type": "python",
                            "params": {"entrypoint": "tests.steps:whoami"},
                        }
                    ],
                },
            )
            assert pushed.status_code == 201, pushed.text
            n = 40
            # Each signal through both APIs at once: one run per signal all the same.
            replies = await asyncio.gather(
                *[
                    http.post(f"{url}/api/v1/signals", json={"name": topic, "params": {"i": i}})
                    for i in range(n)
                    for url in urls
                ]
            )
            assert {r.status_code for r in replies} <= {200, 201}, [
                (r.status_code, r.text) for r in replies if r.status_code not in (200, 201)
            ]
            await wait_for_time_runs(sessions, temporal_client, wid, 3)
            await http.post(f"{urls[1]}/api/v1/workflows/{wid}/pause")
        for _ in range(300):
            async with sessions() as session:
                runs = list(
                    (await session.execute(select(Run).where(Run.workflow_id == wid))).scalars()
                )
            if runs and all(r.status == "succeeded" for r in runs):
                break
            await asyncio.sleep(0.3)
    finally:
        stack.stop_all()
    by_kind = Counter(r.cause["kind"] for r in runs)
    assert by_kind["signal"] == n
    assert by_kind["time"] >= 2, "the schedule fired"
    signal_ids = [r.cause["detail"]["signal_ids"][0] for r in runs if r.cause["kind"] == "signal"]
    assert len(set(signal_ids)) == n
    fired = [r.cause["detail"]["scheduled_at"] for r in runs if r.cause["kind"] == "time"]
    assert len(fired) == len(set(fired)), "each scheduled time made one run"
    assert {r.status for r in runs} == {"succeeded"}
    async with sessions() as session:
        outputs = (
            (
                await session.execute(
                    select(StepRun.outputs).where(StepRun.run_id.in_([r.run_id for r in runs]))
                )
            )
            .scalars()
            .all()
        )
    pids = Counter(o["pid"] for o in outputs)
    assert set(pids) == {w.pid for w in workers}, f"runs spread over both workers: {pids}"
