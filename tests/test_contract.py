"""The API contract: schemathesis runs every operation of the OpenAPI document through all its
phases (examples, coverage, fuzzing, stateful) and all its checks against a `maestro api`
process on real PostgreSQL and a real Temporal dev server. Zero failures means every answer is
one the document lists, in the shape it gives, and every request the document allows is
accepted."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
import schemathesis
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import Status, events, from_schema
from schemathesis.hooks import GLOBAL_HOOK_DISPATCHER

from maestro.db.engine import create_engine, session_factory
from maestro.embedded import wait_for_port
from maestro.keys import create_key
from maestro.settings import Settings
from tests.conftest import scratch_database
from tests.processes import Processes

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

REVOKE = "/api/v1/keys/{key_id}/revoke"
# Rules no JSON Schema can state, each described in its operation's OpenAPI text: a request
# the schema allows may still break one, and gets a 422 naming the field and the reason.
SEMANTIC_422 = {
    # steps form a DAG of known step types, expressions compile, crons parse, ...
    ("POST", "/api/v1/workflows"),
    ("POST", "/api/v1/workflows/validate"),
    # a code package's body hashes to its name, is a zip, holds no secret-looking file
    ("PUT", "/api/v1/code/{sha256}"),
    # requirements parse (PEP 508) and are installed
    ("POST", "/api/v1/requirements/check"),
}


@dataclass
class ContractApi:
    url: str
    key: str
    key_id: str
    throwaway_key: str


@pytest.fixture(scope="module")
async def contract_api(
    postgres_server: str, settings: Settings, tmp_path_factory
) -> AsyncIterator[ContractApi]:
    """`maestro api` on a database of its own (the run creates and deletes freely) and a task
    queue no worker serves (fuzzed definitions are started, never executed)."""
    async with scratch_database(postgres_server) as url:
        engine = create_engine(url)
        async with session_factory(engine).begin() as session:
            admin, secret = await create_key(session, "contract-admin", ["admin"])
            # The revoke route is called with this key, so revoking whichever key it names
            # (itself included) leaves the rest of the run its key.
            _, throwaway = await create_key(session, "contract-throwaway", ["admin"])
        await engine.dispose()
        procs = Processes(
            settings.model_copy(update={"database_url": url}),
            tmp_path_factory.mktemp("contract"),
            task_queue="maestro-contract",
        )
        procs.start("api")
        try:
            await asyncio.to_thread(wait_for_port, "127.0.0.1", procs.api_port, timeout=60)
            yield ContractApi(f"http://127.0.0.1:{procs.api_port}", secret, admin.id, throwaway)
        finally:
            procs.stop_all()


def contract_config(api: ContractApi) -> SchemathesisConfig:
    operations = "\n".join(
        f"""
[[operations]]
include-method = "{method}"
include-path = "{path}"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "422"]
"""
        for method, path in sorted(SEMANTIC_422)
    )
    return SchemathesisConfig.from_str(
        f"""
seed = 26
workers = 1
continue-on-failure = true
request-timeout = 30
headers = {{ Authorization = "Bearer {api.key}" }}

[cache]
enabled = false

[generation]
max-examples = 30
# PostgreSQL stores no NUL character; the API refuses it (422), as its description says.
allow-x00 = false

[checks]
enabled = true

[[operations]]
include-path = "{REVOKE}"
headers = {{ Authorization = "Bearer {api.throwaway_key}" }}
{operations}
"""
    )


def spare_key(key_id: str):
    """A `before_call` hook: the revoke route may name any key (the schema's links find ids in
    GET /keys and /audit) but the one the run calls every other route with."""

    def before_call(context, case, kwargs) -> None:
        if case.operation.path == REVOKE and case.path_parameters.get("key_id") == key_id:
            case.path_parameters["key_id"] = "no-such-key"

    return before_call


def describe(recorder) -> list[str]:
    """Each failed check of a scenario, with the request that failed it."""
    found = []
    for checks in recorder.checks.values():
        for check in checks:
            if check.status == Status.FAILURE and check.failure_info is not None:
                failure = check.failure_info.failure
                found.append(
                    f"{failure.operation}: {failure.title}: {failure.message}\n"
                    f"    {check.failure_info.code_sample}"
                )
    return found


async def test_every_operation_keeps_the_contract(contract_api: ContractApi):
    schema = schemathesis.openapi.from_url(
        f"{contract_api.url}/openapi.json", config=contract_config(contract_api)
    )
    operations = {op.ok().label for op in schema.get_all_operations()}
    assert len(operations) >= 40, operations

    def run() -> tuple[list[str], dict[str, Counter], set[str]]:
        problems, phases = [], set()
        statuses: dict[str, Counter] = defaultdict(Counter)
        for event in from_schema(schema).execute():
            if isinstance(event, events.ScenarioFinished):
                phases.add(event.phase.value)
                problems += describe(event.recorder)
                for case_id, interaction in event.recorder.interactions.items():
                    if interaction.response is not None:
                        label = event.recorder.cases[case_id].value.operation.label
                        statuses[label][interaction.response.status_code] += 1
            elif isinstance(event, events.NonFatalError):
                problems.append(f"{event.label}: {event.info.format()}")
            elif isinstance(event, events.FatalError):
                problems.append(f"fatal: {event.exception!r}")
            elif isinstance(event, events.EngineFinished):
                problems += [f"{f.operation}: {f.title}: {f.message}" for f in event.failures]
        return problems, statuses, phases

    hook = schemathesis.hook("before_call")(spare_key(contract_api.key_id))
    try:
        problems, statuses, phases = await asyncio.to_thread(run)
    finally:
        GLOBAL_HOOK_DISPATCHER.unregister(hook)
    assert not problems, f"{len(problems)} contract failures:\n" + "\n\n".join(problems)
    assert {"examples", "coverage", "fuzzing", "stateful"} <= phases, phases
    assert operations <= set(statuses), f"untested: {sorted(operations - set(statuses))}"
    # Requests reached the routes: every operation answered something besides 401.
    locked_out = sorted(op for op, seen in statuses.items() if set(seen) == {401})
    assert not locked_out, locked_out
    async with httpx.AsyncClient(
        base_url=contract_api.url, headers={"Authorization": f"Bearer {contract_api.key}"}
    ) as client:
        assert (await client.get("/api/v1/keys")).status_code == 200
    print({op: dict(seen) for op, seen in sorted(statuses.items())})
