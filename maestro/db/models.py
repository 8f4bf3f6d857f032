"""The model registry's tables: models, versions with stages, stage history; and artifacts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from maestro.branches import PROD
from maestro.db.tables import Artifact, Model, ModelVersion, Run, StageChange, Workflow
from maestro.errors import Forbidden, NotFound


async def record_artifact(
    session: AsyncSession, *, uri: str, name: str, run_id: str, step_id: str, size: int, sha256: str
) -> None:
    values = {"name": name, "run_id": run_id, "step_id": step_id, "size": size, "sha256": sha256}
    await session.execute(
        insert(Artifact)
        .values(uri=uri, **values)
        .on_conflict_do_update(index_elements=["uri"], set_=values)
    )


async def artifacts_of_run(session: AsyncSession, run_id: str) -> Sequence[Artifact]:
    query = select(Artifact).where(Artifact.run_id == run_id).order_by(Artifact.created_at)
    return (await session.execute(query)).scalars().all()


async def register_version(
    session: AsyncSession,
    *,
    model_name: str,
    artifact_uri: str,
    metrics: dict[str, Any],
    params: dict[str, Any],
    data_ref: str | None,
    run_id: str,
    step_id: str,
) -> ModelVersion:
    """A new version of `model_name` (created on first use, owned by the run's workflow's
    owner), of the run's branch; a retried training step of the same run gets its earlier
    version back, updated. A run of another owner's workflow cannot add versions to the
    model."""
    owner, branch = await run_owner_and_branch(session, run_id)
    await session.execute(
        insert(Model)
        .values(name=model_name, owner=owner, latest_version=0)
        .on_conflict_do_nothing()
    )
    model = (
        await session.execute(select(Model).where(Model.name == model_name).with_for_update())
    ).scalar_one()
    if model.owner != owner:
        if model.owner:
            raise Forbidden(
                f"model {model_name!r} belongs to {model.owner!r}; run {run_id} of a workflow "
                f"of {owner or 'no owner'!r} cannot add versions to it"
            )
        # Registered before models had owners and not derivable: the first owner claims it.
        model.owner = owner
    existing = (
        await session.execute(
            select(ModelVersion).where(
                ModelVersion.run_id == run_id, ModelVersion.step_id == step_id
            )
        )
    ).scalar_one_or_none()
    if existing is not None:
        existing.artifact_uri, existing.metrics = artifact_uri, metrics
        existing.params, existing.data_ref = params, data_ref
        await session.flush()
        return existing
    model.latest_version += 1
    version = ModelVersion(
        model_name=model_name,
        version=model.latest_version,
        artifact_uri=artifact_uri,
        metrics=metrics,
        params=params,
        data_ref=data_ref,
        run_id=run_id,
        step_id=step_id,
        branch=branch,
        stage="none",
    )
    session.add(version)
    await session.flush()
    return version


async def run_owner_and_branch(session: AsyncSession, run_id: str) -> tuple[str, str]:
    """The owner and the branch of the run's workflow ('' and `prod` if the run is gone)."""
    query = select(Workflow.owner, Workflow.branch).join(Run, Run.workflow_id == Workflow.id)
    row = (await session.execute(query.where(Run.run_id == run_id))).one_or_none()
    return (row[0], row[1]) if row is not None else ("", PROD)


async def list_models(
    session: AsyncSession, owners: Sequence[str] | None = None
) -> Sequence[Model]:
    """Models by name; with `owners`, only theirs."""
    query = select(Model).order_by(Model.name)
    if owners is not None:
        query = query.where(Model.owner.in_(list(owners)))
    return (await session.execute(query)).scalars().all()


async def get_model(session: AsyncSession, name: str) -> Model:
    model = await session.get(Model, name)
    if model is None:
        raise NotFound(f"model {name!r} not found")
    return model


async def list_versions(session: AsyncSession, name: str) -> Sequence[ModelVersion]:
    query = (
        select(ModelVersion).where(ModelVersion.model_name == name).order_by(ModelVersion.version)
    )
    return (await session.execute(query)).scalars().all()


async def stage_holders(
    session: AsyncSession, names: Sequence[str]
) -> dict[str, list[ModelVersion]]:
    """The versions holding `staging` or `production`, per model, in one query."""
    query = select(ModelVersion).where(
        ModelVersion.model_name.in_(names), ModelVersion.stage.in_(("staging", "production"))
    )
    held: dict[str, list[ModelVersion]] = {name: [] for name in names}
    for version in (await session.execute(query)).scalars():
        held[version.model_name].append(version)
    return held


async def get_version(
    session: AsyncSession, name: str, version: int, *, lock: bool = False
) -> ModelVersion:
    found = await session.get(ModelVersion, (name, version), with_for_update=lock)
    if found is None:
        raise NotFound(f"version {version} of model {name!r} not found")
    return found


async def holder_of(session: AsyncSession, name: str, stage: str) -> ModelVersion | None:
    query = select(ModelVersion).where(ModelVersion.model_name == name, ModelVersion.stage == stage)
    return (await session.execute(query)).scalars().first()


async def stage_history(session: AsyncSession, name: str) -> Sequence[StageChange]:
    query = select(StageChange).where(StageChange.model_name == name).order_by(StageChange.id)
    return (await session.execute(query)).scalars().all()


async def change_by_key(session: AsyncSession, key: str) -> StageChange | None:
    query = select(StageChange).where(StageChange.request_key == key)
    return (await session.execute(query)).scalar_one_or_none()


async def versions_registered_by(session: AsyncSession, run_id: str) -> Sequence[ModelVersion]:
    """The model versions a run's training steps registered."""
    query = (
        select(ModelVersion)
        .where(ModelVersion.run_id == run_id)
        .order_by(ModelVersion.model_name, ModelVersion.version)
    )
    return (await session.execute(query)).scalars().all()


async def versions_deployed_by(
    session: AsyncSession, run_id: str
) -> Sequence[tuple[ModelVersion, StageChange]]:
    """The model versions a run's deploy steps moved to a stage, with each stage change."""
    query = (
        select(ModelVersion, StageChange)
        .join(
            StageChange,
            (StageChange.model_name == ModelVersion.model_name)
            & (StageChange.version == ModelVersion.version),
        )
        .where(StageChange.run_id == run_id)
        .order_by(StageChange.id)
    )
    return [(v, c) for v, c in await session.execute(query)]
