"""`maestro workflow|run|signal|models|keys|status`: client commands that talk to a Maestro API
over HTTP.

Every command that prints an API object takes `--output json`: the API's JSON as it came (a
list command: a JSON array of the API's items, every page joined). Exit codes: 1 the API
answered with an error, 2 the command line is wrong, 3 the API cannot be reached, 4 a run
awaited with `--wait` did not succeed.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from itertools import islice
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console, ConsoleDimensions, Group, RenderableType
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
models_app = typer.Typer(
    help="The model registry: versions, stages, promotion.", no_args_is_help=True
)
keys_app = typer.Typer(help="Manage API keys (needs an admin key).", no_args_is_help=True)
branch_app = typer.Typer(
    help="Branches: isolated deployments of workflows (user.alice, test.x).",
    no_args_is_help=True,
)

# Off a terminal, lines are laid out as if the screen were this wide: none is ever wrapped.
UNWRAPPED_WIDTH = 100_000


class Output(Console):
    """A console that fits a terminal's width and, elsewhere (a pipe, a file, a CI log), never
    wraps: URLs, ids and table rows stay whole on one line each."""

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        return size if self.is_terminal else ConsoleDimensions(UNWRAPPED_WIDTH, size.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)  # type: ignore[attr-defined]


# Markup off: names, params and error texts come from users and must print as they are.
out = Output(markup=False, highlight=False)


class OutputFormat(StrEnum):
    table = "table"
    json = "json"


OutputOption = Annotated[
    OutputFormat,
    typer.Option(
        "--output",
        "-o",
        help="`table` for people; `json` for scripts: the API's JSON (a list: a JSON array).",
    ),
]


ParamsArgument = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="KEY=VALUE", help="Params; VALUE is JSON when it parses as JSON, else a string."
    ),
]


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


def _emit(output: OutputFormat, data: Any, show: Callable[[Any], None]) -> None:
    """`data` as JSON, or shown for people by `show`."""
    if output is OutputFormat.json:
        _print_json(data)
    else:
        show(data)


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


ApiUrlOption = Annotated[
    str, typer.Option("--api-url", envvar="MAESTRO_API_URL", help="The Maestro API.")
]
ApiKeyOption = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="MAESTRO_API_KEY",
        show_default=False,
        help="Sent as a bearer token; default: the key in <MAESTRO_DATA_DIR>/api-key, if any.",
    ),
]


def _target(
    ctx: typer.Context, api_url: ApiUrlOption = DEFAULT_API_URL, api_key: ApiKeyOption = None
) -> None:
    ctx.obj = Target(api_url, api_key or _key_from_file())


for _app in (workflow_app, run_app, signal_app, models_app, keys_app, branch_app):
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
    except MaestroClientError as exc:
        message, code = explain(exc)
        _fail(message, code)


def explain(exc: MaestroClientError) -> tuple[str, int]:
    """A client error as one line for people, with what to do, and the command's exit code."""
    if isinstance(exc, MaestroAPIError):
        hint = ""
        if exc.status == 401:
            hint = (
                f". Pass --api-key or set MAESTRO_API_KEY (`maestro up` keeps an admin key in "
                f"{api_key_file()})"
            )
        return f"{exc}{hint}", EXIT_API_ERROR
    if isinstance(exc, MaestroUnreachable):
        return (
            f"{exc}. Is Maestro running? Start it with `maestro up`, or point --api-url "
            "(MAESTRO_API_URL) at it.",
            EXIT_UNREACHABLE,
        )
    return str(exc), EXIT_API_ERROR


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
    if run.get("code_sha256"):
        rows.insert(2, ("code", f"package {run['code_sha256'][:12]}"))
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
        bars = [
            (step["step_id"], step["progress"])
            for step in run["steps"]
            if step.get("progress") and step["status"] == "running"
        ]
        if bars:
            grid = Table.grid(padding=(0, 2))
            grid.add_column(style="bold")
            grid.add_column()
            for step_id, counts in bars:
                grid.add_row(step_id, progress_bar(counts))
            parts += [Text(""), grid]
    return Group(*parts)


# Iteration statuses in the order a progress bar shows them, and their colours.
_BAR_PARTS = (
    ("succeeded", "green"),
    ("failed", "red"),
    ("skipped", "yellow"),
    ("stopped", "magenta"),
    ("running", "cyan"),
)
BAR_WIDTH = 30


