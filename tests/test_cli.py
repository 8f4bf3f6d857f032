"""The client CLI (`maestro workflow|run|signal`) against a real API process over HTTP, with a
real worker, Temporal dev server and PostgreSQL."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import Result
from rich.console import Console
from typer.testing import CliRunner

from maestro import client_cli
from maestro.cli import app
from maestro.client import MaestroAPIError
from maestro.client_cli import parse_assignments
from maestro.embedded import free_port, wait_for_port
from maestro.settings import Settings
from tests.conftest import EXAMPLES, unique_id
from tests.processes import Processes

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

UI_LINK = re.compile(r"Temporal UI: http://127\.0\.0\.1:8233/namespaces/default/workflows/\S+")
RUN_ID = re.compile(r"run (\S+):")


@pytest.fixture(scope="module")
def api_url(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `maestro api` and `maestro worker`, stopped at the end of the module."""
    stack = Processes(settings, tmp_path_factory.mktemp("cli-logs"), task_queue="maestro-cli")
    port = free_port()
    try:
        stack.start("worker")
        stack.start("api", port=port)
        wait_for_port("127.0.0.1", port, timeout=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        stack.stop_all()


@pytest.fixture
def cli(api_url: str, admin_key: str, tmp_path: Path):
    """Run `maestro <group> --api-url <api> <args>` in-process with an admin key; returns the
    click Result."""
    runner = CliRunner()
    env = {
        "MAESTRO_DATA_DIR": str(tmp_path / "data"),
        "COLUMNS": "250",
        "MAESTRO_API_KEY": admin_key,
    }

    def invoke(group: str, *args: str, url: str = api_url) -> Result:
        return runner.invoke(app, [group, "--api-url", url, *args], env=env)

    return invoke


def ok(result: Result) -> str:
    assert result.exit_code == 0, (result.exit_code, result.output, result.exception)
    return result.stdout


def hello_copy(tmp_path: Path) -> tuple[str, Path]:
    """examples/hello.yaml under an id no other test pushes."""
    wid = unique_id("cli-hello")
    text = (EXAMPLES / "hello.yaml").read_text()
    assert "\nid: hello\n" in text
    path = tmp_path / "hello.yaml"
    path.write_text(text.replace("\nid: hello\n", f"\nid: {wid}\n"))
    return wid, path


def test_apply_list_show_and_state_changes(cli, tmp_path: Path):
    wid, path = hello_copy(tmp_path)
    assert ok(cli("workflow", "validate", str(path))).startswith(f"{path}: valid ({wid}: 3 steps")
    assert ok(cli("workflow", "apply", str(path))).strip() == f"{wid}: created version 1 (active)"
    assert ok(cli("workflow", "apply", str(path))).strip() == f"{wid}: unchanged (version 1)"

    listed = ok(cli("workflow", "list"))
    [row] = [line for line in listed.splitlines() if line.startswith(wid)]
    assert row.split()[:3] == [wid, "team-platform", "active"]

    changed = tmp_path / "changed.json"
    definition = {"id": wid, "steps": [{"id": "go", "type": "noop"}], "triggers": [{"every": "1h"}]}
    changed.write_text(json.dumps(definition))
    assert (
        ok(cli("workflow", "apply", str(changed))).strip() == f"{wid}: created version 2 (active)"
    )
    # The first definition again is version 1, which stays inactive.
    assert ok(cli("workflow", "apply", str(path))).strip() == (
        f"{wid}: unchanged (version 1; the active version is 2)"
    )

    shown = ok(cli("workflow", "show", wid))
    assert re.search(r"active version\s+2", shown) and re.search(r"steps\s+go", shown)
    assert re.search(r"^1\s+[0-9a-f]{12}", shown, re.M), "version 1, not active"
    assert re.search(r"^2\s+yes\s+[0-9a-f]{12}", shown, re.M)
    assert re.search(r"^0\s+interval\s+\S+\s+active\s+.*next ", shown, re.M), shown

    assert ok(cli("workflow", "pause", wid)).strip() == f"{wid}: paused (triggers held)"
    assert "paused" in ok(cli("workflow", "show", wid)).split("interval", 1)[1]
    assert ok(cli("workflow", "resume", wid)).strip() == f"{wid}: active"
    assert ok(cli("workflow", "activate", wid, "1")).strip() == f"{wid}: version 1 active"
    assert ok(cli("workflow", "deactivate", wid)).startswith(f"{wid}: inactive")
    shown = ok(cli("workflow", "show", wid))
    assert re.search(r"state\s+inactive", shown) and "no triggers" in shown, "hello has none"

    assert ok(cli("workflow", "delete", wid, "--yes")).strip() == f"{wid}: deleted"
    gone = cli("workflow", "show", wid)
    assert gone.exit_code == 1 and gone.stderr.startswith("error: 404 not_found: ")


def test_run_start_wait_list_and_show(cli, tmp_path: Path):
    wid, path = hello_copy(tmp_path)
    ok(cli("workflow", "apply", str(path)))

    result = cli("run", "start", wid, "who=ada", "shout=true", "--request-id", "cli-1", "--wait")
    out = ok(result)
    assert re.search(r"status\s+succeeded", out), out
    assert re.search(r'params\s+\{"shout":true,"who":"ada"\}', out), "true parsed as JSON"
    assert re.search(r"^greet\s+shell\s+succeeded\s+1", out, re.M)
    assert re.search(r'^count\s+python\s+succeeded\s+1.*"letters":8', out, re.M)
    assert re.search(r"^shout\s+shell\s+succeeded", out, re.M)
    link = UI_LINK.search(out)
    assert link and f"/workflows/{wid}-run-1/" in link.group(0)
    run_id = re.search(r"^run\s+(\S+)\s*$", out, re.M).group(1)

    # The same request id returns the same run.
    again = ok(cli("run", "start", wid, "who=ada", "shout=true", "--request-id", "cli-1"))
    assert RUN_ID.search(again).group(1) == run_id and UI_LINK.search(again)

    # `12` is JSON, so a number, and `who` is a string param; quoted JSON is a string.
    bad = cli("run", "start", wid, "who=12")
    assert bad.exit_code == 1
    assert bad.stderr == "error: 422 params_invalid: params.who: expected string, got int 12\n"
    # Without --wait: a summary line and the link; then follow it to the end.
    started = ok(cli("run", "start", wid, 'who="12"'))
    second = RUN_ID.search(started).group(1)
    assert f"{wid} #2 (version 1)" in started and UI_LINK.search(started)
    followed = ok(cli("run", "show", second, "--follow"))
    assert re.search(r"status\s+succeeded", followed) and UI_LINK.search(followed)
    assert re.search(r'params\s+\{"shout":false,"who":"12"\}', followed)

    listed = ok(cli("run", "list", "--workflow", wid))
    rows = [line.split() for line in listed.splitlines()[1:]]
    assert [(r[0], r[1], r[2], r[4]) for r in rows] == [
        (second, wid, "2", "succeeded"),
        (run_id, wid, "1", "succeeded"),
    ]
    assert rows[0][-1] == f"{wid}-run-2"
    assert len(ok(cli("run", "list", "--workflow", wid, "--limit", "1")).splitlines()) == 2
    assert ok(cli("run", "list", "--workflow", wid, "--status", "failed")).strip() == "no runs"

    shown = ok(cli("run", "show", run_id))
    assert re.search(r"cause\s+manual \(request_id cli-1\)", shown) and UI_LINK.search(shown)

    restarted = ok(cli("run", "restart", run_id, "--from", "beginning"))
    assert f"{wid} #3 (version 1)" in restarted and UI_LINK.search(restarted)


def test_follow_refreshes_in_place_on_a_terminal(cli, tmp_path: Path, monkeypatch):
    wid = unique_id("cli-live")
    path = tmp_path / "live.json"
    steps = [{"id": "nap", "type": "sleep", "params": {"seconds": 2}}]
    path.write_text(json.dumps({"id": wid, "steps": steps}))
    ok(cli("workflow", "apply", str(path)))
    terminal = Console(force_terminal=True, width=200, markup=False, highlight=False)
    monkeypatch.setattr(client_cli, "out", terminal)
    out = ok(cli("run", "start", wid, "--wait"))
    assert "\x1b[" in out, "cursor control between frames"
    assert out.count("nap") >= 3, "the step was drawn running, then succeeded"
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\]8;[^\x1b]*\x1b\\", "", out)
    assert re.search(r"^nap\s+sleep\s+succeeded", plain, re.M)
    assert re.search(r"\nTemporal UI: http://127.0.0.1:8233/\S+\n$", plain), plain[-300:]


