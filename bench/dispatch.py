"""Deliveries per CPU-second of the webhook dispatcher, on its own (no Temporal, no API).

    python -m bench.dispatch [--hooks 10] [--runs 300] [--rate 20] [--profile FILE]
        [--database postgresql://postgres@127.0.0.1:5432/postgres]

A scratch database (migrated, dropped afterwards) gets `--hooks` webhooks subscribed to every
event of one owner, pointing at a receiver on 127.0.0.1 (aiohttp, answering 200, in this
process). This process then records 2 events per "run" (`run.started`, `run.succeeded`, with
`maestro_emit_event`, as runs do) at `--rate` runs per second for `--runs` runs, so deliveries
arrive as they do under load; `maestro dispatcher` runs as its own process. The figure is that
process's CPU time (user + system, from /proc) from its start until every delivery was
received, divided by the deliveries. Every delivery must be received exactly once.
`--profile FILE` runs the dispatcher under cProfile and writes its stats to FILE.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
import uuid
from pathlib import Path

import asyncpg
from aiohttp import web
from cryptography.fernet import Fernet

from maestro.db.engine import upgrade
from maestro.embedded import free_port
from maestro.outbox import EVENT_TYPES
from maestro.secrets import SecretBox

OWNER = "bench-dispatch"


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(args: argparse.Namespace) -> dict:
    name = f"maestro_dispatch_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(args.database)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = args.database.rsplit("/", 1)[0] + f"/{name}"
    key = Fernet.generate_key().decode()
    got: dict[str, int] = {}
    expected = 2 * args.runs * args.hooks
    all_in = asyncio.Event()
    app = web.Application()

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        event_id = request.headers["X-Maestro-Event-Id"] + request.path
        got[event_id] = got.get(event_id, 0) + 1
        if len(got) >= expected:
            all_in.set()
        return web.json_response({"ok": True})

    app.router.add_post("/{hook}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    process = None
    try:
        await asyncio.to_thread(upgrade, url)
        box = SecretBox([key])
        db = await asyncpg.connect(url)
        for i in range(args.hooks):
            hook = f"wh_bench{i:04d}"
            await db.execute(
                "INSERT INTO webhooks (id, owner, url, events, format, secret) "
                "VALUES ($1, $2, $3, $4, 'json', $5)",
                hook,
                OWNER,
                f"http://127.0.0.1:{port}/{hook}",
                list(EVENT_TYPES),
                box.seal(f"webhook:{hook}", OWNER, "whsec_" + uuid.uuid4().hex),
            )
        env = {
            **os.environ,
            "MAESTRO_DATABASE_URL": url,
            "MAESTRO_SECRETS_KEY": key,
            "MAESTRO_OUTBOUND__ALLOWED_PRIVATE_NETWORKS": '["127.0.0.1/32"]',
            "MAESTRO_LOG_LEVEL": "WARNING",
        }
        command = [sys.executable]
        if args.profile:
            command += ["-m", "cProfile", "-o", args.profile]
        command += ["-m", "maestro.cli", "dispatcher"]
        process = await asyncio.create_subprocess_exec(*command, env=env)
        await asyncio.sleep(1.5)  # started (imports done)
        cpu_before = _cpu_seconds(process.pid)
        began = time.monotonic()
        for run in range(args.runs):
            due = began + run / args.rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            data = json.dumps({"run_id": f"r{run}", "run_number": run, "status": "running"})
            async with db.transaction():
                for kind in ("run.started", "run.succeeded"):
                    await db.execute(
                        "SELECT maestro_emit_event($1, $2, $3, $4, $5::jsonb)",
                        f"{kind}:{run}",
                        kind,
                        "bench-wf",
                        OWNER,
                        data,
                    )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_in.wait(), args.runs / args.rate + 300)
        elapsed = time.monotonic() - began
        cpu = _cpu_seconds(process.pid) - cpu_before
        received = sum(got.values())
        doubled = sum(1 for n in got.values() if n > 1)
        await db.close()
    finally:
        if process is not None:
            process.terminate()
            await asyncio.wait_for(process.wait(), 30)
        await runner.cleanup()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    return {
        "deliveries": expected,
        "received": received,
        "distinct": len(got),
        "doubled": doubled,
        "seconds": round(elapsed, 1),
        "dispatcher_cpu_s": round(cpu, 2),
        "cpu_ms_per_delivery": round(1000 * cpu / max(1, received), 3),
        "deliveries_per_cpu_s": round(received / cpu) if cpu else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hooks", type=int, default=10)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--rate", type=float, default=20.0, help="runs per second")
    parser.add_argument("--profile", default=None)
    parser.add_argument("--database", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    result = asyncio.run(measure(args))
    print(json.dumps(result, indent=2))
    if result["received"] < result["deliveries"] or result["doubled"]:
        sys.exit("deliveries lost or doubled")


if __name__ == "__main__":
    main()
