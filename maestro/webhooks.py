"""Outbound webhooks: owner-scoped subscriptions, signed payloads, and the dispatcher that
delivers the outbox (maestro.outbox) durably, in order per webhook, off the run path.

Delivery: each worker process runs a `Dispatcher`. It claims webhooks whose oldest pending
delivery is due (`FOR UPDATE SKIP LOCKED`, then a lease on the webhook row, so one dispatcher at
a time drains one webhook's queue, and several processes share the webhooks) and delivers that
queue in event order, one request at a time, until a delivery fails: the failed one is retried
with exponential backoff (`retry_initial_seconds` doubling up to `retry_max_seconds`), and the
ones after it wait behind it. A delivery still failing `retry_for_seconds` (24 h) after it was
recorded becomes `dead` and the queue moves on. At-least-once: a dispatcher that dies after a
receiver answered but before recording it delivers that event again (same event id).

Each request carries `X-Maestro-Event-Id` (receivers deduplicate with it), `X-Maestro-Event`,
`X-Maestro-Timestamp` (Unix seconds) and `X-Maestro-Signature: v1=<hex>`, the HMAC-SHA256 of
`<timestamp>.<body>` with the webhook's secret (after a rotation, one `v1=` per valid secret).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import re
import secrets as token_source
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from maestro import metrics
from maestro.db.tables import OutboxEvent, Webhook, WebhookAttempt, WebhookDelivery
from maestro.definitions import STORED_WORKFLOW_ID_PATTERN
from maestro.durations import Duration
from maestro.errors import InvalidInput, NotFound, Problem
from maestro.keys import check_owner
from maestro.outbound import DestinationRefused, Guard
from maestro.outbox import EVENT_TYPES
from maestro.secrets import SecretBox
from maestro.settings import OutboundSettings, WebhookSettings

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Maestro-Signature"
EventType = Literal[EVENT_TYPES]  # type: ignore[valid-type]


class WebhookIn(BaseModel):
    """A webhook to create (JSON, or YAML with `Content-Type: application/yaml`)."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=2000, description="Where events are POSTed (http or https)")
    events: list[EventType] = Field(min_length=1, max_length=len(EVENT_TYPES))
    workflows: list[str] | None = Field(
        default=None,
        max_length=100,
        description="Only these workflows' events (default: every workflow of the owner)",
    )
    format: Literal["json", "slack"] = Field(
        default="json", description="`slack`: Slack's incoming-webhook shape (text and blocks)"
    )
    owner: str = Field(
        default="",
        max_length=200,
        description="Whose workflows' events it receives (an owner-limited key: one of its owners)",
    )
    description: str = Field(default="", max_length=500)

    @field_validator("workflows")
    @classmethod
    def _workflow_ids(cls, ids: list[str] | None) -> list[str] | None:
        for workflow_id in ids or []:
            if not re.match(STORED_WORKFLOW_ID_PATTERN, workflow_id):
                raise ValueError(f"{workflow_id!r} is not a workflow id")
        return ids


class RotateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grace: Duration = Field(
        default=timedelta(hours=24),
        description="How long the former secret keeps signing deliveries too",
    )

    @field_validator("grace")
    @classmethod
    def _grace_bounded(cls, grace: timedelta) -> timedelta:
        if grace > timedelta(days=30):
            raise ValueError("grace must be at most 30 days")
        return grace


