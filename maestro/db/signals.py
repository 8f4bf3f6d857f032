"""Signals, their names' sequences, trigger registrations, partial joins, matches and waits."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    ARRAY,
    BigInteger,
    ColumnElement,
    String,
    Table,
    Text,
    bindparam,
    delete,
    exists,
    false,
    func,
    literal,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import Select

from maestro.branches import PROD
from maestro.db.direct import DirectStatement, adopt
from maestro.db.tables import (
    Signal,
    SignalMatch,
    SignalName,
    SignalTriggerRow,
    SignalWait,
    TriggerJoin,
    Workflow,
)
from maestro.errors import NotFound
from maestro.triggers import CompiledTrigger


@dataclass(frozen=True)
class ReachedTrigger:
    """What matching reads of a registered trigger that a signal reaches."""

    COLUMNS = ("workflow_id", "trigger_id", "active", "spec", "routes")

    workflow_id: str
    trigger_id: str
    active: bool
    spec: dict[str, Any]
    routes: list[str]


# Statements on the publishing path are built once: SQLAlchemy memoizes a statement object's
# cache key, so executing the same object again skips rebuilding and re-keying it.
_LOCK_FOR_WAITS = (
    insert(SignalName)
    .values(name=bindparam("name"), last_seq=0, has_waits=True)
    .on_conflict_do_update(index_elements=["name"], set_={"has_waits": True})
)
_ALLOCATE_SEQS = (
    insert(SignalName)
    .values(name=bindparam("name"), last_seq=bindparam("count", type_=BigInteger))
    .on_conflict_do_update(
        index_elements=["name"],
        set_={"last_seq": SignalName.last_seq + bindparam("count", type_=BigInteger)},
    )
    .returning(SignalName.last_seq, SignalName.has_waits)
)
_CLEAR_HAS_WAITS = (
    update(SignalName)
    .where(SignalName.name.in_(bindparam("names", expanding=True)))
    .values(has_waits=False)
)
_BY_DEDUPE_KEYS = select(Signal).where(Signal.dedupe_key.in_(bindparam("keys", expanding=True)))
_INSERT_SIGNALS = (
    insert(Signal).on_conflict_do_nothing(index_elements=["dedupe_key"]).returning(Signal)
)
# One signal (most publishes) is one statement: unless its dedupe key is stored already, lock
# its name and take the next `seq` (a CTE), insert the signal with it, and return the name's
# `has_waits` flag beside the row. A stored key inserts nothing and takes no number; a key that
# races in between the check and the insert leaves a gap in the name's `seq`.
_NEXT_SEQ = (
    insert(SignalName)
    .from_select(
        ["name", "last_seq", "has_waits"],
        select(bindparam("b_name", type_=String), literal(1, BigInteger), false()).where(
            ~exists().where(Signal.dedupe_key == bindparam("b_dedupe_key", type_=String))
        ),
    )
    .on_conflict_do_update(index_elements=["name"], set_={"last_seq": SignalName.last_seq + 1})
    .returning(SignalName.last_seq, SignalName.has_waits)
    .cte("next_seq")
)
_TRIGGERS = cast(Table, SignalTriggerRow.__table__)
# The triggers a new signal reaches, as one JSON array of ReachedTrigger objects.
_REACHED_FIELDS: list[ColumnElement[Any]] = [
    x for c in ReachedTrigger.COLUMNS for x in [literal_column(f"'{c}'"), _TRIGGERS.c[c]]
]
_REACHED_JSON = (
    select(
        func.coalesce(func.jsonb_agg(func.jsonb_build_object(*_REACHED_FIELDS)), literal([], JSONB))
    )
    .where(_TRIGGERS.c.routes.overlap(bindparam("b_routes", type_=ARRAY(Text))))
    .scalar_subquery()
    .label("triggers")
)
_SIGNAL_TABLE = cast(Table, Signal.__table__)
_INSERT_ONE_SIGNAL = DirectStatement(
    insert(_SIGNAL_TABLE)
    .from_select(
        [_SIGNAL_TABLE.c[c] for c in ("name", "seq", "params", "payload", "dedupe_key")]
        + [_SIGNAL_TABLE.c[c] for c in ("request_id", "producer", "producer_run_id")]
        + [_SIGNAL_TABLE.c.producer_owners, _SIGNAL_TABLE.c.branch],
        select(
            bindparam("b_name", type_=String),
            _NEXT_SEQ.c.last_seq,
            bindparam("b_params", type_=JSONB),
            # None is SQL NULL (not JSON null), as the bulk path stores it.
            bindparam("b_payload", type_=JSONB(none_as_null=True)),
            bindparam("b_dedupe_key", type_=String),
            bindparam("b_request_id", type_=String),
            bindparam("b_producer", type_=JSONB),
            bindparam("b_producer_run_id", type_=String),
            bindparam("b_producer_owners", type_=ARRAY(String)),
            bindparam("b_branch", type_=String),
        ),
    )
    .on_conflict_do_nothing(index_elements=["dedupe_key"])
    .returning(
        *_SIGNAL_TABLE.c,
        select(_NEXT_SEQ.c.has_waits).scalar_subquery().label("has_waits"),
        _REACHED_JSON,
    )
)


_LOCK_NAME = (
    insert(SignalName)
    .values(name=bindparam("name"), last_seq=0, has_waits=False)
    .on_conflict_do_update(index_elements=["name"], set_={"last_seq": SignalName.last_seq})
)


async def lock_names(session: AsyncSession, names: Sequence[str]) -> None:
    """Take the per-name locks (in a fixed order) before locks that publishing to these names
    would otherwise take after them (see maestro.ends)."""
    for name in sorted(set(names)):
        await session.execute(_LOCK_NAME, {"name": name})


async def lock_names_for_waits(session: AsyncSession, names: Sequence[str]) -> None:
    """Take the per-name locks (in a fixed order, so no deadlock) that order publishing and
    waiting on the same names, and flag the names as waited on."""
    for name in sorted(set(names)):
        await session.execute(_LOCK_FOR_WAITS, {"name": name})


@dataclass
class Allocated:
    """Sequence numbers reserved for one name, and whether steps may be waiting on it."""

    first: int
    has_waits: bool


async def allocate_seqs(session: AsyncSession, counts: dict[str, int]) -> dict[str, Allocated]:
    """Reserve sequence numbers per name (`counts[name]` of them), taking the names' locks in
    the same fixed order as `lock_names_for_waits`, one statement per name."""
    allocated: dict[str, Allocated] = {}
    for name in sorted(counts):
        count = counts[name]
        last, has_waits = (
            await session.execute(_ALLOCATE_SEQS, {"name": name, "count": count})
        ).one()
        allocated[name] = Allocated(last - count + 1, has_waits)
    return allocated


async def clear_has_waits(session: AsyncSession, names: Sequence[str]) -> None:
    """No wait is open on these names (the caller holds their locks)."""
    if names:
        await session.execute(_CLEAR_HAS_WAITS, {"names": sorted(set(names))})


async def find_by_dedupe_keys(session: AsyncSession, keys: Sequence[str]) -> dict[str, Signal]:
    if not keys:
        return {}
    rows = await session.execute(_BY_DEDUPE_KEYS, {"keys": list(keys)})
    return {row.dedupe_key: row for row in rows.scalars()}


async def insert_signals(session: AsyncSession, rows: list[dict[str, Any]]) -> list[Signal]:
    """Insert new signals whose `seq` is allocated; returns the rows that were inserted (not
    those that raced in)."""
    if not rows:
        return []
    return list((await session.execute(_INSERT_SIGNALS, rows)).scalars())


@dataclass
class InsertedSignal:
    signal: Signal
    # Whether steps may wait on its name.
    has_waits: bool
    # The triggers indexed under any of its routes.
    triggers: list[ReachedTrigger]


async def insert_signal(
    session: AsyncSession, row: dict[str, Any], routes: Sequence[str]
) -> InsertedSignal | None:
    """Lock the name, take its next `seq`, insert one signal and look up the triggers its
    `routes` reach, in one statement; None if its dedupe key is stored already."""
    values = {f"b_{k}": v for k, v in row.items()} | {"b_routes": sorted(set(routes))}
    stored = await _INSERT_ONE_SIGNAL.fetchrow(session, values)
    if stored is None:
        return None
    return InsertedSignal(
        adopt(session, Signal(), stored),
        stored["has_waits"],
        [ReachedTrigger(**t) for t in stored["triggers"]],
    )


async def get_signal(session: AsyncSession, signal_id: int) -> Signal:
    signal = await session.get(Signal, signal_id)
    if signal is None:
        raise NotFound(f"signal {signal_id} not found")
    return signal


async def list_signals(
    session: AsyncSession,
    *,
    name: str | None,
    since: datetime | None,
    params: dict[str, Any],
    limit: int,
    before_id: int | None,
    producer_owners: Sequence[str] | None = None,
    branch: str | None = None,
) -> Sequence[Signal]:
    """Newest first; `params` filters by equality (JSONB containment, indexed);
    `producer_owners` (None: all) keeps the signals produced for any of these owners;
    `branch` keeps the signals tagged with it."""
    query = select(Signal)
    if branch is not None:
        query = query.where(Signal.branch == branch)
    if producer_owners is not None:
        query = query.where(Signal.producer_owners.overlap(list(producer_owners)))
    if name:
        query = query.where(Signal.name == name)
    if since:
        query = query.where(Signal.created_at >= since)
    for key, value in params.items():
        # Query strings carry no type: "5" matches the number 5 and the string "5".
        alternatives = [Signal.params.contains({key: value})]
        for kind in (int, float):
            try:
                alternatives.append(Signal.params.contains({key: kind(value)}))
                break
            except (TypeError, ValueError):
                continue
        query = query.where(or_(*alternatives))
    if before_id:
        query = query.where(Signal.id < before_id)
    return (await session.execute(_newest(query, limit))).scalars().all()


def _newest(query: Select[Any], limit: int) -> Select[Any]:
    """The `limit` newest signals `query` selects. Their ids come first, from an index alone
    when one holds them (a name's in `name, id`), then their rows: left to itself, PostgreSQL
    walks every signal newest first until it meets enough of a frequent name, which is slow
    when the name's signals are not the newest."""
    ids = query.with_only_columns(Signal.id).order_by(Signal.id.desc()).limit(limit)
    return select(Signal).where(Signal.id.in_(ids.scalar_subquery())).order_by(Signal.id.desc())


async def latest_matching(
    session: AsyncSession, name: str, equal: dict[str, Any], branch: str, limit: int = 500
) -> Sequence[Signal]:
    """Recent signals of `name` whose params contain `equal`, newest first: outside ones and
    those of `branch`."""
    query = select(Signal).where(
        Signal.name == name, or_(Signal.branch.is_(None), Signal.branch == branch)
    )
    if equal:
        query = query.where(Signal.params.contains(equal))
    return (await session.execute(_newest(query, limit))).scalars().all()


# -- trigger registrations ----------------------------------------------------------------------


async def replace_triggers(
    session: AsyncSession,
    workflow_id: str,
    version: int,
    active: bool,
    triggers: list[CompiledTrigger],
    branch: str = PROD,
) -> None:
    """Make the registered signal triggers those of `version` (of a workflow in `branch`);
    unchanged triggers (same id) keep their partial joins, removed ones lose them."""
    keep = [t.trigger_id for t in triggers]
    await session.execute(
        delete(SignalTriggerRow).where(
            SignalTriggerRow.workflow_id == workflow_id, SignalTriggerRow.trigger_id.not_in(keep)
        )
    )
    for trigger in triggers:
        values = {
            "version": version,
            "position": trigger.position,
            "names": trigger.names,
            "routes": trigger.branch_routes(branch),
            "spec": trigger.model_dump(mode="json"),
            "active": active,
        }
        await session.execute(
            insert(SignalTriggerRow)
            .values(workflow_id=workflow_id, trigger_id=trigger.trigger_id, **values)
            .on_conflict_do_update(index_elements=["workflow_id", "trigger_id"], set_=values)
        )


async def set_triggers_active(session: AsyncSession, workflow_id: str, active: bool) -> None:
    await session.execute(
        update(SignalTriggerRow)
        .where(SignalTriggerRow.workflow_id == workflow_id)
        .values(active=active)
    )


_TRIGGERS_LISTENING = select(SignalTriggerRow).where(
    SignalTriggerRow.names.overlap(bindparam("names", type_=ARRAY(String(200))))
)
_TRIGGERS_REACHED = select(*(_TRIGGERS.c[c] for c in ReachedTrigger.COLUMNS)).where(
    _TRIGGERS.c.routes.overlap(bindparam("routes", type_=ARRAY(Text)))
)
# Routes per lookup: with much longer arrays PostgreSQL scans the table instead of the index
# (measured: 20,000 routes took 340 ms in one query, 43 ms in chunks of 1,000).
ROUTES_PER_QUERY = 1_000


async def triggers_listening_to(
    session: AsyncSession, names: Sequence[str], owners: Sequence[str] | None = None
) -> Sequence[SignalTriggerRow]:
    """Registered triggers that need any of `names` (GIN-indexed array overlap); with
    `owners`, only their workflows'."""
    query = _TRIGGERS_LISTENING
    if owners is not None:
        query = query.join(Workflow, Workflow.id == SignalTriggerRow.workflow_id).where(
            Workflow.owner.in_(list(owners))
        )
    result = await session.execute(query, {"names": sorted(set(names))})
    return result.scalars().all()


async def triggers_reached(session: AsyncSession, routes: Iterable[str]) -> list[ReachedTrigger]:
    """Registered triggers indexed under any of `routes` (`maestro.triggers.signal_routes`;
    GIN-indexed array overlap), each once."""
    ordered = sorted(set(routes))
    found: dict[tuple[str, str], ReachedTrigger] = {}
    for start in range(0, len(ordered), ROUTES_PER_QUERY):
        chunk = ordered[start : start + ROUTES_PER_QUERY]
        for row in await session.execute(_TRIGGERS_REACHED, {"routes": chunk}):
            found[(row.workflow_id, row.trigger_id)] = ReachedTrigger(*row)
    return list(found.values())


async def workflow_triggers(session: AsyncSession, workflow_id: str) -> Sequence[SignalTriggerRow]:
    query = (
        select(SignalTriggerRow)
        .where(SignalTriggerRow.workflow_id == workflow_id)
        .order_by(SignalTriggerRow.position, SignalTriggerRow.trigger_id)
    )
    return (await session.execute(query)).scalars().all()


async def lock_trigger(session: AsyncSession, workflow_id: str, trigger_id: str) -> None:
    """Serialise join updates of one trigger."""
    await session.execute(
        select(SignalTriggerRow.trigger_id)
        .where(
            SignalTriggerRow.workflow_id == workflow_id, SignalTriggerRow.trigger_id == trigger_id
        )
        .with_for_update()
    )


async def get_join(
    session: AsyncSession, workflow_id: str, trigger_id: str, key: str
) -> TriggerJoin | None:
    return await session.get(TriggerJoin, (workflow_id, trigger_id, key))


async def save_join(
    session: AsyncSession, workflow_id: str, trigger_id: str, key: str, slots: dict[str, Any]
) -> None:
    values = {"slots": slots, "updated_at": func.now()}
    await session.execute(
        insert(TriggerJoin)
        .values(workflow_id=workflow_id, trigger_id=trigger_id, join_key=key, **values)
        .on_conflict_do_update(
            index_elements=["workflow_id", "trigger_id", "join_key"], set_=values
        )
    )


async def delete_join(session: AsyncSession, workflow_id: str, trigger_id: str, key: str) -> None:
    await session.execute(
        delete(TriggerJoin).where(
            TriggerJoin.workflow_id == workflow_id,
            TriggerJoin.trigger_id == trigger_id,
            TriggerJoin.join_key == key,
        )
    )


async def pending_joins(session: AsyncSession, workflow_id: str) -> Sequence[TriggerJoin]:
    query = (
        select(TriggerJoin)
        .where(TriggerJoin.workflow_id == workflow_id)
        .order_by(TriggerJoin.updated_at)
    )
    return (await session.execute(query)).scalars().all()


# -- matches -----------------------------------------------------------------------------------


_MATCH_VALUES = {
    "outcome": bindparam("outcome"),
    "run_id": bindparam("run_id"),
    "detail": bindparam("detail"),
    "updated_at": func.now(),
}
_RECORD_MATCH = (
    insert(SignalMatch)
    .values(
        signal_id=bindparam("signal_id"),
        workflow_id=bindparam("workflow_id"),
        trigger_id=bindparam("trigger_id"),
        **_MATCH_VALUES,
    )
    .on_conflict_do_update(
        index_elements=["signal_id", "workflow_id", "trigger_id"], set_=_MATCH_VALUES
    )
)


async def record_matches(session: AsyncSession, matches: list[dict[str, Any]]) -> None:
    """Record (or update) what signals did to triggers."""
    for match in matches:
        await session.execute(
            _RECORD_MATCH,
            {
                "signal_id": match["signal_id"],
                "workflow_id": match["workflow_id"],
                "trigger_id": match["trigger_id"],
                "outcome": match["outcome"],
                "run_id": match.get("run_id"),
                "detail": match.get("detail"),
            },
        )


async def consumed_signal_ids(
    session: AsyncSession, workflow_id: str, trigger_id: str, signal_ids: Sequence[int]
) -> set[int]:
    """Which of these signals this trigger already consumed or holds in a join."""
    if not signal_ids:
        return set()
    query = select(SignalMatch.signal_id).where(
        SignalMatch.workflow_id == workflow_id,
        SignalMatch.trigger_id == trigger_id,
        SignalMatch.signal_id.in_(signal_ids),
    )
    return set((await session.execute(query)).scalars())


async def matches_of_signal(
    session: AsyncSession, signal_id: int, owners: Sequence[str] | None = None
) -> Sequence[SignalMatch]:
    """What a signal did to each trigger it reached; with `owners`, only their workflows'."""
    query = (
        select(SignalMatch)
        .where(SignalMatch.signal_id == signal_id)
        .order_by(SignalMatch.workflow_id, SignalMatch.trigger_id)
    )
    if owners is not None:
        query = query.join(Workflow, Workflow.id == SignalMatch.workflow_id).where(
            Workflow.owner.in_(list(owners))
        )
    return (await session.execute(query)).scalars().all()


async def signals_consumed_by_run(session: AsyncSession, run_id: str) -> Sequence[Signal]:
    query = (
        select(Signal)
        .join(SignalMatch, SignalMatch.signal_id == Signal.id)
        .where(SignalMatch.run_id == run_id, SignalMatch.outcome == "started_run")
        .order_by(Signal.id)
    )
    return (await session.execute(query)).scalars().all()


async def signals_produced_by_run(session: AsyncSession, run_id: str) -> Sequence[Signal]:
    query = select(Signal).where(Signal.producer_run_id == run_id).order_by(Signal.id)
    return (await session.execute(query)).scalars().all()


async def runs_started_by_signal(session: AsyncSession, signal_id: int) -> list[str]:
    query = select(SignalMatch.run_id).where(
        SignalMatch.signal_id == signal_id, SignalMatch.outcome == "started_run"
    )
    return [r for r in (await session.execute(query)).scalars() if r]


# -- waits -------------------------------------------------------------------------------------


async def add_waits(session: AsyncSession, waits: list[dict[str, Any]]) -> None:
    if waits:
        await session.execute(insert(SignalWait).values(waits).on_conflict_do_nothing())


async def get_waits(session: AsyncSession, run_id: str, step_id: str) -> Sequence[SignalWait]:
    query = select(SignalWait).where(SignalWait.run_id == run_id, SignalWait.step_id == step_id)
    return (await session.execute(query.order_by(SignalWait.position))).scalars().all()


_OPEN_WAITS = (
    select(SignalWait)
    .where(
        SignalWait.name.in_(bindparam("names", expanding=True)),
        SignalWait.matched_signal_id.is_(None),
    )
    .order_by(SignalWait.created_at)
    .with_for_update()
)


async def open_waits(session: AsyncSession, names: Sequence[str]) -> Sequence[SignalWait]:
    """Unmatched waits on these names, locked for this transaction."""
    result = await session.execute(_OPEN_WAITS, {"names": sorted(set(names))})
    return result.scalars().all()


async def undelivered_waits(
    session: AsyncSession, older_than: datetime, limit: int
) -> Sequence[SignalWait]:
    query = (
        select(SignalWait)
        .where(
            SignalWait.matched_signal_id.is_not(None),
            SignalWait.delivered_at.is_(None),
            SignalWait.created_at < older_than,
        )
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return (await session.execute(query)).scalars().all()


async def mark_delivered(session: AsyncSession, keys: Sequence[tuple[str, str, int]]) -> None:
    for run_id, step_id, position in keys:
        await session.execute(
            update(SignalWait)
            .where(
                SignalWait.run_id == run_id,
                SignalWait.step_id == step_id,
                SignalWait.position == position,
            )
            .values(delivered_at=func.now())
        )
