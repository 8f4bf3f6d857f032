"""Riding out a database outage inside an activity attempt, so that it never counts as a
step's failure."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from maestro.db.engine import is_unavailable

T = TypeVar("T")

# How often a call that waits for the database tries again.
DATABASE_RETRY_SECONDS = 1.0


async def outlasting_outage(
    call: Callable[[], Awaitable[T]], *, heartbeat: Callable[[], None] | None = None
) -> T:
    """`call()`, tried again every second while the database cannot be reached (`call` must be
    idempotent). The wait is bounded by the attempt's own timeout and by cancellation, which
    reaches the activity through its heartbeats: `heartbeat` if given, else the caller's."""
    while True:
        try:
            return await call()
        except Exception as exc:
            if not is_unavailable(exc):
                raise
        if heartbeat is not None:
            heartbeat()
        await asyncio.sleep(DATABASE_RETRY_SECONDS)
