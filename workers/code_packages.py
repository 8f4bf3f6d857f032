"""Code packages on the worker: fetch the package of a run's version from the artifact store,
cache it on disk by hash, and import its modules in isolation.

Each package's modules are executed under a private name (`_maestro_code_<hash>.<module>`) with
an `__import__` of their own: an `import` of a module the package holds (absolute or relative)
loads the package's copy, anything else the worker's installed modules. So two versions whose
packages hold different code under the same module names run side by side in one process, and
a run keeps the code of its version whatever is deployed later. (`importlib.import_module`
called by step code bypasses this and sees the worker's installed modules only.)
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import importlib.util
import io
import logging
import shutil
import sys
import threading
import uuid
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.exceptions import ApplicationError

from maestro import code_packages
from maestro.artifacts import ArtifactStore
from maestro.db import code_packages as code_db
from maestro.errors import CodePackageInvalid

logger = logging.getLogger(__name__)

_real_import = builtins.__import__
# A package is checked again when fetched; the API's own limit applies on upload.
_FETCH_LIMIT = 1 << 30


class PackagedCode:
    """The modules of one unpacked code package, imported under a private prefix."""

    def __init__(self, sha256: str, directory: Path) -> None:
        self.sha256 = sha256
        self.directory = directory
        self.prefix = f"_maestro_code_{sha256[:16]}"
        self.tops = frozenset(
            p.stem if p.is_file() else p.name
            for p in directory.iterdir()
            if (p.is_file() and p.suffix == ".py") or (p / "__init__.py").is_file()
        )
        self._builtins = dict(vars(builtins))
        self._builtins["__import__"] = self._import
        self._lock = threading.RLock()
        root = ModuleType(self.prefix, f"code package {sha256}")
        root.__path__ = []
        sys.modules.setdefault(self.prefix, root)

    def owns(self, module: str) -> bool:
        """Whether `module` (a dotted name) is one of the package's."""
        return module.split(".")[0] in self.tops

    def module(self, name: str) -> ModuleType:
        """The package's module `name`, imported on first use."""
        private = f"{self.prefix}.{name}"
        with self._lock:
            loaded = sys.modules.get(private)
            if loaded is not None:
                return loaded
            parent, _, leaf = name.rpartition(".")
            if parent:
                self.module(parent)
            path = self.directory.joinpath(*name.split("."))
            if (path / "__init__.py").is_file():
                file, search = path / "__init__.py", [str(path)]
            elif path.with_suffix(".py").is_file():
                file, search = path.with_suffix(".py"), None
            else:
                raise ModuleNotFoundError(
                    f"No module named {name!r} in the code package", name=name
                )
            spec = importlib.util.spec_from_file_location(
                private, file, submodule_search_locations=search
            )
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            module.__dict__["__builtins__"] = self._builtins
            sys.modules[private] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[private]
                raise
            if parent:
                setattr(sys.modules[f"{self.prefix}.{parent}"], leaf, module)
            return module

    def _import(
        self,
        name: str,
        globals: dict[str, Any] | None = None,
        locals: Any = None,
        fromlist: tuple[str, ...] | list[str] | None = (),
        level: int = 0,
    ) -> ModuleType:
        absolute = name
        if level > 0:
            package = (globals or {}).get("__package__") or ""
            if not package.startswith(self.prefix + "."):
                return _real_import(name, globals, locals, fromlist, level)
            base = package.removeprefix(self.prefix + ".")
            if level > 1:
                base = base.rsplit(".", level - 1)[0]
            absolute = f"{base}.{name}" if name else base
        if not self.owns(absolute):
            return _real_import(name, globals, locals, fromlist, level)
        module = self.module(absolute)
        if fromlist:
            for item in fromlist:
                if item != "*" and not hasattr(module, item):
                    try:
                        self.module(f"{absolute}.{item}")
                    except ModuleNotFoundError:
                        pass  # `from x import missing` fails as usual, naming it
            return module
        return self.module(absolute.split(".")[0])


class CodePackages:
    """The code packages of workflow versions: looked up once per version, fetched and unpacked
    once per hash (on disk under `cache_dir`, shared by the worker's processes)."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], store: ArtifactStore, cache_dir: Path
    ) -> None:
        self._sessions = sessions
        self._store = store
        self._cache_dir = cache_dir
        self._versions: dict[tuple[str, int], tuple[str, str] | None] = {}
        self._packages: dict[str, PackagedCode] = {}
        self._fetching: dict[str, asyncio.Lock] = {}

    async def for_version(self, workflow_id: str, version: int) -> PackagedCode | None:
        """The package a version's steps run, or None (code installed on the worker; also for
        version 0: inputs that name no version)."""
        if version < 1:
            return None
        key = (workflow_id, version)
        if key not in self._versions:
            async with self._sessions() as session:
                # Versions are immutable: what one runs is remembered for good.
                self._versions[key] = await code_db.version_package(session, workflow_id, version)
        found = self._versions[key]
        if found is None:
            return None
        return await self.package(*found)

    async def package(self, sha256: str, uri: str) -> PackagedCode:
        """The unpacked package, fetched from the store unless cached."""
        known = self._packages.get(sha256)
        if known is not None:
            return known
        lock = self._fetching.setdefault(sha256, asyncio.Lock())
        async with lock:
            if sha256 not in self._packages:
                directory = await asyncio.to_thread(self._unpacked, sha256, uri)
                self._packages[sha256] = PackagedCode(sha256, directory)
        return self._packages[sha256]

    def _unpacked(self, sha256: str, uri: str) -> Path:
        target = self._cache_dir / sha256
        if target.is_dir():
            return target
        data = self._store.get_bytes(uri)
        try:
            code_packages.check(data, sha256, _FETCH_LIMIT)
        except CodePackageInvalid as exc:
            actual = hashlib.sha256(data).hexdigest()
            raise ApplicationError(
                f"code package {sha256} at {uri} is unusable ({exc.message}; its hash is {actual})",
                type="CodePackageCorrupt",
                non_retryable=True,
            ) from None
        self._cache_dir.mkdir(parents=True, exist_ok=True)
        partial = self._cache_dir / f".{sha256}.{uuid.uuid4().hex}"
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            archive.extractall(partial)
        try:
            partial.rename(target)
        except OSError:
            # Another process unpacked it first: the same bytes, so theirs is as good.
            shutil.rmtree(partial, ignore_errors=True)
        logger.info("code package unpacked", extra={"sha256": sha256, "uri": uri})
        return target
