"""Authentication and authorisation: Bearer API keys, scopes per route, owner limits.

An owner-limited key reaches only objects of its owners: workflows, their runs, models (owned
by the workflow that registered them) and signals (owned by their producer: see
`maestro.keys.sees_every_signal`). The path's object is checked here, once per request, for
every route; lists filter with `owners_filter` / `signal_owners_filter`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api.deps import KeyCacheDep, SessionsDep, SettingsDep
from maestro import keys
from maestro.db import models as models_db
from maestro.db import runs as runs_db
from maestro.db import signals as signals_db
from maestro.db import workflows as workflows_db
from maestro.errors import Forbidden, NotFound, Unauthorized
from maestro.keys import Scope


@dataclass
class Principal:
    """Who is calling: a key's name, scopes and the owners it is limited to (none = all)."""

    key_id: str
    name: str
    scopes: list[str]
    owners: list[str] = field(default_factory=list)

    def check_owner(self, owner: str) -> None:
        keys.check_owner(self.owners, owner)

    def signal_owners(self) -> list[str] | None:
        """The producer owners whose signals this key reads, or None for every signal."""
        return None if keys.sees_every_signal(self.scopes, self.owners) else self.owners

    def check_signal(self, signal_id: int, producer_owners: Sequence[str] | None) -> None:
        """A key limited to owners reads only the signals produced for them."""
        readable = self.signal_owners()
        if not keys.produced_for(readable, producer_owners):
            raise Forbidden(
                f"this key is limited to owners {', '.join(self.owners)}; signal {signal_id} was "
                "produced by another owner's workflow or key (the `signals:read` scope reads "
                "every signal)"
            )


async def get_principal(
    request: Request, settings: SettingsDep, key_cache: KeyCacheDep, sessions: SessionsDep
) -> Principal:
    if not settings.api.auth:
        return Principal("anonymous", "auth disabled", [Scope.admin])
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing API key: send `Authorization: Bearer <key>`")
    row = await key_cache.lookup(sessions, token.strip())
    if row is None:
        raise Unauthorized("unknown or revoked API key")
    principal = Principal(row.id, row.name, list(row.scopes), list(row.owners))
    request.state.principal = principal
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def guard(write_scope: Scope, read_scopes: Sequence[Scope] = (Scope.read,)):
    """A router dependency: GET needs one of `read_scopes`, other methods `write_scope`; a key
    limited to owners may only touch their objects (the path's workflow, run, model or
    signal)."""

    async def check(request: Request, principal: PrincipalDep, sessions: SessionsDep) -> None:
        reading = request.method in ("GET", "HEAD")
        needed = read_scopes if reading else (write_scope,)
        if not any(keys.allows(principal.scopes, scope) for scope in needed):
            wanted = " or ".join(repr(scope.value) for scope in needed)
            raise Forbidden(
                f"this key ({principal.name}) lacks the {wanted} scope; "
                f"it has {', '.join(principal.scopes)}"
            )
        if principal.owners:
            await check_path_owner(request, principal, sessions)

    return Depends(check)


async def check_path_owner(
    request: Request, principal: Principal, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """Refuse (403) when the path names an object of another owner; a missing object is left
    to the route (404), as is a malformed id (422)."""
    params = request.path_params
    async with sessions() as session:
        try:
            if "workflow_id" in params:
                workflow = await workflows_db.get_workflow(session, params["workflow_id"])
                principal.check_owner(workflow.owner)
            elif "run_id" in params:
                run = await runs_db.get_run(session, params["run_id"])
                workflow = await workflows_db.get_workflow(session, run.workflow_id)
                principal.check_owner(workflow.owner)
            elif "model_name" in params:
                model = await models_db.get_model(session, params["model_name"])
                principal.check_owner(model.owner)
            elif "signal_id" in params and principal.signal_owners() is not None:
                signal_id = _int_id(params["signal_id"])
                if signal_id is not None:
                    signal = await signals_db.get_signal(session, signal_id)
                    principal.check_signal(signal.id, signal.producer_owners)
        except NotFound:
            return


def _int_id(raw: str) -> int | None:
    try:
        value = int(raw)
    except ValueError:
        return None
    return value if 1 <= value < 2**63 else None


def owners_filter(request: Request) -> list[str] | None:
    """The owners a list must be limited to, or None for all."""
    principal: Principal | None = getattr(request.state, "principal", None)
    return principal.owners if principal and principal.owners else None


def signal_owners_filter(request: Request) -> list[str] | None:
    """The producer owners a signal list must be limited to, or None for all."""
    principal: Principal | None = getattr(request.state, "principal", None)
    return principal.signal_owners() if principal else None
