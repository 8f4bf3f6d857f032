"""Benchmark Maestro against a raw-Temporal floor on one machine.

    python -m bench.run [--signals 200] [--throughput 1000] [--triggers 10000] [--out FILE]

Starts `maestro up` (temporary data directory, free ports) and a raw-Temporal worker, runs the
scenarios below one after another, prints a markdown table, writes JSON to --out, and stops
everything it started. Every wait is bounded in count and time.

- raw floor: `start_workflow` of a one-activity workflow -> the activity's code (sequential);
  raw throughput: many such workflows started concurrently, until all results are back.
- signal: POST /signals -> the first step's code of the run it starts (sequential).
- on_finish: the last code of an upstream run -> the first step's code of the downstream run.
- throughput: signals POSTed concurrently -> every run `succeeded`; none lost or duplicated.
- ingest: batches of 1,000 signals with 10,000 triggers registered; and the matching cost per
  signal (a name one trigger listens to, with a false `where`, vs a name nobody listens to).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError

from bench.raw import RAW_TASK_QUEUE, RAW_WORKFLOW
from bench.stack import ROOT, Stack
from maestro.runtime import DEFAULT_HEARTBEAT_TIMEOUT

WARMUP = 10
RUN_TIMEOUT = 60.0  # one run, start to end
# After a (3) phase, its workflows' timers still fire on Temporal: workflow task timeouts (10 s)
# and the step's heartbeat timeout (60 s after it started, the raw activity's too).
SETTLE_SECONDS = DEFAULT_HEARTBEAT_TIMEOUT.total_seconds() + 5
MAX_TRIGGERS_PER_WORKFLOW = 50
SCENARIOS = ("raw_latency", "signal", "on_finish", "raw_throughput", "throughput", "ingest")
STRATEGY = {"kind": "parallel", "max_concurrency": 10_000}

TARGETS = {
    "signal_p50_ratio": 1.5,
    "signal_p99_ms": 250.0,
    "on_finish_p50_ms": 150.0,
    "throughput_ratio": 0.70,
    "ingest_per_s": 1000.0,
    "matching_cost_ms": 5.0,
}


class BenchError(RuntimeError):
    pass


# -- statistics ---------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summary_ms(seconds: list[float]) -> dict[str, float]:
    """n, p50, p95, p99, mean, min, max in milliseconds."""
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "p50": round(percentile(ms, 50), 2),
        "p95": round(percentile(ms, 95), 2),
        "p99": round(percentile(ms, 99), 2),
        "mean": round(statistics.fmean(ms), 2) if ms else float("nan"),
        "min": round(min(ms), 2) if ms else float("nan"),
        "max": round(max(ms), 2) if ms else float("nan"),
    }


def breakdown(rows: list[dict[str, float]]) -> dict[str, float]:
    """p50 in ms of each named offset over samples (offsets missing in a sample are skipped)."""
    keys = sorted(
        {k for row in rows for k in row},
        key=lambda k: statistics.median([r[k] for r in rows if k in r]),
    )
    return {k: round(percentile([r[k] * 1000 for r in rows if k in r], 50), 2) for k in keys}


def without_dispatch_wait(rows: list[dict[str, float]], code: str) -> dict[str, float]:
    """Latency minus the wait between the workflow's start and its first workflow task: that
    wait swings with the phase of Temporal's transfer-queue reads (every 50 ms at Temporal's
    default rate, 1 ms with maestro/temporal-dynamic-config.yaml), so removing it compares the
    work each path does (see docs/benchmarks.md)."""
    return summary_ms(
        [r[code] - (r["first_workflow_task_started"] - r["workflow_started"]) for r in rows]
    )


def rows_ms(rows: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: round(v * 1000, 2) for k, v in row.items()} for row in rows]


# -- helpers ------------------------------------------------------------------------------------


class Deadline:
    """A time budget for one loop; `check()` raises once it is spent."""

    def __init__(self, seconds: float, what: str) -> None:
        self.seconds = seconds
        self.what = what
        self.end = time.monotonic() + seconds

    def check(self) -> None:
        if time.monotonic() > self.end:
            raise BenchError(f"{self.what} did not finish within {self.seconds:.0f}s")


def _event_seconds(event: Any) -> float:
    return event.event_time.seconds + event.event_time.nanos / 1e9


async def history_times(client: Client, workflow_id: str) -> dict[str, float]:
    """Wall-clock times of the interesting events of a workflow: its start and end, its first
    workflow task, and each activity type's first scheduled/started/completed event."""
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    times: dict[str, float] = {}
    names: dict[int, str] = {}

    def put(key: str, event: Any) -> None:
        times.setdefault(key, _event_seconds(event))

    for e in history.events:
        kind = e.event_type
        if kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
            put("workflow_started", e)
        elif kind == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
            put("first_workflow_task_started", e)
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            name = e.activity_task_scheduled_event_attributes.activity_type.name
            names[e.event_id] = name
            put(f"{name}_scheduled", e)
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            name = names.get(e.activity_task_started_event_attributes.scheduled_event_id, "?")
            put(f"{name}_started", e)
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            name = names.get(e.activity_task_completed_event_attributes.scheduled_event_id, "?")
            put(f"{name}_completed", e)
        elif kind in (
            EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED,
            EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED,
        ):
            put("workflow_closed", e)
    return times


