"""Step functions that test workflows call through `python` steps."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from maestro.context import StepContext


def echo(ctx: StepContext) -> dict:
    """Return the step's args, the run params and what came from upstream."""
    return {
        "args": ctx.args,
        "params": ctx.params,
        "upstream": ctx.upstream,
        "attempt": ctx.attempt,
        "work_dir": str(ctx.work_dir),
    }


def flaky(ctx: StepContext) -> dict:
    """Fail until attempt `succeed_on`."""
    if ctx.attempt < ctx.args["succeed_on"]:
        raise RuntimeError(f"attempt {ctx.attempt} fails on purpose")
    return {"attempt": ctx.attempt}


def fail(ctx: StepContext) -> dict:
    raise ValueError(ctx.args.get("message", "failing on purpose"))


def count_calls(ctx: StepContext) -> dict:
    """Append one line per call to a file, so tests can count executions."""
    path = Path(ctx.args["file"])
    with path.open("a") as f:
        f.write(f"{ctx.run_id} {ctx.attempt} {os.getpid()}\n")
    return {"calls": len(path.read_text().splitlines())}


def slow(ctx: StepContext) -> dict:
    """Sleep in small slices, reporting progress; resumes from the last progress it reported."""
    total = ctx.args.get("seconds", 3.0)
    start = (ctx.previous_progress or {}).get("done", 0.0)
    done = start
    while done < total:
        time.sleep(0.1)
        done += 0.1
        ctx.progress({"done": done})
    return {"resumed_from": start, "attempt": ctx.attempt, "pid": os.getpid()}


def train_fixed(ctx: StepContext) -> dict:
    """A 'model' whose quality is given: writes it, reports it as a metric."""
    (ctx.artifact_dir / "model.txt").write_text(str(ctx.args["quality"]))
    return {"model": "model.txt", "metrics": {"train_accuracy": ctx.args["quality"]}}


def evaluate_fixed(ctx: StepContext) -> dict:
    return {"metrics": {"accuracy": float(ctx.model_path.read_text())}}


def train_interrupted(ctx: StepContext) -> dict:
    """Reports progress, fails its first attempt, and shows what the retry received."""
    if ctx.attempt == 1:
        ctx.progress({"epoch": 3})
        time.sleep(1.5)  # long enough for the heartbeat to carry the progress
        raise RuntimeError("simulated crash after epoch 3")
    (ctx.artifact_dir / "model.txt").write_text("1")
    return {
        "model": "model.txt",
        "metrics": {"train_accuracy": 1.0},
        "resumed_from": ctx.previous_progress,
    }


def digest_of(ctx: StepContext) -> dict:
    """The SHA-256 of the artifact at `args.uri`, read through the worker's store."""
    path = ctx.local_path(ctx.args["uri"])
    return {"sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "path": str(path)}


def whoami(ctx: StepContext) -> dict:
    """Which worker process ran this step."""
    time.sleep(ctx.args.get("seconds", 0.2))
    return {"pid": os.getpid()}


def gated(ctx: StepContext) -> dict:
    """Mark that it started, wait until the file `release` exists, then count the call: lets a
    test stop the database while steps are about to finish."""
    directory = Path(ctx.args["dir"])
    (directory / f"started-{ctx.run_id}-{ctx.step_id}").touch()
    deadline = time.monotonic() + ctx.args.get("timeout", 120)
    while not (directory / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    with (directory / "calls").open("a") as f:
        f.write(f"{ctx.run_id} {ctx.step_id} {ctx.attempt}\n")
    return {"attempt": ctx.attempt}


def record_call(ctx: StepContext) -> dict:
    """Append `<run id> <step id> <attempt> <pid>` to the file `file`: one line per execution."""
    with Path(ctx.args["file"]).open("a") as f:
        f.write(f"{ctx.run_id} {ctx.step_id} {ctx.attempt} {os.getpid()}\n")
    return {"pid": os.getpid()}


def record_item(ctx: StepContext) -> dict:
    """Append `<key> <attempt> <pid>` to the file `file`: one line per execution of an
    iteration's step."""
    with Path(ctx.args["file"]).open("a") as f:
        f.write(f"{ctx.args['key']} {ctx.attempt} {os.getpid()}\n")
    return {"key": ctx.args["key"]}


def use_secret(ctx: StepContext) -> dict:
    """Return the secret `args.name` (which the worker masks) and its hash (which it does not);
    report it as progress and fail with it in the message when asked to."""
    value = ctx.secrets[ctx.args["name"]]
    if ctx.args.get("report_seconds"):
        ctx.progress({"token": value})
        time.sleep(ctx.args["report_seconds"])
    if ctx.args.get("fail"):
        raise RuntimeError(f"cannot log in with {value}")
    return {"value": value, "sha256": hashlib.sha256(value.encode()).hexdigest()}


def tally(ctx: StepContext) -> dict:
    """Append `key` to `file` (one line per call: tests count executions); fail for the keys
    listed in `fail_keys` while the file `fail_while` exists."""
    key = ctx.args["key"]
    with Path(ctx.args["file"]).open("a") as f:
        f.write(f"{key} {time.time()}\n")
    seconds = ctx.args.get("seconds", 0)
    if seconds:
        time.sleep(seconds)
    with Path(ctx.args["file"]).open("a") as f:
        f.write(f"end {key} {time.time()}\n")
    if key in ctx.args.get("fail_keys", []) and Path(ctx.args.get("fail_while", "-")).exists():
        raise RuntimeError(f"item {key} fails on purpose")
    return {"key": key}
