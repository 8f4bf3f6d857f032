"""Connecting to Temporal with Maestro's data converter, and registering its search attributes."""

from __future__ import annotations

import logging

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RetryConfig

from maestro.runtime import SEARCH_ATTRIBUTES
from maestro.settings import TemporalSettings

logger = logging.getLogger(__name__)


# How long a call to an unreachable Temporal is retried before it fails. The API answers
# people: it gives up within about 1.5 s (a 503, or a run left to the sweeper, which tries
# again every second). A worker holds finished work (an activity's result, a workflow task's
# commands): it keeps retrying through an outage of a few minutes instead of losing it, which
# would run the step again.
API_RETRY = RetryConfig(max_interval_millis=500, max_elapsed_time_millis=1_500, max_retries=6)
WORKER_RETRY = RetryConfig(
    max_interval_millis=5_000, max_elapsed_time_millis=300_000, max_retries=1_000
)


async def connect(settings: TemporalSettings, retry: RetryConfig | None = None) -> Client:
    """A Temporal client that (de)serialises Maestro's pydantic models; `retry`: how long an
    unreachable Temporal is retried (the SDK's default: 10 s)."""
    return await Client.connect(
        settings.address,
        namespace=settings.namespace,
        data_converter=pydantic_data_converter,
        retry_config=retry,
    )


async def ensure_search_attributes(client: Client, namespace: str) -> None:
    """Register Maestro's custom search attributes if the namespace lacks them (idempotent)."""
    existing = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace)
    )
    missing = {
        key.name: IndexedValueType.ValueType(int(key.indexed_value_type))
        for key in SEARCH_ATTRIBUTES
        if key.name not in existing.custom_attributes
    }
    if missing:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=namespace, search_attributes=missing)
        )
        logger.info("registered search attributes", extra={"attributes": sorted(missing)})


async def register_search_attributes(client: Client, settings: TemporalSettings) -> bool:
    """Best effort: whether runs can carry Maestro's search attributes in this namespace."""
    if not settings.register_search_attributes:
        return False
    try:
        await ensure_search_attributes(client, settings.namespace)
    except Exception as exc:  # noqa: BLE001 - runs still work without them
        logger.warning("could not register search attributes", extra={"error": str(exc)})
        return False
    return True
