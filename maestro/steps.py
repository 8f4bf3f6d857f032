"""The step types Maestro knows and the params each takes; executors live in `workers/`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from maestro.errors import Problem
from maestro.expressions import find_expressions

ENTRYPOINT_PATTERN = r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"


class _StepParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NoopParams(_StepParams):
    """Does nothing; `outputs` are returned as the step's outputs."""

    outputs: dict[str, Any] = Field(default_factory=dict)


class SleepParams(_StepParams):
    """Waits `seconds` (heartbeating, cancellable)."""

    seconds: float = Field(ge=0)


class PythonParams(_StepParams):
    """Calls `entrypoint` (`module:function`) with a StepContext; `args` reach it as `ctx.args`."""

    entrypoint: str = Field(pattern=ENTRYPOINT_PATTERN)
    args: dict[str, Any] = Field(default_factory=dict)


class ShellParams(_StepParams):
    """Runs `command` (a string for `/bin/sh -c`, or an argv list) in the run's work dir."""

    command: str | list[str] = Field(min_length=1)
    env: dict[str, str] = Field(default_factory=dict)
    tail_lines: int = Field(default=50, ge=1, le=10_000)


STEP_TYPES: dict[str, type[_StepParams]] = {
    "noop": NoopParams,
    "sleep": SleepParams,
    "python": PythonParams,
    "shell": ShellParams,
}


def check_step_params(step_type: str, params: dict[str, Any]) -> list[Problem]:
    """Problems with a step's params; a param holding an expression is type-checked when it runs,
    after the expression is evaluated (unknown params are refused either way)."""
    try:
        STEP_TYPES[step_type].model_validate(params)
    except ValidationError as exc:
        dynamic = {loc[0] for loc, _ in find_expressions(params)}
        return [
            Problem(loc=tuple(err["loc"]), msg=err["msg"], type=err["type"])
            for err in exc.errors(include_url=False)
            if err["type"] == "extra_forbidden" or err["loc"][0] not in dynamic
        ]
    return []
