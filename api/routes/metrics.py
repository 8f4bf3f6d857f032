"""`/metrics` in Prometheus' text format (read scope)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import func, select

from api.deps import SessionDep
from maestro import metrics
from maestro.db.tables import Run
from maestro.runtime import RunStatus

router = APIRouter(tags=["observability"])


@router.get(
    "/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}}
)
async def prometheus_metrics(session: SessionDep) -> Response:
    """This API process's counters and histograms (signals, trigger evaluations and fires,
    trigger lag), plus runs by status and queue depth per workflow read from the database.
    Workers export step durations and run ends on their own metrics port."""
    by_status = dict(
        (await session.execute(select(Run.status, func.count()).group_by(Run.status))).all()
    )
    for status in RunStatus:
        metrics.RUNS.labels(status.value).set(by_status.get(status.value, 0))
    depth = dict(
        (
            await session.execute(
                select(Run.workflow_id, func.count())
                .where(Run.status == RunStatus.queued, Run.admitted_at.is_(None))
                .group_by(Run.workflow_id)
            )
        ).all()
    )
    metrics.QUEUE_DEPTH.clear()
    for workflow_id, count in depth.items():
        metrics.QUEUE_DEPTH.labels(workflow_id).set(count)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