# -- signing and payloads --------------------------------------------------------------------


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of `<timestamp>.<body>` with `secret`."""
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def verify(secret: str, timestamp: str, body: bytes, header: str) -> bool:
    """Whether a `X-Maestro-Signature` header holds a valid signature (for receivers)."""
    expected = sign(secret, int(timestamp), body)
    return any(
        hmac.compare_digest(expected, part.strip().removeprefix("v1="))
        for part in header.split(",")
        if part.strip().startswith("v1=")
    )


def event_body(event: OutboxEvent | _Event) -> dict[str, Any]:
    """The `json` format: the event as Maestro records it."""
    return {
        "id": event.event_id,
        "type": event.type,
        "created_at": event.created_at.isoformat(),
        "owner": event.owner,
        "workflow_id": event.workflow_id,
        "data": event.data,
    }


_ICONS = {
    "run.started": ":arrow_forward:",
    "run.succeeded": ":white_check_mark:",
    "run.failed": ":red_circle:",
    "run.timed_out": ":hourglass:",
    "run.stopped": ":black_square_for_stop:",
    "step.failed": ":x:",
    "step.waiting_for_signal": ":pause_button:",
    "sla.missed": ":alarm_clock:",
    "freshness.missed": ":warning:",
    "schedule.missed": ":calendar:",
    "model.stage_changed": ":rocket:",
}


def _mrkdwn(value: Any) -> str:
    """Text safe inside Slack mrkdwn (its three control characters escaped)."""
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_body(event: OutboxEvent | _Event) -> dict[str, Any]:
    """The `slack` format: Slack's incoming-webhook JSON (`text` plus `blocks`)."""
    data = event.data
    subject = event.workflow_id or data.get("model") or event.owner
    run = f" run {data['run_number']}" if "run_number" in data else ""
    step = f" step `{_mrkdwn(data['step_id'])}`" if data.get("step_id") else ""
    headline = f"{_ICONS.get(event.type, '')} *{event.type}*: `{_mrkdwn(subject)}`{run}{step}"
    lines = [headline.strip()]
    for key in ("error", "reason", "deadline", "signal", "expected_by", "stage", "version"):
        if data.get(key) not in (None, ""):
            lines.append(f"*{key}*: {_mrkdwn(data[key])[:1000]}")
    text_ = "\n".join(lines)[:2900]
    return {
        "text": text_,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": text_}},
            {
                "type": "context",
                "elements": [
                    {
                        "type": "mrkdwn",
                        "text": f"event `{event.event_id}` at {event.created_at.isoformat()}",
                    }
                ],
            },
        ],
    }


def render(event: OutboxEvent | _Event, fmt: str, limit: int) -> bytes:
    """The request body of an event in a webhook's format, within `limit` bytes (a larger
    event's `data` is cut to its ids and `truncated: true`)."""
    payload = slack_body(event) if fmt == "slack" else event_body(event)
    body = json.dumps(payload, separators=(",", ":"), default=str).encode()
    if len(body) > limit and fmt == "json":
        keep = {k: v for k, v in event.data.items() if k.endswith("_id") or k in ("status",)}
        payload["data"] = {**keep, "truncated": True}
        body = json.dumps(payload, separators=(",", ":"), default=str).encode()
    return body


# -- the API's use cases -------------------------------------------------------------------


def _secret_name(webhook_id: str) -> str:
    return f"webhook:{webhook_id}"


async def create_webhook(
    session: AsyncSession,
    box: SecretBox,
    guard: Guard,
    body: WebhookIn,
    owners: Sequence[str],
) -> tuple[Webhook, str]:
    """A new webhook and its secret (returned only here)."""
    check_owner(owners, body.owner, "the webhook's owner")
    try:
        guard.check_url(body.url)
    except DestinationRefused as exc:
        raise InvalidInput("webhook URL refused", [Problem(("body", "url"), str(exc))]) from None
    webhook_id = "wh_" + token_source.token_hex(8)
    secret = "whsec_" + token_source.token_urlsafe(32)
    row = Webhook(
        id=webhook_id,
        owner=body.owner,
        url=body.url,
        events=list(dict.fromkeys(body.events)),
        workflow_ids=body.workflows,
        format=body.format,
        description=body.description,
        secret=box.seal(_secret_name(webhook_id), body.owner, secret),
    )
    session.add(row)
    await session.flush()
    await session.refresh(row)
    return row, secret


async def get_webhook(session: AsyncSession, webhook_id: str, owners: Sequence[str]) -> Webhook:
    row = await session.get(Webhook, webhook_id)
    if row is None:
        raise NotFound(f"webhook {webhook_id!r} not found")
    check_owner(owners, row.owner, f"webhook {webhook_id!r}")
    return row


async def list_webhooks(session: AsyncSession, owners: Sequence[str]) -> Sequence[Webhook]:
    query = select(Webhook).order_by(Webhook.created_at, Webhook.id)
    if owners:
        query = query.where(Webhook.owner.in_(owners))
    return (await session.execute(query)).scalars().all()


async def delete_webhook(session: AsyncSession, webhook_id: str, owners: Sequence[str]) -> None:
    """Delete a webhook with its deliveries (pending ones are not sent)."""
    await get_webhook(session, webhook_id, owners)
    await session.execute(delete(Webhook).where(Webhook.id == webhook_id))