def test_run_start_with_bad_params_and_failed_run(cli, tmp_path: Path):
    wid = unique_id("cli-fail")
    path = tmp_path / "fail.yaml"
    path.write_text(
        f"id: {wid}\nparams: {{n: {{type: integer}}}}\n"
        "steps:\n  - {id: boom, type: shell, params: {command: 'exit 3'}}\n"
    )
    ok(cli("workflow", "apply", str(path)))
    bad = cli("run", "start", wid, "n=abc")
    assert bad.exit_code == 1
    assert bad.stderr.startswith("error: 422 params_invalid: ") and "n" in bad.stderr
    failed = cli("run", "start", wid, "n=3", "--wait")
    assert failed.exit_code == 4, failed.output
    assert re.search(r"status\s+failed", failed.stdout) and UI_LINK.search(failed.stdout)


def test_stop_and_kill(cli, tmp_path: Path):
    wid = unique_id("cli-sleep")
    path = tmp_path / "sleep.json"
    definition = {
        "id": wid,
        "run_strategy": "parallel",
        "steps": [{"id": "nap", "type": "sleep", "params": {"seconds": 60}}],
    }
    path.write_text(json.dumps(definition))
    ok(cli("workflow", "apply", str(path)))
    first = RUN_ID.search(ok(cli("run", "start", wid))).group(1)
    second = RUN_ID.search(ok(cli("run", "start", wid))).group(1)
    stopped = ok(cli("run", "stop", first))
    assert f"run {first}:" in stopped and UI_LINK.search(stopped)
    assert "stopped" in ok(cli("run", "show", first, "--follow"))
    assert UI_LINK.search(ok(cli("run", "kill", second)))
    killed = ok(cli("run", "show", second, "--follow"))
    assert re.search(r"status\s+stopped", killed) and re.search(r"error\s+killed", killed)
    # Acting on a run that ended is a 409.
    again = cli("run", "stop", first)
    assert again.exit_code == 1 and again.stderr.startswith("error: 409 ")


