"""The worker process: polls Maestro's task queues and runs RunWorkflow and step activities,
and sweeps (`maestro.sweeper`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from prometheus_client import start_http_server
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from maestro import environments
from maestro.artifacts import open_store
from maestro.db.engine import create_engine, session_factory
from maestro.definitions_cache import DefinitionsCache
from maestro.errors import ConfigurationError
from maestro.retention import Retention, align_temporal_retention
from maestro.runs import RunsService
from maestro.runtime import recording_queue
from maestro.schedules import Schedules
from maestro.secrets import SecretBox
from maestro.settings import Settings
from maestro.signals import SignalBus
from maestro.sweeper import Sweeper
from maestro.temporal_client import WORKER_RETRY, connect, register_search_attributes
from maestro.webhooks import Dispatcher
from workers.activities import ScheduleActivities, StepActivities
from workers.alerts import AlertActivities, FreshnessWorkflow, SlaWorkflow
from workers.composite import ForeachWorkflow, WhileWorkflow
from workers.schedules import TimedRunWorkflow
from workers.workflow import RunWorkflow

WORKFLOWS = [
    RunWorkflow,
    TimedRunWorkflow,
    ForeachWorkflow,
    WhileWorkflow,
    SlaWorkflow,
    FreshnessWorkflow,
]

logger = logging.getLogger(__name__)

# Recordings one worker lets wait for the database at once (each an idle coroutine).
RECORDING_LIMIT = 2_000


def new_worker(
    client: Client,
    task_queue: str,
    activities: StepActivities,
    schedule_activities: ScheduleActivities | None = None,
    alert_activities: AlertActivities | None = None,
    *,
    limit: int = 100,
    workflows: bool = True,
    sandbox: bool = True,
) -> Worker:
    """A worker for one task queue: the workflows (unless `workflows` is false) and the step
    activities, plus the schedule-fire activity where given. `sandbox` runs the workflows in
    Temporal's sandbox (tests always do; see WorkerSettings.workflow_sandbox)."""
    activity_list: list[Callable[..., Any]] = [
        activities.run_step,
        activities.run_iteration_step,
        activities.record_steps,
        activities.record_step_success,
        activities.register_waits,
        activities.finish_run,
    ]
    composites = activities.composites
    activity_list += [
        composites.prepare_foreach,
        composites.load_iterations,
        composites.record_iterations,
        composites.open_iteration,
        composites.resume_while,
        composites.finish_composite,
        composites.start_subworkflow,
    ]
    if schedule_activities is not None:
        activity_list.append(schedule_activities.admit_fire)
    if alert_activities is not None:
        activity_list += [alert_activities.check_sla, alert_activities.check_freshness]
    return Worker(
        client,
        task_queue=task_queue,
        workflows=WORKFLOWS if workflows else [],
        activities=activity_list,
        max_concurrent_activities=limit,
        workflow_runner=SandboxedWorkflowRunner() if sandbox else UnsandboxedWorkflowRunner(),
        # Cancellation reaches an activity only with a heartbeat; send them often enough that
        # stopping a run takes about a second, whatever the step's heartbeat timeout.
        max_heartbeat_throttle_interval=timedelta(seconds=1),
        default_heartbeat_throttle_interval=timedelta(seconds=1),
    )


def recording_worker(client: Client, task_queue: str, activities: StepActivities) -> Worker:
    """Serves the recordings that wait for the database (RunWorkflow's fallback), apart from
    steps: each waits in one cheap attempt, so many may wait at once, and they heartbeat
    rarely."""
    return Worker(
        client,
        task_queue=recording_queue(task_queue),
        activities=[
            activities.record_steps,
            activities.record_step_success,
            activities.finish_run,
            activities.composites.record_iterations,
        ],
        max_concurrent_activities=RECORDING_LIMIT,
        max_heartbeat_throttle_interval=timedelta(seconds=30),
        default_heartbeat_throttle_interval=timedelta(seconds=30),
    )


def work_root(settings: Settings) -> Path:
    """Where runs' directories go: never inside the data directory, which holds the API key,
    the secrets key and the embedded database."""
    root = settings.worker.work_root_dir()
    if root.is_relative_to(settings.data_dir.resolve()):
        raise ConfigurationError(
            f"MAESTRO_WORKER__WORK_ROOT ({root}) is inside MAESTRO_DATA_DIR; steps could reach "
            "its keys and database there: choose a directory outside it"
        )
    if os.geteuid() == 0 and not settings.worker.run_as_user:
        logger.warning(
            "the worker runs as root and MAESTRO_WORKER__RUN_AS_USER is unset: shell steps "
            "run as root"
        )
    return root


