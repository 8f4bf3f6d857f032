"""A worker refuses step types and entrypoint modules it is not configured to run."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from maestro.definitions import Step
from maestro.runtime import StepInput
from maestro.settings import WorkerSettings
from workers.activities import StepActivities


def step_input(step_type: str, params: dict) -> StepInput:
    return StepInput(
        run_id="r",
        workflow_id="w",
        run_number=1,
        step=Step(id="s", type=step_type, params=params),
        params=params,
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
