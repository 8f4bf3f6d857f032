"""The database tables (typed SQLAlchemy models); Alembic migrations own the schema."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSONB, datetime: DateTime(timezone=True)}


class Workflow(Base):
    """A workflow id, its active version and its run counter."""

    __tablename__ = "workflows"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200), default="")
    # `prod`, or the branch a `<definition id>@<branch>` id was pushed to (maestro.branches).
    branch: Mapped[str] = mapped_column(String(64), default="prod", server_default="prod")
    # A branch's time triggers are held unless it was pushed `with_schedules`.
    schedules_paused: Mapped[bool] = mapped_column(default=False, server_default=text("false"))
    active_version: Mapped[int | None] = mapped_column(Integer)
    latest_version: Mapped[int] = mapped_column(Integer, default=0)
    is_active: Mapped[bool] = mapped_column(default=True)
    # Every trigger (time and signal) held; manual starts still work.
    paused: Mapped[bool] = mapped_column(default=False, server_default=text("false"))
    # strict_sequential: the failed run that holds the queue until unblocked or restarted.
    blocked_by_run_id: Mapped[str | None] = mapped_column(String(64))
    run_counter: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())

    __table_args__ = (Index("ix_workflows_branch", "branch", "id"),)


class DeletedWorkflow(Base):
    """What a deleted workflow's id had used: a workflow created again under that id carries on
    from here, so (workflow, version) and Temporal's `<workflow>-run-<n>` ids never repeat."""

    __tablename__ = "deleted_workflows"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    latest_version: Mapped[int] = mapped_column(Integer)
    run_counter: Mapped[int] = mapped_column(BigInteger)
    deleted_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())


class WorkflowVersion(Base):
    """One immutable version of a workflow definition."""

    __tablename__ = "workflow_versions"

    workflow_id: Mapped[str] = mapped_column(ForeignKey("workflows.id"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    definition: Mapped[dict[str, Any]]
    # The definition's hash, combined with the code package's when it has one.
    content_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    # The code package its steps run (`maestro deploy`), or None: code installed on workers.
    code_sha256: Mapped[str | None] = mapped_column(ForeignKey("code_packages.sha256"))
    code_uri: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (UniqueConstraint("workflow_id", "content_hash"),)


class CodePackage(Base):
    """A code package in the artifact store (content-addressed: its name is its SHA-256)."""

    __tablename__ = "code_packages"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    uri: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger)
    files: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime | None] = mapped_column(server_default=func.now())


class WorkerEnvironment(Base):
    """What a worker process serves and has installed, refreshed while it runs; `maestro
    deploy` checks a flow's requirements against it."""

    __tablename__ = "worker_environments"

    host: Mapped[str] = mapped_column(String(255), primary_key=True)
    # The sorted task queues joined by newlines: one row per host and set of queues.
    queues_key: Mapped[str] = mapped_column(Text, primary_key=True)
    task_queues: Mapped[list[str]] = mapped_column(ARRAY(String(200)))
    distributions: Mapped[dict[str, Any]] = mapped_column(JSONB)
    markers: Mapped[dict[str, Any]] = mapped_column(JSONB)
    seen_at: Mapped[datetime] = mapped_column(server_default=func.now())


