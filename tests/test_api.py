"""The HTTP API in-process over ASGI, against real PostgreSQL, a real Temporal dev server and an
in-process worker."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import yaml
from sqlalchemy import func, select

from maestro.db.tables import Run, WorkflowVersion
from tests.conftest import unique_id, wait_for_run

pytestmark = pytest.mark.usefixtures("worker")


def definition(workflow_id: str, **overrides) -> dict:
    body = {
        "id": workflow_id,
        "name": "Hello",
        "owner": "team-ml",
        "params": {
            "who": {"type": "string", "default": "world"},
            "n": {"type": "integer", "default": 1},
        },
        "steps": [
            {
                "id": "greet",
                "type": "shell",
                "params": {"command": "echo hello $MAESTRO_PARAM_WHO"},
                "retry": {"max_attempts": 1},
            },
            {
                "id": "count",
                "type": "noop",
                "depends_on": ["greet"],
                "params": {"outputs": {"n": {"expr": "params.n * 2"}}},
            },
        ],
    }
    body.update(overrides)
    return body


async def count_rows(sessions, model, **where) -> int:
    async with sessions() as session:
        query = select(func.count()).select_from(model)
        for key, value in where.items():
            query = query.where(getattr(model, key) == value)
        return (await session.execute(query)).scalar_one()


async def test_push_creates_version_one_and_activates_it(api):
    wid = unique_id("push")
    response = await api.post("/api/v1/workflows", json=definition(wid))
    assert response.status_code == 201
    body = response.json()
    assert body["version"] == 1 and body["created"] is True
    assert body["workflow"]["active_version"] == 1 and body["workflow"]["is_active"]

    fetched = (await api.get(f"/api/v1/workflows/{wid}")).json()
    assert fetched["definition"]["steps"][0]["id"] == "greet"
    assert fetched["owner"] == "team-ml"
    listed = (await api.get("/api/v1/workflows", params={"limit": 500})).json()
    assert wid in [w["id"] for w in listed["items"]]


async def test_identical_push_creates_nothing_and_changed_push_creates_version_two(api, sessions):
    wid = unique_id("versions")
    await api.post("/api/v1/workflows", json=definition(wid))
    # Same content, different key order and explicit defaults: still identical.
    same = definition(wid)
    same["steps"][1]["failure_mode"] = "fail_after_running"
    again = await api.post("/api/v1/workflows", json=dict(reversed(list(same.items()))))
    assert again.status_code == 200
    assert again.json() == {**again.json(), "version": 1, "created": False}
    assert await count_rows(sessions, WorkflowVersion, workflow_id=wid) == 1

    changed = await api.post("/api/v1/workflows", json=definition(wid, description="v2"))
    assert changed.status_code == 201
    assert changed.json()["version"] == 2
    versions = (await api.get(f"/api/v1/workflows/{wid}/versions")).json()
    assert [(v["version"], v["active"]) for v in versions] == [(1, False), (2, True)]
    assert (await api.get(f"/api/v1/workflows/{wid}/versions/latest")).json()["version"] == 2
    assert (await api.get(f"/api/v1/workflows/{wid}/versions/active")).json()["version"] == 2
    assert (await api.get(f"/api/v1/workflows/{wid}/versions/1")).json()["definition"][
        "description"
    ] == ""


async def test_yaml_body_is_accepted(api):
    wid = unique_id("yaml")
    response = await api.post(
        "/api/v1/workflows",
        content=yaml.safe_dump(definition(wid)),
        headers={"content-type": "application/yaml"},
    )
    assert response.status_code == 201, response.text
    assert response.json()["version"] == 1


async def test_activate_older_version_is_rollback_and_deactivate_blocks_default_starts(api):
    wid = unique_id("rollback")
    await api.post("/api/v1/workflows", json=definition(wid))
    await api.post("/api/v1/workflows", json=definition(wid, description="v2"))
    rolled = await api.post(f"/api/v1/workflows/{wid}/versions/1/activate")
    assert rolled.status_code == 200 and rolled.json()["active_version"] == 1

    run = (await api.post(f"/api/v1/workflows/{wid}/runs", json={})).json()
    assert run["version"] == 1

    off = await api.post(f"/api/v1/workflows/{wid}/deactivate")
    assert off.json()["is_active"] is False
    refused = await api.post(f"/api/v1/workflows/{wid}/runs", json={})
    assert refused.status_code == 409
    assert refused.json()["error"] == "workflow_inactive"
    explicit = await api.post(f"/api/v1/workflows/{wid}/runs", json={"version": 2})
    assert explicit.status_code == 201 and explicit.json()["version"] == 2

    back = await api.post(f"/api/v1/workflows/{wid}/versions/active/activate")
    assert back.json()["is_active"] is True
    missing = await api.post(f"/api/v1/workflows/{wid}/versions/9/activate")
    assert missing.status_code == 404


async def test_validate_is_a_dry_run(api, sessions):
    wid = unique_id("dry")
    ok = await api.post("/api/v1/workflows/validate", json=definition(wid))
    assert ok.status_code == 200
    assert ok.json()["valid"] is True
    assert ok.json()["definition"]["steps"][0]["retry"]["max_attempts"] == 1
    bad = await api.post(
        "/api/v1/workflows/validate", json=definition(wid, steps=[{"id": "a", "type": "nope"}])
    )
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["steps", 0, "type"]
    assert (await api.get(f"/api/v1/workflows/{wid}")).status_code == 404


@pytest.mark.parametrize(
    ("mutate", "loc", "fragment"),
    [
        (
            lambda d: d["steps"].append({"id": "greet", "type": "noop"}),
            ["steps", 2, "id"],
            "duplicate step id",
        ),
        (
            lambda d: d["steps"][1].update(depends_on=["ghost"]),
            ["steps", 1, "depends_on", 0],
            "unknown step 'ghost'",
        ),
        (
            lambda d: d["steps"][0].update(depends_on=["count"]),
            ["steps"],
            "cycle: greet -> count -> greet",
        ),
        (
            lambda d: d["steps"][1].update(type="teleport"),
            ["steps", 1, "type"],
            "unknown step type 'teleport'",
        ),
        (lambda d: d["steps"][1].update(when="params.n >"), ["steps", 1, "when"], "line 1, column"),
        (
            lambda d: d["params"].update(bad={"type": "integer", "default": "x"}),
            ["params", "bad"],
            "not of type integer",
        ),
        (
            lambda d: d.update(triggers=[{"cron": "0 25 * * *"}]),
            ["triggers", 0, "time", "cron"],
            "hour 25 is not in 0-23",
        ),
        (
            lambda d: d.update(triggers=[{"cron": "0 3 * * *", "timezone": "Mars/Olympus"}]),
            ["triggers", 0, "time", "timezone"],
            "unknown timezone",
        ),
        (lambda d: d.update(surprise=1), ["surprise"], "Extra inputs are not permitted"),
    ],
)
async def test_invalid_definitions_get_422_naming_location_and_nothing_is_written(
    api, sessions, mutate, loc, fragment
):
    wid = unique_id("invalid")
    body = definition(wid)
    mutate(body)
    response = await api.post("/api/v1/workflows", json=body)
    assert response.status_code == 422, response.text
    problems = response.json()["detail"]
    match = [p for p in problems if p["loc"] == loc]
    assert match, problems
    assert fragment in match[0]["msg"]
    assert await count_rows(sessions, WorkflowVersion, workflow_id=wid) == 0
    assert (await api.get(f"/api/v1/workflows/{wid}")).status_code == 404


@pytest.mark.parametrize("path", ["/api/v1/workflows", "/api/v1/workflows/validate"])
async def test_every_problem_of_a_definition_comes_in_one_answer(api, sessions, path):
    wid = unique_id("all-problems")
    body = definition(wid, triggers=[{"cron": "99 99 99 99 99"}])
    body["steps"][0].update(when="params.n >")
    body["steps"][1].update(id="greet", depends_on=["ghost"])
    response = await api.post(path, json=body)
    assert response.status_code == 422, response.text
    problems = {tuple(p["loc"]): p["msg"] for p in response.json()["detail"]}
    assert set(problems) == {
        ("steps", 0, "when"),
        ("triggers", 0, "time", "cron"),
        ("steps", 1, "id"),
        ("steps", 1, "depends_on", 0),
    }, problems
    assert "minute 99 is not in 0-59" in problems["triggers", 0, "time", "cron"]
    assert "day-of-month and day-of-week" not in problems["triggers", 0, "time", "cron"]
    assert problems["steps", 1, "id"].startswith("duplicate step id 'greet'")
    assert problems["steps", 1, "depends_on", 0] == "step 'greet' depends on unknown step 'ghost'"
    assert await count_rows(sessions, WorkflowVersion, workflow_id=wid) == 0


async def test_undecodable_and_oversized_bodies(api, settings):
    bad_json = await api.post(
        "/api/v1/workflows", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert bad_json.status_code == 422
    assert bad_json.json()["detail"][0]["loc"] == ["body"]
    wrong_type = await api.post(
        "/api/v1/workflows", content=b"x", headers={"content-type": "text/plain"}
    )
    assert wrong_type.status_code == 422
    huge = json.dumps(definition(unique_id("huge"), description="x" * settings.api.max_body_bytes))
    too_big = await api.post(
        "/api/v1/workflows", content=huge, headers={"content-type": "application/json"}
    )
    assert too_big.status_code == 413
    assert too_big.json()["error"] == "payload_too_large"


async def test_start_run_is_idempotent_per_request_id(api, sessions):
    wid = unique_id("idem")
    await api.post("/api/v1/workflows", json=definition(wid))
    first = await api.post(
        f"/api/v1/workflows/{wid}/runs", json={"params": {"who": "ada"}, "request_id": "req-1"}
    )
    assert first.status_code == 201
    run = first.json()
    assert run["run_number"] == 1
    assert run["temporal_workflow_id"] == f"{wid}-run-1"
    assert run["temporal_ui_url"].endswith(
        f"/namespaces/default/workflows/{wid}-run-1/{run['temporal_run_id']}/history"
    )
    again = await api.post(
        f"/api/v1/workflows/{wid}/runs", json={"params": {"who": "ada"}, "request_id": "req-1"}
    )
    assert again.status_code == 200
    assert again.json()["run_id"] == run["run_id"]
    # Concurrent retries of one request still make one run.
    racing = await asyncio.gather(
        *[api.post(f"/api/v1/workflows/{wid}/runs", json={"request_id": "req-2"}) for _ in range(5)]
    )
    assert len({r.json()["run_id"] for r in racing}) == 1
    assert sorted(r.status_code for r in racing) == [200, 200, 200, 200, 201]
    assert await count_rows(sessions, Run, workflow_id=wid) == 2

    done = await wait_for_run(api, run["run_id"])
    assert done["status"] == "succeeded"
    assert done["params"] == {"who": "ada", "n": 1}
    steps = {s["step_id"]: s for s in done["steps"]}
    assert steps["greet"]["outputs"]["stdout_tail"] == "hello ada"
    assert steps["greet"]["attempt"] == 1
    assert steps["count"]["outputs"] == {"n": 2}
    assert done["started_at"] and done["ended_at"]


async def test_start_run_param_errors(api, sessions):
    wid = unique_id("params")
    await api.post(
        "/api/v1/workflows",
        json=definition(wid, params={"dt": {"type": "string", "required": True}}),
    )
    missing = await api.post(f"/api/v1/workflows/{wid}/runs", json={})
    assert missing.status_code == 422
    assert missing.json()["detail"][0]["loc"] == ["params", "dt"]
    wrong = await api.post(f"/api/v1/workflows/{wid}/runs", json={"params": {"dt": 5, "x": 1}})
    assert {tuple(p["loc"]) for p in wrong.json()["detail"]} == {("params", "dt"), ("params", "x")}
    unknown_field = await api.post(f"/api/v1/workflows/{wid}/runs", json={"parms": {}})
    assert unknown_field.status_code == 422
    assert unknown_field.json()["detail"][0]["loc"] == ["body", "parms"]
    assert await count_rows(sessions, Run, workflow_id=wid) == 0
    assert (await api.post("/api/v1/workflows/nope-nope/runs", json={})).status_code == 404


async def test_list_runs_filters_and_pages(api):
    wid = unique_id("list")
    await api.post("/api/v1/workflows", json=definition(wid))
    ids = [
        (await api.post(f"/api/v1/workflows/{wid}/runs", json={})).json()["run_id"]
        for _ in range(3)
    ]
    for run_id in ids:
        await wait_for_run(api, run_id)
    page1 = (await api.get("/api/v1/runs", params={"workflow_id": wid, "limit": 2})).json()
    assert len(page1["items"]) == 2 and page1["next_cursor"]
    page2 = (
        await api.get(
            "/api/v1/runs", params={"workflow_id": wid, "limit": 2, "cursor": page1["next_cursor"]}
        )
    ).json()
    seen = [r["run_id"] for r in page1["items"] + page2["items"]]
    assert sorted(seen) == sorted(ids)
    assert [r["run_number"] for r in page1["items"] + page2["items"]] == [3, 2, 1]
    none_failed = (
        await api.get("/api/v1/runs", params={"workflow_id": wid, "status": "failed"})
    ).json()
    assert none_failed["items"] == []
    bad = await api.get("/api/v1/runs", params={"status": "exploded"})
    assert bad.status_code == 422


async def test_cancel_finished_run_is_a_conflict_and_unknown_run_is_404(api):
    wid = unique_id("cancel")
    await api.post("/api/v1/workflows", json=definition(wid))
    run = (await api.post(f"/api/v1/workflows/{wid}/runs", json={})).json()
    await wait_for_run(api, run["run_id"])
    response = await api.post(f"/api/v1/runs/{run['run_id']}/cancel")
    assert response.status_code == 409
    assert "it is succeeded" in response.json()["message"]
    assert response.json()["error"] == "invalid_run_state"
    assert (await api.get("/api/v1/runs/not-a-run")).status_code == 404


async def test_openapi_documents_the_definition_schema(api):
    spec = (await api.get("/openapi.json")).json()
    body = spec["paths"]["/api/v1/workflows"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "application/yaml"}
    assert "WorkflowDefinition" in spec["components"]["schemas"]
    assert "steps" in spec["components"]["schemas"]["WorkflowDefinition"]["properties"]


async def test_metrics_expose_signals_triggers_runs_and_queues(api):
    wid = unique_id("metrics")
    topic = f"metrics.{wid}"
    await api.post(
        "/api/v1/workflows",
        json=definition(
            wid, run_strategy="sequential", triggers=[{"signal": {"all_of": [{"name": topic}]}}]
        ),
    )
    await api.post("/api/v1/signals", json={"name": topic, "params": {"n": 1}})
    await api.post("/api/v1/signals", json={"name": topic, "params": {"n": 1}})  # duplicate
    await api.post("/api/v1/signals", json={"name": topic, "params": {"n": 2}})  # queued
    response = await api.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'maestro_signals_received_total{outcome="duplicate"}' in text
    assert 'maestro_trigger_evaluations_total{outcome="started_run"}' in text
    assert 'maestro_trigger_lag_seconds_bucket{kind="signal"' in text
    assert 'maestro_runs{status="succeeded"}' in text
    assert f'maestro_queue_depth{{workflow_id="{wid}"}} 1.0' in text
    async with httpx.AsyncClient(transport=api._transport, base_url="http://maestro") as anon:
        assert (await anon.get("/metrics")).status_code == 401


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/api/v1/runs/a%00b", None),
        ("GET", "/api/v1/workflows/a%00b", None),
        ("GET", "/api/v1/signals?name=a%00b", None),
        ("POST", "/api/v1/signals", {"name": "x", "params": {"k": "a\u0000b"}}),
        ("GET", "/api/v1/signals/9223372036854775808", None),
        ("GET", "/api/v1/models/m/versions/2147483648", None),
        ("GET", "/api/v1/signals?cursor=9223372036854775808", None),
    ],
)
async def test_values_the_database_cannot_hold_are_422_not_500(api, method, path, body):
    response = await api.request(method, path, json=body)
    assert response.status_code == 422, response.text
    assert set(response.json()) == {"error", "message", "detail"}
