"""The model registry service: promoting a version to a stage archives the previous holder and
publishes `model.deployed` in the same transaction (so downstream workflows can react). A model
belongs to the owner of the workflow that registered it: only that owner's runs promote it
(the API checks the calling key's owners before it gets here). Only the `prod` branch reaches
the `production` stage: a version a branch's run registered, or a branch's deploy step, is
refused it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from maestro import outbox
from maestro.branches import PROD
from maestro.db import models as models_db
from maestro.db.tables import Model, ModelVersion, StageChange
from maestro.errors import Forbidden, InvalidInput, Problem
from maestro.signals import Producer, SignalBus, SignalIn

PRODUCTION = "production"
STAGES = ("staging", PRODUCTION)
DEPLOYED_SIGNAL = "model.deployed"


@dataclass
class Promotion:
    version: ModelVersion
    previous_version: int | None
    change: StageChange
    pending: Any = None


class Registry:
    """Stage changes of model versions."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], bus: SignalBus) -> None:
        self._sessions = sessions
        self._bus = bus

    async def promote(
        self, name: str, version: int, stage: str, *, reason: str = "api"
    ) -> Promotion:
        """Promote (or roll back to) a version; publishes `model.deployed`."""
        async with self._sessions.begin() as session:
            promotion = await self.promote_in(
                session, name, version, stage, reason=reason, producer=Producer(kind="outside")
            )
        await self._bus.after_commit(promotion.pending)
        return promotion

    async def after_commit(self, pending: Any) -> None:
        await self._bus.after_commit(pending)

    async def promote_in(
        self,
        session: AsyncSession,
        name: str,
        version: int,
        stage: str,
        *,
        reason: str,
        producer: Producer,
        run_id: str | None = None,
        request_key: str | None = None,
    ) -> Promotion:
        """Promote inside the caller's transaction; `request_key` makes a retry a no-op."""
        if stage not in STAGES:
            raise InvalidInput(
                "unknown stage",
                [
                    Problem(
                        ("body", "stage"),
                        f"unknown stage {stage!r}; use one of {', '.join(STAGES)}",
                        "stage",
                    )
                ],
            )
        # The model row lock orders stage changes of one model.
        model = (
            await session.execute(select(Model).where(Model.name == name).with_for_update())
        ).scalar_one_or_none()
        target = await models_db.get_version(session, name, version, lock=True)
        assert model is not None  # a version exists, so its model does
        if stage == PRODUCTION and target.branch != PROD:
            raise Forbidden(
                f"version {version} of model {name!r} was registered by a run of branch "
                f"{target.branch!r}; only versions of the prod branch may reach production "
                "(deploy the workflow to prod and train it there)"
            )
        if run_id is not None:
            owner, branch = await models_db.run_owner_and_branch(session, run_id)
            if owner != model.owner:
                raise Forbidden(
                    f"model {name!r} belongs to {model.owner or 'no owner'!r}; run {run_id} of "
                    f"a workflow of {owner or 'no owner'!r} cannot promote it"
                )
            if stage == PRODUCTION and branch != PROD:
                raise Forbidden(
                    f"run {run_id} is of branch {branch!r}; only prod runs may deploy to production"
                )
        if producer.owners is None and producer.workflow_id is None:
            # Promoted from outside (the API): the deploy signal is the model owner's, and of
            # the version's branch (a branch's deployments reach only its own workflows).
            producer = producer.model_copy(
                update={"owners": [model.owner], "branch": producer.branch or target.branch}
            )
        if request_key is not None:
            earlier = await models_db.change_by_key(session, request_key)
            if earlier is not None:
                return Promotion(target, earlier.previous_version, earlier)
        holder = await models_db.holder_of(session, name, stage)
        previous = holder.version if holder is not None else None
        if holder is not None and holder.version != version:
            holder.stage = "archived"
        target.stage = stage
        change = StageChange(
            model_name=name,
            version=version,
            stage=stage,
            previous_version=previous,
            run_id=run_id,
            reason=reason,
            request_key=request_key,
        )
        session.add(change)
        await session.flush()
        deployed = SignalIn(
            name=DEPLOYED_SIGNAL,
            params={
                "model": name,
                "version": version,
                "stage": stage,
                "previous_version": previous if previous is not None else 0,
                "run_id": run_id or "",
                "artifact_uri": target.artifact_uri,
            },
            request_id=f"stage-change:{change.id}",
        )
        pending = await self._bus.publish_in(session, [deployed], producer)
        await outbox.record(
            session,
            f"model.stage_changed:{change.id}",
            "model.stage_changed",
            {**deployed.params, "reason": reason},
            workflow_id=producer.workflow_id,
            owner=model.owner,
        )
        return Promotion(target, previous, change, pending)