def _start_dispatcher(
    settings: Settings, sessions: async_sessionmaker[AsyncSession], stop: asyncio.Event
) -> asyncio.Task[None] | None:
    """The webhook dispatcher, beside the workers (it delivers after the commits, so a slow
    receiver never holds a run); none when dispatch is off or no secrets key signs."""
    if not settings.webhooks.dispatch:
        return None
    box = SecretBox.from_settings(settings)
    if box is None:
        logger.warning("webhooks are not delivered: no secrets key (MAESTRO_SECRETS_KEY)")
        return None
    dispatcher = Dispatcher(sessions, box, settings.webhooks, settings.outbound)
    return asyncio.create_task(dispatcher.run(stop))


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def run_dispatcher(settings: Settings, *, stop: asyncio.Event | None = None) -> None:
    """A process that only delivers webhook events (`maestro dispatcher`), at a lower CPU
    priority than the processes that carry runs; until `stop` (or SIGTERM/SIGINT)."""
    if not settings.webhooks.dispatch:
        raise ConfigurationError(
            "MAESTRO_WEBHOOKS__DISPATCH is false: this process would deliver nothing"
        )
    if SecretBox.from_settings(settings) is None:
        raise ConfigurationError(
            "webhooks cannot be signed: set MAESTRO_SECRETS_KEY or create the key file "
            f"{settings.secrets_key_path}"
        )
    os.nice(settings.webhooks.nice)
    engine = create_engine(settings.require_database_url(), pool_size=2, max_overflow=2)
    if settings.worker.metrics_port:
        start_http_server(settings.worker.metrics_port, addr=settings.worker.metrics_host)
    stop = stop or _stop_on_signals()
    dispatching = _start_dispatcher(settings, session_factory(engine), stop)
    assert dispatching is not None
    logger.info("dispatcher started", extra={"nice": settings.webhooks.nice})
    await dispatching
    await engine.dispose()
    logger.info("dispatcher stopped")


async def run_worker(settings: Settings, *, stop: asyncio.Event | None = None) -> None:
    """Run until `stop` is set (or SIGTERM/SIGINT), then drain and return."""
    engine = create_engine(
        settings.require_database_url(),
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
    )
    client = await connect(settings.temporal, WORKER_RETRY)
    sessions = session_factory(engine)
    search_attributes = await register_search_attributes(client, settings.temporal)
    runs = RunsService(
        sessions,
        client,
        settings.temporal,
        search_attributes=search_attributes,
        definitions=DefinitionsCache(),
    )
    bus = SignalBus(sessions, runs, client)
    activities = StepActivities(
        sessions,
        work_root(settings),
        bus,
        open_store(settings),
        policy=settings.worker,
        secret_box=SecretBox.from_settings(settings),
        outbound=settings.outbound,
        code_cache=settings.data_dir.resolve() / "code-cache",
    )
    schedules = Schedules(sessions, runs, client, settings.temporal)
    schedule_activities = ScheduleActivities(schedules)
    retention = Retention(sessions, settings.retention)
    if settings.retention.days is not None and settings.retention.align_temporal:
        try:
            await align_temporal_retention(client, settings.temporal.namespace, retention.max_age)
        except Exception as exc:  # noqa: BLE001 - e.g. no rights on the namespace
            logger.warning(
                "could not align Temporal's namespace retention", extra={"error": str(exc)}
            )
    sweeper = Sweeper(sessions, runs, bus, schedules, retention)
    limit = settings.worker.max_concurrent_activities
    if settings.worker.metrics_port:
        start_http_server(settings.worker.metrics_port, addr=settings.worker.metrics_host)
    stop = stop or _stop_on_signals()
    workers = [
        new_worker(
            client,
            settings.temporal.task_queue,
            activities,
            schedule_activities,
            AlertActivities(sessions, bus),
            limit=limit,
            sandbox=settings.worker.workflow_sandbox,
        )
    ]
    workers += [
        new_worker(client, queue, activities, limit=limit, workflows=False)
        for queue in settings.worker.task_queues
    ]
    workers.append(recording_worker(client, settings.temporal.task_queue, activities))
    dispatching = _start_dispatcher(settings, sessions, stop)
    queues = [settings.temporal.task_queue, *settings.worker.task_queues]
    # Recorded before the first poll: a deploy that sees this worker sees what it has installed.
    await environments.record(sessions, queues)
    async with contextlib.AsyncExitStack() as stack:
        for worker in workers:
            await stack.enter_async_context(worker)
        reporting = asyncio.create_task(environments.record_every(sessions, queues))
        logger.info("worker started", extra={"task_queues": queues})
        sweeping = asyncio.create_task(
            sweeper.run(
                settings.worker.sweep_interval_seconds, settings.worker.reconcile_interval_seconds
            )
        )
        await stop.wait()
        sweeping.cancel()
        reporting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeping
        with contextlib.suppress(asyncio.CancelledError):
            await reporting
    if dispatching is not None:
        await dispatching
    await runs.close()
    await engine.dispose()
    logger.info("worker stopped")
