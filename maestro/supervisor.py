"""Keeps `maestro up`'s child processes running: restarts one that dies with backoff, gives up on
a crash loop, and records every child's state in a status file."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from maestro.embedded import EmbeddedPostgres
from maestro.errors import MaestroError, Unavailable

logger = logging.getLogger(__name__)

FIRST_BACKOFF = 1.0  # seconds before the first restart; doubled for each crash in a row
MAX_BACKOFF = 30.0
STABLE_AFTER = 60.0  # a child up this long starts again from FIRST_BACKOFF on its next crash
CRASH_LOOP_CRASHES = 5  # this many crashes of one child within CRASH_LOOP_WINDOW: give up
CRASH_LOOP_WINDOW = 120.0


class CrashLoopError(MaestroError):
    """One child keeps dying: the whole stack stops (only `maestro up` sees this)."""


class Process(Protocol):
    """Something the supervisor starts, watches and stops."""

    name: str
    # Where it serves Prometheus metrics (listed in the status file), or None.
    metrics: str | None

    def start(self) -> int:
        """Start it and return its process id."""
        ...

    def exited(self) -> tuple[int | None, str] | None:
        """None while it runs, else its exit code (None if unknown) and how it ended."""
        ...

    def stop(self, grace: float) -> None:
        """Stop it, forcibly after `grace` seconds."""
        ...


class ChildProcess:
    """A command run as a child in its own session, its output appended to a log file."""

    def __init__(
        self,
        name: str,
        command: list[str],
        env: dict[str, str],
        log: Path,
        metrics: str | None = None,
    ) -> None:
        self.name = name
        self.command = command
        self.env = env
        self.log = log
        self.metrics = metrics
        self.proc: subprocess.Popen | None = None

    def start(self) -> int:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.command,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self.proc.pid

    def exited(self) -> tuple[int | None, str] | None:
        if self.proc is None or self.proc.poll() is None:
            return None
        self._kill_leftovers()
        return self.proc.returncode, f"exited with code {self.proc.returncode}"

    def _kill_leftovers(self) -> None:
        """Processes the child started in its session would outlive it (their group keeps
        the child's id)."""
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, grace: float) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            logger.warning(
                "%s did not stop in %.0f s; killing it",
                self.name,
                grace,
                extra={"child": self.name},
            )
            self.proc.kill()
            self.proc.wait()
        self._kill_leftovers()


class PostgresProcess:
    """The embedded PostgreSQL: `pg_ctl` starts it detached, so it is watched by the process id
    in its data directory's postmaster.pid rather than as a child."""

    metrics: str | None = None  # PostgreSQL serves none itself (postgres_exporter can)

    def __init__(self, name: str, server: EmbeddedPostgres) -> None:
        self.name = name
        self.server = server
        self._pid: int | None = None

    def start(self) -> int:
        self.server.start()
        self._pid = self.server.pid()
        if self._pid is None:
            raise Unavailable("PostgreSQL started, but its postmaster.pid names no live server")
        return self._pid

    def exited(self) -> tuple[int | None, str] | None:
        if self._pid is None or self.server.pid() == self._pid:
            return None
        return None, f"exited (server process {self._pid} is gone)"

    def stop(self, grace: float) -> None:
        self.server.stop()


class _Child:
    """The supervisor's record of one process."""

    def __init__(self, process: Process) -> None:
        self.process = process
        self.state = "starting"
        self.pid: int | None = None
        self.started_at = 0.0
        self.restarts = 0
        self.streak = 0  # crashes since it last stayed up STABLE_AFTER seconds
        self.crashes: deque[float] = deque()
        self.restart_at: float | None = None
        self.last_exit: dict[str, object] | None = None

    def status(self) -> dict[str, object]:
        return {
            "state": self.state,
            "pid": self.pid,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "metrics": self.process.metrics,
        }


class Supervisor:
    """Starts processes in order, restarts those that die and stops them in reverse order.
    `check()` is called from one loop; it raises CrashLoopError when a child keeps dying."""

    def __init__(self, status_file: Path) -> None:
        self.status_file = status_file
        self.children: list[_Child] = []
        self.state = "starting"

    def add(self, process: Process) -> None:
        """Start `process` now and watch it from here on."""
        child = _Child(process)
        self.children.append(child)
        self._start(child)
        self._write_status()

    def _start(self, child: _Child) -> None:
        child.restart_at = None
        child.started_at = time.monotonic()  # before: a start that fails was up for no time
        child.pid = child.process.start()
        child.state = "running"

    def check(self) -> None:
        """Notice children that died, restart the ones whose backoff is over."""
        changed = False
        for child in self.children:
            if child.state == "running":
                ended = child.process.exited()
                if ended is not None:
                    self._crashed(child, *ended)
                    changed = True
            elif child.restart_at is not None and time.monotonic() >= child.restart_at:
                child.restarts += 1
                try:
                    self._start(child)
                except Exception as exc:  # noqa: BLE001 - any failure to start is a crash
                    self._crashed(child, None, f"failed to restart: {exc}")
                else:
                    logger.info(
                        "%s restarted (pid %s)",
                        child.process.name,
                        child.pid,
                        extra={"child": child.process.name, "pid": child.pid},
                    )
                changed = True
        if changed:
            self._write_status()

    def _crashed(self, child: _Child, code: int | None, how: str) -> None:
        now = time.monotonic()
        name = child.process.name
        child.state = "restarting"
        child.pid = None
        child.last_exit = {"code": code, "reason": how, "at": _now()}
        child.crashes.append(now)
        while child.crashes and child.crashes[0] < now - CRASH_LOOP_WINDOW:
            child.crashes.popleft()
        if len(child.crashes) >= CRASH_LOOP_CRASHES:
            child.state = "failed"
            self.state = "failed"
            logger.error(
                "%s %s; it crashed %d times within %.0f s: stopping everything",
                name,
                how,
                len(child.crashes),
                CRASH_LOOP_WINDOW,
                extra={"child": name, "exit_code": code, "restarts": child.restarts},
            )
            self._write_status()
            raise CrashLoopError(f"{name} crashed {len(child.crashes)} times")
        if now - child.started_at >= STABLE_AFTER:
            child.streak = 0
        child.streak += 1
        delay = min(FIRST_BACKOFF * 2 ** (child.streak - 1), MAX_BACKOFF)
        child.restart_at = now + delay
        logger.warning(
            "%s %s; restarting in %.0f s (restart %d)",
            name,
            how,
            delay,
            child.restarts + 1,
            extra={"child": name, "exit_code": code, "backoff_s": delay},
        )

    def mark_up(self) -> None:
        """Record that the whole stack answers."""
        self.state = "up"
        self._write_status()

    def stop(self, grace: float = 15.0) -> None:
        """Stop every child, the last started first."""
        if self.state != "failed":
            self.state = "stopping"
        self._write_status()
        for child in reversed(self.children):
            try:
                child.process.stop(grace)
            except Exception:  # noqa: BLE001 - the others must still be stopped
                logger.exception("stopping %s failed", child.process.name)
            if child.state != "failed":
                child.state = "stopped"
            child.pid = None
        if self.state != "failed":
            self.state = "stopped"
        self._write_status()

    def _write_status(self) -> None:
        status = {
            "pid": os.getpid(),
            "state": self.state,
            "updated_at": _now(),
            "children": {c.process.name: c.status() for c in self.children},
        }
        partial = self.status_file.with_name(self.status_file.name + ".tmp")
        partial.write_text(json.dumps(status, indent=2) + "\n")
        partial.replace(self.status_file)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
