"""Local runs: a workflow carried in this process by the worker's own step executors and
RunWorkflow's scheduling rules (`pending_steps`, `when_holds`, the steps' retry policies and
failure modes, foreach, while and subworkflow steps), with no PostgreSQL, Temporal server or
key. Records (model versions, stages, artifacts) stay in memory; work directories and
artifacts go under a local directory; signals are listed, never delivered."""

from __future__ import annotations

import asyncio
import os
import re
import traceback
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from temporalio.exceptions import ApplicationError

import maestro
from maestro.artifacts import LocalArtifactStore, StoredArtifact
from maestro.context import StepContext
from maestro.dag import topological_order
from maestro.definitions import (
    COMPOSITE_TYPES,
    FailureMode,
    ForeachFailureMode,
    ForeachParams,
    Step,
    SubworkflowParams,
    WhileParams,
    WorkflowDefinition,
    composite_params,
    resolve_run_params,
)
from maestro.errors import NotFound, ParamsInvalid
from maestro.expressions import RUN_ROOTS, ExpressionError, evaluate, resolve_values
from maestro.local import EmittedSignal, IterationOutcome, LocalRun, StepOutcome
from maestro.outbound import Guard
from maestro.runtime import (
    DEFAULT_STEP_TIMEOUT,
    RunStatus,
    StepInput,
    StepResult,
    StepStatus,
    run_variables,
)
from maestro.settings import OutboundSettings, WorkerSettings
from maestro.steps import TrainParams, secret_references
from workers.activities import emitted_signals, step_executor, step_failure
from workers.composite_activities import foreach_items
from workers.executors.services import ModelVersionInfo, Services
from workers.workflow_common import Decision, cancel_all, carry_steps, run_end, step_decisions

# Step statuses that fail an iteration (as workers.composite counts them).
_FAILING = frozenset({StepStatus.failed, StepStatus.timed_out, StepStatus.stopped})
# Frames of these directories are Maestro's or the event loop's, not the step's code.
_OWN_CODE = tuple(
    str(Path(p).resolve()) + os.sep
    for p in (
        Path(maestro.__file__).parent,
        Path(__file__).parent,
        Path(asyncio.__file__).parent,
        Path(traceback.__file__).parent / "concurrent",
        Path(traceback.__file__).parent / "threading.py",
    )
)
Reporter = Callable[[str, StepOutcome], None]


@dataclass
class _LocalVersion:
    info: ModelVersionInfo
    key: tuple[str, str]
    stage: str | None = None


@dataclass(kw_only=True)
class LocalServices(Services):
    """The records of a local run, in memory: a model registry that starts empty (so
    `better_than` finds no champion), artifacts recorded nowhere, `model.deployed` listed."""

    models: dict[str, list[_LocalVersion]] = field(default_factory=dict)
    # By run: the signals its steps would publish.
    signals: dict[str, list[EmittedSignal]] = field(default_factory=dict)

    async def record_artifact(self, ctx: StepContext, name: str, artifact: StoredArtifact) -> None:
        return None

    async def register_model_version(
        self, ctx: StepContext, spec: TrainParams, artifact_uri: str, metrics: dict[str, float]
    ) -> int:
        versions = self.models.setdefault(spec.model_name, [])
        key = (ctx.run_id, ctx.step_id)
        number = next((v.info.version for v in versions if v.key == key), len(versions) + 1)
        entry = _LocalVersion(ModelVersionInfo(number, artifact_uri, dict(metrics)), key)
        versions[number - 1 : number] = [entry]
        return number

    def _version(self, model_name: str, version: int) -> _LocalVersion:
        versions = self.models.get(model_name, [])
        if not 1 <= version <= len(versions):
            raise NotFound(f"version {version} of model {model_name!r} not found")
        return versions[version - 1]

    async def model_versions(
        self, model_name: str, version: int, champion_stage: str | None
    ) -> tuple[ModelVersionInfo, ModelVersionInfo | None]:
        candidate = self._version(model_name, version).info
        holders = [
            v.info
            for v in self.models.get(model_name, [])
            if champion_stage is not None and v.stage == champion_stage
        ]
        return candidate, holders[0] if holders else None

    async def merge_model_metrics(
        self, model_name: str, version: int, metrics: dict[str, float]
    ) -> None:
        self._version(model_name, version).info.metrics.update(metrics)

    async def promote_model(
        self, ctx: StepContext, model_name: str, version: int, stage: str
    ) -> tuple[int | None, str]:
        target = self._version(model_name, version)
        previous = None
        for other in self.models[model_name]:
            if other.stage == stage:
                previous = other.info.version
                if other is not target:
                    other.stage = "archived"
        target.stage = stage
        self.signals.setdefault(ctx.run_id, []).append(
            EmittedSignal(
                step_id=ctx.step_id,
                name="model.deployed",
                params={
                    "model": model_name,
                    "version": version,
                    "stage": stage,
                    "previous_version": previous or 0,
                    "run_id": ctx.run_id,
                    "artifact_uri": target.info.artifact_uri,
                },
            )
        )
        return previous, target.info.artifact_uri


