"""Benchmark webhook delivery on `maestro up` with a receiver on 127.0.0.1.

    python -m bench.webhooks [--failing 1000] [--within 60] [--runs 400] [--hooks 10] [--out F]

- latency: `--failing` runs that fail (one shell step `false`) started evenly over `--within`
  seconds, one webhook on `run.failed`: event recorded (its `created_at`, the run's end
  transaction) -> the receiver has it, p50/p99; every event delivered, none twice.
- throughput: `--runs` one-step runs started by 32 clients (each waits for its run on
  Temporal) with no webhook, then with `--hooks` webhooks subscribed to every event of the
  workflow's owner, then with none again, then with the hooks again (drift cancels out);
  the receiver is in this process and answers 200.
Stops everything it started.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from temporalio.client import Client

from bench.run import Api, BenchError, machine, percentile, source, wait_workflow
from bench.stack import Stack
from maestro.embedded import free_port
from maestro.outbox import EVENT_TYPES

TARGETS = {"p99_ms": 1000.0, "throughput_ratio": 0.90}
CLIENTS = 32


class Receiver:
    """Records each event's id, type, recorded time and arrival time."""

    def __init__(self) -> None:
        self.port = free_port()
        self.got: list[tuple[str, str, float, float]] = []
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        arrived = time.time()
        event = json.loads(body)
        created = datetime.fromisoformat(event["created_at"]).timestamp()
        self.got.append((request.headers["X-Maestro-Event-Id"], event["type"], created, arrived))
        return web.json_response({"ok": True})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{hook}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def url(self, hook: str) -> str:
        return f"http://127.0.0.1:{self.port}/{hook}"


async def latency(api: Api, receiver: Receiver, n: int, within: float, nonce: str) -> dict:
    owner = f"bench-lat-{nonce}"
    workflow_id = f"bench-wh-fail-{nonce}"
    await api.call(
        "POST",
        "/webhooks",
        json={"url": receiver.url("lat"), "owner": owner, "events": ["run.failed"]},
    )
    await api.push(
        {
            "id": workflow_id,
            "owner": owner,
            "run_strategy": {"kind": "parallel", "max_concurrency": 10_000},
            "steps": [
                {
                    "id": "boom",
                    "type": "shell",
                    "params": {"command": ["false"]},
                    "retry": {"max_attempts": 1},
                }
            ],
        }
    )
    t0 = time.monotonic()

    async def start(i: int) -> None:
        await asyncio.sleep(max(0.0, t0 + i * within / n - time.monotonic()))
        await api.call("POST", f"/workflows/{workflow_id}/runs", json={}, ok=(201,))

    await asyncio.gather(*(start(i) for i in range(n)))
    started_in = time.monotonic() - t0
    deadline = time.monotonic() + 300
    while len({g[0] for g in receiver.got if g[1] == "run.failed"}) < n:
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    await asyncio.sleep(2)  # anything sent twice arrives meanwhile
    failed = await api.runs(workflow_id, status="failed")
    events = [g for g in receiver.got if g[1] == "run.failed"]
    ids = [g[0] for g in events]
    lags = [(arrived - created) * 1000 for _, _, created, arrived in events]
    return {
        "runs_started": n,
        "started_within_s": round(started_in, 1),
        "runs_failed": len(failed),
        "events_received": len(ids),
        "distinct_events": len(set(ids)),
        "lost": len(failed) - len(set(ids)),
        "duplicated": len(ids) - len(set(ids)),
        "p50_ms": round(percentile(lags, 50), 1),
        "p99_ms": round(percentile(lags, 99), 1),
        "max_ms": round(max(lags), 1) if lags else None,
    }


async def runs_per_s(api: Api, client: Client, owner: str, m: int, tag: str) -> float:
    workflow_id = f"bench-wh-tp-{tag}"
    await api.push(
        {
            "id": workflow_id,
            "owner": owner,
            "run_strategy": {"kind": "parallel", "max_concurrency": 10_000},
            "steps": [{"id": "s", "type": "noop"}],
        }
    )
    todo = list(range(m))

    async def client_loop() -> None:
        while todo:
            todo.pop()
            run = await api.call("POST", f"/workflows/{workflow_id}/runs", json={}, ok=(201,))
            await wait_workflow(client, run["temporal_workflow_id"], run["temporal_run_id"])

    t0 = time.monotonic()
    await asyncio.wait_for(asyncio.gather(*(client_loop() for _ in range(CLIENTS))), 900)
    seconds = time.monotonic() - t0
    succeeded = await api.runs(workflow_id, status="succeeded")
    if len(succeeded) != m:
        raise BenchError(f"{workflow_id}: {len(succeeded)} of {m} runs succeeded")
    return m / seconds


