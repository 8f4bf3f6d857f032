"""API keys: 401 without a valid key, 403 without the scope or the ownership, revocation."""

from __future__ import annotations

import asyncio
import contextlib

import httpx
import pytest

from maestro.keys import KeyCache, create_key, revoke_key
from tests.conftest import unique_id

pytestmark = pytest.mark.usefixtures("worker")


async def make_key(api, scopes: list[str], owners: list[str] | None = None) -> str:
    response = await api.post(
        "/api/v1/keys", json={"name": unique_id("key"), "scopes": scopes, "owners": owners or []}
    )
    assert response.status_code == 201, response.text
    assert response.json()["key"].startswith("mst_")
    return response.json()["key"]


def as_key(api: httpx.AsyncClient, key: str | None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(transport=api._transport, base_url=str(api.base_url), headers=headers)


def workflow(workflow_id: str, owner: str) -> dict:
    return {"id": workflow_id, "owner": owner, "steps": [{"id": "go", "type": "noop"}]}


async def test_missing_or_bad_keys_get_401_and_open_pages_stay_open(api):
    async with as_key(api, None) as anonymous, as_key(api, "mst_not-a-key") as bogus:
        for client in (anonymous, bogus):
            response = await client.get("/api/v1/workflows")
            assert response.status_code == 401
            assert response.json()["error"] == "unauthorized"
            assert response.headers["www-authenticate"] == "Bearer"
        assert (await anonymous.post("/api/v1/signals", json={"name": "x"})).status_code == 401
        assert (await anonymous.get("/healthz")).status_code == 200
        assert (await anonymous.get("/openapi.json")).status_code == 200
        assert (await anonymous.get("/docs")).status_code == 200


async def test_scopes(api):
    reader, publisher, writer = (
        await make_key(api, ["read"]),
        await make_key(api, ["publish"]),
        await make_key(api, ["write"]),
    )
    wid = unique_id("scoped")
    async with as_key(api, reader) as r, as_key(api, publisher) as p, as_key(api, writer) as w:
        denied = await r.post("/api/v1/workflows", json=workflow(wid, ""))
        assert denied.status_code == 403 and "lacks the 'write' scope" in denied.json()["message"]
        assert (await w.post("/api/v1/workflows", json=workflow(wid, ""))).status_code == 201
        assert (await r.get(f"/api/v1/workflows/{wid}")).status_code == 200
        assert (await w.post(f"/api/v1/workflows/{wid}/runs", json={})).status_code == 201
        assert (await p.post("/api/v1/signals", json={"name": unique_id("s")})).status_code == 201
        assert (await p.get("/api/v1/signals")).status_code == 403  # publish only
        assert (await p.post(f"/api/v1/workflows/{wid}/runs", json={})).status_code == 403
        assert (await w.post("/api/v1/signals", json={"name": "x"})).status_code == 403
        assert (await w.get("/api/v1/keys")).status_code == 403  # keys are admin only
        assert (await r.get("/api/v1/keys")).status_code == 403


async def test_owner_limited_key_acts_only_on_its_teams_workflows(api):
    mine, theirs = unique_id("mine"), unique_id("theirs")
    await api.post("/api/v1/workflows", json=workflow(theirs, "team-b"))
    team_a = await make_key(api, ["write"], owners=["team-a"])
    async with as_key(api, team_a) as client:
        assert (
            await client.post("/api/v1/workflows", json=workflow(mine, "team-a"))
        ).status_code == 201
        refused = await client.post("/api/v1/workflows", json=workflow(unique_id("x"), "team-b"))
        assert refused.status_code == 403 and "team-a" in refused.json()["message"]
        assert (await client.get(f"/api/v1/workflows/{theirs}")).status_code == 403
        assert (await client.post(f"/api/v1/workflows/{theirs}/runs", json={})).status_code == 403
        run = (await client.post(f"/api/v1/workflows/{mine}/runs", json={})).json()
        assert (await client.get(f"/api/v1/runs/{run['run_id']}")).status_code == 200
        listed = (await client.get("/api/v1/workflows", params={"limit": 500})).json()["items"]
        assert {w["owner"] for w in listed} == {"team-a"}
        runs = (await client.get("/api/v1/runs", params={"limit": 500})).json()["items"]
        assert {r["workflow_id"] for r in runs} == {mine}
    other_run = (await api.post(f"/api/v1/workflows/{theirs}/runs", json={})).json()
    async with as_key(api, team_a) as client:
        assert (await client.get(f"/api/v1/runs/{other_run['run_id']}")).status_code == 403


async def test_revoked_key_stops_working(api):
    key = await make_key(api, ["read"])
    async with as_key(api, key) as client:
        assert (await client.get("/api/v1/workflows")).status_code == 200
        key_id = next(
            k["id"] for k in (await api.get("/api/v1/keys")).json() if key.startswith(k["prefix"])
        )
        revoked = await api.post(f"/api/v1/keys/{key_id}/revoke")
        assert revoked.json()["revoked_at"] is not None
        assert (await client.get("/api/v1/workflows")).status_code == 401
    bad = await api.post("/api/v1/keys", json={"name": "x", "scopes": ["root"]})
    assert bad.status_code == 422


async def test_key_cache_forgets_a_key_revoked_elsewhere_within_its_ttl(sessions):
    """A key revoked by another API process (straight in the database here) keeps working
    here only until the cached entry expires; then it is refused."""
    cache = KeyCache(ttl=0.5)
    async with sessions.begin() as session:
        row, secret = await create_key(session, unique_id("cached"), ["read"])
    found = await cache.lookup(sessions, secret)
    assert found is not None and found.id == row.id and found.scopes == ("read",)
    async with sessions.begin() as session:
        await revoke_key(session, row.id)
    assert await cache.lookup(sessions, secret) == found  # cached: no database round trip
    await asyncio.sleep(0.6)
    assert await cache.lookup(sessions, secret) is None
    assert await KeyCache(ttl=0).lookup(sessions, "mst_unknown") is None


async def test_key_cache_does_not_keep_a_lookup_that_raced_a_revocation(sessions):
    """A lookup that read a key just before it was revoked answers with what it read, but
    does not cache it past the revocation's clear()."""
    cache = KeyCache(ttl=60)
    async with sessions.begin() as session:
        row, secret = await create_key(session, unique_id("raced"), ["read"])
    read, gate = asyncio.Event(), asyncio.Event()

    @contextlib.asynccontextmanager
    async def held_sessions():
        async with sessions() as session:
            yield session
            read.set()  # the key row has been read
            await gate.wait()

    lookup = asyncio.create_task(cache.lookup(held_sessions, secret))
    await read.wait()
    async with sessions.begin() as session:
        await revoke_key(session, row.id)
    cache.clear()
    gate.set()
    assert (await lookup) is not None  # read before the revocation
    assert await cache.lookup(sessions, secret) is None
