"""Static checks of the production-shaped stack: docker-compose.yml, the Dockerfile and
.dockerignore against the settings model, the CLI and the API (no Docker needed)."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from pydantic import BaseModel, ValidationError
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from api.app import create_app
from maestro.artifacts import ObjectArtifactStore, open_store
from maestro.cli import app as cli_app
from maestro.db.engine import async_url
from maestro.embedded import DYNAMIC_CONFIG_FILE, temporal_dev_server_command
from maestro.secrets import SecretBox
from maestro.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
MAESTRO_SERVICES = ("migrate", "api", "worker", "dispatcher")

# Compose interpolation: `$$` escapes a dollar; `${NAME}`, `${NAME:-default}`, `${NAME-default}`,
# `${NAME:?error}`, `${NAME?error}`, `${NAME:+alt}`, `${NAME+alt}` and bare `$NAME`.
_INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)
_BRACED = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>.*))?", re.S)


class UnsetVariable(Exception):
    """The compose file uses a variable that has no value and no default."""


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """`value` (parsed YAML) with variables substituted as `docker compose` does."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        if match["named"]:
            name, op, arg = match["named"], None, ""
        else:
            braced = _BRACED.fullmatch(match["braced"])
            assert braced, f"bad interpolation {match[0]!r}"
            name, op, arg = braced["name"], braced["op"], braced["arg"] or ""
        current = env.get(name)
        is_set = current is not None and (current != "" or not (op or "").startswith(":"))
        if op in ("-", ":-"):
            return current if is_set else arg
        if op in ("+", ":+"):
            return arg if is_set else ""
        if not is_set:
            raise UnsetVariable(f"{match[0]}: {arg}" if arg else match[0])
        return current

    return _INTERPOLATION.sub(substitute, value)


