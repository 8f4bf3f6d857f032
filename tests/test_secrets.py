"""Secrets, tried as an attacker would: values are encrypted at rest and never returned, keys
see only their owners' secrets, workflows use only their owner's, and a value reaches the
step only: masked in outputs, tails, errors and progress, absent from Temporal's history."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid

import pytest
from sqlalchemy import select

from maestro.db.tables import Secret, StepRun
from maestro.secrets import MASK, Masker, SecretBox
from tests.conftest import unique_id, wait_for_run, wait_for_step
from tests.test_auth import as_key, make_key

pytestmark = pytest.mark.usefixtures("worker")


def new_value() -> str:
    return f"tok-{uuid.uuid4().hex}"


async def put(api, name: str, value: str, owner: str = "") -> dict:
    response = await api.put(f"/api/v1/secrets/{name}", json={"value": value, "owner": owner})
    assert response.status_code in (200, 201), response.text
    return response.json()


async def push(api, body: dict) -> None:
    response = await api.post("/api/v1/workflows", json=body)
    assert response.status_code == 201, response.text


async def run(api, workflow_id: str) -> dict:
    started = await api.post(f"/api/v1/workflows/{workflow_id}/runs", json={})
    assert started.status_code == 201, started.text
    return await wait_for_run(api, started.json()["run_id"])


def use_secret(name: str, **args) -> dict:
    """A python step that reads secret `name` (tests.steps:use_secret)."""
    return {
        "id": "py",
        "type": "python",
        "params": {
            "entrypoint": "tests.steps:use_secret",
            "secrets": [name],
            "args": {"name": name, **args},
        },
    }


RETRY_ONCE = {"max_attempts": 2, "initial_backoff": "0.1s"}


def with_secret(name: str, command: str, variable: str = "TOKEN", **step) -> dict:
    """A shell step `sh` that has secret `name` as $`variable`."""
    return {
        "id": "sh",
        "type": "shell",
        "params": {"env": {variable: {"secret": name}}, "command": command},
        **step,
    }


def steps(done: dict) -> dict[str, dict]:
    return {s["step_id"]: s for s in done["steps"]}


async def history_bytes(temporal_client, done: dict) -> bytes:
    """Every event of the run's Temporal history, as the server stores it."""
    handle = temporal_client.get_workflow_handle(done["temporal_workflow_id"])
    history = await handle.fetch_history()
    return b"".join(event.SerializeToString() for event in history.events)


async def step_rows(sessions, run_id: str) -> str:
    async with sessions() as session:
        rows = (await session.scalars(select(StepRun).where(StepRun.run_id == run_id))).all()
    return json.dumps([[r.outputs, r.details, r.error] for r in rows])


async def test_values_are_stored_encrypted_and_never_returned(api, sessions, settings):
    name, first, second = unique_id("db-password"), new_value(), new_value()
    created = await api.put(f"/api/v1/secrets/{name}", json={"value": first, "owner": "team-a"})
    assert created.status_code == 201
    assert created.json()["version"] == 1 and created.json()["owner"] == "team-a"
    rotated = await api.put(f"/api/v1/secrets/{name}", json={"value": second, "owner": "team-a"})
    assert rotated.status_code == 200 and rotated.json()["version"] == 2
    got = await api.get(f"/api/v1/secrets/{name}")
    assert set(got.json()) == {"name", "owner", "version", "created_at", "updated_at"}
    listed = await api.get("/api/v1/secrets")
    assert name in [s["name"] for s in listed.json()]
    for response in (created, rotated, got, listed):
        assert first not in response.text and second not in response.text

    async with sessions() as session:
        row = await session.get(Secret, name)
    assert first not in row.ciphertext and second not in row.ciphertext
    assert SecretBox.from_settings(settings).open(name, "team-a", row.ciphertext) == second
    # A sealed value copied into another secret's row does not open there.
    with pytest.raises(Exception, match="holds another secret's value"):
        SecretBox.from_settings(settings).open("other", "team-a", row.ciphertext)

    assert (await api.delete(f"/api/v1/secrets/{name}")).status_code == 204
    missing = await api.get(f"/api/v1/secrets/{name}")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    assert (await api.delete(f"/api/v1/secrets/{name}")).status_code == 404
    bad = await api.put("/api/v1/secrets/bad name!", json={"value": "x"})
    assert bad.status_code == 422
    empty = await api.put(f"/api/v1/secrets/{name}", json={"value": ""})
    assert empty.status_code == 422


