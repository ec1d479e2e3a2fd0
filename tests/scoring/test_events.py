"""Semantic 11: bad input is rejected with a reason code and a sentence naming the field; it
never raises out of the engine."""

from __future__ import annotations

import orjson
import pytest

from scoring import Event, Rejection
from scoring.events import MAX_EVENT_BYTES, parse_event, parse_message
from tests.scoring.support import T0, Run, engine, ev

GOOD = {"event_id": "e-1", "lead_id": "L1", "type": "page_view", "time": T0}


def test_a_good_event() -> None:
    event = parse_event(orjson.dumps({**GOOD, "properties": {"url": "u"}, "traits": {"email": "a@b.io"}, "account_id": "acme", "product": "b2b"}))
    assert event == Event("e-1", "L1", "page_view", T0, {"url": "u"}, {"email": "a@b.io"}, "acme", "b2b")


@pytest.mark.parametrize(
    ("change", "time_ms"),
    [
        ({"time": "2025-11-03T00:00:00Z"}, T0),
        ({"time": "2025-11-03T01:00:00.250+01:00"}, T0 + 250),
        ({"lead_id": 42}, None),
        ({"event_id": 7}, None),
        ({"properties": None, "traits": None}, None),
    ],
)
def test_accepted_variants(change: dict, time_ms: int | None) -> None:
    event = parse_event({**GOOD, **change})
    assert isinstance(event, Event)
    assert event.time_ms == (time_ms or T0)
    assert event.lead_id in ("L1", "42") and event.event_id in ("e-1", "7")


def test_identify_without_event_id_gets_one_from_its_time() -> None:
    event = parse_event({"lead_id": "L1", "type": "identify", "time": T0, "traits": {"email": "a@b.io"}})
    assert isinstance(event, Event) and event.event_id == f"identify@{T0}"


@pytest.mark.parametrize(
    ("raw", "reason", "field"),
    [
        (b"{not json", "bad_json", "JSON"),
        (b"[1, 2]", "wrong_type", "object"),
        (b'"text"', "wrong_type", "object"),
        (orjson.dumps({k: v for k, v in GOOD.items() if k != "lead_id"}), "missing_field", "lead_id"),
        (orjson.dumps({k: v for k, v in GOOD.items() if k != "type"}), "missing_field", "type"),
        (orjson.dumps({k: v for k, v in GOOD.items() if k != "time"}), "missing_field", "time"),
        (orjson.dumps({k: v for k, v in GOOD.items() if k != "event_id"}), "missing_field", "event_id"),
        (orjson.dumps({**GOOD, "lead_id": ["L1"]}), "wrong_type", "lead_id"),
        (orjson.dumps({**GOOD, "lead_id": ""}), "bad_value", "lead_id"),
        (orjson.dumps({**GOOD, "lead_id": "x" * 300}), "bad_value", "lead_id"),
        (orjson.dumps({**GOOD, "type": 3}), "wrong_type", "type"),
        (orjson.dumps({**GOOD, "type": ""}), "bad_value", "type"),
        (orjson.dumps({**GOOD, "time": 1762128000}), "bad_value", "time"),  # seconds, not ms
        (orjson.dumps({**GOOD, "time": "yesterday"}), "bad_value", "time"),
        (orjson.dumps({**GOOD, "time": "2025-11-03T00:00:00"}), "bad_value", "time zone"),
        (orjson.dumps({**GOOD, "time": 1.5e12}), "wrong_type", "time"),
        (orjson.dumps({**GOOD, "time": True}), "wrong_type", "time"),
        (orjson.dumps({**GOOD, "event_id": "a\nb"}), "bad_value", "event_id"),
        (orjson.dumps({**GOOD, "properties": [1]}), "wrong_type", "properties"),
        (orjson.dumps({**GOOD, "traits": "x"}), "wrong_type", "traits"),
        (orjson.dumps({**GOOD, "account_id": {}}), "wrong_type", "account_id"),
        (orjson.dumps({**GOOD, "product": 1}), "wrong_type", "product"),
        (orjson.dumps({**GOOD, "properties": {f"p{i}": i for i in range(300)}}), "too_large", "properties"),
        (orjson.dumps({**GOOD, "properties": {"blob": "x" * MAX_EVENT_BYTES}}), "too_large", "bytes"),
    ],
)
def test_rejections(raw: bytes, reason: str, field: str) -> None:
    rejection = parse_event(raw)
    assert isinstance(rejection, Rejection)
    assert rejection.reason == reason
    assert field in rejection.detail
    assert rejection.raw is not None


@pytest.mark.parametrize("raw", [None, 42, [GOOD], object()])
def test_non_json_inputs_are_rejected_not_raised(raw: object) -> None:
    assert parse_event(raw).reason == "wrong_type"


def test_messages_may_be_arrays_of_events() -> None:
    parsed = parse_message(orjson.dumps([GOOD, {"lead_id": "L2"}, {**GOOD, "event_id": "e-2"}]))
    assert [type(p).__name__ for p in parsed] == ["Event", "Rejection", "Event"]
    assert parse_message(b"nope")[0].reason == "bad_json"


def test_a_batch_with_bad_events_scores_the_good_ones() -> None:
    run = Run(engine('[[rules]]\nname = "v"\nevent = "page_view"\npoints = 5\n'))
    run.apply(ev(), {"lead_id": "L1"}, ev(at=1), "garbage")  # type: ignore[arg-type]
    assert run.score() == 10
    assert [r.reason for r in run.rejected] == ["missing_field", "bad_json"]


def test_anything_else_in_a_batch_is_rejected_not_raised() -> None:
    result = engine('[[rules]]\nname = "v"\nevent = "v"\npoints = 5\n').apply_batch([{"lead_id": "L1"}], lambda m, l: None)  # type: ignore[list-item]
    assert [r.reason for r in result.rejected] == ["wrong_type"] and not result.states
