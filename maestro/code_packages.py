"""Code packages: a flow's code (its file, or its top-level package directory) as a deterministic
zip, content-addressed by SHA-256, kept in the artifact store under `code/<sha256>.zip`.

`build` makes one on the deploying machine; `check` is what the API verifies before storing one
(size, hash, layout, no secret-looking files); `requirements_problems` checks declared extra
requirements against an environment.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from maestro.errors import CodePackageInvalid, Problem

if TYPE_CHECKING:
    from maestro.environments import Environment

# A zip of this many bytes at most (the API's `max_code_package_bytes` defaults to it), holding
# at most this many files and bytes once unpacked.
MAX_PACKAGE_BYTES = 5 * 1024 * 1024
MAX_UNPACKED_BYTES = 50 * 1024 * 1024
MAX_FILES = 2_000
SHA256_PATTERN = r"^[0-9a-f]{64}$"
# Skipped when packaging: caches and version control, never code.
SKIPPED_DIRS = frozenset(
    {"__pycache__", ".git", ".hg", ".svn", ".mypy_cache", ".pytest_cache", ".ruff_cache", ".venv"}
)
SKIPPED_SUFFIXES = (".pyc", ".pyo")
# Files that look like secrets: a package holding one is refused, never uploaded.
SECRET_PATTERNS = (
    ".env",
    ".env.*",
    "*.pem",
    "*.key",
    "*.p12",
    "*.pfx",
    "id_rsa",
    "id_dsa",
    "id_ecdsa",
    "id_ed25519",
    ".netrc",
    ".pgpass",
    ".pypirc",
    ".npmrc",
    "credentials.json",
    "*.keystore",
)
# Every entry gets the same time and mode: the same files give the same bytes, so the same hash.
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_ZIP_MODE = 0o644 << 16


def code_key(sha256: str) -> str:
    """The artifact store key of a package."""
    return f"code/{sha256}.zip"


def looks_secret(name: str) -> bool:
    """Whether a file name (its last part) looks like a secret (keys, .env files, ...)."""
    base = PurePosixPath(name).name
    return any(fnmatch.fnmatchcase(base, pattern) for pattern in SECRET_PATTERNS)


@dataclass(frozen=True)
class CodePackage:
    data: bytes
    sha256: str
    names: list[str]

    @property
    def size(self) -> int:
        return len(self.data)


def _files(root: Path, entries: list[Path]) -> list[tuple[str, Path]]:
    """(name in the zip, file) for every file to package, in name order."""
    found: dict[str, Path] = {}
    for entry in entries:
        paths = [entry] if entry.is_file() else sorted(entry.rglob("*"))
        for path in paths:
            relative = path.relative_to(root)
            if any(part in SKIPPED_DIRS for part in relative.parts):
                continue
            if path.is_dir() or path.name.endswith(SKIPPED_SUFFIXES):
                continue
            if path.is_symlink() and not path.resolve().is_relative_to(entry.resolve()):
                raise CodePackageInvalid(
                    f"{relative} is a link to a file outside the package; copy it in instead",
                    [Problem(("files", str(relative)), "links outside the package", "link")],
                )
            found[relative.as_posix()] = path
    return sorted(found.items())


def build(root: Path, entries: list[Path], max_bytes: int = MAX_PACKAGE_BYTES) -> CodePackage:
    """Zip `entries` (files, or directories whose files are taken) with names relative to
    `root`; refuses secret-looking files and packages over `max_bytes`."""
    files = _files(root, entries)
    secrets = [name for name, _ in files if looks_secret(name)]
    if secrets:
        raise CodePackageInvalid(
            f"the code package would hold files that look like secrets: {', '.join(secrets)} "
            "(move them out of the package; steps read secrets with `secrets=[...]`)",
            [Problem(("files", name), "looks like a secret", "secret_file") for name in secrets],
        )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name, path in files:
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.external_attr = _ZIP_MODE
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes())
    data = buffer.getvalue()
    if len(data) > max_bytes:
        raise CodePackageInvalid(
            f"the code package is {len(data):,} bytes, over the limit of {max_bytes:,}; keep data "
            "files out of the flow's package (read them from the artifact store or a table)",
            [Problem(("package",), f"{len(data)} bytes > {max_bytes}", "too_large")],
        )
    return CodePackage(data, hashlib.sha256(data).hexdigest(), [name for name, _ in files])


def check(data: bytes, sha256: str, max_bytes: int = MAX_PACKAGE_BYTES) -> list[str]:
    """A received package's file names, or CodePackageInvalid: over the size limit, a hash
    that is not `sha256`, not a zip, unsafe or secret-looking names, too many or too large
    files."""

    def refuse(message: str, kind: str, loc: tuple[str | int, ...] = ("body",)) -> None:
        raise CodePackageInvalid(message, [Problem(loc, message, kind)])

    if not re.fullmatch(SHA256_PATTERN, sha256):
        refuse("the package's name is its SHA-256: 64 lowercase hex digits", "sha256", ("sha256",))
    if len(data) > max_bytes:
        refuse(f"the package is {len(data):,} bytes, over the limit of {max_bytes:,}", "too_large")
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        refuse(f"the body's SHA-256 is {actual}, not {sha256}", "hash_mismatch", ("sha256",))
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        refuse("the body is not a zip file", "not_a_zip")
        raise  # unreachable: refuse raised
    with archive:
        infos = archive.infolist()
    if len(infos) > MAX_FILES:
        refuse(f"the package holds {len(infos)} files; at most {MAX_FILES}", "too_many_files")
    if sum(i.file_size for i in infos) > MAX_UNPACKED_BYTES:
        refuse(f"the package unpacks to more than {MAX_UNPACKED_BYTES:,} bytes", "too_large")
    names = []
    for info in infos:
        name = info.filename
        parts = PurePosixPath(name).parts
        if name.startswith("/") or "\\" in name or ".." in parts or not parts or info.is_dir():
            refuse(f"{name!r} is not a plain relative file name", "unsafe_name", ("files", name))
        if looks_secret(name):
            refuse(f"{name} looks like a secret; packages hold code only", "secret_file")
        names.append(name)
    return names


def requirements_problems(
    requirements: list[str], environments: Sequence[Environment]
) -> list[Problem]:
    """Requirements (`scikit-learn>=1.4`) that some of `environments` do not satisfy: one
    problem per requirement and environment, naming where and what it has."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    problems = []
    for i, text in enumerate(requirements):
        try:
            requirement = Requirement(text)
        except InvalidRequirement as exc:
            problems.append(Problem(("requirements", i), f"{text!r}: {exc}", "invalid"))
            continue
        for env in environments:
            markers = dict(env.markers) or None
            if requirement.marker is not None and not requirement.marker.evaluate(markers):
                continue
            installed = env.distributions.get(canonicalize_name(requirement.name))
            if installed is None:
                problems.append(
                    Problem(
                        ("requirements", i),
                        f"{requirement.name} is not installed on {env.where} (needed: {text})",
                        "not_installed",
                    )
                )
            elif requirement.specifier and not requirement.specifier.contains(
                installed, prereleases=True
            ):
                problems.append(
                    Problem(
                        ("requirements", i),
                        f"{requirement.name} {installed} is installed on {env.where}; the flow "
                        f"needs {text}",
                        "version_mismatch",
                    )
                )
    return problems
