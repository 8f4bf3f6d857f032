"""The definitions cache: each stored version parsed once, per process. Real PostgreSQL."""

from __future__ import annotations

import pytest

from maestro.db import workflows as workflows_db
from maestro.definitions import parse_definition
from maestro.definitions_cache import DefinitionsCache
from maestro.errors import NotFound
from tests.conftest import unique_id


async def test_a_version_is_read_once_and_then_served_from_memory(sessions) -> None:
    definition = parse_definition(
        {"id": unique_id("cache"), "steps": [{"id": "s", "type": "noop"}]}
    )
    async with sessions.begin() as session:
        await workflows_db.push_version(session, definition)
    cache = DefinitionsCache()
    assert (definition.id, 1) not in cache
    async with sessions() as session:
        first = await cache.get(session, definition.id, 1)
    assert first == definition
    assert (definition.id, 1) in cache
    async with sessions.begin() as session:
        await workflows_db.delete_workflow(session, definition.id)
    async with sessions() as session:
        # Versions are immutable: the cached one answers without the database.
        assert await cache.get(session, definition.id, 1) is first
    assert cache.loaded(definition.id, 1) is first


async def test_an_unknown_version_is_not_found_and_not_cached(sessions) -> None:
    cache = DefinitionsCache()
    async with sessions() as session:
        with pytest.raises(NotFound):
            await cache.get(session, unique_id("absent"), 1)
    with pytest.raises(KeyError):
        cache.loaded("absent", 1)
