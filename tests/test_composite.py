"""Composite steps (foreach, subworkflow, while) on the time-skipping test server, with real
activities against PostgreSQL."""

from __future__ import annotations

import uuid

import yaml
from sqlalchemy import select

from maestro.actions import RunActions
from maestro.composites import leaf_capacity
from maestro.db import workflows as workflows_db
from maestro.db.tables import Iteration, Run, StepRun
from maestro.definitions import Step, parse_definition
from maestro.runs import RunsService
from maestro.runtime import RunState
from maestro.settings import TemporalSettings
from tests.conftest import EXAMPLES, WORKFLOW_TASK_QUEUE
from tests.test_workflow import py, run, statuses


async def iterations_of(sessions, run_id: str, path: str) -> list[Iteration]:
    async with sessions() as session:
        query = (
            select(Iteration)
            .where(Iteration.run_id == run_id, Iteration.step_path == path)
            .order_by(Iteration.index)
        )
        return list((await session.execute(query)).scalars())


async def test_foreach_over_a_list_runs_the_body_per_item_and_computes_outputs(env, sessions):
    result, rows, _ = await run(
        env,
        sessions,
        {
            "params": {"configs": {"type": "array", "default": [{"lr": 1}, {"lr": 3}, {"lr": 2}]}},
            "steps": [
                {
                    "id": "sweep",
                    "type": "foreach",
                    "params": {
                        "items": "params.configs",
                        "as": "config",
                        "steps": [
                            {
                                "id": "train",
                                "type": "noop",
                                "params": {
                                    "outputs": {
                                        "score": {"expr": "config.lr * 10"},
                                        "index": {"expr": "iteration.index"},
                                    }
                                },
                            },
                            py(
                                "check",
                                "echo",
                                depends_on=["train"],
                                args={"score": {"expr": "steps.train.outputs.score + item.lr"}},
                            ),
                        ],
                        "outputs": {
                            "best": "max_by(iterations, 'train.score').train.index",
                            "count": "size(iterations)",
                        },
                    },
                },
                {
                    "id": "after",
                    "type": "noop",
                    "depends_on": ["sweep"],
                    "params": {"outputs": {"best": {"expr": "steps.sweep.outputs.best"}}},
                },
            ],
        },
    )
    assert statuses(result) == {"sweep": "succeeded", "after": "succeeded"}
    assert rows["sweep"].outputs == {"best": 1, "count": 3}
    assert rows["after"].outputs == {"best": 1}
    found = await iterations_of(sessions, rows["sweep"].run_id, "sweep")
    assert [i.status for i in found] == ["succeeded"] * 3
    assert [i.params for i in found] == [{"lr": 1}, {"lr": 3}, {"lr": 2}]
    assert [i.outputs["train"]["score"] for i in found] == [10, 30, 20]
    assert [i.outputs["check"]["args"]["score"] for i in found] == [11, 33, 22]


def tally_body(tmp_path, **args) -> list[dict]:
    return [
        py(
            "work",
            "tally",
            args={"key": {"expr": "item"}, "file": str(tmp_path / "calls"), **args},
        )
    ]


def calls(tmp_path) -> list[str]:
    path = tmp_path / "calls"
    lines = path.read_text().splitlines() if path.exists() else []
    return [line.split()[0] for line in lines if not line.startswith("end ")]


async def test_foreach_over_range_with_a_nested_foreach(env, sessions):
    result, rows, _ = await run(
        env,
        sessions,
        {
            "params": {"n": {"type": "integer", "default": 3}},
            "steps": [
                {
                    "id": "outer",
                    "type": "foreach",
                    "params": {
                        "items": "range(0, params.n)",
                        "as": "row",
                        "steps": [
                            {
                                "id": "inner",
                                "type": "foreach",
                                "params": {
                                    "items": "range(0, row + 1)",
                                    "as": "col",
                                    "steps": [
                                        {
                                            "id": "cell",
                                            "type": "noop",
                                            "params": {
                                                "outputs": {"v": {"expr": "row * 10 + col"}}
                                            },
                                        }
                                    ],
                                    "outputs": {"cells": "size(iterations)"},
                                },
                            }
                        ],
                        "outputs": {"rows": "size(iterations)"},
                    },
                }
            ],
        },
    )
    assert result.status == "succeeded"
    run_id = rows["outer"].run_id
    assert rows["outer"].outputs == {"rows": 3}
    outer = await iterations_of(sessions, run_id, "outer")
    assert [i.params for i in outer] == [0, 1, 2]
    assert [i.outputs["inner"]["cells"] for i in outer] == [1, 2, 3]
    inner = await iterations_of(sessions, run_id, "outer[2].inner")
    assert [i.outputs["cell"]["v"] for i in inner] == [20, 21, 22]
    assert {i.status for i in inner} == {"succeeded"}


