"""Unit tests for workflow definitions: every validation rule, hashing and run params."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from maestro.definitions import (
    IntervalTrigger,
    TimeTrigger,
    WorkflowDefinition,
    parse_definition,
    resolve_run_params,
)
from maestro.errors import DefinitionInvalid, InvalidInput, ParamsInvalid, Problem
from maestro.schedules import time_triggers


def body(**fields: Any) -> dict[str, Any]:
    """A minimal valid definition body, with `fields` replacing its top-level keys."""
    return {"id": "wf", "steps": [{"id": "a", "type": "noop"}], **fields}


def step(step_id: str = "a", step_type: str = "noop", **fields: Any) -> dict[str, Any]:
    return {"id": step_id, "type": step_type, **fields}


def problems(data: dict[str, Any]) -> list[Problem]:
    with pytest.raises(DefinitionInvalid) as info:
        parse_definition(data)
    assert info.value.problems, "DefinitionInvalid without problems"
    return info.value.problems


def problem(data: dict[str, Any]) -> Problem:
    """The one problem with `data`."""
    found = problems(data)
    assert len(found) == 1, found
    return found[0]


# -- the whole body ------------------------------------------------------------------------


def test_minimal_definition_is_valid():
    definition = parse_definition(body())

    assert isinstance(definition, WorkflowDefinition)
    assert definition.step("a").type == "noop"
    assert definition.params == {}
    assert definition.triggers == []


def test_full_definition_is_valid():
    definition = parse_definition(
        {
            "id": "etl.daily-v2_1",
            "name": "Daily ETL",
            "params": {
                "limit": {"type": "integer", "default": 10},
                "ratio": {"type": "number", "default": 1},
                "target": {"type": "string"},
            },
            "steps": [
                step("extract", "python", params={"entrypoint": "jobs.etl:extract"}),
                step(
                    "load",
                    "shell",
                    params={"command": ["echo", "hi"], "env": {"A": "1"}},
                    depends_on=["extract"],
                    when="steps.extract.outputs.rows > params.limit",
                    timeout="1h30m",
                    retry={"max_attempts": 5, "initial_backoff": "2s"},
                ),
                step("wait", "sleep", params={"seconds": 1.5}, depends_on=["extract", "load"]),
            ],
            "timeout": "PT2H",
            "run_strategy": "parallel",
            "triggers": [
                {"cron": "*/5 * * * *", "timezone": "Europe/Paris"},
                {"every": "1h", "offset": "5m"},
                {"signal": {"all_of": [{"name": "file-arrived"}]}},
                {"on_finish": {"workflow": "upstream"}},
            ],
        }
    )

    assert [s.id for s in definition.steps] == ["extract", "load", "wait"]
    assert definition.step("load").timeout == timedelta(hours=1, minutes=30)
    assert definition.timeout == timedelta(hours=2)
    assert definition.run_strategy.kind == "parallel"
    assert [type(t).__name__ for t in definition.triggers] == [
        "TimeTrigger",
        "IntervalTrigger",
        "SignalTrigger",
        "OnFinishTrigger",
    ]


def test_definition_invalid_is_invalid_input():
    with pytest.raises(InvalidInput) as info:
        parse_definition(body(steps=[step(step_type="nope")]))

    assert info.value.code == "definition_invalid"
    assert info.value.message == "workflow definition is invalid"


@pytest.mark.parametrize("field", ["foo", "step", "trigger"])
def test_unknown_top_level_field(field):
    found = problem(body(**{field: 1}))

    assert found.loc == (field,)
    assert found.type == "extra_forbidden"
    assert "Extra inputs are not permitted" in found.msg


def test_unknown_step_field():
    found = problem(body(steps=[step(depends=["b"])]))

    assert found.loc == ("steps", 0, "depends")
    assert found.type == "extra_forbidden"


def test_steps_required_and_not_empty():
    assert problem({"id": "wf"}).loc == ("steps",)
    found = problem(body(steps=[]))
    assert found.loc == ("steps",)
    assert "at least 1 item" in found.msg


@pytest.mark.parametrize("workflow_id", ["a", "0", "etl.daily-v2_1", "x" * 128])
def test_valid_workflow_id(workflow_id):
    assert parse_definition(body(id=workflow_id)).id == workflow_id


@pytest.mark.parametrize(
    "workflow_id", ["", "Upper", "has space", "-leading", ".leading", "_leading", "a/b", "x" * 129]
)
def test_invalid_workflow_id(workflow_id):
    found = problem(body(id=workflow_id))

    assert found.loc == ("id",)
    assert found.type == "string_pattern_mismatch"
    assert "should match pattern" in found.msg


@pytest.mark.parametrize("step_id", ["", "1a", "-a", "a b", "a.b", "a" * 65])
def test_invalid_step_id(step_id):
    found = problem(body(steps=[step(step_id)]))

    assert found.loc == ("steps", 0, "id")
    assert found.type == "string_pattern_mismatch"


def test_every_problem_is_reported_at_once():
    found = problems(
        body(
            steps=[
                step("a", "bogus"),
                step("a", "sleep", params={}),
                step("b", depends_on=["zz"], params={"outputs": {"x": {"expr": "1 +"}}}),
            ]
        )
    )

    assert [p.loc for p in found] == [
        ("steps", 1, "id"),
        ("steps", 0, "type"),
        ("steps", 1, "params", "seconds"),
        ("steps", 2, "depends_on", 0),
        ("steps", 2, "params", "outputs", "x", "expr"),
    ]


# -- step ids, dependencies and cycles -------------------------------------------------------


def test_duplicate_step_id():
    found = problem(body(steps=[step("a"), step("b"), step("a")]))

    assert found.loc == ("steps", 2, "id")
    assert found.type == "duplicate_id"
    assert found.msg == "duplicate step id 'a' (first used by steps[0])"


def test_depends_on_unknown_step():
    found = problem(body(steps=[step("a"), step("b", depends_on=["a", "zz"])]))

    assert found.loc == ("steps", 1, "depends_on", 1)
    assert found.type == "unknown_step"
    assert found.msg == "step 'b' depends on unknown step 'zz'"


def test_unknown_dependency_is_not_also_reported_as_cycle():
    found = problems(body(steps=[step("a", depends_on=["b"]), step("b", depends_on=["a", "zz"])]))

    assert [p.type for p in found] == ["unknown_step"]


@pytest.mark.parametrize(
    ("steps", "cycle"),
    [
        ([step("a", depends_on=["b"]), step("b", depends_on=["a"])], ["a", "b", "a"]),
        ([step("a", depends_on=["a"])], ["a", "a"]),
        (
            [
                step("start"),
                step("a", depends_on=["start", "c"]),
                step("b", depends_on=["a"]),
                step("c", depends_on=["b"]),
            ],
            ["a", "c", "b", "a"],
        ),
    ],
    ids=["two-steps", "self-dependency", "three-steps"],
)
def test_dependency_cycle(steps, cycle):
    found = problem(body(steps=steps))

    assert found.loc == ("steps",)
    assert found.type == "cycle"
    assert found.msg == f"dependency cycle: {' -> '.join(cycle)}"
    assert found.ctx == {"cycle": cycle}


def test_dependencies_without_cycle_are_valid():
    definition = parse_definition(
        body(
            steps=[
                step("a"),
                step("b", depends_on=["a"]),
                step("c", depends_on=["a"]),
                step("d", depends_on=["b", "c"]),
            ]
        )
    )

    assert definition.step("d").depends_on == ["b", "c"]


# -- step types and their params -------------------------------------------------------------


def test_unknown_step_type_lists_known_types():
    found = problem(body(steps=[step(step_type="bash")]))

    assert found.loc == ("steps", 0, "type")
    assert found.type == "unknown_step_type"
    assert "unknown step type 'bash'" in found.msg
    assert found.msg.endswith(
        "known types: deploy, evaluate, foreach, http, noop, python, shell, sleep, subworkflow, "
        "train, while"
    )


@pytest.mark.parametrize(
    ("step_type", "params", "loc", "msg"),
    [
        ("sleep", {}, ("seconds",), "Field required"),
        ("sleep", {"seconds": -1}, ("seconds",), "greater than or equal to 0"),
        ("sleep", {"seconds": "soon"}, ("seconds",), "valid number"),
        ("sleep", {"seconds": 1, "secs": 2}, ("secs",), "Extra inputs are not permitted"),
        ("python", {}, ("entrypoint",), "Field required"),
        ("python", {"entrypoint": "module.function"}, ("entrypoint",), "should match pattern"),
        ("python", {"entrypoint": "a:b:c"}, ("entrypoint",), "should match pattern"),
        ("python", {"entrypoint": "1mod:f"}, ("entrypoint",), "should match pattern"),
        ("python", {"entrypoint": "m:f", "args": []}, ("args",), "valid dictionary"),
        ("shell", {}, ("command",), "Field required"),
        ("shell", {"command": ""}, ("command",), "at least 1 item"),
        ("shell", {"command": []}, ("command",), "at least 1 item"),
        ("shell", {"command": "ls", "tail_lines": 0}, ("tail_lines",), "greater than or equal"),
        ("shell", {"command": "ls", "env": {"A": 1}}, ("env", "A", "value"), "valid string"),
        (
            "shell",
            {"command": "ls", "env": {"A": {"secret": "no spaces"}}},
            ("env", "A", "secret", "secret"),
            "should match pattern",
        ),
        (
            "shell",
            {"command": "ls", "env": {"A": {"secret": "t", "value": "x"}}},
            ("env", "A", "secret", "value"),
            "Extra inputs are not permitted",
        ),
        ("python", {"entrypoint": "m:f", "secrets": ["../x"]}, ("secrets", 0), "should match"),
        ("noop", {"output": {}}, ("output",), "Extra inputs are not permitted"),
    ],
)
def test_step_params_invalid(step_type, params, loc, msg):
    found = problem(body(steps=[step(step_type=step_type, params=params)]))

    assert found.loc == ("steps", 0, "params", *loc)
    assert msg in found.msg


@pytest.mark.parametrize(
    ("step_type", "params"),
    [
        ("noop", {}),
        ("noop", {"outputs": {"x": 1}}),
        ("sleep", {"seconds": 0}),
        ("sleep", {"seconds": 2.5}),
        ("python", {"entrypoint": "pkg.module:run", "args": {"n": 1}}),
        ("python", {"entrypoint": "_m:_f"}),
        ("shell", {"command": "echo hi", "tail_lines": 10_000}),
        ("shell", {"command": ["echo", "hi"], "env": {"A": "1"}}),
        ("shell", {"command": "env", "env": {"A": "1", "TOKEN": {"secret": "team.token"}}}),
        ("python", {"entrypoint": "m:f", "secrets": ["db-password", "api_token"]}),
        ("train", {"entrypoint": "m:f", "model_name": "m", "secrets": ["s3.key"]}),
    ],
)
def test_step_params_valid(step_type, params):
    definition = parse_definition(body(steps=[step(step_type=step_type, params=params)]))

    assert definition.steps[0].params == params


@pytest.mark.parametrize(
    ("step_type", "params"),
    [
        ("sleep", {"seconds": {"expr": "params.delay"}}),
        ("python", {"entrypoint": "m:f", "args": {"expr": "params.args"}}),
        ("shell", {"command": ["echo", {"expr": "params.command"}]}),
        ("noop", {"outputs": {"expr": "steps.a.outputs"}}),
    ],
)
def test_expression_accepted_for_any_param(step_type, params):
    definition = parse_definition(
        body(steps=[step("a"), step("b", step_type, params=params, depends_on=["a"])])
    )

    assert definition.step("b").params == params


def test_expression_does_not_hide_other_param_problems():
    found = problem(
        body(
            steps=[
                step(
                    step_type="train",
                    params={
                        "entrypoint": "m:f",
                        "model_name": {"expr": "params.m"},
                        "args": "not a dict",
                    },
                )
            ]
        )
    )

    assert found.loc == ("steps", 0, "params", "args")


def test_unknown_param_with_expression_value():
    found = problem(
        body(steps=[step(step_type="sleep", params={"seconds": 1, "secs": {"expr": "params.x"}})])
    )

    assert found.loc == ("steps", 0, "params", "secs")
    assert "Extra inputs are not permitted" in found.msg


# -- CEL expressions -------------------------------------------------------------------------


def test_when_valid():
    definition = parse_definition(
        body(steps=[step("a"), step("b", depends_on=["a"], when="steps.a.outputs.n > 1")])
    )

    assert definition.step("b").when == "steps.a.outputs.n > 1"


@pytest.mark.parametrize(
    ("when", "where"),
    [("1 +", "line 1, column 4"), ("params.x >\n  )", "line 2, column 3")],
)
def test_when_does_not_compile(when, where):
    found = problem(body(steps=[step(when=when)]))

    assert found.loc == ("steps", 0, "when")
    assert found.msg.startswith(f"CEL expression does not compile at {where}: ")
    assert not found.msg.startswith("Value error")


def test_when_empty():
    found = problem(body(steps=[step(when="  ")]))

    assert found.loc == ("steps", 0, "when")
    assert found.msg == "empty expression"


def test_when_unknown_root_variable():
    found = problem(body(steps=[step(when="foo.bar")]))

    assert found.loc == ("steps", 0, "when")
    assert (
        found.msg == "unknown variable 'foo': expressions here can use params, run, signals, steps"
    )


@pytest.mark.parametrize(
    ("params", "loc"),
    [
        ({"outputs": {"x": {"expr": "1 +"}}}, ("outputs", "x", "expr")),
        ({"outputs": {"list": [0, {"expr": "params.x +"}]}}, ("outputs", "list", 1, "expr")),
        ({"outputs": {"expr": "("}}, ("outputs", "expr")),
    ],
)
def test_expression_in_step_params_does_not_compile(params, loc):
    found = problem(body(steps=[step(params=params)]))

    assert found.loc == ("steps", 0, "params", *loc)
    assert found.type == "expression_invalid"
    assert found.msg.startswith("CEL expression does not compile at line 1, column ")


def test_expression_in_step_params_unknown_root_variable():
    found = problem(body(steps=[step(step_type="sleep", params={"seconds": {"expr": "foo.bar"}})]))

    assert found.loc == ("steps", 0, "params", "seconds", "expr")
    assert found.type == "expression_invalid"
    assert "unknown variable 'foo'" in found.msg


# -- workflow params ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "msg"),
    [
        ({"type": "integer", "default": "x"}, "default 'x' is not of type integer"),
        ({"type": "integer", "default": 1.5}, "default 1.5 is not of type integer"),
        ({"type": "integer", "default": True}, "default True is not of type integer"),
        ({"type": "number", "default": False}, "default False is not of type number"),
        ({"type": "string", "default": 1}, "default 1 is not of type string"),
        ({"type": "boolean", "default": 0}, "default 0 is not of type boolean"),
        ({"type": "object", "default": []}, "default [] is not of type object"),
        ({"type": "array", "default": {}}, "default {} is not of type array"),
        ({"default": 3}, "default 3 is not of type string"),
    ],
)
def test_param_default_of_wrong_type(spec, msg):
    found = problem(body(params={"p": spec}))

    assert found.loc == ("params", "p")
    assert found.msg == msg


@pytest.mark.parametrize(
    "spec",
    [
        {"type": "integer", "default": 0},
        {"type": "number", "default": 1},
        {"type": "number", "default": 1.5},
        {"type": "boolean", "default": False},
        {"type": "string", "default": ""},
        {"type": "object", "default": {"a": 1}},
        {"type": "array", "default": [1]},
    ],
)
def test_param_default_of_right_type(spec):
    definition = parse_definition(body(params={"p": spec}))

    assert definition.params["p"].default == spec["default"]
    assert definition.params["p"].required is False


def test_param_without_default_is_required():
    definition = parse_definition(body(params={"p": {"type": "integer"}}))

    assert definition.params["p"].required is True


def test_param_unknown_type():
    found = problem(body(params={"p": {"type": "float"}}))

    assert found.loc == ("params", "p", "type")
    assert "'string', 'integer', 'number', 'boolean', 'object' or 'array'" in found.msg


@pytest.mark.parametrize("name", ["1st", "with-dash", "a b", ""])
def test_param_invalid_name(name):
    found = problem(body(params={name: {"default": "x"}}))

    assert found.loc == ("params", name, "[key]")
    assert found.type == "string_pattern_mismatch"


# -- durations and retry policy ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1h 30m", timedelta(hours=1, minutes=30)),
        ("1.5m", timedelta(seconds=90)),
        ("250ms", timedelta(milliseconds=250)),
        ("2d", timedelta(days=2)),
        ("1w2d", timedelta(days=9)),
        (45, timedelta(seconds=45)),
        (0.5, timedelta(milliseconds=500)),
        (0, timedelta(0)),
        ("PT5M", timedelta(minutes=5)),
        ("P1DT2H", timedelta(days=1, hours=2)),
    ],
)
def test_duration_valid(value, expected):
    definition = parse_definition(body(steps=[step(timeout=value)]))

    assert definition.steps[0].timeout == expected


@pytest.mark.parametrize(
    ("value", "msg"),
    [
        ("5 parsecs", "invalid duration '5 parsecs': use a number of seconds or units"),
        ("", "invalid duration ''"),
        ("5", "invalid duration '5'"),
        ("1h30", "invalid duration '1h30'"),
        ("-5s", "invalid duration '-5s'"),
        (-5, "a duration cannot be negative"),
        (-0.5, "a duration cannot be negative"),
        (True, "a duration is a number of seconds or a string like"),
        ("P-1D", "valid timedelta"),
    ],
)
def test_duration_invalid(value, msg):
    found = problem(body(steps=[step(timeout=value)]))

    assert found.loc == ("steps", 0, "timeout")
    assert msg in found.msg


def test_duration_serialises_as_seconds_string():
    definition = parse_definition(body(steps=[step(timeout="1h30m", heartbeat_timeout="250ms")]))

    dumped = definition.model_dump(mode="json")["steps"][0]

    assert dumped["timeout"] == "5400s"
    assert dumped["heartbeat_timeout"] == "250ms"
    assert parse_definition(definition.model_dump(mode="json")) == definition


@pytest.mark.parametrize(
    ("retry", "loc", "msg"),
    [
        ({"max_attempts": 0}, "max_attempts", "greater than or equal to 1"),
        ({"max_attempts": 101}, "max_attempts", "less than or equal to 100"),
        ({"backoff_coefficient": 0.5}, "backoff_coefficient", "greater than or equal to 1"),
        ({"backoff_coefficient": 100.5}, "backoff_coefficient", "less than or equal to 100"),
        ({"initial_backoff": "soon"}, "initial_backoff", "invalid duration 'soon'"),
        ({"maximum_backoff": -1}, "maximum_backoff", "cannot be negative"),
        ({"retries": 3}, "retries", "Extra inputs are not permitted"),
    ],
)
def test_retry_policy_invalid(retry, loc, msg):
    found = problem(body(steps=[step(retry=retry)]))

    assert found.loc == ("steps", 0, "retry", loc)
    assert msg in found.msg


@pytest.mark.parametrize(
    "retry",
    [
        {"max_attempts": 1, "backoff_coefficient": 1.0},
        {"max_attempts": 100, "backoff_coefficient": 100.0},
        {"maximum_backoff": None, "non_retryable_error_types": ["ValueError"]},
    ],
)
def test_retry_policy_bounds_accepted(retry):
    definition = parse_definition(body(steps=[step(retry=retry)]))

    for key, value in retry.items():
        assert getattr(definition.steps[0].retry, key) == value


def test_retry_policy_defaults():
    retry = parse_definition(body()).steps[0].retry

    assert retry.max_attempts == 3
    assert retry.initial_backoff == timedelta(seconds=1)
    assert retry.maximum_backoff == timedelta(seconds=60)
    assert retry.backoff_coefficient == 2.0


# -- triggers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cron", ["@daily", "@hourly", "@yearly", " @weekly ", "0 3 * * *", "*/15 9-17 * * 1-5"]
)
def test_cron_valid(cron):
    definition = parse_definition(body(triggers=[{"cron": cron}]))

    trigger = definition.triggers[0]
    assert isinstance(trigger, TimeTrigger)
    assert trigger.cron == cron.strip()
    assert trigger.timezone == "UTC"


@pytest.mark.parametrize(
    ("cron", "msg"),
    [
        ("* * *", "cron expression '* * *' has 3 fields; expected 5"),
        ("0 * * * * *", "cron expression '0 * * * * *' has 6 fields; expected 5"),
        ("", "cron expression '' has 0 fields; expected 5"),
        ("61 * * * *", "cron expression '61 * * * *' is out of range: minute 61 is not in 0-59"),
        ("0 25 * * *", "is out of range: hour 25 is not in 0-23"),
        ("0 0 32 * *", "is out of range: day-of-month 32 is not in 1-31"),
        ("0 0 0 * *", "is out of range: day-of-month 0 is not in 1-31"),
        ("0 0 * 13 *", "is out of range: month 13 is not in 1-12"),
        ("0 0 * * 8", "is out of range: day-of-week 8 is not in 0-7"),
        ("0-60 * * * *", "is out of range: minute 60 is not in 0-59"),
        ("0 1,2,30 * * *", "is out of range: hour 30 is not in 0-23"),
        ("*/0 * * * *", "is out of range: minute step /0 never advances"),
        (
            "@often",
            "unknown cron macro '@often'; use one of @daily, @hourly, @monthly, @weekly, @yearly",
        ),
        ("@reboot", "unknown cron macro '@reboot'"),
    ],
)
def test_cron_invalid(cron, msg):
    found = problem(body(triggers=[{"cron": cron}]))

    assert found.loc == ("triggers", 0, "time", "cron")
    assert msg in found.msg


@pytest.mark.parametrize("timezone", ["UTC", "Europe/Paris", "America/New_York"])
def test_timezone_valid(timezone):
    definition = parse_definition(body(triggers=[{"cron": "@daily", "timezone": timezone}]))

    assert definition.triggers[0].timezone == timezone


@pytest.mark.parametrize("timezone", ["Mars/Olympus_Mons", "", "../etc/passwd", "Paris"])
def test_timezone_unknown(timezone):
    found = problem(body(triggers=[{"cron": "@daily", "timezone": timezone}]))

    assert found.loc == ("triggers", 0, "time", "timezone")
    assert found.msg == f"unknown timezone {timezone!r} (use an IANA name like 'Europe/Paris')"


def test_timezone_that_is_a_tz_directory():
    found = problem(body(triggers=[{"cron": "@daily", "timezone": "Europe"}]))

    assert found.loc == ("triggers", 0, "time", "timezone")
    assert "unknown timezone 'Europe'" in found.msg


@pytest.mark.parametrize("trigger", [{}, {"schedule": "@daily"}, {"at": "09:00"}, "@daily", 3])
def test_trigger_without_known_key(trigger):
    found = problem(body(triggers=[trigger]))

    assert found.loc == ("triggers", 0)
    assert found.type == "trigger_kind"
    assert found.msg == "a trigger has one of the keys cron, every, signal or on_finish"


def test_trigger_problem_points_at_its_index():
    found = problem(body(triggers=[{"cron": "@daily"}, {"cron": "@sometimes"}]))

    assert found.loc == ("triggers", 1, "time", "cron")


def test_interval_trigger_valid():
    trigger = parse_definition(body(triggers=[{"every": "1h", "offset": "59m"}])).triggers[0]

    assert isinstance(trigger, IntervalTrigger)
    assert (trigger.every, trigger.offset) == (timedelta(hours=1), timedelta(minutes=59))


@pytest.mark.parametrize(
    ("trigger", "msg"),
    [
        ({"every": "1h", "offset": "1h"}, "offset must be shorter than every"),
        ({"every": "1h", "offset": "2h"}, "offset must be shorter than every"),
        ({"every": "500ms"}, "every must be at least 1s"),
        ({"every": 0}, "every must be at least 1s"),
    ],
)
def test_interval_trigger_invalid(trigger, msg):
    found = problem(body(triggers=[trigger]))

    assert found.loc == ("triggers", 0, "interval")
    assert found.msg == msg


def test_interval_trigger_unknown_key():
    found = problem(body(triggers=[{"every": "1h", "offest": "5m"}]))

    assert found.loc == ("triggers", 0, "interval", "offest")
    assert found.type == "extra_forbidden"


# -- content hash ------------------------------------------------------------------------------


def test_content_hash_ignores_key_order():
    first = {
        "id": "wf",
        "params": {"a": {"type": "integer", "default": 1}, "b": {"default": "x"}},
        "steps": [
            {"id": "s", "type": "python", "params": {"entrypoint": "m:f", "args": {"x": 1, "y": 2}}}
        ],
    }
    second = {
        "steps": [
            {"params": {"args": {"y": 2, "x": 1}, "entrypoint": "m:f"}, "type": "python", "id": "s"}
        ],
        "params": {"b": {"default": "x"}, "a": {"default": 1, "type": "integer"}},
        "id": "wf",
    }

    assert parse_definition(first).content_hash() == parse_definition(second).content_hash()


def test_content_hash_of_normalised_values():
    spelled_out = body(steps=[step(timeout="1m30s")], run_strategy={"kind": "sequential"})
    short = body(steps=[step(timeout=90)])

    assert parse_definition(spelled_out).content_hash() == parse_definition(short).content_hash()


@pytest.mark.parametrize(
    "change",
    [
        {"name": "renamed"},
        {"steps": [step(timeout="91s")]},
        {"steps": [step(params={"outputs": {"x": 2}})]},
        {"steps": [step("b")]},
        {"params": {"p": {"default": 1, "type": "integer"}}},
        {"triggers": [{"cron": "@daily"}]},
    ],
)
def test_content_hash_changes_with_body(change):
    original = body(steps=[step(timeout="90s", params={"outputs": {"x": 1}})])

    changed = {**original, **change}

    assert parse_definition(original).content_hash() != parse_definition(changed).content_hash()


def test_content_hash_is_sha256_hex():
    digest = parse_definition(body()).content_hash()

    assert len(digest) == 64
    assert int(digest, 16) >= 0


# -- run params --------------------------------------------------------------------------------


@pytest.fixture
def workflow() -> WorkflowDefinition:
    return parse_definition(
        body(
            params={
                "target": {"type": "string"},
                "limit": {"type": "integer", "default": 10},
                "ratio": {"type": "number", "default": 0.5},
                "dry_run": {"type": "boolean", "default": False},
            }
        )
    )


def test_resolve_run_params_fills_defaults(workflow):
    assert resolve_run_params(workflow, {"target": "db"}) == {
        "target": "db",
        "limit": 10,
        "ratio": 0.5,
        "dry_run": False,
    }


def test_resolve_run_params_supplied_values_win(workflow):
    supplied = {"target": "db", "limit": 3, "ratio": 2, "dry_run": True}

    assert resolve_run_params(workflow, supplied) == supplied


def test_resolve_run_params_without_params():
    assert resolve_run_params(parse_definition(body()), {}) == {}


def params_problems(definition: WorkflowDefinition, supplied: dict[str, Any]) -> list[Problem]:
    with pytest.raises(ParamsInvalid) as info:
        resolve_run_params(definition, supplied)
    assert info.value.code == "params_invalid"
    return info.value.problems


def test_resolve_run_params_required_missing(workflow):
    [found] = params_problems(workflow, {"limit": 1})

    assert found.loc == ("params", "target")
    assert found.type == "missing"
    assert found.msg == "required param 'target' is missing"


@pytest.mark.parametrize(
    ("name", "value", "msg"),
    [
        ("target", 5, "expected string, got int 5"),
        ("limit", "10", "expected integer, got str '10'"),
        ("limit", 1.5, "expected integer, got float 1.5"),
        ("limit", True, "expected integer, got bool True"),
        ("ratio", False, "expected number, got bool False"),
        ("ratio", "0.5", "expected number, got str '0.5'"),
        ("dry_run", 1, "expected boolean, got int 1"),
    ],
)
def test_resolve_run_params_wrong_type(workflow, name, value, msg):
    [found] = params_problems(workflow, {"target": "db", name: value})

    assert found.loc == ("params", name)
    assert found.type == "param_type"
    assert found.msg == msg


def test_resolve_run_params_number_accepts_int(workflow):
    assert resolve_run_params(workflow, {"target": "db", "ratio": 2})["ratio"] == 2


def test_resolve_run_params_unknown_param(workflow):
    [found] = params_problems(workflow, {"target": "db", "limt": 5})

    assert found.loc == ("params", "limt")
    assert found.type == "unknown_param"
    assert (
        found.msg == "unknown param 'limt' (this workflow's params: dry_run, limit, ratio, target)"
    )


def test_resolve_run_params_unknown_param_without_params():
    [found] = params_problems(parse_definition(body()), {"x": 1})

    assert found.msg == "unknown param 'x' (this workflow's params: none)"


def test_resolve_run_params_reports_every_problem(workflow):
    found = params_problems(workflow, {"limit": "many", "extra": 1})

    assert {(p.loc, p.type) for p in found} == {
        (("params", "limit"), "param_type"),
        (("params", "extra"), "unknown_param"),
        (("params", "target"), "missing"),
    }


def test_nested_expressions_in_step_params_are_accepted():
    definition = parse_definition(
        {
            "id": "wf",
            "steps": [
                {
                    "id": "a",
                    "type": "shell",
                    "params": {
                        "command": ["echo", {"expr": "params.x"}],
                        "env": {"A": {"expr": "run.id"}},
                    },
                }
            ],
        }
    )
    assert definition.steps[0].params["env"] == {"A": {"expr": "run.id"}}


def test_cron_that_never_fires_is_rejected():
    with pytest.raises(DefinitionInvalid) as caught:
        parse_definition(
            {
                "id": "wf",
                "steps": [{"id": "a", "type": "noop"}],
                "triggers": [{"cron": "0 0 31 2 *"}],
            }
        )
    assert "never fires" in caught.value.problems[0].msg


def test_maximum_backoff_shorter_than_initial_is_rejected():
    with pytest.raises(DefinitionInvalid) as caught:
        parse_definition(
            {
                "id": "wf",
                "steps": [
                    {
                        "id": "a",
                        "type": "noop",
                        "retry": {"initial_backoff": "10s", "maximum_backoff": "5s"},
                    }
                ],
            }
        )
    assert caught.value.problems[0].loc == ("steps", 0, "retry")


@pytest.mark.parametrize(
    ("cron", "fragment"),
    [
        ("0 0 1 * MON", "both day-of-month and day-of-week"),
        ("0 0 L * *", "not supported"),
        ("0 0 ? * MON", "not supported"),
        ("0 0 * * MON#2", "not supported"),
        ("0 0 * FOO *", "not supported"),
    ],
)
def test_cron_that_temporal_and_croniter_read_differently_is_rejected(cron, fragment):
    with pytest.raises(DefinitionInvalid) as caught:
        parse_definition(
            {"id": "wf", "steps": [{"id": "a", "type": "noop"}], "triggers": [{"cron": cron}]}
        )
    assert fragment in caught.value.problems[0].msg


@pytest.mark.parametrize(
    ("cron", "after", "first_fire"),
    [
        ("0 0 1 * *", datetime(2026, 1, 15, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC)),
        # 2026-01-03 is a Saturday: the next weekday is Monday the 5th.
        ("0 9 * * MON-FRI", datetime(2026, 1, 3, tzinfo=UTC), datetime(2026, 1, 5, 9, tzinfo=UTC)),
        (
            "*/15 9-17 * JAN,JUL 1-5",
            datetime(2026, 2, 1, tzinfo=UTC),
            datetime(2026, 7, 1, 9, tzinfo=UTC),
        ),
    ],
)
def test_cron_both_readers_agree_on_is_accepted(cron, after, first_fire):
    definition = parse_definition(
        {"id": "wf", "steps": [{"id": "a", "type": "noop"}], "triggers": [{"cron": cron}]}
    )
    [trigger] = definition.triggers
    assert isinstance(trigger, TimeTrigger) and trigger.cron == cron
    [ref] = time_triggers(definition.id, definition)
    assert ref.fire_times(after, after + timedelta(days=366), limit=1) == [first_fire]


# -- what runs is never chosen by run data ---------------------------------------------------


@pytest.mark.parametrize(
    ("step_type", "params"),
    [
        ("python", {"entrypoint": {"expr": "params.entrypoint"}}),
        ("train", {"entrypoint": {"expr": "'m:' + params.f"}, "model_name": "m"}),
        ("evaluate", {"entrypoint": {"expr": "params.e"}, "model_name": "m", "model_version": 1}),
    ],
)
def test_entrypoint_expression_is_refused(step_type, params):
    found = problem(body(steps=[step(step_type=step_type, params=params)]))

    assert found.loc == ("steps", 0, "params", "entrypoint")
    assert found.type == "expression_not_allowed"
    assert found.msg.startswith("entrypoint cannot be an expression")


@pytest.mark.parametrize(
    "command",
    [
        {"expr": "'echo ' + params.x"},
        {"expr": "'echo hello'"},
        {"expr": "['echo', params.x]"},
        # The opt-in quoting function without the opt-in is still refused.
        {"expr": "'echo ' + shell_quote(params.x)"},
    ],
)
def test_shell_command_built_by_an_expression_is_refused(command):
    found = problem(body(steps=[step(step_type="shell", params={"command": command})]))

    assert found.loc == ("steps", 0, "params", "command")
    assert found.type == "shell_injection"
    assert 'command: ["echo", {expr: "params.x"}]' in found.msg
    assert "$MAESTRO_PARAM_X" in found.msg and "shell_interpolation" in found.msg


@pytest.mark.parametrize(
    ("command", "index", "fragment"),
    [
        (["sh", "-c", {"expr": "'echo ' + params.x"}], 2, "shell command built by a CEL"),
        (["/bin/bash", "-e", "-o", "pipefail", "-c", {"expr": "params.x"}], 5, "built by a CEL"),
        (["bash", {"expr": "params.script"}], 1, "options and script cannot be expressions"),
        (["sh", "-o", {"expr": "params.o"}, "-c", "x"], 2, "options and script"),
        ([{"expr": "params.program"}, "x"], 0, "the program (the first argv element)"),
    ],
)
def test_shell_code_position_in_argv_is_refused(command, index, fragment):
    found = problem(body(steps=[step(step_type="shell", params={"command": command})]))

    assert found.loc == ("steps", 0, "params", "command", index)
    assert found.type == "shell_injection" and fragment in found.msg


@pytest.mark.parametrize(
    "params",
    [
        {"command": 'echo "$MAESTRO_PARAM_X"'},
        {"command": ["echo", {"expr": "params.x"}, "--", {"expr": "steps.a.outputs.y"}]},
        # Values after the script are its $1, $2: data, not code.
        {"command": ["sh", "-c", 'echo "$1"', "sh", {"expr": "params.x"}]},
        {"command": ["sleep", 1.5]},
        {
            "command": {"expr": "'echo ' + shell_quote(params.x) + ' > out.txt'"},
            "shell_interpolation": True,
        },
        {
            "command": ["sh", "-c", {"expr": "'ls -l ' + shell_quote(params.dir)"}],
            "shell_interpolation": True,
        },
    ],
)
def test_safe_shell_commands_are_accepted(params):
    definition = parse_definition(body(steps=[step(step_type="shell", params=params)]))

    assert definition.steps[0].params == params


@pytest.mark.parametrize(
    ("command", "fragment"),
    [
        ("'echo ' + params.x", "must be string literals and shell_quote(...) calls joined by +"),
        ("'echo ' + shell_quote(params.x).substring(1)", "must be string literals"),
        ("'echo \"' + shell_quote(params.x) + '\"'", 'inside "..."'),
        ("'eval ' + shell_quote(params.x)", "an argument of `eval`"),
        ("shell_quote(params.x)", "where a command name goes"),
    ],
)
def test_opt_in_still_requires_every_value_quoted_in_a_plain_spot(command, fragment):
    params = {"command": {"expr": command}, "shell_interpolation": True}
    found = problem(body(steps=[step(step_type="shell", params=params)]))

    assert found.loc == ("steps", 0, "params", "command")
    assert fragment in found.msg


def test_opt_in_cannot_be_an_expression():
    params = {"command": "ls", "shell_interpolation": {"expr": "params.unsafe"}}
    found = problem(body(steps=[step(step_type="shell", params=params)]))

    assert found.loc == ("steps", 0, "params", "shell_interpolation")
    assert found.type == "expression_not_allowed"


def test_out_of_range_cron_names_every_field_not_the_day_rule():
    [found] = problems(body(triggers=[{"cron": "99 99 99 99 99"}]))
    assert found.loc == ("triggers", 0, "time", "cron")
    assert found.msg == (
        "cron expression '99 99 99 99 99' is out of range: minute 99 is not in 0-59; "
        "hour 99 is not in 0-23; day-of-month 99 is not in 1-31; month 99 is not in 1-12; "
        "day-of-week 99 is not in 0-7"
    )


@pytest.mark.parametrize("cron", ["0 0 * * 7", "59 23 31 12 *", "*/60 * * * *", "0 0 * * 0-7"])
def test_cron_at_the_edges_of_its_ranges_is_accepted(cron):
    [trigger] = parse_definition(body(triggers=[{"cron": cron}])).triggers
    assert isinstance(trigger, TimeTrigger) and trigger.cron == cron


# -- every problem in one answer -------------------------------------------------------------


def test_field_and_cross_field_problems_are_reported_together():
    """A bad CEL `when`, a bad cron, a duplicate step id and an unknown dependency: the first
    two fail field validation, the last two are cross-field rules; all four come back."""
    found = problems(
        body(
            steps=[
                step("a", when="1 +"),
                step("a", depends_on=["zz"]),
            ],
            triggers=[{"cron": "99 99 99 99 99"}],
        )
    )
    by_loc = {p.loc: p for p in found}
    assert set(by_loc) == {
        ("steps", 0, "when"),
        ("triggers", 0, "time", "cron"),
        ("steps", 1, "id"),
        ("steps", 1, "depends_on", 0),
    }, found
    assert "CEL expression does not compile" in by_loc["steps", 0, "when"].msg
    assert "minute 99 is not in 0-59" in by_loc["triggers", 0, "time", "cron"].msg
    assert by_loc["steps", 1, "id"].msg == "duplicate step id 'a' (first used by steps[0])"
    assert by_loc["steps", 1, "depends_on", 0].msg == "step 'a' depends on unknown step 'zz'"


def test_cross_field_rules_read_the_steps_that_failed_field_validation():
    found = problems(
        body(
            params={"dt": {"type": "string"}},
            steps=[
                step("a", retry={"max_attempts": 0}),  # field error; id and type still read
                step("b", step_type="nope", depends_on=["a", "c"]),
                "not a step",
                step("d", step_type="shell", params={}, extra_key=1),
            ],
            triggers=[
                {"every": "0s"},
                {"signal": {"all_of": [{"name": "x"}], "params": {"day": "signal.params.dt"}}},
            ],
        )
    )
    locs = {p.loc: p.type for p in found}
    assert locs == {
        ("steps", 0, "retry", "max_attempts"): "greater_than_equal",
        ("steps", 2): "model_type",
        ("steps", 3, "extra_key"): "extra_forbidden",
        ("triggers", 0, "interval"): "value_error",
        ("steps", 1, "depends_on", 1): "unknown_step",
        ("steps", 1, "type"): "unknown_step_type",
        ("steps", 3, "params", "command"): "missing",
        ("triggers", 1, "signal", "params", "day"): "unknown_param",
    }, found


def test_a_location_with_a_field_error_gets_no_second_problem():
    """A step id that breaks the pattern is reported once, not again as a duplicate; params
    that are not an object are not checked against the step type."""
    found = problems(
        body(
            steps=[
                step("1bad"),
                step("1bad"),
                step("s", step_type="shell", params=["echo"]),
            ]
        )
    )
    assert sorted(p.loc for p in found) == [
        ("steps", 0, "id"),
        ("steps", 1, "id"),
        ("steps", 2, "params"),
    ], found
    assert all(p.type != "duplicate_id" for p in found)


def test_a_cycle_is_reported_alongside_field_errors():
    found = problems(
        body(
            steps=[
                step("a", depends_on=["b"], timeout="soon"),
                step("b", depends_on=["a"]),
            ]
        )
    )
    assert [(p.loc, p.type) for p in found] == [
        (("steps", 0, "timeout"), found[0].type),
        (("steps",), "cycle"),
    ], found
    assert found[1].msg in ("dependency cycle: a -> b -> a", "dependency cycle: b -> a -> b")
