"""The console's sign-in: an API key, given once, becomes a session cookie (an opaque token
whose hash PostgreSQL keeps, so every API process knows it); every mutating request carries a
CSRF token derived from the session's token; scopes and owner limits are the key's."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import quote

from fastapi import Depends, Request

from api.auth import Principal, check_path_owner
from maestro import keys
from maestro.errors import Forbidden
from maestro.keys import Scope

COOKIE = "maestro_console"
SESSION_LIFETIME = timedelta(hours=12)
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class SignInRequired(Exception):
    """No live console session: the browser is sent to the sign-in page."""

    def __init__(self, next_url: str) -> None:
        self.next_url = next_url


class CsrfRejected(Exception):
    """A mutating request without the session's CSRF token (403)."""


@dataclass
class Viewer:
    """Who looks at the console: the key's principal, and the session's CSRF token."""

    principal: Principal
    csrf: str

    def can(self, scope: Scope | str) -> bool:
        return keys.allows(self.principal.scopes, Scope(scope))

    @property
    def can_write(self) -> bool:
        return self.can(Scope.write)

    @property
    def can_publish(self) -> bool:
        return self.can(Scope.publish)


def csrf_token(session_token: str) -> str:
    """The CSRF token of a session: only a page of the session can know it."""
    return hmac.new(session_token.encode(), b"maestro-console-csrf", hashlib.sha256).hexdigest()


def set_session_cookie(request: Request, response, token: str) -> None:
    """HttpOnly, SameSite=Strict, Secure when the request came over TLS, scoped to /ui."""
    response.set_cookie(
        COOKIE,
        token,
        max_age=int(SESSION_LIFETIME.total_seconds()),
        path="/ui",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


async def current_viewer(request: Request) -> Viewer:
    """The signed-in viewer (SignInRequired otherwise); the key's principal is also put where
    the API's list filters look for it."""
    cached: Viewer | None = getattr(request.state, "viewer", None)
    if cached is not None:
        return cached
    settings = request.app.state.settings
    if not settings.api.auth:
        viewer = Viewer(Principal("anonymous", "auth disabled", [Scope.admin]), csrf="")
    else:
        token = request.cookies.get(COOKIE, "")
        known = None
        if token:
            async with request.app.state.sessions() as session:
                known = await keys.console_session_key(session, token)
        if known is None:
            next_url = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            raise SignInRequired(next_url)
        principal = Principal(known.id, known.name, list(known.scopes), list(known.owners))
        viewer = Viewer(principal, csrf_token(token))
    request.state.principal = viewer.principal
    request.state.viewer = viewer
    return viewer


def require(write_scope: Scope, read_scopes: Sequence[Scope] = (Scope.read,)):
    """A route dependency, the console's twin of `api.auth.guard`: reading needs one of
    `read_scopes`, anything else `write_scope` and the CSRF token; an owner-limited key reaches
    only its owners' objects."""

    async def check(request: Request) -> Viewer:
        viewer = await current_viewer(request)
        mutating = request.method in MUTATING
        needed = (write_scope,) if mutating else tuple(read_scopes)
        if not any(viewer.can(scope) for scope in needed):
            wanted = " or ".join(repr(scope.value) for scope in needed)
            raise Forbidden(
                f"this key ({viewer.principal.name}) lacks the {wanted} scope; "
                f"it has {', '.join(viewer.principal.scopes)}"
            )
        if mutating and viewer.csrf:
            await check_csrf(request, viewer)
        if viewer.principal.owners:
            await check_path_owner(request, viewer.principal, request.app.state.sessions)
        return viewer

    return Depends(check)


async def check_csrf(request: Request, viewer: Viewer) -> None:
    sent = request.headers.get(CSRF_HEADER)
    if sent is None:
        form = await request.form()
        value = form.get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    if not sent or not hmac.compare_digest(sent, viewer.csrf):
        raise CsrfRejected()


def sign_in_url(next_url: str) -> str:
    return f"/ui/login?next={quote(next_url, safe='')}"
