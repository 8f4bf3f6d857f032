"""How Maestro's values travel through Temporal: pydantic models as JSON without the fields
that hold their defaults.

Every byte of an input or a result is stored in the run's history and read back; with the
dev server, a run's payloads shrinking from about 2 KB to under 1 KB is worth several
milliseconds of Temporal's CPU per run (docs/benchmarks.md). Decoding fills the defaults
back in, so a model that travels through Temporal (`maestro.runtime`, the definition
snapshot) must never change a field's default: a payload written before the change would
read differently after it. A new field's default must be the old behaviour, as always.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import PydanticJSONPlainPayloadConverter
from temporalio.converter import (
    CompositePayloadConverter,
    DataConverter,
    DefaultPayloadConverter,
    JSONPlainPayloadConverter,
)


class _CompactJSONConverter(PydanticJSONPlainPayloadConverter):
    def to_payload(self, value: Any) -> Payload | None:
        if isinstance(value, BaseModel):
            return Payload(
                metadata={"encoding": self.encoding.encode()},
                data=value.model_dump_json(exclude_defaults=True).encode(),
            )
        return super().to_payload(value)


class CompactPayloadConverter(CompositePayloadConverter):
    """Temporal's default converters, with JSON from pydantic (as in temporalio.contrib.
    pydantic) that leaves out the fields holding their defaults."""

    def __init__(self) -> None:
        super().__init__(
            *(
                _CompactJSONConverter() if isinstance(c, JSONPlainPayloadConverter) else c
                for c in DefaultPayloadConverter.default_encoding_payload_converters
            )
        )


DATA_CONVERTER = DataConverter(payload_converter_class=CompactPayloadConverter)
