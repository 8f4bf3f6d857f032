"""Step executors: one async function per step type, `(StepContext, typed params, Services) ->
StepResult`; the params model of each type is in `maestro.steps.STEP_TYPES`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from maestro.context import StepContext
from maestro.runtime import StepResult
from workers.executors.basic import run_noop, run_sleep
from workers.executors.http import run_http
from workers.executors.ml import run_deploy, run_evaluate, run_train
from workers.executors.python import run_python
from workers.executors.services import Services
from workers.executors.shell import run_shell

Executor = Callable[[StepContext, Any, Services], Awaitable[StepResult]]

EXECUTORS: dict[str, Executor] = {
    "noop": run_noop,
    "sleep": run_sleep,
    "python": run_python,
    "shell": run_shell,
    "train": run_train,
    "evaluate": run_evaluate,
    "deploy": run_deploy,
    "http": run_http,
}

__all__ = ["EXECUTORS", "Executor", "Services"]
