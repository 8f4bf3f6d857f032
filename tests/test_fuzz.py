"""Fuzz every operation of the API from its own OpenAPI schema with schemathesis.

Schemathesis turns the schema served at /openapi.json into Hypothesis strategies; each test
draws a bounded, derandomized set of cases for one operation (valid data in `positive` mode,
schema-violating data in `negative` mode) and sends them through the session's in-process
`api` client, authenticated with the admin key. Two properties must hold for every request:

* the API never answers 5xx, and
* every non-2xx body is the documented error shape (api/errors.py):
  `{"error": str, "message": str, "detail": [{"loc": [...], "msg": str, "type": str}]}`.

Hypothesis runs in a worker thread and hands each request to the session's event loop, so the
fixtures' app, database engine and Temporal client are the ones that serve the requests, and a
failing case is shrunk and reported like any Hypothesis failure.

No operation is skipped: with random ids, the destructive ones (stop, kill, revoke, deactivate,
...) meet nothing that exists and answer 404; random step types fail validation, so pushes store
nothing (should one succeed, the workflow is deactivated at once so its triggers never fire).
Key revocation is fuzzed with a throwaway admin key of its own (and a second one, so that it is
never the last admin key): a case that revokes the key it is sent with (`confirm=true`) can
then lock out only that key, never the session's admin key the other tests use.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from schemathesis import GenerationMode
from schemathesis.core import NotSet

from api.app import create_app
from maestro.settings import Settings

# Collection needs the operations before any fixture runs: build the schema from an app that is
# never started (no lifespan, no connections); the test reads the schema the session's API serves.
_COLLECTION_SCHEMA = create_app(Settings(database_url="postgresql://unused/unused")).openapi()
OPERATIONS = {
    f"{method.upper()} {path}": operation
    for path, methods in _COLLECTION_SCHEMA["paths"].items()
    for method, operation in methods.items()
}


def negatable(operation: dict) -> bool:
    """Whether negative mode can violate the operation's schema: it needs a body, a query
    parameter or a path parameter that is more than any string (any string is a valid path
    segment, so Hypothesis would find no case at all)."""
    if "requestBody" in operation:
        return True
    for param in operation.get("parameters", []):
        schema = {
            k: v for k, v in param.get("schema", {}).items() if k not in ("title", "description")
        }
        if param["in"] != "path" or schema != {"type": "string"}:
            return True
    return False


# Push and validate draw whole workflow definitions, which Hypothesis generates slowly.
HEAVY = {"POST /api/v1/workflows", "POST /api/v1/workflows/validate"}
# MAESTRO_FUZZ_EXAMPLES raises the budget for a longer local run (known failures then may differ).
MAX_EXAMPLES = int(os.environ.get("MAESTRO_FUZZ_EXAMPLES", "20"))
MAX_EXAMPLES_HEAVY = max(MAX_EXAMPLES // 2, 1)

# Operations known to fail a property, with the reason; strict, so a fix makes them pass loudly.
KNOWN_FAILURES: dict[tuple[str, str], str] = {}


def _params() -> list:
    params = []
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        for label, operation in OPERATIONS.items():
            if mode is GenerationMode.NEGATIVE and not negatable(operation):
                continue
            marks = []
            reason = KNOWN_FAILURES.get((mode.value, label))
            if reason:
                marks.append(pytest.mark.xfail(reason=reason, strict=True))
            params.append(pytest.param(mode, label, marks=marks, id=f"{mode.value}-{label}"))
    return params


@pytest.fixture(scope="session")
async def fuzz_schema(api: httpx.AsyncClient):
    response = await api.get("/openapi.json")
    response.raise_for_status()
    return schemathesis.openapi.from_dict(response.json())


def check_error_shape(status: int, body: Any) -> None:
    assert isinstance(body, dict), f"{status} body is not a JSON object: {body!r}"
    assert set(body) == {"error", "message", "detail"}, f"{status} body keys: {sorted(body)}"
    assert isinstance(body["error"], str) and body["error"], body
    assert isinstance(body["message"], str), body
    assert isinstance(body["detail"], list), body
    for item in body["detail"]:
        assert isinstance(item, dict), body
        assert isinstance(item.get("loc"), list), body
        assert isinstance(item.get("msg"), str), body
        assert isinstance(item.get("type"), str), body


def describe(case) -> str:
    """The request a case makes, for failure messages (the case's repr omits the body)."""
    parts = [f"{case.method} {case.formatted_path}"]
    if case.query:
        parts.append(f"query={case.query!r}")
    if not isinstance(case.body, NotSet):
        parts.append(f"body({case.media_type})={case.body!r}")
    return " ".join(parts)


async def test_fuzz_covers_every_served_operation(fuzz_schema):
    served = {op.ok().label for op in fuzz_schema.get_all_operations()}
    assert served == set(OPERATIONS)


REVOKE = "POST /api/v1/keys/{key_id}/revoke"


async def throwaway_admin_headers(api: httpx.AsyncClient) -> dict[str, str]:
    """The headers of a new admin key, for a fuzzed operation that may revoke its caller."""
    secret = ""
    for name in ("fuzz-revoke-caller", "fuzz-revoke-spare"):
        response = await api.post("/api/v1/keys", json={"name": name, "scopes": ["admin"]})
        response.raise_for_status()
        secret = secret or response.json()["key"]
    return {"Authorization": f"Bearer {secret}"}


@pytest.mark.parametrize(("mode", "label"), _params())
async def test_fuzz_operation(
    mode: GenerationMode, label: str, fuzz_schema, api: httpx.AsyncClient, auth_headers
):
    operation = fuzz_schema.find_operation_by_label(label)
    assert operation is not None, f"{label} is not in the served schema"
    loop = asyncio.get_running_loop()
    if label == REVOKE:
        auth_headers = await throwaway_admin_headers(api)

    async def send(case) -> httpx.Response:
        kwargs = case.as_transport_kwargs(base_url=str(api.base_url))
        headers = {**kwargs["headers"], **auth_headers}
        request: dict[str, Any] = {"params": kwargs["params"] or None, "headers": headers}
        if "json" in kwargs:
            request["json"] = kwargs["json"]
        elif "data" in kwargs:
            data = kwargs["data"]
            request["content"] = data.encode() if isinstance(data, str) else data
        response = await api.request(kwargs["method"], kwargs["url"], **request)
        if label == "POST /api/v1/workflows" and response.is_success:
            # A generated definition that happened to be valid: keep its triggers from firing.
            workflow_id = response.json()["workflow"]["id"]
            (await api.post(f"/api/v1/workflows/{workflow_id}/deactivate")).raise_for_status()
        return response

    @hypothesis_settings(
        max_examples=MAX_EXAMPLES_HEAVY if label in HEAVY else MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case) -> None:
        response = asyncio.run_coroutine_threadsafe(send(case), loop).result(timeout=60)
        request = describe(case)
        assert response.status_code < 500, (
            f"{request}\n-> {response.status_code} {response.text[:2000]}"
        )
        if not response.is_success:
            try:
                body = response.json()
            except json.JSONDecodeError:
                body = response.text
            try:
                check_error_shape(response.status_code, body)
            except AssertionError as exc:
                raise AssertionError(f"{request}\n-> {response.status_code} {body!r}") from exc

    await asyncio.to_thread(fuzz)
    if label == REVOKE:  # the session's admin key still works
        assert (await api.get("/api/v1/keys")).status_code == 200