async def throughput(
    stack: Stack, api: Api, client: Client, receiver: Receiver, m: int, hooks: int, nonce: str
) -> dict:
    plain, hooked = f"bench-plain-{nonce}", f"bench-hooked-{nonce}"
    for k in range(hooks):
        await api.call(
            "POST",
            "/webhooks",
            json={"url": receiver.url(f"tp{k}"), "owner": hooked, "events": list(EVENT_TYPES)},
        )
    before = len(receiver.got)
    phases: dict[str, list[float]] = {"none": [], "hooks": []}
    # CPU seconds per run of each process, per kind of phase (the receiver is in `bench`).
    cpu: dict[str, dict[str, float]] = {"none": {}, "hooks": {}}
    for i, (kind, owner) in enumerate(
        [("none", plain), ("hooks", hooked), ("hooks", hooked), ("none", plain)]
    ):
        print(f"   throughput phase {i + 1}/4: {kind}", file=sys.stderr, flush=True)
        before_cpu = stack.cpu_seconds()
        phases[kind].append(await runs_per_s(api, client, owner, m // 2, f"{nonce}-{i}"))
        after_cpu = stack.cpu_seconds()
        for name, value in after_cpu.items():
            spent = (value - before_cpu.get(name, 0.0)) / m * 1000  # ms per run, both phases
            cpu[kind][name] = round(cpu[kind].get(name, 0.0) + spent, 2)
    expected = 2 * m * hooks  # run.started and run.succeeded, per run, per webhook
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if len(receiver.got) - before >= expected:
            break
        await asyncio.sleep(0.5)
    none = sum(phases["none"]) / 2
    with_hooks = sum(phases["hooks"]) / 2
    return {
        "runs_per_phase": m // 2,
        "hooks": hooks,
        "none_per_s": [round(v, 1) for v in phases["none"]],
        "hooks_per_s": [round(v, 1) for v in phases["hooks"]],
        "ratio": round(with_hooks / none, 3),
        "deliveries_expected": expected,
        "deliveries_received": len(receiver.got) - before,
        "cpu_ms_per_run": cpu,
    }


async def scenarios(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    nonce = uuid.uuid4().hex[:8]
    receiver = Receiver()
    await receiver.start()
    client = await Client.connect(stack.temporal_address)
    results: dict[str, Any] = {}
    try:
        async with Api.connect(stack, connections=64) as api:
            if args.failing:
                print("latency ...", file=sys.stderr, flush=True)
                results["latency"] = await latency(api, receiver, args.failing, args.within, nonce)
            if args.runs:
                print("throughput ...", file=sys.stderr, flush=True)
                results["throughput"] = await throughput(
                    stack, api, client, receiver, args.runs, args.hooks, nonce
                )
    finally:
        await receiver.stop()
    return results


def table(results: dict[str, Any]) -> str:
    lines = ["| metric | value | target | met |", "| --- | --- | --- | --- |"]
    lat = results.get("latency")
    if lat:
        lines.append(
            f"| event → delivery, {lat['runs_started']} runs failing within "
            f"{lat['started_within_s']:.0f} s (p50 / p99 / max) | {lat['p50_ms']:.0f} / "
            f"{lat['p99_ms']:.0f} / {lat['max_ms']:.0f} ms | p99 ≤ 1,000 ms | "
            f"{'yes' if lat['p99_ms'] <= TARGETS['p99_ms'] else '**no**'} |"
        )
        ok = lat["lost"] == 0 and lat["duplicated"] == 0
        lines.append(
            f"| runs failed / events delivered / lost / duplicated | {lat['runs_failed']} / "
            f"{lat['distinct_events']} / {lat['lost']} / {lat['duplicated']} | none lost | "
            f"{'yes' if ok else '**no**'} |"
        )
    tp = results.get("throughput")
    if tp:
        lines.append(
            f"| runs/s, no webhook (two phases) | {' / '.join(map(str, tp['none_per_s']))} | | |"
        )
        lines.append(
            f"| runs/s, {tp['hooks']} webhooks on every event (two phases) | "
            f"{' / '.join(map(str, tp['hooks_per_s']))} | | |"
        )
        lines.append(
            f"| with webhooks / without | {tp['ratio']:.0%} | ≥ 90 % | "
            f"{'yes' if tp['ratio'] >= TARGETS['throughput_ratio'] else '**no**'} |"
        )
        lines.append(
            f"| deliveries received / expected | {tp['deliveries_received']} / "
            f"{tp['deliveries_expected']} | all | "
            f"{'yes' if tp['deliveries_received'] >= tp['deliveries_expected'] else '**no**'} |"
        )
        for kind in ("none", "hooks"):
            spent = tp["cpu_ms_per_run"][kind]
            parts = ", ".join(
                f"{name} {spent[name]:.1f}"
                for name in ("worker", "dispatcher", "api", "postgres", "temporal_server", "bench")
                if name in spent
            )
            lines.append(f"| CPU ms per run, {kind} | {parts} | | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--failing", type=int, default=1000, help="failing runs (latency)")
    parser.add_argument("--within", type=float, default=60, help="seconds to start them over")
    parser.add_argument("--runs", type=int, default=400, help="runs per pair of phases")
    parser.add_argument("--hooks", type=int, default=10, help="webhooks on every event")
    parser.add_argument("--out", type=Path, help="write JSON results here")
    args = parser.parse_args()
    # The receiver listens on 127.0.0.1: allowed explicitly, as an operator would.
    os.environ["MAESTRO_OUTBOUND__ALLOWED_PRIVATE_NETWORKS"] = '["127.0.0.1/32"]'
    code = source()  # the code measured, before anything is committed meanwhile
    work_dir = Path(tempfile.mkdtemp(prefix="maestro-bench-webhooks-"))
    stack = Stack(work_dir)
    failed = True
    try:
        print(f"starting the stack in {work_dir} ...", file=sys.stderr, flush=True)
        stack.start()
        results = asyncio.run(scenarios(stack, args))
        failed = False
    finally:
        stack.stop()
        if failed:
            print(f"data and logs kept in {work_dir}", file=sys.stderr)
        else:
            stack.cleanup()
    results |= {"machine": machine(), "source": code, "args": vars(args) | {"out": None}}
    print(table(results))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
