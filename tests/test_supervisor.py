"""The supervisor's rules on real short-lived processes, with its timings shortened: backoff
doubles up to its cap and starts over after a stable run, a crash loop stops everything, and a
dead child's leftover processes go with it."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

import psutil
import pytest

from maestro import supervisor as supervision
from maestro.supervisor import ChildProcess, CrashLoopError, Supervisor


@pytest.fixture(autouse=True)
def fast_timings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervision, "FIRST_BACKOFF", 0.05)
    monkeypatch.setattr(supervision, "MAX_BACKOFF", 0.2)
    monkeypatch.setattr(supervision, "STABLE_AFTER", 2.0)


def python(code: str, tmp_path: Path, name: str = "child") -> ChildProcess:
    return ChildProcess(name, [sys.executable, "-c", code], dict(os.environ), tmp_path / "c.log")


def run_until(supervisor: Supervisor, done, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out"
        supervisor.check()
        time.sleep(0.01)


def backoffs(caplog: pytest.LogCaptureFixture) -> list[float]:
    return [r.backoff_s for r in caplog.records if hasattr(r, "backoff_s")]


def test_backoff_doubles_to_its_cap_then_a_crash_loop_stops_everything(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="maestro.supervisor")
    status_file = tmp_path / "status.json"
    supervisor = Supervisor(status_file)
    steady = python("import time; time.sleep(60)", tmp_path, "steady")
    supervisor.add(steady)
    supervisor.add(python("raise SystemExit(3)", tmp_path, "crasher"))
    with pytest.raises(CrashLoopError):
        run_until(supervisor, lambda: False)
    assert backoffs(caplog) == [0.05, 0.1, 0.2, 0.2]
    status = json.loads(status_file.read_text())
    assert status["state"] == "failed"
    crasher = status["children"]["crasher"]
    assert crasher["state"] == "failed" and crasher["restarts"] == 4
    assert crasher["last_exit"]["code"] == 3
    assert status["children"]["steady"]["state"] == "running"

    supervisor.stop()
    assert steady.proc is not None and steady.proc.returncode is not None, "the others stop"
    assert json.loads(status_file.read_text())["children"]["steady"]["state"] == "stopped"


def test_backoff_starts_over_after_the_child_stayed_up(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="maestro.supervisor")
    marker = tmp_path / "runs"
    # Crashes at once twice, then stays up past STABLE_AFTER before crashing again.
    code = (
        "import pathlib, time\n"
        f"p = pathlib.Path({str(marker)!r})\n"
        "n = len(p.read_text()) if p.exists() else 0\n"
        "p.write_text('x' * (n + 1))\n"
        "time.sleep(2.5 if n == 2 else 0)\n"
        "raise SystemExit(1)\n"
    )
    supervisor = Supervisor(tmp_path / "status.json")
    supervisor.add(python(code, tmp_path))
    try:
        run_until(supervisor, lambda: len(backoffs(caplog)) == 4)
    finally:
        supervisor.stop()
    assert backoffs(caplog) == [0.05, 0.1, 0.05, 0.1]


def test_a_dead_childs_leftover_processes_are_killed(tmp_path):
    pid_file = tmp_path / "grandchild"
    code = (
        "import pathlib, subprocess, sys\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"pathlib.Path({str(pid_file)!r}).write_text(str(p.pid))\n"
    )
    supervisor = Supervisor(tmp_path / "status.json")
    child = python(code, tmp_path)
    supervisor.add(child)
    try:
        run_until(supervisor, lambda: child.exited() is not None)
    finally:
        supervisor.stop()
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while psutil.pid_exists(grandchild) and psutil.Process(grandchild).status() != "zombie":
        assert time.monotonic() < deadline, "the dead child's own child still runs"
        time.sleep(0.05)
