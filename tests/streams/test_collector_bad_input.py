"""Calls the collector cannot map, against the real collector and broker: each is a 400 (or its
batch's rejection) naming the field, never a 500 after the good events were written."""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest
import requests

from streams.collector import REJECTIONS_LISTED, Collector
from streams.segment import Mapper
from streams.settings import Settings
from tests.streams.collector_support import (  # settings and collector: fixtures
    ThreadedCollector, all_events, collector, read_messages, settings, track,
)

DEEP = "deep-placeholder"


def spelt(body: Any, levels: int) -> bytes:
    """The body as JSON with each DEEP placeholder an array nested `levels` deep: spelt out, as no
    encoder here writes more than 254 levels."""
    return orjson.dumps(body).replace(orjson.dumps(DEEP), b"[" * levels + b'"bottom"' + b"]" * levels)


def scrape(settings: Settings) -> dict[str, float]:
    """The collector's samples on its operations port, as {'name{labels}': value}."""
    text = requests.get(f"http://127.0.0.1:{settings.collector_metrics_port}/metrics", timeout=5).text
    return {name: float(value) for name, _, value in (line.rpartition(" ") for line in text.splitlines() if line.startswith("leadstream_collector_"))}


def test_the_audited_requests_get_a_400_with_a_reason_and_are_counted(collector: ThreadedCollector, settings: Settings) -> None:
    before = scrape(settings)  # the registry is the test process's: compare with what it held before
    page = collector.post("/v1/page", {"userId": "u", "properties": {"url": "http://[abc/pricing"}})
    deep_properties = collector.post("/v1/track", spelt({"userId": "u", "event": "Pricing Viewed", "properties": {"a": DEEP}}, 300))
    deep_user = collector.post("/v1/track", spelt({"userId": DEEP, "event": "x"}, 1000))
    batch = collector.post("/v1/batch", spelt({"batch": [track("u-1"), {"type": "track", "event": "x", "messageId": DEEP}]}, 300))
    after = scrape(settings)

    assert [(r.status_code, r.json()["code"]) for r in (page, deep_properties, deep_user)] == [(400, "bad_field")] * 3
    assert batch.status_code == 200
    assert batch.json()["accepted"] == 1
    # No identity: refused as any call without one. The messageId is not echoed, being no id.
    assert [(r["index"], r["messageId"], r["code"]) for r in batch.json()["rejected"]] == [(1, None, "missing_identity")]

    def added(sample: str) -> float:
        return after.get(sample, 0) - before.get(sample, 0)

    assert added('leadstream_collector_requests_total{call="page",status="400"}') == 1
    assert added('leadstream_collector_requests_total{call="track",status="400"}') == 2
    assert added('leadstream_collector_requests_total{call="batch",status="200"}') == 1
    assert added('leadstream_collector_rejected_total{code="bad_field"}') == 3
    assert added('leadstream_collector_rejected_total{code="missing_identity"}') == 1


IPV6 = "`{}` is not a URL (Invalid IPv6 URL): 'http://[abc/pricing'; send the page's address"
LONG_HOST = "http://" + "a" * 1000 + "\uff03/pricing"  # a fullwidth `#`, which NFKC makes a `#`


@pytest.mark.parametrize(
    ("call", "field", "message"),
    [
        ({"properties": {"url": "http://[abc/pricing"}}, "properties.url", IPV6),
        ({"context": {"page": {"url": "http://[abc/pricing"}}}, "context.page.url", IPV6),
        ({"properties": {"url": "http://[abc/pricing"}, "context": {"page": {"url": "https://acme.test/"}}}, "properties.url", IPV6),
        ({"properties": {"url": LONG_HOST}}, "properties.url", "`{}` is not a URL (netloc 'aaa"),
    ],
    ids=["properties", "context-page", "properties-over-context-page", "nfkc-host"],
)
def test_a_page_url_with_no_path_to_read_is_a_bad_field(
    collector: ThreadedCollector, settings: Settings, call: dict[str, Any], field: str, message: str
) -> None:
    response = collector.post("/v1/page", {"userId": "u-1", "messageId": "m-1", **call})
    assert (response.status_code, response.json()["code"]) == (400, "bad_field")
    assert response.json()["message"].startswith(message.format(field))
    assert len(response.json()["message"]) < 400
    [letter] = all_events(read_messages(settings, settings.topic_deadletter, events=1))
    assert (letter["reason"], orjson.loads(letter["original"])["messageId"]) == ("bad_field", "m-1")
    assert read_messages(settings, settings.topic_events, events=0, settle_s=0.5) == []


