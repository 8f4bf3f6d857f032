"""The client CLI (`maestro workflow|run|signal`) against a real API process over HTTP, with a
real worker, Temporal dev server and PostgreSQL."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from click.testing import Result
from rich.console import Console
from typer.testing import CliRunner

from maestro import __version__, client_cli
from maestro.cli import _print_up, app
from maestro.client import MaestroAPIError
from maestro.client_cli import Output, parse_assignments
from maestro.embedded import free_port
from maestro.settings import Settings
from maestro.supervisor import ChildProcess, Supervisor
from tests.conftest import EXAMPLES, unique_id
from tests.test_ml import fixed_pipeline

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

UI_LINK = re.compile(r"Temporal UI: http://127\.0\.0\.1:8233/namespaces/default/workflows/\S+")
RUN_ID = re.compile(r"run (\S+):")


# The task queue of this module's `maestro api` and `maestro worker` (conftest's api_url).
TASK_QUEUE = "maestro-cli"


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


def apply_definition(cli, tmp_path: Path, definition: dict) -> None:
    """Push `definition` through `maestro workflow apply` (as a JSON file)."""
    path = tmp_path / f"{definition['id']}.json"
    path.write_text(json.dumps(definition))
    ok(cli("workflow", "apply", str(path)))


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


def test_run_show_draws_a_progress_bar_for_a_running_foreach(cli, tmp_path: Path):
    wid = unique_id("cli-foreach")
    gate = {"entrypoint": "tests.steps:gated", "args": {"dir": str(tmp_path)}}
    apply_definition(
        cli,
        tmp_path,
        {
            "id": wid,
            "steps": [
                {
                    "id": "each",
                    "type": "foreach",
                    "params": {
                        "items": "range(0, 4)",
                        "max_concurrency": 2,
                        "steps": [{"id": "work", "type": "python", "params": gate}],
                    },
                }
            ],
        },
    )
    run_id = RUN_ID.search(ok(cli("run", "start", wid))).group(1)
    deadline = time.monotonic() + 60
    while True:
        run = json.loads(ok(cli("run", "show", run_id, "-o", "json")))
        [step] = run["steps"]
        if step["status"] == "running" and (step["progress"] or {}).get("running") == 2:
            break
        assert time.monotonic() < deadline, run
        time.sleep(0.2)
    shown = ok(cli("run", "show", run_id))
    [bar] = [line for line in shown.splitlines() if line.startswith("each ") and "/4" in line]
    # Two of four running, none ended: the bar is half cyan, half empty.
    assert re.fullmatch(r"each\s+█{15}░{15} 0/4 \(0%\)  running 2 · pending 2\s*", bar), bar

    (tmp_path / "release").touch()
    ended = ok(cli("run", "show", run_id, "--follow"))
    assert re.search(r"status\s+succeeded", ended)
    assert "░" not in ended and "█" not in ended  # no bar once the step ended


def test_progress_bar_counts_and_colours():
    bar = client_cli.progress_bar(
        {"pending": 0, "running": 1, "succeeded": 6, "failed": 2, "skipped": 1, "stopped": 0},
        width=10,
    )
    assert bar.plain == "██████████ 9/10 (90%)  succeeded 6 · failed 2 · skipped 1 · running 1"
    styles = [(span.start, span.end, span.style) for span in bar.spans]
    assert styles[:4] == [(0, 6, "green"), (6, 8, "red"), (8, 9, "yellow"), (9, 10, "cyan")]
    empty = client_cli.progress_bar(dict.fromkeys(("pending", "running"), 0), width=4)
    assert empty.plain == "░░░░ 0/0  no iterations yet"
    big = client_cli.progress_bar({"succeeded": 33_333, "pending": 66_667}, width=9)
    assert big.plain == "███░░░░░░ 33,333/100,000 (33%)  succeeded 33,333 · pending 66,667"


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
    definition = {
        "id": wid,
        "run_strategy": "parallel",
        "steps": [{"id": "nap", "type": "sleep", "params": {"seconds": 60}}],
    }
    apply_definition(cli, tmp_path, definition)
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
    definition = {
        "id": wid,
        "params": {"dt": {"type": "string"}},
        "triggers": [
            {"signal": {"all_of": [{"name": topic}], "params": {"dt": "signal.params.dt"}}}
        ],
        "steps": [{"id": "go", "type": "noop"}],
    }
    apply_definition(cli, tmp_path, definition)

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


# -- scripts and people ----------------------------------------------------------------------


def test_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout == f"maestro {__version__}\n"


def api_json(api_url: str, admin_key: str, path: str) -> object:
    """What the API itself answers, for comparing with the CLI's `--output json`."""
    response = httpx.get(
        f"{api_url}/api/v1{path}", headers={"Authorization": f"Bearer {admin_key}"}, timeout=30
    )
    response.raise_for_status()
    return response.json()


