"""Signals through the API against real PostgreSQL, a real Temporal dev server and a worker:
publishing, dedupe, triggers (plain, joined, on_finish), emits, wait_for, lineage, bad input."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from maestro.db import signals as signals_db
from maestro.db.tables import (
    Run,
    Signal,
    SignalMatch,
    SignalName,
    SignalTriggerRow,
    SignalWait,
    TriggerJoin,
    WorkflowVersion,
)
from maestro.runs import RunsService
from maestro.signals import SignalBus
from tests.conftest import unique_id, wait_for_run, wait_for_step

pytestmark = pytest.mark.usefixtures("worker")


def name(prefix: str) -> str:
    """A signal name no other test publishes."""
    return f"{prefix}.{uuid.uuid4().hex[:8]}"


def noop_workflow(workflow_id: str, triggers: list, params: dict | None = None, **extra) -> dict:
    return {
        "id": workflow_id,
        "params": params or {},
        "triggers": triggers,
        "steps": [{"id": "go", "type": "noop"}],
        **extra,
    }


async def push(api, body: dict) -> dict:
    response = await api.post("/api/v1/workflows", json=body)
    assert response.status_code == 201, response.text
    return response.json()


async def publish(api, signal_name: str, params: dict | None = None, **extra) -> dict:
    response = await api.post(
        "/api/v1/signals", json={"name": signal_name, "params": params or {}, **extra}
    )
    assert response.status_code in (200, 201), response.text
    return response.json()


async def runs_of(sessions, workflow_id: str) -> list[Run]:
    async with sessions() as session:
        query = select(Run).where(Run.workflow_id == workflow_id).order_by(Run.run_number)
        return list((await session.execute(query)).scalars())


async def test_publish_stores_with_sequence_and_dedupes(api, sessions):
    topic = name("table.partition.ready")
    load = unique_id("load")
    first = await api.post(
        "/api/v1/signals",
        json={
            "name": topic,
            "params": {"table": "events", "dt": "2026-11-26"},
            "payload": {"rows": 10},
            "request_id": load,
        },
    )
    assert first.status_code == 201
    body = first.json()
    assert body["duplicate"] is False and body["runs"] == []
    assert body["signal"]["seq"] == 1 and body["signal"]["producer"] == {"kind": "outside"}
    again = await api.post("/api/v1/signals", json={"name": topic, "request_id": load})
    assert again.status_code == 200
    assert again.json()["duplicate"] is True
    assert again.json()["signal"]["id"] == body["signal"]["id"]
    # Without a request id the dedupe key is name + params.
    a = await publish(api, topic, {"dt": "2026-11-27"})
    b = await publish(api, topic, {"dt": "2026-11-27"})
    c = await publish(api, topic, {"dt": "2026-11-28"})
    assert (a["duplicate"], b["duplicate"], c["duplicate"]) == (False, True, False)
    assert a["signal"]["seq"] == 2 and c["signal"]["seq"] == 3
    async with sessions() as session:
        count = await session.scalar(
            select(func.count()).select_from(Signal).where(Signal.name == topic)
        )
        # No payload and no request id are SQL NULLs (not JSON null).
        bare = await session.scalar(
            select(func.count())
            .select_from(Signal)
            .where(Signal.id == a["signal"]["id"], Signal.payload.is_(None))
            .where(Signal.request_id.is_(None))
        )
    assert count == 3 and bare == 1

    listed = (
        await api.get("/api/v1/signals", params={"name": topic, "param.dt": "2026-11-27"})
    ).json()
    assert [s["id"] for s in listed["items"]] == [a["signal"]["id"]]
    detail = (await api.get(f"/api/v1/signals/{body['signal']['id']}")).json()
    assert detail["payload"] == {"rows": 10} and detail["matches"] == []


async def test_signal_trigger_with_where_and_param_mapping(api, sessions):
    topic = name("table.partition.ready")
    wid = unique_id("sig-plain")
    await push(
        api,
        noop_workflow(
            wid,
            [
                {
                    "signal": {
                        "all_of": [
                            {"name": topic, "where": {"table": "events", "rows": {">=": 100}}}
                        ],
                        "params": {
                            "dt": "signal.params.dt",
                            "rows": f'signals["{topic}"].params.rows',
                        },
                    }
                }
            ],
            params={"dt": {"type": "string"}, "rows": {"type": "integer"}},
        ),
    )

    started = await publish(api, topic, {"table": "events", "dt": "2026-11-26", "rows": 500})
    assert len(started["runs"]) == 1
    run = started["runs"][0]
    assert run["params"] == {"dt": "2026-11-26", "rows": 500}
    assert run["cause"]["kind"] == "signal"
    assert run["cause"]["detail"]["signal_ids"] == [started["signal"]["id"]]
    done = await wait_for_run(api, run["run_id"])
    assert done["status"] == "succeeded"

    too_small = await publish(api, topic, {"table": "events", "dt": "2026-11-27", "rows": 5})
    other = await publish(api, topic, {"table": "users", "dt": "2026-11-27", "rows": 500})
    assert too_small["runs"] == [] and other["runs"] == []
    detail = (await api.get(f"/api/v1/signals/{too_small['signal']['id']}")).json()
    assert [(m["workflow_id"], m["outcome"]) for m in detail["matches"]] == [
        (wid, "condition_false")
    ]
    assert "not satisfied" in detail["matches"][0]["detail"]
    # `table: events` is a string the trigger requires: a signal without it does not reach it.
    elsewhere = (await api.get(f"/api/v1/signals/{other['signal']['id']}")).json()
    assert elsewhere["matches"] == []
    consumed = (await api.get(f"/api/v1/signals/{started['signal']['id']}")).json()
    assert consumed["matches"][0]["outcome"] == "started_run"
    assert consumed["matches"][0]["run_id"] == run["run_id"]
    assert len(await runs_of(sessions, wid)) == 1
    [trigger] = (await api.get(f"/api/v1/workflows/{wid}/triggers")).json()
    assert trigger["kind"] == "signal"
    assert trigger["last_fire"]["run_id"] == run["run_id"]
    assert trigger["last_fire"]["run_number"] == 1
    assert trigger["last_fire"]["status"] == "succeeded"
    assert trigger["last_fire"]["signal_ids"] == [started["signal"]["id"]]
    assert trigger["last_fire"]["scheduled_at"] is None
    # A restart keeps the run's trigger but is no fire of it.
    restarted = await api.post(f"/api/v1/runs/{run['run_id']}/restart", json={"from": "beginning"})
    assert restarted.status_code == 201, restarted.text
    await wait_for_run(api, restarted.json()["run_id"])
    [trigger] = (await api.get(f"/api/v1/workflows/{wid}/triggers")).json()
    assert trigger["last_fire"]["run_id"] == run["run_id"]


async def test_join_fires_once_per_complete_set_and_shows_partial_joins(api, sessions):
    orders, fx = name("orders"), name("fx_rates")
    wid = unique_id("sig-join")
    await push(
        api,
        noop_workflow(
            wid,
            [
                {
                    "signal": {
                        "all_of": [{"name": orders}, {"name": fx}],
                        "join_on": ["dt"],
                        "params": {"dt": f'signals["{orders}"].params.dt'},
                    }
                }
            ],
            params={"dt": {"type": "string"}},
        ),
    )

    first = await publish(api, orders, {"dt": "D1"})
    await publish(api, orders, {"dt": "D2"})
    assert first["runs"] == []
    triggers = (await api.get(f"/api/v1/workflows/{wid}/triggers")).json()
    assert len(triggers) == 1 and triggers[0]["kind"] == "signal"
    pending = {j["join_key"]: j for j in triggers[0]["pending_joins"]}
    assert set(pending) == {'["D1"]', '["D2"]'}
    assert pending['["D1"]']["missing"] == [fx]
    assert pending['["D1"]']["received"] == {orders: first["signal"]["id"]}
    detail = (await api.get(f"/api/v1/signals/{first['signal']['id']}")).json()
    assert detail["matches"][0]["outcome"] == "join_incomplete"

    completing = await publish(api, fx, {"dt": "D1", "rate": 1.1})
    assert len(completing["runs"]) == 1
    assert completing["runs"][0]["params"] == {"dt": "D1"}
    # Another fx signal for D1 starts nothing: the orders signal was consumed.
    late = await publish(api, fx, {"dt": "D1", "rate": 1.2})
    assert late["runs"] == []
    assert len(await runs_of(sessions, wid)) == 1
    first_after = (await api.get(f"/api/v1/signals/{first['signal']['id']}")).json()
    assert first_after["matches"][0]["outcome"] == "started_run"
    assert first_after["matches"][0]["run_id"] == completing["runs"][0]["run_id"]
    triggers = (await api.get(f"/api/v1/workflows/{wid}/triggers")).json()
    assert {j["join_key"] for j in triggers[0]["pending_joins"]} == {'["D1"]', '["D2"]'}
    assert {tuple(j["missing"]) for j in triggers[0]["pending_joins"]} == {(fx,), (orders,)}


async def test_explain_evaluates_every_trigger_listening_without_writing(api, sessions):
    """`explain=true` covers the triggers the routing index passes a signal by (publishing
    records nothing for them), says per trigger whether the signal would match and why not,
    and writes nothing."""
    topic, other = name("table.partition.ready"), name("other")
    wid = {
        k: unique_id(f"explain-{k}") for k in "digits rows when join paused params ok cost".split()
    }

    def trigger(where: dict | None = None, **spec) -> list:
        return [{"signal": {"all_of": [{"name": topic, "where": where or {}}], **spec}}]

    await push(api, noop_workflow(wid["digits"], trigger({"table": "digits"})))
    await push(api, noop_workflow(wid["rows"], trigger({"table": "users", "rows": {">=": 100}})))
    await push(api, noop_workflow(wid["when"], trigger(when="signal.params.rows > 1000")))
    await push(
        api,
        noop_workflow(
            wid["join"],
            [{"signal": {"all_of": [{"name": topic}, {"name": other}], "join_on": ["dt"]}}],
        ),
    )
    await push(api, noop_workflow(wid["paused"], trigger()))
    await api.post(f"/api/v1/workflows/{wid['paused']}/pause")
    await push(
        api,
        noop_workflow(
            wid["params"],
            trigger(params={"n": "signal.params.table"}),
            params={"n": {"type": "integer"}},
        ),
    )
    await push(api, noop_workflow(wid["ok"], trigger({"table": "users"})))
    # Within the static cost budget, but the payload it reads is over the input limit.
    await push(api, noop_workflow(wid["cost"], trigger(when="size(signal.payload.items) > 0")))

    published = await publish(
        api,
        topic,
        {"table": "users", "rows": 5, "dt": "D1"},
        payload={"items": list(range(3_000))},
    )
    signal_id = published["signal"]["id"]
    assert [r["workflow_id"] for r in published["runs"]] == [wid["ok"]]
    plain = (await api.get(f"/api/v1/signals/{signal_id}")).json()
    assert plain["explain"] is None
    assert wid["digits"] not in {m["workflow_id"] for m in plain["matches"]}

    async def written() -> list:
        ids = list(wid.values())
        async with sessions() as session:
            return [
                await session.scalar(
                    select(func.count()).select_from(table).where(table.workflow_id.in_(ids))
                )
                for table in (SignalMatch, Run, TriggerJoin)
            ] + [
                sorted(
                    (
                        await session.execute(
                            select(SignalMatch.updated_at).where(SignalMatch.signal_id == signal_id)
                        )
                    ).scalars()
                )
            ]

    before = await written()
    response = await api.get(f"/api/v1/signals/{signal_id}", params={"explain": "true"})
    assert response.status_code == 200, response.text
    assert await written() == before
    explained = {e["workflow_id"]: e for e in response.json()["explain"]}
    assert set(explained) == set(wid.values())

    digits = explained[wid["digits"]]
    assert (digits["routed"], digits["would_match"], digits["outcome"]) == (
        False,
        False,
        "condition_false",
    )
    assert digits["reasons"] == ['where.table: requires = "digits", the signal has "users"']
    rows = explained[wid["rows"]]
    assert rows["routed"] is True and rows["outcome"] == "condition_false"
    assert rows["reasons"] == ["where.rows: requires >= 100, the signal has 5"]
    assert explained[wid["when"]]["reasons"] == ["when 'signal.params.rows > 1000' is false"]
    join = explained[wid["join"]]
    assert join["outcome"] == "join_incomplete" and not join["would_match"]
    assert join["reasons"] == [f'waiting for {other} with join key ["D1"]']
    paused = explained[wid["paused"]]
    assert paused["outcome"] == "workflow_paused"
    assert paused["reasons"] == ["the workflow is paused"]
    bad_params = explained[wid["params"]]
    assert bad_params["outcome"] == "params_invalid"
    assert bad_params["reasons"] == ["params.n: expected integer, got str 'users'"]
    ok = explained[wid["ok"]]
    assert (ok["routed"], ok["would_match"], ok["outcome"], ok["reasons"]) == (
        True,
        True,
        "would_start_run",
        [],
    )
    cost = explained[wid["cost"]]
    assert cost["outcome"] == "condition_error"
    assert "refused" in cost["reasons"][0] and "too large" in cost["reasons"][0]
    # What publishing recorded agrees where the signal reached the trigger.
    recorded = {m["workflow_id"]: m["outcome"] for m in plain["matches"]}
    assert recorded == {
        wid["rows"]: "condition_false",
        wid["when"]: "condition_false",
        wid["join"]: "join_incomplete",
        wid["paused"]: "workflow_paused",
        wid["params"]: "params_invalid",
        wid["ok"]: "started_run",
        wid["cost"]: "condition_error",
    }

    bad = await api.get(f"/api/v1/signals/{signal_id}", params={"explain": "maybe"})
    assert bad.status_code == 422
    assert "explain" in bad.text


async def test_a_trigger_whose_params_are_invalid_takes_no_run_number(api, sessions):
    # The run's number is taken with the workflow row's lock; a signal that makes no run gives
    # it back, so the numbers of the runs that exist have no gaps.
    topic = name("sized")
    wid = unique_id("sig-badparams")
    await push(
        api,
        noop_workflow(
            wid,
            [
                {
                    "signal": {
                        "all_of": [{"name": topic}],
                        "params": {"n": f'signals["{topic}"].params.v'},
                    }
                }
            ],
            params={"n": {"type": "integer"}},
        ),
    )
    bad = await publish(api, topic, {"v": "many"})
    assert bad["runs"] == []
    detail = (await api.get(f"/api/v1/signals/{bad['signal']['id']}")).json()
    assert [m["outcome"] for m in detail["matches"]] == ["params_invalid"]
    good = await publish(api, topic, {"v": 3})
    [run] = good["runs"]
    assert run["run_number"] == 1
    assert [r.run_number for r in await runs_of(sessions, wid)] == [1]
    workflow = (await api.get(f"/api/v1/workflows/{wid}")).json()
    assert workflow["run_count"] == 1
    consumed = (await api.get(f"/api/v1/signals/{good['signal']['id']}")).json()
    assert [(m["outcome"], m["run_id"]) for m in consumed["matches"]] == [
        ("started_run", run["run_id"])
    ]


def created_at(published: dict) -> datetime:
    return datetime.fromisoformat(published["signal"]["created_at"])


async def waits_of(sessions, run_id: str) -> list[SignalWait]:
    async with sessions() as session:
        query = select(SignalWait).where(SignalWait.run_id == run_id)
        return list((await session.execute(query.order_by(SignalWait.position))).scalars())


async def test_join_within_expires_old_signals(api, sessions):
    a, b = name("a"), name("b")
    wid = unique_id("sig-within")
    await push(
        api,
        noop_workflow(
            wid,
            [{"signal": {"all_of": [{"name": a}, {"name": b}], "join_on": ["k"], "within": "1s"}}],
        ),
    )
    old = await publish(api, a, {"k": 1})
    born = created_at(old)
    await asyncio.sleep((born + timedelta(seconds=1.3) - datetime.now(UTC)).total_seconds())
    fresh = await publish(api, b, {"k": 1})
    # By the signals' own clock (what `within` compares) the first is older than 1 s.
    assert created_at(fresh) - born > timedelta(seconds=1)
    assert fresh["runs"] == []
    expired = (await api.get(f"/api/v1/signals/{old['signal']['id']}")).json()
    assert expired["matches"][0]["outcome"] == "expired"
    completed = await publish(api, a, {"k": 1, "again": True})
    assert len(completed["runs"]) == 1


async def test_on_finish_chains_workflows_with_completion_signals(
    api, sessions, settings, temporal_client
):
    upstream, downstream = unique_id("up"), unique_id("down")
    await push(
        api,
        {
            "id": upstream,
            "params": {"dt": {"type": "string", "default": "D"}},
            "steps": [{"id": "go", "type": "noop"}],
        },
    )
    await push(
        api,
        noop_workflow(
            downstream,
            [
                {
                    "on_finish": {
                        "workflow": upstream,
                        "status": ["succeeded"],
                        "params": {"dt": "signal.params.dt", "parent": "signal.params.run_id"},
                    }
                }
            ],
            params={"dt": {"type": "string"}, "parent": {"type": "string"}},
        ),
    )
    up = (
        await api.post(f"/api/v1/workflows/{upstream}/runs", json={"params": {"dt": "2026-11-26"}})
    ).json()
    await wait_for_run(api, up["run_id"])
    for _ in range(100):
        started = await runs_of(sessions, downstream)
        if started:
            break
        await asyncio.sleep(0.1)
    assert len(started) == 1
    assert started[0].params == {"dt": "2026-11-26", "parent": up["run_id"]}
    assert started[0].cause["kind"] == "signal"
    down = await wait_for_run(api, started[0].run_id)
    assert down["status"] == "succeeded"
    # One trigger per status listed: the one that fired shows its run.
    [on_finish] = (await api.get(f"/api/v1/workflows/{downstream}/triggers")).json()
    assert on_finish["kind"] == "on_finish"
    assert on_finish["last_fire"]["run_id"] == down["run_id"]
    assert on_finish["last_fire"]["signal_ids"] == started[0].cause["detail"]["signal_ids"]

    # finish_run retried after its commit publishes the completion again: the stored signal
    # refuses the repeat (no lookup first), so nothing new is stored or started.
    bus = SignalBus(
        sessions, RunsService(sessions, temporal_client, settings.temporal), temporal_client
    )
    async with sessions.begin() as session:
        repeat = await bus.publish_completion_in(session, await session.get(Run, up["run_id"]))
    assert [p.duplicate for p in repeat.results] == [True] and repeat.runs == []
    assert repeat.results[0].signal.params["run_id"] == up["run_id"]
    assert len(await runs_of(sessions, downstream)) == 1

    completion = (
        await api.get(
            "/api/v1/signals",
            params={"name": "maestro.run.succeeded", "param.run_id": up["run_id"]},
        )
    ).json()["items"]
    assert len(completion) == 1
    assert completion[0]["params"]["workflow_id"] == upstream
    assert completion[0]["params"]["run_number"] == 1
    assert completion[0]["producer"]["run_id"] == up["run_id"]

    lineage = (await api.get(f"/api/v1/runs/{down['run_id']}/lineage")).json()
    ids = {n["id"] for n in lineage["nodes"]}
    assert {f"run:{up['run_id']}", f"run:{down['run_id']}", f"signal:{completion[0]['id']}"} <= ids
    assert {
        "source": f"run:{up['run_id']}",
        "target": f"signal:{completion[0]['id']}",
        "kind": "produced",
    } in lineage["edges"]
    assert {
        "source": f"signal:{completion[0]['id']}",
        "target": f"run:{down['run_id']}",
        "kind": "started",
    } in lineage["edges"]
    from_up = (await api.get(f"/api/v1/runs/{up['run_id']}/lineage")).json()
    assert f"run:{down['run_id']}" in {n["id"] for n in from_up["nodes"]}


async def test_a_completion_signal_reaches_only_its_upstreams_triggers(api, sessions):
    """Each run's end publishes one completion signal; it is matched against the `on_finish`
    triggers of its own workflow, not every workflow's (their index entry names the upstream),
    and against triggers that listen to every completion."""
    upstream, elsewhere, downstream = unique_id("up"), unique_id("else"), unique_id("down")
    bystanders = [unique_id("bystander") for _ in range(3)]
    watcher = unique_id("watcher")
    for wid in (upstream, elsewhere):
        await push(api, noop_workflow(wid, []))
    await push(api, noop_workflow(downstream, [{"on_finish": {"workflow": upstream}}]))
    for wid in bystanders:
        await push(api, noop_workflow(wid, [{"on_finish": {"workflow": elsewhere}}]))
    everything = {"name": "maestro.run.succeeded", "where": {"run_number": {">": 1000}}}
    # It listens to its own completion too: the loop check needs the opt-in.
    await push(
        api,
        noop_workflow(watcher, [{"signal": {"all_of": [everything]}}], allow_trigger_loop=True),
    )

    up = (await api.post(f"/api/v1/workflows/{upstream}/runs", json={})).json()
    await wait_for_run(api, up["run_id"])
    for _ in range(100):
        [completion] = (
            await api.get(
                "/api/v1/signals",
                params={"name": "maestro.run.succeeded", "param.run_id": up["run_id"]},
            )
        ).json()["items"] or [None]
        if completion:
            break
        await asyncio.sleep(0.1)
    detail = (await api.get(f"/api/v1/signals/{completion['id']}")).json()
    assert sorted((m["workflow_id"], m["outcome"]) for m in detail["matches"]) == sorted(
        [(downstream, "started_run"), (watcher, "condition_false")]
    )
    assert len(await runs_of(sessions, downstream)) == 1
    for wid in [*bystanders, watcher]:
        assert await runs_of(sessions, wid) == []


async def test_step_emits_signal_that_starts_another_workflow(api, sessions):
    topic = name("model.trained")
    producer, consumer = unique_id("emitter"), unique_id("listener")
    await push(
        api,
        noop_workflow(
            consumer,
            [{"signal": {"all_of": [{"name": topic}], "params": {"model": "signal.params.model"}}}],
            params={"model": {"type": "string"}},
        ),
    )
    await push(
        api,
        {
            "id": producer,
            "steps": [
                {
                    "id": "train",
                    "type": "noop",
                    "params": {"outputs": {"name": "digits-v3"}},
                    "emits": [
                        {
                            "name": topic,
                            "params": {
                                "model": {"expr": "steps.train.outputs.name"},
                                "run": {"expr": "run.number"},
                            },
                        }
                    ],
                },
            ],
        },
    )
    run = (await api.post(f"/api/v1/workflows/{producer}/runs", json={})).json()
    await wait_for_run(api, run["run_id"])
    emitted = (await api.get("/api/v1/signals", params={"name": topic})).json()["items"]
    assert len(emitted) == 1
    assert emitted[0]["params"] == {"model": "digits-v3", "run": 1}
    assert emitted[0]["producer"] == {
        "kind": "step",
        "workflow_id": producer,
        "run_id": run["run_id"],
        "step_id": "train",
    }
    started = await runs_of(sessions, consumer)
    assert len(started) == 1 and started[0].params == {"model": "digits-v3"}


async def test_wait_for_signal_published_after_the_run_started(api, sessions):
    topic = name("data.ready")
    wid = unique_id("wait-after")
    await push(
        api,
        {
            "id": wid,
            "params": {"dt": {"type": "string"}},
            "steps": [
                {"id": "prepare", "type": "noop"},
                {
                    "id": "load",
                    "type": "noop",
                    "depends_on": ["prepare"],
                    "wait_for": [{"name": topic, "where": {"dt": {"expr": "params.dt"}}}],
                    "params": {"outputs": {"rows": {"expr": f'signals["{topic}"].params.rows'}}},
                },
            ],
        },
    )
    run = (await api.post(f"/api/v1/workflows/{wid}/runs", json={"params": {"dt": "D"}})).json()
    await wait_for_step(api, run["run_id"], "load", "waiting_for_signal")
    await publish(api, topic, {"dt": "other", "rows": 1})
    # A publish releases the waits it matches in its own transaction: this one released none.
    [wait] = await waits_of(sessions, run["run_id"])
    assert wait.where == {"dt": "D"} and wait.matched_signal_id is None
    body = (await api.get(f"/api/v1/runs/{run['run_id']}")).json()
    assert body["steps"][1]["status"] == "waiting_for_signal"
    matching = await publish(api, topic, {"dt": "D", "rows": 42})
    [wait] = await waits_of(sessions, run["run_id"])
    assert wait.matched_signal_id == matching["signal"]["id"]
    done = await wait_for_run(api, run["run_id"])
    assert done["status"] == "succeeded"
    assert done["steps"][1]["outputs"] == {"rows": 42}


async def test_publishing_looks_up_waits_only_on_names_flagged_as_waited_on(api, sessions):
    """A name's `has_waits` flag is set when a step registers a wait and cleared by a publish
    that finds none open; while it is clear, publishing skips the waits lookup. Waits
    registered after a clear are still found."""
    topic = name("flagged")
    wid = unique_id("wait-flag")
    await push(
        api,
        {
            "id": wid,
            "params": {"dt": {"type": "string"}},
            "steps": [
                {
                    "id": "load",
                    "type": "noop",
                    "wait_for": [{"name": topic, "where": {"dt": {"expr": "params.dt"}}}],
                    "params": {"outputs": {"dt": {"expr": f'signals["{topic}"].params.dt'}}},
                }
            ],
        },
    )

    async def flag() -> bool:
        async with sessions() as session:
            query = select(SignalName.has_waits).where(SignalName.name == topic)
            return (await session.execute(query)).scalar_one()

    async def waiting_run(dt: str) -> str:
        response = await api.post(f"/api/v1/workflows/{wid}/runs", json={"params": {"dt": dt}})
        run_id = response.json()["run_id"]
        await wait_for_step(api, run_id, "load", "waiting_for_signal")
        return run_id

    await publish(api, topic, {"dt": "nobody"})
    assert await flag() is False
    first = await waiting_run("D1")
    assert await flag() is True
    await publish(api, topic, {"dt": "D1"})
    assert (await wait_for_run(api, first))["steps"][0]["outputs"] == {"dt": "D1"}
    await publish(api, topic, {"dt": "nobody-again"})
    assert await flag() is False, "no open wait is left: the flag is cleared"
    second = await waiting_run("D2")
    assert await flag() is True
    await publish(api, topic, {"dt": "D2"})
    done = await wait_for_run(api, second)
    assert done["status"] == "succeeded" and done["steps"][0]["outputs"] == {"dt": "D2"}
    # A batch (allocated per name, then inserted at once) reads the flag too.
    await publish(api, topic, {"dt": "nobody-either"})
    assert await flag() is False
    third = await waiting_run("D3")
    other = name("unrelated")
    batch = [{"name": other, "params": {"n": 1}}, {"name": topic, "params": {"dt": "D3"}}]
    response = await api.post("/api/v1/signals/batch", json={"signals": batch})
    assert response.status_code == 201, response.text
    assert (await wait_for_run(api, third))["steps"][0]["outputs"] == {"dt": "D3"}


async def test_wait_for_signal_published_before_the_run(api):
    topic = name("data.ready")
    wid = unique_id("wait-before")
    await publish(api, topic, {"dt": "D", "rows": 7})
    await push(
        api,
        {
            "id": wid,
            "steps": [
                {
                    "id": "load",
                    "type": "noop",
                    "wait_for": [{"name": topic, "where": {"dt": "D"}}],
                    "params": {"outputs": {"rows": {"expr": f'signals["{topic}"].params.rows'}}},
                },
            ],
        },
    )
    run = (await api.post(f"/api/v1/workflows/{wid}/runs", json={})).json()
    done = await wait_for_run(api, run["run_id"])
    assert done["steps"][0]["outputs"] == {"rows": 7}


async def test_wait_for_timeout_and_bypass(api):
    topic = name("never")
    wid = unique_id("wait-timeout")
    await push(
        api,
        {
            "id": wid,
            "steps": [
                {"id": "load", "type": "noop", "wait_for": [{"name": topic, "timeout": "1s"}]},
                {
                    "id": "manual",
                    "type": "noop",
                    "wait_for": [{"name": topic}],
                    "failure_mode": "ignore_failure",
                },
            ],
        },
    )
    run = (await api.post(f"/api/v1/workflows/{wid}/runs", json={})).json()
    await wait_for_step(api, run["run_id"], "manual", "waiting_for_signal")
    bypass = await api.post(f"/api/v1/runs/{run['run_id']}/steps/manual/bypass")
    assert bypass.status_code == 202
    done = await wait_for_run(api, run["run_id"])
    steps = {s["step_id"]: s for s in done["steps"]}
    assert steps["load"]["status"] == "timed_out"
    assert "waiting for signal" in steps["load"]["error"]
    assert steps["manual"]["status"] == "succeeded"
    assert done["status"] == "failed"
    again = await api.post(f"/api/v1/runs/{run['run_id']}/steps/manual/bypass")
    assert again.status_code == 409


async def test_trigger_loops_are_rejected_unless_allowed(api, sessions):
    a, b = unique_id("loop-a"), unique_id("loop-b")
    await push(api, noop_workflow(a, [{"on_finish": {"workflow": b}}]))
    response = await api.post(
        "/api/v1/workflows", json=noop_workflow(b, [{"on_finish": {"workflow": a}}])
    )
    assert response.status_code == 422
    problem = response.json()["detail"][0]
    assert problem["loc"] == ["triggers"]
    assert f"trigger loop: {b} -> {a} -> {b}" in problem["msg"]
    assert (await api.get(f"/api/v1/workflows/{b}")).status_code == 404
    allowed = await api.post(
        "/api/v1/workflows",
        json=noop_workflow(b, [{"on_finish": {"workflow": a}}], allow_trigger_loop=True),
    )
    assert allowed.status_code == 201
    itself = await api.post(
        "/api/v1/workflows",
        json=noop_workflow(unique_id("self"), [{"on_finish": {"workflow": "x"}}]),
    )
    assert itself.status_code == 201


async def test_only_the_active_version_triggers_fire(api, sessions):
    old_topic, new_topic = name("old"), name("new")
    wid = unique_id("sig-versions")
    await push(api, noop_workflow(wid, [{"signal": {"all_of": [{"name": old_topic}]}}]))
    assert len((await publish(api, old_topic, {"n": 1}))["runs"]) == 1
    await push(api, noop_workflow(wid, [{"signal": {"all_of": [{"name": new_topic}]}}]))
    assert (await publish(api, old_topic, {"n": 2}))["runs"] == []
    assert len((await publish(api, new_topic, {"n": 3}))["runs"]) == 1

    await api.post(f"/api/v1/workflows/{wid}/deactivate")
    inactive = await publish(api, new_topic, {"n": 4})
    assert inactive["runs"] == []
    detail = (await api.get(f"/api/v1/signals/{inactive['signal']['id']}")).json()
    assert detail["matches"][0]["outcome"] == "workflow_inactive"
    await api.post(f"/api/v1/workflows/{wid}/versions/1/activate")
    assert len((await publish(api, old_topic, {"n": 5}))["runs"]) == 1
    async with sessions() as session:
        registered = (
            (
                await session.execute(
                    select(SignalTriggerRow.names).where(SignalTriggerRow.workflow_id == wid)
                )
            )
            .scalars()
            .all()
        )
    assert registered == [[old_topic]]


async def test_batch_publish_counts_and_dedupes(api, sessions):
    topic = name("batch")
    wid = unique_id("sig-batch")
    await push(api, noop_workflow(wid, [{"signal": {"all_of": [{"name": topic}]}}]))
    signals = [{"name": topic, "params": {"i": i}} for i in range(50)]
    signals.append({"name": topic, "params": {"i": 0}})  # duplicate inside the batch
    response = await api.post("/api/v1/signals/batch", json={"signals": signals})
    assert response.status_code == 201
    results = response.json()["results"]
    assert [r["duplicate"] for r in results] == [False] * 50 + [True]
    assert sorted(r["signal"]["seq"] for r in results[:50]) == list(range(1, 51))
    assert all(len(r["runs"]) == 1 for r in results[:50])
    again = await api.post("/api/v1/signals/batch", json={"signals": signals})
    assert again.status_code == 200
    assert all(r["duplicate"] and r["runs"] == [] for r in again.json()["results"])
    assert len(await runs_of(sessions, wid)) == 50


async def test_a_batch_looks_triggers_up_in_chunks_and_matches_each_once(
    api, sessions, monkeypatch
):
    """A batch's routes are looked up a chunk at a time (long arrays would make PostgreSQL
    scan the table); a trigger reached from two chunks is still matched once per signal."""
    monkeypatch.setattr(signals_db, "ROUTES_PER_QUERY", 1)
    orders, fx = name("orders"), name("fx")
    wid = unique_id("sig-chunks")
    conditions = [{"name": orders, "where": {"table": "o"}}, {"name": fx}]
    await push(api, noop_workflow(wid, [{"signal": {"all_of": conditions, "join_on": ["dt"]}}]))
    response = await api.post(
        "/api/v1/signals/batch",
        json={
            "signals": [
                {"name": orders, "params": {"table": "o", "dt": "D"}},
                {"name": fx, "params": {"dt": "D"}},
            ]
        },
    )
    assert response.status_code == 201, response.text
    assert len(await runs_of(sessions, wid)) == 1
    # The completed join records its run on both signals.
    for result in response.json()["results"]:
        detail = (await api.get(f"/api/v1/signals/{result['signal']['id']}")).json()
        assert [m["outcome"] for m in detail["matches"]] == ["started_run"]


@pytest.mark.parametrize(
    ("body", "loc", "fragment"),
    [
        ({"name": "x", "params": {}, "colour": "red"}, ["body", "colour"], "Extra inputs"),
        ({"name": "x", "params": {"a": {"b": 1}}}, ["body", "params"], "flat"),
        ({"name": "x", "params": {"a": [1]}}, ["body", "params"], "flat"),
        ({"name": "bad name!", "params": {}}, ["body", "name"], "pattern"),
        ({"name": "x", "payload": {"blob": "x" * 70_000}}, ["body", "payload"], "limit"),
    ],
)
async def test_bad_signals_get_422_and_nothing_is_written(api, sessions, body, loc, fragment):
    count = select(func.count()).select_from(Signal).where(Signal.name == body["name"])
    async with sessions() as session:
        before = await session.scalar(count)
    response = await api.post("/api/v1/signals", json=body)
    assert response.status_code == 422, response.text
    problem = response.json()["detail"][0]
    assert problem["loc"] == loc
    assert fragment in problem["msg"]
    async with sessions() as session:
        assert await session.scalar(count) == before


async def test_oversized_batch_and_bad_member_are_rejected_whole(api, sessions):
    topic = name("too-many")
    too_many = [{"name": topic, "params": {"i": i}} for i in range(1001)]
    response = await api.post("/api/v1/signals/batch", json={"signals": too_many})
    assert response.status_code == 422
    assert "at most 1000" in response.json()["detail"][0]["msg"]
    mixed = [{"name": topic, "params": {"i": 1}}, {"name": topic, "params": {"i": {"x": 1}}}]
    response = await api.post("/api/v1/signals/batch", json={"signals": mixed})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][:3] == ["body", "signals", 1]
    async with sessions() as session:
        count = await session.scalar(
            select(func.count()).select_from(Signal).where(Signal.name == topic)
        )
    assert count == 0


@pytest.mark.parametrize(
    ("trigger", "fragment"),
    [
        ({"signal": {"all_of": [{"name": "a", "where": {"x": {"~=": 1}}}]}}, "unknown operator"),
        ({"signal": {"all_of": [{"name": "a", "where": {"x": {"in": 3}}}]}}, "list"),
        ({"signal": {"all_of": [{"name": "a", "where": {"x": [1, 2]}}]}}, "string/number"),
        ({"signal": {"all_of": []}}, "at least 1"),
        (
            {"signal": {"all_of": [{"name": "a"}], "params": {"nope": "signal.params.x"}}},
            "unknown param 'nope'",
        ),
        ({"signal": {"all_of": [{"name": "a"}], "when": "params.x == 1"}}, "unknown variable"),
        ({"on_finish": {"workflow": "up", "status": ["exploded"]}}, "Input should be"),
    ],
)
async def test_invalid_signal_triggers_are_rejected(api, sessions, trigger, fragment):
    wid = unique_id("bad-trigger")
    response = await api.post("/api/v1/workflows", json=noop_workflow(wid, [trigger]))
    assert response.status_code == 422, response.text
    assert any(fragment in p["msg"] for p in response.json()["detail"]), response.json()
    async with sessions() as session:
        count = await session.scalar(
            select(func.count())
            .select_from(WorkflowVersion)
            .where(WorkflowVersion.workflow_id == wid)
        )
    assert count == 0


async def test_concurrent_run_ends_along_an_on_finish_chain_do_not_deadlock(api, sessions):
    from sqlalchemy import text

    upstream, downstream = unique_id("chain-up"), unique_id("chain-down")
    parallel = {"kind": "parallel", "max_concurrency": 50}
    await push(api, {**noop_workflow(upstream, []), "run_strategy": parallel})
    await push(
        api,
        {
            **noop_workflow(downstream, [{"on_finish": {"workflow": upstream}}]),
            "run_strategy": parallel,
        },
    )

    async def deadlocks() -> int:
        async with sessions() as session:
            return await session.scalar(
                text("select deadlocks from pg_stat_database where datname = current_database()")
            )

    before = await deadlocks()
    starts = await asyncio.gather(
        *[api.post(f"/api/v1/workflows/{upstream}/runs", json={}) for _ in range(30)]
    )
    assert {r.status_code for r in starts} == {201}
    for _ in range(300):
        down = await runs_of(sessions, downstream)
        if len(down) == 30 and all(r.status == "succeeded" for r in down):
            break
        await asyncio.sleep(0.2)
    assert len(down) == 30 and {r.status for r in down} == {"succeeded"}
    await asyncio.sleep(1)  # pg_stat counters are flushed asynchronously
    assert await deadlocks() == before