async def test_scopes_and_owners(api):
    theirs = unique_id("team-b.token")
    await put(api, theirs, new_value(), owner="team-b")
    reader = await make_key(api, ["read"])
    writer = await make_key(api, ["write"])
    secrets_only = await make_key(api, ["secrets:write"])
    team_a = await make_key(api, ["read", "secrets:write"], owners=["team-a"])
    body = {"value": new_value()}
    async with (
        as_key(api, reader) as r,
        as_key(api, writer) as w,
        as_key(api, secrets_only) as s,
        as_key(api, team_a) as a,
    ):
        for client in (r, w):
            denied = await client.put(f"/api/v1/secrets/{unique_id('x')}", json=body)
            assert denied.status_code == 403
            assert "lacks the 'secrets:write' scope" in denied.json()["message"]
        assert (await r.get(f"/api/v1/secrets/{theirs}")).status_code == 200
        assert (await s.put(f"/api/v1/secrets/{unique_id('s')}", json=body)).status_code == 201
        assert (await s.get("/api/v1/secrets")).status_code == 403, "reading needs `read`"

        foreign = await a.put(f"/api/v1/secrets/{unique_id('x')}", json={**body, "owner": "b"})
        assert foreign.status_code == 403
        ours = unique_id("team-a.token")
        assert (
            await a.put(f"/api/v1/secrets/{ours}", json={**body, "owner": "team-a"})
        ).status_code == 201
        for attempt in (
            a.get(f"/api/v1/secrets/{theirs}"),
            a.delete(f"/api/v1/secrets/{theirs}"),
            a.put(f"/api/v1/secrets/{theirs}", json={**body, "owner": "team-a"}),
        ):
            assert (await attempt).status_code == 403
        listed = (await a.get("/api/v1/secrets")).json()
        assert ours in [s["name"] for s in listed]
        assert {s["owner"] for s in listed} == {"team-a"}
    assert (await api.get(f"/api/v1/secrets/{theirs}")).json()["version"] == 1, "untouched"


async def test_a_workflow_names_only_existing_secrets_of_its_owner(api):
    ours, theirs = unique_id("ours"), unique_id("theirs")
    await put(api, ours, new_value(), owner="team-a")
    await put(api, theirs, new_value(), owner="team-b")
    wid = unique_id("uses-secrets")

    def body(env: dict, names: list[str]) -> dict:
        return {
            "id": wid,
            "owner": "team-a",
            "steps": [
                {"id": "sh", "type": "shell", "params": {"command": "true", "env": env}},
                {
                    "id": "py",
                    "type": "python",
                    "params": {"entrypoint": "tests.steps:use_secret", "secrets": names},
                },
            ],
        }

    refused = await api.post(
        "/api/v1/workflows", json=body({"T": {"secret": theirs}}, [unique_id("nope")])
    )
    assert refused.status_code == 422
    problems = {tuple(p["loc"]): p["type"] for p in refused.json()["detail"]}
    assert problems == {
        ("steps", 0, "params", "env", "T", "secret"): "secret_owner",
        ("steps", 1, "params", "secrets", 0): "unknown_secret",
    }
    assert theirs in refused.text and "team-b" not in refused.text
    assert (await api.get(f"/api/v1/workflows/{wid}")).status_code == 404, "nothing written"
    await push(api, body({"T": {"secret": ours}}, [ours]))


async def test_steps_get_their_secrets_masked_everywhere(api, sessions, temporal_client):
    name, value = unique_id("token"), new_value()
    await put(api, name, value, owner="team-s")
    wid = unique_id("secret-run")
    await push(
        api,
        {
            "id": wid,
            "owner": "team-s",
            "steps": [
                with_secret(
                    name,
                    'echo "token=$TOKEN"; echo "$TOKEN" >&2; '
                    'printf \'{"token": "%s", "length": %d}\' "$TOKEN" "${#TOKEN}" '
                    '> "$MAESTRO_OUTPUTS"',
                ),
                use_secret(name),
            ],
        },
    )
    done = await run(api, wid)
    assert done["status"] == "succeeded", done
    sh, py = steps(done)["sh"]["outputs"], steps(done)["py"]["outputs"]
    assert sh["stdout_tail"] == f"token={MASK}" and sh["token"] == MASK
    assert sh["length"] == len(value), "the step had the real value"
    assert py["value"] == MASK and py["sha256"] == hashlib.sha256(value.encode()).hexdigest()
    assert value not in json.dumps(done)
    assert value not in await step_rows(sessions, done["run_id"])
    history = await history_bytes(temporal_client, done)
    assert name.encode() in history and value.encode() not in history


