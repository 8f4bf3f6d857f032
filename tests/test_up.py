"""`maestro up` as a user runs it: everything starts, Ctrl-C stops every child, and a run that
was in flight continues after the next start; a child that dies is restarted while the others
keep running, and one that keeps dying stops the whole stack."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import httpx
import psutil
import pytest

from maestro.embedded import free_port
from tests.conftest import unique_id, wait_for_run, wait_for_step

pytestmark = [pytest.mark.e2e, pytest.mark.fault, pytest.mark.timeout(400)]


class Ports(NamedTuple):
    api: int
    temporal: int
    ui: int
    postgres: int


def up_env(data_dir: Path) -> tuple[dict[str, str], Ports]:
    """The environment of a `maestro up` with all its data in `data_dir`, on free ports."""
    data_dir.mkdir()
    ports = Ports(*(free_port() for _ in range(4)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAESTRO_")}
    env.update(
        MAESTRO_DATA_DIR=str(data_dir),
        MAESTRO_API__PORT=str(ports.api),
        MAESTRO_TEMPORAL__ADDRESS=f"127.0.0.1:{ports.temporal}",
        MAESTRO_TEMPORAL__UI_PORT=str(ports.ui),
        MAESTRO_TEMPORAL__UI_URL=f"http://127.0.0.1:{ports.ui}",
        MAESTRO_EMBEDDED_POSTGRES_PORT=str(ports.postgres),
        MAESTRO_WORKER__WORK_ROOT=str(data_dir.parent / "work"),
    )
    return env, ports


def start_up(env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "maestro.cli", "up"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=env["MAESTRO_DATA_DIR"],
        )


def sleep_then_noop(workflow_id: str, seconds: int, heartbeat_timeout: str) -> dict:
    """A workflow whose first step sleeps, heartbeating: a worker can die in the middle."""
    return {
        "id": workflow_id,
        "steps": [
            {
                "id": "long",
                "type": "sleep",
                "params": {"seconds": seconds},
                "heartbeat_timeout": heartbeat_timeout,
                "retry": {"max_attempts": 5, "initial_backoff": "0.5s"},
            },
            {"id": "after", "type": "noop", "depends_on": ["long"]},
        ],
    }


async def wait_until_up(api: httpx.AsyncClient, proc: subprocess.Popen, log: Path) -> None:
    for _ in range(600):
        assert proc.poll() is None, log.read_text()
        try:
            if (await api.get("/healthz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.2)
    raise AssertionError(f"maestro up did not come up:\n{log.read_text()}")


def interrupt(proc: subprocess.Popen) -> list[int]:
    """Ctrl-C `maestro up`; return the PIDs its children had."""
    children = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    proc.send_signal(signal.SIGINT)
    assert proc.wait(90) == 0
    return children


async def test_up_restart_keeps_data_and_resumes_in_flight_run(own_tmp_path: Path):
    data_dir = own_tmp_path / "data"
    env, ports = up_env(data_dir)
    log = own_tmp_path / "up.log"
    wid = unique_id("up")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports.api}", timeout=30) as api:
        proc = start_up(env, log)
        await wait_until_up(api, proc, log)
        assert (await api.get("/api/v1/workflows")).status_code == 401, "keys are required"
        key = (data_dir / "api-key").read_text().strip()
        assert "admin API key" in log.read_text() and key in log.read_text()
        password = (data_dir / "postgres-password").read_text().strip()
        assert password not in log.read_text(), "the database password is never printed"
        assert f"postgresql://postgres:***@127.0.0.1:{ports.postgres}/postgres" in log.read_text()
        api.headers["Authorization"] = f"Bearer {key}"
        for private, mode in (("", {0o700, 0o711}), ("api-key", {0o600}), ("secrets-key", {0o600})):
            assert stat.S_IMODE((data_dir / private).stat().st_mode) in mode, private
        assert {stat.S_IMODE(p.stat().st_mode) for p in data_dir.iterdir() if p.is_dir()} == {
            0o700
        }, "logs, artifacts, temporal and postgres are their owners' only"
        stored = await api.put("/api/v1/secrets/up-token", json={"value": "kept-across-restarts"})
        assert stored.status_code == 201, "the API stores secrets with the key up created"
        ui = await api.get(f"http://127.0.0.1:{ports.ui}/")
        assert ui.status_code == 200, "the Temporal Web UI is served"
        await assert_every_child_serves_metrics(api, data_dir, ports, log, f"{wid}-every")
        pushed = await api.post("/api/v1/workflows", json=sleep_then_noop(wid, 8, "3s"))
        assert pushed.status_code == 201
        run = (await api.post(f"/api/v1/workflows/{wid}/runs", json={})).json()
        await wait_for_step(api, run["run_id"], "long", "running")

        postmaster = data_dir / "postgres" / "postmaster.pid"
        assert postmaster.exists(), "embedded PostgreSQL runs in the data directory"
        children = interrupt(proc)
        assert len(children) >= 4  # temporal, api, worker, dispatcher (postgres: its own user)
        assert not any(
            psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in children
        ), "every child process stopped"
        assert not postmaster.exists(), "embedded PostgreSQL stopped"

        proc = start_up(env, log)
        try:
            await wait_until_up(api, proc, log)
            assert (await api.get(f"/api/v1/workflows/{wid}")).json()["active_version"] == 1
            done = await wait_for_run(api, run["run_id"], timeout=120)
            assert done["status"] == "succeeded", done
            assert [s["status"] for s in done["steps"]] == ["succeeded", "succeeded"]
            assert done["steps"][0]["attempt"] >= 2, "the interrupted attempt was retried"
            secret_step = {
                "id": "len",
                "type": "shell",
                "params": {"command": 'echo "${#T}"', "env": {"T": {"secret": "up-token"}}},
            }
            pushed = await api.post(
                "/api/v1/workflows", json={"id": f"{wid}-s", "steps": [secret_step]}
            )
            assert pushed.status_code == 201, pushed.text
            started = (await api.post(f"/api/v1/workflows/{wid}-s/runs", json={})).json()
            done = await wait_for_run(api, started["run_id"], timeout=60)
            assert done["steps"][0]["outputs"]["stdout_tail"] == "20", done
        finally:
            interrupt(proc)


def sample(text: str, series: str) -> float | None:
    """One sample's value in Prometheus' text format."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return None


