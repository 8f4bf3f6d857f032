"""What the API's lists and the trigger path cost as stored data grows.

    python -m bench.growth [--levels 1200:0,100000:10000,1000000:100000] [--samples 100]
                           [--out FILE]

Starts `maestro up` (temporary data directory, free ports), registers the workflow the trigger
path starts, then for each level `signals:runs` fills the database with bulk SQL up to that
many stored signals and runs of that one workflow (each run with its step, the signal that
started it and its match; the other signals spread over 50 names), vacuums and analyses the
filled tables (what autovacuum does on a live database), and times:

- every list endpoint (`GET /runs` by workflow, status, order and page; `GET /signals` by name,
  params and time; workflows, versions, triggers, models, keys, secrets, audit; a run, a
  signal, a run's lineage), sequentially and interleaved, the same requests at every level;
- the trigger path: `POST /signals` -> the first step's code of the run it starts.

p50 of each against the first level (target: within 1.3x). The first level is the empty
database but for one page of every list (1,200 fill signals, the trigger path's first 60
runs): the cost of a list is compared, not the size of its page. At the last level it also prints
the plan PostgreSQL picks for each list query the routes run (EXPLAIN of the exact statements):
every order must come from an index, no sort over all matching rows.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import event
from temporalio.client import Client

from bench.run import WARMUP, Api, on_fresh_stack, percentile, signal_sampler, wait_for_quiet
from bench.stack import Stack
from maestro.db import audit as audit_db
from maestro.db import runs as runs_db
from maestro.db import signals as signals_db
from maestro.db import workflows as workflows_db
from maestro.db.engine import create_engine, session_factory
from maestro.embedded import EmbeddedPostgres

TARGET_RATIO = 1.3
# Runs the trigger path makes before the first level: more than a page of `GET /runs`.
PAGE_RUNS = 60
FILL_NAMES = 50
CHUNK = 50_000
# The fill's runs and signals of the trigger's name are numbered from here: the runs and
# signals the bench makes through the API keep the numbers from 1.
FILL_NUMBERS = 1_000_000_000

# Bulk rows, `$1`-numbered from a first index: signals of the fill names (params like a data
# arrival's), then runs of the workflow with their step, their signal and its match.
_FILL_SIGNALS = """
INSERT INTO signals (name, seq, params, dedupe_key, producer, created_at)
SELECT 'grow.fill.' || (n % $3), n / $3 + 1,
       jsonb_build_object('table', 't' || (n % $3), 'dt', to_char(
           DATE '2020-01-01' + (n / $3 / 24)::int, 'YYYY-MM-DD'), 'n', n),
       'grow-fill-' || n, '{"kind": "api", "owners": []}',
       now() - interval '60 days' + n * interval '1 millisecond'
