"""Model registry routes: models, versions (with lineage), promotion and rollback. A model
belongs to the owner of the workflow that registered it: an owner-limited key lists, reads and
promotes only its owners' models (the guard checks `{model_name}`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request

from api.auth import owners_filter, signal_owners_filter
from api.deps import RegistryDep, SessionDep
from api.schemas import ModelOut, ModelVersionOut, PromoteIn, PromoteOut, StageChangeOut
from maestro import keys
from maestro.branches import branch_of
from maestro.db import models as models_db
from maestro.db import runs as runs_db
from maestro.db import signals as signals_db
from maestro.db.tables import Model, ModelVersion
from maestro.errors import NotFound

router = APIRouter(prefix="/models", tags=["models"])
VersionNumber = Annotated[int, Path(ge=1, le=2**31 - 1)]


def version_out(version: ModelVersion, lineage: dict | None = None) -> ModelVersionOut:
    return ModelVersionOut.model_validate(version).model_copy(update={"lineage": lineage})


def model_out(model: Model, rows: list[ModelVersion], **extra: Any) -> ModelOut:
    stages = {v.stage: v.version for v in rows if v.stage in ("staging", "production")}
    return ModelOut.model_validate(model).model_copy(update={"stages": stages, **extra})


@router.get("", response_model=list[ModelOut])
async def list_models(request: Request, session: SessionDep) -> list[ModelOut]:
    """Registered models with the versions holding each stage (those of the key's owners,
    for an owner-limited key)."""
    models = await models_db.list_models(session, owners=owners_filter(request))
    held = await models_db.stage_holders(session, [m.name for m in models])
    return [model_out(m, held[m.name]) for m in models]


@router.get("/{model_name}", response_model=ModelOut)
async def get_model(model_name: str, session: SessionDep) -> ModelOut:
    """A model with every version and its stage history."""
    model = await models_db.get_model(session, model_name)
    versions = list(await models_db.list_versions(session, model_name))
    history = [
        StageChangeOut.model_validate(c) for c in await models_db.stage_history(session, model_name)
    ]
    return model_out(model, versions, versions=[version_out(v) for v in versions], history=history)


@router.get("/{model_name}/versions/{version}", response_model=ModelVersionOut)
async def get_model_version(
    model_name: str, version: VersionNumber, request: Request, session: SessionDep
) -> ModelVersionOut:
    """A version with its lineage: the run that trained it and the signals that started it
    (those the key may read)."""
    found = await models_db.get_version(session, model_name, version)
    lineage: dict = {"run_id": found.run_id}
    try:
        run = await runs_db.get_run(session, found.run_id)
    except NotFound:
        run = None
    if run is not None:
        readable = signal_owners_filter(request)
        signals = [
            s
            for s in await signals_db.signals_consumed_by_run(session, run.run_id)
            if keys.produced_for(readable, s.producer_owners)
        ]
        lineage.update(
            workflow_id=run.workflow_id,
            branch=branch_of(run.workflow_id),
            run_number=run.run_number,
            cause=run.cause.get("kind"),
            signals=[
                {"id": s.id, "name": s.name, "params": s.params, "branch": s.branch}
                for s in signals
            ],
        )
    return version_out(found, lineage)


@router.post("/{model_name}/versions/{version}/promote", response_model=PromoteOut)
async def promote_model_version(
    model_name: str, version: int, body: PromoteIn, registry: RegistryDep
) -> PromoteOut:
    """Move a version to `staging` or `production`; the previous holder is archived and
    `model.deployed` is published (as the model owner's signal, of the version's branch).
    Promoting an older version is a rollback. Only versions registered by `prod` runs may
    reach `production` (403 for a branch's version)."""
    promotion = await registry.promote(model_name, version, body.stage)
    return PromoteOut(
        version=version_out(promotion.version), previous_version=promotion.previous_version
    )
