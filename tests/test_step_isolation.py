"""A step reaches only what it was given, tried as an attacker would: its environment holds
nothing of the worker's, its run directory is private and outside the data directory, and a
step running as the step user cannot read the worker's keys, its environment or other runs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from maestro.cli import restrict_data_dir
from maestro.errors import ConfigurationError
from maestro.runs import RunsService
from maestro.secrets import SecretBox
from maestro.settings import Settings, WorkerSettings
from maestro.signals import SignalBus
from tests.conftest import unique_id, wait_for_run
from workers.activities import StepActivities
from workers.main import new_worker, work_root
from workers.workdirs import WorkRoot

pytestmark = pytest.mark.usefixtures("worker")

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="running steps as another user needs root")
UID_RANGE = (3_900_000, 3_900_009)


@dataclass
class StepWorker:
    """An activities-only worker on its own task queue, with its own work root."""

    queue: str
    root: Path


@contextlib.asynccontextmanager
async def step_worker(
    settings, sessions, temporal_client, policy: WorkerSettings
) -> AsyncIterator[StepWorker]:
    """Serve steps routed to a queue of its own with `policy`, until the block ends."""
    root = Path(tempfile.mkdtemp(prefix="maestro-work-"))
    queue = unique_id("steps")
    runs = RunsService(sessions, temporal_client, settings.temporal, search_attributes=False)
    activities = StepActivities(
        sessions,
        root,
        SignalBus(sessions, runs, temporal_client),
        policy=policy,
        secret_box=SecretBox.from_settings(settings),
    )
    try:
        async with new_worker(temporal_client, queue, activities, workflows=False):
            yield StepWorker(queue, root)
    finally:
        await runs.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
async def as_nobody(settings, sessions, temporal_client) -> AsyncIterator[StepWorker]:
    async with step_worker(
        settings, sessions, temporal_client, WorkerSettings(run_as_user="nobody")
    ) as found:
        yield found


@pytest.fixture(scope="module")
async def uid_per_run(settings, sessions, temporal_client) -> AsyncIterator[StepWorker]:
    policy = WorkerSettings(run_as_user="nobody", run_as_uid_range=UID_RANGE)
    async with step_worker(settings, sessions, temporal_client, policy) as found:
        yield found


@pytest.fixture
def private_data_dir() -> Iterator[Path]:
    """A data directory as `maestro up` leaves it, in a place every user could reach."""
    data_dir = Path(tempfile.mkdtemp(prefix="maestro-data-"))
    data_dir.chmod(0o755)  # as embedded PostgreSQL leaves it
    (data_dir / "api-key").write_text("mst_canary-api-key\n")
    (data_dir / "api-key").chmod(0o600)
    (data_dir / "logs").mkdir()
    (data_dir / "logs" / "worker.log").write_text("canary-log-line\n")
    restrict_data_dir(data_dir)
    yield data_dir
    shutil.rmtree(data_dir)


async def run_shell(
    api, command, *, params=None, queue=None, env=None, tail=200, wait=True
) -> dict:
    """Register a one-step shell workflow, run it and return the run (ended, if `wait`)."""
    wid = unique_id("iso")
    step = {
        "id": "probe",
        "type": "shell",
        "params": {"command": command, "tail_lines": tail, "env": env or {}},
    }
    if queue:
        step["task_queue"] = queue
    body = {
        "id": wid,
        "params": {name: {"type": "string"} for name in params or {}},
        "steps": [step],
    }
    assert (await api.post("/api/v1/workflows", json=body)).status_code == 201
    started = await api.post(f"/api/v1/workflows/{wid}/runs", json={"params": params or {}})
    assert started.status_code == 201, started.text
    run = started.json()
    return await wait_for_run(api, run["run_id"]) if wait else run


def probe(run: dict) -> dict:
    return next(s for s in run["steps"] if s["step_id"] == "probe")


async def test_shell_step_environment_is_its_allowlist(api, settings, monkeypatch):
    monkeypatch.setenv("MAESTRO_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("WORKER_ONLY_CANARY", "canary-worker-env")
    run = await run_shell(
        api, ["env"], params={"region": "eu"}, env={"GREETING": "hi", "PATH": "/usr/bin:/bin"}
    )
    assert run["status"] == "succeeded", run
    tail = probe(run)["outputs"]["stdout_tail"]
    env = dict(line.split("=", 1) for line in tail.splitlines())
    identity = {
        "MAESTRO_RUN_ID",
        "MAESTRO_WORKFLOW_ID",
        "MAESTRO_RUN_NUMBER",
        "MAESTRO_STEP_ID",
        "MAESTRO_ATTEMPT",
        "MAESTRO_WORK_DIR",
        "MAESTRO_OUTPUTS",
    }
    allowed = {"PATH", "LANG", "LC_ALL", "TZ", "HOME", "TMPDIR", "GREETING", "MAESTRO_PARAM_REGION"}
    assert identity <= set(env) <= allowed | identity, sorted(env)
    assert env["MAESTRO_PARAM_REGION"] == "eu" and env["GREETING"] == "hi"
    assert env["PATH"] == "/usr/bin:/bin", "the definition's env comes last"
    assert env["HOME"] == env["TMPDIR"] == env["MAESTRO_WORK_DIR"]
    assert "MAESTRO_DATABASE_URL" not in tail and settings.database_url not in tail
    assert "canary-worker-env" not in tail


async def test_run_directory_is_private_and_outside_the_data_dir(api, settings):
    data_dir = settings.data_dir.resolve()
    (data_dir / "api-key").write_text("mst_canary-api-key\n")
    attempts = " ".join(
        f"{up}{name}" for up in ("", "../", "../../", "../../../") for name in ("api-key", "runs")
    )
    run = await run_shell(
        api,
        f'pwd; stat -c %a .; for p in {attempts}; do cat "$p" 2>/dev/null && echo LEAK "$p"; '
        "done; true",
    )
    assert run["status"] == "succeeded", run
    lines = probe(run)["outputs"]["stdout_tail"].splitlines()
    work_dir = Path(lines[0])
    assert work_dir == settings.worker.work_root_dir() / run["run_id"]
    assert not work_dir.is_relative_to(data_dir)
    assert lines[1] == "700" and stat.S_IMODE(work_dir.stat().st_mode) == 0o700
    assert len(lines) == 2, lines  # no LEAK line, no key


async def test_default_work_root_is_outside_any_data_dir():
    root = WorkerSettings().work_root_dir()
    assert root == Path(tempfile.gettempdir()).resolve() / "maestro-runs"
    assert not root.is_relative_to(Settings().data_dir.resolve())


def test_work_root_inside_the_data_dir_is_refused(tmp_path):
    settings = Settings(data_dir=tmp_path, worker=WorkerSettings(work_root=tmp_path / "runs"))
    with pytest.raises(ConfigurationError, match="inside MAESTRO_DATA_DIR"):
        work_root(settings)


def test_work_root_that_is_a_link_or_not_ours_is_refused(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(ConfigurationError, match="not a link"):
        WorkRoot(tmp_path / "link").prepare()
    if os.geteuid() == 0:
        theirs = tmp_path / "theirs"
        theirs.mkdir()
        os.chown(theirs, 65534, 65534)
        with pytest.raises(ConfigurationError, match="another user's directory"):
            WorkRoot(theirs).prepare()


def test_root_is_refused_as_the_step_user():
    with pytest.raises(ConfigurationError, match="is root"):
        WorkRoot(Path("/nonexistent"), "root")
    with pytest.raises(ConfigurationError, match="no such user"):
        WorkRoot(Path("/nonexistent"), "no-such-user-here")


@as_root
async def test_step_user_reaches_neither_the_worker_nor_the_data_dir_nor_another_run(
    api, as_nobody: StepWorker, private_data_dir: Path
):
    first = await run_shell(
        api,
        "id -u; echo other-run-private > mine.txt; "
        'printf \'{"by": "step user"}\' > "$MAESTRO_OUTPUTS"',
        queue=as_nobody.queue,
    )
    assert first["status"] == "succeeded", first
    outputs = probe(first)["outputs"]
    assert outputs["stdout_tail"] == "65534"
    assert outputs["by"] == "step user", "the worker collects what the step user wrote"
    first_dir = as_nobody.root / first["run_id"]
    # Between its steps a run's directory is the worker's again: nobody else gets in.
    assert first_dir.stat().st_uid == 0 and stat.S_IMODE(first_dir.stat().st_mode) == 0o700
    assert (first_dir / "mine.txt").read_text() == "other-run-private\n"

    second_dir = as_nobody.root / "<run_id>"
    attempts = {
        "OTHER_RUN": '"$MAESTRO_PARAM_OTHER/mine.txt"',
        "LIST_ROOT": "-A $MAESTRO_PARAM_ROOT/",
        "API_KEY": '"$MAESTRO_PARAM_DATA/api-key"',
        "RELATIVE_API_KEY": f'"{os.path.relpath(private_data_dir / "api-key", second_dir)}"',
        "DATA_LOG": '"$MAESTRO_PARAM_DATA/logs/worker.log"',
        "WORKER_ENV": "/proc/$PPID/environ",
    }
    command = "id -u; id -G; stat -c '%u %a' .; " + " ".join(
        f"{'ls' if name == 'LIST_ROOT' else 'cat'} {path} && echo LEAK-{name};"
        for name, path in attempts.items()
    )
    second = await run_shell(
        api,
        command + " true",
        queue=as_nobody.queue,
        params={
            "other": str(first_dir),
            "root": str(as_nobody.root),
            "data": str(private_data_dir),
        },
    )
    assert second["status"] == "succeeded", second
    tail = probe(second)["outputs"]["stdout_tail"]
    uid, groups, own_dir, *rest = tail.splitlines()
    assert uid == "65534" and groups == "65534", "the step user, no supplementary groups"
    assert own_dir == "65534 700", "its own directory is its own while it runs"
    assert rest == [], tail
    for canary in ("other-run-private", "canary-api-key", "canary-log-line", "MAESTRO_"):
        assert canary not in tail


@as_root
async def test_outputs_file_linked_to_a_root_only_file_is_refused(api, as_nobody: StepWorker):
    secret_file = Path(tempfile.mkdtemp()) / "root-only.json"
    secret_file.write_text('{"leak": "canary-root-only"}')
    secret_file.chmod(0o600)
    try:
        run = await run_shell(
            api,
            f'ln -s {secret_file} "$MAESTRO_OUTPUTS"',
            queue=as_nobody.queue,
        )
    finally:
        shutil.rmtree(secret_file.parent)
    assert run["status"] == "failed"
    step = probe(run)
    assert "must be a regular file" in step["error"] and step["attempt"] == 1
    assert "canary-root-only" not in str(run)


@as_root
async def test_concurrent_runs_get_their_own_uid_and_leave_nothing_running(
    api, uid_per_run: StepWorker
):
    # Each run starts a daemon of its own and waits a little, so both runs overlap.
    command = (
        "id -u > uid; setsid sleep 300 < /dev/null > /dev/null 2>&1 & "
        "sleep 1.5; cat uid; cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n' "
        "| grep '^MAESTRO_RUN_ID=' | sort -u | wc -l"
    )
    runs = await asyncio.gather(
        *(
            run_shell(api, command, queue=uid_per_run.queue, env={"MARK": f"run-{i}"})
            for i in range(2)
        )
    )
    assert all(run["status"] == "succeeded" for run in runs), runs
    first, second = (probe(run) for run in runs)
    assert first["started_at"] < second["ended_at"] and second["started_at"] < first["ended_at"]
    seen = [probe(run)["outputs"]["stdout_tail"].splitlines() for run in runs]
    uids = {int(lines[0]) for lines in seen}
    assert len(uids) == 2 and all(UID_RANGE[0] <= uid <= UID_RANGE[1] for uid in uids)
    # A step reads the environment of its own processes only, never the other run's.
    assert [lines[1] for lines in seen] == ["1", "1"], seen
    left = [
        p
        for p in psutil.process_iter(["uids", "status"])
        if p.info["uids"].real in uids and p.info["status"] != psutil.STATUS_ZOMBIE
    ]
    assert left == [], "what the steps left running was killed"
    for run in runs:
        assert (uid_per_run.root / run["run_id"]).stat().st_uid == 0


@as_root
async def test_processes_a_dead_worker_left_under_a_uid_are_killed_before_its_reuse(
    api, uid_per_run: StepWorker
):
    strays = [
        subprocess.Popen(["sleep", "300"], user=uid, group=65534, env={"MAESTRO_RUN_ID": "stray"})
        for uid in range(UID_RANGE[0], UID_RANGE[1] + 1)
    ]
    try:
        run = await run_shell(
            api,
            "cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n' "
            "| grep -c '^MAESTRO_RUN_ID=stray'; true",
            queue=uid_per_run.queue,
        )
        assert run["status"] == "succeeded", run
        assert probe(run)["outputs"]["stdout_tail"] == "0", "the step shares its uid with no one"
        assert sum(stray.poll() is not None for stray in strays) == 1
    finally:
        for stray in strays:
            stray.kill()
            stray.wait()
