"""CEL expressions: compile-checking at registration and evaluation in workflow code."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable
from functools import lru_cache
from typing import Any, TypeGuard

import cel

from maestro import expression_limits
from maestro.expression_limits import LimitExceeded

# Functions every expression may call besides CEL's own, given to each `Evaluation`.

# The names an expression may use; anything else is a typo caught at registration.
# In a run (step params, `when`, `emits`, `wait_for`): the run's params, upstream steps, the run
# itself and the signals its waiting steps received.
RUN_ROOTS = frozenset({"params", "steps", "run", "signals"})
# In a signal trigger (`when`, `params`): the triggering signals by name, and the last one.
TRIGGER_ROOTS = frozenset({"signals", "signal"})

_POSITION = re.compile(r"<input>:(\d+):(\d+)")

# Just enough of CEL's lexer to split an expression into its top-level `+` operands: string
# literals (raw ones first: a backslash does not escape there), names, and single characters.
_TOKEN = re.compile(
    r"""
    (?P<space>\s+|//[^\n]*)
    |(?P<string>
        (?:[rR][bB]?|[bB][rR])(?:'''.*?'''|\"\"\".*?\"\"\"|'[^'\n]*'|"[^"\n]*")
        |[bB]?(?:'''(?:\\.|[^\\])*?'''|\"\"\"(?:\\.|[^\\])*?\"\"\"
                |'(?:\\.|[^\\'\n])*'|"(?:\\.|[^\\"\n])*"))
    |(?P<name>[A-Za-z_]\w*)
    |(?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)
_TEXT = re.compile(r"[rR]?['\"]")  # a string literal, not bytes


class ExpressionError(ValueError):
    """An expression does not compile or cannot be evaluated."""


def shell_quote(value: Any) -> str:
    """The CEL function `shell_quote(x)`: one shell word that stands for `x` literally (strings
    as they are, other values as JSON, as in `$MAESTRO_PARAM_*`)."""
    return shlex.quote(value if isinstance(value, str) else json.dumps(value, default=str))


def _at_path(value: Any, path: str) -> Any:
    for key in path.split(".") if path else []:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _extreme(items: Any, path: str, pick: Any) -> Any:
    if not isinstance(items, list | tuple):
        raise TypeError("max_by/min_by take a list")
    keyed = [(_at_path(item, path), item) for item in items]
    keyed = [
        (k, item) for k, item in keyed if isinstance(k, int | float) and not isinstance(k, bool)
    ]
    if not keyed:
        return None
    return pick(keyed, key=lambda pair: pair[0])[1]


def max_by(items: Any, path: str) -> Any:
    """The CEL function `max_by(list, "a.b")`: the element whose number at path a.b is the
    largest (the first of equals; elements without a number there are passed over), or null."""
    return _extreme(items, path, max)


def min_by(items: Any, path: str) -> Any:
    """The CEL function `min_by(list, "a.b")`: as `max_by`, the smallest."""
    return _extreme(items, path, min)


# Functions every expression may call, besides CEL's own.
FUNCTIONS: dict[str, Callable[..., Any]] = {
    "shell_quote": shell_quote,
    "max_by": max_by,
    "min_by": min_by,
}


def is_expr(value: Any) -> TypeGuard[dict[str, Any]]:
    """True for a `{"expr": "<CEL>"}` value."""
    return isinstance(value, dict) and set(value) == {"expr"} and isinstance(value["expr"], str)


@lru_cache(maxsize=4096)
def compile_expression(source: str, roots: frozenset[str] = RUN_ROOTS) -> Any:
    """Compile a CEL expression, or raise ExpressionError naming line and column."""
    if not source.strip():
        raise ExpressionError("empty expression")
    _check_length(source)
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
    _check_cost(source, roots)
    return program


def validate_source(source: str | None, roots: frozenset[str] = RUN_ROOTS) -> str | None:
    """A pydantic validator's check: `source` if it compiles, else ValueError saying why."""
    if source is not None:
        try:
            compile_expression(source, roots)
        except ExpressionError as exc:
            raise ValueError(str(exc)) from None
    return source


def _check_length(source: str) -> None:
    """Refuse a source too long to hand to the CEL parser (whose recursion is not bounded)."""
    try:
        expression_limits.check_source(source)
    except LimitExceeded as exc:
        raise ExpressionError(str(exc)) from None


def _check_cost(source: str, roots: frozenset[str]) -> None:
    """Refuse an expression whose depth, size or worst-case cost is over the limits."""
    try:
        expression_limits.check_total([expression_limits.analyze(source, roots)])
    except LimitExceeded as exc:
        raise ExpressionError(f"expression over the limits: {exc}") from None


class Evaluation:
    """Expressions evaluated together over one context (a step's params, a trigger's `when` and
    params): their worst-case costs are summed and checked once, and the inputs they read are
    cut down, size-checked and converted into CEL values once."""

    def __init__(
        self,
        sources: list[str],
        context: dict[str, Any],
        roots: frozenset[str] = RUN_ROOTS,
        input_limit: int = expression_limits.MAX_INPUT_WEIGHT,
    ) -> None:
        self.roots = roots
        analyses = []
        for source in sources:
            compile_expression(source, roots)
            analyses.append(expression_limits.analyze(source, roots))
        what = repr(sources[0]) if len(sources) == 1 else f"{len(sources)} expressions"
        full = {name: context.get(name, {}) for name in roots}
        try:
            expression_limits.check_total(analyses)
            self._variables = cel.Context(
                variables=expression_limits.bounded_inputs(analyses, full, input_limit),
                functions=FUNCTIONS,
            )
        except LimitExceeded as exc:
            raise ExpressionError(f"evaluating {what} refused: {exc}") from None
        except (ValueError, RuntimeError, TypeError) as exc:
            raise ExpressionError(f"evaluating {what} failed: {exc}") from None

    def evaluate(self, source: str) -> Any:
        """The result of one of the expressions."""
        program = compile_expression(source, self.roots)
        try:
            return program.execute(self._variables)
        except (ValueError, RuntimeError, TypeError, ArithmeticError, LookupError) as exc:
            raise ExpressionError(f"evaluating {source!r} failed: {exc}") from None


def evaluate(source: str, context: dict[str, Any], roots: frozenset[str] = RUN_ROOTS) -> Any:
    """Evaluate a CEL expression over `context`; every root variable is always defined."""
    return Evaluation([source], context, roots).evaluate(source)


def resolve_values(value: Any, context: dict[str, Any], roots: frozenset[str] = RUN_ROOTS) -> Any:
    """Replace every `{"expr": ...}` inside `value` by its result (the expressions are one
    `Evaluation`)."""
    sources = [source for _, source in find_expressions(value)]
    if not sources:
        return value
    return _resolve(value, Evaluation(sources, context, roots))


def _resolve(value: Any, evaluation: Evaluation) -> Any:
    if is_expr(value):
        return evaluation.evaluate(value["expr"])
    if isinstance(value, dict):
        return {k: _resolve(v, evaluation) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, evaluation) for v in value]
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


def quoted_concatenation(source: str) -> list[str | None] | None:
    """`source` as a `+` of string literals (their values) and `shell_quote(...)` calls (None),
    or None when it is anything else."""
    terms: list[list[tuple[str, str]]] = [[]]
    depth = 0
    for match in _TOKEN.finditer(source):
        kind, text = match.lastgroup or "other", match.group()
        if kind == "space":
            continue
        if kind == "other" and text in "([{":
            depth += 1
        elif kind == "other" and text in ")]}":
            depth -= 1
        if kind == "other" and text == "+" and depth == 0:
            terms.append([])
        else:
            terms[-1].append((kind, text))
    parts: list[str | None] = []
    for term in terms:
        if len(term) == 1 and term[0][0] == "string" and _TEXT.match(term[0][1]):
            try:
                parts.append(cel.evaluate(term[0][1]))
            except (ValueError, RuntimeError):  # a bad escape: reported as not compiling
                return None
        elif term[:2] == [("name", "shell_quote"), ("other", "(")] and _closes_last(term):
            parts.append(None)
        else:
            return None
    return parts


def _closes_last(term: list[tuple[str, str]]) -> bool:
    """The bracket opened at term[1] closes at the term's last token, not before."""
    depth = 0
    for i, (kind, text) in enumerate(term[1:], 1):
        if kind == "other" and text in "([{":
            depth += 1
        elif kind == "other" and text in ")]}":
            depth -= 1
            if depth == 0:
                return i == len(term) - 1
    return False