class _StepFailed(Exception):
    """A step ended failed (or timed out) with this message."""

    def __init__(
        self, message: str, status: StepStatus = StepStatus.failed, trace: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.trace = trace


class _FailFast(Exception):
    """A `fail_immediately` step failed: the run stops now."""


def user_traceback(exc: BaseException) -> str | None:
    """The traceback of an exception from the step's own code, without Maestro's frames and
    the event loop's; None when no frame is the step's (Maestro itself failed the step)."""
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if not str(Path(frame.filename).resolve()).startswith(_OWN_CODE)
    ]
    if not frames:
        return None
    lines = ["Traceback (most recent call last):\n"]
    lines += traceback.format_list(frames)
    lines += traceback.format_exception_only(exc)
    return "".join(lines)


def _secret_env(name: str) -> str:
    return "MAESTRO_SECRET_" + re.sub(r"[^A-Za-z0-9]", "_", name).upper()


class LocalRunner:
    """Runs workflows in this process. `workflows`: those a subworkflow step may call (the
    target's); `root`: where work directories and artifacts go; `backoff`: a factor on the
    retry policies' delays (1: as deployed, 0: retry at once)."""

    def __init__(
        self,
        root: Path,
        workflows: Mapping[str, WorkflowDefinition] | None = None,
        *,
        backoff: float = 1.0,
        report: Reporter | None = None,
        policy: WorkerSettings | None = None,
    ) -> None:
        self.root = root.resolve()
        self.workflows = dict(workflows or {})
        self.backoff = backoff
        self.report = report or (lambda name, outcome: None)
        self.max_items = (policy or WorkerSettings()).max_foreach_items
        # A developer's machine: its own services (on loopback, say) are fair targets.
        outbound = OutboundSettings(allowed_private_networks=["0.0.0.0/0", "::/0"])
        self.services = LocalServices(
            artifacts=LocalArtifactStore(self.root / "artifacts"), guard=Guard(outbound)
        )

    async def run(
        self,
        definition: WorkflowDefinition,
        params: dict[str, Any] | None = None,
        *,
        _callers: tuple[str, ...] = (),
    ) -> LocalRun:
        """Run the workflow to its end (ParamsInvalid when the params do not fit)."""
        run = self.new_run(definition, resolve_run_params(definition, params or {}))
        return await self.carry(run, definition, _callers)

    async def carry(
        self, run: LocalRun, definition: WorkflowDefinition, callers: tuple[str, ...] = ()
    ) -> LocalRun:
        """Carry a new run to its end: its status, error and steps' outcomes."""
        dag = _Dag(self, run, definition.steps, callers=(*callers, definition.id))
        timeout = definition.timeout.total_seconds() if definition.timeout else None
        try:
            async with asyncio.timeout(timeout):
                await dag.drive()
            run.status, run.error = run_end(run.steps.values())
        except _FailFast:
            run.status = RunStatus.failed
        except TimeoutError:
            run.status = RunStatus.timed_out
            run.error = f"run exceeded its timeout of {definition.timeout}"
        for outcome in run.steps.values():
            if not outcome.status.is_terminal:
                dag.set(outcome, StepStatus.stopped, error="run ended before this step")
        await dag.background()
        run.signals = self.services.signals.pop(run.run_id, [])
        return run

    async def run_step(
        self,
        definition: WorkflowDefinition,
        step_id: str,
        params: dict[str, Any] | None = None,
        upstream: Mapping[str, dict[str, Any]] | None = None,
    ) -> StepOutcome:
        """Run one step of the workflow as if its upstream steps had succeeded with
        `upstream`'s outputs (none given: no outputs); its `when` still decides."""
        step = next((s for s in definition.steps if s.id == step_id), None)
        if step is None:
            known = ", ".join(s.id for s in definition.steps)
            raise NotFound(f"no step {step_id!r} in workflow {definition.id!r} ({known})")
        run = self.new_run(definition, resolve_run_params(definition, params or {}))
        given = {d: (upstream or {}).get(d, {}) for d in step.depends_on}
        dag = _Dag(self, run, [step], callers=(definition.id,), given=given)
        try:
            await dag.drive()
        except _FailFast:
            pass
        await dag.background()
        self.services.signals.pop(run.run_id, None)
        return run.steps[step_id]

    def new_run(self, definition: WorkflowDefinition, params: dict[str, Any]) -> LocalRun:
        return LocalRun(
            run_id=f"local-{uuid.uuid4().hex[:12]}",
            workflow_id=definition.id,
            params=params,
            root=self.root,
        )

    async def attempts(self, dag: _Dag, step: Step, params: dict[str, Any]) -> StepResult:
        """Attempts of a leaf step under its retry policy, each under the step's timeout, as
        Temporal makes them of the step's activity; its result, or _StepFailed."""
        policy = step.retry
        polls = step.type == "http" and bool(step.params.get("poll"))
        outcome = dag.outcomes[step.id]
        timeout = (step.timeout or DEFAULT_STEP_TIMEOUT).total_seconds()
        previous: Any = None
        attempt = 0
        while True:
            attempt += 1
            outcome.attempts = attempt
            latest = [previous]
            status, trace, delay = StepStatus.failed, None, None
            try:
                async with asyncio.timeout(timeout) as limit:
                    return await self._attempt(dag, step, params, attempt, previous, latest.append)
            except TimeoutError as exc:
                if not limit.expired():
                    message, retryable = step_failure(exc).message, True
                    trace = user_traceback(exc)
                else:
                    message, retryable = "timed out (start_to_close)", True
                    status = StepStatus.timed_out
            except ApplicationError as exc:
                message, trace = exc.message, user_traceback(exc)
                retryable = (
                    not exc.non_retryable and exc.type not in policy.non_retryable_error_types
                )
                delay = exc.next_retry_delay
            except Exception as exc:  # noqa: BLE001 - the step's own failure, as the activity's
                failure = step_failure(exc)
                message, trace = failure.message, user_traceback(exc)
                retryable = failure.type not in policy.non_retryable_error_types
            previous = latest[-1]
            last = not polls and attempt >= policy.max_attempts
            if not retryable or last:
                raise _StepFailed(message, status, trace)
            delay = delay or min(
                policy.initial_backoff * policy.backoff_coefficient ** (attempt - 1),
                policy.maximum_backoff or policy.initial_backoff * 100,
            )
            await asyncio.sleep(delay.total_seconds() * self.backoff)

    async def _attempt(
        self,
        dag: _Dag,
        step: Step,
        params: dict[str, Any],
        attempt: int,
        previous: Any,
        report: Callable[[Any], None],
    ) -> StepResult:
        """One attempt, as the worker's run_step activity makes it."""
        executor, spec = step_executor(step, params)
        run = dag.run
        name = dag.name(step.id)
        context = dag.context()
        work_dir = self.root / "work" / run.run_id
        ctx = StepContext(
            run_id=run.run_id,
            workflow_id=run.workflow_id,
            run_number=1,
            step_id=name,
            attempt=attempt,
            params=run.params,
            args={},
            upstream={d: context["steps"][d]["outputs"] for d in step.depends_on},
            _work_dir=work_dir,
            previous_progress=previous,
            _artifact_dir=work_dir / name / "artifacts",
            _report=report,
            max_attempts=step.retry.max_attempts,
        )
        references = secret_references(spec)
        if references:
            missing = [n for _, n in references if _secret_env(n) not in os.environ]
            if missing:
                raise ApplicationError(
                    f"step {step.id!r} cannot have its secrets: a local run reads secret "
                    f"{missing[0]!r} from ${_secret_env(missing[0])}, which is not set",
                    type="SecretUnavailable",
                    non_retryable=True,
                )
            ctx.secrets = {n: os.environ[_secret_env(n)] for _, n in references}
        result = await executor(ctx, spec, self.services)
        if dag.prefix is None and step.emits:
            step_input = StepInput(
                run_id=run.run_id,
                workflow_id=run.workflow_id,
                run_number=1,
                version=1,
                step=step,
                params=params,
                run_params=run.params,
                upstream=ctx.upstream,
                signals={},
            )
            self.services.signals.setdefault(run.run_id, []).extend(
                EmittedSignal(step_id=step.id, name=s.name, params=s.params)
                for s in emitted_signals(step_input, result)
            )
        return result


