"""Access control as an attacker sees it, against real PostgreSQL, Temporal and a worker: keys
of team `zzz` against team `ml`'s models, signals and runs; unlimited keys; the audit log."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import select

from maestro.db.tables import AuditEntry, Model
from tests.conftest import scratch_database, unique_id, wait_for_run
from tests.test_auth import as_key
from tests.test_ml import fixed_pipeline
from tests.test_signals import noop_workflow, push

pytestmark = pytest.mark.usefixtures("worker")


async def make_key(api, scopes: list[str], owners: list[str] | None = None) -> tuple[str, str]:
    """A new key: (id, secret)."""
    response = await api.post(
        "/api/v1/keys", json={"name": unique_id("key"), "scopes": scopes, "owners": owners or []}
    )
    assert response.status_code == 201, response.text
    return response.json()["id"], response.json()["key"]


def train_workflow(workflow_id: str, owner: str, model: str) -> dict:
    """The reference pipeline's training step alone (run with `quality`)."""
    pipeline = fixed_pipeline(workflow_id, model, gates=[])
    return {**pipeline, "owner": owner, "steps": pipeline["steps"][:1]}


def deploy_workflow(workflow_id: str, owner: str, model: str) -> dict:
    return {
        "id": workflow_id,
        "owner": owner,
        "steps": [
            {
                "id": "deploy",
                "type": "deploy",
                "retry": {"max_attempts": 1},
                "params": {"model_name": model, "model_version": 1, "stage": "production"},
            }
        ],
    }


async def run_to_end(api, workflow: dict) -> dict:
    pushed = await api.post("/api/v1/workflows", json=workflow)
    assert pushed.status_code in (200, 201), pushed.text
    params = {"quality": 0.9} if "quality" in workflow.get("params", {}) else {}
    started = await api.post(f"/api/v1/workflows/{workflow['id']}/runs", json={"params": params})
    assert started.status_code == 201, started.text
    return await wait_for_run(api, started.json()["run_id"])


@pytest.fixture
async def ml_model(api) -> dict:
    """Team `ml`'s model, registered by a real training run of an `ml` workflow."""
    model, workflow_id = unique_id("churn"), unique_id("ml-train")
    run = await run_to_end(api, train_workflow(workflow_id, "ml", model))
    assert run["status"] == "succeeded", run
    return {"model": model, "workflow_id": workflow_id, "run": run}


