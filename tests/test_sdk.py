"""maestro.sdk: Python flows build the same definitions as the YAML examples; loading flows from
files, packages and modules; what the SDK refuses."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from maestro.definitions import (
    IntervalTrigger,
    OnFinishTrigger,
    SignalTrigger,
    TimeTrigger,
    parse_definition,
)
from maestro.errors import DefinitionInvalid, FlowInvalid
from maestro.sdk import (
    Param,
    Workflow,
    cron,
    every,
    expect,
    expr,
    load,
    on_finish,
    retry,
    signal,
    sla,
    wait_for,
)
from tests.sdk_examples import EQUIVALENTS

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("path", sorted(EQUIVALENTS))
def test_python_flow_builds_the_yaml_examples_definition(path: str) -> None:
    expected = parse_definition(yaml.safe_load((ROOT / path).read_text()))
    built = EQUIVALENTS[path].definition()
    assert built == expected
    assert built.model_dump(mode="json") == expected.model_dump(mode="json")
    assert built.content_hash() == expected.content_hash()


def test_every_yaml_example_has_a_python_equivalent() -> None:
    examples = {
        str(p.relative_to(ROOT))
        for p in [*ROOT.glob("examples/*.yaml"), *ROOT.glob("examples/ml/*.yaml")]
    }
    assert examples == set(EQUIVALENTS)


def noop_step(ctx: object) -> dict[str, object]:
    return {"ok": True}


def test_every_trigger_kind_and_step_option() -> None:
    wf = Workflow(
        "all-kinds",
        params={"dt": Param(str), "n": Param(int, default=3), "ratio": Param(float, default=0.5)},
        triggers=[
            signal(
                "a.ready",
                where={"rows": {">": 0}},
                within="1h",
                when="signal.params.rows < 10",
                branches=["prod"],
            ),
            on_finish(
                "upstream", status=["failed", "timed_out"], params={"dt": "signal.params.dt"}
            ),
            cron(
                "0 7 * * MON-FRI", timezone="Europe/Paris", jitter="5m", sla=sla(finish_within="2h")
            ),
            every("15m", offset="1m"),
        ],
        run_strategy="parallel",
        timeout="3h",
        sla=sla(finish_by="09:00", timezone="Europe/Paris"),
        expect=[expect("a.ready", by="06:00", where={"table": "a"})],
        requirements=["scikit-learn>=1.4"],
    )
    first = wf.step(
        noop_step,
        id="first",
        retry=retry(5, initial_backoff="2s", maximum_backoff="1m"),
        timeout=timedelta(minutes=10),
        wait_for=[wait_for("b.ready", where={"dt": expr("params.dt")}, timeout="1h")],
        emits=["first.done"],
        failure_mode="ignore_failure",
        task_queue="gpu",
        secrets=["token"],
    )
    wf.sleep("nap", 1.5, depends_on=["first"])
    wf.http(
        "call",
        "https://example.com/x",
        method="POST",
        json={"n": expr("params.n")},
        depends_on=[first],
    )
    wf.subworkflow("child", "other-flow", params={"x": 1}, wait=False, depends_on=[first])
    loop = wf.while_("loop", "iteration < 3", max_iterations=5, depends_on=[first])
    loop.noop("tick", outputs={"i": 1})
    definition = wf.definition()
    kinds = [type(t) for t in definition.triggers]
    assert kinds == [SignalTrigger, OnFinishTrigger, TimeTrigger, IntervalTrigger]
    arrival = definition.triggers[0]
    assert isinstance(arrival, SignalTrigger) and arrival.signal.branches == ["prod"]
    time = definition.triggers[2]
    assert isinstance(time, TimeTrigger)
    assert (time.timezone, time.jitter) == ("Europe/Paris", timedelta(minutes=5))
    assert time.sla is not None and time.sla.finish_within == timedelta(hours=2)
    step = definition.step("first")
    assert step.params == {"entrypoint": "tests.test_sdk:noop_step", "secrets": ["token"]}
    assert step.retry.max_attempts == 5 and step.retry.maximum_backoff == timedelta(minutes=1)
    assert step.timeout == timedelta(minutes=10)
    assert step.wait_for[0].where == {"dt": {"expr": "params.dt"}}
    assert [e.name for e in step.emits] == ["first.done"]
    assert definition.step("nap").depends_on == ["first"]
    assert definition.step("loop").params["steps"][0]["id"] == "tick"
    assert definition.run_strategy.kind == "parallel"
    assert wf.requirements == ["scikit-learn>=1.4"]


def test_a_decorated_step_stays_callable() -> None:
    wf = Workflow("callable")

    @wf.step
    def double(ctx: object) -> dict[str, int]:
        return {"n": 2}

    assert double(None) == {"n": 2}  # type: ignore[arg-type]
    assert double.id == "double"


def test_the_definition_is_checked_as_the_api_checks_it() -> None:
    wf = Workflow("bad-flow")
    wf.noop("a", depends_on=["missing"])
    with pytest.raises(DefinitionInvalid) as caught:
        wf.definition()
    assert caught.value.problems[0].loc == ("steps", 0, "depends_on", 0)


def test_refusals() -> None:
    wf = Workflow("refused")
    wf.noop("a")
    with pytest.raises(FlowInvalid, match="used twice"):
        wf.noop("a")
    wf.step(lambda ctx: {}, id="anon")  # type: ignore[arg-type, return-value]
    with pytest.raises(FlowInvalid, match="top level of a module"):
        wf.definition()
    with pytest.raises(FlowInvalid, match="param type"):
        Workflow("p", params={"x": Param(set)}).data()
    with pytest.raises(FlowInvalid, match="one signal given by name"):
        signal("a", "b", where={"x": 1})
    empty = Workflow("empty-loop")
    empty.foreach("each", "params.items")
    with pytest.raises(FlowInvalid, match="no steps in its body"):
        empty.definition()


FLOW = """
from maestro.sdk import Workflow, StepContext

