"""Code package routes: upload the step code `maestro deploy` ships with a version, check a
flow's declared requirements."""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Request, Response
from pydantic import BaseModel, Field

from api.deps import ArtifactStoreDep, SessionDep, SessionsDep, SettingsDep
from api.schemas import CodePackageOut
from maestro import code_packages, environments
from maestro.artifacts import StoreError
from maestro.db import code_packages as code_db
from maestro.errors import InvalidInput, Unavailable

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
    files that look like secrets (`.env`, `*.pem`, `id_rsa`, ...). 503 `unavailable`, nothing
    recorded, when the artifact store cannot be reached for a few seconds."""
    data = await request.body()
    names = await asyncio.to_thread(
        code_packages.check, data, sha256, settings.api.max_code_package_bytes
    )
    try:
        uri = await asyncio.to_thread(artifacts.put_bytes, code_packages.code_key(sha256), data)
    except StoreError as exc:
        reason = str(exc).splitlines()[0][:500]
        raise Unavailable(f"the artifact store cannot take the package now: {reason}") from exc
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
    task_queues: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        default_factory=list,
        max_length=50,
        description="Task queues the flow's steps name (`task_queue`); their workers must "
        "satisfy the requirements",
    )
    main_queue: bool = Field(
        default=True,
        strict=True,
        description="Whether some step runs on the main task queue (no `task_queue`); its "
        "workers must satisfy the requirements too",
    )


class CheckedAgainst(BaseModel):
    task_queue: str
    environment: Literal["workers", "api"] = Field(
        description="`workers`: the environments of that queue's workers seen in the last "
        "15 minutes; `api`: none reported, so this API process's own"
    )
    hosts: list[str]


class RequirementsOut(BaseModel):
    satisfied: bool
    requirements: list[str]
    checked_against: list[CheckedAgainst]


@router.post("/requirements/check", response_model=RequirementsOut)
async def check_requirements(
    body: RequirementsIn, session: SessionDep, settings: SettingsDep
) -> RequirementsOut:
    """Check a flow's extra requirements against the installed distributions of the workers
    that serve its steps' task queues (each worker records them at start and every 5 minutes;
    those seen in the last 15 minutes count). A queue no worker reported for is checked
    against this API process's environment instead, as `checked_against` says. 422 names each
    requirement unmet on some worker: its host, task queue and the version it has."""
    main = [settings.temporal.task_queue] if body.main_queue else []
    queues = sorted({*main, *body.task_queues}) or [settings.temporal.task_queue]
    checked = await environments.for_queues(session, queues)
    problems = code_packages.requirements_problems(
        body.requirements, [env for queue in checked for env in queue.environments]
    )
    if problems:
        raise InvalidInput("requirements are not satisfied on the workers", problems)
    return RequirementsOut(
        satisfied=True,
        requirements=body.requirements,
        checked_against=[
            CheckedAgainst(task_queue=q.task_queue, environment=q.source, hosts=q.hosts)
            for q in checked
        ],
    )