async def completion_signal(api, run_id: str, timeout: float = 10) -> dict:
    """The run's `maestro.run.<status>` signal (published just after the run's end commits)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        found = await api.get("/api/v1/signals", params={"param.run_id": run_id, "limit": 5})
        ends = [s for s in found.json()["items"] if s["name"].startswith("maestro.run.")]
        if ends:
            [signal] = ends
            return signal
        assert asyncio.get_running_loop().time() < deadline, f"run {run_id} published no end"
        await asyncio.sleep(0.1)


async def test_another_teams_write_key_cannot_promote_or_read_a_model(api, ml_model):
    model = ml_model["model"]
    _, zzz = await make_key(api, ["write"], owners=["zzz"])
    _, ml = await make_key(api, ["write"], owners=["ml"])
    _, reader = await make_key(api, ["read"])
    async with as_key(api, zzz) as attacker, as_key(api, ml) as owner, as_key(api, reader) as r:
        promote = await attacker.post(
            f"/api/v1/models/{model}/versions/1/promote", json={"stage": "production"}
        )
        assert promote.status_code == 403, promote.text
        assert "'ml'" in promote.json()["message"] and "zzz" in promote.json()["message"]
        assert (await attacker.get(f"/api/v1/models/{model}")).status_code == 403
        assert (await attacker.get(f"/api/v1/models/{model}/versions/1")).status_code == 403
        listed = (await attacker.get("/api/v1/models")).json()
        assert model not in {m["name"] for m in listed}
        assert all(m["owner"] == "zzz" for m in listed)
        # Nothing changed: no stage, no history, no model.deployed signal.
        detail = (await r.get(f"/api/v1/models/{model}")).json()
        assert detail["owner"] == "ml" and detail["stages"] == {} and detail["history"] == []
        assert model in {m["name"] for m in (await r.get("/api/v1/models")).json()}
        assert (await r.get(f"/api/v1/models/{model}/versions/1")).status_code == 200
        # The owner's own key may.
        promoted = await owner.post(
            f"/api/v1/models/{model}/versions/1/promote", json={"stage": "production"}
        )
        assert promoted.status_code == 200, promoted.text
        mine = (await owner.get("/api/v1/models")).json()
        assert model in {m["name"] for m in mine}
        # Its model.deployed signal is the model owner's.
        deployed = await owner.get(
            "/api/v1/signals", params={"name": "model.deployed", "param.model": model}
        )
        assert len(deployed.json()["items"]) == 1
        hidden = await attacker.get(
            "/api/v1/signals", params={"name": "model.deployed", "param.model": model}
        )
        assert hidden.json()["items"] == []


async def test_another_teams_runs_cannot_add_versions_to_or_deploy_a_model(api, sessions, ml_model):
    """A `zzz` workflow whose train or deploy step names `ml`'s model fails; the model keeps
    its one version and no stage."""
    model = ml_model["model"]
    trained = await run_to_end(api, train_workflow(unique_id("zzz-train"), "zzz", model))
    assert trained["status"] == "failed"
    assert "belongs to 'ml'" in trained["steps"][0]["error"]
    deployed = await run_to_end(api, deploy_workflow(unique_id("zzz-deploy"), "zzz", model))
    assert deployed["status"] == "failed"
    assert "belongs to 'ml'" in deployed["steps"][0]["error"]
    async with sessions() as session:
        stored = (await session.execute(select(Model).where(Model.name == model))).scalar_one()
    assert (stored.owner, stored.latest_version) == ("ml", 1)
    assert (await api.get(f"/api/v1/models/{model}")).json()["stages"] == {}


async def test_signals_are_read_by_their_producers_owners(api, ml_model):
    """`ml`'s completion signal is hidden from `zzz`'s keys (404-free 403 on the id, filtered
    from the list) unless they have `signals:read`; unlimited keys read everything."""
    run_id = ml_model["run"]["run_id"]
    signal = await completion_signal(api, run_id)
    _, zzz_reader = await make_key(api, ["read"], owners=["zzz"])
    _, zzz_log = await make_key(api, ["read", "signals:read"], owners=["zzz"])
    _, ml_reader = await make_key(api, ["read"], owners=["ml"])
    _, reader = await make_key(api, ["read"])
    by_run = {"param.run_id": run_id}
    async with (
        as_key(api, zzz_reader) as zzz,
        as_key(api, zzz_log) as zzz_all,
        as_key(api, ml_reader) as ml,
        as_key(api, reader) as unlimited,
    ):
        refused = await zzz.get(f"/api/v1/signals/{signal['id']}")
        assert refused.status_code == 403 and "signals:read" in refused.json()["message"]
        assert (await zzz.get("/api/v1/signals", params=by_run)).json()["items"] == []
        for client in (ml, unlimited, zzz_all):
            assert (await client.get(f"/api/v1/signals/{signal['id']}")).status_code == 200
            items = (await client.get("/api/v1/signals", params=by_run)).json()["items"]
            assert signal["id"] in {s["id"] for s in items}
        # A signals:read key still reaches no other owner's workflow through a signal's id.
        assert (await zzz_all.get(f"/api/v1/runs/{run_id}")).status_code == 403
        assert (await zzz_all.get(f"/api/v1/runs/{run_id}/lineage")).status_code == 403


async def test_outside_signals_belong_to_the_publishing_keys_owners(api):
    topic = unique_id("shared.topic")
    ml_workflow = unique_id("ml-listens")
    await push(
        api, noop_workflow(ml_workflow, [{"signal": {"all_of": [{"name": topic}]}}], owner="ml")
    )
    _, zzz_publish = await make_key(api, ["publish"], owners=["zzz"])
    _, zzz_reader = await make_key(api, ["read"], owners=["zzz"])
    _, ml_reader = await make_key(api, ["read"], owners=["ml"])
    async with (
        as_key(api, zzz_publish) as publisher,
        as_key(api, zzz_reader) as zzz,
        as_key(api, ml_reader) as ml,
    ):
        published = await publisher.post("/api/v1/signals", json={"name": topic})
        assert published.status_code == 201, published.text
        signal_id = published.json()["signal"]["id"]
        # Outside data arrival still starts other teams' runs: that is what signals are for.
        [started] = published.json()["runs"]
        assert started["workflow_id"] == ml_workflow
        mine = await zzz.get(f"/api/v1/signals/{signal_id}")
        assert mine.status_code == 200
        assert mine.json()["matches"] == []  # ml's trigger and run are not shown to zzz
        explained = await zzz.get(f"/api/v1/signals/{signal_id}", params={"explain": "true"})
        assert explained.json()["explain"] == []  # nor explained to it
        everything = (await api.get(f"/api/v1/signals/{signal_id}")).json()
        assert [m["workflow_id"] for m in everything["matches"]] == [ml_workflow]
        everything = (
            await api.get(f"/api/v1/signals/{signal_id}", params={"explain": "true"})
        ).json()
        assert [e["workflow_id"] for e in everything["explain"]] == [ml_workflow]
        assert (await ml.get(f"/api/v1/signals/{signal_id}")).status_code == 403
        listed = (await zzz.get("/api/v1/signals", params={"name": topic})).json()["items"]
        assert [s["id"] for s in listed] == [signal_id]
        # Posing as Maestro (another team's run end, a deployment) is refused.
        forged = [
            {"name": "maestro.run.succeeded", "params": {"workflow_id": ml_workflow}},
            {"name": "model.deployed", "params": {"model": "churn", "version": 1}},
        ]
        for body in forged:
            refused = await publisher.post("/api/v1/signals", json=body)
            assert refused.status_code == 403, refused.text
        batch = await publisher.post("/api/v1/signals/batch", json={"signals": forged})
        assert batch.status_code == 403
        await wait_for_run(api, started["run_id"])


async def test_lineage_leaves_out_what_the_key_may_not_read(api, ml_model):
    """A `zzz` workflow started by `ml`'s run end: `zzz`'s key sees its own run (and its own
    completion signal) in the lineage, not `ml`'s completion signal or run; an unlimited key
    sees them all."""
    follower = unique_id("zzz-follows")
    trigger = {"on_finish": {"workflow": ml_model["workflow_id"]}}
    await push(api, noop_workflow(follower, [trigger], owner="zzz"))
    upstream = await run_to_end(
        api, train_workflow(ml_model["workflow_id"], "ml", ml_model["model"])
    )
    signal = await completion_signal(api, upstream["run_id"])
    # Other tests' workflows may listen to every run's completion too: take the follower's.
    matches = (await api.get(f"/api/v1/signals/{signal['id']}")).json()["matches"]
    [match] = [m for m in matches if m["workflow_id"] == follower]
    downstream = match["run_id"]
    _, zzz_reader = await make_key(api, ["read"], owners=["zzz"])
    async with as_key(api, zzz_reader) as zzz:
        lineage = (await zzz.get(f"/api/v1/runs/{downstream}/lineage")).json()
    seen = {n["id"] for n in lineage["nodes"]}
    assert f"run:{downstream}" in seen
    assert f"signal:{signal['id']}" not in seen and f"run:{upstream['run_id']}" not in seen
    assert all(e["source"] in seen and e["target"] in seen for e in lineage["edges"])
    full = (await api.get(f"/api/v1/runs/{downstream}/lineage")).json()
    assert {n["id"] for n in full["nodes"]} >= {
        f"run:{downstream}",
        f"signal:{signal['id']}",
        f"run:{upstream['run_id']}",
    }


async def audit_rows(api, timeout: float = 10, **params) -> list[dict]:
    """The audit log's newest rows (written a fraction of a second after each request)."""
    response = await api.get("/api/v1/audit", params={"limit": 500, **params})
    assert response.status_code == 200, response.text
    return response.json()["items"]