def progress_bar(counts: dict[str, int], width: int = BAR_WIDTH) -> Text:
    """A foreach's or while's iterations as a bar coloured by status, then how many ended of
    how many there are and the counts by status: `███░░ 3/5 (60%)  succeeded 3 · pending 2`."""
    total = sum(counts.values())
    ended = sum(counts.get(s, 0) for s in ("succeeded", "failed", "skipped", "stopped"))
    bar = Text()
    used = 0
    for status, style in _BAR_PARTS:
        cells = round(width * counts.get(status, 0) / total) if total else 0
        cells = min(cells, width - used)
        bar.append("█" * cells, style=style)
        used += cells
    bar.append("░" * (width - used), style="dim")
    percent = f" ({100 * ended // total}%)" if total else ""
    bar.append(f" {ended:,}/{total:,}{percent}  ")
    bar.append(
        " · ".join(
            f"{status} {counts[status]:,}"
            for status in ("succeeded", "failed", "skipped", "stopped", "running", "pending")
            if counts.get(status)
        )
        or "no iterations yet"
    )
    return bar


def _follow(client: MaestroClient, run: dict[str, Any], *, show: bool = True) -> dict[str, Any]:
    """Show the run until it is over, refreshed in place on a terminal (elsewhere, such as a
    pipe or a CI log, only its final state; nothing unless `show`); returns it as it ended."""
    try:
        if not show or not out.is_terminal:
            run = client.wait_for_run(run["run_id"], poll_interval=POLL_SECONDS)
            if show:
                out.print(_run_view(run))
            return run
        with Live(_run_view(run), console=out, auto_refresh=False) as live:
            while run["status"] in LIVE_RUN_STATUSES:
                time.sleep(POLL_SECONDS)
                run = client.get_run(run["run_id"])
                live.update(_run_view(run), refresh=True)
        return run
    except KeyboardInterrupt:
        typer.echo(f"stopped following; the run goes on: {run['temporal_ui_url']}", err=True)
        raise typer.Exit(130) from None


def _print_runs(runs: list[dict[str, Any]], none: str) -> None:
    """One line and its Temporal UI link per run, or `none`."""
    if not runs:
        out.print(none)
    for run in runs:
        _print_run_summary(run)


# maestro workflow ...

DefinitionFile = Annotated[
    Path,
    typer.Argument(
        exists=True, dir_okay=False, readable=True, help="A definition (.yaml, .yml or .json)."
    ),
]


BranchOption = Annotated[
    str | None,
    typer.Option(
        "--branch",
        help="Deploy to this branch (stored as <id>@<branch>; its emitted and completion "
        "signals reach only its own workflows). Default: prod.",
        show_default=False,
    ),
]
WithSchedulesOption = Annotated[
    bool,
    typer.Option(
        "--with-schedules", help="Outside prod: arm the time triggers (paused by default)."
    ),
]


@workflow_app.command("apply")
def workflow_apply(
    ctx: typer.Context,
    file: DefinitionFile,
    branch: BranchOption = None,
    with_schedules: WithSchedulesOption = False,
    output: OutputOption = OutputFormat.table,
) -> None:
    """Register a definition: a changed one becomes the next, active version."""
    body, content_type = _definition_file(file)
    with _client(ctx) as client:
        result = client.push_workflow(
            body, content_type=content_type, branch=branch, with_schedules=with_schedules
        )
    _emit(output, result, _show_applied)


def _show_applied(result: dict[str, Any]) -> None:
    workflow = result["workflow"]
    if workflow["schedules_paused"]:
        out.print(
            f"{workflow['id']}: branch {workflow['branch']}: time triggers paused "
            "(--with-schedules arms them)"
        )
    if result["created"]:
        out.print(f"{workflow['id']}: created version {result['version']} (active)")
        return
    note = ""
    if workflow["active_version"] != result["version"] or not workflow["is_active"]:
        note = f"; the {_workflow_state(workflow)} version is {workflow['active_version']}"
    out.print(f"{workflow['id']}: unchanged (version {result['version']}{note})")


@workflow_app.command("validate")
def workflow_validate(
    ctx: typer.Context, file: DefinitionFile, output: OutputOption = OutputFormat.table
) -> None:
    """Check a definition without registering it (every problem, with its location)."""
    body, content_type = _definition_file(file)
    with _client(ctx) as client:
        result = client.validate_workflow(body, content_type=content_type)

    def show(result: dict[str, Any]) -> None:
        definition = result["definition"]
        out.print(
            f"{file}: valid ({definition['id']}: {len(definition['steps'])} steps, "
            f"{len(definition.get('triggers') or [])} triggers)"
        )

    _emit(output, result, show)


