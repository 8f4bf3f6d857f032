"""Time-trigger benchmark: N workflows, each with a `* * * * *` trigger, for M minutes.

Every fire must make exactly one run; reports fire lateness (the run's first step started −
its scheduled time, and run created − scheduled time) and the time to create N schedules.
Then, in the same stack, the raw-Temporal floor: N plain Temporal schedules, each starting the
one-activity RawWorkflow every minute, for M minutes (workflow started − scheduled time, and
activity code started − scheduled time).

    python -m bench.schedules [--workflows 1000] [--minutes 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
)
from temporalio.common import SearchAttributeKey

from bench.raw import RAW_TASK_QUEUE, RAW_WORKFLOW
from bench.run import Api, machine, percentile
from bench.stack import Stack
from maestro.embedded import EmbeddedPostgres

# Temporal sets this on every workflow a schedule starts: the time it was scheduled for.
SCHEDULED_START = SearchAttributeKey.for_datetime("TemporalScheduledStartTime")


def _ms(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50": round(percentile(values, 50) * 1000, 1),
        "p99": round(percentile(values, 99) * 1000, 1),
        "max": round(max(values) * 1000, 1),
    }


async def scenario(stack: Stack, workflows: int, minutes: int) -> dict:
    nonce = f"{int(time.time())}"
    async with Api.connect(stack, timeout=120) as api:
        gate = asyncio.Semaphore(16)

        async def push(i: int) -> None:
            async with gate:
                await api.push(
                    {
                        "id": f"cron-{nonce}-{i:04d}",
                        "triggers": [{"cron": "* * * * *"}],
                        "params": {
                            "run_ts": {"type": "string", "default": ""},
                            "run_date": {"type": "string", "default": ""},
                        },
                        "steps": [{"id": "go", "type": "noop"}],
                    }
                )

        began = time.monotonic()
        await asyncio.gather(*(push(i) for i in range(workflows)))
        register_s = time.monotonic() - began  # each push also creates its schedule
    window, cpu = await _window(stack, minutes)
    url = EmbeddedPostgres(stack.data_dir / "postgres", stack.pg_port).url  # with its password
    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch(
            "select workflow_id, cause->'detail'->>'scheduled_at' as at, created_at, "
            "started_at, status from runs where workflow_id like $1 "
            "and cause->>'kind' = 'time'",
            f"cron-{nonce}-%",
        )
    finally:
        await connection.close()
    wanted = {t.isoformat() for t in window}
    counted = Counter((r["workflow_id"], r["at"]) for r in rows if r["at"] in wanted)
    created_late, started_late = [], []
    for r in rows:
        if r["at"] not in wanted:
            continue
        at = datetime.fromisoformat(r["at"])
        created_late.append((r["created_at"] - at).total_seconds())
        if r["started_at"] is not None:
            started_late.append((r["started_at"] - at).total_seconds())
    expected = workflows * minutes
    return {
        "workflows": workflows,
        "minutes": minutes,
        "register_and_schedule_seconds": round(register_s, 1),
        "expected_fires": expected,
        "runs": sum(counted.values()),
        "missed": expected - len(counted),
        "doubled": sum(1 for c in counted.values() if c > 1),
        "not_started": sum(1 for r in rows if r["at"] in wanted and r["started_at"] is None),
        "created_lateness_ms": _ms(created_late),
        "started_lateness_ms": _ms(started_late),
        "cpu_seconds_in_window": cpu,
    }


async def _window(stack: Stack, minutes: int) -> tuple[list[datetime], dict[str, float]]:
    """Whole minutes that start at least 45 s after every schedule exists (with a minute
    starting seconds after hundreds of schedules were created, a third of their first fires
    were missing, most likely because a schedule does not fire before Temporal first runs its
    scheduler); returns once the last of them is a minute past (time for late fires to
    arrive), with the CPU seconds each part of the stack used from the first of them."""
    first = (datetime.now(UTC) + timedelta(seconds=105)).replace(second=0, microsecond=0)
    window = [first + timedelta(minutes=k) for k in range(minutes)]
    await asyncio.sleep(max((first - datetime.now(UTC)).total_seconds(), 0))
    before = stack.cpu_seconds()
    settle = (window[-1] - datetime.now(UTC)).total_seconds() + 60
    await asyncio.sleep(max(settle, 0))
    after = stack.cpu_seconds()
    return window, {k: round(after[k] - before.get(k, 0.0), 1) for k in after}


async def raw_floor(stack: Stack, schedules: int, minutes: int) -> dict:
    """The same load on plain Temporal: no Maestro code, the raw worker runs the workflows."""
    client = await Client.connect(stack.temporal_address)
    nonce = f"{int(time.time())}"
    ids = [f"bench-raw-{nonce}-{i:04d}" for i in range(schedules)]
    gate = asyncio.Semaphore(16)

    async def create(schedule_id: str) -> None:
        async with gate:
            await client.create_schedule(
                schedule_id,
                Schedule(
                    action=ScheduleActionStartWorkflow(
                        RAW_WORKFLOW, id=f"{schedule_id}-wf", task_queue=RAW_TASK_QUEUE
                    ),
                    spec=ScheduleSpec(cron_expressions=["* * * * *"]),
                    policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.ALLOW_ALL),
                ),
            )

    began = time.monotonic()
    await asyncio.gather(*(create(i) for i in ids))
    create_s = time.monotonic() - began
    window, cpu = await _window(stack, minutes)
    for schedule_id in ids:
        await client.get_schedule_handle(schedule_id).delete()
    wanted = set(window)
    counted: Counter[tuple[str, datetime]] = Counter()
    started_late, activity_late, not_done = [], [], 0
    query = f"WorkflowType = '{RAW_WORKFLOW}' AND WorkflowId STARTS_WITH 'bench-raw-{nonce}-'"
    async for execution in client.list_workflows(query):
        at = execution.typed_search_attributes.get(SCHEDULED_START)
        if at is None or at.astimezone(UTC) not in wanted:
            continue
        at = at.astimezone(UTC)
        counted[(execution.id.rsplit("-wf-", 1)[0], at)] += 1
        started_late.append((execution.start_time - at).total_seconds())
        try:
            entered = await asyncio.wait_for(
                client.get_workflow_handle(execution.id, run_id=execution.run_id).result(), 1
            )
            activity_late.append(entered - at.timestamp())
        except Exception:  # noqa: BLE001 - still running a minute after the window
            not_done += 1
    expected = schedules * minutes
    return {
        "schedules": schedules,
        "minutes": minutes,
        "create_schedules_seconds": round(create_s, 1),
        "expected_fires": expected,
        "workflows": sum(counted.values()),
        "missed": expected - len(counted),
        "doubled": sum(1 for c in counted.values() if c > 1),
        "not_done": not_done,
        "started_lateness_ms": _ms(started_late),
        "activity_lateness_ms": _ms(activity_late),
        "cpu_seconds_in_window": cpu,
    }


async def wait_until_idle(stack: Stack, limit: float = 900.0) -> None:
    """Until the whole machine uses less than 0.3 cores (a backlog has drained)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        before = stack.cpu_seconds()["machine"]
        await asyncio.sleep(5)
        if stack.cpu_seconds()["machine"] - before < 0.3 * 5:
            return
    print("the machine is still busy; measuring anyway", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workflows", type=int, default=1000)
    parser.add_argument("--minutes", type=int, default=3)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--no-raw", action="store_true", help="skip the raw-Temporal floor")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="maestro-sched-bench-") as work:
        stack = Stack(Path(work))
        stack.start()
        try:
            # The floor first: its schedules are deleted after its window, so once its backlog
            # has drained nothing of it is left to compete with Maestro's fires.
            result = {}
            if not args.no_raw:
                result["raw"] = asyncio.run(raw_floor(stack, args.workflows, args.minutes))
                print(json.dumps(result, indent=2, default=str), flush=True)
                asyncio.run(wait_until_idle(stack))
            result["maestro"] = asyncio.run(scenario(stack, args.workflows, args.minutes))
        finally:
            stack.stop()
    result = {
        "machine": machine(),
        "command": f"python -m bench.schedules --workflows "
        f"{args.workflows} --minutes {args.minutes}",
        "results": result,
    }
    print(json.dumps(result, indent=2, default=str))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
