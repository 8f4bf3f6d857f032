"""Run routes: start, read and list runs; stop, kill, restart; step actions; lineage."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy.ext.asyncio import AsyncSession

from api.auth import owners_filter, signal_owners_filter
from api.deps import ActionsDep, EndsDep, RunsDep, SessionDep, SettingsDep
from api.schemas import (
    IterationOut,
    IterationPage,
    Lineage,
    LineageEdge,
    LineageNode,
    RestartIn,
    RunOut,
    RunPage,
    StartRunRequest,
    StepOut,
)
from maestro import keys, sla
from maestro.actions import step_actions
from maestro.branches import branch_of
from maestro.db import iterations as iterations_db
from maestro.db import models as models_db
from maestro.db import runs as runs_db
from maestro.db import signals as signals_db
from maestro.db import workflows as workflows_db
from maestro.db.tables import Iteration, ModelVersion, Run, RunSla, Signal, StepRun, Workflow
from maestro.ends import run_actions
from maestro.errors import NotFound
from maestro.runtime import RunStatus, StepStatus, temporal_ui_url
from maestro.settings import Settings

router = APIRouter(tags=["runs"])


def run_out(run: Run, settings: Settings, steps: list[StepOut] | None = None) -> RunOut:
    url = temporal_ui_url(
        settings.temporal.ui_url,
        settings.temporal.namespace,
        run.temporal_workflow_id,
        run.temporal_run_id,
    )
    return RunOut.model_validate(run).model_copy(
        update={"temporal_ui_url": url, "actions": run_actions(run), "steps": steps}
    )


_LOOPS = ("foreach", "while")


def step_outs(
    run: Run,
    definition: dict,
    rows: list[StepRun],
    progress: dict[str, dict[str, int]] | None = None,
) -> list[StepOut]:
    """Every step of the definition in its order, pending where nothing was recorded yet;
    foreach and while steps with their iterations' `progress`."""
    by_id = {row.step_id: row for row in rows}
    progress = progress or {}
    out = []
    for step in definition["steps"]:
        row = by_id.get(step["id"])
        status = StepStatus(row.status) if row else StepStatus.pending
        out.append(
            StepOut(
                step_id=step["id"],
                type=step["type"],
                status=status,
                actions=step_actions(run, status),
                attempt=row.attempt if row else 0,
                started_at=row.started_at if row else None,
                ended_at=row.ended_at if row else None,
                outputs=row.outputs if row else None,
                error=row.error if row else None,
                details=row.details if row else None,
                progress=_progress(run, progress.get(step["id"]))
                if step["type"] in _LOOPS
                else None,
            )
        )
    return out


def _progress(run: Run, counts: dict[str, int] | None) -> dict[str, int]:
    """Counts by status; in a run that ended, what never finished counts as stopped."""
    counts = dict(counts or dict.fromkeys(iterations_db.ITERATION_STATUSES, 0))
    if RunStatus(run.status).is_terminal:
        counts["stopped"] += counts["pending"] + counts["running"]
        counts["pending"] = counts["running"] = 0
    return counts


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
    loops = [s["id"] for s in version.definition["steps"] if s["type"] in _LOOPS]
    progress = await iterations_db.counts(session, run_id, loops)
    out = run_out(run, settings, step_outs(run, version.definition, rows, progress))
    out.sla = sla.view(await session.get(RunSla, run_id))
    out.code_sha256 = version.code_sha256
    return out


