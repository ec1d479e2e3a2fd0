"""Semantic 11: bad input is rejected with a reason code and a sentence naming the field; it
never raises out of the engine."""

from __future__ import annotations

import json

import msgspec
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scoring import Event, Rejection
from scoring.events import MAX_EVENT_BYTES, MAX_NESTING, MAX_TRAIT_SIZE, MAX_TIME_MS, MIN_TIME_MS, decode_message, parse_event, parse_message
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


def test_identify_without_event_id_gets_one_from_its_time_and_what_it_says() -> None:
    # By its time alone, a second update of the same millisecond was taken for a copy and dropped.
    def identify(**traits: object) -> str:
        event = parse_event({"lead_id": "L1", "type": "identify", "time": T0, "traits": traits})
        assert isinstance(event, Event) and event.event_id.startswith(f"identify@{T0}#")
        return event.event_id

    assert identify(email="a@b.io", title="VP") == identify(title="VP", email="a@b.io")  # a copy: the same event
    assert identify(email="a@b.io") != identify(title="VP")


@pytest.mark.parametrize(
    ("raw", "reason", "field"),
    [
        (b"{not json", "bad_json", "JSON"),
        (b"[1, 2]", "wrong_type", "object"),
        (b'"text"', "wrong_type", "object"),
        (orjson.dumps({k: v for k, v in GOOD.items() if k != "lead_id"}), "missing_field", "'lead_id' is missing"),
        (orjson.dumps({k: v for k, v in GOOD.items() if k != "type"}), "missing_field", "type"),
        (orjson.dumps({k: v for k, v in GOOD.items() if k != "time"}), "missing_field", "time"),
        (orjson.dumps({k: v for k, v in GOOD.items() if k != "event_id"}), "missing_field", "event_id"),
        (orjson.dumps({**GOOD, "lead_id": None}), "missing_field", "'lead_id' is null"),
        (orjson.dumps({**GOOD, "time": None}), "missing_field", "'time' is null"),
        (orjson.dumps({**GOOD, "type": None}), "missing_field", "'type' is null"),
        (orjson.dumps({**GOOD, "lead_id": ["L1"]}), "wrong_type", "lead_id"),
        (orjson.dumps({**GOOD, "lead_id": ""}), "bad_value", "lead_id"),
        (orjson.dumps({**GOOD, "lead_id": "x" * 300}), "bad_value", "lead_id"),
        (orjson.dumps({**GOOD, "type": 3}), "wrong_type", "type"),
        (orjson.dumps({**GOOD, "type": ""}), "bad_value", "type"),
        (orjson.dumps({**GOOD, "time": 1762128000}), "bad_value", "time"),  # seconds, not ms
        (orjson.dumps({**GOOD, "time": "yesterday"}), "bad_value", "time"),
        (orjson.dumps({**GOOD, "time": "2025-11-03T00:00:00"}), "bad_value", "time zone"),
        (orjson.dumps({**GOOD, "time": 1.5e12}), "wrong_type", "time"),
        (orjson.dumps({**GOOD, "time": 1762128000000.0}), "wrong_type", "whole epoch milliseconds (an integer, no decimal point"),
        (orjson.dumps({**GOOD, "time": "1999-12-31T23:00:00Z"}), "bad_value", "'1999-12-31T23:00:00Z', outside years 2000-2099"),
        (orjson.dumps({**GOOD, "lead_id": 42.0}), "wrong_type", "'lead_id' must be a text or an integer, got a number written with a decimal"),
        (orjson.dumps({**GOOD, "lead_id": 42.5}), "wrong_type", "'lead_id' must be a text or an integer, got a number"),
        (orjson.dumps({**GOOD})[:-1] + b',"event_id":1' + b"0" * 30 + b"}", "wrong_type", "'event_id' holds an integer beyond 64 bits"),
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


@pytest.mark.parametrize(
    ("time", "detail"),
    [
        # Valid RFC 3339, which datetime cannot hold: it was told "not an ISO-8601 time" alone.
        ("2016-12-31T23:59:60Z", "field 'time' is not an ISO-8601 time: '2016-12-31T23:59:60Z' (leap seconds, second 60, "
                                 "are not accepted: send :59.999 or the second after it, :00)"),
        ("2016-12-31T18:59:60.5-05:00", "field 'time' is not an ISO-8601 time: '2016-12-31T18:59:60.5-05:00' (leap seconds, "
                                        "second 60, are not accepted: send :59.999 or the second after it, :00)"),
        ("2016-12-31T23:59:61Z", "field 'time' is not an ISO-8601 time: '2016-12-31T23:59:61Z'"),
        # The unit guessed from the magnitude: nanoseconds and microseconds were said to be seconds.
        (1764583200000000000, "field 'time' is 1764583200000000000, outside years 2000-2099 in epoch milliseconds (nanoseconds sent as ms?)"),
        (1764583200000000, "field 'time' is 1764583200000000, outside years 2000-2099 in epoch milliseconds (microseconds sent as ms?)"),
        (1764583200, "field 'time' is 1764583200, outside years 2000-2099 in epoch milliseconds (seconds sent as ms?)"),
        (-1, "field 'time' is -1, outside years 2000-2099 in epoch milliseconds"),  # no unit fits: no guess
        (5 * 10**12, "field 'time' is 5000000000000, outside years 2000-2099 in epoch milliseconds"),
    ],
)  # fmt: skip
def test_a_refused_time_says_what_it_probably_is(time: object, detail: str) -> None:
    rejection = parse_event({**GOOD, "time": time})
    assert isinstance(rejection, Rejection) and rejection.reason == "bad_value"
    assert rejection.detail == detail


@pytest.mark.parametrize("raw", [None, 42, [GOOD], object()])
def test_non_json_inputs_are_rejected_not_raised(raw: object) -> None:
    assert parse_event(raw).reason == "wrong_type"


def test_messages_may_be_arrays_of_events() -> None:
    parsed = parse_message(orjson.dumps([GOOD, {"lead_id": "L2"}, {**GOOD, "event_id": "e-2"}]))
    assert [type(p).__name__ for p in parsed] == ["Event", "Rejection", "Event"]
    assert parse_message(b"nope")[0].reason == "bad_json"


def test_an_envelope_of_no_event_is_refused_not_passed_over() -> None:
    assert decode_message(b"[]") is None
    assert [(r.reason, r.detail, r.raw) for r in parse_message(b" [ ] ")] == [  # type: ignore[union-attr]
        ("bad_value", "an envelope (JSON array) of no event: send one event object, or an array of one or more", b" [ ] ")
    ]


def test_a_batch_with_bad_events_scores_the_good_ones() -> None:
    run = Run(engine('[[rules]]\nname = "v"\nevent = "page_view"\npoints = 5\n'))
    run.apply(ev(), {"lead_id": "L1"}, ev(at=1), "garbage")  # type: ignore[arg-type]
    assert run.score() == 10
    assert [r.reason for r in run.rejected] == ["missing_field", "bad_json"]


def test_anything_else_in_a_batch_is_rejected_not_raised() -> None:
    result = engine('[[rules]]\nname = "v"\nevent = "v"\npoints = 5\n').apply_batch([{"lead_id": "L1"}], lambda m, l: None)  # type: ignore[list-item]
    assert [r.reason for r in result.rejected] == ["wrong_type"] and not result.states


# The two parsing paths: JSON bytes are decoded by msgspec straight into an Event, parsed
# values (and whatever msgspec refuses) go through orjson and the checks one by one. Whatever
# the input, both must reach the same verdict.
_ids = st.one_of(st.text(max_size=4), st.integers(-5, 5), st.none(), st.just("x" * 300), st.just("a\x7fb"), st.lists(st.just("L"), max_size=1))
_times = st.one_of(st.integers(MIN_TIME_MS - 2, MIN_TIME_MS + 2), st.integers(MAX_TIME_MS - 2, MAX_TIME_MS + 2), st.just(T0),
                   st.booleans(), st.floats(allow_nan=False, allow_infinity=False), st.just("2025-11-03T00:00:00Z"), st.none())
_values = st.one_of(st.text(max_size=3), st.integers(-(2**63), 2**64 - 1),  # what orjson writes; beyond: the test below
                    st.floats(allow_nan=False, allow_infinity=False), st.booleans(), st.none())
_maps = st.one_of(st.dictionaries(st.text(max_size=3), _values, max_size=3), st.none(), st.lists(_values, max_size=2), st.text(max_size=2))


@st.composite
def _events(draw: st.DrawFn) -> dict:
    fields = {"event_id": _ids, "lead_id": _ids, "type": _ids, "time": _times, "properties": _maps, "traits": _maps,
              "account_id": _ids, "product": st.one_of(st.text(max_size=3), st.none(), st.integers(0, 2))}
    return {key: draw(strategy) for key, strategy in fields.items() if draw(st.booleans()) or key in ("lead_id", "type", "time")}


@given(_events())
@settings(max_examples=400, deadline=None)
def test_bytes_and_parsed_values_reach_the_same_verdict(value: dict) -> None:
    raw = orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    from_bytes, from_value = parse_event(raw), parse_event(orjson.loads(raw))
    if isinstance(from_value, Event):
        assert from_bytes == from_value
    else:
        assert isinstance(from_bytes, Rejection) and (from_bytes.reason, from_bytes.detail) == (from_value.reason, from_value.detail)
    if isinstance(from_bytes, Event):
        assert parse_message(b"[" + raw + b"," + raw + b"]") == [from_bytes, from_bytes]


def test_an_envelope_of_good_events_is_decoded_in_one_pass() -> None:
    raw = orjson.dumps([GOOD, {**GOOD, "event_id": "e-2", "properties": {"url": "/pricing"}}])
    assert decode_message(raw) == parse_message(raw) == [
        Event("e-1", "L1", "page_view", T0), Event("e-2", "L1", "page_view", T0, {"url": "/pricing"})]
    assert decode_message(orjson.dumps([GOOD, {"lead_id": "L2"}])) is None  # one bad event: the careful path says which


BIG = b"123456789012345678901234567890"


@pytest.mark.parametrize("field", ["traits", "properties"])
@pytest.mark.parametrize("value", [BIG, b"-" + BIG, b"[1,{\"by_year\":" + BIG + b"}]", b"18446744073709551616", b"-9223372036854775809"])
def test_an_integer_beyond_64_bits_in_json_is_refused_naming_its_field_on_every_path(field: str, value: bytes) -> None:
    """It was read as a float, as orjson reads it, on the careful path: a trait's digits were
    kept as 1.2345678901234568e+29 in the lead's state, its view and its crossings, a property's
    scored as that float; msgspec's path read it whole, and refused a trait, not a property."""
    raw = orjson.dumps({**GOOD, "type": "identify"})[:-1] + b',"%s":{"hubspot_id":%s}}' % (field.encode(), value)
    bad = orjson.dumps({**GOOD, "lead_id": None})  # takes the envelope to the careful path
    lone = orjson.dumps(GOOD).replace(b'"L1"', b'"L1\\ud83d"')  # read again by the standard library
    detail = f"{field}.hubspot_id holds an integer beyond 64 bits, which loses digits as a JSON number: send such a number as a text"
    for parsed in (parse_event(raw), parse_message(raw)[0], parse_message(b"[" + bad + b"," + raw + b"]")[1],
                   parse_message(b"[" + lone + b"," + raw + b"]")[1], parse_event(json.loads(raw))):
        assert isinstance(parsed, Rejection) and (parsed.reason, parsed.detail) == ("too_large", detail), parsed
    assert decode_message(raw) is None


def test_integers_of_64_bits_are_kept_and_a_float_as_big_is_a_float() -> None:
    within = {"n": 2**64 - 1, "m": -(2**63), "f": 1e29}
    raw = orjson.dumps({**GOOD, "type": "identify", "traits": within, "properties": within})
    for parsed in (parse_event(raw), parse_message(b"[" + orjson.dumps({**GOOD, "lead_id": None}) + b"," + raw + b"]")[1]):
        assert isinstance(parsed, Event) and parsed.traits == parsed.properties == within


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, [1, 2**70], {"a": {"b": [2**70]}}])
def test_a_parsed_trait_holding_an_integer_beyond_64_bits_is_refused_as_the_state_could_not_keep_it(value: object) -> None:
    rejection = parse_event({**GOOD, "traits": {"employees": value}})
    assert isinstance(rejection, Rejection) and rejection.reason == "too_large"
    assert rejection.detail.startswith("traits.employees holds an integer beyond 64 bits")
    assert isinstance(parse_event({**GOOD, "traits": {"employees": [2**64 - 1, -(2**63)]}, "properties": {"n": 2**64 - 1}}), Event)
    refused = parse_event({**GOOD, "properties": {"n": value}})
    assert isinstance(refused, Rejection) and refused.detail.startswith("properties.n holds an integer beyond 64 bits")


