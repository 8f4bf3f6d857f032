"""The step types Maestro knows and the params each takes; executors live in `workers/`."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import PurePosixPath
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

from maestro.durations import Duration
from maestro.errors import Problem
from maestro.expressions import (
    find_expressions,
    is_expr,
    quoted_concatenation,
    validate_source,
)

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
    """Runs `command` (an argv list, or a string for `/bin/sh -c`) in the run's work dir, with
    a small environment: PATH, LANG, TZ, the run's MAESTRO_* variables and `env`, whose values
    are strings or `{secret: <name>}`. `shell_interpolation` allows shell text built by
    expressions that quote every value."""

    command: str | list[str] = Field(min_length=1)
    shell_interpolation: bool = False
    env: dict[str, EnvValue] = Field(default_factory=dict)
    tail_lines: int = Field(default=50, ge=1, le=10_000)

    @field_validator("command", mode="before")
    @classmethod
    def _numbers_are_arguments(cls, command: Any) -> Any:
        # `["sleep", {expr: "params.seconds"}]` with an integer param: the number is the argument.
        if isinstance(command, list):
            return [
                str(a) if isinstance(a, int | float) and not isinstance(a, bool) else a
                for a in command
            ]
        return command


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


HTTP_ROOTS = frozenset({"response"})
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD")


class HeaderSecret(BaseModel):
    """`{secret: <name>, prefix: "Bearer "}`: a header made of the workflow owner's secret."""

    model_config = ConfigDict(extra="forbid")

    secret: str = Field(pattern=SECRET_NAME_PATTERN)
    prefix: str = Field(default="", max_length=100)


HeaderValue = Annotated[
    Annotated[str, Tag("value")] | Annotated[HeaderSecret, Tag("secret")],
    Discriminator(_env_kind),
]


class HttpPoll(_StepParams):
    """After the request: GET `url` (or the URL `url_expr` computes from the first response)
    every `every` until `until` (CEL over `response`) is true, for at most `timeout`. No worker
    slot is held between polls: each poll is one short attempt, the next one scheduled by
    Temporal after `every`."""

    url: str | None = Field(default=None, max_length=2000)
    url_expr: str | None = Field(default=None, max_length=2000)
    until: str = Field(min_length=1)
    every: Duration = timedelta(seconds=30)
    timeout: Duration = timedelta(hours=2)

    _until = field_validator("until", "url_expr")(
        classmethod(lambda cls, v: validate_source(v, HTTP_ROOTS))
    )

    @field_validator("every")
    @classmethod
    def _every_floor(cls, every: timedelta) -> timedelta:
        if every < timedelta(milliseconds=100):
            raise ValueError("every must be at least 100ms")
        return every


class HttpParams(_StepParams):
    """One HTTP request; its answer (`status`, and `body`: the JSON, or the text) becomes the
    step's outputs. 5xx answers, connection errors and timeouts fail the attempt (retried by
    the step's retry policy); other unexpected statuses fail the step. Headers may be built
    from secrets (never recorded). The destination must pass the outbound allowlist."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"] = "GET"
    url: str = Field(min_length=1, max_length=2000)
    headers: dict[str, HeaderValue] = Field(default_factory=dict, max_length=50)
    query: dict[str, str | int | float | bool] = Field(default_factory=dict, max_length=100)
    body: Any = Field(default=None, alias="json", description="A JSON body (CEL allowed)")
    expected_status: list[Annotated[int, Field(ge=100, le=599)]] = Field(
        default_factory=list, max_length=50, description="Empty: any 2xx"
    )
    timeout: Duration = timedelta(seconds=30)
    max_response_bytes: int = Field(default=1_048_576, ge=1, le=16_777_216)
    poll: HttpPoll | None = None

    def accepts(self, status: int) -> bool:
        return status in self.expected_status if self.expected_status else 200 <= status < 300


STEP_TYPES: dict[str, type[_StepParams]] = {
    "noop": NoopParams,
    "sleep": SleepParams,
    "python": PythonParams,
    "shell": ShellParams,
    "train": TrainParams,
    "evaluate": EvaluateParams,
    "deploy": DeployParams,
    "http": HttpParams,
}


# Params that choose what runs: written in the definition, never computed from run data.
LITERAL_PARAMS = frozenset({"entrypoint", "shell_interpolation"})

SHELLS = frozenset({"sh", "bash", "dash", "ash", "ksh", "mksh", "zsh"})
# Shell options that take the next argument as their value.
_SHELL_OPTION_ARGS = frozenset({"-o", "+o", "-O", "+O", "--rcfile", "--init-file"})

ARGV_HINT = (
    'pass each value as its own argv element (command: ["echo", {expr: "params.x"}]) or read it '
    'as "$MAESTRO_PARAM_X" in a literal command'
)


def secret_references(spec: BaseModel) -> list[tuple[tuple[str | int, ...], str]]:
    """The secrets a step's validated params name, each with its location in the params."""
    if isinstance(spec, ShellParams):
        return [
            (("env", key, "secret"), value.secret)
            for key, value in spec.env.items()
            if isinstance(value, SecretRef)
        ]
    if isinstance(spec, HttpParams):
        return [
            (("headers", key, "secret"), value.secret)
            for key, value in spec.headers.items()
            if isinstance(value, HeaderSecret)
        ]
    return [(("secrets", i), name) for i, name in enumerate(getattr(spec, "secrets", ()))]