def as_json(result: Result) -> object:
    return json.loads(ok(result))


def test_output_json_is_the_apis_json(cli, api_url: str, admin_key: str, tmp_path: Path):
    wid, path = hello_copy(tmp_path)
    applied = as_json(cli("workflow", "apply", str(path), "-o", "json"))
    assert applied["created"] is True and applied["version"] == 1
    validated = as_json(cli("workflow", "validate", str(path), "--output", "json"))
    assert validated == {
        "valid": True,
        "definition": api_json(api_url, admin_key, f"/workflows/{wid}")["definition"],
        "workflow_id": wid,
        "branch": "prod",
    }

    run = as_json(cli("run", "start", wid, "who=ada", "--wait", "-o", "json"))
    assert run["status"] == "succeeded"
    run_id = run["run_id"]
    assert run == api_json(api_url, admin_key, f"/runs/{run_id}")
    assert as_json(cli("run", "show", run_id, "-o", "json")) == run
    assert as_json(cli("run", "show", run_id, "-f", "-o", "json")) == run
    listed = as_json(cli("run", "list", "--workflow", wid, "-o", "json"))
    assert listed == api_json(api_url, admin_key, f"/runs?workflow_id={wid}")["items"]

    workflows = as_json(cli("workflow", "list", "-o", "json"))
    assert api_json(api_url, admin_key, f"/workflows/{wid}") == {
        **next(w for w in workflows if w["id"] == wid),
        "definition": api_json(api_url, admin_key, f"/workflows/{wid}")["definition"],
    }
    for command, api_path in (
        ("show", f"/workflows/{wid}"),
        ("versions", f"/workflows/{wid}/versions"),
    ):
        assert as_json(cli("workflow", command, wid, "-o", "json")) == api_json(
            api_url, admin_key, api_path
        )
    assert as_json(cli("workflow", "triggers", wid, "-o", "json")) == []

    topic = f"cli.json.{uuid.uuid4().hex[:8]}"
    published = as_json(cli("signal", "publish", topic, "n=1", "-o", "json"))
    signal_id = published["signal"]["id"]
    assert published["duplicate"] is False and published["runs"] == []
    assert as_json(cli("signal", "show", str(signal_id), "-o", "json")) == api_json(
        api_url, admin_key, f"/signals/{signal_id}"
    )
    assert (
        as_json(cli("signal", "list", "--name", topic, "-o", "json"))
        == api_json(api_url, admin_key, f"/signals?name={topic}")["items"]
    )
    assert as_json(cli("keys", "list", "-o", "json")) == api_json(api_url, admin_key, "/keys")
    assert as_json(cli("models", "list", "-o", "json")) == api_json(api_url, admin_key, "/models")

    # Errors stay one line on stderr, with nothing on stdout to parse.
    missing = cli("run", "show", "no-such-run", "-o", "json")
    assert missing.exit_code == 1 and missing.stdout == ""
    assert missing.stderr.startswith("error: 404 ")
    bad = cli("run", "list", "-o", "yaml")
    assert bad.exit_code == 2 and "yaml" in bad.stderr


