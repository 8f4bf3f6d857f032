"""FireScheduleWorkflow: what a time trigger's Temporal Schedule starts. It hands the scheduled
time to an activity that creates the run through Maestro's one door."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey

with workflow.unsafe.imports_passed_through():
    from maestro.runtime import (
        FIRE_SCHEDULE_WORKFLOW,
        FIRE_TIME_TRIGGER_ACTIVITY,
        FireInput,
        FireRequest,
    )

# Since this patch the fire runs as a local activity: one workflow task per fire, no activity
# task. Fires started before it replay their recorded (regular) activity.
LOCAL_FIRE_PATCH = "local-fire"

# Temporal sets this on every workflow a schedule starts: the time it was scheduled for.
SCHEDULED_START = SearchAttributeKey.for_datetime("TemporalScheduledStartTime")


@workflow.defn(name=FIRE_SCHEDULE_WORKFLOW)
class FireScheduleWorkflow:
    @workflow.run
    async def run(self, fire: FireInput) -> None:
        scheduled = workflow.info().typed_search_attributes.get(SCHEDULED_START)
        request = FireRequest(
            workflow_id=fire.workflow_id,
            trigger_id=fire.trigger_id,
            scheduled_at=scheduled or workflow.info().start_time,
        )
        execute = (
            workflow.execute_local_activity
            if workflow.patched(LOCAL_FIRE_PATCH)
            else workflow.execute_activity
        )
        await execute(
            FIRE_TIME_TRIGGER_ACTIVITY,
            request,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=10)),
        )
