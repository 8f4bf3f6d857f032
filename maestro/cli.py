"""The `maestro` command line: start the stack or one of its processes, manage the schema."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import subprocess
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from maestro.client_cli import keys_app, run_app, signal_app, workflow_app
from maestro.settings import Settings

app = typer.Typer(help="Maestro: event-triggered workflows on Temporal.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(workflow_app, name="workflow")
app.add_typer(run_app, name="run")
app.add_typer(signal_app, name="signal")
app.add_typer(keys_app, name="keys")
console = Console(stderr=True)


def _settings() -> Settings:
    return Settings()


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head")) -> None:
    """Apply migrations up to REVISION (default: head)."""
    from maestro.db.engine import upgrade

    upgrade(_settings().require_database_url(), revision)
    console.print(f"database schema at {revision}")


@app.command()
def api(host: str | None = None, port: int | None = None) -> None:
    """Run the HTTP API (uvicorn)."""
    import uvicorn

    from api.app import create_app
    from maestro.logs import configure_logging

    settings = _settings()
    configure_logging(settings.log_level)
    asgi = create_app(settings)
    _settle_heap()
    uvicorn.run(
        asgi,
        host=host or settings.api.host,
        port=port or settings.api.port,
        timeout_keep_alive=settings.api.keep_alive_seconds,
        log_config=None,
        access_log=False,
    )


# The youngest generation's threshold for the API and the worker (Python's default: 700).
GC_THRESHOLD = 10_000


def _settle_heap() -> None:
    """Before a long-lived process serves: leave what its imports built (modules, models,
    the app) out of every later garbage collection, which would otherwise walk it again and
    again, and collect less often. Both cost these processes CPU on every run."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])


def _run(main: Coroutine[Any, Any, None]) -> None:
    """Run a long-lived process's main coroutine on uvloop where it is installed (as uvicorn
    does for the API): its sockets and wake-ups cost less CPU than asyncio's own loop."""
    try:
        import uvloop
    except ImportError:  # Windows: asyncio's loop
        asyncio.run(main)
    else:
        uvloop.run(main)


@app.command()
def worker() -> None:
    """Run a Temporal worker for Maestro's task queues."""
    from maestro.logs import configure_logging
    from workers.main import run_worker

    settings = _settings()
    configure_logging(settings.log_level)
    _settle_heap()
    _run(run_worker(settings))