@workflow_app.command("list")
def workflow_list(
    ctx: typer.Context,
    branch: Annotated[
        str | None, typer.Option(help="Only this branch's workflows.", show_default=False)
    ] = None,
    output: OutputOption = OutputFormat.table,
) -> None:
    """List workflows."""
    with _client(ctx) as client:
        workflows = list(client.iter_workflows(branch=branch))
    _emit(output, workflows, _show_workflows)


def _show_workflows(workflows: list[dict[str, Any]]) -> None:
    if not workflows:
        out.print("no workflows")
        return
    table = _table("ID", "OWNER", "STATE", "ACTIVE", "LATEST", "RUNS", "UPDATED", "BRANCH")
    for w in workflows:
        table.add_row(
            w["id"],
            w["owner"] or "-",
            _workflow_state(w),
            str(w["active_version"] or "-"),
            str(w["latest_version"]),
            str(w["run_count"]),
            _time(w["updated_at"]),
            w["branch"],
        )
    out.print(table)


@workflow_app.command("show")
def workflow_show(
    ctx: typer.Context, workflow_id: str, output: OutputOption = OutputFormat.table
) -> None:
    """A workflow: its state, versions and triggers (JSON: the workflow with its active
    definition; see `versions` and `triggers` for the rest)."""
    with _client(ctx) as client:
        workflow = client.get_workflow(workflow_id)
        if output is OutputFormat.json:
            _print_json(workflow)
            return
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
    _show_versions(versions)
    out.print()
    _show_triggers(triggers)


@workflow_app.command("versions")
def workflow_versions(
    ctx: typer.Context, workflow_id: str, output: OutputOption = OutputFormat.table
) -> None:
    """Every version of a workflow, oldest first."""
    with _client(ctx) as client:
        versions = client.list_versions(workflow_id)
    _emit(output, versions, _show_versions)


def _show_versions(versions: list[dict[str, Any]]) -> None:
    table = _table("VERSION", "ACTIVE", "HASH", "CODE", "CREATED")
    for v in versions:
        table.add_row(
            str(v["version"]),
            "yes" if v["active"] else "",
            v["content_hash"][:12],
            (v.get("code_sha256") or "-")[:12],
            _time(v["created_at"]),
        )
    out.print(table)


@workflow_app.command("triggers")
def workflow_triggers(
    ctx: typer.Context,
    workflow_id: str,
    upcoming: Annotated[
        int, typer.Option(min=0, max=100, help="How many next fire times to list.")
    ] = 5,
    output: OutputOption = OutputFormat.table,
) -> None:
    """The active version's triggers: next fires, last fire, pending joins."""
    with _client(ctx) as client:
        triggers = client.list_triggers(workflow_id, upcoming=upcoming)
    _emit(output, triggers, _show_triggers)


def _show_triggers(triggers: list[dict[str, Any]]) -> None:
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


def _workflow_action(
    ctx: typer.Context,
    output: OutputFormat,
    act: Callable[[MaestroClient], dict[str, Any]],
    note: str,
) -> None:
    """Run an action that answers with the workflow; print its state and `note`."""
    with _client(ctx) as client:
        workflow = act(client)
    _emit(output, workflow, lambda w: out.print(f"{w['id']}: {_workflow_state(w)}{note}"))


@workflow_app.command("activate")
def workflow_activate(
    ctx: typer.Context,
    workflow_id: str,
    version: Annotated[str, typer.Argument(help="A version number, or `latest`.")],
    output: OutputOption = OutputFormat.table,
) -> None:
    """Make a version active (rollback = activate an older one)."""
    with _client(ctx) as client:
        workflow = client.activate_version(workflow_id, version)
    _emit(output, workflow, lambda w: out.print(f"{w['id']}: version {w['active_version']} active"))


@workflow_app.command("pause")
def workflow_pause(
    ctx: typer.Context, workflow_id: str, output: OutputOption = OutputFormat.table
) -> None:
    """Hold every trigger; manual starts still work."""
    _workflow_action(ctx, output, lambda c: c.pause_workflow(workflow_id), " (triggers held)")


@workflow_app.command("resume")
def workflow_resume(
    ctx: typer.Context, workflow_id: str, output: OutputOption = OutputFormat.table
) -> None:
    """Resume the triggers of a paused workflow."""
    _workflow_action(ctx, output, lambda c: c.resume_workflow(workflow_id), "")


@workflow_app.command("deactivate")
def workflow_deactivate(
    ctx: typer.Context, workflow_id: str, output: OutputOption = OutputFormat.table
) -> None:
    """Stop triggers and default starts; running runs continue."""
    note = " (running runs continue)"
    _workflow_action(ctx, output, lambda c: c.deactivate_workflow(workflow_id), note)


