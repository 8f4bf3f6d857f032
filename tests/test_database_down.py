"""The API on a PostgreSQL that stops and comes back: 503 with a retry hint meanwhile, then it
recovers by itself. Uses its own embedded server, so the shared test database stays up."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import httpx
import pytest
from sqlalchemy import make_url, text

from api.app import create_app
from maestro.db.engine import create_engine, upgrade
from maestro.embedded import EmbeddedPostgres, free_port
from maestro.keys import create_admin_key

pytestmark = [pytest.mark.e2e, pytest.mark.fault, pytest.mark.timeout(180)]


async def test_database_down_gives_503_then_the_api_recovers(settings, own_tmp_path):
    """Over the embedded server's Unix socket, as `maestro up` connects its API: a stopped
    server removes the socket file, which must be a 503 like a refused TCP connection."""
    server = EmbeddedPostgres(own_tmp_path / "pg", free_port())
    url = server.start()
    try:
        await asyncio.to_thread(upgrade, url)
        key = await create_admin_key(url, "db-down test")
        engine = create_engine(server.local_url)
        async with engine.connect() as connection:
            peer = await connection.scalar(text("select inet_server_addr()"))
        await engine.dispose()
        assert peer is None, "local_url connects over the Unix socket, not TCP"
        app = create_app(settings.model_copy(update={"database_url": server.local_url}))
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app),
                base_url="http://maestro",
                headers={"Authorization": f"Bearer {key}"},
            ) as api:
                assert (await api.get("/api/v1/workflows")).status_code == 200
                await asyncio.to_thread(server.stop)
                for path in ("/api/v1/workflows", "/api/v1/runs", "/healthz"):
                    down = await api.get(path)
                    assert down.status_code == 503, down.text
                    assert down.headers["retry-after"] == "5"
                    assert down.json()["error"] == "database_unavailable"
                await asyncio.to_thread(server.start)
                for _ in range(50):
                    back = await api.get("/api/v1/workflows")
                    if back.status_code == 200:
                        break
                    await asyncio.sleep(0.2)
                assert back.status_code == 200
    finally:
        await asyncio.to_thread(server.stop)


def test_local_url_falls_back_to_tcp_when_the_socket_path_is_too_long(tmp_path):
    short = EmbeddedPostgres(tmp_path / "pg", 55432)
    short.password_file.write_text("p/w@rd\n")
    assert short.local_url.startswith("postgresql://postgres:p%2Fw%40rd@/postgres?host=/")
    assert short.local_url.endswith("&port=55432")
    deep = EmbeddedPostgres(tmp_path / ("d" * 120) / "pg", 55432)
    assert deep.local_url == deep.url == "postgresql://postgres@127.0.0.1:55432/postgres"


async def test_no_free_connection_on_the_server_gives_503(settings, auth_headers):
    """PostgreSQL refusing a new connection (its connection limit reached: SQLSTATE 53300) is
    a retryable 503, not a 500; the API recovers when connections free up. The limit is
    reached here through a role's own limit, on the shared test server."""
    role = f"maestro_limited_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(settings.database_url)
    try:
        # A password, as the embedded test server requires one; the machine's may trust.
        await admin.execute(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{role}'")
        await admin.execute(f'GRANT ALL ON ALL TABLES IN SCHEMA public TO "{role}"')
        await admin.execute(f'GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO "{role}"')
        url = make_url(settings.database_url).set(username=role, password=role)
        url = url.render_as_string(False)
        app = create_app(settings.model_copy(update={"database_url": url}))
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app),
                base_url="http://maestro",
                headers=auth_headers,
            ) as api:
                assert (await api.get("/api/v1/workflows")).status_code == 200
                await admin.execute(f'ALTER ROLE "{role}" CONNECTION LIMIT 0')
                await app.state.engine.dispose()  # the next request needs a new connection
                full = await api.get("/api/v1/workflows")
                assert full.status_code == 503, full.text
                assert full.headers["retry-after"] == "5"
                assert full.json()["error"] == "database_unavailable"
                await admin.execute(f'ALTER ROLE "{role}" CONNECTION LIMIT -1')
                assert (await api.get("/api/v1/workflows")).status_code == 200
    finally:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role
        )
        await admin.execute(f'DROP OWNED BY "{role}"')
        await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.close()