class _Children:
    """Child processes started by `maestro up`, stopped in reverse order."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, command: list[str], env: dict[str, str], log: Path | None) -> None:
        out = open(log, "ab") if log else None  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            command,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            start_new_session=True,
        )
        self.procs.append((name, proc))

    def dead(self) -> tuple[str, int] | None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                return name, proc.returncode
        return None

    def stop(self, grace: float = 15.0) -> None:
        for name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(grace)
                except subprocess.TimeoutExpired:
                    console.print(f"[yellow]{name} did not stop in {grace:.0f}s; killing it[/]")
                    proc.kill()
                    proc.wait()


def restrict_data_dir(data_dir: Path) -> None:
    """The data directory holds the API key, the secrets key, the database and every run's
    history: only its owner may read it. Embedded PostgreSQL, run as its own user when we are
    root, must pass through it (and opens it up on each start): everyone may then pass through
    but not list it, and each entry but PostgreSQL's own is its owner's only."""
    postgres = data_dir / "postgres"
    shared = postgres.exists() and postgres.stat().st_uid != os.geteuid()
    data_dir.chmod(0o711 if shared else 0o700)
    for name in ("logs", "artifacts", "temporal"):
        (data_dir / name).mkdir(mode=0o700, exist_ok=True)
    for entry in data_dir.iterdir():
        if entry != postgres and not entry.is_symlink():
            entry.chmod(0o700 if entry.is_dir() else 0o600)


@app.command()
def up(
    external_temporal: bool = typer.Option(
        False, help="Use the Temporal at MAESTRO_TEMPORAL__ADDRESS instead of the dev server."
    ),
) -> None:
    """Start everything on one machine: embedded PostgreSQL, the Temporal dev server with its UI,
    the API and a worker. Data lives under MAESTRO_DATA_DIR (default .maestro/).
    Ctrl-C stops all."""
    from maestro.db.engine import upgrade
    from maestro.embedded import EmbeddedPostgres, temporal_dev_server_command, wait_for_port
    from maestro.keys import create_admin_key
    from maestro.secrets import write_key_file

    settings = _settings()
    data_dir = settings.data_dir.resolve()
    (data_dir / "logs").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, MAESTRO_DATA_DIR=str(data_dir))
    postgres: EmbeddedPostgres | None = None
    children = _Children()
    stopping = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        database_url = shown_database_url = settings.database_url
        if not database_url:
            postgres = EmbeddedPostgres(data_dir / "postgres", settings.embedded_postgres_port)
            console.print("starting embedded PostgreSQL ...")
            shown_database_url = postgres.start()
            database_url = postgres.local_url  # the children connect over its Unix socket
        env["MAESTRO_DATABASE_URL"] = database_url
        upgrade(database_url)
        key_file = data_dir / "api-key"
        restrict_data_dir(data_dir)
        if settings.secrets_key is None and write_key_file(settings.secrets_key_path):
            console.print(f"secrets key created in {settings.secrets_key_path}")
        new_key = None
        if not key_file.exists():  # first start: a local admin key for the CLI
            new_key = asyncio.run(create_admin_key(database_url, "local admin (maestro up)"))
            key_file.touch(mode=0o600)
            key_file.write_text(new_key + "\n")
        host, _, port = settings.temporal.address.rpartition(":")
        if not external_temporal:
            console.print("starting Temporal dev server ...")
            children.start(
                "temporal",
                temporal_dev_server_command(
                    data_dir / "temporal",
                    port=int(port),
                    ui_port=settings.temporal.ui_port,
                    namespace=settings.temporal.namespace,
                    sync=settings.temporal.dev_server_sync,
                ),
                env,
                data_dir / "logs" / "temporal.log",
            )
        wait_for_port(host or "127.0.0.1", int(port), timeout=60)
        python = sys.executable
        children.start(
            "api", [python, "-m", "maestro.cli", "api"], env, data_dir / "logs" / "api.log"
        )
        children.start(
            "worker", [python, "-m", "maestro.cli", "worker"], env, data_dir / "logs" / "worker.log"
        )
        wait_for_port(settings.api.host, settings.api.port, timeout=60)
        api_url = f"http://{settings.api.host}:{settings.api.port}"
        console.print(f"""[bold green]Maestro is up[/]
  API        {api_url}/api/v1   (OpenAPI: {api_url}/docs)
  Temporal   {settings.temporal.address}   (UI: {settings.temporal.ui_url})
  PostgreSQL {shown_database_url}
  data       {data_dir}   (logs in {data_dir / "logs"})
Press Ctrl-C to stop.""")
        if new_key:
            console.print(
                f"[bold]admin API key[/]: {new_key}\n  (kept in {key_file}; the CLI "
                "and `maestro demo` use it)"
            )
        else:
            console.print(f"admin API key: in {key_file}")
        while not stopping:
            dead = children.dead()
            if dead:
                console.print(f"[red]{dead[0]} exited with code {dead[1]}; stopping[/]")
                raise typer.Exit(1)
            time.sleep(0.5)
    finally:
        console.print("stopping ...")
        children.stop()
        if postgres is not None:
            postgres.stop()
        console.print("stopped")


@app.command()
def demo(
    api_url: str = typer.Option(
        "http://127.0.0.1:8000",
        envvar="MAESTRO_API_URL",
        help="The Maestro API (as started by `maestro up`).",
    ),
    api_key: str | None = typer.Option(
        None,
        envvar="MAESTRO_API_KEY",
        help="Default: the key `maestro up` keeps in the data directory.",
    ),
) -> None:
    """Run the reference ML pipeline on a running stack: register it, publish a data-arrival
    signal, follow training, evaluation, deployment and batch scoring live."""
    from maestro.demo import DemoError, run_demo

    key_file = _settings().data_dir / "api-key"
    key = api_key or (key_file.read_text().strip() if key_file.exists() else None)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        code = run_demo(api_url.rstrip("/"), headers, Console())
    except DemoError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    raise typer.Exit(code)


if __name__ == "__main__":
    app()
