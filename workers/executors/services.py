"""What executors that record things (artifacts, model versions, stage changes) are given."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from maestro.artifacts import ArtifactStore
from maestro.context import StepContext
from maestro.db import models as models_db
from maestro.outbound import Guard
from maestro.registry import Registry
from workers.database import outlasting_outage
from workers.workdirs import WorkRoot

T = TypeVar("T")


@dataclass
class Services:
    sessions: async_sessionmaker[AsyncSession]
    artifacts: ArtifactStore
    registry: Registry
    # Where runs' directories are and the user shell steps run as.
    work_root: WorkRoot | None = None
    # Where `http` steps may send requests (the outbound allowlist).
    guard: Guard | None = None

    async def store_artifacts(self, ctx: StepContext, artifacts: dict[str, Any]) -> dict[str, str]:
        """Store `{name: path}` (paths relative to the artifact dir or absolute) and record
        them; returns `{name: uri}`."""
        stored: dict[str, str] = {}
        for name, path in artifacts.items():
            source = Path(path)
            if not source.is_absolute() and ctx.artifact_dir is not None:
                source = ctx.artifact_dir / source
            # Off the event loop: an object store uploads over the network, heartbeats go on.
            artifact = await asyncio.to_thread(
                self.artifacts.put, source, run_id=ctx.run_id, step_id=ctx.step_id, name=name
            )
            await self.transaction(
                functools.partial(
                    models_db.record_artifact,
                    uri=artifact.uri,
                    name=name,
                    run_id=ctx.run_id,
                    step_id=ctx.step_id,
                    size=artifact.size,
                    sha256=artifact.sha256,
                )
            )
            stored[name] = artifact.uri
        return stored

    async def transaction(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """`work` in one transaction, done again while the database cannot be reached (it
        must be idempotent): a database outage is not the step's failure."""

        async def once() -> T:
            async with self.sessions.begin() as session:
                return await work(session)

        return await outlasting_outage(once)
