"""The `maestro` command line: start the stack or one of its processes, manage the schema."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import typer

from maestro import __version__
from maestro.client_cli import (
    Output,
    branch_app,
    keys_app,
    models_app,
    run_app,
    signal_app,
    status_command,
    workflow_app,
)
from maestro.deploy_cli import deploy_command
from maestro.local_cli import run_local_command
from maestro.settings import Settings

app = typer.Typer(help="Maestro: event-triggered workflows on Temporal.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(workflow_app, name="workflow")
app.add_typer(run_app, name="run")
app.add_typer(signal_app, name="signal")
app.add_typer(models_app, name="models")
app.add_typer(keys_app, name="keys")
app.add_typer(branch_app, name="branch")
app.command("status")(status_command)
app.command("deploy")(deploy_command)
app.command("run-local")(run_local_command)
console = Output(stderr=True)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"maestro {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
        help="Print Maestro's version and exit.",
    ),
) -> None:
    """Maestro: event-triggered workflows on Temporal."""


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


@app.command()
def dispatcher() -> None:
    """Deliver webhook events only, at a lower CPU priority than runs (MAESTRO_WEBHOOKS__NICE);
    the workers then run with MAESTRO_WEBHOOKS__DISPATCH=false."""
    from maestro.logs import configure_logging
    from workers.main import run_dispatcher

    settings = _settings()
    configure_logging(settings.log_level)
    _run(run_dispatcher(settings))


class _ConsoleHandler(logging.Handler):
    """`maestro up`'s own events (a child died, restarted) on the console, one line each."""

    _STYLES = {logging.WARNING: "yellow", logging.ERROR: "red"}

    def emit(self, record: logging.LogRecord) -> None:
        style = self._STYLES.get(record.levelno)
        console.print(
            record.getMessage(), style=style, markup=False, highlight=False, soft_wrap=True
        )


def _log_supervision(log_file: Path) -> None:
    """Send the supervisor's events to the console and, as JSON lines, to `log_file`."""
    from maestro.logs import JsonFormatter

    to_file = logging.FileHandler(log_file)
    to_file.setFormatter(JsonFormatter())
    supervisor_log = logging.getLogger("maestro.supervisor")
    supervisor_log.handlers[:] = [_ConsoleHandler(), to_file]
    supervisor_log.setLevel(logging.INFO)
    supervisor_log.propagate = False


def _print_up(
    settings: Settings,
    data_dir: Path,
    database_url: str,
    password_note: str,
    metrics: dict[str, str],
) -> None:
    """The addresses of the running stack; the database URL with its password masked."""
    from sqlalchemy import make_url

    api_url = f"http://{settings.api.host}:{settings.api.port}"
    shown_url = make_url(database_url).render_as_string(hide_password=True)
    console.print(
        f"""[bold green]Maestro is up[/]
  API        {api_url}/api/v1   (OpenAPI: {api_url}/docs)
  Console    Open {api_url}/ui   (sign in with the admin API key)
  Temporal   {settings.temporal.address}   (UI: {settings.temporal.ui_url})
  PostgreSQL {shown_url}{password_note}
  data       {data_dir}   (logs in {data_dir / "logs"})
  metrics    {"  ".join(f"{name} {url}" for name, url in metrics.items())}
Press Ctrl-C to stop; a child that dies is restarted.""",
        soft_wrap=True,
    )