def test_lines_are_not_wrapped_off_a_terminal(api_url: str, admin_key: str, tmp_path: Path):
    """Piped or redirected, output keeps every line whole: no 80-column wrapping of ids, URLs
    or table rows, whatever the width a terminal would have had."""
    runner = CliRunner()
    env = {"MAESTRO_DATA_DIR": str(tmp_path / "data"), "MAESTRO_API_KEY": admin_key}
    env["COLUMNS"] = None  # as in a pipe or a CI log

    def invoke(*args: str) -> str:
        return ok(runner.invoke(app, [args[0], "--api-url", api_url, *args[1:]], env=env))

    wid = f"cli-long-{uuid.uuid4().hex}-{'x' * 80}"
    path = tmp_path / "long.json"
    path.write_text(json.dumps({"id": wid, "steps": [{"id": "go", "type": "noop"}]}))
    assert invoke("workflow", "apply", str(path)) == f"{wid}: created version 1 (active)\n"
    started = invoke("run", "start", wid, "--wait")
    [link] = [line for line in started.splitlines() if line.startswith("Temporal UI: ")]
    run = api_json(api_url, admin_key, f"/runs?workflow_id={wid}")["items"][0]
    assert link == f"Temporal UI: {run['temporal_ui_url']}" and len(link) > 200
    [row] = [line for line in invoke("run", "list", "--workflow", wid).splitlines()[1:]]
    assert row.split()[:2] == [run["run_id"], wid] and row.split()[-1] == f"{wid}-run-1"
    [row] = [line for line in invoke("workflow", "list").splitlines() if wid in line]
    assert row.split()[:3] == [wid, "-", "active"]


def test_the_up_banner_is_not_wrapped_off_a_terminal(capsys, tmp_path: Path):
    data_dir = tmp_path / ("a-data-directory-with-a-long-name-" * 4)
    settings = Settings(data_dir=data_dir)
    url = "postgresql://postgres:secret@127.0.0.1:55432/postgres"
    metrics = {"api": "http://127.0.0.1:8000/metrics", "worker": "http://127.0.0.1:9464/metrics"}
    _print_up(
        settings, data_dir, url, f"   (password in {data_dir / 'postgres-password'})", metrics
    )
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "Maestro is up"
    assert lines[1].split() == [
        "API",
        "http://127.0.0.1:8000/api/v1",
        "(OpenAPI:",
        "http://127.0.0.1:8000/docs)",
    ]
    assert lines[2].split()[:3] == ["Console", "Open", "http://127.0.0.1:8000/ui"]
    assert lines[4].split()[:2] == [
        "PostgreSQL",
        "postgresql://postgres:***@127.0.0.1:55432/postgres",
    ]
    assert lines[4].endswith(f"(password in {data_dir / 'postgres-password'})")
    assert lines[5].split() == ["data", str(data_dir), "(logs", "in", f"{data_dir / 'logs'})"]
    assert lines[6].split() == ["metrics", "api", metrics["api"], "worker", metrics["worker"]]
    assert len(lines) == 8


def test_output_still_fits_a_terminal():
    terminal = Output(force_terminal=True, width=60, markup=False)
    with terminal.capture() as captured:
        terminal.print("word " * 30)
    assert max(len(line) for line in captured.get().splitlines()) <= 60