async def assert_every_child_serves_metrics(
    api: httpx.AsyncClient, data_dir: Path, ports: Ports, log: Path, every: str
) -> None:
    """status.json lists each child's metrics endpoint (the banner too) and each answers;
    the worker's shows the lag of live schedule fires (a timed run is carried by the worker
    that admits it)."""
    children = status(data_dir)["children"]
    banner = log.read_text()
    assert f"Console    Open http://127.0.0.1:{ports.api}/ui" in banner
    console = await api.get("/ui/login")
    assert console.status_code == 200 and 'name="key"' in console.text
    assert children["postgres"]["metrics"] is None
    assert children["api"]["metrics"] == f"http://127.0.0.1:{ports.api}/metrics"
    for name in ("api", "worker", "dispatcher", "temporal"):
        assert f"{name} {children[name]['metrics']}" in log.read_text(), "the banner lists it"
        scraped = await api.get(children[name]["metrics"])
        assert scraped.status_code == 200 and "# TYPE" in scraped.text, name
    dispatcher = psutil.Process(children["dispatcher"]["pid"])
    worker_process = psutil.Process(children["worker"]["pid"])
    assert dispatcher.nice() == worker_process.nice() + 10, "webhooks yield the CPU to runs"
    delivering = (await api.get(children["dispatcher"]["metrics"])).text
    assert "maestro_webhook_attempts_total" in delivering
    pushed = await api.post(
        "/api/v1/workflows",
        json={"id": every, "triggers": [{"every": "1s"}], "steps": [{"id": "go", "type": "noop"}]},
    )
    assert pushed.status_code == 201, pushed.text
    count = None
    for _ in range(150):
        worker = (await api.get(children["worker"]["metrics"])).text
        count = sample(worker, 'maestro_trigger_lag_seconds_count{kind="time"}')
        if count:
            break
        await asyncio.sleep(0.2)
    assert count and count >= 1, worker
    total = sample(worker, 'maestro_trigger_lag_seconds_sum{kind="time"}')
    assert total is not None and total / count < 10, "lag from the scheduled time, in seconds"
    assert sample(worker, 'maestro_trigger_fires_total{kind="time"}') == count
    assert (await api.post(f"/api/v1/workflows/{every}/deactivate")).status_code == 200


