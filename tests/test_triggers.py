"""Routing of signals to triggers (pure functions; the database side is in test_signals.py)."""

from __future__ import annotations

import pytest

from maestro.definitions import SignalCondition
from maestro.triggers import (
    CompiledTrigger,
    branch_problem,
    condition_route,
    signal_routes,
    where_matches,
    where_problems,
)


@pytest.mark.parametrize(
    ("where", "route"),
    [
        ({}, "orders"),
        ({"table": "events"}, "orders?table=events"),
        # The first string equality in key order; numbers, booleans and operators skip.
        ({"table": "events", "dt": "2026-11-28"}, "orders?dt=2026-11-28"),
        ({"a_rows": 5, "b_ok": True, "c_table": "t"}, "orders?c_table=t"),
        ({"table": {"=": "events"}, "rows": {">": 0}}, "orders"),
        ({"table": "a=b?c"}, "orders?table=a=b?c"),
    ],
)
def test_a_condition_is_indexed_under_its_first_required_string(where, route):
    assert condition_route(SignalCondition(name="orders", where=where)) == route


def test_a_signal_reaches_its_name_and_its_name_with_each_string_param():
    params = {"table": "events", "dt": "2026-11-28", "rows": 5, "ok": True}
    assert signal_routes("orders", params) == [
        "orders",
        "orders?table=events",
        "orders?dt=2026-11-28",
    ]


@pytest.mark.parametrize(
    ("trigger_branches", "workflow_branch", "signal_branch", "reached"),
    [
        (None, "prod", None, True),  # outside signals reach every branch
        (None, "user.alice", None, True),
        (["prod"], "prod", None, True),
        (["prod"], "user.alice", None, False),  # branches: [prod] keeps alice's copy out
        (["prod"], "user.alice", "user.alice", True),  # its own branch's signals still reach it
        (None, "prod", "user.alice", False),  # alice's signals never reach production
        (None, "user.alice", "prod", False),  # nor production's alice
        (None, "user.bob", "user.alice", False),
        (None, "prod", "prod", True),
    ],
)
def test_a_trigger_is_reached_by_outside_signals_and_those_of_its_branch(
    trigger_branches, workflow_branch, signal_branch, reached
):
    trigger = CompiledTrigger(
        trigger_id="t",
        position=0,
        kind="signal",
        conditions=[SignalCondition(name="orders", where={"table": "events"})],
        branches=trigger_branches,
    )
    entries = set(trigger.branch_routes(workflow_branch))
    routed = not entries.isdisjoint(signal_routes("orders", {"table": "events"}, signal_branch))
    assert routed is reached
    # Explaining says the same, with a reason when it is not reached.
    assert (branch_problem(trigger, workflow_branch, signal_branch) is None) is reached


@pytest.mark.parametrize(
    ("where", "params", "reached"),
    [
        ({"table": "events"}, {"table": "events", "dt": "D"}, True),
        ({"table": "events"}, {"table": "users"}, False),
        ({"table": "events"}, {"table": 5}, False),
        ({"table": "events"}, {}, False),
        ({"rows": 5}, {"rows": 5.0}, True),
        ({"rows": {">": 1}, "dt": "D"}, {"rows": 2, "dt": "D"}, True),
        # Reached through `dt`, then evaluated: `env` differs (condition_false).
        ({"dt": "D", "env": "prod"}, {"dt": "D", "env": "dev"}, True),
    ],
)
def test_routing_skips_only_signals_that_cannot_satisfy_the_condition(where, params, reached):
    condition = SignalCondition(name="orders", where=where)
    assert (condition_route(condition) in signal_routes("orders", params)) is reached
    if where_matches(where, params):
        assert reached


@pytest.mark.parametrize(
    ("where", "params", "problems"),
    [
        (
            {"table": "digits"},
            {"table": "users"},
            ['where.table: requires = "digits", the signal has "users"'],
        ),
        ({"table": "digits"}, {}, ["where.table: the signal has no param 'table'"]),
        (
            {"rows": {">": 0, "<": 10}, "ok": True},
            {"rows": 50, "ok": False},
            [
                "where.rows: requires < 10, the signal has 50",
                "where.ok: requires = true, the signal has false",
            ],
        ),
        ({"rows": {"in": [1, 2]}}, {"rows": 2}, []),
    ],
)
def test_where_problems_name_each_unmet_condition(where, params, problems):
    assert where_problems(where, params) == problems
    assert where_matches(where, params) is (not problems)
