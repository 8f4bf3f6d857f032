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

# Temporal sets this on every workflow a schedule starts: the time it was scheduled for.
SCHEDULED_START = SearchAttributeKey.for_datetime("TemporalScheduledStartTime")


@workflow.defn(name=FIRE_SCHEDULE_WORKFLOW)
class FireScheduleWorkflow:
    @workflow.run
    async def run(self, fire: FireInput) -> None:
        scheduled = workflow.info().typed_search_attributes.get(SCHEDULED_START)
        await workflow.execute_activity(
            FIRE_TIME_TRIGGER_ACTIVITY,
            FireRequest(
                workflow_id=fire.workflow_id,
                trigger_id=fire.trigger_id,
                scheduled_at=scheduled or workflow.info().start_time,
            ),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=10)),
        )
