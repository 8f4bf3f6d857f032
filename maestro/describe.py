"""What starts a workflow, in words: "runs when orders.loaded arrives with rows > 0, and weekdays
07:00 Europe/Paris" (shown by `maestro deploy`; usable by the API and the console)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from maestro.definitions import (
    CRON_MACROS,
    IntervalTrigger,
    OnFinishTrigger,
    SignalCondition,
    SignalTrigger,
    TimeTrigger,
    WorkflowDefinition,
)
from maestro.durations import format_duration

_DAYS = {
    "0": "Sunday",
    "1": "Monday",
    "2": "Tuesday",
    "3": "Wednesday",
    "4": "Thursday",
    "5": "Friday",
    "6": "Saturday",
    "7": "Sunday",
    "SUN": "Sunday",
    "MON": "Monday",
    "TUE": "Tuesday",
    "WED": "Wednesday",
    "THU": "Thursday",
    "FRI": "Friday",
    "SAT": "Saturday",
}
_WEEKDAYS = {"1-5", "MON-FRI"}
_WEEKENDS = {"0,6", "6,0", "SAT,SUN", "SUN,SAT", "6,7"}


def describe_workflow(definition: WorkflowDefinition) -> str:
    """One sentence: what starts the workflow's runs."""
    parts = [describe_trigger(t) for t in definition.triggers]
    if not parts:
        return "runs only when started by hand"
    return "runs " + ", and ".join(parts)


def describe_trigger(trigger: Any) -> str:
    """One trigger in words (after "runs ")."""
    if isinstance(trigger, SignalTrigger):
        text = _describe_signals(trigger)
    elif isinstance(trigger, OnFinishTrigger):
        spec = trigger.on_finish
        statuses = " or ".join(spec.status)
        text = (
            f"when a run of {spec.workflow} succeeds"
            if spec.status == ["succeeded"]
            else f"when a run of {spec.workflow} ends {statuses}"
        )
        if spec.when:
            text += f", if {spec.when}"
    elif isinstance(trigger, TimeTrigger):
        text = describe_cron(trigger.cron) + f" {trigger.timezone}"
        if trigger.jitter:
            text += f" (up to {_human(trigger.jitter)} later)"
    elif isinstance(trigger, IntervalTrigger):
        text = f"every {_human(trigger.every)}"
        if trigger.offset:
            text += f" (offset {_human(trigger.offset)})"
    else:
        return str(trigger)
    return text


def _human(duration: timedelta) -> str:
    seconds = duration.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return format_duration(duration)


def _where(condition: SignalCondition) -> str:
    clauses = []
    for param, value in condition.where.items():
        if isinstance(value, dict):
            clauses += [f"{param} {op} {_value(v)}" for op, v in value.items()]
        else:
            clauses.append(f"{param} = {_value(value)}")
    return f" with {' and '.join(clauses)}" if clauses else ""


def _value(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _describe_signals(trigger: SignalTrigger) -> str:
    spec = trigger.signal
    if len(spec.all_of) == 1:
        only = spec.all_of[0]
        text = f"when {only.name} arrives{_where(only)}"
    else:
        conditions = [c.name + _where(c) for c in spec.all_of]
        text = f"when {', '.join(conditions[:-1])} and {conditions[-1]} have all arrived"
        if spec.join_on:
            text += f" for the same {', '.join(spec.join_on)}"
        if spec.within:
            text += f" within {_human(spec.within)}"
    if spec.when:
        text += f", if {spec.when}"
    return text


def describe_cron(expression: str) -> str:
    """Common cron shapes in words ("weekdays 07:00", "every 15 minutes"), others as they are."""
    fields = CRON_MACROS.get(expression, expression).split()
    if len(fields) != 5:
        return f"on cron {expression!r}"
    minute, hour, day, month, weekday = fields
    if minute.startswith("*/") and hour == day == month == weekday == "*":
        return f"every {minute[2:]} minutes"
    if minute.isdigit() and hour == day == month == weekday == "*":
        return f"hourly at :{int(minute):02d}"
    if not (minute.isdigit() and hour.isdigit()) or month != "*":
        return f"on cron {expression!r}"
    clock = f"{int(hour):02d}:{int(minute):02d}"
    if day == "*" and weekday == "*":
        return f"daily {clock}"
    if day == "*":
        upper = weekday.upper()
        if upper in _WEEKDAYS:
            return f"weekdays {clock}"
        if upper in _WEEKENDS:
            return f"weekends {clock}"
        days = [_DAYS.get(d) for d in upper.split(",")]
        if all(days):
            return f"{' and '.join(f'{d}s' for d in days if d)} {clock}"
    elif day.isdigit() and weekday == "*":
        return f"monthly on day {day} {clock}"
    return f"on cron {expression!r}"
