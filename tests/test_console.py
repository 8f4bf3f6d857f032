"""The web console over ASGI against real PostgreSQL and Temporal: sign-in, the session cookie's
flags, CSRF, scopes and owner limits, and every page rendering real objects (the browser tests
in test_console_browser.py drive the same pages in chromium)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from api.app import create_app
from api.console.auth import COOKIE
from api.console.graph import Node, layout
from maestro.keys import create_key
from maestro.settings import Settings
from tests.conftest import unique_id, wait_for_run

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
async def app(settings: Settings, temporal_client) -> AsyncIterator[FastAPI]:
    """The API app in-process (after Temporal answers), its lifespan running."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app


def browser(app: FastAPI, scheme: str = "http") -> httpx.AsyncClient:
    """A client that keeps cookies, as a browser does, and follows no redirect by itself."""
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url=f"{scheme}://maestro.test"
    )


async def new_key(sessions, scopes: list[str], owners: tuple[str, ...] = ()) -> str:
    async with sessions.begin() as session:
        _, secret = await create_key(session, f"console-{'-'.join(scopes)}", scopes, owners)
    return secret


async def login_form(client: httpx.AsyncClient, key: str, **more: str) -> httpx.Response:
    """Post the sign-in form as a browser does: after loading it (its token and cookie)."""
    form = await client.get("/ui/login")
    match = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert match, "the sign-in form carries its token"
    return await client.post("/ui/login", data={"key": key, "csrf": match.group(1), **more})


async def sign_in(client: httpx.AsyncClient, key: str) -> str:
    """Sign in; returns the page's CSRF token."""
    response = await login_form(client, key, next="/ui/workflows")
    assert response.status_code == 303, response.text
    page = await client.get("/ui/workflows")
    assert page.status_code == 200, page.text
    return csrf_of(page.text)


def csrf_of(html: str) -> str:
    match = re.search(r'data-csrf="([0-9a-f]{64})"', html)
    assert match, "the page carries the session's CSRF token"
    return match[1]


async def push(api: httpx.AsyncClient, body: dict) -> None:
    response = await api.post("/api/v1/workflows", json=body)
    assert response.status_code in (200, 201), response.text


# -- pure parts --------------------------------------------------------------------------------


