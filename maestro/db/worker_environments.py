"""The environments worker processes record: their task queues and installed distributions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from maestro.db.tables import WorkerEnvironment


async def record_environment(
    session: AsyncSession,
    host: str,
    task_queues: Sequence[str],
    distributions: Mapping[str, str],
    markers: Mapping[str, str],
) -> None:
    """Insert or refresh the row of (host, task queues), seen now."""
    queues = sorted(set(task_queues))
    values = {"distributions": dict(distributions), "markers": dict(markers)}
    statement = insert(WorkerEnvironment).values(
        host=host, queues_key="\n".join(queues), task_queues=queues, **values
    )
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=[WorkerEnvironment.host, WorkerEnvironment.queues_key],
            set_={**values, "seen_at": func.now()},
        )
    )


async def recent_environments(
    session: AsyncSession, task_queue: str, since: datetime
) -> list[WorkerEnvironment]:
    """The environments of workers serving `task_queue` seen at or after `since`."""
    rows = await session.scalars(
        select(WorkerEnvironment)
        .where(
            WorkerEnvironment.task_queues.any_() == task_queue,
            WorkerEnvironment.seen_at >= since,
        )
        .order_by(WorkerEnvironment.host)
    )
    return list(rows)


async def forget_before(session: AsyncSession, cutoff: datetime) -> None:
    """Delete the environments of workers not seen since `cutoff`."""
    await session.execute(delete(WorkerEnvironment).where(WorkerEnvironment.seen_at < cutoff))