def _runs_action(
    ctx: typer.Context,
    output: OutputFormat,
    act: Callable[[MaestroClient], list[dict[str, Any]]],
    headline: Callable[[int], str],
) -> None:
    """Run an action that answers with runs; print the headline for their count, then each."""
    with _client(ctx) as client:
        runs = act(client)

    def show(runs: list[dict[str, Any]]) -> None:
        out.print(headline(len(runs)))
        _print_runs(runs, "")

    _emit(output, runs, show)


@workflow_app.command("stop")
def workflow_stop(
    ctx: typer.Context, workflow_id: str, output: OutputOption = OutputFormat.table
) -> None:
    """Stop every queued and running run of the workflow."""
    _runs_action(
        ctx,
        output,
        lambda c: c.stop_workflow(workflow_id),
        lambda count: f"{workflow_id}: stopping {count} runs",
    )


@workflow_app.command("unblock")
def workflow_unblock(
    ctx: typer.Context, workflow_id: str, output: OutputOption = OutputFormat.table
) -> None:
    """Release a strict_sequential queue held by a failed run (the queue starts again)."""
    _runs_action(
        ctx,
        output,
        lambda c: c.unblock_workflow(workflow_id),
        lambda count: f"{workflow_id}: unblocked; admitted {count} queued runs",
    )


@workflow_app.command("backfill")
def workflow_backfill(
    ctx: typer.Context,
    workflow_id: str,
    start: Annotated[
        str, typer.Option(help="Exclusive start, ISO 8601 with a time zone (2026-01-01T00:00Z).")
    ],
    end: Annotated[str, typer.Option(help="Inclusive end, ISO 8601 with a time zone.")],
    output: OutputOption = OutputFormat.table,
) -> None:
    """One run per scheduled time of the time triggers in (START, END], through the run
    strategy; times that already have a run are not run again."""
    with _client(ctx) as client:
        result = client.backfill_workflow(workflow_id, start, end)

    def show(result: dict[str, Any]) -> None:
        out.print(
            f"{workflow_id}: {result['scheduled_times']} scheduled times, "
            f"{result['created']} runs created"
        )
        _print_runs(result["runs"], "")

    _emit(output, result, show)


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


# maestro branch ...


@branch_app.command("list")
def branch_list(ctx: typer.Context, output: OutputOption = OutputFormat.table) -> None:
    """Every branch that holds workflows, with how many."""
    with _client(ctx) as client:
        branches = client.list_branches()

    def show(branches: list[dict[str, Any]]) -> None:
        if not branches:
            out.print("no branches")
            return
        table = _table("BRANCH", "WORKFLOWS", "ACTIVE")
        for b in branches:
            table.add_row(b["branch"], str(b["workflows"]), str(b["active_workflows"]))
        out.print(table)

    _emit(output, branches, show)


@branch_app.command("delete")
def branch_delete(
    ctx: typer.Context,
    name: str,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
    output: OutputOption = OutputFormat.table,
) -> None:
    """Delete a branch: its workflows with their schedules, versions and runs (never prod;
    refused while runs are live)."""
    if not yes:
        typer.confirm(f"delete branch {name} with its workflows and run history?", abort=True)
    with _client(ctx) as client:
        result = client.delete_branch(name)

    def show(result: dict[str, Any]) -> None:
        for workflow_id in result["deleted"]:
            out.print(f"{workflow_id}: deleted")
        out.print(f"branch {result['branch']}: deleted ({len(result['deleted'])} workflows)")

    _emit(output, result, show)


# maestro run ...


@run_app.command("start")
def run_start(
    ctx: typer.Context,
    workflow_id: str,
    params: ParamsArgument = None,
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
    output: OutputOption = OutputFormat.table,
) -> None:
    """Start a run of a workflow."""
    values = parse_assignments(params or [])
    as_json = output is OutputFormat.json
    with _client(ctx) as client:
        run = client.start_run(workflow_id, values, request_id=request_id, version=version)
        if not wait:
            _emit(output, run, _print_run_summary)
            return
        run = _follow(client, client.get_run(run["run_id"]), show=not as_json)
    _emit(output, run, _print_link)
    if run["status"] != "succeeded":
        raise typer.Exit(EXIT_RUN_NOT_SUCCEEDED)


@run_app.command("list")
def run_list(
    ctx: typer.Context,
    workflow: Annotated[str | None, typer.Option(help="Only runs of this workflow.")] = None,
    status: Annotated[str | None, typer.Option(help="Only runs with this status.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many runs.")] = 20,
    output: OutputOption = OutputFormat.table,
) -> None:
    """List runs, newest first."""
    with _client(ctx) as client:
        runs = list(
            islice(
                client.iter_runs(workflow_id=workflow, status=status, page_size=min(limit, 500)),
                limit,
            )
        )
    _emit(output, runs, _show_runs)