async def foreach_run(env, sessions, tmp_path, mode: str, items, **extra):
    tmp_path.mkdir(exist_ok=True)
    marker = tmp_path / "failing"
    marker.touch()
    return await run(
        env,
        sessions,
        {
            "steps": [
                {
                    "id": "each",
                    "type": "foreach",
                    "params": {
                        "items": "params.items",
                        "failure_mode": mode,
                        "max_concurrency": extra.pop("max_concurrency", 1),
                        "steps": tally_body(
                            tmp_path, fail_keys=["b"], fail_while=str(marker), **extra
                        ),
                    },
                },
                {"id": "after", "type": "noop", "depends_on": ["each"]},
            ],
            "params": {"items": {"type": "array", "default": items}},
        },
    )


async def test_foreach_failure_modes(env, sessions, tmp_path):
    items = ["a", "b", "c", "d"]
    # fail_fast: the failure stops the rest (one at a time, so c and d never start).
    result, rows, _ = await foreach_run(env, sessions, tmp_path / "fast", "fail_fast", items)
    assert statuses(result) == {"each": "failed", "after": "skipped"}
    assert "1 of 4 iterations failed (fail_fast); first: iteration 1:" in rows["each"].error
    assert "item b fails on purpose" in rows["each"].error
    found = await iterations_of(sessions, rows["each"].run_id, "each")
    assert [i.status for i in found] == ["succeeded", "failed", "stopped", "stopped"]
    assert calls(tmp_path / "fast") == ["a", "b"]
    # finish_all: every iteration runs, the step fails.
    result, rows, _ = await foreach_run(env, sessions, tmp_path / "all", "finish_all", items)
    assert statuses(result) == {"each": "failed", "after": "skipped"}
    assert sorted(calls(tmp_path / "all")) == items
    found = await iterations_of(sessions, rows["each"].run_id, "each")
    assert [i.status for i in found] == ["succeeded", "failed", "succeeded", "succeeded"]
    assert "item b fails on purpose" in found[1].error
    # ignore_failures: every iteration runs, the step succeeds.
    result, rows, _ = await foreach_run(
        env, sessions, tmp_path / "ignore", "ignore_failures", items
    )
    assert statuses(result) == {"each": "succeeded", "after": "succeeded"}
    assert sorted(calls(tmp_path / "ignore")) == items


async def test_max_concurrency_is_never_exceeded(env, sessions, tmp_path):
    items = [f"i{n}" for n in range(12)]
    with env.auto_time_skipping_disabled():
        result, _, _ = await foreach_run(
            env, sessions, tmp_path, "finish_all", items, max_concurrency=3, seconds=0.3
        )
    assert result.status == "succeeded"
    events = []
    for line in (tmp_path / "calls").read_text().splitlines():
        parts = line.split()
        events.append((float(parts[-1]), 1 if parts[0] != "end" else -1))
    level = peak = 0
    for _, delta in sorted(events):
        level += delta
        peak = max(peak, level)
    assert peak == 3  # reached, never passed


async def restart_from_failed(env, sessions, run_id: str) -> tuple[Run, RunState]:
    """Restart a run from `failed` through RunActions; the new run and its end state."""
    runs = RunsService(
        sessions,
        env.client,
        TemporalSettings(task_queue=WORKFLOW_TASK_QUEUE),
        search_attributes=False,
    )
    restarted = await RunActions(sessions, runs, env.client).restart_run(run_id, "failed")
    handle = env.client.get_workflow_handle(restarted.temporal_workflow_id, result_type=RunState)
    return restarted, await handle.result()


async def test_restart_from_failed_reruns_only_the_failed_iterations(env, sessions, tmp_path):
    items = ["a", "b", "c", "d"]
    result, rows, _ = await foreach_run(env, sessions, tmp_path, "finish_all", items)
    assert result.status == "failed"
    assert sorted(calls(tmp_path)) == items
    (tmp_path / "failing").unlink()  # b succeeds from now on
    restarted, state = await restart_from_failed(env, sessions, rows["each"].run_id)
    assert statuses(state) == {"each": "succeeded", "after": "succeeded"}
    assert sorted(calls(tmp_path)) == ["a", "b", "b", "c", "d"]  # only b ran again
    found = await iterations_of(sessions, restarted.run_id, "each")
    assert [i.status for i in found] == ["succeeded"] * 4
    assert [i.outputs["work"]["key"] for i in found] == items
    assert found[0].error == f"reused from run {rows['each'].run_id}"


