"""What a run-strategy decision costs as a workflow's live runs grow.

    python -m bench.admission [--live 0,100,300,1000] [--repeat 50]

`strategies.decide` (every start) and `strategies.admit_waiting` (every run's end) load every
live run of the workflow as ORM objects, under the workflow's row lock. This times them on an
embedded PostgreSQL with N live runs, next to a `count(*)` of the same rows.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import and_, func, insert, or_, select

from maestro import strategies
from maestro.db import workflows as workflows_db
from maestro.db.engine import create_engine, session_factory, upgrade
from maestro.db.tables import Run
from maestro.definitions import parse_definition
from maestro.embedded import EmbeddedPostgres, free_port
from maestro.runtime import RunStatus

DEFINITION = {
    "id": "bench-admission",
    "run_strategy": {"kind": "parallel", "max_concurrency": 10_000},
    "steps": [{"id": "s", "type": "noop"}],
}


async def _timed(sessions, repeat: int, body) -> float:
    """Median milliseconds of `body(session, workflow)` in a transaction holding the row lock."""
    times = []
    for _ in range(repeat):
        async with sessions.begin() as session:
            workflow = await workflows_db.get_workflow(session, DEFINITION["id"], lock=True)
            t = time.perf_counter()
            await body(session, workflow)
            times.append(time.perf_counter() - t)
            await session.rollback()
    return statistics.median(times) * 1000


async def measure(url: str, live_counts: list[int], repeat: int) -> list[dict[str, float]]:
    engine = create_engine(url)
    sessions = session_factory(engine)
    definition = parse_definition(DEFINITION)
    async with sessions.begin() as session:
        await workflows_db.push_version(session, definition)
    strategy = definition.run_strategy
    live = (
        Run.workflow_id == DEFINITION["id"],
        or_(
            Run.status == RunStatus.running,
            and_(Run.status == RunStatus.queued, Run.admitted_at.is_not(None)),
        ),
    )
    rows, number = [], 0
    for target in live_counts:
        async with sessions.begin() as session:
            batch = []
            while number < target:
                number += 1
                batch.append(
                    {
                        "run_id": str(uuid.uuid4()),
                        "workflow_id": DEFINITION["id"],
                        "version": 1,
                        "run_number": number,
                        "request_id": f"sig-{number}",
                        "status": RunStatus.running,
                        "params": {},
                        "cause": {
                            "kind": "signal",
                            "request_id": f"sig-{number}",
                            "detail": {"trigger_id": "sig-x", "signal_ids": [number]},
                        },
                        "temporal_workflow_id": f"{DEFINITION['id']}-run-{number}",
                        "temporal_run_id": str(uuid.uuid4()),
                        "admitted_at": datetime.now(UTC),
                    }
                )
            if batch:
                await session.execute(insert(Run), batch)

        async def count(session, workflow):
            await session.execute(select(func.count()).select_from(Run).where(*live))

        rows.append(
            {
                "live_runs": target,
                "decide_ms": await _timed(
                    sessions, repeat, lambda s, w: strategies.decide(s, w, strategy)
                ),
                "admit_waiting_ms": await _timed(
                    sessions, repeat, lambda s, w: strategies.admit_waiting(s, w, strategy)
                ),
                "count_ms": await _timed(sessions, repeat, count),
            }
        )
        print(rows[-1], flush=True)
    await engine.dispose()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--live", default="0,100,300,1000")
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    live_counts = sorted(int(v) for v in args.live.split(","))
    with tempfile.TemporaryDirectory(prefix="maestro-admission-") as tmp:
        postgres = EmbeddedPostgres(Path(tmp) / "postgres", free_port())
        url = postgres.start()
        try:
            upgrade(url)
            rows = asyncio.run(measure(url, live_counts, args.repeat))
        finally:
            postgres.stop()
    print("| live runs | decide ms | admit_waiting ms | count(*) ms |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['live_runs']} | {r['decide_ms']:.2f} | {r['admit_waiting_ms']:.2f} "
            f"| {r['count_ms']:.2f} |"
        )


if __name__ == "__main__":
    main()
