"""No request can stall the service, over the API with real PostgreSQL, Temporal and a worker:
documents over the depth and alias limits get a 422 at once, expressions over the cost limit
are refused at registration, and inputs over the expression input limit end as a recorded
`condition_error` or a failed step, with the reason."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from tests.conftest import unique_id, wait_for_run
from tests.test_documents import billion_laughs, nested
from tests.test_expression_limits import doubling, nested_maps

pytestmark = pytest.mark.usefixtures("worker")


def workflow(workflow_id: str, **extra) -> dict:
    return {"id": workflow_id, "steps": [{"id": "go", "type": "noop"}], **extra}


def signal_trigger(topic: str, when: str) -> dict:
    return {"signal": {"all_of": [{"name": topic}], "when": when}}


async def test_a_yaml_alias_bomb_gets_a_small_422_at_once(api):
    started = time.perf_counter()
    response = await api.post(
        "/api/v1/workflows/validate",
        content=billion_laughs(),
        headers={"content-type": "application/yaml"},
    )
    assert time.perf_counter() - started < 2
    assert response.status_code == 422
    assert len(response.content) < 1_000
    body = response.json()
    assert body["error"] == "invalid_input"
    assert "more than 100,000 nodes" in body["message"]
    assert body["detail"][0]["type"] == "document_too_complex"


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/api/v1/signals", "application/json"),
        ("/api/v1/signals/batch", "application/json"),
        ("/api/v1/workflows", "application/json"),
        ("/api/v1/workflows/validate", "application/yaml"),
        ("/api/v1/workflows/anything/runs", "application/json"),
    ],
)
async def test_documents_nested_1000_deep_get_422(api, path, content_type):
    response = await api.post(path, content=nested(1_000), headers={"content-type": content_type})
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "invalid_input"
    assert "deeper than 64 levels" in response.json()["message"]


async def test_a_payload_within_the_depth_limit_is_accepted(api):
    payload: dict = {"leaf": 1}
    for _ in range(60):
        payload = {"a": payload}
    response = await api.post(
        "/api/v1/signals", json={"name": f"deep.{unique_id('ok')}", "payload": payload}
    )
    assert response.status_code == 201, response.text


@pytest.mark.parametrize(
    ("when", "fragment"),
    [
        (nested_maps(5), "nest at most 2 deep"),
        (nested_maps(2, width=200), "the limit is 300,000"),
        (doubling(16, "signal"), "the limit is 300,000"),
    ],
)
async def test_a_cel_bomb_in_a_trigger_is_refused_at_registration(api, when, fragment):
    wid = unique_id("bomb-trigger")
    response = await api.post(
        "/api/v1/workflows", json=workflow(wid, triggers=[signal_trigger("bomb.x", when)])
    )
    assert response.status_code == 422, response.text
    [problem] = response.json()["detail"]
    assert problem["loc"][:2] == ["triggers", 0] and problem["loc"][-1] == "when", problem
    assert fragment in problem["msg"]
    assert (await api.get(f"/api/v1/workflows/{wid}")).status_code == 404


@pytest.mark.parametrize("where", ["when", "params"])
async def test_a_cel_bomb_in_a_step_is_refused_at_registration(api, where):
    wid = unique_id("bomb-step")
    step: dict = {"id": "go", "type": "noop"}
    if where == "when":
        step["when"] = nested_maps(5)
    else:
        step["params"] = {"outputs": {"n": {"expr": doubling(16)}}}
    response = await api.post("/api/v1/workflows", json=workflow(wid, steps=[step]))
    assert response.status_code == 422, response.text
    messages = [p["msg"] for p in response.json()["detail"]]
    assert any("over the limits" in m for m in messages), messages


async def test_a_trigger_over_its_input_limit_records_condition_error_without_blocking(api):
    topic = f"files.{unique_id('ready')}"
    wid = unique_id("big-input")
    trigger = signal_trigger(topic, "size(signal.payload.files) > 0")
    assert (await api.post("/api/v1/workflows", json=workflow(wid, triggers=[trigger]))).is_success

    small = await api.post("/api/v1/signals", json={"name": topic, "payload": {"files": ["a"]}})
    assert len(small.json()["runs"]) == 1

    big = {"files": [f"f{i}" for i in range(3_000)]}
    latencies: list[float] = []

    async def health() -> None:
        for _ in range(20):
            started = time.perf_counter()
            assert (await api.get("/healthz")).status_code == 200
            latencies.append(time.perf_counter() - started)
            await asyncio.sleep(0.01)

    async def publish(i: int) -> dict:
        body = {"name": topic, "params": {"i": i}, "payload": big}
        response = await api.post("/api/v1/signals", json=body)
        assert response.status_code == 201, response.text
        return response.json()

    results = await asyncio.gather(health(), *(publish(i) for i in range(10)))
    assert max(latencies) < 1.0
    for published in results[1:]:
        assert published["runs"] == []
        detail = (await api.get(f"/api/v1/signals/{published['signal']['id']}")).json()
        [match] = detail["matches"]
        assert match["outcome"] == "condition_error"
        assert "too large: over 2,048 units" in match["detail"]


async def test_a_step_over_its_input_limit_fails_the_run_with_the_reason(api):
    wid = unique_id("big-step-input")
    big = list(range(3_000))
    steps = [
        {"id": "a", "type": "noop", "params": {"outputs": {"big": big}}},
        {"id": "b", "type": "noop", "depends_on": ["a"], "when": "size(steps.a.outputs.big) > 0"},
        {
            "id": "c",
            "type": "noop",
            "depends_on": ["a"],
            "params": {"outputs": {"n": {"expr": "size(steps.a.outputs.big)"}}},
        },
    ]
    response = await api.post("/api/v1/workflows", json=workflow(wid, steps=steps))
    assert response.status_code == 201, response.text
    run = (await api.post(f"/api/v1/workflows/{wid}/runs", json={})).json()
    done = await wait_for_run(api, run["run_id"])
    assert done["status"] == "failed"
    by_id = {s["step_id"]: s for s in done["steps"]}
    assert by_id["a"]["status"] == "succeeded"
    for step_id in ("b", "c"):
        assert by_id[step_id]["status"] == "failed"
        assert "too large: over 2,048 units" in by_id[step_id]["error"], by_id[step_id]


def test_the_bomb_documents_are_small():
    assert len(billion_laughs()) < 500
    assert len(json.dumps(nested(1_000))) < 2_100


async def test_definitions_posted_at_once_are_each_decoded(api):
    bodies = [yaml_definition(unique_id("at-once")) for _ in range(6)]
    responses = await asyncio.gather(
        *(
            api.post(
                "/api/v1/workflows/validate",
                content=body,
                headers={"content-type": "application/yaml"},
            )
            for body in bodies
        )
    )
    assert [r.status_code for r in responses] == [200] * 6
    assert [r.json()["definition"]["id"] for r in responses] == [
        b.split("\n", 1)[0].removeprefix("id: ") for b in bodies
    ]


def yaml_definition(workflow_id: str, steps: int = 200) -> str:
    lines = [f"id: {workflow_id}", "steps:"]
    for i in range(steps):
        lines += [f"  - id: s{i}", "    type: noop", "    params: {outputs: {k: v}}"]
    return "\n".join(lines) + "\n"
