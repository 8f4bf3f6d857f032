"""Unit tests for CEL expressions: compiling, evaluating and finding them inside values."""

from __future__ import annotations

import pytest

from maestro.expressions import (
    ExpressionError,
    compile_expression,
    evaluate,
    find_expressions,
    is_expr,
    resolve_values,
)


@pytest.mark.parametrize(
    "source",
    [
        "params.limit > 10",
        "steps.extract.outputs.rows * 2",
        "run.id + '-suffix'",
        "has(params.x) && steps.a.status == 'succeeded'",
        "size([1, 2, 3]) == 3",
        "1 + 2",
    ],
)
def test_compile_expression_accepts_known_roots(source):
    assert compile_expression(source) is not None


def test_compile_expression_syntax_error_names_line_and_column():
    with pytest.raises(ExpressionError) as info:
        compile_expression("params.x >\n\n  )")

    message = str(info.value)
    assert message.startswith("CEL expression does not compile at line 3, column 3: ")
    assert "Syntax error" in message
    assert "<input>" not in message


def test_compile_expression_error_at_end_of_line():
    with pytest.raises(ExpressionError, match=r"at line 1, column 4: .*mismatched input '<EOF>'"):
        compile_expression("1 +")


@pytest.mark.parametrize("source", ["", "   ", "\n"])
def test_compile_expression_empty(source):
    with pytest.raises(ExpressionError, match="^empty expression$"):
        compile_expression(source)


@pytest.mark.parametrize(
    ("source", "names"),
    [
        ("foo.bar", "'foo'"),
        ("foo.bar + baz", "'baz', 'foo'"),
        ("param.x == 1", "'param'"),
        ("params.x + step.a", "'step'"),
    ],
)
def test_compile_expression_unknown_variable(source, names):
    with pytest.raises(ExpressionError) as info:
        compile_expression(source)

    assert (
        str(info.value)
        == f"unknown variable {names}: expressions here can use params, run, signals, steps"
    )


def test_expression_error_is_a_value_error():
    # pydantic validators turn ValueError into a validation error
    assert issubclass(ExpressionError, ValueError)


@pytest.mark.parametrize(
    ("source", "context", "expected"),
    [
        ("params.x + 1", {"params": {"x": 2}}, 3),
        ("params.f * 2.0", {"params": {"f": 1.5}}, 3.0),
        ("params.name + '!'", {"params": {"name": "hi"}}, "hi!"),
        ("params.n > 1", {"params": {"n": 2}}, True),
        ("params.items[1]", {"params": {"items": ["a", "b"]}}, "b"),
        ("steps.a.outputs.n * 2", {"steps": {"a": {"outputs": {"n": 21}}}}, 42),
        ("steps.a.status == 'succeeded'", {"steps": {"a": {"status": "succeeded"}}}, True),
        ("run.id", {"run": {"id": "r-1"}}, "r-1"),
        ("[1, params.x]", {"params": {"x": 2}}, [1, 2]),
        ("{'k': params.x}", {"params": {"x": 2}}, {"k": 2}),
    ],
)
def test_evaluate(source, context, expected):
    assert evaluate(source, context) == expected


def test_evaluate_defines_every_root_variable():
    # an empty context still has params, steps and run, so `has()` works on each of them
    assert evaluate("has(params.x) || has(steps.a) || has(run.id)", {}) is False


@pytest.mark.parametrize(
    ("source", "context", "missing"),
    [
        ("params.missing", {"params": {"x": 1}}, "missing"),
        ("params.missing", {}, "missing"),
        ("steps.a.outputs.y", {"steps": {"a": {"outputs": {}}}}, "y"),
        ("steps.a", {}, "a"),
        ("run.id", {}, "id"),
    ],
)
def test_evaluate_missing_key(source, context, missing):
    with pytest.raises(ExpressionError) as info:
        evaluate(source, context)

    assert str(info.value).startswith(f"evaluating {source!r} failed: ")
    assert missing in str(info.value)


