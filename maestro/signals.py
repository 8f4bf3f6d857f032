"""The signal bus on PostgreSQL: publish signals, match them to triggers and waiting steps,
start the runs they complete — durably and exactly once.

Publishing is one transaction: the signal rows, every trigger match (with partial joins), the
runs those matches create and the waits they release are committed together, before the API
acknowledges. So an acknowledged signal has already been matched and its runs exist; launching
them on Temporal and delivering released waits happens after the commit, and if a process dies
in between, the sweeper (`maestro.sweeper`: interrupted launches, `SignalBus.deliver_pending`)
finishes the job from any worker process. Exactly-once comes from keys, not timing: a signal's
dedupe key is unique, a match is keyed by (signal, trigger), and a signal-started run's request
id is derived from its trigger and signals.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from maestro import metrics
from maestro.branches import PROD, branch_of
from maestro.db import signals as signals_db
from maestro.db import workflows as workflows_db
from maestro.db.runs import set_step_waiting
from maestro.db.signals import ReachedTrigger
from maestro.db.tables import Run, Signal, SignalTriggerRow, SignalWait
from maestro.definitions import (
    SIGNAL_NAME_PATTERN,
    Scalar,
    WorkflowDefinition,
    resolve_run_params,
)
from maestro.errors import ParamsInvalid, WorkflowInactive
from maestro.expressions import ExpressionError
from maestro.runs import RunsService
from maestro.runtime import (
    SIGNAL_MATCHED_SIGNAL,
    Cause,
    MatchedSignal,
    RegisterWaitsInput,
    RegisterWaitsResult,
)
from maestro.triggers import (
    CompiledTrigger,
    branch_problem,
    completion_signal_name,
    equality_filter,
    evaluate_trigger,
    join_key,
    signal_routes,
    trigger_context,
    where_matches,
    where_problems,
)

logger = logging.getLogger(__name__)

MAX_PARAMS = 50
MAX_PARAM_STRING = 1_000
MAX_PAYLOAD_BYTES = 65_536
MAX_BATCH = 1_000


class SignalIn(BaseModel):
    """A signal to publish: a name, flat params (matched on) and a free payload (not indexed)."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(pattern=SIGNAL_NAME_PATTERN)]
    params: dict[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")], Scalar] = Field(
        default_factory=dict, max_length=MAX_PARAMS
    )
    payload: dict[str, Any] | None = None
    request_id: str | None = Field(default=None, min_length=1, max_length=200)

    @field_validator("params", mode="before")
    @classmethod
    def _flat(cls, params: Any) -> Any:
        if isinstance(params, dict):
            for key, value in params.items():
                if isinstance(value, dict | list) or value is None:
                    kind = "null" if value is None else type(value).__name__
                    raise ValueError(
                        f"param {key!r} is {kind}: params are flat strings or "
                        "numbers (put structured data in payload)"
                    )
                if isinstance(value, str) and len(value) > MAX_PARAM_STRING:
                    raise ValueError(f"param {key!r} is longer than {MAX_PARAM_STRING} characters")
        return params

    @field_validator("payload")
    @classmethod
    def _payload_size(cls, payload: dict[str, Any] | None) -> dict[str, Any] | None:
        if payload is not None:
            size = len(json.dumps(payload, separators=(",", ":")))
            if size > MAX_PAYLOAD_BYTES:
                raise ValueError(f"payload is {size} bytes; the limit is {MAX_PAYLOAD_BYTES}")
        return payload

    def dedupe_key(self, branch: str | None = None) -> str:
        """`request_id` when given, else a hash of name and params (and the branch the signal
        is tagged with, if any: the same signal in two branches is two signals)."""
        if self.request_id is not None:
            return f"req:{self.request_id}"
        content: list[Any] = [self.name, self.params] + ([branch] if branch is not None else [])
        canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
        return f"hash:{hashlib.sha256(canonical.encode()).hexdigest()}"


class Producer(BaseModel):
    """Who published a signal: an outside system, a run (completion) or a step (`emits`)."""

    kind: str = "outside"
    workflow_id: str | None = None
    run_id: str | None = None
    step_id: str | None = None
    # An outside signal's owners (the publishing key's; none for an unlimited key), stored in
    # `signals.producer_owners`; None for a run's or step's, whose workflow's owner the
    # database fills in.
    owners: list[str] | None = Field(default=None, exclude=True)
    # The branch the signals are tagged with (`signals.branch`), if not the workflow's.
    branch: str | None = Field(default=None, exclude=True)

    def signal_branch(self) -> str | None:
        """The branch its signals are tagged with: the one given, else the producing
        workflow's (read from its id); None for an outside signal, which every branch gets."""
        if self.branch is not None:
            return self.branch
        return branch_of(self.workflow_id) if self.workflow_id is not None else None


