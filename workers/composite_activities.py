"""The activities of composite steps: preparing a foreach's iterations (its items evaluated and
stored, never passed through Temporal), loading and recording them, finishing a composite step
(its outputs, its step row), and creating a subworkflow's child run through the runs service."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError

from maestro import metrics
from maestro.branches import branch_of, qualified_id
from maestro.composites import (
    FINISH_COMPOSITE_ACTIVITY,
    LOAD_ITERATIONS_ACTIVITY,
    OPEN_ITERATION_ACTIVITY,
    PREPARE_FOREACH_ACTIVITY,
    RECORD_ITERATIONS_ACTIVITY,
    RESUME_WHILE_ACTIVITY,
    START_SUBWORKFLOW_ACTIVITY,
    CompositeInput,
    CompositeOutcome,
    FinishCompositeInput,
    LoadedIteration,
    LoadIterationsInput,
    LoadIterationsResult,
    OpenIterationInput,
    PrepareResult,
    RecordIterationsInput,
    ResumeWhileInput,
    ResumeWhileResult,
    SubworkflowStart,
    subworkflow_request_id,
)
from maestro.db import iterations as iterations_db
from maestro.db import runs as runs_db
from maestro.db.engine import autocommit
from maestro.definitions import (
    ForeachParams,
    SubworkflowParams,
    composite_params,
    split_range,
)
from maestro.errors import MaestroError
from maestro.expression_limits import MAX_INPUT_WEIGHT
from maestro.expressions import Evaluation, ExpressionError, evaluate, resolve_values
from maestro.runs import RunsService
from maestro.runtime import Cause, RunStatus, StepState, StepStatus

# What a foreach's `outputs` may read grows by this many input units per iteration (a list or
# map item, or a few characters of a string, count one each).
OUTPUT_WEIGHT_PER_ITERATION = 64
_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def _invalid(message: str) -> ApplicationError:
    """A composite step that cannot run as defined: it fails, without retries."""
    return ApplicationError(message, type="CompositeInvalid", non_retryable=True)


def foreach_items(source: str, context: dict[str, Any], roots: frozenset[str], limit: int) -> list:
    """The list a foreach iterates over. `range(a, b)` and plain paths (`params.configs`) are
    read directly, whatever their size up to `limit`; anything else is a CEL expression under
    the usual limits."""
    bounds = split_range(source)
    if bounds is not None:
        lo, hi = (evaluate(b, context, roots) for b in bounds)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (lo, hi)):
            raise ExpressionError(f"range() takes two integers, got {lo!r} and {hi!r}")
        if hi - lo > limit:
            raise _over_limit(hi - lo, limit)
        return list(range(lo, max(lo, hi)))
    if _PATH.match(source) and source.split(".")[0] in roots:
        value: Any = context
        for key in source.split("."):
            if not isinstance(value, dict) or key not in value:
                raise ExpressionError(f"{source!r}: no such key {key!r}")
            value = value[key]
    else:
        value = evaluate(source, context, roots)
    if not isinstance(value, list):
        raise ExpressionError(f"items must be a list, got {type(value).__name__}")
    if len(value) > limit:
        raise _over_limit(len(value), limit)
    return value


def _over_limit(count: int, limit: int) -> ApplicationError:
    return _invalid(
        f"items: {count:,} items, over the limit of {limit:,} per foreach "
        "(MAESTRO_WORKER__MAX_FOREACH_ITEMS)"
    )


class CompositeActivities:
    """The activities of ForeachWorkflow, WhileWorkflow and of RunWorkflow's composite steps."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        runs: RunsService | None,
        max_items: int,
    ) -> None:
        self._sessions = sessions
        self._runs = runs
        self._max_items = max_items

    @activity.defn(name=PREPARE_FOREACH_ACTIVITY)
    async def prepare_foreach(self, composite: CompositeInput) -> PrepareResult:
        """Evaluate the items and store one pending iteration per item (a restart from
        `failed` reuses the iterations that succeeded); returns how many there are."""
        roots = frozenset(composite.roots)
        spec = composite_params(composite.step, roots)
        assert isinstance(spec, ForeachParams)
        try:
            items = foreach_items(spec.items, composite.context, roots, self._max_items)
        except ExpressionError as exc:
            raise _invalid(f"items: {exc}") from None
        run_id = composite.run.run_id
        async with self._sessions.begin() as session:
            await iterations_db.create_iterations(session, run_id, composite.path, items)
            reused = 0
            if composite.run.reuse_from:
                reused = await iterations_db.reuse_iterations(
                    session, run_id, composite.path, composite.run.reuse_from
                )
        metrics.ITERATIONS_STARTED.labels("foreach").inc(len(items) - reused)
        return PrepareResult(count=len(items), reused=reused)

    @activity.defn(name=LOAD_ITERATIONS_ACTIVITY)
    async def load_iterations(self, request: LoadIterationsInput) -> LoadIterationsResult:
        """The iterations one ForeachWorkflow carries, now signalled there when skipped."""
        async with self._sessions.begin() as session:
            rows = await iterations_db.load_range(
                session,
                request.run_id,
                request.path,
                request.lo,
                request.hi,
                request.temporal_workflow_id,
            )
        return LoadIterationsResult(
            iterations=[
                LoadedIteration(
                    index=r.index, item=r.params, status=r.status, skip=r.skip_requested
                )
                for r in rows
            ]
        )

    @activity.defn(name=RECORD_ITERATIONS_ACTIVITY)
    async def record_iterations(self, record: RecordIterationsInput) -> None:
        """Write iteration ends the workflow decided (failed, skipped, stopped, ...)."""
        async with autocommit(self._sessions) as session:
            await iterations_db.record_states(
                session,
                record.run_id,
                record.path,
                [e.model_dump(mode="json") for e in record.ends],
            )
        for end in record.ends:
            metrics.ITERATIONS_FINISHED.labels(end.status).inc()

    @activity.defn(name=OPEN_ITERATION_ACTIVITY)
    async def open_iteration(self, request: OpenIterationInput) -> None:
        """A while's iteration begins: its row."""
        async with autocommit(self._sessions) as session:
            await iterations_db.open_iteration(
                session,
                request.run_id,
                request.path,
                request.index,
                request.params,
                request.temporal_workflow_id,
            )
        metrics.ITERATIONS_STARTED.labels("while").inc()

    @activity.defn(name=RESUME_WHILE_ACTIVITY)
    async def resume_while(self, request: ResumeWhileInput) -> ResumeWhileResult:
        """A while of a run restarted from `failed`: take over the iterations that succeeded
        before the one that failed; the while goes on from there."""
        async with self._sessions.begin() as session:
            index, previous = await iterations_db.resume_while(
                session, request.run_id, request.path, request.from_run_id
            )
        return ResumeWhileResult(index=index, previous=previous)

    @activity.defn(name=FINISH_COMPOSITE_ACTIVITY)
    async def finish_composite(self, finish: FinishCompositeInput) -> CompositeOutcome:
        """The composite step's outcome: its failure as it is, or its outputs (a foreach's
        computed from its iterations, a subworkflow's read from its child run), recorded in
        its step row (at the top level) or in its iteration's row."""
        if finish.error is not None:
            return CompositeOutcome(error=finish.error)
        composite = finish.composite
        roots = frozenset(composite.roots)
        spec = composite_params(composite.step, roots)
        run_id = composite.run.run_id
        outputs = finish.outputs
        if isinstance(spec, ForeachParams):
            outputs = {}
            if spec.outputs:
                async with self._sessions() as session:
                    found = await iterations_db.outputs_in_order(session, run_id, composite.path)
                context = {**composite.context, "iterations": found}
                # The iterations' outputs are read whole however many there are: the inputs
                # may weigh OUTPUT_WEIGHT_PER_ITERATION more for each (cost grows with them).
                limit = MAX_INPUT_WEIGHT + OUTPUT_WEIGHT_PER_ITERATION * len(found)
                sources = list(spec.outputs.values())
                name = ", ".join(spec.outputs)
                try:
                    evaluation = Evaluation(sources, context, roots | {"iterations"}, limit)
                    for name, source in spec.outputs.items():
                        outputs[name] = evaluation.evaluate(source)
                except ExpressionError as exc:
                    return CompositeOutcome(error=f"outputs.{name}: {exc}")
        elif isinstance(spec, SubworkflowParams) and outputs is None:
            async with self._sessions() as session:
                child = await runs_db.get_run(session, finish.child_run_id or "")
            outputs = child.outputs or {}
        outputs = outputs or {}
        async with self._sessions.begin() as session:
            if composite.into is None:
                now = datetime.now(UTC)
                await runs_db.record_step_states(
                    session,
                    run_id,
                    [
                        StepState(
                            step_id=composite.step.id,
                            status=StepStatus.succeeded,
                            attempt=1,
                            ended_at=now,
                            outputs=outputs,
                        )
                    ],
                )
            else:
                await iterations_db.step_succeeded(
                    session,
                    run_id,
                    composite.into.path,
                    composite.into.index,
                    composite.step.id,
                    1,
                    outputs,
                    finishes=composite.finishes,
                )
        return CompositeOutcome(outputs=outputs)

    @activity.defn(name=START_SUBWORKFLOW_ACTIVITY)
    async def start_subworkflow(self, composite: CompositeInput) -> SubworkflowStart:
        """Create the child run (once: its request id names the parent run and step), admitted
        whatever its workflow's run strategy; the parent starts it as its Temporal child. A
        restart of the parent from `failed` restarts a failed child from its failed step."""
        assert self._runs is not None
        roots = frozenset(composite.roots)
        spec = composite_params(composite.step, roots)
        assert isinstance(spec, SubworkflowParams)
        try:
            params = resolve_values(spec.params, composite.context, roots)
        except ExpressionError as exc:
            raise _invalid(f"params: {exc}") from None
        parent = composite.run
        detail: dict[str, Any] = {
            "parent_run_id": parent.run_id,
            "parent_workflow_id": parent.workflow_id,
            "parent_step": composite.path,
        }
        version = None if spec.version == "active" else int(spec.version)
        # A branch's run calls the workflow of its own branch.
        callee = qualified_id(spec.workflow, branch_of(parent.workflow_id))
        async with self._sessions() as session:
            if parent.reuse_from:
                earlier = await runs_db.find_by_request_id(
                    session, callee, subworkflow_request_id(parent.reuse_from, composite.path)
                )
                if earlier is not None and earlier.status != RunStatus.succeeded:
                    steps = await runs_db.list_steps(session, earlier.run_id)
                    detail |= {
                        "restart_of": earlier.run_id,
                        "from": "failed",
                        "reuse": {
                            s.step_id: s.outputs or {}
                            for s in steps
                            if s.status == StepStatus.succeeded
                        },
                    }
                    version, params = earlier.version, dict(earlier.params)
        request_id = subworkflow_request_id(parent.run_id, composite.path)
        try:
            async with self._sessions.begin() as session:
                run, _ = await self._runs.create_run(
                    session,
                    callee,
                    params,
                    cause=Cause(kind="subworkflow", request_id=request_id, detail=detail),
                    request_id=request_id,
                    version=version,
                    admit_always=True,
                )
                await self._runs.definitions.get(session, run.workflow_id, run.version)
        except MaestroError as exc:
            raise ApplicationError(
                f"cannot start subworkflow {callee!r}: {exc.message}",
                type="SubworkflowInvalid",
                non_retryable=True,
            ) from None
        return SubworkflowStart(run_input=self._runs.run_input(run))
