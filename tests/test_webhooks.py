"""Outbound webhooks against a real HTTP receiver on 127.0.0.1, with real PostgreSQL, Temporal
and the worker's dispatcher: signatures, order, outages of the receiver, a process killed after
the event was recorded, owner scoping, the allowlist and the Slack format."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import pytest
from sqlalchemy import select, text

from maestro.db.tables import Run
from maestro.webhooks import verify
from tests.conftest import unique_id, wait_for_run
from tests.processes import Processes
from tests.receiver import Receiver
from tests.test_auth import as_key, make_key

pytestmark = pytest.mark.usefixtures("worker")

FAIL_FAST = {"max_attempts": 1}


def failing(workflow_id: str, owner: str) -> dict:
    return {
        "id": workflow_id,
        "owner": owner,
        "steps": [
            {"id": "ok", "type": "noop"},
            {
                "id": "boom",
                "type": "shell",
                "params": {"command": ["false"]},
                "depends_on": ["ok"],
                "retry": FAIL_FAST,
            },
        ],
    }


async def subscribe(api, url: str, owner: str, events: list[str], **more) -> dict:
    body = {"url": url, "owner": owner, "events": events, **more}
    response = await api.post("/api/v1/webhooks", json=body)
    assert response.status_code == 201, response.text
    return response.json()


async def push_and_run(api, definition: dict) -> dict:
    pushed = await api.post("/api/v1/workflows", json=definition)
    assert pushed.status_code in (200, 201), pushed.text
    started = await api.post(f"/api/v1/workflows/{definition['id']}/runs", json={})
    assert started.status_code == 201, started.text
    return await wait_for_run(api, started.json()["run_id"])


async def test_events_arrive_signed_in_order_with_ids(api, receiver):
    owner = unique_id("team")
    hook = await subscribe(
        api,
        receiver.url + "/hook",
        owner,
        ["run.started", "step.failed", "run.failed", "run.succeeded"],
    )
    assert hook["secret"].startswith("whsec_")
    run = await push_and_run(api, failing(unique_id("wh-fail"), owner))
    assert run["status"] == "failed"

    await receiver.wait_for(lambda: len(receiver.events()) >= 3)
    events = receiver.events()
    assert [r.headers["x-maestro-event"] for r in events] == [
        "run.started",
        "step.failed",
        "run.failed",
    ]
    for request in events:
        headers = request.headers
        assert request.method == "POST" and request.path == "/hook"
        assert abs(int(headers["x-maestro-timestamp"]) - time.time()) < 120
        assert verify(
            hook["secret"],
            headers["x-maestro-timestamp"],
            request.body,
            headers["x-maestro-signature"],
        )
        assert not verify(
            "whsec_wrong",
            headers["x-maestro-timestamp"],
            request.body,
            headers["x-maestro-signature"],
        )
        body = request.json()
        assert body["id"] == headers["x-maestro-event-id"]
        assert body["type"] == headers["x-maestro-event"]
        assert body["data"]["run_id"] == run["run_id"] and body["owner"] == owner
    failed = events[-1].json()["data"]
    assert failed["status"] == "failed" and "boom" in failed["error"]
    assert events[1].json()["data"]["step_id"] == "boom"
    assert len({r.headers["x-maestro-event-id"] for r in events}) == 3

    # The delivery log: each delivered once, status code and latency recorded (the result is
    # written just after the receiver answered).
    log: list[dict] = []
    for _ in range(100):
        log = (await api.get(f"/api/v1/webhooks/{hook['id']}/deliveries")).json()["items"]
        if len(log) == 3 and all(d["status"] != "pending" for d in log):
            break
        await asyncio.sleep(0.1)
    assert {d["event_type"] for d in log} == {"run.started", "step.failed", "run.failed"}
    for delivery in log:
        assert delivery["status"] == "delivered" and delivery["attempts"] == 1
        [attempt] = delivery["attempt_log"]
        assert attempt["status_code"] == 200 and attempt["latency_ms"] > 0


async def test_slack_format_is_slacks_incoming_webhook_shape(api, receiver):
    owner = unique_id("team")
    await subscribe(api, receiver.url + "/slack", owner, ["run.failed"], format="slack")
    workflow_id = unique_id("wh-slack")
    await push_and_run(api, failing(workflow_id, owner))
    await receiver.wait_for(lambda: len(receiver.events()) >= 1)
    body = receiver.events()[0].json()
    # https://api.slack.com/messaging/webhooks: `text` (the fallback and notification text)
    # and optional `blocks`; a section's text is a mrkdwn text object of at most 3000 chars.
    assert set(body) == {"text", "blocks"}
    assert isinstance(body["text"], str) and workflow_id in body["text"]
    assert "run.failed" in body["text"] and "boom" in body["text"]
    section, context = body["blocks"]
    assert section["type"] == "section"
    assert section["text"]["type"] == "mrkdwn" and len(section["text"]["text"]) <= 3000
    assert context["type"] == "context"
    assert all(e["type"] == "mrkdwn" for e in context["elements"])


async def test_a_receiver_down_for_30_s_gets_every_event_once(api, receiver, sessions):
    owner = unique_id("team")
    hook = await subscribe(api, receiver.url + "/down", owner, ["run.failed", "step.failed"])
    await receiver.stop()
    workflow_id = unique_id("wh-down")
    pushed = await api.post("/api/v1/workflows", json=failing(workflow_id, owner))
    assert pushed.status_code == 201
    run_ids = []
    for _ in range(5):
        started = await api.post(f"/api/v1/workflows/{workflow_id}/runs", json={})
        run_ids.append(started.json()["run_id"])
    for run_id in run_ids:
        assert (await wait_for_run(api, run_id))["status"] == "failed"
    down_until = time.monotonic() + 30
    # While it is down, the first delivery is retried (others wait behind it, in order).
    await asyncio.sleep(max(0.0, down_until - time.monotonic()))
    pending = (
        await api.get(f"/api/v1/webhooks/{hook['id']}/deliveries", params={"status": "pending"})
    ).json()["items"]
    assert len(pending) == 10
    head = min(pending, key=lambda d: d["id"])
    assert head["attempts"] >= 3
    assert all("ConnectionError" in a["error"] for a in head["attempt_log"])
    await receiver.start()

    await receiver.wait_for(lambda: len(receiver.events()) >= 10, timeout=30)
    await asyncio.sleep(1)  # nothing more comes
    ids = [r.headers["x-maestro-event-id"] for r in receiver.events()]
    assert len(ids) == len(set(ids)) == 10
    # In the order the events were recorded: each run's step failure before its end.
    by_run: dict[str, list[str]] = {}
    for request in receiver.events():
        body = request.json()
        by_run.setdefault(body["data"]["run_id"], []).append(body["type"])
    assert by_run == {run_id: ["step.failed", "run.failed"] for run_id in run_ids}


async def test_a_delivery_failing_past_its_window_is_dead_and_can_be_redelivered(
    api, receiver, sessions
):
    owner = unique_id("team")
    receiver.answer = lambda request: (503, {"busy": True})
    hook = await subscribe(api, receiver.url + "/dead", owner, ["run.failed"])
    await push_and_run(api, failing(unique_id("wh-dead"), owner))
    await receiver.wait_for(lambda: len(receiver.events()) >= 1)
    # Pretend the event was recorded more than 24 hours ago: the next failure is the last.
    async with sessions.begin() as session:
        await session.execute(
            text(
                "UPDATE webhook_deliveries SET created_at = now() - interval '25 hours'"
                " WHERE webhook_id = :id"
            ),
            {"id": hook["id"]},
        )
    url = f"/api/v1/webhooks/{hook['id']}/deliveries"
    deadline = time.monotonic() + 20
    while (items := (await api.get(url)).json()["items"])[0]["status"] != "dead":
        assert time.monotonic() < deadline, items
        await asyncio.sleep(0.2)
    dead = items[0]
    assert dead["attempt_log"][-1]["status_code"] == 503
    assert "HTTP 503" in dead["attempt_log"][-1]["error"]

    receiver.answer = lambda request: (200, {"ok": True})
    again = await api.post(f"{url}/{dead['id']}/redeliver")
    assert again.status_code == 202, again.text
    assert again.json()["redelivery_of"] == dead["id"]
    event_id = dead["event_id"]
    await receiver.wait_for(
        lambda: (
            receiver.events()[-1].headers["x-maestro-event-id"] == event_id
            and receiver.events()[-1].headers.get("x-maestro-event") == "run.failed"
            and len(receiver.events()) > dead["attempts"]
        )
    )
    deadline = time.monotonic() + 10
    while (await api.get(url)).json()["items"][0]["status"] != "delivered":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)


async def test_rotation_signs_with_both_secrets_during_the_grace(api, receiver):
    owner = unique_id("team")
    hook = await subscribe(api, receiver.url + "/rot", owner, ["run.succeeded"])
    rotated = await api.post(f"/api/v1/webhooks/{hook['id']}/rotate-secret", json={"grace": "1h"})
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()["secret"]
    assert new != hook["secret"] and rotated.json()["previous_secret_until"]
    workflow_id = unique_id("wh-rot")
    run = await push_and_run(
        api, {"id": workflow_id, "owner": owner, "steps": [{"id": "a", "type": "noop"}]}
    )
    assert run["status"] == "succeeded"
    await receiver.wait_for(lambda: len(receiver.events()) >= 1)
    request = receiver.events()[0]
    header = request.headers["x-maestro-signature"]
    assert header.count("v1=") == 2
    for secret in (new, hook["secret"]):
        assert verify(secret, request.headers["x-maestro-timestamp"], request.body, header)
    # The secret is never shown again.
    shown = (await api.get(f"/api/v1/webhooks/{hook['id']}")).json()
    assert "secret" not in shown and new not in json.dumps(shown)


async def test_workflow_filter_and_owner_scoping(api, receiver):
    owner, other = unique_id("team"), unique_id("team")
    wanted, ignored = unique_id("wh-want"), unique_id("wh-skip")
    hook = await subscribe(api, receiver.url + "/f", owner, ["run.succeeded"], workflows=[wanted])
    noop = [{"id": "a", "type": "noop"}]
    await push_and_run(api, {"id": ignored, "owner": owner, "steps": noop})
    await push_and_run(api, {"id": unique_id("wh-other"), "owner": other, "steps": noop})
    await push_and_run(api, {"id": wanted, "owner": owner, "steps": noop})
    await receiver.wait_for(lambda: len(receiver.events()) >= 1)
    await asyncio.sleep(1)
    assert [r.json()["workflow_id"] for r in receiver.events()] == [wanted]

    key = await make_key(api, ["read", "write"], owners=[other])
    async with as_key(api, key) as limited:
        assert (await limited.get(f"/api/v1/webhooks/{hook['id']}")).status_code == 403
        assert hook["id"] not in [w["id"] for w in (await limited.get("/api/v1/webhooks")).json()]
        refused = await limited.post(
            "/api/v1/webhooks",
            json={"url": receiver.url, "owner": owner, "events": ["run.failed"]},
        )
        assert refused.status_code == 403
        assert (await limited.delete(f"/api/v1/webhooks/{hook['id']}")).status_code == 403
        mine = await limited.post(
            "/api/v1/webhooks", json={"url": receiver.url, "owner": other, "events": ["run.failed"]}
        )
        assert mine.status_code == 201
        assert (await limited.delete(f"/api/v1/webhooks/{mine.json()['id']}")).status_code == 204


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data", "link-local or metadata"),
        ("http://[fe80::1]/x", "link-local or metadata"),
        ("http://10.1.2.3/hook", "MAESTRO_OUTBOUND__ALLOWED_PRIVATE_NETWORKS"),
        ("http://127.0.0.2:9/hook", "MAESTRO_OUTBOUND__ALLOWED_PRIVATE_NETWORKS"),
        ("ftp://example.com/x", "scheme must be http or https"),
        ("http://user:pw@example.com/x", "user or password"),
    ],
)
async def test_refused_destinations_get_422_naming_the_url(api, url, reason):
    response = await api.post(
        "/api/v1/webhooks", json={"url": url, "owner": "x", "events": ["run.failed"]}
    )
    assert response.status_code == 422, response.text
    [problem] = response.json()["detail"]
    assert problem["loc"] == ["body", "url"] and reason in problem["msg"]


async def test_bad_bodies_get_422_naming_the_field(api):
    cases = [
        ({"url": "http://127.0.0.1/x", "events": ["run.exploded"]}, ["body", "events", 0]),
        ({"url": "http://127.0.0.1/x", "events": []}, ["body", "events"]),
        (
            {"url": "http://127.0.0.1/x", "events": ["run.failed"], "format": "xml"},
            ["body", "format"],
        ),
        ({"events": ["run.failed"]}, ["body", "url"]),
    ]
    for body, loc in cases:
        response = await api.post("/api/v1/webhooks", json=body)
        assert response.status_code == 422, response.text
        assert loc in [p["loc"] for p in response.json()["detail"]], response.text


async def test_yaml_body_creates_the_readmes_slack_alert(api, receiver):
    owner = unique_id("team")
    workflow_id = unique_id("wh-yaml")
    body = (
        f"url: {receiver.url}/services/T000/B000/XXXX\n"
        f"events: [run.failed, run.timed_out, sla.missed]\n"
        f"workflows: [{workflow_id}]\n"
        f"format: slack\n"
        f"owner: {owner}\n"
    )
    response = await api.post(
        "/api/v1/webhooks", content=body, headers={"content-type": "application/yaml"}
    )
    assert response.status_code == 201, response.text
    assert response.json()["format"] == "slack"
    await push_and_run(api, failing(workflow_id, owner))
    await receiver.wait_for(lambda: len(receiver.events()) >= 1)
    assert receiver.events()[0].path == "/services/T000/B000/XXXX"


@pytest.mark.e2e
@pytest.mark.fault
async def test_event_is_delivered_after_the_processes_that_recorded_it_are_killed(
    api, settings, sessions, tmp_path
):
    """A run fails under a `maestro worker` process (its end and event committed there), and
    `maestro api` stops another run; both processes are SIGKILLed right after, with the
    receiver down so that neither could have delivered: the events still arrive, once."""
    receiver = Receiver()
    owner = unique_id("team")
    hook = await subscribe(api, receiver.url + "/kill", owner, ["run.failed", "run.stopped"])
    queue = unique_id("wh-kill-queue")
    procs = Processes(settings, tmp_path, task_queue=queue)
    procs.env["MAESTRO_OUTBOUND__ALLOWED_PRIVATE_NETWORKS"] = '["127.0.0.1/32"]'
    procs.env["MAESTRO_WEBHOOKS__DISPATCH"] = "false"  # only the event's durability is tested
    try:
        api_proc = procs.start("api")
        worker_proc = procs.start("worker")
        import httpx

        base = f"http://127.0.0.1:{procs.api_port}"
        async with httpx.AsyncClient(base_url=base, headers=dict(api.headers)) as remote:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if (await remote.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "maestro api did not come up"
                await asyncio.sleep(0.2)
            workflow_id = unique_id("wh-kill")
            definition = failing(workflow_id, owner)
            definition["steps"][0]["task_queue"] = queue
            definition["steps"][1]["task_queue"] = queue
            assert (await remote.post("/api/v1/workflows", json=definition)).status_code == 201
            slow = {
                "id": unique_id("wh-slow"),
                "owner": owner,
                "steps": [
                    {"id": "s", "type": "sleep", "params": {"seconds": 60}, "task_queue": queue}
                ],
            }
            assert (await remote.post("/api/v1/workflows", json=slow)).status_code == 201
            failed = (await remote.post(f"/api/v1/workflows/{workflow_id}/runs", json={})).json()
            sleeping = (await remote.post(f"/api/v1/workflows/{slow['id']}/runs", json={})).json()
            deadline = time.monotonic() + 60
            while True:
                async with sessions() as session:
                    status = await session.scalar(
                        select(Run.status).where(Run.run_id == failed["run_id"])
                    )
                if status == "failed":
                    break
                assert time.monotonic() < deadline, status
                await asyncio.sleep(0.05)
            worker_proc.send_signal(signal.SIGKILL)
            stopped = await remote.post(f"/api/v1/runs/{sleeping['run_id']}/kill")
            assert stopped.status_code == 202, stopped.text
            api_proc.send_signal(signal.SIGKILL)
        await receiver.start()
        # The test process's own worker dispatches (another process than the recorders).
        await receiver.wait_for(lambda: len(receiver.events()) >= 2)
        await asyncio.sleep(1)
        got = {r.json()["data"]["run_id"]: r.json()["type"] for r in receiver.events()}
        assert got == {failed["run_id"]: "run.failed", sleeping["run_id"]: "run.stopped"}
        assert len(receiver.events()) == 2
        log = (await api.get(f"/api/v1/webhooks/{hook['id']}/deliveries")).json()["items"]
        assert [d["status"] for d in log] == ["delivered", "delivered"]
    finally:
        procs.stop_all()
        await receiver.stop()


async def test_without_a_secrets_key_create_is_a_503_saying_what_to_set(api, receiver, sessions):
    """A webhook's secret is encrypted with the secrets key: a server without one answers 503
    naming the setting (not a 500), writes nothing, and keeps serving everything else."""
    app = api._transport.app
    box, app.state.secret_box = app.state.secret_box, None
    try:
        owner = unique_id("nokey")
        response = await api.post(
            "/api/v1/webhooks",
            json={"url": receiver.url + "/hook", "owner": owner, "events": ["run.failed"]},
        )
        assert response.status_code == 503, response.text
        assert response.json()["error"] == "configuration_error"
        assert "MAESTRO_SECRETS_KEY" in response.json()["message"]
        assert "Retry-After" not in response.headers
        async with sessions() as session:
            count = await session.scalar(
                text("SELECT count(*) FROM webhooks WHERE owner = :o"), {"o": owner}
            )
        assert count == 0
        assert (await api.get("/api/v1/webhooks")).status_code == 200
    finally:
        app.state.secret_box = box
