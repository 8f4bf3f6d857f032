"""Authentication and authorisation: Bearer API keys, scopes per route, owner limits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from maestro import keys
from maestro.db import runs as runs_db
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


async def get_principal(request: Request) -> Principal:
    if not request.app.state.settings.api.auth:
        return Principal("anonymous", "auth disabled", [Scope.admin])
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing API key: send `Authorization: Bearer <key>`")
    row = await request.app.state.key_cache.lookup(request.app.state.sessions, token.strip())
    if row is None:
        raise Unauthorized("unknown or revoked API key")
    principal = Principal(row.id, row.name, list(row.scopes), list(row.owners))
    request.state.principal = principal
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def guard(write_scope: Scope, read_scope: Scope = Scope.read):
    """A router dependency: GET needs `read_scope`, other methods `write_scope`; a key limited
    to owners may only touch their workflows (and those workflows' runs)."""

    async def check(request: Request, principal: PrincipalDep) -> None:
        needed = read_scope if request.method in ("GET", "HEAD") else write_scope
        if not keys.allows(principal.scopes, needed):
            raise Forbidden(
                f"this key ({principal.name}) lacks the {needed.value!r} scope; "
                f"it has {', '.join(principal.scopes)}"
            )
        if principal.owners:
            await _check_path_owner(request, principal)

    return Depends(check)


async def _check_path_owner(request: Request, principal: Principal) -> None:
    params = request.path_params
    async with request.app.state.sessions() as session:
        try:
            if "workflow_id" in params:
                workflow = await workflows_db.get_workflow(session, params["workflow_id"])
                principal.check_owner(workflow.owner)
            elif "run_id" in params:
                run = await runs_db.get_run(session, params["run_id"])
                workflow = await workflows_db.get_workflow(session, run.workflow_id)
                principal.check_owner(workflow.owner)
        except NotFound:
            return  # the route answers 404 itself


def owners_filter(request: Request) -> list[str] | None:
    """The owners a list must be limited to, or None for all."""
    principal: Principal | None = getattr(request.state, "principal", None)
    return principal.owners if principal and principal.owners else None
