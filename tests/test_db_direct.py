"""Statements run straight through asyncpg (maestro.db.direct) keep the session's semantics:
its transaction, its pending changes and its objects. Real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from maestro.db import admission as admission_db
from maestro.db import workflows as workflows_db
from maestro.db.runs import insert_run
from maestro.db.tables import Run
from maestro.definitions import parse_definition
from maestro.runtime import RunStatus
from tests.conftest import unique_id


async def _workflow(sessions) -> str:
    definition = parse_definition(
        {"id": unique_id("direct"), "steps": [{"id": "s", "type": "noop"}]}
    )
    async with sessions.begin() as session:
        await workflows_db.push_version(session, definition)
    return definition.id


def _run(workflow_id: str, number: int) -> Run:
    return Run(
        run_id=f"{workflow_id}-{number}",
        workflow_id=workflow_id,
        version=1,
        run_number=number,
        status=RunStatus.queued,
        params={},
        cause={"kind": "manual"},
        temporal_workflow_id=f"{workflow_id}-run-{number}",
        admitted_at=datetime.now(UTC),
    )


async def test_a_direct_first_statement_belongs_to_the_transaction(sessions) -> None:
    """The run number taken by a transaction's first statement is gone with its rollback."""
    workflow_id = await _workflow(sessions)

    class Abort(Exception):
        pass

    with pytest.raises(Abort):
        async with sessions.begin() as session:
            workflow = await workflows_db.get_workflow(session, workflow_id, count_run=True)
            assert workflow.run_counter == 1
            raise Abort
    async with sessions() as session:
        assert (await workflows_db.get_workflow(session, workflow_id)).run_counter == 0


async def test_direct_statements_see_pending_changes_and_keep_objects_tracked(sessions) -> None:
    """A change the session holds is flushed before a direct statement reads; an object a
    direct statement returned flushes its later changes, and the session's own object for
    the same row is the one refreshed."""
    workflow_id = await _workflow(sessions)
    async with sessions.begin() as session:
        loaded = await workflows_db.get_workflow(session, workflow_id, lock=True)
        counted = await workflows_db.get_workflow(session, workflow_id, count_run=True)
        assert counted is loaded and loaded.run_counter == 1
        run = _run(workflow_id, 1)
        await insert_run(session, run)
        assert run.created_at is not None
        assert await admission_db.occupancy(session, workflow_id) == (0, 1)
        run.status = RunStatus.succeeded  # pending in the session, not yet flushed
        assert await admission_db.occupancy(session, workflow_id) == (0, 0)
        counted.run_counter -= 1
    async with sessions() as session:
        assert (await workflows_db.get_workflow(session, workflow_id)).run_counter == 0
        assert (await session.get(Run, run.run_id)).status == RunStatus.succeeded
