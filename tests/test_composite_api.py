"""Composite steps through the API, with a worker on the Temporal dev server: progress counts,
paging iterations, skipping a while's iteration, stop cascading into subworkflow children,
and children in lineage."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import unique_id, wait_for_run
from tests.test_retention import push, start

pytestmark = pytest.mark.usefixtures("worker")


async def until(predicate, timeout: float = 60):
    """Poll `predicate` (a coroutine function) until it returns something truthy."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        found = await predicate()
        if found:
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"{predicate.__name__} not true after {timeout}s")


def step_of(run: dict, step_id: str) -> dict:
    return next(s for s in run["steps"] if s["step_id"] == step_id)


async def test_progress_counts_and_iteration_pages_with_status_and_cursor(api, tmp_path):
    wid = unique_id("progress")
    failing = [3, 11, 17, 24]
    await push(
        api,
        {
            "id": wid,
            "steps": [
                {
                    "id": "each",
                    "type": "foreach",
                    "params": {
                        "items": "range(0, 25)",
                        "max_concurrency": 5,
                        "steps": [
                            {
                                "id": "work",
                                "type": "python",
                                "retry": {"max_attempts": 1},
                                "params": {
                                    "entrypoint": "tests.steps:tally",
                                    "args": {
                                        "key": {"expr": "item"},
                                        "file": str(tmp_path / "calls"),
                                        "fail_keys": failing,
                                        "fail_while": str(tmp_path),
                                    },
                                },
                            }
                        ],
                    },
                },
                {"id": "after", "type": "noop", "depends_on": ["each"]},
            ],
        },
    )
    run = await wait_for_run(api, (await start(api, wid))["run_id"])
    assert run["status"] == "failed"
    assert step_of(run, "each")["progress"] == {
        "pending": 0,
        "running": 0,
        "succeeded": 21,
        "failed": 4,
        "skipped": 0,
        "stopped": 0,
    }
    assert step_of(run, "after")["progress"] is None  # not a composite step
    base = f"/api/v1/runs/{run['run_id']}/steps/each/iterations"

    failed = (await api.get(base, params={"status": "failed"})).json()
    assert [i["index"] for i in failed["items"]] == failing
    assert all("fails on purpose" in i["error"] for i in failed["items"])
    assert failed["next_cursor"] is None

    # Pages of 10 in index order; the last one says there is no more.
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 10, **({"cursor": cursor} if cursor else {})}
        page = (await api.get(base, params=params)).json()
        pages += 1
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert [i["index"] for i in seen] == list(range(25))
    assert [i["params"] for i in seen] == list(range(25))
    assert {i["index"] for i in seen if i["status"] == "succeeded"} == set(range(25)) - set(failing)
    assert seen[0]["outputs"] == {"work": {"key": 0}}

    # Status and cursor together: the failed ones after index 11.
    later = (await api.get(base, params={"status": "failed", "cursor": "11"})).json()
    assert [i["index"] for i in later["items"]] == [17, 24]
    # A page that ends exactly at a limit hands a cursor; the next one is empty.
    exact = (await api.get(base, params={"status": "failed", "limit": 4})).json()
    assert exact["next_cursor"] == "24"
    empty = (await api.get(base, params={"status": "failed", "cursor": "24"})).json()
    assert empty == {"items": [], "next_cursor": None}

    bad = await api.get(base, params={"status": "exploded"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "status"]
    assert (await api.get(base, params={"cursor": "x"})).status_code == 422
    missing = await api.get(f"/api/v1/runs/{run['run_id']}/steps/nope/iterations")
    assert missing.status_code == 404


async def test_a_running_while_iteration_is_skipped_and_the_loop_goes_on(api):
    wid = unique_id("while-skip")
    await push(
        api,
        {
            "id": wid,
            "steps": [
                {
                    "id": "loop",
                    "type": "while",
                    "params": {
                        "condition": "iteration.index < 3",
                        "max_iterations": 5,
                        "steps": [
                            {
                                "id": "wait",
                                "type": "sleep",
                                # Iterations 0 and 2 would wait long; 1 not at all.
                                "params": {"seconds": {"expr": "iteration.index == 1 ? 0 : 300"}},
                            },
                            {
                                "id": "mark",
                                "type": "noop",
                                "depends_on": ["wait"],
                                "params": {"outputs": {"i": {"expr": "iteration.index"}}},
                            },
                        ],
                    },
                }
            ],
        },
    )
    run_id = (await start(api, wid))["run_id"]
    base = f"/api/v1/runs/{run_id}/steps/loop/iterations"

    async def iteration_running(index: int) -> dict | None:
        # The page first: the run read after it cannot be older than what the page saw.
        page = (await api.get(base, params={"status": "running"})).json()
        if [i["index"] for i in page["items"]] != [index]:
            return None
        return (await api.get(f"/api/v1/runs/{run_id}")).json()

    running = await until(lambda: iteration_running(0))
    assert step_of(running, "loop")["status"] == "running"
    assert step_of(running, "loop")["progress"]["running"] == 1
    # An iteration that has not begun yet cannot be skipped.
    assert (await api.post(f"{base}/1/skip")).status_code == 404
    skipped = await api.post(f"{base}/0/skip")
    assert skipped.status_code == 202, skipped.text

    running = await until(lambda: iteration_running(2))
    assert step_of(running, "loop")["progress"] == {
        "pending": 0,
        "running": 1,
        "succeeded": 1,
        "failed": 0,
        "skipped": 1,
        "stopped": 0,
    }
    # It ended: skipping it again is refused.
    again = await api.post(f"{base}/0/skip")
    assert again.status_code == 409 and again.json()["message"].endswith("it is skipped")
    assert (await api.post(f"{base}/2/skip")).status_code == 202

    run = await wait_for_run(api, run_id)
    assert run["status"] == "succeeded", run
    items = (await api.get(base)).json()["items"]
    assert [i["status"] for i in items] == ["skipped", "succeeded", "skipped"]
    assert items[0]["error"] == "skipped by an operator"
    # A skipped iteration leaves `previous` as it was: iteration 1 saw nothing before it, and
    # the loop's outputs are iteration 1's.
    outputs_1 = {"wait": {"slept_seconds": 0}, "mark": {"i": 1}}
    assert [i["params"] for i in items] == [{}, {}, outputs_1]
    assert step_of(run, "loop")["outputs"] == {"iterations": 3, **outputs_1}


@pytest.mark.parametrize("action", ["stop", "kill"])
async def test_stopping_a_parent_stops_its_subworkflow_children_which_show_in_lineage(api, action):
    child_id, parent_id = unique_id("child"), unique_id("parent")
    await push(
        api,
        {
            "id": child_id,
            "steps": [{"id": "long", "type": "sleep", "params": {"seconds": 300}}],
        },
    )
    await push(
        api,
        {
            "id": parent_id,
            "steps": [
                {
                    "id": "fan",
                    "type": "foreach",
                    "params": {
                        "items": "range(0, 2)",
                        "steps": [
                            {"id": "call", "type": "subworkflow", "params": {"workflow": child_id}}
                        ],
                    },
                },
                {"id": "direct", "type": "subworkflow", "params": {"workflow": child_id}},
            ],
        },
    )
    parent = await start(api, parent_id)

    async def children_running() -> list[dict] | None:
        page = (await api.get("/api/v1/runs", params={"workflow_id": child_id})).json()
        runs = page["items"]
        if len(runs) == 3 and all(r["status"] == "running" for r in runs):
            return runs
        return None

    children = await until(children_running)
    shown = (await api.get(f"/api/v1/runs/{parent['run_id']}")).json()
    assert shown["status"] == "running" and shown["started_at"] is not None
    for child in children:
        assert child["cause"]["kind"] == "subworkflow"
        assert child["cause"]["detail"]["parent_run_id"] == parent["run_id"]
    steps = {c["cause"]["detail"]["parent_step"] for c in children}
    assert steps == {"fan[0].call", "fan[1].call", "direct"}

    # Lineage: each child is a node linked to its parent, naming the parent's step.
    lineage = (await api.get(f"/api/v1/runs/{parent['run_id']}/lineage")).json()
    nodes = {n["id"]: n for n in lineage["nodes"]}
    subworkflow_edges = {(e["source"], e["target"]) for e in lineage["edges"]}
    for child in children:
        key = f"run:{child['run_id']}"
        assert nodes[key]["data"]["parent_step"] == child["cause"]["detail"]["parent_step"]
        assert (f"run:{parent['run_id']}", key) in subworkflow_edges
    assert {e["kind"] for e in lineage["edges"]} == {"subworkflow"}
    upward = (await api.get(f"/api/v1/runs/{children[0]['run_id']}/lineage")).json()
    assert {
        "source": f"run:{parent['run_id']}",
        "target": f"run:{children[0]['run_id']}",
        "kind": "subworkflow",
    } in upward["edges"]
    assert (
        "parent_step"
        not in {n["id"]: n for n in upward["nodes"]}[f"run:{parent['run_id']}"]["data"]
    )

    stopped = await api.post(f"/api/v1/runs/{parent['run_id']}/{action}")
    assert stopped.status_code == 202, stopped.text
    assert (await wait_for_run(api, parent["run_id"]))["status"] == "stopped"
    for child in children:
        ended = await wait_for_run(api, child["run_id"])
        assert ended["status"] == "stopped", ended
        assert step_of(ended, "long")["status"] == "stopped"