class _Dag:
    """The steps of a run, or of one iteration of a foreach or while step, carried to their
    end as RunWorkflow (or workers.composite's _Iteration) carries them."""

    def __init__(
        self,
        runner: LocalRunner,
        run: LocalRun,
        steps: list[Step],
        *,
        callers: tuple[str, ...],
        given: Mapping[str, dict[str, Any]] | None = None,
        prefix: str | None = None,
        roots: frozenset[str] = RUN_ROOTS,
        outer: dict[str, Any] | None = None,
        variables: dict[str, Any] | None = None,
    ) -> None:
        self.runner = runner
        self.run = run
        self.steps = {s.id: s for s in steps}
        self.callers = callers
        self.prefix = prefix
        self.roots = roots
        self.outer = outer or {}
        self.variables = variables or {}
        self.order = topological_order({s.id: [] if given else s.depends_on for s in steps})
        self.outcomes: dict[str, StepOutcome] = {
            sid: StepOutcome(sid, StepStatus.succeeded, outputs)
            for sid, outputs in (given or {}).items()
        }
        for sid in self.order:
            self.outcomes[sid] = StepOutcome(sid)
        if prefix is None:
            run.steps.update({sid: self.outcomes[sid] for sid in self.order})
        self.started_at = datetime.now(UTC)
        self._children: list[asyncio.Task[LocalRun]] = []

    def name(self, step_id: str) -> str:
        """The step's name in its run: `train`, or `sweep[2].train` inside an iteration."""
        return step_id if self.prefix is None else f"{self.prefix}.{step_id}"

    def context(self) -> dict[str, Any]:
        """What the steps' expressions see (RunWorkflow's context, or an iteration's)."""
        steps = {
            sid: {"outputs": o.outputs or {}, "status": o.status.value}
            for sid, o in self.outcomes.items()
        }
        if self.prefix is not None:
            return {
                **self.outer,
                "steps": {**self.outer.get("steps", {}), **steps},
                **self.variables,
            }
        run = self.run
        return {
            "params": run.params,
            "steps": steps,
            "run": run_variables(run.run_id, 1, run.workflow_id, 1, self.started_at),
            "signals": {},
        }

    def set(
        self,
        outcome: StepOutcome,
        status: StepStatus,
        *,
        error: str | None = None,
        outputs: dict[str, Any] | None = None,
        trace: str | None = None,
    ) -> None:
        outcome.status, outcome.error, outcome.traceback = status, error, trace
        if outputs is not None:
            outcome.outputs = outputs
        if status.is_terminal:
            self.runner.report(self.name(outcome.step_id), outcome)

    async def drive(self) -> None:
        """Start every step whose dependencies are done, until nothing is left to run."""
        running: dict[str, asyncio.Task[StepResult]] = {}
        try:
            await carry_steps(running, self._schedule, self._settle, asyncio.wait)
        finally:
            for step_id in running:
                self.set(self.outcomes[step_id], StepStatus.stopped, error="cancelled")

    async def iteration(self) -> tuple[str, str | None, dict[str, dict[str, Any]]]:
        """Carry one iteration's body: (its status, its first failure, its steps' outputs)."""
        await self.drive()
        bad = [o for o in self.outcomes.values() if o.status in _FAILING]
        error = f"step {bad[0].step_id}: {bad[0].error}" if bad else None
        outputs = {
            sid: o.outputs for sid, o in self.outcomes.items() if o.status is StepStatus.succeeded
        }
        return ("failed" if bad else "succeeded"), error, outputs

    async def background(self) -> None:
        """Wait for the subworkflow runs started without waiting for them."""
        if self._children:
            await asyncio.wait(self._children)

    def _schedule(self, running: dict[str, asyncio.Task[StepResult]]) -> None:
        status = lambda sid: self.outcomes[sid].status  # noqa: E731
        for step, decision, why in step_decisions(
            self.order, self.steps, status, self.context, self.roots
        ):
            if decision is Decision.fail:
                self._failed(step, why or "")
            elif decision is Decision.start:
                self.outcomes[step.id].status = StepStatus.running
                running[step.id] = asyncio.create_task(self._execute(step))
            else:
                self.set(self.outcomes[step.id], StepStatus.skipped, error=why)

    async def _execute(self, step: Step) -> StepResult:
        # Nothing delivers signals to a local run: a step's waits are released at once.
        if step.type in COMPOSITE_TYPES:
            return await self._composite(step)
        try:
            params = resolve_values(step.params, self.context(), self.roots)
        except ExpressionError as exc:
            raise _StepFailed(f"expression error: {exc}") from None
        return await self.runner.attempts(self, step, params)

    def _settle(self, step_id: str, task: asyncio.Task[StepResult]) -> None:
        step = self.steps[step_id]
        try:
            result = task.result()
        except asyncio.CancelledError:
            self.set(self.outcomes[step_id], StepStatus.stopped, error="cancelled")
            return
        except _StepFailed as exc:
            self._failed(step, exc.message, exc.status, exc.trace)
            return
        self.set(self.outcomes[step_id], StepStatus.succeeded, outputs=result.outputs)

    def _failed(
        self,
        step: Step,
        error: str,
        status: StepStatus = StepStatus.failed,
        trace: str | None = None,
    ) -> None:
        outcome = self.outcomes[step.id]
        if step.failure_mode is FailureMode.ignore_failure:
            self.set(outcome, StepStatus.completed_with_error, error=error, outputs={}, trace=trace)
            return
        if self.prefix is not None:
            status = StepStatus.failed  # an iteration's steps fail, time-outs included
        self.set(outcome, status, error=error, trace=trace)
        if self.prefix is None and step.failure_mode is FailureMode.fail_immediately:
            self.run.error = f"step {step.id} {status.value}: {error}"
            raise _FailFast()

    # -- composite steps ------------------------------------------------------------------

    async def _composite(self, step: Step) -> StepResult:
        spec = composite_params(step, self.roots)
        context = self.context()
        self.outcomes[step.id].attempts = 1
        if isinstance(spec, ForeachParams):
            outputs = await self._foreach(step, spec, context)
        elif isinstance(spec, WhileParams):
            outputs = await self._while(step, spec, context)
        else:
            assert isinstance(spec, SubworkflowParams)
            outputs = await self._subworkflow(spec, context)
        return StepResult(outputs=outputs)

    def _body(
        self, step: Step, steps: list[Step], roots: frozenset[str], index: int, variables: dict
    ) -> _Dag:
        return _Dag(
            self.runner,
            self.run,
            steps,
            callers=self.callers,
            prefix=f"{self.name(step.id)}[{index}]",
            roots=roots,
            outer=self.context(),
            variables=variables,
        )

    async def _foreach(
        self, step: Step, spec: ForeachParams, context: dict[str, Any]
    ) -> dict[str, Any]:
        try:
            items = foreach_items(spec.items, context, self.roots, self.runner.max_items)
        except ExpressionError as exc:
            raise _StepFailed(f"items: {exc}") from None
        except ApplicationError as exc:
            raise _StepFailed(exc.message) from None
        body_roots = spec.body_roots(self.roots)
        ends = [IterationOutcome(index=i, status="pending") for i in range(len(items))]
        self.outcomes[step.id].iterations = ends
        found: list[Any] = [None] * len(items)
        first_error: str | None = None
        todo = list(range(len(items)))
        running: dict[asyncio.Task[tuple[str, str | None, dict]], int] = {}
        stop = False
        try:
            while (todo and not stop) or running:
                while todo and not stop and len(running) < spec.max_concurrency:
                    index = todo.pop(0)
                    variables = {
                        "item": items[index],
                        spec.as_: items[index],
                        "iteration": {"index": index},
                    }
                    body = self._body(step, spec.steps, body_roots, index, variables)
                    ends[index].steps = body.outcomes
                    running[asyncio.create_task(body.iteration())] = index
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    index = running.pop(task)
                    end = ends[index]
                    if task.cancelled():
                        end.status, end.error = "stopped", "stopped: another iteration failed"
                        continue
                    end.status, end.error, produced = task.result()
                    if end.status == "succeeded":
                        found[index] = produced
                    elif not stop:
                        first_error = first_error or f"iteration {index}: {end.error}"
                        if spec.failure_mode is ForeachFailureMode.fail_fast:
                            stop = True
                            for other in running:
                                other.cancel()
        except BaseException:
            await cancel_all(running, asyncio.wait)
            raise
        for index in todo:
            ends[index].status, ends[index].error = "stopped", "not run: another iteration failed"
        failed = sum(1 for e in ends if e.status == "failed")
        if failed and spec.failure_mode is not ForeachFailureMode.ignore_failures:
            raise _StepFailed(
                f"{failed} of {len(items)} iterations failed ({spec.failure_mode.value}); "
                f"first: {first_error}"
            )
        outputs: dict[str, Any] = {}
        scope = {**context, "iterations": found}
        for name, source in spec.outputs.items():
            try:
                outputs[name] = evaluate(source, scope, self.roots | {"iterations"})
            except ExpressionError as exc:
                raise _StepFailed(f"outputs.{name}: {exc}") from None
        return outputs

    async def _while(self, step: Step, spec: WhileParams, context: dict[str, Any]) -> dict:
        body_roots = spec.body_roots(self.roots)
        ends = self.outcomes[step.id].iterations
        index = 0
        previous: dict[str, Any] = {}
        while True:
            variables = {"iteration": {"index": index}, "previous": previous}
            try:
                go = evaluate(spec.condition, {**context, **variables}, body_roots)
                if not isinstance(go, bool):
                    raise ExpressionError(f"`condition` must be true or false, got {go!r}")
            except ExpressionError as exc:
                raise _StepFailed(f"condition: {exc}") from None
            if not go:
                return {"iterations": index, **previous}
            if index >= spec.max_iterations:
                raise _StepFailed(
                    f"condition still true after max_iterations ({spec.max_iterations})"
                )
            body = self._body(step, spec.steps, body_roots, index, variables)
            end = IterationOutcome(index=index, status="running", steps=body.outcomes)
            ends.append(end)
            end.status, end.error, outputs = await body.iteration()
            if end.status != "succeeded":
                raise _StepFailed(f"iteration {index}: {end.error}")
            previous = outputs
            index += 1

    async def _subworkflow(self, spec: SubworkflowParams, context: dict[str, Any]) -> dict:
        callee = self.runner.workflows.get(spec.workflow)
        if callee is None:
            held = ", ".join(sorted(self.runner.workflows)) or "none"
            raise _StepFailed(
                f"cannot start subworkflow {spec.workflow!r}: a local run calls only the "
                f"workflows of its own target (it holds {held})"
            )
        if spec.workflow in self.callers:
            chain = " -> ".join((*self.callers, spec.workflow))
            raise _StepFailed(f"cannot start subworkflow {spec.workflow!r}: a cycle ({chain})")
        try:
            params = resolve_values(spec.params, context, self.roots)
            resolve_run_params(callee, params)
        except ExpressionError as exc:
            raise _StepFailed(f"params: {exc}") from None
        except ParamsInvalid as exc:
            reasons = "; ".join(p.msg for p in exc.problems)
            raise _StepFailed(f"cannot start subworkflow {spec.workflow!r}: {reasons}") from None
        run = self.runner.new_run(callee, resolve_run_params(callee, params))
        child = asyncio.create_task(self.runner.carry(run, callee, self.callers))
        if not spec.wait:
            self._children.append(child)
            return {"run_id": run.run_id}
        done = await child
        if done.status is not RunStatus.succeeded:
            raise _StepFailed(
                f"subworkflow run {done.run_id} run {done.status.value}: {done.error}"
            )
        return done.outputs
