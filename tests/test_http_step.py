"""The `http` step against a real HTTP server on 127.0.0.1, through the API, a real Temporal
and the in-process worker: success, 5xx retries, polling an asynchronous job, secrets in
headers, and destinations the allowlist refuses."""

from __future__ import annotations

import pytest

from maestro.outbound import DestinationRefused, Guard
from maestro.settings import OutboundSettings
from maestro.steps import check_step_params
from tests.conftest import unique_id, wait_for_run
from tests.test_secrets import history_bytes, put

pytestmark = pytest.mark.usefixtures("worker")


async def run_steps(api, steps: list[dict], params: dict | None = None, owner: str = "") -> dict:
    definition = {"id": unique_id("http"), "owner": owner, "steps": steps}
    if params:
        definition["params"] = {k: {"type": "string", "default": v} for k, v in params.items()}
    pushed = await api.post("/api/v1/workflows", json=definition)
    assert pushed.status_code == 201, pushed.text
    started = await api.post(f"/api/v1/workflows/{definition['id']}/runs", json={})
    assert started.status_code == 201, started.text
    return await wait_for_run(api, started.json()["run_id"])


def step_of(run: dict, step_id: str = "call") -> dict:
    return next(s for s in run["steps"] if s["step_id"] == step_id)


async def test_a_request_with_a_cel_body_and_a_secret_header(api, receiver, temporal_client):
    owner = unique_id("team")
    token = f"tok-{unique_id('v')}"
    name = f"{owner}.api-token"
    await put(api, name, token, owner)
    receiver.answer = lambda request: (201, {"job": "j-1", "echo": request.json()})
    run = await run_steps(
        api,
        [
            {
                "id": "call",
                "type": "http",
                "params": {
                    "method": "POST",
                    "url": receiver.url + "/jobs",
                    "headers": {"Authorization": {"secret": name, "prefix": "Bearer "}},
                    "query": {"dry": "no"},
                    "json": {"day": {"expr": "params.day"}, "n": 3},
                },
            },
            {
                "id": "after",
                "type": "noop",
                "depends_on": ["call"],
                "params": {"outputs": {"job": {"expr": "steps.call.outputs.body.job"}}},
            },
        ],
        params={"day": "2026-11-26"},
        owner=owner,
    )
    assert run["status"] == "succeeded", run
    [request] = receiver.received
    assert request.method == "POST" and request.path == "/jobs" and request.query == "dry=no"
    assert request.headers["authorization"] == f"Bearer {token}"
    assert request.json() == {"day": "2026-11-26", "n": 3}
    assert step_of(run)["outputs"] == {
        "status": 201,
        "body": {"job": "j-1", "echo": {"day": "2026-11-26", "n": 3}},
    }
    assert step_of(run, "after")["outputs"] == {"job": "j-1"}
    # The secret reached the receiver only.
    assert token.encode() not in await history_bytes(temporal_client, run)
    assert token not in str(run)


async def test_5xx_answers_are_retried_by_the_steps_retry_policy(api, receiver):
    answers = iter([(503, {"busy": 1}), (502, {"busy": 2}), (200, {"ok": True})])
    receiver.answer = lambda request: next(answers)
    run = await run_steps(
        api,
        [
            {
                "id": "call",
                "type": "http",
                "params": {"url": receiver.url + "/flaky"},
                "retry": {"max_attempts": 3, "initial_backoff": "0.1s"},
            }
        ],
    )
    assert run["status"] == "succeeded", run
    assert step_of(run)["attempt"] == 3 and len(receiver.received) == 3
    assert step_of(run)["outputs"] == {"status": 200, "body": {"ok": True}}


async def test_5xx_past_the_budget_and_4xx_fail_the_step(api, receiver):
    receiver.answer = lambda request: (
        (404, {"missing": True}) if request.path == "/gone" else (500, b"down")
    )
    run = await run_steps(
        api,
        [
            {
                "id": "call",
                "type": "http",
                "params": {"url": receiver.url + "/down"},
                "retry": {"max_attempts": 2, "initial_backoff": "0.1s"},
            },
            {"id": "gone", "type": "http", "params": {"url": receiver.url + "/gone"}},
        ],
    )
    assert run["status"] == "failed"
    assert step_of(run)["attempt"] == 2 and "HTTP 500" in step_of(run)["error"]
    gone = step_of(run, "gone")
    assert gone["attempt"] == 1 and "HTTP 404" in gone["error"] and "expected 2xx" in gone["error"]


