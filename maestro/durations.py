"""Durations as people write them (`90s`, `5m`, `1h30m`, `2d`, seconds as a number, ISO 8601)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, TypeAdapter, ValidationError, WithJsonSchema

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_ISO = TypeAdapter(timedelta)
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: Any) -> Any:
    """Turn `"1h30m"` or `90` into a timedelta; leave other shapes to pydantic."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '90s', '5m', '1h30m'")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return timedelta(seconds=value)
    if isinstance(value, str):
        text = value.strip().replace(" ", "")
        if text.startswith("P"):  # ISO 8601
            try:
                parsed = _ISO.validate_python(text)
            except ValidationError:
                raise ValueError(f"invalid duration {value!r}: not a valid timedelta") from None
            if parsed < timedelta(0):
                raise ValueError("a duration cannot be negative")
            return parsed
        if not text or _PART.sub("", text):
            raise ValueError(
                f"invalid duration {value!r}: use a number of seconds or units ms/s/m/h/d/w, "
                "e.g. '90s', '5m', '1h30m'"
            )
        return timedelta(seconds=sum(float(n) * _UNIT_SECONDS[u] for n, u in _PART.findall(text)))
    return value


def format_duration(value: timedelta) -> str:
    """The shortest unit string that parses back to the same duration."""
    seconds = value.total_seconds()
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{round(seconds * 1000)}ms"


# What a request may send, as JSON Schema: seconds, units, or ISO 8601.
_UNITS_PATTERN = r"^\s*(\d+(\.\d+)?\s*(ms|s|m|h|d|w)\s*)+$"
_ISO_PATTERN = (
    r"^\s*P(?=\d|T\d)(\d+Y)?(\d+M)?(\d+W)?(\d+D)?(T(?=\d)(\d+H)?(\d+M)?(\d+(\.\d+)?S)?)?\s*$"
)
_INPUT_SCHEMA = {
    "anyOf": [
        {"type": "number", "minimum": 0, "description": "seconds"},
        {"type": "string", "pattern": _UNITS_PATTERN, "description": "e.g. 90s, 5m, 1h30m, 2d"},
        {"type": "string", "pattern": _ISO_PATTERN, "description": "ISO 8601, e.g. PT5M"},
    ]
}

Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
    WithJsonSchema(_INPUT_SCHEMA, mode="validation"),
]