def check_step_params(step_type: str, params: dict[str, Any]) -> list[Problem]:
    """Problems with a step's params; a param holding an expression is type-checked when it runs,
    after the expression is evaluated (unknown params are refused either way)."""
    problems = unsafe_params(step_type, params)
    try:
        STEP_TYPES[step_type].model_validate(params)
    except ValidationError as exc:
        dynamic = {loc[0] for loc, _ in find_expressions(params)}
        problems += [
            Problem(
                loc=tuple(err["loc"]),
                msg=err["msg"].removeprefix("Value error, "),
                type=err["type"],
            )
            for err in exc.errors(include_url=False)
            if err["type"] == "extra_forbidden" or err["loc"][0] not in dynamic
        ]
    return problems


def unsafe_params(step_type: str, params: dict[str, Any]) -> list[Problem]:
    """Expressions where run data would choose the code that runs: an expression in a literal-only
    param, or shell text built by one (checked at registration and again before a step runs)."""
    problems = [
        Problem(
            (name,),
            f"{name} cannot be an expression: the definition chooses what runs, never run params"
            + (" (pass values through `args`)" if name == "entrypoint" else ""),
            "expression_not_allowed",
        )
        for name in sorted(LITERAL_PARAMS & params.keys())
        if find_expressions(params[name])
    ]
    if step_type == "shell":
        problems += _shell_text_problems(params)
    return problems


def _shell_text_problems(params: dict[str, Any]) -> list[Problem]:
    command = params.get("command")
    opted_in = params.get("shell_interpolation") is True
    if is_expr(command):
        reason = shell_text_problem(command["expr"], opted_in)
        return [Problem(("command",), reason, "shell_injection")] if reason else []
    if not isinstance(command, list):
        return []
    script = shell_script_index(command)
    problems = []
    if command and is_expr(command[0]):
        problems.append(
            Problem(
                ("command", 0),
                "the program (the first argv element) cannot be an expression: the definition "
                "chooses what runs, never run params",
                "shell_injection",
            )
        )
        script = None
    for i, arg in enumerate(command[: script + 1] if script is not None else []):
        if not is_expr(arg):
            continue
        if i == script and _runs_string(command[1:i]):
            reason = shell_text_problem(arg["expr"], opted_in)
        else:
            reason = (
                f"a shell's options and script cannot be expressions (they would run data as "
                f"shell code); pass values after the script, where the shell sees them as "
                f"$1, $2, ...: {command[0]} -c 'echo \"$1\"' sh VALUE"
            )
        if reason:
            problems.append(Problem(("command", i), reason, "shell_injection"))
    return problems


def shell_text_problem(source: str, opted_in: bool) -> str | None:
    """Why the CEL expression `source` cannot build shell text, or None when it can: only with
    `shell_interpolation: true`, as string literals and `shell_quote(...)` calls joined by `+`,
    each call where the shell reads one plain word."""
    if not opted_in:
        return (
            f"a shell command built by a CEL expression would turn run params into shell syntax; "
            f"{ARGV_HINT} (or set shell_interpolation: true and wrap every value in "
            f"shell_quote())"
        )
    parts = quoted_concatenation(source)
    if parts is None:
        return (
            "with shell_interpolation, the command must be string literals and shell_quote(...) "
            "calls joined by + (every value quoted, nothing else computed); " + ARGV_HINT
        )
    return quoting_context_problem(parts)