def test_layout_places_each_step_after_its_parents_and_routes_edges():
    nodes = [Node(id=i, label=i) for i in ("a", "b", "c", "d")]
    graph = layout(nodes, [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d"), ("x", "a")])
    x = {n.id: n.x for n in graph.nodes}
    assert x["a"] < x["b"] == x["c"] < x["d"]
    assert {n.y for n in graph.nodes if n.id in "bc"} == {8, 74}  # b and c one above the other
    assert len(graph.edges) == 4  # the edge from an unknown node is dropped
    assert all(e.path.startswith("M") for e in graph.edges)
    assert graph.width > x["d"] and graph.height > 74


def test_layout_puts_nodes_on_a_cycle_after_the_rest():
    nodes = [Node(id=i, label=i) for i in ("a", "b", "c")]
    graph = layout(nodes, [("a", "b"), ("b", "c"), ("c", "b")])
    x = {n.id: n.x for n in graph.nodes}
    assert x["a"] < x["b"] and x["a"] < x["c"]


# -- sign-in, cookie, CSRF ---------------------------------------------------------------------


async def test_pages_send_a_stranger_to_sign_in_and_keep_where_they_were_going(app):
    async with browser(app) as client:
        response = await client.get("/ui/workflows?owner=team-a")
        assert response.status_code == 303
        assert response.headers["location"] == "/ui/login?next=%2Fui%2Fworkflows%3Fowner%3Dteam-a"
        login = await client.get(response.headers["location"])
        assert login.status_code == 200 and 'name="key"' in login.text
        # htmx polls are told to navigate, not handed a sign-in page to swap in.
        polled = await client.get("/ui/runs/x/live", headers={"HX-Request": "true"})
        assert polled.status_code == 204
        assert polled.headers["HX-Redirect"].startswith("/ui/login?next=")
        # The API itself is untouched: still a Bearer key or 401.
        assert (await client.get("/api/v1/workflows")).status_code == 401


async def test_sign_in_sets_an_httponly_strict_cookie_secure_over_tls(app, admin_key):
    async with browser(app) as client:
        refused = await login_form(client, "mst_nope")
        assert refused.status_code == 401 and "unknown or revoked" in refused.text
        assert f"{COOKIE}=" not in refused.headers.get("set-cookie", "")
        response = await login_form(client, admin_key, next="//evil/x")
        assert response.status_code == 303
        assert response.headers["location"] == "/ui/workflows"  # no open redirect
        cookie = response.headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE}=")
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie
        assert "Secure" not in cookie
        assert admin_key not in cookie  # an opaque token, not the key
    async with browser(app, "https") as client:
        response = await login_form(client, admin_key)
        assert "Secure" in response.headers["set-cookie"]


async def test_a_sign_in_posted_from_another_site_is_refused(app, admin_key):
    """Login CSRF: another site's form cannot sign a browser in with the attacker's key. Its
    post carries neither the form's token nor the SameSite=Strict cookie that matches it."""
    async with browser(app) as client:
        forged = await client.post("/ui/login", data={"key": admin_key})
        assert forged.status_code == 403 and "did not come from this site" in forged.text
        assert f"{COOKIE}=" not in forged.headers.get("set-cookie", "")
        form = await client.get("/ui/login")
        cookie = form.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui/login" in cookie
        guessed = await client.post("/ui/login", data={"key": admin_key, "csrf": "x" * 32})
        assert guessed.status_code == 403
        assert (await login_form(client, admin_key)).status_code == 303


async def test_pages_carry_security_headers(app, admin_key):
    async with browser(app) as client:
        await sign_in(client, admin_key)
        page = await client.get("/ui/workflows")
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert page.headers["x-frame-options"] == "DENY"
        static = await client.get("/ui/static/htmx.min.js")
        assert static.status_code == 200 and "htmx" in static.text[:2000]


async def test_a_form_without_the_sessions_csrf_token_is_refused(app, api, admin_key):
    workflow_id = unique_id("console-csrf")
    await push(api, {"id": workflow_id, "steps": [{"id": "a", "type": "noop"}]})
    async with browser(app) as client:
        csrf = await sign_in(client, admin_key)
        url = f"/ui/workflows/{workflow_id}/pause"
        for data in ({}, {"csrf": "0" * 64}):
            refused = await client.post(url, data=data)
            assert refused.status_code == 403 and "CSRF" in refused.text
        assert (await api.get(f"/api/v1/workflows/{workflow_id}")).json()["paused"] is False
        # Another session's token is no good either.
        async with browser(app) as other:
            other_csrf = await sign_in(other, admin_key)
        assert other_csrf != csrf
        assert (await client.post(url, data={"csrf": other_csrf})).status_code == 403
        # The page's own forms carry the session's token.
        page = (await client.get(f"/ui/workflows/{workflow_id}")).text
        forms = re.findall(r'<form method="post".*?</form>', page, re.S)
        assert len(forms) >= 2
        assert all(f'name="csrf" value="{csrf}"' in form for form in forms)
        done = await client.post(url, data={"csrf": csrf})
        assert done.status_code == 303 and done.headers["location"].startswith(
            f"/ui/workflows/{workflow_id}?notice="
        )
        assert (await api.get(f"/api/v1/workflows/{workflow_id}")).json()["paused"] is True
        # htmx requests may send it as a header instead.
        resumed = await client.post(
            f"/ui/workflows/{workflow_id}/resume", headers={"X-CSRF-Token": csrf}
        )
        assert resumed.status_code == 303
        assert (await api.get(f"/api/v1/workflows/{workflow_id}")).json()["paused"] is False


async def test_sign_out_and_revocation_end_the_session(app, api, sessions):
    key = await new_key(sessions, ["read"])
    async with browser(app) as client:
        csrf = await sign_in(client, key)
        out = await client.post("/ui/logout", data={"csrf": csrf})
        assert out.status_code == 303 and out.headers["location"] == "/ui/login"
        assert (await client.get("/ui/workflows")).status_code == 303
    async with browser(app) as client:
        await sign_in(client, key)
        token = client.cookies[COOKIE]
        key_id = next(
            k["id"]
            for k in (await api.get("/api/v1/keys")).json()
            if k["prefix"] == key[:10] and k["revoked_at"] is None
        )
        assert (await api.post(f"/api/v1/keys/{key_id}/revoke")).status_code == 200
        assert (await client.get("/ui/workflows")).status_code == 303
        # The same token, replayed, is still refused.
        async with browser(app) as replay:
            replay.cookies.set(COOKIE, token, domain="maestro.test", path="/ui")
            assert (await replay.get("/ui/workflows")).status_code == 303


async def test_a_read_key_sees_no_buttons_and_a_forged_post_is_refused(app, api, sessions):
    workflow_id = unique_id("console-read")
    await push(
        api,
        {
            "id": workflow_id,
            "steps": [{"id": "a", "type": "noop"}],
            "triggers": [{"cron": "0 7 * * 1-5", "timezone": "Europe/Paris"}],
        },
    )
    key = await new_key(sessions, ["read"])
    async with browser(app) as client:
        csrf = await sign_in(client, key)
        page = await client.get(f"/ui/workflows/{workflow_id}")
        assert page.status_code == 200
        assert "weekdays 07:00 Europe/Paris" in page.text
        for label in (
            "Pause triggers",
            "Start run",
            "Backfill",
            '<form method="post" action="/ui/workflows',
        ):
            assert label not in page.text, label
        forged = await client.post(f"/ui/workflows/{workflow_id}/pause", data={"csrf": csrf})
        assert forged.status_code == 403 and "lacks the &#39;write&#39; scope" in forged.text
        assert (await api.get(f"/api/v1/workflows/{workflow_id}")).json()["paused"] is False
        signals = await client.get("/ui/signals")
        assert signals.status_code == 200 and "Publish a signal" not in signals.text
    writer = await new_key(sessions, ["write"])
    async with browser(app) as client:
        await sign_in(client, writer)
        page = await client.get(f"/ui/workflows/{workflow_id}")
        assert "Pause triggers" in page.text and "Start run" in page.text


async def test_an_owner_limited_key_reaches_only_its_owners_workflows(app, api, sessions):
    mine, theirs = unique_id("console-mine"), unique_id("console-theirs")
    await push(api, {"id": mine, "owner": "team-a", "steps": [{"id": "a", "type": "noop"}]})
    await push(api, {"id": theirs, "owner": "team-b", "steps": [{"id": "a", "type": "noop"}]})
    key = await new_key(sessions, ["write"], owners=("team-a",))
    async with browser(app) as client:
        csrf = await sign_in(client, key)
        listed = await client.get("/ui/workflows?q=console-")
        assert mine in listed.text and theirs not in listed.text
        assert (await client.get(f"/ui/workflows/{mine}")).status_code == 200
        assert (await client.get(f"/ui/workflows/{theirs}")).status_code == 403
        refused = await client.post(f"/ui/workflows/{theirs}/pause", data={"csrf": csrf})
        assert refused.status_code == 403
        assert (await api.get(f"/api/v1/workflows/{theirs}")).json()["paused"] is False


# -- pages -------------------------------------------------------------------------------------


async def test_workflows_page_filters_searches_and_pages(app, api, admin_key):
    prefix = unique_id("console-list")
    for i in range(3):
        await push(
            api,
            {
                "id": f"{prefix}-{i}",
                "owner": "team-list" if i < 2 else "team-other",
                "steps": [{"id": "a", "type": "noop"}],
                "triggers": [{"every": "1h"}] if i == 0 else [],
            },
        )
    await api.post(f"/api/v1/workflows/{prefix}-1/pause")
    async with browser(app) as client:
        await sign_in(client, admin_key)
        page = (await client.get(f"/ui/workflows?q={prefix}")).text
        assert "3 workflows" in page
        assert "every 1h" in page and "manual only" in page
        owned = (await client.get(f"/ui/workflows?q={prefix}&owner=team-list")).text
        assert f"{prefix}-0" in owned and f"{prefix}-2" not in owned
        paused = (await client.get(f"/ui/workflows?q={prefix}&state=paused")).text
        assert "1 workflow;" in paused and f"{prefix}-1" in paused
        assert f"{prefix}-0<" not in paused
        # Beyond the last page: an empty table, not an error.
        late = await client.get(f"/ui/workflows?q={prefix}&page=9")
        assert late.status_code == 200 and "No workflow matches" in late.text
        bad = await client.get("/ui/workflows?page=0")
        assert bad.status_code == 422 and "page" in bad.text


async def test_workflows_page_shows_and_filters_branches(app, api, admin_key):
    workflow_id = unique_id("console-branch")
    body = {"id": workflow_id, "steps": [{"id": "a", "type": "noop"}]}
    for branch in ("prod", "user.alice"):
        pushed = await api.post("/api/v1/workflows", params={"branch": branch}, json=body)
        assert pushed.status_code == 201, pushed.text
    async with browser(app) as client:
        await sign_in(client, admin_key)
        both = (await client.get(f"/ui/workflows?q={workflow_id}")).text
        assert "2 workflows" in both
        assert "<td>prod</td>" in both and "<td>user.alice</td>" in both
        alice = (await client.get(f"/ui/workflows?q={workflow_id}&branch=user.alice")).text
        assert f"{workflow_id}@user.alice" in alice and "<td>prod</td>" not in alice
        page = (await client.get(f"/ui/workflows/{workflow_id}@user.alice")).text
        assert "<dt>Branch</dt><dd>user.alice</dd>" in page


async def test_workflow_page_diff_activate_and_backfill_preview(app, api, admin_key):
    workflow_id = unique_id("console-wf")
    base = {"id": workflow_id, "triggers": [{"cron": "0 6 * * *", "timezone": "UTC"}]}
    await push(api, {**base, "steps": [{"id": "a", "type": "noop"}]})
    await push(
        api,
        {
            **base,
            "steps": [
                {"id": "a", "type": "noop"},
                {"id": "b", "type": "noop", "depends_on": ["a"]},
            ],
        },
    )
    async with browser(app) as client:
        csrf = await sign_in(client, admin_key)
        page = (await client.get(f"/ui/workflows/{workflow_id}")).text
        assert 'data-node="a"' in page and 'data-node="b"' in page  # the DAG
        assert "daily 06:00 UTC" in page
        assert "Roll back to version 1" in page
        diff = await client.get(
            f"/ui/workflows/{workflow_id}/diff?a=1&b=2", headers={"HX-Request": "true"}
        )
        assert '<span class="add">+- id: b</span>' in diff.text
        assert "<html" not in diff.text  # a fragment for htmx
        assert "<html" in (await client.get(f"/ui/workflows/{workflow_id}/diff?a=1&b=2")).text
        preview = await client.get(
            f"/ui/workflows/{workflow_id}/backfill/preview",
            params={"start": "2026-01-01T00:00", "end": "2026-01-04T00:00", "timezone": "UTC"},
        )
        assert "3 scheduled times" in preview.text
        assert "2026-01-02 06:00:00 UTC" in preview.text
        rolled = await client.post(
            f"/ui/workflows/{workflow_id}/versions/1/activate", data={"csrf": csrf}
        )
        assert rolled.status_code == 303
        assert (await api.get(f"/api/v1/workflows/{workflow_id}")).json()["active_version"] == 1
        missing = await client.get("/ui/workflows/no-such-workflow-here")
        assert missing.status_code == 404 and "not found" in missing.text


async def test_run_page_shows_the_dag_steps_and_actions_by_status(app, api, admin_key, worker):
    workflow_id = unique_id("console-run")
    await push(
        api,
        {
            "id": workflow_id,
            "steps": [
                {"id": "ok", "type": "noop", "params": {"outputs": {"rows": 3}}},
                {
                    "id": "boom",
                    "type": "shell",
                    "depends_on": ["ok"],
                    "retry": {"max_attempts": 1},
                    "params": {"command": "echo to-stdout; echo to-stderr >&2; exit 3"},
                },
            ],
        },
    )
    async with browser(app) as client:
        csrf = await sign_in(client, admin_key)
        started = await client.post(
            f"/ui/workflows/{workflow_id}/runs", data={"csrf": csrf, "params": "{}"}
        )
        assert started.status_code == 303
        run_url = started.headers["location"]
        run_id = run_url.rsplit("/", 1)[1]
        done = await wait_for_run(api, run_id)
        assert done["status"] == "failed"
        page = (await client.get(f"{run_url}?step=boom")).text
        assert 'class="node status-succeeded' in page and 'class="node status-failed' in page
        assert "to-stdout" in page and "to-stderr" in page  # log tails
        assert "exited with code 3" in page
        assert "Restart" in page and "Stop run" not in page
        assert "hx-trigger" not in page  # an ended run is not polled
        restarted = await client.post(
            f"/ui/runs/{run_id}/restart", data={"csrf": csrf, "from": "failed"}
        )
        assert restarted.status_code == 303
        new_id = restarted.headers["location"].split("?")[0].rsplit("/", 1)[1]
        assert new_id != run_id
        again = await wait_for_run(api, new_id)
        assert again["cause"]["detail"]["restart_of"] == run_id
        assert again["steps"][0]["error"].startswith("reused from run")
        # Stopping an ended run is a 409 page, not a crash.
        refused = await client.post(f"/ui/runs/{run_id}/stop", data={"csrf": csrf})
        assert refused.status_code == 409 and "allowed actions: restart" in refused.text
        lineage = await client.get(f"/ui/lineage?run={run_id}&depth=2")
        assert lineage.status_code == 200 and f"/ui/runs/{run_id}" in lineage.text


async def test_signal_page_explains_each_trigger_and_links_the_run(app, api, admin_key, worker):
    name = unique_id("console.ready")
    fires, waits = unique_id("console-fires"), unique_id("console-waits")
    await push(
        api,
        {
            "id": fires,
            "steps": [{"id": "a", "type": "noop"}],
            "triggers": [{"signal": {"all_of": [{"name": name, "where": {"table": "events"}}]}}],
        },
    )
    await push(
        api,
        {
            "id": waits,
            "steps": [{"id": "a", "type": "noop"}],
            "triggers": [
                {
                    "signal": {
                        "all_of": [{"name": name}, {"name": name + ".other"}],
                        "join_on": ["dt"],
                    }
                }
            ],
        },
    )
    async with browser(app) as client:
        csrf = await sign_in(client, admin_key)
        published = await client.post(
            "/ui/signals",
            data={"csrf": csrf, "name": name, "params": "table=events, dt=2026-11-26, rows=5"},
        )
        assert published.status_code == 303
        signal_url = published.headers["location"].split("?")[0]
        page = (await client.get(signal_url)).text
        assert "started run" in page and "join incomplete" in page
        assert "/ui/runs/" in page and f"waiting for {name}.other" in page
        signal_id = int(signal_url.rsplit("/", 1)[1])
        listed = (await client.get(f"/ui/signals?name={name}&params=rows=5")).text
        assert f'href="/ui/signals/{signal_id}"' in listed
        none = (await client.get(f"/ui/signals?name={name}&params=rows=6")).text
        assert f'href="/ui/signals/{signal_id}"' not in none
        lineage = (await client.get(f"/ui/lineage?signal={signal_id}")).text
        assert f"/ui/signals/{signal_id}" in lineage and "/ui/runs/" in lineage
        bad = await client.post("/ui/signals", data={"csrf": csrf, "name": "bad name!"})
        assert bad.status_code == 422 and "name" in bad.text


async def test_model_page_shows_versions_metrics_and_promotes(app, api, admin_key, sessions):
    from maestro.db import models as models_db

    workflow_id, name = unique_id("console-model"), unique_id("console-model")
    await push(api, {"id": workflow_id, "steps": [{"id": "train", "type": "noop"}]})
    run_id = (await api.post(f"/api/v1/workflows/{workflow_id}/runs", json={})).json()["run_id"]
    async with sessions.begin() as session:
        for accuracy in (0.81, 0.93):
            await models_db.register_version(
                session,
                model_name=name,
                artifact_uri=f"file:///m/{accuracy}",
                metrics={"accuracy": accuracy},
                params={},
                data_ref=None,
                run_id=run_id,
                step_id=f"train-{accuracy}",
            )
    async with browser(app) as client:
        csrf = await sign_in(client, admin_key)
        assert name in (await client.get("/ui/models")).text
        page = (await client.get(f"/ui/models/{name}")).text
        assert "accuracy" in page and "0.93" in page and "Promote to production" in page
        promoted = await client.post(
            f"/ui/models/{name}/versions/2/promote", data={"csrf": csrf, "stage": "production"}
        )
        assert promoted.status_code == 303
        model = (await api.get(f"/api/v1/models/{name}")).json()
        assert model["stages"] == {"production": 2}
        page = (await client.get(f"/ui/models/{name}")).text
        assert "stage-production" in page and "Stage history" in page


async def test_models_page_lists_nothing_gracefully(app, admin_key):
    async with browser(app) as client:
        await sign_in(client, admin_key)
        page = await client.get("/ui/models")
        assert page.status_code == 200 and "<h1>Models</h1>" in page.text
        assert (await client.get("/ui/models/no-such-model")).status_code == 404
