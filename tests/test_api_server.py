"""The `maestro api` process as HTTP clients see it."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator

import pytest

from maestro.embedded import wait_for_port
from maestro.settings import Settings
from tests.processes import Processes

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

REQUEST = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


@pytest.fixture(scope="module")
def api_port(settings: Settings, tmp_path_factory) -> Iterator[int]:
    procs = Processes(settings, tmp_path_factory.mktemp("api-logs"), task_queue="maestro-api")
    procs.start("api")
    wait_for_port("127.0.0.1", procs.api_port, timeout=60)
    yield procs.api_port
    procs.stop_all()


def exchange(sock: socket.socket) -> bytes:
    """Send one request on the open connection and read the whole response (head and
    Content-Length body); return its status line, or b"" if the server closed the connection."""
    sock.sendall(REQUEST)
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(4096)
        if not chunk:
            return b""
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(b":") for h in lines)}
    while len(body) < int(headers[b"content-length"]):
        chunk = sock.recv(4096)
        assert chunk, "connection closed in the middle of a response"
        body += chunk
    return status


def test_an_idle_connection_outlives_client_pools(api_port: int):
    """httpx keeps an idle connection for 5 s, and so did uvicorn by default: the server could
    close it just as the client reused it, failing that request (seen as httpx.ReadError).
    The API keeps idle connections longer (MAESTRO_API__KEEP_ALIVE_SECONDS, 75 s)."""
    with socket.create_connection(("127.0.0.1", api_port), timeout=10) as sock:
        assert exchange(sock) == b"HTTP/1.1 200 OK"
        idle_since = time.monotonic()
        # Idle past the 5 s limit, watching the socket: a server that closes the connection
        # makes it readable (EOF), and the test fails at that moment.
        while (idle := time.monotonic() - idle_since) < 6.5:
            readable, _, _ = select.select([sock], [], [], 6.5 - idle)
            gone = time.monotonic() - idle_since
            assert not readable, f"the server closed the connection after {gone:.1f} s idle"
        assert time.monotonic() - idle_since > 6
        assert exchange(sock) == b"HTTP/1.1 200 OK"


async def test_a_stopped_process_writes_its_last_audit_rows(settings, admin_key, tmp_path):
    """Under uvicorn the middleware sees the key authentication found (and none for a 401),
    and a process stopped (SIGTERM) right after answering has written both rows when it
    exits. (That the shutdown itself flushes is shown in-process, in test_access.py: here the
    periodic flush may come first.)"""
    import asyncio
    import uuid

    import asyncpg
    import httpx

    procs = Processes(settings, tmp_path, task_queue="maestro-api-audit")
    proc = procs.start("api")
    name = f"audited.{uuid.uuid4().hex[:8]}"
    try:
        await asyncio.to_thread(wait_for_port, "127.0.0.1", procs.api_port, timeout=60)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{procs.api_port}",
            headers={"Authorization": f"Bearer {admin_key}"},
        ) as client:
            published = await client.post("/api/v1/signals", json={"name": name})
            refused = await client.post(
                "/api/v1/signals", json={"name": name}, headers={"Authorization": "Bearer x"}
            )
        proc.terminate()  # uvicorn shuts the app down, then exits by the same signal
        await asyncio.to_thread(proc.wait, 20)
    finally:
        procs.stop_all()
    assert (published.status_code, refused.status_code) == (201, 401)
    db = await asyncpg.connect(settings.database_url)
    try:
        rows = await db.fetch(
            "SELECT key_name, status FROM audit_log WHERE path = '/api/v1/signals'"
            " AND at >= now() - interval '1 minute' ORDER BY id DESC LIMIT 2"
        )
    finally:
        await db.close()
    assert [tuple(r) for r in rows] == [(None, 401), ("tests-admin", 201)]