@pytest.mark.parametrize(("value", "written"), [
    (float("nan"), "nan"), (float("inf"), "inf"), (-float("inf"), "-inf"),
    ([1.5, float("nan")], "a nan or an infinity within it"), ({"a": {"b": [float("inf")]}}, "a nan or an infinity within it"),
])
@pytest.mark.parametrize("field", ["traits", "properties"])
def test_a_parsed_nan_or_infinity_is_a_bad_value_naming_its_field(field: str, value: object, written: str) -> None:
    """No JSON number is one, but a dict handed in parsed may hold one (pandas has nan for every
    empty cell). It was accepted: a trait of nan was kept, `exists` held for it, and the lead's
    explanation was no JSON (json.dumps(..., allow_nan=False) refused it)."""
    rejection = parse_event({**GOOD, field: {"size": value}})
    assert isinstance(rejection, Rejection) and rejection.reason == "bad_value"
    assert rejection.detail == f"{field}.size is {written}, which no JSON number is: send null (a trait's null forgets it), or leave the field out"
    scored = Run(engine('[[fit]]\nname = "sized"\npoints = 30\ntraits.size = { exists = true }\n')).apply({**GOOD, field: {"size": value}})
    assert scored.rejected == [rejection] and scored.store == {}
    assert isinstance(parse_event({**GOOD, field: {"size": [1.5, -0.0, 1e308]}}), Event)


