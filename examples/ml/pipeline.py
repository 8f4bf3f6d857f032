"""Step functions of the reference pipeline, on scikit-learn's bundled digits data set (no
downloads). Training reports progress per epoch and resumes from its last checkpoint (kept in
the artifact store) when a retried attempt starts, after a worker crash say, on any worker."""

from __future__ import annotations

import csv
import pickle
import time
import zlib
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import SGDClassifier
from sklearn.model_selection import train_test_split

from maestro.context import StepContext

CLASSES = np.arange(10)


def _split(data_ref: str | None):
    """The same train/test split for the same data reference (e.g. `digits/2026-11-26`)."""
    digits = load_digits()
    seed = zlib.crc32((data_ref or "digits").encode()) % 1000
    return train_test_split(
        digits.data / 16.0, digits.target, test_size=0.25, random_state=seed, stratify=digits.target
    )


def train_digits(ctx: StepContext) -> dict:
    """Train a linear classifier epoch by epoch, checkpointing after each one."""
    epochs = int(ctx.args.get("epochs", 8))
    pause = float(ctx.args.get("epoch_seconds", 0.0))
    x_train, _, y_train, _ = _split(ctx.data)
    start = 0
    alpha = float(ctx.args.get("alpha", 1e-4))
    model = SGDClassifier(loss="log_loss", alpha=alpha, random_state=0)
    saved = ctx.load_checkpoint() if ctx.previous_progress else None
    if saved is not None:
        # The epoch travels with the model: the last progress may not have reached Temporal.
        start, model = pickle.loads(saved)
    for epoch in range(start, epochs):
        model.partial_fit(x_train, y_train, classes=CLASSES)
        ctx.save_checkpoint(pickle.dumps((epoch + 1, model)))
        ctx.progress({"epoch": epoch + 1, "of": epochs, "pct": round(100 * (epoch + 1) / epochs)})
        time.sleep(pause)
    (ctx.artifact_dir / "model.pkl").write_bytes(pickle.dumps(model))
    return {
        "model": "model.pkl",
        "metrics": {"train_accuracy": float(model.score(x_train, y_train))},
        "epochs": epochs,
        "resumed_from_epoch": start,
    }


def evaluate_digits(ctx: StepContext) -> dict:
    """Accuracy of the model version on the held-out part of the data."""
    model = pickle.loads(Path(ctx.model_path).read_bytes())
    _, x_test, _, y_test = _split(ctx.data)
    return {"metrics": {"accuracy": float(model.score(x_test, y_test))}}


def score_batch(ctx: StepContext) -> dict:
    """Predict a batch with the production model; the predictions become an artifact."""
    model = pickle.loads(ctx.local_path(ctx.args["model_uri"]).read_bytes())
    digits = load_digits()
    batch = digits.data[-200:] / 16.0
    predictions = model.predict(batch)
    out = ctx.artifact_dir / "predictions.csv"
    with out.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row", "prediction"])
        writer.writerows(enumerate(int(p) for p in predictions))
    agreement = float((predictions == digits.target[-200:]).mean())
    return {
        "artifacts": {"predictions": str(out)},
        "rows": len(predictions),
        "agreement_with_labels": agreement,
    }
