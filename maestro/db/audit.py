"""The audit log table's reads and writes: one row per mutating API request."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from maestro.db.tables import AuditEntry

_INSERT = insert(AuditEntry)


async def insert_entries(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    """Insert audit rows (keys: AuditEntry's columns but `id`) in one statement."""
    if rows:
        await session.execute(_INSERT.values(list(rows)))


async def list_entries(
    session: AsyncSession,
    *,
    key_id: str | None,
    since: datetime | None,
    limit: int,
    before_id: int | None,
) -> Sequence[AuditEntry]:
    """Newest first, optionally of one key and from a time on."""
    query = select(AuditEntry)
    if key_id is not None:
        query = query.where(AuditEntry.key_id == key_id)
    if since is not None:
        query = query.where(AuditEntry.at >= since)
    if before_id is not None:
        query = query.where(AuditEntry.id < before_id)
    query = query.order_by(AuditEntry.id.desc()).limit(limit)
    return (await session.execute(query)).scalars().all()