@pytest.mark.parametrize(
    ("change", "reason", "detail"),
    [
        ({"event_id": 10**300}, "wrong_type", "field 'event_id' holds an integer beyond 64 bits"),  # was taken as 301 characters
        ({"lead_id": -(10**5000)}, "wrong_type", "field 'lead_id' holds an integer beyond 64 bits"),  # str() raised ValueError
        ({"time": 10**5000}, "bad_value", "field 'time' is an integer of 16610 bits, outside years 2000-2099"),  # the message raised
    ],
)
def test_a_parsed_integer_too_long_for_an_id_or_time_is_refused_not_raised(change: dict, reason: str, detail: str) -> None:
    rejection = parse_event({**GOOD, **change})
    assert isinstance(rejection, Rejection) and rejection.reason == reason and rejection.detail.startswith(detail)
    assert parse_event({**GOOD, "event_id": -(2**63)}).event_id == str(-(2**63))  # type: ignore[union-attr]
    assert parse_event({**GOOD, "event_id": 2**64 - 1}).event_id == str(2**64 - 1)  # type: ignore[union-attr]


def _nested(levels: int) -> bytes:
    """A JSON value of `levels` nested arrays and objects, alternating: [{"a": [{"a": ... 1}]}]."""
    value = b"1"
    for level in range(levels):
        value = b"[" + value + b"]" if level % 2 == 0 else b'{"a":' + value + b"}"
    return value