@router.get("/runs/{run_id}/steps/{step}/iterations", response_model=IterationPage)
async def list_iterations(
    run_id: str,
    step: str,
    session: SessionDep,
    status: Annotated[
        Literal["pending", "running", "succeeded", "failed", "skipped", "stopped"] | None,
        Query(description="Only iterations in this status"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[
        str | None,
        Query(pattern=r"^[0-9]{1,9}$", description="The `next_cursor` of the previous page"),
    ] = None,
) -> IterationPage:
    """The iterations of a foreach or while step in index order, with their item, status,
    outputs and error; page with `cursor`. `step` is the step's id, or for a step nested in
    an iteration its path (`outer[3].inner`)."""
    await runs_db.get_run(session, run_id)
    after = int(cursor) if cursor is not None else None
    rows = await iterations_db.page(session, run_id, step, status=status, after=after, limit=limit)
    if not rows and after is None and status is None:
        raise NotFound(f"run {run_id!r} has no iterations of step {step!r}")
    next_cursor = str(rows[-1].index) if len(rows) == limit else None
    return IterationPage(
        items=[_iteration_out(r) for r in rows],
        next_cursor=next_cursor,
    )


@router.post(
    "/runs/{run_id}/steps/{step}/iterations/{index}/skip",
    response_model=IterationOut,
    status_code=202,
)
async def skip_iteration(run_id: str, step: str, index: int, actions: ActionsDep) -> IterationOut:
    """Skip one iteration of a running foreach or while (cancelled if it runs): it ends
    `skipped` and the other iterations go on (a while's next one sees the outputs of the
    iteration before the skipped one as `previous`). 404 if the iteration does not exist yet
    (a while's future one), 409 if it already ended (a failed one: restart the run from
    `failed`) or the run is not live."""
    return _iteration_out(await actions.skip_iteration(run_id, step, index))


def _iteration_out(row: Iteration) -> IterationOut:
    return IterationOut(
        index=row.index,
        status=row.status,
        params=row.params,
        outputs=row.outputs,
        steps=row.steps,
        error=row.error,
        started_at=row.started_at,
        ended_at=row.ended_at,
    )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# A page ends at a run: its creation time in microseconds since 1970 and its id.
CURSOR_PATTERN = r"^[0-9]{1,16}_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"


def _encode_cursor(run: Run) -> str:
    return f"{(run.created_at - _EPOCH) // timedelta(microseconds=1)}_{run.run_id}"


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    micros, run_id = cursor.split("_", 1)
    return _EPOCH + timedelta(microseconds=int(micros)), run_id


@router.get("/runs", response_model=RunPage)
async def list_runs(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    workflow_id: str | None = None,
    status: RunStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[
        str | None,
        Query(pattern=CURSOR_PATTERN, description="`next_cursor` of the previous page"),
    ] = None,
    order: Annotated[
        Literal["newest", "oldest"],
        Query(description="`oldest` lists queued runs in the order they will start"),
    ] = "newest",
) -> RunPage:
    """Runs filtered by workflow and status, newest first (or oldest first: `status=queued`
    with `order=oldest` is the queue in arrival order); page with `cursor`."""
    after = _decode_cursor(cursor) if cursor else None
    rows = await runs_db.list_runs(
        session,
        workflow_id=workflow_id,
        status=status,
        limit=limit,
        after=after,
        oldest_first=order == "oldest",
        owners=owners_filter(request),
    )
    next_cursor = _encode_cursor(rows[-1]) if len(rows) == limit else None
    return RunPage(items=[run_out(r, settings) for r in rows], next_cursor=next_cursor)


@router.post("/runs/{run_id}/stop", response_model=RunOut, status_code=202)
async def stop_run(run_id: str, ends: EndsDep, settings: SettingsDep) -> RunOut:
    """Stop gracefully: running steps are cancelled (a shell step's process group is killed)
    and the run ends `stopped`; a queued run ends at once. 409 if the run already ended."""
    return run_out(await ends.stop_run(run_id), settings)


@router.post("/runs/{run_id}/cancel", response_model=RunOut, status_code=202)
async def cancel_run(run_id: str, ends: EndsDep, settings: SettingsDep) -> RunOut:
    """The same as `stop`."""
    return run_out(await ends.stop_run(run_id), settings)


@router.post("/runs/{run_id}/kill", response_model=RunOut, status_code=202)
async def kill_run(run_id: str, ends: EndsDep, settings: SettingsDep) -> RunOut:
    """Terminate now, without cleanup (Temporal terminate); the run ends `stopped` with error
    `killed`. Prefer `stop`. 409 if the run already ended."""
    return run_out(await ends.kill_run(run_id), settings)


@router.post("/runs/{run_id}/restart", response_model=RunOut, status_code=201)
async def restart_run(
    run_id: str, body: RestartIn, actions: ActionsDep, settings: SettingsDep
) -> RunOut:
    """A new run of the same version with the same params. `from`: `failed` (default; steps
    that succeeded keep their outputs and do not run again), `beginning`, or a step id (that
    step and everything downstream run again). 409 while the run is still live."""
    return run_out(await actions.restart_run(run_id, body.from_), settings)


@router.post("/runs/{run_id}/steps/{step_id}/skip", response_model=RunOut, status_code=202)
async def skip_step(
    run_id: str, step_id: str, actions: ActionsDep, settings: SettingsDep
) -> RunOut:
    """Skip a step that has not finished (cancelling it if it runs): the DAG continues as if it
    succeeded with no outputs. 409 if the step already ended or the run is not live."""
    return run_out(await actions.skip_step(run_id, step_id), settings)


@router.post("/runs/{run_id}/steps/{step_id}/bypass", response_model=RunOut, status_code=202)
async def bypass_step_wait(
    run_id: str, step_id: str, actions: ActionsDep, settings: SettingsDep
) -> RunOut:
    """Release a step that is `waiting_for_signal` as if its signals had arrived (without
    them). 409 if the step is not waiting."""
    return run_out(await actions.bypass_wait(run_id, step_id), settings)


@router.get("/runs/{run_id}/lineage", response_model=Lineage)
async def run_lineage(
    run_id: str,
    request: Request,
    session: SessionDep,
    depth: Annotated[int, Query(ge=1, le=10)] = 3,
) -> Lineage:
    """Upstream (the signals that caused this run and the runs that produced them, and the
    run whose subworkflow step started it, recursively) and downstream (the signals it emitted
    and the runs they started, and the runs its subworkflow steps started), up to `depth` hops
    of run -> run each way, with the model versions each run registered or deployed. A
    subworkflow child's node names its parent's step (`parent_step`). Every node names its
    branch (a signal's is null when it came from outside). For an owner-limited key, other
    owners' runs and signals it may not read are left out (and not followed)."""
    root = await runs_db.get_run(session, run_id)
    owners, readable = owners_filter(request), signal_owners_filter(request)
    workflow_owners: dict[str, str] = {}

    async def visible_run(run: Run) -> bool:
        if owners is None:
            return True
        if run.workflow_id not in workflow_owners:
            workflow = await session.get(Workflow, run.workflow_id)
            workflow_owners[run.workflow_id] = workflow.owner if workflow else ""
        return workflow_owners[run.workflow_id] in owners

    def visible_signal(signal: Signal) -> bool:
        return keys.produced_for(readable, signal.producer_owners)

    nodes: dict[str, LineageNode] = {}
    edges: set[tuple[str, str, str]] = set()

    def add_node(key: str, kind: str, data: dict[str, Any]) -> str:
        nodes.setdefault(key, LineageNode(id=key, kind=kind, data=data))
        return key

    def add_run(run: Run) -> str:
        return add_node(
            f"run:{run.run_id}",
            "run",
            {
                "run_id": run.run_id,
                "workflow_id": run.workflow_id,
                "branch": branch_of(run.workflow_id),
                "run_number": run.run_number,
                "version": run.version,
                "status": run.status,
                **_parent_step(run),
            },
        )

    def add_model_version(version: ModelVersion) -> str:
        return add_node(
            f"model:{version.model_name}:{version.version}",
            "model_version",
            {
                "model_name": version.model_name,
                "version": version.version,
                "branch": version.branch,
                "stage": version.stage,
                "artifact_uri": version.artifact_uri,
            },
        )

    async def add_models(run: Run) -> None:
        """The model versions the run registered and those its deploy steps moved."""
        key = f"run:{run.run_id}"
        for version in await models_db.versions_registered_by(session, run.run_id):
            edges.add((key, add_model_version(version), "registered"))
        for version, _ in await models_db.versions_deployed_by(session, run.run_id):
            edges.add((add_model_version(version), key, "deployed"))

    def add_signal(signal: Signal) -> str:
        return add_node(
            f"signal:{signal.id}",
            "signal",
            {
                "id": signal.id,
                "name": signal.name,
                "params": signal.params,
                "producer": signal.producer,
                "branch": signal.branch,
                "created_at": signal.created_at.isoformat(),
            },
        )

    add_run(root)
    await add_models(root)
    upstream, downstream = [root], [root]
    for _ in range(depth):
        next_up: list[Run] = []
        for run in upstream:
            parent = await _subworkflow_parent(session, run)
            if parent is not None and await visible_run(parent):
                edges.add((add_run(parent), f"run:{run.run_id}", "subworkflow"))
                next_up.append(parent)
            for signal in await signals_db.signals_consumed_by_run(session, run.run_id):
                if not visible_signal(signal):
                    continue
                edges.add((add_signal(signal), f"run:{run.run_id}", "started"))
                if signal.producer_run_id:
                    producer = await session.get(Run, signal.producer_run_id)
                    if producer is not None and await visible_run(producer):
                        edges.add((add_run(producer), f"signal:{signal.id}", "produced"))
                        await add_models(producer)
                        next_up.append(producer)
        next_down: list[Run] = []
        for run in downstream:
            for child in await runs_db.subworkflow_children(session, run.run_id):
                if await visible_run(child):
                    edges.add((f"run:{run.run_id}", add_run(child), "subworkflow"))
                    next_down.append(child)
            for signal in await signals_db.signals_produced_by_run(session, run.run_id):
                if not visible_signal(signal):
                    continue
                edges.add((f"run:{run.run_id}", add_signal(signal), "produced"))
                for started_id in await signals_db.runs_started_by_signal(session, signal.id):
                    started = await session.get(Run, started_id)
                    if started is not None and await visible_run(started):
                        edges.add((f"signal:{signal.id}", add_run(started), "started"))
                        await add_models(started)
                        next_down.append(started)
        upstream, downstream = next_up, next_down
    return Lineage(
        root=f"run:{run_id}",
        nodes=list(nodes.values()),
        edges=[LineageEdge(source=s, target=t, kind=k) for s, t, k in sorted(edges)],
    )


async def _subworkflow_parent(session: AsyncSession, run: Run) -> Run | None:
    """The run whose subworkflow step started this one, if it is kept."""
    if run.cause.get("kind") != "subworkflow":
        return None
    parent_id = (run.cause.get("detail") or {}).get("parent_run_id")
    return await session.get(Run, parent_id) if parent_id else None


def _parent_step(run: Run) -> dict[str, str]:
    """A subworkflow child's node: the step of its parent run that started it."""
    if run.cause.get("kind") != "subworkflow":
        return {}
    return {"parent_step": (run.cause.get("detail") or {}).get("parent_step", "")}
