"""What a `python` step's function receives: the typed StepContext."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class StepContext:
    """Params, upstream outputs, a per-run working directory and a progress callback."""

    run_id: str
    workflow_id: str
    run_number: int
    step_id: str
    attempt: int
    params: dict[str, Any]
    args: dict[str, Any]
    upstream: dict[str, dict[str, Any]]
    work_dir: Path
    # Details from the previous attempt's last heartbeat, to resume from a checkpoint.
    previous_progress: Any = None
    _report: Callable[[Any], None] = field(default=lambda details: None, repr=False)

    def progress(self, details: Any) -> None:
        """Report progress (sent to Temporal as heartbeat details; thread-safe)."""
        self._report(details)
