"""The embedded PostgreSQL lets no one in without the superuser's password, over TCP or its
Unix socket, also in a data directory an older Maestro created with trust auth."""

from __future__ import annotations

import os
import signal
import stat
import time
from pathlib import Path

import asyncpg
import pytest

from maestro.embedded import EmbeddedPostgres, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def no_password_urls(server: EmbeddedPostgres) -> list[str]:
    tcp = f"127.0.0.1:{server.port}/postgres"
    return [
        f"postgresql://postgres@{tcp}",
        f"postgresql://postgres:wrong@{tcp}",
        f"postgresql://postgres@/postgres?host={server.data_dir}&port={server.port}",
    ]


async def assert_password_required(server: EmbeddedPostgres) -> None:
    for url in no_password_urls(server):
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(url, timeout=10)
    for url in (server.url, server.local_url):
        connection = await asyncpg.connect(url, timeout=10)
        assert await connection.fetchval("select current_user") == "postgres"
        await connection.close()


async def test_a_new_server_requires_the_password(own_tmp_path: Path):
    server = EmbeddedPostgres(own_tmp_path / "postgres", free_port())
    url = server.start()
    try:
        password = server.password
        assert password and len(password) >= 24
        assert server.password_file == own_tmp_path / "postgres-password"
        assert stat.S_IMODE(server.password_file.stat().st_mode) == 0o600
        assert url == server.url and f":{password}@" in url
        await assert_password_required(server)
        connection = await asyncpg.connect(server.url)
        stored = await connection.fetchval(
            "select rolpassword from pg_authid where rolname = 'postgres'"
        )
        await connection.close()
        assert stored.startswith("SCRAM-SHA-256$4096:"), "stored as a SCRAM verifier"
        assert password not in (server.data_dir / "server.log").read_text()
    finally:
        server.stop()


async def test_a_trust_data_directory_is_migrated_on_the_next_start(own_tmp_path: Path):
    """As an older Maestro left it: initialised with trust auth and still running; and later a
    pg_hba.conf put back to trust by hand."""
    server = EmbeddedPostgres(own_tmp_path / "postgres", free_port())
    server.data_dir.mkdir()
    server._prepare_user()
    server._run("initdb", "-D", str(server.data_dir), "--auth=trust", "-U", "postgres")
    server._run(
        "pg_ctl",
        *("-D", str(server.data_dir), "-w", "-l", str(server.data_dir / "server.log")),
        *("-o", f"-h 127.0.0.1 -p {server.port} -k {server.data_dir}", "start"),
    )
    trusted = no_password_urls(server)[0]
    connection = await asyncpg.connect(trusted)
    await connection.execute("create table kept (v text); insert into kept values ('still here')")
    await connection.close()
    assert server.password is None and not server.requires_password()
    try:
        server.start()
        assert server.requires_password()
        await assert_password_required(server)
        connection = await asyncpg.connect(server.url)
        assert await connection.fetchval("select v from kept") == "still here"
        await connection.close()

        password = server.password
        server.stop()
        hba = server.data_dir / "pg_hba.conf"
        hba.write_text(hba.read_text().replace("scram-sha-256", "trust"))
        server.start()
        assert server.password == password, "the password file is kept"
        await assert_password_required(server)
    finally:
        server.stop()


async def test_a_killed_server_starts_again_over_its_stale_lock_files(own_tmp_path: Path):
    server = EmbeddedPostgres(own_tmp_path / "postgres", free_port())
    server.start()
    try:
        pid = server.pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while server.pid() is not None:
            assert time.monotonic() < deadline, "the killed server still counts as running"
            time.sleep(0.1)
        assert (server.data_dir / "postmaster.pid").exists(), "a stale lock file is left"
        server.start()
        assert server.pid() not in (None, pid)
        await assert_password_required(server)
    finally:
        server.stop()
