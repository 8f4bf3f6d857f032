"""Configuration: one pydantic-settings model, read from `MAESTRO_*` environment variables."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# PostgreSQL connections a process keeps open, and how many more it may open for a burst. A
# connection beyond the pool is closed when returned, and a new one costs a PostgreSQL backend,
# asyncpg's type introspection and re-preparing every statement: the pool covers the
# concurrency a busy API serves (32 clients in the benchmark), so bursts do not churn them.
POOL_SIZE = 20
MAX_OVERFLOW = 10


class TemporalSettings(BaseModel):
    """Where Temporal is and how Maestro names things in it."""

    address: str = "127.0.0.1:7233"
    namespace: str = "default"
    task_queue: str = "maestro"
    ui_url: str = "http://127.0.0.1:8233"
    ui_port: int = 8233
    # How the dev server `maestro up` starts keeps its SQLite file. `normal`: a write-ahead log
    # synced at checkpoints; a power loss or OS crash may roll back Temporal's last commits, a
    # crash of the server process cannot. `full`: the rollback journal, every commit synced
    # (the former default: about half as fast with many aligned schedules; for a data
    # directory on a network filesystem). `off`: a write-ahead log never synced.
    # `true`/`false` (the older boolean form) mean `full`/`off`.
    dev_server_sync: Literal["full", "normal", "off"] = "normal"
    # Where that dev server serves its Prometheus metrics; 0 = a free port (see status.json).
    dev_server_metrics_port: int = 0
    # Register Maestro's search attributes at start-up (needs operator rights on a real cluster).
    register_search_attributes: bool = True

    @field_validator("dev_server_sync", mode="before")
    @classmethod
    def _sync_from_boolean(cls, value: Any) -> Any:
        booleans = {"true": "full", "1": "full", "false": "off", "0": "off"}
        if isinstance(value, bool):
            return "full" if value else "off"
        if isinstance(value, str):
            value = value.strip().lower()
            return booleans.get(value, value)
        return value


class ApiSettings(BaseModel):
    """The HTTP API process."""

    host: str = "127.0.0.1"
    port: int = 8000
    # Require `Authorization: Bearer <key>` on every endpoint but health and the OpenAPI page.
    auth: bool = True
    max_body_bytes: int = 1_048_576
    # Code packages (`PUT /api/v1/code/{sha256}`, from `maestro deploy`) may be this large.
    max_code_package_bytes: int = Field(default=5 * 1024 * 1024, ge=1024)
    # How long an idle HTTP connection stays open. Longer than client pools keep theirs (httpx:
    # 5 s) and than load balancers' idle timeouts (often 60 s), so the client closes first: a
    # server closing a connection just as a client reuses it fails that request.
    keep_alive_seconds: int = 75
    # How long a valid key is remembered (no database lookup per request); a key revoked
    # through another API process stops working within this time. 0 = look up every request.
    key_cache_seconds: float = 5.0


class WorkerSettings(BaseModel):
    """The worker process."""

    # Extra task queues this worker polls for step activities (e.g. "gpu").
    task_queues: list[str] = Field(default_factory=list)
    max_concurrent_activities: int = 100
    # How often each worker's sweeper finishes launches, stops and deliveries a dead process
    # left undone.
    sweep_interval_seconds: float = 1.0
    # How often each worker's sweeper reconciles every schedule (also once at start-up).
    reconcile_interval_seconds: float = 300.0
    # Step types this worker runs (others fail non-retryably); empty = all.
    step_types: list[str] = Field(default_factory=list)
    # Module prefixes `python`/`train`/`evaluate` entrypoints may come from ("examples",
    # "mycompany.ml"); a step naming any other module fails. "*" allows every importable
    # module, the standard library's too (`os:system`), so only for trusted definitions.
    allowed_modules: list[str] = Field(default_factory=lambda: ["examples"])
    # Run the code packages `maestro deploy` ships with versions: an entrypoint whose module the
    # version's package holds is imported from the package (in isolation, whatever
    # allowed_modules says: it names installed modules); others come from installed modules as
    # allowed_modules allows. False: steps of versions with a package fail.
    code_packages: bool = True
    # Serve Prometheus metrics (step durations, run ends, fires) on <metrics_host>:<port>;
    # 0 = off (`maestro up` gives its worker a free port then).
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    # A foreach step refuses, when it runs, more items than this.
    max_foreach_items: int = Field(default=100_000, ge=1)
    # Run RunWorkflow in Temporal's sandbox. Off by default: the sandbox re-imports the workflow
    # module for every run (about a quarter of the worker's CPU per run under load, see
    # docs/architecture.md), and Maestro's workflow code is fixed, not user code; the test suite
    # runs it sandboxed and replays recorded histories to keep it deterministic.
    workflow_sandbox: bool = False
    # Where per-run working directories live (one per run, mode 0700); never inside data_dir,
    # whose API key, secrets key and database socket a step must not reach. Unset: the
    # `maestro-runs` directory under the system's temporary directory.
    work_root: Path | None = None
    # On a worker running as root: the user (name or uid) shell steps run as, with that user's
    # group and no supplementary groups; their run's directory is theirs while they run.
    # Unset: shell steps run as the worker's own user.
    run_as_user: str | None = None
    # With run_as_user: uids [first, last] reserved for steps (no other use on the machine).
    # Each run gets one of its own while its steps run here, so steps of concurrent runs cannot
    # see each other's processes or files either; what they leave running is killed.
    run_as_uid_range: tuple[int, int] | None = None

    def work_root_dir(self) -> Path:
        """The directory that holds the per-run working directories."""
        root = self.work_root or Path(tempfile.gettempdir()) / "maestro-runs"
        return root.expanduser().resolve()


class RetentionSettings(BaseModel):
    """How long ended runs and signals are kept; unset `days` keeps everything (the default).
    Deletion runs in the workers, a few small batches per sweep (maestro.retention)."""

    # Ended runs (with their steps) and signals older than this are deleted, unless something
    # kept still needs them. Temporal's namespace retention is lowered to match when longer.
    days: float | None = Field(default=None, gt=0)
    # Rows looked at per batch (one short transaction each).
    batch_size: int = Field(default=500, ge=1, le=10_000)
    # Time the batches of one sweep may take before the sweep moves on to its other work.
    seconds_per_sweep: float = Field(default=0.2, gt=0)
    # After a pass has deleted everything due, the next one starts this much later.
    interval_seconds: float = Field(default=300.0, gt=0)
    # Lower the Temporal namespace's workflow retention to `days` (at least Temporal's minimum
    # of one day) when it is longer; needs the rights to update the namespace.
    align_temporal: bool = True


class OutboundSettings(BaseModel):
    """Where Maestro may send HTTP requests (webhook deliveries, `http` steps), and how much."""

    # Hosts (`api.example.com`, `*.example.com`) and addresses or networks (`203.0.113.0/24`)
    # requests may go to; empty: any public address. Checked against the URL's host and
    # against every address it resolves to, at each request.
    allowed_hosts: list[str] = Field(default_factory=list)
    # Private, loopback, link-local and metadata addresses are refused unless they are in one
    # of these networks (e.g. `["10.0.0.0/8"]`, or `["127.0.0.1/32"]` for a local receiver).
    allowed_private_networks: list[str] = Field(default_factory=list)
    max_request_bytes: int = Field(default=262_144, ge=1_024)
    max_response_bytes: int = Field(default=1_048_576, ge=1_024)
    timeout_seconds: float = Field(default=10.0, gt=0)


class WebhookSettings(BaseModel):
    """How the worker's dispatcher delivers webhook events."""

    # Deliver events (off the run path, in each worker process); off: events wait in the
    # outbox for a process that does (`maestro dispatcher`; `maestro up` runs one and turns
    # this off on its worker).
    dispatch: bool = True
    # How much lower than the runs' processes `maestro dispatcher` runs (Unix niceness added
    # at start): on a saturated machine deliveries wait for spare CPU instead of slowing runs.
    nice: int = Field(default=10, ge=0, le=19)
    # How often an idle dispatcher looks for due deliveries.
    poll_interval_seconds: float = Field(default=0.2, gt=0)
    # Webhooks one dispatcher delivers to at once (each in order, one request at a time).
    concurrency: int = Field(default=16, ge=1)
    # Retries back off exponentially from the first to the longest delay, for this long; the
    # delivery is then `dead` (shown in its list, redeliverable).
    retry_initial_seconds: float = Field(default=1.0, gt=0)
    retry_max_seconds: float = Field(default=600.0, gt=0)
    retry_for_seconds: float = Field(default=86_400.0, gt=0)