class Run(Base):
    """One execution of one workflow version."""

    __tablename__ = "runs"

    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    workflow_id: Mapped[str] = mapped_column(ForeignKey("workflows.id"))
    version: Mapped[int] = mapped_column(Integer)
    run_number: Mapped[int] = mapped_column(BigInteger)
    request_id: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(32))
    params: Mapped[dict[str, Any]]
    cause: Mapped[dict[str, Any]]
    outputs: Mapped[dict[str, Any] | None]
    error: Mapped[str | None] = mapped_column(Text)
    temporal_workflow_id: Mapped[str] = mapped_column(String(300))
    temporal_run_id: Mapped[str | None] = mapped_column(String(64))
    # Set when the run may start on Temporal; until then it waits its turn (run strategy).
    admitted_at: Mapped[datetime | None]
    # Set when something (last_only, a workflow stop) asked this run to stop.
    stop_requested_at: Mapped[datetime | None]
    # The trigger that started it (time or signal), for "last fire" and per-trigger lookups.
    trigger_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    started_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]

    __table_args__ = (
        ForeignKeyConstraint(
            ["workflow_id", "version"],
            ["workflow_versions.workflow_id", "workflow_versions.version"],
        ),
        UniqueConstraint("workflow_id", "run_number"),
        UniqueConstraint("workflow_id", "request_id"),
        UniqueConstraint("temporal_workflow_id"),
        # Each runs list filter has an index that ends in its order (created_at, run_id).
        Index("ix_runs_workflow_status_created", "workflow_id", "status", "created_at", "run_id"),
        Index("ix_runs_status_created", "status", "created_at", "run_id"),
        Index("ix_runs_workflow_trigger", "workflow_id", "trigger_id", "created_at"),
        Index("ix_runs_workflow_created", "workflow_id", "created_at", "run_id"),
        Index("ix_runs_created", "created_at", "run_id"),
        # Retention keeps a run while a restart of it is kept.
        Index(
            "ix_runs_restart_of",
            text("((cause -> 'detail') ->> 'restart_of')"),
            postgresql_where=text("cause ->> 'kind' = 'restart'"),
        ),
        # Run strategies' decisions (maestro.strategies): the runs holding a slot, and the
        # runs waiting for one in arrival order.
        Index(
            "ix_runs_holding",
            "workflow_id",
            postgresql_where=text(
                "status = 'running' OR (status = 'queued' AND admitted_at IS NOT NULL)"
            ),
        ),
        Index(
            "ix_runs_waiting",
            "workflow_id",
            "run_number",
            postgresql_where=text("status = 'queued' AND admitted_at IS NULL"),
        ),
        # The sweeper's work list: admitted runs that never reached Temporal.
        Index(
            "ix_runs_unlaunched",
            "created_at",
            postgresql_where=text("temporal_run_id IS NULL AND admitted_at IS NOT NULL"),
        ),
        # The runs a subworkflow step started, by their parent run (lineage, stop cascade).
        Index(
            "ix_runs_parent_run",
            text("(cause -> 'detail' ->> 'parent_run_id')"),
            postgresql_where=text("cause ->> 'kind' = 'subworkflow'"),
        ),
    )


class StepRun(Base):
    """The state of one step of one run (the latest attempt)."""

    __tablename__ = "step_runs"

    run_id: Mapped[str] = mapped_column(
        ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True
    )
    step_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(32))
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    outputs: Mapped[dict[str, Any] | None]
    error: Mapped[str | None] = mapped_column(Text)
    details: Mapped[dict[str, Any] | None]


class SignalName(Base):
    """One row per signal name: its sequence counter, and the lock that orders its signals."""

    __tablename__ = "signal_names"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    # Set (under this row's lock) when a step registers a wait on the name; cleared by a
    # publish that finds no open wait. While false, publishing skips the waits lookup.
    has_waits: Mapped[bool] = mapped_column(default=False, server_default=text("false"))


class Signal(Base):
    """A published signal; kept for good (the log is the lineage)."""

    __tablename__ = "signals"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    seq: Mapped[int] = mapped_column(BigInteger)
    params: Mapped[dict[str, Any]]
    payload: Mapped[dict[str, Any] | None]
    dedupe_key: Mapped[str] = mapped_column(String(300))
    request_id: Mapped[str | None] = mapped_column(String(200))
    producer: Mapped[dict[str, Any]]
    producer_run_id: Mapped[str | None] = mapped_column(String(64))
    # Whose signal it is, for owner-limited keys: the owners of the publishing key (none for
    # an unlimited key), or, for a signal a run or step produced (left NULL by the insert),
    # the producing workflow's owner, filled by the database trigger
    # `signals_producer_owners` (migration 0010) so that no publishing path pays a query.
    producer_owners: Mapped[list[str] | None] = mapped_column(ARRAY(String(200)))
    # The branch of the workflow whose run or step published it (or that the API was told);
    # NULL for an outside signal, which reaches every branch.
    branch: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        UniqueConstraint("dedupe_key"),
        UniqueConstraint("name", "seq"),
        Index("ix_signals_name_id", "name", "id"),
        Index("ix_signals_producer_run_id", "producer_run_id"),
        # `since` filters: a few bytes per 128 pages, as signals arrive in time order.
        Index("ix_signals_created_at", "created_at", postgresql_using="brin"),
        # An owner-limited key's signals.
        Index("ix_signals_producer_owners", "producer_owners", postgresql_using="gin"),
        Index(
            "ix_signals_params",
            "params",
            postgresql_using="gin",
            postgresql_ops={"params": "jsonb_path_ops"},
        ),
    )


