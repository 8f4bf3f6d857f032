"""Code packages: building them deterministically, what the API refuses, requirements, and the
worker's isolated import of two packages holding the same module names."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import sys
import zipfile
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path

import pytest
from sqlalchemy import update

from maestro import code_packages, environments
from maestro.db import worker_environments as environments_db
from maestro.db.tables import WorkerEnvironment
from maestro.deploy_cli import step_task_queues
from maestro.environments import Environment
from maestro.errors import CodePackageInvalid
from tests.conftest import unique_id
from workers.code_packages import PackagedCode


def _tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_same_files_give_the_same_package(tmp_path: Path) -> None:
    files = {"pkg/__init__.py": "", "pkg/flow.py": "X = 1\n", "pkg/data/table.csv": "a,b\n"}
    _tree(tmp_path / "one", files)
    _tree(tmp_path / "two", files)
    (tmp_path / "two" / "pkg" / "flow.py").touch()  # another mtime
    _tree(tmp_path / "two", {"pkg/__pycache__/flow.cpython-311.pyc": "x", "pkg/.git/HEAD": "x"})
    first = code_packages.build(tmp_path / "one", [tmp_path / "one" / "pkg"])
    second = code_packages.build(tmp_path / "two", [tmp_path / "two" / "pkg"])
    assert first.sha256 == second.sha256 == hashlib.sha256(first.data).hexdigest()
    assert first.names == ["pkg/__init__.py", "pkg/data/table.csv", "pkg/flow.py"]
    assert code_packages.check(first.data, first.sha256) == first.names
    changed = tmp_path / "one" / "pkg" / "flow.py"
    changed.write_text("X = 2\n")
    assert code_packages.build(tmp_path / "one", [tmp_path / "one" / "pkg"]).sha256 != first.sha256


@pytest.mark.parametrize("secret", [".env", "deploy/id_rsa", "certs/server.pem", ".env.prod"])
def test_secret_looking_files_are_refused(tmp_path: Path, secret: str) -> None:
    _tree(tmp_path, {"pkg/__init__.py": "", f"pkg/{secret}": "KEY=1"})
    with pytest.raises(CodePackageInvalid, match="look like secrets") as caught:
        code_packages.build(tmp_path, [tmp_path / "pkg"])
    assert caught.value.problems[0].loc == ("files", f"pkg/{secret}")


def test_a_package_over_the_limit_is_refused(tmp_path: Path) -> None:
    (tmp_path / "big.py").write_bytes(b"# " + os.urandom(4096).hex().encode())
    with pytest.raises(CodePackageInvalid, match="over the limit of 1,024"):
        code_packages.build(tmp_path, [tmp_path / "big.py"], max_bytes=1024)


def _zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "sha", "kind"),
    [
        (b"not a zip", None, "not_a_zip"),
        (_zip({"../escape.py": b""}), None, "unsafe_name"),
        (_zip({"/abs.py": b""}), None, "unsafe_name"),
        (_zip({"pkg/.env": b"K=V"}), None, "secret_file"),
        (_zip({"flow.py": b""}), "0" * 64, "hash_mismatch"),
        (_zip({"flow.py": b""}), "XYZ", "sha256"),
    ],
)
def test_check_refuses(data: bytes, sha: str | None, kind: str) -> None:
    with pytest.raises(CodePackageInvalid) as caught:
        code_packages.check(data, sha or hashlib.sha256(data).hexdigest())
    assert caught.value.problems[0].type == kind


def test_requirements_against_environments() -> None:
    here = environments.local("the API process")
    assert (
        code_packages.requirements_problems(["pytest>=1", "Pydantic", "typing_extensions"], [here])
        == []
    )
    box = Environment(
        "worker gpu-1 (task queue gpu)", {"torch": "2.1.0"}, {"sys_platform": "linux"}
    )
    problems = code_packages.requirements_problems(
        [
            "no-such-distribution-anywhere>=1",
            "torch>=2.2",
            "not a requirement!!",
            "pywin32; sys_platform == 'win32'",
        ],
        [box, here],
    )
    assert [(p.loc, p.type) for p in problems] == [
        (("requirements", 0), "not_installed"),
        (("requirements", 0), "not_installed"),
        (("requirements", 1), "version_mismatch"),
        (("requirements", 1), "not_installed"),
        (("requirements", 2), "invalid"),
    ]
    assert problems[0].msg == (
        "no-such-distribution-anywhere is not installed on worker gpu-1 (task queue gpu) "
        "(needed: no-such-distribution-anywhere>=1)"
    )
    assert problems[2].msg == (
        "torch 2.1.0 is installed on worker gpu-1 (task queue gpu); the flow needs torch>=2.2"
    )
    # A marker is evaluated with the worker's values, not this process's.
    windows = Environment("worker win (task queue w)", {}, {"sys_platform": "win32"})
    assert [
        p.type
        for p in code_packages.requirements_problems(
            ["pywin32; sys_platform == 'win32'"], [windows]
        )
    ] == ["not_installed"]


def test_deploy_checks_the_queues_a_flows_steps_run_on() -> None:
    steps = [
        {"id": "a", "type": "python"},
        {
            "id": "each",
            "type": "foreach",
            "params": {"steps": [{"id": "b", "type": "python", "task_queue": "gpu"}]},
        },
    ]
    assert step_task_queues(steps) == {None, "gpu"}
    assert step_task_queues(steps[1:]) == {None, "gpu"}
    assert step_task_queues([{"id": "c", "type": "python", "task_queue": "cpu"}]) == {"cpu"}


async def test_a_worker_records_its_environment(worker, sessions, settings) -> None:
    since = datetime.now(UTC) - timedelta(minutes=1)
    async with sessions.begin() as session:
        rows = await environments_db.recent_environments(
            session, settings.temporal.task_queue, since - timedelta(minutes=10)
        )
    mine = [r for r in rows if r.host == socket.gethostname()]
    assert len(mine) == 1
    assert settings.temporal.task_queue in mine[0].task_queues
    assert mine[0].distributions["pydantic"] == metadata.version("pydantic")
    assert mine[0].distributions["typing-extensions"] == metadata.version("typing_extensions")
    assert mine[0].markers["python_version"] == "{}.{}".format(*sys.version_info[:2])


async def _record(sessions, host: str, queue: str, distributions: dict[str, str]) -> None:
    async with sessions.begin() as session:
        await environments_db.record_environment(
            session, host, [queue], distributions, environments.marker_values()
        )


async def test_requirements_are_checked_against_the_queues_workers(
    api, worker, sessions, settings
) -> None:
    main = settings.temporal.task_queue
    met = await api.post("/api/v1/requirements/check", json={"requirements": ["pydantic>=2"]})
    assert met.status_code == 200, met.text
    assert met.json()["checked_against"] == [
        {"task_queue": main, "environment": "workers", "hosts": [socket.gethostname()]}
    ]
    have = metadata.version("pydantic")
    unmet = await api.post(
        "/api/v1/requirements/check",
        json={"requirements": ["definitely-not-installed-pkg>=1", f"pydantic>{have}"]},
    )
    assert unmet.status_code == 422
    where = f"worker {socket.gethostname()} (task queue {main})"
    assert [p["msg"] for p in unmet.json()["detail"]] == [
        f"definitely-not-installed-pkg is not installed on {where} "
        "(needed: definitely-not-installed-pkg>=1)",
        f"pydantic {have} is installed on {where}; the flow needs pydantic>{have}",
    ]
    # A queue's workers, not the API process, decide: this one has torch, the API has not.
    gpu = unique_id("gpu")
    await _record(sessions, "gpu-box", gpu, {"torch": "2.1.0"})
    body = {"requirements": ["torch>=2"], "task_queues": [gpu], "main_queue": False}
    answer = await api.post("/api/v1/requirements/check", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["checked_against"] == [
        {"task_queue": gpu, "environment": "workers", "hosts": ["gpu-box"]}
    ]
    body["requirements"] = ["torch>=2.2"]
    refused = await api.post("/api/v1/requirements/check", json=body)
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["msg"] == (
        f"torch 2.1.0 is installed on worker gpu-box (task queue {gpu}); the flow needs torch>=2.2"
    )
    # Both queues: the main queue's worker lacks torch.
    body.update(requirements=["torch>=2"], main_queue=True)
    both = await api.post("/api/v1/requirements/check", json=body)
    assert both.status_code == 422
    assert f"torch is not installed on {where}" in both.json()["detail"][0]["msg"]


async def test_a_queue_no_worker_reported_is_checked_against_the_api(api, sessions) -> None:
    queue = unique_id("quiet")
    body = {"requirements": ["pydantic"], "task_queues": [queue], "main_queue": False}
    answer = await api.post("/api/v1/requirements/check", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["checked_against"] == [
        {"task_queue": queue, "environment": "api", "hosts": [socket.gethostname()]}
    ]
    # A worker not seen for longer than MAX_AGE no longer counts.
    await _record(sessions, "gone-box", queue, {"pydantic": "1.0"})
    async with sessions.begin() as session:
        await session.execute(
            update(WorkerEnvironment)
            .where(WorkerEnvironment.host == "gone-box")
            .values(seen_at=datetime.now(UTC) - environments.MAX_AGE - timedelta(minutes=1))
        )
    body["requirements"] = ["definitely-not-installed-pkg>=1"]
    refused = await api.post("/api/v1/requirements/check", json=body)
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["msg"].startswith(
        "definitely-not-installed-pkg is not installed on the API process (no worker of task "
        f"queue {queue} reported its environment in the last 15 minutes)"
    )


def _package(root: Path, word: str) -> PackagedCode:
    _tree(
        root,
        {
            "shared_flow.py": "from shared_lib.words import WORD\n"
            "from shared_lib import helper\n"
            "def step(ctx):\n"
            "    import shared_lib.words as late\n"
            "    return {'word': WORD, 'late': late.WORD, 'helped': helper.shout(), "
            "'module': __name__}\n",
            "shared_lib/__init__.py": "",
            "shared_lib/words.py": f"WORD = {word!r}\n",
            "shared_lib/helper.py": "from .words import WORD\n"
            "def shout():\n    return WORD.upper()\n",
        },
    )
    return PackagedCode(hashlib.sha256(word.encode()).hexdigest(), root)


def test_two_packages_with_the_same_module_names_import_side_by_side(tmp_path: Path) -> None:
    one = _package(tmp_path / unique_id("one"), "one")
    two = _package(tmp_path / unique_id("two"), "two")
    assert one.owns("shared_flow") and one.owns("shared_lib.words") and not one.owns("json")
    first = one.module("shared_flow").step(None)
    second = two.module("shared_flow").step(None)
    assert (first["word"], first["late"], first["helped"]) == ("one", "one", "ONE")
    assert (second["word"], second["late"], second["helped"]) == ("two", "two", "TWO")
    assert first["module"] == f"{one.prefix}.shared_flow"
    with pytest.raises(ModuleNotFoundError):
        import shared_flow  # type: ignore[import-not-found]  # noqa: F401