async def wait_workflow(
    client: Client, workflow_id: str, run_id: str | None = None, timeout: float = RUN_TIMEOUT
) -> Any:
    """Wait (long poll on Temporal, no load on the API) until a workflow closes. With its run
    id, Temporal need not look up the current run first (the raw floor's handle has it too)."""
    deadline = Deadline(timeout, f"workflow {workflow_id}")
    while True:
        try:
            handle = client.get_workflow_handle(workflow_id, run_id=run_id)
            return await asyncio.wait_for(handle.result(), timeout)
        except WorkflowFailureError as exc:
            raise BenchError(f"workflow {workflow_id} failed: {exc.cause}") from exc
        except TimeoutError:
            raise BenchError(f"workflow {workflow_id} did not end within {timeout}s") from None
        except Exception:  # noqa: BLE001 - e.g. not found yet: the sweeper may still launch it
            deadline.check()
            await asyncio.sleep(0.05)


class Api:
    """The Maestro REST API, failing loudly on unexpected statuses. The load generator is
    aiohttp: it costs the bench process about half of httpx's CPU per request, and the bench
    shares the machine's two cores with the stack it measures (docs/benchmarks.md)."""

    def __init__(self, http: aiohttp.ClientSession, base_url: str) -> None:
        self.http = http
        self.base_url = base_url

    @classmethod
    @asynccontextmanager
    async def connect(
        cls, stack: Stack, *, connections: int = 100, timeout: float = 60
    ) -> AsyncIterator[Api]:
        """A client of the stack's API, authenticated as its admin, with up to `connections`
        kept-alive connections."""
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections),
            headers=stack.api_headers(),
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as http:
            yield cls(http, f"{stack.api_url}/api/v1")

    async def call(self, method: str, path: str, *, ok: tuple[int, ...] = (200, 201), **kw: Any):
        async with self.http.request(method, self.base_url + path, **kw) as response:
            if response.status not in ok:
                text = await response.text()
                raise BenchError(f"{method} {path} -> {response.status}: {text[:500]}")
            return await response.json()

    async def push(self, definition: dict[str, Any]) -> None:
        await self.call("POST", "/workflows", json=definition, ok=(201,))

    async def run(self, run_id: str) -> dict[str, Any]:
        return await self.call("GET", f"/runs/{run_id}")

    async def runs(self, workflow_id: str, status: str | None = None, limit: int = 500):
        """Every run of a workflow (newest first), through the pages."""
        items: list[dict[str, Any]] = []
        params: dict[str, Any] = {"workflow_id": workflow_id, "limit": limit}
        if status:
            params["status"] = status
        for _ in range(10_000):
            page = await self.call("GET", "/runs", params=params)
            items += page["items"]
            if not page["next_cursor"]:
                return items
            params["cursor"] = page["next_cursor"]
        raise BenchError("too many pages")


def step_output(run: dict[str, Any], key: str) -> float:
    [step] = run["steps"]
    if run["status"] != "succeeded" or not step["outputs"] or key not in step["outputs"]:
        raise BenchError(f"run {run['run_id']} is {run['status']}: {run.get('error')}")
    return float(step["outputs"][key])


def one_python_step(entrypoint: str) -> list[dict[str, Any]]:
    return [{"id": "s", "type": "python", "params": {"entrypoint": entrypoint}}]


# -- scenarios ----------------------------------------------------------------------------------


# One latency sample: (seconds from t0 to the code, {event: seconds since t0}).
Sample = tuple[float, dict[str, float]]
Sampler = Callable[[int], Awaitable[Sample]]
# A latency sample asks for its outcome (a long poll on Temporal) only this long after the start
# or the POST returned, once the measured path has run its course (20-40 ms here): a request
# during the path would take CPU from the stack it measures, and it lands at a different point
# of each path (before the raw floor's first workflow task, in the middle of Maestro's).
OBSERVE_AFTER = 0.1
# Where each path's code starts, in its sample's rows.
LATENCY_CODE = {"raw_latency": "activity_code", "signal": "step_code"}


def latency_result(samples: list[Sample], code: str) -> dict[str, Any]:
    """Summary, breakdown and raw rows of one path's latency samples (`code`: the row key of
    the code's entry)."""
    seconds, rows = [s for s, _ in samples], [r for _, r in samples]
    result = {
        "latency_ms": summary_ms(seconds),
        "without_dispatch_wait_ms": without_dispatch_wait(rows, code),
        "breakdown_p50_ms": breakdown(rows),
        "rows_ms": rows_ms(rows),
        "samples_s": seconds,
    }
    if all("post_returned" in r for r in rows):
        result["post_rtt_ms"] = summary_ms([r["post_returned"] for r in rows])
    return result


