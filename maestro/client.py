"""A synchronous Python client for Maestro's REST API: one method per call, JSON in and out.

MaestroClientError
├── MaestroAPIError       the API answered with a non-2xx status (its error body, parsed)
└── MaestroUnreachable    no connection to the API (not running, wrong URL)

Methods return the decoded JSON bodies described in the API's OpenAPI document
(`/docs`), as plain dicts and lists.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Self
from urllib.parse import quote

import httpx

from maestro import __version__

API_PREFIX = "/api/v1"
# A run is over once it leaves these (the same rule as `RunStatus.is_terminal`).
LIVE_RUN_STATUSES = frozenset({"queued", "running"})


class MaestroClientError(Exception):
    """Base of every error the client raises."""


class MaestroAPIError(MaestroClientError):
    """The API answered with a non-2xx status."""

    def __init__(
        self, status: int, code: str, message: str, detail: list[dict[str, Any]] | None = None
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail or []
        super().__init__(str(self))

    def __str__(self) -> str:
        problems = [
            f"{'.'.join(str(part) for part in item.get('loc', []))}: {item.get('msg', '')}"
            for item in self.detail
        ]
        return f"{self.status} {self.code}: {'; '.join(problems) or self.message}"

    @classmethod
    def from_response(cls, response: httpx.Response) -> MaestroAPIError:
        """Parse the API's `{"error", "message", "detail"}` body; anything else as text."""
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and "error" in body:
            detail = body.get("detail")
            return cls(
                response.status_code,
                str(body["error"]),
                str(body.get("message", "")),
                detail if isinstance(detail, list) else [],
            )
        text = " ".join(response.text.split())[:200] or response.reason_phrase
        return cls(response.status_code, "http_error", text)


class MaestroUnreachable(MaestroClientError):
    """No connection to the API could be made."""

    def __init__(self, base_url: str, reason: str) -> None:
        self.base_url = base_url
        self.reason = reason
        super().__init__(f"cannot reach the Maestro API at {base_url}: {reason}")


def _segment(value: str | int) -> str:
    return quote(str(value), safe="")


