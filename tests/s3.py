"""An S3-compatible server on loopback for tests: moto's server mode, standing in for a cloud
object store (or MinIO), in a process of its own that is stopped by PID."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import httpx

from maestro.embedded import free_port, wait_for_port
from maestro.settings import S3Settings, Settings

# moto checks no signatures; the store signs its requests with these all the same.
ACCESS_KEY_ID = "maestro-test"
SECRET_ACCESS_KEY = "maestro-test-secret"
REGION = "us-east-1"


class S3Server:
    """`python -m moto.server` on 127.0.0.1 and a free port."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._log = log_dir / "s3-server.log"
        self._proc: subprocess.Popen | None = None

    def start(self) -> None:
        with self._log.open("wb") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for_port("127.0.0.1", self.port, timeout=60)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(20)

    def new_bucket(self) -> str:
        """A bucket of its own for one test."""
        name = f"maestro-{uuid.uuid4().hex[:12]}"
        httpx.put(f"{self.endpoint}/{name}", timeout=30).raise_for_status()
        return name

    def env(self) -> dict[str, str]:
        """The MAESTRO_S3__* variables that point a Maestro process at this server."""
        return {
            "MAESTRO_S3__ENDPOINT_URL": self.endpoint,
            "MAESTRO_S3__REGION": REGION,
            "MAESTRO_S3__ACCESS_KEY_ID": ACCESS_KEY_ID,
            "MAESTRO_S3__SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
        }

    def settings(
        self, bucket: str, data_dir: Path, prefix: str = "maestro", endpoint: str | None = None
    ) -> Settings:
        """Settings whose artifact store is `s3://<bucket>/<prefix>` on this server."""
        return Settings(
            data_dir=data_dir,
            artifact_store=f"s3://{bucket}/{prefix}",
            s3=S3Settings(
                endpoint_url=endpoint or self.endpoint,
                region=REGION,
                access_key_id=ACCESS_KEY_ID,
                secret_access_key=SECRET_ACCESS_KEY,
            ),
        )


class Relay:
    """A TCP relay on a free loopback port in front of the server, which the test switches off
    and on: off, the port refuses connections and open ones are cut, as when the store
    restarts; the server and its buckets live on."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._target = target_port
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port))
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # stopped
            server = socket.create_connection(("127.0.0.1", self._target))
            with self._lock:
                self._open |= {client, server}
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