async def latencies(samplers: dict[str, Sampler], n: int) -> dict[str, list[Sample]]:
    """`n` samples of each path after a warm-up, one at a time; several paths alternate
    sample by sample, their order flipping every round, so the machine's drift (which moves a
    path's p50 by a third from one minute to the next here) hits them alike."""
    kept: dict[str, list[Sample]] = {key: [] for key in samplers}
    order = list(samplers)
    for i in range(WARMUP + n):
        for key in order if i % 2 == 0 else order[::-1]:
            sample = await samplers[key](i)
            if i >= WARMUP:
                kept[key].append(sample)
    return kept


async def raw_sampler(client: Client, nonce: str) -> Sampler:
    """start_workflow -> the activity's first line."""

    async def sample(i: int) -> Sample:
        workflow_id = f"raw-lat-{nonce}-{i}"
        t0 = time.time()
        handle = await client.start_workflow(
            RAW_WORKFLOW, id=workflow_id, task_queue=RAW_TASK_QUEUE
        )
        t_started = time.time()
        await asyncio.sleep(OBSERVE_AFTER)
        entered = await asyncio.wait_for(handle.result(), RUN_TIMEOUT)
        events = await history_times(client, workflow_id)
        return entered - t0, {
            "start_call_returned": t_started - t0,
            **{k: v - t0 for k, v in events.items() if k != "workflow_closed"},
            "activity_code": entered - t0,
        }

    return sample


async def signal_sampler(api: Api, client: Client, nonce: str) -> Sampler:
    """POST /signals -> the first step's code of the run the signal starts."""
    name = f"bench.sig.{nonce}"
    await api.push(
        {
            "id": f"bench-sig-{nonce}",
            "triggers": [{"signal": {"all_of": [{"name": name}]}}],
            "steps": one_python_step("bench.steps:stamp"),
        }
    )

    async def sample(i: int) -> Sample:
        t0 = time.time()
        published = await api.call(
            "POST", "/signals", json={"name": name, "params": {"i": i, "nonce": nonce}}, ok=(201,)
        )
        t_posted = time.time()
        [run] = published["runs"]
        await asyncio.sleep(OBSERVE_AFTER)
        await wait_workflow(client, run["temporal_workflow_id"], run["temporal_run_id"])
        t = step_output(await api.run(run["run_id"]), "t")
        events = await history_times(client, run["temporal_workflow_id"])
        return t - t0, {
            "post_returned": t_posted - t0,
            **{k: v - t0 for k, v in events.items() if not k.startswith(("finish", "workflow_c"))},
            "step_code": t - t0,
        }

    return sample


async def raw_throughput(client: Client, m: int, concurrency: int, nonce: str) -> dict[str, Any]:
    """M workflows from `concurrency` clients, each starting one and waiting for its result
    before the next: the closed loop that (3)'s clients run."""
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> float:
        async with gate:
            handle = await client.start_workflow(
                RAW_WORKFLOW, id=f"raw-tp-{nonce}-{i}", task_queue=RAW_TASK_QUEUE
            )
            return await handle.result()

    t0 = time.time()
    results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(m))), 600)
    elapsed = time.time() - t0
    return {
        "workflows": len(results),
        "seconds": round(elapsed, 3),
        "per_s": round(m / elapsed, 1),
        "concurrency": concurrency,
    }


async def on_finish_latency(api: Api, client: Client, n: int, nonce: str) -> dict[str, Any]:
    """The upstream run's last code -> the downstream run's first code (via `on_finish`)."""
    upstream, downstream = f"bench-up-{nonce}", f"bench-down-{nonce}"
    await api.push({"id": upstream, "steps": one_python_step("bench.steps:end")})
    await api.push(
        {
            "id": downstream,
            "triggers": [{"on_finish": {"workflow": upstream}}],
            "steps": one_python_step("bench.steps:stamp"),
        }
    )
    samples, rows = [], []
    seen: set[str] = set()
    for i in range(WARMUP + n):
        up = await api.call(
            "POST", f"/workflows/{upstream}/runs", json={"request_id": f"{nonce}-{i}"}, ok=(201,)
        )
        await wait_workflow(client, up["temporal_workflow_id"])
        # The downstream run was created in the upstream's finish_run transaction.
        down = None
        deadline = Deadline(30, f"downstream run of {up['run_id']}")
        while down is None:
            deadline.check()
            page = await api.call("GET", "/runs", params={"workflow_id": downstream, "limit": 5})
            for candidate in page["items"]:
                if candidate["run_id"] in seen:
                    continue
                [signal_id] = candidate["cause"]["detail"]["signal_ids"]
                signal = await api.call("GET", f"/signals/{signal_id}")
                if signal["params"]["run_id"] == up["run_id"]:
                    down = candidate
            if down is None:
                await asyncio.sleep(0.05)
        seen.add(down["run_id"])
        await wait_workflow(client, down["temporal_workflow_id"])
        t = step_output(await api.run(down["run_id"]), "t")
        t_end = step_output(await api.run(up["run_id"]), "t_end")
        if i < WARMUP:
            continue
        samples.append(t - t_end)
        up_events = await history_times(client, up["temporal_workflow_id"])
        down_events = await history_times(client, down["temporal_workflow_id"])
        rows.append(
            {
                **{
                    f"up.{k}": v - t_end
                    for k, v in up_events.items()
                    if k.startswith(("finish_run", "workflow_closed", "run_step_completed"))
                },
                **{
                    f"down.{k}": v - t_end
                    for k, v in down_events.items()
                    if k.startswith(("workflow_started", "run_step_s", "first_"))
                },
                "down.step_code": t - t_end,
            }
        )
    return {
        "latency_ms": summary_ms(samples),
        "breakdown_p50_ms": breakdown(rows),
        "rows_ms": rows_ms(rows),
        "samples_s": samples,
    }


