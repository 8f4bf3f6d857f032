"""Error mapping: every error leaves the API as `{"error", "message", "detail"}` JSON."""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError as SQLDataError
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route
from temporalio.service import RPCError

from maestro.db.engine import UNAVAILABLE_ERRORS, is_unavailable
from maestro.errors import (
    ConfigurationError,
    Conflict,
    Forbidden,
    InvalidInput,
    MaestroError,
    NotFound,
    Unauthorized,
    Unavailable,
)

logger = logging.getLogger(__name__)

STATUS_BY_ERROR: list[tuple[type[MaestroError], int]] = [
    (InvalidInput, 422),
    (Unauthorized, 401),
    (Forbidden, 403),
    (NotFound, 404),
    (Conflict, 409),
    (Unavailable, 503),
    # A feature this server is not configured for (no secrets key, say): the message says what
    # to set. Retrying does not help, so no Retry-After.
    (ConfigurationError, 503),
]


def error_body(code: str, message: str, detail: list[dict[str, Any]] | None = None) -> dict:
    return {"error": code, "message": message, "detail": detail or []}


def _maestro_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, MaestroError)
    status = next((s for kind, s in STATUS_BY_ERROR if isinstance(exc, kind)), 500)
    detail = [p.as_dict() for p in exc.problems] if isinstance(exc, InvalidInput) else []
    retry = status == 503 and not isinstance(exc, ConfigurationError)
    headers = {"Retry-After": "5"} if retry else None
    if status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    return JSONResponse(error_body(exc.code, exc.message, detail), status, headers=headers)


def _request_invalid(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    detail = [
        {
            "loc": list(err["loc"]),
            "msg": err["msg"].removeprefix("Value error, "),
            "type": err["type"],
        }
        for err in exc.errors()
    ]
    summary = "; ".join(f"{'.'.join(map(str, d['loc']))}: {d['msg']}" for d in detail[:5])
    return JSONResponse(error_body("request_invalid", summary or "request is invalid", detail), 422)


def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400:
        # FastAPI's answer to a body it cannot decode (not UTF-8, say): bad input like any
        # other, so a 422 naming the body and the reason.
        reason = f"the body could not be decoded: {exc.__cause__ or exc.detail}"[:300]
        detail = [{"loc": ["body"], "msg": reason, "type": "json_invalid"}]
        return JSONResponse(error_body("request_invalid", reason, detail), 422)
    headers = getattr(exc, "headers", None)
    if exc.status_code == 405:
        # Starlette names the methods of the first route on the path; every route counts.
        headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(request))}
    code = {
        404: "not_found",
        405: "method_not_allowed",
        413: "payload_too_large",
        415: "unsupported_media_type",
    }.get(exc.status_code, "http_error")
    return JSONResponse(error_body(code, str(exc.detail)), exc.status_code, headers=headers)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at the request's path."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, Route) and route.matches(request.scope)[0] != Match.NONE:
            methods |= route.methods or set()
    return sorted(methods)


def _bad_value(exc: BaseException) -> BaseException | None:
    """The database's complaint about a value (out of range, a NUL character, ...), if any."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, SQLDataError | asyncpg.DataError | OverflowError):
            return seen
        seen = getattr(seen, "orig", None) or seen.__cause__
    return None


async def _temporal_error(request: Request, exc: Exception) -> JSONResponse:
    # Routes turn the answers they expect (not found, already started) into their own errors;
    # anything else Temporal says means it cannot serve the request now.
    logger.warning(
        "temporal unavailable", extra={"error": str(exc)[:500], "path": request.url.path}
    )
    return JSONResponse(
        error_body("unavailable", f"Temporal is unavailable: {str(exc)[:200]}; retry later"),
        503,
        headers={"Retry-After": "5"},
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    bad = _bad_value(exc)
    if bad is not None:
        # A value the database cannot hold (an id beyond its integer range, a NUL byte): the
        # caller's mistake, not ours.
        reason = str(bad).split("\n")[0][:300]
        return JSONResponse(
            error_body(
                "invalid_value",
                f"a value cannot be stored or looked up: {reason}",
                [{"loc": ["request"], "msg": reason, "type": "invalid_value"}],
            ),
            422,
        )
    if is_unavailable(exc):
        logger.warning(
            "database unavailable", extra={"error": str(exc)[:500], "path": request.url.path}
        )
        return JSONResponse(
            error_body(
                "database_unavailable",
                "the database cannot be reached or takes no more connections; retry in a few "
                "seconds",
            ),
            503,
            headers={"Retry-After": "5"},
        )
    logger.error("unexpected error", exc_info=exc, extra={"path": request.url.path})
    return JSONResponse(error_body("internal_error", "unexpected error; see the API's logs"), 500)


def install_error_handlers(app: FastAPI) -> None:
    """Map core errors and request errors to HTTP in this one place."""
    # A lost or refused database connection is a 503 with a retry hint, never a 500 with a
    # traceback; the engine's pre-ping replaces dead connections, so the API recovers alone.
    for kind in (DBAPIError, OverflowError, asyncpg.DataError, *UNAVAILABLE_ERRORS):
        app.add_exception_handler(kind, _unexpected)
    app.add_exception_handler(RPCError, _temporal_error)
    app.add_exception_handler(Exception, _unexpected)
    app.add_exception_handler(MaestroError, _maestro_error)
    app.add_exception_handler(RequestValidationError, _request_invalid)
    app.add_exception_handler(StarletteHTTPException, _http_error)
