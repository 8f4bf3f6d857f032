"""`maestro workflow|run|signal`: client commands that talk to a Maestro API over HTTP.

Exit codes: 1 the API answered with an error, 2 the command line is wrong, 3 the API cannot be
reached, 4 a run awaited with `--wait` did not succeed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from maestro.client import (
    LIVE_RUN_STATUSES,
    MaestroAPIError,
    MaestroClient,
    MaestroClientError,
    MaestroUnreachable,
)
from maestro.settings import Settings

DEFAULT_API_URL = "http://127.0.0.1:8000"
POLL_SECONDS = 0.5
EXIT_API_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_RUN_NOT_SUCCEEDED = 4

workflow_app = typer.Typer(help="Register and manage workflows.", no_args_is_help=True)
run_app = typer.Typer(help="Start, watch, stop and restart runs.", no_args_is_help=True)
signal_app = typer.Typer(help="Publish and inspect signals.", no_args_is_help=True)
keys_app = typer.Typer(help="Manage API keys (needs an admin key).", no_args_is_help=True)

# Markup off: names, params and error texts come from users and must print as they are.
out = Console(markup=False, highlight=False)

STATUS_STYLES = {
    "succeeded": "green",
    "failed": "red",
    "timed_out": "red",
    "completed_with_error": "yellow",
    "running": "cyan",
    "waiting_for_signal": "cyan",
    "queued": "blue",
    "stopped": "magenta",
    "skipped": "dim",
    "pending": "dim",
}


@dataclass(frozen=True)
class Target:
    """Which API the client commands talk to, and with which key."""

    api_url: str
    api_key: str | None


def api_key_file() -> Path:
    """Where `maestro up` keeps the local API key."""
    return Settings().data_dir / "api-key"


def _key_from_file() -> str | None:
    try:
        return api_key_file().read_text().strip() or None
    except OSError:  # absent or unreadable: go without; a 401 then names the file
        return None


def _target(
    ctx: typer.Context,
    api_url: Annotated[
        str, typer.Option("--api-url", envvar="MAESTRO_API_URL", help="The Maestro API.")
    ] = DEFAULT_API_URL,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="MAESTRO_API_KEY",
            show_default=False,
            help="Sent as a bearer token; default: the key in <MAESTRO_DATA_DIR>/api-key, if any.",
        ),
    ] = None,
) -> None:
    ctx.obj = Target(api_url, api_key or _key_from_file())


for _app in (workflow_app, run_app, signal_app, keys_app):
    _app.callback()(_target)


def _fail(message: str, code: int) -> NoReturn:
    typer.echo(f"error: {' '.join(message.split())}", err=True)
    raise typer.Exit(code)


def _usage(message: str) -> NoReturn:
    _fail(message, EXIT_USAGE)


@contextmanager
def _client(ctx: typer.Context) -> Iterator[MaestroClient]:
    """A client for the chosen API; its errors become one line on stderr and an exit code."""
    target = ctx.find_object(Target)
    assert target is not None, "the sub-app callback sets the target"
    try:
        with MaestroClient(target.api_url, target.api_key) as client:
            yield client
    except MaestroAPIError as exc:
        hint = ""
        if exc.status == 401:
            hint = (
                f". Pass --api-key or set MAESTRO_API_KEY (`maestro up` keeps an admin key in "
                f"{api_key_file()})"
            )
        _fail(f"{exc}{hint}", EXIT_API_ERROR)
    except MaestroUnreachable as exc:
        _fail(
            f"{exc}. Is Maestro running? Start it with `maestro up`, or point --api-url "
            "(MAESTRO_API_URL) at it.",
            EXIT_UNREACHABLE,
        )
    except MaestroClientError as exc:
        _fail(str(exc), EXIT_API_ERROR)


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def parse_assignments(items: list[str], *, json_values: bool = True) -> dict[str, Any]:
    """`key=value` pairs; a value is JSON when it parses as JSON (and `json_values`), else the
    string itself."""
    params: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            _usage(f"expected KEY=VALUE, got {item!r}")
        if key in params:
            _usage(f"{key!r} is given twice")
        if not json_values:
            params[key] = raw
            continue
        try:
            # NaN and Infinity are not JSON; keep them as strings.
            params[key] = json.loads(raw, parse_constant=_reject_constant)
        except ValueError:
            params[key] = raw
    return params


def _definition_file(path: Path) -> tuple[bytes, str]:
    content_type = {
        ".yaml": "application/yaml",
        ".yml": "application/yaml",
        ".json": "application/json",
    }.get(path.suffix.lower())
    if content_type is None:
        _usage(f"{path}: expected a .yaml, .yml or .json file")
    return path.read_bytes(), content_type


# Rendering


def _compact(value: Any, limit: int = 120) -> str:
    text = json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _time(value: str | None) -> str:
    if not value:
        return "-"
    return datetime.fromisoformat(value).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _duration(start: str | None, end: str | None) -> str:
    if not start:
        return "-"
    stop = datetime.fromisoformat(end) if end else datetime.now().astimezone()
    seconds = max(0.0, (stop - datetime.fromisoformat(start)).total_seconds())
    if seconds < 60:
        text = f"{seconds:.1f}s"
    elif seconds < 3600:
        text = f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    else:
        text = f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
    return text if end else text + "…"


def _status(status: str) -> Text:
    return Text(status, style=STATUS_STYLES.get(status, ""))


def _fields(rows: list[tuple[str, Any]]) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    for key, value in rows:
        grid.add_row(key, value if isinstance(value, Text) else Text(str(value)))
    return grid


def _table(*columns: str) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def _producer(producer: dict[str, Any]) -> str:
    rest = " ".join(f"{k}={v}" for k, v in producer.items() if k != "kind")
    return f"{producer.get('kind', '-')} {rest}".strip()


def _workflow_state(workflow: dict[str, Any]) -> str:
    state = (
        "inactive" if not workflow["is_active"] else "paused" if workflow["paused"] else "active"
    )
    if workflow.get("blocked_by_run_id"):
        state += f", blocked by run {workflow['blocked_by_run_id']}"
    return state


def _run_line(run: dict[str, Any]) -> Text:
    return Text.assemble(
        f"run {run['run_id']}: {run['workflow_id']} #{run['run_number']} "
        f"(version {run['version']}) ",
        _status(run["status"]),
    )


def _print_link(run: dict[str, Any]) -> None:
    url = run["temporal_ui_url"]
    out.print(Text.assemble("Temporal UI: ", (url, f"link {url}")), soft_wrap=True)


def _print_run_summary(run: dict[str, Any]) -> None:
    out.print(_run_line(run), soft_wrap=True)
    _print_link(run)


def _run_view(run: dict[str, Any]) -> RenderableType:
    cause = run["cause"]
    cause_text = cause.get("kind", "-")
    if run.get("request_id"):
        cause_text += f" (request_id {run['request_id']})"
    rows: list[tuple[str, Any]] = [
        ("run", run["run_id"]),
        ("workflow", f"{run['workflow_id']} #{run['run_number']} (version {run['version']})"),
        ("status", _status(run["status"])),
        ("params", _compact(run["params"], 1000)),
        ("cause", cause_text),
        ("created", _time(run["created_at"])),
        ("started", _time(run["started_at"])),
        ("ended", _time(run["ended_at"])),
        ("duration", _duration(run["started_at"], run["ended_at"])),
    ]
    if run.get("error"):
        rows.append(("error", Text(run["error"], style="red")))
    if run.get("outputs"):
        rows.append(("outputs", _compact(run["outputs"], 1000)))
    parts: list[RenderableType] = [_fields(rows)]
    if run.get("steps"):
        steps = _table("STEP", "TYPE", "STATUS", "ATTEMPT", "STARTED", "DURATION", "DETAIL")
        for step in run["steps"]:
            detail = (
                Text(step["error"], style="red")
                if step.get("error")
                else Text(_compact(step["outputs"]) if step.get("outputs") else "")
            )
            steps.add_row(
                step["step_id"],
                step["type"],
                _status(step["status"]),
                str(step["attempt"]),
                _time(step["started_at"]),
                _duration(step["started_at"], step["ended_at"]),
                detail,
            )
        parts += [Text(""), steps]
    return Group(*parts)


def _follow(client: MaestroClient, run: dict[str, Any]) -> dict[str, Any]:
    """Show the run until it is over, refreshed in place on a terminal (elsewhere, such as a
    pipe or a CI log, only its final state); returns it as it ended."""
    try:
        if not out.is_terminal:
            run = client.wait_for_run(run["run_id"], poll_interval=POLL_SECONDS)
            out.print(_run_view(run))
            return run
        with Live(_run_view(run), console=out, auto_refresh=False) as live:
            while run["status"] in LIVE_RUN_STATUSES:
                time.sleep(POLL_SECONDS)
                run = client.get_run(run["run_id"])
                live.update(_run_view(run), refresh=True)
        return run
    except KeyboardInterrupt:
        out.print("stopped following; the run goes on")
        _print_link(run)
        raise typer.Exit(130) from None


# maestro workflow ...

DefinitionFile = Annotated[
    Path,
    typer.Argument(
        exists=True, dir_okay=False, readable=True, help="A definition (.yaml, .yml or .json)."
    ),
]


@workflow_app.command("apply")
def workflow_apply(ctx: typer.Context, file: DefinitionFile) -> None:
    """Register a definition: a changed one becomes the next, active version."""
    body, content_type = _definition_file(file)
    with _client(ctx) as client:
        result = client.push_workflow(body, content_type=content_type)
    workflow = result["workflow"]
    if result["created"]:
        out.print(f"{workflow['id']}: created version {result['version']} (active)")
        return
    note = ""
    if workflow["active_version"] != result["version"] or not workflow["is_active"]:
        note = f"; the {_workflow_state(workflow)} version is {workflow['active_version']}"
    out.print(f"{workflow['id']}: unchanged (version {result['version']}{note})")


@workflow_app.command("validate")
def workflow_validate(ctx: typer.Context, file: DefinitionFile) -> None:
    """Check a definition without registering it."""
    body, content_type = _definition_file(file)
    with _client(ctx) as client:
        definition = client.validate_workflow(body, content_type=content_type)["definition"]
    out.print(
        f"{file}: valid ({definition['id']}: {len(definition['steps'])} steps, "
        f"{len(definition.get('triggers') or [])} triggers)"
    )


@workflow_app.command("list")
def workflow_list(ctx: typer.Context) -> None:
    """List workflows."""
    with _client(ctx) as client:
        workflows = list(client.iter_workflows())
    if not workflows:
        out.print("no workflows")
        return
    table = _table("ID", "OWNER", "STATE", "ACTIVE", "LATEST", "RUNS", "UPDATED")
    for w in workflows:
        table.add_row(
            w["id"],
            w["owner"] or "-",
            _workflow_state(w),
            str(w["active_version"] or "-"),
            str(w["latest_version"]),
            str(w["run_count"]),
            _time(w["updated_at"]),
        )
    out.print(table)


@workflow_app.command("show")
def workflow_show(ctx: typer.Context, workflow_id: str) -> None:
    """A workflow: its state, versions and triggers."""
    with _client(ctx) as client:
        workflow = client.get_workflow(workflow_id)
        versions = client.list_versions(workflow_id)
        triggers = client.list_triggers(workflow_id)
    definition = workflow.get("definition") or {}
    rows: list[tuple[str, Any]] = [
        ("workflow", workflow["id"]),
        ("name", definition.get("name") or "-"),
        ("owner", workflow["owner"] or "-"),
        ("state", _workflow_state(workflow)),
        ("active version", workflow["active_version"] or "-"),
        ("latest version", workflow["latest_version"]),
        ("runs", workflow["run_count"]),
        ("steps", ", ".join(s["id"] for s in definition.get("steps", [])) or "-"),
        ("updated", _time(workflow["updated_at"])),
    ]
    if definition.get("description"):
        rows.insert(2, ("description", definition["description"]))
    out.print(_fields(rows))

    out.print()
    table = _table("VERSION", "ACTIVE", "HASH", "CREATED")
    for v in versions:
        table.add_row(
            str(v["version"]),
            "yes" if v["active"] else "",
            v["content_hash"][:12],
            _time(v["created_at"]),
        )
    out.print(table)

    out.print()
    if not triggers:
        out.print("no triggers")
        return
    table = _table("#", "KIND", "TRIGGER", "STATE", "SPEC", "NEXT / PENDING")
    for t in triggers:
        if t.get("next_fires"):
            upcoming = f"next {_time(t['next_fires'][0])}"
        elif t.get("pending_joins"):
            upcoming = f"{len(t['pending_joins'])} partial joins"
        else:
            upcoming = "-"
        table.add_row(
            str(t["position"]),
            t["kind"],
            t["trigger_id"],
            "paused" if t["paused"] else "active" if t["active"] else "inactive",
            _compact(t["spec"], 200),
            upcoming,
        )
    out.print(table)


@workflow_app.command("activate")
def workflow_activate(
    ctx: typer.Context,
    workflow_id: str,
    version: Annotated[str, typer.Argument(help="A version number, or `latest`.")],
) -> None:
    """Make a version active (rollback = activate an older one)."""
    with _client(ctx) as client:
        workflow = client.activate_version(workflow_id, version)
    out.print(f"{workflow['id']}: version {workflow['active_version']} active")


@workflow_app.command("pause")
def workflow_pause(ctx: typer.Context, workflow_id: str) -> None:
    """Hold every trigger; manual starts still work."""
    with _client(ctx) as client:
        workflow = client.pause_workflow(workflow_id)
    out.print(f"{workflow['id']}: {_workflow_state(workflow)} (triggers held)")


@workflow_app.command("resume")
def workflow_resume(ctx: typer.Context, workflow_id: str) -> None:
    """Resume the triggers of a paused workflow."""
    with _client(ctx) as client:
        workflow = client.resume_workflow(workflow_id)
    out.print(f"{workflow['id']}: {_workflow_state(workflow)}")


@workflow_app.command("deactivate")
def workflow_deactivate(ctx: typer.Context, workflow_id: str) -> None:
    """Stop triggers and default starts; running runs continue."""
    with _client(ctx) as client:
        workflow = client.deactivate_workflow(workflow_id)
    out.print(f"{workflow['id']}: {_workflow_state(workflow)} (running runs continue)")


@workflow_app.command("delete")
def workflow_delete(
    ctx: typer.Context,
    workflow_id: str,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
) -> None:
    """Delete a workflow with its schedules, versions and runs (refused while runs are live)."""
    if not yes:
        typer.confirm(f"delete {workflow_id} with its versions and run history?", abort=True)
    with _client(ctx) as client:
        client.delete_workflow(workflow_id)
    out.print(f"{workflow_id}: deleted")


# maestro run ...


@run_app.command("start")
def run_start(
    ctx: typer.Context,
    workflow_id: str,
    params: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="KEY=VALUE",
            help="Params; VALUE is JSON when it parses as JSON, else a string.",
        ),
    ] = None,
    version: Annotated[
        int | None, typer.Option(min=1, help="Run this version instead of the active one.")
    ] = None,
    request_id: Annotated[
        str | None, typer.Option(help="Idempotency key: repeating it returns the same run.")
    ] = None,
    wait: Annotated[
        bool,
        typer.Option("--wait", help="Follow the run until it ends; exit 4 if it does not succeed."),
    ] = False,
) -> None:
    """Start a run of a workflow."""
    values = parse_assignments(params or [])
    with _client(ctx) as client:
        run = client.start_run(workflow_id, values, request_id=request_id, version=version)
        if not wait:
            _print_run_summary(run)
            return
        run = _follow(client, client.get_run(run["run_id"]))
    _print_link(run)
    if run["status"] != "succeeded":
        raise typer.Exit(EXIT_RUN_NOT_SUCCEEDED)


@run_app.command("list")
def run_list(
    ctx: typer.Context,
    workflow: Annotated[str | None, typer.Option(help="Only runs of this workflow.")] = None,
    status: Annotated[str | None, typer.Option(help="Only runs with this status.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many runs.")] = 20,
) -> None:
    """List runs, newest first."""
    with _client(ctx) as client:
        runs = list(
            islice(
                client.iter_runs(workflow_id=workflow, status=status, page_size=min(limit, 500)),
                limit,
            )
        )
    if not runs:
        out.print("no runs")
        return
    table = _table("RUN", "WORKFLOW", "#", "VERSION", "STATUS", "CAUSE", "CREATED", "DURATION")
    table.add_column("TEMPORAL", overflow="fold")
    for run in runs:
        url = run["temporal_ui_url"]
        table.add_row(
            run["run_id"],
            run["workflow_id"],
            str(run["run_number"]),
            str(run["version"]),
            _status(run["status"]),
            run["cause"].get("kind", "-"),
            _time(run["created_at"]),
            _duration(run["started_at"], run["ended_at"]),
            # The link opens from terminals that support hyperlinks.
            Text(run["temporal_workflow_id"], style=f"link {url}"),
        )
    out.print(table)


@run_app.command("show")
def run_show(
    ctx: typer.Context,
    run_id: str,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Refresh until the run ends.")
    ] = False,
) -> None:
    """A run and its steps."""
    with _client(ctx) as client:
        run = client.get_run(run_id)
        if follow:
            run = _follow(client, run)
        else:
            out.print(_run_view(run))
    _print_link(run)


@run_app.command("stop")
def run_stop(ctx: typer.Context, run_id: str) -> None:
    """Stop a run gracefully: running steps are cancelled."""
    with _client(ctx) as client:
        run = client.stop_run(run_id)
    _print_run_summary(run)


@run_app.command("kill")
def run_kill(ctx: typer.Context, run_id: str) -> None:
    """Terminate a run now, without cleanup (prefer stop)."""
    with _client(ctx) as client:
        run = client.kill_run(run_id)
    _print_run_summary(run)


@run_app.command("restart")
def run_restart(
    ctx: typer.Context,
    run_id: str,
    from_: Annotated[
        str, typer.Option("--from", help="`failed`, `beginning` or a step id.")
    ] = "failed",
) -> None:
    """Start a new run of an ended one, with the same version and params."""
    with _client(ctx) as client:
        run = client.restart_run(run_id, from_=from_)
    _print_run_summary(run)


# maestro signal ...


@signal_app.command("publish")
def signal_publish(
    ctx: typer.Context,
    name: str,
    params: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="KEY=VALUE",
            help="Params; VALUE is JSON when it parses as JSON, else a string.",
        ),
    ] = None,
    payload: Annotated[
        str | None, typer.Option(help="A JSON object carried along (not matched on).")
    ] = None,
    request_id: Annotated[
        str | None, typer.Option(help="Dedupe key (default: the name and params).")
    ] = None,
) -> None:
    """Publish a signal; prints the runs it started."""
    values = parse_assignments(params or [])
    body = None
    if payload is not None:
        try:
            body = json.loads(payload)
        except ValueError as exc:
            _usage(f"--payload is not JSON: {exc}")
        if not isinstance(body, dict):
            _usage("--payload must be a JSON object")
    with _client(ctx) as client:
        result = client.publish_signal(name, values, payload=body, request_id=request_id)
    signal = result["signal"]
    line = f"signal {signal['id']}: {signal['name']} seq {signal['seq']}"
    if result["duplicate"]:
        out.print(f"{line} duplicate: true (published before; nothing started)")
        return
    out.print(f"{line} duplicate: false")
    if not result["runs"]:
        out.print("started no runs")
    for run in result["runs"]:
        out.print(Text.assemble("started ", _run_line(run)), soft_wrap=True)
        _print_link(run)


@signal_app.command("list")
def signal_list(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Option(help="Only signals with this name.")] = None,
    param: Annotated[
        list[str] | None, typer.Option(help="KEY=VALUE: only signals with this param; repeat.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="At most this many.")] = 20,
) -> None:
    """The signal log, newest first."""
    # The API compares as text: `5` matches both the number and the string.
    filters = parse_assignments(param or [], json_values=False)
    with _client(ctx) as client:
        signals = client.list_signals(name=name, params=filters, limit=limit)["items"]
    if not signals:
        out.print("no signals")
        return
    table = _table("ID", "NAME", "SEQ", "PARAMS", "PRODUCER", "CREATED")
    for s in signals:
        table.add_row(
            str(s["id"]),
            s["name"],
            str(s["seq"]),
            _compact(s["params"], 80),
            _producer(s["producer"]),
            _time(s["created_at"]),
        )
    out.print(table)


@signal_app.command("show")
def signal_show(ctx: typer.Context, signal_id: int) -> None:
    """A signal and what it did to every trigger it reached."""
    with _client(ctx) as client:
        signal = client.get_signal(signal_id)
    rows: list[tuple[str, Any]] = [
        ("signal", signal["id"]),
        ("name", signal["name"]),
        ("seq", signal["seq"]),
        ("params", _compact(signal["params"], 1000)),
        ("payload", _compact(signal["payload"], 1000) if signal["payload"] is not None else "-"),
        ("request_id", signal["request_id"] or "-"),
        ("producer", _producer(signal["producer"])),
        ("created", _time(signal["created_at"])),
    ]
    out.print(_fields(rows))
    out.print()
    if not signal["matches"]:
        out.print("matched no triggers")
        return
    table = _table("WORKFLOW", "TRIGGER", "OUTCOME", "RUN", "DETAIL", "UPDATED")
    for m in signal["matches"]:
        table.add_row(
            m["workflow_id"],
            m["trigger_id"],
            m["outcome"],
            m["run_id"] or "-",
            m["detail"] or "",
            _time(m["updated_at"]),
        )
    out.print(table)


@keys_app.command("create")
def keys_create(
    ctx: typer.Context,
    name: str,
    scope: Annotated[list[str], typer.Option("--scope", help="read, write, publish, admin")],
    owner: Annotated[
        list[str] | None,
        typer.Option("--owner", help="Limit the key to workflows of this owner (repeatable)"),
    ] = None,
) -> None:
    """Create a key and print its secret (shown only this once)."""
    with _client(ctx) as client:
        created = client.create_key(name, scope, owner or [])
    out.print(
        f"key {created['id']} ({', '.join(created['scopes'])}"
        f"{'; owners ' + ', '.join(created['owners']) if created['owners'] else ''})"
    )
    typer.echo(created["key"])


@keys_app.command("list")
def keys_list(ctx: typer.Context) -> None:
    """Every key (never their secrets)."""
    with _client(ctx) as client:
        rows = client.list_keys()
    table = _table("ID", "NAME", "PREFIX", "SCOPES", "OWNERS", "CREATED", "REVOKED")
    for k in rows:
        table.add_row(
            k["id"],
            k["name"],
            k["prefix"],
            ", ".join(k["scopes"]),
            ", ".join(k["owners"]) or "all",
            _time(k["created_at"]),
            _time(k["revoked_at"]) if k["revoked_at"] else "-",
        )
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(
    ctx: typer.Context,
    key_id: str,
    confirm: Annotated[
        bool, typer.Option("--confirm", help="needed to revoke the key in use")
    ] = False,
) -> None:
    """Revoke a key; it stops working at once. The last admin key cannot be revoked."""
    with _client(ctx) as client:
        client.revoke_key(key_id, confirm=confirm)
    out.print(f"key {key_id} revoked")
