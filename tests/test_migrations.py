"""Schema migrations on a real PostgreSQL database that already holds data."""

from __future__ import annotations

import asyncio
import json
import uuid

import asyncpg

from maestro.db.engine import upgrade
from maestro.definitions import SignalCondition
from maestro.triggers import condition_route


async def test_trigger_routes_are_computed_for_registered_triggers(postgres_server):
    """0008 gives triggers registered before it the routes a new registration would get."""
    name = f"maestro_migrate_{uuid.uuid4().hex[:10]}"
    base = postgres_server.replace("postgresql+asyncpg://", "postgresql://")
    admin = await asyncpg.connect(base)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = base.rsplit("/", 1)[0] + f"/{name}"
    try:
        await asyncio.to_thread(upgrade, url, "0007")
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
            "on-finish": ["maestro.run.succeeded?workflow_id=up"],
            # The first string equality in key order; a number narrows nothing.
            "join": ["orders?dt=x", "fx"],
        }
        # The same routes as registering the triggers now gives.
        assert routes == {
            trigger_id: [condition_route(SignalCondition(**c)) for c in conditions]
            for trigger_id, conditions in specs.items()
        }
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
