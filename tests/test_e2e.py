"""End to end: the API and worker as real processes, a real Temporal dev server, real
PostgreSQL. Fault tests kill the worker with SIGKILL."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Iterator

import httpx
import psutil
import pytest
from temporalio.client import Client

from maestro.embedded import wait_for_port
from maestro.settings import Settings
from tests.conftest import unique_id, wait_for_run, wait_for_step
from tests.processes import Processes

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def processes(settings: Settings, tmp_path_factory) -> Iterator[Processes]:
    procs = Processes(settings, tmp_path_factory.mktemp("e2e-logs"), task_queue="maestro-e2e")
    procs.start("api")
    procs.start("worker")
    wait_for_port("127.0.0.1", procs.api_port, timeout=60)
    yield procs
    procs.stop_all()


@pytest.fixture
async def http(processes: Processes, auth_headers) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{processes.api_port}", timeout=30, headers=auth_headers
    ) as client:
        yield client


async def register(http: httpx.AsyncClient, body: dict) -> dict:
    response = await http.post("/api/v1/workflows", json=body)
    assert response.status_code in (200, 201), response.text
    return response.json()


async def start(http: httpx.AsyncClient, workflow_id: str, **body) -> dict:
    response = await http.post(f"/api/v1/workflows/{workflow_id}/runs", json=body)
    assert response.status_code == 201, response.text
    return response.json()


async def test_register_run_succeed_and_find_it_in_temporal(http, temporal_client: Client):
    wid = unique_id("e2e-ok")
    await register(
        http,
        {
            "id": wid,
            "params": {"dataset": {"type": "string", "default": "digits"}},
            "steps": [
                {
                    "id": "extract",
                    "type": "shell",
                    "params": {
                        "command": "echo '{\"rows\": 42}' > $MAESTRO_OUTPUTS; echo extracted"
                    },
                },
                {
                    "id": "train",
                    "type": "python",
                    "depends_on": ["extract"],
                    "params": {
                        "entrypoint": "tests.steps:echo",
                        "args": {"rows": {"expr": "steps.extract.outputs.rows"}},
                    },
                },
                {"id": "wait", "type": "sleep", "params": {"seconds": 0.2}},
            ],
        },
    )
    run = await start(http, wid, params={"dataset": "iris"})
    done = await wait_for_run(http, run["run_id"])
    assert done["status"] == "succeeded", done
    steps = {s["step_id"]: s for s in done["steps"]}
    assert steps["extract"]["outputs"]["rows"] == 42
    assert steps["train"]["outputs"]["args"] == {"rows": 42}
    assert steps["train"]["outputs"]["params"] == {"dataset": "iris"}
    assert all(s["status"] == "succeeded" and s["attempt"] == 1 for s in done["steps"])

    # Findable in Temporal by its readable id and by Maestro's search attributes.
    handle = temporal_client.get_workflow_handle(run["temporal_workflow_id"])
    description = await handle.describe()
    assert description.run_id == run["temporal_run_id"]
    query = f"MaestroWorkflowId = '{wid}' AND MaestroVersion = 1 AND MaestroTriggerKind = 'manual'"
    for _ in range(50):  # visibility is eventually consistent
        found = [w.id async for w in temporal_client.list_workflows(query)]
        if found:
            break
        await asyncio.sleep(0.2)
    assert found == [run["temporal_workflow_id"]]
    # One activity per step attempt, each named after its step.
    history = await handle.fetch_history()
    summaries = [
        e.user_metadata.summary.data.decode()
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
        and e.activity_task_scheduled_event_attributes.activity_type.name == "run_step"
    ]
    assert sorted(s.strip('"').split(" ")[0] for s in summaries) == ["extract", "train", "wait"]


async def test_failing_shell_step_fails_the_run(http):
    wid = unique_id("e2e-fail")
    await register(
        http,
        {
            "id": wid,
            "steps": [
                {
                    "id": "boom",
                    "type": "shell",
                    "retry": {"max_attempts": 2, "initial_backoff": "0.1s"},
                    "params": {"command": "echo working; echo 'disk on fire' >&2; exit 3"},
                },
                {"id": "never", "type": "noop", "depends_on": ["boom"]},
            ],
        },
    )
    run = await start(http, wid)
    done = await wait_for_run(http, run["run_id"])
    assert done["status"] == "failed"
    steps = {s["step_id"]: s for s in done["steps"]}
    assert steps["boom"]["status"] == "failed"
    assert steps["boom"]["attempt"] == 2
    assert "exited with code 3: disk on fire" in steps["boom"]["error"]
    assert steps["never"]["status"] == "skipped"
    assert "boom" in done["error"]


async def test_cancel_kills_the_shell_process_group(http, settings):
    wid = unique_id("e2e-cancel")
    await register(
        http,
        {
            "id": wid,
            "steps": [
                {
                    "id": "long",
                    "type": "shell",
                    "params": {
                        "command": "sleep 300 & echo $! > child.pid; echo $$ > shell.pid; wait"
                    },
                }
            ],
        },
    )
    run = await start(http, wid)
    await wait_for_step(http, run["run_id"], "long", "running")
    work_dir = settings.worker.work_root_dir() / run["run_id"]
    for _ in range(100):
        if (work_dir / "child.pid").exists() and (work_dir / "shell.pid").exists():
            break
        await asyncio.sleep(0.1)
    pids = [int((work_dir / name).read_text()) for name in ("shell.pid", "child.pid")]
    assert all(alive(pid) for pid in pids)

    response = await http.post(f"/api/v1/runs/{run['run_id']}/cancel")
    assert response.status_code == 202
    done = await wait_for_run(http, run["run_id"], timeout=30)
    assert done["status"] == "stopped"
    assert done["steps"][0]["status"] == "stopped"
    for _ in range(50):
        if not any(alive(pid) for pid in pids):
            break
        await asyncio.sleep(0.1)
    assert not any(alive(pid) for pid in pids), "the shell and its child are gone"


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.fault
async def test_worker_killed_mid_step_and_the_run_still_succeeds(http, processes: Processes):
    wid = unique_id("e2e-crash")
    await register(
        http,
        {
            "id": wid,
            "steps": [
                {
                    "id": "train",
                    "type": "python",
                    "heartbeat_timeout": "2s",
                    "retry": {"max_attempts": 3, "initial_backoff": "0.5s"},
                    "params": {"entrypoint": "tests.steps:slow", "args": {"seconds": 4}},
                }
            ],
        },
    )
    worker = next(p for p in processes.procs if p.args[-1] == "worker" and p.poll() is None)
    run = await start(http, wid)
    step = await wait_for_step(http, run["run_id"], "train", "running")
    assert step["attempt"] == 1
    await asyncio.sleep(1.5)  # let it make and report progress
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)
    processes.start("worker")

    done = await wait_for_run(http, run["run_id"], timeout=90)
    assert done["status"] == "succeeded", done
    train = done["steps"][0]
    assert train["attempt"] == 2
    assert train["outputs"]["attempt"] == 2
    # The retried attempt started from the last progress the killed one reported.
    assert train["outputs"]["resumed_from"] > 0
    assert train["outputs"]["pid"] != worker.pid


async def test_running_run_keeps_its_snapshot_when_a_new_version_is_pushed(http):
    wid = unique_id("e2e-snapshot")

    def body(version: int) -> dict:
        return {
            "id": wid,
            "steps": [
                {"id": "wait", "type": "sleep", "params": {"seconds": 2}},
                {
                    "id": "report",
                    "type": "noop",
                    "depends_on": ["wait"],
                    "params": {"outputs": {"built_by": version}},
                },
            ],
        }

    await register(http, body(1))
    first = await start(http, wid)
    await wait_for_step(http, first["run_id"], "wait", "running")
    pushed = await register(http, body(2))
    assert pushed["version"] == 2
    second = await start(http, wid)
    assert second["version"] == 2

    done_first = await wait_for_run(http, first["run_id"])
    done_second = await wait_for_run(http, second["run_id"])
    assert done_first["version"] == 1
    assert done_first["outputs"]["report"] == {"built_by": 1}
    assert done_second["outputs"]["report"] == {"built_by": 2}


async def test_the_readme_example_runs(http):
    import yaml

    from tests.conftest import EXAMPLES

    text = (EXAMPLES / "hello.yaml").read_text()
    response = await http.post(
        "/api/v1/workflows", content=text, headers={"content-type": "application/yaml"}
    )
    assert response.status_code in (200, 201), response.text
    assert response.json()["workflow"]["id"] == yaml.safe_load(text)["id"]
    run = await start(http, "hello", params={"who": "ada"}, request_id=unique_id("readme"))
    done = await wait_for_run(http, run["run_id"])
    assert done["status"] == "succeeded", done
    steps = {s["step_id"]: s for s in done["steps"]}
    assert steps["count"]["outputs"] == {"letters": 8, "text": "hello ada"}
    assert steps["shout"]["status"] == "skipped"


@pytest.mark.fault
async def test_worker_killed_during_training_and_the_pipeline_still_succeeds(
    http, processes: Processes, settings
):
    wid = unique_id("e2e-train-crash")
    await register(
        http,
        {
            "id": wid,
            "steps": [
                {
                    "id": "train",
                    "type": "train",
                    "heartbeat_timeout": "2s",
                    "retry": {"max_attempts": 3, "initial_backoff": "0.5s"},
                    "params": {
                        "entrypoint": "examples.ml.pipeline:train_digits",
                        "model_name": unique_id("crash-model"),
                        "data": "digits/crash",
                        "args": {"epochs": 12, "epoch_seconds": 0.3},
                    },
                }
            ],
        },
    )
    worker = next(p for p in processes.procs if p.args[-1] == "worker" and p.poll() is None)
    run = await start(http, wid)
    await wait_for_step(http, run["run_id"], "train", "running")
    checkpoint = settings.data_dir.resolve() / "artifacts" / "checkpoints" / run["run_id"] / "train"
    for _ in range(100):
        if checkpoint.exists():
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.5)  # a few more epochs, checkpointed and reported
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)
    processes.start("worker")
    done = await wait_for_run(http, run["run_id"], timeout=90)
    assert done["status"] == "succeeded", done
    train = done["steps"][0]
    assert train["attempt"] == 2
    assert train["outputs"]["resumed_from_epoch"] > 0, "training resumed from its checkpoint"
    assert train["outputs"]["model_version"] == 1
