"""The web console: Maestro's objects as HTML pages under /ui, served by the API process."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.console.auth import CsrfRejected, SignInRequired, sign_in_url
from api.console.pages import render, router
from api.errors import STATUS_BY_ERROR
from maestro.errors import InvalidInput, MaestroError

STATIC = Path(__file__).parent / "static"
# No inline script or style: what a page runs and how it looks come from /ui/static only.
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    ),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]


def install(app: FastAPI) -> None:
    """Serve the console's pages and static files, and answer its errors with pages."""
    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="console-static")
    app.add_middleware(ConsoleHeaders)
    for kind in (MaestroError, RequestValidationError):
        api_handler = app.exception_handlers[kind]
        app.add_exception_handler(kind, _for_pages(api_handler))
    app.add_exception_handler(SignInRequired, _sign_in)
    app.add_exception_handler(CsrfRejected, _csrf_rejected)


def _is_page(request: Request) -> bool:
    return request.url.path == "/ui" or request.url.path.startswith("/ui/")


def _for_pages(api_handler):
    """The API's JSON error for API paths; an error page for console paths."""

    async def handle(request: Request, exc: Exception):
        if not _is_page(request):
            return await _call(api_handler, request, exc)
        if isinstance(exc, MaestroError):
            status = next((s for kind, s in STATUS_BY_ERROR if isinstance(exc, kind)), 500)
            problems = exc.problems if isinstance(exc, InvalidInput) else []
            details = [f"{'.'.join(map(str, p.loc))}: {p.msg}" for p in problems]
            return render(request, "error.html", status, message=exc.message, details=details)
        assert isinstance(exc, RequestValidationError)
        details = [
            f"{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        ]
        return render(request, "error.html", 422, message="invalid request", details=details)

    return handle


async def _call(handler, request: Request, exc: Exception) -> Response:
    result = handler(request, exc)
    if hasattr(result, "__await__"):
        result = await result
    return result


async def _sign_in(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SignInRequired)
    url = sign_in_url(exc.next_url)
    if request.headers.get("hx-request"):
        # htmx swaps what a redirect returns into the page; have it navigate instead.
        return Response(status_code=204, headers={"HX-Redirect": url})
    return RedirectResponse(url, status_code=303)


async def _csrf_rejected(request: Request, exc: Exception) -> Response:
    return render(
        request,
        "error.html",
        403,
        message="the form's CSRF token is missing or does not belong to this session; "
        "reload the page and try again",
        details=[],
    )


class ConsoleHeaders:
    """Security headers on every /ui response (pure ASGI: streams pass through)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == "/ui" or path.startswith("/ui/")):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        await self.app(scope, receive, send_with_headers)
