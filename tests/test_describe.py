"""maestro.describe: what starts a workflow, in words."""

from __future__ import annotations

import pytest

from maestro.describe import describe_cron, describe_workflow
from maestro.sdk import SignalCondition, Workflow, cron, every, on_finish, signal
from tests.sdk_examples import daily_report, digits_train, hello, mail_report


def test_the_examples_in_words() -> None:
    assert describe_workflow(hello.definition()) == "runs only when started by hand"
    assert describe_workflow(mail_report.definition()) == (
        "runs when a run of daily-report succeeds, and weekdays 07:00 Europe/Paris"
    )
    assert describe_workflow(digits_train.definition()) == (
        "runs when table.partition.ready arrives with table = digits"
    )
    assert describe_workflow(daily_report.definition()) == (
        "runs when orders.loaded with rows > 0 and customers.loaded have all arrived for the "
        "same dt within 6h"
    )


def test_each_trigger_kind() -> None:
    wf = Workflow(
        "words",
        triggers=[
            signal("orders.loaded", where={"rows": {">": 0}, "region": {"in": ["eu", "us"]}}),
            signal(SignalCondition(name="a"), when="signal.params.n > 1"),
            on_finish("upstream", status=["failed", "timed_out"]),
            cron("30 6 * * *", jitter="10m"),
            every("15m", offset="1m"),
        ],
    )
    wf.noop("n")
    assert describe_workflow(wf.definition()) == (
        "runs when orders.loaded arrives with rows > 0 and region in [eu, us], and when a "
        "arrives, if signal.params.n > 1, and when a run of upstream ends failed or timed_out, "
        "and daily 06:30 UTC (up to 10m later), and every 15m (offset 1m)"
    )


@pytest.mark.parametrize(
    ("expression", "words"),
    [
        ("0 7 * * MON-FRI", "weekdays 07:00"),
        ("0 9 * * SAT,SUN", "weekends 09:00"),
        ("15 8 * * MON,THU", "Mondays and Thursdays 08:15"),
        ("0 2 1 * *", "monthly on day 1 02:00"),
        ("*/5 * * * *", "every 5 minutes"),
        ("7 * * * *", "hourly at :07"),
        ("@daily", "daily 00:00"),
        ("0 0 1 1 *", "on cron '0 0 1 1 *'"),
        ("0 8-18 * * *", "on cron '0 8-18 * * *'"),
    ],
)
def test_cron_shapes(expression: str, words: str) -> None:
    assert describe_cron(expression) == words
