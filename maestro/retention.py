"""Retention: ended runs and signals older than the configured age are deleted in small
batches, and Temporal's namespace retention is kept no longer than Maestro's.

Every API process calls `Retention.sweep` from its sweeper; each call works for at most
`seconds_per_sweep`, one short transaction per batch, so the hot path never waits long for it
and the sweeper's other work is not held up. A pass walks the runs (oldest first), then the
signals, from where the previous batch stopped; when it is through, the next pass starts
`interval_seconds` later. Processes running it side by side skip each other's locked rows.
What a live run, an open join, a waiting step or a kept run's lineage needs is never deleted
(the rules are in maestro.db.retention).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from google.protobuf.duration_pb2 import Duration
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.api.namespace.v1 import NamespaceConfig
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest, UpdateNamespaceRequest
from temporalio.client import Client

from maestro.db import retention as retention_db
from maestro.settings import RetentionSettings

logger = logging.getLogger(__name__)

# The shortest workflow retention Temporal accepts for a namespace.
TEMPORAL_MIN_RETENTION = timedelta(days=1)
_BEFORE_EVERY_RUN = (datetime.min.replace(tzinfo=UTC), "")


@dataclass
class Deleted:
    """Rows one pass (or the part of it done so far) deleted."""

    runs: int = 0
    signals: int = 0


class Retention:
    """Deletes what is older than `settings.days`; does nothing when it is unset."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], settings: RetentionSettings
    ) -> None:
        self._sessions = sessions
        self._settings = settings
        self._next_pass = 0.0
        self._pass: _Pass | None = None

    @property
    def max_age(self) -> timedelta | None:
        days = self._settings.days
        return None if days is None else timedelta(days=days)

    async def sweep(self) -> Deleted:
        """Work on the current pass (starting one when due) for at most `seconds_per_sweep`."""
        loop = asyncio.get_running_loop()
        if self.max_age is None or (self._pass is None and loop.time() < self._next_pass):
            return Deleted()
        if self._pass is None:
            self._pass = _Pass(datetime.now(UTC) - self.max_age)
        current = self._pass
        deadline = loop.time() + self._settings.seconds_per_sweep
        before = Deleted(current.deleted.runs, current.deleted.signals)
        while not current.done and loop.time() < deadline:
            await self._batch(current)
        if current.done:
            self._pass = None
            self._next_pass = loop.time() + self._settings.interval_seconds
            if current.deleted.runs or current.deleted.signals:
                logger.info(
                    "retention pass done",
                    extra={
                        "runs": current.deleted.runs,
                        "signals": current.deleted.signals,
                        "cutoff": current.cutoff.isoformat(),
                    },
                )
        return Deleted(current.deleted.runs - before.runs, current.deleted.signals - before.signals)

    async def run_pass(self, cutoff: datetime) -> Deleted:
        """One whole pass with `cutoff` (everything due before it), batch after batch."""
        current = _Pass(cutoff)
        while not current.done:
            await self._batch(current)
        return current.deleted

    async def _batch(self, current: _Pass) -> None:
        size = self._settings.batch_size
        async with self._sessions.begin() as session:
            if not current.runs_done:
                batch = await retention_db.delete_runs(
                    session, current.cutoff, current.run_cursor, size
                )
                current.run_cursor = batch.after  # type: ignore[assignment]
                current.runs_done = batch.done
                current.deleted.runs += batch.deleted
            else:
                batch = await retention_db.delete_signals(
                    session, current.cutoff, current.signal_cursor, size
                )
                current.signal_cursor = batch.after  # type: ignore[assignment]
                current.done = batch.done
                current.deleted.signals += batch.deleted


@dataclass
class _Pass:
    cutoff: datetime
    run_cursor: tuple[datetime, str] = _BEFORE_EVERY_RUN
    signal_cursor: int = 0
    runs_done: bool = False
    done: bool = False

    def __post_init__(self) -> None:
        self.deleted = Deleted()


async def align_temporal_retention(
    client: Client, namespace: str, max_age: timedelta | None
) -> timedelta | None:
    """Lower the namespace's workflow retention to `max_age` (Temporal's minimum at least)
    when it keeps closed workflows longer; returns the retention it has afterwards. With no
    `max_age` (Maestro keeps everything) nothing changes."""
    described = await client.workflow_service.describe_namespace(
        DescribeNamespaceRequest(namespace=namespace)
    )
    current = described.config.workflow_execution_retention_ttl.ToTimedelta()
    if max_age is None:
        return current
    wanted = max(max_age, TEMPORAL_MIN_RETENTION)
    if current <= wanted:
        return current
    ttl = Duration()
    ttl.FromTimedelta(wanted)
    await client.workflow_service.update_namespace(
        UpdateNamespaceRequest(
            namespace=namespace, config=NamespaceConfig(workflow_execution_retention_ttl=ttl)
        )
    )
    logger.info(
        "Temporal namespace retention lowered to Maestro's",
        extra={"namespace": namespace, "from": str(current), "to": str(wanted)},
    )
    return wanted
