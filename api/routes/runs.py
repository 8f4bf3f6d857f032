"""Run routes: start, read, list, cancel."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Response

from api.deps import RunsDep, SessionDep, SettingsDep
from api.schemas import RunOut, RunPage, StartRunRequest, StepOut
from maestro.db import runs as runs_db
from maestro.db import workflows as workflows_db
from maestro.db.tables import Run, StepRun
from maestro.errors import InvalidInput, Problem
from maestro.runtime import RunStatus, StepStatus, temporal_ui_url
from maestro.settings import Settings

router = APIRouter(tags=["runs"])


def run_out(run: Run, settings: Settings, steps: list[StepOut] | None = None) -> RunOut:
    return RunOut(
        run_id=run.run_id,
        workflow_id=run.workflow_id,
        version=run.version,
        run_number=run.run_number,
        status=RunStatus(run.status),
        params=run.params,
        cause=run.cause,
        request_id=run.request_id,
        temporal_workflow_id=run.temporal_workflow_id,
        temporal_run_id=run.temporal_run_id,
        temporal_ui_url=temporal_ui_url(
            settings.temporal.ui_url,
            settings.temporal.namespace,
            run.temporal_workflow_id,
            run.temporal_run_id,
        ),
        created_at=run.created_at,
        started_at=run.started_at,
        ended_at=run.ended_at,
        error=run.error,
        outputs=run.outputs,
        steps=steps,
    )


def step_outs(definition: dict, rows: list[StepRun]) -> list[StepOut]:
    """Every step of the definition in its order, pending where nothing was recorded yet."""
    by_id = {row.step_id: row for row in rows}
    out = []
    for step in definition["steps"]:
        row = by_id.get(step["id"])
        out.append(
            StepOut(
                step_id=step["id"],
                type=step["type"],
                status=StepStatus(row.status) if row else StepStatus.pending,
                attempt=row.attempt if row else 0,
                started_at=row.started_at if row else None,
                ended_at=row.ended_at if row else None,
                outputs=row.outputs if row else None,
                error=row.error if row else None,
                details=row.details if row else None,
            )
        )
    return out


@router.post(
    "/workflows/{workflow_id}/runs",
    response_model=RunOut,
    status_code=201,
    responses={200: {"model": RunOut, "description": "The run this request_id started"}},
)
async def start_run(
    workflow_id: str,
    body: StartRunRequest,
    response: Response,
    runs: RunsDep,
    settings: SettingsDep,
) -> RunOut:
    """Start a run of the active version (or `version`). Repeating a `request_id` returns the
    run it started (200) and starts nothing."""
    run, created = await runs.start_run(
        workflow_id, body.params, request_id=body.request_id, version=body.version
    )
    if not created:
        response.status_code = 200
    return run_out(run, settings)


@router.get("/runs/{run_id}", response_model=RunOut)
async def get_run(run_id: str, session: SessionDep, settings: SettingsDep) -> RunOut:
    """A run with every step's state (status, attempt, times, outputs, error)."""
    run = await runs_db.get_run(session, run_id)
    version = await workflows_db.get_version(session, run.workflow_id, run.version)
    rows = list(await runs_db.list_steps(session, run_id))
    return run_out(run, settings, step_outs(version.definition, rows))


def _encode_cursor(run: Run) -> str:
    return base64.urlsafe_b64encode(f"{run.created_at.isoformat()}|{run.run_id}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        created, run_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        return datetime.fromisoformat(created), run_id
    except ValueError:
        raise InvalidInput(
            "invalid cursor", [Problem(("query", "cursor"), "not a cursor returned by this API")]
        ) from None


@router.get("/runs", response_model=RunPage)
async def list_runs(
    session: SessionDep,
    settings: SettingsDep,
    workflow_id: str | None = None,
    status: RunStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> RunPage:
    """Runs, newest first, filtered by workflow and status; page with `cursor`."""
    before = _decode_cursor(cursor) if cursor else None
    rows = await runs_db.list_runs(
        session, workflow_id=workflow_id, status=status, limit=limit, before=before
    )
    next_cursor = _encode_cursor(rows[-1]) if len(rows) == limit else None
    return RunPage(items=[run_out(r, settings) for r in rows], next_cursor=next_cursor)


@router.post("/runs/{run_id}/cancel", response_model=RunOut, status_code=202)
async def cancel_run(run_id: str, runs: RunsDep, settings: SettingsDep) -> RunOut:
    """Stop a run: running steps are cancelled (a shell step's process group is killed) and the
    run ends as `stopped`. 409 if the run already ended."""
    return run_out(await runs.cancel_run(run_id), settings)
