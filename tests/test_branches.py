"""Branches (project isolation) against real PostgreSQL, a Temporal dev server and a worker:
emitted, completion and outside signals per branch, `branches: [prod]`, subworkflows, paused
schedules, branch delete, the production stage, lineage, bad names."""

from __future__ import annotations

import asyncio

import pytest
from temporalio.service import RPCError, RPCStatusCode

from maestro.definitions import WorkflowDefinition
from maestro.runtime import trigger_schedule_id
from maestro.schedules import time_triggers
from tests.conftest import unique_id, wait_for_run
from tests.test_access import make_key
from tests.test_auth import as_key
from tests.test_ml import fixed_pipeline
from tests.test_signals import name, noop_workflow, publish, runs_of

pytestmark = pytest.mark.usefixtures("worker")

ALICE = "user.alice"


async def deploy(api, body: dict, branch: str | None = None, **query) -> dict:
    params = {"branch": branch, **query} if branch else query
    response = await api.post("/api/v1/workflows", json=body, params=params)
    assert response.status_code in (200, 201), response.text
    return response.json()["workflow"]


async def start(api, workflow_id: str, params: dict | None = None) -> dict:
    response = await api.post(
        f"/api/v1/workflows/{workflow_id}/runs", json={"params": params or {}}
    )
    assert response.status_code in (200, 201, 202), response.text
    return await wait_for_run(api, response.json()["run_id"])


async def eventually_runs(sessions, workflow_id: str, count: int) -> list:
    for _ in range(300):
        runs = await runs_of(sessions, workflow_id)
        if len(runs) >= count:
            return runs
        await asyncio.sleep(0.1)
    raise AssertionError(f"{workflow_id} has {len(runs)} runs, expected {count}")


async def test_a_branch_emits_and_finishes_only_into_its_own_branch(api, sessions):
    topic = name("features.ready")
    up, down, after = unique_id("up"), unique_id("down"), unique_id("after")
    upstream = {
        "id": up,
        "steps": [{"id": "go", "type": "noop", "emits": [{"name": topic, "params": {"k": "v"}}]}],
    }
    downstream = noop_workflow(down, [{"signal": {"all_of": [{"name": topic}]}}])
    finisher = noop_workflow(after, [{"on_finish": {"workflow": up}}])
    for body in (upstream, downstream, finisher):
        prod = await deploy(api, body)
        alice = await deploy(api, body, ALICE)
        assert (prod["id"], prod["branch"]) == (body["id"], "prod")
        assert (alice["id"], alice["branch"]) == (f"{body['id']}@{ALICE}", ALICE)

    run = await start(api, f"{up}@{ALICE}")
    assert run["status"] == "succeeded"
    [started] = await eventually_runs(sessions, f"{down}@{ALICE}", 1)
    [finished] = await eventually_runs(sessions, f"{after}@{ALICE}", 1)
    await asyncio.sleep(1)  # what could have reached production has been published by now
    assert await runs_of(sessions, down) == []
    assert await runs_of(sessions, after) == []

    # The emitted signal is alice's; its lineage names the branch on every node.
    emitted = (await api.get("/api/v1/signals", params={"name": topic})).json()["items"]
    assert [s["branch"] for s in emitted] == [ALICE]
    lineage = (await api.get(f"/api/v1/runs/{run['run_id']}/lineage")).json()
    branches = {n["id"]: n["data"]["branch"] for n in lineage["nodes"]}
    assert branches[f"run:{run['run_id']}"] == ALICE
    assert branches[f"run:{started.run_id}"] == ALICE
    assert branches[f"run:{finished.run_id}"] == ALICE
    assert set(branches.values()) == {ALICE}

    # Production's own run reaches production's downstream only.
    await start(api, up)
    await eventually_runs(sessions, down, 1)
    await eventually_runs(sessions, after, 1)
    assert len(await runs_of(sessions, f"{down}@{ALICE}")) == 1
    # The log filters by branch.
    listed = (await api.get("/api/v1/signals", params={"name": topic, "branch": "prod"})).json()
    assert [s["branch"] for s in listed["items"]] == ["prod"]


