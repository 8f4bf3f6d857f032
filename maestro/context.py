"""What a `python` step's function receives: the typed StepContext."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from maestro.artifacts import ArtifactStore, LocalArtifactStore
from maestro.errors import ArtifactNotFound


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
    # The worker's artifact store; unset: files only (`local_path` of `file://` URIs, and
    # checkpoints under the run's directory).
    _store: ArtifactStore | None = field(default=None, repr=False)

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
        """A local path to read the artifact at `uri` (as found in upstream outputs) from: the
        file itself in a local store, a copy in this worker's cache from an object store."""
        parsed = urlparse(uri)
        if self._store is None or parsed.scheme == "":
            if parsed.scheme not in ("file", ""):
                raise ValueError(f"{uri!r} is not a local artifact")
            return Path(unquote(parsed.path))
        return self._store.local_path(uri)

    def _checkpoints(self) -> tuple[ArtifactStore, str]:
        store = self._store or LocalArtifactStore(self._work_dir / ".checkpoints")
        return store, f"checkpoints/{self.run_id}/{self.step_id}"

    def save_checkpoint(self, data: bytes) -> None:
        """Keep `data` as this step's checkpoint in the artifact store, replacing the last one
        (written whole or not at all): a retried attempt reads it with `load_checkpoint()`,
        on whichever worker it runs."""
        store, key = self._checkpoints()
        store.put_bytes(key, data)

    def load_checkpoint(self) -> bytes | None:
        """The checkpoint an earlier attempt of this step in this run saved, or None."""
        store, key = self._checkpoints()
        try:
            return store.get_bytes(store.uri(key))
        except ArtifactNotFound:
            return None

    def progress(self, details: Any) -> None:
        """Report progress (sent to Temporal as heartbeat details; thread-safe)."""
        self._report(details)
