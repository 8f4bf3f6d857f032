"""Composite steps at scale, beside the raw-Temporal floor in one stack.

    python -m bench.composite [--sizes 1000,10000,100000] [--max-concurrency 500]
        [--raw-activities 20000] [--subworkflows 200] [--out FILE]

Starts `maestro up` (temporary data directory, free ports) and the raw worker (the same 100
activity slots as Maestro's worker), then, one after the other on a quiet machine:

- raw floor, activities: `--raw-activities` activities in RawFanoutWorkflows of 1,000 each
  (the most one ForeachWorkflow leaf carries is about 1,300), `--max-concurrency` in flight
  in all -> activities / (last result - first start);
- Maestro foreach: one run per size of a workflow whose only step is a foreach of noop
  iterations over `range(0, n)` with `--max-concurrency`; iterations / (run ended - POST).
  Per size: the worker's and the API's largest resident memory while it ran (sampled every
  second), and the largest history in events of any execution of the run (RunWorkflow and
  every ForeachWorkflow, whose ids follow from the split), read with fetch_history;
- subworkflow overhead: a foreach of `--subworkflows` subworkflow steps (each child: one noop
  step) against RawChildrenWorkflow starting as many child RawWorkflows, both 50 at once;
  seconds per child and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from temporalio.client import Client

from bench.raw import RAW_CHILDREN_WORKFLOW, RAW_FANOUT_WORKFLOW, RAW_TASK_QUEUE
from bench.run import Api, BenchError, on_fresh_stack, wait_for_quiet
from bench.stack import Stack, _children, _cmdline
from maestro.composites import leaf_capacity, split
from maestro.definitions import Step

TARGET_FOREACH = 0.50
TARGET_SUBWORKFLOW = 2.0
EVENT_LIMIT = 10_000
RAW_PER_WORKFLOW = 1000
SUBWORKFLOW_CONCURRENCY = 50


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _pids(stack: Stack) -> dict[str, int]:
    """The API's and the worker's PIDs (children of `maestro up`)."""
    assert stack.up is not None
    found = {}
    for pid in _children(stack.up.pid):
        command = _cmdline(pid)
        if "maestro.cli api" in command:
            found["api"] = pid
        elif "maestro.cli worker" in command:
            found["worker"] = pid
    return found


class MemorySampler:
    """The largest resident memory of the API and the worker while it runs."""

    def __init__(self, stack: Stack) -> None:
        self.pids = _pids(stack)
        self.peak = dict.fromkeys(self.pids, 0.0)
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        while True:
            for name, pid in self.pids.items():
                self.peak[name] = max(self.peak[name], _rss_mb(pid))
            await asyncio.sleep(1)

    async def __aenter__(self) -> MemorySampler:
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        for name, pid in self.pids.items():
            self.peak[name] = round(max(self.peak[name], _rss_mb(pid)), 1)


async def raw_activities(client: Client, count: int, concurrency: int, nonce: str) -> dict:
    workflows = max(1, -(-count // RAW_PER_WORKFLOW))
    each = max(1, concurrency // workflows)
    t0 = time.time()
    handles = [
        await client.start_workflow(
            RAW_FANOUT_WORKFLOW,
            args=[min(RAW_PER_WORKFLOW, count - i * RAW_PER_WORKFLOW), each],
            id=f"raw-fanout-{nonce}-{i}",
            task_queue=RAW_TASK_QUEUE,
        )
        for i in range(workflows)
    ]
    await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), 3600)
    elapsed = time.time() - t0
    return {
        "activities": count,
        "workflows": workflows,
        "in_flight": each * workflows,
        "seconds": round(elapsed, 1),
        "per_s": round(count / elapsed, 1),
    }


def foreach_executions(temporal_id: str, path: str, count: int, capacity: int) -> list[str]:
    """The workflow ids of a foreach's executions: its root, and the split ranges below it."""
    root = f"{temporal_id}:{path}"
    found, todo = [], [(root, 0, count)]
    while todo:
        workflow_id, lo, hi = todo.pop()
        found.append(workflow_id)
        if hi - lo > capacity:
            todo += [(f"{workflow_id}:{a}-{b}", a, b) for a, b in split(lo, hi, capacity)]
    return found


