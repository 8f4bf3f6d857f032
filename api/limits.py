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


class BodySizeLimit:
    """Read the whole body (at most `max_bytes`, by Content-Length or while streaming), check
    the nesting of a JSON body, then hand it to the app."""

    def __init__(self, app: ASGIApp, max_bytes: int, max_depth: int = MAX_DEPTH) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_depth = max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send, *self._too_large())
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await self._refuse(send, *self._too_large())
                return
            if not message.get("more_body", False):
                break
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip()
        if body and content_type not in _YAML_TYPES and await self._too_deep(bytes(body)):
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

    def _too_large(self) -> tuple[int, dict]:
        message = f"request body is larger than {self.max_bytes} bytes"
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
