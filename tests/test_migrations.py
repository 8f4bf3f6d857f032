"""Schema migrations on a real PostgreSQL database that already holds data."""

from __future__ import annotations

import asyncio
import json

import asyncpg

from maestro.db.engine import upgrade
from maestro.definitions import SignalCondition
from maestro.triggers import CompiledTrigger
from tests.conftest import scratch_database


async def test_trigger_routes_are_computed_for_registered_triggers(postgres_server):
    """0008 gives triggers registered before it the routes a new registration would get."""
    async with scratch_database(postgres_server, "0007") as url:
        db = await asyncpg.connect(url)
        try:
            await db.execute(
                "INSERT INTO workflows (id, owner, latest_version, is_active, run_counter)"
                " VALUES ('down', '', 1, true, 0)"
            )
            specs = {
                "on-finish": [
                    {"name": "maestro.run.succeeded", "where": {"workflow_id": "up"}},
                ],
                "join": [
                    {"name": "orders", "where": {"rows": {">": 0}, "table": "o", "dt": "x"}},
                    {"name": "fx", "where": {"rows": 5}},
                ],
            }
            for trigger_id, conditions in specs.items():
                await db.execute(
                    "INSERT INTO signal_triggers"
                    " (workflow_id, trigger_id, version, position, names, spec, active)"
                    " VALUES ('down', $1, 1, 0, $2, $3::jsonb, true)",
                    trigger_id,
                    [c["name"] for c in conditions],
                    json.dumps({"trigger_id": trigger_id, "conditions": conditions}),
                )
        finally:
            await db.close()

        await asyncio.to_thread(upgrade, url)

        db = await asyncpg.connect(url)
        try:
            routes = dict(await db.fetch("SELECT trigger_id, routes FROM signal_triggers"))
        finally:
            await db.close()
        assert routes == {
            # 0017: within production's branch first, then for outside signals.
            "on-finish": [
                "@prod/maestro.run.succeeded?workflow_id=up",
                "maestro.run.succeeded?workflow_id=up",
            ],
            # The first string equality in key order; a number narrows nothing.
            "join": ["@prod/orders?dt=x", "@prod/fx", "orders?dt=x", "fx"],
        }
        # The same routes as registering the triggers in production now gives.
        assert routes == {
            trigger_id: CompiledTrigger(
                trigger_id=trigger_id,
                position=0,
                kind="signal",
                conditions=[SignalCondition(**c) for c in conditions],
            ).branch_routes("prod")
            for trigger_id, conditions in specs.items()
        }


async def test_owners_of_models_and_signals_are_filled_where_derivable(postgres_server):
    """0010 gives models their first version's workflow owner and signals their producer's
    owners; afterwards the database fills a run's signal's owner itself."""

    async def signal(db, key: str, signal_name: str, params: dict, producer: dict) -> None:
        await db.execute(
            "INSERT INTO signals (name, seq, params, dedupe_key, producer, producer_run_id)"
            " VALUES ($1, (SELECT count(*) + 1 FROM signals), $2::jsonb, $3, $4::jsonb, $5)",
            signal_name,
            json.dumps(params),
            key,
            json.dumps(producer),
            producer.get("run_id"),
        )

    async with scratch_database(postgres_server, "0008") as url:
        db = await asyncpg.connect(url)
        try:
            for workflow_id, owner in (("train", "ml"), ("other", "zzz")):
                await db.execute(
                    "INSERT INTO workflows (id, owner, latest_version, is_active, run_counter)"
                    " VALUES ($1, $2, 1, true, 1)",
                    workflow_id,
                    owner,
                )
                await db.execute(
                    "INSERT INTO workflow_versions (workflow_id, version, definition, content_hash)"
                    " VALUES ($1, 1, '{}'::jsonb, $1)",
                    workflow_id,
                )
                await db.execute(
                    "INSERT INTO runs (run_id, workflow_id, version, run_number, status, params,"
                    " cause, temporal_workflow_id) VALUES ($1, $1, 1, 1, 'succeeded',"
                    " '{}'::jsonb, '{}'::jsonb, $1)",
                    workflow_id,
                )
            for model, run_id in (("churn", "train"), ("orphan", "deleted-run")):
                await db.execute("INSERT INTO models (name, latest_version) VALUES ($1, 1)", model)
                await db.execute(
                    "INSERT INTO model_versions (model_name, version, artifact_uri, metrics,"
                    " params, run_id, step_id, stage) VALUES ($1, 1, 'x', '{}'::jsonb,"
                    " '{}'::jsonb, $2, 'train', 'none')",
                    model,
                    run_id,
                )
            await signal(
                db,
                "run",
                "maestro.run.succeeded",
                {},
                {"kind": "run", "workflow_id": "train", "run_id": "train"},
            )
            await signal(
                db,
                "step",
                "report.ready",
                {},
                {"kind": "step", "workflow_id": "other", "run_id": "other", "step_id": "s"},
            )
            await signal(db, "outside", "orders.loaded", {}, {"kind": "outside"})
            await signal(db, "deployed", "model.deployed", {"model": "churn"}, {"kind": "outside"})
            await signal(
                db, "gone", "maestro.run.failed", {}, {"kind": "run", "workflow_id": "deleted"}
            )
        finally:
            await db.close()

        await asyncio.to_thread(upgrade, url, "0010")

        db = await asyncpg.connect(url)
        try:
            models = dict(await db.fetch("SELECT name, owner FROM models"))
            owners = dict(await db.fetch("SELECT dedupe_key, producer_owners FROM signals"))
            await signal(
                db,
                "new-run",
                "maestro.run.succeeded",
                {},
                {"kind": "run", "workflow_id": "other", "run_id": "other"},
            )
            await db.execute(
                "INSERT INTO signals (name, seq, params, dedupe_key, producer, producer_owners)"
                " VALUES ('x', 1, '{}'::jsonb, 'new-outside', '{\"kind\": \"outside\"}'::jsonb,"
                " ARRAY['team-k'])"
            )
            later = dict(
                await db.fetch(
                    "SELECT dedupe_key, producer_owners FROM signals"
                    " WHERE dedupe_key IN ('new-run', 'new-outside')"
                )
            )
        finally:
            await db.close()
        assert models == {"churn": "ml", "orphan": ""}
        assert owners == {
            "run": ["ml"],
            "step": ["zzz"],
            "outside": None,  # who published it is not known
            "deployed": ["ml"],  # a promotion through the API: the model owner's
            "gone": None,  # its workflow was deleted
        }
        assert later == {"new-run": ["zzz"], "new-outside": ["team-k"]}
