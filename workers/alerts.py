"""The promise timers on Temporal: SlaWorkflow (one per run with an SLA: a durable timer to its
deadline, then one check) and FreshnessWorkflow (one per daily fire of an expectation's
schedule), and their activities, which ask PostgreSQL (maestro.alerts)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity, workflow
from temporalio.common import RetryPolicy, SearchAttributeKey

with workflow.unsafe.imports_passed_through():
    from maestro import alerts
    from maestro.alerts import FreshnessCheck
    from maestro.freshness import CHECK_FRESHNESS_ACTIVITY, FRESHNESS_WORKFLOW, FreshnessInput
    from maestro.signals import SignalBus
    from maestro.sla import CHECK_SLA_ACTIVITY, SLA_WORKFLOW, SlaWatch

# The checks are idempotent and must outlive a database outage: retried without limit.
_CHECK_RETRY = RetryPolicy(maximum_interval=timedelta(seconds=30))
_SCHEDULED_START = SearchAttributeKey.for_datetime("TemporalScheduledStartTime")


@workflow.defn(name=SLA_WORKFLOW)
class SlaWorkflow:
    """Sleeps (a durable timer) until the run's deadline, then checks it once."""

    @workflow.run
    async def run(self, watch: SlaWatch) -> bool:
        remaining = watch.deadline - workflow.now()
        if remaining > timedelta(0):
            await workflow.sleep(remaining)
        return await workflow.execute_activity(
            CHECK_SLA_ACTIVITY,
            watch,
            result_type=bool,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=_CHECK_RETRY,
        )


@workflow.defn(name=FRESHNESS_WORKFLOW)
class FreshnessWorkflow:
    """One daily fire of an expectation's schedule: did the data arrive that day?"""

    @workflow.run
    async def run(self, fire: FreshnessInput) -> bool | None:
        info = workflow.info()
        check = FreshnessCheck(
            workflow_id=fire.workflow_id,
            expect_id=fire.expect_id,
            at=info.typed_search_attributes.get(_SCHEDULED_START) or info.start_time,
        )
        return await workflow.execute_activity(
            CHECK_FRESHNESS_ACTIVITY,
            check,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=_CHECK_RETRY,
        )


class AlertActivities:
    """The checks behind the timers, built with the database and the signal bus."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], bus: SignalBus) -> None:
        self._sessions = sessions
        self._bus = bus

    @activity.defn(name=CHECK_SLA_ACTIVITY)
    async def check_sla(self, watch: SlaWatch) -> bool:
        """Record `sla.missed` if the run is still live at its deadline (once)."""
        return await alerts.check_sla(self._sessions, self._bus, watch)

    @activity.defn(name=CHECK_FRESHNESS_ACTIVITY)
    async def check_freshness(self, check: FreshnessCheck) -> bool | None:
        """Record `freshness.missed` if the expected signal did not arrive that day (once)."""
        return await alerts.check_freshness(self._sessions, self._bus, check)