async def throughput(
    api: Api, client: Client, m: int, concurrency: int, nonce: str, bystanders: int = 0
) -> dict[str, Any]:
    """M signals from `concurrency` clients, each posting one and waiting (on Temporal, as the
    raw floor does) for the run it started before posting the next -> all M runs succeeded;
    then exactly once, from the API. `bystanders`: workflows registered first whose
    `on_finish` triggers wait for another workflow (every run's completion signal could reach
    them)."""
    name, workflow_id = f"bench.tp.{nonce}", f"bench-tp-{nonce}"
    gate = asyncio.Semaphore(8)

    async def bystander(k: int) -> None:
        async with gate:
            await api.push(
                {
                    "id": f"bench-by-{nonce}-{k}",
                    "triggers": [{"on_finish": {"workflow": f"bench-elsewhere-{nonce}"}}],
                    "steps": [{"id": "s", "type": "noop"}],
                }
            )

    await asyncio.gather(*(bystander(k) for k in range(bystanders)))
    await api.push(
        {
            "id": workflow_id,
            "triggers": [{"signal": {"all_of": [{"name": name}]}}],
            # The default (sequential) would run one at a time: this measures the machinery.
            "run_strategy": STRATEGY,
            "steps": [{"id": "s", "type": "noop"}],
        }
    )
    todo = list(range(m))
    posted: list[int] = []
    started_runs: list[str] = []

    async def client_loop() -> None:
        while todo:
            i = todo.pop()
            body = {"name": name, "params": {"i": i, "nonce": nonce}}
            published = await api.call("POST", "/signals", json=body, ok=(201,))
            posted.append(published["signal"]["id"])
            if len(published["runs"]) != 1:
                raise BenchError(f"signal {i} started {len(published['runs'])} runs, not 1")
            run = published["runs"][0]
            started_runs.append(run["run_id"])
            await wait_workflow(client, run["temporal_workflow_id"], run["temporal_run_id"])

    t0 = time.time()
    await asyncio.wait_for(asyncio.gather(*(client_loop() for _ in range(concurrency))), 600)
    t_done = time.time()
    runs = await api.runs(workflow_id)
    cause_ids = [sid for r in runs for sid in r["cause"]["detail"]["signal_ids"]]
    ended = max(datetime.fromisoformat(r["ended_at"]).timestamp() for r in runs)
    return {
        "signals": m,
        "concurrency": concurrency,
        "bystanders": bystanders,
        "run_strategy": STRATEGY,
        "seconds": round(t_done - t0, 3),
        "per_s": round(m / (t_done - t0), 1),
        "per_s_by_last_ended_at": round(m / (ended - t0), 1),
        "runs": len(runs),
        "succeeded": sum(r["status"] == "succeeded" for r in runs),
        "runs_in_post_responses": len(started_runs),
        "distinct_cause_signal_ids": len(set(cause_ids)),
        "cause_ids_equal_posted_ids": set(cause_ids) == set(posted) and len(cause_ids) == m,
        "lost": len(set(posted) - set(cause_ids)),
        "duplicated": len(cause_ids) - len(set(cause_ids)) + max(0, len(runs) - m),
    }


