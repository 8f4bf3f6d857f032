"""The `noop` and `sleep` steps."""

from __future__ import annotations

import asyncio

from maestro.context import StepContext
from maestro.runtime import StepResult
from maestro.steps import NoopParams, SleepParams


async def run_noop(ctx: StepContext, spec: NoopParams, services: object) -> StepResult:
    return StepResult(outputs=spec.outputs)


async def run_sleep(ctx: StepContext, spec: SleepParams, services: object) -> StepResult:
    seconds = spec.seconds
    await asyncio.sleep(seconds)  # the activity's heartbeat loop keeps it alive and cancellable
    return StepResult(outputs={"slept_seconds": seconds})
