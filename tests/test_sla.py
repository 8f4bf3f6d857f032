"""Time promises with real PostgreSQL and Temporal: run SLAs (missed: signal, webhook event,
shown on the run, once; met: margin), their durable timers on the time-skipping server,
data-freshness expectations (missed and met) and schedule fires that could not start."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from temporalio.client import ScheduleBackfill, ScheduleOverlapPolicy
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from maestro.alerts import window
from maestro.definitions import Expectation, Sla, WorkflowDefinition
from maestro.freshness import expectations
from maestro.runs import RunsService
from maestro.schedules import time_triggers
from maestro.settings import TemporalSettings
from maestro.signals import SignalBus
from maestro.sla import SlaWatch, deadline
from tests.conftest import unique_id, wait_for_run
from tests.test_webhooks import subscribe
from workers.alerts import AlertActivities, SlaWorkflow

pytestmark = pytest.mark.usefixtures("worker")

WAITS = [{"id": "wait", "type": "noop", "wait_for": [{"name": "never.comes"}]}]


async def push(api, definition: dict) -> None:
    response = await api.post("/api/v1/workflows", json=definition)
    assert response.status_code == 201, response.text


async def start(api, workflow_id: str) -> str:
    response = await api.post(f"/api/v1/workflows/{workflow_id}/runs", json={})
    assert response.status_code == 201, response.text
    return response.json()["run_id"]


async def signals_named(api, name: str, run_id: str) -> list[dict]:
    found = (await api.get("/api/v1/signals", params={"name": name, "param.run_id": run_id})).json()
    return found["items"]


async def eventually(check, timeout: float = 30):
    deadline_ = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline_, "timed out"
        await asyncio.sleep(0.2)


# -- deadlines ------------------------------------------------------------------------------


def test_deadlines_from_the_cause_time():
    start = datetime(2026, 11, 26, 5, 30, tzinfo=UTC)
    assert deadline(Sla(finish_within="2h"), start) == start + timedelta(hours=2)
    # 07:00 in Paris (UTC+1 in November) on the same day
    paris = Sla(finish_by="07:00", timezone="Europe/Paris")
    assert deadline(paris, start) == datetime(2026, 11, 26, 6, 0, tzinfo=UTC)
    # after 07:00 local: the next day's
    late = datetime(2026, 11, 26, 6, 30, tzinfo=UTC)
    assert deadline(paris, late) == datetime(2026, 11, 27, 6, 0, tzinfo=UTC)
    # a wall-clock time skipped by the spring-forward change: the next day's
    spring = Sla(finish_by="02:30", timezone="Europe/Paris")
    assert deadline(spring, datetime(2026, 3, 29, 0, 0, tzinfo=UTC)) == datetime(
        2026, 3, 30, 0, 30, tzinfo=UTC
    )


def test_freshness_window_is_that_days_midnight_to_the_by_time():
    expectation = Expectation(signal="orders.loaded", by="06:00", timezone="America/New_York")
    at = datetime(2026, 11, 26, 11, 0, tzinfo=UTC)  # 06:00 in New York
    assert window(expectation, at) == (datetime(2026, 11, 26, 5, 0, tzinfo=UTC), at)


async def test_bad_promises_get_422_naming_the_field(api):
    base = {"id": unique_id("sla-bad"), "steps": [{"id": "a", "type": "noop"}]}
    cases = [
        ({"sla": {"finish_within": "2h", "finish_by": "07:00"}}, ["sla"]),
        ({"sla": {"finish_by": "7am"}}, ["sla", "finish_by"]),
        ({"sla": {"finish_by": "07:00", "timezone": "Mars/Base"}}, ["sla", "timezone"]),
        ({"expect": [{"signal": "x", "by": "24:00"}]}, ["expect", 0, "by"]),
        (
            {"expect": [{"signal": "x", "by": "06:00", "where": {"n": {"~": 1}}}]},
            ["expect", 0, "where"],
        ),
        (
            {"triggers": [{"cron": "0 7 * * *", "sla": {"finish_within": "0s"}}]},
            ["triggers", 0, "time", "sla"],
        ),
    ]
    for extra, loc in cases:
        response = await api.post("/api/v1/workflows/validate", json={**base, **extra})
        assert response.status_code == 422, response.text
        assert [p["loc"] for p in response.json()["detail"]] == [loc], response.text


# -- SLAs on the dev server ------------------------------------------------------------------


async def test_a_missed_sla_is_a_signal_an_event_and_shown_on_the_run_once(api, receiver):
    owner = unique_id("team")
    hook = await subscribe(api, receiver.url + "/sla", owner, ["sla.missed", "run.stopped"])
    workflow_id = unique_id("sla-miss")
    await push(
        api, {"id": workflow_id, "owner": owner, "sla": {"finish_within": "2s"}, "steps": WAITS}
    )
    # A workflow that reacts to the miss.
    reactor = unique_id("sla-react")
    await push(
        api,
        {
            "id": reactor,
            "owner": owner,
            "params": {"late": {"type": "string", "default": ""}},
            "triggers": [
                {
                    "signal": {
                        "all_of": [
                            {"name": "maestro.sla.missed", "where": {"workflow_id": workflow_id}}
                        ],
                        "params": {"late": "signal.params.run_id"},
                    }
                }
            ],
            "steps": [{"id": "page", "type": "noop"}],
        },
    )
    run_id = await start(api, workflow_id)

    await receiver.wait_for(lambda: len(receiver.events()) >= 1, timeout=30)
    missed = receiver.events()[0].json()
    assert missed["type"] == "sla.missed" and missed["data"]["run_id"] == run_id
    [signal] = await signals_named(api, "maestro.sla.missed", run_id)
    assert signal["params"]["workflow_id"] == workflow_id
    shown = (await api.get(f"/api/v1/runs/{run_id}")).json()
    assert shown["status"] == "running"
    assert shown["sla"]["status"] == "missed" and shown["sla"]["missed_at"]
    reacted = (await api.get("/api/v1/runs", params={"workflow_id": reactor})).json()["items"]
    assert [r["params"]["late"] for r in reacted] == [run_id]

    assert (await api.post(f"/api/v1/runs/{run_id}/stop")).status_code == 202
    await wait_for_run(api, run_id)
    await receiver.wait_for(lambda: len(receiver.events()) >= 2)
    stopped = receiver.events()[1].json()
    assert stopped["type"] == "run.stopped" and stopped["data"]["sla"]["missed"] is True
    # Once: one event, one signal.
    await asyncio.sleep(1)
    assert [r.json()["type"] for r in receiver.events()] == ["sla.missed", "run.stopped"]
    assert len(await signals_named(api, "maestro.sla.missed", run_id)) == 1
    log = (await api.get(f"/api/v1/webhooks/{hook['id']}/deliveries")).json()["items"]
    assert len(log) == 2


async def test_a_met_sla_records_its_margin_and_no_miss(api, receiver, temporal_client):
    owner = unique_id("team")
    await subscribe(api, receiver.url + "/met", owner, ["sla.missed", "run.succeeded"])
    workflow_id = unique_id("sla-met")
    await push(
        api,
        {
            "id": workflow_id,
            "owner": owner,
            "sla": {"finish_within": "3s"},
            "steps": [{"id": "a", "type": "noop"}],
        },
    )
    run_id = await start(api, workflow_id)
    run = await wait_for_run(api, run_id)
    assert run["status"] == "succeeded"
    shown = (await api.get(f"/api/v1/runs/{run_id}")).json()["sla"]
    assert shown["status"] == "met" and 0 < shown["margin_seconds"] <= 3
    # Its timer fires at the deadline and finds the run ended in time.
    handle = temporal_client.get_workflow_handle(f"{run['temporal_workflow_id']}:sla")
    assert await asyncio.wait_for(handle.result(), 30) is False
    await receiver.wait_for(lambda: len(receiver.events()) >= 1)
    await asyncio.sleep(0.5)
    [event] = receiver.events()
    assert event.json()["type"] == "run.succeeded"
    assert event.json()["data"]["sla"]["missed"] is False
    assert await signals_named(api, "maestro.sla.missed", run_id) == []


async def test_a_timed_runs_sla_counts_from_its_scheduled_time(api, temporal_client, sessions):
    workflow_id = unique_id("sla-timed")
    await push(
        api,
        {
            "id": workflow_id,
            "triggers": [{"cron": "0 0 1 1 *", "sla": {"finish_within": "90m"}}],
            "sla": {"finish_within": "1d"},
            "steps": [{"id": "a", "type": "noop"}],
        },
    )
    response = await api.post(
        f"/api/v1/workflows/{workflow_id}/backfill",
        json={"start": "2025-12-31T00:00:00+00:00", "end": "2026-01-02T00:00:00+00:00"},
    )
    assert response.status_code in (200, 201, 202), response.text
    runs = await eventually(lambda: _items(api, workflow_id))
    run = await wait_for_run(api, runs[0]["run_id"])
    sla = (await api.get(f"/api/v1/runs/{run['run_id']}")).json()["sla"]
    # The trigger's own SLA, from 2026-01-01T00:00Z: long missed when it ran.
    assert sla["deadline"].startswith("2026-01-01T01:30:00")
    assert sla["status"] == "missed"


async def _items(api, workflow_id):
    return (await api.get("/api/v1/runs", params={"workflow_id": workflow_id})).json()["items"]


# -- the SLA timer on the time-skipping server -------------------------------------------------


def _test_server_path() -> str:
    import shutil
    import sys

    beside = Path(sys.executable).parent / "temporal-test-server"
    return str(beside) if beside.exists() else (shutil.which("temporal-test-server") or "")


async def test_an_sla_of_two_hours_fires_on_the_time_skipping_server(api, sessions):
    """The same durable timer, two hours long, on Temporal's time-skipping test server: the
    run (live under the dev server's worker) misses its deadline there at once."""
    workflow_id = unique_id("sla-skip")
    await push(api, {"id": workflow_id, "sla": {"finish_within": "2h"}, "steps": WAITS})
    run_id = await start(api, workflow_id)
    shown = await eventually(lambda: _running(api, run_id))
    deadline_ = datetime.fromisoformat(shown["sla"]["deadline"])
    queue = unique_id("sla-skip-queue")
    async with await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=_test_server_path(), data_converter=pydantic_data_converter
    ) as env:
        runs = RunsService(
            sessions, env.client, TemporalSettings(task_queue=queue), search_attributes=False
        )
        alerts = AlertActivities(sessions, SignalBus(sessions, runs, env.client))
        async with Worker(
            env.client,
            task_queue=queue,
            workflows=[SlaWorkflow],
            activities=[alerts.check_sla, alerts.check_freshness],
        ):
            began = time.monotonic()
            missed = await env.client.execute_workflow(
                SlaWorkflow.run,
                SlaWatch(run_id=run_id, workflow_id=workflow_id, deadline=deadline_),
                id=f"skip-{run_id}",
                task_queue=queue,
            )
            assert missed is True and time.monotonic() - began < 30
            # A second check (a retried timer) records nothing more.
            again = await env.client.execute_workflow(
                SlaWorkflow.run,
                SlaWatch(run_id=run_id, workflow_id=workflow_id, deadline=deadline_),
                id=f"skip-again-{run_id}",
                task_queue=queue,
            )
            assert again is False
    assert (await api.get(f"/api/v1/runs/{run_id}")).json()["sla"]["status"] == "missed"
    await api.post(f"/api/v1/runs/{run_id}/stop")


