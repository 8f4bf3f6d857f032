"""`maestro up` as a user runs it: everything starts, Ctrl-C stops every child, and a run that
was in flight continues after the next start."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from maestro.embedded import free_port
from tests.conftest import unique_id, wait_for_run, wait_for_step

pytestmark = [pytest.mark.e2e, pytest.mark.fault, pytest.mark.timeout(400)]


def start_up(env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "maestro.cli", "up"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=env["MAESTRO_DATA_DIR"],
        )


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


async def test_up_restart_keeps_data_and_resumes_in_flight_run(tmp_path: Path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    api_port, temporal_port, ui_port, pg_port = (free_port() for _ in range(4))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAESTRO_")}
    env.update(
        MAESTRO_DATA_DIR=str(data_dir),
        MAESTRO_API__PORT=str(api_port),
        MAESTRO_TEMPORAL__ADDRESS=f"127.0.0.1:{temporal_port}",
        MAESTRO_TEMPORAL__UI_PORT=str(ui_port),
        MAESTRO_TEMPORAL__UI_URL=f"http://127.0.0.1:{ui_port}",
        MAESTRO_EMBEDDED_POSTGRES_PORT=str(pg_port),
        MAESTRO_WORKER__WORK_ROOT=str(tmp_path / "work"),
    )
    log = tmp_path / "up.log"
    wid = unique_id("up")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=30) as api:
        proc = start_up(env, log)
        await wait_until_up(api, proc, log)
        assert (await api.get("/api/v1/workflows")).status_code == 401, "keys are required"
        key = (data_dir / "api-key").read_text().strip()
        assert "admin API key" in log.read_text() and key in log.read_text()
        api.headers["Authorization"] = f"Bearer {key}"
        for private, mode in (("", {0o700, 0o711}), ("api-key", {0o600}), ("secrets-key", {0o600})):
            assert stat.S_IMODE((data_dir / private).stat().st_mode) in mode, private
        assert {stat.S_IMODE(p.stat().st_mode) for p in data_dir.iterdir() if p.is_dir()} == {
            0o700
        }, "logs, artifacts, temporal and postgres are their owners' only"
        stored = await api.put("/api/v1/secrets/up-token", json={"value": "kept-across-restarts"})
        assert stored.status_code == 201, "the API stores secrets with the key up created"
        ui = await api.get(f"http://127.0.0.1:{ui_port}/")
        assert ui.status_code == 200, "the Temporal Web UI is served"
        pushed = await api.post(
            "/api/v1/workflows",
            json={
                "id": wid,
                "steps": [
                    {
                        "id": "long",
                        "type": "sleep",
                        "params": {"seconds": 8},
                        "heartbeat_timeout": "3s",
                        "retry": {"max_attempts": 5, "initial_backoff": "0.5s"},
                    },
                    {"id": "after", "type": "noop", "depends_on": ["long"]},
                ],
            },
        )
        assert pushed.status_code == 201
        run = (await api.post(f"/api/v1/workflows/{wid}/runs", json={})).json()
        await wait_for_step(api, run["run_id"], "long", "running")

        postmaster = data_dir / "postgres" / "postmaster.pid"
        assert postmaster.exists(), "embedded PostgreSQL runs in the data directory"
        children = interrupt(proc)
        assert len(children) >= 3  # temporal, api, worker (postgres runs under its own user)
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
