"""Workflow definitions: the one schema for request bodies, stored versions and workflow input."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import timedelta
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from maestro import expression_limits
from maestro.branches import BRANCH_PATTERN, SEPARATOR, BranchName
from maestro.dag import find_cycle
from maestro.durations import Duration
from maestro.errors import DefinitionInvalid, ParamsInvalid, Problem
from maestro.expressions import (
    RUN_ROOTS,
    TRIGGER_ROOTS,
    ExpressionError,
    compile_expression,
    find_expressions,
    is_expr,
    validate_source,
)
from maestro.steps import STEP_TYPES, check_step_params

WORKFLOW_ID_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,127}$"
# A stored workflow's id: a definition id, `@<branch>` outside prod (maestro.branches).
STORED_WORKFLOW_ID_PATTERN = rf"{WORKFLOW_ID_PATTERN[:-1]}(?:{SEPARATOR}{BRANCH_PATTERN[1:-1]})?$"
STEP_ID_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"
# Cron macros and the five-field expression each stands for.
CRON_MACROS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
}
_CRON_NAMES = {
    3: {"JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"},
    4: {"SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"},
}


# Each cron field's name and the numbers it allows (day-of-week 7 is Sunday, as 0 is).
_CRON_FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day-of-month", 1, 31),
    ("month", 1, 12),
    ("day-of-week", 0, 7),
)


def _cron_out_of_range(fields: list[str]) -> list[str]:
    """What in five cron fields (of allowed characters) is out of its field's range."""
    problems = []
    for part, (name, low, high) in zip(fields, _CRON_FIELDS, strict=True):
        for item in part.split(","):
            base, _, step = item.partition("/")
            numbers = [int(n) for n in base.split("-") if n.isdigit()]
            bad = [n for n in numbers if not low <= n <= high]
            if bad:
                shown = ", ".join(str(n) for n in bad)
                problems.append(f"{name} {shown} is not in {low}-{high}")
            if step.isdigit() and int(step) == 0:
                problems.append(f"{name} step /0 never advances")
    return problems


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _roots(info: ValidationInfo) -> frozenset[str]:
    """The variables expressions may use where the model is validated: the run's, plus a
    composite step's loop variables inside its body (passed as validation context)."""
    context = info.context or {}
    return context.get("roots", RUN_ROOTS)


# -- params -------------------------------------------------------------------------------


class ParamType(StrEnum):
    string = "string"
    integer = "integer"
    number = "number"
    boolean = "boolean"
    object = "object"
    array = "array"


_PY_TYPES: dict[ParamType, tuple[type, ...]] = {
    ParamType.string: (str,),
    ParamType.integer: (int,),
    ParamType.number: (int, float),
    ParamType.boolean: (bool,),
    ParamType.object: (dict,),
    ParamType.array: (list,),
}


def value_fits(kind: ParamType, value: Any) -> bool:
    """Whether `value` (decoded JSON) is of the param type; booleans are not numbers."""
    if isinstance(value, bool) and kind is not ParamType.boolean:
        return False
    return isinstance(value, _PY_TYPES[kind])


class ParamSpec(_Model):
    """A workflow param: its type, and a default unless it is required."""

    type: ParamType = ParamType.string
    default: Any = None
    required: bool = False
    description: str = ""

    @model_validator(mode="after")
    def _default_fits(self) -> ParamSpec:
        if self.default is not None and not value_fits(self.type, self.default):
            raise ValueError(f"default {self.default!r} is not of type {self.type.value}")
        if self.default is None:
            self.required = True  # a param without a default must be supplied at start
        return self


# -- steps --------------------------------------------------------------------------------


class FailureMode(StrEnum):
    fail_after_running = "fail_after_running"
    fail_immediately = "fail_immediately"
    ignore_failure = "ignore_failure"


class RetryPolicy(_Model):
    """How a failed step attempt is retried (becomes the activity's Temporal retry policy)."""

    max_attempts: int = Field(default=3, ge=1, le=100)
    initial_backoff: Duration = timedelta(seconds=1)
    maximum_backoff: Duration | None = timedelta(seconds=60)
    backoff_coefficient: float = Field(default=2.0, ge=1.0, le=100.0)
    non_retryable_error_types: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _backoff_order(self) -> RetryPolicy:
        if self.maximum_backoff is not None and self.maximum_backoff < self.initial_backoff:
            raise ValueError("maximum_backoff must not be shorter than initial_backoff")
        return self


