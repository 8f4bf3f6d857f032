"""The signal invariants under faults, with real API and worker processes: an API killed
(SIGKILL) in the middle of a burst loses no acknowledged signal (invariant 1), and bursts
published twice and through two API processes at once start exactly one run per signal or
joined set (invariants 2, 3 and 6)."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import func, select
from temporalio.client import Client

from maestro.db.tables import Run, Signal, SignalMatch
from maestro.embedded import free_port, wait_for_port
from maestro.settings import Settings
from tests.conftest import unique_id
from tests.processes import Processes

pytestmark = [pytest.mark.e2e, pytest.mark.fault, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def stack(settings: Settings, tmp_path_factory) -> Iterator[Processes]:
    procs = Processes(settings, tmp_path_factory.mktemp("fault-logs"), task_queue="maestro-faults")
    procs.start("worker")
    yield procs
    procs.stop_all()


def start_api(stack: Processes) -> tuple[object, str]:
    port = free_port()
    proc = stack.start("api", port=port)
    wait_for_port("127.0.0.1", port, timeout=60)
    return proc, f"http://127.0.0.1:{port}"


async def push(url: str, body: dict, headers: dict) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=30, headers=headers) as http:
        response = await http.post("/api/v1/workflows", json=body)
        assert response.status_code == 201, response.text


async def wait_until(predicate, timeout: float = 90) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.3)


async def temporal_count(client: Client, workflow_id: str) -> int:
    count = await client.count_workflows(f"MaestroWorkflowId = '{workflow_id}'")
    return count.count


async def test_api_killed_mid_burst_loses_no_acknowledged_signal(
    stack, sessions, temporal_client, auth_headers
):
    topic = f"burst.{uuid.uuid4().hex[:8]}"
    wid = unique_id("fault-kill")
    proc, url = start_api(stack)
    await push(
        url,
        {
            "id": wid,
            "triggers": [{"signal": {"all_of": [{"name": topic}]}}],
            "steps": [{"id": "go", "type": "noop"}],
        },
        auth_headers,
    )
    acked: list[int] = []
    total = 300

    async def send(http: httpx.AsyncClient, i: int) -> None:
        try:
            response = await http.post("/api/v1/signals", json={"name": topic, "params": {"i": i}})
        except httpx.TransportError:
            return  # the API died under this request: it was never acknowledged
        if response.status_code == 201:
            acked.append(response.json()["signal"]["id"])

    async with httpx.AsyncClient(base_url=url, timeout=30, headers=auth_headers) as http:
        tasks = [asyncio.create_task(send(http, i)) for i in range(total)]
        while len(acked) < total // 3:
            await asyncio.sleep(0.005)
        proc.send_signal(signal.SIGKILL)  # mid-burst, with requests in flight
        proc.wait(10)
        await asyncio.gather(*tasks)
    assert 0 < len(acked) < total

    # The worker's sweeper finishes the launches the killed API left undone.
    async with sessions() as session:
        stored = set(
            (await session.execute(select(Signal.id).where(Signal.name == topic))).scalars()
        )
    assert set(acked) <= stored

    async def all_launched() -> bool:
        async with sessions() as session:
            pending = await session.scalar(
                select(func.count())
                .select_from(Run)
                .where(Run.workflow_id == wid, Run.temporal_run_id.is_(None))
            )
        return pending == 0

    await wait_until(all_launched)
    async with sessions() as session:
        runs = list((await session.execute(select(Run).where(Run.workflow_id == wid))).scalars())
        matched = dict(
            (
                await session.execute(
                    select(SignalMatch.signal_id, SignalMatch.run_id).where(
                        SignalMatch.workflow_id == wid, SignalMatch.outcome == "started_run"
                    )
                )
            ).all()
        )
    # Every stored (so every acknowledged) signal started exactly one run, and no run lacks one.
    assert set(matched) == stored
    assert len(runs) == len(stored) == len({r.cause["detail"]["signal_ids"][0] for r in runs})

    async def all_in_temporal() -> bool:
        return await temporal_count(temporal_client, wid) == len(stored)

    await wait_until(all_in_temporal)
    await wait_until(lambda: all_succeeded(sessions, wid, len(stored)))


async def all_succeeded(sessions, workflow_id: str, expected: int) -> bool:
    async with sessions() as session:
        statuses = list(
            (
                await session.execute(select(Run.status).where(Run.workflow_id == workflow_id))
            ).scalars()
        )
    return len(statuses) == expected and set(statuses) == {"succeeded"}


async def test_duplicate_bursts_through_two_apis_start_one_run_each(
    stack, sessions, temporal_client, auth_headers
):
    plain, orders, fx = (f"{p}.{uuid.uuid4().hex[:8]}" for p in ("plain", "orders", "fx"))
    plain_wf, join_wf = unique_id("fault-plain"), unique_id("fault-join")
    _, url_a = start_api(stack)
    _, url_b = start_api(stack)
    await push(
        url_a,
        {
            "id": plain_wf,
            "steps": [{"id": "go", "type": "noop"}],
            "triggers": [{"signal": {"all_of": [{"name": plain}]}}],
        },
        auth_headers,
    )
    await push(
        url_a,
        {
            "id": join_wf,
            "steps": [{"id": "go", "type": "noop"}],
            "triggers": [
                {"signal": {"all_of": [{"name": orders}, {"name": fx}], "join_on": ["dt"]}}
            ],
        },
        auth_headers,
    )
    n = 60
    burst = (
        [{"name": plain, "params": {"i": i}, "request_id": f"p-{i}"} for i in range(n)]
        + [{"name": orders, "params": {"dt": f"D{i}"}} for i in range(n)]
        + [{"name": fx, "params": {"dt": f"D{i}"}} for i in range(n)]
    )

    async with (
        httpx.AsyncClient(base_url=url_a, timeout=60, headers=auth_headers) as a,
        httpx.AsyncClient(base_url=url_b, timeout=60, headers=auth_headers) as b,
    ):

        async def send(http: httpx.AsyncClient, body: dict) -> int:
            return (await http.post("/api/v1/signals", json=body)).status_code

        for _ in range(2):  # the same burst twice, each signal through both APIs at once
            codes = await asyncio.gather(*[send(http, body) for body in burst for http in (a, b)])
            assert set(codes) <= {200, 201}
        batch = await a.post("/api/v1/signals/batch", json={"signals": burst[:100]})
        assert all(r["duplicate"] for r in batch.json()["results"])

    async with sessions() as session:

        async def count_runs(wid: str) -> int:
            return await session.scalar(
                select(func.count()).select_from(Run).where(Run.workflow_id == wid)
            )

        assert await count_runs(plain_wf) == n
        assert await count_runs(join_wf) == n
        distinct_signals = await session.scalar(
            select(func.count()).select_from(Signal).where(Signal.name.in_([plain, orders, fx]))
        )
    assert distinct_signals == 3 * n

    async def temporal_has_all() -> bool:
        return (
            await temporal_count(temporal_client, plain_wf) == n
            and await temporal_count(temporal_client, join_wf) == n
        )

    await wait_until(temporal_has_all)
    await wait_until(lambda: all_succeeded(sessions, plain_wf, n))
    await wait_until(lambda: all_succeeded(sessions, join_wf, n))