wf = Workflow("{wid}")
second = Workflow("{wid}-second")

@wf.step
def hello(ctx: StepContext) -> dict[str, str]:
    return {{"said": "{word}"}}

second.noop("n")
"""


def test_load_a_lone_file_names_modules_after_the_file(tmp_path: Path) -> None:
    flow = tmp_path / "lone_flow.py"
    flow.write_text(FLOW.format(wid="lone", word="hi"))
    loaded = load(str(flow))
    assert [w.id for w in loaded.workflows] == ["lone", "lone-second"]
    assert loaded.root == tmp_path and loaded.files == [flow]
    step = loaded.workflows[0].definition().step("hello")
    assert step.params["entrypoint"] == "lone_flow:hello"


def test_a_file_in_a_package_is_the_packages_module(tmp_path: Path) -> None:
    package = tmp_path / "sdkpkg_a" / "flows"
    package.mkdir(parents=True)
    (tmp_path / "sdkpkg_a" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "daily.py").write_text(FLOW.format(wid="pkg", word="yo"))
    for target in (str(package / "daily.py"), "sdkpkg_a.flows.daily"):
        loaded = load(target)
        assert loaded.root == tmp_path
        assert loaded.files == [tmp_path / "sdkpkg_a"]
        assert loaded.module == "sdkpkg_a.flows.daily"
        step = loaded.workflows[0].definition().step("hello")
        assert step.params["entrypoint"] == "sdkpkg_a.flows.daily:hello"


def test_load_reports_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(FlowInvalid, match="no such file"):
        load(str(tmp_path / "missing.py"))
    with pytest.raises(FlowInvalid, match="cannot find module"):
        load("no_such_module_anywhere.flow")
    (tmp_path / "empty_flow.py").write_text("x = 1\n")
    with pytest.raises(FlowInvalid, match="defines no maestro.sdk.Workflow"):
        load(str(tmp_path / "empty_flow.py"))
    (tmp_path / "broken_flow.py").write_text("import not_installed_anywhere\n")
    with pytest.raises(FlowInvalid, match="ModuleNotFoundError"):
        load(str(tmp_path / "broken_flow.py"))
    # The SDK module is untouched by an error: a later load works.
    assert load(str(ROOT / "examples" / "ml" / "flow.py")).workflows


def test_a_python_flow_runs_locally_with_maestro_testing() -> None:
    from maestro.testing import run_flow
    from tests.sdk_examples import hello

    result = run_flow(hello, {"who": "Ada", "shout": True})
    assert result.status == "succeeded"
    assert result.steps["count"].outputs["letters"] == 8
    assert result.steps["shout"].status == "succeeded"
