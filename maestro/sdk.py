"""The Python authoring API: workflows, steps and triggers written in Python and built into the
same `WorkflowDefinition` the REST API takes (sugar over `maestro.definitions`, not a format).

    from maestro.sdk import Param, StepContext, Workflow, cron, expr, signal

    wf = Workflow(
        "daily-report",
        owner="team-data",
        params={"dt": Param(str)},
        triggers=[signal("orders.loaded", where={"rows": {">": 0}}), cron("0 7 * * *")],
    )

    @wf.step
    def build(ctx: StepContext) -> dict[str, object]:
        return {"rows": 3}

    publish = wf.shell("publish", ["echo", expr("params.dt")], depends_on=[build])

Step functions are module-level functions of the flow's file or package; each becomes a
`python` (or `train`/`evaluate`) step whose entrypoint is `<module>:<function>`, the module
named relative to the flow's root (see `load`).
"""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any, Generic, Literal, TypedDict, TypeVar, Unpack, overload

from maestro.context import StepContext
from maestro.definitions import (
    Emit,
    Expectation,
    RetryPolicy,
    RunStrategy,
    SignalCondition,
    Sla,
    WaitFor,
    WorkflowDefinition,
    parse_definition,
)
from maestro.durations import format_duration
from maestro.errors import FlowInvalid, Problem
from maestro.steps import ChampionCheck

__all__ = [
    "ChampionCheck",
    "Emit",
    "Expectation",
    "Loaded",
    "Param",
    "PythonStep",
    "RetryPolicy",
    "RunStrategy",
    "SignalCondition",
    "Sla",
    "StepContext",
    "StepRef",
    "WaitFor",
    "Workflow",
    "cron",
    "emit",
    "every",
    "expect",
    "expr",
    "load",
    "on_finish",
    "retry",
    "signal",
    "sla",
    "wait_for",
]

Duration = str | int | float | timedelta
Outputs = Mapping[str, Any] | None
StepFunction = Callable[[StepContext], Outputs] | Callable[[StepContext], Awaitable[Outputs]]
F = TypeVar("F", bound=StepFunction)

_PARAM_TYPES: dict[Any, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    dict: "object",
    list: "array",
}
# Workflows in the order they were created (a flow lists them in that order).
_created = itertools.count()


def expr(source: str) -> dict[str, str]:
    """A value computed when the step runs: `{"expr": source}` (CEL over params, steps, ...)."""
    return {"expr": source}


def _set(target: dict[str, Any], /, **values: Any) -> dict[str, Any]:
    """`target` with the values that were given (not None): defaults stay the models' own.
    Durations given as timedeltas are written as definitions spell them ("90s")."""
    target.update(
        {
            k: format_duration(v) if isinstance(v, timedelta) else v
            for k, v in values.items()
            if v is not None
        }
    )
    return target


@dataclass(frozen=True)
class Param:
    """A workflow param: `Param(int, default=8)`; without a default it is required."""

    type: type | str = str
    default: Any = None
    description: str = ""

    def spec(self) -> dict[str, Any]:
        kind = self.type if isinstance(self.type, str) else _PARAM_TYPES.get(self.type)
        if kind is None:
            raise FlowInvalid(
                f"param type {self.type!r} is not supported; use str, int, float, bool, dict "
                "or list"
            )
        return _set({"type": kind}, default=self.default, description=self.description or None)


def retry(
    max_attempts: int | None = None,
    *,
    initial_backoff: Duration | None = None,
    maximum_backoff: Duration | None = None,
    backoff_coefficient: float | None = None,
    non_retryable_error_types: Sequence[str] = (),
) -> RetryPolicy:
    """A step's retry policy (unset fields keep their defaults)."""
    return RetryPolicy.model_validate(
        _set(
            {},
            max_attempts=max_attempts,
            initial_backoff=initial_backoff,
            maximum_backoff=maximum_backoff,
            backoff_coefficient=backoff_coefficient,
            non_retryable_error_types=list(non_retryable_error_types) or None,
        )
    )


