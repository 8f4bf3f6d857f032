"""The audit log table's reads and writes: one row per mutating API request."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from maestro.db.tables import AuditEntry

COLUMNS = (
    "at",
    "key_id",
    "key_name",
    "owners",
    "method",
    "path",
    "targets",
    "status",
    "duration_ms",
)


async def insert_entries(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    """Insert audit rows (dicts of `COLUMNS`) with one binary COPY, in the session's
    transaction if it has begun one, else as one statement of its own."""
    if not rows:
        return
    # COPY costs microseconds of Python per row; a multi-row INSERT built by SQLAlchemy costs
    # hundreds (a new statement to compile per batch), on the API's event loop.
    records = [
        tuple(json.dumps(row[c]) if c == "targets" else row[c] for c in COLUMNS) for row in rows
    ]
    raw = await (await session.connection()).get_raw_connection()
    driver: Any = raw.driver_connection  # asyncpg's, set while the connection is open
    await driver.copy_records_to_table(AuditEntry.__tablename__, columns=COLUMNS, records=records)


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