# -- signals --------------------------------------------------------------------------------

SIGNAL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}$"
SignalName = Annotated[str, Field(pattern=SIGNAL_NAME_PATTERN)]
ParamName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")]
WHERE_OPS = ("=", "!=", ">", ">=", "<", "<=", "in")
Scalar = str | int | float | bool


def _check_where(where: dict[str, Any]) -> dict[str, Any]:
    """`{param: value | {op: value}}` with ops from WHERE_OPS; `in` takes a list."""
    for param, condition in where.items():
        if isinstance(condition, dict):
            if not condition:
                raise ValueError(f"condition on {param!r} is empty; use {{op: value}}")
            for op, value in condition.items():
                if op not in WHERE_OPS:
                    raise ValueError(
                        f"unknown operator {op!r} on {param!r}; use one of {', '.join(WHERE_OPS)}"
                    )
                if op == "in":
                    if not isinstance(value, list) or not all(isinstance(v, Scalar) for v in value):
                        raise ValueError(f"'in' on {param!r} takes a list of strings/numbers")
                elif not isinstance(value, Scalar):
                    raise ValueError(f"{op!r} on {param!r} takes a string or a number")
        elif not isinstance(condition, Scalar):
            raise ValueError(
                f"condition on {param!r} must be a string/number or {{op: value}}, "
                f"not {type(condition).__name__}"
            )
    return where


class SignalCondition(_Model):
    """One signal a trigger needs: its name and conditions on its params."""

    name: SignalName
    where: dict[ParamName, Any] = Field(default_factory=dict)

    _where_valid = field_validator("where")(classmethod(lambda cls, v: _check_where(v)))


class WaitFor(_Model):
    """A signal a step waits for before it runs; `where` values may be expressions."""

    name: SignalName
    where: dict[ParamName, Any] = Field(default_factory=dict)
    timeout: Duration | None = None

    @field_validator("where")
    @classmethod
    def _where_valid(cls, where: dict[str, Any]) -> dict[str, Any]:
        literal = {k: v for k, v in where.items() if not is_expr(v)}
        _check_where(literal)
        for value in where.values():
            if is_expr(value):
                validate_source(value["expr"])
        return where


class Emit(_Model):
    """A signal a step publishes when it succeeds; param values may be expressions."""

    name: SignalName
    params: dict[ParamName, Any] = Field(default_factory=dict)

    @field_validator("params")
    @classmethod
    def _params_valid(cls, params: dict[str, Any]) -> dict[str, Any]:
        for key, value in params.items():
            if is_expr(value):
                validate_source(value["expr"])
            elif not isinstance(value, Scalar):
                raise ValueError(f"param {key!r} must be a string/number or {{expr: CEL}}")
        return params


# -- time promises: SLAs and data-freshness expectations ---------------------------------------

CLOCK_PATTERN = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"


def _check_timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(
            f"unknown timezone {value!r} (use an IANA name like 'Europe/Paris')"
        ) from None
    return value


class _OmitUnset(_Model):
    """A model whose optional promise fields (`sla`, `expect`) are left out of its JSON when
    unset, so definitions that do not use them keep their stored form, content hash and
    trigger ids."""

    _omitted_when_unset: ClassVar[tuple[str, ...]] = ("sla", "expect")

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        for name in self._omitted_when_unset:
            if name in data and data[name] in (None, []):
                del data[name]
        return data


class Sla(_Model):
    """A run's promise to finish: within a duration of its cause (signal accepted, scheduled
    time, manual start), or by a wall-clock time (the first `finish_by` at or after the cause,
    in `timezone`)."""

    finish_within: Duration | None = None
    finish_by: str | None = Field(default=None, pattern=CLOCK_PATTERN, description="HH:MM")
    timezone: str = "UTC"

    _timezone_valid = field_validator("timezone")(classmethod(lambda cls, v: _check_timezone(v)))

    @model_validator(mode="after")
    def _one_promise(self) -> Sla:
        if (self.finish_within is None) == (self.finish_by is None):
            raise ValueError("an sla has exactly one of finish_within and finish_by")
        if self.finish_within is not None and self.finish_within < timedelta(seconds=1):
            raise ValueError("finish_within must be at least 1s")
        return self


