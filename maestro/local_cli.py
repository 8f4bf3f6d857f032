"""`maestro run-local`: run a workflow on this machine, without PostgreSQL, Temporal or a key."""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.text import Text

from maestro.client_cli import (
    EXIT_RUN_NOT_SUCCEEDED,
    EXIT_USAGE,
    STATUS_STYLES,
    ParamsArgument,
    out,
    parse_assignments,
)
from maestro.errors import InvalidInput
from maestro.local import LocalRun, StepOutcome, load_target, pick_workflow
from maestro.trigger_words import describe_trigger

_MARKS = {"succeeded": "✓", "failed": "✗", "timed_out": "✗", "completed_with_error": "!"}


def _compact(value: Any, limit: int = 160) -> str:
    text = json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _show_step(name: str, outcome: StepOutcome) -> None:
    status = outcome.status.value
    line = Text(f"  {_MARKS.get(status, '-')} ")
    line.append(f"{name:<24} ")
    line.append(f"{status:<20}", style=STATUS_STYLES.get(status, ""))
    if outcome.attempts > 1:
        line.append(f" after {outcome.attempts} attempts")
    if outcome.error:
        line.append(f" {outcome.error}")
    elif outcome.outputs:
        line.append(f" {_compact(outcome.outputs)}", style="dim")
    out.print(line)


def _show_failures(run: LocalRun) -> None:
    for outcome in _all_steps(run):
        if outcome.traceback:
            out.print(Text(f"\nstep {outcome.step_id} failed:", style="red"))
            out.print(outcome.traceback.rstrip())


def _all_steps(run: LocalRun) -> list[StepOutcome]:
    """The run's steps and those of their iterations."""
    found: list[StepOutcome] = []
    pending = list(run.steps.values())
    while pending:
        outcome = pending.pop(0)
        found.append(outcome)
        for iteration in outcome.iterations:
            pending += iteration.steps.values()
    return found


def run_local_command(
    target: Annotated[
        str,
        typer.Argument(
            help="A definition file (.yaml, .yml, .json), or a Python flow: path/flow.py or "
            "package.module."
        ),
    ],
    params: ParamsArgument = None,
    workflow: Annotated[
        str | None,
        typer.Option("--workflow", "-w", help="The workflow to run, when the target has several."),
    ] = None,
    work_dir: Annotated[
        Path | None,
        typer.Option(
            "--dir", help="Where work directories and artifacts go (default: a new temp dir)."
        ),
    ] = None,
    no_backoff: Annotated[
        bool,
        typer.Option("--no-backoff", help="Retry failed attempts at once, not after backoff."),
    ] = False,
) -> None:
    """Run a workflow on this machine, without PostgreSQL, Temporal or a key: the same steps,
    DAG, `when`, retries, failure modes and composite steps as a deployed run. Triggers are
    listed, not armed; emitted signals are listed, not delivered. Exits 4 if the run does not
    succeed, printing the tracebacks of failed steps."""
    from workers.local import LocalRunner

    values = parse_assignments(params or [])
    try:
        definitions = load_target(target)
        definition = pick_workflow(definitions, workflow)
    except InvalidInput as exc:
        _invalid(exc)
    root = work_dir or Path(tempfile.mkdtemp(prefix="maestro-local-"))
    runner = LocalRunner(
        root,
        {d.id: d for d in definitions},
        backoff=0.0 if no_backoff else 1.0,
        report=_show_step,
    )
    out.print(Text(f"{definition.id}: a local run of {target}", style="bold"))
    if definition.triggers:
        out.print("triggers (listed, not armed):")
        for trigger in definition.triggers:
            out.print(f"  - {describe_trigger(trigger)}")
    try:
        run = asyncio.run(runner.run(definition, values))
    except InvalidInput as exc:
        _invalid(exc)
    for signal in run.signals:
        where = f"from {signal.step_id}; listed, not delivered"
        out.print(f"  signal {signal.name} {_compact(signal.params)} ({where})")
    _show_failures(run)
    line = Text("run ")
    line.append(run.status.value, style=STATUS_STYLES.get(run.status.value, ""))
    if run.error:
        line.append(f": {run.error}")
    out.print(line)
    out.print(Text(f"work directories and artifacts: {root}", style="dim"))
    if not run.succeeded:
        raise typer.Exit(EXIT_RUN_NOT_SUCCEEDED)


def _invalid(exc: InvalidInput) -> NoReturn:
    typer.echo(f"error: {exc.message}", err=True)
    for problem in exc.problems:
        typer.echo(f"  {'.'.join(map(str, problem.loc))}: {problem.msg}", err=True)
    raise typer.Exit(EXIT_USAGE)