async def test_outside_signals_reach_every_branch_unless_the_trigger_says_prod(api, sessions):
    topic = name("table.partition.ready")
    everywhere, prod_only = unique_id("everywhere"), unique_id("prod-only")
    trigger = {"signal": {"all_of": [{"name": topic}]}}
    narrowed = {"signal": {"all_of": [{"name": topic}], "branches": ["prod"]}}
    for body in (noop_workflow(everywhere, [trigger]), noop_workflow(prod_only, [narrowed])):
        await deploy(api, body)
        await deploy(api, body, ALICE)

    published = await publish(api, topic, {"dt": "2026-11-30"})
    assert published["signal"]["branch"] is None
    started = sorted(r["workflow_id"] for r in published["runs"])
    assert started == sorted([everywhere, f"{everywhere}@{ALICE}", prod_only])

    # A signal published for alice's branch reaches alice's workflows only, `branches: [prod]`
    # or not (it is no outside signal).
    response = await api.post(
        "/api/v1/signals",
        json={"name": topic, "params": {"dt": "2026-12-01"}},
        params={"branch": ALICE},
    )
    assert response.status_code == 201, response.text
    assert response.json()["signal"]["branch"] == ALICE
    started = sorted(r["workflow_id"] for r in response.json()["runs"])
    assert started == sorted([f"{everywhere}@{ALICE}", f"{prod_only}@{ALICE}"])

    # Explaining says why the other branch's trigger was passed by.
    signal_id = response.json()["signal"]["id"]
    detail = (await api.get(f"/api/v1/signals/{signal_id}", params={"explain": "true"})).json()
    outcomes = {e["workflow_id"]: (e["routed"], e["outcome"]) for e in detail["explain"]}
    assert outcomes[everywhere] == (False, "other_branch")
    assert outcomes[f"{everywhere}@{ALICE}"] == (True, "would_start_run")


async def test_a_branch_wait_is_released_by_outside_and_own_signals_only(api, sessions):
    topic = name("partition.done")
    waiter = unique_id("waiter")
    body = {
        "id": waiter,
        "steps": [{"id": "wait", "type": "noop", "wait_for": [{"name": topic}]}],
    }
    await deploy(api, body, ALICE)
    response = await api.post(f"/api/v1/workflows/{waiter}@{ALICE}/runs", json={})
    run_id = response.json()["run_id"]
    await wait_for_run(api, run_id, statuses={"waiting_for_signal", "running"})
    await publish(api, topic, {"n": 1}, request_id=unique_id("prod"))
    # Production's signal does not release alice's wait ...
    response = await api.post(
        "/api/v1/signals", json={"name": topic, "params": {"n": 2}}, params={"branch": "prod"}
    )
    assert response.status_code == 201
    await asyncio.sleep(1)
    # ... (the outside one did, above): the step took the outside signal.
    run = await wait_for_run(api, run_id)
    assert run["status"] == "succeeded"
    [step] = run["steps"]
    async with sessions() as session:
        from sqlalchemy import select

        from maestro.db.tables import SignalWait

        [wait] = (
            await session.execute(select(SignalWait).where(SignalWait.run_id == run_id))
        ).scalars()
    assert wait.branch == ALICE
    matched = (await api.get(f"/api/v1/signals/{wait.matched_signal_id}")).json()
    assert matched["branch"] is None and matched["params"] == {"n": 1}


async def test_a_branch_subworkflow_calls_its_own_branch(api, sessions):
    child, parent = unique_id("child"), unique_id("parent")
    await deploy(api, {"id": child, "steps": [{"id": "go", "type": "noop"}]})
    await deploy(api, {"id": child, "steps": [{"id": "go", "type": "noop"}]}, ALICE)
    await deploy(
        api,
        {
            "id": parent,
            "steps": [{"id": "call", "type": "subworkflow", "params": {"workflow": child}}],
        },
        ALICE,
    )
    run = await start(api, f"{parent}@{ALICE}")
    assert run["status"] == "succeeded"
    assert len(await runs_of(sessions, f"{child}@{ALICE}")) == 1
    assert await runs_of(sessions, child) == []