def test_a_page_url_is_not_read_when_the_path_is_sent(collector: ThreadedCollector, settings: Settings) -> None:
    response = collector.post("/v1/page", {"userId": "u-1", "properties": {"url": "http://[abc/pricing", "path": "/pricing"}})
    assert response.status_code == 200
    [event] = all_events(read_messages(settings, settings.topic_events, events=1))
    assert event["properties"] == {"url": "http://[abc/pricing", "path": "/pricing"}


@pytest.mark.parametrize("levels", [40, 300])
def test_properties_nested_too_deep_are_refused_alike_with_or_without_message_id(
    collector: ThreadedCollector, settings: Settings, levels: int
) -> None:
    call = {"userId": "u-1", "event": "Pricing Viewed", "properties": {"a": DEEP}}
    answers = [collector.post("/v1/track", spelt(c, levels)).json() for c in (call, {**call, "messageId": "m-1"})]
    expected = {
        "success": False,
        "code": "bad_field",
        "message": "the scoring engine would refuse this call's event: properties.a nests objects and arrays more than 32 "
                   "levels deep, which is the most accepted",
    }  # fmt: skip
    assert answers == [expected, expected]
    assert [letter["reason"] for letter in all_events(read_messages(settings, settings.topic_deadletter, events=2))] == ["bad_field"] * 2


def test_a_call_without_message_id_too_deep_to_hash_is_refused_naming_the_field(
    collector: ThreadedCollector, settings: Settings
) -> None:
    # `integrations` is not part of the event, so only the hash that names the event reads it.
    call = {"userId": "u-1", "event": "Pricing Viewed", "integrations": DEEP}
    refused = collector.post("/v1/track", spelt(call, 254))
    assert (refused.status_code, refused.json()["code"]) == (400, "bad_field")
    assert refused.json()["message"].startswith("`integrations` nests objects and arrays more than 253 levels deep")
    # One level less is hashed: with the call's own object, the 254 levels orjson writes.
    assert collector.post("/v1/track", spelt(call, 253)).json() == {"success": True, "accepted": 1}
    assert collector.post("/v1/track", spelt({**call, "messageId": "m-1"}, 1000)).json() == {"success": True, "accepted": 1}
    events = all_events(read_messages(settings, settings.topic_events, events=2))
    assert sorted(e["event_id"][:7] for e in events) == ["m-1", "sha256:"]


DEEP_FIELDS = [
    ("track", {"userId": DEEP, "event": "x"}, "userId"),
    ("track", {"anonymousId": DEEP, "event": "x"}, "anonymousId"),
    ("track", {"userId": "u", "messageId": DEEP, "event": "x"}, "messageId"),
    ("track", {"userId": "u", "event": "x", "context": {"groupId": DEEP}}, "context.groupId"),
    ("group", {"userId": "u", "groupId": DEEP}, "groupId"),
    ("alias", {"userId": "u", "previousId": DEEP}, "previousId"),
    ("track", {"userId": "u", "event": "x", "timestamp": DEEP}, "timestamp"),
    ("track", {"userId": "u", "event": "x", "originalTimestamp": "2026-01-01T00:00:00Z", "sentAt": DEEP}, "sentAt"),
    ("page", {"userId": "u", "properties": {"time_on_page_s": DEEP}}, "properties.time_on_page_s"),
]


