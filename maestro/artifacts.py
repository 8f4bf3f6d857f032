"""Artifacts: files and directories steps produce, kept in a store and referenced by URI.

The store is a small interface (`put`, `local_path`) so an object store can be added; the
default keeps artifacts on the local filesystem under the data directory (`file://` URIs).
Every artifact is recorded in PostgreSQL with its producing run and step, size and hash.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse


@dataclass(frozen=True)
class StoredArtifact:
    uri: str
    size: int
    sha256: str


class ArtifactStore(Protocol):
    """Where artifacts live."""

    def put(self, source: Path, *, run_id: str, step_id: str, name: str) -> StoredArtifact:
        """Copy a file or directory into the store."""

    def local_path(self, uri: str) -> Path:
        """A local path to read the artifact at `uri` from."""

    def put_bytes(self, key: str, data: bytes) -> str:
        """Store `data` under `key` (a relative path), replacing what was there; return its URI."""

    def get_bytes(self, uri: str) -> bytes:
        """The bytes stored at `uri`."""


def _digest(path: Path) -> tuple[int, str]:
    """Total size and SHA-256 of a file, or of a directory's files in name order."""
    digest = hashlib.sha256()
    size = 0
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
                size += len(chunk)
    return size, digest.hexdigest()


class LocalArtifactStore:
    """Artifacts under `root/<run_id>/<step_id>/<name>`, addressed as `file://` URIs."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def put(self, source: Path, *, run_id: str, step_id: str, name: str) -> StoredArtifact:
        if not source.exists():
            raise FileNotFoundError(f"artifact {name!r}: {source} does not exist")
        target = self.root / run_id / step_id / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():  # a retried attempt replaces what an earlier one left
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy2(source, target)
        size, sha = _digest(target)
        return StoredArtifact(uri=target.as_uri(), size=size, sha256=sha)

    def local_path(self, uri: str) -> Path:
        parsed = urlparse(uri)
        if parsed.scheme != "file":
            raise ValueError(f"{uri!r}: this store reads file:// URIs only")
        return Path(unquote(parsed.path))

    def put_bytes(self, key: str, data: bytes) -> str:
        target = (self.root / key).resolve()
        if not target.is_relative_to(self.root):
            raise ValueError(f"{key!r}: keys stay inside the store")
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        partial.write_bytes(data)
        partial.replace(target)  # readers never see half a file
        return target.as_uri()

    def get_bytes(self, uri: str) -> bytes:
        return self.local_path(uri).read_bytes()