@pytest.mark.parametrize(
    ("source", "context"),
    [
        ("params.x + 'a'", {"params": {"x": 1}}),
        ("int('abc')", {}),
        ("params.x.y", {"params": {"x": 1}}),
    ],
)
def test_evaluate_runtime_error(source, context):
    with pytest.raises(ExpressionError, match="failed: "):
        evaluate(source, context)


@pytest.mark.parametrize(
    ("source", "context"),
    [
        ("1 / 0", {}),
        ("1 % 0", {}),
        ("9223372036854775807 + 1", {}),
        ("params.items[5]", {"params": {"items": [1]}}),
    ],
    ids=["division-by-zero", "modulo-by-zero", "overflow", "index-out-of-range"],
)
def test_evaluate_arithmetic_and_index_errors_are_expression_errors(source, context):
    with pytest.raises(ExpressionError, match="failed: "):
        evaluate(source, context)


def test_evaluate_rejects_what_does_not_compile():
    with pytest.raises(ExpressionError, match="unknown variable 'foo'"):
        evaluate("foo.bar", {"foo": {"bar": 1}})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"expr": "params.x"}, True),
        ({"expr": ""}, True),
        ({"expr": 1}, False),
        ({"expr": "params.x", "other": 1}, False),
        ({}, False),
        ("params.x", False),
        (["expr"], False),
        (None, False),
    ],
)
def test_is_expr(value, expected):
    assert is_expr(value) is expected


def test_resolve_values_recurses_into_dicts_and_lists():
    value = {
        "a": {"expr": "params.x"},
        "b": [1, {"expr": "params.x + 1"}, {"c": {"expr": "'s' + run.id"}}],
        "nested": {"deeper": {"list": [[{"expr": "steps.s.outputs.v"}]]}},
        "plain": "params.x",
        "not_expr": {"expr": "params.x", "other": 1},
        "number": 7,
    }
    context = {"params": {"x": 1}, "run": {"id": "r"}, "steps": {"s": {"outputs": {"v": True}}}}

    assert resolve_values(value, context) == {
        "a": 1,
        "b": [1, 2, {"c": "sr"}],
        "nested": {"deeper": {"list": [[True]]}},
        "plain": "params.x",
        "not_expr": {"expr": "params.x", "other": 1},
        "number": 7,
    }


def test_resolve_values_top_level_expression():
    assert resolve_values({"expr": "params.x * 3"}, {"params": {"x": 2}}) == 6


def test_resolve_values_does_not_change_its_input():
    value = {"a": [{"expr": "params.x"}]}

    resolve_values(value, {"params": {"x": 1}})

    assert value == {"a": [{"expr": "params.x"}]}


def test_resolve_values_propagates_expression_errors():
    with pytest.raises(ExpressionError, match="params.missing"):
        resolve_values({"a": [{"expr": "params.missing"}]}, {"params": {}})


def test_find_expressions_locations():
    value = {
        "a": {"expr": "params.x"},
        "b": [1, {"expr": "run.id"}, {"c": {"expr": "steps.s.outputs.v"}}],
        "plain": "params.x",
        "not_expr": {"expr": "params.y", "other": 1},
    }

    assert find_expressions(value) == [
        (("a",), "params.x"),
        (("b", 1), "run.id"),
        (("b", 2, "c"), "steps.s.outputs.v"),
    ]


def test_find_expressions_prefix_and_top_level():
    assert find_expressions({"expr": "1 +"}, ("params", "p")) == [(("params", "p"), "1 +")]
    assert find_expressions([{"expr": "run.id"}], ("root",)) == [(("root", 0), "run.id")]


@pytest.mark.parametrize("value", [{}, [], "text", 3, None, {"a": {"b": [1, "x"]}}])
def test_find_expressions_none(value):
    assert find_expressions(value) == []
