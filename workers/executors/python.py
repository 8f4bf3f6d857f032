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
from workers.executors.services import Services

# Entrypoints imported before: later steps call them without a thread hop for the lookup.
_loaded: dict[str, Any] = {}


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


async def call_entrypoint(entrypoint: str, ctx: StepContext) -> dict:
    """Import and call a step function: coroutines on the loop, sync (often CPU-bound) code in
    a thread. It must return a dict (or None). The import runs in a thread too: a first import
    of a heavy library takes seconds, and the loop must keep heartbeating meanwhile."""
    function = _loaded.get(entrypoint)
    if function is None:
        function = _loaded[entrypoint] = await asyncio.to_thread(load_entrypoint, entrypoint)
    if inspect.iscoroutinefunction(function):
        result = await function(ctx)
    else:
        result = await asyncio.to_thread(function, ctx)
    if result is None:
        return {}
    if not isinstance(result, dict):
        raise ApplicationError(
            f"{entrypoint} returned {type(result).__name__}; a step returns a dict of outputs",
            type="InvalidOutputs",
            non_retryable=True,
        )
    return result


async def run_python(ctx: StepContext, spec: PythonParams, services: Services) -> StepResult:
    ctx.args = spec.args
    result = await call_entrypoint(spec.entrypoint, ctx)
    if "artifacts" in result:
        if not isinstance(result["artifacts"], dict):
            raise ApplicationError(
                "'artifacts' must map names to paths", type="InvalidOutputs", non_retryable=True
            )
        result["artifacts"] = await services.store_artifacts(ctx, result["artifacts"])
    return StepResult(outputs=result)
