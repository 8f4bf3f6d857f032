"""The `python` step: calls `module:function` with a StepContext."""

from __future__ import annotations

import asyncio
import importlib
import inspect
from contextvars import ContextVar
from typing import Any

from temporalio.exceptions import ApplicationError

from maestro.context import StepContext
from maestro.runtime import StepResult
from maestro.steps import PythonParams
from workers.code_packages import PackagedCode
from workers.executors.services import Services

# Entrypoints imported before, by code package (or "" for the worker's installed modules):
# later steps call them without a thread hop for the lookup.
_loaded: dict[tuple[str, str], Any] = {}
# The code package of the attempt's workflow version, if it has one (set per attempt).
CODE_PACKAGE: ContextVar[PackagedCode | None] = ContextVar("code_package", default=None)


def load_entrypoint(entrypoint: str, code: PackagedCode | None = None) -> Any:
    """Import `module:function` (from the code package when it holds the module), or fail the
    step for good with a clear message."""
    module_name, _, attr = entrypoint.partition(":")
    try:
        if code is not None and code.owns(module_name):
            module = code.module(module_name)
        else:
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
    code = CODE_PACKAGE.get()
    key = (code.sha256 if code is not None else "", entrypoint)
    function = _loaded.get(key)
    if function is None:
        function = _loaded[key] = await asyncio.to_thread(load_entrypoint, entrypoint, code)
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