FROM generate_series($1::bigint, $2::bigint - 1) AS n
"""
_FILL_RUNS = """
WITH p AS (SELECT $3::text AS name, $4::text AS wf, $5::text AS trig, $6::bigint AS base),
s AS (
    INSERT INTO signals (name, seq, params, dedupe_key, producer, created_at)
    SELECT p.name, p.base + n, jsonb_build_object('i', n, 'nonce', 'fill'), 'grow-run-' || n,
           '{"kind": "api", "owners": []}',
           now() - interval '30 days' + n * interval '10 milliseconds'
    FROM p, generate_series($1::bigint, $2::bigint - 1) AS n
    RETURNING id, seq, created_at
), r AS (
    INSERT INTO runs (run_id, workflow_id, version, run_number, request_id, status, params,
                      cause, temporal_workflow_id, temporal_run_id, admitted_at, trigger_id,
                      created_at, started_at, ended_at)
    SELECT gen_random_uuid()::text, p.wf, 1, s.seq, p.trig || ':' || s.id, 'succeeded', '{}',
           jsonb_build_object('kind', 'signal', 'request_id', p.trig || ':' || s.id, 'detail',
               jsonb_build_object('trigger_id', p.trig, 'signal_ids', jsonb_build_array(s.id),
                                  'signals', jsonb_build_object(p.name, s.id))),
           p.wf || '-run-' || s.seq, gen_random_uuid()::text, s.created_at, p.trig,
           s.created_at, s.created_at, s.created_at + interval '2 seconds'
    FROM p, s
    RETURNING run_id, (cause -> 'detail' -> 'signal_ids' ->> 0)::bigint AS signal_id,
              created_at
), steps AS (
    INSERT INTO step_runs (run_id, step_id, status, attempt, started_at, ended_at, outputs)
    SELECT run_id, 's', 'succeeded', 1, created_at, created_at + interval '1 second',
           '{"t": 0}' FROM r
)
INSERT INTO signal_matches (signal_id, workflow_id, trigger_id, outcome, run_id)
SELECT r.signal_id, p.wf, p.trig, 'started_run', r.run_id FROM p, r
"""


async def fill(
    url: str, workflow_id: str, trigger_id: str, trigger_name: str, signals: int, runs: int
) -> dict[str, float]:
    """Add rows until the database holds `signals` signals (`runs` of them started a run of
    `workflow_id` each); returns the counts and seconds taken."""
    db = await asyncpg.connect(url)
    try:
        had_runs = await db.fetchval(
            "SELECT count(*) FROM runs WHERE workflow_id = $1 AND run_number >= $2",
            workflow_id,
            FILL_NUMBERS,
        )
        had_fill = await db.fetchval("SELECT count(*) FROM signals WHERE name LIKE 'grow.fill.%'")
        began = time.monotonic()
        for start in range(had_runs, runs, CHUNK):
            await db.execute(
                _FILL_RUNS,
                start,
                min(runs, start + CHUNK),
                trigger_name,
                workflow_id,
                trigger_id,
                FILL_NUMBERS,
            )
        fill_signals = max(0, signals - runs)
        for start in range(had_fill, fill_signals, CHUNK):
            await db.execute(_FILL_SIGNALS, start, min(fill_signals, start + CHUNK), FILL_NAMES)
        # Later publishes of the fill names take their next numbers (the trigger's name
        # keeps its own: the fill's numbers are far above them).
        await db.execute(
            "INSERT INTO signal_names (name, last_seq) SELECT name, max(seq) FROM signals"
            " WHERE name LIKE 'grow.fill.%' GROUP BY name ON CONFLICT (name) DO UPDATE"
            " SET last_seq = EXCLUDED.last_seq"
        )
        filled = time.monotonic() - began
        for table in ("signals", "runs", "step_runs", "signal_matches", "signal_names"):
            await db.execute(f"VACUUM (ANALYZE) {table}")
        # The fill's dirty pages are written now, not by a checkpoint during the timing.
        await db.execute("CHECKPOINT")
        counts = {
            "signals": await db.fetchval("SELECT count(*) FROM signals"),
            "runs": await db.fetchval("SELECT count(*) FROM runs"),
            "runs_of_workflow": await db.fetchval(
                "SELECT count(*) FROM runs WHERE workflow_id = $1", workflow_id
            ),
        }
    finally:
        await db.close()
    return counts | {
        "fill_seconds": round(filled, 1),
        "vacuum_seconds": round(time.monotonic() - began - filled, 1),
    }


def requests(workflow_id: str, trigger_name: str, ids: dict[str, Any]) -> dict[str, str]:
    """Every list endpoint, as a path with its query: the same at every level."""
    # The signals of this level's own timing (the trigger path's): a window of the same size
    # at every level.
    since = datetime.now(UTC).isoformat()
    return {
        "runs?workflow_id": f"/runs?workflow_id={workflow_id}",
        "runs?workflow_id&order=oldest": f"/runs?workflow_id={workflow_id}&order=oldest",
        "runs?workflow_id&status=succeeded": (f"/runs?workflow_id={workflow_id}&status=succeeded"),
        "runs?workflow_id, page 2": f"/runs?workflow_id={workflow_id}&cursor={ids['cursor']}",
        "runs?status=queued&order=oldest": "/runs?status=queued&order=oldest",
        "runs?status=succeeded": "/runs?status=succeeded",
        "runs": "/runs",
        "runs/{id}": f"/runs/{ids['run_id']}",
        "runs/{id}/lineage": f"/runs/{ids['run_id']}/lineage",
        "signals?name": f"/signals?name={trigger_name}",
        "signals?name&param": "/signals?name=grow.fill.7&param.dt=2020-01-01&limit=20",
        "signals?since": "/signals?since=" + since.replace("+", "%2B"),
        "signals": "/signals",
        "signals/{id}": f"/signals/{ids['signal_id']}",
        "workflows": "/workflows",
        "workflows/{id}/versions": f"/workflows/{workflow_id}/versions",
        "workflows/{id}/triggers": f"/workflows/{workflow_id}/triggers",
        "models": "/models",
        "keys": "/keys",
        "secrets": "/secrets",
        "audit": "/audit",
    }


async def time_level(
    api: Api, paths: dict[str, str], sample, samples: int, offset: int
) -> dict[str, list[float]]:
    """Each request and the trigger path `samples` times after a warm-up, round robin, so the
    machine's drift hits all alike."""
    times: dict[str, list[float]] = {key: [] for key in [*paths, "trigger path"]}
    for i in range(WARMUP + samples):
        seconds, _ = await sample(offset + i)
        if i >= WARMUP:
            times["trigger path"].append(seconds)
        for key, path in paths.items():
            t = time.perf_counter()
            await api.call("GET", path)
            if i >= WARMUP:
                times[key].append(time.perf_counter() - t)
    return times


