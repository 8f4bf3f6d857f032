"""Run data never becomes code, tried as an attacker holding a publish-only key: shell text built
from signal params is refused, argv and quoted values stay literal, entrypoints are literals
and a worker runs only the modules it allows (real API, PostgreSQL, Temporal and worker)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from maestro.settings import WorkerSettings
from tests.conftest import unique_id, wait_for_run
from tests.test_auth import as_key, make_key
from workers.main import run_worker

pytestmark = pytest.mark.usefixtures("worker")

PAYLOAD = "a; id; cat $MAESTRO_WORK_DIR/../../api-key"


def triggered(workflow_id: str, topic: str, step: dict, *more: dict) -> dict:
    """A workflow whose signal trigger maps the signal's `x` into the run param `x`."""
    return {
        "id": workflow_id,
        "params": {"x": {"type": "string", "default": ""}},
        "triggers": [{"signal": {"all_of": [{"name": topic}], "params": {"x": "signal.params.x"}}}],
        "steps": [{"id": "s", **step}, *more],
    }


async def publish_and_run(api, publisher: str, topic: str, x: str) -> dict:
    """Publish `topic` with param `x` using the publish-only key; the run it started, ended."""
    async with as_key(api, publisher) as client:
        response = await client.post("/api/v1/signals", json={"name": topic, "params": {"x": x}})
    assert response.status_code == 201, response.text
    runs = response.json()["runs"]
    assert len(runs) == 1, response.json()
    return await wait_for_run(api, runs[0]["run_id"])


@pytest.fixture(scope="module")
async def publisher(api) -> str:
    return await make_key(api, ["publish"])


def refused_at(response, loc: list) -> str:
    assert response.status_code == 422, response.text
    found = [d for d in response.json()["detail"] if d["loc"] == loc]
    assert found, response.json()
    return found[0]["msg"]


async def test_shell_command_built_from_params_is_refused_at_registration(api, publisher):
    topic = f"inject.{uuid.uuid4().hex[:8]}"
    step = {"type": "shell", "params": {"command": {"expr": "'echo ' + params.x"}}}
    response = await api.post("/api/v1/workflows", json=triggered(unique_id("cel"), topic, step))

    msg = refused_at(response, ["steps", 0, "params", "command"])
    assert 'command: ["echo", {expr: "params.x"}]' in msg and "$MAESTRO_PARAM_X" in msg
    async with as_key(api, publisher) as client:
        published = await client.post("/api/v1/signals", json={"name": topic, "params": {"x": 1}})
    assert published.json()["runs"] == [], "nothing was registered to start"


async def test_argv_form_passes_the_payload_as_one_argument(api, publisher):
    topic, wid = f"inject.{uuid.uuid4().hex[:8]}", unique_id("argv")
    step = {"type": "shell", "params": {"command": ["echo", {"expr": "params.x"}]}}
    # A shell script reading the value as $1, as the docs show: one argument, never code.
    count = {
        "id": "count",
        "type": "shell",
        "params": {"command": ["sh", "-c", 'echo "$# $1"', "sh", {"expr": "params.x"}]},
    }
    body = triggered(wid, topic, step, count)
    assert (await api.post("/api/v1/workflows", json=body)).status_code == 201

    run = await publish_and_run(api, publisher, topic, PAYLOAD)

    assert run["status"] == "succeeded", run
    outputs = {s["step_id"]: s["outputs"]["stdout_tail"] for s in run["steps"]}
    assert outputs == {"s": PAYLOAD, "count": f"1 {PAYLOAD}"}
    assert "uid=" not in str(run)


async def test_opt_in_with_shell_quote_prints_the_payload_literally(api, publisher):
    topic, wid = f"inject.{uuid.uuid4().hex[:8]}", unique_id("quoted")
    step = {
        "type": "shell",
        "params": {
            "command": {"expr": "'echo ' + shell_quote(params.x) + ' | tr -d X'"},
            "shell_interpolation": True,
        },
    }
    assert (
        await api.post("/api/v1/workflows", json=triggered(wid, topic, step))
    ).status_code == 201

    run = await publish_and_run(api, publisher, topic, PAYLOAD)

    assert run["status"] == "succeeded", run
    assert run["steps"][0]["outputs"]["stdout_tail"] == PAYLOAD
    assert "uid=" not in str(run)
    # The same opt-in with a bare value is refused.
    step["params"]["command"] = {"expr": "'echo ' + params.x"}
    response = await api.post("/api/v1/workflows", json=triggered(unique_id("bare"), topic, step))
    assert "shell_quote(...) calls joined by +" in refused_at(
        response, ["steps", 0, "params", "command"]
    )


async def test_entrypoint_expression_is_refused_at_registration(api):
    step = {"type": "python", "params": {"entrypoint": {"expr": "params.x"}}}
    response = await api.post(
        "/api/v1/workflows", json=triggered(unique_id("entry"), "inject.entry", step)
    )

    assert "cannot be an expression" in refused_at(response, ["steps", 0, "params", "entrypoint"])


async def test_worker_with_default_settings_refuses_modules_it_does_not_allow(
    api, settings, temporal_client
):
    # A second worker, with the default allowed modules, serving one queue the step is routed to.
    queue = f"default-policy-{uuid.uuid4().hex[:8]}"
    defaults = settings.model_copy(
        update={
            "worker": WorkerSettings(task_queues=[queue]),
            "temporal": settings.temporal.model_copy(update={"task_queue": f"{queue}-main"}),
        }
    )
    assert defaults.worker.allowed_modules == ["examples"]
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(defaults, stop=stop))
    try:
        wid = unique_id("modules")
        steps = [
            {
                "id": "s",
                "type": "python",
                "params": {"entrypoint": "os:system", "args": {"command": "id"}},
                "task_queue": queue,
                "retry": {"max_attempts": 3, "initial_backoff": "0.1s"},
            }
        ]
        pushed = await api.post("/api/v1/workflows", json={"id": wid, "steps": steps})
        assert pushed.status_code == 201, pushed.text
        started = await api.post(f"/api/v1/workflows/{wid}/runs", json={})
        run = await wait_for_run(api, started.json()["run_id"])
    finally:
        stop.set()
        await asyncio.wait_for(worker, 30)

    assert run["status"] == "failed", run
    error = run["steps"][0]["error"]
    assert "'os:system' is outside this worker's allowed modules (examples)" in error
    history = await temporal_client.get_workflow_handle(run["temporal_workflow_id"]).fetch_history()
    failed = [
        e.activity_task_failed_event_attributes.failure
        for e in history.events
        if e.HasField("activity_task_failed_event_attributes")
    ]
    assert len(failed) == 1, "one attempt, not retried"
    info = failed[0].application_failure_info
    assert info.type == "EntrypointNotAllowed" and info.non_retryable
    started = [e for e in history.events if e.HasField("activity_task_started_event_attributes")]
    assert [e.activity_task_started_event_attributes.attempt for e in started] == [1]
