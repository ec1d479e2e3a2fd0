"""Thousands of generated requests against a real collector and broker: never a 500, never a lost event."""

from __future__ import annotations

import gzip
import uuid
from datetime import datetime, timezone
from typing import Any

import orjson
import pytest
import requests
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from streams.segment import CALL_TYPES
from streams.settings import Settings
from tests.streams.collector_support import SOURCES, WRITE_KEY, ThreadedCollector, all_events, read_messages

# The reasons for which one call (rather than the whole request) is refused, and dead-lettered.
CALL_REASONS = {"bad_call", "bad_type", "missing_identity", "missing_event", "bad_event", "missing_group_id",
                "missing_previous_id", "missing_user_id", "bad_field", "future_time"}
ENDPOINTS = (*CALL_TYPES, "batch")

text = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=12)
scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False) | text
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4), max_leaves=6)
timestamps = st.datetimes(timezones=st.just(timezone.utc)).map(lambda d: d.isoformat())
# The times the scoring engine accepts (from 2000) and the collector too (not in the future).
event_times = st.datetimes(datetime(2000, 1, 1), datetime.now(), timezones=st.just(timezone.utc)).map(lambda d: d.isoformat())
ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9@._-]{0,15}", fullmatch=True)
event_names = st.from_regex(r"[A-Za-z][A-Za-z0-9 _-]{0,20}", fullmatch=True)

# Calls that look like the Segment spec, fields present or not, right or wrong.
segmentish = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(CALL_TYPES) | json_values,
        "userId": ids | json_values,
        "anonymousId": ids | json_values,
        "event": event_names | json_values,
        "groupId": ids | json_values,
        "previousId": ids | json_values,
        "properties": st.dictionaries(text, json_values, max_size=4) | json_values,
        "traits": st.dictionaries(text, json_values, max_size=4) | json_values,
        "context": st.fixed_dictionaries({}, optional={"page": json_values, "traits": json_values, "groupId": json_values}) | json_values,
        "timestamp": timestamps | json_values,
        "originalTimestamp": timestamps | json_values,
        "sentAt": timestamps | json_values,
        "messageId": ids | json_values,
    },
)
@st.composite
def good_calls(draw: st.DrawFn) -> dict[str, Any]:
    """A valid call of any kind (messageId set by the test)."""
    kind = draw(st.sampled_from(CALL_TYPES))
    call: dict[str, Any] = {"type": kind}
    who = draw(st.sampled_from(["user", "anonymous", "both"]))
    if who != "anonymous" or kind == "alias":
        call["userId"] = draw(ids)
    if who != "user":
        call["anonymousId"] = draw(ids)
    if kind == "track":
        call["event"] = draw(event_names)
    if kind == "group":
        call["groupId"] = draw(ids)
    if kind == "alias":
        call["previousId"] = draw(ids)
    call["properties" if kind not in ("identify", "group") else "traits"] = draw(st.dictionaries(text, json_values, max_size=4))
    if draw(st.booleans()):
        call["timestamp"] = draw(event_times)
    else:
        call["originalTimestamp"] = draw(event_times)
    return call


calls = good_calls() | segmentish | json_values
bodies = st.one_of(
    st.binary(max_size=64),
    json_values.map(orjson.dumps),
    calls.map(orjson.dumps),
    st.fixed_dictionaries({"batch": st.lists(calls, max_size=12)}, optional={"sentAt": timestamps | json_values}).map(orjson.dumps),
)
encodings = st.sampled_from(["identity", "gzip", "corrupt-gzip", "br"])
content_types = st.sampled_from(["application/json", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded"])


BREAKERS = {
    "no identity": lambda c: {k: v for k, v in c.items() if k not in ("userId", "anonymousId")},
    "unknown type": lambda c: {**c, "type": "purchase"},
    "bad timestamp": lambda c: {**c, "timestamp": "the day before yesterday"},
    "context not an object": lambda c: {**c, "context": "web"},
    "message id an object": lambda c: {**c, "messageId": {"id": 1}},
    "not an object": lambda c: [c],
}


@pytest.fixture
def collector(isolated: Settings) -> Any:
    with ThreadedCollector(isolated.with_overrides(collector_write_keys=SOURCES)) as running:
        yield running


def post(session: requests.Session, collector: ThreadedCollector, endpoint: str, body: bytes, encoding: str, content_type: str) -> requests.Response:
    headers = {"Content-Type": content_type}
    if encoding != "identity":
        headers["Content-Encoding"] = "gzip" if encoding == "corrupt-gzip" else encoding
        body = gzip.compress(body) if encoding == "gzip" else (gzip.compress(body)[:-5] if encoding == "corrupt-gzip" else body)
    return session.post(f"{collector.url}/v1/{endpoint}", data=body, headers=headers, auth=(WRITE_KEY, ""), timeout=30)


def test_random_bodies_never_get_a_500_and_every_accepted_event_is_in_kafka(collector: ThreadedCollector) -> None:
    accepted = dead = 0
    statuses: set[int] = set()

    with requests.Session() as session:

        @hypothesis_settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
        @given(st.sampled_from(ENDPOINTS), bodies, encodings, content_types)
        def one_request(endpoint: str, body: bytes, encoding: str, content_type: str) -> None:
            nonlocal accepted, dead
            response = post(session, collector, endpoint, body, encoding, content_type)
            assert response.status_code in (200, 400), (response.status_code, response.text)
            statuses.add(response.status_code)
            payload = response.json()
            if response.status_code == 200:
                accepted += payload["accepted"]
                dead += payload.get("rejected_count", 0)
            else:
                assert payload["code"] and payload["message"]
                dead += payload["code"] in CALL_REASONS

        one_request()

    # Enough accepted events that Kafka's side is tested too: the draw is random (no example
    # database), and one run here accepted as few as 92, so the bound leaves room below that.
    assert statuses == {200, 400} and accepted >= 25
    settings = collector.settings
    written = read_messages(settings, settings.topic_events, settings.topic_profiles, events=accepted)
    assert len(all_events(written)) == accepted
    assert len(all_events(read_messages(settings, settings.topic_deadletter, events=dead))) == dead


def test_in_generated_batches_every_good_call_is_accepted_and_every_bad_one_reported(collector: ThreadedCollector) -> None:
    good_ids: list[str] = []

    with requests.Session() as session:

        @hypothesis_settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
        @given(st.lists(st.tuples(good_calls(), st.sampled_from([None, *BREAKERS])), max_size=25), st.booleans())
        def one_batch(calls: list[tuple[dict[str, Any], str | None]], compressed: bool) -> None:
            batch: list[Any] = []
            bad: list[int] = []
            for index, (call, breaker) in enumerate(calls):
                call = {**call, "messageId": uuid.uuid4().hex}
                if breaker is None:
                    good_ids.append(call["messageId"])
                else:
                    bad.append(index)
                batch.append(call if breaker is None else BREAKERS[breaker](call))
            response = post(session, collector, "batch", orjson.dumps({"batch": batch}), "gzip" if compressed else "identity",
                            "application/json")
            assert response.status_code == 200, response.text
            payload = response.json()
            assert payload["accepted"] == len(batch) - len(bad)
            assert [r["index"] for r in payload.get("rejected", ())] == bad

        one_batch()

    settings = collector.settings
    written = all_events(read_messages(settings, settings.topic_events, settings.topic_profiles, events=len(good_ids)))
    assert sorted(e["event_id"] for e in written) == sorted(good_ids)
