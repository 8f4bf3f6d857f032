"""Unit tests for the DAG helpers: cycle detection, topological order, descendants."""

from __future__ import annotations

from itertools import pairwise

import pytest

from maestro.dag import descendants, find_cycle, topological_order


@pytest.mark.parametrize(
    "edges",
    [
        {},
        {"a": []},
        {"a": [], "b": ["a"], "c": ["a", "b"]},
        # a diamond revisits "a" through two paths without being a cycle
        {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]},
        # dependencies outside the graph are not followed
        {"a": ["elsewhere"]},
    ],
)
def test_find_cycle_none(edges):
    assert find_cycle(edges) is None


@pytest.mark.parametrize(
    ("edges", "cycle"),
    [
        ({"a": ["b"], "b": ["a"]}, ["a", "b", "a"]),
        ({"a": ["a"]}, ["a", "a"]),
        ({"a": ["b"], "b": ["c"], "c": ["d"], "d": ["b"]}, ["b", "c", "d", "b"]),
        ({"x": [], "a": ["c"], "b": ["a"], "c": ["b"]}, ["a", "c", "b", "a"]),
    ],
    ids=["simple", "self-loop", "longer-behind-a-tail", "longer-after-acyclic-node"],
)
def test_find_cycle_returns_closed_path(edges, cycle):
    assert find_cycle(edges) == cycle


def test_find_cycle_path_follows_edges():
    edges = {"a": ["e"], "b": ["a"], "c": ["b"], "d": ["c"], "e": ["d"], "f": ["a"]}

    cycle = find_cycle(edges)

    assert cycle is not None
    assert cycle[0] == cycle[-1]
    assert sorted(cycle[:-1]) == ["a", "b", "c", "d", "e"]
    assert all(nxt in edges[node] for node, nxt in pairwise(cycle))


def test_topological_order_puts_dependencies_first():
    edges = {"report": ["clean", "load"], "clean": ["load"], "load": ["fetch"], "fetch": []}

    order = topological_order(edges)

    assert sorted(order) == sorted(edges)
    for node, deps in edges.items():
        assert all(order.index(dep) < order.index(node) for dep in deps)
    assert order == ["fetch", "load", "clean", "report"]


def test_topological_order_keeps_declaration_order_for_ties():
    assert topological_order({"c": [], "a": [], "b": []}) == ["c", "a", "b"]
    assert topological_order({"root": [], "c": ["root"], "a": ["root"], "b": ["root"]}) == [
        "root",
        "c",
        "a",
        "b",
    ]


def test_topological_order_empty():
    assert topological_order({}) == []


@pytest.mark.parametrize(
    ("edges", "message"),
    [
        ({"a": ["b"], "b": ["a"]}, "dependency cycle: a -> b -> a"),
        ({"ok": [], "a": ["a"]}, "dependency cycle: a -> a"),
    ],
)
def test_topological_order_raises_on_cycle(edges, message):
    with pytest.raises(ValueError, match=message):
        topological_order(edges)


@pytest.mark.parametrize(
    ("node", "expected"),
    [
        ("a", {"a", "b", "c", "d"}),
        ("b", {"b", "d"}),
        ("d", {"d"}),
        ("e", {"e"}),
    ],
)
def test_descendants_follow_dependents_transitively(node, expected):
    # d depends on b and c, both on a (d comes first: one pass over the edges is not enough)
    edges = {"e": [], "d": ["b", "c"], "c": ["a"], "b": ["a"], "a": []}
    assert descendants(edges, node) == expected