def status(data_dir: Path) -> dict:
    """`maestro up`'s status file: its state and each child's pid, restarts and last exit."""
    return json.loads((data_dir / "status.json").read_text())


async def status_up(data_dir: Path) -> dict:
    """The status file once it says `up` (it is written just after the API first answers)."""
    for _ in range(150):
        found = status(data_dir)
        if found["state"] == "up":
            return found
        await asyncio.sleep(0.2)
    raise AssertionError(f"status.json never said up: {found}")


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def kill_and_wait_for_restart(
    data_dir: Path, name: str, api: httpx.AsyncClient | None = None
) -> int:
    """SIGKILL the child `name`; return its new pid once it runs again. With `api`, the API
    must answer its health check all along."""
    old = status(data_dir)["children"][name]
    os.kill(old["pid"], signal.SIGKILL)
    for _ in range(300):
        if api is not None:
            assert (await api.get("/healthz")).status_code == 200, "the API stays up"
        child = status(data_dir)["children"][name]
        if child["state"] == "running" and child["pid"] != old["pid"]:
            assert child["restarts"] > old["restarts"]
            assert not alive(old["pid"])
            return child["pid"]
        await asyncio.sleep(0.2)
    raise AssertionError(f"{name} was not restarted: {status(data_dir)}")


async def wait_until_healthy(api: httpx.AsyncClient, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while (await api.get("/healthz")).status_code != 200:
        assert time.monotonic() < deadline, "the API did not recover"
        await asyncio.sleep(0.2)


async def start_run(api: httpx.AsyncClient, workflow_id: str) -> str:
    started = await api.post(f"/api/v1/workflows/{workflow_id}/runs", json={})
    assert started.status_code in (200, 201), started.text
    return started.json()["run_id"]


async def assert_succeeds(api: httpx.AsyncClient, run_id: str) -> dict:
    done = await wait_for_run(api, run_id, timeout=90)
    assert done["status"] == "succeeded", done
    return done


async def test_up_restarts_each_dead_child_and_keeps_the_others_running(own_tmp_path: Path):
    """Worker, Temporal dev server and PostgreSQL, each SIGKILLed in turn: each is restarted,
    the API process stays the same, no data is lost and runs (one in flight) succeed."""
    data_dir = own_tmp_path / "data"
    env, ports = up_env(data_dir)
    log = own_tmp_path / "up.log"
    wid = unique_id("supervised")
    seen: set[int] = set()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports.api}", timeout=30) as api:
        proc = start_up(env, log)
        try:
            await wait_until_up(api, proc, log)
            api.headers["Authorization"] = f"Bearer {(data_dir / 'api-key').read_text().strip()}"
            first = await status_up(data_dir)
            assert first["state"] == "up" and first["pid"] == proc.pid
            children = ["postgres", "temporal", "api", "worker", "dispatcher"]
            assert list(first["children"]) == children
            seen |= {child["pid"] for child in first["children"].values()}
            pushed = await api.post("/api/v1/workflows", json=sleep_then_noop(wid, 4, "2s"))
            assert pushed.status_code == 201, pushed.text
            quick = await api.post(
                "/api/v1/workflows",
                json={"id": f"{wid}-quick", "steps": [{"id": "a", "type": "noop"}]},
            )
            assert quick.status_code == 201, quick.text
            in_flight = await start_run(api, wid)
            await wait_for_step(api, in_flight, "long", "running")

            seen.add(await kill_and_wait_for_restart(data_dir, "worker", api))
            after_worker = await start_run(api, f"{wid}-quick")
            done = await assert_succeeds(api, in_flight)
            assert done["steps"][0]["attempt"] >= 2, "the killed attempt was retried"
            await assert_succeeds(api, after_worker)
            assert "worker exited with code -9; restarting in 1 s (restart 1)" in log.read_text()

            seen.add(await kill_and_wait_for_restart(data_dir, "temporal"))
            await assert_succeeds(api, await start_run(api, f"{wid}-quick"))

            seen.add(await kill_and_wait_for_restart(data_dir, "postgres"))
            await wait_until_healthy(api)
            kept = (await api.get(f"/api/v1/workflows/{wid}")).json()
            assert kept["active_version"] == 1, "the data survived"
            runs = (await api.get("/api/v1/runs", params={"workflow_id": f"{wid}-quick"})).json()
            assert [r["status"] for r in runs["items"]] == ["succeeded"] * 2
            # The API and the worker reconnect by themselves: the first run after the restart
            # succeeds (a connection the server closed is not handed out again, and a failure to
            # record never fails a step).
            done = await wait_for_run(api, await start_run(api, f"{wid}-quick"), timeout=90)
            assert done["status"] == "succeeded", done

            final = status(data_dir)["children"]
            assert final["api"]["pid"] == first["children"]["api"]["pid"]
            assert final["api"]["restarts"] == 0, "the API was never restarted"
            assert [final[name]["restarts"] for name in ("worker", "temporal")] == [1, 1]
            assert final["postgres"]["restarts"] >= 1
            assert final["worker"]["last_exit"]["code"] == -9
            events = [
                json.loads(line)
                for line in (data_dir / "logs" / "supervisor.log").read_text().splitlines()
            ]
            assert {e["child"] for e in events if e["level"] == "warning"} == {
                "worker",
                "temporal",
                "postgres",
            }
        finally:
            interrupt(proc)
    assert not [pid for pid in seen if alive(pid)], "every child stopped"
    assert status(data_dir)["state"] == "stopped"