class MaestroClient:
    """Talks to one Maestro API. Use as a context manager, or call `close()`."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 30) -> None:
        # Accept the URL with or without the API prefix.
        self.base_url = base_url.rstrip("/").removesuffix(API_PREFIX)
        headers = {"user-agent": f"maestro-client/{__version__}"}
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(
            base_url=self.base_url + API_PREFIX, headers=headers, timeout=timeout
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._send(method, path, **kwargs)
        return response.json() if response.content else None

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request; a successful response, or the client's error."""
        try:
            response = self._http.request(method, path, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise MaestroUnreachable(self.base_url, str(exc) or type(exc).__name__) from exc
        except httpx.TransportError as exc:
            raise MaestroClientError(
                f"request to {self.base_url} failed: {exc or type(exc).__name__}"
            ) from exc
        if not response.is_success:
            raise MaestroAPIError.from_response(response)
        return response

    # Workflows

    @staticmethod
    def _definition_body(
        definition: Mapping[str, Any] | str | bytes, content_type: str | None
    ) -> dict[str, Any]:
        if isinstance(definition, Mapping):
            return {"json": dict(definition)}
        return {
            "content": definition,
            "headers": {"content-type": content_type or "application/yaml"},
        }

    @staticmethod
    def _branch_params(branch: str | None, with_schedules: bool) -> dict[str, Any]:
        params: dict[str, Any] = {"branch": branch} if branch is not None else {}
        if with_schedules:
            params["with_schedules"] = "true"
        return params

    def push_workflow(
        self,
        definition: Mapping[str, Any] | str | bytes,
        *,
        content_type: str | None = None,
        code: str | None = None,
        branch: str | None = None,
        with_schedules: bool = False,
    ) -> dict[str, Any]:
        """Register a definition (a dict, or YAML/JSON text with its `content_type`, YAML by
        default), running the uploaded code package `code` (its SHA-256) if given, in `branch`
        (None: `prod`), stored as `<id>@<branch>` outside prod, with its time triggers paused
        there unless `with_schedules`; `created` is False when an identical version (same
        definition, same code) already existed."""
        params: dict[str, Any] = self._branch_params(branch, with_schedules)
        if code is not None:
            params["code"] = code
        return self._request(
            "POST",
            "/workflows",
            params=params,
            **self._definition_body(definition, content_type),
        )

    def get_code(self, sha256: str) -> dict[str, Any]:
        """A stored code package's record (MaestroAPIError 404 if it was never uploaded)."""
        return self._request("GET", f"/code/{_segment(sha256)}")

    def upload_code(self, sha256: str, data: bytes) -> dict[str, Any]:
        """Store a code package (a zip) under its SHA-256, unless the API has it already;
        `created` says whether this call stored it."""
        try:
            return self.get_code(sha256)
        except MaestroAPIError as exc:
            if exc.status != 404:
                raise
        return self._request(
            "PUT",
            f"/code/{_segment(sha256)}",
            content=data,
            headers={"content-type": "application/zip"},
        )

    def check_requirements(
        self,
        requirements: list[str],
        *,
        task_queues: Sequence[str] = (),
        main_queue: bool = True,
    ) -> dict[str, Any]:
        """Check extra requirements (`scikit-learn>=1.4`) against the environments of the
        workers serving `task_queues` (and the main queue, with `main_queue`); raises (422)
        naming each one that is not satisfied. `checked_against` says, per queue, whether
        workers' environments or (none reported) the API's was used."""
        body = {
            "requirements": requirements,
            "task_queues": list(task_queues),
            "main_queue": main_queue,
        }
        return self._request("POST", "/requirements/check", json=body)

    def validate_workflow(
        self,
        definition: Mapping[str, Any] | str | bytes,
        *,
        content_type: str | None = None,
        branch: str | None = None,
        with_schedules: bool = False,
    ) -> dict[str, Any]:
        """Check a definition without storing it; returns it normalised with the id a push to
        `branch` would store it under, or raises (422)."""
        return self._request(
            "POST",
            "/workflows/validate",
            params=self._branch_params(branch, with_schedules),
            **self._definition_body(definition, content_type),
        )

    def list_workflows(
        self, *, limit: int = 100, offset: int = 0, branch: str | None = None
    ) -> dict[str, Any]:
        """One page of workflows by id (of one branch, if given)."""
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if branch is not None:
            params["branch"] = branch
        return self._request("GET", "/workflows", params=params)

    def iter_workflows(
        self, *, page_size: int = 500, branch: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every workflow (of one branch, if given), fetching pages as needed."""
        offset = 0
        while True:
            items = self.list_workflows(limit=page_size, offset=offset, branch=branch)["items"]
            yield from items
            if len(items) < page_size:
                return
            offset += len(items)

    def get_workflow(self, workflow_id: str) -> dict[str, Any]:
        """A workflow with its active definition."""
        return self._request("GET", f"/workflows/{_segment(workflow_id)}")

    def list_versions(self, workflow_id: str) -> list[dict[str, Any]]:
        """Every version of a workflow, oldest first."""
        return self._request("GET", f"/workflows/{_segment(workflow_id)}/versions")

    def get_version(self, workflow_id: str, version: int | str) -> dict[str, Any]:
        """One version: a number, `active` or `latest`."""
        path = f"/workflows/{_segment(workflow_id)}/versions/{_segment(version)}"
        return self._request("GET", path)

    def list_triggers(self, workflow_id: str, *, upcoming: int = 5) -> list[dict[str, Any]]:
        """The active version's triggers with their state (next fires, pending joins)."""
        path = f"/workflows/{_segment(workflow_id)}/triggers"
        return self._request("GET", path, params={"upcoming": upcoming})

    def activate_version(self, workflow_id: str, version: int | str) -> dict[str, Any]:
        """Make a version active (also rollback); returns the workflow."""
        path = f"/workflows/{_segment(workflow_id)}/versions/{_segment(version)}/activate"
        return self._request("POST", path)

    def pause_workflow(self, workflow_id: str) -> dict[str, Any]:
        """Hold every trigger; manual starts still work."""
        return self._request("POST", f"/workflows/{_segment(workflow_id)}/pause")

    def resume_workflow(self, workflow_id: str) -> dict[str, Any]:
        """Resume the triggers of a paused workflow."""
        return self._request("POST", f"/workflows/{_segment(workflow_id)}/resume")

    def deactivate_workflow(self, workflow_id: str) -> dict[str, Any]:
        """Stop triggers and default starts; running runs continue."""
        return self._request("POST", f"/workflows/{_segment(workflow_id)}/deactivate")

    def backfill_workflow(self, workflow_id: str, start: str, end: str) -> dict[str, Any]:
        """One run per scheduled time of the time triggers in (start, end] (ISO 8601 with a
        time zone); times that already have a run are not run again."""
        path = f"/workflows/{_segment(workflow_id)}/backfill"
        return self._request("POST", path, json={"start": start, "end": end})

    def unblock_workflow(self, workflow_id: str) -> list[dict[str, Any]]:
        """Release a strict_sequential queue held by a failed run; returns the runs admitted."""
        return self._request("POST", f"/workflows/{_segment(workflow_id)}/unblock")

    def stop_workflow(self, workflow_id: str) -> list[dict[str, Any]]:
        """Stop every queued and running run of the workflow; returns the runs it stopped."""
        return self._request("POST", f"/workflows/{_segment(workflow_id)}/stop")

    def delete_workflow(self, workflow_id: str) -> None:
        """Delete the workflow with its schedules, versions and runs (409 while runs are live)."""
        self._request("DELETE", f"/workflows/{_segment(workflow_id)}")

    # Branches

    def list_branches(self) -> list[dict[str, Any]]:
        """Every branch that holds workflows, with how many."""
        return self._request("GET", "/branches")

    def delete_branch(self, branch: str) -> dict[str, Any]:
        """Delete a branch's workflows with their schedules, versions and runs (never `prod`;
        409 while runs are live); returns the ids deleted."""
        return self._request("DELETE", f"/branches/{_segment(branch)}")

    # Runs

    def start_run(
        self,
        workflow_id: str,
        params: Mapping[str, Any] | None = None,
        *,
        request_id: str | None = None,
        version: int | None = None,
    ) -> dict[str, Any]:
        """Start a run (of the active version, or `version`); the same `request_id` returns
        the run it started before."""
        body: dict[str, Any] = {"params": dict(params or {})}
        if request_id is not None:
            body["request_id"] = request_id
        if version is not None:
            body["version"] = version
        return self._request("POST", f"/workflows/{_segment(workflow_id)}/runs", json=body)

    def get_run(self, run_id: str) -> dict[str, Any]:
        """A run with every step's state."""
        return self._request("GET", f"/runs/{_segment(run_id)}")

    def list_runs(
        self,
        *,
        workflow_id: str | None = None,
        status: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """One page of runs, newest first; pass `next_cursor` as `cursor` for the next."""
        params: dict[str, Any] = {"limit": limit}
        for key, value in (("workflow_id", workflow_id), ("status", status), ("cursor", cursor)):
            if value is not None:
                params[key] = value
        return self._request("GET", "/runs", params=params)

    def iter_runs(
        self,
        *,
        workflow_id: str | None = None,
        status: str | None = None,
        page_size: int = 500,
    ) -> Iterator[dict[str, Any]]:
        """Every matching run, newest first, fetching pages as needed."""
        cursor = None
        while True:
            page = self.list_runs(
                workflow_id=workflow_id, status=status, limit=page_size, cursor=cursor
            )
            yield from page["items"]
            cursor = page["next_cursor"]
            if not cursor:
                return

    def stop_run(self, run_id: str) -> dict[str, Any]:
        """Stop a run gracefully (running steps are cancelled)."""
        return self._request("POST", f"/runs/{_segment(run_id)}/stop")

    def kill_run(self, run_id: str) -> dict[str, Any]:
        """Terminate a run now, without cleanup."""
        return self._request("POST", f"/runs/{_segment(run_id)}/kill")

    def restart_run(self, run_id: str, *, from_: str = "failed") -> dict[str, Any]:
        """A new run of an ended run: from `failed` steps, the `beginning`, or a step id."""
        return self._request("POST", f"/runs/{_segment(run_id)}/restart", json={"from": from_})

    def skip_step(self, run_id: str, step_id: str) -> dict[str, Any]:
        """Skip a step that has not finished: the DAG goes on as if it succeeded."""
        path = f"/runs/{_segment(run_id)}/steps/{_segment(step_id)}/skip"
        return self._request("POST", path)

    def bypass_step_wait(self, run_id: str, step_id: str) -> dict[str, Any]:
        """Release a step waiting for signals as if they had arrived."""
        path = f"/runs/{_segment(run_id)}/steps/{_segment(step_id)}/bypass"
        return self._request("POST", path)

    def wait_for_run(
        self, run_id: str, *, poll_interval: float = 0.5, timeout: float | None = None
    ) -> dict[str, Any]:
        """Poll until the run is over; returns it. TimeoutError after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            run = self.get_run(run_id)
            if run["status"] not in LIVE_RUN_STATUSES:
                return run
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} still {run['status']} after {timeout}s")
            time.sleep(poll_interval)

    # Signals

    def publish_signal(
        self,
        name: str,
        params: Mapping[str, Any] | None = None,
        *,
        payload: Mapping[str, Any] | None = None,
        request_id: str | None = None,
        branch: str | None = None,
    ) -> dict[str, Any]:
        """Publish a signal (from outside, or as one of `branch`, which reaches only that
        branch's workflows); returns it with `duplicate` and the `runs` it started."""
        body: dict[str, Any] = {"name": name, "params": dict(params or {})}
        if payload is not None:
            body["payload"] = dict(payload)
        if request_id is not None:
            body["request_id"] = request_id
        query = {"branch": branch} if branch is not None else {}
        return self._request("POST", "/signals", json=body, params=query)

    def list_signals(
        self,
        *,
        name: str | None = None,
        params: Mapping[str, Any] | None = None,
        since: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        branch: str | None = None,
    ) -> dict[str, Any]:
        """One page of the signal log, newest first; `params` filter by equality, `branch`
        keeps one branch's signals."""
        query: dict[str, Any] = {"limit": limit}
        for key, value in (
            ("name", name),
            ("since", since),
            ("cursor", cursor),
            ("branch", branch),
        ):
            if value is not None:
                query[key] = value
        for key, value in (params or {}).items():
            query[f"param.{key}"] = value
        return self._request("GET", "/signals", params=query)

    def create_key(
        self, name: str, scopes: list[str], owners: list[str] | None = None
    ) -> dict[str, Any]:
        """A new API key (admin); the response holds the secret, shown only once."""
        return self._request(
            "POST", "/keys", json={"name": name, "scopes": scopes, "owners": owners or []}
        )

    def list_keys(self) -> list[dict[str, Any]]:
        return self._request("GET", "/keys")

    def revoke_key(self, key_id: str, *, confirm: bool = False) -> dict[str, Any]:
        """Revoke a key; `confirm` is needed to revoke the key this client uses."""
        params = {"confirm": "true"} if confirm else None
        return self._request("POST", f"/keys/{_segment(key_id)}/revoke", params=params)

    def get_signal(self, signal_id: int) -> dict[str, Any]:
        """A signal and what it did to every trigger it reached."""
        return self._request("GET", f"/signals/{_segment(signal_id)}")

    # Models

    def list_models(self) -> list[dict[str, Any]]:
        """Registered models with the version holding each stage."""
        return self._request("GET", "/models")

    def get_model(self, name: str) -> dict[str, Any]:
        """A model with every version and its stage history."""
        return self._request("GET", f"/models/{_segment(name)}")

    def get_model_version(self, name: str, version: int) -> dict[str, Any]:
        """One model version with its lineage."""
        return self._request("GET", f"/models/{_segment(name)}/versions/{_segment(version)}")

    def promote_model(self, name: str, version: int, stage: str) -> dict[str, Any]:
        """Move a version to `staging` or `production` (an older one: a rollback)."""
        path = f"/models/{_segment(name)}/versions/{_segment(version)}/promote"
        return self._request("POST", path, json={"stage": stage})

    # The service

    def api_version(self) -> str:
        """The Maestro version the API runs (from its OpenAPI document)."""
        return str(self._request("GET", self.base_url + "/openapi.json")["info"]["version"])

    def metrics(self) -> str:
        """The API's Prometheus text (runs by status and queue depth among them)."""
        return self._send("GET", self.base_url + "/metrics").text
