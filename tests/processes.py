"""Maestro processes started by tests (`maestro api`, `maestro worker`), stopped by PID."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from maestro.embedded import free_port, temporal_dev_server_command, wait_for_port
from maestro.settings import Settings


class Processes:
    """`maestro api` / `maestro worker` processes for one test module, stopped by PID."""

    def __init__(self, settings: Settings, log_dir: Path, *, task_queue: str) -> None:
        self.api_port = free_port()
        self.log_dir = log_dir
        self.env = dict(
            os.environ,
            MAESTRO_DATABASE_URL=settings.database_url,
            MAESTRO_DATA_DIR=str(settings.data_dir),
            MAESTRO_WORKER__WORK_ROOT=str(settings.worker.work_root_dir()),
            MAESTRO_SECRETS_KEY=settings.secrets_key.get_secret_value(),  # type: ignore[union-attr]
            MAESTRO_TEMPORAL__ADDRESS=settings.temporal.address,
            MAESTRO_TEMPORAL__TASK_QUEUE=task_queue,
            MAESTRO_API__PORT=str(self.api_port),
            MAESTRO_WORKER__ALLOWED_MODULES=json.dumps(settings.worker.allowed_modules),
            # Several processes share the test server's 100 connections with the test
            # process: each keeps a small pool, as a deployment sizes pools to max_connections.
            MAESTRO_DATABASE_POOL_SIZE="5",
            MAESTRO_DATABASE_MAX_OVERFLOW="5",
        )
        self.procs: list[subprocess.Popen] = []

    def start(self, command: str, *, port: int | None = None) -> subprocess.Popen:
        """Start `maestro <command>`; an API on `port` instead of the default one."""
        log = open(self.log_dir / f"{command}-{len(self.procs)}.log", "wb")  # noqa: SIM115
        env = dict(self.env, MAESTRO_API__PORT=str(port)) if port else self.env
        proc = subprocess.Popen(
            [sys.executable, "-m", "maestro.cli", command],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def api_with_worker(settings: Settings, log_dir: Path, *, task_queue: str) -> Iterator[str]:
    """A real `maestro api` and `maestro worker` on `task_queue`; yields the API's URL."""
    stack = Processes(settings, log_dir, task_queue=task_queue)
    port = free_port()
    try:
        stack.start("worker")
        stack.start("api", port=port)
        wait_for_port("127.0.0.1", port, timeout=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        stack.stop_all()


class TemporalDevServer:
    """A Temporal dev server a test can SIGKILL and bring back on the same port and data."""

    def __init__(self, data: Path) -> None:
        self.data, self.port = data, free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open(self.data / "temporal.log", "ab")  # noqa: SIM115 - closed with the process
        command = temporal_dev_server_command(self.data, port=self.port, ui_port=None)
        self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        wait_for_port("127.0.0.1", self.port, timeout=60)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
