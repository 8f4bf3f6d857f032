"""Error mapping: every error leaves the API as `{"error", "message", "detail"}` JSON."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

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
    (ConfigurationError, 500),
]


def error_body(code: str, message: str, detail: list[dict[str, Any]] | None = None) -> dict:
    return {"error": code, "message": message, "detail": detail or []}


def _maestro_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, MaestroError)
    status = next((s for kind, s in STATUS_BY_ERROR if isinstance(exc, kind)), 500)
    detail = [p.as_dict() for p in exc.problems] if isinstance(exc, InvalidInput) else []
    headers = {"Retry-After": "5"} if status == 503 else None
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
    code = {
        404: "not_found",
        405: "method_not_allowed",
        413: "payload_too_large",
        415: "unsupported_media_type",
    }.get(exc.status_code, "http_error")
    return JSONResponse(
        error_body(code, str(exc.detail)), exc.status_code, headers=getattr(exc, "headers", None)
    )


def install_error_handlers(app: FastAPI) -> None:
    """Map core errors and request errors to HTTP in this one place."""
    app.add_exception_handler(MaestroError, _maestro_error)
    app.add_exception_handler(RequestValidationError, _request_invalid)
    app.add_exception_handler(StarletteHTTPException, _http_error)
