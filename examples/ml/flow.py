"""The reference ML pipeline as one Python flow: a `table.partition.ready` signal trains the digits
classifier, evaluates it against a gate and the production champion, deploys it and scores a
batch with it; every successful pipeline run then starts a short report (on completion).

    maestro deploy examples/ml/flow.py --branch user.alice   # try it on a branch
    maestro deploy examples/ml/flow.py --production          # then ship it

Training and evaluation reuse the functions of examples/ml/pipeline.py; the scoring and report
steps are defined here. Deploying ships this code with the version (a code package): workers
need none of it installed.
"""

from __future__ import annotations

from typing import Any

from examples.ml.pipeline import evaluate_digits, score_batch, train_digits
from maestro.sdk import ChampionCheck, Param, StepContext, Workflow, expr, on_finish, retry, signal

DATA = expr("'digits/' + params.dt")
MODEL = "digits-classifier"
TRAINING_PARAMS = {
    "dt": Param(str, description="the data partition that arrived"),
    "epochs": Param(int, default=8),
    "epoch_seconds": Param(float, default=0.2),
}
PARTITION_READY = signal(
    "table.partition.ready", where={"table": "digits"}, params={"dt": "signal.params.dt"}
)

pipeline = Workflow(
    "digits-pipeline",
    name="Train, evaluate, deploy and score the digits classifier",
    owner="team-ml",
    params=TRAINING_PARAMS,
    triggers=[PARTITION_READY],
    requirements=["scikit-learn>=1.4"],
)

train = pipeline.train(
    id="train",
    model_name=MODEL,
    data=DATA,
    args={"epochs": expr("params.epochs"), "epoch_seconds": expr("params.epoch_seconds")},
    heartbeat_timeout="10s",
    retry=retry(3, initial_backoff="1s"),
)(train_digits)

evaluate = pipeline.evaluate(
    id="evaluate",
    model_name=MODEL,
    model_version=expr("steps.train.outputs.model_version"),
    data=DATA,
    gates=["accuracy >= 0.85"],
    better_than=ChampionCheck(stage="production", metric="accuracy"),
    depends_on=[train],
)(evaluate_digits)

deploy = pipeline.deploy(
    "deploy",
    model_name=MODEL,
    model_version=expr("steps.train.outputs.model_version"),
    # Only the prod branch may reach production: a branch's run deploys to staging.
    stage=expr("run.branch == 'prod' ? 'production' : 'staging'"),
    depends_on=[evaluate],
)


@pipeline.step(depends_on=[deploy], args={"model_uri": expr("steps.deploy.outputs.model_uri")})
def score(ctx: StepContext) -> dict[str, Any]:
    """Predict a batch with the model just deployed; the predictions become an artifact."""
    scored = score_batch(ctx)
    return {**scored, "model_version": ctx.upstream["deploy"]["model_version"]}


report = Workflow(
    "digits-report",
    name="Report on each finished digits pipeline run",
    owner="team-ml",
    params={"dt": Param(str, default="")},
    triggers=[on_finish(pipeline, params={"dt": "signal.params.dt"})],
)


@report.step
def summarize(ctx: StepContext) -> dict[str, Any]:
    """One line saying which partition the production model was last trained on."""
    return {"summary": f"{MODEL} retrained and deployed for partition {ctx.params['dt']}"}
