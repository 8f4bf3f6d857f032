"""An ASGI middleware that refuses request bodies over the configured size (413) and JSON bodies
nested deeper than the document depth limit (422), before any route parses them."""

from __future__ import annotations

import asyncio
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_body
from maestro.documents import MAX_DEPTH, json_too_deep

# Bodies larger than this are scanned for their depth in a worker thread.
_SCAN_INLINE_BYTES = 65_536
# YAML bodies are measured by their loader, which also follows aliases.
_YAML_TYPES = (b"application/yaml", b"application/x-yaml", b"text/yaml")
# Bodies that are not documents (code packages) have no depth.
_BINARY_TYPES = (b"application/zip", b"application/octet-stream")


class BodySizeLimit:
    """Read the whole body (at most `max_bytes`, or the limit of a `larger` path prefix, by
    Content-Length or while streaming), check the nesting of a JSON body, then hand it to the
    app."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        max_depth: int = MAX_DEPTH,
        larger: dict[str, int] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_depth = max_depth
        self.larger = larger or {}

    def _limit(self, path: str) -> int:
        for prefix, limit in self.larger.items():
            if path.startswith(prefix):
                return max(limit, self.max_bytes)
        return self.max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit(scope.get("path", ""))
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(send, *self._too_large(limit))
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body += message.get("body", b"")
            if len(body) > limit:
                await self._refuse(send, *self._too_large(limit))
                return
            if not message.get("more_body", False):
                break
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip()
        if (
            body
            and content_type not in _YAML_TYPES + _BINARY_TYPES
            and await self._too_deep(bytes(body))
        ):
            reason = f"the body nests deeper than {self.max_depth} levels"
            detail = [{"loc": ["body"], "msg": reason, "type": "document_too_complex"}]
            await self._refuse(send, 422, error_body("invalid_input", reason, detail))
            return
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if delivered:
                return await receive()
            delivered = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    async def _too_deep(self, body: bytes) -> bool:
        if len(body) <= _SCAN_INLINE_BYTES:
            return json_too_deep(body, self.max_depth)
        return await asyncio.to_thread(json_too_deep, body, self.max_depth)

    def _too_large(self, limit: int) -> tuple[int, dict]:
        message = f"request body is larger than {limit} bytes"
        return 413, error_body("payload_too_large", message)

    async def _refuse(self, send: Send, status: int, content: dict) -> None:
        body = json.dumps(content).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