async def test_a_failing_step_does_not_leak_its_secret(api, sessions, temporal_client):
    name, value = unique_id("token"), new_value()
    await put(api, name, value)
    wid = unique_id("secret-fail")
    await push(
        api,
        {
            "id": wid,
            "steps": [
                with_secret(name, 'echo "login failed for $TOKEN" >&2; exit 2', retry=RETRY_ONCE),
                {**use_secret(name, fail=True), "retry": RETRY_ONCE},
            ],
        },
    )
    done = await run(api, wid)
    assert done["status"] == "failed"
    sh, py = steps(done)["sh"], steps(done)["py"]
    assert sh["attempt"] == 2 and sh["error"].endswith(f"login failed for {MASK}")
    assert py["attempt"] == 2 and f"cannot log in with {MASK}" in py["error"]
    assert value not in json.dumps(done)
    assert value not in await step_rows(sessions, done["run_id"])
    history = await history_bytes(temporal_client, done)
    assert b"login failed for " + MASK.encode() in history
    assert value.encode() not in history


async def test_progress_a_step_reports_is_masked(api, temporal_client):
    name, value = unique_id("token"), new_value()
    await put(api, name, value)
    wid = unique_id("secret-progress")
    await push(api, {"id": wid, "steps": [use_secret(name, report_seconds=3)]})
    started = (await api.post(f"/api/v1/workflows/{wid}/runs", json={})).json()
    handle = temporal_client.get_workflow_handle(started["temporal_workflow_id"])
    details = b""
    for _ in range(100):
        pending = (await handle.describe()).raw_description.pending_activities
        if pending and pending[0].heartbeat_details.payloads:
            details = b"".join(p.data for p in pending[0].heartbeat_details.payloads)
            break
        await asyncio.sleep(0.1)
    assert json.loads(details) == {"token": MASK}
    assert (await wait_for_run(api, started["run_id"]))["status"] == "succeeded"


async def test_a_new_value_takes_effect_on_the_next_run(api):
    name = unique_id("rotated")
    wid = unique_id("secret-rotation")
    await put(api, name, "first-value")
    await push(api, {"id": wid, "steps": [use_secret(name)]})
    for value in ("first-value", "second-value"):
        await put(api, name, value)
        done = await run(api, wid)
        expected = hashlib.sha256(value.encode()).hexdigest()
        assert steps(done)["py"]["outputs"]["sha256"] == expected


async def test_a_missing_or_foreign_secret_fails_the_step_for_good(api):
    name = unique_id("gone")
    wid = unique_id("secret-missing")
    await put(api, name, new_value(), owner="team-m")
    await push(
        api,
        {
            "id": wid,
            "owner": "team-m",
            "steps": [with_secret(name, "true", retry=RETRY_ONCE)],
        },
    )
    await put(api, name, new_value(), owner="team-other")
    foreign = steps(await run(api, wid))["sh"]
    assert foreign["status"] == "failed" and foreign["attempt"] == 1
    assert (
        f"secret {name!r} does not belong to this workflow's owner ('team-m')" in foreign["error"]
    )
    assert (await api.delete(f"/api/v1/secrets/{name}")).status_code == 204
    missing = steps(await run(api, wid))["sh"]
    assert missing["status"] == "failed" and missing["attempt"] == 1
    assert f"secret {name!r} does not exist" in missing["error"]


def test_masker_masks_whole_values_and_each_line_of_multi_line_ones():
    mask = Masker(["abc", "abcdef", "line one\nline two", ""])
    assert mask("x abcdef y abc") == "x *** y ***"
    assert mask({"k abc": ["line two", 3, ("line one",)]}) == {"k ***": ["***", 3, ("***",)]}
    assert Masker([])("abc") == "abc"


async def test_a_new_value_takes_effect_on_the_next_attempt(api):
    name = unique_id("rotated-mid-run")
    wid = unique_id("secret-attempts")
    await put(api, name, "short")
    await push(
        api,
        {
            "id": wid,
            "steps": [
                with_secret(
                    name,
                    'echo "${#TOKEN}"; [ "$MAESTRO_ATTEMPT" = 2 ] || { sleep 2; exit 1; }',
                    retry=RETRY_ONCE,
                )
            ],
        },
    )
    started = (await api.post(f"/api/v1/workflows/{wid}/runs", json={})).json()
    await wait_for_step(api, started["run_id"], "sh", "running")
    await put(api, name, "a much longer value")
    done = await wait_for_run(api, started["run_id"])
    sh = steps(done)["sh"]
    assert sh["attempt"] == 2 and sh["outputs"]["stdout_tail"] == str(len("a much longer value"))
