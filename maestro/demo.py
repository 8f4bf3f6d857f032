"""`maestro demo`: run the reference ML pipeline against a running stack and show it live."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from importlib.resources import files
from typing import Any

import httpx
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

STATUS_STYLE = {
    "succeeded": "green",
    "failed": "red",
    "running": "yellow",
    "waiting_for_signal": "cyan",
    "skipped": "dim",
    "stopped": "magenta",
    "timed_out": "red",
    "queued": "blue",
    "pending": "dim",
}


class DemoError(Exception):
    pass


def _check(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        body = (
            response.json()
            if response.headers.get("content-type", "").startswith("application/json")
            else {"message": response.text}
        )
        raise DemoError(
            f"{response.request.method} {response.request.url.path}: "
            f"{response.status_code} {body.get('message')}"
        )
    return response.json()


def _table(title: str, run: dict | None) -> Table:
    table = Table(title=title, title_justify="left", expand=False)
    for column in ("step", "type", "status", "attempt", "note"):
        table.add_column(column)
    if run is None:
        table.add_row("…", "", "waiting for the run", "", "")
        return table
    for step in run.get("steps") or []:
        note = ""
        outputs = step.get("outputs") or {}
        if step["step_id"] == "train" and "metrics" in outputs:
            note = (
                f"v{outputs.get('model_version')} train_accuracy "
                f"{outputs['metrics'].get('train_accuracy', 0):.3f}"
            )
        elif "metrics" in outputs:
            note = ", ".join(f"{k} {v:.3f}" for k, v in outputs["metrics"].items())
        elif step.get("error"):
            note = step["error"][:80]
        elif "rows" in outputs:
            note = f"{outputs['rows']} predictions"
        style = STATUS_STYLE.get(step["status"], "")
        table.add_row(
            step["step_id"],
            step["type"],
            f"[{style}]{step['status']}[/]",
            str(step["attempt"]),
            note,
        )
    table.caption = f"run {run['run_number']} · {run['status']} · {run['temporal_ui_url']}"
    return table


def run_demo(api_url: str, headers: dict[str, str], console: Console, timeout: float = 300) -> int:
    """Register the pipeline, publish a data-arrival signal, follow the runs; 0 on success."""
    started = time.monotonic()
    with httpx.Client(base_url=api_url, headers=headers, timeout=30) as http:
        try:
            http.get("/healthz").raise_for_status()
        except httpx.HTTPError as exc:
            raise DemoError(
                f"cannot reach the API at {api_url} ({exc}); start the stack with `maestro up`"
            ) from None
        for name in ("train.yaml", "score.yaml"):
            text = (files("examples.ml") / name).read_text()
            pushed = _check(
                http.post(
                    "/api/v1/workflows", content=text, headers={"content-type": "application/yaml"}
                )
            )
            state = "registered" if pushed["created"] else "unchanged"
            console.print(
                f"workflow [bold]{pushed['workflow']['id']}[/] v{pushed['version']} ({state})"
            )
        dt = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%S")
        published = _check(
            http.post(
                "/api/v1/signals",
                json={
                    "name": "table.partition.ready",
                    "params": {"table": "digits", "dt": dt},
                    "request_id": f"demo-{uuid.uuid4()}",
                },
            )
        )
        console.print(
            f"published [bold]table.partition.ready[/] table=digits dt={dt} "
            f"(signal {published['signal']['id']})"
        )
        if not published["runs"]:
            raise DemoError("the signal started no run; is digits-train active?")
        train_id = published["runs"][0]["run_id"]
        train_run: dict | None = None
        score_run: dict | None = None
        with Live(console=console, refresh_per_second=4) as live:
            while time.monotonic() - started < timeout:
                train_run = _check(http.get(f"/api/v1/runs/{train_id}"))
                deployed = _deployed_version(train_run)
                if deployed is not None and score_run is None:
                    score_run = _find_scoring(http, deployed)
                elif score_run is not None:
                    score_run = _check(http.get(f"/api/v1/runs/{score_run['run_id']}"))
                live.update(
                    Group(_table("digits-train", train_run), _table("digits-score", score_run))
                )
                train_done = train_run["status"] not in ("queued", "running")
                if train_done and (
                    deployed is None
                    or (score_run and score_run["status"] not in ("queued", "running"))
                ):
                    break
                time.sleep(0.5)
        return _summary(http, console, train_run, score_run, time.monotonic() - started)


def _deployed_version(run: dict) -> int | None:
    for step in run.get("steps") or []:
        if step["step_id"] == "deploy" and step["status"] == "succeeded":
            return step["outputs"]["model_version"]
    return None


def _find_scoring(http: httpx.Client, version: int) -> dict | None:
    page = _check(http.get("/api/v1/runs", params={"workflow_id": "digits-score", "limit": 20}))
    for run in page["items"]:
        if run["params"].get("model_version") == version:
            return _check(http.get(f"/api/v1/runs/{run['run_id']}"))
    return None


def _summary(
    http: httpx.Client,
    console: Console,
    train_run: dict | None,
    score_run: dict | None,
    elapsed: float,
) -> int:
    if train_run is None:
        raise DemoError("the training run never appeared")
    steps = {s["step_id"]: s for s in train_run["steps"]}
    train_out = steps["train"].get("outputs") or {}
    version = train_out.get("model_version")
    console.print()
    if version is not None:
        detail = _check(http.get(f"/api/v1/models/digits-classifier/versions/{version}"))
        metrics = ", ".join(f"{k}={v:.4f}" for k, v in sorted(detail["metrics"].items()))
        console.print(f"model [bold]digits-classifier[/] version [bold]{version}[/]: {metrics}")
        console.print(f"  artifact {detail['artifact_uri']}")
    deploy = steps["deploy"]
    if deploy["status"] == "succeeded":
        previous = deploy["outputs"].get("previous_version")
        before = f"v{previous} archived" if previous else "no previous production model"
        console.print(f"stage: v{version} -> [green]production[/] ({before})")
    else:
        reason = steps["evaluate"].get("error") or deploy.get("error") or deploy["status"]
        console.print(f"[yellow]not deployed[/]: {reason}")
    console.print(f"training run  {train_run['temporal_ui_url']}")
    if score_run is not None:
        outputs = score_run["steps"][0].get("outputs") or {}
        console.print(f"scoring run   {score_run['temporal_ui_url']}")
        if outputs.get("artifacts"):
            console.print(f"predictions   {outputs['artifacts']['predictions']}")
    console.print(f"done in {elapsed:.1f}s")
    ok = train_run["status"] == "succeeded" and (
        score_run is None or score_run["status"] == "succeeded"
    )
    # A better production model refusing the new one is an outcome, not an error.
    refused = steps["evaluate"]["status"] == "failed" and steps["train"]["status"] == "succeeded"
    return 0 if ok or refused else 1