def load_compose(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    return interpolate(raw, env or {})


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The compose file as `docker compose` sees it with no `.env` and nothing exported."""
    return load_compose()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No MAESTRO_* variable from the test process leaks into `Settings()`."""
    for name in list(os.environ):
        if name.upper().startswith("MAESTRO_"):
            monkeypatch.delenv(name)
    return monkeypatch


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's `environment`, in map or list form, as strings."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def settings_for(service: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name, value in environment(service).items():
        monkeypatch.setenv(name, value)
    return Settings()


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    """Dependency name -> condition (the list form means `service_started`)."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def ports(service: dict[str, Any]) -> list[tuple[str | None, int | None, int]]:
    """(host ip, published port, container port) for each `ports` entry."""
    result = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            published = entry.get("published")
            result.append(
                (entry.get("host_ip"), int(published) if published else None, int(entry["target"]))
            )
            continue
        parts = str(entry).split("/")[0].split(":")
        published = int(parts[-2]) if len(parts) >= 2 else None
        result.append((parts[-3] if len(parts) == 3 else None, published, int(parts[-1])))
    return result


def mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """Container path -> (source, read-only) for each `volumes` entry, short or long form."""
    result = {}
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            result[entry["target"]] = (entry.get("source", ""), bool(entry.get("read_only")))
            continue
        source, target, *mode = str(entry).split(":")
        result[target] = (source, "ro" in ",".join(mode).split(","))
    return result


def healthcheck_command(service: dict[str, Any]) -> list[str]:
    check = service.get("healthcheck") or {}
    test = check.get("test")
    assert test and not check.get("disable"), "no healthcheck"
    if isinstance(test, str):
        return ["CMD-SHELL", test]
    assert test[0] in ("CMD", "CMD-SHELL"), test
    return [str(part) for part in test]


def settings_env_names(
    model: type[BaseModel] = Settings, prefix: str | None = None, delimiter: str | None = None
) -> set[str]:
    """Every leaf environment variable the settings model reads, e.g. MAESTRO_API__PORT."""
    prefix = Settings.model_config["env_prefix"] if prefix is None else prefix
    delimiter = delimiter or Settings.model_config["env_nested_delimiter"]
    names: set[str] = set()
    for name, field in model.model_fields.items():
        env_name = prefix + (field.alias or name).upper()
        nested = [
            candidate
            for candidate in (field.annotation, *typing.get_args(field.annotation))
            if isinstance(candidate, type) and issubclass(candidate, BaseModel)
        ]
        if nested:
            for group in nested:
                names |= settings_env_names(group, env_name + delimiter, delimiter)
        else:
            names.add(env_name)
    return names


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def dockerfile_values(keyword: str) -> list[str]:
    return [arguments for name, arguments in dockerfile_instructions() if name == keyword]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for arguments in dockerfile_values("ENV"):
        for pair in shlex.split(arguments):
            name, _, value = pair.partition("=")
            env[name] = value
    return env


def exec_form(keyword: str) -> list[str]:
    (arguments,) = dockerfile_values(keyword)
    value = json.loads(arguments)
    assert isinstance(value, list), f"{keyword} is not in exec form"
    return value


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


# --- services and images -----------------------------------------------------------------


def test_the_stack_has_its_services(compose):
    assert set(compose["services"]) >= {
        "postgres",
        "temporal",
        "temporal-ui",
        "minio",
        "minio-setup",
        "migrate",
        "api",
        "worker",
        "dispatcher",
    }


def test_every_variable_has_a_default_so_the_file_works_without_an_env_file():
    load_compose()  # raises UnsetVariable otherwise
    with pytest.raises(UnsetVariable):
        interpolate("${SURELY_UNSET}", {})


def test_every_service_has_an_image_or_a_build(compose):
    for name, service in compose["services"].items():
        assert service.get("image") or service.get("build"), name


def test_third_party_images_are_pinned(compose):
    expected = {
        "postgres": "postgres:16",
        "temporal": "temporalio/auto-setup:",
        "temporal-ui": "temporalio/ui:",
        "minio": "minio/minio:RELEASE.",
        "minio-setup": "minio/minio:RELEASE.",
    }
    for name, prefix in expected.items():
        image = compose["services"][name]["image"]
        assert image.startswith(prefix), (name, image)
        assert ":" in image and not image.endswith(":latest"), (name, image)


def test_maestro_services_build_the_one_dockerfile(compose):
    services = compose["services"]
    images = set()
    for name in MAESTRO_SERVICES:
        build = services[name]["build"]
        if isinstance(build, str):
            build = {"context": build}
        context = (ROOT / build.get("context", ".")).resolve()
        assert context == ROOT, name
        assert (context / build.get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE, name
        images.add(services[name]["image"])
    assert len(images) == 1, images
    assert DOCKERFILE.is_file()


def test_maestro_services_run_real_cli_commands(compose):
    runner = CliRunner()
    commands = [compose["services"][name]["command"] for name in MAESTRO_SERVICES]
    assert commands == [["db", "upgrade"], ["api"], ["worker"], ["dispatcher"]]
    for command in [*commands, exec_form("CMD")]:
        result = runner.invoke(cli_app, [*command, "--help"])
        assert result.exit_code == 0, (command, result.output)
    # The check can fail: an unknown command is refused.
    assert runner.invoke(cli_app, ["no-such-command", "--help"]).exit_code != 0


# --- configuration -----------------------------------------------------------------------


def test_settings_env_names_walks_nested_groups():
    names = settings_env_names()
    assert {
        "MAESTRO_DATABASE_URL",
        "MAESTRO_TEMPORAL__ADDRESS",
        "MAESTRO_API__PORT",
        "MAESTRO_WORKER__TASK_QUEUES",
    } <= names
    assert "MAESTRO_TEMPORAL" not in names
    assert "MAESTRO_ADDRESS" not in names


def test_every_maestro_variable_in_the_stack_is_a_setting(compose):
    known = settings_env_names()
    in_services = {
        name
        for service in compose["services"].values()
        for name in environment(service)
        if name.upper().startswith("MAESTRO_")
    }
    assert {"MAESTRO_DATABASE_URL", "MAESTRO_TEMPORAL__ADDRESS"} <= in_services
    assert in_services <= known, sorted(in_services - known)
    # Anywhere in the files too: anchors, interpolation, comments, the Dockerfile.
    text = COMPOSE_FILE.read_text() + DOCKERFILE.read_text()
    mentioned = set(re.findall(r"\bMAESTRO_[A-Z0-9_]*[A-Z0-9]", text))
    assert mentioned <= known, sorted(mentioned - known)


def test_maestro_services_share_the_anchor_environment(compose):
    shared = compose["x-maestro-env"]
    assert "MAESTRO_DATABASE_URL" in shared
    for name in MAESTRO_SERVICES:
        env = environment(compose["services"][name])
        assert {key: env.get(key) for key in shared} == {k: str(v) for k, v in shared.items()}


def test_api_environment_builds_the_expected_settings(compose, clean_env):
    services = compose["services"]
    settings = settings_for(services["api"], clean_env)
    assert settings.database_url == "postgresql://maestro:maestro@postgres:5432/maestro"
    assert settings.temporal.address == "temporal:7233"
    assert settings.temporal.namespace == "default"
    assert settings.temporal.task_queue == "maestro"
    assert settings.temporal.register_search_attributes is True
    assert settings.api.host == "0.0.0.0"
    assert settings.api.port == 8000
    assert str(settings.data_dir) == dockerfile_env()["MAESTRO_DATA_DIR"]


def test_database_url_points_at_the_postgres_service(compose, clean_env):
    env = {"POSTGRES_USER": "ops", "POSTGRES_PASSWORD": "s3cret", "POSTGRES_DB": "jobs"}
    services = load_compose(env)["services"]
    url = make_url(async_url(settings_for(services["api"], clean_env).require_database_url()))
    postgres = environment(services["postgres"])
    assert url.drivername == "postgresql+asyncpg"
    assert url.host in services and services[url.host]["image"].startswith("postgres:")
    assert url.port == 5432
    assert (url.username, url.password, url.database) == ("ops", "s3cret", "jobs")
    assert (url.username, url.password, url.database) == (
        postgres["POSTGRES_USER"],
        postgres["POSTGRES_PASSWORD"],
        postgres["POSTGRES_DB"],
    )


def test_temporal_runs_on_the_same_postgres(compose, clean_env):
    services = compose["services"]
    temporal = environment(services["temporal"])
    postgres = environment(services["postgres"])
    assert temporal["DB"] == "postgres12"
    assert temporal["DB_PORT"] == "5432"
    assert temporal["POSTGRES_SEEDS"] == "postgres" and "postgres" in services
    assert temporal["POSTGRES_USER"] == postgres["POSTGRES_USER"]
    assert temporal["POSTGRES_PWD"] == postgres["POSTGRES_PASSWORD"]
    settings = settings_for(services["api"], clean_env)
    host, _, port = settings.temporal.address.rpartition(":")
    assert services[host]["image"].startswith("temporalio/auto-setup:")
    assert port == "7233"
    assert temporal["DEFAULT_NAMESPACE"] == settings.temporal.namespace
    assert environment(services["temporal-ui"])["TEMPORAL_ADDRESS"] == settings.temporal.address


def test_temporal_gets_the_dynamic_config_maestro_up_uses(compose, clean_env, tmp_path):
    """The server in the stack reads the same settings file `maestro up` passes to its dev
    server (the scheduler's start rate), mounted where DYNAMIC_CONFIG_FILE_PATH points."""
    temporal = compose["services"]["temporal"]
    path = environment(temporal)["DYNAMIC_CONFIG_FILE_PATH"]
    source, read_only = mounts(temporal)[str(Path("/etc/temporal") / path)]
    assert read_only
    assert (ROOT / source).resolve() == DYNAMIC_CONFIG_FILE
    rate = yaml.safe_load(DYNAMIC_CONFIG_FILE.read_text())[
        "worker.schedulerNamespaceStartWorkflowRPS"
    ][0]["value"]
    assert rate >= 1000
    command = temporal_dev_server_command(tmp_path, port=1, ui_port=None)
    assert f"worker.schedulerNamespaceStartWorkflowRPS={rate}" in command


def test_dev_server_keeps_the_search_attribute_cache(tmp_path):
    """Without the key, the dev server reads the cluster metadata on every start and
    visibility write that carries search attributes; production servers cache it."""
    command = temporal_dev_server_command(tmp_path, port=1, ui_port=None)
    assert "system.forceSearchAttributesCacheRefreshOnRead=false" in command
    # Maestro's attributes are on the command line: known before the first cached read.
    assert "MaestroWorkflowId=Keyword" in command


def test_dev_server_keeps_a_write_ahead_log_synced_as_configured(clean_env, tmp_path):
    """`maestro up`'s dev server writes SQLite's write-ahead log, synced at checkpoints
    (`normal`) unless MAESTRO_TEMPORAL__DEV_SERVER_SYNC says otherwise: `full` is SQLite's
    rollback journal with every commit synced (the former default), `off` never syncs; the
    older boolean values still mean `full` (`true`) and `off` (`false`)."""

    def pragmas(command: list[str]) -> list[str]:
        return [command[i + 1] for i, arg in enumerate(command) if arg == "--sqlite-pragma"]

    assert Settings().temporal.dev_server_sync == "normal"
    command = temporal_dev_server_command(tmp_path, port=1, ui_port=None)
    assert pragmas(command) == ["journal_mode=WAL", "synchronous=normal"]
    for value, expected in [("false", "off"), ("true", "full"), ("FULL", "full"), ("off", "off")]:
        clean_env.setenv("MAESTRO_TEMPORAL__DEV_SERVER_SYNC", value)
        settings = Settings()
        command = temporal_dev_server_command(
            tmp_path, port=1, ui_port=None, sync=settings.temporal.dev_server_sync
        )
        journal = "DELETE" if expected == "full" else "WAL"
        assert pragmas(command) == [f"journal_mode={journal}", f"synchronous={expected}"], value
    clean_env.setenv("MAESTRO_TEMPORAL__DEV_SERVER_SYNC", "sometimes")
    with pytest.raises(ValidationError, match="dev_server_sync"):
        Settings()


def test_worker_environment_builds_valid_settings(compose, clean_env):
    settings = settings_for(compose["services"]["worker"], clean_env)
    assert settings.temporal.task_queue == "maestro"
    assert settings.worker.task_queues == []
    clean_env.setenv("MAESTRO_WORKER__TASK_QUEUES", '["gpu"]')
    assert Settings().worker.task_queues == ["gpu"]


def test_webhooks_are_delivered_by_the_dispatcher_not_the_workers(compose, clean_env):
    services = compose["services"]
    assert environment(services["worker"])["MAESTRO_WEBHOOKS__DISPATCH"] == "false"
    dispatcher = settings_for(services["dispatcher"], clean_env)
    assert dispatcher.webhooks.dispatch, "the dispatcher keeps the default"
    assert SecretBox.from_settings(dispatcher) is not None, "it has a key to sign with"
    assert depends_on(compose["services"]["dispatcher"]) == {
        "migrate": "service_completed_successfully"
    }
    assert not ports(compose["services"]["dispatcher"])


def test_migrate_environment_has_the_database(compose, clean_env):
    settings = settings_for(compose["services"]["migrate"], clean_env)
    assert settings.require_database_url().startswith("postgresql://")


# --- health, order, ports ----------------------------------------------------------------


def test_postgres_temporal_and_api_have_healthchecks(compose):
    services = compose["services"]
    assert "pg_isready" in " ".join(healthcheck_command(services["postgres"]))
    temporal = " ".join(healthcheck_command(services["temporal"]))
    assert "cluster health" in temporal and "temporal:7233" in temporal


def test_api_healthcheck_requests_a_real_route(compose, clean_env):
    api = compose["services"]["api"]
    command = healthcheck_command(api)
    assert command[:3] == ["CMD", "python", "-c"], command
    compile(command[3], "<healthcheck>", "exec")
    assert "urllib" in command[3]
    url = re.search(r"http://localhost:(\d+)(/\S*?)['\"]", command[3])
    assert url, command[3]
    settings = settings_for(api, clean_env)
    assert int(url[1]) == settings.api.port
    paths = {getattr(route, "path", None) for route in create_app(settings).routes}
    assert url[2] == "/healthz" and url[2] in paths


def test_the_api_serves_the_console_with_files_that_ship_in_the_package(compose, clean_env):
    """The stack has no service of its own for the web console: the API serves /ui, with its
    templates and static files installed as package data (nothing fetched at run time)."""
    settings = settings_for(compose["services"]["api"], clean_env)
    app = create_app(settings)
    assert app.url_path_for("login_page") == "/ui/login"
    assert app.url_path_for("workflow_page", workflow_id="w") == "/ui/workflows/w"
    assert app.url_path_for("console-static", path="htmx.min.js") == "/ui/static/htmx.min.js"
    patterns = pyproject()["tool"]["setuptools"]["package-data"]["api.console"]
    console = ROOT / "api" / "console"
    for pattern in patterns:
        assert list(console.glob(pattern)), pattern
    assert (console / "static" / "htmx.min.js").stat().st_size > 10_000
    assert "/ui" in COMPOSE_FILE.read_text()  # the file says where the console is


def test_start_order(compose):
    services = compose["services"]
    assert depends_on(services["migrate"]) == {"postgres": "service_healthy"}
    assert depends_on(services["temporal"]) == {"postgres": "service_healthy"}
    for name in ("api", "worker"):
        assert depends_on(services[name]) == {
            "migrate": "service_completed_successfully",
            "temporal": "service_healthy",
            "minio-setup": "service_completed_successfully",
        }, name
    assert depends_on(services["temporal-ui"]) == {"temporal": "service_healthy"}
    assert depends_on(services["minio-setup"]) == {"minio": "service_healthy"}
    for name, service in services.items():
        for dependency, condition in depends_on(service).items():
            assert dependency in services, (name, dependency)
            if condition == "service_healthy":
                assert healthcheck_command(services[dependency]), dependency


def test_migrate_runs_once(compose):
    # A bare `no` is YAML 1.1 for false, which compose rejects; it must be the string.
    assert compose["services"]["migrate"]["restart"] == "no"
    assert "healthcheck" not in compose["services"]["migrate"]


def test_published_ports(compose, clean_env):
    services = compose["services"]
    settings = settings_for(services["api"], clean_env)
    assert (8000, settings.api.port) in {(p, t) for _, p, t in ports(services["api"])}
    assert (8233, 8080) in {(p, t) for _, p, t in ports(services["temporal-ui"])}
    assert settings.temporal.ui_url.rstrip("/").endswith(":8233")
    assert not ports(services["migrate"])
    # MinIO's S3 API and console answer this host only: Maestro reaches it inside the network.
    assert ports(services["minio"]) == [("127.0.0.1", 9000, 9000), ("127.0.0.1", 9001, 9001)]
    assert not ports(services["minio-setup"])


def test_worker_scales(compose):
    worker = compose["services"]["worker"]
    assert "container_name" not in worker
    assert not ports(worker) and "ports" not in worker
    assert "hostname" not in worker


def test_postgres_keeps_its_data_in_a_named_volume(compose):
    volumes = compose["services"]["postgres"]["volumes"]
    named = {entry.split(":")[0] for entry in volumes if isinstance(entry, str)}
    assert named & set(compose.get("volumes") or {})


def test_minio_keeps_its_data_in_a_named_volume_and_has_a_healthcheck(compose):
    minio = compose["services"]["minio"]
    source, read_only = mounts(minio)["/data"]
    assert source in (compose.get("volumes") or {}) and not read_only
    assert minio["command"][:2] == ["server", "/data"]
    assert healthcheck_command(minio) == ["CMD", "mc", "ready", "local"]
    assert compose["services"]["minio-setup"]["restart"] == "no"


@pytest.mark.parametrize(
    "env",
    [{}, {"MINIO_ROOT_USER": "ops", "MINIO_ROOT_PASSWORD": "long-s3cret", "MINIO_BUCKET": "ml"}],
)
def test_api_and_workers_keep_artifacts_in_the_minio_bucket(env, clean_env):
    """The API and every worker use one S3 artifact store: MinIO's service and port, its
    credentials, and the bucket the setup service creates; nothing is kept in a volume of
    theirs (they stay stateless)."""
    compose = load_compose(env)
    services = compose["services"]
    minio, setup = environment(services["minio"]), environment(services["minio-setup"])
    bucket = setup["MINIO_BUCKET"]
    assert bucket == env.get("MINIO_BUCKET", "maestro")
    (script,) = services["minio-setup"]["command"]
    assert services["minio-setup"]["entrypoint"] == ["/bin/sh", "-c"]
    assert 'mc alias set store http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD"' in (
        script
    )
    assert 'mc mb --ignore-existing "store/$MINIO_BUCKET"' in script
    assert (setup["MINIO_ROOT_USER"], setup["MINIO_ROOT_PASSWORD"]) == (
        minio["MINIO_ROOT_USER"],
        minio["MINIO_ROOT_PASSWORD"],
    )
    assert len(minio["MINIO_ROOT_PASSWORD"]) >= 8, "MinIO refuses shorter passwords"
    assert re.search(r"open_store\(settings\)", (ROOT / "workers" / "main.py").read_text())
    for name in ("api", "worker"):
        settings = settings_for(services[name], clean_env)
        store = open_store(settings)
        assert isinstance(store, ObjectArtifactStore), name
        assert (store.bucket, store.prefix) == (bucket, "artifacts")
        endpoint = urlparse(settings.s3.endpoint_url)
        assert endpoint.hostname in services and endpoint.port == 9000, name
        assert services[endpoint.hostname]["image"].startswith("minio/minio:")
        assert settings.s3.access_key_id == minio["MINIO_ROOT_USER"]
        assert settings.s3.secret_access_key is not None
        assert settings.s3.secret_access_key.get_secret_value() == minio["MINIO_ROOT_PASSWORD"]
        assert not services[name].get("volumes"), name
    # The image's data directory (the artifact cache) belongs to the user it runs as.
    user = dockerfile_values("USER")[-1].split(":")[0]
    setup_runs = " && ".join(dockerfile_values("RUN"))
    cache = str(settings.artifact_cache_path)
    assert re.search(rf"mkdir -p {re.escape(cache)}(\s|$)", setup_runs), setup_runs
    owned = re.findall(rf"chown -R {user}:\S+ (\S+)", setup_runs)
    assert any(cache.startswith(path.rstrip("/") + "/") for path in owned), setup_runs


# --- the image ---------------------------------------------------------------------------


def test_dockerfile_base_entrypoint_and_default_command():
    assert dockerfile_values("FROM") == ["python:3.11-slim"]
    assert exec_form("ENTRYPOINT") == ["maestro"]
    assert exec_form("CMD") == ["api"]
    assert "8000" in " ".join(dockerfile_values("EXPOSE")).split()
    assert pyproject()["project"]["scripts"]["maestro"] == "maestro.cli:app"


def test_dockerfile_installs_the_project_with_pip_as_root_and_runs_as_another_user():
    instructions = dockerfile_instructions()
    runs = [i for i, (keyword, args) in enumerate(instructions) if keyword == "RUN"]
    install = [i for i in runs if re.search(r"pip install \.(\s|$)", instructions[i][1])]
    assert install, "no `pip install .`"
    users = [(i, args) for i, (keyword, args) in enumerate(instructions) if keyword == "USER"]
    assert users, "the image runs as root"
    last_index, last_user = users[-1]
    assert last_user.split(":")[0] not in ("root", "0")
    assert last_index > install[-1]


def test_dockerfile_copies_what_pip_install_needs():
    sources: set[str] = set()
    for arguments in dockerfile_values("COPY"):
        parts = [part for part in shlex.split(arguments) if not part.startswith("--")]
        sources |= {part.rstrip("/") for part in parts[:-1]}
    project = pyproject()
    needed = {"pyproject.toml", project["project"]["readme"]}
    needed |= {
        pattern.rstrip("*").rstrip(".")
        for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    assert needed <= sources, sorted(needed - sources)
    for source in sources:
        assert (ROOT / source).exists(), source


def test_dockerignore_keeps_local_state_out_but_not_the_sources():
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        return any(
            fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path, pattern.removeprefix("**/"))
            for pattern in patterns
        )

    for path in (".venv", ".maestro", ".git", "__pycache__", ".pytest_cache", ".ruff_cache"):
        assert ignored(path), path
    for arguments in dockerfile_values("COPY"):
        for part in shlex.split(arguments)[:-1]:
            assert part.startswith("--") or not ignored(part.rstrip("/")), part