class Expectation(_Model):
    """Data expected every day: a signal named `signal` (matching `where`) by `by` o'clock in
    `timezone`; if none arrived since that day's midnight, `freshness.missed` is emitted."""

    signal: SignalName
    by: str = Field(pattern=CLOCK_PATTERN, description="HH:MM")
    timezone: str = "UTC"
    where: dict[ParamName, Any] = Field(default_factory=dict)

    _timezone_valid = field_validator("timezone")(classmethod(lambda cls, v: _check_timezone(v)))
    _where_valid = field_validator("where")(classmethod(lambda cls, v: _check_where(v)))


class Step(_Model):
    """A node of the DAG."""

    id: str = Field(pattern=STEP_ID_PATTERN)
    type: str
    params: dict[str, Any] = Field(default_factory=dict)
    depends_on: list[str] = Field(default_factory=list)
    when: str | None = None
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    timeout: Duration | None = None
    heartbeat_timeout: Duration | None = None
    failure_mode: FailureMode = FailureMode.fail_after_running
    task_queue: str | None = Field(default=None, min_length=1, max_length=200)
    wait_for: list[WaitFor] = Field(default_factory=list, max_length=20)
    emits: list[Emit] = Field(default_factory=list, max_length=20)

    @field_validator("when")
    @classmethod
    def _when_compiles(cls, source: str | None, info: ValidationInfo) -> str | None:
        if (info.context or {}).get("body"):
            return source  # in a composite step's body: check_steps knows its variables
        return validate_source(source, _roots(info))


# -- composite steps (foreach, subworkflow, while): their params hold a sub-DAG or a call --------

LOOP_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
# Names a foreach's `as` cannot take: they mean something already.
RESERVED_NAMES = RUN_ROOTS | {"iteration", "iterations", "previous"}
# A foreach refuses, when it runs, more items than this (settings can lower or raise it).
DEFAULT_MAX_ITEMS = 100_000
MAX_WHILE_ITERATIONS = 10_000
MAX_BODY_STEPS = 100


class ForeachFailureMode(StrEnum):
    fail_fast = "fail_fast"  # the first failed iteration stops the others; the step fails
    finish_all = "finish_all"  # every iteration runs; the step fails if any failed
    ignore_failures = "ignore_failures"  # every iteration runs; the step succeeds


class _CompositeParams(_Model):
    @field_validator("steps", check_fields=False)
    @classmethod
    def _body_rules(cls, steps: list[Step]) -> list[Step]:
        for step in steps:
            if step.wait_for or step.emits:
                raise ValueError(
                    f"step {step.id!r}: steps inside a {cls.kind} cannot use wait_for or emits "
                    "(put them on the composite step's neighbours)"
                )
        return steps

    kind: ClassVar[str] = ""


class ForeachParams(_CompositeParams):
    """Runs `steps` (a sub-DAG) once per item of `items`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    kind: ClassVar[str] = "foreach"

    items: str = Field(
        description="CEL: the list to iterate over, e.g. `params.configs`, `range(0, params.n)`"
    )
    as_: str = Field(default="item", alias="as", pattern=LOOP_NAME_PATTERN)
    steps: list[Step] = Field(min_length=1, max_length=MAX_BODY_STEPS)
    max_concurrency: int = Field(default=100, ge=1, le=10_000)
    failure_mode: ForeachFailureMode = ForeachFailureMode.finish_all
    outputs: dict[ParamName, str] = Field(default_factory=dict)

    @field_validator("items")
    @classmethod
    def _items_compile(cls, source: str, info: ValidationInfo) -> str:
        return _check_items(source, _roots(info))

    @field_validator("as_")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name in RESERVED_NAMES:
            raise ValueError(f"{name!r} already names a variable; choose another name")
        return name

    @field_validator("outputs")
    @classmethod
    def _outputs_compile(cls, outputs: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        roots = _roots(info) | {"iterations"}
        for source in outputs.values():
            validate_source(source, roots)
        return outputs

    def body_roots(self, roots: frozenset[str]) -> frozenset[str]:
        """The variables the body's expressions may use."""
        return roots | {"item", "iteration", self.as_}


