"""A PostgreSQL outage in the middle of signal-started runs: how many fail, how many steps run
again, and how long after PostgreSQL is back every run has finished.

    python -m bench.outage [--runs 300] [--outage 60] [--nap 20] [--slots 100] [--out result.json]

It starts its own embedded PostgreSQL, Temporal dev server, `maestro api` and `maestro worker`
(all on free loopback ports, data in a temporary directory), registers a two-step workflow
started by a signal, publishes `--runs` signals, and once every run is on Temporal stops PostgreSQL
(immediate mode, as a crash) while the first steps still run (`--nap` seconds); the steps finish
during the outage. PostgreSQL comes back after `--outage` seconds. Each step appends one line per
execution to a file, which counts re-executions. There is no raw-Temporal floor for this: it
measures recovery, not a path Temporal alone has.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

from maestro.db.engine import upgrade
from maestro.embedded import (
    EmbeddedPostgres,
    free_port,
    temporal_dev_server_command,
    wait_for_port,
)
from maestro.keys import create_admin_key

ROOT = Path(__file__).resolve().parent.parent


async def _launched(http: httpx.AsyncClient, url: str, workflow_id: str) -> int:
    """How many of the workflow's runs were started on Temporal."""
    reply = await http.get(f"{url}/runs", params={"workflow_id": workflow_id, "limit": 500})
    reply.raise_for_status()
    return sum(1 for run in reply.json()["items"] if run["temporal_run_id"])