class SignalTriggerRow(Base):
    """A signal trigger of a workflow's active version, indexed by the names it listens to
    (for the trigger-loop check) and by its routes (for publishing)."""

    __tablename__ = "signal_triggers"

    workflow_id: Mapped[str] = mapped_column(ForeignKey("workflows.id"), primary_key=True)
    trigger_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    position: Mapped[int] = mapped_column(Integer)
    names: Mapped[list[str]] = mapped_column(ARRAY(String(200)))
    # What publishing looks triggers up by: `maestro.triggers.condition_route`, per condition.
    routes: Mapped[list[str]] = mapped_column(ARRAY(Text))
    spec: Mapped[dict[str, Any]]
    active: Mapped[bool] = mapped_column(default=True)

    __table_args__ = (
        Index("ix_signal_triggers_names", "names", postgresql_using="gin"),
        Index("ix_signal_triggers_routes", "routes", postgresql_using="gin"),
    )


class TriggerJoin(Base):
    """A partially satisfied multi-signal trigger: the signals so far, per join key."""

    __tablename__ = "trigger_joins"

    workflow_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    trigger_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    join_key: Mapped[str] = mapped_column(String(1000), primary_key=True)
    slots: Mapped[dict[str, Any]]
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        ForeignKeyConstraint(
            ["workflow_id", "trigger_id"],
            ["signal_triggers.workflow_id", "signal_triggers.trigger_id"],
            ondelete="CASCADE",
        ),
    )


class SignalMatch(Base):
    """What a signal did to one trigger: the run it started, or why it did not."""

    __tablename__ = "signal_matches"

    signal_id: Mapped[int] = mapped_column(ForeignKey("signals.id"), primary_key=True)
    workflow_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    trigger_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    outcome: Mapped[str] = mapped_column(String(32))
    run_id: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (Index("ix_signal_matches_run_id", "run_id"),)


class SignalWait(Base):
    """A step waiting for a signal (`wait_for`), and the signal that released it."""

    __tablename__ = "signal_waits"

    run_id: Mapped[str] = mapped_column(
        ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True
    )
    step_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    where: Mapped[dict[str, Any]]
    temporal_workflow_id: Mapped[str] = mapped_column(String(300))
    # The waiting run's branch: outside signals and that branch's release it.
    branch: Mapped[str] = mapped_column(String(64), default="prod", server_default="prod")
    matched_signal_id: Mapped[int | None] = mapped_column(BigInteger)
    delivered_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        Index("ix_signal_waits_open", "name", postgresql_where=text("matched_signal_id IS NULL")),
        Index(
            "ix_signal_waits_undelivered",
            "created_at",
            postgresql_where=text("matched_signal_id IS NOT NULL AND delivered_at IS NULL"),
        ),
        # Retention keeps the signals steps' waits matched.
        Index(
            "ix_signal_waits_matched_signal_id",
            "matched_signal_id",
            postgresql_where=text("matched_signal_id IS NOT NULL"),
        ),
    )


