"""Webhook routes: subscribe an owner's events to a URL, rotate its secret, see deliveries."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import yaml
from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import AliasChoices, BaseModel, Field, ValidationError

from api.auth import owners_filter
from api.deps import SessionDep
from api.schemas import FromRow
from maestro import webhooks
from maestro.definitions import problems_from_validation
from maestro.documents import DocumentTooComplex, load_json, load_yaml
from maestro.errors import InvalidInput, Problem
from maestro.outbound import Guard
from maestro.secrets import require_box

router = APIRouter(prefix="/webhooks", tags=["webhooks"])

WebhookId = Path(pattern=r"^wh_[0-9a-f]{16}$", description="The webhook's id (`wh_...`)")
_YAML = ("application/yaml", "application/x-yaml", "text/yaml")


class WebhookOut(FromRow):
    id: str
    owner: str
    url: str
    events: list[str]
    workflows: list[str] | None = Field(
        validation_alias=AliasChoices("workflows", "workflow_ids"),
        description="None: every workflow of the owner",
    )
    format: str
    description: str
    created_at: datetime
    previous_secret_until: datetime | None = Field(
        description="After a rotation: until when the former secret also signs"
    )


class WebhookCreated(WebhookOut):
    secret: str = Field(description="The signing secret: shown only in this answer")


class AttemptOut(FromRow):
    attempt: int
    at: datetime
    status_code: int | None
    latency_ms: float
    error: str | None


class DeliveryOut(BaseModel):
    id: int
    event_id: str = Field(description="The `X-Maestro-Event-Id` receivers deduplicate with")
    event_type: str
    status: Literal["pending", "delivered", "dead"]
    attempts: int
    next_attempt_at: datetime | None = Field(description="While pending: the next try")
    created_at: datetime
    ended_at: datetime | None
    redelivery_of: int | None
    event: dict[str, Any] = Field(description="The event as the `json` format sends it")
    attempt_log: list[AttemptOut]


class DeliveryPage(BaseModel):
    items: list[DeliveryOut]
    next_cursor: int | None = Field(description="Pass as `before` for the next (older) page")


def _out(row: Any) -> WebhookOut:
    return WebhookOut.model_validate(row)


def _created(row: Any, secret: str) -> WebhookCreated:
    return WebhookCreated(**_out(row).model_dump(), secret=secret)


def _delivery_out(d: Any, e: Any, attempts: list[Any]) -> DeliveryOut:
    return DeliveryOut(
        id=d.id,
        event_id=e.event_id,
        event_type=e.type,
        status=d.status,
        attempts=d.attempts,
        next_attempt_at=d.next_attempt_at if d.status == "pending" else None,
        created_at=d.created_at,
        ended_at=d.ended_at,
        redelivery_of=d.redelivery_of,
        event=webhooks.event_body(e),
        attempt_log=[AttemptOut.model_validate(a) for a in attempts],
    )


def _owners(request: Request) -> list[str]:
    return owners_filter(request) or []


async def _body(request: Request) -> webhooks.WebhookIn:
    raw = await request.body()
    kind = request.headers.get("content-type", "application/json").split(";")[0].strip()
    try:
        data = load_yaml(raw) if kind in _YAML else load_json(raw)
    except (DocumentTooComplex, ValueError, yaml.YAMLError) as exc:
        problem = Problem(("body",), f"cannot decode the body as {kind}: {exc}", "decode_error")
        raise InvalidInput("body could not be decoded", [problem]) from None
    try:
        return webhooks.WebhookIn.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput("webhook is invalid", problems_from_validation(exc, ("body",))) from None


_CREATE_BODY = {
    "requestBody": {
        "required": True,
        "description": "The webhook, as JSON or as YAML (`application/yaml`).",
        "content": {
            kind: {"schema": webhooks.WebhookIn.model_json_schema()}
            for kind in ("application/json", "application/yaml")
        },
    }
}


@router.post("", status_code=201, response_model=WebhookCreated, openapi_extra=_CREATE_BODY)
async def create_webhook(request: Request, session: SessionDep) -> WebhookCreated:
    """Subscribe a URL to events of an owner's workflows (`run.failed`, `sla.missed`, ...),
    optionally of some workflows only, as `json` or `slack`. The answer carries the signing
    secret, shown only here. The URL must pass the outbound allowlist
    (`MAESTRO_OUTBOUND__*`); an owner-limited key may subscribe only its owners' events."""
    body = await _body(request)
    settings = request.app.state.settings
    row, secret = await webhooks.create_webhook(
        session,
        require_box(request.app.state.secret_box, settings),
        Guard(settings.outbound),
        body,
        _owners(request),
    )
    return _created(row, secret)


