"""The sweeper: finishes what a process that died between a commit and Temporal left undone —
launches of admitted runs, requested stops, deliveries of released waits — keeps every
schedule in step with the database, and deletes what retention no longer keeps. Every worker
process runs it (`workers.main.run_worker`); any number may sweep at once: row locks with
`SKIP LOCKED`, Temporal ids derived from the run and idempotent reconciliation keep it
exactly-once."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from maestro.db import runs as runs_db
from maestro.retention import Retention
from maestro.runs import RunsService
from maestro.schedules import Schedules
from maestro.signals import SignalBus

logger = logging.getLogger(__name__)


class Sweeper:
    """One process's share of the sweep."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        runs: RunsService,
        bus: SignalBus,
        schedules: Schedules,
        retention: Retention | None = None,
    ) -> None:
        self._sessions = sessions
        self._runs = runs
        self._bus = bus
        self._schedules = schedules
        self._retention = retention

    async def launch_interrupted(
        self, older_than: timedelta = timedelta(seconds=5), limit: int = 200
    ) -> int:
        """Finish launches and stops a dead process left undone; returns how many runs it
        launched. A launch is overdue `older_than` after the run's admission (not its creation:
        a run that waited in the queue is launched by the process that admits it)."""
        cutoff = datetime.now(UTC) - older_than
        async with self._sessions.begin() as session:
            runs = await runs_db.lock_unlaunched(session, cutoff, limit)
            if runs:
                for run in runs:
                    await self._runs.definitions.get(session, run.workflow_id, run.version)
                logger.info("launching interrupted runs", extra={"count": len(runs)})
                # Launch while holding the row locks so another process skips these runs.
                results = await asyncio.gather(
                    *(self._runs.start_on_temporal(r) for r in runs), return_exceptions=True
                )
                for run, rid in zip(runs, results, strict=True):
                    if isinstance(rid, str):
                        await runs_db.set_temporal_run_id(session, run.run_id, rid)
        await self._runs.send_stops(None, older_than=older_than)
        return len(runs)

    async def sweep(self, *, reconcile: bool = False) -> None:
        """One pass: launches and stops, wait deliveries, and (with `reconcile`) every
        schedule. One step failing does not hold back the others; the next pass retries it."""
        steps: list[Callable[[], Awaitable[object]]] = [
            self.launch_interrupted,
            self._bus.deliver_pending,
        ]
        if self._retention is not None:
            steps.append(self._retention.sweep)
        if reconcile:
            steps.insert(0, self._schedules.reconcile_all)
        for step in steps:
            try:
                await step()
            except Exception as exc:  # noqa: BLE001 - the next sweep tries again
                logger.warning(
                    "sweep step failed", extra={"step": step.__name__, "error": str(exc)}
                )

    async def run(self, interval: float, reconcile_every: float) -> None:
        """Sweep every `interval` seconds until cancelled, reconciling every schedule at the
        start and then every `reconcile_every` seconds."""
        loop = asyncio.get_running_loop()
        next_reconcile = 0.0
        while True:
            reconcile = loop.time() >= next_reconcile
            if reconcile:
                next_reconcile = loop.time() + reconcile_every
            await self.sweep(reconcile=reconcile)
            await asyncio.sleep(interval)
