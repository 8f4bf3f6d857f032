"""What a time trigger's Temporal Schedule starts: TimedRunWorkflow, which admits the fire's run
through Maestro's one door and carries it itself."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey

with workflow.unsafe.imports_passed_through():
    from maestro.runtime import (
        ADMIT_FIRE_ACTIVITY,
        SA_TRIGGER_KIND,
        SA_VERSION,
        SA_WORKFLOW_ID,
        TIMED_RUN_WORKFLOW,
        AdmitFireInput,
        FireAdmission,
        FireInput,
        RunState,
    )

from workers.workflow import RunWorkflow

# Admission must outlive a database restart; it is idempotent, so it retries without limit.
_ADMIT_RETRY = RetryPolicy(maximum_interval=timedelta(seconds=10))

# Temporal sets this on every workflow a schedule starts: the time it was scheduled for.
SCHEDULED_START = SearchAttributeKey.for_datetime("TemporalScheduledStartTime")


@workflow.defn(name=TIMED_RUN_WORKFLOW)
class TimedRunWorkflow(RunWorkflow):
    """One fire of a time trigger. A local activity creates the run (once per trigger and
    scheduled time, under the run strategy); if the run is admitted at once, this execution
    carries it, so a fire costs one workflow. Otherwise (queued, skipped, a fire delivered
    twice, a paused or deleted workflow) it ends with nothing to do."""

    @workflow.run
    async def run(self, fire: FireInput) -> RunState | None:  # type: ignore[override]
        info = workflow.info()
        request = AdmitFireInput(
            workflow_id=fire.workflow_id,
            trigger_id=fire.trigger_id,
            scheduled_at=info.typed_search_attributes.get(SCHEDULED_START) or info.start_time,
            temporal_workflow_id=info.workflow_id,
            temporal_run_id=info.run_id,
            started_at=info.start_time,
        )
        admitting = asyncio.create_task(
            workflow.execute_local_activity(
                ADMIT_FIRE_ACTIVITY,
                request,
                result_type=FireAdmission,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=_ADMIT_RETRY,
            )
        )
        cancelled = False
        try:
            admission = await asyncio.shield(admitting)
        except asyncio.CancelledError:
            # Stopped while being admitted: the run may exist and be this execution's, so
            # finish admitting, then end it `stopped` (recorded like any other end).
            cancelled = True
            admission = await admitting
        if admission.run_input is None:
            if cancelled:
                raise asyncio.CancelledError()
            return None
        run_input = admission.run_input
        if admission.search_attributes:
            workflow.upsert_search_attributes(
                [
                    SA_WORKFLOW_ID.value_set(run_input.workflow_id),
                    SA_VERSION.value_set(run_input.version),
                    SA_TRIGGER_KIND.value_set(run_input.cause.kind),
                ]
            )
        return await self._run(run_input, cancelled_early=cancelled)
