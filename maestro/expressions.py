"""CEL expressions: compile-checking at registration and evaluation in workflow code."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import cel

# The names an expression may use; anything else is a typo caught at registration.
# In a run (step params, `when`, `emits`, `wait_for`): the run's params, upstream steps, the run
# itself and the signals its waiting steps received.
RUN_ROOTS = frozenset({"params", "steps", "run", "signals"})
# In a signal trigger (`when`, `params`): the triggering signals by name, and the last one.
TRIGGER_ROOTS = frozenset({"signals", "signal"})

_POSITION = re.compile(r"<input>:(\d+):(\d+)")


class ExpressionError(ValueError):
    """An expression does not compile or cannot be evaluated."""


def is_expr(value: Any) -> bool:
    """True for a `{"expr": "<CEL>"}` value."""
    return isinstance(value, dict) and set(value) == {"expr"} and isinstance(value["expr"], str)


@lru_cache(maxsize=4096)
def compile_expression(source: str, roots: frozenset[str] = RUN_ROOTS) -> Any:
    """Compile a CEL expression, or raise ExpressionError naming line and column."""
    if not source.strip():
        raise ExpressionError("empty expression")
    try:
        program = cel.compile(source)
    except (ValueError, RuntimeError) as exc:
        text = str(exc)
        match = _POSITION.search(text)
        where = f" at line {match.group(1)}, column {match.group(2)}" if match else ""
        detail = text.split("ERROR: ", 1)[-1].split("\n", 1)[0]
        detail = _POSITION.sub("", detail).lstrip(": ")
        raise ExpressionError(f"CEL expression does not compile{where}: {detail}") from None
    unknown = sorted(set(program.variables()) - roots)
    if unknown:
        raise ExpressionError(
            f"unknown variable {', '.join(map(repr, unknown))}: "
            f"expressions here can use {', '.join(sorted(roots))}"
        )
    return program


def evaluate(source: str, context: dict[str, Any], roots: frozenset[str] = RUN_ROOTS) -> Any:
    """Evaluate a CEL expression over `context`; every root variable is always defined."""
    program = compile_expression(source, roots)
    full = {name: context.get(name, {}) for name in roots}
    try:
        return program.execute(full)
    except (ValueError, RuntimeError, TypeError, ArithmeticError, LookupError) as exc:
        raise ExpressionError(f"evaluating {source!r} failed: {exc}") from None


def resolve_values(value: Any, context: dict[str, Any], roots: frozenset[str] = RUN_ROOTS) -> Any:
    """Replace every `{"expr": ...}` inside `value` by its result."""
    if is_expr(value):
        return evaluate(value["expr"], context, roots)
    if isinstance(value, dict):
        return {k: resolve_values(v, context, roots) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_values(v, context, roots) for v in value]
    return value


def find_expressions(value: Any, loc: tuple[str | int, ...] = ()) -> list[tuple[tuple, str]]:
    """Every `(location, source)` of an expression inside `value`."""
    if is_expr(value):
        return [(loc, value["expr"])]
    found: list[tuple[tuple, str]] = []
    if isinstance(value, dict):
        for k, v in value.items():
            found += find_expressions(v, (*loc, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += find_expressions(v, (*loc, i))
    return found