class Artifact(Base):
    """A stored file or directory a step produced: where it is, how big, its content hash."""

    __tablename__ = "artifacts"

    uri: Mapped[str] = mapped_column(String(1000), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    run_id: Mapped[str] = mapped_column(String(64))
    step_id: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (Index("ix_artifacts_run_id", "run_id"),)


class Model(Base):
    """A registered model name."""

    __tablename__ = "models"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    # The owner of the workflow whose run registered the first version; only its keys (and
    # unlimited ones) read and promote the model, only its runs add versions.
    owner: Mapped[str] = mapped_column(String(200), default="", server_default="")
    latest_version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class ModelVersion(Base):
    """One trained model: its artifact, metrics, params, the run that made it, its stage."""

    __tablename__ = "model_versions"

    model_name: Mapped[str] = mapped_column(ForeignKey("models.name"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    artifact_uri: Mapped[str] = mapped_column(String(1000))
    metrics: Mapped[dict[str, Any]]
    params: Mapped[dict[str, Any]]
    data_ref: Mapped[str | None] = mapped_column(String(1000))
    run_id: Mapped[str] = mapped_column(String(64))
    step_id: Mapped[str] = mapped_column(String(64))
    # The branch of the run that registered it; only `prod` versions reach `production`.
    branch: Mapped[str] = mapped_column(String(64), default="prod", server_default="prod")
    stage: Mapped[str] = mapped_column(String(32), default="none")
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        UniqueConstraint("run_id", "step_id"),  # one version per training step of a run
        Index("ix_model_versions_stage", "model_name", "stage"),
    )


class StageChange(Base):
    """History of stage changes: who moved which version where, replacing which."""

    __tablename__ = "model_stage_changes"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(Integer)
    stage: Mapped[str] = mapped_column(String(32))
    previous_version: Mapped[int | None] = mapped_column(Integer)
    run_id: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(200), default="")
    # Makes a retried deploy step find its earlier change instead of making another.
    request_key: Mapped[str | None] = mapped_column(String(300))
    changed_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        Index("ix_model_stage_changes_model", "model_name", "id"),
        UniqueConstraint("request_key"),
    )


class ApiKey(Base):
    """An API key: only its hash is kept; scopes and, optionally, the owners it may act for."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    key_hash: Mapped[str] = mapped_column(String(64))
    prefix: Mapped[str] = mapped_column(String(16))
    scopes: Mapped[list[str]] = mapped_column(ARRAY(String(16)))
    owners: Mapped[list[str]] = mapped_column(ARRAY(String(200)))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    revoked_at: Mapped[datetime | None]

    __table_args__ = (UniqueConstraint("key_hash"),)


class ConsoleSession(Base):
    """A web console sign-in: only its token's hash is kept, with the API key it stands for
    (a revoked key ends its sessions at once)."""

    __tablename__ = "console_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    expires_at: Mapped[datetime]

    __table_args__ = (Index("ix_console_sessions_expires_at", "expires_at"),)


class Secret(Base):
    """A named secret of one owner: only its value encrypted with the operator's key is kept."""

    __tablename__ = "secrets"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200))
    # A Fernet token over the name, owner and value (maestro.secrets.SecretBox).
    ciphertext: Mapped[str] = mapped_column(Text)
    # 1 when created, +1 on each new value (rotation).
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (Index("ix_secrets_owner", "owner", "name"),)


