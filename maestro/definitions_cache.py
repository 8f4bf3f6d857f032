"""A process's cache of workflow definitions by (workflow id, version): a version is immutable,
so an entry never goes stale; one instance is shared by the services of a process."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from maestro.db import workflows as workflows_db
from maestro.definitions import WorkflowDefinition


class DefinitionsCache:
    """Parsed definitions of stored versions, loaded once each."""

    def __init__(self) -> None:
        self._definitions: dict[tuple[str, int], WorkflowDefinition] = {}

    def __contains__(self, key: tuple[str, int]) -> bool:
        return key in self._definitions

    async def get(
        self, session: AsyncSession, workflow_id: str, version: int
    ) -> WorkflowDefinition:
        """The version's definition, read from the database the first time (NotFound if the
        version does not exist)."""
        key = (workflow_id, version)
        if key not in self._definitions:
            stored = await workflows_db.get_version(session, workflow_id, version)
            self._definitions[key] = WorkflowDefinition.model_validate(stored.definition)
        return self._definitions[key]

    def add(self, workflow_id: str, version: int, stored: dict) -> WorkflowDefinition:
        """The version's definition, parsed from its stored form (already read by the caller)
        the first time."""
        key = (workflow_id, version)
        if key not in self._definitions:
            self._definitions[key] = WorkflowDefinition.model_validate(stored)
        return self._definitions[key]

    def loaded(self, workflow_id: str, version: int) -> WorkflowDefinition:
        """The version's definition, which an earlier `get` must have loaded."""
        return self._definitions[(workflow_id, version)]
