"""Signal triggers as the matcher sees them: compiled from definitions, conditions, join keys."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, Field

from maestro.branches import PROD, qualified_id
from maestro.definitions import (
    OnFinishTrigger,
    SignalCondition,
    SignalTrigger,
    WorkflowDefinition,
)
from maestro.expressions import TRIGGER_ROOTS, Evaluation

COMPLETION_PREFIX = "maestro.run."


def completion_signal_name(status: str) -> str:
    """The signal every run publishes when it ends, e.g. `maestro.run.succeeded`."""
    return f"{COMPLETION_PREFIX}{status}"


class CompiledTrigger(BaseModel):
    """One signal trigger (an `on_finish` becomes one per status): what the matcher stores."""

    trigger_id: str
    position: int
    kind: str
    conditions: list[SignalCondition]
    join_on: list[str] = Field(default_factory=list)
    within: timedelta | None = None
    when: str | None = None
    params: dict[str, str] = Field(default_factory=dict)
    # The branches whose deployment takes outside signals through it (None: every branch).
    branches: list[str] | None = None

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.conditions]

    @property
    def routes(self) -> list[str]:
        """What the trigger is indexed under, one entry per condition (see `condition_route`)."""
        return [condition_route(c) for c in self.conditions]

    def branch_routes(self, branch: str) -> list[str]:
        """What the trigger of a workflow in `branch` is registered under: its routes within
        the branch (see `branch_route`) and, unless `branches` leaves the branch out, its
        routes for outside signals."""
        own = [branch_route(branch, r) for r in self.routes]
        outside = self.branches is None or branch in self.branches
        return own + self.routes if outside else own

    def condition(self, name: str) -> SignalCondition:
        return next(c for c in self.conditions if c.name == name)


def route(name: str, key: str, value: str) -> str:
    """An index entry: "a signal named `name` whose param `key` is the string `value`". Names
    and param keys hold neither `?` nor `=`, so entries never collide."""
    return f"{name}?{key}={value}"


def condition_route(condition: SignalCondition) -> str:
    """The entry a trigger is indexed under for one of its signals: the name, narrowed by the
    first param (in key order) that `where` requires to equal a string. Only signals carrying
    that string can satisfy the condition, so only they reach the trigger: a completion signal
    reaches its upstream's `on_finish` triggers, not every workflow's."""
    for key in sorted(condition.where):
        value = condition.where[key]
        if isinstance(value, str):
            return route(condition.name, key, value)
    return condition.name


def branch_route(branch: str, entry: str) -> str:
    """An index entry within a branch: reached only by signals tagged with that branch (what
    its workflows' runs and steps publish). Signal names start with a letter or digit, so a
    branch entry never collides with an outside one."""
    return f"@{branch}/{entry}"


def signal_routes(name: str, params: dict[str, Any], branch: str | None = None) -> list[str]:
    """Every entry a signal reaches: its name alone, and its name with each string param —
    within `branch` for a signal tagged with one, else those of outside signals (which every
    branch's triggers are registered under, unless they say otherwise)."""
    strings = [(key, value) for key, value in params.items() if isinstance(value, str)]
    entries = [name, *(route(name, key, value) for key, value in strings)]
    if branch is None:
        return entries
    return [branch_route(branch, entry) for entry in entries]


def branch_problem(trigger: CompiledTrigger, branch: str, signal_branch: str | None) -> str | None:
    """Why a signal tagged with `signal_branch` (None: from outside) does not reach a trigger
    of a workflow in `branch`, or None if it does (what `branch_routes` encode)."""
    if signal_branch is None:
        if trigger.branches is not None and branch not in trigger.branches:
            return (
                f"the trigger takes outside signals only in branches "
                f"{', '.join(trigger.branches)}; its workflow is in branch {branch!r}"
            )
        return None
    if signal_branch != branch:
        return f"the signal is of branch {signal_branch!r}; the workflow is in branch {branch!r}"
    return None


def _stable_id(prefix: str, content: Any) -> str:
    digest = hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode())
    return f"{prefix}-{digest.hexdigest()[:16]}"


def compile_signal_triggers(
    definition: WorkflowDefinition, branch: str = PROD
) -> list[CompiledTrigger]:
    """The definition's signal and on_finish triggers, each with an id stable across versions
    as long as the trigger itself does not change (so partial joins survive a re-push). In a
    branch, `on_finish` listens to the runs of the upstream workflow of the same branch."""
    compiled: list[CompiledTrigger] = []
    for position, trigger in enumerate(definition.triggers):
        if isinstance(trigger, SignalTrigger):
            spec = trigger.signal
            compiled.append(
                CompiledTrigger(
                    trigger_id=_stable_id("sig", spec.model_dump(mode="json")),
                    position=position,
                    kind="signal",
                    conditions=spec.all_of,
                    join_on=spec.join_on,
                    within=spec.within,
                    when=spec.when,
                    params=spec.params,
                    branches=spec.branches,
                )
            )
        elif isinstance(trigger, OnFinishTrigger):
            finish = trigger.on_finish
            for status in finish.status:
                upstream = qualified_id(finish.workflow, branch)
                condition = SignalCondition(
                    name=completion_signal_name(status), where={"workflow_id": upstream}
                )
                compiled.append(
                    CompiledTrigger(
                        trigger_id=_stable_id("fin", [finish.model_dump(mode="json"), status]),
                        position=position,
                        kind="on_finish",
                        conditions=[condition],
                        when=finish.when,
                        params=finish.params,
                    )
                )
    return compiled


def _compare(op: str, actual: Any, expected: Any) -> bool:
    if op == "in":
        return any(_compare("=", actual, item) for item in expected)
    numeric = (int, float)
    if isinstance(actual, bool) or isinstance(expected, bool):
        if op in ("=", "!="):
            return (actual is expected) == (op == "=")
        return False
    if isinstance(actual, numeric) and isinstance(expected, numeric):
        pass
    elif not (isinstance(actual, str) and isinstance(expected, str)):
        return op == "!="  # different kinds never compare equal
    match op:
        case "=":
            return actual == expected
        case "!=":
            return actual != expected
        case ">":
            return actual > expected
        case ">=":
            return actual >= expected
        case "<":
            return actual < expected
        case "<=":
            return actual <= expected
    raise ValueError(f"unknown operator {op!r}")


def where_matches(where: dict[str, Any], params: dict[str, Any]) -> bool:
    """Whether signal params satisfy `{param: value | {op: value}}` (all conditions)."""
    for key, condition in where.items():
        if key not in params:
            return False
        ops = condition if isinstance(condition, dict) else {"=": condition}
        if not all(_compare(op, params[key], expected) for op, expected in ops.items()):
            return False
    return True


def where_problems(where: dict[str, Any], params: dict[str, Any]) -> list[str]:
    """Why signal params do not satisfy `where`: one reason per unmet condition (none when
    `where_matches`)."""
    problems = []
    for key, condition in where.items():
        if key not in params:
            problems.append(f"where.{key}: the signal has no param {key!r}")
            continue
        ops = condition if isinstance(condition, dict) else {"=": condition}
        unmet = [
            f"{op} {json.dumps(expected)}"
            for op, expected in ops.items()
            if not _compare(op, params[key], expected)
        ]
        if unmet:
            problems.append(
                f"where.{key}: requires {' and '.join(unmet)}, the signal has "
                f"{json.dumps(params[key])}"
            )
    return problems


def equality_filter(where: dict[str, Any]) -> dict[str, Any]:
    """The plain-equality part of `where`, usable as a JSONB containment filter."""
    return {k: v for k, v in where.items() if not isinstance(v, dict)}


def join_key(trigger: CompiledTrigger, params: dict[str, Any]) -> str | None:
    """The values a signal offers for the trigger's `join_on` keys, or None if one is missing."""
    if any(key not in params for key in trigger.join_on):
        return None
    return json.dumps([params[key] for key in trigger.join_on])


def trigger_context(signals: dict[str, dict[str, Any]], last: str) -> dict[str, Any]:
    """CEL variables for a trigger: `signals[name]` and `signal` (the one that completed it)."""
    return {"signals": signals, "signal": signals[last]}


def evaluate_trigger(trigger: CompiledTrigger, context: dict[str, Any]) -> tuple[bool, dict]:
    """The trigger's `when` and its run params for a complete set of signals (one
    `Evaluation`: their costs share one budget)."""
    sources = [*([trigger.when] if trigger.when is not None else []), *trigger.params.values()]
    if not sources:
        return True, {}
    evaluation = Evaluation(sources, context, TRIGGER_ROOTS)
    if trigger.when is not None and evaluation.evaluate(trigger.when) is not True:
        return False, {}
    return True, {name: evaluation.evaluate(source) for name, source in trigger.params.items()}