async def schedule_paused(temporal_client, workflow_id: str, definition: dict) -> bool:
    [ref] = time_triggers(workflow_id, WorkflowDefinition.model_validate(definition))
    handle = temporal_client.get_schedule_handle(trigger_schedule_id(workflow_id, ref.trigger_id))
    return (await handle.describe()).schedule.state.paused


async def test_branch_schedules_are_paused_unless_with_schedules(api, temporal_client):
    wid = unique_id("nightly")
    body = noop_workflow(wid, [{"cron": "0 3 * * *", "timezone": "UTC"}])
    await deploy(api, body)
    alice = await deploy(api, body, ALICE)
    assert alice["schedules_paused"] is True
    assert await schedule_paused(temporal_client, wid, body) is False
    assert await schedule_paused(temporal_client, f"{wid}@{ALICE}", body) is True
    [trigger] = (await api.get(f"/api/v1/workflows/{wid}@{ALICE}/triggers")).json()
    assert trigger["paused"] is True and trigger["active"] is False

    # The same definition again, with schedules: unchanged, but armed.
    response = await api.post(
        "/api/v1/workflows", json=body, params={"branch": ALICE, "with_schedules": "true"}
    )
    assert response.status_code == 200 and response.json()["created"] is False
    assert response.json()["workflow"]["schedules_paused"] is False
    assert await schedule_paused(temporal_client, f"{wid}@{ALICE}", body) is False
    # Without it again: held again.
    await deploy(api, body, ALICE)
    assert await schedule_paused(temporal_client, f"{wid}@{ALICE}", body) is True


async def test_deleting_a_branch_removes_its_workflows_and_schedules(api, temporal_client):
    branch = unique_id("test.x")
    nightly, other = unique_id("nightly"), unique_id("other")
    timed = noop_workflow(nightly, [{"cron": "0 3 * * *"}])
    await deploy(api, timed)
    await deploy(api, timed, branch, with_schedules="true")
    await deploy(api, noop_workflow(other, []), branch)
    await start(api, f"{other}@{branch}")

    listed = {b["branch"]: b for b in (await api.get("/api/v1/branches")).json()}
    assert listed[branch]["workflows"] == 2 and listed[branch]["active_workflows"] == 2
    in_branch = (await api.get("/api/v1/workflows", params={"branch": branch})).json()["items"]
    assert sorted(w["id"] for w in in_branch) == sorted(
        [f"{nightly}@{branch}", f"{other}@{branch}"]
    )

    [ref] = time_triggers(nightly, WorkflowDefinition.model_validate(timed))
    branch_schedule = trigger_schedule_id(f"{nightly}@{branch}", ref.trigger_id)
    await temporal_client.get_schedule_handle(branch_schedule).describe()  # exists

    response = await api.delete(f"/api/v1/branches/{branch}")
    assert response.status_code == 200, response.text
    assert sorted(response.json()["deleted"]) == sorted(
        [f"{nightly}@{branch}", f"{other}@{branch}"]
    )
    with pytest.raises(RPCError) as gone:
        await temporal_client.get_schedule_handle(branch_schedule).describe()
    assert gone.value.status == RPCStatusCode.NOT_FOUND
    assert (await api.get(f"/api/v1/workflows/{other}@{branch}")).status_code == 404
    assert branch not in {b["branch"] for b in (await api.get("/api/v1/branches")).json()}
    # Production's workflow and schedule are untouched.
    assert (await api.get(f"/api/v1/workflows/{nightly}")).status_code == 200
    prod_schedule = trigger_schedule_id(nightly, ref.trigger_id)
    await temporal_client.get_schedule_handle(prod_schedule).describe()

    missing = await api.delete(f"/api/v1/branches/{branch}")
    assert missing.status_code == 404
    refused = await api.delete("/api/v1/branches/prod")
    assert refused.status_code == 409
    assert "prod is the production branch" in refused.json()["message"]
    malformed = await api.delete("/api/v1/branches/Not-A-Branch")
    assert malformed.status_code == 422
    assert malformed.json()["detail"][0]["loc"] == ["path", "branch"]