async def largest_history(client: Client, workflow_ids: list[str]) -> tuple[int, str]:
    gate = asyncio.Semaphore(8)

    async def events(workflow_id: str) -> tuple[int, str]:
        async with gate:
            history = await client.get_workflow_handle(workflow_id).fetch_history()
        return len(history.events), workflow_id

    return max(await asyncio.gather(*(events(w) for w in workflow_ids)))


async def wait_ended(api: Api, run_id: str, limit: float = 7200) -> dict[str, Any]:
    deadline = time.monotonic() + limit
    while True:
        run = await api.run(run_id)
        if run["status"] not in ("queued", "running"):
            return run
        if time.monotonic() > deadline:
            raise BenchError(f"run {run_id} still {run['status']} after {limit:.0f}s")
        await asyncio.sleep(1)


def _seconds(run: dict[str, Any]) -> float:
    ended = datetime.fromisoformat(run["ended_at"])
    return (ended - datetime.fromisoformat(run["created_at"])).total_seconds()


async def foreach_sizes(
    stack: Stack, api: Api, client: Client, sizes: list[int], concurrency: int, nonce: str
) -> list[dict[str, Any]]:
    workflow_id = f"bench-foreach-{nonce}"
    await api.push(
        {
            "id": workflow_id,
            "params": {"n": {"type": "integer", "default": 10}},
            "steps": [
                {
                    "id": "each",
                    "type": "foreach",
                    "params": {
                        "items": "range(0, params.n)",
                        "max_concurrency": concurrency,
                        "steps": [{"id": "work", "type": "noop"}],
                    },
                }
            ],
        }
    )
    capacity = leaf_capacity([Step(id="work", type="noop")])
    out = []
    for n in sizes:
        await wait_for_quiet(stack, limit=30)
        print(f"-- Maestro foreach of {n:,} ...", file=sys.stderr, flush=True)
        async with MemorySampler(stack) as memory:
            run = await api.call(
                "POST", f"/workflows/{workflow_id}/runs", json={"params": {"n": n}}
            )
            run = await wait_ended(api, run["run_id"])
        if run["status"] != "succeeded":
            raise BenchError(f"the foreach of {n} ended {run['status']}: {run['error']}")
        progress = run["steps"][0]["progress"]
        ids = [
            run["temporal_workflow_id"],
            *foreach_executions(run["temporal_workflow_id"], "each", n, capacity),
        ]
        events, largest = await largest_history(client, ids)
        seconds = _seconds(run)
        row = {
            "iterations": n,
            "succeeded": progress["succeeded"],
            "seconds": round(seconds, 1),
            "per_s": round(n / seconds, 1),
            "executions": len(ids),
            "max_history_events": events,
            "largest_execution": largest,
            "worker_rss_mb": memory.peak.get("worker"),
            "api_rss_mb": memory.peak.get("api"),
        }
        print(json.dumps(row), file=sys.stderr, flush=True)
        out.append(row)
    return out