def _show_runs(runs: list[dict[str, Any]]) -> None:
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
    output: OutputOption = OutputFormat.table,
) -> None:
    """A run and its steps (with --follow and JSON: the run as it ended)."""
    as_json = output is OutputFormat.json
    with _client(ctx) as client:
        run = client.get_run(run_id)
        if follow:
            run = _follow(client, run, show=not as_json)
        elif not as_json:
            out.print(_run_view(run))
    _emit(output, run, _print_link)


def _run_action(
    ctx: typer.Context, output: OutputFormat, act: Callable[[MaestroClient], dict[str, Any]]
) -> None:
    """Run an action that answers with the run; print its summary line and link."""
    with _client(ctx) as client:
        run = act(client)
    _emit(output, run, _print_run_summary)


@run_app.command("stop")
def run_stop(ctx: typer.Context, run_id: str, output: OutputOption = OutputFormat.table) -> None:
    """Stop a run gracefully: running steps are cancelled."""
    _run_action(ctx, output, lambda c: c.stop_run(run_id))


@run_app.command("kill")
def run_kill(ctx: typer.Context, run_id: str, output: OutputOption = OutputFormat.table) -> None:
    """Terminate a run now, without cleanup (prefer stop)."""
    _run_action(ctx, output, lambda c: c.kill_run(run_id))


@run_app.command("restart")
def run_restart(
    ctx: typer.Context,
    run_id: str,
    from_: Annotated[
        str, typer.Option("--from", help="`failed`, `beginning` or a step id.")
    ] = "failed",
    output: OutputOption = OutputFormat.table,
) -> None:
    """Start a new run of an ended one, with the same version and params."""
    _run_action(ctx, output, lambda c: c.restart_run(run_id, from_=from_))


@run_app.command("skip")
def run_skip(
    ctx: typer.Context, run_id: str, step_id: str, output: OutputOption = OutputFormat.table
) -> None:
    """Skip a step that has not finished (cancelling it if it runs): the DAG goes on as if it
    succeeded with no outputs."""
    _run_action(ctx, output, lambda c: c.skip_step(run_id, step_id))


@run_app.command("bypass")
def run_bypass(
    ctx: typer.Context, run_id: str, step_id: str, output: OutputOption = OutputFormat.table
) -> None:
    """Release a step waiting for signals as if they had arrived (without them)."""
    _run_action(ctx, output, lambda c: c.bypass_step_wait(run_id, step_id))


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
    branch: Annotated[
        str | None,
        typer.Option(
            help="Publish as a signal of this branch (reaches only its workflows); default: "
            "from outside, reaching every branch that listens.",
            show_default=False,
        ),
    ] = None,
    output: OutputOption = OutputFormat.table,
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
        result = client.publish_signal(
            name, values, payload=body, request_id=request_id, branch=branch
        )
    _emit(output, result, _show_published)


def _show_published(result: dict[str, Any]) -> None:
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
    output: OutputOption = OutputFormat.table,
) -> None:
    """The signal log, newest first."""
    # The API compares as text: `5` matches both the number and the string.
    filters = parse_assignments(param or [], json_values=False)
    with _client(ctx) as client:
        signals = client.list_signals(name=name, params=filters, limit=limit)["items"]
    _emit(output, signals, _show_signals)


def _show_signals(signals: list[dict[str, Any]]) -> None:
    if not signals:
        out.print("no signals")
        return
    table = _table("ID", "NAME", "SEQ", "PARAMS", "PRODUCER", "CREATED", "BRANCH")
    for s in signals:
        table.add_row(
            str(s["id"]),
            s["name"],
            str(s["seq"]),
            _compact(s["params"], 80),
            _producer(s["producer"]),
            _time(s["created_at"]),
            s["branch"] or "-",
        )
    out.print(table)


@signal_app.command("show")
def signal_show(
    ctx: typer.Context, signal_id: int, output: OutputOption = OutputFormat.table
) -> None:
    """A signal and what it did to every trigger it reached."""
    with _client(ctx) as client:
        signal = client.get_signal(signal_id)
    _emit(output, signal, _show_signal)


def _show_signal(signal: dict[str, Any]) -> None:
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


# maestro models ...