async def test_while_loops_until_its_condition_fails_and_stops_at_its_cap(env, sessions):
    counter = {
        "id": "count",
        "type": "noop",
        "params": {"outputs": {"n": {"expr": "iteration.index + 1"}}},
    }
    result, rows, _ = await run(
        env,
        sessions,
        {
            "steps": [
                {
                    "id": "loop",
                    "type": "while",
                    "params": {
                        "condition": "iteration.index == 0 || previous.count.n < 4",
                        "max_iterations": 10,
                        "steps": [counter],
                    },
                }
            ]
        },
    )
    assert result.status == "succeeded"
    assert rows["loop"].outputs == {"iterations": 4, "count": {"n": 4}}
    found = await iterations_of(sessions, rows["loop"].run_id, "loop")
    assert [i.status for i in found] == ["succeeded"] * 4
    assert found[2].params == {"count": {"n": 2}}  # the previous iteration's outputs

    result, rows, _ = await run(
        env,
        sessions,
        {
            "steps": [
                {
                    "id": "loop",
                    "type": "while",
                    "params": {"condition": "true", "max_iterations": 3, "steps": [counter]},
                }
            ]
        },
    )
    assert result.status == "failed"
    assert "condition still true after max_iterations (3)" in rows["loop"].error
    assert len(await iterations_of(sessions, rows["loop"].run_id, "loop")) == 3


async def test_restart_from_failed_resumes_a_while_at_its_failed_iteration(env, sessions, tmp_path):
    marker = tmp_path / "failing"
    marker.touch()
    body = {
        "steps": [
            {
                "id": "loop",
                "type": "while",
                "params": {
                    "condition": "iteration.index < 4",
                    "max_iterations": 10,
                    "steps": [
                        py(
                            "work",
                            "tally",
                            args={
                                "key": {"expr": "iteration.index"},
                                "file": str(tmp_path / "calls"),
                                "fail_keys": [2],
                                "fail_while": str(marker),
                            },
                        )
                    ],
                },
            },
            {"id": "after", "type": "noop", "depends_on": ["loop"]},
        ]
    }
    result, rows, _ = await run(env, sessions, body)
    assert statuses(result) == {"loop": "failed", "after": "skipped"}
    assert calls(tmp_path) == ["0", "1", "2"]
    marker.unlink()
    restarted, state = await restart_from_failed(env, sessions, rows["loop"].run_id)
    assert statuses(state) == {"loop": "succeeded", "after": "succeeded"}
    # Iterations 0 and 1 are taken over; the failed one runs again, then the loop goes on.
    assert calls(tmp_path) == ["0", "1", "2", "2", "3"]
    found = await iterations_of(sessions, restarted.run_id, "loop")
    assert [i.status for i in found] == ["succeeded"] * 4
    assert [i.error for i in found[:2]] == [f"reused from run {rows['loop'].run_id}"] * 2
    assert found[2].params == {"work": {"key": 1}}  # the same `previous` as the first time
    assert [i.outputs["work"]["key"] for i in found] == [0, 1, 2, 3]
    async with sessions() as session:
        loop = await session.get(StepRun, (restarted.run_id, "loop"))
    assert loop is not None and loop.outputs == {"iterations": 4, "work": {"key": 3}}


async def test_a_split_foreach_keeps_every_execution_under_the_event_limit(env, sessions):
    """One iteration at a time (the most events per iteration): the iterations are carried by
    several ForeachWorkflow executions, each under its history budget."""
    capacity = leaf_capacity([Step(id="work", type="noop")])
    count = 2 * capacity  # two full leaves
    result, rows, temporal_id = await run(
        env,
        sessions,
        {
            "steps": [
                {
                    "id": "each",
                    "type": "foreach",
                    "params": {
                        "items": f"range(0, {count})",
                        "max_concurrency": 1,
                        "steps": [
                            {
                                "id": "work",
                                "type": "noop",
                                "params": {"outputs": {"n": {"expr": "iteration.index"}}},
                            }
                        ],
                        # Over every iteration's outputs, more than one evaluation's usual
                        # input allowance (2,048 units): the allowance grows with the items.
                        "outputs": {
                            "total": "size(iterations)",
                            "last": "max_by(iterations, 'work.n').work.n",
                        },
                    },
                }
            ]
        },
    )
    assert result.status == "succeeded", rows["each"].error
    assert rows["each"].outputs == {"total": count, "last": count - 1}
    found = await iterations_of(sessions, rows["each"].run_id, "each")
    assert [i.status for i in found] == ["succeeded"] * count
    leaves = {i.temporal_workflow_id for i in found}
    assert len(leaves) == 2, leaves  # split: no single execution carried them all
    root = f"{temporal_id}:each"
    lengths = {}
    for workflow_id in {temporal_id, root, *leaves}:
        history = await env.client.get_workflow_handle(workflow_id).fetch_history()
        lengths[workflow_id] = len(history.events)
    assert max(lengths.values()) < 10_000, lengths
    # The leaves are the largest: each carried `capacity` iterations, about 6 events each.
    assert all(lengths[leaf] > 5 * capacity for leaf in leaves), lengths


