"""The Python environments a flow's requirements are checked against: each worker's, as it
records it in PostgreSQL at start and every few minutes, and this process's own."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import metadata
from typing import Literal

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from maestro.db import worker_environments as environments_db

logger = logging.getLogger(__name__)

# A worker records its environment this often; one unseen for MAX_AGE no longer counts (a
# machine that was stopped or rebuilt ages out), and its row is deleted after FORGET_AFTER.
REFRESH_SECONDS = 300.0
MAX_AGE = timedelta(minutes=15)
FORGET_AFTER = timedelta(days=7)


@dataclass(frozen=True)
class Environment:
    """Installed distributions (normalized name -> version) and the PEP 508 marker values of
    one Python environment; `where` names it in messages."""

    where: str
    distributions: Mapping[str, str]
    markers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class QueueEnvironments:
    """What one task queue's requirements were checked against: the environments of its
    workers seen within MAX_AGE, or, when none reported, this (API) process's."""

    task_queue: str
    source: Literal["workers", "api"]
    hosts: list[str]
    environments: list[Environment]


def installed_distributions() -> dict[str, str]:
    """This process's installed distributions: normalized name -> version."""
    from packaging.utils import canonicalize_name

    found: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(canonicalize_name(name), dist.version)
    return found


def marker_values() -> dict[str, str]:
    """This process's PEP 508 marker values (`python_version`, `sys_platform`, ...)."""
    from packaging.markers import default_environment

    return {name: str(value) for name, value in default_environment().items()}


def local(where: str) -> Environment:
    """This process's environment."""
    return Environment(where, installed_distributions(), marker_values())


async def record(sessions: async_sessionmaker[AsyncSession], task_queues: Sequence[str]) -> None:
    """Record this worker process's environment for the task queues it serves; a failure is
    logged (a deploy then checks against the API's environment, or this worker's last one)."""
    try:
        distributions, markers = await asyncio.to_thread(
            lambda: (installed_distributions(), marker_values())
        )
        async with sessions.begin() as session:
            await environments_db.record_environment(
                session, socket.gethostname(), task_queues, distributions, markers
            )
            await environments_db.forget_before(session, datetime.now(UTC) - FORGET_AFTER)
    except Exception as exc:  # noqa: BLE001 - the next refresh tries again
        logger.warning("could not record the worker's environment", extra={"error": str(exc)})


async def record_every(
    sessions: async_sessionmaker[AsyncSession],
    task_queues: Sequence[str],
    interval: float = REFRESH_SECONDS,
) -> None:
    """Record this worker's environment again every `interval` seconds until cancelled."""
    while True:
        await asyncio.sleep(interval)
        await record(sessions, task_queues)


async def for_queues(session: AsyncSession, task_queues: Sequence[str]) -> list[QueueEnvironments]:
    """For each task queue, the environments its requirements are checked against."""
    since = datetime.now(UTC) - MAX_AGE
    checked = []
    for queue in task_queues:
        rows = await environments_db.recent_environments(session, queue, since)
        if rows:
            checked.append(
                QueueEnvironments(
                    queue,
                    "workers",
                    [row.host for row in rows],
                    [
                        Environment(
                            f"worker {row.host} (task queue {queue})",
                            row.distributions,
                            row.markers,
                        )
                        for row in rows
                    ],
                )
            )
            continue
        minutes = int(MAX_AGE.total_seconds() // 60)
        where = (
            f"the API process (no worker of task queue {queue} reported its environment in "
            f"the last {minutes} minutes)"
        )
        api_env = await asyncio.to_thread(local, where)
        checked.append(QueueEnvironments(queue, "api", [socket.gethostname()], [api_env]))
    return checked