# How long `maestro up` waits for Temporal, then for the API, to accept connections.
START_TIMEOUT = 60.0


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
    the API, a worker and the webhook dispatcher, and keep them running (a child that dies is
    restarted). Data lives under MAESTRO_DATA_DIR (default .maestro/). Ctrl-C stops all."""
    from maestro.db.engine import upgrade
    from maestro.embedded import (
        EmbeddedPostgres,
        free_port,
        port_open,
        temporal_dev_server_command,
    )
    from maestro.keys import create_admin_key
    from maestro.secrets import write_key_file
    from maestro.supervisor import ChildProcess, CrashLoopError, PostgresProcess, Supervisor

    settings = _settings()
    data_dir = settings.data_dir.resolve()
    logs = data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    _log_supervision(logs / "supervisor.log")
    env = dict(os.environ, MAESTRO_DATA_DIR=str(data_dir))
    supervisor = Supervisor(data_dir / "status.json")
    stopping = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        if settings.database_url:
            database_url = shown_database_url = settings.database_url
            password_note = ""
        else:
            postgres = EmbeddedPostgres(data_dir / "postgres", settings.embedded_postgres_port)
            console.print("starting embedded PostgreSQL ...")
            supervisor.add(PostgresProcess("postgres", postgres))
            shown_database_url = postgres.url
            database_url = postgres.local_url  # the children connect over its Unix socket
            password_note = f"   (password in {postgres.password_file})"
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
        # Every child serves its metrics; a port left unset is a free one, kept for restarts.
        metrics = {"api": f"http://{settings.api.host}:{settings.api.port}/metrics"}
        worker_metrics = settings.worker.metrics_port or free_port()
        env["MAESTRO_WORKER__METRICS_PORT"] = str(worker_metrics)
        metrics["worker"] = f"http://{settings.worker.metrics_host}:{worker_metrics}/metrics"
        # Webhooks are delivered by a process of their own, niced below the runs' processes.
        dispatcher_metrics = free_port()
        metrics["dispatcher"] = (
            f"http://{settings.worker.metrics_host}:{dispatcher_metrics}/metrics"
        )
        envs = {
            "api": env,
            "worker": dict(env, MAESTRO_WEBHOOKS__DISPATCH="false"),
            "dispatcher": dict(env, MAESTRO_WORKER__METRICS_PORT=str(dispatcher_metrics)),
        }
        if not external_temporal:
            console.print("starting Temporal dev server ...")
            temporal_metrics = settings.temporal.dev_server_metrics_port or free_port()
            metrics["temporal"] = f"http://127.0.0.1:{temporal_metrics}/metrics"
            supervisor.add(
                ChildProcess(
                    "temporal",
                    temporal_dev_server_command(
                        data_dir / "temporal",
                        port=int(port),
                        ui_port=settings.temporal.ui_port,
                        namespace=settings.temporal.namespace,
                        sync=settings.temporal.dev_server_sync,
                    )
                    + ["--metrics-port", str(temporal_metrics)],
                    env,
                    logs / "temporal.log",
                    metrics["temporal"],
                )
            )
        python = sys.executable
        waiting_for, since = "temporal", time.monotonic()
        while not stopping:
            supervisor.check()
            if waiting_for == "temporal" and port_open(host or "127.0.0.1", int(port)):
                for name, child_env in envs.items():
                    command = [python, "-m", "maestro.cli", name]
                    supervisor.add(
                        ChildProcess(name, command, child_env, logs / f"{name}.log", metrics[name])
                    )
                waiting_for, since = "api", time.monotonic()
            elif waiting_for == "api" and port_open(settings.api.host, settings.api.port):
                supervisor.mark_up()
                _print_up(settings, data_dir, shown_database_url, password_note, metrics)
                if new_key:
                    console.print(
                        f"[bold]admin API key[/]: {new_key}\n  (kept in {key_file}; the CLI "
                        "and `maestro demo` use it)"
                    )
                else:
                    console.print(f"admin API key: in {key_file}")
                waiting_for = ""
            elif waiting_for and time.monotonic() - since > START_TIMEOUT:
                console.print(
                    f"[red]{waiting_for} accepts no connections after {START_TIMEOUT:.0f} s[/]"
                )
                raise typer.Exit(1)
            time.sleep(0.2 if waiting_for else 0.5)
    except CrashLoopError:
        raise typer.Exit(1) from None
    finally:
        console.print("stopping ...")
        supervisor.stop()
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
        code = run_demo(api_url.rstrip("/"), headers, Output())
    except DemoError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    raise typer.Exit(code)


if __name__ == "__main__":
    app()