async def subworkflow_overhead(
    stack: Stack, api: Api, client: Client, count: int, nonce: str
) -> dict[str, Any]:
    await wait_for_quiet(stack, limit=30)
    print(f"-- raw: {count} child workflows ...", file=sys.stderr, flush=True)
    t0 = time.time()
    await client.execute_workflow(
        RAW_CHILDREN_WORKFLOW,
        args=[count, SUBWORKFLOW_CONCURRENCY],
        id=f"raw-children-{nonce}",
        task_queue=RAW_TASK_QUEUE,
    )
    raw_seconds = time.time() - t0
    child, parent = f"bench-child-{nonce}", f"bench-parent-{nonce}"
    await api.push({"id": child, "steps": [{"id": "s", "type": "noop"}]})
    await api.push(
        {
            "id": parent,
            "steps": [
                {
                    "id": "calls",
                    "type": "foreach",
                    "params": {
                        "items": f"range(0, {count})",
                        "max_concurrency": SUBWORKFLOW_CONCURRENCY,
                        "steps": [
                            {"id": "call", "type": "subworkflow", "params": {"workflow": child}}
                        ],
                    },
                }
            ],
        }
    )
    await wait_for_quiet(stack, limit=30)
    print(f"-- Maestro: {count} subworkflow steps ...", file=sys.stderr, flush=True)
    run = await api.call("POST", f"/workflows/{parent}/runs", json={})
    run = await wait_ended(api, run["run_id"])
    if run["status"] != "succeeded":
        raise BenchError(f"the subworkflow run ended {run['status']}: {run['error']}")
    seconds = _seconds(run)
    return {
        "children": count,
        "concurrency": SUBWORKFLOW_CONCURRENCY,
        "raw_seconds": round(raw_seconds, 1),
        "raw_ms_per_child": round(1000 * raw_seconds / count, 1),
        "maestro_seconds": round(seconds, 1),
        "maestro_ms_per_child": round(1000 * seconds / count, 1),
        "ratio": round(seconds / raw_seconds, 2),
    }


async def scenario(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    nonce = uuid.uuid4().hex[:8]
    client = await Client.connect(stack.temporal_address)
    results: dict[str, Any] = {}
    async with Api.connect(stack, connections=8, timeout=600) as api:
        await wait_for_quiet(stack, limit=30)
        print(f"-- raw floor: {args.raw_activities:,} activities ...", file=sys.stderr, flush=True)
        results["raw"] = await raw_activities(
            client, args.raw_activities, args.max_concurrency, nonce
        )
        print(json.dumps(results["raw"]), file=sys.stderr, flush=True)
        results["foreach"] = await foreach_sizes(
            stack, api, client, args.sizes, args.max_concurrency, nonce
        )
        if args.subworkflows:
            results["subworkflow"] = await subworkflow_overhead(
                stack, api, client, args.subworkflows, nonce
            )
            print(json.dumps(results["subworkflow"]), file=sys.stderr, flush=True)
    return results


def table(results: dict[str, Any]) -> str:
    raw = results["raw"]
    lines = [
        "| | iterations/s | % of raw | seconds | executions | max history events "
        "| worker RSS MB | API RSS MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| raw floor ({raw['activities']:,} activities, {raw['in_flight']} in flight) "
        f"| {raw['per_s']} | 100 % | {raw['seconds']} | {raw['workflows']} | | | |",
    ]
    for row in results["foreach"]:
        share = row["per_s"] / raw["per_s"]
        lines.append(
            f"| foreach of {row['iterations']:,} | {row['per_s']} | {share:.0%} "
            f"| {row['seconds']} | {row['executions']} | {row['max_history_events']:,} "
            f"| {row['worker_rss_mb']} | {row['api_rss_mb']} |"
        )
    sub = results.get("subworkflow")
    if sub:
        lines += [
            "",
            "| | children | ms per child | ratio |",
            "| --- | --- | --- | --- |",
            f"| raw child workflows ({sub['concurrency']} at once) | {sub['children']} "
            f"| {sub['raw_ms_per_child']} | 1× |",
            f"| subworkflow steps in a foreach | {sub['children']} "
            f"| {sub['maestro_ms_per_child']} | {sub['ratio']}× |",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes", type=lambda v: [int(x) for x in v.split(",")], default=[1000, 10000, 100000]
    )
    parser.add_argument("--max-concurrency", type=int, default=500)
    parser.add_argument("--raw-activities", type=int, default=20_000)
    parser.add_argument("--subworkflows", type=int, default=200)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    report = on_fresh_stack("bench.composite", lambda stack: scenario(stack, args))
    results = report["results"]
    print(table(results))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
