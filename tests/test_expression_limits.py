"""Unit tests for the bounded work of CEL expressions: the static limits at compile time, the
cut-down and size-checked inputs at evaluation, and the worst accepted expressions' real cost."""

from __future__ import annotations

import time

import cel
import pytest

from maestro import expression_limits as limits
from maestro.definitions import MAX_WHEN_COST, WorkflowDefinition, check_definition
from maestro.expressions import (
    FUNCTIONS,
    RUN_ROOTS,
    TRIGGER_ROOTS,
    Evaluation,
    ExpressionError,
    compile_expression,
    evaluate,
    resolve_values,
)


def nested_maps(depth: int, width: int = 10) -> str:
    """`[0..width].map(params, [0..width].map(steps, ...))`: width ** depth elements."""
    items = "[" + ", ".join(map(str, range(width))) + "]"
    names = ["params", "steps", "run", "signals"] * depth
    source = "1"
    for name in names[:depth]:
        source = f"{items}.map({name}, {source})"
    return f"size({source}) > 0"


def doubling(times: int, name: str = "params") -> str:
    """A string that doubles `times` times: 2 ** times characters."""
    return "size(['a']" + f".map({name}, {name} + {name})" * times + "[0]) > 0"


@pytest.mark.parametrize(
    "source",
    [
        "params.limit > 10",
        "has(params.x) && steps.a.status == 'succeeded'",
        "steps['my-step'].outputs.rows * 2 > 100",
        "double(params.min_accuracy) <= steps.eval.outputs.accuracy",
        "run.id + '-' + string(run.number)",
        "signals['table.ready'].params.dt.matches('^[0-9]{4}-[0-9]{2}-[0-9]{2}$')",
        "'x' in steps.a.outputs ? steps.a.outputs.x : 'none'",
        "timestamp(run.started_at).getFullYear() > 2020",
        "[1, 2, 3].exists(params, params == 2)",
        "steps.a.outputs.files.exists(steps, steps.endsWith('.csv'))",
        "{'a': params.x, 'b': [1, 2.5, -3, 0x1F, 4u, null, true, b'x', r'\\d']}.a",
        "'''multi\nline''' != '' // a comment",
        doubling(10),
    ],
)
def test_everyday_expressions_are_within_the_limits(source):
    assert compile_expression(source) is not None


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        (nested_maps(3), "macros (all, exists, exists_one, filter, map) nest at most 2 deep"),
        (nested_maps(2, width=200), "the limit is 300,000"),
        (doubling(16), "the limit is 300,000"),
        ("size(" + " + ".join(["params.s"] * 20) + ") > 0", "the limit is 300,000"),
        ("params.items.map(steps, steps).size() > 0", "the limit is 300,000"),
        ("params.items.filter(steps, steps > 0).size() > 0", "the limit is 300,000"),
        ("params.a.exists(run, params.a.exists(steps, run == steps))", "the limit is 300,000"),
        ("params.a.exists(run, run in params.b)", "the limit is 300,000"),
        ("params.s.matches('(a{100}){100}')", "the limit is 300,000"),
        ("'x'.matches('\\\\w{1000}')", "the limit is 300,000"),
        ("params.s.matches(params.pattern)", "matches() needs a literal pattern"),
        ("params.s.matches('" + "a" * 300 + "')", "longer than 256 characters"),
        ("(" * 40 + "1" + ")" * 40, "nests deeper than 32 levels"),
        ("1" + " + 1" * 40, "nests deeper than 32 levels"),
        ("size([" + ", ".join(["1"] * 600) + "]) > 0", "more than 500 parts"),
        ("1" + " + 1" * 1_000, "4001 characters long; the limit is 2000"),
    ],
)
def test_expensive_expressions_are_refused_at_compile_time(source, fragment):
    with pytest.raises(ExpressionError, match="limit") as info:
        compile_expression(source)
    assert fragment in str(info.value)


def test_inputs_share_one_size_limit_so_reading_many_costs_like_reading_one():
    # The inputs read weigh 2,048 units together: ten quoted params cost about what one does.
    def command(n: int) -> str:
        return "'train'" + "".join(f" + ' --a{i} ' + shell_quote(params.a{i})" for i in range(n))

    one, ten = (limits.analyze(command(n), RUN_ROOTS).work for n in (1, 10))
    assert ten < 1.5 * one
    assert compile_expression(command(10))


def test_every_function_maestro_adds_has_a_cost():
    assert set(FUNCTIONS) <= set(limits._FUNCTIONS)


def test_an_undefined_function_costs_only_its_arguments():
    assert limits.analyze("nope(1)", RUN_ROOTS).work < 10
    with pytest.raises(ExpressionError, match="Undefined"):
        evaluate("nope(1)", {})


def test_a_refused_expression_costs_nothing_to_evaluate():
    started = time.thread_time()
    with pytest.raises(ExpressionError, match="over the limits"):
        evaluate(nested_maps(7), {})
    assert time.thread_time() - started < 0.05


def test_comprehension_variables_shadow_roots_in_the_paths_read():
    analysis = limits.analyze(
        "params.items.exists(steps, steps.x == 1) && steps['a'].outputs.y == params.z",
        RUN_ROOTS,
    )
    assert analysis.paths == {
        "params": frozenset({("items",), ("z",)}),
        "steps": frozenset({("a", "outputs", "y")}),
    }
    dynamic = limits.analyze("signals[signal.params.name].params.dt", TRIGGER_ROOTS)
    assert dynamic.paths == {"signals": frozenset({()}), "signal": frozenset({("params", "name")})}


