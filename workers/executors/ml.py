"""The ML steps: `train` (model artifact + registry version), `evaluate` (metrics, gates,
champion/challenger) and `deploy` (stage promotion + `model.deployed`)."""

from __future__ import annotations

import asyncio
import operator
from typing import Any

from temporalio.exceptions import ApplicationError

from maestro.context import StepContext
from maestro.errors import Forbidden
from maestro.runtime import StepResult
from maestro.steps import DeployParams, EvaluateParams, TrainParams, parse_gate
from workers.executors.python import call_entrypoint
from workers.executors.services import Services

_OPS = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
    "==": operator.eq,
    "!=": operator.ne,
}


def _metrics(result: dict[str, Any], entrypoint: str) -> dict[str, float]:
    metrics = result.get("metrics", {})
    if not isinstance(metrics, dict) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in metrics.values()
    ):
        raise ApplicationError(
            f"{entrypoint} must return metrics as {{name: number}}",
            type="InvalidOutputs",
            non_retryable=True,
        )
    return {k: float(v) for k, v in metrics.items()}


async def run_train(ctx: StepContext, spec: TrainParams, services: Services) -> StepResult:
    ctx.args, ctx.data = spec.args, spec.data
    result = await call_entrypoint(spec.entrypoint, ctx)
    if "model" not in result:
        raise ApplicationError(
            f"{spec.entrypoint} must return the model's path as 'model'",
            type="InvalidOutputs",
            non_retryable=True,
        )
    metrics = _metrics(result, spec.entrypoint)
    extra = {k: v for k, v in result.items() if k not in ("model", "metrics", "artifacts")}
    stored = await services.store_artifacts(
        ctx, {"model": result["model"], **result.get("artifacts", {})}
    )
    version = await services.register_model_version(ctx, spec, stored["model"], metrics)
    return StepResult(
        outputs={
            **extra,
            "model_name": spec.model_name,
            "model_version": version,
            "model_uri": stored["model"],
            "metrics": metrics,
            "artifacts": stored,
        }
    )


async def run_evaluate(ctx: StepContext, spec: EvaluateParams, services: Services) -> StepResult:
    candidate, champion = await services.model_versions(
        spec.model_name,
        spec.model_version,
        spec.better_than.stage if spec.better_than is not None else None,
    )
    ctx.args, ctx.data = spec.args, spec.data
    # From an object store, a download into this worker's cache: off the event loop.
    ctx.model_path = await asyncio.to_thread(services.artifacts.local_path, candidate.artifact_uri)
    result = await call_entrypoint(spec.entrypoint, ctx)
    metrics = _metrics(result, spec.entrypoint)
    await services.merge_model_metrics(spec.model_name, spec.model_version, metrics)
    failures: list[str] = []
    for gate in spec.gates:
        metric, op, threshold = parse_gate(gate)
        if metric not in metrics:
            failures.append(f"gate {gate!r}: the evaluation returned no metric {metric!r}")
        elif not _OPS[op](metrics[metric], threshold):
            failures.append(
                f"gate failed: {metric} = {metrics[metric]:g}, required {op} {threshold:g}"
            )
    comparison: dict[str, Any] = {}
    if (
        spec.better_than is not None
        and champion is not None
        and champion.version != spec.model_version
    ):
        check = spec.better_than
        ours, theirs = metrics.get(check.metric), champion.metrics.get(check.metric)
        comparison = {
            "champion_version": champion.version,
            "metric": check.metric,
            "challenger": ours,
            "champion": theirs,
        }
        if ours is None:
            failures.append(f"better_than: the evaluation returned no metric {check.metric!r}")
        elif theirs is not None:
            better = ours > theirs if check.higher_is_better else ours < theirs
            if not better:
                word = "higher" if check.higher_is_better else "lower"
                failures.append(
                    f"champion/challenger failed: {check.metric} = {ours:g} is not {word} than "
                    f"{check.stage} version {champion.version}'s {theirs:g}"
                )
    if failures:
        raise ApplicationError(
            "; ".join(failures),
            {"metrics": metrics, **comparison},
            type="GateFailed",
            non_retryable=True,
        )
    return StepResult(
        outputs={
            "metrics": metrics,
            "passed": True,
            "model_name": spec.model_name,
            "model_version": spec.model_version,
            **comparison,
        }
    )


async def run_deploy(ctx: StepContext, spec: DeployParams, services: Services) -> StepResult:
    try:
        previous, artifact_uri = await services.promote_model(
            ctx, spec.model_name, spec.model_version, spec.stage
        )
    except Forbidden as exc:  # another owner's model, or production from a branch: for good
        raise ApplicationError(exc.message, type="DeployRefused", non_retryable=True) from None
    return StepResult(
        outputs={
            "model_name": spec.model_name,
            "model_version": spec.model_version,
            "stage": spec.stage,
            "previous_version": previous,
            "model_uri": artifact_uri,
        }
    )
