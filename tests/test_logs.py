"""Log lines: one JSON object each, Temporal's context as fields rather than in the message."""

from __future__ import annotations

import io
import json
import logging

from temporalio import activity
from temporalio.testing import ActivityEnvironment

from maestro.logs import configure_logging


def test_activity_logs_carry_temporal_info_as_a_field_not_in_the_message(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        configure_logging("INFO")

        def step() -> None:
            activity.logger.info("step attempt started", extra={"step_id": "train"})

        ActivityEnvironment().run(step)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    [line] = [json.loads(x) for x in out.getvalue().splitlines()]
    assert line["msg"] == "step attempt started"
    assert line["step_id"] == "train" and line["level"] == "info"
    assert line["temporal_activity"]["activity_type"] == "unknown"
