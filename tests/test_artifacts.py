"""The artifact stores, local directory and S3-compatible object store (against moto's server
on loopback): files, directories and byte objects round trip; a missing artifact is a clear
error; concurrent readers of one object share one local copy; a store that restarts costs a
call time, not an error."""

from __future__ import annotations

import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from api.app import create_app
from maestro import code_packages
from maestro.artifacts import (
    ArtifactStore,
    LocalArtifactStore,
    ObjectArtifactStore,
    open_store,
)
from maestro.errors import ArtifactNotFound
from maestro.settings import Settings
from tests.s3 import Relay, S3Server


@pytest.fixture(params=["file", "s3"])
def store(request, tmp_path: Path) -> ArtifactStore:
    if request.param == "file":
        return open_store(Settings(data_dir=tmp_path / "data"))
    server: S3Server = request.getfixturevalue("s3_server")
    return open_store(server.settings(server.new_bucket(), tmp_path / "data"))


def test_open_store_follows_the_url(tmp_path: Path, s3_server: S3Server) -> None:
    default = open_store(Settings(data_dir=tmp_path / "data"))
    assert isinstance(default, LocalArtifactStore)
    assert default.root == (tmp_path / "data" / "artifacts").resolve()
    elsewhere = open_store(Settings(artifact_store=(tmp_path / "shared").as_uri()))
    assert isinstance(elsewhere, LocalArtifactStore) and elsewhere.root == tmp_path / "shared"
    bucket = s3_server.new_bucket()
    remote = open_store(s3_server.settings(bucket, tmp_path / "data", "team/ml"))
    assert isinstance(remote, ObjectArtifactStore)
    assert remote.uri("code/x.zip") == f"s3://{bucket}/team/ml/code/x.zip"
    assert remote.cache_dir == (tmp_path / "data" / "artifact-cache").resolve()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("gs://bucket/x", "file:///path or s3://bucket/prefix"),
        ("/var/lib/maestro", "file:///path or s3://bucket/prefix"),
        ("s3:///prefix", "names a bucket"),
        ("file://relative/dir", "absolute path"),
    ],
)
def test_a_bad_store_url_is_refused_naming_the_setting(url: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message) as caught:
        Settings(artifact_store=url)
    assert caught.value.errors()[0]["loc"] == ("artifact_store",)


def test_a_file_round_trips(store: ArtifactStore, tmp_path: Path) -> None:
    source = tmp_path / "model.pkl"
    source.write_bytes(b"weights" * 1000)
    stored = store.put(source, run_id="r1", step_id="train", name="model")
    assert stored.uri.split("://")[0] in ("file", "s3")
    assert stored.uri.endswith("/r1/train/model")
    assert stored.size == 7000
    assert stored.sha256 == hashlib.sha256(b"weights" * 1000).hexdigest()
    assert store.local_path(stored.uri).read_bytes() == b"weights" * 1000
    assert store.get_bytes(stored.uri) == b"weights" * 1000


def test_a_directory_round_trips_and_a_retry_replaces_it(
    store: ArtifactStore, tmp_path: Path
) -> None:
    source = tmp_path / "checkpoint"
    (source / "shards").mkdir(parents=True)
    (source / "config.json").write_text("{}")
    (source / "shards" / "0.bin").write_bytes(b"\x00\x01")
    (source / "shards" / "1.bin").write_bytes(b"\x02")
    first = store.put(source, run_id="r1", step_id="train", name="checkpoint")
    local = store.local_path(first.uri)
    assert local.is_dir() and local.name == "checkpoint"
    assert sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file()) == [
        "config.json",
        "shards/0.bin",
        "shards/1.bin",
    ]
    assert (local / "shards" / "0.bin").read_bytes() == b"\x00\x01"
    assert first.size == 5

    # A retried attempt stores something else under the same name: readers see only that.
    (source / "shards" / "1.bin").unlink()
    (source / "config.json").write_text('{"epochs": 2}')
    again = store.put(source, run_id="r1", step_id="train", name="checkpoint")
    assert again.uri == first.uri and again.sha256 != first.sha256
    local = store.local_path(again.uri)
    assert sorted(p.name for p in local.rglob("*") if p.is_file()) == ["0.bin", "config.json"]
    assert (local / "config.json").read_text() == '{"epochs": 2}'


def test_names_sharing_a_prefix_stay_apart(store: ArtifactStore, tmp_path: Path) -> None:
    (tmp_path / "a").write_text("model")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "f").write_text("model2")
    one = store.put(tmp_path / "a", run_id="r", step_id="s", name="model")
    two = store.put(tmp_path / "b", run_id="r", step_id="s", name="model2")
    assert store.local_path(one.uri).read_text() == "model"
    assert (store.local_path(two.uri) / "f").read_text() == "model2"


