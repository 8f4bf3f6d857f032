"""Audit log route (admin scope): who changed what, when, with which result."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from api.deps import SessionDep
from api.schemas import BIGINT_MAX, Since
from maestro.db import audit as audit_db

router = APIRouter(prefix="/audit", tags=["audit"])


class AuditEntryOut(BaseModel):
    id: int
    at: datetime = Field(description="When the request arrived")
    key_id: str | None = Field(description="The calling key; null when none was valid (401)")
    key_name: str | None
    owners: list[str] = Field(description="The owners the key is limited to (none: all)")
    method: str
    path: str
    targets: dict[str, Any] = Field(description="The path's ids: workflow_id, run_id, ...")
    status: int = Field(description="The response's status code")
    duration_ms: float


class AuditPage(BaseModel):
    items: list[AuditEntryOut]
    next_cursor: str | None


@router.get("", response_model=AuditPage)
async def list_audit(
    session: SessionDep,
    key_id: Annotated[str | None, Query(max_length=64)] = None,
    since: Since = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[
        int | None, Query(ge=1, le=BIGINT_MAX, description="`next_cursor` of the previous page")
    ] = None,
) -> AuditPage:
    """Every POST, PUT, PATCH and DELETE request, newest first, refused ones included: the
    key (id, name, owners), method, path and its ids, time, status. Filter by `key_id` and
    `since` (ISO time). Rows are written in batches a fraction of a second after the
    response."""
    rows = await audit_db.list_entries(
        session, key_id=key_id, since=since, limit=limit, before_id=cursor
    )
    next_cursor = str(rows[-1].id) if len(rows) == limit else None
    return AuditPage(
        items=[AuditEntryOut.model_validate(r, from_attributes=True) for r in rows],
        next_cursor=next_cursor,
    )