async def ingest(api: Api, triggers: int, batches: int, samples: int, nonce: str) -> dict[str, Any]:
    """Batch publishing with `triggers` registered triggers, and the per-signal matching cost."""
    matched_name, unmatched_name = f"bench.match.{nonce}", f"bench.nomatch.{nonce}"
    workflows = -(-triggers // MAX_TRIGGERS_PER_WORKFLOW)

    def definition(w: int) -> dict[str, Any]:
        count = min(MAX_TRIGGERS_PER_WORKFLOW, triggers - w * MAX_TRIGGERS_PER_WORKFLOW)
        conditions = [{"name": f"bench.idle.{nonce}.{w}.{k}"} for k in range(count)]
        if w == 0:
            # The one trigger that listens to the measured name, never satisfied. A number
            # narrows nothing (a string would: signals without it would not reach the
            # trigger), so every signal of the name is evaluated and records condition_false.
            conditions[0] = {"name": matched_name, "where": {"i": {"<": 0}}}
        return {
            "id": f"bench-idle-{nonce}-{w}",
            "triggers": [{"signal": {"all_of": [c]}} for c in conditions],
            "steps": [{"id": "s", "type": "noop"}],
        }

    t0 = time.time()
    pending = list(range(workflows))

    async def pusher() -> None:
        while pending:
            await api.push(definition(pending.pop()))

    await asyncio.wait_for(asyncio.gather(*(pusher() for _ in range(4))), 900)
    register_seconds = time.time() - t0
    registered = await api.call("GET", f"/workflows/bench-idle-{nonce}-0/triggers")
    if len(registered) != min(triggers, MAX_TRIGGERS_PER_WORKFLOW):
        raise BenchError(f"expected {MAX_TRIGGERS_PER_WORKFLOW} triggers, got {len(registered)}")

    def batch(b: int, size: int) -> dict[str, Any]:
        return {
            "signals": [
                {"name": f"bench.ingest.{nonce}.{i % 10}", "params": {"b": b, "i": i}}
                for i in range(size)
            ]
        }

    await api.call("POST", "/signals/batch", json=batch(-1, 100), ok=(201,))  # warm-up
    batch_seconds = []
    t0 = time.time()
    for b in range(batches):
        tb = time.time()
        out = await api.call("POST", "/signals/batch", json=batch(b, 1000), ok=(201,))
        batch_seconds.append(time.time() - tb)
        if len(out["results"]) != 1000 or any(r["duplicate"] or r["runs"] for r in out["results"]):
            raise BenchError("a batch came back with duplicates or runs")
    ingest_seconds = time.time() - t0

    async def post_one(name: str, i: int) -> float:
        body = {"name": name, "params": {"env": "bench", "i": i}}
        t = time.perf_counter()
        await api.call("POST", "/signals", json=body, ok=(201,))
        return time.perf_counter() - t

    with_trigger, without_trigger = [], []
    for i in range(WARMUP + samples):  # interleaved, so drift hits both alike
        a = await post_one(matched_name, i)
        b = await post_one(unmatched_name, i)
        if i >= WARMUP:
            with_trigger.append(a)
            without_trigger.append(b)
    check = await api.call("GET", "/signals", params={"name": matched_name, "limit": 1})
    detail = await api.call("GET", f"/signals/{check['items'][0]['id']}")
    outcomes = [m["outcome"] for m in detail["matches"]]
    if outcomes != ["condition_false"]:
        raise BenchError(f"expected one condition_false match, got {outcomes}")
    a, b = summary_ms(with_trigger), summary_ms(without_trigger)
    return {
        "triggers": triggers,
        "workflows": workflows,
        "register_seconds": round(register_seconds, 1),
        "batches": batches,
        "batch_size": 1000,
        "signals": batches * 1000,
        "seconds": round(ingest_seconds, 3),
        "per_s": round(batches * 1000 / ingest_seconds, 1),
        "batch_ms": summary_ms(batch_seconds),
        "single_with_trigger_ms": a,
        "single_without_trigger_ms": b,
        "matching_cost_p50_ms": round(a["p50"] - b["p50"], 2),
        "matching_cost_mean_ms": round(a["mean"] - b["mean"], 2),
    }


# -- report -------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    temporal = Path(sys.executable).parent / "temporal"
    try:
        version = subprocess.run(
            [str(temporal), "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout.strip()
    except OSError:
        version = "unknown"
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_gib": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "temporal": version,
    }


def source() -> dict[str, Any]:
    """The commit measured, and whether the work tree differed from it."""

    def git(*args: str) -> str:
        result = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30, check=False
        )
        return result.stdout.strip()

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {"commit": None, "note": f"{ROOT} is not a git checkout"}
    dirty = [line for line in git("status", "--porcelain").splitlines() if line]
    return {"commit": commit, "uncommitted_paths": len(dirty)}


def on_fresh_stack(
    module: str, scenario: Callable[[Stack], Coroutine[Any, Any, dict[str, Any]]]
) -> dict[str, Any]:
    """Start `maestro up` in a temporary directory, run `scenario` on it, stop everything;
    the report: the machine, the commit, the command (`python -m <module> ...`), the results."""
    with tempfile.TemporaryDirectory(prefix=f"maestro-{module.rpartition('.')[2]}-") as work:
        stack = Stack(Path(work))
        print(f"starting the stack in {work} ...", file=sys.stderr, flush=True)
        stack.start()
        try:
            results = asyncio.run(scenario(stack))
        finally:
            stack.stop()
    return {
        "machine": machine(),
        "source": source(),
        "command": " ".join([f"python -m {module}", *sys.argv[1:]]),
        "results": results,
    }


def evaluate(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(metric, value, target, met) rows."""
    rows: list[tuple[str, str, str, str]] = []

    def yes(ok: bool) -> str:
        return "yes" if ok else "**no**"

    raw = results.get("raw_latency")
    if raw:
        r = raw["latency_ms"]
        rows.append(
            (
                "raw floor: start_workflow → activity code (p50/p95/p99)",
                f"{r['p50']:.1f} / {r['p95']:.1f} / {r['p99']:.1f} ms",
                "reference",
                "",
            )
        )
    sig = results.get("signal")
    if sig and raw:
        s = sig["latency_ms"]
        ratio = s["p50"] / raw["latency_ms"]["p50"]
        sig["p50_ratio_to_raw"] = round(ratio, 2)
        rows.append(
            (
                "(1) signal POST → first step code (p50/p95/p99)",
                f"{s['p50']:.1f} / {s['p95']:.1f} / {s['p99']:.1f} ms",
                "",
                "",
            )
        )
        rows.append(
            (
                "(1) p50 / raw floor p50",
                f"{ratio:.2f}×",
                f"≤ {TARGETS['signal_p50_ratio']}×",
                yes(ratio <= TARGETS["signal_p50_ratio"]),
            )
        )
        a, b = sig["without_dispatch_wait_ms"]["p50"], raw["without_dispatch_wait_ms"]["p50"]
        rows.append(
            (
                "(1) p50 without the start → first workflow task wait: signal \\| raw",
                f"{a:.1f} \\| {b:.1f} ms = {a / b:.2f}×",
                "(context)",
                "",
            )
        )
        rows.append(
            (
                "(1) p99",
                f"{s['p99']:.1f} ms",
                f"≤ {TARGETS['signal_p99_ms']:.0f} ms",
                yes(s["p99"] <= TARGETS["signal_p99_ms"]),
            )
        )
    fin = results.get("on_finish")
    if fin:
        f = fin["latency_ms"]
        rows.append(
            (
                "(2) upstream last code → downstream first code (p50/p95)",
                f"{f['p50']:.1f} / {f['p95']:.1f} ms (n={f['n']})",
                f"p50 ≤ {TARGETS['on_finish_p50_ms']:.0f} ms",
                yes(f["p50"] <= TARGETS["on_finish_p50_ms"]),
            )
        )
    tp, rtp = results.get("throughput"), results.get("raw_throughput")
    if rtp:
        rows.append(
            (
                "raw throughput (1-activity workflows, start → result)",
                f"{rtp['per_s']:.0f} /s",
                "reference",
                "",
            )
        )
    if tp and rtp:
        ratio = tp["per_s"] / rtp["per_s"]
        tp["ratio_to_raw"] = round(ratio, 2)
        rows.append(
            (
                f"(3) signals → runs succeeded ({tp['signals']}, {tp['concurrency']} clients"
                + (
                    f", {tp['bystanders']} bystander on_finish triggers"
                    if tp.get("bystanders")
                    else ""
                )
                + ")",
                f"{tp['per_s']:.0f} /s = {ratio:.0%} of raw",
                f"≥ {TARGETS['throughput_ratio']:.0%} of raw",
                yes(ratio >= TARGETS["throughput_ratio"]),
            )
        )
        exact = tp["runs"] == tp["signals"] and tp["cause_ids_equal_posted_ids"]
        rows.append(
            (
                "(3) lost / duplicated runs",
                f"{tp['lost']} / {tp['duplicated']}",
                "0 / 0",
                yes(exact and tp["lost"] == 0 and tp["duplicated"] == 0),
            )
        )
    ing = results.get("ingest")
    if ing:
        rows.append(
            (
                f"(4) batch ingest, {ing['triggers']:,} triggers registered",
                f"{ing['per_s']:.0f} signals/s",
                f"≥ {TARGETS['ingest_per_s']:.0f} /s",
                yes(ing["per_s"] >= TARGETS["ingest_per_s"]),
            )
        )
        rows.append(
            (
                "(4) matching cost per signal (p50 with − without a trigger)",
                f"{ing['matching_cost_p50_ms']:.2f} ms",
                f"≤ {TARGETS['matching_cost_ms']:.0f} ms",
                yes(ing["matching_cost_p50_ms"] <= TARGETS["matching_cost_ms"]),
            )
        )
        w, wo = ing["single_with_trigger_ms"], ing["single_without_trigger_ms"]
        rows.append(
            (
                "(4) single-signal POST latency p50/p99: with trigger | without",
                f"{w['p50']:.1f}/{w['p99']:.1f} \\| {wo['p50']:.1f}/{wo['p99']:.1f} ms",
                "",
                "",
            )
        )
    return rows


def markdown(rows: list[tuple[str, str, str, str]]) -> str:
    lines = ["| metric | value | target | met |", "| --- | --- | --- | --- |"]
    lines += [f"| {m} | {v} | {t} | {ok} |" for m, v, t, ok in rows]
    return "\n".join(lines)


async def wait_for_quiet(stack: Stack, window: float = 2.0, limit: float = 180.0) -> None:
    """Wait (at most `limit` seconds) until processes outside the benchmark use less than a
    fifth of a core, so a neighbour's burst does not land in a measurement."""
    deadline = Deadline(limit, "waiting for a quiet machine")
    while True:
        before = stack.cpu_seconds()
        await asyncio.sleep(window)
        after = stack.cpu_seconds()
        ours = sum(after[k] - before.get(k, 0.0) for k in after if k != "machine")
        others = after["machine"] - before["machine"] - ours
        if others < 0.2 * window:
            return
        try:
            deadline.check()
        except BenchError:
            print("   the machine stays busy; measuring anyway", file=sys.stderr, flush=True)
            return
        print(f"   others use {others / window:.1f} cores; waiting", file=sys.stderr, flush=True)


def cpu_table(results: dict[str, Any]) -> str:
    """CPU seconds per process during each scenario, next to its wall time and what the disk
    that holds the stack's data did meanwhile (MB written, cache flushes)."""
    names = sorted({n for r in results.values() for n in r.get("cpu_seconds", {})})
    disk = ["disk_mb_written", "disk_flushes"]
    lines = [
        "| scenario | wall s | " + " | ".join([*names, *disk]) + " |",
        "| --- | --- | " + " | ".join("---" for _ in [*names, *disk]) + " |",
    ]
    for key, r in results.items():
        if "cpu_seconds" not in r:
            continue  # a path measured inside another phase (interleaved)
        cpu, io = r.get("cpu_seconds", {}), r.get("disk", {})
        cells = [f"{cpu.get(n, 0):.1f}" for n in names] + [f"{io.get(n, 0):.0f}" for n in disk]
        lines.append(f"| {key} | {r.get('wall_seconds', 0):.1f} | {' | '.join(cells)} |")
    return "\n".join(lines)


# -- main ---------------------------------------------------------------------------------------


async def scenarios(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    nonce = uuid.uuid4().hex[:8]
    results: dict[str, Any] = {}
    client = await Client.connect(stack.temporal_address)
    async with Api.connect(stack, connections=args.concurrency) as api:

        def raw_tp(m: int, part: str) -> Callable[[], Awaitable[dict[str, Any]]]:
            return lambda: raw_throughput(client, m, args.concurrency, nonce + part)

        def tp(m: int, part: str) -> Callable[[], Awaitable[dict[str, Any]]]:
            return lambda: throughput(
                api, client, m, args.concurrency, nonce + part, args.bystanders
            )

        # (3) in one phase each, the raw floor first; or interleaved as raw, Maestro, Maestro,
        # raw (half of the workflows each), which cancels a machine's steady drift and gives
        # each side the first and the second place once.
        half = args.throughput // 2
        pairs = (
            [
                ("raw_throughput.1", raw_tp(half, "a")),
                ("throughput.1", tp(half, "a")),
                ("throughput.2", tp(args.throughput - half, "b")),
                ("raw_throughput.2", raw_tp(args.throughput - half, "b")),
            ]
            if args.interleave
            else [
                ("raw_throughput", raw_tp(args.throughput, "")),
                ("throughput", tp(args.throughput, "")),
            ]
        )

        async def latency(keys: list[str]) -> dict[str, Any]:
            """(1) and/or its floor; each path's result goes into `results`. Returns the
            phase's own entry (the path's result when it is one path)."""
            make = {
                "raw_latency": lambda: raw_sampler(client, nonce),
                "signal": lambda: signal_sampler(api, client, nonce),
            }
            kept = await latencies({key: await make[key]() for key in keys}, args.signals)
            for key in keys:
                results[key] = latency_result(kept[key], LATENCY_CODE[key])
            return results[keys[0]] if len(keys) == 1 else {}

        # (1) and its floor in one phase each, the floor first; or, interleaved, in one phase
        # that alternates them sample by sample.
        both = ["raw_latency", "signal"]
        if args.only:
            both = [k for k in both if k in args.only]
        firsts: list[tuple[str, Callable[[], Awaitable[dict[str, Any]]]]] = (
            [("+".join(both), lambda: latency(both))]
            if args.interleave and len(both) == 2
            else [(k, lambda k=k: latency([k])) for k in both]
        )
        steps: list[tuple[str, Callable[[], Awaitable[dict[str, Any]]]]] = [
            *firsts,
            ("on_finish", lambda: on_finish_latency(api, client, args.on_finish, nonce)),
            *pairs,
            ("ingest", lambda: ingest(api, args.triggers, args.batches, args.matching, nonce)),
        ]
        settled = 0.0  # when Temporal has fired the timers of the last (3) phase
        for key, scenario in steps:
            if args.only and not set(key.split(".")[0].split("+")) & set(args.only):
                continue
            stack.check()
            if (wait := settled - time.monotonic()) > 0:
                print(f"   {wait:.0f}s for Temporal's timers to fire", file=sys.stderr, flush=True)
                await asyncio.sleep(wait)
            await wait_for_quiet(stack)
            print(f"-- {key} ...", file=sys.stderr, flush=True)
            t, cpu, disk = time.monotonic(), stack.cpu_seconds(), stack.disk_counters()
            results[key] = await scenario()
            wall, after = time.monotonic() - t, stack.cpu_seconds()
            # What the disk did meanwhile: Temporal's SQLite file and PostgreSQL share it.
            results[key]["disk"] = {
                name: round(v - disk[name], 1) for name, v in stack.disk_counters().items()
            }
            results[key]["wall_seconds"] = round(wall, 2)
            # Where the machine's time went during the scenario (2 cores = 2 s per second).
            used = {name: after[name] - cpu.get(name, 0.0) for name in sorted(after)}
            # CPU that processes outside this benchmark took: anything far from 0 means the
            # numbers of this scenario were measured on a busy machine.
            used["others"] = max(0.0, used.pop("machine") - sum(used.values()))
            results[key]["cpu_seconds"] = {name: round(v, 2) for name, v in used.items()}
            print(f"   {key} done in {wall:.1f}s", file=sys.stderr, flush=True)
            if key.split(".")[0] in ("raw_throughput", "throughput"):
                # Each of its workflows left Temporal timers (workflow task timeouts, the
                # step's heartbeat timeout) that fire after it ended: the next phase must not
                # pay for them.
                settled = time.monotonic() + args.settle
    for key in ("raw_throughput", "throughput"):
        parts = [results[k] for k in (f"{key}.1", f"{key}.2") if k in results]
        if parts:
            results[key] = combined(parts)
    return results


def combined(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One throughput result from the interleaved halves: counts, seconds, CPU and disk
    summed; the rate over the summed seconds; the halves kept as they were."""
    out = dict(parts[0])
    summed = (
        "workflows",
        "signals",
        "seconds",
        "wall_seconds",
        "runs",
        "succeeded",
        "runs_in_post_responses",
        "distinct_cause_signal_ids",
        "lost",
        "duplicated",
    )
    for name in summed:
        if name in out:
            out[name] = round(sum(p[name] for p in parts), 3)
    for name in ("cpu_seconds", "disk"):
        out[name] = {k: round(sum(p[name].get(k, 0.0) for p in parts), 2) for k in parts[0][name]}
    count = out.get("signals", out.get("workflows"))
    out["per_s"] = round(count / out["seconds"], 1)
    if "cause_ids_equal_posted_ids" in out:
        out["cause_ids_equal_posted_ids"] = all(p["cause_ids_equal_posted_ids"] for p in parts)
    out.pop("per_s_by_last_ended_at", None)
    out["halves"] = parts
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--signals", type=int, default=200, help="latency samples (1) and raw")
    parser.add_argument("--on-finish", type=int, default=50, help="on_finish samples (2)")
    parser.add_argument("--throughput", type=int, default=1000, help="signals/workflows (3)")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent clients (3)")
    parser.add_argument(
        "--settle",
        type=float,
        default=SETTLE_SECONDS,
        help="seconds after each (3) phase before the next scenario, for Temporal's timers",
    )
    parser.add_argument(
        "--bystanders",
        type=int,
        default=0,
        help="workflows with on_finish triggers on another workflow, registered before (3)",
    )
    parser.add_argument("--triggers", type=int, default=10_000, help="registered triggers (4)")
    parser.add_argument("--batches", type=int, default=10, help="batches of 1,000 signals (4)")
    parser.add_argument("--matching", type=int, default=200, help="matching-cost samples (4)")
    parser.add_argument(
        "--only",
        type=lambda v: v.split(","),
        help=f"comma-separated scenarios to run (default all: {', '.join(SCENARIOS)})",
    )
    parser.add_argument(
        "--interleave",
        action="store_true",
        help="(1) and its raw floor alternating sample by sample; (3) as raw, Maestro, "
        "Maestro, raw, with half of the workflows each",
    )
    parser.add_argument("--out", type=Path, help="write JSON results here")
    parser.add_argument("--keep", action="store_true", help="keep the data dir and logs")
    args = parser.parse_args()
    if args.only and not set(args.only) <= set(SCENARIOS):
        parser.error(f"--only takes some of {', '.join(SCENARIOS)}")

    work_dir = Path(tempfile.mkdtemp(prefix="maestro-bench-"))
    stack = Stack(work_dir)
    failed = True
    results: dict[str, Any] = {}
    try:
        print(f"starting the stack in {work_dir} ...", file=sys.stderr, flush=True)
        stack.start()
        results = asyncio.run(scenarios(stack, args))
        failed = False
    finally:
        print("stopping the stack ...", file=sys.stderr, flush=True)
        stack.stop()
        if failed or args.keep:
            print(f"data and logs kept in {work_dir}", file=sys.stderr)
        else:
            stack.cleanup()
    rows = evaluate(results)
    report = {
        "machine": machine(),
        "source": source(),
        "command": " ".join(["python -m bench.run", *sys.argv[1:]]),
        "parameters": vars(args)
        | {
            "out": str(args.out) if args.out else None,
            # `false` when the dev server ran without synced commits (CPU-bound comparison).
            "dev_server_sync": os.environ.get("MAESTRO_TEMPORAL__DEV_SERVER_SYNC", "normal"),
        },
        "targets": TARGETS,
        "results": results,
    }
    print(markdown(rows))
    print("\n" + cpu_table(results))
    print("\nbreakdowns (p50 ms since t0):")
    for key in ("raw_latency", "signal", "on_finish"):
        if key in results:
            print(f"  {key}: {json.dumps(results[key]['breakdown_p50_ms'])}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2, default=str))
        print(f"\nJSON written to {args.out}")


if __name__ == "__main__":
    main()