@router.get("", response_model=list[WebhookOut])
async def list_webhooks(request: Request, session: SessionDep) -> list[WebhookOut]:
    """Webhooks (an owner-limited key: its owners' only); never their secrets."""
    return [_out(row) for row in await webhooks.list_webhooks(session, _owners(request))]


@router.get("/{webhook_id}", response_model=WebhookOut)
async def get_webhook(
    request: Request, session: SessionDep, webhook_id: str = WebhookId
) -> WebhookOut:
    """One webhook, without its secret."""
    return _out(await webhooks.get_webhook(session, webhook_id, _owners(request)))


@router.delete("/{webhook_id}", status_code=204, response_class=Response)
async def delete_webhook(
    request: Request, session: SessionDep, webhook_id: str = WebhookId
) -> Response:
    """Delete a webhook and its deliveries; pending ones are not sent."""
    await webhooks.delete_webhook(session, webhook_id, _owners(request))
    return Response(status_code=204)


@router.post("/{webhook_id}/rotate-secret", response_model=WebhookCreated)
async def rotate_secret(
    request: Request,
    session: SessionDep,
    body: webhooks.RotateIn | None = None,
    webhook_id: str = WebhookId,
) -> WebhookCreated:
    """A new signing secret (shown only here). For `grace` (default 24h) deliveries carry a
    signature with each secret, so receivers can switch at their pace."""
    box = require_box(request.app.state.secret_box, request.app.state.settings)
    grace = (body or webhooks.RotateIn()).grace
    row, secret = await webhooks.rotate_secret(session, box, webhook_id, grace, _owners(request))
    return _created(row, secret)


@router.get("/{webhook_id}/deliveries", response_model=DeliveryPage)
async def list_deliveries(
    request: Request,
    session: SessionDep,
    webhook_id: str = WebhookId,
    status: Literal["pending", "delivered", "dead"] | None = None,
    limit: int = Query(50, ge=1, le=500),
    before: int | None = Query(None, ge=1, le=2**63 - 1),
) -> DeliveryPage:
    """Deliveries, newest first, each with every attempt (status code, latency, error)."""
    rows = await webhooks.list_deliveries(
        session, webhook_id, _owners(request), status=status, limit=limit, before=before
    )
    items = [_delivery_out(d, e, attempts) for d, e, attempts in rows]
    cursor = items[-1].id if len(items) == limit else None
    return DeliveryPage(items=items, next_cursor=cursor)


@router.post(
    "/{webhook_id}/deliveries/{delivery_id}/redeliver", status_code=202, response_model=DeliveryOut
)
async def redeliver(
    request: Request,
    session: SessionDep,
    webhook_id: str = WebhookId,
    delivery_id: int = Path(ge=1, le=2**63 - 1),
) -> DeliveryOut:
    """Send a delivery's event again (same event id), as a new delivery at the end of the
    webhook's queue."""
    again = await webhooks.redeliver(session, webhook_id, delivery_id, _owners(request))
    rows = await webhooks.list_deliveries(
        session, webhook_id, _owners(request), status=None, limit=1, before=again.id + 1
    )
    return _delivery_out(*rows[0])
