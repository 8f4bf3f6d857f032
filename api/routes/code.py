"""Code package routes: upload the step code `maestro deploy` ships with a version, check a
flow's declared requirements."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from pydantic import BaseModel, Field

from api.deps import ArtifactStoreDep, SessionDep, SessionsDep, SettingsDep
from api.schemas import CodePackageOut
from maestro import code_packages
from maestro.db import code_packages as code_db
from maestro.errors import InvalidInput

router = APIRouter(tags=["code"])

Sha256 = Annotated[
    str,
    Path(
        pattern=code_packages.SHA256_PATTERN,
        description="The package's SHA-256 (64 lowercase hex digits)",
    ),
]


@router.put(
    "/code/{sha256}",
    response_model=CodePackageOut,
    status_code=201,
    responses={200: {"model": CodePackageOut, "description": "The package was stored before"}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "The package: a zip of the flow's file or package directory "
            "(sent as application/zip or application/octet-stream)",
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    },
)
async def put_code(
    sha256: Sha256,
    request: Request,
    response: Response,
    sessions: SessionsDep,
    settings: SettingsDep,
    artifacts: ArtifactStoreDep,
) -> CodePackageOut:
    """Store a code package under its SHA-256 (verified) in the artifact store. Refused (4xx):
    over `max_code_package_bytes` (413), a body whose hash differs, not a zip, unsafe names,
    files that look like secrets (`.env`, `*.pem`, `id_rsa`, ...)."""
    data = await request.body()
    names = await asyncio.to_thread(
        code_packages.check, data, sha256, settings.api.max_code_package_bytes
    )
    uri = await asyncio.to_thread(artifacts.put_bytes, code_packages.code_key(sha256), data)
    async with sessions.begin() as session:
        row, created = await code_db.record_package(session, sha256, uri, len(data), len(names))
    if not created:
        response.status_code = 200
    return CodePackageOut.model_validate(row).model_copy(update={"created": created})


@router.get("/code/{sha256}", response_model=CodePackageOut)
async def get_code(sha256: Sha256, session: SessionDep) -> CodePackageOut:
    """A stored code package's record (404 when it was never uploaded)."""
    return CodePackageOut.model_validate(await code_db.get_package(session, sha256))


class RequirementsIn(BaseModel):
    requirements: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        max_length=200, description="PEP 508 requirements, e.g. `scikit-learn>=1.4`"
    )


class RequirementsOut(BaseModel):
    satisfied: bool
    requirements: list[str]


@router.post("/requirements/check", response_model=RequirementsOut)
async def check_requirements(body: RequirementsIn) -> RequirementsOut:
    """Check a flow's extra requirements against the environment of this API process, which is
    the workers' environment where they are installed together (`maestro up`, the Docker image);
    422 names each requirement that is missing or of another version."""
    problems = await asyncio.to_thread(code_packages.requirements_problems, body.requirements)
    if problems:
        raise InvalidInput("requirements are not satisfied on the workers", problems)
    return RequirementsOut(satisfied=True, requirements=body.requirements)
