"""Step functions the benchmark workflows run: each returns the wall-clock time it ran at.

They are coroutines, as the raw floor's activity is: Maestro runs a coroutine step on the
worker's event loop and a plain function in a thread, and the benchmark compares the path to
the step's code, not the thread hop (which a plain-function activity pays on raw Temporal too).
"""

from __future__ import annotations

import asyncio
import time

from maestro.context import StepContext


async def stamp(ctx: StepContext) -> dict:
    """The first code of a run: when it started."""
    return {"t": time.time()}


async def end(ctx: StepContext) -> dict:
    """The last code of an upstream run: when it ended."""
    return {"t_end": time.time()}


async def nap_and_count(ctx: StepContext) -> dict:
    """Sleep `seconds`, then append `<run id> <step id>` to `file`: one line per execution."""
    await asyncio.sleep(ctx.args.get("seconds", 0))
    with open(ctx.args["file"], "a") as f:  # noqa: ASYNC230 - one short append
        f.write(f"{ctx.run_id} {ctx.step_id}\n")
    return {}