@pytest.mark.parametrize(
    "source",
    [
        "params.a.b + params.c",
        "[1].exists(params, params == 1) || run.id == 'x'",
        "has(steps.a.outputs) && size(signals) > 0",
        "steps['x'].outputs[params.k]",
        "{'a': run}.a.id",
        "[params, steps].size()",
        "params.x.map(run, run + signals.y).size() > 0",
    ],
)
def test_the_parser_finds_the_roots_cel_finds(source):
    found = set(limits.analyze(source, RUN_ROOTS).paths)
    bound = {"run"} if ".map(run" in source else {"params"} if "(params," in source else set()
    assert found == set(cel.compile(source).variables()) - bound


def test_only_what_an_expression_reads_is_converted_and_size_checked():
    context = {"params": {"a": 1, "big": list(range(100_000))}}
    started = time.thread_time()
    assert evaluate("params.a == 1", context) is True
    assert time.thread_time() - started < 0.05
    with pytest.raises(ExpressionError, match="too large: over 2,048 units") as info:
        evaluate("size(params.big) > 0", context)
    assert "`params`" in str(info.value)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("has(params.x)", False),
        ("has(params.a.b)", True),
        ("'a' in params", True),
        ("params['a'].b == 2", True),
        ("size(params) == 2", True),
        ("params.a == {'b': 2}", True),
    ],
)
def test_cut_down_inputs_evaluate_like_the_whole(source, expected):
    context = {"params": {"a": {"b": 2}, "c": "x" * 500_000}}
    if "size(params)" in source or source.startswith("'a' in"):
        context["params"]["c"] = "x"  # read whole, so it must be small
    assert evaluate(source, context) is expected
    assert cel.compile(source).execute({"params": context["params"]}) is expected


def test_a_missing_key_still_fails_after_cutting_down():
    with pytest.raises(ExpressionError, match="evaluating 'params.nope' failed"):
        evaluate("params.nope", {"params": {"a": 1}})


def test_inputs_nested_too_deeply_are_over_the_weight_limit():
    deep: list = []
    for _ in range(100):
        deep = [deep]
    with pytest.raises(ExpressionError, match="too large"):
        evaluate("size(params.deep) > 0", {"params": {"deep": deep}})


def test_expressions_evaluated_together_share_one_budget():
    each = "params.a.exists(steps, steps == 'x') || params.b.exists(steps, steps == 'y')"
    assert compile_expression(each)
    with pytest.raises(ExpressionError, match="3 expressions together may cost up to"):
        resolve_values({"a": {"expr": each}, "b": [{"expr": each}, {"expr": each}]}, {})
    cheap = {f"p{i}": {"expr": f"params.x + {i}"} for i in range(20)}
    assert resolve_values(cheap, {"params": {"x": 1}}) == {f"p{i}": 1 + i for i in range(20)}


def test_an_evaluation_converts_its_inputs_once():
    evaluation = Evaluation(["params.a", "params.b.size()"], {"params": {"a": 1, "b": "xy"}})
    assert evaluation.evaluate("params.a") == 1
    assert evaluation.evaluate("params.b.size()") == 2


@pytest.mark.parametrize(
    ("pattern", "states"),
    [
        ("^[a-z]+$", (3, 66)),
        ("(a{100}){100}b", (10_001, 10_001)),
        ("\\w{20}x", (21, 60_001)),
        ("[\\p{L}\\d]+", (1, 3_064)),
        ("a{3,}|b{2,4}", (9, 9)),
        ("(?i)é.", (3, 69)),
    ],
)
def test_pattern_states(pattern, states):
    assert limits.pattern_states(pattern) == states


def worst_accepted() -> dict[str, tuple[str, dict]]:
    """Expressions at the edge of the limits, with inputs at the edge of theirs."""
    weight = limits.MAX_INPUT_WEIGHT - 8
    strings = [f"s{i}" for i in range(weight - 1)]
    items = "[" + ", ".join(map(str, range(96))) + "]"
    return {
        "membership": (" || ".join(["'zz' in params.l"] * 26), {"params": {"l": strings}}),
        "concatenation": (
            "size(" + " + ".join(["params.l"] * 9) + ") > 0",
            {"params": {"l": strings}},
        ),
        "nested macros": (
            f"{items}.exists(params, {items}.exists(steps, params == steps + 1000))",
            {},
        ),
        "regex": ("params.s.matches('\\\\w{20}x')", {"params": {"s": "a" * 100_000}}),
    }


@pytest.mark.parametrize("name", list(worst_accepted()))
def test_the_worst_accepted_expressions_stay_cheap(name):
    source, context = worst_accepted()[name]
    compile_expression(source)  # accepted
    started = time.thread_time()
    evaluate(source, context)
    # About 15 ms of CPU on the reference machine (docs/benchmarks.md); generous for CI noise.
    assert time.thread_time() - started < 0.25


def test_steps_when_expressions_together_have_a_budget():
    """RunWorkflow may evaluate every step's `when` in one workflow task: a definition whose
    `when`s each pass but together exceed MAX_WHEN_COST is refused, naming the limit; a few
    such steps pass."""
    source = " || ".join(["'zz' in params.l"] * 26)
    cost = limits.check_total([limits.analyze(source, RUN_ROOTS)])
    assert cost <= limits.MAX_COST
    over = MAX_WHEN_COST // cost + 1

    def definition(n: int) -> WorkflowDefinition:
        return WorkflowDefinition.model_validate(
            {
                "id": "whens",
                "steps": [{"id": f"s{i}", "type": "noop", "when": source} for i in range(n)],
            }
        )

    assert not [p for p in check_definition(definition(2)) if p.type == "expression_limit"]
    [problem] = [p for p in check_definition(definition(over)) if p.type == "expression_limit"]
    assert problem.loc == ("steps",)
    assert f"{MAX_WHEN_COST:,}" in problem.msg
