"""Artifacts: files and directories steps produce, kept in a store and referenced by URI.

The store is chosen by URL (`open_store`, the one place one is built): a directory on the local
filesystem (`file://` URIs, the default under the data directory) or any S3-compatible object
store (`s3://bucket/prefix`, through obstore). Every artifact is recorded in PostgreSQL with its
producing run and step, size and hash; code packages and checkpoints are byte objects by key.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote, urlparse

import obstore
from obstore.exceptions import BaseError
from obstore.store import S3Store

from maestro.errors import ArtifactNotFound

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig, S3Config

    from maestro.settings import Settings

# What a failed object-store call raises (still unreachable after its retries, refused, ...).
StoreError = BaseError


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

    def uri(self, key: str) -> str:
        """The URI `put_bytes(key, ...)` stores at (whether or not anything is there yet)."""


def open_store(settings: Settings, *, retry_for: timedelta | None = None) -> ArtifactStore:
    """The artifact store `settings.artifact_store` names (default: `<data_dir>/artifacts`);
    `retry_for` replaces `MAESTRO_S3__RETRY_FOR_SECONDS` (the API answers a request sooner)."""
    url = settings.artifact_store_url
    if url.startswith("s3://"):
        s3 = settings.s3
        secret = s3.secret_access_key.get_secret_value() if s3.secret_access_key else None
        return ObjectArtifactStore(
            url,
            cache_dir=settings.artifact_cache_path,
            endpoint_url=s3.endpoint_url,
            region=s3.region,
            access_key_id=s3.access_key_id,
            secret_access_key=secret,
            retry_for=retry_for or timedelta(seconds=s3.retry_for_seconds),
        )
    return LocalArtifactStore(Path(unquote(urlparse(url).path)))


def _check_key(key: str) -> str:
    """`key` as a relative path inside the store, or ValueError."""
    parts = key.split("/")
    if key.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"{key!r}: keys are relative paths that stay inside the store")
    return key


def _file_path(uri: str) -> Path:
    """The path of a `file://` URI's artifact, which must exist."""
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        raise ValueError(f"{uri!r}: this store reads file:// URIs only")
    path = Path(unquote(parsed.path))
    if not path.exists():
        raise ArtifactNotFound(f"artifact {uri} does not exist")
    return path


def _digest(path: Path) -> tuple[int, str]:
    """Total size and SHA-256 of a file, or of a directory's files in name order."""
    digest = hashlib.sha256()
    size = 0
    files = _files(path)
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
                size += len(chunk)
    return size, digest.hexdigest()