async def _running(api, run_id):
    body = (await api.get(f"/api/v1/runs/{run_id}")).json()
    return body if body["status"] == "running" and body["sla"] else None


# -- freshness and schedule misses ----------------------------------------------------------


async def _definition(api, workflow_id: str, refs):
    body = (await api.get(f"/api/v1/workflows/{workflow_id}")).json()["definition"]
    return refs(workflow_id, WorkflowDefinition.model_validate(body))


async def _fire(temporal_client, schedule_id: str) -> str:
    """Fire a schedule now; the id of the workflow it started."""
    handle = temporal_client.get_schedule_handle(schedule_id)
    before = len((await handle.describe()).info.recent_actions)
    await handle.trigger()

    async def started():
        actions = (await handle.describe()).info.recent_actions
        return actions[-1].action.workflow_id if len(actions) > before else None

    return await eventually(started)


async def _latest_run(temporal_client, workflow_id: str):
    """The execution the schedule started (read from its history, not from the visibility
    listing, which may not show it yet)."""
    handle = temporal_client.get_workflow_handle(workflow_id)
    await handle.describe()
    return handle


async def test_freshness_missed_and_met(api, receiver, temporal_client):
    owner = unique_id("team")
    await subscribe(api, receiver.url + "/fresh", owner, ["freshness.missed"])
    name = unique_id("orders.loaded")
    workflow_id = unique_id("fresh")
    await push(
        api,
        {
            "id": workflow_id,
            "owner": owner,
            "expect": [{"signal": name, "by": "06:00", "where": {"region": "eu"}}],
            "steps": [{"id": "a", "type": "noop"}],
        },
    )
    [ref] = await _definition(api, workflow_id, expectations)
    schedule = await temporal_client.get_schedule_handle(ref.schedule_id).describe()
    assert schedule.schedule.spec.cron_expressions == ["0 6 * * *"] or schedule.schedule.spec

    # Only a signal from another region arrived today: missed.
    published = await api.post("/api/v1/signals", json={"name": name, "params": {"region": "us"}})
    assert published.status_code == 201
    fired = await _fire(temporal_client, ref.schedule_id)
    handle = await _latest_run(temporal_client, fired)
    assert await asyncio.wait_for(handle.result(), 30) is False
    await receiver.wait_for(lambda: len(receiver.events()) >= 1)
    event = receiver.events()[0].json()
    assert event["type"] == "freshness.missed" and event["data"]["signal"] == name
    assert event["data"]["where"] == {"region": "eu"}
    signals = (
        await api.get(
            "/api/v1/signals",
            params={"name": "maestro.freshness.missed", "param.workflow_id": workflow_id},
        )
    ).json()
    assert len(signals["items"]) == 1

    # The expected data arrives: met, nothing more is sent.
    published = await api.post("/api/v1/signals", json={"name": name, "params": {"region": "eu"}})
    assert published.status_code == 201
    fired = await _fire(temporal_client, ref.schedule_id)
    handle = await _latest_run(temporal_client, fired)
    assert await asyncio.wait_for(handle.result(), 30) is True
    await asyncio.sleep(1)
    assert len(receiver.events()) == 1