def test_signal_publish_list_show(cli, tmp_path: Path):
    topic = f"cli.ready.{uuid.uuid4().hex[:8]}"
    wid = unique_id("cli-sig")
    path = tmp_path / "sig.json"
    definition = {
        "id": wid,
        "params": {"dt": {"type": "string"}},
        "triggers": [
            {"signal": {"all_of": [{"name": topic}], "params": {"dt": "signal.params.dt"}}}
        ],
        "steps": [{"id": "go", "type": "noop"}],
    }
    path.write_text(json.dumps(definition))
    ok(cli("workflow", "apply", str(path)))

    args = ("publish", topic, "dt=2026-01-02", "rows=5", "--payload", '{"by": "cli"}')
    first = ok(cli("signal", *args, "--request-id", "load-1"))
    head = re.match(r"signal (\d+): (\S+) seq (\d+) duplicate: false\n", first)
    assert head and head.group(2) == topic and head.group(3) == "1", first
    signal_id = head.group(1)
    assert re.search(rf"^started run \S+: {wid} #1 \(version 1\)", first, re.M)
    assert UI_LINK.search(first)

    again = ok(cli("signal", *args, "--request-id", "load-1"))
    assert again.strip() == (
        f"signal {signal_id}: {topic} seq 1 duplicate: true (published before; nothing started)"
    )
    other = ok(cli("signal", "publish", topic, "dt=2026-01-03"))
    second = re.match(rf"signal (\d+): {re.escape(topic)} seq 2 duplicate: false\n", other)
    assert second, other

    listed = ok(cli("signal", "list", "--name", topic))
    assert [line.split()[:3] for line in listed.splitlines()[1:]] == [
        [second.group(1), topic, "2"],
        [signal_id, topic, "1"],
    ]
    filtered = ok(cli("signal", "list", "--name", topic, "--param", "rows=5"))
    assert [line.split()[0] for line in filtered.splitlines()[1:]] == [signal_id]

    shown = ok(cli("signal", "show", signal_id))
    assert re.search(r'payload\s+\{"by":"cli"\}', shown)
    assert re.search(r"request_id\s+load-1", shown)
    assert re.search(rf"^{wid}\s+\S+\s+started_run\s+\S+", shown, re.M), shown


