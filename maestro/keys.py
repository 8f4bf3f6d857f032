"""API keys: creation (the secret is shown once, only its hash is stored), lookup, scopes.

Scopes: `read` (every GET), `write` (register and activate workflows, start and act on runs,
promote models; includes read), `publish` (publish signals only), `secrets:write` (store and
delete secrets only), `admin` (everything, and keys). A key may be limited to workflows and
secrets of some owners (teams): it then reaches only their workflows, runs, models and secrets,
and only the signals they produced.
`signals:read`: read the whole signal log, whoever produced a signal (for owner-limited keys).

The last active admin key cannot be revoked, and revoking the key one is using needs
`confirm`: either would lock people out of key management.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from maestro.db.tables import ApiKey, ConsoleSession
from maestro.errors import (
    ConfirmationRequired,
    Forbidden,
    InvalidInput,
    LastAdminKey,
    NotFound,
    Problem,
)

KEY_PREFIX = "mst_"


class Scope(StrEnum):
    read = "read"
    write = "write"
    publish = "publish"
    secrets_write = "secrets:write"
    admin = "admin"
    signals_read = "signals:read"


# What each scope also grants.
_GRANTS: dict[str, set[Scope]] = {
    Scope.admin: {
        Scope.admin,
        Scope.write,
        Scope.read,
        Scope.publish,
        Scope.secrets_write,
        Scope.signals_read,
    },
    Scope.secrets_write: {Scope.secrets_write},
    Scope.write: {Scope.write, Scope.read},
    Scope.read: {Scope.read},
    Scope.publish: {Scope.publish},
    Scope.signals_read: {Scope.signals_read},
}


def hash_key(secret: str) -> str:
    # Keys are long and random: a fast hash is enough to make a stolen table useless.
    return hashlib.sha256(secret.encode()).hexdigest()


def allows(scopes: Sequence[str], needed: Scope) -> bool:
    """Whether any of `scopes` grants `needed` (a scope this version does not know grants
    nothing)."""
    return any(needed in _GRANTS.get(s, ()) for s in scopes)


def sees_every_signal(scopes: Sequence[str], owners: Sequence[str]) -> bool:
    """Unlimited keys and keys with `signals:read` read the whole signal log; other
    owner-limited keys only the signals their owners' workflows or keys produced."""
    return not owners or allows(scopes, Scope.signals_read)


def produced_for(readable: Sequence[str] | None, producer_owners: Sequence[str] | None) -> bool:
    """Whether a signal of `producer_owners` is among those of the owners `readable` (None:
    every signal)."""
    return readable is None or not set(readable).isdisjoint(producer_owners or ())


def check_owner(owners: Sequence[str], owner: str, what: str = "the workflow") -> None:
    """A key limited to owners may act only on their objects (workflows, webhooks)."""
    if owners and owner not in owners:
        raise Forbidden(
            f"this key is limited to owners {', '.join(owners)}; "
            f"{what} belongs to {owner or 'no owner'!r}"
        )


async def create_key(
    session: AsyncSession, name: str, scopes: Sequence[str], owners: Sequence[str] = ()
) -> tuple[ApiKey, str]:
    """A new key; returns the row and the secret (shown once)."""
    known = {scope.value for scope in Scope}
    unknown = [s for s in scopes if s not in known]
    if not scopes or unknown:
        raise InvalidInput(
            "invalid scopes",
            [
                Problem(
                    ("body", "scopes"),
                    f"unknown scopes {unknown}; use {', '.join(Scope)}"
                    if unknown
                    else "give at least one scope",
                    "scope",
                )
            ],
        )
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(
        id=str(uuid.uuid4()),
        name=name,
        key_hash=hash_key(secret),
        prefix=secret[:10],
        scopes=list(dict.fromkeys(scopes)),
        owners=list(owners),
    )
    session.add(row)
    await session.flush()
    return row, secret


async def find_key(session: AsyncSession, secret: str) -> ApiKey | None:
    query = select(ApiKey).where(ApiKey.key_hash == hash_key(secret), ApiKey.revoked_at.is_(None))
    return (await session.execute(query)).scalar_one_or_none()


@dataclass(frozen=True)
class KnownKey:
    """What a request needs of a valid key."""

    id: str
    name: str
    scopes: tuple[str, ...]
    owners: tuple[str, ...]


