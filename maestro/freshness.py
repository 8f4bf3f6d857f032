"""Data-freshness expectations on Temporal Schedules: one schedule per `expect` entry of a
workflow's active version, firing every day at its `by` time in its zone and starting a
FreshnessWorkflow, which checks (maestro.alerts.check_freshness) whether the expected signal
arrived since that day's midnight. The schedules are reconciled with the time triggers' (same
id prefix, paused with the workflow) by maestro.schedules."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import timedelta

from pydantic import BaseModel
from temporalio.client import (
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
)

from maestro.definitions import Expectation, WorkflowDefinition

FRESHNESS_WORKFLOW = "FreshnessWorkflow"
CHECK_FRESHNESS_ACTIVITY = "check_freshness"
SCHEDULE_PREFIX = "maestro:"


class FreshnessInput(BaseModel):
    """What an expectation's schedule starts: which expectation to check."""

    workflow_id: str
    expect_id: str


@dataclass(frozen=True)
class ExpectationRef:
    """An `expect` entry of a definition, with its stable id and schedule id."""

    workflow_id: str
    expectation: Expectation

    @property
    def trigger_id(self) -> str:
        spec = json.dumps(self.expectation.model_dump(mode="json"), sort_keys=True)
        return "expect-" + hashlib.sha256(spec.encode()).hexdigest()[:16]

    @property
    def schedule_id(self) -> str:
        return f"{SCHEDULE_PREFIX}{self.workflow_id}:{self.trigger_id}"

    def schedule(self, task_queue: str, state: ScheduleState) -> Schedule:
        hour, minute = self.expectation.by.split(":")
        return Schedule(
            action=ScheduleActionStartWorkflow(
                FRESHNESS_WORKFLOW,
                FreshnessInput(workflow_id=self.workflow_id, expect_id=self.trigger_id),
                id=f"{self.schedule_id}:check",
                task_queue=task_queue,
            ),
            spec=ScheduleSpec(
                cron_expressions=[f"{int(minute)} {int(hour)} * * *"],
                time_zone_name=self.expectation.timezone,
            ),
            policy=SchedulePolicy(
                overlap=ScheduleOverlapPolicy.ALLOW_ALL, catchup_window=timedelta(hours=1)
            ),
            state=state,
        )


def expectations(workflow_id: str, definition: WorkflowDefinition) -> list[ExpectationRef]:
    return [ExpectationRef(workflow_id, e) for e in definition.expect]


def expectation_by_id(definition: WorkflowDefinition, expect_id: str) -> Expectation | None:
    refs = expectations(definition.id, definition)
    return next((r.expectation for r in refs if r.trigger_id == expect_id), None)