def _files(path: Path) -> list[Path]:
    """A file itself, or a directory's files in name order."""
    return [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())


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
        return _file_path(uri)

    def put_bytes(self, key: str, data: bytes) -> str:
        target = self.root / _check_key(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        partial.write_bytes(data)
        partial.replace(target)  # readers never see half a file
        return target.as_uri()

    def get_bytes(self, uri: str) -> bytes:
        path = self.local_path(uri)
        if not path.is_file():
            raise ArtifactNotFound(f"artifact {uri} is a directory, not a byte object")
        return path.read_bytes()

    def uri(self, key: str) -> str:
        return (self.root / _check_key(key)).as_uri()


class ObjectArtifactStore:
    """Artifacts in an S3-compatible bucket under `s3://bucket/prefix/<run_id>/<step_id>/<name>`
    (a directory: one object per file under that key), read through a local cache.

    `local_path` downloads an artifact into `cache_dir`, into a directory named after its URI
    and the stored objects' ETags, and renames it into place whole: concurrent readers (threads
    or processes) share one finished copy, and an artifact replaced in the store is fetched
    again.

    Every call rides out a store that cannot be reached or answers with a server error for up
    to `retry_for` (retrying with backoff up to 2 s apart), so that a restart of the store
    does not cost a step its attempt; obstore's default gives up after about 2 s. A step's
    own timeout still ends its attempt sooner; the waiting call then ends with `retry_for`.
    """

    def __init__(
        self,
        url: str,
        *,
        cache_dir: Path,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        retry_for: timedelta,
    ) -> None:
        self.bucket, _, prefix = url.removeprefix("s3://").partition("/")
        self.prefix = prefix.strip("/")
        self.cache_dir = cache_dir
        config: S3Config = {}
        if endpoint_url:
            config["endpoint"] = endpoint_url
        if region:
            config["region"] = region
        if access_key_id:
            config["access_key_id"] = access_key_id
        if secret_access_key:
            config["secret_access_key"] = secret_access_key
        endpoint = (
            endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
            or ""
        )
        # MinIO and other servers inside a private network are often reached over plain HTTP.
        client_options: ClientConfig | None = (
            {"allow_http": True} if endpoint.startswith("http://") else None
        )
        retry: RetryConfig = {
            # Bounded by time, not by count: a count would end a short outage too early.
            "max_retries": 1_000_000,
            "retry_timeout": retry_for,
            "backoff": {
                "init_backoff": timedelta(milliseconds=100),
                "max_backoff": timedelta(seconds=2),
                "base": 2,
            },
        }
        self._store = S3Store(
            self.bucket, config=config, client_options=client_options, retry_config=retry
        )

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _path(self, uri: str) -> str:
        """The object key of `uri`, which must be in this store's bucket."""
        bucket, _, path = uri.removeprefix("s3://").partition("/")
        if not uri.startswith("s3://") or bucket != self.bucket or not path:
            raise ValueError(f"{uri!r} is not an object of this store (s3://{self.bucket}/...)")
        return path

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(_check_key(key))}"

    def put(self, source: Path, *, run_id: str, step_id: str, name: str) -> StoredArtifact:
        if not source.exists():
            raise FileNotFoundError(f"artifact {name!r}: {source} does not exist")
        key = self._key(_check_key(f"{run_id}/{step_id}/{name}"))
        # A retried attempt replaces what an earlier one left, a file or a directory.
        stale = [meta["path"] for meta in self._list(key)]
        if stale:
            obstore.delete(self._store, stale)
        if source.is_dir():
            for file in _files(source):
                obstore.put(self._store, f"{key}/{file.relative_to(source).as_posix()}", file)
        else:
            obstore.put(self._store, key, source)
        size, sha = _digest(source)
        return StoredArtifact(uri=f"s3://{self.bucket}/{key}", size=size, sha256=sha)

    def put_bytes(self, key: str, data: bytes) -> str:
        uri = self.uri(key)
        obstore.put(self._store, self._path(uri), data)  # atomic: whole or not at all
        return uri

    def get_bytes(self, uri: str) -> bytes:
        try:
            return bytes(obstore.get(self._store, self._path(uri)).bytes())
        except FileNotFoundError:
            raise ArtifactNotFound(f"artifact {uri} does not exist") from None

    def _list(self, key: str) -> list[dict[str, Any]]:
        """The object at `key` and the objects under `key/`, by path."""
        found: list[dict[str, Any]] = []
        try:
            found.append(dict(obstore.head(self._store, key)))
        except FileNotFoundError:
            pass
        found.extend(dict(meta) for meta in obstore.list(self._store, prefix=key).collect())
        inside = {meta["path"]: meta for meta in found}
        return [inside[path] for path in sorted(inside)]

    def local_path(self, uri: str) -> Path:
        if uri.startswith("file://"):  # recorded before the store moved to S3
            return _file_path(uri)
        key = self._path(uri)
        objects = self._list(key)
        if not objects:
            raise ArtifactNotFound(f"artifact {uri} does not exist")
        version = hashlib.sha256(uri.encode())
        for meta in objects:
            version.update(f"\0{meta['path']}\0{meta.get('e_tag')}\0{meta['size']}".encode())
        entry = self.cache_dir / version.hexdigest()[:40]
        name = key.rsplit("/", 1)[-1]
        target = entry / name
        if entry.exists():
            return target
        self.cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        partial = self.cache_dir / f".partial-{uuid.uuid4().hex}"
        try:
            for meta in objects:
                path = meta["path"]
                local = partial / name / path[len(key) + 1 :] if path != key else partial / name
                local.parent.mkdir(parents=True, exist_ok=True)
                with local.open("wb") as handle:
                    for chunk in obstore.get(self._store, path).stream():
                        handle.write(chunk)
            try:
                os.rename(partial, entry)  # whole, or another reader's copy is there already
            except OSError:
                if not entry.exists():
                    raise
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return target