async def rotate_secret(
    session: AsyncSession, box: SecretBox, webhook_id: str, grace: timedelta, owners: Sequence[str]
) -> tuple[Webhook, str]:
    """A new secret (returned only here); the former one also signs for `grace`."""
    row = await get_webhook(session, webhook_id, owners)
    secret = "whsec_" + token_source.token_urlsafe(32)
    row.previous_secret = row.secret
    row.previous_secret_until = datetime.now(UTC) + grace
    row.secret = box.seal(_secret_name(webhook_id), row.owner, secret)
    await session.flush()
    return row, secret


async def list_deliveries(
    session: AsyncSession,
    webhook_id: str,
    owners: Sequence[str],
    *,
    status: str | None,
    limit: int,
    before: int | None,
) -> list[tuple[WebhookDelivery, OutboxEvent, list[WebhookAttempt]]]:
    """A webhook's deliveries, newest first, each with its event and every attempt."""
    await get_webhook(session, webhook_id, owners)
    query = (
        select(WebhookDelivery, OutboxEvent)
        .join(OutboxEvent, OutboxEvent.id == WebhookDelivery.event_id)
        .where(WebhookDelivery.webhook_id == webhook_id)
        .order_by(WebhookDelivery.id.desc())
        .limit(limit)
    )
    if status:
        query = query.where(WebhookDelivery.status == status)
    if before is not None:
        query = query.where(WebhookDelivery.id < before)
    rows = (await session.execute(query)).all()
    ids = [d.id for d, _ in rows]
    attempts: dict[int, list[WebhookAttempt]] = {i: [] for i in ids}
    if ids:
        found = await session.execute(
            select(WebhookAttempt)
            .where(WebhookAttempt.delivery_id.in_(ids))
            .order_by(WebhookAttempt.id)
        )
        for attempt in found.scalars():
            attempts[attempt.delivery_id].append(attempt)
    return [(d, e, attempts[d.id]) for d, e in rows]


async def redeliver(
    session: AsyncSession, webhook_id: str, delivery_id: int, owners: Sequence[str]
) -> WebhookDelivery:
    """Deliver a delivery's event again, as a new delivery at the end of the queue."""
    await get_webhook(session, webhook_id, owners)
    original = await session.get(WebhookDelivery, delivery_id)
    if original is None or original.webhook_id != webhook_id:
        raise NotFound(f"webhook {webhook_id!r} has no delivery {delivery_id}")
    again = WebhookDelivery(
        webhook_id=webhook_id,
        event_id=original.event_id,
        status="pending",
        next_attempt_at=datetime.now(UTC),
        redelivery_of=original.id,
    )
    session.add(again)
    await session.flush()
    await session.refresh(again)
    return again


# -- delivery ------------------------------------------------------------------------------

# Webhooks whose oldest pending delivery is due and that no dispatcher holds, leased, each with
# its first pending deliveries (oldest first) and their events: one statement per claim ($1 the
# lease in seconds, $2 how many webhooks, $3 deliveries per webhook).
_CLAIM = """
    WITH claimed AS (
        UPDATE webhooks SET lease_until = now() + make_interval(secs => $1::float8)
        WHERE id IN (
            SELECT w.id FROM webhooks w
            WHERE (w.lease_until IS NULL OR w.lease_until < now())
              AND (
                SELECT d.next_attempt_at FROM webhook_deliveries d
                WHERE d.webhook_id = w.id AND d.status = 'pending'
                ORDER BY d.id LIMIT 1
              ) <= now()
            ORDER BY w.id
            LIMIT $2::int
            FOR UPDATE OF w SKIP LOCKED
        )
        RETURNING id, owner, url, format, secret, previous_secret, previous_secret_until
    )
    SELECT c.id, c.owner, c.url, c.format, c.secret, c.previous_secret,
           c.previous_secret_until, d.id AS delivery_id, d.attempts, d.next_attempt_at,
           d.created_at AS recorded_at, e.id AS event_row, e.event_id, e.type,
           e.owner AS event_owner, e.workflow_id, e.data::text AS data, e.created_at
    FROM claimed c
    LEFT JOIN LATERAL (
        SELECT d.id, d.event_id, d.attempts, d.next_attempt_at, d.created_at
        FROM webhook_deliveries d
        WHERE d.webhook_id = c.id AND d.status = 'pending'
        ORDER BY d.id LIMIT $3::int
    ) d ON true
    LEFT JOIN outbox_events e ON e.id = d.event_id
    ORDER BY c.id, d.id
"""

