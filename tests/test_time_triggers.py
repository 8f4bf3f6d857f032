"""Time triggers on real Temporal Schedules (dev server) with an in-process worker and the API:
firing, run_ts, version changes, pause, backfill, duplicate fires, reconciliation, previews."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select, text
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleSpec,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.service import RPCError

from maestro.db.tables import Run
from maestro.definitions import TimeTrigger
from maestro.runs import RunsService
from maestro.runtime import AdmitFireInput
from maestro.schedules import Schedules, TimeTriggerRef
from tests.conftest import unique_id, wait_for_run, wait_for_step

pytestmark = pytest.mark.usefixtures("worker")


def body(workflow_id: str, triggers: list, **extra) -> dict:
    return {
        "id": workflow_id,
        "triggers": triggers,
        "params": {
            "run_ts": {"type": "string", "default": ""},
            "run_date": {"type": "string", "default": ""},
        },
        "steps": [
            {"id": "go", "type": "noop", "params": {"outputs": {"ts": {"expr": "params.run_ts"}}}}
        ],
        **extra,
    }


async def push(api, definition: dict) -> None:
    response = await api.post("/api/v1/workflows", json=definition)
    assert response.status_code in (200, 201), response.text


async def triggers(api, workflow_id: str) -> list[dict]:
    response = await api.get(f"/api/v1/workflows/{workflow_id}/triggers")
    assert response.status_code == 200, response.text
    return response.json()


async def time_runs(sessions, workflow_id: str) -> list[Run]:
    async with sessions() as session:
        query = select(Run).where(Run.workflow_id == workflow_id).order_by(Run.run_number)
        return [r for r in (await session.execute(query)).scalars() if r.cause["kind"] == "time"]


def scheduled_at(run: Run) -> datetime:
    """The fire time a time-triggered run was started for."""
    return datetime.fromisoformat(run.cause["detail"]["scheduled_at"])


def lag(kind: str) -> tuple[float, float]:
    """This process's trigger-lag samples of `kind` (API and in-process worker): how many, and
    how many of them were over a minute."""
    count = REGISTRY.get_sample_value("maestro_trigger_lag_seconds_count", {"kind": kind}) or 0
    quick = (
        REGISTRY.get_sample_value(
            "maestro_trigger_lag_seconds_bucket", {"kind": kind, "le": "60.0"}
        )
        or 0
    )
    return count, count - quick


async def schedule_exists(client: Client, schedule_id: str) -> bool:
    try:
        await client.get_schedule_handle(schedule_id).describe()
    except RPCError:
        return False
    return True


async def test_interval_schedule_fires_runs_with_the_scheduled_time(api, sessions, temporal_client):
    wid = unique_id("every")
    timed_before, _ = lag("time")
    await push(api, body(wid, [{"every": "2s"}]))
    [trigger] = await triggers(api, wid)
    assert trigger["kind"] == "interval" and trigger["active"] is True
    schedule_id = trigger["schedule"]["schedule_id"]
    assert schedule_id == f"maestro:{wid}:{trigger['trigger_id']}"
    assert trigger["schedule"]["exists"] is True
    for _ in range(100):
        runs = await time_runs(sessions, wid)
        if len(runs) >= 2:
            break
        await asyncio.sleep(0.2)
    assert len(runs) >= 2
    # Each fire the worker carried counts its lag from the scheduled time.
    timed, slow = lag("time")
    assert timed - timed_before >= 2 and slow == 0
    for run in runs[:2]:
        # The execution the schedule started carries the run itself: one workflow per fire.
        assert run.temporal_workflow_id.startswith(f"{schedule_id}:run-")
        scheduled = scheduled_at(run)
        assert scheduled.timestamp() % 2 == 0  # on the interval's grid, not when it ran
        assert run.params["run_ts"] == scheduled.isoformat()
        assert run.params["run_date"] == scheduled.date().isoformat()
        assert run.trigger_id == trigger["trigger_id"]
        assert run.request_id == f"{trigger['trigger_id']}:{scheduled.isoformat()}"
    first = (await api.get(f"/api/v1/runs/{runs[0].run_id}")).json()
    for _ in range(50):
        if first["status"] == "succeeded":
            break
        await asyncio.sleep(0.2)
        first = (await api.get(f"/api/v1/runs/{runs[0].run_id}")).json()
    assert first["outputs"]["go"]["ts"] == runs[0].params["run_ts"]
    listed = await triggers(api, wid)
    assert listed[0]["last_fire"]["run_id"] in {r.run_id for r in await time_runs(sessions, wid)}

    # Pausing stops fires; resuming starts them again.
    paused = await api.post(f"/api/v1/workflows/{wid}/pause")
    assert paused.json()["paused"] is True
    description = await temporal_client.get_schedule_handle(schedule_id).describe()
    assert description.schedule.state.paused is True
    paused_at = datetime.now(UTC)
    await asyncio.sleep(4.5)  # the pause spans at least two fire times of the 2 s grid
    resumed_at = datetime.now(UTC)
    await api.post(f"/api/v1/workflows/{wid}/resume")
    description = await temporal_client.get_schedule_handle(schedule_id).describe()
    assert description.schedule.state.paused is False
    # A fire after the resume made its run, so the fire times inside the pause have passed:
    # none of them made one.
    for _ in range(150):
        fired = [scheduled_at(r) for r in await time_runs(sessions, wid)]
        if any(at > resumed_at for at in fired):
            break
        await asyncio.sleep(0.2)
    assert any(at > resumed_at for at in fired), fired
    assert [at for at in fired if paused_at < at < resumed_at] == []

    # A new version with another trigger moves the schedule; deactivating pauses it.
    await push(api, body(wid, [{"cron": "0 3 * * *", "timezone": "Europe/Paris"}]))
    [moved] = await triggers(api, wid)
    assert moved["trigger_id"] != trigger["trigger_id"]
    assert not await schedule_exists(temporal_client, schedule_id)
    assert await schedule_exists(temporal_client, moved["schedule"]["schedule_id"])
    await api.post(f"/api/v1/workflows/{wid}/deactivate")
    description = await temporal_client.get_schedule_handle(
        moved["schedule"]["schedule_id"]
    ).describe()
    assert description.schedule.state.paused is True


async def test_previewed_fire_times_match_temporal(api, temporal_client):
    wid = unique_id("preview")
    await push(api, body(wid, [{"cron": "*/20 9-17 * * MON-FRI", "timezone": "America/New_York"}]))
    [trigger] = await triggers(api, wid)
    description = await temporal_client.get_schedule_handle(
        trigger["schedule"]["schedule_id"]
    ).describe()
    temporal_times = [t.astimezone(UTC) for t in description.info.next_action_times[:5]]
    ours = [datetime.fromisoformat(t) for t in trigger["next_fires"]]
    assert ours == temporal_times


def test_fire_times_are_dst_correct():
    ref = TimeTriggerRef("w", 0, TimeTrigger(cron="30 2 * * *", timezone="Europe/Paris"))
    # Spring forward (2027-03-28): 02:30 does not exist in Paris, so no fire that day.
    spring = ref.fire_times(
        datetime(2027, 3, 26, tzinfo=UTC), datetime(2027, 3, 31, tzinfo=UTC), 10
    )
    assert [t.strftime("%m-%d %H:%M") for t in spring] == [
        "03-26 01:30",
        "03-27 01:30",
        "03-29 00:30",
        "03-30 00:30",
    ]
    # Fall back (2026-10-25): 02:30 happens twice, but fires once.
    autumn = ref.fire_times(
        datetime(2026, 10, 23, tzinfo=UTC), datetime(2026, 10, 28, tzinfo=UTC), 10
    )
    assert [t.strftime("%m-%d") for t in autumn] == ["10-23", "10-24", "10-25", "10-26", "10-27"]
    hourly = TimeTriggerRef("w", 0, TimeTrigger(cron="0 * * * *", timezone="Europe/Paris"))
    times = hourly.fire_times(
        datetime(2026, 10, 24, 22, tzinfo=UTC), datetime(2026, 10, 25, 4, tzinfo=UTC), 10
    )
    # 23 local hours that night have a 02:00... once: the repeated hour does not fire twice.
    assert [t.strftime("%H") for t in times] == ["23", "00", "02", "03", "04"]
    assert all(b > a for a, b in zip(times, times[1:], strict=False))


async def test_backfill_counts_and_never_repeats_a_scheduled_time(api, sessions):
    wid = unique_id("backfill")
    await push(
        api,
        body(
            wid, [{"cron": "0 * * * *"}], run_strategy={"kind": "parallel", "max_concurrency": 10}
        ),
    )
    start = datetime(2026, 1, 1, tzinfo=UTC)
    (_, slow), (backfilled, _) = lag("time"), lag("backfill")
    response = await api.post(
        f"/api/v1/workflows/{wid}/backfill",
        json={"start": start.isoformat(), "end": (start + timedelta(hours=5)).isoformat()},
    )
    assert response.status_code == 200, response.text
    assert response.json()["scheduled_times"] == 5 and response.json()["created"] == 5
    assert sorted(r["params"]["run_ts"] for r in response.json()["runs"]) == [
        (start + timedelta(hours=h)).isoformat() for h in range(1, 6)
    ]
    overlap = await api.post(
        f"/api/v1/workflows/{wid}/backfill",
        json={
            "start": (start + timedelta(hours=3)).isoformat(),
            "end": (start + timedelta(hours=7)).isoformat(),
        },
    )
    assert overlap.json() | {"runs": []} == {"scheduled_times": 4, "created": 2, "runs": []}
    assert len(await time_runs(sessions, wid)) == 7
    # Backfilled runs have a lag kind of their own, from the request: the scheduled times,
    # months back, add nothing to the live fires' lag.
    assert lag("backfill")[0] == backfilled + 7
    assert lag("backfill")[1] == 0
    assert lag("time")[1] == slow
    [listed] = await triggers(api, wid)
    last = datetime.fromisoformat(listed["last_fire"]["scheduled_at"])
    assert last == start + timedelta(hours=7)
    too_big = await api.post(
        f"/api/v1/workflows/{wid}/backfill",
        json={"start": start.isoformat(), "end": (start + timedelta(days=60)).isoformat()},
    )
    assert too_big.status_code == 422
    naive = await api.post(
        f"/api/v1/workflows/{wid}/backfill",
        json={"start": "2026-01-01T00:00:00", "end": "2026-01-02T00:00:00"},
    )
    assert naive.status_code == 422


async def test_a_fire_delivered_twice_makes_one_run(api, sessions, settings, temporal_client):
    """The same fire admitted at once by two processes (its local activity ran twice): one
    run, carried by the execution."""
    from maestro.db.engine import create_engine, session_factory
    from maestro.runs import RunsService
    from maestro.schedules import Schedules

    wid = unique_id("twice")
    await push(api, body(wid, [{"cron": "0 0 1 1 *"}]))
    [trigger] = await triggers(api, wid)
    engine = create_engine(settings.database_url)
    try:
        sessions2 = session_factory(engine)
        schedules = Schedules(
            sessions2,
            RunsService(sessions2, temporal_client, settings.temporal),
            temporal_client,
            settings.temporal,
        )
        request = AdmitFireInput(
            workflow_id=wid,
            trigger_id=trigger["trigger_id"],
            scheduled_at=datetime(2027, 1, 1, tzinfo=UTC),
            temporal_workflow_id=f"timed-{wid}",
            temporal_run_id="rid",
        )
        own = api._transport.app.state.schedules
        first, second = await asyncio.gather(schedules.admit_fire(request), own.admit_fire(request))
    finally:
        await engine.dispose()
    assert first.run_input is not None and second.run_input is not None
    assert first.run_input.run_id == second.run_input.run_id
    assert len(await time_runs(sessions, wid)) == 1


async def test_a_fire_is_carried_by_its_execution_only_when_admitted_at_once(
    api, sessions, settings, temporal_client
):
    """admit_fire, as TimedRunWorkflow's local activity calls it: the first execution of a
    fire carries its run (also when the activity is retried); the same fire in another
    execution carries nothing; a fire the strategy queues is launched later as usual."""
    wid = unique_id("carried")
    await push(api, body(wid, [{"cron": "0 0 1 1 *"}]))  # sequential (the default)
    [trigger] = await triggers(api, wid)
    schedules = api._transport.app.state.schedules

    def fire(minute: int, execution: str) -> AdmitFireInput:
        return AdmitFireInput(
            workflow_id=wid,
            trigger_id=trigger["trigger_id"],
            scheduled_at=datetime(2027, 1, 1, 0, minute, tzinfo=UTC),
            temporal_workflow_id=f"timed-{wid}-{execution}",
            temporal_run_id=f"rid-{execution}",
        )

    first = await schedules.admit_fire(fire(0, "a"))
    assert first.run_input is not None
    assert first.run_input.params["run_ts"] == "2027-01-01T00:00:00+00:00"
    # The local activity ran again (its result was lost), in another worker process and after
    # the workflow was paused: the run it made is still this execution's to carry.
    assert (await api.post(f"/api/v1/workflows/{wid}/pause")).json()["paused"] is True
    other = Schedules(
        sessions,
        RunsService(sessions, temporal_client, settings.temporal),
        temporal_client,
        settings.temporal,
    )
    retried = await other.admit_fire(fire(0, "a"))
    assert retried.run_input is not None and retried.run_input.run_id == first.run_input.run_id
    assert (await api.post(f"/api/v1/workflows/{wid}/resume")).json()["paused"] is False
    assert (await schedules.admit_fire(fire(0, "b"))).run_input is None  # delivered twice
    assert (await schedules.admit_fire(fire(1, "c"))).run_input is None  # queued behind a
    carried, queued = await time_runs(sessions, wid)
    assert (carried.temporal_workflow_id, carried.temporal_run_id) == (f"timed-{wid}-a", "rid-a")
    assert carried.status == "queued" and carried.admitted_at is not None
    assert queued.admitted_at is None and queued.temporal_run_id is None
    assert queued.temporal_workflow_id == f"{wid}-run-{queued.run_number}"
    # Execution `a` does not exist here, so stopping its run ends it at once and admits the
    # queued one, which is launched as a plain run and succeeds.
    stopped = await api.post(f"/api/v1/runs/{carried.run_id}/stop")
    assert stopped.status_code == 202 and stopped.json()["status"] == "stopped", stopped.text
    done = await wait_for_run(api, queued.run_id)
    assert done["status"] == "succeeded"
    assert done["outputs"]["go"]["ts"] == "2027-01-01T00:01:00+00:00"


async def test_reconciliation_heals_missing_and_stray_schedules(api, temporal_client):
    wid = unique_id("heal")
    await push(api, body(wid, [{"cron": "15 4 * * *"}]))
    [trigger] = await triggers(api, wid)
    schedule_id = trigger["schedule"]["schedule_id"]
    # A crash between the database and Temporal: the schedule is gone, and a stray is left.
    await temporal_client.get_schedule_handle(schedule_id).delete()
    stray = f"maestro:{wid}:time-0000"  # a trigger this workflow no longer has
    foreign = f"maestro:{unique_id('other-install')}:time-0000"  # not this database's
    await temporal_client.create_schedule(
        stray,
        Schedule(
            action=ScheduleActionStartWorkflow("FireScheduleWorkflow", id="x", task_queue="none"),
            spec=ScheduleSpec(cron_expressions=["0 0 1 1 *"]),
        ),
    )
    await temporal_client.create_schedule(
        foreign,
        Schedule(
            action=ScheduleActionStartWorkflow("FireScheduleWorkflow", id="y", task_queue="none"),
            spec=ScheduleSpec(cron_expressions=["0 0 1 1 *"]),
        ),
    )
    schedules = api._transport.app.state.schedules
    await schedules.reconcile_all()
    # A schedule made by an earlier Maestro (it started FireScheduleWorkflow) is brought up to
    # date by the next reconciliation.
    handle = temporal_client.get_schedule_handle(schedule_id)

    def older(update: ScheduleUpdateInput) -> ScheduleUpdate:
        old = update.description.schedule
        old.action.workflow = "FireScheduleWorkflow"
        old.state.note = "managed by Maestro [000000000000]"
        return ScheduleUpdate(schedule=old)

    await handle.update(older)
    assert (await handle.describe()).schedule.action.workflow == "FireScheduleWorkflow"
    await schedules.reconcile_all()
    await schedules.reconcile_all()  # idempotent
    assert (await handle.describe()).schedule.action.workflow == "TimedRunWorkflow"
    assert await schedule_exists(temporal_client, schedule_id)
    assert not await schedule_exists(temporal_client, stray)
    assert await schedule_exists(temporal_client, foreign), "another installation's is kept"
    await temporal_client.get_schedule_handle(foreign).delete()


async def test_reconciling_from_another_task_queue_keeps_the_schedules_queue(
    api, sessions, settings, temporal_client
):
    from sqlalchemy import update

    from maestro.db.engine import create_engine, session_factory
    from maestro.db.tables import Workflow
    from maestro.runs import RunsService
    from maestro.schedules import Schedules

    wid = unique_id("queue")
    await push(api, body(wid, [{"cron": "45 5 * * *"}]))
    [trigger] = await triggers(api, wid)
    handle = temporal_client.get_schedule_handle(trigger["schedule"]["schedule_id"])
    assert (await handle.describe()).schedule.action.task_queue == settings.temporal.task_queue
    # The database says paused, the schedule does not yet: a process configured for another
    # queue reconciles it.
    async with sessions.begin() as session:
        await session.execute(update(Workflow).where(Workflow.id == wid).values(paused=True))
    other = settings.temporal.model_copy(update={"task_queue": "some-other-queue"})
    engine = create_engine(settings.database_url)
    try:
        sessions2 = session_factory(engine)
        elsewhere = Schedules(
            sessions2, RunsService(sessions2, temporal_client, other), temporal_client, other
        )
        await elsewhere.reconcile_all()
    finally:
        await engine.dispose()
    description = await handle.describe()
    assert description.schedule.state.paused is True
    assert description.schedule.action.task_queue == settings.temporal.task_queue


async def test_deleting_a_workflow_removes_its_schedules_and_rows_and_its_id_carries_on(
    api, sessions, temporal_client
):
    wid = unique_id("delete")
    definition = body(wid, [{"cron": "15 4 * * *"}, {"signal": {"all_of": [{"name": wid}]}}])
    definition["steps"] = [{"id": "nap", "type": "sleep", "params": {"seconds": 60}}]
    await push(api, definition)
    listed = {t["kind"]: t for t in await triggers(api, wid)}
    schedule_id = listed["time"]["schedule"]["schedule_id"]
    run = (await api.post(f"/api/v1/workflows/{wid}/runs", json={})).json()
    await wait_for_step(api, run["run_id"], "nap", "running")

    # A live run: refused, and nothing is removed.
    refused = await api.delete(f"/api/v1/workflows/{wid}")
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"] == "conflict"
    assert "stop them first" in refused.json()["message"]
    assert await schedule_exists(temporal_client, schedule_id)
    assert (await api.get(f"/api/v1/workflows/{wid}")).status_code == 200

    assert (await api.post(f"/api/v1/workflows/{wid}/stop")).status_code == 202
    assert (await wait_for_run(api, run["run_id"]))["status"] == "stopped"
    deleted = await api.delete(f"/api/v1/workflows/{wid}")
    assert deleted.status_code == 204, deleted.text
    assert not await schedule_exists(temporal_client, schedule_id)
    assert (await api.get(f"/api/v1/workflows/{wid}")).status_code == 404
    assert (await api.get(f"/api/v1/runs/{run['run_id']}")).status_code == 404
    assert (await api.delete(f"/api/v1/workflows/{wid}")).status_code == 404
    async with sessions() as session:
        for table in ("runs", "workflow_versions", "signal_triggers", "step_runs"):
            column = "workflow_id" if table != "step_runs" else "run_id"
            value = wid if table != "step_runs" else run["run_id"]
            count = await session.scalar(
                text(f"SELECT count(*) FROM {table} WHERE {column} = :v"), {"v": value}
            )
            assert count == 0, table
    # The signal trigger is gone too: its signal starts nothing now.
    published = await api.post("/api/v1/signals", json={"name": wid})
    assert published.status_code == 201 and published.json()["runs"] == []

    # The same id again: versions and run numbers carry on, so the Temporal id is new and runs.
    await push(api, body(wid, []))
    again = (await api.get(f"/api/v1/workflows/{wid}")).json()
    assert again["active_version"] == 2
    second = (await api.post(f"/api/v1/workflows/{wid}/runs", json={})).json()
    assert second["run_number"] == 2
    assert second["temporal_workflow_id"] != run["temporal_workflow_id"]
    assert (await wait_for_run(api, second["run_id"]))["status"] == "succeeded"