class S3Settings(BaseModel):
    """How an `s3://` artifact store is reached. Unset fields fall back to the standard AWS
    environment variables and files (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
    `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, instance and container credentials)."""

    # Any S3-compatible server (MinIO, Ceph, R2, ...): `http://minio:9000`. Unset: AWS S3.
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    # How long one call keeps retrying while the store cannot be reached or answers with a
    # server error (a restart, a failover) before it fails, and with it the step's attempt.
    retry_for_seconds: float = Field(default=120.0, gt=0, le=300)


class Settings(BaseSettings):
    """All of Maestro's settings; nested groups use `__`, e.g. `MAESTRO_TEMPORAL__ADDRESS`."""

    model_config = SettingsConfigDict(env_prefix="MAESTRO_", env_nested_delimiter="__")

    # Unset means: use the embedded PostgreSQL server under `data_dir`.
    database_url: str | None = None
    # PostgreSQL connections the API and each worker keep open, and how many more they may
    # open for a burst (closed again when returned).
    database_pool_size: int = Field(default=POOL_SIZE, ge=1)
    database_max_overflow: int = Field(default=MAX_OVERFLOW, ge=0)
    data_dir: Path = Path(".maestro")
    # Where artifacts and code packages are kept, shared by the API and every worker:
    # `file:///path` (a directory; workers on several machines need it on shared storage) or
    # `s3://bucket/prefix` (any S3-compatible object store, see `s3`). Unset: the directory
    # `artifacts` under `data_dir`.
    artifact_store: str | None = None
    # Where a worker keeps its local copies of objects from an `s3://` store (models,
    # checkpoints, code packages). Unset: `artifact-cache` under `data_dir`.
    artifact_cache_dir: Path | None = None
    s3: S3Settings = Field(default_factory=S3Settings)
    embedded_postgres_port: int = 55432
    temporal: TemporalSettings = Field(default_factory=TemporalSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    outbound: OutboundSettings = Field(default_factory=OutboundSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    log_level: str = "INFO"
    # The key that encrypts secrets at rest (a Fernet key: 32 bytes, URL-safe base64; several
    # separated by commas while rotating it: the first encrypts, all decrypt). Unset: read from
    # `secrets_key_file`.
    secrets_key: SecretStr | None = None
    # Unset: `<data_dir>/secrets-key`, which `maestro up` creates (mode 0600) on first start.
    secrets_key_file: Path | None = None

    @field_validator("artifact_store")
    @classmethod
    def _known_store(cls, url: str | None) -> str | None:
        if url is None:
            return None
        scheme, sep, rest = url.partition("://")
        if not sep or scheme not in ("file", "s3"):
            raise ValueError("an artifact store URL is file:///path or s3://bucket/prefix")
        if scheme == "s3" and not rest.split("/", 1)[0]:
            raise ValueError("an s3:// artifact store URL names a bucket: s3://bucket/prefix")
        if scheme == "file" and not rest.startswith("/"):
            raise ValueError("a file:// artifact store URL has an absolute path: file:///path")
        return url

    @property
    def artifact_store_url(self) -> str:
        """The artifact store's URL, the default (`<data_dir>/artifacts`) filled in."""
        return self.artifact_store or (self.data_dir.resolve() / "artifacts").as_uri()

    @property
    def artifact_cache_path(self) -> Path:
        """Where local copies of an object store's artifacts are kept."""
        return (self.artifact_cache_dir or self.data_dir / "artifact-cache").resolve()

    @property
    def secrets_key_path(self) -> Path:
        """Where the secrets key is read from when MAESTRO_SECRETS_KEY is unset."""
        return self.secrets_key_file or self.data_dir / "secrets-key"

    def require_database_url(self) -> str:
        """The database URL, or an error if none is configured and embedded is not running."""
        if not self.database_url:
            from maestro.errors import ConfigurationError

            raise ConfigurationError(
                "MAESTRO_DATABASE_URL is not set; start the stack with `maestro up` "
                "or point MAESTRO_DATABASE_URL at PostgreSQL"
            )
        return self.database_url
