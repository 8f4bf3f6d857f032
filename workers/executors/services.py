"""What executors are given: the artifact store, the run's directories, the outbound guard, and
the records that steps write (artifacts, model versions, stage changes): in PostgreSQL on a
worker, in memory for a local run."""

from __future__ import annotations

import asyncio
import functools
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from maestro.artifacts import ArtifactStore, StoredArtifact
from maestro.context import StepContext
from maestro.db import models as models_db
from maestro.db.tables import ModelVersion
from maestro.outbound import Guard
from maestro.registry import Registry
from maestro.signals import Producer
from maestro.steps import TrainParams
from workers.database import outlasting_outage
from workers.workdirs import WorkRoot

T = TypeVar("T")


@dataclass(frozen=True)
class ModelVersionInfo:
    """What an evaluate or deploy step reads of a model version."""

    version: int
    artifact_uri: str
    metrics: dict[str, float]


@dataclass(kw_only=True)
class Services(ABC):
    artifacts: ArtifactStore
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
            await self.record_artifact(ctx, name, artifact)
            stored[name] = artifact.uri
        return stored

    @abstractmethod
    async def record_artifact(self, ctx: StepContext, name: str, artifact: StoredArtifact) -> None:
        """Record a stored artifact with its producing run and step."""

    @abstractmethod
    async def register_model_version(
        self, ctx: StepContext, spec: TrainParams, artifact_uri: str, metrics: dict[str, float]
    ) -> int:
        """A new version of the train step's model (a retried step gets its earlier one back)."""

    @abstractmethod
    async def model_versions(
        self, model_name: str, version: int, champion_stage: str | None
    ) -> tuple[ModelVersionInfo, ModelVersionInfo | None]:
        """The version to evaluate, and the one holding `champion_stage` (if asked and any)."""

    @abstractmethod
    async def merge_model_metrics(
        self, model_name: str, version: int, metrics: dict[str, float]
    ) -> None:
        """Add an evaluation's metrics to the version's."""

    @abstractmethod
    async def promote_model(
        self, ctx: StepContext, model_name: str, version: int, stage: str
    ) -> tuple[int | None, str]:
        """Move the version to `stage`: (the version that held it, the version's artifact)."""


@dataclass(kw_only=True)
class DatabaseServices(Services):
    """A worker's: records in PostgreSQL, stage changes through the registry (which publishes
    `model.deployed`)."""

    sessions: async_sessionmaker[AsyncSession]
    registry: Registry

    async def record_artifact(self, ctx: StepContext, name: str, artifact: StoredArtifact) -> None:
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

    async def register_model_version(
        self, ctx: StepContext, spec: TrainParams, artifact_uri: str, metrics: dict[str, float]
    ) -> int:
        version = await self.transaction(
            lambda session: models_db.register_version(
                session,
                model_name=spec.model_name,
                artifact_uri=artifact_uri,
                metrics=metrics,
                params=spec.args,
                data_ref=spec.data,
                run_id=ctx.run_id,
                step_id=ctx.step_id,
            )
        )
        return version.version

    async def model_versions(
        self, model_name: str, version: int, champion_stage: str | None
    ) -> tuple[ModelVersionInfo, ModelVersionInfo | None]:
        async def read(session: AsyncSession) -> tuple[ModelVersionInfo, ModelVersionInfo | None]:
            candidate = await models_db.get_version(session, model_name, version)
            champion = None
            if champion_stage is not None:
                champion = await models_db.holder_of(session, model_name, champion_stage)
            return _info(candidate), None if champion is None else _info(champion)

        return await self.transaction(read)

    async def merge_model_metrics(
        self, model_name: str, version: int, metrics: dict[str, float]
    ) -> None:
        async def merge(session: AsyncSession) -> None:
            found = await models_db.get_version(session, model_name, version, lock=True)
            found.metrics = {**found.metrics, **metrics}

        await self.transaction(merge)

    async def promote_model(
        self, ctx: StepContext, model_name: str, version: int, stage: str
    ) -> tuple[int | None, str]:
        producer = Producer(
            kind="step", workflow_id=ctx.workflow_id, run_id=ctx.run_id, step_id=ctx.step_id
        )
        promotion = await self.transaction(
            lambda session: self.registry.promote_in(
                session,
                model_name,
                version,
                stage,
                reason=f"deploy step {ctx.step_id} of run {ctx.run_id}",
                producer=producer,
                run_id=ctx.run_id,
                request_key=f"{ctx.run_id}:{ctx.step_id}",
            )
        )
        if promotion.pending is not None:
            await self.registry.after_commit(promotion.pending)
        return promotion.previous_version, promotion.version.artifact_uri

    async def transaction(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """`work` in one transaction, done again while the database cannot be reached (it
        must be idempotent): a database outage is not the step's failure."""

        async def once() -> T:
            async with self.sessions.begin() as session:
                return await work(session)

        return await outlasting_outage(once)


def _info(version: ModelVersion) -> ModelVersionInfo:
    return ModelVersionInfo(
        version=version.version, artifact_uri=version.artifact_uri, metrics=dict(version.metrics)
    )