async def test_a_fire_that_cannot_start_is_a_missed_schedule_but_a_paused_one_is_not(
    api, receiver, temporal_client
):
    owner = unique_id("team")
    await subscribe(api, receiver.url + "/sched", owner, ["schedule.missed"])
    workflow_id = unique_id("sched-miss")
    await push(
        api,
        {
            "id": workflow_id,
            "owner": owner,
            "params": {"region": {"type": "string"}},  # required: a fire cannot supply it
            "triggers": [{"cron": "0 5 1 1 *"}],
            "steps": [{"id": "a", "type": "noop"}],
        },
    )
    schedule_id = (await _definition(api, workflow_id, time_triggers))[0].schedule_id
    await _fire(temporal_client, schedule_id)
    await receiver.wait_for(lambda: len(receiver.events()) >= 1)
    event = receiver.events()[0].json()
    assert event["type"] == "schedule.missed" and event["workflow_id"] == workflow_id
    assert "region" in event["data"]["reason"]

    assert (await api.post(f"/api/v1/workflows/{workflow_id}/pause")).status_code == 200
    await _fire(temporal_client, schedule_id)
    await asyncio.sleep(3)
    assert len(receiver.events()) == 1


async def test_a_fire_temporal_starts_past_the_catchup_window_is_a_missed_schedule(
    api, receiver, sessions, temporal_client
):
    """Temporal starts fires it could not start on time (here: its own backfill of two hours
    ago, as after a Temporal outage) and Maestro reports them as `schedule.missed` instead of
    running them; the schedule lets Temporal start such fires for a day past the window."""
    owner = unique_id("team")
    await subscribe(api, receiver.url + "/late", owner, ["schedule.missed"])
    workflow_id = unique_id("late-fire")
    await push(
        api,
        {
            "id": workflow_id,
            "owner": owner,
            "triggers": [{"cron": "*/30 * * * *", "catchup_window": "10m"}],
            "steps": [{"id": "a", "type": "noop"}],
        },
    )
    [ref] = await _definition(api, workflow_id, time_triggers)
    handle = temporal_client.get_schedule_handle(ref.schedule_id)
    policy = (await handle.describe()).schedule.policy
    assert policy.catchup_window == timedelta(minutes=10) + timedelta(days=1)

    now = datetime.now(UTC).replace(second=0, microsecond=0)
    await handle.backfill(
        ScheduleBackfill(
            start_at=now - timedelta(hours=2, minutes=1),
            end_at=now - timedelta(hours=1, minutes=31),
            overlap=ScheduleOverlapPolicy.ALLOW_ALL,
        )
    )
    await receiver.wait_for(lambda: len(receiver.events()) >= 1)
    event = receiver.events()[0].json()
    assert event["type"] == "schedule.missed" and event["workflow_id"] == workflow_id
    assert "catchup window (600 s)" in event["data"]["reason"]
    scheduled = datetime.fromisoformat(event["data"]["scheduled_at"])
    assert now - timedelta(hours=2, minutes=1) <= scheduled <= now - timedelta(hours=1, minutes=31)
    async with sessions() as session:
        runs = await session.scalar(
            text("SELECT count(*) FROM runs WHERE workflow_id = :w"), {"w": workflow_id}
        )
    assert runs == 0