def test_status_reports_processes_endpoints_versions_and_queue(
    api_url: str, admin_key: str, settings: Settings, tmp_path: Path
):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    runner = CliRunner()
    env = {
        "MAESTRO_DATA_DIR": str(data_dir),
        "MAESTRO_API_KEY": admin_key,
        "MAESTRO_TEMPORAL__ADDRESS": settings.temporal.address,
        # With a password, which status never shows.
        "MAESTRO_DATABASE_URL": settings.database_url.replace("://postgres@", "://postgres:pw@"),
    }

    def status(*args: str, url: str = api_url) -> Result:
        return runner.invoke(app, ["status", "--api-url", url, *args], env=env)

    # A sequential workflow: one run sleeps, two more wait in its queue.
    wid = unique_id("cli-queue")
    path = tmp_path / "queue.json"
    nap = [{"id": "nap", "type": "sleep", "params": {"seconds": 60}}]
    path.write_text(json.dumps({"id": wid, "steps": nap}))
    cli_env = {**env, "COLUMNS": "250"}
    ok(runner.invoke(app, ["workflow", "--api-url", api_url, "apply", str(path)], env=cli_env))
    for _ in range(3):
        ok(runner.invoke(app, ["run", "--api-url", api_url, "start", wid], env=cli_env))
    deadline = time.monotonic() + 60
    while api_json(api_url, admin_key, f"/runs?workflow_id={wid}&status=running")["items"] == []:
        assert time.monotonic() < deadline, "the first run never started"
        time.sleep(0.2)

    # What `maestro up` leaves behind: its supervisor's status file, here with one child.
    supervisor = Supervisor(data_dir / "status.json")
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
    try:
        supervisor.add(ChildProcess("sleeper", sleeper, dict(os.environ), tmp_path / "s.log"))
        supervisor.mark_up()
        report = as_json(status("-o", "json"))
        assert report["version"] == __version__
        assert report["stack"]["running"] is True and report["stack"]["state"] == "up"
        child = report["stack"]["children"]["sleeper"]
        assert child["state"] == "running" and child["pid"] == supervisor.children[0].pid
        assert report["api"] == {"url": api_url, "reachable": True, "version": __version__}
        assert report["temporal"]["address"] == settings.temporal.address
        assert report["temporal"]["reachable"] is True
        assert re.fullmatch(r"\d+\.\d+\.\d+.*", report["temporal"]["server_version"])
        assert report["postgres"]["reachable"] is True and not report["postgres"]["embedded"]
        assert report["postgres"]["url"].startswith("postgresql://postgres:***@")
        runs = report["runs"]
        assert runs["queue_by_workflow"][wid] == 2
        assert runs["running"] >= 1 and runs["queued"] >= runs["waiting_for_strategy"] >= 2
        assert runs["queued"] == runs["waiting_for_strategy"] + runs["waiting_for_launch"]

        shown = ok(status())
        assert re.search(rf"^maestro\s+{re.escape(__version__)}\s*$", shown, re.M)
        assert re.search(r"^stack\s+up \(maestro up, pid \d+;", shown, re.M), shown
        assert re.search(rf"^API\s+{re.escape(api_url)}\s+reachable\s+Maestro ", shown, re.M)
        assert re.search(r"^Temporal\s+\S+\s+reachable\s+server \d", shown, re.M), shown
        assert re.search(r"^runs\s+\d+ running, \d+ queued \(\d+ waiting for", shown, re.M)
        assert re.search(rf"^queue depth\s+.*{wid} 2", shown, re.M), shown
        assert re.search(r"^sleeper\s+running\s+\d+\s+0\s+-", shown, re.M), shown
    finally:
        supervisor.stop(grace=5)
        stopped = as_json(status("-o", "json"))
        assert stopped["stack"]["running"] is False and stopped["stack"]["state"] == "stopped"
        ok(runner.invoke(app, ["workflow", "--api-url", api_url, "stop", wid], env=cli_env))

    gone = status("-o", "json", url=f"http://127.0.0.1:{free_port()}")
    assert gone.exit_code == 3, gone.output
    report = json.loads(gone.stdout)
    assert report["api"]["reachable"] is False and report["runs"] is None
    assert "cannot reach the Maestro API" in report["api"]["error"]
    assert gone.stderr.startswith("error: cannot reach the Maestro API at http://127.0.0.1:")
    refused = runner.invoke(app, ["status", "--api-url", api_url, "--api-key", "wrong"], env=env)
    assert refused.exit_code == 1 and "reachable  Maestro" in refused.stdout
    assert refused.stderr.startswith("error: 401 unauthorized: unknown or revoked API key")