async def test_up_stops_everything_when_a_child_keeps_crashing(own_tmp_path: Path):
    """The API cannot bind its port (uvicorn exits with 3): after five crashes `maestro up`
    stops the other children and exits 1, leaving no process behind."""
    data_dir = own_tmp_path / "data"
    env, ports = up_env(data_dir)
    log = own_tmp_path / "up.log"
    seen: dict[str, set[int]] = {}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", ports.api))
        taken.listen()
        proc = start_up(env, log)
        try:
            deadline = time.monotonic() + 150
            while proc.poll() is None:
                assert time.monotonic() < deadline, log.read_text()
                if (data_dir / "status.json").exists():
                    for name, child in status(data_dir)["children"].items():
                        if child["pid"]:
                            seen.setdefault(name, set()).add(child["pid"])
                await asyncio.sleep(0.1)
        finally:
            if proc.poll() is None:
                interrupt(proc)
    assert proc.returncode == 1, log.read_text()
    output = log.read_text()
    assert "api exited with code 3; restarting in 1 s (restart 1)" in output
    assert "api exited with code 3; restarting in 8 s (restart 4)" in output
    assert "crashed 5 times within 120 s: stopping everything" in output
    assert set(seen) == {"postgres", "temporal", "api", "worker", "dispatcher"}, seen
    assert len(seen["api"]) >= 2, "the API was restarted"
    assert not [pid for pids in seen.values() for pid in pids if alive(pid)], "no process left"
    assert not (data_dir / "postgres" / "postmaster.pid").exists(), "PostgreSQL stopped"
    final = status(data_dir)
    assert final["state"] == "failed"
    assert final["children"]["api"]["state"] == "failed"
    assert final["children"]["api"]["restarts"] == 4
    assert {final["children"][n]["state"] for n in ("postgres", "temporal", "worker")} == {
        "stopped"
    }
