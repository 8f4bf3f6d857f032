"""Time triggers on Temporal Schedules: one schedule per time trigger, reconciled from the
database (the active version's triggers, the workflow's active and paused flags).

A branch's schedules (maestro.branches) are paused unless it was pushed `with_schedules`.

A schedule starts a TimedRunWorkflow: its first (local) activity, `admit_fire`, creates the run
through the same door as every other start (run strategy, exactly-once by a request id made of
trigger and scheduled time); if the strategy admits the run at once, that same execution carries
it, otherwise it ends and the queued run is launched later like any other. So a fire delivered
twice, a backfill over a fired range, or two processes reconciling at once never make a second
run. Reconciliation is idempotent and runs after every change and at start-up, so a
crash between the database and Temporal heals itself.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from zoneinfo import ZoneInfo

from croniter import croniter
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.service import RPCError, RPCStatusCode

from maestro import metrics, outbox
from maestro.db import runs as runs_db
from maestro.db import workflows as workflows_db
from maestro.db.tables import Run, Workflow
from maestro.definitions import CRON_MACROS, IntervalTrigger, TimeTrigger, WorkflowDefinition
from maestro.errors import (
    InvalidInput,
    NotFound,
    ParamsInvalid,
    Problem,
    Unavailable,
    WorkflowInactive,
)
from maestro.freshness import ExpectationRef, expectations
from maestro.runs import RunsService
from maestro.runtime import (
    SCHEDULE_PREFIX,
    TIMED_RUN_WORKFLOW,
    AdmitFireInput,
    Cause,
    FireAdmission,
    FireInput,
    RunStatus,
    scheduled_run_id,
    trigger_schedule_id,
)
from maestro.settings import TemporalSettings

logger = logging.getLogger(__name__)

MAX_BACKFILL = 1_000

# Temporal starts every fire it could not start on time (after its own outage, say) up to this
# long past the trigger's catchup window, so that Maestro, not Temporal, decides that a fire is
# too late and reports it as `schedule.missed`. Older fires are dropped by Temporal unreported.
REPORT_LATE_FIRES_FOR = timedelta(days=1)


@dataclass(frozen=True)
class TimeTriggerRef:
    """A time trigger of a definition, with its stable id and schedule id."""

    workflow_id: str
    position: int
    trigger: TimeTrigger | IntervalTrigger

    @property
    def trigger_id(self) -> str:
        spec = json.dumps(self.trigger.model_dump(mode="json"), sort_keys=True)
        return "time-" + hashlib.sha256(spec.encode()).hexdigest()[:16]

    @property
    def schedule_id(self) -> str:
        return trigger_schedule_id(self.workflow_id, self.trigger_id)

    @property
    def timezone(self) -> ZoneInfo:
        tz = self.trigger.timezone if isinstance(self.trigger, TimeTrigger) else "UTC"
        return ZoneInfo(tz)

    @property
    def catchup_window(self) -> timedelta:
        """How late a fire may start and still run (at least 10 s, Temporal's minimum)."""
        if isinstance(self.trigger, TimeTrigger):
            return max(self.trigger.catchup_window, timedelta(seconds=10))
        return timedelta(hours=1)

    @property
    def jitter(self) -> timedelta:
        jitter = self.trigger.jitter if isinstance(self.trigger, TimeTrigger) else None
        return jitter or timedelta(0)

    def fire_times(self, start: datetime, end: datetime, limit: int) -> list[datetime]:
        """Scheduled times in (start, end] (UTC), at most `limit`, DST-correct: the cron
        matches wall-clock times in the trigger's zone; a wall-clock time that does not exist
        (spring forward) does not fire, one that happens twice (fall back) fires once."""
        times: list[datetime] = []
        if isinstance(self.trigger, TimeTrigger):
            zone = self.timezone
            cron = CRON_MACROS.get(self.trigger.cron, self.trigger.cron)
            # Iterate naive wall-clock times, then place each in the zone.
            it = croniter(cron, start.astimezone(zone).replace(tzinfo=None))
            while len(times) < limit:
                wall = it.get_next(datetime)
                at = wall.replace(tzinfo=zone)
                if at.astimezone(UTC).astimezone(zone).replace(tzinfo=None) != wall:
                    continue  # in the spring-forward gap: this wall-clock time never happens
                at = at.astimezone(UTC)
                if at > end:
                    break
                if at > start:
                    times.append(at)
        else:
            every = self.trigger.every.total_seconds()
            offset = self.trigger.offset.total_seconds()
            n = int((start.timestamp() - offset) // every) + 1
            while len(times) < limit:
                at = datetime.fromtimestamp(n * every + offset, UTC)
                if at > end:
                    break
                if at > start:
                    times.append(at)
                n += 1
        return times


def time_triggers(workflow_id: str, definition: WorkflowDefinition) -> list[TimeTriggerRef]:
    return [
        TimeTriggerRef(workflow_id, i, t)
        for i, t in enumerate(definition.triggers)
        if isinstance(t, TimeTrigger | IntervalTrigger)
    ]


def _seconds(span: timedelta) -> str:
    return f"{span.total_seconds():.0f} s"


def run_params(scheduled_at: datetime, ref: TimeTriggerRef) -> dict[str, Any]:
    """`run_ts` (the scheduled time, UTC ISO 8601) and `run_date` (its date in the trigger's
    time zone), given to every time-triggered run."""
    return {
        "run_ts": scheduled_at.astimezone(UTC).isoformat(),
        "run_date": scheduled_at.astimezone(ref.timezone).date().isoformat(),
    }


class Schedules:
    """Keeps Temporal Schedules in step with the database, and turns fires into runs."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        runs: RunsService,
        client: Client,
        settings: TemporalSettings,
    ) -> None:
        self._sessions = sessions
        self._runs = runs
        self._client = client
        self._settings = settings

    # -- reconciliation ---------------------------------------------------------------------

    async def _desired(
        self, session: AsyncSession, workflow: Workflow
    ) -> tuple[list[TimeTriggerRef], bool]:
        if workflow.active_version is None:
            return [], True
        definition = await self._runs.definitions.get(session, workflow.id, workflow.active_version)
        held = workflow.paused or not workflow.is_active or workflow.schedules_paused
        return time_triggers(workflow.id, definition), held

    async def _wanted(
        self, session: AsyncSession, workflow: Workflow
    ) -> tuple[list[TimeTriggerRef | ExpectationRef], bool]:
        """The schedules the workflow should have: its time triggers' and its freshness
        expectations' (maestro.freshness), paused with it."""
        desired, paused = await self._desired(session, workflow)
        if workflow.active_version is None:
            return [*desired], paused
        definition = await self._runs.definitions.get(session, workflow.id, workflow.active_version)
        return [*desired, *expectations(workflow.id, definition)], paused

    def _schedule(self, ref: TimeTriggerRef | ExpectationRef, paused: bool) -> Schedule:
        if isinstance(ref, ExpectationRef):
            state = ScheduleState(paused=paused, note=self._note(ref, paused))
            return ref.schedule(self._settings.task_queue, state)
        trigger = ref.trigger
        if isinstance(trigger, TimeTrigger):
            spec = ScheduleSpec(
                cron_expressions=[trigger.cron],
                time_zone_name=trigger.timezone,
                jitter=trigger.jitter,
            )
        else:
            spec = ScheduleSpec(
                intervals=[ScheduleIntervalSpec(every=trigger.every, offset=trigger.offset)]
            )
        return Schedule(
            action=ScheduleActionStartWorkflow(
                TIMED_RUN_WORKFLOW,
                FireInput(workflow_id=ref.workflow_id, trigger_id=ref.trigger_id),
                id=scheduled_run_id(ref.schedule_id),
                task_queue=self._settings.task_queue,
            ),
            spec=spec,
            # Our run strategy decides about overlaps; every fire must reach it.
            policy=SchedulePolicy(
                overlap=ScheduleOverlapPolicy.ALLOW_ALL,
                catchup_window=ref.catchup_window + ref.jitter + REPORT_LATE_FIRES_FOR,
            ),
            state=ScheduleState(paused=paused, note=self._note(ref, paused)),
        )

    def _note(self, ref: TimeTriggerRef | ExpectationRef, paused: bool) -> str:
        """Names the desired state, so an unchanged schedule is left alone (the action's
        workflow type is part of it: a schedule starting another type gets updated)."""
        state = f"{ref.trigger_id}/{paused}/{TIMED_RUN_WORKFLOW}/late-fires-reported"
        digest = hashlib.sha256(state.encode()).hexdigest()[:12]
        return f"{'paused' if paused else 'managed'} by Maestro [{digest}]"

    async def reconcile(self, workflow_id: str) -> int:
        """Create, update, pause or delete this workflow's schedules to match the database."""
        async with self._sessions() as session:
            workflow = await workflows_db.get_workflow(session, workflow_id)
            desired, paused = await self._wanted(session, workflow)
            former = await self.schedule_ids(session, workflow_id)
        return await self._apply(desired, paused, former)

    async def schedule_ids(self, session: AsyncSession, workflow_id: str) -> set[str]:
        """The ids of every schedule any version of the workflow may have left behind (they
        are derivable from the definitions)."""
        ids: set[str] = set()
        for version in await workflows_db.list_versions(session, workflow_id):
            definition = await self._runs.definitions.get(session, workflow_id, version.version)
            ids |= {ref.schedule_id for ref in time_triggers(workflow_id, definition)}
            ids |= {ref.schedule_id for ref in expectations(workflow_id, definition)}
        return ids

    async def delete_schedules(self, schedule_ids: set[str]) -> None:
        """Delete these schedules (absent ones are fine); Unavailable if Temporal is down."""
        try:
            for schedule_id in sorted(schedule_ids):
                await self._delete(schedule_id)
                logger.info("schedule deleted", extra={"schedule_id": schedule_id})
        except RPCError as exc:
            raise Unavailable(f"Temporal is unavailable: {exc}") from exc

    async def reconcile_all(self) -> int:
        """Reconcile every workflow (start-up); returns how many schedules were touched."""
        async with self._sessions() as session:
            workflows = await workflows_db.all_workflows(session)
            plans = [await self._wanted(session, w) for w in workflows]
        existing = await self._existing(SCHEDULE_PREFIX)
        touched = 0
        wanted: set[str] = set()
        for desired, paused in plans:
            ids = {ref.schedule_id for ref in desired}
            wanted |= ids
            touched += await self._apply(desired, paused, existing & ids)
        # Only schedules of workflows this database knows are ours to remove: another
        # installation may share the Temporal namespace.
        known = {w.id for w in workflows}
        for schedule_id in existing - wanted:
            if schedule_id.removeprefix(SCHEDULE_PREFIX).rpartition(":")[0] in known:
                await self._delete(schedule_id)
                logger.info("schedule deleted", extra={"schedule_id": schedule_id})
                touched += 1
        return touched

    async def _existing(self, prefix: str) -> set[str]:
        """Ids of Maestro's schedules with this id prefix (Temporal's visibility listing)."""
        try:
            return {
                entry.id
                async for entry in await self._client.list_schedules()
                if entry.id.startswith(prefix)
            }
        except RPCError as exc:
            raise Unavailable(f"Temporal is unavailable: {exc}") from exc

    async def _apply(
        self, desired: list[TimeTriggerRef | ExpectationRef], paused: bool, existing: set[str]
    ) -> int:
        touched = 0
        for ref in desired:
            schedule = self._schedule(ref, paused)
            try:
                await self._client.create_schedule(ref.schedule_id, schedule)
                logger.info(
                    "schedule created", extra={"schedule_id": ref.schedule_id, "paused": paused}
                )
                touched += 1
                continue
            except ScheduleAlreadyRunningError:
                pass
            handle = self._client.get_schedule_handle(ref.schedule_id)

            def replace(
                current: ScheduleUpdateInput, new: Schedule = schedule
            ) -> ScheduleUpdate | None:
                old = current.description.schedule
                if old.state.note == new.state.note:
                    return None
                # The fires keep going to the task queue the schedule was made for.
                if isinstance(old.action, ScheduleActionStartWorkflow):
                    action = cast(ScheduleActionStartWorkflow, new.action)  # Maestro's kind
                    action.task_queue = old.action.task_queue
                return ScheduleUpdate(schedule=new)

            await handle.update(replace)
            touched += 1
        for schedule_id in set(existing) - {r.schedule_id for r in desired}:
            await self._delete(schedule_id)
            logger.info("schedule deleted", extra={"schedule_id": schedule_id})
            touched += 1
        return touched

    async def _delete(self, schedule_id: str) -> None:
        try:
            await self._client.get_schedule_handle(schedule_id).delete()
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise

    # -- fires and backfills ------------------------------------------------------------------

    async def admit_fire(self, request: AdmitFireInput) -> FireAdmission:
        """A fire that Temporal started as a TimedRunWorkflow execution: create its run (once)
        and, if the run strategy admits it at once, let that execution carry it (so a fire
        costs one workflow). A queued run is launched later like any other; a fire delivered
        twice finds the run already made and carries nothing. A retry in the same execution
        (its result was lost) carries the run it made, even if the workflow was paused since."""
        launched = False  # this call made the run and this execution runs it
        async with self._sessions.begin() as session:
            run = await runs_db.find_by_temporal_workflow_id(session, request.temporal_workflow_id)
            if run is None:
                created = await self._create_fired(session, request)
                if created is None:
                    return FireAdmission()
                run, new = created
                if new and run.admitted_at is not None and run.status == RunStatus.queued:
                    run.temporal_workflow_id = request.temporal_workflow_id
                    run.temporal_run_id = request.temporal_run_id
                    launched = True
            carried = run.temporal_workflow_id == request.temporal_workflow_id and run.status in (
                RunStatus.queued,
                RunStatus.running,
            )
            # The run's version may not be the active one any more (a retry after a change).
            await self._runs.definitions.get(session, run.workflow_id, run.version)
        if launched:  # `launch` observes the runs it starts itself, not this one
            metrics.observe_fires([run])
        # Sends the stops a last_only strategy asked for; this run is already on Temporal.
        await self._runs.launch([run])
        if not carried:
            return FireAdmission()
        return FireAdmission(
            run_input=self._runs.run_input(run), search_attributes=self._runs.search_attributes
        )

    async def _create_fired(
        self, session: AsyncSession, request: AdmitFireInput
    ) -> tuple[Run, bool] | None:
        try:
            return await self._create(
                session,
                request.workflow_id,
                request.trigger_id,
                request.scheduled_at,
                kind="time",
                started_at=request.started_at,
            )
        except NotFound:
            # The workflow was deleted after Temporal started this fire.
            logger.info(
                "fire ignored: no such workflow", extra={"workflow_id": request.workflow_id}
            )
            return None

    async def _create(
        self,
        session: AsyncSession,
        workflow_id: str,
        trigger_id: str,
        scheduled_at: datetime,
        *,
        kind: str,
        started_at: datetime | None = None,
    ) -> tuple[Run, bool] | None:
        workflow = await workflows_db.get_workflow(session, workflow_id)
        desired, paused = await self._desired(session, workflow)
        ref = next((r for r in desired if r.trigger_id == trigger_id), None)
        if ref is None or (paused and kind == "time"):
            logger.info(
                "fire ignored",
                extra={"workflow_id": workflow_id, "trigger_id": trigger_id, "paused": paused},
            )
            return None
        at = scheduled_at.astimezone(UTC)
        missed = functools.partial(self._missed, session, workflow_id, trigger_id, at, kind)
        cause = Cause(
            kind="time",
            request_id=None,
            detail={"trigger_id": trigger_id, "scheduled_at": at.isoformat(), "via": kind},
        )
        late = started_at - at if started_at is not None else timedelta(0)
        if late > ref.catchup_window + ref.jitter:
            # Temporal could not start it in time (its own outage, say): too late to run.
            await missed(
                f"Temporal started this fire {_seconds(late)} after its scheduled time, past the"
                f" trigger's catchup window ({_seconds(ref.catchup_window)})"
            )
            return None
        try:
            made = await self._runs.create_run(
                session,
                workflow_id,
                {},
                cause=cause,
                trigger_id=trigger_id,
                request_id=f"{trigger_id}:{at.isoformat()}",
                system_params=run_params(at, ref),
            )
            run, new = made
            if new and run.status == RunStatus.skipped:
                await missed(f"the run strategy skipped its run: {run.error}")
            return made
        except WorkflowInactive:
            await missed("the workflow is inactive")
            return None
        except ParamsInvalid as exc:
            await missed(f"{exc.message}: {'; '.join(p.msg for p in exc.problems)}")
            # A required param without a default cannot come from a schedule; retrying would
            # not help, so the fire is dropped (visible in the log) instead of retried forever.
            logger.warning(
                "fire dropped: the workflow's params do not fit a timed run",
                extra={
                    "workflow_id": workflow_id,
                    "trigger_id": trigger_id,
                    "error": exc.message,
                    "problems": [p.msg for p in exc.problems],
                },
            )
            return None

    @staticmethod
    async def _missed(
        session: AsyncSession,
        workflow_id: str,
        trigger_id: str,
        at: datetime,
        kind: str,
        reason: str,
    ) -> None:
        """A fire (not a backfill) that could not start its run: `schedule.missed`, in the
        transaction that decided it (a paused workflow's fires are held, not missed)."""
        if kind != "time":
            return
        await outbox.record(
            session,
            f"schedule.missed:{workflow_id}:{trigger_id}:{at.isoformat()}",
            "schedule.missed",
            {"trigger_id": trigger_id, "scheduled_at": at.isoformat(), "reason": reason[:2000]},
            workflow_id=workflow_id,
        )

    async def backfill(
        self, workflow_id: str, start: datetime, end: datetime
    ) -> tuple[list[Run], int]:
        """One run per scheduled time in (start, end] of every time trigger, through the run
        strategy; times that already have a run are not run again. Returns (new runs, total)."""
        if end <= start:
            raise InvalidInput("empty range", [Problem(("body", "end"), "end must be after start")])
        async with self._sessions() as session:
            workflow = await workflows_db.get_workflow(session, workflow_id)
            desired, _ = await self._desired(session, workflow)
        if not desired:
            raise InvalidInput(
                "no time triggers",
                [
                    Problem(
                        ("workflow",), f"workflow {workflow_id!r} has no time trigger to backfill"
                    )
                ],
            )
        plan = [(ref, at) for ref in desired for at in ref.fire_times(start, end, MAX_BACKFILL + 1)]
        if len(plan) > MAX_BACKFILL:
            raise InvalidInput(
                "backfill too large",
                [
                    Problem(
                        ("body",),
                        f"the range holds more than {MAX_BACKFILL} scheduled times; split it",
                    )
                ],
            )
        created: list[Run] = []
        async with self._sessions.begin() as session:
            for ref, at in sorted(plan, key=lambda p: p[1]):
                before = await runs_db.find_by_request_id(
                    session, workflow_id, f"{ref.trigger_id}:{at.isoformat()}"
                )
                made = await self._create(session, workflow_id, ref.trigger_id, at, kind="backfill")
                if made is not None and before is None:
                    created.append(made[0])
        await self._runs.launch(created)
        return created, len(plan)

    async def describe(self, ref: TimeTriggerRef) -> dict[str, Any]:
        """What Temporal says of a trigger's schedule (best effort)."""
        try:
            description = await self._client.get_schedule_handle(ref.schedule_id).describe()
        except RPCError:
            return {"schedule_id": ref.schedule_id, "exists": False}
        info = description.info
        return {
            "schedule_id": ref.schedule_id,
            "exists": True,
            "paused": description.schedule.state.paused,
            "missed_catchup_window": info.num_actions_missed_catchup_window,
            "fires": info.num_actions,
        }
