"""Local runs (`maestro run-local`, `maestro.testing`): the worker's executors and RunWorkflow's
scheduling rules in-process, with no PostgreSQL, Temporal server or key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from maestro.cli import app
from maestro.errors import ParamsInvalid
from maestro.testing import run_flow, run_step
from tests.conftest import EXAMPLES


def step(step_id: str, function: str = "echo", **more: Any) -> dict[str, Any]:
    """A python step calling tests.steps:<function>; `args` and other step fields in `more`."""
    args = more.pop("args", {})
    return {
        "id": step_id,
        "type": "python",
        "params": {"entrypoint": f"tests.steps:{function}", "args": args},
        **more,
    }


def flow(*steps: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"id": "local-test", "steps": list(steps), **more}


def tally(key: str, file: Path, **more: Any) -> dict[str, Any]:
    args = {"key": key, "file": str(file), **more.pop("args", {})}
    return step(key, "tally", args=args, **more)


def lines(file: Path) -> list[str]:
    return [line.rsplit(" ", 1)[0] for line in file.read_text().splitlines()]


def test_steps_run_in_dependency_order_with_upstream_outputs(tmp_path):
    log = tmp_path / "log"
    result = run_flow(
        flow(
            tally("a", log),
            tally("b", log, depends_on=["a"], args={"seconds": 0.2}),
            tally("c", log, depends_on=["a"]),
            step("d", depends_on=["b", "c"], args={"from_b": {"expr": "steps.b.outputs.key"}}),
        )
    )
    assert result.status == "succeeded", result.error
    order = lines(log)
    assert order.index("end a") < order.index("b") and order.index("end a") < order.index("c")
    assert result.steps["d"].outputs["upstream"] == {"b": {"key": "b"}, "c": {"key": "c"}}
    assert result.steps["d"].outputs["args"] == {"from_b": "b"}
    assert result.outputs["a"] == {"key": "a"}


def test_when_false_skips_the_step_and_what_depends_on_it():
    result = run_flow(
        flow(
            step("first"),
            step("maybe", depends_on=["first"], when="params.go"),
            step("after", depends_on=["maybe"]),
            step("other", depends_on=["first"], when="steps.first.status == 'succeeded'"),
            params={"go": {"type": "boolean", "default": False}},
        )
    )
    assert result.status == "succeeded"
    statuses = {sid: s.status for sid, s in result.steps.items()}
    assert statuses == {
        "first": "succeeded",
        "maybe": "skipped",
        "after": "skipped",
        "other": "succeeded",
    }
    assert result.steps["maybe"].error == "condition is false: params.go"
    assert result.steps["after"].error == "upstream step maybe is skipped"
    assert (
        run_flow(
            flow(step("maybe", when="params.go"), params={"go": {"type": "boolean"}}), {"go": True}
        )
        .steps["maybe"]
        .succeeded
    )


def test_failed_attempts_are_retried_under_the_step_policy_until_one_succeeds():
    retry = {"max_attempts": 3, "initial_backoff": "1s"}
    result = run_flow(flow(step("flaky", "flaky", args={"succeed_on": 3}, retry=retry)))
    assert result.status == "succeeded"
    assert result.steps["flaky"].attempts == 3
    assert result.steps["flaky"].outputs == {"attempt": 3}

    out_of_tries = run_flow(
        flow(step("flaky", "flaky", args={"succeed_on": 3}, retry={"max_attempts": 2}))
    )
    flaky = out_of_tries.steps["flaky"]
    assert (flaky.status, flaky.attempts) == ("failed", 2)
    assert flaky.error == "RuntimeError: attempt 2 fails on purpose"

    not_retried = run_flow(
        flow(
            step(
                "flaky",
                "flaky",
                args={"succeed_on": 3},
                retry={"max_attempts": 5, "non_retryable_error_types": ["RuntimeError"]},
            )
        )
    )
    assert (not_retried.steps["flaky"].status, not_retried.steps["flaky"].attempts) == (
        "failed",
        1,
    )


def test_a_failed_step_fails_the_run_skips_its_dependents_and_lets_others_finish():
    result = run_flow(
        flow(
            step("bad", "fail", args={"message": "no data"}, retry={"max_attempts": 1}),
            step("downstream", depends_on=["bad"]),
            step("independent"),
        )
    )
    assert result.status == "failed"
    assert result.error == "step bad failed: ValueError: no data"
    bad = result.steps["bad"]
    assert bad.status == "failed" and bad.error == "ValueError: no data"
    assert bad.traceback is not None
    assert "tests/steps.py" in bad.traceback and "ValueError: no data" in bad.traceback
    assert "workers/" not in bad.traceback  # the step's own frames only
    assert result.steps["downstream"].status == "skipped"
    assert result.steps["downstream"].error == "upstream step bad is failed"
    assert result.steps["independent"].status == "succeeded"


def test_failure_modes_stop_at_once_or_complete_with_error():
    stopped = run_flow(
        flow(
            step(
                "bad",
                "fail",
                retry={"max_attempts": 1},
                failure_mode="fail_immediately",
            ),
            step("slow", "slow", args={"seconds": 30}),
        )
    )
    assert stopped.status == "failed"
    assert stopped.steps["slow"].status == "stopped"
    assert stopped.error == "step bad failed: ValueError: failing on purpose"

    ignored = run_flow(
        flow(
            step("bad", "fail", retry={"max_attempts": 1}, failure_mode="ignore_failure"),
            step("after", depends_on=["bad"]),
        )
    )
    assert ignored.status == "succeeded"
    assert ignored.steps["bad"].status == "completed_with_error"
    assert ignored.steps["after"].status == "succeeded"


def test_expression_errors_and_timeouts_fail_the_step():
    result = run_flow(
        flow(
            step("expr", args={"x": {"expr": "params.missing + 1"}}),
            {
                "id": "sleepy",
                "type": "sleep",
                "params": {"seconds": 30},
                "timeout": "1s",
                "retry": {"max_attempts": 1},
            },
        )
    )
    assert result.steps["expr"].status == "failed"
    assert result.steps["expr"].error.startswith("expression error:")
    assert result.steps["sleepy"].status == "timed_out"
    assert result.steps["sleepy"].error == "timed out (start_to_close)"
    assert result.status == "failed"


def test_params_get_their_defaults_and_are_type_checked():
    definition = flow(
        step("show"), params={"n": {"type": "integer", "default": 3}, "who": {"type": "string"}}
    )
    result = run_flow(definition, {"who": "Ada"})
    assert result.params == {"n": 3, "who": "Ada"}
    assert result.steps["show"].outputs["params"] == {"n": 3, "who": "Ada"}
    with pytest.raises(ParamsInvalid) as raised:
        run_flow(definition, {"who": "Ada", "n": "three"})
    assert raised.value.problems[0].loc == ("params", "n")
    with pytest.raises(ParamsInvalid):
        run_flow(definition)  # `who` is required


def test_foreach_runs_every_item_and_computes_its_outputs(tmp_path):
    log = tmp_path / "log"
    result = run_flow(
        flow(
            {
                "id": "each",
                "type": "foreach",
                "params": {
                    "items": "params.keys",
                    "as": "name",
                    "max_concurrency": 1,
                    "steps": [tally("t", log, args={"key": {"expr": "name"}})],
                    "outputs": {
                        "all": "iterations",
                        "last": "iterations[size(iterations) - 1].t.key",
                    },
                },
            },
            step("after", depends_on=["each"], args={"last": {"expr": "steps.each.outputs.last"}}),
            params={"keys": {"type": "array", "default": ["x", "y", "z"]}},
        )
    )
    assert result.status == "succeeded", result.error
    assert result.steps["each"].outputs == {
        "all": [{"t": {"key": "x"}}, {"t": {"key": "y"}}, {"t": {"key": "z"}}],
        "last": "z",
    }
    assert result.steps["after"].outputs["args"] == {"last": "z"}
    # max_concurrency 1: each iteration ends before the next begins
    assert lines(log) == ["x", "end x", "y", "end y", "z", "end z"]
    assert [i.status for i in result.steps["each"].iterations] == ["succeeded"] * 3
    assert result.steps["each"].iterations[1].steps["t"].outputs == {"key": "y"}


@pytest.mark.parametrize(
    ("mode", "status"),
    [("finish_all", "failed"), ("fail_fast", "failed"), ("ignore_failures", "succeeded")],
)
def test_foreach_failure_modes(tmp_path, mode, status):
    log, marker = tmp_path / "log", tmp_path / "failing"
    marker.touch()
    body = tally(
        "t",
        log,
        args={"key": {"expr": "item"}, "fail_keys": ["b"], "fail_while": str(marker)},
        retry={"max_attempts": 1},
    )
    result = run_flow(
        flow(
            {
                "id": "each",
                "type": "foreach",
                "params": {
                    "items": "['a', 'b', 'c', 'd']",
                    "max_concurrency": 1,
                    "failure_mode": mode,
                    "steps": [body],
                },
            }
        )
    )
    each = result.steps["each"]
    assert (result.status, each.status) == (status, status)
    iterations = [i.status for i in each.iterations]
    if mode == "fail_fast":
        assert iterations == ["succeeded", "failed", "stopped", "stopped"]
        assert "c" not in lines(log)
    else:
        assert iterations == ["succeeded", "failed", "succeeded", "succeeded"]
    if status == "failed":
        assert each.error == (
            f"1 of 4 iterations failed ({mode}); first: iteration 1: "
            "step t: RuntimeError: item b fails on purpose"
        )


def test_while_repeats_its_body_with_the_previous_outputs():
    result = run_flow(
        flow(
            {
                "id": "loop",
                "type": "while",
                "params": {
                    "condition": "iteration.index < 3",
                    "max_iterations": 10,
                    "steps": [
                        {
                            "id": "inc",
                            "type": "noop",
                            "params": {
                                "outputs": {
                                    "n": {"expr": "has(previous.inc) ? previous.inc.n + 1 : 1"}
                                }
                            },
                        }
                    ],
                },
            }
        )
    )
    assert result.status == "succeeded", result.error
    assert result.steps["loop"].outputs == {"iterations": 3, "inc": {"n": 3}}


def test_subworkflows_of_the_same_target_run_and_others_fail_clearly():
    child = {
        "id": "child",
        "params": {"x": {"type": "integer"}},
        "steps": [
            {"id": "double", "type": "noop", "params": {"outputs": {"y": {"expr": "params.x * 2"}}}}
        ],
    }
    parent = flow(
        {"id": "call", "type": "subworkflow", "params": {"workflow": "child", "params": {"x": 21}}},
        step("after", depends_on=["call"], args={"y": {"expr": "steps.call.outputs.double.y"}}),
    )
    result = run_flow(parent, also=[child])
    assert result.status == "succeeded", result.error
    assert result.steps["call"].outputs == {"double": {"y": 42}}
    assert result.steps["after"].outputs["args"] == {"y": 42}

    alone = run_flow(parent)
    assert alone.steps["call"].status == "failed"
    assert "cannot start subworkflow 'child'" in alone.steps["call"].error
    assert "its own target" in alone.steps["call"].error


def test_signals_a_run_emits_are_listed_not_delivered():
    definition = yaml.safe_load((EXAMPLES / "daily-report.yaml").read_text())
    result = run_flow(definition, {"dt": "2026-11-26"})
    assert result.status == "succeeded"
    assert result.steps["build"].outputs["stdout_tail"] == "report for 2026-11-26"
    assert [(s.step_id, s.name, s.params) for s in result.signals] == [
        ("build", "report.ready", {"dt": "2026-11-26"})
    ]


def test_one_step_runs_with_given_params_and_upstream_outputs():
    target = str(EXAMPLES / "hello.yaml")
    count = run_step(target, "count", upstream={"greet": {"stdout_tail": "hi there"}})
    assert (count.status, count.outputs) == ("succeeded", {"letters": 7, "text": "hi there"})
    shout = run_step(target, "shout", {"who": "ada"})
    assert shout.status == "skipped"  # its `when` still decides
    shout = run_step(target, "shout", {"who": "ada", "shout": True})
    assert shout.outputs["stdout_tail"] == "ADA"


def test_the_reference_training_pipeline_runs_locally(tmp_path):
    result = run_flow(
        EXAMPLES / "ml" / "train.yaml", {"dt": "2026-11-26", "epoch_seconds": 0}, work_dir=tmp_path
    )
    assert result.status == "succeeded", result.error
    train = result.steps["train"].outputs
    assert train["model_version"] == 1 and train["model_uri"].startswith(tmp_path.as_uri())
    assert result.steps["evaluate"].outputs["metrics"]["accuracy"] >= 0.85
    assert result.steps["deploy"].outputs["stage"] == "production"
    [deployed] = result.signals
    assert (deployed.name, deployed.params["version"]) == ("model.deployed", 1)


cli = CliRunner()


def test_cli_run_local_prints_steps_and_exits_zero_on_success():
    result = cli.invoke(app, ["run-local", str(EXAMPLES / "hello.yaml"), "who=Ada", "shout=true"])
    assert result.exit_code == 0, result.output
    assert "greet" in result.output and '"stdout_tail":"ADA"' in result.output
    assert "run succeeded" in result.output


def test_cli_run_local_lists_triggers_without_arming_them():
    result = cli.invoke(app, ["run-local", str(EXAMPLES / "mail-report.yaml")])
    assert result.exit_code == 0, result.output
    assert "triggers (listed, not armed):" in result.output
    assert "when a run of daily-report ends succeeded" in result.output
    assert "weekdays 07:00 Europe/Paris" in result.output


def test_cli_run_local_prints_the_failing_step_traceback_and_exits_four(tmp_path):
    target = tmp_path / "failing.yaml"
    target.write_text(
        yaml.safe_dump(
            flow(
                step("bad", "fail", args={"message": "bad input"}),
                step("after", depends_on=["bad"]),
            )
        )
    )
    result = cli.invoke(app, ["run-local", str(target), "--no-backoff", "--dir", str(tmp_path)])
    assert result.exit_code == 4, result.output
    assert "Traceback (most recent call last):" in result.output
    assert 'raise ValueError(ctx.args.get("message", "failing on purpose"))' in result.output
    assert "ValueError: bad input" in result.output
    assert "after 3 attempts" in result.output
    assert "run failed: step bad failed: ValueError: bad input" in result.output


def test_cli_run_local_rejects_bad_targets_and_params(tmp_path):
    result = cli.invoke(app, ["run-local", str(EXAMPLES / "hello.yaml"), "who=1", "extra=2"])
    assert result.exit_code == 2
    assert "params.extra: unknown param 'extra'" in result.output
    assert "params.who: expected string" in result.output
    broken = tmp_path / "broken.yaml"
    broken.write_text("id: x\nsteps: [{id: a, type: nope}]\n")
    result = cli.invoke(app, ["run-local", str(broken)])
    assert result.exit_code == 2 and "workflow definition is invalid" in result.output
    result = cli.invoke(app, ["run-local", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2 and "cannot load" in result.output


def test_triggers_read_as_words():
    from maestro.local import load_definition_file
    from maestro.trigger_words import describe_trigger

    report = load_definition_file(EXAMPLES / "daily-report.yaml")
    assert [describe_trigger(t) for t in report.triggers] == [
        "when orders.loaded (rows > 0) and customers.loaded for the same dt within 6h"
    ]
    training = load_definition_file(EXAMPLES / "ml" / "train.yaml")
    assert [describe_trigger(t) for t in training.triggers] == [
        "when table.partition.ready (table = digits)"
    ]
