"""Workers on different machines share nothing but the object store (and Temporal and
PostgreSQL): worker processes with separate data and work directories, an S3-compatible server
on loopback (moto) as the artifact store. A model trained on one worker is evaluated, deployed
and scored on another; a worker killed mid-training is replaced by one on a fresh "machine",
which resumes from the checkpoint in the store; a code package written by one process is read
by a worker, and a flow deployed with `maestro deploy` runs from its package on another
machine."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from maestro.artifacts import open_store
from maestro.cli import app as cli_app
from maestro.db.tables import Artifact, ModelVersion
from maestro.embedded import wait_for_port
from maestro.errors import ArtifactNotFound
from maestro.settings import Settings
from tests.conftest import unique_id, wait_for_run, wait_for_step
from tests.processes import Processes
from tests.s3 import S3Server

pytestmark = [pytest.mark.e2e, pytest.mark.fault, pytest.mark.timeout(300)]


class Machine:
    """One worker machine: its own data directory, work root and task queue, the shared
    store."""

    def __init__(
        self, settings: Settings, root: Path, queue: str, task_queue: str, env: dict[str, str]
    ) -> None:
        self.data_dir, self.work_root = root / "data", root / "work"
        for path in (self.data_dir, self.work_root):
            path.mkdir(parents=True)
        self.processes = Processes(settings, root, task_queue=task_queue)
        self.processes.env.update(
            env,
            MAESTRO_DATA_DIR=str(self.data_dir),
            MAESTRO_WORKER__WORK_ROOT=str(self.work_root),
            MAESTRO_WORKER__TASK_QUEUES=f'["{queue}"]',
        )

    def start(self) -> int:
        return self.processes.start("worker").pid

    def cached(self) -> list[str]:
        """The names of the artifacts this machine holds local copies of."""
        cache = self.data_dir / "artifact-cache"
        return sorted(p.name for entry in cache.iterdir() for p in entry.iterdir())


async def test_workers_sharing_only_the_object_store(
    settings: Settings, s3_server: S3Server, tmp_path: Path, auth_headers, sessions
) -> None:
    bucket = s3_server.new_bucket()
    task_queue = f"maestro-store-{uuid.uuid4().hex[:8]}"
    queue_a, queue_b = f"{task_queue}-a", f"{task_queue}-b"
    shared = {**s3_server.env(), "MAESTRO_ARTIFACT_STORE": f"s3://{bucket}/maestro"}
    # What the test reads and writes, as one more machine would (`maestro deploy`, say).
    store = open_store(s3_server.settings(bucket, tmp_path / "deployer"))
    package = os.urandom(50_000)
    package_uri = store.put_bytes(f"code/{hashlib.sha256(package).hexdigest()}.zip", package)

    trainer = Machine(settings, tmp_path / "a", queue_a, task_queue, shared)
    scorer = Machine(settings, tmp_path / "b", queue_b, task_queue, shared)
    replacement = Machine(settings, tmp_path / "c", queue_a, task_queue, shared)
    api = Processes(settings, tmp_path, task_queue=task_queue)
    api.env.update(shared)
    machines = [trainer, scorer, replacement]
    model, wid = unique_id("shared-model"), unique_id("shared-store")
    try:
        trainer_pid = trainer.start()
        scorer.start()
        api.start("api")
        wait_for_port("127.0.0.1", api.api_port, timeout=60)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{api.api_port}", headers=auth_headers, timeout=60
        ) as http:
            pushed = await http.post(
                "/api/v1/workflows",
                json={
                    "id": wid,
                    "params": {"package_uri": {"type": "string"}},
                    "steps": [
                        {
                            "id": "train",
                            "type": "train",
                            "task_queue": queue_a,
                            "heartbeat_timeout": "2s",
                            "retry": {"max_attempts": 3, "initial_backoff": "0.5s"},
                            "params": {
                                "entrypoint": "examples.ml.pipeline:train_digits",
                                "model_name": model,
                                "data": "digits/shared",
                                "args": {"epochs": 12, "epoch_seconds": 0.3},
                            },
                        },
                        {
                            "id": "evaluate",
                            "type": "evaluate",
                            "task_queue": queue_b,
                            "depends_on": ["train"],
                            "params": {
                                "entrypoint": "examples.ml.pipeline:evaluate_digits",
                                "model_name": model,
                                "model_version": {"expr": "steps.train.outputs.model_version"},
                                "data": "digits/shared",
                                "gates": ["accuracy >= 0.85"],
                            },
                        },
                        {
                            "id": "deploy",
                            "type": "deploy",
                            "task_queue": queue_b,
                            "depends_on": ["evaluate"],
                            "params": {
                                "model_name": model,
                                "model_version": {"expr": "steps.train.outputs.model_version"},
                                "stage": "production",
                            },
                        },
                        {
                            "id": "score",
                            "type": "python",
                            "task_queue": queue_b,
                            "depends_on": ["deploy"],
                            "params": {
                                "entrypoint": "examples.ml.pipeline:score_batch",
                                "args": {"model_uri": {"expr": "steps.deploy.outputs.model_uri"}},
                            },
                        },
                        {
                            "id": "package",
                            "type": "python",
                            "task_queue": queue_b,
                            "params": {
                                "entrypoint": "tests.steps:digest_of",
                                "args": {"uri": {"expr": "params.package_uri"}},
                            },
                        },
                    ],
                },
            )
            assert pushed.status_code == 201, pushed.text
            started = await http.post(
                f"/api/v1/workflows/{wid}/runs", json={"params": {"package_uri": package_uri}}
            )
            assert started.status_code in (200, 201), started.text
            run_id = started.json()["run_id"]
            await wait_for_step(http, run_id, "train", "running", timeout=90)
            checkpoint = store.uri(f"checkpoints/{run_id}/train")
            for _ in range(300):
                try:
                    store.get_bytes(checkpoint)
                    break
                except ArtifactNotFound:
                    await asyncio.sleep(0.1)
            await asyncio.sleep(1.5)  # a few more epochs, checkpointed and reported
            os.kill(trainer_pid, signal.SIGKILL)
            trainer.processes.procs[0].wait(10)
            # The trainer's machine is gone with its disk: a new one takes its queue.
            replacement.start()
            done = await wait_for_run(http, run_id, timeout=150)

            # A flow whose code exists only in its deployed package: `maestro deploy` on the
            # developer's machine uploads it (the API writes it to the store) and the scorer's
            # machine fetches it from the store to run the step.
            flow_id = unique_id("shared-code")
            flow = tmp_path / "dev" / f"flow_{flow_id.replace('-', '_')}.py"
            flow.parent.mkdir()
            flow.write_text(
                "from maestro.sdk import StepContext, Workflow\n"
                f"wf = Workflow({flow_id!r})\n"
                f"@wf.step(task_queue={queue_b!r})\n"
                "def where(ctx: StepContext) -> dict[str, object]:\n"
                "    return {'module': __name__, 'file': __file__}\n"
            )
            deployed = CliRunner().invoke(
                cli_app,
                ["deploy", "--api-url", f"http://127.0.0.1:{api.api_port}", "--production"]
                + [str(flow)],
                env={"MAESTRO_API_KEY": auth_headers["Authorization"].split()[-1]},
            )
            assert deployed.exit_code == 0, deployed.output
            code_run = await http.post(f"/api/v1/workflows/{flow_id}/runs", json={})
            assert code_run.status_code == 201, code_run.text
            code_done = await wait_for_run(http, code_run.json()["run_id"], timeout=60)
            code_version = (await http.get(f"/api/v1/workflows/{flow_id}/versions/1")).json()
    finally:
        for machine in machines:
            machine.processes.stop_all()
        api.stop_all()
    assert done["status"] == "succeeded", done
    steps = {s["step_id"]: s for s in done["steps"]}
    train = steps["train"]
    assert train["attempt"] == 2
    assert train["outputs"]["resumed_from_epoch"] > 0, "resumed from the store's checkpoint"
    model_uri = train["outputs"]["model_uri"]
    assert model_uri == f"s3://{bucket}/maestro/{run_id}/train/model"
    assert steps["evaluate"]["outputs"]["metrics"]["accuracy"] >= 0.85
    assert steps["deploy"]["outputs"]["model_uri"] == model_uri
    score = steps["score"]["outputs"]
    assert score["rows"] == 200 and score["agreement_with_labels"] > 0.8
    predictions = score["artifacts"]["predictions"]
    assert predictions == f"s3://{bucket}/maestro/{run_id}/score/predictions"
    assert len(store.get_bytes(predictions).decode().splitlines()) == 201
    assert steps["package"]["outputs"]["sha256"] == hashlib.sha256(package).hexdigest()
    assert steps["package"]["outputs"]["path"].startswith(str(scorer.data_dir))

    # The scorer read the model and the package from its own cache, filled from the store;
    # no machine kept an artifact in a local store.
    assert scorer.cached() == sorted(["model", package_uri.rsplit("/", 1)[-1]])
    for machine in machines:
        assert not (machine.data_dir / "artifacts").exists()
    async with sessions() as session:
        recorded = (
            await session.execute(select(Artifact.uri).where(Artifact.run_id == run_id))
        ).scalars()
        version = await session.get(ModelVersion, (model, 1))
    assert sorted(recorded) == sorted([model_uri, predictions])
    assert version is not None and version.artifact_uri == model_uri

    assert code_done["status"] == "succeeded", code_done
    ran = code_done["steps"][0]["outputs"]
    assert ran["module"].startswith("_maestro_code_"), "imported from the package"
    assert ran["file"].startswith(str(scorer.data_dir)), "unpacked on the scorer's machine"
    assert (
        code_version["code_uri"] == f"s3://{bucket}/maestro/code/{code_version['code_sha256']}.zip"
    )