def sla(
    *,
    finish_within: Duration | None = None,
    finish_by: str | None = None,
    timezone: str | None = None,
) -> Sla:
    """A run's promise to finish: within a duration of its cause, or by `HH:MM` in `timezone`."""
    return Sla.model_validate(
        _set({}, finish_within=finish_within, finish_by=finish_by, timezone=timezone)
    )


def expect(
    signal: str, *, by: str, timezone: str | None = None, where: Mapping[str, Any] | None = None
) -> Expectation:
    """Data expected every day: `signal` (matching `where`) by `HH:MM` in `timezone`."""
    return Expectation.model_validate(
        _set({"signal": signal, "by": by}, timezone=timezone, where=dict(where) if where else None)
    )


# -- triggers ---------------------------------------------------------------------------------


def signal(
    *signals: str | SignalCondition,
    where: Mapping[str, Any] | None = None,
    join_on: Sequence[str] = (),
    within: Duration | None = None,
    params: Mapping[str, str] | None = None,
    when: str | None = None,
    sla: Sla | None = None,
    branches: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Start a run when all of these signals arrive (agreeing on `join_on`, at most `within`
    apart); `where` filters a single signal given by name; `params` maps signal data (CEL over
    `signal`, `signals`) into run params; `branches` (e.g. `["prod"]`) limits which branches'
    deployments take signals published from outside."""
    if not signals:
        raise FlowInvalid("signal() needs at least one signal name")
    if where is not None and (len(signals) != 1 or not isinstance(signals[0], str)):
        raise FlowInvalid(
            "signal(where=...) filters one signal given by name; for several, pass "
            "SignalCondition(name=..., where=...) for each"
        )
    all_of = [
        {"name": s, **({"where": dict(where)} if where else {})}
        if isinstance(s, str)
        else s.model_dump(mode="json", exclude_defaults=True)
        for s in signals
    ]
    spec = _set(
        {"all_of": all_of},
        join_on=list(join_on) or None,
        within=within,
        params=dict(params) if params else None,
        when=when,
        branches=list(branches) if branches is not None else None,
    )
    return _set({"signal": spec}, sla=sla)


def on_finish(
    workflow: str | Workflow,
    *,
    status: Sequence[Literal["succeeded", "failed", "stopped", "timed_out"]] | None = None,
    params: Mapping[str, str] | None = None,
    when: str | None = None,
    sla: Sla | None = None,
) -> dict[str, Any]:
    """Start a run when a run of `workflow` ends in one of `status` (default: succeeded)."""
    target = workflow.id if isinstance(workflow, Workflow) else workflow
    spec = _set(
        {"workflow": target},
        status=list(status) if status else None,
        params=dict(params) if params else None,
        when=when,
    )
    return _set({"on_finish": spec}, sla=sla)


def cron(
    expression: str,
    *,
    timezone: str | None = None,
    jitter: Duration | None = None,
    catchup_window: Duration | None = None,
    sla: Sla | None = None,
) -> dict[str, Any]:
    """Start a run on a cron schedule (five fields or a macro like `@daily`), in `timezone`."""
    return _set(
        {"cron": expression},
        timezone=timezone,
        jitter=jitter,
        catchup_window=catchup_window,
        sla=sla,
    )


def every(
    interval: Duration, *, offset: Duration | None = None, sla: Sla | None = None
) -> dict[str, Any]:
    """Start a run every `interval` (e.g. `"15m"`), shifted by `offset`."""
    return _set({"every": interval}, offset=offset, sla=sla)


# -- steps --------------------------------------------------------------------------------------


def emit(name: str, params: Mapping[str, Any] | None = None) -> Emit:
    """A signal the step publishes when it succeeds; param values may be `expr(...)`."""
    return Emit(name=name, params=dict(params or {}))


def wait_for(
    name: str, where: Mapping[str, Any] | None = None, timeout: Duration | None = None
) -> WaitFor:
    """A signal the step waits for before it runs; `where` values may be `expr(...)`."""
    return WaitFor.model_validate(_set({"name": name, "where": dict(where or {})}, timeout=timeout))


class StepOptions(TypedDict, total=False):
    """What every step may add to its params."""

    depends_on: Sequence[StepRef | str]
    when: str
    retry: RetryPolicy | int
    timeout: Duration
    heartbeat_timeout: Duration
    failure_mode: Literal["fail_after_running", "fail_immediately", "ignore_failure"]
    task_queue: str
    wait_for: Sequence[WaitFor | str]
    emits: Sequence[Emit | str]


class StepRef:
    """A step of a workflow (or of a composite step's body): pass it in `depends_on`."""

    def __init__(
        self, step_id: str, step_type: str, params: Mapping[str, Any], options: StepOptions
    ) -> None:
        self.id = step_id
        self.type = step_type
        self._params = dict(params)
        self._options = options

    def __repr__(self) -> str:
        return f"<{self.type} step {self.id!r}>"

    def params(self) -> dict[str, Any]:
        """The step's params as the definition holds them."""
        return self._params

    def build(self) -> dict[str, Any]:
        """The step as a definition's `steps` entry (validated with the whole definition)."""
        options = self._options
        data: dict[str, Any] = {"id": self.id, "type": self.type}
        params = self.params()
        if params:
            data["params"] = params
        if options.get("depends_on"):
            data["depends_on"] = [d if isinstance(d, str) else d.id for d in options["depends_on"]]
        retry = options.get("retry")
        if isinstance(retry, int):
            data["retry"] = {"max_attempts": retry}
        elif retry is not None:
            data["retry"] = retry.model_dump(mode="json", exclude_unset=True)
        _set(
            data,
            when=options.get("when"),
            timeout=options.get("timeout"),
            heartbeat_timeout=options.get("heartbeat_timeout"),
            failure_mode=options.get("failure_mode"),
            task_queue=options.get("task_queue"),
        )
        if options.get("wait_for"):
            data["wait_for"] = [
                {"name": w} if isinstance(w, str) else w.model_dump(mode="json", exclude_unset=True)
                for w in options["wait_for"]
            ]
        if options.get("emits"):
            data["emits"] = [
                {"name": e} if isinstance(e, str) else e.model_dump(mode="json", exclude_unset=True)
                for e in options["emits"]
            ]
        return data


class PythonStep(StepRef, Generic[F]):
    """A step that calls a Python function; calling it calls the function (for tests)."""

    def __init__(
        self,
        fn: F,
        step_id: str,
        step_type: str,
        params: Mapping[str, Any],
        options: StepOptions,
    ) -> None:
        super().__init__(step_id, step_type, params, options)
        self.fn = fn

    def __call__(self, ctx: StepContext) -> Any:
        return self.fn(ctx)

    @property
    def entrypoint(self) -> str:
        """`<module>:<function>`, the module as the flow's code package names it."""
        return entrypoint_of(self.fn)

    def params(self) -> dict[str, Any]:
        return {"entrypoint": self.entrypoint, **self._params}


def entrypoint_of(fn: Callable[..., Any]) -> str:
    """A module-level function's `<module>:<function>`."""
    name = getattr(fn, "__qualname__", "")
    module = getattr(fn, "__module__", None)
    if not module or "." in name or "<" in name:
        raise FlowInvalid(
            f"step function {name or fn!r} must be a function defined at the top level of a "
            "module (not a lambda, a method or a nested function)"
        )
    if module == "__main__":
        raise FlowInvalid(
            f"step function {name!r} is in __main__; load the flow with maestro.sdk.load() "
            "(or `maestro deploy`) instead of running it as a script"
        )
    return f"{module}:{name}"


class _Steps:
    """A DAG under construction: a workflow's steps, or a composite step's body."""

    def __init__(self) -> None:
        self._steps: list[StepRef] = []

    @property
    def steps(self) -> list[StepRef]:
        return list(self._steps)

    def _add(self, step: StepRef) -> None:
        if any(s.id == step.id for s in self._steps):
            raise FlowInvalid(f"step id {step.id!r} is used twice")
        self._steps.append(step)

    def add(self, step: StepRef) -> StepRef:
        """Add a step built elsewhere."""
        self._add(step)
        return step

    def _function_step(
        self,
        fn: F | PythonStep[F],
        step_id: str | None,
        step_type: str,
        params: dict[str, Any],
        options: StepOptions,
    ) -> PythonStep[F]:
        function: F = fn.fn if isinstance(fn, PythonStep) else fn
        step = PythonStep(function, step_id or function.__name__, step_type, params, options)
        self._add(step)
        return step

    @overload
    def step(
        self,
        fn: F,
        /,
        *,
        id: str | None = None,
        args: Mapping[str, Any] | None = None,
        secrets: Sequence[str] = (),
        **options: Unpack[StepOptions],
    ) -> PythonStep[F]: ...

    @overload
    def step(
        self,
        fn: None = None,
        /,
        *,
        id: str | None = None,
        args: Mapping[str, Any] | None = None,
        secrets: Sequence[str] = (),
        **options: Unpack[StepOptions],
    ) -> Callable[[F], PythonStep[F]]: ...

    def step(
        self,
        fn: F | None = None,
        /,
        *,
        id: str | None = None,
        args: Mapping[str, Any] | None = None,
        secrets: Sequence[str] = (),
        **options: Unpack[StepOptions],
    ) -> PythonStep[F] | Callable[[F], PythonStep[F]]:
        """A `python` step calling the decorated function with a StepContext (`ctx.args` are
        `args`); it returns a dict of outputs. `@wf.step` or `@wf.step(depends_on=[...])`."""
        params = _set({}, args=dict(args) if args else None, secrets=list(secrets) or None)

        def decorate(function: F) -> PythonStep[F]:
            return self._function_step(function, id, "python", params, options)

        return decorate if fn is None else decorate(fn)

    def train(
        self,
        *,
        model_name: str,
        id: str | None = None,
        data: str | dict[str, str] | None = None,
        args: Mapping[str, Any] | None = None,
        secrets: Sequence[str] = (),
        **options: Unpack[StepOptions],
    ) -> Callable[[F], PythonStep[F]]:
        """A `train` step: the function trains on `ctx.data`, writes the model under
        `ctx.artifact_dir` and returns `{"model": <path>, "metrics": {...}}`; the model becomes
        a new version of `model_name` in the registry."""
        params = _set(
            {"model_name": model_name},
            data=data,
            args=dict(args) if args else None,
            secrets=list(secrets) or None,
        )
        return lambda fn: self._function_step(fn, id, "train", params, options)

    def evaluate(
        self,
        *,
        model_name: str,
        model_version: int | dict[str, str],
        id: str | None = None,
        data: str | dict[str, str] | None = None,
        args: Mapping[str, Any] | None = None,
        gates: Sequence[str] = (),
        better_than: ChampionCheck | None = None,
        secrets: Sequence[str] = (),
        **options: Unpack[StepOptions],
    ) -> Callable[[F], PythonStep[F]]:
        """An `evaluate` step: the function scores `ctx.model_path` on `ctx.data` and returns
        `{"metrics": {...}}`; `gates` (`"accuracy >= 0.9"`) and `better_than` (the model in a
        stage) fail the step."""
        params = _set(
            {"model_name": model_name, "model_version": model_version},
            data=data,
            args=dict(args) if args else None,
            gates=list(gates) or None,
            better_than=better_than.model_dump(mode="json", exclude_unset=True)
            if better_than
            else None,
            secrets=list(secrets) or None,
        )
        return lambda fn: self._function_step(fn, id, "evaluate", params, options)

    def _builtin(
        self, step_id: str, step_type: str, params: dict[str, Any], options: StepOptions
    ) -> StepRef:
        step = StepRef(step_id, step_type, params, options)
        self._add(step)
        return step

    def shell(
        self,
        id: str,
        command: str | Sequence[str | dict[str, str]],
        *,
        env: Mapping[str, str | dict[str, str]] | None = None,
        shell_interpolation: bool | None = None,
        tail_lines: int | None = None,
        **options: Unpack[StepOptions],
    ) -> StepRef:
        """A `shell` step: an argv list (values stay data), or a string for `/bin/sh -c`."""
        params = _set(
            {"command": command if isinstance(command, str) else list(command)},
            env=dict(env) if env else None,
            shell_interpolation=shell_interpolation,
            tail_lines=tail_lines,
        )
        return self._builtin(id, "shell", params, options)

    def sleep(self, id: str, seconds: float, **options: Unpack[StepOptions]) -> StepRef:
        """A `sleep` step."""
        return self._builtin(id, "sleep", {"seconds": seconds}, options)

    def noop(
        self, id: str, outputs: Mapping[str, Any] | None = None, **options: Unpack[StepOptions]
    ) -> StepRef:
        """A `noop` step; `outputs` become its outputs."""
        return self._builtin(
            id, "noop", _set({}, outputs=dict(outputs) if outputs else None), options
        )

    def deploy(
        self,
        id: str,
        *,
        model_name: str,
        model_version: int | dict[str, str],
        stage: Literal["staging", "production"] | dict[str, str] | None = None,
        **options: Unpack[StepOptions],
    ) -> StepRef:
        """A `deploy` step: promote a model version to a stage (publishes `model.deployed`);
        the stage may be an expression, e.g. `staging` outside the prod branch."""
        params = _set({"model_name": model_name, "model_version": model_version}, stage=stage)
        return self._builtin(id, "deploy", params, options)

    def http(
        self,
        id: str,
        url: str,
        *,
        method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"] | None = None,
        headers: Mapping[str, str | dict[str, str]] | None = None,
        query: Mapping[str, str | int | float | bool] | None = None,
        json: Any = None,
        expected_status: Sequence[int] = (),
        timeout_per_request: Duration | None = None,
        max_response_bytes: int | None = None,
        poll: Mapping[str, Any] | None = None,
        **options: Unpack[StepOptions],
    ) -> StepRef:
        """An `http` step: one request (optionally polled until done); its answer becomes the
        step's outputs."""
        params = _set(
            {"url": url},
            method=method,
            headers=dict(headers) if headers else None,
            query=dict(query) if query else None,
            json=json,
            expected_status=list(expected_status) or None,
            timeout=timeout_per_request,
            max_response_bytes=max_response_bytes,
            poll=dict(poll) if poll else None,
        )
        return self._builtin(id, "http", params, options)

    def subworkflow(
        self,
        id: str,
        workflow: str | Workflow,
        *,
        version: int | Literal["active"] | None = None,
        params: Mapping[str, Any] | None = None,
        wait: bool | None = None,
        **options: Unpack[StepOptions],
    ) -> StepRef:
        """A `subworkflow` step: run another workflow as a child run."""
        target = workflow.id if isinstance(workflow, Workflow) else workflow
        spec = _set(
            {"workflow": target},
            version=version,
            params=dict(params) if params else None,
            wait=wait,
        )
        return self._builtin(id, "subworkflow", spec, options)

    def foreach(
        self,
        id: str,
        items: str,
        *,
        as_: str | None = None,
        max_concurrency: int | None = None,
        loop_failure_mode: Literal["fail_fast", "finish_all", "ignore_failures"] | None = None,
        outputs: Mapping[str, str] | None = None,
        **options: Unpack[StepOptions],
    ) -> CompositeStep:
        """A `foreach` step: its body (add steps to the returned object) runs once per item of
        `items` (CEL), the item named `as_`; `loop_failure_mode` is the loop's `failure_mode`
        (the step's own `failure_mode` says what its failure does to the run)."""
        params = _set(
            {"items": items},
            max_concurrency=max_concurrency,
            failure_mode=loop_failure_mode,
            outputs=dict(outputs) if outputs else None,
        )
        if as_ is not None:
            params["as"] = as_
        step = CompositeStep(id, "foreach", params, options)
        self._add(step)
        return step

    def while_(
        self,
        id: str,
        condition: str,
        *,
        max_iterations: int,
        **options: Unpack[StepOptions],
    ) -> CompositeStep:
        """A `while` step: its body runs again while `condition` (CEL over `iteration` and
        `previous`) holds, at most `max_iterations` times."""
        params = {"condition": condition, "max_iterations": max_iterations}
        step = CompositeStep(id, "while", params, options)
        self._add(step)
        return step


class CompositeStep(StepRef, _Steps):
    """A `foreach` or `while` step; its body is built with the same methods as a workflow."""

    def __init__(
        self, step_id: str, step_type: str, params: Mapping[str, Any], options: StepOptions
    ) -> None:
        StepRef.__init__(self, step_id, step_type, params, options)
        _Steps.__init__(self)

    def params(self) -> dict[str, Any]:
        if not self._steps:
            raise FlowInvalid(f"{self.type} step {self.id!r} has no steps in its body")
        params = dict(self._params)
        # The body goes where a definition written by hand has it: before `outputs`.
        outputs = params.pop("outputs", None)
        params["steps"] = [s.build() for s in self._steps]
        if outputs is not None:
            params["outputs"] = outputs
        return params


class Workflow(_Steps):
    """A workflow: its params, triggers and steps; `definition()` builds the definition the
    API registers. `requirements` (like `"scikit-learn>=1.4"`) are checked against the
    environments of the workers serving its steps' task queues when the flow is deployed."""

    def __init__(
        self,
        id: str,
        *,
        name: str | None = None,
        description: str | None = None,
        owner: str | None = None,
        tags: Sequence[str] = (),
        params: Mapping[str, Param] | None = None,
        triggers: Sequence[Mapping[str, Any]] = (),
        run_strategy: Literal[
            "sequential", "strict_sequential", "first_only", "last_only", "parallel"
        ]
        | RunStrategy
        | None = None,
        timeout: Duration | None = None,
        sla: Sla | None = None,
        expect: Sequence[Expectation] = (),
        allow_trigger_loop: bool | None = None,
        requirements: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.id = id
        self.requirements = list(requirements)
        self._order = next(_created)
        self._fields = _set(
            {"id": id},
            name=name,
            description=description,
            owner=owner,
            tags=list(tags) or None,
            timeout=timeout,
            allow_trigger_loop=allow_trigger_loop,
        )
        self._params = dict(params or {})
        self._triggers = [dict(t) for t in triggers]
        self._run_strategy = run_strategy
        self._sla = sla
        self._expect = list(expect)

    def __repr__(self) -> str:
        return f"<Workflow {self.id!r}>"

    def data(self) -> dict[str, Any]:
        """The definition as plain data (what a YAML file would hold)."""
        data = dict(self._fields)
        if self._params:
            data["params"] = {name: p.spec() for name, p in self._params.items()}
        if isinstance(self._run_strategy, RunStrategy):
            data["run_strategy"] = self._run_strategy.model_dump(mode="json", exclude_unset=True)
        elif self._run_strategy is not None:
            data["run_strategy"] = self._run_strategy
        if self._triggers:
            data["triggers"] = [
                {
                    k: v.model_dump(mode="json", exclude_unset=True) if k == "sla" else v
                    for k, v in t.items()
                }
                for t in self._triggers
            ]
        if self._sla is not None:
            data["sla"] = self._sla.model_dump(mode="json", exclude_unset=True)
        if self._expect:
            data["expect"] = [e.model_dump(mode="json", exclude_unset=True) for e in self._expect]
        data["steps"] = [s.build() for s in self._steps]
        return data

    def definition(self) -> WorkflowDefinition:
        """The validated definition (DefinitionInvalid lists every problem, as the API would)."""
        return parse_definition(self.data())


# -- loading a flow -------------------------------------------------------------------------------


@dataclass
class Loaded:
    """A loaded flow: its workflows (in the order they were created), the directory its modules
    are named from (`root`), and what its code package holds (`files`: the file, or the
    top-level package directory)."""

    workflows: list[Workflow]
    root: Path
    files: list[Path]
    module: str
    modules: list[ModuleType] = field(default_factory=list)

    def workflow(self, workflow_id: str) -> Workflow:
        """The workflow with this definition id."""
        for wf in self.workflows:
            if wf.id == workflow_id:
                return wf
        known = ", ".join(w.id for w in self.workflows)
        raise FlowInvalid(f"no workflow {workflow_id!r} in {self.module} (it has {known})")


def _package_top(directory: Path) -> Path | None:
    """The top-level package directory holding `directory`, if it is a package."""
    top = None
    while (directory / "__init__.py").exists():
        top, directory = directory, directory.parent
    return top


def _locate(target: str) -> tuple[Path, str, list[Path], Path | None]:
    """(root, module name, package files, the file to load by path or None)."""
    if target.endswith(".py") or "/" in target or Path(target).is_file():
        path = Path(target).resolve()
        if not path.is_file():
            raise FlowInvalid(f"{target}: no such file")
        if path.suffix != ".py":
            raise FlowInvalid(f"{target}: a flow is a .py file or a dotted module name")
        top = _package_top(path.parent)
        if top is None:
            return path.parent, path.stem, [path], path
        root = top.parent
        parts = path.relative_to(root).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        return root, module, [top], None
    try:
        spec = importlib.util.find_spec(target.split(".")[0])
    except (ImportError, ValueError) as exc:
        raise FlowInvalid(f"cannot find module {target!r}: {exc}") from None
    if spec is None or spec.origin is None:
        raise FlowInvalid(
            f"cannot find module {target!r} (is its directory on PYTHONPATH, or the current one?)"
        )
    origin = Path(spec.origin).resolve()
    if spec.submodule_search_locations:
        top = origin.parent
        return top.parent, target, [top], None
    return origin.parent, target, [origin], None


def _import(root: Path, module: str, path: Path | None) -> ModuleType:
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    if path is not None:
        spec = importlib.util.spec_from_file_location(module, path)
        assert spec is not None and spec.loader is not None
        loaded = importlib.util.module_from_spec(spec)
        previous = sys.modules.get(module)
        sys.modules[module] = loaded
        try:
            # Compiled from the source every time: a cached .pyc of an edited file of the same
            # size and second would hide the edit.
            exec(compile(path.read_bytes(), str(path), "exec"), loaded.__dict__)
        except BaseException:
            if previous is None:
                sys.modules.pop(module, None)
            else:
                sys.modules[module] = previous
            raise
        return loaded
    existing = sys.modules.get(module)
    where = getattr(existing, "__file__", None)
    if existing is not None and (where is None or not Path(where).resolve().is_relative_to(root)):
        # The same name imported from elsewhere before: load this flow's modules afresh.
        top = module.split(".")[0]
        for name in [n for n in sys.modules if n == top or n.startswith(top + ".")]:
            del sys.modules[name]
    return importlib.import_module(module)


def load(target: str) -> Loaded:
    """Import a flow (`path/to/flow.py`, or a dotted module `package.module`) and collect its
    module-level workflows. A file in a directory without `__init__.py` is a module of its own
    (named after the file); a file inside a package is loaded as that package's module, and the
    code package holds the whole top-level package."""
    root, module_name, files, path = _locate(target)
    try:
        module = _import(root, module_name, path)
    except FlowInvalid:
        raise
    except Exception as exc:
        raise FlowInvalid(
            f"importing {target} failed: {type(exc).__name__}: {exc}",
            [Problem(("flow",), f"{type(exc).__name__}: {exc}", "import_error")],
        ) from exc
    found: dict[int, Workflow] = {}
    for value in vars(module).values():
        if isinstance(value, Workflow):
            found.setdefault(id(value), value)
    workflows = sorted(found.values(), key=lambda wf: wf._order)
    if not workflows:
        raise FlowInvalid(f"{target} defines no maestro.sdk.Workflow at module level")
    ids = [wf.id for wf in workflows]
    if len(set(ids)) != len(ids):
        raise FlowInvalid(f"{target} defines workflow ids more than once: {', '.join(ids)}")
    return Loaded(workflows, root, files, module_name, [module])


def iter_steps(steps: Sequence[StepRef]) -> Iterator[StepRef]:
    """Every step, those in composite steps' bodies too."""
    for step in steps:
        yield step
        if isinstance(step, CompositeStep):
            yield from iter_steps(step.steps)
