"""Retention against real PostgreSQL, a real Temporal dev server and a worker: old ended runs
and signals go, in batches; what a live run, a queued run, a waiting step, an open join or the
lineage of a kept run needs stays.

Rows are made through the API, then dated back to 2000 (their own rows only), and a pass runs
with a cutoff in 2001, so rows the other tests of the session write are never candidates."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.duration_pb2 import Duration
from pydantic import ValidationError
from sqlalchemy import func, select, text
from temporalio.api.workflowservice.v1 import RegisterNamespaceRequest

from maestro.db.tables import Run, Signal, SignalMatch, SignalWait, StepRun, TriggerJoin
from maestro.retention import Retention, align_temporal_retention
from maestro.settings import RetentionSettings, Settings
from tests.conftest import unique_id, wait_for_run, wait_for_step

pytestmark = pytest.mark.usefixtures("worker")

LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)
CUTOFF = datetime(2001, 1, 1, tzinfo=UTC)


def name(prefix: str) -> str:
    return f"{prefix}.{uuid.uuid4().hex[:8]}"


async def push(api, body: dict) -> None:
    response = await api.post("/api/v1/workflows", json=body)
    assert response.status_code == 201, response.text


async def publish(api, signal_name: str, params: dict | None = None) -> dict:
    response = await api.post("/api/v1/signals", json={"name": signal_name, "params": params or {}})
    assert response.status_code == 201, response.text
    return response.json()


async def start(api, workflow_id: str, params: dict | None = None) -> dict:
    response = await api.post(
        f"/api/v1/workflows/{workflow_id}/runs", json={"params": params or {}}
    )
    assert response.status_code == 201, response.text
    return response.json()


async def age_runs(sessions, *run_ids: str, at: datetime = LONG_AGO) -> None:
    """Date runs back: created, started and (if ended) ended at `at`."""
    async with sessions.begin() as session:
        await session.execute(
            text(
                "UPDATE runs SET created_at = v.at, started_at = v.at,"
                " ended_at = CASE WHEN ended_at IS NULL THEN NULL ELSE v.at END,"
                " admitted_at = CASE WHEN admitted_at IS NULL THEN NULL ELSE v.at END"
                " FROM (SELECT CAST(:at AS timestamptz) AS at) AS v WHERE run_id = ANY(:ids)"
            ),
            {"at": at, "ids": list(run_ids)},
        )


async def age_signals(sessions, *signal_ids: int, at: datetime = LONG_AGO) -> None:
    async with sessions.begin() as session:
        await session.execute(
            text("UPDATE signals SET created_at = :at WHERE id = ANY(:ids)"),
            {"at": at, "ids": list(signal_ids)},
        )


async def exists(sessions, table, **where) -> bool:
    async with sessions() as session:
        query = select(func.count()).select_from(table)
        for column, value in where.items():
            query = query.where(getattr(table, column) == value)
        return (await session.execute(query)).scalar_one() > 0


def retention(sessions, batch_size: int = 500) -> Retention:
    return Retention(sessions, RetentionSettings(days=365, batch_size=batch_size))


async def signal_workflow(api, trigger: dict | None = None, steps: list | None = None) -> tuple:
    topic = name("ret.data")
    wid = unique_id("ret")
    await push(
        api,
        {
            "id": wid,
            "run_strategy": {"kind": "parallel", "max_concurrency": 10},
            "triggers": [trigger or {"signal": {"all_of": [{"name": topic}]}}],
            "steps": steps or [{"id": "go", "type": "noop"}],
        },
    )
    return wid, topic


async def old_ended_runs(api, sessions, count: int) -> list[str]:
    """`count` signal-started runs that succeeded, dated back to 2000."""
    _, topic = await signal_workflow(api)
    published = [await publish(api, topic, {"i": i}) for i in range(count)]
    runs = [p["runs"][0]["run_id"] for p in published]
    for run_id in runs:
        assert (await wait_for_run(api, run_id))["status"] == "succeeded"
    await age_runs(sessions, *runs)
    return runs


async def test_old_ended_runs_go_with_their_steps_and_signals_in_batches(api, sessions):
    wid, topic = await signal_workflow(api)
    published = [await publish(api, topic, {"i": i}) for i in range(5)]
    runs = [p["runs"][0]["run_id"] for p in published]
    for run_id in runs:
        assert (await wait_for_run(api, run_id))["status"] == "succeeded"
    stray = await publish(api, name("ret.nobody"))  # reached no trigger
    old, recent = runs[:4], runs[4]
    await age_runs(sessions, *old)
    await age_signals(sessions, stray["signal"]["id"], *(p["signal"]["id"] for p in published[:4]))

    deleted = await retention(sessions, batch_size=2).run_pass(CUTOFF)

    assert deleted.runs == 4 and deleted.signals == 5
    for run_id, p in zip(old, published, strict=False):
        assert not await exists(sessions, Run, run_id=run_id)
        assert not await exists(sessions, StepRun, run_id=run_id)
        assert not await exists(sessions, Signal, id=p["signal"]["id"])
        assert not await exists(sessions, SignalMatch, signal_id=p["signal"]["id"])
    assert not await exists(sessions, Signal, id=stray["signal"]["id"])
    # The run of the recent signal and the signal itself stay, readable through the API.
    assert (await api.get(f"/api/v1/runs/{recent}")).json()["steps"][0]["status"] == "succeeded"
    assert await exists(sessions, Signal, id=published[4]["signal"]["id"])
    listed = (await api.get("/api/v1/runs", params={"workflow_id": wid})).json()["items"]
    assert [r["run_id"] for r in listed] == [recent]
    # The recent run's completion signal (produced by it) stays with it; a second pass finds
    # nothing more.
    again = await retention(sessions).run_pass(CUTOFF)
    assert (again.runs, again.signals) == (0, 0)


async def test_live_and_queued_runs_and_waiting_steps_are_kept(api, sessions):
    waited = name("ret.never")
    wid = unique_id("ret-wait")
    await push(
        api,
        {
            "id": wid,
            "run_strategy": "sequential",
            "steps": [{"id": "hold", "type": "noop", "wait_for": [{"name": waited}]}],
        },
    )
    waiting = await start(api, wid)
    await wait_for_step(api, waiting["run_id"], "hold", "waiting_for_signal")
    queued = await start(api, wid)  # sequential: waits its turn behind the first
    assert queued["status"] == "queued"
    await age_runs(sessions, waiting["run_id"], queued["run_id"])

    await retention(sessions).run_pass(CUTOFF)

    assert await exists(sessions, Run, run_id=waiting["run_id"])
    assert await exists(sessions, Run, run_id=queued["run_id"])
    assert await exists(sessions, SignalWait, run_id=waiting["run_id"])
    # The kept runs carry on: the signal releases the step, the queued run follows (its wait
    # finds the same stored signal).
    await publish(api, waited)
    assert (await wait_for_run(api, waiting["run_id"]))["status"] == "succeeded"
    assert (await wait_for_run(api, queued["run_id"]))["status"] == "succeeded"


async def test_a_signal_an_earlier_wait_matched_is_kept_while_its_run_is(api, sessions):
    topic = name("ret.arrived")
    early = await publish(api, topic, {"dt": "D"})
    wid = unique_id("ret-matched")
    await push(
        api,
        {
            "id": wid,
            "steps": [{"id": "load", "type": "noop", "wait_for": [{"name": topic}]}],
        },
    )
    run = await start(api, wid)
    assert (await wait_for_run(api, run["run_id"]))["status"] == "succeeded"
    await age_signals(sessions, early["signal"]["id"])

    await retention(sessions).run_pass(CUTOFF)

    assert await exists(sessions, Signal, id=early["signal"]["id"])
    # Once the run is old too, both go.
    await age_runs(sessions, run["run_id"])
    deleted = await retention(sessions).run_pass(CUTOFF)
    assert not await exists(sessions, Run, run_id=run["run_id"])
    assert not await exists(sessions, Signal, id=early["signal"]["id"])
    assert deleted.runs == 1


async def test_a_signal_held_by_an_open_join_is_kept_and_still_completes_it(api, sessions):
    orders, fx = name("ret.orders"), name("ret.fx")
    wid, _ = await signal_workflow(
        api, {"signal": {"all_of": [{"name": orders}, {"name": fx}], "join_on": ["dt"]}}
    )
    held = await publish(api, orders, {"dt": "D1"})
    assert held["runs"] == []
    await age_signals(sessions, held["signal"]["id"])

    await retention(sessions).run_pass(CUTOFF)

    assert await exists(sessions, Signal, id=held["signal"]["id"])
    assert await exists(sessions, TriggerJoin, workflow_id=wid)
    completing = await publish(api, fx, {"dt": "D1"})
    [run] = completing["runs"]
    assert (await wait_for_run(api, run["run_id"]))["status"] == "succeeded"
    detail = (await api.get(f"/api/v1/signals/{held['signal']['id']}")).json()
    assert [(m["outcome"], m["run_id"]) for m in detail["matches"]] == [
        ("started_run", run["run_id"])
    ]


async def test_the_upstream_lineage_of_a_kept_run_is_kept(api, sessions):
    upstream, downstream = unique_id("ret-up"), unique_id("ret-down")
    await push(api, {"id": upstream, "steps": [{"id": "go", "type": "noop"}]})
    await push(
        api,
        {
            "id": downstream,
            "triggers": [{"on_finish": {"workflow": upstream}}],
            "steps": [{"id": "go", "type": "noop"}],
        },
    )
    up = await start(api, upstream)
    await wait_for_run(api, up["run_id"])
    down = None
    for _ in range(100):
        async with sessions() as session:
            down = (
                await session.execute(select(Run).where(Run.workflow_id == downstream))
            ).scalar_one_or_none()
        if down is not None:
            break
        await asyncio.sleep(0.1)
    assert down is not None
    await wait_for_run(api, down.run_id)
    async with sessions() as session:
        completion = (
            await session.execute(select(Signal).where(Signal.producer_run_id == up["run_id"]))
        ).scalar_one()
    await age_runs(sessions, up["run_id"])
    await age_signals(sessions, completion.id)

    await retention(sessions).run_pass(CUTOFF)

    # The downstream run is kept: the signal that started it and the run that produced it stay.
    assert await exists(sessions, Run, run_id=up["run_id"])
    assert await exists(sessions, Signal, id=completion.id)
    lineage = (await api.get(f"/api/v1/runs/{down.run_id}/lineage")).json()
    assert f"run:{up['run_id']}" in {n["id"] for n in lineage["nodes"]}

    # Once the downstream run is old too, it goes first, then its upstream in the next pass.
    await age_runs(sessions, down.run_id, at=LONG_AGO + timedelta(days=1))
    await retention(sessions).run_pass(CUTOFF)
    assert not await exists(sessions, Run, run_id=down.run_id)
    await retention(sessions).run_pass(CUTOFF)
    assert not await exists(sessions, Run, run_id=up["run_id"])
    assert not await exists(sessions, Signal, id=completion.id)


async def test_a_kept_restart_keeps_its_original_and_a_blocking_run_is_kept(api, sessions):
    wid = unique_id("ret-strict")
    await push(
        api,
        {
            "id": wid,
            "run_strategy": "strict_sequential",
            "steps": [
                {
                    "id": "work",
                    "type": "python",
                    "retry": {"max_attempts": 1},
                    "params": {"entrypoint": "tests.steps:fail"},
                }
            ],
        },
    )
    failed = await start(api, wid)
    assert (await wait_for_run(api, failed["run_id"]))["status"] == "failed"
    await age_runs(sessions, failed["run_id"])

    await retention(sessions).run_pass(CUTOFF)
    # It holds the strict_sequential queue: restart and unblock still need it.
    assert await exists(sessions, Run, run_id=failed["run_id"])

    response = await api.post(f"/api/v1/runs/{failed['run_id']}/restart", json={})
    assert response.status_code == 201, response.text
    restart = response.json()
    await wait_for_run(api, restart["run_id"])  # fails again; it now holds the queue
    await retention(sessions).run_pass(CUTOFF)
    assert await exists(sessions, Run, run_id=failed["run_id"]), "its restart is kept"

    await age_runs(sessions, restart["run_id"], at=LONG_AGO + timedelta(days=1))
    assert (await api.post(f"/api/v1/workflows/{wid}/unblock")).status_code == 200
    await retention(sessions).run_pass(CUTOFF)
    await retention(sessions).run_pass(CUTOFF)
    assert not await exists(sessions, Run, run_id=restart["run_id"])
    assert not await exists(sessions, Run, run_id=failed["run_id"])


async def test_a_pass_skips_rows_another_transaction_holds(api, sessions):
    runs = await old_ended_runs(api, sessions, 2)
    async with sessions.begin() as holder:
        await holder.execute(select(Run).where(Run.run_id == runs[0]).with_for_update())
        deleted = await asyncio.wait_for(retention(sessions).run_pass(CUTOFF), 10)
    assert deleted.runs == 1
    assert await exists(sessions, Run, run_id=runs[0])
    assert not await exists(sessions, Run, run_id=runs[1])
    await retention(sessions).run_pass(CUTOFF)
    assert not await exists(sessions, Run, run_id=runs[0])


async def test_by_default_nothing_is_deleted(api, sessions):
    [run_id] = await old_ended_runs(api, sessions, 1)
    keeper = Retention(sessions, RetentionSettings())
    assert keeper.max_age is None
    deleted = await keeper.sweep()
    assert (deleted.runs, deleted.signals) == (0, 0)
    assert await exists(sessions, Run, run_id=run_id)
    # Clean up for the other tests' passes.
    await retention(sessions).run_pass(CUTOFF)


async def test_sweeps_work_in_slices_until_the_pass_is_through(api, sessions):
    runs = await old_ended_runs(api, sessions, 6)
    # Every row older than ten years; one run per batch, one batch per sweep.
    keeper = Retention(
        sessions, RetentionSettings(days=3650, batch_size=1, seconds_per_sweep=0.001)
    )
    total, sweeps = 0, 0
    while total < len(runs) and sweeps < 200:
        total += (await keeper.sweep()).runs
        sweeps += 1
    assert total == len(runs) and sweeps >= len(runs)
    assert not any([await exists(sessions, Run, run_id=r) for r in runs])


def test_the_setting_is_checked(monkeypatch):
    monkeypatch.setenv("MAESTRO_RETENTION__DAYS", "-3")
    with pytest.raises(ValidationError) as caught:
        Settings()
    assert caught.value.errors()[0]["loc"] == ("retention", "days")
    monkeypatch.setenv("MAESTRO_RETENTION__DAYS", "30")
    assert Settings().retention.days == 30


async def test_temporal_namespace_retention_is_lowered_to_maestros(temporal_client):
    namespace = f"ret-{uuid.uuid4().hex[:8]}"
    await temporal_client.workflow_service.register_namespace(
        RegisterNamespaceRequest(
            namespace=namespace, workflow_execution_retention_period=Duration(seconds=5 * 86400)
        )
    )
    keep = await align_temporal_retention(temporal_client, namespace, None)
    assert keep == timedelta(days=5)
    assert await align_temporal_retention(temporal_client, namespace, timedelta(days=9)) == (
        timedelta(days=5)
    )
    assert await align_temporal_retention(temporal_client, namespace, timedelta(days=2)) == (
        timedelta(days=2)
    )
    # Temporal keeps closed workflows one day at least.
    assert await align_temporal_retention(temporal_client, namespace, timedelta(hours=6)) == (
        timedelta(days=1)
    )
    assert await align_temporal_retention(temporal_client, namespace, None) == timedelta(days=1)
