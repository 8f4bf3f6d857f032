"""Triggers in words (maestro.trigger_words), as the console and the CLI show them."""

from __future__ import annotations

import pytest

from maestro.definitions import parse_definition
from maestro.trigger_words import describe_cron, describe_trigger, describe_triggers


def triggers(*specs: dict):
    return parse_definition(
        {"id": "w", "steps": [{"id": "a", "type": "noop"}], "triggers": list(specs)}
    ).triggers


@pytest.mark.parametrize(
    ("cron", "words"),
    [
        ("0 7 * * 1-5", "weekdays 07:00"),
        ("30 6 * * *", "daily 06:30"),
        ("0 9 * * 0,6", "weekends 09:00"),
        ("15 8 * * 1", "Mondays 08:15"),
        ("0 8 * * mon,wed", "Mondays and Wednesdays 08:00"),
        ("0 6,18 * * *", "daily 06:00, 18:00"),
        ("5 * * * *", "hourly at :05"),
        ("*/15 * * * *", "every 15 minutes"),
        ("0 */6 * * *", "every 6 hours at :00"),
        ("0 3 1 * *", "monthly on day 1 at 03:00"),
        ("@daily", "daily 00:00"),
        ("0 7 1-7 * 1", "cron 0 7 1-7 * 1"),
    ],
)
def test_cron_in_words(cron, words):
    assert describe_cron(cron) == words


def test_each_kind_of_trigger_in_words():
    time, interval, joined, finish = triggers(
        {"cron": "0 7 * * 1-5", "timezone": "Europe/Paris", "jitter": "5m"},
        {"every": "90m", "offset": "10m"},
        {
            "signal": {
                "all_of": [
                    {"name": "orders.loaded"},
                    {"name": "customers.loaded", "where": {"rows": {">": 0}, "region": "eu"}},
                ],
                "join_on": ["dt"],
                "within": "1d",
            }
        },
        {"on_finish": {"workflow": "upstream", "status": ["succeeded", "failed"]}},
    )
    assert describe_trigger(time) == "weekdays 07:00 Europe/Paris (jitter up to 5m)"
    assert describe_trigger(interval) == "every 1h30m (offset 10m)"
    assert describe_trigger(joined) == (
        "when orders.loaded and customers.loaded (rows > 0, region = eu) for the same dt within 1d"
    )
    assert describe_trigger(finish) == "when a run of upstream ends succeeded or failed"


def test_a_workflow_without_triggers_runs_by_hand():
    assert describe_triggers([]) == "manual only"
    assert describe_triggers(triggers({"every": "1h"}, {"cron": "0 6 * * *"})) == (
        "every 1h; daily 06:00 UTC"
    )
