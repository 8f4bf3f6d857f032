"""A real HTTP server on 127.0.0.1 for tests: records what it receives, answers as told."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from maestro.embedded import free_port


@dataclass
class Received:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


Answer = tuple[int, dict[str, Any] | bytes]


@dataclass
class Receiver:
    """`await start()` / `await stop()` (same port again after a stop). `answer` decides each
    response from the request: default 200 `{"ok": true}`."""

    port: int = field(default_factory=free_port)
    received: list[Received] = field(default_factory=list)
    answer: Callable[[Received], Answer] = lambda request: (200, {"ok": True})
    _server: uvicorn.Server | None = None
    _task: asyncio.Task | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _app(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        request = Received(
            method=scope["method"],
            path=scope["path"],
            query=scope["query_string"].decode(),
            headers={k.decode().lower(): v.decode() for k, v in scope["headers"]},
            body=body,
        )
        self.received.append(request)
        status, content = self.answer(request)
        raw = content if isinstance(content, bytes) else json.dumps(content).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": raw})

    async def start(self) -> None:
        config = uvicorn.Config(
            self._app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="off",
            interface="asgi3",
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._server = self._task = None

    def events(self) -> list[Received]:
        return [r for r in self.received if "x-maestro-event-id" in r.headers]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 60) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate():
            if asyncio.get_running_loop().time() > deadline:
                got = [(r.headers.get("x-maestro-event"), r.path) for r in self.received]
                raise AssertionError(f"receiver waited {timeout}s; it got {got}")
            await asyncio.sleep(0.05)