@dataclass
class Published:
    """One input's outcome: its stored signal, whether it was a duplicate, the runs it created."""

    signal: Signal
    duplicate: bool
    runs: list[Run] = field(default_factory=list)


@dataclass
class _Pending:
    """What a publishing transaction leaves to do after its commit."""

    results: list[Published] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)
    waits: list[SignalWait] = field(default_factory=list)


class TriggerExplanation(BaseModel):
    """Whether a signal would match one trigger listening to its name, and why not."""

    workflow_id: str
    trigger_id: str
    kind: str = Field(description="signal or on_finish")
    routed: bool = Field(
        description="Publishing hands the signal to this trigger (it has an outcome in "
        "`matches`); false: the routing index passes it by, as its `where` requires a string "
        "param the signal does not carry, or the signal's branch does not reach the trigger's"
    )
    would_match: bool = Field(
        description="The signal satisfies the trigger now: its `where`, join key, `when` and "
        "mapped params, and the workflow takes triggered runs"
    )
    outcome: str = Field(
        description="What the trigger would do with the signal now: would_start_run, "
        "join_incomplete, condition_false, condition_error, params_invalid, workflow_paused, "
        "workflow_inactive, other_branch (the signal's branch does not reach the workflow's)"
    )
    reasons: list[str] = Field(description="Why it would not start a run (empty if it would)")


_STATE_REASONS = {
    "workflow_paused": "the workflow is paused",
    "workflow_inactive": "the workflow is deactivated",
}


def _explanation(
    row: SignalTriggerRow, routed: bool, state: str | None, outcome: str, reasons: list[str]
) -> TriggerExplanation:
    """A paused or deactivated workflow takes no triggered run, whatever its conditions say
    (as `SignalBus._match` records it)."""
    if state is not None:
        outcome, reasons = state, [_STATE_REASONS[state], *reasons]
    return TriggerExplanation(
        workflow_id=row.workflow_id,
        trigger_id=row.trigger_id,
        kind=row.spec["kind"],
        routed=routed,
        would_match=outcome == "would_start_run",
        outcome=outcome,
        reasons=reasons,
    )


@dataclass
class _Candidate:
    """A trigger whose `where` a signal satisfies, with what explaining the rest needs."""

    row: SignalTriggerRow
    trigger: CompiledTrigger
    definition: WorkflowDefinition
    held: dict[str, dict[str, Any]]
    routed: bool
    state: str | None  # workflow_paused or workflow_inactive, else None


def _explain_candidate(candidate: _Candidate, signal: Signal) -> TriggerExplanation:
    """The rest of `SignalBus.explain` for one trigger: join, `when`, params (CEL within the
    trigger's cost budget). Writes nothing."""
    outcome, reasons = _evaluate_candidate(candidate, signal)
    return _explanation(candidate.row, candidate.routed, candidate.state, outcome, reasons)


def _evaluate_candidate(candidate: _Candidate, signal: Signal) -> tuple[str, list[str]]:
    trigger = candidate.trigger
    members = {signal.name: _signal_view(signal)}
    if len(trigger.conditions) > 1:
        key = join_key(trigger, signal.params)
        if key is None:
            missing = [k for k in trigger.join_on if k not in signal.params]
            return "condition_false", [f"missing join_on params {missing}"]
        members = {**candidate.held, **members}
        if trigger.within is not None:
            horizon = signal.created_at - trigger.within
            members = {
                name: held
                for name, held in members.items()
                if datetime.fromisoformat(held["created_at"]) >= horizon
            }
        waiting = [n for n in trigger.names if n not in members]
        if waiting:
            return "join_incomplete", [f"waiting for {', '.join(waiting)} with join key {key}"]
    try:
        fire, params = evaluate_trigger(trigger, trigger_context(members, signal.name))
    except ExpressionError as exc:
        return "condition_error", [str(exc)]
    if not fire:
        return "condition_false", [f"when {trigger.when!r} is false"]
    try:
        resolve_run_params(candidate.definition, params)
    except ParamsInvalid as exc:
        return "params_invalid", [f"{'.'.join(map(str, p.loc))}: {p.msg}" for p in exc.problems]
    return "would_start_run", []


