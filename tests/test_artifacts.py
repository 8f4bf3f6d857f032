"""The local artifact store's byte objects (code packages and other content stored by key)."""

from __future__ import annotations

from pathlib import Path

import pytest

from maestro.artifacts import LocalArtifactStore


def test_put_bytes_round_trips_and_replaces(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "artifacts")
    uri = store.put_bytes("code/ab/abcd.zip", b"first")
    assert uri.startswith("file://")
    assert store.get_bytes(uri) == b"first"
    assert store.put_bytes("code/ab/abcd.zip", b"second") == uri
    assert store.get_bytes(uri) == b"second"
    assert not list((tmp_path / "artifacts").rglob("*.partial"))


def test_put_bytes_refuses_keys_outside_the_store(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "artifacts")
    with pytest.raises(ValueError, match="inside the store"):
        store.put_bytes("../escape.txt", b"x")
    assert not (tmp_path / "escape.txt").exists()