def test_byte_objects_round_trip_and_replace(store: ArtifactStore) -> None:
    uri = store.put_bytes("code/ab/abcd.zip", b"first")
    assert uri == store.uri("code/ab/abcd.zip")
    assert store.get_bytes(uri) == b"first"
    assert store.put_bytes("code/ab/abcd.zip", b"second") == uri
    assert store.get_bytes(uri) == b"second"
    assert store.local_path(uri).read_bytes() == b"second"


def test_missing_artifacts_are_a_clear_error(store: ArtifactStore, tmp_path: Path) -> None:
    missing = store.uri("code/nothing-here.zip")
    with pytest.raises(ArtifactNotFound, match=f"artifact {missing} does not exist"):
        store.get_bytes(missing)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        store.local_path(missing)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        store.put(tmp_path / "absent", run_id="r", step_id="s", name="model")


def test_keys_stay_inside_the_store(store: ArtifactStore, tmp_path: Path) -> None:
    for key in ("../escape.txt", "/abs.txt", "a//b", "a/./b"):
        with pytest.raises(ValueError, match="inside the store"):
            store.put_bytes(key, b"x")
    assert not (tmp_path / "escape.txt").exists()


def test_an_object_store_refuses_uris_of_other_buckets(tmp_path: Path, s3_server) -> None:
    store = open_store(s3_server.settings(s3_server.new_bucket(), tmp_path / "data"))
    with pytest.raises(ValueError, match="not an object of this store"):
        store.get_bytes("s3://another-bucket/x")


def test_concurrent_readers_share_one_local_copy(tmp_path: Path, s3_server: S3Server) -> None:
    """Readers in several threads and two worker processes' stores (one cache directory each,
    or a shared one) all get the whole artifact, and one copy per cache."""
    settings = s3_server.settings(s3_server.new_bucket(), tmp_path / "data")
    writer = open_store(settings)
    source = tmp_path / "model"
    source.mkdir()
    for i in range(8):
        (source / f"part-{i}").write_bytes(bytes([i]) * 100_000)
    uri = writer.put(source, run_id="r", step_id="train", name="model").uri

    readers = [open_store(settings) for _ in range(4)]
    with ThreadPoolExecutor(16) as pool:
        paths = list(pool.map(lambda i: readers[i % 4].local_path(uri), range(32)))
    assert len(set(paths)) == 1
    [path] = set(paths)
    for i in range(8):
        assert (path / f"part-{i}").read_bytes() == bytes([i]) * 100_000
    cache = settings.artifact_cache_path
    assert [p.name for p in cache.iterdir()] == [path.parent.name], "no partial copies left"


def test_a_replaced_object_is_fetched_again(tmp_path: Path, s3_server: S3Server) -> None:
    store = open_store(s3_server.settings(s3_server.new_bucket(), tmp_path / "data"))
    uri = store.put_bytes("checkpoints/r/train", b"epoch 1")
    first = store.local_path(uri)
    store.put_bytes("checkpoints/r/train", b"epoch 2")
    assert store.local_path(uri).read_bytes() == b"epoch 2"
    assert first.read_bytes() == b"epoch 1", "a copy being read is not overwritten"


def test_local_store_reads_existing_file_uris_and_refuses_others(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "artifacts")
    elsewhere = tmp_path / "x.txt"
    elsewhere.write_text("x")
    assert store.local_path(elsewhere.as_uri()) == elsewhere
    with pytest.raises(ValueError, match="file:// URIs only"):
        store.local_path("s3://bucket/x")


def step_context(tmp_path: Path, store: ArtifactStore | None, step_id: str = "train"):
    from maestro.context import StepContext

    return StepContext(
        run_id="run-1",
        workflow_id="wf",
        run_number=1,
        step_id=step_id,
        attempt=1,
        params={},
        args={},
        upstream={},
        _work_dir=tmp_path / "work" / "run-1",
        _store=store,
    )


def test_checkpoints_live_in_the_store_and_are_the_steps_own(
    store: ArtifactStore, tmp_path: Path
) -> None:
    """A checkpoint saved on one worker is read on another (a second context and work dir over
    the same store); each step of a run has its own."""
    first = step_context(tmp_path / "a", store)
    assert first.load_checkpoint() is None
    first.save_checkpoint(b"epoch 1")
    first.save_checkpoint(b"epoch 2")
    elsewhere = step_context(tmp_path / "b", store)
    assert elsewhere.load_checkpoint() == b"epoch 2"
    assert step_context(tmp_path / "b", store, step_id="evaluate").load_checkpoint() is None