def test_backfill(cli, tmp_path: Path):
    wid = unique_id("cli-backfill")
    definition = {
        "id": wid,
        "run_strategy": "parallel",
        "triggers": [{"cron": "0 * * * *"}],
        "steps": [{"id": "go", "type": "noop"}],
    }
    apply_definition(cli, tmp_path, definition)
    window = ("--start", "2026-01-01T00:00:00Z", "--end", "2026-01-01T03:00:00Z")
    done = ok(cli("workflow", "backfill", wid, *window))
    assert done.splitlines()[0] == f"{wid}: 3 scheduled times, 3 runs created"
    assert len(UI_LINK.findall(done)) == 3
    again = as_json(cli("workflow", "backfill", wid, *window, "-o", "json"))
    assert again == {"scheduled_times": 3, "created": 0, "runs": []}
    bad = cli("workflow", "backfill", wid, "--start", "yesterday", "--end", "2026-01-01T03:00Z")
    assert bad.exit_code == 1 and bad.stderr.startswith("error: 422 ") and "start" in bad.stderr


def test_unblock_a_strict_sequential_workflow(cli, tmp_path: Path):
    wid = unique_id("cli-strict")
    definition = {
        "id": wid,
        "params": {"code": {"type": "integer", "default": 0}},
        "run_strategy": "strict_sequential",
        "steps": [
            {
                "id": "maybe",
                "type": "shell",
                "params": {"command": "exit $MAESTRO_PARAM_CODE"},
                "retry": {"max_attempts": 1},
            }
        ],
    }
    apply_definition(cli, tmp_path, definition)
    assert cli("run", "start", wid, "code=3", "--wait").exit_code == 4
    held = as_json(cli("run", "start", wid, "-o", "json"))
    assert held["status"] == "queued"
    assert "blocked by run" in ok(cli("workflow", "show", wid))
    unblocked = ok(cli("workflow", "unblock", wid))
    assert unblocked.splitlines()[0] == f"{wid}: unblocked; admitted 1 queued runs"
    assert f"run {held['run_id']}:" in unblocked
    assert "succeeded" in ok(cli("run", "show", held["run_id"], "--follow"))
    again = cli("workflow", "unblock", wid)
    assert again.exit_code == 1 and again.stderr.startswith("error: 409 ")


def test_skip_and_bypass_steps(cli, tmp_path: Path):
    wid = unique_id("cli-steps")
    topic = f"cli.gate.{uuid.uuid4().hex[:8]}"
    definition = {
        "id": wid,
        "run_strategy": "parallel",
        "steps": [
            {"id": "nap", "type": "sleep", "params": {"seconds": 120}},
            {"id": "gate", "type": "noop", "wait_for": [{"name": topic}]},
            {"id": "after", "type": "noop", "depends_on": ["nap", "gate"]},
        ],
    }
    apply_definition(cli, tmp_path, definition)
    run_id = as_json(cli("run", "start", wid, "-o", "json"))["run_id"]

    def step_status(step_id: str) -> str:
        run = as_json(cli("run", "show", run_id, "-o", "json"))
        return next(s["status"] for s in run["steps"] if s["step_id"] == step_id)

    deadline = time.monotonic() + 60
    while step_status("gate") != "waiting_for_signal":
        assert time.monotonic() < deadline, "the step never waited for its signal"
        time.sleep(0.2)
    bypassed = ok(cli("run", "bypass", run_id, "gate"))
    assert f"run {run_id}:" in bypassed and UI_LINK.search(bypassed)
    skipped = as_json(cli("run", "skip", run_id, "nap", "-o", "json"))
    assert skipped["run_id"] == run_id
    done = as_json(cli("run", "show", run_id, "--follow", "-o", "json"))
    assert done["status"] == "succeeded", done
    steps = {s["step_id"]: s["status"] for s in done["steps"]}
    assert steps == {"nap": "skipped_manually", "gate": "succeeded", "after": "succeeded"}
    late = cli("run", "skip", run_id, "after")
    assert late.exit_code == 1 and late.stderr.startswith("error: 409 ")