async def wait_for_audit(api, predicate, timeout: float = 10, **params) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        found = [row for row in await audit_rows(api, **params) if predicate(row)]
        if found:
            return found[0]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"no audit row matched within {timeout}s")
        await asyncio.sleep(0.1)


async def test_audit_log_records_mutating_requests_with_key_owner_and_status(api, ml_model):
    model, workflow_id = ml_model["model"], ml_model["workflow_id"]
    zzz_id, zzz = await make_key(api, ["write"], owners=["zzz"])
    publish_id, publish = await make_key(api, ["publish"])
    since = datetime.now(UTC) - timedelta(seconds=1)
    async with (
        as_key(api, zzz) as attacker,
        as_key(api, publish) as publisher,
        as_key(api, None) as anonymous,
    ):
        path = f"/api/v1/models/{model}/versions/1/promote"
        assert (await attacker.post(path, json={"stage": "staging"})).status_code == 403
        assert (await attacker.get("/api/v1/audit")).status_code == 403
        assert (await publisher.get("/api/v1/audit")).status_code == 403
        assert (await attacker.get(f"/api/v1/models/{model}")).status_code == 403
        published = await publisher.post("/api/v1/signals", json={"name": unique_id("audited")})
        assert published.status_code == 201
        denied = await anonymous.post(f"/api/v1/workflows/{workflow_id}/runs", json={})
        assert denied.status_code == 401

    refused = await wait_for_audit(api, lambda r: r["path"] == path, key_id=zzz_id)
    assert refused["method"] == "POST" and refused["status"] == 403
    assert refused["owners"] == ["zzz"] and refused["key_name"].startswith("key-")
    assert refused["targets"] == {"model_name": model, "version": "1"}
    assert datetime.fromisoformat(refused["at"]) >= since
    # Reads are not audited, refused or not.
    assert [r["method"] for r in await audit_rows(api, key_id=zzz_id)] == ["POST"]
    ok = await wait_for_audit(api, lambda r: r["path"] == "/api/v1/signals", key_id=publish_id)
    assert ok["status"] == 201 and ok["owners"] == [] and ok["targets"] == {}
    anonymous_row = await wait_for_audit(
        api,
        lambda r: r["key_id"] is None and r["targets"].get("workflow_id") == workflow_id,
        since=since.isoformat(),
    )
    assert anonymous_row["status"] == 401 and anonymous_row["path"].endswith("/runs")


