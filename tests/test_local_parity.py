"""Local and deployed runs of the same flow end alike: the same run status, the same step
statuses, outputs and errors. Each flow runs once through `maestro.testing` and once through
the API on a real Temporal dev server, worker and PostgreSQL."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from maestro.testing import arun_flow
from tests.conftest import EXAMPLES, unique_id, wait_for_run

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("worker"), pytest.mark.timeout(300)]

_URI = re.compile(r"file://\S+")


def normal(value: Any) -> Any:
    """Outputs with what differs by nature between two runs (artifact locations) masked."""
    if isinstance(value, dict):
        return {k: normal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normal(v) for v in value]
    if isinstance(value, str):
        return _URI.sub("<artifact>", value)
    return value


def example(name: str, renames: dict[str, str]) -> dict[str, Any]:
    text = (EXAMPLES / name).read_text()
    for old, new in renames.items():
        text = text.replace(old, new)
    return yaml.safe_load(text)


async def deployed(api, definitions: list[dict[str, Any]], params: dict[str, Any]) -> dict:
    for definition in definitions:
        response = await api.post("/api/v1/workflows", json=definition)
        assert response.status_code in (200, 201), response.text
    started = await api.post(
        f"/api/v1/workflows/{definitions[-1]['id']}/runs", json={"params": params}
    )
    assert started.status_code in (200, 201), started.text
    return await wait_for_run(api, started.json()["run_id"], timeout=180)


def failures_flow(workflow_id: str) -> dict[str, Any]:
    """Retries, a failure skipping its dependents, ignore_failure, `when`, expression errors,
    a foreach with failing iterations and computed outputs."""

    def python(step_id: str, function: str, **more: Any) -> dict[str, Any]:
        args = more.pop("args", {})
        return {
            "id": step_id,
            "type": "python",
            "params": {"entrypoint": f"tests.steps:{function}", "args": args},
            **more,
        }

    fast = {"initial_backoff": "100ms", "maximum_backoff": "100ms"}
    return {
        "id": workflow_id,
        "params": {"n": {"type": "integer", "default": 3}},
        "steps": [
            python("flaky", "flaky", args={"succeed_on": 2}, retry={"max_attempts": 3, **fast}),
            python("bad", "fail", args={"message": "no rows"}, retry={"max_attempts": 2, **fast}),
            python("after_bad", "echo", depends_on=["bad"]),
            python("tolerated", "fail", retry={"max_attempts": 1}, failure_mode="ignore_failure"),
            python("after_tolerated", "flaky", depends_on=["tolerated"], args={"succeed_on": 1}),
            {
                "id": "skipped",
                "type": "noop",
                "depends_on": ["flaky"],
                "when": "steps.flaky.outputs.attempt > 5",
            },
            {"id": "broken", "type": "noop", "params": {"outputs": {"x": {"expr": "1 / 0"}}}},
            {
                "id": "each",
                "type": "foreach",
                "params": {
                    "items": "range(0, params.n)",
                    "as": "i",
                    "max_concurrency": 2,
                    "failure_mode": "ignore_failures",
                    "steps": [
                        {
                            "id": "square",
                            "type": "noop",
                            "params": {"outputs": {"v": {"expr": "i * i"}}},
                        },
                        {
                            "id": "check",
                            "type": "noop",
                            "depends_on": ["square"],
                            "when": "i != 1",
                            "params": {"outputs": {"ok": True}},
                        },
                    ],
                    "outputs": {"best": "max_by(iterations, 'square.v').square.v"},
                },
            },
            {
                "id": "loop",
                "type": "while",
                "params": {
                    "condition": "iteration.index < 2",
                    "max_iterations": 5,
                    "steps": [
                        {
                            "id": "step",
                            "type": "noop",
                            "params": {"outputs": {"at": {"expr": "iteration.index"}}},
                        }
                    ],
                },
            },
        ],
    }


def subworkflow_flows(parent_id: str, child_id: str) -> list[dict[str, Any]]:
    child = {
        "id": child_id,
        "params": {"x": {"type": "integer"}},
        "steps": [
            {"id": "double", "type": "noop", "params": {"outputs": {"y": {"expr": "params.x * 2"}}}}
        ],
    }
    parent = {
        "id": parent_id,
        "steps": [
            {
                "id": "call",
                "type": "subworkflow",
                "params": {"workflow": child_id, "params": {"x": 21}},
            },
            {
                "id": "use",
                "type": "noop",
                "depends_on": ["call"],
                "params": {"outputs": {"y": {"expr": "steps.call.outputs.double.y"}}},
            },
        ],
    }
    return [child, parent]


def cases() -> list[tuple[str, Any]]:
    return [
        ("hello, shouting", lambda: ([example("hello.yaml", {})], {"who": "Ada", "shout": True})),
        ("hello, quiet", lambda: ([example("hello.yaml", {})], {"who": "Bo"})),
        (
            "daily report",
            lambda: ([example("daily-report.yaml", {})], {"dt": "2026-11-26"}),
        ),
        ("mail report", lambda: ([example("mail-report.yaml", {})], {})),
        (
            "ml training",
            lambda: (
                [
                    example(
                        "ml/train.yaml",
                        {"digits-classifier": unique_id("digits"), "table: digits": "table: x"},
                    )
                ],
                {"dt": "2026-11-26", "epoch_seconds": 0, "epochs": 4},
            ),
        ),
        (
            "ml sweep",
            lambda: (
                # One iteration at a time: version numbers follow the order iterations
                # register their models in, a race between concurrent ones.
                [
                    example(
                        "ml/sweep.yaml",
                        {
                            "digits-sweep": unique_id("sweep"),
                            "max_concurrency: 2": "max_concurrency: 1",
                        },
                    )
                ],
                {"epochs": 2, "alphas": [0.0001, 0.01]},
            ),
        ),
        ("failure modes", lambda: ([failures_flow("failures")], {})),
        ("subworkflow", lambda: (subworkflow_flows("parent", "child"), {})),
    ]


@pytest.mark.parametrize("make", [make for _, make in cases()], ids=[n for n, _ in cases()])
async def test_local_and_deployed_runs_end_alike(api, tmp_path, make):
    definitions, params = make()
    # Ids no other test uses, the same in both worlds (a subworkflow names its callee).
    for definition in definitions:
        fresh = unique_id(definition["id"])
        calls = [s["params"] for d in definitions for s in d["steps"] if s["type"] == "subworkflow"]
        for call in calls:
            if call["workflow"] == definition["id"]:
                call["workflow"] = fresh
        definition["id"] = fresh
    local = await arun_flow(
        definitions[-1], params, also=definitions[:-1], work_dir=tmp_path, backoff=1.0
    )
    remote = await deployed(api, definitions, params)

    assert local.status == remote["status"], (local.error, remote["error"])
    assert local.error == remote["error"]
    seen = {
        s["step_id"]: (s["status"], normal(s["outputs"] or {}), s["error"]) for s in remote["steps"]
    }
    mine = {sid: (s.status.value, normal(s.outputs), s.error) for sid, s in local.steps.items()}
    assert mine == seen