@pytest.mark.parametrize(("endpoint", "call", "field"), DEEP_FIELDS, ids=[field for _, _, field in DEEP_FIELDS])
def test_an_id_or_time_nested_deep_is_a_bad_field_named_without_its_value(
    collector: ThreadedCollector, settings: Settings, endpoint: str, call: dict[str, Any], field: str
) -> None:
    response = collector.post(f"/v1/{endpoint}", spelt(call, 1000))  # orjson reads 1,024 levels at most
    assert (response.status_code, response.json()["code"]) == (400, "bad_field")
    message = response.json()["message"]
    assert message.startswith(f"`{field}` must be ") and message.endswith("not an array")
    [letter] = all_events(read_messages(settings, settings.topic_deadletter, events=1))
    assert letter["reason"] == "bad_field"


def test_a_dead_letter_keeps_the_digits_of_an_integer_beyond_64_bits(collector: ThreadedCollector, settings: Settings) -> None:
    """The answer said "`userId` is an integer beyond 64 bits, which loses digits", and the dead
    letter, the call re-encoded as orjson read it, held 1.2345678901234568e+29: the digits were gone
    from the one place that keeps what was sent. So for any such number of a refused call."""
    big = "123456789012345678901234567891"
    single = f'{{"userId":{big},"event":"A","messageId":"m-1","writeKey":"wk_site"}}'.encode()
    response = collector.post("/v1/track", single)
    assert (response.status_code, response.json()["code"]) == (400, "bad_field")
    assert "`userId` holds an integer beyond 64 bits" in response.json()["message"]
    # Of a batch, and of a body repaired for bytes that are not UTF-8: the batch's context stays merged.
    batch = (f'{{"batch":[{{"type":"track","userId":"u-2","messageId":"m-2","properties":{{"n":[{big}]}}}},'
             f'{{"type":"track","anonymousId":{big},"event":"A","messageId":"m-3"}}],"context":{{"ip":"1.2.3.4"}}}}').encode()
    assert collector.post("/v1/batch", batch).json()["rejected_count"] == 2
    repaired = f'{{"userId":{big},"event":"A","messageId":"m-4","properties":{{"title":"Caf\xe9"}}}}'.encode("latin-1")
    assert collector.post("/v1/track", repaired).json()["code"] == "bad_field"
    letters = {orjson.loads(letter["original"])["messageId"]: letter["original"]
               for letter in all_events(read_messages(settings, settings.topic_deadletter, events=4))}
    assert letters["m-1"] == f'{{"userId":{big},"event":"A","messageId":"m-1"}}'  # its write key left out, as before
    assert letters["m-2"] == f'{{"type":"track","userId":"u-2","messageId":"m-2","properties":{{"n":[{big}]}},"context":{{"ip":"1.2.3.4"}}}}'
    assert letters["m-3"] == f'{{"type":"track","anonymousId":{big},"event":"A","messageId":"m-3","context":{{"ip":"1.2.3.4"}}}}'
    assert letters["m-4"] == f'{{"userId":{big},"event":"A","messageId":"m-4","properties":{{"title":"Caf\ufffd"}}}}'


def test_a_batch_echoes_only_ids_and_writes_its_good_calls_once(collector: ThreadedCollector, settings: Settings) -> None:
    good = track("u-1")
    batch = [
        good,
        {"type": "track", "userId": "u-2", "event": "x", "messageId": DEEP},
        {"type": DEEP, "userId": "u-2", "messageId": "bad-type"},
        track("u-3", messageId="m" * 300, properties={"a": DEEP}),  # too long to be an event id
        track("u-4", messageId=12345, userId=DEEP),
    ]
    response = collector.post("/v1/batch", spelt({"batch": batch}, 300))
    assert response.status_code == 200
    body = response.json()
    assert body["accepted"] == 1
    assert [(r["index"], r["messageId"], r["code"]) for r in body["rejected"]] == [
        (1, None, "bad_field"),
        (2, "bad-type", "bad_type"),
        (3, None, "bad_field"),
        (4, 12345, "bad_field"),
    ]
    assert body["rejected"][1]["message"].startswith("`type` is an array; ")
    [event] = all_events(read_messages(settings, settings.topic_events, events=1))
    assert event["event_id"] == good["messageId"]
    assert len(all_events(read_messages(settings, settings.topic_deadletter, events=4))) == 4


