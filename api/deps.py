"""FastAPI dependencies as `Annotated` aliases; tests override them. They are `async def`
even where they only read app state: FastAPI runs a plain `def` dependency in a worker thread,
which costs every request a thread hop."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from maestro.actions import RunActions
from maestro.artifacts import ArtifactStore
from maestro.ends import RunEnds
from maestro.keys import KeyCache
from maestro.registry import Registry
from maestro.runs import RunsService
from maestro.schedules import Schedules
from maestro.secrets import SecretBox
from maestro.settings import Settings
from maestro.signals import SignalBus
from maestro.workflows import WorkflowsService


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """A session in a transaction that commits when the route returns without error."""
    async with request.app.state.sessions.begin() as session:
        yield session


async def get_sessions(request: Request) -> async_sessionmaker[AsyncSession]:
    """The session factory, for routes that need a transaction of their own."""
    return request.app.state.sessions


async def get_runs_service(request: Request) -> RunsService:
    return request.app.state.runs


async def get_run_actions(request: Request) -> RunActions:
    return request.app.state.actions


async def get_run_ends(request: Request) -> RunEnds:
    return request.app.state.ends


async def get_signal_bus(request: Request) -> SignalBus:
    return request.app.state.bus


async def get_schedules(request: Request) -> Schedules:
    return request.app.state.schedules


async def get_workflows_service(request: Request) -> WorkflowsService:
    return request.app.state.workflows


async def get_registry(request: Request) -> Registry:
    return request.app.state.registry


async def get_secret_box(request: Request) -> SecretBox | None:
    return request.app.state.secret_box


async def get_artifact_store(request: Request) -> ArtifactStore:
    return request.app.state.artifacts


async def get_key_cache(request: Request) -> KeyCache:
    return request.app.state.key_cache


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[AsyncSession, Depends(get_session)]
RunsDep = Annotated[RunsService, Depends(get_runs_service)]
ActionsDep = Annotated[RunActions, Depends(get_run_actions)]
EndsDep = Annotated[RunEnds, Depends(get_run_ends)]
BusDep = Annotated[SignalBus, Depends(get_signal_bus)]
SchedulesDep = Annotated[Schedules, Depends(get_schedules)]
WorkflowsDep = Annotated[WorkflowsService, Depends(get_workflows_service)]
SessionsDep = Annotated[async_sessionmaker[AsyncSession], Depends(get_sessions)]
RegistryDep = Annotated[Registry, Depends(get_registry)]
SecretBoxDep = Annotated[SecretBox | None, Depends(get_secret_box)]
KeyCacheDep = Annotated[KeyCache, Depends(get_key_cache)]
ArtifactStoreDep = Annotated[ArtifactStore, Depends(get_artifact_store)]
