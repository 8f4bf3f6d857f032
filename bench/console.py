"""The web console's server time on real sizes: the workflows page with 1,000 workflows (ten
runs each) and the run page of a 10,000-iteration foreach, rendered in-process (no network).

    MAESTRO_BENCH_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python -m bench.console

A scratch database is created on that server (dropped afterwards) and a Temporal dev server
started for the API's lifespan; rows are written straight with SQL."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx

from api.app import create_app
from api.console.auth import COOKIE
from maestro.db.engine import upgrade
from maestro.embedded import free_port, temporal_dev_server_command, wait_for_port
from maestro.settings import Settings, TemporalSettings

WORKFLOWS = 1_000
RUNS_EACH = 10
ITERATIONS = 10_000
SAMPLES = 20


async def fill(url: str) -> str:
    """The workflows, their runs, and one run whose foreach has ITERATIONS iterations."""
    db = await asyncpg.connect(url)
    now = datetime.now(UTC)
    definition = {
        "id": "",
        "owner": "",
        "steps": [{"id": "extract", "type": "noop"}, {"id": "load", "type": "noop"}],
        "triggers": [{"cron": "0 7 * * 1-5", "timezone": "Europe/Paris"}],
    }
    workflows, versions, runs = [], [], []
    for i in range(WORKFLOWS):
        wid = f"bench-wf-{i:04d}"
        owner = f"team-{i % 10}"
        workflows.append((wid, owner, 1, 1, True, False, RUNS_EACH))
        body = {**definition, "id": wid, "owner": owner}
        versions.append((wid, 1, json.dumps(body), uuid.uuid4().hex))
        for n in range(1, RUNS_EACH + 1):
            status = "failed" if n % 7 == 0 else "succeeded"
            runs.append(
                (
                    str(uuid.uuid4()),
                    wid,
                    1,
                    n,
                    status,
                    "{}",
                    json.dumps({"kind": "time"}),
                    f"{wid}-run-{n}",
                    now - timedelta(hours=RUNS_EACH - n),
                )
            )
    await db.executemany(
        "INSERT INTO workflows (id, owner, active_version, latest_version, is_active, paused,"
        " run_counter) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        workflows,
    )
    await db.executemany(
        "INSERT INTO workflow_versions (workflow_id, version, definition, content_hash)"
        " VALUES ($1, $2, $3::jsonb, $4)",
        versions,
    )
    await db.executemany(
        "INSERT INTO runs (run_id, workflow_id, version, run_number, status, params, cause,"
        " temporal_workflow_id, created_at) VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb,"
        " $8, $9)",
        runs,
    )
    sweep = {
        "id": "bench-sweep",
        "steps": [
            {"id": "list", "type": "noop"},
            {
                "id": "sweep",
                "type": "foreach",
                "depends_on": ["list"],
                "params": {
                    "items": f"range(0, {ITERATIONS})",
                    "steps": [{"id": "train", "type": "noop"}],
                },
            },
        ],
    }
    await db.execute(
        "INSERT INTO workflows (id, owner, active_version, latest_version, is_active, paused,"
        " run_counter) VALUES ('bench-sweep', '', 1, 1, true, false, 1)"
    )
    await db.execute(
        "INSERT INTO workflow_versions (workflow_id, version, definition, content_hash)"
        " VALUES ('bench-sweep', 1, $1::jsonb, 'x')",
        json.dumps(sweep),
    )
    run_id = str(uuid.uuid4())
    await db.execute(
        "INSERT INTO runs (run_id, workflow_id, version, run_number, status, params, cause,"
        " temporal_workflow_id, created_at) VALUES ($1, 'bench-sweep', 1, 1, 'running', '{}',"
        " '{\"kind\": \"manual\"}', 'bench-sweep-run-1', now())",
        run_id,
    )
    await db.execute(
        "INSERT INTO step_runs (run_id, step_id, status, attempt) VALUES ($1, 'list',"
        " 'succeeded', 1), ($1, 'sweep', 'running', 1)",
        run_id,
    )
    await db.copy_records_to_table(
        "iterations",
        records=[
            (run_id, "sweep", i, "succeeded" if i < ITERATIONS * 0.6 else "pending", json.dumps(i))
            for i in range(ITERATIONS)
        ],
        columns=["run_id", "step_path", "index", "status", "params"],
    )
    await db.execute("ANALYZE")
    await db.close()
    return run_id


async def measure(client: httpx.AsyncClient, path: str) -> dict[str, float]:
    timings = []
    for _ in range(SAMPLES):
        began = time.perf_counter()
        response = await client.get(path)
        timings.append((time.perf_counter() - began) * 1000)
        assert response.status_code == 200, (path, response.status_code, response.text[:500])
    timings.sort()
    return {
        "median_ms": round(statistics.median(timings), 1),
        "p95_ms": round(timings[int(len(timings) * 0.95) - 1], 1),
        "max_ms": round(timings[-1], 1),
    }


async def bench(port: int, data: Path) -> dict[str, dict[str, float]]:
    server = os.environ.get(
        "MAESTRO_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1/postgres"
    )
    name = f"maestro_bench_console_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(server)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = server.rsplit("/", 1)[0] + f"/{name}"
    try:
        await asyncio.to_thread(upgrade, url)
        run_id = await fill(url)
        wait_for_port("127.0.0.1", port, timeout=60)
        await asyncio.sleep(2)  # the frontend answers a moment after the port opens
        settings = Settings(
            database_url=url, data_dir=data, temporal=TemporalSettings(address=f"127.0.0.1:{port}")
        )
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            from maestro import keys

            async with app.state.sessions.begin() as session:
                row, _ = await keys.create_key(session, "bench", ["admin"])
                token = await keys.open_console_session(session, row.id, timedelta(hours=1))
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app),
                base_url="http://bench",
                cookies={COOKIE: token},
            ) as client:
                results = {
                    f"workflows page (1 of {WORKFLOWS // 50}, {WORKFLOWS:,})": "/ui/workflows",
                    "workflows page, owner filter + id search": "/ui/workflows?owner=team-3&q=wf-0",
                    f"run page, foreach of {ITERATIONS:,} iterations": f"/ui/runs/{run_id}",
                    "run live fragment (polled every 2 s)": f"/ui/runs/{run_id}/live",
                    "iterations page (50 of 10,000)": f"/ui/runs/{run_id}/steps/sweep/iterations",
                }
                rows = {label: await measure(client, path) for label, path in results.items()}
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    return rows


def main() -> None:
    data = Path(tempfile.mkdtemp(prefix="bench-console-"))
    port = free_port()
    temporal = subprocess.Popen(
        temporal_dev_server_command(data, port=port, ui_port=None),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        rows = asyncio.run(bench(port, data))
    finally:
        temporal.terminate()
        temporal.wait(30)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    print(f"| page (commit {commit}, {SAMPLES} requests each) | median ms | p95 ms | max ms |")
    print("| --- | ---: | ---: | ---: |")
    for label, row in rows.items():
        print(f"| {label} | {row['median_ms']} | {row['p95_ms']} | {row['max_ms']} |")


if __name__ == "__main__":
    main()