@models_app.command("list")
def models_list(ctx: typer.Context, output: OutputOption = OutputFormat.table) -> None:
    """Registered models with the version holding each stage."""
    with _client(ctx) as client:
        models = client.list_models()

    def show(models: list[dict[str, Any]]) -> None:
        if not models:
            out.print("no models")
            return
        table = _table("MODEL", "OWNER", "LATEST", "STAGING", "PRODUCTION", "CREATED")
        for m in models:
            table.add_row(
                m["name"],
                m["owner"] or "-",
                str(m["latest_version"]),
                str(m["stages"].get("staging", "-")),
                str(m["stages"].get("production", "-")),
                _time(m["created_at"]),
            )
        out.print(table)

    _emit(output, models, show)


@models_app.command("show")
def models_show(
    ctx: typer.Context,
    name: str,
    version: Annotated[
        int | None, typer.Argument(min=1, help="One version, with its lineage.")
    ] = None,
    output: OutputOption = OutputFormat.table,
) -> None:
    """A model with its versions and stage history, or one version with its lineage."""
    with _client(ctx) as client:
        if version is None:
            _emit(output, client.get_model(name), _show_model)
        else:
            _emit(output, client.get_model_version(name, version), _show_model_version)


def _show_model(model: dict[str, Any]) -> None:
    stages = ", ".join(f"{stage} {v}" for stage, v in sorted(model["stages"].items()))
    rows: list[tuple[str, Any]] = [
        ("model", model["name"]),
        ("owner", model["owner"] or "-"),
        ("latest version", model["latest_version"]),
        ("stages", stages or "-"),
        ("created", _time(model["created_at"])),
    ]
    out.print(_fields(rows))
    out.print()
    table = _table("VERSION", "STAGE", "METRICS", "RUN", "STEP", "CREATED", "BRANCH")
    for v in model.get("versions") or []:
        table.add_row(
            str(v["version"]),
            v["stage"],
            _compact(v["metrics"], 120),
            v["run_id"],
            v["step_id"],
            _time(v["created_at"]),
            v["branch"],
        )
    out.print(table)
    if model.get("history"):
        out.print()
        history = _table("CHANGED", "VERSION", "STAGE", "PREVIOUS", "RUN", "REASON")
        for c in model["history"]:
            history.add_row(
                _time(c["changed_at"]),
                str(c["version"]),
                c["stage"],
                str(c["previous_version"] or "-"),
                c["run_id"] or "-",
                c["reason"],
            )
        out.print(history)


def _show_model_version(version: dict[str, Any]) -> None:
    lineage = version.get("lineage") or {}
    run = lineage.get("run_id", version["run_id"])
    if lineage.get("workflow_id"):
        run += f" ({lineage['workflow_id']} #{lineage['run_number']}, {lineage['cause']})"
    signals = ", ".join(f"{s['id']} {s['name']}" for s in lineage.get("signals", []))
    rows: list[tuple[str, Any]] = [
        ("model", f"{version['model_name']} version {version['version']}"),
        ("stage", version["stage"]),
        ("metrics", _compact(version["metrics"], 1000)),
        ("params", _compact(version["params"], 1000)),
        ("artifact", version["artifact_uri"]),
        ("data", version["data_ref"] or "-"),
        ("trained by", f"run {run}, step {version['step_id']}"),
        ("signals", signals or "-"),
        ("created", _time(version["created_at"])),
    ]
    out.print(_fields(rows))


@models_app.command("promote")
def models_promote(
    ctx: typer.Context,
    name: str,
    version: Annotated[int, typer.Argument(min=1)],
    stage: Annotated[str, typer.Option(help="`staging` or `production`.")] = "production",
    output: OutputOption = OutputFormat.table,
) -> None:
    """Move a version to a stage; the previous holder is archived (promoting an older
    version is a rollback)."""
    with _client(ctx) as client:
        result = client.promote_model(name, version, stage)

    def show(result: dict[str, Any]) -> None:
        promoted = result["version"]
        previous = result["previous_version"]
        out.print(
            f"{promoted['model_name']} version {promoted['version']} -> {promoted['stage']}"
            + (f" (version {previous} archived)" if previous else "")
        )

    _emit(output, result, show)


# maestro keys ...


@keys_app.command("create")
def keys_create(
    ctx: typer.Context,
    name: str,
    scope: Annotated[list[str], typer.Option("--scope", help="read, write, publish, admin")],
    owner: Annotated[
        list[str] | None,
        typer.Option("--owner", help="Limit the key to workflows of this owner (repeatable)"),
    ] = None,
    output: OutputOption = OutputFormat.table,
) -> None:
    """Create a key and print its secret (shown only this once)."""
    with _client(ctx) as client:
        created = client.create_key(name, scope, owner or [])

    def show(created: dict[str, Any]) -> None:
        owners = "; owners " + ", ".join(created["owners"]) if created["owners"] else ""
        out.print(f"key {created['id']} ({', '.join(created['scopes'])}{owners})")
        typer.echo(created["key"])

    _emit(output, created, show)


