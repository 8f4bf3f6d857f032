"""The `python` step: calls `module:function` with a StepContext."""

from __future__ import annotations

import asyncio
import importlib
import inspect
from typing import Any

from temporalio.exceptions import ApplicationError

from maestro.context import StepContext
from maestro.runtime import StepResult
from maestro.steps import PythonParams


def load_entrypoint(entrypoint: str) -> Any:
    """Import `module:function`, or fail the step for good with a clear message."""
    module_name, _, attr = entrypoint.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ApplicationError(
            f"cannot import module {module_name!r}: {exc}",
            type="EntrypointNotFound",
            non_retryable=True,
        ) from None
    function = getattr(module, attr, None)
    if not callable(function):
        raise ApplicationError(
            f"{entrypoint!r}: module has no callable {attr!r}",
            type="EntrypointNotFound",
            non_retryable=True,
        )
    return function


async def run_python(ctx: StepContext, spec: PythonParams) -> StepResult:
    function = load_entrypoint(spec.entrypoint)
    ctx.args = spec.args
    if inspect.iscoroutinefunction(function):
        result = await function(ctx)
    else:
        # Sync user code (often CPU-bound) runs off the event loop.
        result = await asyncio.to_thread(function, ctx)
    if result is None:
        result = {}
    if not isinstance(result, dict):
        raise ApplicationError(
            f"{spec.entrypoint} returned {type(result).__name__}; a step returns a dict of outputs",
            type="InvalidOutputs",
            non_retryable=True,
        )
    return StepResult(outputs=result)
