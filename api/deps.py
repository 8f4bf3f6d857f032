"""FastAPI dependencies as `Annotated` aliases; tests override them. They are `async def`
even where they only read app state: FastAPI runs a plain `def` dependency in a worker thread,
which costs every request a thread hop."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from maestro.ends import RunEnds
from maestro.runs import RunsService
from maestro.schedules import Schedules
from maestro.settings import Settings
from maestro.signals import SignalBus
from maestro.workflows import WorkflowsService


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """A session in a transaction that commits when the route returns without error."""
    async with request.app.state.sessions.begin() as session:
        yield session


async def get_runs_service(request: Request) -> RunsService:
    return request.app.state.runs


async def get_run_ends(request: Request) -> RunEnds:
    return request.app.state.ends


async def get_signal_bus(request: Request) -> SignalBus:
    return request.app.state.bus


async def get_schedules(request: Request) -> Schedules:
    return request.app.state.schedules


async def get_workflows_service(request: Request) -> WorkflowsService:
    return request.app.state.workflows


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[AsyncSession, Depends(get_session)]
RunsDep = Annotated[RunsService, Depends(get_runs_service)]
EndsDep = Annotated[RunEnds, Depends(get_run_ends)]
BusDep = Annotated[SignalBus, Depends(get_signal_bus)]
SchedulesDep = Annotated[Schedules, Depends(get_schedules)]
WorkflowsDep = Annotated[WorkflowsService, Depends(get_workflows_service)]
