"""The console's pages under /ui: server-rendered HTML over the same reads and use cases as the
REST routes (called in-process), with htmx polling a run's live fragment."""

from __future__ import annotations

import difflib
import json
from datetime import UTC, datetime, timedelta
from hmac import compare_digest
from pathlib import Path
from secrets import token_urlsafe
from typing import Any, Literal
from urllib.parse import urlencode
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from fastapi import APIRouter, Form, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from sqlalchemy import select

from api.auth import Principal
from api.console.auth import (
    COOKIE,
    SESSION_LIFETIME,
    Viewer,
    check_csrf,
    current_viewer,
    require,
    set_session_cookie,
)
from api.console.graph import Graph, Node, layout
from api.deps import (
    ActionsDep,
    BusDep,
    EndsDep,
    KeyCacheDep,
    RegistryDep,
    RunsDep,
    SchedulesDep,
    SessionDep,
    SessionsDep,
    SettingsDep,
    WorkflowsDep,
)
from api.routes import models as model_routes
from api.routes import runs as run_routes
from api.routes import signals as signal_routes
from api.routes import workflows as workflow_routes
from api.routes.runs import CURSOR_PATTERN
from api.schemas import BIGINT_MAX, RunOut, StepOut
from maestro import keys
from maestro.composites import subworkflow_request_id
from maestro.db import models as models_db
from maestro.db import runs as runs_db
from maestro.db import signals as signals_db
from maestro.db import workflows as workflows_db
from maestro.db.tables import ModelVersion, Run, Workflow
from maestro.definitions import WorkflowDefinition, problems_from_validation
from maestro.errors import InvalidInput, NotFound, Problem
from maestro.keys import Scope
from maestro.runtime import RunStatus
from maestro.schedules import MAX_BACKFILL, time_triggers
from maestro.signals import SignalIn
from maestro.trigger_words import describe_trigger, describe_triggers

# The sign-in form's token (double-submit: the form field and this cookie must match).
LOGIN_COOKIE = "maestro_console_login"
PAGE = 50
STRIP = 10
TEMPLATES = Jinja2Templates(directory=Path(__file__).parent / "templates")
TEMPLATES.env.filters["tojson_pretty"] = lambda value: json.dumps(
    value, indent=2, sort_keys=True, default=str
)
TEMPLATES.env.filters["when"] = lambda value: (
    value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value else "—"
)
TEMPLATES.env.globals["now"] = lambda: datetime.now(UTC)

# GET pages read with `read`; forms post with `write` (workflows, runs, models) or `publish`.
OBJECTS = require(Scope.write)
SIGNALS = require(Scope.publish, (Scope.read, Scope.signals_read))

router = APIRouter(prefix="/ui", include_in_schema=False)


def render(request: Request, template: str, code: int = 200, **context: Any) -> HTMLResponse:
    viewer: Viewer | None = getattr(request.state, "viewer", None)
    context.update(request=request, viewer=viewer, notice=request.query_params.get("notice"))
    return TEMPLATES.TemplateResponse(request, template, context, status_code=code)


def back(url: str, notice: str | None = None) -> RedirectResponse:
    """After a form: see the page again (303: the browser GETs it)."""
    if notice:
        url += ("&" if "?" in url else "?") + urlencode({"notice": notice})
    return RedirectResponse(url, status_code=303)


def _safe_next(value: str | None) -> str:
    if value and value.startswith("/ui") and not value.startswith("//"):
        return value
    return "/ui/workflows"


# -- sign in -----------------------------------------------------------------------------------


@router.get("", response_class=HTMLResponse)
async def home() -> RedirectResponse:
    return RedirectResponse("/ui/workflows", status_code=303)


