"""The worker process: polls Maestro's task queues and runs RunWorkflow and step activities."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from temporalio.worker import Worker

from maestro.db.engine import create_engine, session_factory
from maestro.settings import Settings
from maestro.temporal_client import connect
from workers.activities import StepActivities
from workers.workflow import RunWorkflow

logger = logging.getLogger(__name__)


async def run_worker(settings: Settings, *, stop: asyncio.Event | None = None) -> None:
    """Run until `stop` is set (or SIGTERM/SIGINT), then drain and return."""
    engine = create_engine(settings.require_database_url())
    client = await connect(settings.temporal)
    activities = StepActivities(session_factory(engine), settings.runs_dir.resolve())
    activity_list = [activities.run_step, activities.record_steps, activities.finish_run]
    limit = settings.worker.max_concurrent_activities
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    workers = [
        Worker(
            client,
            task_queue=settings.temporal.task_queue,
            workflows=[RunWorkflow],
            activities=activity_list,
            max_concurrent_activities=limit,
        )
    ]
    workers += [
        Worker(client, task_queue=queue, activities=activity_list, max_concurrent_activities=limit)
        for queue in settings.worker.task_queues
    ]
    async with contextlib.AsyncExitStack() as stack:
        for worker in workers:
            await stack.enter_async_context(worker)
        logger.info(
            "worker started",
            extra={"task_queues": [settings.temporal.task_queue, *settings.worker.task_queues]},
        )
        await stop.wait()
    await engine.dispose()
    logger.info("worker stopped")
