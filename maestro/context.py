"""What a `python` step's function receives: the typed StepContext."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse


@dataclass
class StepContext:
    """Params, upstream outputs, the secrets the step names, a per-run working directory and a
    progress callback."""

    run_id: str
    workflow_id: str
    run_number: int
    step_id: str
    attempt: int
    params: dict[str, Any]
    args: dict[str, Any]
    upstream: dict[str, dict[str, Any]]
    # The directories behind `work_dir` and `artifact_dir`, made when first asked for: most
    # steps write no files, and their start should not wait for the disk.
    _work_dir: Path
    # Details from the previous attempt's last heartbeat, to resume from a checkpoint.
    previous_progress: Any = None
    _artifact_dir: Path | None = None
    # train/evaluate: the input data reference; evaluate: the model version's files.
    data: str | None = None
    model_path: Path | None = None
    # The values of the secrets the step's `secrets` param names, by name (never logged).
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    _report: Callable[[Any], None] = field(default=lambda details: None, repr=False)
    # The step's `retry.max_attempts` (steps that count their own failures, like polling).
    max_attempts: int = 1
    _made: set[Path] = field(default_factory=set, repr=False)

    def _made_dir(self, path: Path) -> Path:
        if path not in self._made:
            # Owner only: other runs' steps must not read it.
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._made.add(path)
        return path

    @property
    def work_dir(self) -> Path:
        """The run's working directory (mode 0700), shared by its steps (exists once asked
        for)."""
        return self._made_dir(self._work_dir)

    @property
    def artifact_dir(self) -> Path | None:
        """Where to write files that should become artifacts (`{"artifacts": {name: path}}`);
        exists once asked for."""
        if self._artifact_dir is None:
            return None
        self._made_dir(self._work_dir)  # first, so that it gets its mode
        return self._made_dir(self._artifact_dir)

    def local_path(self, uri: str) -> Path:
        """A local path for a `file://` artifact URI (as found in upstream outputs)."""
        parsed = urlparse(uri)
        if parsed.scheme not in ("file", ""):
            raise ValueError(f"{uri!r} is not a local artifact")
        return Path(unquote(parsed.path))

    def progress(self, details: Any) -> None:
        """Report progress (sent to Temporal as heartbeat details; thread-safe)."""
        self._report(details)
