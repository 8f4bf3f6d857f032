"""Code packages recorded in PostgreSQL (their bytes are in the artifact store)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from maestro.db.tables import CodePackage, WorkflowVersion
from maestro.errors import NotFound


async def record_package(
    session: AsyncSession, sha256: str, uri: str, size: int, files: int
) -> tuple[CodePackage, bool]:
    """Record a stored package; (its row, whether it was new)."""
    inserted = await session.execute(
        insert(CodePackage)
        .values(sha256=sha256, uri=uri, size=size, files=files)
        .on_conflict_do_nothing()
        .returning(CodePackage.sha256)
    )
    created = inserted.scalar_one_or_none() is not None
    return await get_package(session, sha256), created


async def get_package(session: AsyncSession, sha256: str) -> CodePackage:
    row = await session.get(CodePackage, sha256)
    if row is None:
        raise NotFound(
            f"code package {sha256} not found; upload it first (PUT /api/v1/code/{sha256})"
        )
    return row


async def version_package(
    session: AsyncSession, workflow_id: str, version: int
) -> tuple[str, str] | None:
    """(SHA-256, URI) of the code package a workflow version runs, or None."""
    row = (
        await session.execute(
            select(WorkflowVersion.code_sha256, WorkflowVersion.code_uri).where(
                WorkflowVersion.workflow_id == workflow_id, WorkflowVersion.version == version
            )
        )
    ).one_or_none()
    if row is None or row.code_sha256 is None or row.code_uri is None:
        return None
    return row.code_sha256, row.code_uri