def test_a_batch_answer_lists_its_first_refusals_and_counts_them_all(collector: ThreadedCollector, settings: Settings) -> None:
    """A batch of 250k bad calls was answered with 24 MB of JSON naming each refusal. The answer
    now lists the first REJECTIONS_LISTED refusals and counts them all; every refused call is
    still dead-lettered and counted in the metrics."""
    refused = 2 * REJECTIONS_LISTED + 50
    batch = [track("u-1"), *({"type": "track", "event": "x", "messageId": f"m-{i}"} for i in range(refused)), track("u-2")]
    before = scrape(settings)
    response = collector.post("/v1/batch", {"batch": batch})
    after = scrape(settings)

    assert response.status_code == 200
    body = response.json()
    assert (body["accepted"], body["rejected_count"], body["rejected_omitted"]) == (2, refused, refused - REJECTIONS_LISTED)
    assert [(r["index"], r["messageId"], r["code"]) for r in body["rejected"]] == [
        (i + 1, f"m-{i}", "missing_identity") for i in range(REJECTIONS_LISTED)
    ]
    sample = 'leadstream_collector_rejected_total{code="missing_identity"}'
    assert after[sample] - before.get(sample, 0) == refused
    letters = all_events(read_messages(settings, settings.topic_deadletter, events=refused))
    assert sorted(orjson.loads(letter["original"])["messageId"] for letter in letters) == sorted(f"m-{i}" for i in range(refused))


def test_a_batch_answer_with_few_refusals_lists_them_all(collector: ThreadedCollector) -> None:
    response = collector.post("/v1/batch", {"batch": [track("u-1"), {"type": "track", "event": "x"}]})
    assert response.json() == {
        "success": True, "accepted": 1, "rejected_count": 1, "rejected_omitted": 0,
        "rejected": [{"index": 1, "messageId": None, "code": "missing_identity", "message": "a track call needs a `userId` or an `anonymousId`"}],
    }


def test_an_unexpected_error_mapping_one_call_refuses_that_call_alone(
    collector: ThreadedCollector, settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_map = Mapper.map

    def flawed_map(self: Mapper, call: object, *args: Any, **kwargs: Any) -> Any:
        if isinstance(call, dict) and call.get("event") == "Trips The Bug":
            raise RuntimeError("a bug")
        return real_map(self, call, *args, **kwargs)

    monkeypatch.setattr(Mapper, "map", flawed_map)
    buggy = track("u-2", event="Trips The Bug")
    good = [track("u-1"), track("u-3")]
    response = collector.post("/v1/batch", {"batch": [good[0], buggy, good[1]]})
    assert response.status_code == 200
    assert response.json()["accepted"] == 2
    [rejection] = response.json()["rejected"]
    assert (rejection["index"], rejection["messageId"], rejection["code"]) == (1, buggy["messageId"], "mapping_failed")
    assert "RuntimeError" in rejection["message"]
    single = collector.post("/v1/track", track("u-4", event="Trips The Bug"))
    assert (single.status_code, single.json()["code"]) == (400, "mapping_failed")

    events = all_events(read_messages(settings, settings.topic_events, events=2))
    assert sorted(e["event_id"] for e in events) == sorted(call["messageId"] for call in good)
    letters = all_events(read_messages(settings, settings.topic_deadletter, events=2))
    assert [letter["reason"] for letter in letters] == ["mapping_failed"] * 2
    assert buggy in [orjson.loads(letter["original"]) for letter in letters]
    assert [r for r in caplog.records if r.levelno == logging.ERROR and r.name == "leadstream.collector" and r.exc_info]


def test_an_unexpected_error_answering_a_request_is_counted_as_a_500(
    collector: ThreadedCollector, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: Collector, *args: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Collector, "_messages", broken)
    before = scrape(settings)
    assert collector.post("/v1/track", track("u-1")).status_code == 500
    after = scrape(settings)
    sample = 'leadstream_collector_requests_total{call="track",status="500"}'
    assert after.get(sample, 0) - before.get(sample, 0) == 1
