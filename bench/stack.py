"""The processes a benchmark runs against: `maestro up` on free ports with a temporary data
directory, and the raw-Temporal worker; started as children and stopped by their PIDs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench.raw import RAW_TASK_QUEUE
from maestro.embedded import EmbeddedPostgres, free_port

ROOT = Path(__file__).resolve().parent.parent


def _free_ports(count: int) -> list[int]:
    ports: list[int] = []
    for _ in range(100):
        port = free_port()
        if port not in ports:
            ports.append(port)
        if len(ports) == count:
            return ports
    raise RuntimeError("could not find free ports")


def _children(pid: int) -> list[int]:
    """Direct children of `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _cpu(pid: int, *, reaped: bool = False) -> float:
    """CPU seconds of a process (with its exited, reaped children when `reaped`)."""
    try:
        fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if reaped:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def _disk_of(path: Path) -> str | None:
    """The /proc/diskstats name of the block device that holds `path` (None when unknown)."""
    dev = path.stat().st_dev
    try:
        uevent = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}/uevent").read_text()
    except OSError:
        return None
    for line in uevent.splitlines():
        if line.startswith("DEVNAME="):
            return line.split("=", 1)[1]
    return None


def _disk_counters(device: str | None) -> dict[str, float]:
    """MB written and cache flushes completed so far on `device` (whole-device counters:
    every process's writes, the Temporal server's and PostgreSQL's alike)."""
    for line in Path("/proc/diskstats").read_text().splitlines():
        fields = line.split()
        if device is not None and fields[2] == device:
            flushes = float(fields[18]) if len(fields) > 18 else 0.0
            return {"disk_mb_written": int(fields[9]) * 512 / 1e6, "disk_flushes": flushes}
    return {}


def _machine_busy() -> float:
    """CPU seconds the whole machine has been busy (all processes, all cores)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    )
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


class Stack:
    """`maestro up` plus the raw worker, in `work_dir`; `stop()` ends exactly what it started."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self.data_dir = work_dir / "maestro"
        self.logs = work_dir / "logs"
        self.api_port, self.temporal_port, self.ui_port, self.pg_port = _free_ports(4)
        self.temporal_address = f"127.0.0.1:{self.temporal_port}"
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.up: subprocess.Popen | None = None
        self.raw: subprocess.Popen | None = None
        self._up_children: set[int] = set()

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("MAESTRO_DATABASE_URL", None)  # the embedded PostgreSQL, under data_dir
        env.update(
            MAESTRO_DATA_DIR=str(self.data_dir),
            MAESTRO_API__HOST="127.0.0.1",
            MAESTRO_API__PORT=str(self.api_port),
            MAESTRO_TEMPORAL__ADDRESS=self.temporal_address,
            MAESTRO_TEMPORAL__UI_PORT=str(self.ui_port),
            MAESTRO_TEMPORAL__UI_URL=f"http://127.0.0.1:{self.ui_port}",
            MAESTRO_EMBEDDED_POSTGRES_PORT=str(self.pg_port),
            # The worker imports `bench.steps` by name.
            MAESTRO_WORKER__ALLOWED_MODULES='["examples", "bench.steps"]',
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        )
        return env

    def _spawn(self, name: str, command: list[str]) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{name}.log", "wb") as log:
            # Its own session: a Ctrl-C in the terminal reaches only us; we stop it by PID.
            return subprocess.Popen(
                command,
                cwd=ROOT,
                env=self._env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def start(self, timeout: float = 240) -> None:
        """Start `maestro up` and the raw worker; return when /healthz answers."""
        self.up = self._spawn("up", [sys.executable, "-m", "maestro.cli", "up"])
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2) as http:
            while True:
                self.check()
                try:
                    if http.get(f"{self.api_url}/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"maestro up not healthy after {timeout:.0f}s; see {self.logs}"
                    )
                time.sleep(0.5)
        self._up_children = set(_children(self.up.pid))
        self.raw = self._spawn(
            "raw-worker",
            [
                sys.executable,
                "-m",
                "bench.raw",
                "--address",
                self.temporal_address,
                "--task-queue",
                RAW_TASK_QUEUE,
            ],
        )

    def api_headers(self) -> dict[str, str]:
        """The admin key `maestro up` keeps in its data directory, when the API wants keys."""
        key_file = self.data_dir / "api-key"
        if not key_file.exists():
            return {}
        return {"Authorization": f"Bearer {key_file.read_text().strip()}"}

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds used so far by each part of the stack (PostgreSQL: the postmaster, its
        live backends and those that exited)."""
        out: dict[str, float] = {"bench": sum(os.times()[:2]), "machine": _machine_busy()}
        if self.raw is not None:
            out["raw_worker"] = _cpu(self.raw.pid)
        if self.up is not None:
            out["maestro_up"] = _cpu(self.up.pid)
            for pid in _children(self.up.pid):
                command = _cmdline(pid)
                if "maestro.cli api" in command:
                    out["api"] = _cpu(pid)
                elif "maestro.cli worker" in command:
                    out["worker"] = _cpu(pid)
                elif "maestro.cli dispatcher" in command:
                    out["dispatcher"] = _cpu(pid)
                elif "temporal" in command:
                    out["temporal_server"] = _cpu(pid)
        pid_file = self.data_dir / "postgres" / "postmaster.pid"
        try:
            postmaster = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return out
        out["postgres"] = _cpu(postmaster, reaped=True) + sum(
            _cpu(pid) for pid in _children(postmaster)
        )
        return out

    def disk_counters(self) -> dict[str, float]:
        """Writes and flushes so far on the disk that holds the stack's data."""
        if not hasattr(self, "_device"):
            self._device = _disk_of(self.data_dir)
        return _disk_counters(self._device)

    def check(self) -> None:
        """Fail fast if a process we started has died."""
        for name, proc in (("maestro up", self.up), ("raw worker", self.raw)):
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with code {proc.returncode}; see logs in {self.logs}"
                )

    @staticmethod
    def _stop(proc: subprocess.Popen, grace: float) -> None:
        if proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, 15.0), (signal.SIGKILL, 15.0)):
            proc.send_signal(sig)
            try:
                proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def stop(self) -> None:
        """SIGINT to what we started (escalating only if it does not stop)."""
        if self.raw is not None:
            self._stop(self.raw, 20)
        if self.up is not None:
            self._up_children |= set(_children(self.up.pid))
            self._stop(self.up, 90)
            # `maestro up` stops its children itself; this only covers it being killed.
            for pid in sorted(self._up_children):
                if _alive(pid):
                    try:
                        os.kill(pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
            pg = EmbeddedPostgres(self.data_dir / "postgres", self.pg_port)
            if (self.data_dir / "postgres" / "PG_VERSION").exists() and pg.is_running():
                pg.stop()

    def cleanup(self) -> None:
        shutil.rmtree(self.work_dir, ignore_errors=True)
