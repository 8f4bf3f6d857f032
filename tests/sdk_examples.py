"""The YAML examples (examples/*.yaml, examples/ml/*.yaml) written with maestro.sdk: tests assert
that each builds the definition its YAML file holds."""

from __future__ import annotations

from examples.ml import flow
from examples.ml.pipeline import evaluate_digits, score_batch, train_digits
from examples.steps import count_letters
from maestro.sdk import (
    ChampionCheck,
    Param,
    SignalCondition,
    StepRef,
    Workflow,
    cron,
    emit,
    expr,
    on_finish,
    retry,
    signal,
)

hello = Workflow(
    "hello",
    name="Hello, Maestro",
    owner="team-platform",
    description="Greets someone, counts the letters, and shouts only when asked to.",
    params={"who": Param(str, default="world"), "shout": Param(bool, default=False)},
)
greet = hello.shell("greet", ["echo", expr("'hello ' + params.who")])
count = hello.step(
    count_letters,
    id="count",
    depends_on=[greet],
    args={"text": expr("steps.greet.outputs.stdout_tail")},
)
hello.shell(
    "shout", 'echo "$MAESTRO_PARAM_WHO" | tr a-z A-Z', depends_on=[count], when="params.shout"
)

daily_report = Workflow(
    "daily-report",
    owner="team-data",
    params={"dt": Param(str)},
    run_strategy="sequential",
    triggers=[
        signal(
            SignalCondition(name="orders.loaded", where={"rows": {">": 0}}),
            SignalCondition(name="customers.loaded"),
            join_on=["dt"],
            within="6h",
            params={"dt": "signal.params.dt"},
        )
    ],
)
daily_report.shell(
    "build",
    ["echo", "report for", expr("params.dt")],
    emits=[emit("report.ready", {"dt": expr("params.dt")})],
)

mail_report = Workflow(
    "mail-report",
    params={"day": Param(str, default="")},
    triggers=[
        on_finish(daily_report, status=["succeeded"]),
        cron("0 7 * * MON-FRI", timezone="Europe/Paris"),
    ],
)
mail_report.noop("send")

DATA = expr("'digits/' + params.dt")


def gate_and_deploy(wf: Workflow, model: str, version: str, after: StepRef) -> None:
    """Evaluate a model version against the gate and the production champion, then deploy it."""
    evaluated = wf.evaluate(
        id="evaluate",
        model_name=model,
        model_version=expr(version),
        data=DATA,
        gates=["accuracy >= 0.85"],
        better_than=ChampionCheck(stage="production", metric="accuracy"),
        depends_on=[after],
    )(evaluate_digits)
    wf.deploy(
        "deploy",
        model_name=model,
        model_version=expr(version),
        stage="production",
        depends_on=[evaluated],
    )


digits_train = Workflow(
    "digits-train",
    name="Train the digits classifier",
    owner="team-ml",
    params=flow.TRAINING_PARAMS,
    triggers=[flow.PARTITION_READY],
)
trained = digits_train.train(
    id="train",
    model_name="digits-classifier",
    data=DATA,
    args={"epochs": expr("params.epochs"), "epoch_seconds": expr("params.epoch_seconds")},
    heartbeat_timeout="10s",
    retry=retry(3, initial_backoff="1s"),
)(train_digits)
gate_and_deploy(digits_train, "digits-classifier", "steps.train.outputs.model_version", trained)

digits_score = Workflow(
    "digits-score",
    name="Batch scoring with the production digits classifier",
    owner="team-ml",
    params={"model_uri": Param(str), "model_version": Param(int)},
    triggers=[
        signal(
            "model.deployed",
            where={"model": "digits-classifier", "stage": "production"},
            params={
                "model_uri": "signal.params.artifact_uri",
                "model_version": "signal.params.version",
            },
        )
    ],
)
digits_score.step(score_batch, id="score", args={"model_uri": expr("params.model_uri")})

digits_sweep = Workflow(
    "digits-sweep",
    name="Sweep the digits classifier's regularisation",
    owner="team-ml",
    params={
        "dt": Param(str, default="2026-11-26", description="the data partition"),
        "alphas": Param(list, default=[0.00001, 0.0001, 0.001, 0.01]),
        "epochs": Param(int, default=4),
    },
)
BEST = "max_by(iterations, 'score.metrics.accuracy')"
sweep = digits_sweep.foreach(
    "sweep",
    "params.alphas",
    as_="alpha",
    max_concurrency=2,
    loop_failure_mode="finish_all",
    outputs={
        "best_version": f"{BEST}.train.model_version",
        "best_accuracy": f"{BEST}.score.metrics.accuracy",
    },
)
sweep_train = sweep.train(
    id="train",
    model_name="digits-sweep",
    data=DATA,
    args={"alpha": expr("alpha"), "epochs": expr("params.epochs")},
)(train_digits)
sweep.evaluate(
    id="score",
    model_name="digits-sweep",
    model_version=expr("steps.train.outputs.model_version"),
    data=DATA,
    depends_on=[sweep_train],
)(evaluate_digits)
gate_and_deploy(digits_sweep, "digits-sweep", "steps.sweep.outputs.best_version", sweep)

# Each YAML example and the workflow that builds its definition.
EQUIVALENTS = {
    "examples/hello.yaml": hello,
    "examples/daily-report.yaml": daily_report,
    "examples/mail-report.yaml": mail_report,
    "examples/ml/train.yaml": digits_train,
    "examples/ml/score.yaml": digits_score,
    "examples/ml/sweep.yaml": digits_sweep,
}