@pytest.mark.parametrize("field", ["properties", "traits"])
def test_values_nested_deeper_than_the_limit_are_too_large_on_both_paths(field: str) -> None:
    def event(levels: int) -> bytes:
        return orjson.dumps({**GOOD, field: {"deep": "here"}}).replace(b'"here"', _nested(levels))

    for raw in (event(MAX_NESTING), event(1)):
        assert isinstance(parse_event(raw), Event) and isinstance(parse_event(orjson.loads(raw)), Event)
    # Just beyond the limit; beyond what orjson writes (255); beyond what msgspec reads (about
    # 1,000: a RecursionError, not a DecodeError); the last is still JSON orjson reads (1,024).
    for levels in (MAX_NESTING + 1, 300, 1015):
        raw = event(levels)
        for parsed in (parse_event(raw), *parse_message(raw), *parse_message(b"[" + orjson.dumps(GOOD) + b"," + raw + b"]")[1:]):
            assert isinstance(parsed, Rejection)
            assert (parsed.reason, parsed.detail) == ("too_large", f"{field}.deep nests objects and arrays more than {MAX_NESTING} levels deep, which is the most accepted")
        assert decode_message(raw) is None
    assert parse_event(event(1030)).reason == "too_large"  # deeper than orjson reads, too


def test_an_event_over_the_size_limit_is_refused_inside_an_envelope_too() -> None:
    # An integer beyond 64 bits too, which orjson would not write out to measure the event.
    big = {**GOOD, "event_id": "big", "properties": {"blob": "x" * MAX_EVENT_BYTES, "n": 2**70}}
    small = {**GOOD, "event_id": "small"}
    first, second, third = parse_message(msgspec.json.encode([small, big, small]))
    assert isinstance(first, Event) and first == third
    assert isinstance(second, Rejection) and second.reason == "too_large"
    assert second.detail.startswith("event is ") and second.detail.endswith(f"bytes, at most {MAX_EVENT_BYTES} are accepted")