def test_invalid_definition_is_exit_1_with_every_location(cli, tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "id: cli-bad\nsteps:\n"
        "  - {id: a, type: noop}\n"
        "  - {id: b, type: noop, depends_on: [zz]}\n"
        "  - {id: c, type: nope}\n"
    )
    for command in ("apply", "validate"):
        result = cli("workflow", command, str(path))
        assert result.exit_code == 1, result.output
        assert result.stdout == ""
        [line] = result.stderr.splitlines()
        assert line.startswith("error: 422 definition_invalid: ")
        assert "steps.1.depends_on.0: step 'b' depends on unknown step 'zz'" in line
        assert "steps.2" in line

    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    result = cli("workflow", "apply", str(broken))
    assert result.exit_code == 1 and "body: invalid application/json" in result.stderr


def test_usage_errors_are_exit_2(cli, tmp_path: Path):
    text = tmp_path / "definition.txt"
    text.write_text("id: x")
    result = cli("workflow", "apply", str(text))
    assert result.exit_code == 2 and "expected a .yaml, .yml or .json file" in result.stderr
    result = cli("run", "start", "whatever", "novalue")
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: expected KEY=VALUE, got 'novalue'"
    result = cli("signal", "publish", "x", "--payload", "[1]")
    assert result.exit_code == 2 and "--payload must be a JSON object" in result.stderr
    assert cli("workflow", "apply", str(tmp_path / "missing.yaml")).exit_code == 2


def test_missing_things_are_exit_1(cli):
    result = cli("workflow", "show", "cli-no-such-workflow")
    assert result.exit_code == 1 and result.stderr.startswith("error: 404 not_found: ")
    result = cli("run", "show", "no-such-run")
    assert result.exit_code == 1 and result.stderr.startswith("error: 404 ")


def test_unreachable_api_is_exit_3(cli):
    result = cli("workflow", "list", url=f"http://127.0.0.1:{free_port()}")
    assert result.exit_code == 3
    [line] = result.stderr.splitlines()
    assert line.startswith("error: cannot reach the Maestro API at http://127.0.0.1:")
    assert "maestro up" in line


def test_api_key_from_option_env_or_data_dir(api_url: str, admin_key: str, tmp_path: Path):
    runner = CliRunner()

    def list_workflows(*args: str, **env: str | None) -> Result:
        env = {"MAESTRO_DATA_DIR": str(tmp_path), "MAESTRO_API_KEY": None, **env}
        return runner.invoke(app, ["workflow", "--api-url", api_url, *args, "list"], env=env)

    missing = list_workflows()
    assert missing.exit_code == 1
    assert missing.stderr.startswith("error: 401 unauthorized: missing API key")
    assert "--api-key" in missing.stderr and "api-key" in missing.stderr
    (tmp_path / "api-key").write_text(f"{admin_key}\n")
    ok(list_workflows())
    assert list_workflows(MAESTRO_API_KEY="wrong").exit_code == 1, "env before the file"
    ok(list_workflows("--api-key", admin_key, MAESTRO_API_KEY="wrong"))
    wrong = list_workflows("--api-key", "wrong")
    assert wrong.exit_code == 1
    assert wrong.stderr.startswith("error: 401 unauthorized: unknown or revoked API key")