@keys_app.command("list")
def keys_list(ctx: typer.Context, output: OutputOption = OutputFormat.table) -> None:
    """Every key (never their secrets)."""
    with _client(ctx) as client:
        rows = client.list_keys()

    def show(rows: list[dict[str, Any]]) -> None:
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

    _emit(output, rows, show)


@keys_app.command("revoke")
def keys_revoke(
    ctx: typer.Context,
    key_id: str,
    confirm: Annotated[
        bool, typer.Option("--confirm", help="needed to revoke the key in use")
    ] = False,
    output: OutputOption = OutputFormat.table,
) -> None:
    """Revoke a key; it stops working at once. The last admin key cannot be revoked."""
    with _client(ctx) as client:
        revoked = client.revoke_key(key_id, confirm=confirm)
    _emit(output, revoked, lambda k: out.print(f"key {k['id']} revoked"))


# maestro status


def status_command(
    api_url: ApiUrlOption = DEFAULT_API_URL,
    api_key: ApiKeyOption = None,
    output: OutputOption = OutputFormat.table,
) -> None:
    """What runs, where, which versions, and the run queue.

    The processes come from `maestro up`'s status file, addresses and ports from the settings,
    versions and the queue from the API and Temporal. Exit 3 when the API cannot be reached,
    1 when it refuses (the queue needs a read key)."""
    settings = Settings()
    report, code = stack_status(settings, api_url, api_key or _key_from_file())
    _emit(output, report, _show_status)
    if code:
        _fail(report["api"]["error"], code)


def stack_status(
    settings: Settings, api_url: str, api_key: str | None
) -> tuple[dict[str, Any], int]:
    """The status report and the exit code it calls for."""
    from maestro import __version__

    report: dict[str, Any] = {
        "version": __version__,
        "stack": _supervised(settings.data_dir.resolve() / "status.json"),
        "api": {"url": api_url.rstrip("/"), "reachable": False, "version": None},
        "temporal": _temporal_status(settings),
        "postgres": _postgres_status(settings),
        "runs": None,
    }
    code = 0
    with MaestroClient(api_url, api_key, timeout=10) as client:
        try:
            report["api"]["version"] = client.api_version()
            report["api"]["reachable"] = True
            report["runs"] = run_counts(client.metrics())
        except MaestroClientError as exc:
            report["api"]["error"], code = explain(exc)
    return report, code


def _supervised(status_file: Path) -> dict[str, Any]:
    """`maestro up`'s status file with whether its supervisor is still alive."""
    try:
        status = json.loads(status_file.read_text())
    except (OSError, ValueError):
        return {"status_file": str(status_file), "running": False, "state": "not started"}
    alive = _pid_alive(status.get("pid"))
    live_state = status.get("state") not in ("stopped", "failed")
    return {"status_file": str(status_file), "running": alive and live_state, **status}


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _temporal_status(settings: Settings) -> dict[str, Any]:
    """Temporal's address, UI and server version (when it answers)."""
    from maestro.embedded import port_open

    address = settings.temporal.address
    host, _, port = address.rpartition(":")
    status: dict[str, Any] = {
        "address": address,
        "ui_url": settings.temporal.ui_url,
        "reachable": port.isdigit() and port_open(host or "127.0.0.1", int(port)),
        "server_version": None,
    }
    if status["reachable"]:
        try:
            status["server_version"] = asyncio.run(
                asyncio.wait_for(_temporal_server_version(settings), TEMPORAL_TIMEOUT)
            )
        except Exception as exc:  # noqa: BLE001 - shown, never fatal to a status report
            status["error"] = str(exc) or type(exc).__name__
    return status


# How long `maestro status` waits for Temporal to tell its version.
TEMPORAL_TIMEOUT = 5.0


async def _temporal_server_version(settings: Settings) -> str:
    from temporalio.api.workflowservice.v1 import GetSystemInfoRequest
    from temporalio.service import RetryConfig

    from maestro.temporal_client import connect

    once = RetryConfig(max_retries=1, max_elapsed_time_millis=2_000)
    client = await connect(settings.temporal, once)
    info = await client.workflow_service.get_system_info(GetSystemInfoRequest())
    return info.server_version


