"""Step functions the benchmark workflows run: each returns the wall-clock time it ran at."""

from __future__ import annotations

import time

from maestro.context import StepContext


def stamp(ctx: StepContext) -> dict:
    """The first code of a run: when it started."""
    return {"t": time.time()}


def end(ctx: StepContext) -> dict:
    """The last code of an upstream run: when it ended."""
    return {"t_end": time.time()}