class SubworkflowVersion(StrEnum):
    active = "active"


class SubworkflowParams(_Model):
    """Runs another registered workflow as a child run; its outputs become this step's."""

    workflow: str = Field(pattern=WORKFLOW_ID_PATTERN)
    version: SubworkflowVersion | Annotated[int, Field(ge=1)] = SubworkflowVersion.active
    params: dict[str, Any] = Field(default_factory=dict)
    wait: bool = True

    @field_validator("params")
    @classmethod
    def _params_compile(cls, params: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        for _, source in find_expressions(params):
            validate_source(source, _roots(info))
        return params


class WhileParams(_CompositeParams):
    """Runs `steps` again and again while `condition` holds, at most `max_iterations` times."""

    kind: ClassVar[str] = "while"

    condition: str
    steps: list[Step] = Field(min_length=1, max_length=MAX_BODY_STEPS)
    max_iterations: int = Field(ge=1, le=MAX_WHILE_ITERATIONS)

    @field_validator("condition")
    @classmethod
    def _condition_compiles(cls, source: str, info: ValidationInfo) -> str:
        return validate_source(source, while_roots(_roots(info)))  # type: ignore[return-value]

    def body_roots(self, roots: frozenset[str]) -> frozenset[str]:
        return while_roots(roots)


def while_roots(roots: frozenset[str]) -> frozenset[str]:
    """What a while's condition and body see: the iteration, the previous one's outputs."""
    return roots | {"iteration", "previous"}


COMPOSITE_TYPES: dict[str, type[_Model]] = {
    "foreach": ForeachParams,
    "subworkflow": SubworkflowParams,
    "while": WhileParams,
}
RANGE_CALL = re.compile(r"^\s*range\s*\((?P<args>.*)\)\s*$", re.S)


def split_range(source: str) -> tuple[str, str] | None:
    """`range(a, b)` -> the sources of a and b (a top-level comma splits them), else None."""
    match = RANGE_CALL.match(source)
    if not match:
        return None
    depth, args = 0, match.group("args")
    for i, ch in enumerate(args):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth < 0:
                return None
        elif ch == "," and depth == 0:
            return args[:i].strip(), args[i + 1 :].strip()
    return None


def _check_items(source: str, roots: frozenset[str]) -> str:
    bounds = split_range(source)
    if bounds is None:
        return validate_source(source, roots)  # type: ignore[return-value]
    for bound in bounds:
        validate_source(bound, roots)
    return source


def composite_params(step: Step, roots: frozenset[str] = RUN_ROOTS) -> Any:
    """A composite step's params as their model (validated already at registration)."""
    return COMPOSITE_TYPES[step.type].model_validate(
        step.params, context={"roots": roots, "body": True}
    )


# -- triggers (validated here; fired by the trigger issues) -----------------------------------


class TimeTrigger(_OmitUnset):
    """Start a run on a cron schedule."""

    cron: str
    timezone: str = "UTC"
    jitter: Duration | None = None
    catchup_window: Duration = timedelta(hours=1)
    sla: Sla | None = None

    @field_validator("cron")
    @classmethod
    def _cron_valid(cls, value: str) -> str:
        text = value.strip()
        if text.startswith("@"):
            if text not in CRON_MACROS:
                raise ValueError(
                    f"unknown cron macro {text!r}; use one of {', '.join(sorted(CRON_MACROS))}"
                )
            return text
        fields = text.split()
        if len(fields) != 5:
            raise ValueError(
                f"cron expression {value!r} has {len(fields)} fields; expected 5 "
                "(minute hour day-of-month month day-of-week)"
            )
        for position, part in enumerate(fields):
            names = _CRON_NAMES.get(position, set())
            letters = {w.upper() for w in re.findall(r"[A-Za-z]+", part)}
            if not re.fullmatch(r"[0-9A-Za-z*/,-]+", part) or not letters <= names:
                raise ValueError(
                    f"cron field {part!r} is not supported: use numbers, names (JAN, MON), "
                    "'*', ',', '-' and '/' (Temporal Schedules do not read L, W, # or ?)"
                )
        out_of_range = _cron_out_of_range(fields)
        if out_of_range:
            raise ValueError(
                f"cron expression {value!r} is out of range: {'; '.join(out_of_range)}"
            )
        if fields[2] != "*" and fields[4] != "*":
            raise ValueError(
                f"cron expression {value!r} restricts both day-of-month and day-of-week: "
                "classic cron (croniter) fires when either matches, Temporal Schedules only "
                "when both do; keep one of them '*' or use two triggers"
            )
        if not croniter.is_valid(text):
            raise ValueError(f"invalid cron expression {value!r}")
        try:
            croniter(text).get_next()
        except CroniterBadDateError:
            raise ValueError(f"cron expression {value!r} never fires") from None
        return text

    _timezone_valid = field_validator("timezone")(classmethod(lambda cls, v: _check_timezone(v)))


class IntervalTrigger(_OmitUnset):
    """Start a run every fixed interval, shifted by `offset`."""

    every: Duration
    offset: Duration = timedelta(0)
    sla: Sla | None = None

    @model_validator(mode="after")
    def _positive(self) -> IntervalTrigger:
        if self.every < timedelta(seconds=1):
            raise ValueError("every must be at least 1s")
        if self.offset >= self.every:
            raise ValueError("offset must be shorter than every")
        return self


def _check_trigger_expression(source: str | None) -> str | None:
    if source is not None:
        try:
            compile_expression(source, TRIGGER_ROOTS)
        except ExpressionError as exc:
            raise ValueError(str(exc)) from None
    return source


class _TriggerRun(_Model):
    """What every signal trigger may add: a condition and the run params, both CEL over the
    triggering signals."""

    when: str | None = None
    params: dict[str, str] = Field(default_factory=dict)

    _when_compiles = field_validator("when")(
        classmethod(lambda cls, v: _check_trigger_expression(v))
    )

    @field_validator("params")
    @classmethod
    def _params_compile(cls, params: dict[str, str]) -> dict[str, str]:
        for source in params.values():
            _check_trigger_expression(source)
        return params


class SignalTriggerSpec(_TriggerRun, _OmitUnset):
    """All of these signals (agreeing on `join_on` params, at most `within` apart) start a run."""

    _omitted_when_unset: ClassVar[tuple[str, ...]] = ("branches",)

    all_of: list[SignalCondition] = Field(min_length=1, max_length=10)
    join_on: list[ParamName] = Field(default_factory=list, max_length=10)
    within: Duration | None = None
    branches: list[BranchName] | None = Field(
        default=None,
        min_length=1,
        max_length=50,
        description="The branches whose deployment of this workflow takes outside signals "
        "(those published without a branch) through this trigger, e.g. `[prod]`; unset: "
        "every branch. Signals of the workflow's own branch always reach it.",
    )

    @model_validator(mode="after")
    def _distinct_names(self) -> SignalTriggerSpec:
        names = [c.name for c in self.all_of]
        if len(set(names)) != len(names):
            raise ValueError("each signal name may appear once in all_of")
        return self


class SignalTrigger(_OmitUnset):
    """Start a run when signals arrive."""

    signal: SignalTriggerSpec
    sla: Sla | None = None


FINISH_STATUSES = ("succeeded", "failed", "stopped", "timed_out")
FinishStatus = Literal["succeeded", "failed", "stopped", "timed_out"]


def _on_success() -> list[FinishStatus]:
    return ["succeeded"]


class OnFinishSpec(_TriggerRun):
    """Start a run when a run of `workflow` ends in one of `status`."""

    workflow: str = Field(pattern=WORKFLOW_ID_PATTERN)
    status: list[FinishStatus] = Field(default_factory=_on_success, min_length=1)


class OnFinishTrigger(_OmitUnset):
    """Start a run when another workflow's run ends (sugar for its completion signal)."""

    on_finish: OnFinishSpec
    sla: Sla | None = None


def _trigger_kind(value: Any) -> str | None:
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if not isinstance(value, dict):
        return None
    for key, kind in (
        ("cron", "time"),
        ("every", "interval"),
        ("signal", "signal"),
        ("on_finish", "on_finish"),
    ):
        if key in value:
            return kind
    return None


Trigger = Annotated[
    Annotated[TimeTrigger, Tag("time")]
    | Annotated[IntervalTrigger, Tag("interval")]
    | Annotated[SignalTrigger, Tag("signal")]
    | Annotated[OnFinishTrigger, Tag("on_finish")],
    Discriminator(
        _trigger_kind,
        custom_error_type="trigger_kind",
        custom_error_message="a trigger has one of the keys cron, every, signal or on_finish",
    ),
]


# -- run strategy ---------------------------------------------------------------------------


class RunStrategyKind(StrEnum):
    sequential = "sequential"
    strict_sequential = "strict_sequential"
    first_only = "first_only"
    last_only = "last_only"
    parallel = "parallel"


class RunStrategy(_Model):
    """How runs of one workflow share the road (enforced by the run-strategy issue)."""

    kind: RunStrategyKind = RunStrategyKind.sequential
    max_concurrency: int = Field(default=1, ge=1, le=10_000)
    max_queued: int | None = Field(default=None, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"kind": value} if isinstance(value, str) else value


# -- workflow -------------------------------------------------------------------------------

MAX_STEPS = 500
MAX_TRIGGERS = 50


class WorkflowDefinition(_OmitUnset):
    """A workflow as pushed by its owner; each distinct body becomes an immutable version."""

    id: str = Field(pattern=WORKFLOW_ID_PATTERN)
    name: str = Field(default="", max_length=200)
    description: str = Field(default="", max_length=10_000)
    owner: str = Field(default="", max_length=200)
    tags: list[Annotated[str, Field(max_length=100)]] = Field(default_factory=list, max_length=50)
    params: dict[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")], ParamSpec] = (
        Field(default_factory=dict)
    )
    steps: list[Step] = Field(min_length=1, max_length=MAX_STEPS)
    timeout: Duration | None = None
    run_strategy: RunStrategy = Field(default_factory=RunStrategy)
    triggers: list[Trigger] = Field(default_factory=list, max_length=MAX_TRIGGERS)
    sla: Sla | None = Field(
        default=None,
        description="Every run's promise to finish (a trigger's own `sla` overrides it)",
    )
    expect: list[Expectation] = Field(
        default_factory=list,
        max_length=20,
        description="Data-arrival signals expected every day by a time (freshness)",
    )
    allow_trigger_loop: bool = Field(
        default=False,
        description="Allow triggers that, through completion or emitted signals, start this "
        "workflow again (otherwise rejected with the loop named)",
    )

    def step(self, step_id: str) -> Step:
        return next(s for s in self.steps if s.id == step_id)

    def content_hash(self) -> str:
        """Stable hash of the normalised definition: equal bodies give equal hashes."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


# RunWorkflow may evaluate every step's `when` in one workflow task, which Temporal's deadlock
# detector gives 2 s: the steps' `when` expressions together may cost this much (four
# expressions at the limit, each well under 50 ms on a 2-core machine).
MAX_WHEN_COST = 4 * expression_limits.MAX_COST


def _when_cost(definition: WorkflowDefinition) -> int:
    """The worst-case cost of evaluating every step's `when` (those within their own limit)."""
    total = 0
    for step in definition.steps:
        if step.when:
            try:
                analysis = expression_limits.analyze(step.when, RUN_ROOTS)
                total += expression_limits.check_total([analysis])
            except expression_limits.LimitExceeded:
                pass  # refused on its own, at steps[i].when
    return total


def check_definition(definition: WorkflowDefinition) -> list[Problem]:
    """Rules that span fields: step ids, dependencies, cycles, step types and their params
    (composite steps' bodies included)."""
    problems = check_steps(definition.steps, ("steps",), RUN_ROOTS)
    when_cost = _when_cost(definition)
    if when_cost > MAX_WHEN_COST:
        problems.append(
            Problem(
                ("steps",),
                f"the steps' `when` expressions together may cost up to {when_cost:,} units to "
                f"evaluate; the limit is {MAX_WHEN_COST:,} (simplify them, or compute the "
                "condition in an upstream step and test its output)",
                "expression_limit",
            )
        )
    for i, trigger in enumerate(definition.triggers):
        mapping = None
        if isinstance(trigger, SignalTrigger):
            mapping, loc = trigger.signal.params, ("triggers", i, "signal", "params")
        elif isinstance(trigger, OnFinishTrigger):
            mapping, loc = trigger.on_finish.params, ("triggers", i, "on_finish", "params")
        for name in mapping or {}:
            if name not in definition.params:
                known = ", ".join(sorted(definition.params)) or "none"
                problems.append(
                    Problem(
                        (*loc, name),
                        f"trigger maps to unknown param {name!r} (this workflow's params: {known})",
                        "unknown_param",
                    )
                )
    return problems


def check_steps(
    steps: list[Step], at: tuple[str | int, ...], roots: frozenset[str], *, body: bool = False
) -> list[Problem]:
    """The cross-field rules of one DAG (the workflow's, or a composite step's `body` at `at`),
    whose expressions may use `roots`."""
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for i, step in enumerate(steps):
        if step.id in seen:
            problems.append(
                Problem(
                    (*at, i, "id"),
                    f"duplicate step id {step.id!r} (first used by {at[-1]}[{seen[step.id]}])",
                    "duplicate_id",
                )
            )
        else:
            seen[step.id] = i
    for i, step in enumerate(steps):
        for j, dep in enumerate(step.depends_on):
            if dep not in seen:
                problems.append(
                    Problem(
                        (*at, i, "depends_on", j),
                        f"step {step.id!r} depends on unknown step {dep!r}",
                        "unknown_step",
                    )
                )
        if body and step.when is not None:
            try:
                compile_expression(step.when, roots)
            except ExpressionError as exc:
                problems.append(Problem((*at, i, "when"), str(exc), "value_error"))
        if step.type in COMPOSITE_TYPES:
            problems += _check_composite(step, (*at, i), roots)
            continue
        if step.type not in STEP_TYPES:
            known = sorted([*STEP_TYPES, *COMPOSITE_TYPES])
            problems.append(
                Problem(
                    (*at, i, "type"),
                    f"unknown step type {step.type!r}; known types: {', '.join(known)}",
                    "unknown_step_type",
                )
            )
        else:
            problems += [
                Problem((*at, i, "params", *p.loc), p.msg, p.type)
                for p in check_step_params(step.type, step.params)
            ]
        for loc, source in find_expressions(step.params):
            try:
                compile_expression(source, roots)
            except ExpressionError as exc:
                problems.append(
                    Problem((*at, i, "params", *loc, "expr"), str(exc), "expression_invalid")
                )
    if not any(p.type == "unknown_step" for p in problems):
        cycle = find_cycle({s.id: s.depends_on for s in steps})
        if cycle:
            problems.append(
                Problem(at, f"dependency cycle: {' -> '.join(cycle)}", "cycle", {"cycle": cycle})
            )
    return problems


def _check_composite(step: Step, at: tuple[str | int, ...], roots: frozenset[str]) -> list[Problem]:
    """A composite step's params, then its body as a DAG of its own."""
    try:
        spec = composite_params(step, roots)
    except ValidationError as exc:
        return problems_from_validation(exc, (*at, "params"))
    if isinstance(spec, SubworkflowParams):
        return []
    return check_steps(spec.steps, (*at, "params", "steps"), spec.body_roots(roots), body=True)


def parse_definition(data: Any) -> WorkflowDefinition:
    """Validate a definition body completely, or raise DefinitionInvalid with every problem:
    those of single fields and those that span fields, in one answer."""
    try:
        # Strict, in JSON mode: a value is taken only in the JSON type the schema gives it (no
        # "1" for 1, no 0 for false), and enums and times from their JSON spellings.
        definition = WorkflowDefinition.model_validate_json(json.dumps(data), strict=True)
    except ValidationError as exc:
        problems = problems_from_validation(exc)
        raise DefinitionInvalid(
            "workflow definition is invalid", problems + _spanning_problems(data, problems)
        ) from None
    problems = check_definition(definition)
    if problems:
        raise DefinitionInvalid("workflow definition is invalid", problems)
    return definition


def _spanning_problems(data: Any, reported: list[Problem]) -> list[Problem]:
    """The cross-field problems of a body that failed field validation, checked on what can be
    read of it; none at or under a location already reported (its content is unreliable)."""
    salvaged = _salvage(data)
    if salvaged is None:
        return []
    return [
        problem
        for problem in check_definition(salvaged)
        if not any(problem.loc[: len(p.loc)] == p.loc for p in reported)
    ]


_TRIGGER = TypeAdapter(Trigger)


def _salvage(data: Any) -> WorkflowDefinition | None:
    """An unvalidated definition holding what `check_definition` reads (step ids, types,
    params, dependencies; param names; triggers), each step at its own index."""
    if not isinstance(data, dict):
        return None
    raw_steps = data.get("steps")
    raw_params = data.get("params")
    raw_triggers = data.get("triggers")
    if not isinstance(raw_steps, list) or not raw_steps or len(raw_steps) > MAX_STEPS:
        raw_steps = []
    if not isinstance(raw_triggers, list) or len(raw_triggers) > MAX_TRIGGERS:
        raw_triggers = []
    if not isinstance(raw_params, dict):
        raw_params = {}
    return WorkflowDefinition.model_construct(
        id=str(data.get("id")),
        steps=[_salvage_step(i, raw) for i, raw in enumerate(raw_steps)],
        params={name: ParamSpec() for name in raw_params if isinstance(name, str)},
        triggers=[_salvage_trigger(raw) for raw in raw_triggers],
    )


def _salvage_trigger(raw: Any) -> Any:
    """The trigger if it is valid, else one that maps no params (keeping later indices)."""
    try:
        return _TRIGGER.validate_python(raw)
    except ValidationError:
        return IntervalTrigger.model_construct()


def _salvage_step(index: int, raw: Any) -> Step:
    """The step if it is valid, else what can be read of it (an id nothing can name, when
    it has none)."""
    try:
        return Step.model_validate(raw)
    except ValidationError:
        pass
    if not isinstance(raw, dict):
        raw = {}
    step_id, step_type = raw.get("id"), raw.get("type")
    params, depends_on = raw.get("params"), raw.get("depends_on")
    if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
        params = {}
    return Step.model_construct(
        id=step_id if isinstance(step_id, str) else f"steps[{index}]",
        type=step_type if isinstance(step_type, str) else "",
        params=params,
        depends_on=[d for d in depends_on if isinstance(d, str)]
        if isinstance(depends_on, list)
        else [],
    )


def problems_from_validation(exc: ValidationError, prefix: tuple = ()) -> list[Problem]:
    """Pydantic's errors as Problems (location, message, type)."""
    return [
        Problem((*prefix, *err["loc"]), err["msg"].removeprefix("Value error, "), err["type"])
        for err in exc.errors(include_url=False)
    ]


def resolve_run_params(definition: WorkflowDefinition, supplied: dict[str, Any]) -> dict[str, Any]:
    """The run's params: supplied values checked against the definition, defaults filled in."""
    problems: list[Problem] = []
    for name, value in supplied.items():
        spec = definition.params.get(name)
        if spec is None:
            known = ", ".join(sorted(definition.params)) or "none"
            problems.append(
                Problem(
                    ("params", name),
                    f"unknown param {name!r} (this workflow's params: {known})",
                    "unknown_param",
                )
            )
        elif not value_fits(spec.type, value):
            problems.append(
                Problem(
                    ("params", name),
                    f"expected {spec.type.value}, got {type(value).__name__} {value!r}",
                    "param_type",
                )
            )
    resolved: dict[str, Any] = {}
    for name, spec in definition.params.items():
        if name in supplied:
            resolved[name] = supplied[name]
        elif spec.default is not None:
            resolved[name] = spec.default
        elif spec.required:
            problems.append(
                Problem(("params", name), f"required param {name!r} is missing", "missing")
            )
    if problems:
        raise ParamsInvalid("run params are invalid", problems)
    return resolved


TriggerKind = Literal["manual", "time", "signal"]
