"""The step types Maestro knows and the params each takes; executors live in `workers/`."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
)

from maestro.errors import Problem
from maestro.expressions import find_expressions

ENTRYPOINT_PATTERN = r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"
SECRET_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$"


class _StepParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SecretRef(BaseModel):
    """`{secret: <name>}`: the value of the workflow owner's secret, filled in by the worker."""

    model_config = ConfigDict(extra="forbid")

    secret: str = Field(pattern=SECRET_NAME_PATTERN)


def _env_kind(value: Any) -> str:
    secret = isinstance(value, SecretRef) or (isinstance(value, dict) and "secret" in value)
    return "secret" if secret else "value"


EnvValue = Annotated[
    Annotated[str, Tag("value")] | Annotated[SecretRef, Tag("secret")], Discriminator(_env_kind)
]
SecretNames = Annotated[
    list[Annotated[str, Field(pattern=SECRET_NAME_PATTERN)]],
    Field(
        max_length=50,
        description="Names of the workflow owner's secrets the step reads as `ctx.secrets[name]`",
    ),
]


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
    secrets: SecretNames = Field(default_factory=list)


class ShellParams(_StepParams):
    """Runs `command` (a string for `/bin/sh -c`, or an argv list) in the run's work dir, with
    a small environment: PATH, LANG, TZ, the run's MAESTRO_* variables and `env`, whose values
    are strings or `{secret: <name>}`."""

    command: str | list[str] = Field(min_length=1)
    env: dict[str, EnvValue] = Field(default_factory=dict)
    tail_lines: int = Field(default=50, ge=1, le=10_000)


GATE_PATTERN = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(>=|<=|>|<|==|!=)\s*(-?[\d.]+(?:e-?\d+)?)\s*$")


def parse_gate(gate: str) -> tuple[str, str, float]:
    """`accuracy >= 0.95` -> ("accuracy", ">=", 0.95)."""
    match = GATE_PATTERN.match(gate)
    if not match:
        raise ValueError(
            f"gate {gate!r} is not `<metric> <op> <number>` (ops: >=, >, <=, <, ==, !=)"
        )
    return match.group(1), match.group(2), float(match.group(3))


class TrainParams(_StepParams):
    """Calls the training function `entrypoint` with a StepContext (`ctx.data` is the input data
    reference, `ctx.artifact_dir` where to write the model); it returns `{"model": <path>,
    "metrics": {...}}` and may return more outputs. The model becomes an artifact and a new
    version of `model_name` in the registry."""

    entrypoint: str = Field(pattern=ENTRYPOINT_PATTERN)
    model_name: str = Field(min_length=1, max_length=200)
    data: str | None = Field(default=None, max_length=1000)
    args: dict[str, Any] = Field(default_factory=dict)
    secrets: SecretNames = Field(default_factory=list)


class ChampionCheck(_StepParams):
    """Compare with the version currently in `stage` on `metric`."""

    stage: Literal["staging", "production"] = "production"
    metric: str = Field(min_length=1)
    higher_is_better: bool = True


class EvaluateParams(_StepParams):
    """Runs the evaluation function on a model version (`ctx.model_path`) and a dataset
    (`ctx.data`); it returns `{"metrics": {...}}`. Gates (`accuracy >= 0.95`) and `better_than`
    (champion/challenger) fail the step, naming metric, value and threshold."""

    entrypoint: str = Field(pattern=ENTRYPOINT_PATTERN)
    model_name: str = Field(min_length=1, max_length=200)
    model_version: int = Field(ge=1)
    data: str | None = Field(default=None, max_length=1000)
    args: dict[str, Any] = Field(default_factory=dict)
    gates: list[str] = Field(default_factory=list)
    better_than: ChampionCheck | None = None
    secrets: SecretNames = Field(default_factory=list)

    @field_validator("gates")
    @classmethod
    def _gates_parse(cls, gates: list[str]) -> list[str]:
        for gate in gates:
            parse_gate(gate)
        return gates


class DeployParams(_StepParams):
    """Promotes a model version to a stage, archiving the previous holder, and publishes
    `model.deployed`."""

    model_name: str = Field(min_length=1, max_length=200)
    model_version: int = Field(ge=1)
    stage: Literal["staging", "production"] = "production"


STEP_TYPES: dict[str, type[_StepParams]] = {
    "noop": NoopParams,
    "sleep": SleepParams,
    "python": PythonParams,
    "shell": ShellParams,
    "train": TrainParams,
    "evaluate": EvaluateParams,
    "deploy": DeployParams,
}


def secret_references(spec: BaseModel) -> list[tuple[tuple[str | int, ...], str]]:
    """The secrets a step's validated params name, each with its location in the params."""
    if isinstance(spec, ShellParams):
        return [
            (("env", key, "secret"), value.secret)
            for key, value in spec.env.items()
            if isinstance(value, SecretRef)
        ]
    return [(("secrets", i), name) for i, name in enumerate(getattr(spec, "secrets", ()))]


def check_step_params(step_type: str, params: dict[str, Any]) -> list[Problem]:
    """Problems with a step's params; a param holding an expression is type-checked when it runs,
    after the expression is evaluated (unknown params are refused either way)."""
    try:
        STEP_TYPES[step_type].model_validate(params)
    except ValidationError as exc:
        dynamic = {loc[0] for loc, _ in find_expressions(params)}
        return [
            Problem(
                loc=tuple(err["loc"]),
                msg=err["msg"].removeprefix("Value error, "),
                type=err["type"],
            )
            for err in exc.errors(include_url=False)
            if err["type"] == "extra_forbidden" or err["loc"][0] not in dynamic
        ]
    return []
