"""The raw-Temporal floor: the smallest workflow with one activity, and a worker for it.

`python -m bench.raw --address 127.0.0.1:7233 --task-queue bench-raw` runs the worker until
SIGINT/SIGTERM. The activity returns the wall-clock time it was entered, so the bench process
measures start -> activity code exactly as it does for a Maestro run's first step.
"""

from __future__ import annotations

import time

from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():
    from maestro.runtime import DEFAULT_HEARTBEAT_TIMEOUT, DEFAULT_STEP_TIMEOUT

RAW_WORKFLOW = "RawWorkflow"
RAW_TASK_QUEUE = "bench-raw"


@activity.defn(name="raw_stamp")
async def raw_stamp() -> float:
    """When the activity's code started."""
    return time.time()


@workflow.defn(name=RAW_WORKFLOW)
class RawWorkflow:
    """One activity, its entry time as the result."""

    @workflow.run
    async def run(self) -> float:
        # A Maestro step's default timeouts: both leave Temporal the same timers to fire later.
        return await workflow.execute_activity(
            raw_stamp,
            start_to_close_timeout=DEFAULT_STEP_TIMEOUT,
            heartbeat_timeout=DEFAULT_HEARTBEAT_TIMEOUT,
        )


RAW_FANOUT_WORKFLOW = "RawFanoutWorkflow"
RAW_CHILDREN_WORKFLOW = "RawChildrenWorkflow"


async def _bounded(count: int, concurrency: int, start) -> None:
    """Run `start(i)` for i in [0, count), at most `concurrency` at once."""
    import asyncio

    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with gate:
            await start(i)

    await asyncio.gather(*(one(i) for i in range(count)))


@workflow.defn(name=RAW_FANOUT_WORKFLOW)
class RawFanoutWorkflow:
    """`count` activities, at most `concurrency` at once: the floor of a foreach's iterations
    (one execution carries at most about 1,300 of them, as a ForeachWorkflow leaf does)."""

    @workflow.run
    async def run(self, count: int, concurrency: int) -> None:
        async def start(_: int) -> None:
            await workflow.execute_activity(
                raw_stamp,
                start_to_close_timeout=DEFAULT_STEP_TIMEOUT,
                heartbeat_timeout=DEFAULT_HEARTBEAT_TIMEOUT,
            )

        await _bounded(count, concurrency, start)


@workflow.defn(name=RAW_CHILDREN_WORKFLOW)
class RawChildrenWorkflow:
    """`count` child RawWorkflows, at most `concurrency` at once: the floor of a foreach of
    subworkflow steps."""

    @workflow.run
    async def run(self, count: int, concurrency: int) -> None:
        base = workflow.info().workflow_id

        async def start(i: int) -> None:
            await workflow.execute_child_workflow(RAW_WORKFLOW, id=f"{base}:{i}")

        await _bounded(count, concurrency, start)


async def _serve(address: str, task_queue: str, max_concurrent_activities: int) -> None:
    import asyncio
    import signal

    from temporalio.client import Client
    from temporalio.worker import UnsandboxedWorkflowRunner, Worker

    client = await Client.connect(address)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    worker = Worker(
        client,
        task_queue=task_queue,
        workflows=[RawWorkflow, RawFanoutWorkflow, RawChildrenWorkflow],
        activities=[raw_stamp],
        # The same limit and workflow runner as a Maestro worker's defaults.
        max_concurrent_activities=max_concurrent_activities,
        workflow_runner=UnsandboxedWorkflowRunner(),
    )
    async with worker:
        print("raw worker ready", flush=True)
        await stop.wait()


def main() -> None:
    import argparse
    import asyncio

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--address", required=True)
    parser.add_argument("--task-queue", default=RAW_TASK_QUEUE)
    parser.add_argument("--max-concurrent-activities", type=int, default=100)
    args = parser.parse_args()
    asyncio.run(_serve(args.address, args.task_queue, args.max_concurrent_activities))


if __name__ == "__main__":
    main()