async def test_subworkflow_runs_a_child_run_whose_outputs_become_the_steps(env, sessions):
    child = parse_definition(
        {
            "id": f"child-{uuid.uuid4().hex[:8]}",
            "params": {"x": {"type": "integer"}},
            "run_strategy": "first_only",
            "steps": [
                {
                    "id": "double",
                    "type": "noop",
                    "params": {"outputs": {"y": {"expr": "params.x * 2"}}},
                }
            ],
        }
    )
    async with sessions.begin() as session:
        await workflows_db.push_version(session, child)
    result, rows, temporal_id = await run(
        env,
        sessions,
        {
            "steps": [
                {
                    "id": "call",
                    "type": "subworkflow",
                    "params": {"workflow": child.id, "params": {"x": {"expr": "21"}}},
                },
                {
                    "id": "use",
                    "type": "noop",
                    "depends_on": ["call"],
                    "params": {"outputs": {"z": {"expr": "steps.call.outputs.double.y + 1"}}},
                },
            ]
        },
    )
    assert statuses(result) == {"call": "succeeded", "use": "succeeded"}
    assert rows["call"].outputs == {"double": {"y": 42}}
    assert rows["use"].outputs == {"z": 43}
    async with sessions() as session:
        [child_run] = (
            (await session.execute(select(Run).where(Run.workflow_id == child.id))).scalars().all()
        )
    assert child_run.status == "succeeded"
    assert child_run.cause["kind"] == "subworkflow"
    assert child_run.cause["detail"]["parent_run_id"] == rows["call"].run_id
    # A real Temporal child of the parent run: linked in the Temporal UI.
    description = await env.client.get_workflow_handle(child_run.temporal_workflow_id).describe()
    assert description.parent_id == temporal_id


async def test_a_subworkflow_cycle_is_refused_at_registration_naming_it(api):
    a, b, c = (f"cyc-{name}-{uuid.uuid4().hex[:6]}" for name in "abc")

    def calling(workflow_id: str, callee: str) -> dict:
        return {
            "id": workflow_id,
            "steps": [
                {
                    "id": "outer",
                    "type": "foreach",
                    "params": {
                        "items": "range(0, 2)",
                        "as": "n",
                        "steps": [
                            {
                                "id": "call",
                                "type": "subworkflow",
                                "params": {"workflow": callee, "params": {"n": {"expr": "n"}}},
                            }
                        ],
                    },
                }
            ],
        }

    for body in (calling(b, c), calling(c, a)):  # a does not exist yet: nothing to refuse
        response = await api.post("/api/v1/workflows", json=body)
        assert response.status_code == 201, response.text
    response = await api.post("/api/v1/workflows", json=calling(a, b))
    assert response.status_code == 422
    [problem] = response.json()["detail"]
    assert problem["type"] == "subworkflow_cycle"
    assert problem["msg"] == f"subworkflow cycle: {a} -> {b} -> {c} -> {a}"
    assert (await api.get(f"/api/v1/workflows/{a}")).status_code == 404  # nothing written


async def test_the_sweep_example_deploys_the_best_of_its_trainings(env, sessions):
    body = yaml.safe_load((EXAMPLES / "ml" / "sweep.yaml").read_text())
    body["id"] = f"sweep-{uuid.uuid4().hex[:8]}"
    model = body["id"]
    for step in [*body["steps"], *body["steps"][0]["params"]["steps"]]:
        if "model_name" in step.get("params", {}):
            step["params"]["model_name"] = model
    with env.auto_time_skipping_disabled():
        result, rows, _ = await run(
            env, sessions, body, {"alphas": [0.1, 0.00001, 0.01], "epochs": 2}
        )
    assert statuses(result) == {
        "sweep": "succeeded",
        "evaluate": "succeeded",
        "deploy": "succeeded",
    }
    found = await iterations_of(sessions, rows["sweep"].run_id, "sweep")
    accuracies = [i.outputs["score"]["metrics"]["accuracy"] for i in found]
    best = found[accuracies.index(max(accuracies))].outputs["train"]["model_version"]
    assert rows["sweep"].outputs["best_version"] == best
    assert rows["deploy"].outputs["model_version"] == best
