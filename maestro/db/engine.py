"""Engine and session factory; migrations run through Alembic's API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_dbapi
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from maestro.settings import MAX_OVERFLOW, POOL_SIZE

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def async_url(url: str) -> str:
    """Accept `postgresql://` URLs and use the asyncpg driver for them."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    return url


def create_engine(
    url: str, *, pool_size: int = POOL_SIZE, max_overflow: int = MAX_OVERFLOW
) -> AsyncEngine:
    """An async engine for `url`. No ping before each checkout (a round trip on every
    transaction): after a database restart the first use of each stale connection fails
    (the API answers 503, activities retry) and SQLAlchemy then replaces the whole pool."""
    return create_async_engine(
        async_url(url), pool_size=pool_size, max_overflow=max_overflow, pool_recycle=1800
    )


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


@asynccontextmanager
async def autocommit(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """A session whose statements each commit on their own, without the BEGIN and COMMIT
    round trips of a transaction: for writes that are one statement."""
    async with sessions() as session:
        await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        yield session


UNAVAILABLE_ERRORS = (
    OperationalError,
    InterfaceError,
    ConnectionError,
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.InterfaceError,
    # The server is shutting down or restarting (an immediate stop ends every backend).
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    # The server refused a new connection: its max_connections are taken (by every process's
    # pool together). Retrying later succeeds once connections are returned.
    asyncpg.TooManyConnectionsError,
    # Statements run straight through the driver (maestro.db.direct) fail with the adapter's
    # own errors when their connection is gone.
    AsyncAdapt_asyncpg_dbapi.InterfaceError,
    AsyncAdapt_asyncpg_dbapi.OperationalError,
)


def is_unavailable(exc: BaseException) -> bool:
    """Whether `exc` says the database cannot be reached (down, restarting, connection lost,
    out of connections), rather than that a statement was wrong: such a failure is the
    platform's, and retrying later succeeds."""
    seen: BaseException | None = exc
    for _ in range(8):  # the driver's error sits behind one or two wrappers
        if seen is None:
            return False
        if isinstance(seen, DBAPIError) and seen.connection_invalidated:
            return True
        if isinstance(seen, UNAVAILABLE_ERRORS):
            return True
        seen = getattr(seen, "orig", None) or seen.__cause__ or seen.__context__
    return False


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the schema at `url` to `revision` (blocking; call from a thread in async code)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", async_url(url).replace("%", "%%"))
    command.upgrade(config, revision)
