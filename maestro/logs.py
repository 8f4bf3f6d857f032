"""JSON logs to stdout, with the `extra=` fields of each record."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from temporalio import activity, workflow

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "INFO") -> None:
    """Send every log record to stdout as one JSON object per line."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Temporal's loggers would also append their workflow/activity info to each message as a
    # dict's repr; the JSON line already carries it as `temporal_workflow`/`temporal_activity`.
    workflow.logger.workflow_info_on_message = False
    activity.logger.activity_info_on_message = False
