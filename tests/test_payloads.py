"""What Maestro's values look like on their way through Temporal (maestro.payloads)."""

from __future__ import annotations

import json

from temporalio.api.common.v1 import Payload

from maestro.definitions import parse_definition
from maestro.payloads import DATA_CONVERTER
from maestro.runtime import Cause, RunInput, RunState, RunStatus, StepState

CONVERTER = DATA_CONVERTER.payload_converter


def run_input() -> RunInput:
    definition = parse_definition(
        {
            "id": "etl",
            "steps": [
                {"id": "extract", "type": "noop"},
                {
                    "id": "load",
                    "type": "noop",
                    "depends_on": ["extract"],
                    "retry": {"max_attempts": 5},
                },
            ],
        }
    )
    return RunInput(
        run_id=RunInput.new_run_id(),
        workflow_id="etl",
        version=2,
        run_number=7,
        params={"dt": "2026-11-28"},
        definition=definition,
        cause=Cause(kind="signal", detail={"signal_ids": [1]}),
        local_recording=True,
    )


def test_models_travel_without_their_defaults_and_read_back_equal():
    value = run_input()
    [payload] = CONVERTER.to_payloads([value])
    data = json.loads(payload.data)
    extract, load = data["definition"]["steps"]
    assert extract == {"id": "extract", "type": "noop"}
    assert load == {
        "id": "load",
        "type": "noop",
        "depends_on": ["extract"],
        "retry": {"max_attempts": 5},
    }
    assert "reuse" not in data and "description" not in data["definition"]
    assert data["local_recording"] is True
    assert len(payload.data) < len(value.model_dump_json()) / 2
    assert CONVERTER.from_payloads([payload], [RunInput]) == [value]


def test_payloads_written_whole_still_read_back():
    """Histories written before the compact encoding (every field present) decode the same."""
    value = run_input()
    whole = Payload(metadata={"encoding": b"json/plain"}, data=value.model_dump_json().encode())
    assert CONVERTER.from_payloads([whole], [RunInput]) == [value]


def test_other_values_are_plain_json():
    state = RunState(run_id="r", status=RunStatus.failed, steps=[StepState(step_id="s")])
    payloads = CONVERTER.to_payloads([{"a": [1, None]}, 1.5, None, state])
    assert json.loads(payloads[0].data) == {"a": [1, None]}
    assert CONVERTER.from_payloads(payloads, [dict, float, type(None), RunState]) == [
        {"a": [1, None]},
        1.5,
        None,
        state,
    ]