async def _timeline(database_url: str, back: float) -> dict[str, list[float]]:
    """Seconds after PostgreSQL came back at which steps `a` and `b` started and ended, and
    runs ended (the worker's clock): first, median and last of each."""
    import asyncpg

    connection = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        rows = await connection.fetch(
            "SELECT s.step_id, extract(epoch FROM s.started_at) AS started,"
            " extract(epoch FROM s.ended_at) AS ended, extract(epoch FROM r.ended_at) AS run_ended"
            " FROM step_runs s JOIN runs r USING (run_id) WHERE r.workflow_id = 'outage'"
        )
    finally:
        await connection.close()

    def spread(values: list[float]) -> list[float]:
        values = sorted(v - back for v in values if v is not None)
        if not values:
            return []
        return [round(values[0], 2), round(values[len(values) // 2], 2), round(values[-1], 2)]

    def column(step: str, name: str) -> list[float]:
        return [float(r[name]) for r in rows if r["step_id"] == step and r[name] is not None]

    return {
        "a_started": spread(column("a", "started")),
        "a_ended": spread(column("a", "ended")),
        "b_started": spread(column("b", "started")),
        "b_ended": spread(column("b", "ended")),
        "run_ended": spread(column("b", "run_ended")),
    }


def _spawn(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


async def _run_ends(http: httpx.AsyncClient, url: str, workflow_id: str) -> Counter[str]:
    """Run statuses of the workflow (through the API, paging)."""
    statuses: Counter[str] = Counter()
    cursor = None
    while True:
        params = {
            "workflow_id": workflow_id,
            "limit": 500,
            **({"cursor": cursor} if cursor else {}),
        }
        reply = await http.get(f"{url}/runs", params=params)
        reply.raise_for_status()
        page = reply.json()
        statuses.update(r["status"] for r in page["items"])
        cursor = page["next_cursor"]
        if not cursor:
            return statuses


async def measure(args: argparse.Namespace, work: Path) -> dict:
    postgres = EmbeddedPostgres(work / "pg", free_port())
    postgres.start()
    await asyncio.to_thread(upgrade, postgres.local_url)
    key = await create_admin_key(postgres.local_url, "bench outage")
    temporal_port, api_port = free_port(), free_port()
    lines = work / "executions"
    lines.touch()
    env = dict(
        os.environ,
        MAESTRO_DATABASE_URL=postgres.local_url,
        MAESTRO_DATA_DIR=str(work / "data"),
        MAESTRO_TEMPORAL__ADDRESS=f"127.0.0.1:{temporal_port}",
        MAESTRO_API__PORT=str(api_port),
        MAESTRO_WORKER__ALLOWED_MODULES='["bench.steps"]',
        MAESTRO_WORKER__MAX_CONCURRENT_ACTIVITIES=str(args.slots),
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    (work / "temporal").mkdir()
    procs = [
        _spawn(
            temporal_dev_server_command(work / "temporal", port=temporal_port, ui_port=None),
            env,
            work / "temporal.log",
        )
    ]
    try:
        wait_for_port("127.0.0.1", temporal_port, timeout=60)
        python = [sys.executable, "-m", "maestro.cli"]
        procs.append(_spawn([*python, "api"], env, work / "api.log"))
        procs.append(_spawn([*python, "worker"], env, work / "worker.log"))
        wait_for_port("127.0.0.1", api_port, timeout=60)
        url = f"http://127.0.0.1:{api_port}/api/v1"
        step = {"entrypoint": "bench.steps:nap_and_count", "args": {"file": str(lines)}}
        async with httpx.AsyncClient(
            timeout=30, headers={"Authorization": f"Bearer {key}"}
        ) as http:
            pushed = await http.post(
                f"{url}/workflows",
                json={
                    "id": "outage",
                    "run_strategy": {"kind": "parallel", "max_concurrency": args.runs},
                    "triggers": [{"signal": {"all_of": [{"name": "bench.outage"}]}}],
                    "steps": [
                        {
                            "id": "a",
                            "type": "python",
                            "params": {**step, "args": {**step["args"], "seconds": args.nap}},
                        },
                        {"id": "b", "type": "python", "params": step, "depends_on": ["a"]},
                    ],
                },
            )
            pushed.raise_for_status()
            began = time.monotonic()
            for i in range(0, args.runs, 100):
                batch = [
                    {"name": "bench.outage", "params": {"i": j}}
                    for j in range(i, min(i + 100, args.runs))
                ]
                (
                    await http.post(f"{url}/signals/batch", json={"signals": batch})
                ).raise_for_status()
            published = time.monotonic() - began
            # The outage starts once every run is on Temporal: it measures recovery, not
            # launches left to the sweeper.
            for _ in range(2400):
                if await _launched(http, url, "outage") == args.runs:
                    break
                await asyncio.sleep(0.25)
            launched = time.monotonic() - began
            down = time.monotonic()
            await asyncio.to_thread(postgres.stop, "immediate")
            await asyncio.sleep(args.outage)
            await asyncio.to_thread(postgres.start)
            back = time.monotonic()
            statuses: Counter[str] = Counter()
            while time.monotonic() - back < 600:
                try:
                    statuses = await _run_ends(http, url, "outage")
                except httpx.HTTPError:
                    statuses = Counter()
                if sum(statuses.values()) == args.runs and not (
                    statuses["queued"] or statuses["running"]
                ):
                    break
                await asyncio.sleep(0.25)
            recovered = time.monotonic() - back
            timeline = await _timeline(postgres.local_url, time.time() - recovered)
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        await asyncio.to_thread(postgres.stop)
    executions = Counter(lines.read_text().splitlines())
    return {
        "runs": args.runs,
        "signals_published_seconds": round(published, 2),
        "all_launched_seconds": round(launched, 2),
        "outage_seconds": round(back - down, 1),
        "statuses": dict(statuses),
        "runs_failed": args.runs - statuses.get("succeeded", 0),
        "step_executions": sum(executions.values()),
        "steps_re_executed": sum(n - 1 for n in executions.values()),
        "seconds_from_postgres_back_to_all_finished": round(recovered, 2),
        "after_postgres_back": timeline,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--outage", type=float, default=60.0)
    parser.add_argument("--nap", type=float, default=20.0, help="seconds step `a` sleeps")
    parser.add_argument(
        "--slots",
        type=int,
        default=100,
        help="the worker's concurrent activities (100, its default: the first steps run in "
        "waves and some finish after the outage; --slots 300: all finish during it)",
    )
    parser.add_argument("--out", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="maestro-bench-outage-"))
    try:
        result = asyncio.run(measure(args, work))
    finally:
        if args.keep:
            print(f"logs in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
