"""The `shell` step: a subprocess in its own process group, killed whole on cancellation, with
an environment of its own (nothing of the worker's settings) in its run's directory, as the
configured step user."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import stat
from collections import deque
from pathlib import Path
from typing import Any

from temporalio.exceptions import ApplicationError

from maestro.context import StepContext
from maestro.runtime import StepResult
from maestro.steps import SecretRef, ShellParams
from workers.executors.services import Services
from workers.workdirs import StepUser

KILL_GRACE_SECONDS = 5.0
# The only variables of the worker's environment a step sees.
PASSED_ENV = ("PATH", "LANG", "LC_ALL", "TZ")
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
MAX_OUTPUTS_BYTES = 1 << 20


def step_environment(ctx: StepContext, extra: dict[str, str | SecretRef]) -> dict[str, str]:
    """The environment of a shell step: the worker's PATH, LANG, LC_ALL and TZ (nothing else of
    it), HOME and TMPDIR in the run's directory, run params as MAESTRO_PARAM_*, the run's
    MAESTRO_* ids, then the step's `env` with its secrets' values."""
    env = {name: os.environ[name] for name in PASSED_ENV if name in os.environ}
    env.setdefault("PATH", DEFAULT_PATH)
    work_dir = str(ctx.work_dir)
    env.update(HOME=work_dir, TMPDIR=work_dir)
    for name, value in ctx.params.items():
        env[f"MAESTRO_PARAM_{name.upper()}"] = (
            value if isinstance(value, str) else json.dumps(value)
        )
    env.update(
        MAESTRO_RUN_ID=ctx.run_id,
        MAESTRO_WORKFLOW_ID=ctx.workflow_id,
        MAESTRO_RUN_NUMBER=str(ctx.run_number),
        MAESTRO_STEP_ID=ctx.step_id,
        MAESTRO_ATTEMPT=str(ctx.attempt),
        MAESTRO_WORK_DIR=work_dir,
        MAESTRO_OUTPUTS=str(ctx.work_dir / f"{ctx.step_id}.outputs.json"),
    )
    for name, value in extra.items():
        env[name] = ctx.secrets[value.secret] if isinstance(value, SecretRef) else value
    return env


def _invalid_outputs(message: str) -> ApplicationError:
    return ApplicationError(message, type="InvalidOutputs", non_retryable=True)


def read_outputs(path: Path, user: StepUser | None) -> bytes | None:
    """What the step wrote to $MAESTRO_OUTPUTS, if anything. Only a regular file the step's
    user owns: a link or a FIFO planted there must not make the worker read what the step
    itself may not."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError:
        raise _invalid_outputs("$MAESTRO_OUTPUTS must be a regular file") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or (user is not None and info.st_uid != user.uid):
            raise _invalid_outputs("$MAESTRO_OUTPUTS must be a regular file the step wrote")
        data = handle.read(MAX_OUTPUTS_BYTES + 1)
    if len(data) > MAX_OUTPUTS_BYTES:
        raise _invalid_outputs(f"$MAESTRO_OUTPUTS holds more than {MAX_OUTPUTS_BYTES} bytes")
    return data


async def _collect(stream: asyncio.StreamReader, tail: deque[str]) -> None:
    async for line in stream:
        tail.append(line.decode(errors="replace").rstrip("\n"))


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def run_shell(ctx: StepContext, spec: ShellParams, services: Services) -> StepResult:
    if services.work_root is None:
        return await _run_shell(ctx, spec, None)
    async with services.work_root.lend(ctx.run_id) as user:
        return await _run_shell(ctx, spec, user)


async def _run_shell(ctx: StepContext, spec: ShellParams, user: StepUser | None) -> StepResult:
    env = step_environment(ctx, spec.env)
    outputs_file = ctx.work_dir / f"{ctx.step_id}.outputs.json"
    outputs_file.unlink(missing_ok=True)
    if isinstance(spec.command, str):
        argv = ["/bin/sh", "-c", spec.command]
    else:
        argv = list(spec.command)
    as_user: dict[str, Any] = (
        {} if user is None else {"user": user.uid, "group": user.gid, "extra_groups": []}
    )
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=ctx.work_dir,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            **as_user,
        )
    except OSError as exc:
        raise ApplicationError(
            f"cannot start {argv[0]!r}: {exc}", type="CommandNotFound", non_retryable=True
        ) from None
    stdout: deque[str] = deque(maxlen=spec.tail_lines)
    stderr: deque[str] = deque(maxlen=spec.tail_lines)
    assert process.stdout is not None and process.stderr is not None  # both piped
    readers = asyncio.gather(_collect(process.stdout, stdout), _collect(process.stderr, stderr))
    try:
        await readers
        code = await process.wait()
    except asyncio.CancelledError:
        # The whole group goes: the shell and everything it started.
        _kill_group(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), KILL_GRACE_SECONDS)
        except TimeoutError:
            pass
        _kill_group(process.pid, signal.SIGKILL)
        readers.cancel()
        raise
    details = {
        "exit_code": code,
        "stdout_tail": "\n".join(stdout),
        "stderr_tail": "\n".join(stderr),
        "pid": process.pid,
    }
    if code != 0:
        last = stderr[-1] if stderr else (stdout[-1] if stdout else "")
        raise ApplicationError(
            f"command exited with code {code}: {last}"[:2000], details, type="NonZeroExit"
        )
    outputs: dict[str, Any] = {"exit_code": 0, "stdout_tail": details["stdout_tail"]}
    raw = read_outputs(outputs_file, user)
    if raw is not None:
        try:
            written = json.loads(raw)
        except ValueError as exc:
            raise _invalid_outputs(f"$MAESTRO_OUTPUTS is not valid JSON: {exc}") from None
        if not isinstance(written, dict):
            raise _invalid_outputs("$MAESTRO_OUTPUTS must hold a JSON object")
        outputs.update(written)
    return StepResult(outputs=outputs, details=details)