def _postgres_status(settings: Settings) -> dict[str, Any]:
    """Where PostgreSQL is (the password masked) and whether it accepts connections."""
    from sqlalchemy import make_url

    from maestro.embedded import port_open

    if settings.database_url:
        url = make_url(settings.database_url)
        host, port, embedded = url.host, url.port or 5432, False
        shown = url.render_as_string(hide_password=True)
    else:
        host, port, embedded = "127.0.0.1", settings.embedded_postgres_port, True
        shown = f"postgresql://postgres@{host}:{port}/postgres"
    return {
        "url": shown,
        "embedded": embedded,
        "reachable": port_open(host, port) if host else None,
    }


def run_counts(metrics_text: str) -> dict[str, Any]:
    """Runs by status and the run queue, from the API's Prometheus text: queued runs wait
    for their run strategy (per workflow) or, admitted, for their launch on Temporal."""
    from prometheus_client.parser import text_string_to_metric_families

    by_status: dict[str, int] = {}
    waiting: dict[str, int] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "maestro_runs":
                by_status[sample.labels["status"]] = int(sample.value)
            elif sample.name == "maestro_queue_depth" and sample.value:
                waiting[sample.labels["workflow_id"]] = int(sample.value)
    queued = by_status.get("queued", 0)
    in_strategy = sum(waiting.values())
    return {
        "queued": queued,
        "waiting_for_strategy": in_strategy,
        "waiting_for_launch": max(queued - in_strategy, 0),
        "running": by_status.get("running", 0),
        "queue_by_workflow": dict(sorted(waiting.items(), key=lambda kv: (-kv[1], kv[0]))),
        "by_status": by_status,
    }


def _reachable(ok: bool | None) -> Text:
    if ok is None:
        return Text("-")
    return Text("reachable", style="green") if ok else Text("unreachable", style="red")


def _show_status(report: dict[str, Any]) -> None:
    stack = report["stack"]
    if stack.get("pid") is None:
        state = Text(f"not started by `maestro up` here (no {stack['status_file']})")
    else:
        alive = "" if stack["running"] else ", supervisor not running"
        state = Text.assemble(
            _status_word(stack["state"]),
            f" (maestro up, pid {stack['pid']}{alive}; updated {_time(stack['updated_at'])})",
        )
    api, temporal, postgres = report["api"], report["temporal"], report["postgres"]
    api_note = f"Maestro {api['version']}" if api["version"] else ""
    if api.get("error"):
        api_note += f"  {api['error']}"
    temporal_note = (
        f"server {temporal['server_version']}"
        if temporal["server_version"]
        else temporal.get("error", "")
    )
    rows: list[tuple[str, Any]] = [
        ("maestro", report["version"]),
        ("stack", state),
        ("API", Text.assemble(api["url"], "  ", _reachable(api["reachable"]), f"  {api_note}")),
        (
            "Temporal",
            Text.assemble(
                temporal["address"],
                "  ",
                _reachable(temporal["reachable"]),
                f"  {temporal_note}  (UI {temporal['ui_url']})",
            ),
        ),
        (
            "PostgreSQL",
            Text.assemble(
                postgres["url"],
                "  ",
                _reachable(postgres["reachable"]),
                "  (embedded)" if postgres["embedded"] else "",
            ),
        ),
    ]
    runs = report["runs"]
    if runs is not None:
        rows.append(
            (
                "runs",
                f"{runs['running']} running, {runs['queued']} queued "
                f"({runs['waiting_for_strategy']} waiting for their run strategy, "
                f"{runs['waiting_for_launch']} admitted and waiting for launch)",
            )
        )
        if runs["queue_by_workflow"]:
            depths = ", ".join(f"{w} {n}" for w, n in runs["queue_by_workflow"].items())
            rows.append(("queue depth", depths))
    out.print(_fields(rows))
    children = stack.get("children") or {}
    if children:
        out.print()
        table = _table("PROCESS", "STATE", "PID", "RESTARTS", "LAST EXIT", "MORE")
        for name, child in children.items():
            last = child.get("last_exit") or {}
            known = {"state", "pid", "restarts", "last_exit"}
            more = " ".join(f"{k}={v}" for k, v in child.items() if k not in known)
            table.add_row(
                name,
                _status_word(child.get("state", "-")),
                str(child.get("pid") or "-"),
                str(child.get("restarts", 0)),
                f"{last.get('reason', '')} {_time(last.get('at'))}" if last else "-",
                more or "",
            )
        out.print(table)


def _status_word(state: str) -> Text:
    styles = {"up": "green", "running": "green", "restarting": "yellow", "failed": "red"}
    return Text(state, style=styles.get(state, ""))