async def test_poll_until_the_job_is_done_without_submitting_twice(api, receiver):
    polls = {"n": 0}

    def answer(request):
        if request.method == "POST":
            return 202, {"id": "j-7"}
        polls["n"] += 1
        if polls["n"] == 2:
            return 503, {"hiccup": True}  # a real failure in between: within the budget
        state = "done" if polls["n"] >= 5 else "running"
        return 200, {"state": state, "result": 42 if state == "done" else None}

    receiver.answer = answer
    run = await run_steps(
        api,
        [
            {
                "id": "call",
                "type": "http",
                "params": {
                    "method": "POST",
                    "url": receiver.url + "/jobs",
                    "json": {"go": True},
                    "poll": {
                        "url_expr": f"'{receiver.url}/jobs/' + response.body.id",
                        "until": "response.body.state == 'done'",
                        "every": "0.2s",
                        "timeout": "1m",
                    },
                },
                "retry": {"max_attempts": 2, "initial_backoff": "0.1s"},
            }
        ],
    )
    assert run["status"] == "succeeded", run
    posts = [r for r in receiver.received if r.method == "POST"]
    gets = [r for r in receiver.received if r.method == "GET"]
    assert len(posts) == 1 and len(gets) == 5
    assert {r.path for r in gets} == {"/jobs/j-7"}
    outputs = step_of(run)["outputs"]
    assert outputs["body"] == {"state": "done", "result": 42}
    assert outputs["submitted"] == {"status": 202, "body": {"id": "j-7"}}
    assert outputs["polls"] == 4  # answered polls; the 503 was a failure


async def test_a_poll_that_never_finishes_times_out(api, receiver):
    receiver.answer = lambda request: (200, {"state": "running"})
    run = await run_steps(
        api,
        [
            {
                "id": "call",
                "type": "http",
                "params": {
                    "url": receiver.url + "/job",
                    "poll": {
                        "until": "response.body.state == 'done'",
                        "every": "0.2s",
                        "timeout": "1s",
                    },
                },
            }
        ],
    )
    assert run["status"] == "failed"
    assert "was not done after" in step_of(run)["error"]


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://10.20.30.40/x", "MAESTRO_OUTBOUND__ALLOWED_PRIVATE_NETWORKS"),
        ("http://169.254.169.254/latest/meta-data/", "link-local or metadata"),
        ("http://[::1]:9/x", "MAESTRO_OUTBOUND__ALLOWED_PRIVATE_NETWORKS"),
    ],
)
async def test_the_allowlist_refuses_the_destination_for_good(api, url, reason):
    run = await run_steps(
        api,
        [{"id": "call", "type": "http", "params": {"url": url}, "retry": {"max_attempts": 3}}],
    )
    assert run["status"] == "failed"
    call = step_of(run)
    assert call["attempt"] == 1 and reason in call["error"]


def test_bad_params_are_refused_at_registration():
    problems = check_step_params(
        "http",
        {"url": "http://x", "method": "FETCH", "poll": {"until": "params.x", "every": "1ms"}},
    )
    where = {p.loc: p.msg for p in problems}
    assert ("method",) in where
    assert "response" in where[("poll", "until")]
    assert "at least 100ms" in where[("poll", "every")]


async def test_guard_sends_to_the_checked_address_bounded_and_without_redirects(receiver):
    guard = Guard(OutboundSettings(allowed_private_networks=["127.0.0.1/32"]))
    receiver.answer = lambda request: (200, b"x" * 5000)
    async with guard.client() as client:
        answer = await guard.send(
            client,
            "GET",
            receiver.url + "/q?a=1",
            headers={"host": "elsewhere.example", "X-Id": "7"},
            params={"flag": True, "off": False, "none": None, "many": [1, 2]},
            max_response_bytes=1000,
        )
        assert answer.status_code == 200
        assert answer.truncated and answer.body == b"x" * 1000
        [request] = receiver.received
        # One Host header, the URL's (a second one would be refused by the server).
        assert request.headers["host"] == f"127.0.0.1:{receiver.port}"
        assert request.headers["x-id"] == "7"
        assert request.query == "a=1&flag=true&off=false&none=&many=1&many=2"

        receiver.answer = lambda request: (302, b"")
        moved = await guard.send(client, "POST", receiver.url + "/moved", content=b"{}")
        assert moved.status_code == 302 and len(receiver.received) == 2

        with pytest.raises(DestinationRefused):
            await guard.send(client, "GET", "http://169.254.169.254/latest/meta-data")
        with pytest.raises(ValueError, match="the request body has"):
            big = b"x" * (guard.settings.max_request_bytes + 1)
            await guard.send(client, "POST", receiver.url + "/big", content=big)
    assert len(receiver.received) == 2