async def test_audit_log_pages_with_a_cursor(api):
    key_id, key = await make_key(api, ["write"])
    async with as_key(api, key) as client:
        for _ in range(5):
            refused = await client.post("/api/v1/workflows/validate", content=b"{")
            assert refused.status_code == 422
    await wait_for_audit(api, lambda r: True, key_id=key_id)
    deadline = asyncio.get_running_loop().time() + 10
    while len(await audit_rows(api, key_id=key_id)) < 5:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.1)
    first = (await api.get("/api/v1/audit", params={"key_id": key_id, "limit": 3})).json()
    assert len(first["items"]) == 3 and first["next_cursor"]
    second = await api.get(
        "/api/v1/audit", params={"key_id": key_id, "limit": 3, "cursor": first["next_cursor"]}
    )
    ids = [r["id"] for r in first["items"] + second.json()["items"]]
    assert len(ids) == 5 and ids == sorted(ids, reverse=True)
    assert second.json()["next_cursor"] is None
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert await audit_rows(api, key_id=key_id, since=future) == []


@pytest.fixture
async def isolated_api(settings, postgres_server, tmp_path):
    """A second API on a database of its own, whose only keys are those a test makes, so
    that revoking admin keys cannot touch the session's; yields (app, database URL)."""
    from api.app import create_app

    async with scratch_database(postgres_server) as url:
        temporal = settings.temporal.model_copy(update={"task_queue": "maestro-keys-isolated"})
        app = create_app(
            settings.model_copy(
                update={"database_url": url, "data_dir": tmp_path, "temporal": temporal}
            )
        )
        yield app, url


async def bootstrap_admin(url: str, name: str) -> tuple[str, str]:
    from maestro.keys import create_admin_key

    secret = await create_admin_key(url, name)
    return secret, name


def client_of(app, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://maestro",
        headers={"Authorization": f"Bearer {key}"},
    )


async def key_ids(client: httpx.AsyncClient) -> dict[str, dict]:
    return {k["name"]: k for k in (await client.get("/api/v1/keys")).json()}


