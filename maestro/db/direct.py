"""The few statements every signal-started run executes, run straight through asyncpg.

SQLAlchemy's execution of one statement (the ORM's or Core's: execution context, result
object, row processing) costs about 0.15-0.25 ms of Python on top of asyncpg's own work,
which on a signal's path to its run is four statements, the largest Maestro-side share
beside the round trips themselves (docs/architecture.md). A `DirectStatement` is a
Core statement compiled once for the asyncpg dialect; it runs on the session's own connection,
inside the session's transaction, with SQLAlchemy's parameter processing (JSON serialisation)
applied to the values. `adopt` puts what it returns into the session as if the ORM had loaded
it. Everything else goes through SQLAlchemy as usual.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar, cast

import asyncpg
from sqlalchemy import inspect
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

T = TypeVar("T")

_DIALECT = asyncpg_dialect()
_REQUIRED = object()


class DirectStatement:
    """A Core statement compiled once; executed with a mapping of its bind parameters."""

    def __init__(self, statement: ClauseElement) -> None:
        compiled = cast(SQLCompiler, statement.compile(dialect=_DIALECT))
        if compiled.post_compile_params or compiled.insert_prefetch or compiled.update_prefetch:
            # Expanding IN lists and Python-side column defaults are computed per execution
            # by SQLAlchemy; statements run here must not need either.
            raise ValueError("a direct statement needs no expanding parameters or defaults")
        self.sql = compiled.string
        self._binds: list[tuple[str, Any, Any]] = []
        for name in compiled.positiontup or ():
            bind = compiled.binds[name]
            processor = bind.type.dialect_impl(_DIALECT).bind_processor(_DIALECT)
            self._binds.append((name, _REQUIRED if bind.required else bind.value, processor))

    def _args(self, params: Mapping[str, Any]) -> list[Any]:
        args = []
        for name, default, processor in self._binds:
            value = params[name] if default is _REQUIRED else params.get(name, default)
            args.append(processor(value) if processor is not None else value)
        return args

    async def execute(self, session: AsyncSession, params: Mapping[str, Any]) -> None:
        await self._run(session, "execute", params)

    async def fetch(self, session: AsyncSession, params: Mapping[str, Any]) -> list[asyncpg.Record]:
        return await self._run(session, "fetch", params)

    async def fetchrow(
        self, session: AsyncSession, params: Mapping[str, Any]
    ) -> asyncpg.Record | None:
        return await self._run(session, "fetchrow", params)

    async def _run(self, session: AsyncSession, method: str, params: Mapping[str, Any]) -> Any:
        connection = await session.connection()
        driver = await _driver(session, connection)
        try:
            return await getattr(driver, method)(self.sql, *self._args(params))
        except (asyncpg.InterfaceError, asyncpg.PostgresConnectionError) as exc:
            # SQLAlchemy does not see this error: tell its pool that the connection is gone
            # (the server restarted, the link broke), or it would be handed out again.
            if driver.is_closed() or isinstance(exc, asyncpg.PostgresConnectionError):
                await connection.invalidate(exc)
            raise


async def _driver(session: AsyncSession, connection: AsyncConnection) -> asyncpg.Connection:
    """The asyncpg connection of the session's transaction (`connection`); changes the
    session holds are flushed first, as `session.execute` does (autoflush), so the statement
    sees them."""
    if session.new or session.dirty or session.deleted:
        await session.flush()
    sync = connection.sync_connection
    assert sync is not None  # session.connection() gives a started connection
    fairy = sync.connection
    driver = cast(asyncpg.Connection, fairy.driver_connection)
    if not driver.is_in_transaction():
        # SQLAlchemy's asyncpg adapter sends BEGIN lazily, before the first statement it runs
        # itself; when a direct statement comes first, the adapter must start the transaction
        # (it then commits or rolls it back with the session). In AUTOCOMMIT it starts none.
        adapter: Any = fairy.dbapi_connection  # its _start_transaction is beyond the DB-API
        await adapter._start_transaction()
    return driver


def adopt(session: AsyncSession, obj: T, row: Mapping[str, Any]) -> T:
    """`obj` (a new, transient ORM object) holding `row`'s column values, in the session as if
    loaded, so that later attribute changes flush as UPDATEs. If the session holds the row's
    object already, that one is refreshed and returned instead."""
    mapper = inspect(type(obj))
    values = {a.key: row[a.columns[0].name] for a in mapper.column_attrs}
    pk = [values[mapper.get_property_by_column(c).key] for c in mapper.primary_key]
    key = mapper.identity_key_from_primary_key(pk)
    held = session.identity_map.get(key)
    target = held if held is not None else obj
    for name, value in values.items():
        set_committed_value(target, name, value)
    if held is None:
        make_transient_to_detached(obj)
        session.add(obj)
    return target