async def test_a_branch_with_live_runs_or_another_owners_workflow_is_not_deleted(api):
    branch = unique_id("test.y")
    ours, theirs = unique_id("ours"), unique_id("theirs")
    await deploy(api, {**noop_workflow(ours, []), "owner": "team-a"}, branch)
    await deploy(api, {**noop_workflow(theirs, []), "owner": "team-b"}, branch)
    _, key = await make_key(api, ["write"], owners=["team-a"])
    async with as_key(api, key) as team_a:
        refused = await team_a.delete(f"/api/v1/branches/{branch}")
        assert refused.status_code == 403, refused.text
        assert theirs in refused.json()["message"] or "team-b" in refused.json()["message"]
        listed = {b["branch"]: b for b in (await team_a.get("/api/v1/branches")).json()}
        assert listed[branch]["workflows"] == 1
    assert (await api.get(f"/api/v1/workflows/{ours}@{branch}")).status_code == 200

    sleeper = unique_id("sleeper")
    await deploy(
        api,
        {"id": sleeper, "steps": [{"id": "nap", "type": "sleep", "params": {"seconds": 30}}]},
        branch,
    )
    run = (await api.post(f"/api/v1/workflows/{sleeper}@{branch}/runs", json={})).json()
    busy = await api.delete(f"/api/v1/branches/{branch}")
    assert busy.status_code == 409, busy.text
    assert (await api.get(f"/api/v1/workflows/{ours}@{branch}")).status_code == 200
    await api.post(f"/api/v1/runs/{run['run_id']}/stop")
    await wait_for_run(api, run["run_id"])
    assert (await api.delete(f"/api/v1/branches/{branch}")).status_code == 200


async def test_only_prod_reaches_the_production_stage(api, sessions):
    model, wid = unique_id("model"), unique_id("ml-branch")
    pipeline = fixed_pipeline(wid, model, [])
    await deploy(api, pipeline, ALICE)
    run = await start(api, f"{wid}@{ALICE}", {"quality": 0.9})
    steps = {s["step_id"]: s for s in run["steps"]}
    assert run["status"] == "failed"
    assert steps["train"]["status"] == "succeeded"
    assert "only versions of the prod branch may reach production" in steps["deploy"]["error"]
    assert steps["deploy"]["attempt"] == 1  # refused for good, not retried

    [version] = (await api.get(f"/api/v1/models/{model}")).json()["versions"]
    assert version["branch"] == ALICE and version["stage"] == "none"
    refused = await api.post(
        f"/api/v1/models/{model}/versions/1/promote", json={"stage": "production"}
    )
    assert refused.status_code == 403
    assert "only versions of the prod branch may reach production" in refused.json()["message"]
    staged = await api.post(f"/api/v1/models/{model}/versions/1/promote", json={"stage": "staging"})
    assert staged.status_code == 200
    # Its deployment is a signal of alice's branch, traceable from the training run.
    deployed = (
        await api.get("/api/v1/signals", params={"name": "model.deployed", "param.model": model})
    ).json()["items"]
    assert [s["branch"] for s in deployed] == [ALICE]
    lineage = (await api.get(f"/api/v1/runs/{run['run_id']}/lineage")).json()
    node = next(n for n in lineage["nodes"] if n["kind"] == "model_version")
    assert node["data"]["branch"] == ALICE and node["data"]["version"] == 1
    assert {"source": f"run:{run['run_id']}", "target": node["id"], "kind": "registered"} in (
        lineage["edges"]
    )
    detail = (await api.get(f"/api/v1/models/{model}/versions/1")).json()
    assert detail["lineage"]["branch"] == ALICE

    # Production trains and deploys the same pipeline.
    await deploy(api, pipeline)
    prod_run = await start(api, wid, {"quality": 0.9})
    assert prod_run["status"] == "succeeded"
    registry = (await api.get(f"/api/v1/models/{model}")).json()
    assert {v["version"]: v["branch"] for v in registry["versions"]} == {1: ALICE, 2: "prod"}
    assert registry["stages"] == {"staging": 1, "production": 2}
    lineage = (await api.get(f"/api/v1/runs/{prod_run['run_id']}/lineage")).json()
    edges = {(e["source"], e["target"], e["kind"]) for e in lineage["edges"]}
    assert (f"model:{model}:2", f"run:{prod_run['run_id']}", "deployed") in edges

    # A branch's run cannot deploy even production's version to production.
    redeploy = unique_id("redeploy")
    step = {"id": "deploy", "type": "deploy"}
    step["params"] = {"model_name": model, "model_version": 2, "stage": "production"}
    await deploy(api, {"id": redeploy, "steps": [step]}, ALICE)
    refused_run = await start(api, f"{redeploy}@{ALICE}")
    [refused_step] = refused_run["steps"]
    assert refused_run["status"] == "failed"
    assert (
        "of branch 'user.alice'; only prod runs may deploy to production" in (refused_step["error"])
    )