def test_models_list_show_promote(cli, api_url: str, admin_key: str, tmp_path: Path):
    model, wid = unique_id("cli-model"), unique_id("cli-train")
    # Only the training step: every run registers a version; promotion is the CLI's.
    definition = fixed_pipeline(wid, model, gates=[])
    definition["steps"] = definition["steps"][:1]
    apply_definition(cli, tmp_path, definition)
    for quality in ("0.7", "0.9"):
        ok(cli("run", "start", wid, f"quality={quality}", "--wait"))

    [row] = [line for line in ok(cli("models", "list")).splitlines() if line.startswith(model)]
    assert row.split()[:5] == [model, "-", "2", "-", "-"]
    assert ok(cli("models", "promote", model, "1")).strip() == f"{model} version 1 -> production"
    promoted = as_json(cli("models", "promote", model, "2", "--stage", "production", "-o", "json"))
    assert promoted["previous_version"] == 1 and promoted["version"]["stage"] == "production"
    shown = ok(cli("models", "show", model))
    assert re.search(r"stages\s+production 2", shown)
    assert re.search(r"^1\s+archived\s+\{\"train_accuracy\":0\.7\}", shown, re.M), shown
    assert re.search(r"^2\s+production\s+\{\"train_accuracy\":0\.9\}", shown, re.M), shown
    assert as_json(cli("models", "show", model, "-o", "json")) == api_json(
        api_url, admin_key, f"/models/{model}"
    )
    version = as_json(cli("models", "show", model, "2", "-o", "json"))
    assert version == api_json(api_url, admin_key, f"/models/{model}/versions/2")
    assert version["lineage"]["workflow_id"] == wid
    detail = ok(cli("models", "show", model, "2"))
    assert re.search(rf"trained by\s+run \S+ \({wid} #2, manual\), step train", detail), detail
    bad = cli("models", "promote", model, "1", "--stage", "moon")
    assert bad.exit_code == 1 and bad.stderr.startswith("error: 422 ")


def test_branch_apply_list_and_delete(cli, tmp_path: Path):
    branch = unique_id("user.cli")
    wid = unique_id("cli-nightly")
    definition = {
        "id": wid,
        "steps": [{"id": "go", "type": "noop"}],
        "triggers": [{"cron": "0 3 * * *"}],
    }
    path = tmp_path / "nightly.json"
    path.write_text(json.dumps(definition))
    applied = ok(cli("workflow", "apply", str(path), "--branch", branch)).splitlines()
    assert applied == [
        f"{wid}@{branch}: branch {branch}: time triggers paused (--with-schedules arms them)",
        f"{wid}@{branch}: created version 1 (active)",
    ]
    armed = as_json(
        cli("workflow", "apply", str(path), "--branch", branch, "--with-schedules", "-o", "json")
    )
    assert armed["workflow"]["schedules_paused"] is False and armed["created"] is False

    [row] = [
        line
        for line in ok(cli("workflow", "list", "--branch", branch)).splitlines()
        if line.startswith(wid)
    ]
    assert row.split()[0] == f"{wid}@{branch}" and row.split()[-1] == branch
    [row] = [line for line in ok(cli("branch", "list")).splitlines() if line.startswith(branch)]
    assert row.split() == [branch, "1", "1"]

    deleted = ok(cli("branch", "delete", branch, "--yes")).splitlines()
    assert deleted == [f"{wid}@{branch}: deleted", f"branch {branch}: deleted (1 workflows)"]
    assert branch not in ok(cli("branch", "list"))
    refused = cli("branch", "delete", "prod", "--yes")
    assert refused.exit_code == 1 and "prod is the production branch" in refused.output
