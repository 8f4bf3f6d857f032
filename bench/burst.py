"""Burst drain: many signal-started runs of a `parallel` workflow arriving at once, beside the
raw-Temporal floor of as many workflows started at once, in one stack.

    python -m bench.burst [--runs 5000] [--max-concurrency 200] [--stored 200000] [--out FILE]

Starts `maestro up` (temporary data directory, free ports) and the raw worker, stores
`--stored` signals first (bulk SQL, as bench.growth fills them), then:

- raw floor: `--runs` one-activity RawWorkflows started at once (64 start calls in flight)
  -> every result back; rate = workflows / (last result - first start);
- Maestro: a workflow with a one-noop-step DAG, `run_strategy: parallel` with
  `--max-concurrency`, triggered by one signal name; `--runs` signals POSTed at once as
  batches of 1,000 -> every run ended; rate = runs / (last `ended_at` - first POST). Then
  exactly one run per signal, none lost.

The two phases run one after the other (the floor first, then a pause until the machine is
quiet again) on the same dev server and machine, so the ratio compares like with like.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from temporalio.client import Client

from bench.growth import fill
from bench.raw import RAW_TASK_QUEUE, RAW_WORKFLOW
from bench.run import Api, BenchError, on_fresh_stack, wait_for_quiet
from bench.stack import Stack
from maestro.embedded import EmbeddedPostgres

TARGET_RATIO = 0.70
BATCH = 1000


def _used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    used = {k: after[k] - before.get(k, 0.0) for k in after}
    used["others"] = max(0.0, used.pop("machine") - sum(used.values()))
    return {k: round(v, 1) for k, v in used.items()}


async def raw_floor(stack: Stack, count: int, nonce: str) -> dict[str, Any]:
    client = await Client.connect(stack.temporal_address)
    gate = asyncio.Semaphore(64)

    async def start(i: int):
        async with gate:
            return await client.start_workflow(
                RAW_WORKFLOW, id=f"raw-burst-{nonce}-{i}", task_queue=RAW_TASK_QUEUE
            )

    cpu = stack.cpu_seconds()
    t0 = time.time()
    handles = await asyncio.gather(*(start(i) for i in range(count)))
    started = time.time()
    # Temporal limits the long polls in flight per namespace: wait on the results 100 at a
    # time, in start order (which is about the order they finish in).
    waiting = asyncio.Semaphore(100)

    async def result(handle) -> None:
        async with waiting:
            await handle.result()

    await asyncio.wait_for(asyncio.gather(*(result(h) for h in handles)), 1800)
    elapsed = time.time() - t0
    return {
        "workflows": count,
        "start_calls_seconds": round(started - t0, 1),
        "seconds": round(elapsed, 1),
        "per_s": round(count / elapsed, 1),
        "cpu_seconds": _used(cpu, stack.cpu_seconds()),
    }


async def maestro_burst(
    stack: Stack, api: Api, url: str, count: int, max_concurrency: int, nonce: str
) -> dict[str, Any]:
    name, workflow_id = f"bench.burst.{nonce}", f"bench-burst-{nonce}"
    await api.push(
        {
            "id": workflow_id,
            "triggers": [{"signal": {"all_of": [{"name": name}]}}],
            "run_strategy": {"kind": "parallel", "max_concurrency": max_concurrency},
            "steps": [{"id": "s", "type": "noop"}],
        }
    )

    async def post(b: int) -> list[int]:
        signals = [
            {"name": name, "params": {"i": i, "partition": f"p{i}"}}
            for i in range(b * BATCH, min(count, (b + 1) * BATCH))
        ]
        out = await api.call("POST", "/signals/batch", json={"signals": signals}, ok=(201,))
        return [r["signal"]["id"] for r in out["results"]]

    cpu = stack.cpu_seconds()
    t0 = datetime.now(UTC)
    batches = await asyncio.gather(*(post(b) for b in range(-(-count // BATCH))))
    posted_s = (datetime.now(UTC) - t0).total_seconds()
    posted = [sid for batch in batches for sid in batch]
    db = await asyncpg.connect(url)
    progress = []
    try:
        deadline = time.monotonic() + 3600
        while True:
            row = await db.fetchrow(
                "SELECT count(*) AS runs, count(ended_at) AS ended,"
                " count(*) FILTER (WHERE status = 'succeeded') AS succeeded,"
                " max(ended_at) AS last_end FROM runs WHERE workflow_id = $1",
                workflow_id,
            )
            progress.append(
                [round((datetime.now(UTC) - t0).total_seconds(), 1), row["runs"], row["ended"]]
            )
            if row["ended"] >= count:
                break
            if time.monotonic() > deadline:
                raise BenchError(f"only {row['ended']} of {count} runs ended within an hour")
            await asyncio.sleep(2)
        causes = await db.fetch(
            "SELECT (cause -> 'detail' -> 'signal_ids' ->> 0)::bigint AS sid FROM runs"
            " WHERE workflow_id = $1",
            workflow_id,
        )
    finally:
        await db.close()
    elapsed = (row["last_end"] - t0).total_seconds()
    cause_ids = [r["sid"] for r in causes]
    return {
        "runs": row["runs"],
        "max_concurrency": max_concurrency,
        "post_seconds": round(posted_s, 1),
        "seconds": round(elapsed, 1),
        "per_s": round(count / elapsed, 1),
        "succeeded": row["succeeded"],
        "lost": len(set(posted) - set(cause_ids)),
        "duplicated": len(cause_ids) - len(set(cause_ids)),
        "progress": progress,
        "cpu_seconds": _used(cpu, stack.cpu_seconds()),
    }


async def scenario(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    nonce = uuid.uuid4().hex[:8]
    url = EmbeddedPostgres(stack.data_dir / "postgres", stack.pg_port).url
    results: dict[str, Any] = {}
    async with Api.connect(stack, connections=16, timeout=600) as api:
        if args.stored:
            print(f"-- storing {args.stored:,} signals ...", file=sys.stderr, flush=True)
            results["stored"] = await fill(url, "", "", "", args.stored, 0)
        if not args.no_raw:
            await wait_for_quiet(stack)
            print(f"-- raw floor: {args.runs} workflows ...", file=sys.stderr, flush=True)
            results["raw"] = await raw_floor(stack, args.runs, nonce)
            print(json.dumps(results["raw"]), file=sys.stderr, flush=True)
            # The raw workflows' timers (workflow task and heartbeat timeouts) fire later.
            await asyncio.sleep(args.settle)
        await wait_for_quiet(stack)
        print(f"-- Maestro: {args.runs} runs ...", file=sys.stderr, flush=True)
        results["maestro"] = await maestro_burst(
            stack, api, url, args.runs, args.max_concurrency, nonce
        )
        print(json.dumps(results["maestro"]["cpu_seconds"]), file=sys.stderr, flush=True)
    if "raw" in results:
        results["ratio"] = round(results["maestro"]["per_s"] / results["raw"]["per_s"], 2)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5000)
    parser.add_argument("--max-concurrency", type=int, default=200)
    parser.add_argument("--stored", type=int, default=200_000, help="signals stored first")
    parser.add_argument("--settle", type=float, default=65.0, help="pause after the floor")
    parser.add_argument("--no-raw", action="store_true", help="skip the raw-Temporal floor")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    report = on_fresh_stack("bench.burst", lambda stack: scenario(stack, args))
    results = report["results"]
    raw, ours = results.get("raw"), results["maestro"]
    print("| | runs/s | seconds | lost / duplicated |")
    print("| --- | --- | --- | --- |")
    if raw:
        print(
            f"| raw floor ({raw['workflows']} workflows at once) | {raw['per_s']} "
            f"| {raw['seconds']} | |"
        )
    print(
        f"| Maestro ({ours['runs']} runs, parallel/{ours['max_concurrency']}) | {ours['per_s']} "
        f"| {ours['seconds']} | {ours['lost']} / {ours['duplicated']} |"
    )
    if raw:
        met = "yes" if results["ratio"] >= TARGET_RATIO else "**no**"
        print(f"| ratio | {results['ratio']:.0%} | | target ≥ 70 %: {met} |")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
