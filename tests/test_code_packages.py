"""Code packages: building them deterministically, what the API refuses, requirements, and the
worker's isolated import of two packages holding the same module names."""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path

import pytest

from maestro import code_packages
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


def test_requirements_against_this_environment() -> None:
    assert code_packages.requirements_problems(["pytest>=1", "pydantic"]) == []
    problems = code_packages.requirements_problems(
        ["no-such-distribution-anywhere>=1", "pytest<1", "not a requirement!!"]
    )
    assert [p.type for p in problems] == ["not_installed", "version_mismatch", "invalid"]
    assert "no-such-distribution-anywhere is not installed on the workers" in problems[0].msg
    assert [p.loc for p in problems] == [("requirements", i) for i in range(3)]


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