def _signal_view(signal: Signal) -> dict[str, Any]:
    return {
        "id": signal.id,
        "name": signal.name,
        "params": signal.params,
        "payload": signal.payload,
        "created_at": signal.created_at.isoformat(),
    }


def _matched(wait: SignalWait, signal: Signal) -> MatchedSignal:
    """What RunWorkflow is told when `signal` satisfies a step's wait."""
    return MatchedSignal(
        step_id=wait.step_id,
        position=wait.position,
        signal_id=signal.id,
        name=signal.name,
        params=signal.params,
        payload=signal.payload,
    )


class SignalBus:
    """Publishes signals and links them to triggers and waiting steps."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], runs: RunsService, client: Client
    ) -> None:
        self._sessions = sessions
        self._runs = runs
        self._client = client

    @property
    def runs(self) -> RunsService:
        return self._runs

    # -- publishing ---------------------------------------------------------------------------

    async def publish(
        self, signals: list[SignalIn], producer: Producer | None = None
    ) -> list[Published]:
        """Store, match and dispatch signals in one transaction, then launch what they started."""
        async with self._sessions.begin() as session:
            pending = await self.publish_in(session, signals, producer or Producer())
        await self.after_commit(pending)
        for result in pending.results:
            logger.debug(
                "signal published",
                extra={
                    "signal_id": result.signal.id,
                    "signal": result.signal.name,
                    "duplicate": result.duplicate,
                    "run_ids": [r.run_id for r in result.runs],
                },
            )
        return pending.results

    async def publish_completion_in(self, session: AsyncSession, run: Run) -> _Pending:
        """A run's `maestro.run.<status>` signal (published by maestro.ends), with the run's ids
        and its own scalar params (those that fit a signal's limits)."""
        own = {
            k: v
            for k, v in run.params.items()
            if isinstance(v, int | float | bool)
            or (isinstance(v, str) and len(v) <= MAX_PARAM_STRING)
        }
        params = dict(list(own.items())[: MAX_PARAMS - 4])
        params.update(
            workflow_id=run.workflow_id,
            run_id=run.run_id,
            run_number=run.run_number,
            version=run.version,
        )
        completion = SignalIn(
            name=completion_signal_name(run.status),
            params=params,
            request_id=f"run-end:{run.run_id}",
        )
        producer = Producer(kind="run", workflow_id=run.workflow_id, run_id=run.run_id)
        return await self.publish_in(session, [completion], producer, lookup=False)

    async def after_commit(self, pending: _Pending) -> None:
        """Launch the runs and deliver the waits a committed publish produced; failures are
        left to the sweepers (the database already holds the outcome)."""
        try:
            await self._runs.launch(pending.runs)
        except Exception as exc:  # noqa: BLE001 - recorded; the sweeper retries
            logger.warning(
                "launch after publish failed; the sweeper will retry",
                extra={"error": str(exc), "runs": len(pending.runs)},
            )
        await self._deliver(pending.waits)

    async def publish_in(
        self,
        session: AsyncSession,
        signals: list[SignalIn],
        producer: Producer,
        *,
        lookup: bool = True,
    ) -> _Pending:
        """Publish inside the caller's transaction (a run's end, a step's success, the API).
        A single signal's insert checks its dedupe key itself. A batch looks for stored
        duplicates first, unless `lookup=False`: for keys that repeat only when their producer
        is retried (a step's emits), the insert still refuses a duplicate, which then leaves a
        gap in the name's `seq` instead of costing every publish a query."""
        pending = _Pending()
        branch = producer.signal_branch()
        keys = [s.dedupe_key(branch) for s in signals]
        lookup = lookup and len(signals) > 1
        existing = await signals_db.find_by_dedupe_keys(session, keys) if lookup else {}
        fresh: dict[str, SignalIn] = {}
        for key, signal in zip(keys, signals, strict=True):
            if key not in existing and key not in fresh:
                fresh[key] = signal
        inserted: dict[str, Signal] = {}
        if fresh:
            produced_by = producer.model_dump(exclude_none=True)
            rows = {
                key: {
                    "name": s.name,
                    "params": s.params,
                    "payload": s.payload,
                    "dedupe_key": key,
                    "request_id": s.request_id,
                    "producer": produced_by,
                    "producer_run_id": producer.run_id,
                    "producer_owners": producer.owners,
                    "branch": branch,
                }
                for key, s in fresh.items()
            }
            waited_on, reached = await self._insert(session, list(rows.values()), inserted)
            raced = [k for k in fresh if k not in inserted]
            existing.update(await signals_db.find_by_dedupe_keys(session, raced))
            new_signals = sorted(inserted.values(), key=lambda s: s.id)
            if new_signals:
                await self._dispatch(session, new_signals, waited_on, pending, reached)
        metrics.SIGNALS.labels("new").inc(len(inserted))
        metrics.SIGNALS.labels("duplicate").inc(len(keys) - len(inserted))
        runs_by_signal: dict[int, list[Run]] = {}
        for run in pending.runs:
            for signal_id in run.cause.get("detail", {}).get("signal_ids", []):
                runs_by_signal.setdefault(signal_id, []).append(run)
        seen: set[str] = set()
        for key in keys:
            if key in inserted and key not in seen:
                stored = inserted[key]
                pending.results.append(Published(stored, False, runs_by_signal.get(stored.id, [])))
                seen.add(key)
            else:
                pending.results.append(Published(inserted.get(key) or existing[key], True))
        return pending

    @staticmethod
    async def _insert(
        session: AsyncSession, rows: list[dict[str, Any]], inserted: dict[str, Signal]
    ) -> tuple[list[str], list[ReachedTrigger] | None]:
        """Store new signals (each with the next `seq` of its name) into `inserted`; returns
        the names flagged as waited on, and the triggers the signals reach where the insert
        looked them up. One signal is one statement, its trigger lookup included; a batch
        allocates each name's numbers first (one statement per name), then inserts all rows
        at once."""
        if len(rows) == 1:
            [row] = rows
            stored = await signals_db.insert_signal(
                session, row, signal_routes(row["name"], row["params"], row["branch"])
            )
            if stored is None:
                return [], None
            inserted[stored.signal.dedupe_key] = stored.signal
            return ([row["name"]] if stored.has_waits else []), stored.triggers
        groups: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            groups.setdefault(row["name"], []).append(row)
        allocated = await signals_db.allocate_seqs(
            session, {name: len(group) for name, group in groups.items()}
        )
        numbered = [
            {**row, "seq": allocated[name].first + i}
            for name, group in sorted(groups.items())
            for i, row in enumerate(group)
        ]
        for signal in await signals_db.insert_signals(session, numbered):
            inserted[signal.dedupe_key] = signal
        return sorted(name for name, a in allocated.items() if a.has_waits), None

    async def _dispatch(
        self,
        session: AsyncSession,
        signals: list[Signal],
        waited_on: list[str],
        pending: _Pending,
        reached: list[ReachedTrigger] | None = None,
    ) -> None:
        """Match new signals to the triggers they reach (`maestro.triggers.signal_routes`;
        `reached`, unless they are to be looked up), and to open waits on `waited_on` (the
        names flagged as waited on, whose locks this transaction holds: only those can have
        open waits)."""
        routes = {s.id: set(signal_routes(s.name, s.params, s.branch)) for s in signals}
        triggers = reached
        if triggers is None:
            triggers = await signals_db.triggers_reached(session, set().union(*routes.values()))
        waits = list(await signals_db.open_waits(session, waited_on)) if waited_on else []
        # Names whose waits have all been matched or dropped lose the flag.
        await signals_db.clear_has_waits(session, sorted(set(waited_on) - {w.name for w in waits}))
        for signal in signals:
            for row in triggers:
                if not routes[signal.id].isdisjoint(row.routes):
                    await self._match(session, row, signal, pending)
            for wait in waits:
                if (
                    wait.matched_signal_id is None
                    and wait.name == signal.name
                    and signal.branch in (None, wait.branch)
                    and where_matches(wait.where, signal.params)
                ):
                    wait.matched_signal_id = signal.id
                    pending.waits.append(wait)
        await session.flush()

    async def _match(
        self, session: AsyncSession, row: ReachedTrigger, signal: Signal, pending: _Pending
    ) -> None:
        trigger = CompiledTrigger.model_validate(row.spec)
        base = {"workflow_id": row.workflow_id, "trigger_id": row.trigger_id}

        async def record(
            outcome: str, ids: list[int], run: Run | None = None, detail: str | None = None
        ) -> None:
            metrics.TRIGGER_EVALUATIONS.labels(outcome).inc(len(ids))
            await signals_db.record_matches(
                session,
                [
                    {
                        **base,
                        "signal_id": i,
                        "outcome": outcome,
                        "run_id": run.run_id if run else None,
                        "detail": detail,
                    }
                    for i in ids
                ],
            )

        if not row.active:
            workflow = await workflows_db.get_workflow(session, row.workflow_id)
            if workflow.is_active:
                await record("workflow_paused", [signal.id], detail="the workflow is paused")
            else:
                await record("workflow_inactive", [signal.id], detail="the workflow is deactivated")
            return
        condition = trigger.condition(signal.name)
        if not where_matches(condition.where, signal.params):
            await record(
                "condition_false",
                [signal.id],
                detail=f"where {json.dumps(condition.where)} is not satisfied",
            )
            return
        members: dict[str, dict[str, Any]]
        if len(trigger.conditions) == 1:
            members = {signal.name: _signal_view(signal)}
        else:
            key = join_key(trigger, signal.params)
            if key is None:
                missing = [k for k in trigger.join_on if k not in signal.params]
                await record(
                    "condition_false", [signal.id], detail=f"missing join_on params {missing}"
                )
                return
            await signals_db.lock_trigger(session, row.workflow_id, row.trigger_id)
            join = await signals_db.get_join(session, row.workflow_id, row.trigger_id, key)
            slots: dict[str, dict[str, Any]] = dict(join.slots) if join else {}
            if signal.name in slots:
                await record(
                    "superseded",
                    [slots[signal.name]["id"]],
                    detail=f"replaced by newer signal {signal.id}",
                )
            slots[signal.name] = _signal_view(signal)
            if trigger.within is not None:
                horizon = signal.created_at - trigger.within
                for name, held in list(slots.items()):
                    if datetime.fromisoformat(held["created_at"]) < horizon:
                        await record(
                            "expired", [held["id"]], detail=f"older than within={trigger.within}"
                        )
                        del slots[name]
            if any(name not in slots for name in trigger.names):
                await signals_db.save_join(session, row.workflow_id, row.trigger_id, key, slots)
                waiting = [n for n in trigger.names if n not in slots]
                await record(
                    "join_incomplete",
                    [signal.id],
                    detail=f"waiting for {', '.join(waiting)} with join key {key}",
                )
                return
            await signals_db.delete_join(session, row.workflow_id, row.trigger_id, key)
            members = slots
        ids = sorted(m["id"] for m in members.values())
        try:
            fire, params = evaluate_trigger(trigger, trigger_context(members, signal.name))
        except ExpressionError as exc:  # failed or over the cost limit: never fires
            await record("condition_error", ids, detail=str(exc))
            return
        if not fire:
            await record("condition_false", ids, detail=f"when {trigger.when!r} is false")
            return
        request_id = f"{row.trigger_id}:{'-'.join(map(str, ids))}"
        cause = Cause(
            kind="signal",
            request_id=request_id,
            detail={
                "trigger_id": row.trigger_id,
                "signal_ids": ids,
                "signals": {name: m["id"] for name, m in members.items()},
            },
        )
        try:
            run, created = await self._runs.create_run(
                session,
                row.workflow_id,
                params,
                cause=cause,
                request_id=request_id,
                trigger_id=row.trigger_id,
                # The id holds the id of the signal this transaction stored.
                fresh_request_id=True,
                consumed=ids,
            )
        except ParamsInvalid as exc:
            problems = "; ".join(f"{'.'.join(map(str, p.loc))}: {p.msg}" for p in exc.problems)
            await record("params_invalid", ids, detail=problems)
            return
        except WorkflowInactive as exc:
            await record("workflow_inactive", ids, detail=exc.message)
            return
        if created:  # its matches were recorded with it
            metrics.TRIGGER_EVALUATIONS.labels("started_run").inc(len(ids))
            pending.runs.append(run)
        else:
            await record("duplicate_run", ids, run)

    # -- explaining -------------------------------------------------------------------------

    async def explain(
        self, session: AsyncSession, signal: Signal, owners: list[str] | None = None
    ) -> list[TriggerExplanation]:
        """For every trigger registered now that listens to the signal's name (with `owners`,
        only their workflows'): whether the signal would match it now and why not, routed past
        by the index or not. Reads only; the expressions run in a worker thread, each trigger
        within its cost budget."""
        routes = set(signal_routes(signal.name, signal.params, signal.branch))
        rows = sorted(
            await signals_db.triggers_listening_to(session, [signal.name], owners),
            key=lambda r: (r.workflow_id, r.trigger_id),
        )
        explained: dict[tuple[str, str], TriggerExplanation] = {}
        candidates: list[_Candidate] = []
        for row in rows:
            trigger = CompiledTrigger.model_validate(row.spec)
            routed = not routes.isdisjoint(row.routes)
            state = None
            if not row.active:
                workflow = await workflows_db.get_workflow(session, row.workflow_id)
                state = "workflow_paused" if workflow.is_active else "workflow_inactive"
            elsewhere = branch_problem(trigger, branch_of(row.workflow_id), signal.branch)
            if elsewhere is not None:
                explained[(row.workflow_id, row.trigger_id)] = _explanation(
                    row, routed, state, "other_branch", [elsewhere]
                )
                continue
            problems = where_problems(trigger.condition(signal.name).where, signal.params)
            if problems:
                explained[(row.workflow_id, row.trigger_id)] = _explanation(
                    row, routed, state, "condition_false", problems
                )
                continue
            held: dict[str, dict[str, Any]] = {}
            key = join_key(trigger, signal.params) if len(trigger.conditions) > 1 else None
            if key is not None:
                join = await signals_db.get_join(session, row.workflow_id, row.trigger_id, key)
                held = dict(join.slots) if join else {}
            definition = await self._runs.definitions.get(session, row.workflow_id, row.version)
            candidates.append(_Candidate(row, trigger, definition, held, routed, state))
        if candidates:
            for explanation in await asyncio.to_thread(
                lambda: [_explain_candidate(c, signal) for c in candidates]
            ):
                explained[(explanation.workflow_id, explanation.trigger_id)] = explanation
        return [explained[(r.workflow_id, r.trigger_id)] for r in rows]

    # -- waiting steps ---------------------------------------------------------------------------

    async def register_waits(self, request: RegisterWaitsInput) -> RegisterWaitsResult:
        """Record a step's waits and release those a stored signal already satisfies."""
        matched: list[MatchedSignal] = []
        async with self._sessions.begin() as session:
            run = await session.get(Run, request.run_id)
            branch = branch_of(run.workflow_id) if run is not None else PROD
            await signals_db.lock_names_for_waits(session, [w.name for w in request.waits])
            await signals_db.add_waits(
                session,
                [
                    {
                        "run_id": request.run_id,
                        "step_id": request.step_id,
                        "position": w.position,
                        "name": w.name,
                        "where": w.where,
                        "temporal_workflow_id": request.temporal_workflow_id,
                        "branch": branch,
                    }
                    for w in request.waits
                ],
            )
            for wait in await signals_db.get_waits(session, request.run_id, request.step_id):
                signal = None
                if wait.matched_signal_id is not None:
                    signal = await session.get(Signal, wait.matched_signal_id)
                else:
                    for candidate in await signals_db.latest_matching(
                        session, wait.name, equality_filter(wait.where), wait.branch
                    ):
                        if where_matches(wait.where, candidate.params):
                            signal = candidate
                            break
                    if signal is not None:
                        wait.matched_signal_id = signal.id
                        wait.delivered_at = datetime.now(UTC)
                if signal is not None:
                    matched.append(_matched(wait, signal))
            if len(matched) < len(request.waits):
                await set_step_waiting(session, request.run_id, request.step_id)
        return RegisterWaitsResult(matched=matched)

    async def _deliver(self, waits: list[SignalWait]) -> None:
        delivered = []
        for wait in waits:
            async with self._sessions() as session:
                signal = await session.get(Signal, wait.matched_signal_id)
            assert signal is not None  # a matched wait's signal is stored for good
            message = _matched(wait, signal)
            try:
                await self._client.get_workflow_handle(wait.temporal_workflow_id).signal(
                    SIGNAL_MATCHED_SIGNAL, message
                )
            except RPCError as exc:
                if exc.status != RPCStatusCode.NOT_FOUND:
                    logger.warning(
                        "delivering a wait failed; the sweeper will retry",
                        extra={"run_id": wait.run_id, "error": str(exc)},
                    )
                    continue
            delivered.append((wait.run_id, wait.step_id, wait.position))
        if delivered:
            async with self._sessions.begin() as session:
                await signals_db.mark_delivered(session, delivered)

    async def deliver_pending(
        self, older_than: timedelta = timedelta(seconds=5), limit: int = 200
    ) -> int:
        """Deliver released waits whose delivery was interrupted (any process may run this)."""
        cutoff = datetime.now(UTC) - older_than
        async with self._sessions() as session:
            waits = list(await signals_db.undelivered_waits(session, cutoff, limit))
        await self._deliver(waits)
        return len(waits)