@pytest.mark.parametrize("branch", ["Alice", "-x", "user alice", "a" * 65, "user@alice"])
async def test_bad_branch_names_are_refused_naming_the_field(api, branch):
    body = noop_workflow(unique_id("named"), [])
    for path in ("/api/v1/workflows", "/api/v1/workflows/validate"):
        response = await api.post(path, json=body, params={"branch": branch})
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["loc"] == ["query", "branch"]
    response = await api.get("/api/v1/workflows", params={"branch": branch})
    assert response.status_code == 422


async def test_validate_and_too_long_qualified_ids(api):
    wid = unique_id("checked")
    response = await api.post(
        "/api/v1/workflows/validate", json=noop_workflow(wid, []), params={"branch": ALICE}
    )
    assert response.status_code == 200
    assert (response.json()["workflow_id"], response.json()["branch"]) == (f"{wid}@{ALICE}", ALICE)
    long_id = "w" * 100
    response = await api.post(
        "/api/v1/workflows", json=noop_workflow(long_id, []), params={"branch": "b" * 40}
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "branch"]
    bad = noop_workflow(
        unique_id("bad"), [{"signal": {"all_of": [{"name": "x"}], "branches": ["Prod"]}}]
    )
    response = await api.post("/api/v1/workflows", json=bad)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][:5] == [
        "triggers",
        0,
        "signal",
        "signal",
        "branches",
    ]


async def test_expressions_see_the_runs_branch(api):
    """`run.branch` in step params and in `emits`: what lets a branch's run choose, say, the
    staging stage where prod's chooses production."""
    wid, emitted_name = unique_id("branch-expr"), name("branch-expr")
    chosen = {"expr": "run.branch == 'prod' ? 'production' : 'staging'"}
    body = {
        "id": wid,
        "steps": [
            {
                "id": "a",
                "type": "noop",
                "params": {"outputs": {"branch": {"expr": "run.branch"}, "stage": chosen}},
                "emits": [{"name": emitted_name, "params": {"branch": {"expr": "run.branch"}}}],
            }
        ],
    }
    for branch, stage in (("user.alice", "staging"), ("prod", "production")):
        deployed = await deploy(api, body, branch)
        run = await start(api, deployed["id"])
        assert run["steps"][0]["outputs"] == {"branch": branch, "stage": stage}, run
        listed = await api.get("/api/v1/signals", params={"name": emitted_name, "branch": branch})
        assert [s["params"]["branch"] for s in listed.json()["items"]] == [branch]
