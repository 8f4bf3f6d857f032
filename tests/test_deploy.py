"""`maestro deploy` end to end: a real `maestro api` and `maestro worker` (separate processes),
Temporal and PostgreSQL. The flows live in the test's temporary directory, which the worker
cannot import from: their steps run from the deployed code package only."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from maestro.cli import app
from maestro.client import MaestroAPIError, MaestroClient
from tests.conftest import unique_id

pytestmark = pytest.mark.e2e

FLOW = """
import time
from pathlib import Path

from maestro.sdk import Param, RunStrategy, StepContext, Workflow, signal

wf = Workflow(
    "{wid}",
    params={{"gate": Param(str, default="")}},
    triggers=[signal("{signal}", where={{"rows": {{">": 0}}}})],
    requirements={requirements},
    run_strategy=RunStrategy(kind="parallel", max_concurrency=5),
)


@wf.step
def hello(ctx: StepContext) -> dict[str, object]:
    gate = ctx.params["gate"]
    while gate and {waits} and not Path(gate).exists():
        time.sleep(0.05)
    return {{"word": "{word}", "module": __name__}}
"""


def write_flow(
    path: Path, wid: str, word: str, *, waits: bool = False, requirements: str = "()"
) -> Path:
    path.write_text(
        textwrap.dedent(
            FLOW.format(
                wid=wid, word=word, waits=waits, signal=f"{wid}.loaded", requirements=requirements
            )
        )
    )
    return path


# The task queue of this module's `maestro api` and `maestro worker` (conftest's api_url).
TASK_QUEUE = "maestro-deploy"


@pytest.fixture
def deploy(api_url: str, admin_key: str, tmp_path: Path):
    runner = CliRunner()
    env = {"MAESTRO_DATA_DIR": str(tmp_path / "data"), "MAESTRO_API_KEY": admin_key}

    def invoke(*args: str) -> tuple[int, str]:
        result = runner.invoke(app, ["deploy", "--api-url", api_url, *args], env=env)
        return result.exit_code, result.output

    invoke.runner, invoke.env, invoke.url = runner, env, api_url  # type: ignore[attr-defined]
    return invoke


@pytest.fixture
def client(api_url: str, admin_key: str) -> Iterator[MaestroClient]:
    with MaestroClient(api_url, admin_key) as c:
        yield c


def _deployed(deploy, flow: Path) -> dict:
    code, output = deploy(str(flow), "--production", "--output", "json")
    assert code == 0, output
    return json.loads(output)


def _run(client: MaestroClient, wid: str, **params: object) -> dict:
    return client.start_run(wid, params=params)


def _wait_for_the_worker_environment(client: MaestroClient) -> None:
    """Until this module's `maestro worker` has recorded its environment (it starts beside the
    API, which answers first)."""
    deadline = time.monotonic() + 60
    while client.check_requirements(["pydantic"])["checked_against"][0]["environment"] != "workers":
        assert time.monotonic() < deadline, "the worker records no environment after 60 s"
        time.sleep(0.2)


def test_a_flow_runs_from_its_code_package_only(deploy, client, tmp_path: Path) -> None:
    wid = unique_id("deployed")
    _wait_for_the_worker_environment(client)
    module = f"flow_{wid.replace('-', '_')}"
    flow = write_flow(tmp_path / f"{module}.py", wid, "one", requirements='["pydantic>=2"]')
    code, output = deploy(str(flow), "--production")
    assert code == 0, output
    assert f"{wid} [prod]: created version 1 (active)" in output
    assert (
        f"{wid}: requirements met on task queue {TASK_QUEUE} by the workers on "
        f"{socket.gethostname()}"
    ) in output
    assert f"starts: when {wid}.loaded (rows > 0)" in output
    report = _deployed(deploy, flow)
    sha = report["code"]["sha256"]
    assert report["code"]["files"] == [flow.name]
    assert report["workflows"][0]["result"]["created"] is False  # identical: unchanged
    code, output = deploy(str(flow), "--production")
    assert f"{wid} [prod]: unchanged (version 1)" in output
    flow.unlink()  # nothing of it remains but the package

    run = client.wait_for_run(_run(client, wid)["run_id"], timeout=60)
    assert run["status"] == "succeeded", run
    outputs = run["steps"][0]["outputs"]
    assert outputs["word"] == "one"
    assert outputs["module"].startswith("_maestro_code_") and outputs["module"].endswith(module)
    assert run["code_sha256"] == sha
    version = client.get_version(wid, 1)
    assert version["code_sha256"] == sha and version["code_uri"].endswith(f"code/{sha}.zip")
    assert version["definition"]["steps"][0]["params"]["entrypoint"] == f"{module}:hello"
    runner, env = deploy.runner, deploy.env
    shown = runner.invoke(app, ["workflow", "--api-url", deploy.url, "versions", wid], env=env)
    assert sha[:12] in shown.output
    shown = runner.invoke(app, ["run", "--api-url", deploy.url, "show", run["run_id"]], env=env)
    assert f"package {sha[:12]}" in shown.output


def test_two_versions_with_different_code_run_at_once(deploy, client, tmp_path: Path) -> None:
    wid = unique_id("versions")
    flow = tmp_path / "side_by_side_flow.py"
    gate = tmp_path / "gate"
    _deployed(deploy, write_flow(flow, wid, "one", waits=True))
    first = _run(client, wid, gate=str(gate))
    second_report = _deployed(deploy, write_flow(flow, wid, "two"))
    assert second_report["workflows"][0]["result"]["version"] == 2
    second = client.wait_for_run(_run(client, wid, gate=str(gate))["run_id"], timeout=60)
    assert client.get_run(first["run_id"])["status"] == "running"
    gate.touch()
    first = client.wait_for_run(first["run_id"], timeout=60)
    assert (first["version"], first["steps"][0]["outputs"]["word"]) == (1, "one")
    assert (second["version"], second["steps"][0]["outputs"]["word"]) == (2, "two")
    assert first["code_sha256"] != second["code_sha256"]


def test_unmet_requirements_stop_the_deploy(deploy, client, tmp_path: Path) -> None:
    wid = unique_id("needs")
    _wait_for_the_worker_environment(client)
    flow = write_flow(
        tmp_path / "needs_flow.py", wid, "x", requirements='["no-such-distribution-anywhere>=1"]'
    )
    code, output = deploy(str(flow), "--production")
    assert code == 1
    assert (
        f"no-such-distribution-anywhere is not installed on worker {socket.gethostname()} "
        f"(task queue {TASK_QUEUE})"
    ) in output
    assert wid not in [w["id"] for w in client.iter_workflows()]


def test_bad_packages_are_refused(api_url: str, admin_key: str, tmp_path: Path) -> None:
    headers = {"authorization": f"Bearer {admin_key}", "content-type": "application/zip"}
    with httpx.Client(base_url=f"{api_url}/api/v1", headers=headers) as http:

        def put(data: bytes, sha: str | None = None) -> httpx.Response:
            return http.put(f"/code/{sha or hashlib.sha256(data).hexdigest()}", content=data)

        big = os.urandom(5 * 1024 * 1024 + 1)
        assert put(big).status_code == 413
        (tmp_path / "pkg").mkdir()
        (tmp_path / "pkg" / "flow.py").write_text("X = 1\n")
        from maestro import code_packages

        package = code_packages.build(tmp_path, [tmp_path / "pkg"])
        mismatch = put(package.data, "0" * 64)
        assert mismatch.status_code == 422
        assert mismatch.json()["detail"][0]["type"] == "hash_mismatch"
        secret = _zip_with(".env")
        answer = put(secret)
        assert answer.status_code == 422 and "looks like a secret" in answer.text
        assert put(b"plain text").json()["detail"][0]["type"] == "not_a_zip"
        stored = put(package.data)
        assert stored.status_code == 201 and stored.json()["created"] is True
        assert put(package.data).status_code == 200  # content-addressed: stored once
        unknown = http.post(
            "/workflows",
            params={"code": "1" * 64},
            json={"id": unique_id("nocode"), "steps": [{"id": "a", "type": "noop"}]},
            headers={"content-type": "application/json"},
        )
        assert unknown.status_code == 422
        assert unknown.json()["detail"][0]["loc"] == ["query", "code"]
        unauthenticated = httpx.put(f"{api_url}/api/v1/code/{package.sha256}", content=package.data)
        assert unauthenticated.status_code == 401


def _zip_with(name: str) -> bytes:
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(name, "KEY=1")
    return buffer.getvalue()


def test_a_flow_goes_to_a_branch_first_then_to_production(deploy, client, tmp_path: Path) -> None:
    """The developer's path: deploy to their branch (its schedules held, prod untouched), run it
    there, then deploy the same code to production."""
    wid = unique_id("branched")
    flow = write_flow(tmp_path / f"flow_{wid.replace('-', '_')}.py", wid, "b")
    code, output = deploy(str(flow), "--branch", "user.alice")
    assert code == 0, output
    assert f"{wid}@user.alice [user.alice]: created version 1" in output
    branch = client.get_workflow(f"{wid}@user.alice")
    assert branch["branch"] == "user.alice"
    with pytest.raises(MaestroAPIError) as missing:
        client.get_workflow(wid)
    assert missing.value.status == 404, "production is untouched"
    run = client.wait_for_run(_run(client, f"{wid}@user.alice")["run_id"], timeout=60)
    assert run["status"] == "succeeded" and run["steps"][0]["outputs"]["word"] == "b"

    code, output = deploy(str(flow), "--production")
    assert code == 0, output
    assert client.get_workflow(wid)["branch"] == "prod"
    assert client.get_version(wid, 1)["code_sha256"] == run["code_sha256"]
