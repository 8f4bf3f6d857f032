"""Local runs, as their callers see them: what a run-local target holds (a definition file or a
Python flow), and what a local run ends with (its status, its steps' statuses, outputs, errors
and tracebacks). The runner itself is `workers.local`: it runs the worker's step executors."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from maestro.definitions import WorkflowDefinition, parse_definition
from maestro.documents import DocumentTooComplex, load_json, load_yaml
from maestro.errors import InvalidInput, Problem
from maestro.runtime import RunStatus, StepStatus

DEFINITION_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass
class StepOutcome:
    """How one step of a local run ended."""

    step_id: str
    status: StepStatus = StepStatus.pending
    outputs: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    # The attempts it took (0: it never ran: skipped, or blocked upstream).
    attempts: int = 0
    # The traceback of its last attempt's exception, when the step's own code raised one.
    traceback: str | None = None
    # A foreach's or while's iterations, in index order.
    iterations: list[IterationOutcome] = field(default_factory=list)

    @property
    def succeeded(self) -> bool:
        return self.status is StepStatus.succeeded


@dataclass
class IterationOutcome:
    """One iteration of a foreach or while step."""

    index: int
    status: str
    error: str | None = None
    steps: dict[str, StepOutcome] = field(default_factory=dict)


@dataclass
class EmittedSignal:
    """A signal the run would publish (a step's `emits`, a deploy's `model.deployed`): listed,
    not delivered."""

    step_id: str
    name: str
    params: dict[str, Any]


@dataclass
class LocalRun:
    """What a local run ends with."""

    run_id: str
    workflow_id: str
    params: dict[str, Any]
    status: RunStatus = RunStatus.running
    error: str | None = None
    steps: dict[str, StepOutcome] = field(default_factory=dict)
    signals: list[EmittedSignal] = field(default_factory=list)
    # Where its work directories and artifacts are.
    root: Path | None = None

    @property
    def outputs(self) -> dict[str, dict[str, Any]]:
        """The outputs of the steps that have some, by step (as a deployed run's)."""
        return {sid: s.outputs for sid, s in self.steps.items() if s.outputs}

    @property
    def succeeded(self) -> bool:
        return self.status is RunStatus.succeeded


def _target_invalid(target: str, message: str) -> InvalidInput:
    return InvalidInput(f"cannot load {target}: {message}", [Problem(("target",), message)])


def load_definition_file(path: Path) -> WorkflowDefinition:
    """A definition file (.yaml, .yml, .json), validated as POST /api/v1/workflows would."""
    try:
        raw = path.read_bytes()
        data = load_json(raw) if path.suffix.lower() == ".json" else load_yaml(raw)
    except OSError as exc:
        raise _target_invalid(str(path), exc.strerror or str(exc)) from None
    except (DocumentTooComplex, ValueError, yaml.YAMLError) as exc:
        raise _target_invalid(str(path), str(exc)) from None
    return parse_definition(data)


def load_target(target: str) -> list[WorkflowDefinition]:
    """The workflows a run-local target holds: one from a definition file, every module-level
    workflow of a Python flow (`path/flow.py` or `package.module`, through `maestro.sdk.load`).
    Step entrypoints import relative to the current directory (a definition file) or the
    flow's root."""
    if target.lower().endswith(DEFINITION_SUFFIXES):
        _importable(Path.cwd())
        return [load_definition_file(Path(target))]
    from maestro import sdk

    loaded = sdk.load(target)
    _importable(Path(loaded.root))
    definitions = [w.definition() for w in loaded.workflows]
    if not definitions:
        raise _target_invalid(target, "it defines no workflow")
    return definitions


def pick_workflow(
    definitions: list[WorkflowDefinition], workflow_id: str | None
) -> WorkflowDefinition:
    """The workflow to run: the one named, or the only one."""
    ids = [d.id for d in definitions]
    if workflow_id is None and len(definitions) == 1:
        return definitions[0]
    if workflow_id is None:
        raise InvalidInput(
            f"the target holds several workflows ({', '.join(ids)}); name one",
            [Problem(("workflow",), f"pick one of {', '.join(ids)}", "missing")],
        )
    for definition in definitions:
        if definition.id == workflow_id:
            return definition
    raise InvalidInput(
        f"no workflow {workflow_id!r} in the target (it holds {', '.join(ids)})",
        [Problem(("workflow",), f"pick one of {', '.join(ids)}", "unknown_workflow")],
    )


def _importable(root: Path) -> None:
    """Step modules import from `root`, as a worker imports them from its path."""
    entry = str(root.resolve())
    if entry not in sys.path:
        sys.path.insert(0, entry)