async def test_last_admin_key_and_own_key_cannot_be_revoked_by_mistake(isolated_api):
    import asyncpg

    app, url = isolated_api
    first, _ = await bootstrap_admin(url, "first-admin")
    async with app.router.lifespan_context(app), client_of(app, first) as admin:
        keys = await key_ids(admin)
        first_id = keys["first-admin"]["id"]
        last = await admin.post(f"/api/v1/keys/{first_id}/revoke", params={"confirm": "true"})
        assert last.status_code == 409 and last.json()["error"] == "last_admin_key"
        assert "last active admin key" in last.json()["message"]
        assert (await key_ids(admin))["first-admin"]["revoked_at"] is None  # nothing changed

        second = await admin.post("/api/v1/keys", json={"name": "second", "scopes": ["admin"]})
        second_secret = second.json()["key"]
        own = await admin.post(f"/api/v1/keys/{first_id}/revoke")
        assert own.status_code == 409 and own.json()["error"] == "confirmation_required"
        assert "confirm=true" in own.json()["message"]
        assert (await admin.get("/api/v1/keys")).status_code == 200  # still works
        confirmed = await admin.post(f"/api/v1/keys/{first_id}/revoke", params={"confirm": "true"})
        assert confirmed.status_code == 200 and confirmed.json()["revoked_at"] is not None
        assert (await admin.get("/api/v1/keys")).status_code == 401
        async with client_of(app, second_secret) as survivor:
            second_id = (await key_ids(survivor))["second"]["id"]
            refused = await survivor.post(
                f"/api/v1/keys/{second_id}/revoke", params={"confirm": "true"}
            )
            assert refused.status_code == 409 and refused.json()["error"] == "last_admin_key"
            assert (await survivor.get("/api/v1/keys")).status_code == 200
            # The last request before shutdown is in the audit log: shutdown flushes it.
            await survivor.post("/api/v1/workflows/validate", content=b"not json")
    db = await asyncpg.connect(url)
    try:
        last_row = await db.fetchrow("SELECT * FROM audit_log ORDER BY id DESC LIMIT 1")
        revokes = await db.fetch(
            "SELECT status, key_id FROM audit_log WHERE path LIKE '%/revoke' ORDER BY id"
        )
    finally:
        await db.close()
    assert (last_row["path"], last_row["status"]) == ("/api/v1/workflows/validate", 422)
    assert [r["status"] for r in revokes] == [409, 409, 200, 409]
    assert revokes[-1]["key_id"] == second_id


async def test_concurrent_revocations_never_leave_zero_admin_keys(isolated_api):
    """The last two admin keys revoke each other at the same moment, five times over: each
    time exactly one succeeds and one admin key is left."""
    import asyncpg

    app, url = isolated_api
    survivor_secret, survivor_name = await bootstrap_admin(url, "admin-0")
    async with app.router.lifespan_context(app):
        for round_number in range(1, 6):
            async with client_of(app, survivor_secret) as survivor:
                created = await survivor.post(
                    "/api/v1/keys", json={"name": f"admin-{round_number}", "scopes": ["admin"]}
                )
                newcomer_secret = created.json()["key"]
                ids = {name: k["id"] for name, k in (await key_ids(survivor)).items()}
                async with client_of(app, newcomer_secret) as newcomer:
                    # Both keys cached: both requests get past authentication to the race.
                    assert (await newcomer.get("/api/v1/keys")).status_code == 200
                    results = await asyncio.gather(
                        survivor.post(f"/api/v1/keys/{ids[f'admin-{round_number}']}/revoke"),
                        newcomer.post(f"/api/v1/keys/{ids[survivor_name]}/revoke"),
                    )
            statuses = sorted(r.status_code for r in results)
            assert statuses == [200, 409], [r.text for r in results]
            if results[1].status_code == 200:  # the newcomer revoked the survivor
                survivor_secret, survivor_name = newcomer_secret, f"admin-{round_number}"
            db = await asyncpg.connect(url)
            try:
                active = await db.fetchval(
                    "SELECT count(*) FROM api_keys"
                    " WHERE revoked_at IS NULL AND 'admin' = ANY(scopes)"
                )
            finally:
                await db.close()
            assert active == 1


async def test_audit_writer_keeps_good_rows_when_the_database_refuses_one(sessions):
    """A row the database cannot hold (too long a method) is dropped and counted; the rest
    of its batch is written."""
    from api.audit import AuditWriter

    writer = AuditWriter(sessions)
    marker = unique_id("/writer")
    base = {
        "at": datetime.now(UTC),
        "key_id": None,
        "key_name": None,
        "owners": ["team-w"],
        "path": marker,
        "targets": {"workflow_id": "w"},
        "status": 200,
        "duration_ms": 1.5,
    }
    for method in ("POST", "X" * 50, "DELETE"):
        writer.record({**base, "method": method})
    await writer.flush()
    assert writer.dropped == 1
    async with sessions() as session:
        stored = (
            await session.execute(
                select(AuditEntry.method, AuditEntry.targets, AuditEntry.owners)
                .where(AuditEntry.path == marker)
                .order_by(AuditEntry.id)
            )
        ).all()
    assert [tuple(r) for r in stored] == [
        ("POST", {"workflow_id": "w"}, ["team-w"]),
        ("DELETE", {"workflow_id": "w"}, ["team-w"]),
    ]
