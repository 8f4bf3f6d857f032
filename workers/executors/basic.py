"""The `noop` and `sleep` steps."""

from __future__ import annotations

import asyncio
from typing import Any

from maestro.context import StepContext
from maestro.runtime import StepResult
from maestro.steps import NoopParams, SleepParams


async def run_noop(ctx: StepContext, params: dict[str, Any]) -> StepResult:
    return StepResult(outputs=NoopParams.model_validate(params).outputs)


async def run_sleep(ctx: StepContext, params: dict[str, Any]) -> StepResult:
    seconds = SleepParams.model_validate(params).seconds
    await asyncio.sleep(seconds)  # the activity's heartbeat loop keeps it alive and cancellable
    return StepResult(outputs={"slept_seconds": seconds})
