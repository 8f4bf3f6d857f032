"""API key routes (admin scope): create, list, revoke."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from api.auth import PrincipalDep
from api.deps import KeyCacheDep, SessionDep, SessionsDep
from maestro import keys
from maestro.db.tables import ApiKey
from maestro.keys import Scope

router = APIRouter(prefix="/keys", tags=["keys"])


class KeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    scopes: list[Scope] = Field(min_length=1)
    owners: list[str] = Field(
        default_factory=list, description="Limit the key to workflows and secrets of these owners"
    )


class KeyOut(BaseModel):
    id: str
    name: str
    prefix: str = Field(description="The first characters of the key, to recognise it")
    scopes: list[str]
    owners: list[str]
    created_at: datetime
    revoked_at: datetime | None


class CreatedKey(KeyOut):
    key: str = Field(description="The secret: shown only now")


def key_out(row: ApiKey) -> KeyOut:
    return KeyOut(
        id=row.id,
        name=row.name,
        prefix=row.prefix,
        scopes=row.scopes,
        owners=row.owners,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


@router.post("", response_model=CreatedKey, status_code=201)
async def create_key(body: KeyIn, session: SessionDep) -> CreatedKey:
    """Create a key; its secret is in this response only (the server keeps a hash)."""
    row, secret = await keys.create_key(
        session, body.name, [s.value for s in body.scopes], body.owners
    )
    await session.refresh(row)
    return CreatedKey(**key_out(row).model_dump(), key=secret)


@router.get("", response_model=list[KeyOut])
async def list_keys(session: SessionDep) -> list[KeyOut]:
    """Every key, revoked ones included (secrets are never shown)."""
    return [key_out(row) for row in await keys.list_keys(session)]


@router.post(
    "/{key_id}/revoke",
    response_model=KeyOut,
    responses={
        409: {
            "description": "`last_admin_key`: the last active admin key; "
            "`confirmation_required`: the calling key, without `confirm=true`"
        }
    },
)
async def revoke_key(
    key_id: str,
    principal: PrincipalDep,
    sessions: SessionsDep,
    key_cache: KeyCacheDep,
    confirm: Annotated[
        bool, Query(description="Required to revoke the key this request is made with")
    ] = False,
) -> KeyOut:
    """Revoke a key. It stops working at once on this API process, and within
    `MAESTRO_API__KEY_CACHE_SECONDS` (default 5 s) on others. Refused (409) for the last
    active admin key, and for the calling key itself unless `confirm=true`. Revoking a revoked
    key changes nothing."""
    async with sessions.begin() as session:
        row = await keys.revoke_key(
            session, key_id, acting_key_id=principal.key_id, confirm=confirm
        )
    key_cache.clear()
    return key_out(row)
