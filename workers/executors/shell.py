"""The `shell` step: a subprocess in its own process group, killed whole on cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections import deque
from typing import Any

from temporalio.exceptions import ApplicationError

from maestro.context import StepContext
from maestro.runtime import StepResult
from maestro.steps import ShellParams

KILL_GRACE_SECONDS = 5.0


def step_environment(ctx: StepContext, extra: dict[str, str]) -> dict[str, str]:
    """The environment of a shell step: ours, run params as MAESTRO_PARAM_*, then the step's."""
    env = dict(os.environ)
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
        MAESTRO_WORK_DIR=str(ctx.work_dir),
        MAESTRO_OUTPUTS=str(ctx.work_dir / f"{ctx.step_id}.outputs.json"),
    )
    env.update(extra)
    return env


async def _collect(stream: asyncio.StreamReader, tail: deque[str]) -> None:
    async for line in stream:
        tail.append(line.decode(errors="replace").rstrip("\n"))


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def run_shell(ctx: StepContext, spec: ShellParams, services: object) -> StepResult:
    env = step_environment(ctx, spec.env)
    outputs_file = ctx.work_dir / f"{ctx.step_id}.outputs.json"
    outputs_file.unlink(missing_ok=True)
    if isinstance(spec.command, str):
        argv = ["/bin/sh", "-c", spec.command]
    else:
        argv = list(spec.command)
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=ctx.work_dir,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        raise ApplicationError(
            f"cannot start {argv[0]!r}: {exc}", type="CommandNotFound", non_retryable=True
        ) from None
    stdout: deque[str] = deque(maxlen=spec.tail_lines)
    stderr: deque[str] = deque(maxlen=spec.tail_lines)
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
    if outputs_file.exists():
        try:
            written = json.loads(outputs_file.read_text())
        except json.JSONDecodeError as exc:
            raise ApplicationError(
                f"$MAESTRO_OUTPUTS is not valid JSON: {exc}",
                type="InvalidOutputs",
                non_retryable=True,
            ) from None
        if not isinstance(written, dict):
            raise ApplicationError(
                "$MAESTRO_OUTPUTS must hold a JSON object",
                type="InvalidOutputs",
                non_retryable=True,
            )
        outputs.update(written)
    return StepResult(outputs=outputs, details=details)
