"""`maestro deploy path/to/flow.py` (or `package.module`): load a Python flow, check it, say what
will start each workflow, ship its code as a package and push its workflows to a branch."""

from __future__ import annotations

import getpass
import os
import re
from typing import Annotated, Any

import typer

from maestro import code_packages
from maestro.client import MaestroClient, MaestroClientError
from maestro.client_cli import (
    DEFAULT_API_URL,
    EXIT_API_ERROR,
    ApiKeyOption,
    ApiUrlOption,
    OutputFormat,
    OutputOption,
    _emit,
    _fail,
    _key_from_file,
    _usage,
    explain,
    out,
)
from maestro.definitions import IntervalTrigger, TimeTrigger, WorkflowDefinition
from maestro.errors import InvalidInput
from maestro.sdk import load
from maestro.trigger_words import describe_triggers

PRODUCTION = "prod"
BRANCH_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def default_branch() -> str:
    """`MAESTRO_BRANCH`, else `user.<login>` (the login in branch-name characters)."""
    configured = os.environ.get("MAESTRO_BRANCH")
    if configured:
        return configured
    try:
        login = getpass.getuser()
    except (KeyError, OSError):  # no user name in this environment
        login = "unknown"
    cleaned = re.sub(r"[^a-z0-9._-]+", "-", login.lower()).strip("-._") or "unknown"
    return f"user.{cleaned}"[:64]


def _problems(exc: InvalidInput) -> str:
    lines = [exc.message]
    lines += [
        f"  {'.'.join(str(p) for p in problem.loc)}: {problem.msg}" for problem in exc.problems
    ]
    return "\n".join(lines)


def _has_time_triggers(definition: WorkflowDefinition) -> bool:
    return any(isinstance(t, TimeTrigger | IntervalTrigger) for t in definition.triggers)


def deploy_command(
    target: Annotated[
        str, typer.Argument(help="The flow: a file (path/to/flow.py) or a module (package.module).")
    ],
    branch: Annotated[
        str | None,
        typer.Option(
            "--branch",
            show_default=False,
            help="Deploy to this branch (default: $MAESTRO_BRANCH, else user.<login>).",
        ),
    ] = None,
    production: Annotated[
        bool, typer.Option("--production", help="Deploy to the production branch (prod).")
    ] = False,
    with_schedules: Annotated[
        bool,
        typer.Option("--with-schedules", help="Arm time triggers on a non-production branch too."),
    ] = False,
    api_url: ApiUrlOption = DEFAULT_API_URL,
    api_key: ApiKeyOption = None,
    output: OutputOption = OutputFormat.table,
) -> None:
    """Deploy a Python flow: validate its workflows, show what will start each one, upload its
    code (the file, or its top-level package) as a content-addressed package, and push. An
    identical definition with identical code is `unchanged`; anything else a new version."""
    if production and branch is not None:
        _usage("--production deploys to prod; leave out --branch (or use --branch prod)")
    chosen = PRODUCTION if production else branch or default_branch()
    if not BRANCH_PATTERN.match(chosen):
        _usage(
            f"branch {chosen!r} is not a branch name: lowercase letters, digits, '.', '_' and "
            "'-', starting with a letter or digit, at most 64 characters"
        )
    try:
        loaded = load(target)
        definitions = [wf.definition() for wf in loaded.workflows]
        package = code_packages.build(loaded.root, loaded.files)
    except InvalidInput as exc:
        _fail(_problems(exc), EXIT_API_ERROR)
    report: dict[str, Any] = {
        "branch": chosen,
        "code": {"sha256": package.sha256, "size": package.size, "files": package.names},
        "requirements": [],
        "workflows": [],
    }
    try:
        with MaestroClient(api_url, api_key or _key_from_file()) as client:
            for wf, definition in zip(loaded.workflows, definitions, strict=True):
                if wf.requirements:
                    queues = step_task_queues(definition.model_dump(mode="json")["steps"])
                    checked = client.check_requirements(
                        sorted(set(wf.requirements)),
                        task_queues=sorted(q for q in queues if q is not None),
                        main_queue=None in queues,
                    )
                    report["requirements"].append(
                        {"workflow": definition.id, "checked_against": checked["checked_against"]}
                    )
            bodies = [d.model_dump(mode="json") for d in definitions]
            for body in bodies:
                client.validate_workflow(body)
            stored = client.upload_code(package.sha256, package.data)
            report["code"]["uri"] = stored["uri"]
            for definition, body in zip(definitions, bodies, strict=True):
                result = client.push_workflow(
                    body,
                    code=package.sha256,
                    branch=chosen,
                    with_schedules=with_schedules,
                )
                report["workflows"].append(
                    {
                        "id": definition.id,
                        "triggers": describe_triggers(definition.triggers),
                        "schedules_paused": chosen != PRODUCTION
                        and not with_schedules
                        and _has_time_triggers(definition),
                        "result": result,
                    }
                )
    except MaestroClientError as exc:
        message, code = explain(exc)
        _fail(message, code)
    _emit(output, report, _show_deployed)


def step_task_queues(steps: list[dict[str, Any]]) -> set[str | None]:
    """The task queues a definition's steps (and its composite steps' bodies) run on; None
    for the main queue."""
    queues: set[str | None] = set()
    for step in steps:
        queues.add(step.get("task_queue"))
        body = step.get("params", {}).get("steps")
        if isinstance(body, list):
            queues |= step_task_queues(body)
    return queues


def _show_deployed(report: dict[str, Any]) -> None:
    code = report["code"]
    out.print(
        f"code package {code['sha256'][:12]} ({code['size']:,} bytes, {len(code['files'])} "
        f"files) -> {code.get('uri', '-')}"
    )
    for item in report["requirements"]:
        for checked in item["checked_against"]:
            against = (
                f"the workers on {', '.join(checked['hosts'])}"
                if checked["environment"] == "workers"
                else "the API's own environment (no worker of this queue reported one)"
            )
            out.print(
                f"{item['workflow']}: requirements met on task queue {checked['task_queue']} "
                f"by {against}"
            )
    for item in report["workflows"]:
        result = item["result"]
        workflow = result["workflow"]
        state = (
            f"created version {result['version']} (active)"
            if result["created"]
            else f"unchanged (version {result['version']})"
        )
        out.print(f"{workflow['id']} [{report['branch']}]: {state}")
        out.print(f"  starts: {item['triggers']}")
        if item["schedules_paused"]:
            out.print("  time triggers are paused on this branch (--with-schedules arms them)")