# Attempts, their deliveries' new states and the release of webhooks, in one statement (so one
# transaction). The lease on a webhook makes its dispatcher the only writer of its pending
# deliveries. Arrays: $1 delivery ids, $2 statuses, $3 attempt numbers, $4 next attempts,
# $5 ends, $6 attempt times, $7 status codes, $8 latencies, $9 errors; $10 webhooks to release.
_RECORD = """
    WITH settled AS (
        UPDATE webhook_deliveries d
        SET status = s.status, attempts = s.attempts, next_attempt_at = s.next_at,
            ended_at = s.ended_at
        FROM unnest($1::bigint[], $2::text[], $3::int[], $4::timestamptz[], $5::timestamptz[])
            AS s(id, status, attempts, next_at, ended_at)
        WHERE d.id = s.id AND d.status = 'pending'
        RETURNING d.id
    ), attempted AS (
        INSERT INTO webhook_attempts (delivery_id, attempt, at, status_code, latency_ms, error)
        SELECT * FROM unnest(
            $1::bigint[], $3::int[], $6::timestamptz[], $7::int[], $8::float8[], $9::text[]
        )
        RETURNING id
    ), released AS (
        UPDATE webhooks SET lease_until = NULL WHERE id = ANY($10::text[]) RETURNING id
    )
    SELECT (SELECT count(*) FROM settled), (SELECT count(*) FROM attempted),
           (SELECT count(*) FROM released)
"""


@dataclass(frozen=True)
class _Event:
    """An event as `render` reads it (the fields of OutboxEvent it uses)."""

    event_id: str
    type: str
    owner: str
    workflow_id: str | None
    data: dict[str, Any]
    created_at: datetime


@dataclass
class _Queued:
    """A pending delivery of a claimed webhook, with its event."""

    id: int
    attempts: int
    next_attempt_at: datetime
    created_at: datetime
    event_row: int
    event: _Event


@dataclass
class _Claimed:
    """A leased webhook and its first pending deliveries, in order."""

    id: str
    owner: str
    url: str
    format: str
    secret: str
    previous_secret: str | None
    previous_secret_until: datetime | None
    queue: list[_Queued]


@dataclass
class _Outcome:
    """One attempt's result, to be written: the attempt and its delivery's new state."""

    delivery_id: int
    attempt: int
    at: datetime
    status_code: int | None
    latency_ms: float
    error: str | None
    status: str  # the delivery's: pending (to be retried), delivered or dead
    next_attempt_at: datetime
    ended_at: datetime | None

    @property
    def go_on(self) -> bool:
        """Delivered or dead: the queue moves on."""
        return self.status != "pending"


