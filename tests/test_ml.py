"""ML steps and the model registry against real PostgreSQL, a Temporal dev server and an
in-process worker: the reference pipeline, gates, champion/challenger, deploy and rollback,
artifacts, and heartbeat details reaching a retried training attempt."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from maestro.db.tables import Artifact, Run
from tests.conftest import EXAMPLES, unique_id, wait_for_run

pytestmark = pytest.mark.usefixtures("worker")


async def push(api, body: dict) -> None:
    response = await api.post("/api/v1/workflows", json=body)
    assert response.status_code in (200, 201), response.text


async def runs_of(sessions, workflow_id: str) -> list[Run]:
    async with sessions() as session:
        query = select(Run).where(Run.workflow_id == workflow_id).order_by(Run.run_number)
        return list((await session.execute(query)).scalars())


async def wait_for_runs(sessions, workflow_id: str, count: int, timeout: float = 60) -> list:
    for _ in range(int(timeout * 5)):
        runs = await runs_of(sessions, workflow_id)
        if len(runs) >= count:
            return runs
        await asyncio.sleep(0.2)
    raise AssertionError(f"{workflow_id} has {len(runs)} runs, expected {count}")


def fixed_pipeline(workflow_id: str, model: str, gates: list[str]) -> dict:
    return {
        "id": workflow_id,
        "params": {"quality": {"type": "number"}},
        "steps": [
            {
                "id": "train",
                "type": "train",
                "retry": {"max_attempts": 1},
                "params": {
                    "entrypoint": "tests.steps:train_fixed",
                    "model_name": model,
                    "data": "fixtures/fixed",
                    "args": {"quality": {"expr": "params.quality"}},
                },
            },
            {
                "id": "evaluate",
                "type": "evaluate",
                "depends_on": ["train"],
                "params": {
                    "entrypoint": "tests.steps:evaluate_fixed",
                    "model_name": model,
                    "model_version": {"expr": "steps.train.outputs.model_version"},
                    "gates": gates,
                    "better_than": {"stage": "production", "metric": "accuracy"},
                },
            },
            {
                "id": "deploy",
                "type": "deploy",
                "depends_on": ["evaluate"],
                "params": {
                    "model_name": model,
                    "model_version": {"expr": "steps.train.outputs.model_version"},
                    "stage": "production",
                },
            },
        ],
    }


async def train(api, workflow_id: str, quality: float) -> dict:
    run = (
        await api.post(
            f"/api/v1/workflows/{workflow_id}/runs", json={"params": {"quality": quality}}
        )
    ).json()
    return await wait_for_run(api, run["run_id"])


async def test_reference_pipeline_from_signal_to_scored_predictions(api, sessions):
    # The example files as shipped, under names no other test (or the demo) uses.
    model, train_id, score_id, table = (unique_id(p) for p in ("digits", "train", "score", "t"))
    renames = {
        "digits-classifier": model,
        "digits-train": train_id,
        "digits-score": score_id,
        "table: digits": f"table: {table}",
    }
    for name in ("train.yaml", "score.yaml", "sweep.yaml"):
        text = (EXAMPLES / "ml" / name).read_text()
        for old, new in renames.items():
            text = text.replace(old, new)
        response = await api.post(
            "/api/v1/workflows", content=text, headers={"content-type": "application/yaml"}
        )
        assert response.status_code in (200, 201), response.text
    signal = (
        await api.post(
            "/api/v1/signals",
            json={
                "name": "table.partition.ready",
                "params": {"table": table, "dt": f"2026-11-{uuid.uuid4().int % 28 + 1:02d}"},
                "request_id": unique_id("arrival"),
            },
        )
    ).json()
    [training] = signal["runs"]
    done = await wait_for_run(api, training["run_id"], timeout=120)
    assert done["status"] == "succeeded", done
    steps = {s["step_id"]: s for s in done["steps"]}
    version = steps["train"]["outputs"]["model_version"]
    assert steps["evaluate"]["outputs"]["metrics"]["accuracy"] >= 0.85
    assert steps["deploy"]["outputs"]["stage"] == "production"

    registered = (await api.get(f"/api/v1/models/{model}")).json()
    assert registered["stages"]["production"] == version
    detail = (await api.get(f"/api/v1/models/{model}/versions/{version}")).json()
    assert detail["metrics"]["accuracy"] >= 0.85 and "train_accuracy" in detail["metrics"]
    assert detail["lineage"]["run_id"] == training["run_id"]
    assert [s["id"] for s in detail["lineage"]["signals"]] == [signal["signal"]["id"]]
    assert detail["artifact_uri"].startswith("file://")

    scoring = [
        r
        for r in await wait_for_runs(sessions, score_id, 1)
        if r.params["model_version"] == version
    ]
    assert scoring, "the deployment started a scoring run"
    scored = await wait_for_run(api, scoring[-1].run_id, timeout=60)
    assert scored["status"] == "succeeded", scored
    outputs = scored["steps"][0]["outputs"]
    assert outputs["rows"] == 200 and outputs["agreement_with_labels"] > 0.8
    predictions = Path(outputs["artifacts"]["predictions"].removeprefix("file://"))
    assert len(predictions.read_text().splitlines()) == 201
    async with sessions() as session:
        artifact = await session.get(Artifact, outputs["artifacts"]["predictions"])
    assert artifact.run_id == scored["run_id"] and artifact.size == predictions.stat().st_size
    assert len(artifact.sha256) == 64


async def test_gates_and_champion_challenger_decide_deployment(api):
    model, wid = unique_id("model"), unique_id("ml-gates")
    await push(api, fixed_pipeline(wid, model, ["accuracy >= 0.7"]))

    below_gate = await train(api, wid, 0.5)
    steps = {s["step_id"]: s for s in below_gate["steps"]}
    assert below_gate["status"] == "failed"
    assert steps["evaluate"]["status"] == "failed"
    assert "gate failed: accuracy = 0.5, required >= 0.7" in steps["evaluate"]["error"]
    assert steps["deploy"]["status"] == "skipped"

    first = await train(api, wid, 0.9)  # no champion yet: it deploys
    assert first["status"] == "succeeded"
    worse = await train(api, wid, 0.8)
    steps = {s["step_id"]: s for s in worse["steps"]}
    assert worse["status"] == "failed" and steps["deploy"]["status"] == "skipped"
    assert (
        "champion/challenger failed: accuracy = 0.8 is not higher than production version 2's 0.9"
    ) in steps["evaluate"]["error"]
    better = await train(api, wid, 0.95)
    assert better["status"] == "succeeded"
    assert {s["step_id"]: s for s in better["steps"]}["deploy"]["outputs"]["previous_version"] == 2

    registry = (await api.get(f"/api/v1/models/{model}")).json()
    stages = {v["version"]: v["stage"] for v in registry["versions"]}
    assert stages == {1: "none", 2: "archived", 3: "none", 4: "production"}
    assert [(c["version"], c["previous_version"]) for c in registry["history"]] == [
        (2, None),
        (4, 2),
    ]

    # Rollback: promote the older version; the newer is archived and the signal says so.
    rolled = await api.post(
        f"/api/v1/models/{model}/versions/2/promote", json={"stage": "production"}
    )
    assert rolled.status_code == 200 and rolled.json()["previous_version"] == 4
    registry = (await api.get(f"/api/v1/models/{model}")).json()
    assert registry["stages"] == {"production": 2}
    deployed = (
        await api.get("/api/v1/signals", params={"name": "model.deployed", "param.model": model})
    ).json()["items"]
    assert [(s["params"]["version"], s["params"]["previous_version"]) for s in deployed] == [
        (2, 4),
        (4, 2),
        (2, 0),
    ]
    bad_stage = await api.post(f"/api/v1/models/{model}/versions/2/promote", json={"stage": "moon"})
    assert bad_stage.status_code == 422
    missing = await api.post(
        f"/api/v1/models/{model}/versions/99/promote", json={"stage": "production"}
    )
    assert missing.status_code == 404


async def test_heartbeat_details_reach_the_retried_training_attempt(api):
    wid = unique_id("ml-resume")
    await push(
        api,
        {
            "id": wid,
            "steps": [
                {
                    "id": "train",
                    "type": "train",
                    "heartbeat_timeout": "5s",
                    "retry": {"max_attempts": 2, "initial_backoff": "0.2s"},
                    "params": {
                        "entrypoint": "tests.steps:train_interrupted",
                        "model_name": unique_id("resumed"),
                    },
                }
            ],
        },
    )
    run = (await api.post(f"/api/v1/workflows/{wid}/runs", json={})).json()
    done = await wait_for_run(api, run["run_id"])
    assert done["status"] == "succeeded", done
    step = done["steps"][0]
    assert step["attempt"] == 2
    assert step["outputs"]["resumed_from"] == {"epoch": 3}


def test_reference_definitions_validate():
    """The reference pipeline parses into the chain it documents: a partition of the digits
    table trains, evaluates and deploys; the production deployment starts batch scoring."""
    from maestro.definitions import SignalTrigger, parse_definition
    from maestro.registry import DEPLOYED_SIGNAL

    train, score = (
        parse_definition(yaml.safe_load((EXAMPLES / "ml" / name).read_text()))
        for name in ("train.yaml", "score.yaml")
    )
    sweep = parse_definition(yaml.safe_load((EXAMPLES / "ml" / "sweep.yaml").read_text()))
    assert [s.type for s in sweep.steps][0] == "foreach", sweep.steps
    assert [(s.id, s.type, s.depends_on) for s in train.steps] == [
        ("train", "train", []),
        ("evaluate", "evaluate", ["train"]),
        ("deploy", "deploy", ["evaluate"]),
    ]
    [arrival] = train.triggers
    assert isinstance(arrival, SignalTrigger)
    assert [(c.name, c.where) for c in arrival.signal.all_of] == [
        ("table.partition.ready", {"table": "digits"})
    ]
    deploy = train.steps[-1].params
    [deployed] = score.triggers
    assert isinstance(deployed, SignalTrigger)
    assert [(c.name, c.where) for c in deployed.signal.all_of] == [
        (DEPLOYED_SIGNAL, {"model": deploy["model_name"], "stage": deploy["stage"]})
    ]