def test_parse_assignments():
    assert parse_assignments(["a=1", "b=x", "c=true", 'd=["p"]', "e=", "f=NaN", "g=a=b"]) == {
        "a": 1,
        "b": "x",
        "c": True,
        "d": ["p"],
        "e": "",
        "f": "NaN",
        "g": "a=b",
    }


def test_api_error_formats_every_detail_item():
    error = MaestroAPIError(
        422,
        "definition_invalid",
        "workflow definition is invalid",
        [{"loc": ["steps", 1, "id"], "msg": "bad"}, {"loc": ["owner"], "msg": "worse"}],
    )
    assert str(error) == "422 definition_invalid: steps.1.id: bad; owner: worse"
    assert str(MaestroAPIError(404, "not_found", "no run x")) == "404 not_found: no run x"


def test_keys_create_list_revoke(cli):
    created = ok(cli("keys", "create", "ci-reader", "--scope", "read", "--owner", "team-x"))
    secret = created.strip().splitlines()[-1]
    assert secret.startswith("mst_")
    listed = ok(cli("keys", "list"))
    assert "ci-reader" in listed and "team-x" in listed
    key_id = next(line.split()[0] for line in listed.splitlines() if "ci-reader" in line)
    assert "revoked" in ok(cli("keys", "revoke", key_id))


def test_revoking_the_key_in_use_needs_confirm(api_url: str, cli):
    """A throwaway admin key revokes itself: refused without `--confirm`, done with it."""
    created = ok(cli("keys", "create", "ci-self", "--scope", "admin"))
    secret = created.strip().splitlines()[-1]
    listed = ok(cli("keys", "list"))
    key_id = next(line.split()[0] for line in listed.splitlines() if "ci-self" in line)
    runner = CliRunner()

    def as_self(*args: str) -> Result:
        command = ["keys", "--api-url", api_url, *args]
        return runner.invoke(app, command, env={"MAESTRO_API_KEY": secret})

    refused = as_self("revoke", key_id)
    assert refused.exit_code == 1
    assert refused.stderr.startswith("error: 409 confirmation_required: ")
    assert "confirm" in refused.stderr
    assert "revoked" in ok(as_self("revoke", key_id, "--confirm"))
    assert as_self("list").exit_code == 1  # the key no longer works


def test_demo_runs_the_reference_pipeline(api_url: str, admin_key: str):
    result = CliRunner().invoke(
        app, ["demo", "--api-url", api_url], env={"MAESTRO_API_KEY": admin_key, "COLUMNS": "200"}
    )
    assert result.exit_code == 0, (result.output, result.exception)
    output = result.stdout
    assert "workflow digits-train" in output and "published table.partition.ready" in output
    assert re.search(r"model digits-classifier version \d+: accuracy=0\.\d+", output)
    assert ("-> production" in output) or ("not deployed" in output)
    assert "training run  http://" in output


def test_api_and_worker_processes_leave_their_start_up_heap_out_of_garbage_collection():
    code = (
        "import gc\n"
        "from maestro.cli import GC_THRESHOLD, _settle_heap\n"
        "before = gc.get_freeze_count()\n"
        "_settle_heap()\n"
        "print(before, gc.get_freeze_count(), gc.get_threshold()[0] == GC_THRESHOLD)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, frozen, threshold_set = done.stdout.split()
    assert before == "0" and int(frozen) > 10_000 and threshold_set == "True"