@pytest.mark.parametrize("value", ["x" * (MAX_TRAIT_SIZE + 1), ["x" * 1000] * 5, {"bio": "y" * MAX_TRAIT_SIZE},
                                   "\x01" * MAX_TRAIT_SIZE, "\U0001f600" * (MAX_TRAIT_SIZE // 4 + 1), '"' * (MAX_TRAIT_SIZE // 2 + 1)])
def test_a_trait_larger_than_a_state_keeps_is_refused_on_both_paths(value: object) -> None:
    """Ten traits of 60 KB each, kept by a lead's state, would make it too big for Kafka. A
    text is measured in bytes of JSON, as states and crossings write it: 4,096 control
    characters are 24 KB (each `\\u0001`), emoji 4 bytes each."""
    event = {**GOOD, "traits": {"bio": value}}
    for parsed in (parse_event(event), parse_event(orjson.dumps(event)), *parse_message(orjson.dumps([GOOD, event]))[1:]):
        assert isinstance(parsed, Rejection) and parsed.reason == "too_large"
        assert parsed.detail.startswith("traits.bio is ") and f"at most {MAX_TRAIT_SIZE} are kept" in parsed.detail
    assert isinstance(parse_event({**GOOD, "traits": {"bio": "x" * MAX_TRAIT_SIZE}, "properties": {"bio": "x" * 60_000}}), Event)
    for fits in ("\u00e9" * (MAX_TRAIT_SIZE // 2), "\U0001f600" * (MAX_TRAIT_SIZE // 4), "\x01" * (MAX_TRAIT_SIZE // 6)):
        assert isinstance(parse_event(orjson.dumps({**GOOD, "traits": {"bio": fits}})), Event)
        assert isinstance(parse_event({**GOOD, "traits": {"bio": fits}}), Event)


@pytest.mark.parametrize("field", ["event_id", "lead_id", "account_id"])
@pytest.mark.parametrize(("value", "accepted"), [
    ("\U0001f469\u200d\U0001f4bb", True),  # an emoji sequence, joined by a format character
    ("a\u00a0b", True), ("Zoë Müller", True), ("a\x07b", False), ("ctl\x1b[31m", False), ("a\u2028b", False), ("a\x85b", False),
])  # fmt: skip
def test_ids_may_hold_any_character_but_a_control_one(field: str, value: str, accepted: bool) -> None:
    event = {**GOOD, field: value}
    for parsed in (parse_event(event), parse_event(orjson.dumps(event)), *parse_message(orjson.dumps([GOOD, event]))[1:]):
        if accepted:
            assert isinstance(parsed, Event) and getattr(parsed, field) == value
        else:
            assert isinstance(parsed, Rejection) and parsed.reason == "bad_value"
            assert parsed.detail == f"field '{field}' contains a control character: {value!r}"


def test_a_text_in_an_envelope_is_no_event_even_when_it_holds_one() -> None:
    twice = orjson.dumps(GOOD).decode()
    refused, event = parse_message(orjson.dumps([twice, GOOD]))
    assert isinstance(refused, Rejection) and (refused.reason, refused.detail) == ("wrong_type", "an event must be a JSON object, got a text")
    assert event == parse_event(GOOD)
    assert [r.reason for r in parse_message(orjson.dumps(twice))] == ["wrong_type"]  # a whole message, too


def test_json_nested_deeper_than_orjson_reads_is_too_large_not_bad_json() -> None:
    deep = b'{"lead_id": "L1", "x": ' + b"[" * 2000 + b"]" * 2000 + b"}"
    for refused in (parse_event(deep), *parse_message(deep), *parse_message(b"[" + deep + b"]")):
        assert isinstance(refused, Rejection) and refused.reason == "too_large"
        assert refused.detail.startswith("it nests objects and arrays more than 1,024 levels deep")
    assert [r.reason for r in parse_message(b"[{nope")] == ["bad_json"]


@pytest.mark.parametrize("field", ["event_id", "lead_id", "type", "product", "trait", "property"])
def test_text_that_is_not_utf8_is_bad_json_naming_the_byte_not_raised(field: str) -> None:
    # msgspec raises UnicodeDecodeError, not a DecodeError, for a known field's text (once
    # out of the engine and of a worker's batch); a Latin-1 export is the usual way in.
    event = {**GOOD, "product": "b2b", "traits": {"name": "Ren"}, "properties": {"title": "Ren"}}
    slot = {"trait": ("traits", "name"), "property": ("properties", "title")}.get(field)
    if slot:
        event[slot[0]] = {slot[1]: "Ren\u00e9"}
    else:
        event[field] = event[field] + "\u00e9"
    raw = orjson.dumps(event).replace("\u00e9".encode(), b"\xe9")
    offset = raw.index(b"\xe9")
    for refused, at in [(parse_event(raw), offset), *((r, offset) for r in parse_message(raw)),
                        *((r, offset + 1) for r in parse_message(b"[" + raw + b"]"))]:
        assert isinstance(refused, Rejection) and refused.reason == "bad_json"
        assert refused.detail == (f"not valid JSON: it is not UTF-8 text (byte 0xe9 at offset {at}); JSON must be UTF-8: "
                                  "send or save it as UTF-8")


@pytest.mark.parametrize("escape", [b"\\ud83d", b"\\udc00", b"\\ud83d\\ud83d"])
def test_a_lone_surrogate_escape_is_read_as_u_fffd_and_its_envelope_kept(escape: bytes) -> None:
    # JSON.stringify writes one for a text cut between an emoji's halves; orjson refused the
    # whole message for it, so every event of its envelope was dead-lettered with it.
    cut = orjson.dumps({**GOOD, "event_id": "e-2", "properties": {"title": "Great TITLE"}}).replace(b"TITLE", escape)
    whole = orjson.dumps(GOOD)
    for message in (cut, b"[" + whole + b"," + cut + b"]"):
        *_, event = parse_message(message)
        assert isinstance(event, Event) and event.properties == {"title": "Great " + "\ufffd" * escape.count(b"\\")}
        assert all(isinstance(e, Event) for e in parse_message(message))
    assert parse_event(cut) == parse_message(cut)[0]
    assert [r.reason for r in parse_message(b'[{"a": "\\ud83d", nope]')] == ["bad_json"]  # not JSON even so


def test_iso_times_may_spell_t_and_z_in_lower_case() -> None:
    assert parse_event({**GOOD, "time": "2025-11-03t00:00:00z"}) == parse_event({**GOOD, "time": "2025-11-03T00:00:00Z"}) == Event(
        "e-1", "L1", "page_view", T0)


def test_an_id_that_is_not_printable_but_allowed_still_gets_every_other_check() -> None:
    event = {**GOOD, "event_id": "\U0001f469\u200d\U0001f4bb", "traits": {"bio": "x" * (MAX_TRAIT_SIZE + 1)}}
    assert decode_message(orjson.dumps(event)) is None  # the careful path says why
    assert parse_event(orjson.dumps(event)).reason == "too_large"