def test_step_context_reads_artifacts_through_the_store(
    store: ArtifactStore, tmp_path: Path
) -> None:
    (tmp_path / "model.pkl").write_bytes(b"model")
    uri = store.put(tmp_path / "model.pkl", run_id="r", step_id="train", name="model").uri
    ctx = step_context(tmp_path / "reader", store)
    assert ctx.local_path(uri).read_bytes() == b"model"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ctx.local_path(uri + "-missing")


def test_a_context_without_a_store_reads_files_and_keeps_checkpoints_in_its_work_dir(
    tmp_path: Path,
) -> None:
    ctx = step_context(tmp_path, None)
    (tmp_path / "f.txt").write_text("x")
    assert ctx.local_path((tmp_path / "f.txt").as_uri()) == tmp_path / "f.txt"
    with pytest.raises(ValueError, match="not a local artifact"):
        ctx.local_path("s3://bucket/key")
    ctx.save_checkpoint(b"state")
    assert step_context(tmp_path, None).load_checkpoint() == b"state"
    assert str(tmp_path / "work" / "run-1") in str(next((tmp_path / "work").rglob("train")))


def test_a_step_rides_out_an_object_store_that_restarts(tmp_path: Path, s3_server) -> None:
    """While the store cannot be reached (here: a relay in front of it, switched off), a
    step's checkpoint write keeps trying, and lands once the store is back: no failed call,
    so no attempt of the step spent."""
    relay = Relay(s3_server.port)
    bucket = s3_server.new_bucket()
    store = open_store(s3_server.settings(bucket, tmp_path / "data", endpoint=relay.endpoint))
    context = step_context(tmp_path, store)
    try:
        with ThreadPoolExecutor(1) as pool:
            began = time.monotonic()
            saving = pool.submit(context.save_checkpoint, b"epoch 7")
            time.sleep(3)
            assert not saving.done(), "the write gave up while the store was away"
            relay.start()
            saving.result(timeout=30)
        assert time.monotonic() - began >= 3
        assert step_context(tmp_path / "elsewhere", store).load_checkpoint() == b"epoch 7"
    finally:
        relay.stop()


def test_a_store_away_longer_than_its_retry_window_fails_the_call(
    tmp_path: Path, s3_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MAESTRO_S3__RETRY_FOR_SECONDS bounds the wait: past it the call fails, naming the
    request, and the step's attempt fails with it."""
    monkeypatch.setenv("MAESTRO_S3__RETRY_FOR_SECONDS", "2")
    assert Settings().s3.retry_for_seconds == 2
    relay = Relay(s3_server.port)  # never switched on
    settings = s3_server.settings(
        s3_server.new_bucket(), tmp_path / "data", endpoint=relay.endpoint
    )
    settings.s3.retry_for_seconds = 2
    store = open_store(settings)
    began = time.monotonic()
    with pytest.raises(Exception, match=r"PUT .*retry_timeout: 2s"):
        store.put_bytes("checkpoints/run-1/train", b"lost")
    assert 2 <= time.monotonic() - began < 15


@pytest.mark.parametrize("value", ["0", "301"])
def test_the_retry_window_is_bounded(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("MAESTRO_S3__RETRY_FOR_SECONDS", value)
    with pytest.raises(ValidationError, match="retry_for_seconds"):
        Settings()


async def test_a_code_upload_while_the_store_is_away_is_a_503_and_records_nothing(
    settings: Settings, auth_headers, s3_server, tmp_path: Path
) -> None:
    """The API waits a few seconds for a store that cannot be reached, not a step's two
    minutes, then answers 503 `unavailable` naming the store, with no package recorded; the
    same upload succeeds once the store is back."""
    relay = Relay(s3_server.port)
    shared = s3_server.settings(s3_server.new_bucket(), tmp_path / "data", endpoint=relay.endpoint)
    app = create_app(
        settings.model_copy(update={"artifact_store": shared.artifact_store, "s3": shared.s3})
    )
    (tmp_path / "flow").mkdir()
    (tmp_path / "flow" / "flow.py").write_text("X = 1\n")
    package = code_packages.build(tmp_path, [tmp_path / "flow"])
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://maestro/api/v1", headers=auth_headers
        ) as http:
            began = time.monotonic()
            refused = await http.put(f"/code/{package.sha256}", content=package.data)
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"] == "unavailable"
            assert "artifact store" in refused.json()["message"]
            assert refused.headers["Retry-After"] == "5"
            assert time.monotonic() - began < 30
            assert (await http.get(f"/code/{package.sha256}")).status_code == 404
            relay.start()
            try:
                stored = await http.put(f"/code/{package.sha256}", content=package.data)
            finally:
                relay.stop()
            assert stored.status_code == 201, stored.text