async def list_plans(url: str, workflow_id: str, trigger_name: str) -> dict[str, dict[str, Any]]:
    """The plan of each list query as the routes build it (captured, then EXPLAINed)."""
    engine = create_engine(url)
    captured: list[tuple[str, tuple]] = []

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def capture(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        captured.append((statement, tuple(parameters or ())))

    sessions = session_factory(engine)
    after = (datetime.now(UTC) - timedelta(days=20), "z")
    since = datetime.now(UTC) - timedelta(minutes=10)
    calls = {
        "runs?workflow_id": lambda s: runs_db.list_runs(
            s, workflow_id=workflow_id, status=None, limit=50
        ),
        "runs?workflow_id&order=oldest": lambda s: runs_db.list_runs(
            s, workflow_id=workflow_id, status=None, limit=50, oldest_first=True
        ),
        "runs?workflow_id, page": lambda s: runs_db.list_runs(
            s, workflow_id=workflow_id, status=None, limit=50, after=after
        ),
        "runs?workflow_id&status=succeeded": lambda s: runs_db.list_runs(
            s, workflow_id=workflow_id, status="succeeded", limit=50
        ),
        "runs?status=queued&order=oldest": lambda s: runs_db.list_runs(
            s, workflow_id=None, status="queued", limit=50, oldest_first=True
        ),
        "runs?status=succeeded": lambda s: runs_db.list_runs(
            s, workflow_id=None, status="succeeded", limit=50
        ),
        "runs": lambda s: runs_db.list_runs(s, workflow_id=None, status=None, limit=50),
        "runs (owner-limited key)": lambda s: runs_db.list_runs(
            s, workflow_id=None, status=None, limit=50, owners=[""]
        ),
        "signals?name": lambda s: signals_db.list_signals(
            s, name=trigger_name, since=None, params={}, limit=100, before_id=None
        ),
        "signals?name&param": lambda s: signals_db.list_signals(
            s, name="grow.fill.7", since=None, params={"dt": "2020-01-01"}, limit=20, before_id=None
        ),
        "signals?since": lambda s: signals_db.list_signals(
            s, name=None, since=since, params={}, limit=100, before_id=None
        ),
        "signals": lambda s: signals_db.list_signals(
            s, name=None, since=None, params={}, limit=100, before_id=None
        ),
        "signals (owner-limited key)": lambda s: signals_db.list_signals(
            s, name=None, since=None, params={}, limit=100, before_id=None, producer_owners=[""]
        ),
        "workflows": lambda s: workflows_db.list_workflows(s, limit=100, offset=0),
        "audit": lambda s: audit_db.list_entries(
            s, key_id=None, since=None, limit=100, before_id=None
        ),
    }
    statements: dict[str, tuple[str, tuple]] = {}
    async with sessions() as session:
        for key, call in calls.items():
            captured.clear()
            await call(session)
            statements[key] = captured[-1]
    await engine.dispose()
    plans = {}
    db = await asyncpg.connect(url)
    try:
        for key, (statement, params) in statements.items():
            raw = await db.fetchval("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statement, *params)
            plan = json.loads(raw)[0]
            plans[key] = {
                "nodes": _nodes(plan["Plan"]),
                "ms": plan["Execution Time"],
                "full_sort": _full_sort(plan["Plan"]),
            }
    finally:
        await db.close()
    return plans


def _nodes(node: dict[str, Any], depth: int = 0) -> list[str]:
    label = node["Node Type"]
    if "Index Name" in node:
        label += f" {node['Index Name']}"
    elif "Relation Name" in node:
        label += f" {node['Relation Name']}"
    if "Sort Key" in node:
        label += f" ({', '.join(node['Sort Key'])})"
    label += f" rows={node.get('Actual Rows')}"
    lines = ["  " * depth + label]
    for child in node.get("Plans", []):
        lines += _nodes(child, depth + 1)
    return lines


def _full_sort(node: dict[str, Any]) -> bool:
    """Whether a plain Sort orders more than a page of rows (every row that matched, read
    before the first is returned); an Incremental Sort over an index's order does not count."""
    if node["Node Type"] == "Sort":
        fed = sum(c.get("Actual Rows", 0) * c.get("Actual Loops", 1) for c in node["Plans"])
        if fed > 500:
            return True
    return any(_full_sort(c) for c in node.get("Plans", []))


async def scenario(stack: Stack, levels: list[tuple[int, int]], samples: int) -> dict[str, Any]:
    nonce = uuid.uuid4().hex[:8]
    url = EmbeddedPostgres(stack.data_dir / "postgres", stack.pg_port).url
    client = await Client.connect(stack.temporal_address)
    results: dict[str, Any] = {"levels": []}
    async with Api.connect(stack, connections=4) as api:
        sample = await signal_sampler(api, client, nonce)
        workflow_id, trigger_name = f"bench-sig-{nonce}", f"bench.sig.{nonce}"
        [trigger] = await api.call("GET", f"/workflows/{workflow_id}/triggers")
        # One run and signal to read at every level (started before any fill).
        first = await api.call(
            "POST", "/signals", json={"name": trigger_name, "params": {"i": -1}}, ok=(201,)
        )
        ids = {"run_id": first["runs"][0]["run_id"], "signal_id": first["signal"]["id"]}
        # Before the first level, every list holds a page at least (the lists' cost, not
        # their page size, is compared): runs and signals of the trigger path, fill signals.
        for i in range(PAGE_RUNS):
            await sample(-PAGE_RUNS + i)
        offset = 0
        for signals, runs in levels:
            print(f"-- level {signals:,} signals, {runs:,} runs ...", file=sys.stderr, flush=True)
            level: dict[str, Any] = {"target": {"signals": signals, "runs": runs}}
            level["fill"] = await fill(
                url, workflow_id, trigger["trigger_id"], trigger_name, signals, runs
            )
            await wait_for_quiet(stack)
            page = await api.call("GET", "/runs", params={"workflow_id": workflow_id})
            ids["cursor"] = page["next_cursor"] or ""
            paths = requests(workflow_id, trigger_name, ids)
            if not ids["cursor"]:
                paths.pop("runs?workflow_id, page 2")
            times = await time_level(api, paths, sample, samples, offset)
            offset += WARMUP + samples
            level["p50_ms"] = {k: round(percentile(v, 50) * 1000, 2) for k, v in times.items()}
            level["p95_ms"] = {k: round(percentile(v, 95) * 1000, 2) for k, v in times.items()}
            level["cpu_seconds"] = stack.cpu_seconds()
            results["levels"].append(level)
            print(json.dumps(level["p50_ms"]), file=sys.stderr, flush=True)
        results["plans"] = await list_plans(url, workflow_id, trigger_name)
    return results


CONTROLS = ("models", "keys", "secrets")


def table(results: dict[str, Any]) -> str:
    """p50 per level, the last level against the first, and that ratio divided by the drift of
    the lists no run or signal is in (`CONTROLS`): what the machine did between the levels."""
    levels = results["levels"]
    head = [f"{lv['fill']['signals']:,} signals / {lv['fill']['runs']:,} runs" for lv in levels]
    first, last = levels[0]["p50_ms"], levels[-1]["p50_ms"]
    drift = percentile([last[k] / first[k] for k in CONTROLS if first.get(k)], 50)
    lines = [
        "| p50 ms | " + " | ".join(head) + " | last / first | ÷ drift | ≤ 1.3× |",
        "| --- | " + " | ".join("---" for _ in head) + " | --- | --- | --- |",
    ]
    for key in first:
        values = [lv["p50_ms"].get(key) for lv in levels]
        if values[-1] is None or not values[0]:
            continue
        ratio = values[-1] / values[0]
        cells = " | ".join(f"{v:.1f}" if v is not None else "-" for v in values)
        met = "yes" if ratio <= TARGET_RATIO else "**no**"
        lines.append(f"| {key} | {cells} | {ratio:.2f}× | {ratio / drift:.2f}× | {met} |")
    lines.append(f"\ndrift of {', '.join(CONTROLS)} (no run or signal in them): {drift:.2f}×")
    return "\n".join(lines)


def plan_table(plans: dict[str, Any]) -> str:
    lines = [
        "| list query | plan (last level) | ms | sorts every match |",
        "| --- | --- | --- | --- |",
    ]
    for key, plan in plans.items():
        nodes = " → ".join(n.strip() for n in plan["nodes"])
        lines.append(
            f"| {key} | {nodes} | {plan['ms']:.2f} | {'**yes**' if plan['full_sort'] else 'no'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--levels", default="1200:0,100000:10000,1000000:100000")
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    levels = [tuple(int(x) for x in lv.split(":")) for lv in args.levels.split(",")]
    report = on_fresh_stack("bench.growth", lambda stack: scenario(stack, levels, args.samples))  # type: ignore[arg-type]
    results = report["results"]
    print(table(results))
    print()
    print(plan_table(results["plans"]))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2, default=str))
        print(f"\nJSON written to {args.out}")


if __name__ == "__main__":
    main()
