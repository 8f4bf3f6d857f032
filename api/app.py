"""The FastAPI application factory and its lifespan (database engine, Temporal client)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from sqlalchemy import text

from api import console
from api.audit import AuditMiddleware, AuditWriter
from api.auth import guard
from api.errors import install_error_handlers
from api.limits import BodySizeLimit
from api.routes import (
    audit,
    branches,
    code,
    keys,
    metrics,
    models,
    runs,
    secrets,
    signals,
    webhooks,
    workflows,
)
from api.schemas import ErrorBody
from maestro import __version__
from maestro.actions import RunActions
from maestro.artifacts import open_store
from maestro.db.engine import create_engine, session_factory
from maestro.definitions import WorkflowDefinition
from maestro.definitions_cache import DefinitionsCache
from maestro.ends import RunEnds
from maestro.keys import KeyCache, Scope
from maestro.registry import Registry
from maestro.runs import RunsService
from maestro.schedules import Schedules
from maestro.secrets import SecretBox
from maestro.settings import Settings
from maestro.signals import SignalBus
from maestro.steps import STEP_TYPES
from maestro.temporal_client import API_RETRY, connect, register_search_attributes
from maestro.workflows import WorkflowsService

# How long a request that writes to an object store waits for one that cannot be reached.
STORE_RETRY_FOR = timedelta(seconds=5)

logger = logging.getLogger(__name__)


def _openapi(app: FastAPI, auth: bool) -> dict:
    """FastAPI's schema plus the workflow definition, which routes read from the raw body, and
    (with auth on) the Bearer key every route but /healthz requires."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        definition = WorkflowDefinition.model_json_schema(
            ref_template="#/components/schemas/{model}"
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(definition.pop("$defs", {}))
        components["WorkflowDefinition"] = definition
        components["Step"]["properties"]["type"]["enum"] = sorted(STEP_TYPES)
        _closed_pattern_properties(schema)
        if auth:
            schema["components"]["securitySchemes"] = {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key (POST /api/v1/keys, or `maestro keys`)",
                }
            }
            schema["security"] = [{"apiKey": []}]
            schema["paths"]["/healthz"]["get"]["security"] = []
        app.openapi_schema = schema
    return app.openapi_schema


def _closed_pattern_properties(node: object) -> None:
    """Pydantic checks every key of a `dict[Annotated[str, pattern], ...]` against its pattern
    but states no `additionalProperties: false`; say so, so the document allows no key the API
    refuses."""
    if isinstance(node, dict):
        if "patternProperties" in node:
            node.setdefault("additionalProperties", False)
        for value in node.values():
            _closed_pattern_properties(value)
    elif isinstance(node, list):
        for value in node:
            _closed_pattern_properties(value)


def create_app(settings: Settings) -> FastAPI:
    """Build the API for `settings`; resources open in the lifespan, not at import."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(
            settings.require_database_url(),
            pool_size=settings.database_pool_size,
            max_overflow=settings.database_max_overflow,
        )
        client = await connect(settings.temporal, API_RETRY)
        search_attributes = await register_search_attributes(client, settings.temporal)
        sessions = session_factory(engine)
        app.state.settings = settings
        app.state.sessions = sessions
        app.state.key_cache = KeyCache(settings.api.key_cache_seconds)
        app.state.secret_box = SecretBox.from_settings(settings)
        app.state.audit = AuditWriter(sessions)
        app.state.audit.start()
        app.state.engine = engine
        app.state.runs = RunsService(
            sessions,
            client,
            settings.temporal,
            search_attributes=search_attributes,
            definitions=DefinitionsCache(),
        )
        app.state.actions = RunActions(sessions, app.state.runs, client)
        app.state.bus = SignalBus(sessions, app.state.runs, client)
        app.state.ends = RunEnds(sessions, app.state.runs, app.state.bus)
        app.state.registry = Registry(sessions, app.state.bus)
        app.state.schedules = Schedules(sessions, app.state.runs, client, settings.temporal)
        app.state.workflows = WorkflowsService(sessions, app.state.runs, app.state.schedules)
        # The store the workers use: code packages and artifacts are read and written there.
        # A request waits a few seconds for a store that is away, not a step's two minutes.
        app.state.artifacts = open_store(settings, retry_for=STORE_RETRY_FOR)
        yield
        await app.state.runs.close()
        try:
            await app.state.audit.close()
        except Exception as exc:  # noqa: BLE001 - shutting down: log what could not be written
            logger.error("audit rows lost at shutdown", extra={"error": str(exc)[:500]})
        await engine.dispose()

    app = FastAPI(
        title="Maestro",
        version=__version__,
        description="Register workflows, start runs and watch them; runs execute on Temporal. "
        "Bad input is a 422 naming each problem's location. No string may hold the NUL "
        "character (U+0000), which PostgreSQL cannot store.",
        lifespan=lifespan,
    )
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.api.max_body_bytes,
        larger={"/api/v1/code/": settings.api.max_code_package_bytes},
    )
    # Outside the size limit, so refused bodies (413) are audited too.
    app.add_middleware(AuditMiddleware)
    install_error_handlers(app)
    app.openapi = lambda: _openapi(app, settings.api.auth)  # type: ignore[method-assign]
    errors: dict[int | str, dict[str, Any]] = {
        status: {"model": ErrorBody, "description": text}
        for status, text in (
            (401, "Missing, unknown or revoked API key"),
            (403, "The key lacks the scope or the ownership"),
            (404, "Not found"),
            (409, "Not allowed in the current state"),
            (413, "Body too large"),
            (422, "Invalid input: every problem with its location"),
            (
                503,
                "PostgreSQL or Temporal unavailable (retry after Retry-After seconds), or a"
                " feature this server is not configured for (error `configuration_error`)",
            ),
        )
    }
    for router, scope, read_scopes, prefix in (
        (workflows.router, Scope.write, (Scope.read,), "/api/v1"),
        (branches.router, Scope.write, (Scope.read,), "/api/v1"),
        (code.router, Scope.write, (Scope.read,), "/api/v1"),
        (runs.router, Scope.write, (Scope.read,), "/api/v1"),
        (signals.router, Scope.publish, (Scope.read, Scope.signals_read), "/api/v1"),
        (models.router, Scope.write, (Scope.read,), "/api/v1"),
        (secrets.router, Scope.secrets_write, (Scope.read,), "/api/v1"),
        (webhooks.router, Scope.write, (Scope.read,), "/api/v1"),
        (keys.router, Scope.admin, (Scope.admin,), "/api/v1"),
        (audit.router, Scope.admin, (Scope.admin,), "/api/v1"),
        (metrics.router, Scope.read, (Scope.read,), ""),
    ):
        app.include_router(
            router,
            prefix=prefix,
            responses=errors,
            dependencies=[guard(scope, read_scopes=read_scopes)],
        )

    console.install(app)

    @app.get(
        "/healthz",
        tags=["health"],
        responses={503: {"model": ErrorBody, "description": "PostgreSQL unavailable"}},
    )
    async def health() -> dict[str, str]:
        """Liveness and database reachability."""
        async with app.state.engine.connect() as connection:
            await connection.execute(text("select 1"))
        return {"status": "ok"}

    return app