class Dispatcher:
    """Delivers pending webhook deliveries; one per worker process, any number of processes."""

    # Deliveries one claim of a webhook goes through before letting others have a turn.
    BATCH = 100
    # Successful deliveries of one webhook after which its results are written.
    RECORD_EVERY = 20
    # Rendered bodies kept (an event goes to each of its webhooks, one after the other).
    RENDERED = 1024

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        box: SecretBox,
        settings: WebhookSettings,
        outbound: OutboundSettings,
    ) -> None:
        self._sessions = sessions
        self._box = box
        self._settings = settings
        self._guard = Guard(outbound)
        self._limit = outbound.max_request_bytes
        # A drain starts no request that could outlast its lease (each is bounded by the
        # timeout), so no other dispatcher takes the queue while one of its requests runs.
        self._timeout = outbound.timeout_seconds
        self._lease = max(60.0, 4 * outbound.timeout_seconds)
        # Signing keys (HMAC states keyed with the opened secret) by their sealed form (a
        # rotation changes the sealed form).
        self._keys: dict[tuple[str, str], Any] = {}
        self._rendered: dict[tuple[int, str], bytes] = {}
        # Results waiting to be written, many webhooks' in one transaction: (outcomes, the
        # webhook to release after writing them, or None).
        self._results: asyncio.Queue[tuple[list[_Outcome], str | None] | None] = asyncio.Queue()

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop` is set; a failing database or receiver is retried, never
        raised."""
        recorder = asyncio.create_task(self._recorder())
        try:
            await self._dispatch(stop)
        finally:
            self._results.put_nowait(None)
            try:
                await asyncio.shield(recorder)
            except asyncio.CancelledError:
                recorder.cancel()
                raise

    async def _dispatch(self, stop: asyncio.Event) -> None:
        """Claim webhooks and drain each in a task of its own until `stop`; then cancel the
        drains (each hands over what it has done)."""
        async with self._guard.client(self._settings.concurrency) as client:
            tasks: set[asyncio.Task[None]] = set()
            try:
                while not stop.is_set():
                    try:
                        free = self._settings.concurrency - len(tasks)
                        claimed = await self._claim(free) if free > 0 else []
                    except Exception as exc:  # noqa: BLE001 - the database may be away
                        logger.warning(
                            "claiming webhook deliveries failed", extra={"error": str(exc)}
                        )
                        claimed = []
                    for webhook in claimed:
                        task = asyncio.create_task(self._drain(client, webhook))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                    if not claimed:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(
                                stop.wait(), self._settings.poll_interval_seconds
                            )
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _claim(self, limit: int) -> list[_Claimed]:
        """Webhooks to drain, each with what delivering needs (one statement)."""
        async with self._sessions() as session:
            rows = await (await _driver(session)).fetch(_CLAIM, self._lease, limit, self.BATCH)
        claimed: dict[str, _Claimed] = {}
        for r in rows:
            webhook = claimed.get(r["id"])
            if webhook is None:
                webhook = claimed[r["id"]] = _Claimed(
                    r["id"],
                    r["owner"],
                    r["url"],
                    r["format"],
                    r["secret"],
                    r["previous_secret"],
                    r["previous_secret_until"],
                    [],
                )
            if r["delivery_id"] is not None:
                event = _Event(
                    r["event_id"],
                    r["type"],
                    r["event_owner"],
                    r["workflow_id"],
                    json.loads(r["data"]),
                    r["created_at"],
                )
                webhook.queue.append(
                    _Queued(
                        r["delivery_id"],
                        r["attempts"],
                        r["next_attempt_at"],
                        r["recorded_at"],
                        r["event_row"],
                        event,
                    )
                )
        return list(claimed.values())

    async def _drain(self, client: aiohttp.ClientSession, webhook: _Claimed) -> None:
        """Deliver a claimed webhook's due deliveries in order until one fails; then have the
        results written and the webhook released in one transaction."""
        began = time.monotonic()
        done: list[_Outcome] = []
        try:
            keys = self._signing_keys(webhook)
            for delivery in webhook.queue:
                if time.monotonic() - began + self._timeout > self._lease * 0.9:
                    break  # the lease would run out during the request: claim again
                outcome = await self._deliver(client, webhook, keys, delivery)
                if outcome is None:
                    break  # the head is not due yet
                done.append(outcome)
                if not outcome.go_on:
                    break
                if len(done) >= self.RECORD_EVERY:
                    self._results.put_nowait((done, None))
                    done = []
        except Exception as exc:  # noqa: BLE001 - retried at the next claim
            logger.warning(
                "webhook delivery interrupted", extra={"webhook_id": webhook.id, "error": str(exc)}
            )
        finally:
            # Results are written in batches: a dispatcher that dies before writing them sends
            # those events again (at-least-once). The lease runs out by itself if that fails.
            self._results.put_nowait((done, webhook.id))

    def _signing_keys(self, webhook: _Claimed) -> list[Any]:
        name = _secret_name(webhook.id)
        sealed = [webhook.secret]
        until = webhook.previous_secret_until
        if webhook.previous_secret and until is not None and until > datetime.now(UTC):
            sealed.append(webhook.previous_secret)
        found = []
        for token in sealed:
            key = (webhook.id, token)
            if key not in self._keys:
                secret = self._box.open(name, webhook.owner, token)
                self._keys[key] = hmac.new(secret.encode(), digestmod=hashlib.sha256)
            found.append(self._keys[key])
        return found

    def _body(self, delivery: _Queued, fmt: str) -> bytes:
        key = (delivery.event_row, fmt)
        body = self._rendered.get(key)
        if body is None:
            if len(self._rendered) >= self.RENDERED:
                self._rendered.clear()
            body = self._rendered[key] = render(delivery.event, fmt, self._limit)
        return body

    async def _deliver(
        self,
        client: aiohttp.ClientSession,
        webhook: _Claimed,
        keys: list[Any],
        delivery: _Queued,
    ) -> _Outcome | None:
        """One attempt at the head of the queue (None: it is not due yet)."""
        now = datetime.now(UTC)
        if delivery.next_attempt_at > now:
            return None
        event = delivery.event
        body = self._body(delivery, webhook.format)
        timestamp = int(time.time())
        message = str(timestamp).encode() + b"." + body
        signatures = []
        for key in keys:
            mac = key.copy()
            mac.update(message)
            signatures.append("v1=" + mac.hexdigest())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "Maestro-Webhooks/1",
            "X-Maestro-Event-Id": event.event_id,
            "X-Maestro-Event": event.type,
            "X-Maestro-Timestamp": str(timestamp),
            SIGNATURE_HEADER: ",".join(signatures),
        }
        began = time.monotonic()
        status_code: int | None = None
        error: str | None = None
        try:
            answer = await self._guard.send(
                client, "POST", webhook.url, headers=headers, content=body, max_response_bytes=4096
            )
            status_code = answer.status_code
            if not 200 <= status_code < 300:
                snippet = answer.body[:300].decode(errors="replace")
                error = f"HTTP {status_code}" + (f": {snippet}" if snippet else "")
                if 300 <= status_code < 400:
                    error = f"HTTP {status_code}: redirects are not followed"
        except (DestinationRefused, ValueError, ConnectionError, TimeoutError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:1000]
        latency = (time.monotonic() - began) * 1000
        attempt = delivery.attempts + 1
        status, next_at, ended = "pending", delivery.next_attempt_at, None
        if error is None:
            status, ended = "delivered", datetime.now(UTC)
        elif now - delivery.created_at >= timedelta(seconds=self._settings.retry_for_seconds):
            status, ended = "dead", datetime.now(UTC)
        else:
            next_at = now + timedelta(seconds=self.backoff(attempt))
        metrics.WEBHOOK_ATTEMPTS.labels("retrying" if status == "pending" else status).inc()
        if error is None:
            metrics.WEBHOOK_LAG.observe((datetime.now(UTC) - event.created_at).total_seconds())
        else:
            logger.info(
                "webhook delivery failed",
                extra={"webhook_id": webhook.id, "event_id": event.event_id, "error": error},
            )
        return _Outcome(
            delivery.id, attempt, now, status_code, latency, error, status, next_at, ended
        )

    async def _recorder(self) -> None:
        """Write the drains' results as they come, all that are waiting in one transaction,
        in the order they came (until None)."""
        finished = False
        while not finished:
            waiting = [await self._results.get()]
            while not self._results.empty():
                waiting.append(self._results.get_nowait())
            finished = None in waiting
            results = [r for r in waiting if r is not None]
            try:
                await self._record(
                    [o for outcomes, _ in results for o in outcomes],
                    [webhook for _, webhook in results if webhook is not None],
                )
            except Exception as exc:  # noqa: BLE001 - the leases run out by themselves
                logger.warning("recording webhook deliveries failed", extra={"error": str(exc)})

    async def _record(self, outcomes: list[_Outcome], release: list[str]) -> None:
        """Write attempts and their deliveries' new states, and let the `release` webhooks go,
        in one statement."""
        if not outcomes and not release:
            return
        columns = [
            [getattr(o, name) for o in outcomes]
            for name in (
                "delivery_id",
                "status",
                "attempt",
                "next_attempt_at",
                "ended_at",
                "at",
                "status_code",
                "latency_ms",
                "error",
            )
        ]
        async with self._sessions() as session:
            await (await _driver(session)).fetchrow(_RECORD, *columns, release)

    def backoff(self, attempt: int) -> float:
        """Seconds before the next try after `attempt` failed ones (doubling, capped)."""
        first = self._settings.retry_initial_seconds
        return min(self._settings.retry_max_seconds, first * 2 ** min(attempt - 1, 40))


async def _driver(session: AsyncSession) -> Any:
    """The session's asyncpg connection, used directly: each statement on it is a transaction of
    its own (the dispatcher's statements are single ones, and the most frequent)."""
    raw = await (await session.connection()).get_raw_connection()
    return raw.driver_connection