def quoting_context_problem(parts: list[str | None]) -> str | None:
    """Why a word from shell_quote() at a None in `parts` (shell text around it) might not stay
    one literal argument to /bin/sh, or None when each one does. Conservative: it refuses some
    safe spots rather than follow every shell rule."""
    state, escaped, previous, heredoc = "plain", False, "", False
    command = ""  # the plain text of the current simple command, up to here
    expansions = 0  # open `${...}`, whose braces do not end a command
    for part in parts:
        if part is None:
            where = _unsafe_spot(state, escaped, previous, heredoc, command)
            if where:
                return f"shell_quote() is {where}; {ARGV_HINT}"
            previous, command = "'", command + " 'value'"
            continue
        for ch in part:
            if escaped:
                escaped = False
            elif ch == "\\" and state in ("plain", "double", "ansi", "backtick"):
                escaped = True
            elif state == "plain":
                state = _PLAIN_OPENS.get(ch, "plain")
                if ch == "'" and previous == "$":
                    state = "ansi"
                heredoc = heredoc or (ch == "<" and previous == "<")
            elif state == "double" and (ch == "`" or (ch == "(" and previous == "$")):
                state = "nested"  # quoting inside `$(...)` in "..." is beyond this check
            elif ch == _CLOSES.get(state):
                state = "plain"
            if state == "plain" and ch == "{" and previous == "$":
                expansions += 1
            elif state == "plain" and ch == "}" and expansions:
                expansions -= 1
            elif state == "plain" and ch in _COMMAND_ENDS:
                command = ""
                previous = ch
                continue
            command += ch
            previous = ch
    return None


_PLAIN_OPENS = {"'": "single", '"': "double", "`": "backtick", "#": "comment"}
_CLOSES = {"single": "'", "double": '"', "ansi": "'", "backtick": "`", "comment": "\n"}
_COMMAND_ENDS = frozenset(";|&(){}\n!")
_ASSIGNMENT = re.compile(r"[A-Za-z_]\w*=")
# Words after which the next word still names the command.
_RESERVED = frozenset({"!", "if", "then", "else", "elif", "do", "while", "until", "time"})
# Programs that run their arguments as shell code or as another command.
_RUNNERS = frozenset(
    {"eval", "exec", "command", "builtin", "env", "nohup", "nice", "sudo", "su", "xargs"}
    | {"timeout", "stdbuf", "setsid", "watch", "ssh"}
)
_SPOTS = {
    "single": "inside '...', where the value's own quotes would end the quoting",
    "double": 'inside "...", where the shell would still expand $(...) in the value',
    "ansi": "inside $'...', where backslashes in the value would be escapes",
    "backtick": "inside `...`, whose text the shell reads again as code",
    "comment": "in a # comment, which a newline in the value would end",
    "nested": 'after a $(...) or `...` opened inside "...", where quoting is not checked',
}


def _unsafe_spot(
    state: str, escaped: bool, previous: str, heredoc: bool, command: str
) -> str | None:
    if state != "plain":
        return _SPOTS[state]
    if escaped:
        return "right after a backslash, which would escape its opening quote"
    if previous == "$":
        return "right after $, which would make the value an expansion"
    if heredoc:
        return "after a here-document (<<), whose body the shell expands"
    words = command.split()
    while words and (words[0] in _RESERVED or _ASSIGNMENT.match(words[0])):
        words.pop(0)
    if not words:
        return "where a command name goes, so the value would choose the program"
    program = PurePosixPath(words[0]).name
    if program in _RUNNERS or (program in SHELLS and _runs_string(words[1:])):
        return f"an argument of `{program}`, which runs its arguments as code or as a command"
    return None


def shell_script_index(command: list[Any]) -> int | None:
    """Where the script (or `-c` string) of a shell argv (`sh -e -c SCRIPT ARGS...`) is: values
    up to it are shell code or options, values after it the script's $1, $2, ..."""
    if not command or not isinstance(command[0], str):
        return None
    if PurePosixPath(command[0]).name not in SHELLS:
        return None
    i = 1
    while i < len(command):
        arg = command[i]
        if not isinstance(arg, str) or not arg.startswith(("-", "+")):
            return i
        if arg in ("-", "--"):
            return min(i + 1, len(command) - 1)
        i += 2 if arg in _SHELL_OPTION_ARGS else 1
    return len(command) - 1


def _runs_string(options: list[Any]) -> bool:
    return any(
        isinstance(o, str) and re.fullmatch(r"-[A-Za-z]*c[A-Za-z]*", o) is not None for o in options
    )