def _login_form(request: Request, code: int, next: str | None, error: str | None) -> Response:
    """The sign-in form with a fresh token, also set as a SameSite=Strict cookie: a form
    posted from another site carries no cookie, so it cannot sign a browser in (login CSRF)."""
    token = token_urlsafe(24)
    response = render(request, "login.html", code, next=_safe_next(next), error=error, csrf=token)
    response.set_cookie(
        LOGIN_COOKIE,
        token,
        max_age=3600,
        path="/ui/login",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request, settings: SettingsDep, next: str | None = None):
    if not settings.api.auth:
        return RedirectResponse(_safe_next(next), status_code=303)
    return _login_form(request, 200, next, None)


@router.post("/login", response_class=HTMLResponse)
async def login(
    request: Request,
    sessions: SessionsDep,
    key_cache: KeyCacheDep,
    key: str = Form(..., max_length=500),
    next: str = Form("/ui/workflows", max_length=2000),
    csrf: str = Form("", max_length=100),
):
    expected = request.cookies.get(LOGIN_COOKIE, "")
    if not expected or not compare_digest(csrf.encode(), expected.encode()):
        return _login_form(
            request, 403, next, "the sign-in form did not come from this site: load it again"
        )
    found = await key_cache.lookup(sessions, key.strip()) if key.strip() else None
    if found is None:
        return _login_form(request, 401, next, "unknown or revoked API key")
    async with sessions.begin() as session:
        token = await keys.open_console_session(session, found.id, SESSION_LIFETIME)
    response = RedirectResponse(_safe_next(next), status_code=303)
    set_session_cookie(request, response, token)
    response.delete_cookie(LOGIN_COOKIE, path="/ui/login")
    return response


@router.post("/logout")
async def logout(request: Request, sessions: SessionsDep) -> RedirectResponse:
    """End the session (any key may, whatever its scopes)."""
    viewer = await current_viewer(request)
    if viewer.csrf:
        await check_csrf(request, viewer)
    token = request.cookies.get(COOKIE)
    if token:
        async with sessions.begin() as session:
            await keys.close_console_session(session, token)
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(COOKIE, path="/ui")
    return response


# -- workflows ---------------------------------------------------------------------------------

STATES = ("active", "paused", "blocked", "inactive")


