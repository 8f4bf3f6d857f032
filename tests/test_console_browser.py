"""The web console in a real browser (Debian's chromium driven by Playwright) against the API
and a worker as real processes, a real Temporal dev server and PostgreSQL. Each page's
screenshot goes to test-artifacts/console/."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from maestro.embedded import wait_for_port
from maestro.settings import Settings
from tests.conftest import ROOT, unique_id
from tests.processes import Processes

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts" / "console"
playwright_api = pytest.importorskip("playwright.async_api")


@pytest.fixture(scope="module")
def processes(settings: Settings, tmp_path_factory) -> Iterator[Processes]:
    procs = Processes(settings, tmp_path_factory.mktemp("console-logs"), task_queue="console-e2e")
    procs.start("api")
    procs.start("worker")
    wait_for_port("127.0.0.1", procs.api_port, timeout=60)
    yield procs
    procs.stop_all()


@pytest.fixture(scope="module")
def base_url(processes: Processes) -> str:
    return f"http://127.0.0.1:{processes.api_port}"


@pytest.fixture
async def http(base_url: str, auth_headers) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url, timeout=30, headers=auth_headers) as client:
        yield client


@pytest.fixture(scope="module")
async def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (scripts/test installs it as root)")
    async with playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        await browser.close()


@pytest.fixture
async def page(browser, base_url):
    context = await browser.new_context(base_url=base_url, viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    page.set_default_timeout(30_000)
    yield page
    await context.close()


async def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


async def sign_in(page, key: str, then: str = "/ui/workflows") -> None:
    await page.goto(f"/ui/login?next={then}")
    await page.get_by_label("API key").fill(key)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(f"**{then}*")


async def register(http: httpx.AsyncClient, body: dict) -> None:
    response = await http.post("/api/v1/workflows", json=body)
    assert response.status_code in (200, 201), response.text


async def test_sign_in_open_a_workflow_start_a_run_and_watch_it_turn_green(page, http, admin_key):
    workflow_id = unique_id("ui-green")
    await register(
        http,
        {
            "id": workflow_id,
            "owner": "team-ui",
            "triggers": [{"cron": "0 7 * * 1-5", "timezone": "Europe/Paris"}],
            "steps": [
                {"id": "extract", "type": "sleep", "params": {"seconds": 4}},
                {
                    "id": "train",
                    "type": "sleep",
                    "depends_on": ["extract"],
                    "params": {"seconds": 1},
                },
                {"id": "report", "type": "noop", "depends_on": ["train"]},
            ],
        },
    )
    await page.goto("/ui/workflows")
    await page.wait_for_url("**/ui/login?next=*")
    await shot(page, "login")
    await sign_in(page, admin_key)
    await page.get_by_label("Id contains").fill(workflow_id)
    await page.get_by_role("button", name="Filter").click()
    row = page.locator("#workflows tbody tr", has_text=workflow_id)
    await row.get_by_text("weekdays 07:00 Europe/Paris").wait_for()
    await shot(page, "workflows")
    await row.get_by_role("link", name=workflow_id).click()
    await page.wait_for_url(f"**/ui/workflows/{workflow_id}")
    await shot(page, "workflow")
    await page.get_by_text("Start a run").click()
    await page.get_by_role("button", name="Start run").click()
    await page.wait_for_url("**/ui/runs/*")
    # Mark the document: if the page reloaded, the mark would be gone.
    await page.evaluate("window.__sameDocument = true")
    await page.locator('g.node.status-running[data-node="extract"]').wait_for()
    await page.locator('g.node.status-succeeded[data-node="extract"]').wait_for(timeout=60_000)
    await page.locator('g.node.status-succeeded[data-node="report"]').wait_for(timeout=60_000)
    assert await page.evaluate("window.__sameDocument === true"), "updated live, not reloaded"
    await page.locator("#run-live .run-status", has_text="succeeded").wait_for()
    assert await page.locator("[hx-trigger]").count() == 0  # polling stops once the run ended
    await page.locator('a[data-node="train"]').click()
    await page.locator("#step-detail", has_text="Step train").wait_for()
    assert "Temporal UI" in await page.locator("#step-detail").inner_text()
    await shot(page, "run")


async def test_restart_a_failed_run_from_its_failed_step(page, http, admin_key, tmp_path):
    workflow_id = unique_id("ui-restart")
    flag = tmp_path / "second-time"
    await register(
        http,
        {
            "id": workflow_id,
            "steps": [
                {"id": "prepare", "type": "noop", "params": {"outputs": {"rows": 7}}},
                {
                    "id": "load",
                    "type": "shell",
                    "depends_on": ["prepare"],
                    "retry": {"max_attempts": 1},
                    "params": {
                        "command": f"if [ -e {flag} ]; then echo loaded; else touch {flag}; "
                        "echo first try fails >&2; exit 4; fi"
                    },
                },
            ],
        },
    )
    started = await http.post(f"/api/v1/workflows/{workflow_id}/runs", json={})
    run_id = started.json()["run_id"]
    await sign_in(page, admin_key, then=f"/ui/runs/{run_id}")
    await page.locator('g.node.status-failed[data-node="load"]').wait_for(timeout=60_000)
    await page.locator('a[data-node="load"]').click()
    detail = page.locator("#step-detail")
    await detail.get_by_text("first try fails").first.wait_for()
    await shot(page, "run-failed")
    await page.get_by_label("Restart from").select_option("failed")
    await page.get_by_role("button", name="Restart").click()
    await page.wait_for_url(lambda url: "/ui/runs/" in url and run_id not in url.split("?")[0])
    await page.locator('g.node.status-succeeded[data-node="load"]').wait_for(timeout=60_000)
    prepare = page.locator('#steps tr[data-step="prepare"]')
    assert "succeeded" in await prepare.inner_text()
    new_run = page.url.split("/ui/runs/")[1].split("?")[0]
    body = (await http.get(f"/api/v1/runs/{new_run}")).json()
    assert body["cause"]["detail"] == {**body["cause"]["detail"], "restart_of": run_id}
    steps = {s["step_id"]: s for s in body["steps"]}
    assert steps["prepare"]["error"].startswith("reused from run")  # not run again


async def test_follow_a_signal_to_its_run_and_see_why_another_did_not_fire(page, http, admin_key):
    name = unique_id("ui.table.ready")
    fires, silent = unique_id("ui-events"), unique_id("ui-users")
    for workflow_id, table in ((fires, "events"), (silent, "users")):
        await register(
            http,
            {
                "id": workflow_id,
                "steps": [{"id": "go", "type": "noop"}],
                "triggers": [
                    {
                        "signal": {
                            "all_of": [{"name": name, "where": {"table": table, "rows": {">": 10}}}]
                        }
                    }
                ],
            },
        )
    await sign_in(page, admin_key, then="/ui/signals")
    await page.get_by_text("Publish a signal").click()
    await page.locator("#pub-name").fill(name)
    await page.locator("#pub-params").fill("table=events, rows=42")
    await page.get_by_role("button", name="Publish").click()
    await page.wait_for_url("**/ui/signals/*")
    matches = page.locator("#matches")
    await matches.get_by_text("started run").wait_for()
    explain = page.locator("#explain tr", has_text=silent)
    assert "no (passed by)" in await explain.inner_text()
    assert "table" in (await explain.inner_text()).lower()  # the reason names the param
    await shot(page, "signal")
    signal_url = page.url
    await matches.get_by_role("link", name="open run").click()
    await page.wait_for_url("**/ui/runs/*")
    assert fires in await page.locator("h1").inner_text()
    await page.locator("dt", has_text="Cause").wait_for()
    await page.get_by_role("link", name="signal", exact=False).first.wait_for()
    signal_id = signal_url.rsplit("/", 1)[1].split("?")[0]
    await page.goto("/ui/signals")
    await page.locator(f'a[href="/ui/signals/{signal_id}"]').wait_for()
    await shot(page, "signals")
    await page.goto(f"/ui/lineage?signal={signal_id}&depth=2")
    await page.locator(f'a[href="/ui/signals/{signal_id}"]').first.wait_for()
    await shot(page, "lineage")


async def test_pause_and_resume(page, http, admin_key):
    workflow_id = unique_id("ui-pause")
    await register(
        http,
        {"id": workflow_id, "steps": [{"id": "a", "type": "noop"}], "triggers": [{"every": "1h"}]},
    )
    await sign_in(page, admin_key, then=f"/ui/workflows/{workflow_id}")
    await page.get_by_role("button", name="Pause triggers").click()
    await page.get_by_role("status").get_by_text("paused").wait_for()
    assert (await http.get(f"/api/v1/workflows/{workflow_id}")).json()["paused"] is True
    assert "paused" in await page.locator("h1 .badge").inner_text()
    await page.get_by_role("button", name="Resume triggers").click()
    await page.get_by_role("status").get_by_text("resumed").wait_for()
    assert (await http.get(f"/api/v1/workflows/{workflow_id}")).json()["paused"] is False
    await page.goto("/ui/models")
    await shot(page, "models")


async def test_a_read_key_sees_no_buttons_and_a_forged_post_is_refused(page, http):
    workflow_id = unique_id("ui-read")
    await register(
        http,
        {"id": workflow_id, "steps": [{"id": "a", "type": "noop"}], "triggers": [{"every": "1h"}]},
    )
    run = (await http.post(f"/api/v1/workflows/{workflow_id}/runs", json={})).json()
    created = await http.post("/api/v1/keys", json={"name": "ui-reader", "scopes": ["read"]})
    assert created.status_code == 201, created.text
    await sign_in(page, created.json()["key"], then=f"/ui/workflows/{workflow_id}")
    main = page.locator("main")
    assert await main.locator("form[method=post]").count() == 0
    assert await main.get_by_role("button", name="Pause triggers").count() == 0
    await page.goto(f"/ui/runs/{run['run_id']}")
    await page.locator("#run-live").wait_for()
    assert await main.locator("form[method=post]").count() == 0
    await shot(page, "run-read-only")
    csrf = await page.locator("body").get_attribute("data-csrf")
    forged = await page.request.post(
        f"/ui/workflows/{workflow_id}/pause", form={"csrf": csrf or ""}, max_redirects=0
    )
    assert forged.status == 403
    assert (await http.get(f"/api/v1/workflows/{workflow_id}")).json()["paused"] is False
