"""Secret routes: store, rotate, list and delete secrets; no route ever returns a value."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from api.auth import owners_filter
from api.deps import SecretBoxDep, SessionDep, SettingsDep
from maestro import secrets
from maestro.steps import SECRET_NAME_PATTERN

router = APIRouter(prefix="/secrets", tags=["secrets"])

SecretName = Path(pattern=SECRET_NAME_PATTERN, description="The secret's name (unique)")


class SecretIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    value: str = Field(min_length=1, max_length=65_536, description="Stored encrypted")
    owner: str = Field(
        default="",
        max_length=200,
        description="The owner whose workflows may use it (for an owner-limited key: one of its "
        "owners)",
    )


class SecretOut(BaseModel):
    """What is known of a secret; never its value."""

    model_config = ConfigDict(from_attributes=True)

    name: str
    owner: str
    version: int = Field(description="1 when created, +1 on each new value")
    created_at: datetime
    updated_at: datetime


def _owners(request: Request) -> list[str]:
    return owners_filter(request) or []


@router.put(
    "/{name}",
    response_model=SecretOut,
    responses={201: {"model": SecretOut, "description": "Created"}},
)
async def put_secret(
    request: Request,
    response: Response,
    body: SecretIn,
    session: SessionDep,
    box: SecretBoxDep,
    settings: SettingsDep,
    name: str = SecretName,
) -> SecretOut:
    """Create a secret (201) or give it a new value (200): steps that name it read the new
    value from their next attempt on. Needs `secrets:write` (or `admin`); an owner-limited key
    may only store secrets for its owners."""
    row, created = await secrets.put_secret(
        session, secrets.require_box(box, settings), name, body.owner, body.value, _owners(request)
    )
    await session.refresh(row)
    if created:
        response.status_code = 201
    return SecretOut.model_validate(row)


@router.get("", response_model=list[SecretOut])
async def list_secrets(request: Request, session: SessionDep) -> list[SecretOut]:
    """Secrets by name (those of the key's owners, for an owner-limited key); no values."""
    return [
        SecretOut.model_validate(row)
        for row in await secrets.list_secrets(session, _owners(request))
    ]


@router.get("/{name}", response_model=SecretOut)
async def get_secret(request: Request, session: SessionDep, name: str = SecretName) -> SecretOut:
    """A secret's owner, version and times; its value is never returned."""
    return SecretOut.model_validate(await secrets.get_secret(session, name, _owners(request)))


@router.delete("/{name}", status_code=204, response_class=Response)
async def delete_secret(request: Request, session: SessionDep, name: str = SecretName) -> Response:
    """Delete a secret: steps that name it fail (non-retryably) from their next attempt on."""
    await secrets.delete_secret(session, name, _owners(request))
    return Response(status_code=204)
