"""Signal routes: publish (one or a batch), read the log, explain a signal.

A signal belongs to its producer's owners: a run's or step's signal to its workflow's owner, an
outside signal to the owners of the key that published it. An owner-limited key reads only
its owners' signals, unless it has `signals:read`; it may not publish Maestro's own signals
(`maestro.*`, `model.deployed`), which would pose as another team's runs and models."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import ValidationError

from api.auth import Principal, PrincipalDep, owners_filter, signal_owners_filter
from api.deps import BusDep, SessionDep, SettingsDep
from api.routes.runs import run_out
from api.schemas import (
    BIGINT_MAX,
    BatchIn,
    BatchOut,
    MatchOut,
    PublishOut,
    SignalDetail,
    SignalOut,
    SignalPage,
    Since,
)
from maestro.branches import BRANCH_PATTERN
from maestro.db import signals as signals_db
from maestro.definitions import problems_from_validation
from maestro.errors import Forbidden, InvalidInput, Problem
from maestro.registry import DEPLOYED_SIGNAL
from maestro.settings import Settings
from maestro.signals import MAX_BATCH, Producer, Published, SignalIn

router = APIRouter(prefix="/signals", tags=["signals"])


BranchQuery = Annotated[
    str | None,
    Query(
        pattern=BRANCH_PATTERN,
        description="Publish as a signal of this branch: it reaches only that branch's "
        "workflows (a branch's runs and steps publish so). Without it, the signal comes from "
        "outside and reaches every branch that listens.",
    ),
]


def _producer(principal: Principal, names: list[str], branch: str | None = None) -> Producer:
    """The outside producer a key publishes as; owner-limited keys may not publish Maestro's
    own signal names."""
    if principal.owners:
        for name in names:
            if name.startswith("maestro.") or name == DEPLOYED_SIGNAL:
                raise Forbidden(
                    f"signal {name!r} is one Maestro publishes itself; this key is limited to "
                    f"owners {', '.join(principal.owners)} and may not publish it"
                )
    return Producer(owners=principal.owners, branch=branch)


def publish_out(result: Published, settings: Settings) -> PublishOut:
    return PublishOut(
        signal=SignalOut.model_validate(result.signal),
        duplicate=result.duplicate,
        runs=[run_out(r, settings) for r in result.runs],
    )


@router.post(
    "",
    response_model=PublishOut,
    status_code=201,
    responses={200: {"model": PublishOut, "description": "Duplicate: already published"}},
)
async def publish_signal(
    body: SignalIn,
    response: Response,
    bus: BusDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    branch: BranchQuery = None,
) -> PublishOut:
    """Publish a signal. It is stored, matched against every signal trigger and waiting step,
    and the runs it completes are created, all before this returns; `runs` lists them. The same
    `request_id` (or, without one, the same name and params) again returns the stored signal
    with `duplicate: true` (200) and starts nothing. The signal belongs to the publishing
    key's owners."""
    [result] = await bus.publish([body], _producer(principal, [body.name], branch))
    if result.duplicate:
        response.status_code = 200
    return publish_out(result, settings)


@router.post(
    "/batch",
    response_model=BatchOut,
    status_code=201,
    responses={200: {"model": BatchOut, "description": "Every signal was a duplicate"}},
)
async def publish_batch(
    body: BatchIn,
    response: Response,
    bus: BusDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    branch: BranchQuery = None,
) -> BatchOut:
    """Publish up to 1,000 signals in one transaction, with the same semantics per signal: 201,
    or 200 when every signal was a duplicate (nothing was started). Any invalid signal rejects
    the whole batch (422, locations like `signals.3.params.dt`)."""
    if len(body.signals) > MAX_BATCH:
        raise InvalidInput(
            "too many signals",
            [
                Problem(
                    ("body", "signals"),
                    f"{len(body.signals)} signals; a batch holds at most {MAX_BATCH}",
                    "too_long",
                )
            ],
        )
    signals, problems = [], []
    for i, raw in enumerate(body.signals):
        try:
            signals.append(SignalIn.model_validate(raw))
        except ValidationError as exc:
            problems += problems_from_validation(exc, ("body", "signals", i))
    if problems:
        raise InvalidInput("batch contains invalid signals", problems)
    results = await bus.publish(signals, _producer(principal, [s.name for s in signals], branch))
    if all(r.duplicate for r in results):
        response.status_code = 200
    return BatchOut(results=[publish_out(r, settings) for r in results])


@router.get("", response_model=SignalPage)
async def list_signals(
    request: Request,
    session: SessionDep,
    name: str | None = None,
    since: Since = None,
    branch: Annotated[
        str | None,
        Query(
            pattern=BRANCH_PATTERN,
            description="Only the signals tagged with this branch (published by its runs and "
            "steps, or for it)",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[
        int | None, Query(ge=1, le=BIGINT_MAX, description="`next_cursor` of the previous page")
    ] = None,
) -> SignalPage:
    """The signal log, newest first. Filter by `name`, `since` (ISO time), `branch` and params with
    `param.<key>=<value>` (equality; `5` matches both the number and the string). An
    owner-limited key without `signals:read` sees only its owners' signals."""
    params: dict[str, object] = {}
    for key, value in request.query_params.items():
        if key.startswith("param."):
            params[key.removeprefix("param.")] = value
    rows = await signals_db.list_signals(
        session,
        name=name,
        since=since,
        params=params,
        limit=limit,
        before_id=cursor,
        producer_owners=signal_owners_filter(request),
        branch=branch,
    )
    next_cursor = str(rows[-1].id) if len(rows) == limit else None
    return SignalPage(items=[SignalOut.model_validate(s) for s in rows], next_cursor=next_cursor)


# `:int`: a path that is no signal id (`/signals/batch`) is not this route's, so GET on it is a
# 405 naming POST rather than a 422 about the id.
@router.get("/{signal_id:int}", response_model=SignalDetail)
async def get_signal(
    signal_id: Annotated[int, Path(ge=1, le=BIGINT_MAX)],
    request: Request,
    session: SessionDep,
    bus: BusDep,
    explain: Annotated[
        bool,
        Query(
            description="Also evaluate, without writing anything, every trigger registered "
            "now that listens to the signal's name, those the routing index passes it by "
            "included: `explain` says per trigger whether it would match and why not"
        ),
    ] = False,
) -> SignalDetail:
    """A signal, who produced it, and for every trigger it reached: the run it started or why
    not (condition false, join incomplete, workflow inactive, duplicate run, ...). A trigger
    whose `where` requires a string param the signal does not carry (another upstream's
    `on_finish`, `table: events` for a `users` signal) is not reached and not listed in
    `matches`; `explain=true` lists it too, with the reason. An owner-limited key sees only
    its owners' triggers."""
    signal = await signals_db.get_signal(session, signal_id)
    owners = owners_filter(request)
    matches = await signals_db.matches_of_signal(session, signal_id, owners)
    explained = await bus.explain(session, signal, owners) if explain else None
    return SignalDetail(
        **SignalOut.model_validate(signal).model_dump(),
        matches=[MatchOut.model_validate(m, from_attributes=True) for m in matches],
        explain=explained,
    )
