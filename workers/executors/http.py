"""The `http` step: one request to an allowed destination, optionally polled until done.

Polling holds no worker slot: each poll is one short attempt of the step's activity. An attempt
that finds the job unfinished fails with `HttpPollPending` and `next_retry_delay = every`, so
Temporal schedules the next poll; what the first request answered (and how many real failures
there were) rides along as the attempt's heartbeat details, so no retry sends the request
again. RunWorkflow gives a polling step's activity unlimited attempts; this executor enforces
the step's own `retry.max_attempts` on real failures (5xx, connection errors, timeouts) and
`poll.timeout` on the whole wait.
"""

from __future__ import annotations

import json
import time
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from maestro.context import StepContext
from maestro.expressions import ExpressionError, evaluate
from maestro.outbound import DestinationRefused, Guard, Response
from maestro.runtime import StepResult
from maestro.steps import HTTP_ROOTS, HeaderSecret, HttpParams
from workers.executors.services import Services

POLL_STATE = "http_poll"


class _Retryable(Exception):
    """A failure the step's retry policy retries (5xx, connection error, timeout)."""


def _headers(ctx: StepContext, spec: HttpParams) -> dict[str, str]:
    headers = {}
    for name, value in spec.headers.items():
        if isinstance(value, HeaderSecret):
            headers[name] = value.prefix + ctx.secrets[value.secret]
        else:
            headers[name] = value
    return headers


def _answer(response: Response) -> dict[str, Any]:
    """The outputs of an answer: its status and its body (JSON when it parses, else text)."""
    text = response.body.decode(errors="replace")
    try:
        body: Any = json.loads(text) if text else None
    except ValueError:
        body = text
    return {"status": response.status_code, "body": body}


async def _request(
    guard: Guard, spec: HttpParams, headers: dict[str, str], method: str, url: str, **more: Any
) -> dict[str, Any]:
    timeout = spec.timeout.total_seconds()
    try:
        async with guard.client(4) as client:
            response = await guard.send(
                client,
                method,
                url,
                headers=headers,
                timeout=timeout,
                max_response_bytes=spec.max_response_bytes,
                **more,
            )
    except DestinationRefused as exc:
        raise ApplicationError(str(exc), type="DestinationRefused", non_retryable=True) from None
    except ValueError as exc:
        raise ApplicationError(str(exc), type="HttpRequestTooLarge", non_retryable=True) from None
    except (ConnectionError, TimeoutError, OSError) as exc:
        raise _Retryable(f"{type(exc).__name__}: {exc}") from None
    if response.truncated:
        raise ApplicationError(
            f"the answer from {url} is larger than max_response_bytes "
            f"({spec.max_response_bytes:,})",
            type="HttpResponseTooLarge",
            non_retryable=True,
        )
    answer = _answer(response)
    if response.status_code >= 500:
        raise _Retryable(f"HTTP {response.status_code} from {url}: {str(answer['body'])[:300]}")
    return answer


def _expect(spec: HttpParams, answer: dict[str, Any], url: str) -> None:
    if not spec.accepts(answer["status"]):
        wanted = ", ".join(map(str, spec.expected_status)) or "2xx"
        raise ApplicationError(
            f"HTTP {answer['status']} from {url} (expected {wanted}): {str(answer['body'])[:300]}",
            type="HttpUnexpectedStatus",
            non_retryable=True,
        )


def _cel(source: str, response: dict[str, Any], what: str) -> Any:
    try:
        return evaluate(source, {"response": response}, HTTP_ROOTS)
    except ExpressionError as exc:
        raise ApplicationError(
            f"poll.{what} cannot be evaluated: {exc}", type="ExpressionError", non_retryable=True
        ) from None


async def run_http(ctx: StepContext, spec: HttpParams, services: Services) -> StepResult:
    guard = services.guard or Guard()
    headers = _headers(ctx, spec)
    previous = ctx.previous_progress
    state = previous.get(POLL_STATE) if isinstance(previous, dict) else None
    body = None
    if spec.body is not None:
        body = json.dumps(spec.body, separators=(",", ":")).encode()
        headers.setdefault("Content-Type", "application/json")
    if state is None:
        try:
            first = await _request(
                guard, spec, headers, spec.method, spec.url, content=body, params=spec.query
            )
        except _Retryable as exc:
            # A polling step's activity has unlimited attempts: its own budget applies here
            # (every earlier attempt failed this request).
            last = spec.poll is not None and activity.info().attempt >= ctx.max_attempts
            raise ApplicationError(str(exc), type="HttpRetryable", non_retryable=last) from None
        _expect(spec, first, spec.url)
        if spec.poll is None:
            return StepResult(outputs=first)
        url = spec.poll.url or spec.url
        if spec.poll.url_expr:
            url = _cel(spec.poll.url_expr, first, "url_expr")
            if not isinstance(url, str):
                raise ApplicationError(
                    f"poll.url_expr gave {url!r}, not a URL",
                    type="ExpressionError",
                    non_retryable=True,
                )
        state = {"first": first, "url": url, "since": time.time(), "failures": 0, "polls": 0}
    assert spec.poll is not None
    poll = spec.poll
    poll_headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
    try:
        latest = await _request(guard, spec, poll_headers, "GET", state["url"])
    except _Retryable as exc:
        state = {**state, "failures": state["failures"] + 1}
        _keep(ctx, state)
        if state["failures"] >= ctx.max_attempts:
            raise ApplicationError(
                f"polling failed {state['failures']} times: {exc}",
                type="HttpRetryable",
                non_retryable=True,
            ) from None
        raise ApplicationError(
            str(exc), type="HttpRetryable", next_retry_delay=poll.every
        ) from None
    _expect(spec, latest, state["url"])
    state = {**state, "polls": state["polls"] + 1}
    done = _cel(poll.until, latest, "until")
    if done is True:
        return StepResult(outputs={**latest, "submitted": state["first"], "polls": state["polls"]})
    if done is not False:
        raise ApplicationError(
            f"poll.until must be true or false, got {done!r}",
            type="ExpressionError",
            non_retryable=True,
        )
    if time.time() - state["since"] >= poll.timeout.total_seconds():
        raise ApplicationError(
            f"the job was not done after {poll.timeout} ({state['polls']} polls): "
            f"`{poll.until}` is still false",
            type="HttpPollTimeout",
            non_retryable=True,
        )
    _keep(ctx, state)
    raise ApplicationError(
        f"not done yet (poll {state['polls']}): `{poll.until}` is false; next poll in {poll.every}",
        type="HttpPollPending",
        next_retry_delay=poll.every,
    )


def _keep(ctx: StepContext, state: dict[str, Any]) -> None:
    """Hand the poll's state to the next attempt (as heartbeat details)."""
    ctx.progress({POLL_STATE: state})
