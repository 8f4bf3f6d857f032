"""The audit log's writer: an ASGI middleware notes every mutating request (who, what, when,
result) and a background task writes the notes in batches, off the request path.

A request only appends a dict to a list (about 10 microseconds with the middleware); every
`FLUSH_SECONDS` the task writes what gathered with one binary COPY per batch, and the app's
shutdown flushes the rest. The price: a process that dies without shutting down loses the rows
of its last fraction of a second (docs/architecture.md, "Audit log")."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from maestro.db import audit as audit_db

logger = logging.getLogger(__name__)

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
FLUSH_SECONDS = 0.2
ROWS_PER_COPY = 1_000
# Rows held while the database cannot take them; beyond this the oldest are dropped (logged).
MAX_PENDING = 100_000
MAX_TEXT = 2_000


def _text(value: Any) -> str:
    # PostgreSQL text holds no NUL character; a fuzzed path may carry one.
    return str(value).replace("\x00", "\ufffd")[:MAX_TEXT]


class AuditWriter:
    """Audit rows gathered in memory and inserted in batches by `run()`."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        self._rows: list[dict[str, Any]] = []
        self._stopping = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.dropped = 0

    def record(self, row: dict[str, Any]) -> None:
        """Queue one row for the next flush (never blocks, never touches the database)."""
        self._rows.append(row)
        if len(self._rows) > MAX_PENDING:
            excess = len(self._rows) - MAX_PENDING
            del self._rows[:excess]
            self.dropped += excess
            logger.error("audit rows dropped: the database takes none", extra={"rows": excess})

    def start(self) -> None:
        """Start the flushing task (in the app's lifespan)."""
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        """Stop the task after its last flush, then write anything still held (at shutdown);
        raises if the database cannot take the rows."""
        self._stopping.set()
        if self._task is not None:
            await self._task
        await self.flush()

    async def _run(self) -> None:
        # Never cancelled mid-insert: stopping is a flag the loop sees between flushes.
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), FLUSH_SECONDS)
            try:
                await self.flush()
            except Exception as exc:  # noqa: BLE001 - rows are kept; the next flush retries
                logger.warning("audit flush failed", extra={"error": str(exc)[:500]})

    async def flush(self) -> None:
        """Insert every held row, `ROWS_PER_COPY` per COPY. On a failure the rows go
        back to be tried again, except rows the database refuses as values (logged)."""
        while self._rows:
            batch, self._rows = self._rows[:ROWS_PER_COPY], self._rows[ROWS_PER_COPY:]
            try:
                async with self._sessions() as session:
                    await audit_db.insert_entries(session, batch)
            except BaseException as exc:
                if not _is_data_error(exc):
                    self._rows[:0] = batch
                    raise
                await self._insert_one_by_one(batch)

    async def _insert_one_by_one(self, batch: list[dict[str, Any]]) -> None:
        # One row the database cannot hold must not lose the others.
        for row in batch:
            try:
                async with self._sessions() as session:
                    await audit_db.insert_entries(session, [row])
            except Exception as exc:
                if not _is_data_error(exc):
                    raise
                self.dropped += 1
                logger.error("audit row refused", extra={"row": repr(row)[:500]})


def _is_data_error(exc: BaseException) -> bool:
    """Whether the database refused a value (not: could not be reached)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, asyncpg.DataError):
            return True
        seen = getattr(seen, "orig", None) or seen.__cause__
    return False


class AuditMiddleware:
    """Note every POST/PUT/PATCH/DELETE once its response status is known, failed ones
    (401, 403, 422, 5xx) included, with the calling key when authentication found one."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in MUTATING:
            await self.app(scope, receive, send)
            return
        # The routes' `request.state` is this dict: authentication leaves the principal here.
        state = scope.setdefault("state", {})
        at = datetime.now(UTC)
        began = time.perf_counter()
        status = 500

        async def noting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, noting_send)
        finally:
            writer: AuditWriter | None = getattr(scope["app"].state, "audit", None)
            if writer is not None:
                principal = state.get("principal")
                writer.record(
                    {
                        "at": at,
                        "key_id": principal.key_id if principal else None,
                        "key_name": _text(principal.name)[:200] if principal else None,
                        "owners": list(principal.owners) if principal else [],
                        "method": scope["method"],
                        "path": _text(scope["path"]),
                        "targets": {
                            _text(k): _text(v) for k, v in scope.get("path_params", {}).items()
                        },
                        "status": status,
                        "duration_ms": round((time.perf_counter() - began) * 1000, 3),
                    }
                )
