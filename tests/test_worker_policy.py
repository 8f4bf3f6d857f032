"""A worker refuses step types and entrypoint modules it is not configured to run, and params
that let run data choose the code (definitions stored before registration checked them)."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from maestro.definitions import Step
from maestro.runtime import StepInput
from maestro.settings import WorkerSettings
from workers.activities import StepActivities, _module_allowed


def step_input(step_type: str, params: dict, resolved: dict | None = None) -> StepInput:
    return StepInput(
        run_id="r",
        workflow_id="w",
        run_number=1,
        step=Step(id="s", type=step_type, params=params),
        params=params if resolved is None else resolved,
        run_params={},
    )


@pytest.mark.parametrize(
    ("policy", "step_type", "params", "error_type", "fragment"),
    [
        (
            WorkerSettings(step_types=["python"]),
            "shell",
            {"command": "true"},
            "StepTypeNotAllowed",
            "does not run 'shell' steps",
        ),
        (
            WorkerSettings(allowed_modules=["examples"]),
            "python",
            {"entrypoint": "os:system"},
            "EntrypointNotAllowed",
            "outside this worker's allowed",
        ),
        (
            WorkerSettings(),
            "python",
            {"entrypoint": "tests.steps:echo"},
            "EntrypointNotAllowed",
            "allowed modules (examples); add its module to MAESTRO_WORKER__ALLOWED_MODULES",
        ),
        (
            WorkerSettings(allowed_modules=[]),
            "python",
            {"entrypoint": "examples.steps:count_letters"},
            "EntrypointNotAllowed",
            "allowed modules (none)",
        ),
        (
            WorkerSettings(allowed_modules=["examples"]),
            "train",
            {"entrypoint": "examplesx.evil:run", "model_name": "m"},
            "EntrypointNotAllowed",
            "'examplesx.evil:run'",
        ),
    ],
)
async def test_worker_policy_refuses(policy, step_type, params, error_type, fragment, tmp_path):
    activities = StepActivities(None, Path(tmp_path), None, policy=policy)  # type: ignore[arg-type]
    with pytest.raises(ApplicationError) as caught:
        await ActivityEnvironment().run(activities.run_step, step_input(step_type, params))
    assert caught.value.type == error_type and caught.value.non_retryable
    assert fragment in caught.value.message


@pytest.mark.parametrize(
    ("step_type", "params", "resolved", "fragment"),
    [
        (
            "shell",
            {"command": {"expr": "'echo ' + params.x"}},
            {"command": "echo a; id"},
            "command: a shell command built by a CEL expression",
        ),
        (
            "shell",
            {"command": {"expr": "'echo ' + params.x"}, "shell_interpolation": True},
            {"command": "echo a; id", "shell_interpolation": True},
            "command: with shell_interpolation, the command must be",
        ),
        (
            "python",
            {"entrypoint": {"expr": "params.e"}},
            {"entrypoint": "examples.steps:count_letters"},
            "entrypoint: entrypoint cannot be an expression",
        ),
    ],
)
async def test_worker_refuses_unsafe_params_stored_before_they_were_checked(
    step_type, params, resolved, fragment, tmp_path
):
    activities = StepActivities(None, Path(tmp_path), None)  # type: ignore[arg-type]
    with pytest.raises(ApplicationError) as caught:
        await ActivityEnvironment().run(
            activities.run_step, step_input(step_type, params, resolved)
        )
    assert caught.value.type == "UnsafeStepParams" and caught.value.non_retryable
    assert fragment in caught.value.message


@pytest.mark.parametrize(
    ("entrypoint", "allowed", "expected"),
    [
        ("examples.ml.pipeline:train", ["examples"], True),
        ("examples:f", ["examples"], True),
        ("examplesx:f", ["examples"], False),
        ("os:system", ["examples", "mycompany.ml"], False),
        ("mycompany.ml.jobs:run", ["examples", "mycompany.ml"], True),
        ("os:system", ["*"], True),
        ("examples:f", [], False),
    ],
)
def test_module_allowed(entrypoint, allowed, expected):
    assert _module_allowed(entrypoint, allowed) is expected


def test_default_allowed_modules_are_the_examples():
    assert WorkerSettings().allowed_modules == ["examples"]