class AuditEntry(Base):
    """One mutating API request: who (key), what (method, path, target ids), when, result."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    at: Mapped[datetime]
    key_id: Mapped[str | None] = mapped_column(String(64))
    key_name: Mapped[str | None] = mapped_column(String(200))
    owners: Mapped[list[str]] = mapped_column(ARRAY(String(200)))
    method: Mapped[str] = mapped_column(String(10))
    path: Mapped[str] = mapped_column(String(2000))
    # The path's parameters (workflow_id, run_id, key_id, model_name, ...).
    targets: Mapped[dict[str, Any]]
    status: Mapped[int] = mapped_column(Integer)
    duration_ms: Mapped[float]

    __table_args__ = (Index("ix_audit_log_key_id", "key_id", "id"),)


class Iteration(Base):
    """One iteration of a composite step (foreach, while) of a run. `step_path` names the step
    inside the run: `sweep`, or `outer[3].inner` for a foreach nested in iteration 3 of
    `outer`."""

    __tablename__ = "iterations"

    run_id: Mapped[str] = mapped_column(
        ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True
    )
    step_path: Mapped[str] = mapped_column(String(300), primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[str] = mapped_column(String(32))
    # The item (foreach), or the previous iteration's outputs (while).
    params: Mapped[dict[str, Any] | None] = mapped_column(JSONB(none_as_null=True))
    # The body steps' outputs by step id, merged as each succeeds.
    outputs: Mapped[dict[str, Any] | None]
    # The body steps' states by step id: {"status", "attempt", "error"}.
    steps: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    # The workflow execution that carries it (where a skip is signalled), once it is loaded.
    temporal_workflow_id: Mapped[str | None] = mapped_column(String(1000))
    skip_requested: Mapped[bool] = mapped_column(default=False, server_default=text("false"))

    __table_args__ = (Index("ix_iterations_status", "run_id", "step_path", "status"),)


class Webhook(Base):
    """An owner's subscription: events of its workflows (optionally some of them) are POSTed
    to `url`, signed with its secret (stored sealed by the secrets key)."""

    __tablename__ = "webhooks"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200))
    url: Mapped[str] = mapped_column(String(2000))
    events: Mapped[list[str]] = mapped_column(ARRAY(String(64)))
    # None: every workflow of the owner.
    workflow_ids: Mapped[list[str] | None] = mapped_column(ARRAY(String(128)))
    format: Mapped[str] = mapped_column(String(16))
    description: Mapped[str] = mapped_column(String(500), default="", server_default="")
    secret: Mapped[str] = mapped_column(Text)
    # After a rotation: the former secret, which also signs deliveries until then.
    previous_secret: Mapped[str | None] = mapped_column(Text)
    previous_secret_until: Mapped[datetime | None]
    # A dispatcher delivering this webhook's queue holds it until then.
    lease_until: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (Index("ix_webhooks_owner", "owner"),)


class OutboxEvent(Base):
    """An event recorded in the transaction that caused it (see `maestro_emit_event`)."""

    __tablename__ = "outbox_events"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    # What makes the event unique (`run.failed:<run_id>`); `event_id` is derived from it.
    event_key: Mapped[str] = mapped_column(String(400))
    event_id: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(64))
    owner: Mapped[str] = mapped_column(String(200))
    workflow_id: Mapped[str | None] = mapped_column(String(128))
    data: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (UniqueConstraint("event_key"),)


class WebhookDelivery(Base):
    """One event for one webhook: `pending` until delivered, or `dead` after retrying."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    webhook_id: Mapped[str] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    event_id: Mapped[int] = mapped_column(ForeignKey("outbox_events.id"))
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_attempt_at: Mapped[datetime]
    redelivery_of: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    ended_at: Mapped[datetime | None]

    __table_args__ = (
        Index(
            "ix_webhook_deliveries_pending",
            "webhook_id",
            "id",
            postgresql_where=text("status = 'pending'"),
        ),
        Index("ix_webhook_deliveries_webhook", "webhook_id", "id"),
    )


class WebhookAttempt(Base):
    """One HTTP attempt of a delivery: the answer's status code, latency, or the error."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    delivery_id: Mapped[int] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE")
    )
    attempt: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime]
    status_code: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[float]
    error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_webhook_attempts_delivery", "delivery_id", "id"),)


class RunSla(Base):
    """A run's deadline (its workflow's or trigger's `sla`), when it was found missed, and for a
    run that ended in time, by how much."""

    __tablename__ = "run_slas"

    run_id: Mapped[str] = mapped_column(
        ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True
    )
    workflow_id: Mapped[str] = mapped_column(String(128))
    deadline: Mapped[datetime]
    missed_at: Mapped[datetime | None]
    # Deadline minus end (positive: in time), written by the run's end.
    margin_seconds: Mapped[float | None]
