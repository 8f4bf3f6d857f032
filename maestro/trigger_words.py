"""Triggers in words, as people read them: "weekdays 07:00 Europe/Paris", "when orders.loaded
and customers.loaded for the same dt"."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from maestro.definitions import (
    CRON_MACROS,
    IntervalTrigger,
    OnFinishTrigger,
    SignalCondition,
    SignalTrigger,
    TimeTrigger,
    Trigger,
)

_DAYS = ["Sundays", "Mondays", "Tuesdays", "Wednesdays", "Thursdays", "Fridays", "Saturdays"]
_DAY_SETS = {
    "1-5": "weekdays",
    "mon-fri": "weekdays",
    "0,6": "weekends",
    "6,0": "weekends",
    "sat,sun": "weekends",
    "*": "daily",
}
_DAY_NAMES = {name[:3].lower(): i for i, name in enumerate(_DAYS)}


def describe_triggers(triggers: Sequence[Trigger]) -> str:
    """Every trigger of a definition in words, joined by "; " (`manual only` without any)."""
    return "; ".join(describe_trigger(t) for t in triggers) or "manual only"


def describe_trigger(trigger: Trigger) -> str:
    """One trigger in words."""
    if isinstance(trigger, TimeTrigger):
        text = f"{describe_cron(trigger.cron)} {trigger.timezone}"
        if trigger.jitter:
            text += f" (jitter up to {describe_duration(trigger.jitter)})"
        return text
    if isinstance(trigger, IntervalTrigger):
        text = f"every {describe_duration(trigger.every)}"
        if trigger.offset:
            text += f" (offset {describe_duration(trigger.offset)})"
        return text
    if isinstance(trigger, SignalTrigger):
        spec = trigger.signal
        text = "when " + " and ".join(_condition(c) for c in spec.all_of)
        if spec.join_on:
            text += " for the same " + ", ".join(spec.join_on)
        if spec.within:
            text += f" within {describe_duration(spec.within)}"
        if spec.when:
            text += f" if {spec.when}"
        return text
    if isinstance(trigger, OnFinishTrigger):
        finish = trigger.on_finish
        text = f"when a run of {finish.workflow} ends " + _or(finish.status)
        if finish.when:
            text += f" if {finish.when}"
        return text
    return str(trigger)


def describe_cron(cron: str) -> str:
    """A cron expression in words where it has a common shape, else the expression itself."""
    expression = CRON_MACROS.get(cron, cron)
    fields = expression.split()
    if len(fields) != 5:
        return f"cron {cron}"
    minute, hour, day, month, weekday = fields
    if day == "*" and month == "*" and weekday == "*":
        if minute.startswith("*/") and hour == "*":
            return f"every {minute[2:]} minutes"
        if minute == "*" and hour == "*":
            return "every minute"
        if minute.isdigit() and hour == "*":
            return f"hourly at :{int(minute):02d}"
        if minute.isdigit() and hour.startswith("*/"):
            return f"every {hour[2:]} hours at :{int(minute):02d}"
    if not (minute.isdigit() and _hours(hour) and month == "*"):
        return f"cron {cron}"
    at = ", ".join(f"{int(h):02d}:{int(minute):02d}" for h in hour.split(","))
    if day == "*":
        days = _weekdays(weekday)
        return f"{days} {at}" if days else f"cron {cron}"
    if day.isdigit() and weekday == "*":
        return f"monthly on day {int(day)} at {at}"
    return f"cron {cron}"


def describe_duration(value: timedelta) -> str:
    """`1h30m`, `2d`, `45s`: the largest units that add up to it."""
    seconds = int(value.total_seconds())
    if seconds != value.total_seconds() or seconds == 0:
        return f"{value.total_seconds():g}s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts)


def _hours(hour: str) -> bool:
    return all(h.isdigit() for h in hour.split(","))


def _weekdays(weekday: str) -> str | None:
    lowered = weekday.lower()
    if lowered in _DAY_SETS:
        return _DAY_SETS[lowered]
    names = []
    for part in lowered.split(","):
        index = int(part) % 7 if part.isdigit() else _DAY_NAMES.get(part[:3])
        if index is None:
            return None
        names.append(_DAYS[index])
    return _or(names, "and")


def _condition(condition: SignalCondition) -> str:
    if not condition.where:
        return condition.name
    return f"{condition.name} ({', '.join(_where(k, v) for k, v in condition.where.items())})"


def _where(key: str, value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{key} {op} {expected}" for op, expected in value.items())
    return f"{key} = {value}"


def _or(words: Sequence[str], joiner: str = "or") -> str:
    words = list(words)
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + f" {joiner} " + words[-1]