class KeyCache:
    """Keys found valid in the last `ttl` seconds, so most requests cost no database round
    trip. Revoking through this process clears it at once; other API processes stop accepting
    a revoked key within `ttl`. Unknown keys are never cached (a new key works at once)."""

    def __init__(self, ttl: float, size: int = 1_024) -> None:
        self._ttl = ttl
        self._size = size
        self._entries: OrderedDict[str, tuple[float, KnownKey]] = OrderedDict()
        # Bumped by clear(): a lookup that read the database before a revocation committed
        # must not cache what it read.
        self._generation = 0

    async def lookup(self, session_factory, secret: str) -> KnownKey | None:
        digest = hash_key(secret)
        entry = self._entries.get(digest)
        if entry is not None and entry[0] > time.monotonic():
            return entry[1]
        generation = self._generation
        async with session_factory() as session:
            row = await find_key(session, secret)
        if row is None:
            self._entries.pop(digest, None)
            return None
        known = KnownKey(row.id, row.name, tuple(row.scopes), tuple(row.owners))
        if self._ttl > 0 and generation == self._generation:
            self._entries[digest] = (time.monotonic() + self._ttl, known)
            self._entries.move_to_end(digest)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
        return known

    def clear(self) -> None:
        self._generation += 1
        self._entries.clear()


async def list_keys(session: AsyncSession) -> Sequence[ApiKey]:
    return (await session.execute(select(ApiKey).order_by(ApiKey.created_at))).scalars().all()


async def revoke_key(
    session: AsyncSession, key_id: str, *, acting_key_id: str | None = None, confirm: bool = False
) -> ApiKey:
    """Revoke a key (again: a no-op). Refuses the last active admin key, and the caller's own
    key (`acting_key_id`) unless `confirm`."""
    # Every active admin key's row is locked, in id order: a concurrent revocation waits here,
    # then re-reads the rows and no longer counts the key this one revoked. So two revocations
    # of the last two admin keys cannot both pass the count below.
    admins = (
        await session.execute(
            select(ApiKey.id)
            .where(ApiKey.revoked_at.is_(None), ApiKey.scopes.contains([Scope.admin.value]))
            .order_by(ApiKey.id)
            .with_for_update()
        )
    ).scalars()
    admin_ids = list(admins)
    row = await session.get(ApiKey, key_id, with_for_update=True)
    if row is None:
        raise NotFound(f"key {key_id!r} not found")
    if row.revoked_at is not None:
        return row
    if key_id == acting_key_id and not confirm:
        raise ConfirmationRequired(
            f"key {key_id!r} is the key this request uses: revoking it ends your own access; "
            "send the request again with `?confirm=true` to revoke it anyway"
        )
    if admin_ids == [key_id]:
        raise LastAdminKey(
            f"key {key_id!r} is the last active admin key: revoking it would leave nobody able "
            "to manage keys; create another admin key first"
        )
    row.revoked_at = datetime.now(UTC)
    await session.flush()
    return row


async def open_console_session(session: AsyncSession, key_id: str, lifetime: timedelta) -> str:
    """A new web console session for a key; returns its opaque token (only its hash is
    stored). Expired sessions are deleted on the way."""
    now = datetime.now(UTC)
    await session.execute(delete(ConsoleSession).where(ConsoleSession.expires_at <= now))
    token = secrets.token_urlsafe(32)
    session.add(
        ConsoleSession(token_hash=hash_key(token), key_id=key_id, expires_at=now + lifetime)
    )
    await session.flush()
    return token


async def console_session_key(session: AsyncSession, token: str) -> KnownKey | None:
    """The key a live console session stands for: None once it expired, was closed or its key
    was revoked."""
    query = (
        select(ApiKey)
        .join(ConsoleSession, ConsoleSession.key_id == ApiKey.id)
        .where(
            ConsoleSession.token_hash == hash_key(token),
            ConsoleSession.expires_at > datetime.now(UTC),
            ApiKey.revoked_at.is_(None),
        )
    )
    row = (await session.execute(query)).scalar_one_or_none()
    if row is None:
        return None
    return KnownKey(row.id, row.name, tuple(row.scopes), tuple(row.owners))


async def close_console_session(session: AsyncSession, token: str) -> None:
    await session.execute(
        delete(ConsoleSession).where(ConsoleSession.token_hash == hash_key(token))
    )


async def create_admin_key(database_url: str, name: str) -> str:
    """Create an admin key straight in the database (bootstrap); returns its secret."""
    from maestro.db.engine import create_engine, session_factory

    engine = create_engine(database_url, pool_size=1)
    try:
        async with session_factory(engine).begin() as session:
            _, secret = await create_key(session, name, [Scope.admin])
    finally:
        await engine.dispose()
    return secret