@router.get("/workflows", response_class=HTMLResponse)
async def workflows_page(
    request: Request,
    session: SessionDep,
    runs: RunsDep,
    viewer: Viewer = OBJECTS,
    owner: str | None = Query(None, max_length=200),
    branch: str | None = Query(None, max_length=200),
    state: str | None = Query(None, max_length=20),
    q: str | None = Query(None, max_length=128),
    page: int = Query(1, ge=1, le=1_000_000),
):
    state = state if state in STATES else None
    owners = viewer.principal.owners or None
    rows, total = await workflows_db.search_workflows(
        session,
        limit=PAGE,
        offset=(page - 1) * PAGE,
        owners=owners,
        owner=owner or None,
        branch=branch or None,
        state=state,
        id_contains=q or None,
    )
    stored = await workflows_db.active_definitions(session, rows)
    recent = await runs_db.recent_runs(session, [w.id for w in rows], STRIP)
    owner_query = select(Workflow.owner).distinct().order_by(Workflow.owner).limit(500)
    if owners:
        owner_query = owner_query.where(Workflow.owner.in_(owners))
    known_owners = list((await session.execute(owner_query)).scalars())
    now = datetime.now(UTC)
    items = []
    for workflow in rows:
        definition = None
        if workflow.active_version is not None and workflow.id in stored:
            definition = runs.definitions.add(
                workflow.id, workflow.active_version, stored[workflow.id]
            )
        items.append(
            {
                "workflow": workflow,
                "branch": workflow.branch,
                "state": _state(workflow),
                "triggers": describe_triggers(definition.triggers) if definition else "—",
                "next_fire": _next_fire(workflow, definition, now),
                "recent": recent.get(workflow.id, []),
            }
        )
    filters = {"owner": owner or "", "branch": branch or "", "state": state or "", "q": q or ""}
    return render(
        request,
        "workflows.html",
        items=items,
        total=total,
        page=page,
        pages=max(1, -(-total // PAGE)),
        filters=filters,
        known_owners=known_owners,
        states=STATES,
        query=lambda **change: urlencode({k: v for k, v in {**filters, **change}.items() if v}),
    )


def _state(workflow: Workflow) -> str:
    if not workflow.is_active:
        return "inactive"
    if workflow.blocked_by_run_id:
        return "blocked"
    return "paused" if workflow.paused else "active"


def _next_fire(
    workflow: Workflow, definition: WorkflowDefinition | None, now: datetime
) -> datetime | None:
    if definition is None or workflow.paused or not workflow.is_active:
        return None
    fires = [
        at
        for ref in time_triggers(workflow.id, definition)
        for at in ref.fire_times(now, now + timedelta(days=3660), 1)
    ]
    return min(fires, default=None)


@router.get("/workflows/{workflow_id}", response_class=HTMLResponse)
async def workflow_page(
    workflow_id: str,
    request: Request,
    session: SessionDep,
    runs: RunsDep,
    schedules: SchedulesDep,
    settings: SettingsDep,
    viewer: Viewer = OBJECTS,
    cursor: str | None = Query(None, pattern=CURSOR_PATTERN),
    versions_page: int = Query(1, ge=1, le=1_000_000),
):
    workflow = await workflows_db.get_workflow(session, workflow_id)
    out = workflow_routes.workflow_out(workflow)
    definition = None
    if workflow.active_version is not None:
        definition = await runs.definitions.get(session, workflow_id, workflow.active_version)
    versions = list(await workflows_db.list_versions(session, workflow_id))
    versions.reverse()
    version_slice = versions[(versions_page - 1) * PAGE : versions_page * PAGE]
    triggers = await workflow_routes.list_triggers(workflow_id, session, runs, schedules, 5)
    trigger_words = (
        {t.position: describe_trigger(definition.triggers[t.position]) for t in triggers}
        if definition
        else {}
    )
    history = await run_routes.list_runs(
        request, session, settings, workflow_id=workflow_id, limit=20, cursor=cursor
    )
    graph = _dag(definition.model_dump(mode="json")["steps"], None) if definition else None
    numbers = [v.version for v in versions]
    return render(
        request,
        "workflow.html",
        workflow=out,
        state=_state(workflow),
        branch=workflow.branch,
        definition=definition,
        versions=version_slice,
        version_numbers=numbers,
        versions_page=versions_page,
        version_pages=max(1, -(-len(versions) // PAGE)),
        triggers=triggers,
        trigger_words=trigger_words,
        has_time_triggers=bool(definition and time_triggers(workflow_id, definition)),
        history=history,
        cursor=cursor,
        graph=graph,
    )


@router.get("/workflows/{workflow_id}/diff", response_class=HTMLResponse)
async def version_diff(
    workflow_id: str,
    request: Request,
    session: SessionDep,
    viewer: Viewer = OBJECTS,
    a: int = Query(..., ge=1, le=2**31 - 1),
    b: int = Query(..., ge=1, le=2**31 - 1),
):
    old = await workflows_db.get_version(session, workflow_id, a)
    new = await workflows_db.get_version(session, workflow_id, b)
    lines = list(
        difflib.unified_diff(
            _yaml(old.definition).splitlines(),
            _yaml(new.definition).splitlines(),
            f"version {a}",
            f"version {b}",
            lineterm="",
            n=3,
        )
    )
    template = "diff.html" if request.headers.get("hx-request") else "diff_page.html"
    return render(request, template, workflow_id=workflow_id, a=a, b=b, lines=lines)


def _yaml(definition: dict) -> str:
    return yaml.safe_dump(definition, sort_keys=False, allow_unicode=True, width=100)


@router.post("/workflows/{workflow_id}/versions/{version}/activate")
async def activate(
    workflow_id: str, version: str, workflows: WorkflowsDep, viewer: Viewer = OBJECTS
) -> RedirectResponse:
    await workflows.activate(workflow_id, version)
    return back(f"/ui/workflows/{workflow_id}", f"version {version} is active")


@router.post("/workflows/{workflow_id}/unblock")
async def unblock(
    workflow_id: str, actions: ActionsDep, viewer: Viewer = OBJECTS
) -> RedirectResponse:
    admitted = await actions.unblock(workflow_id)
    return back(f"/ui/workflows/{workflow_id}", f"unblocked; {len(admitted)} runs admitted")


@router.post("/workflows/{workflow_id}/runs")
async def start_run(
    workflow_id: str,
    runs: RunsDep,
    viewer: Viewer = OBJECTS,
    params: str = Form("{}", max_length=100_000),
) -> RedirectResponse:
    values = _json_object(params or "{}", "params")
    run, _ = await runs.start_run(workflow_id, values)
    return back(f"/ui/runs/{run.run_id}")


def _json_object(text: str, field: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidInput(
            f"{field} is not JSON", [Problem(("form", field), f"not JSON: {exc}", "json_invalid")]
        ) from None
    if not isinstance(value, dict):
        raise InvalidInput(
            f"{field} is not a JSON object",
            [Problem(("form", field), "give a JSON object, e.g. {}", "object_expected")],
        )
    return value


def _zoned(value: str, zone: str, field: str) -> datetime:
    try:
        tz = ZoneInfo(zone or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(
            "unknown time zone", [Problem(("form", "timezone"), f"unknown zone {zone!r}")]
        ) from None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(
            f"{field} is not a date and time",
            [Problem(("form", field), f"{value!r} is not a date and time, e.g. 2026-11-26T07:00")],
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=tz)


@router.get("/workflows/{workflow_id}/backfill/preview", response_class=HTMLResponse)
async def backfill_preview(
    workflow_id: str,
    request: Request,
    session: SessionDep,
    runs: RunsDep,
    viewer: Viewer = OBJECTS,
    start: str = Query(..., max_length=64),
    end: str = Query(..., max_length=64),
    timezone: str = Query("UTC", max_length=64),
):
    """The scheduled times a backfill of (start, end] would run, as the API computes them."""
    workflow = await workflows_db.get_workflow(session, workflow_id)
    begin, finish = _zoned(start, timezone, "start"), _zoned(end, timezone, "end")
    times: list[tuple[datetime, str]] = []
    if workflow.active_version is not None and finish > begin:
        definition = await runs.definitions.get(session, workflow_id, workflow.active_version)
        for ref in time_triggers(workflow_id, definition):
            words = describe_trigger(ref.trigger)
            times += [(at, words) for at in ref.fire_times(begin, finish, MAX_BACKFILL + 1)]
    times.sort()
    return render(
        request,
        "backfill_preview.html",
        times=times[:PAGE],
        total=len(times),
        too_many=len(times) > MAX_BACKFILL,
        limit=MAX_BACKFILL,
        start=begin,
        end=finish,
    )


@router.post("/workflows/{workflow_id}/backfill")
async def backfill(
    workflow_id: str,
    schedules: SchedulesDep,
    viewer: Viewer = OBJECTS,
    start: str = Form(..., max_length=64),
    end: str = Form(..., max_length=64),
    timezone: str = Form("UTC", max_length=64),
) -> RedirectResponse:
    created, total = await schedules.backfill(
        workflow_id, _zoned(start, timezone, "start"), _zoned(end, timezone, "end")
    )
    return back(
        f"/ui/workflows/{workflow_id}",
        f"backfill: {len(created)} runs created for {total} scheduled times",
    )


# -- runs --------------------------------------------------------------------------------------


def _dag(steps: list[dict], states: dict[str, StepOut] | None, href: str | None = None) -> Graph:
    nodes = []
    for step in steps:
        state = states.get(step["id"]) if states else None
        status = state.status.value if state else ""
        detail = step["type"] + (f" · {status.replace('_', ' ')}" if status else "")
        if state and state.progress:
            done = sum(v for k, v in state.progress.items() if k not in ("pending", "running"))
            detail += f" · {done}/{sum(state.progress.values())}"
        nodes.append(
            Node(
                id=step["id"],
                label=step["id"],
                detail=detail,
                href=f"{href}?step={step['id']}#step-detail" if href else None,
                css=f"status-{status or 'none'}",
                title=f"{step['id']} ({step['type']}){': ' + status if status else ''}",
            )
        )
    edges = [(dep, step["id"]) for step in steps for dep in step.get("depends_on", [])]
    return layout(nodes, edges)


async def _run_view(run_id: str, session, settings, runs, selected: str | None) -> dict[str, Any]:
    out: RunOut = await run_routes.get_run(run_id, session, settings)
    definition = await runs.definitions.get(session, out.workflow_id, out.version)
    steps_json = definition.model_dump(mode="json")["steps"]
    states = {s.step_id: s for s in out.steps or []}
    children: dict[str, Run] = {}
    for step in steps_json:
        if step["type"] == "subworkflow":
            child = await runs_db.find_by_request_id(
                session,
                step["params"]["workflow"],
                subworkflow_request_id(run_id, step["id"]),
            )
            if child is not None:
                children[step["id"]] = child
    step = states.get(selected) if selected else None
    return {
        "run": out,
        "live": not out.status.is_terminal,
        "graph": _dag(steps_json, states, href=f"/ui/runs/{run_id}"),
        "steps": out.steps or [],
        "children": children,
        "selected": step,
        "selected_spec": next((s for s in steps_json if step and s["id"] == step.step_id), None),
        "restart_points": [s["id"] for s in steps_json],
    }


@router.get("/runs/{run_id}", response_class=HTMLResponse)
@router.get("/runs/{run_id}/live", response_class=HTMLResponse)
async def run_page(
    run_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    runs: RunsDep,
    viewer: Viewer = OBJECTS,
    step: str | None = Query(None, max_length=64),
):
    """The run; `/live` is its live part alone (DAG, steps, the selected step), which the page
    polls every 2 s while the run is queued or running."""
    view = await _run_view(run_id, session, settings, runs, step)
    live_part = request.url.path.endswith("/live")
    return render(request, "run_live.html" if live_part else "run.html", **view)


@router.get("/runs/{run_id}/steps/{step}/iterations", response_class=HTMLResponse)
async def iterations_page(
    run_id: str,
    step: str,
    request: Request,
    session: SessionDep,
    runs: RunsDep,
    viewer: Viewer = OBJECTS,
    status: str | None = Query(None, max_length=20),
    cursor: str | None = Query(None, pattern=r"^[0-9]{1,9}$"),
):
    statuses = ("pending", "running", "succeeded", "failed", "skipped", "stopped")
    status = status if status in statuses else None
    run = await runs_db.get_run(session, run_id)
    try:
        found = await run_routes.list_iterations(
            run_id,
            step,
            session,
            status=status,  # type: ignore[arg-type]
            limit=PAGE,
            cursor=cursor,
        )
        items, next_cursor = found.items, found.next_cursor
    except NotFound:
        items, next_cursor = [], None
    definition = await runs.definitions.get(session, run.workflow_id, run.version)
    body = _body_steps(definition.model_dump(mode="json")["steps"], step)
    composite = {s["id"] for s in body if s["type"] in ("foreach", "while")}
    return render(
        request,
        "iterations.html",
        run=run,
        live=not RunStatus(run.status).is_terminal,
        step=step,
        items=items,
        next_cursor=next_cursor,
        cursor=cursor,
        status=status or "",
        statuses=statuses,
        composite=composite,
    )


def _body_steps(steps: list[dict], path: str) -> list[dict]:
    """The body steps of the composite step at `path` (`outer[3].inner`: ids, indexes aside)."""
    body = steps
    for part in path.split("."):
        step_id = part.split("[", 1)[0]
        found = next((s for s in body if s["id"] == step_id), None)
        if found is None:
            return []
        body = found.get("params", {}).get("steps", [])
    return body


@router.post("/runs/{run_id}/restart")
async def restart_run(
    run_id: str,
    actions: ActionsDep,
    viewer: Viewer = OBJECTS,
    from_: str = Form("failed", alias="from", max_length=64),
) -> RedirectResponse:
    run = await actions.restart_run(run_id, from_)
    return back(f"/ui/runs/{run.run_id}", f"restart of run {run_id} from {from_}")


@router.post("/runs/{run_id}/steps/{step}/iterations/{index}/skip")
async def skip_iteration(
    run_id: str,
    step: str,
    index: int,
    actions: ActionsDep,
    viewer: Viewer = OBJECTS,
) -> RedirectResponse:
    await actions.skip_iteration(run_id, step, index)
    return back(f"/ui/runs/{run_id}/steps/{step}/iterations", f"iteration {index} skipped")


# -- signals -----------------------------------------------------------------------------------


@router.get("/signals", response_class=HTMLResponse)
async def signals_page(
    request: Request,
    session: SessionDep,
    viewer: Viewer = SIGNALS,
    name: str | None = Query(None, max_length=200),
    since: str | None = Query(None, max_length=64),
    params: str | None = Query(None, max_length=2000),
    cursor: int | None = Query(None, ge=1, le=BIGINT_MAX),
):
    since_at = _zoned(since, "UTC", "since") if since else None
    wanted = _param_pairs(params or "")
    rows = await signals_db.list_signals(
        session,
        name=name or None,
        since=since_at,
        params=wanted,
        limit=PAGE,
        before_id=cursor,
        producer_owners=viewer.principal.signal_owners(),
    )
    next_cursor = rows[-1].id if len(rows) == PAGE else None
    filters = {"name": name or "", "since": since or "", "params": params or ""}
    return render(
        request,
        "signals.html",
        signals=rows,
        next_cursor=next_cursor,
        cursor=cursor,
        filters=filters,
        query=lambda **change: urlencode({k: v for k, v in {**filters, **change}.items() if v}),
    )


def _param_pairs(text: str) -> dict[str, Any]:
    """`dt=2026-11-26, table=events` as a params filter (values compared as the API does)."""
    pairs: dict[str, Any] = {}
    for part in text.replace("\n", ",").split(","):
        key, sep, value = part.partition("=")
        if not part.strip():
            continue
        if not sep or not key.strip():
            raise InvalidInput(
                "params filter",
                [Problem(("query", "params"), f"{part.strip()!r} is not key=value")],
            )
        pairs[key.strip()] = value.strip()
    return pairs


@router.post("/signals")
async def publish_signal(
    request: Request,
    bus: BusDep,
    settings: SettingsDep,
    viewer: Viewer = SIGNALS,
    name: str = Form(..., max_length=200),
    params: str = Form("", max_length=100_000),
    payload: str = Form("", max_length=500_000),
) -> RedirectResponse:
    values: dict[str, Any] = {}
    if params.strip().startswith("{"):
        values = _json_object(params, "params")
    else:
        for key, value in _param_pairs(params).items():
            values[key] = _scalar(value)
    try:
        body = SignalIn(
            name=name.strip(),
            params=values,
            payload=_json_object(payload, "payload") if payload.strip() else None,
        )
    except ValidationError as exc:
        raise InvalidInput("invalid signal", problems_from_validation(exc, ("form",))) from None
    published = await signal_routes.publish_signal(
        body, Response(), bus, settings, viewer.principal
    )
    started = len(published.runs)
    note = "duplicate: already published" if published.duplicate else f"{started} runs started"
    return back(f"/ui/signals/{published.signal.id}", note)


def _scalar(value: str) -> Any:
    """A number when the text is one, else the text."""
    try:
        number = json.loads(value)
    except ValueError:
        return value
    return number if isinstance(number, int | float) and not isinstance(number, bool) else value


@router.get("/signals/{signal_id}", response_class=HTMLResponse)
async def signal_page(
    signal_id: int,
    request: Request,
    session: SessionDep,
    bus: BusDep,
    viewer: Viewer = SIGNALS,
):
    if not 1 <= signal_id <= BIGINT_MAX:
        raise NotFound(f"signal {signal_id} not found")
    detail = await signal_routes.get_signal(signal_id, request, session, bus, explain=True)
    return render(request, "signal.html", signal=detail)


# -- lineage -----------------------------------------------------------------------------------


@router.get("/lineage", response_class=HTMLResponse)
async def lineage_page(
    request: Request,
    session: SessionDep,
    viewer: Viewer = OBJECTS,
    run: str | None = Query(None, max_length=64),
    signal: int | None = Query(None, ge=1, le=BIGINT_MAX),
    depth: int = Query(2, ge=1, le=10),
):
    """Signals, runs and model versions around a run or a signal, `depth` hops each way."""
    roots: list[str] = []
    root_label = ""
    if signal is not None:
        found = await signals_db.get_signal(session, signal)
        viewer.principal.check_signal(found.id, found.producer_owners)
        root_label = f"signal {found.name} #{found.id}"
        if found.producer_run_id:
            roots.append(found.producer_run_id)
        roots += await signals_db.runs_started_by_signal(session, signal)
    elif run:
        await _check_run_owner(session, viewer.principal, run)
        roots.append(run)
        root_label = f"run {run}"
    nodes: dict[str, dict] = {}
    edges: set[tuple[str, str]] = set()
    if signal is not None and not roots:
        nodes[f"signal:{signal}"] = {"kind": "signal", "data": {"id": signal, "name": root_label}}
    for run_id in roots[:PAGE]:
        try:
            await _check_run_owner(session, viewer.principal, run_id)
        except NotFound:
            continue
        found_lineage = await run_routes.run_lineage(run_id, request, session, depth)
        for node in found_lineage.nodes:
            nodes.setdefault(node.id, {"kind": node.kind, "data": node.data})
        edges |= {(e.source, e.target) for e in found_lineage.edges}
    run_ids = [n["data"]["run_id"] for n in nodes.values() if n["kind"] == "run"]
    if run_ids:
        query = select(ModelVersion).where(ModelVersion.run_id.in_(run_ids))
        for version in (await session.execute(query)).scalars():
            key = f"model:{version.model_name}:{version.version}"
            nodes[key] = {
                "kind": "model",
                "data": {
                    "model_name": version.model_name,
                    "version": version.version,
                    "stage": version.stage,
                },
            }
            edges.add((f"run:{version.run_id}", key))
    if len(nodes) > 500:
        raise InvalidInput(
            "lineage too large",
            [
                Problem(
                    ("query", "depth"), f"{len(nodes)} nodes at depth {depth}; use a smaller one"
                )
            ],
        )
    graph = layout([_lineage_node(key, value) for key, value in nodes.items()], sorted(edges))
    root = f"signal:{signal}" if signal is not None else f"run:{run}" if run else None
    return render(
        request,
        "lineage.html",
        graph=graph if nodes else None,
        root=root,
        root_label=root_label,
        run=run or "",
        signal=signal or "",
        depth=depth,
    )


async def _check_run_owner(session, principal: Principal, run_id: str) -> None:
    if principal.owners:
        found = await runs_db.get_run(session, run_id)
        workflow = await workflows_db.get_workflow(session, found.workflow_id)
        principal.check_owner(workflow.owner)


def _lineage_node(key: str, node: dict) -> Node:
    data = node["data"]
    if node["kind"] == "run":
        return Node(
            id=key,
            label=f"{data['workflow_id']} #{data['run_number']}",
            detail=f"run · {data['status']}",
            href=f"/ui/runs/{data['run_id']}",
            css=f"kind-run status-{data['status']}",
            title=f"run {data['run_id']} of {data['workflow_id']}: {data['status']}",
        )
    if node["kind"] == "model":
        return Node(
            id=key,
            label=f"{data['model_name']} v{data['version']}",
            detail=f"model · {data['stage']}",
            href=f"/ui/models/{data['model_name']}",
            css="kind-model",
            title=f"model {data['model_name']} version {data['version']} ({data['stage']})",
        )
    params = ", ".join(f"{k}={v}" for k, v in (data.get("params") or {}).items())
    return Node(
        id=key,
        label=str(data.get("name", key)),
        detail=f"signal #{data['id']}" + (f" · {params}" if params else ""),
        href=f"/ui/signals/{data['id']}",
        css="kind-signal",
        title=f"signal {data.get('name')} #{data['id']} {params}",
    )


# -- models ------------------------------------------------------------------------------------


@router.get("/models", response_class=HTMLResponse)
async def models_page(request: Request, session: SessionDep, viewer: Viewer = OBJECTS):
    models = await models_db.list_models(session, owners=viewer.principal.owners or None)
    held = await models_db.stage_holders(session, [m.name for m in models])
    return render(
        request, "models.html", models=[model_routes.model_out(m, held[m.name]) for m in models]
    )


@router.get("/models/{model_name}", response_class=HTMLResponse)
async def model_page(
    model_name: str,
    request: Request,
    session: SessionDep,
    viewer: Viewer = OBJECTS,
    page: int = Query(1, ge=1, le=1_000_000),
):
    model = await model_routes.get_model(model_name, session)
    versions = list(reversed(model.versions or []))
    shown = versions[(page - 1) * PAGE : page * PAGE]
    history = list(reversed(model.history or []))[:PAGE]
    metric_names = sorted({k for v in shown for k in v.metrics})
    return render(
        request,
        "model.html",
        model=model,
        versions=shown,
        history=history,
        page=page,
        pages=max(1, -(-len(versions) // PAGE)),
        metric_names=metric_names,
    )


@router.post("/models/{model_name}/versions/{version}/promote")
async def promote(
    model_name: str,
    version: int,
    registry: RegistryDep,
    viewer: Viewer = OBJECTS,
    stage: str = Form(..., max_length=20),
) -> RedirectResponse:
    if stage not in ("staging", "production"):
        raise InvalidInput(
            "invalid stage", [Problem(("form", "stage"), "stage is staging or production")]
        )
    await registry.promote(model_name, version, stage)
    return back(f"/ui/models/{model_name}", f"version {version} promoted to {stage}")


# -- actions named by a path segment: after every route they could shadow ----------------------


_TRIGGER_SWITCHES = {"pause": "paused: triggers are held", "resume": "resumed: triggers fire"}


@router.post("/workflows/{workflow_id}/{switch}")
async def switch_triggers(
    workflow_id: str,
    switch: Literal["pause", "resume"],
    workflows: WorkflowsDep,
    viewer: Viewer = OBJECTS,
) -> RedirectResponse:
    """Pause or resume every trigger of the workflow."""
    await (workflows.pause if switch == "pause" else workflows.resume)(workflow_id)
    return back(f"/ui/workflows/{workflow_id}", _TRIGGER_SWITCHES[switch])


@router.post("/runs/{run_id}/{end}")
async def end_run(
    run_id: str, end: Literal["stop", "kill"], ends: EndsDep, viewer: Viewer = OBJECTS
) -> RedirectResponse:
    """Stop (gracefully) or kill (at once) a queued or running run."""
    await (ends.stop_run if end == "stop" else ends.kill_run)(run_id)
    return back(f"/ui/runs/{run_id}", "stop requested" if end == "stop" else "killed")


@router.post("/runs/{run_id}/steps/{step_id}/{action}")
async def step_action(
    run_id: str,
    step_id: str,
    action: Literal["skip", "bypass"],
    actions: ActionsDep,
    viewer: Viewer = OBJECTS,
) -> RedirectResponse:
    """Skip a step that has not finished, or release one that waits for a signal."""
    await (actions.skip_step if action == "skip" else actions.bypass_wait)(run_id, step_id)
    done = "skipped" if action == "skip" else "released"
    return back(f"/ui/runs/{run_id}?step={step_id}", f"step {step_id} {done}")
