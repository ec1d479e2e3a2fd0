"""The collector's HTTP contract against the real broker: mapping into Kafka, envelopes, every rejection."""

from __future__ import annotations

import asyncio
import base64
import codecs
import gc
import gzip
import json
import logging
import socket
import threading
import time
import uuid
import zlib
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
import requests
from aiohttp.test_utils import TestClient, TestServer

from streams import collector as collector_module
from streams.collector import BATCH_LIMIT_BYTES, CALL_LIMIT_BYTES, Collector, KafkaWriter, Outgoing, create_app, load_sources
from streams.errors import Unavailable
from streams.log_throttle import throttle_kafka_retries
from streams.partitioning import partition_for
from streams.processes import CollectorProcess
from streams.segment import Mapped, Mapper
from streams.settings import Settings
from streams.processes import free_port
from tests.streams.collector_support import (  # settings and collector: fixtures
    WRITE_KEY, ThreadedCollector, all_events, collector, read_messages, settings, track,
)
from tests.infra import add_partitions, leadstream, wait_for


def test_each_single_call_lands_keyed_by_its_lead_on_the_leads_partition(collector: ThreadedCollector, settings: Settings) -> None:
    calls: dict[str, dict[str, Any]] = {
        "track": {"userId": "u-1", "event": "Demo Requested", "properties": {"size": 3}, "timestamp": "2026-01-01T10:00:00Z"},
        "page": {"anonymousId": "a-1", "properties": {"url": "https://acme.test/pricing"}, "timestamp": "2026-01-01T10:00:01Z"},
        "screen": {"userId": "u-2", "name": "Billing", "timestamp": "2026-01-01T10:00:02Z"},
        "identify": {"userId": "u-1", "traits": {"email": "ada@acme.test"}, "timestamp": "2026-01-01T10:00:03Z"},
        "group": {"userId": "u-1", "groupId": "acme", "traits": {"employees": 50}, "timestamp": "2026-01-01T10:00:04Z"},
        "alias": {"userId": "u-1", "previousId": "a-1", "timestamp": "2026-01-01T10:00:05Z"},
    }
    for kind, call in calls.items():
        response = collector.post(f"/v1/{kind}", {**call, "messageId": f"m-{kind}"})
        assert (response.status_code, response.json()) == (200, {"success": True, "accepted": 1}), kind

    partitions = settings.partitions
    events = read_messages(settings, settings.topic_events, events=3)
    profiles = read_messages(settings, settings.topic_profiles, events=3)
    got = {m.events[0]["event_id"]: (m.key, m.partition, m.events[0]) for m in events + profiles}
    assert sorted(got) == sorted(f"m-{kind}" for kind in calls)
    for event_id, (key, partition, event) in got.items():
        assert key == event["lead_id"].encode()
        assert partition == partition_for(event["lead_id"], partitions)
        assert event["source"] == "website"
    assert {e["type"] for m in events for e in m.events} == {"demo_requested", "page_view", "screen_view"}
    assert {e["type"] for m in profiles for e in m.events} == {"identify", "group", "alias"}
    assert got["m-page"][2]["lead_id"] == "anon:a-1"
    assert got["m-page"][2]["properties"]["path"] == "/pricing"
    assert got["m-group"][2]["account_id"] == "acme"
    assert got["m-alias"][2]["previous_id"] == "a-1"
    assert got["m-track"][2]["time"] == 1_767_261_600_000  # 2026-01-01T10:00:00Z


def test_a_batch_is_written_as_one_envelope_per_partition(collector: ThreadedCollector, settings: Settings) -> None:
    leads = [f"lead-{i}" for i in range(40)]
    batch = [track(leads[i % 40]) for i in range(200)]
    batch += [{"type": "identify", "userId": lead, "traits": {"n": n}, "messageId": uuid.uuid4().hex} for lead in leads[:3] for n in (1, 2)]
    response = collector.post("/v1/batch", {"batch": batch, "sentAt": "2026-01-01T00:00:00Z"})
    assert (response.status_code, response.json()) == (200, {"success": True, "accepted": 206})

    events = read_messages(settings, settings.topic_events, events=200)
    assert len(events) == settings.partitions  # 40 leads cover every partition
    for message in events:
        assert message.key is None  # several leads share each envelope
        assert {partition_for(e["lead_id"], settings.partitions) for e in message.events} == {message.partition}
    ids = [e["event_id"] for e in all_events(events)]
    assert sorted(ids) == sorted(call["messageId"] for call in batch[:200])
    # The compacted profiles topic gets one keyed message per lead, holding that lead's updates in order.
    profiles = read_messages(settings, settings.topic_profiles, events=6)
    assert sorted((m.key, [e["traits"]["n"] for e in m.events]) for m in profiles) == [
        (lead.encode(), [1, 2]) for lead in sorted(leads[:3])
    ]


def test_bad_calls_of_a_batch_are_reported_and_dead_lettered_and_the_good_ones_kept(
    collector: ThreadedCollector, settings: Settings
) -> None:
    good = [track("u-1"), track("u-2")]
    bad = [
        {"type": "track", "userId": "u-3", "messageId": "no-event"},
        {"type": "track", "event": "A", "messageId": "nobody"},
        {"type": "login", "userId": "u-4", "messageId": "bad-type"},
        "not a call",
        {"type": "track", "userId": "u-5", "event": "Big", "messageId": "too-big", "properties": {"x": "y" * CALL_LIMIT_BYTES}},
    ]
    response = collector.post("/v1/batch", {"batch": [good[0], *bad, good[1]], "writeKey": "ignored with a header"})
    assert response.status_code == 200
    body = response.json()
    assert body["accepted"] == 2
    assert [(r["index"], r["messageId"], r["code"]) for r in body["rejected"]] == [
        (1, "no-event", "missing_event"),
        (2, "nobody", "missing_identity"),
        (3, "bad-type", "bad_type"),
        (4, None, "bad_call"),
        (5, "too-big", "too_large"),
    ]
    assert all(r["message"] for r in body["rejected"])
    assert sorted(e["event_id"] for e in all_events(read_messages(settings, settings.topic_events, events=2))) == sorted(
        call["messageId"] for call in good
    )
    letters = all_events(read_messages(settings, settings.topic_deadletter, events=5))
    assert sorted(letter["reason"] for letter in letters) == sorted(r["code"] for r in body["rejected"])
    no_event = next(letter for letter in letters if letter["reason"] == "missing_event")
    assert orjson.loads(no_event["original"]) == bad[0]
    assert no_event["detail"].startswith("source website, /v1/batch call 1: ")
    assert no_event["source"] == {"topic": None, "partition": None, "offset": None}  # as README "Topics" says


def test_import_is_the_batch_endpoint_as_segments_ruby_library_posts_to_it(collector: ThreadedCollector, settings: Settings) -> None:
    calls = [track("u-1"), track("u-2")]
    response = collector.post("/v1/import", {"batch": [*calls, {"type": "track", "userId": "u-3", "messageId": "no-event"}]})
    assert response.status_code == 200
    assert (response.json()["accepted"], [r["code"] for r in response.json()["rejected"]]) == (2, ["missing_event"])
    written = all_events(read_messages(settings, settings.topic_events, events=2))
    assert sorted(e["event_id"] for e in written) == sorted(call["messageId"] for call in calls)
    [letter] = all_events(read_messages(settings, settings.topic_deadletter, events=1))
    assert letter["detail"].startswith("source website, /v1/import call 2: ")


def browser_call(kind: str, lead: str, **fields: Any) -> dict[str, Any]:
    """A call as a browser library builds it: its type, the write key, an anonymous id and sentAt in the body."""
    return {"type": kind, "userId": lead, "anonymousId": f"a-{lead}", "messageId": uuid.uuid4().hex, "writeKey": WRITE_KEY,
            "sentAt": datetime.now(timezone.utc).isoformat(), "context": {"library": {"name": "analytics.js"}}, **fields}


BROWSER_CALLS = {
    "t": browser_call("track", "u-t", event="Pricing Viewed", properties={"plan": "pro"}),
    "p": browser_call("page", "u-p", properties={"path": "/pricing"}),
    "s": browser_call("screen", "u-s", name="Home"),
    "i": browser_call("identify", "u-i", traits={"title": "CTO"}),
    "g": browser_call("group", "u-g", groupId="acme", traits={"industry": "Software"}),
    "a": browser_call("alias", "u-a", previousId="a-old"),
}


def test_analytics_js_short_paths_and_rudderstack_beacons_are_served(collector: ThreadedCollector, settings: Settings) -> None:
    """analytics.js posts each call to /v1/ and its type's first letter (/v1/t, ...) and its
    batches to /v1/b; RudderStack's browser SDK in beacon mode posts batches to
    /beacon/v1/batch?writeKey=KEY: all were 404, so those libraries, given the collector's host,
    lost every event. Each is the call it stands for; an unknown short name is still a 404."""
    text = {"Content-Type": "text/plain"}  # what both libraries send, without an Authorization header
    for letter, call in BROWSER_CALLS.items():
        response = collector.post(f"/v1/{letter}", call, key=None, headers=text)
        assert (response.status_code, response.json()) == (200, {"success": True, "accepted": 1}), letter
    batched = [track("u-b1"), track("u-b2")]
    assert collector.post("/v1/b", {"writeKey": WRITE_KEY, "batch": batched, "sentAt": datetime.now(timezone.utc).isoformat()},
                          key=None, headers=text).json() == {"success": True, "accepted": 2}
    beacons = [track("u-r1"), track("u-r2")]
    response = requests.post(f"{collector.url}/beacon/v1/batch?writeKey={WRITE_KEY}", data=orjson.dumps({"batch": beacons}),
                             headers=text, timeout=10)
    assert response.json() == {"success": True, "accepted": 2}
    unknown = requests.post(f"{collector.url}/beacon/v1/batch?writeKey=wk-unknown", data=orjson.dumps({"batch": beacons}),
                            headers=text, timeout=10)
    assert (unknown.status_code, unknown.json()["code"]) == (401, "unauthorized")
    assert collector.post("/v1/x", track("u-x")).status_code == 404

    events = all_events(read_messages(settings, settings.topic_events, events=7))
    assert sorted((e["lead_id"], e["type"]) for e in events) == [
        ("u-b1", "pricing_viewed"), ("u-b2", "pricing_viewed"), ("u-p", "page_view"), ("u-r1", "pricing_viewed"),
        ("u-r2", "pricing_viewed"), ("u-s", "screen_view"), ("u-t", "pricing_viewed")]
    profiles = all_events(read_messages(settings, settings.topic_profiles, events=3))
    assert sorted((e["lead_id"], e["type"]) for e in profiles) == [("u-a", "alias"), ("u-g", "group"), ("u-i", "identify")]


def test_a_lone_surrogate_escape_is_replaced_and_loses_no_call(collector: ThreadedCollector, settings: Settings) -> None:
    # What JSON.stringify writes for a title cut between the two halves of an emoji; a whole
    # emoji's pair of escapes is read as it always was.
    calls = [track(f"u-{i}", properties={"title": f"title-{i}"}) for i in range(3)]
    raw = orjson.dumps({"batch": calls}).replace(b'"title-1"', b'"Pricing \\ud83d"').replace(b'"title-2"', b'"\\ud83d\\ude00 Plans"')
    response = collector.post("/v1/batch", raw)
    assert (response.status_code, response.json()) == (200, {"success": True, "accepted": 3})
    got = {e["event_id"]: e for e in all_events(read_messages(settings, settings.topic_events, events=3))}
    assert [got[call["messageId"]]["properties"]["title"] for call in calls] == ["title-0", "Pricing \ufffd", "\U0001f600 Plans"]


def test_bodies_are_read_as_utf8_a_bom_ignored_and_utf16_or_utf32_refused_naming_it(
    collector: ThreadedCollector, settings: Settings
) -> None:
    """JSON is UTF-8 (RFC 8259). A UTF-8 body starting with a byte order mark was refused as
    bad_json, while a UTF-16 one was accepted by accident (orjson's refusal mentioned surrogates,
    which sent it to the lone-surrogate repair, and the standard library's parser reads UTF-16)."""
    with_bom = track("u-bom")
    assert collector.post("/v1/track", codecs.BOM_UTF8 + orjson.dumps(with_bom)).status_code == 200
    for encoding, named in [("utf-16", "UTF-16"), ("utf-16-le", "UTF-16-LE"), ("utf-16-be", "UTF-16-BE"), ("utf-32", "UTF-32")]:
        for path, body in [("/v1/track", track("u")), ("/v1/batch", {"batch": [track("u")]})]:
            response = collector.post(path, json.dumps(body).encode(encoding))
            assert (response.status_code, response.json()["code"]) == (400, "bad_json"), (encoding, path)
            assert f"is in {named}" in response.json()["message"] and "UTF-8" in response.json()["message"]
    declared = collector.post("/v1/track", orjson.dumps(track("u")), headers={"Content-Type": "application/json; charset=ISO-8859-1"})
    assert (declared.status_code, declared.json()["code"]) == (400, "bad_content_type")
    assert "charset=iso-8859-1" in declared.json()["message"]
    ascii_ = track("u-ascii")
    assert collector.post("/v1/track", orjson.dumps(ascii_), headers={"Content-Type": "application/json; charset=US-ASCII"}).status_code == 200
    got = [e["event_id"] for e in all_events(read_messages(settings, settings.topic_events, events=2))]
    assert sorted(got) == sorted([with_bom["messageId"], ascii_["messageId"]])
    assert read_messages(settings, settings.topic_deadletter, events=0, settle_s=0.5) == []


def test_bytes_that_are_not_utf8_are_replaced_and_lose_no_call(collector: ThreadedCollector, settings: Settings) -> None:
    """A title in Latin-1 or cut inside a character's bytes, or a surrogate encoded on its own (as
    CESU-8 writes an emoji): read as U+FFFD, as browsers and Go's encoding/json do. The whole
    request was refused as bad_json, losing the batch's good calls, or (the encoded surrogates)
    taken as it was."""
    calls = [track(f"u-{i}", properties={"title": f"title-{i}"}) for i in range(4)]
    raw = (orjson.dumps({"batch": calls}).replace(b'"title-1"', b'"Caf\xe9"').replace(b'"title-2"', b'"Cut \xe2\x82"')
           .replace(b'"title-3"', b'"\xed\xa0\xbd\xed\xb8\x80 Plans"'))  # fmt: skip
    response = collector.post("/v1/batch", raw)
    assert (response.status_code, response.json()) == (200, {"success": True, "accepted": 4})
    got = {e["event_id"]: e for e in all_events(read_messages(settings, settings.topic_events, events=4))}
    titles = [got[call["messageId"]]["properties"]["title"] for call in calls]
    assert titles == ["title-0", "Caf\ufffd", "Cut \ufffd", "\ufffd" * 6 + " Plans"]


def test_an_id_the_repair_would_change_refuses_its_call_naming_the_field(collector: ThreadedCollector, settings: Settings) -> None:
    """Read as U+FFFD, `jos\\xe9` and `jos\\xfc` were one lead (José's demo request reached sales
    under Josu's e-mail), `order-\\xe9` and `order-\\xfc` one event (the second dropped as a
    repeat), and so for every id. Such a call is refused; text keeps its repair, and a U+FFFD sent
    as UTF-8 is an id of its own."""
    def sent(call: dict[str, Any], **raw: str) -> bytes:
        # `raw`: fields whose JSON is written as given, bytes that are not UTF-8 or escapes.
        text = orjson.dumps({**call, **{name: f"@{name}@" for name in raw}})
        for name, value in raw.items():
            text = text.replace(f'"@{name}@"'.encode(), b'"' + value.encode("latin-1") + b'"')
        return text

    repaired_title = track("u-title", properties={"title": "@title@"})
    literal = track("jos\ufffd", properties={"title": "@title@"})
    refused = {
        "userId": sent(track("@"), userId="jos\xe9"),
        "anonymousId": sent({**track("@"), "userId": None}, anonymousId="v\xfc"),
        "messageId": sent(track("u-m"), messageId="order-\xe9"),
        "groupId": sent({"type": "group", "userId": "u-g", "messageId": "g"}, groupId="acme\xe9"),
        "previousId": sent({"type": "alias", "userId": "u-a", "messageId": "a"}, previousId="anon\xe9"),
        "context.groupId": sent({**track("u-c"), "context": {"groupId": "@groupId@"}}).replace(b'"@groupId@"', b'"acme\xfc"'),
    }
    surrogates = [sent(track("@"), userId="sur\\ud83d"), sent(track("@"), userId="sur\\udc00")]
    batch = (b'{"batch": [' + b", ".join([*refused.values(), *surrogates, sent(repaired_title, title="Caf\xe9"),
                                          sent(literal, title="Caf\xe9")]) + b"]}")
    response = collector.post("/v1/batch", batch)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["accepted"] == 2 and answer["rejected_count"] == len(refused) + 2, answer
    for rejection, field in zip(answer["rejected"], [*refused, "userId", "userId"]):
        assert rejection["code"] == "bad_field" and rejection["message"].startswith(f"`{field}` holds bytes that are not UTF-8"), rejection
        assert "two ids differing there would become one" in rejection["message"]
    got = {e["event_id"]: e for e in all_events(read_messages(settings, settings.topic_events, events=2))}
    assert got[repaired_title["messageId"]]["properties"]["title"] == "Caf\ufffd"
    assert got[literal["messageId"]]["lead_id"] == "jos\ufffd"
    # A single call alike: 400 naming the field.
    single = collector.post("/v1/identify", sent({"traits": {"email": "jose@acme.test"}}, userId="jos\xe9"))
    assert (single.status_code, single.json()["code"]) == (400, "bad_field") and "`userId`" in single.json()["message"]
    assert read_messages(settings, settings.topic_profiles, events=0, settle_s=0.5) == []


def test_a_body_not_json_once_repaired_is_told_its_error_as_a_utf8_body_would_be(collector: ThreadedCollector) -> None:
    # It was told orjson's first error, about the bytes it then repaired: "str is not valid UTF-8:
    # surrogates not allowed: line 1 column 1 (char 0)".
    utf8 = collector.post("/v1/track", b'{"userId":"lat\xc3\xa9","event":"A","properties":{"v":NaN}}')
    latin1 = collector.post("/v1/track", b'{"userId":"lat\xe9","event":"A","properties":{"v":NaN}}')
    assert (latin1.status_code, latin1.json()["code"]) == (400, "bad_json")
    assert latin1.json()["message"] == utf8.json()["message"] == (
        "the body is not JSON: unexpected character, expected a JSON value: line 1 column 48 (char 47)")


def test_a_batchs_context_counts_for_each_call_under_its_own(collector: ThreadedCollector, settings: Settings) -> None:
    context = {"app": {"name": "b2b"}, "groupId": "acme", "page": {"url": "https://acme.test/pricing", "title": "Pricing"}}
    plain = {"type": "page", "userId": "u-1", "messageId": "plain"}
    own = {"type": "page", "userId": "u-2", "messageId": "own", "context": {"groupId": "globex", "page": {"title": "Plans"}}}
    response = collector.post("/v1/batch", {"batch": [plain, own], "context": context})
    assert (response.status_code, response.json()) == (200, {"success": True, "accepted": 2})
    got = {e["event_id"]: e for e in all_events(read_messages(settings, settings.topic_events, events=2))}
    assert (got["plain"]["product"], got["plain"]["account_id"], got["plain"]["properties"]["title"]) == ("b2b", "acme", "Pricing")
    assert (got["own"]["product"], got["own"]["account_id"], got["own"]["properties"]["title"]) == ("b2b", "globex", "Plans")
    assert got["own"]["properties"]["path"] == "/pricing"  # the batch's page.url, beside the call's own page.title


def test_a_library_clock_running_fast_is_corrected_and_a_call_timed_ahead_is_refused(
    collector: ThreadedCollector, settings: Settings
) -> None:
    now = datetime.now(timezone.utc)
    fast = now + timedelta(hours=2)  # the sending host's clock, which sets `timestamp` and `sentAt`
    skewed = track("u-1", timestamp=fast.isoformat())
    ahead = track("u-2", timestamp=fast.isoformat(), sentAt=now.isoformat())  # sent 2 h before it happened
    response = collector.post("/v1/batch", {"batch": [skewed, ahead], "sentAt": fast.isoformat()})
    assert response.status_code == 200
    body = response.json()
    assert body["accepted"] == 1
    [refused] = body["rejected"]
    assert (refused["index"], refused["code"]) == (1, "future_time")
    assert refused["message"].startswith(f"`timestamp` {fast.isoformat()!r}, corrected for the client's clock by `sentAt`")
    assert "puts the call 7,200 s ahead" in refused["message"]
    [event] = all_events(read_messages(settings, settings.topic_events, events=1))
    assert event["event_id"] == skewed["messageId"]
    assert 0 <= event["received_at"] - event["time"] < 5000  # when it was sent, less its time in transit
    [letter] = all_events(read_messages(settings, settings.topic_deadletter, events=1))
    assert letter["reason"] == "future_time"


def test_the_collectors_clock_is_the_workers_with_its_offset(settings: Settings) -> None:
    """With LEADSTREAM_CLOCK_OFFSET_MS at -2 h, a call timed now was answered 200, then
    dead-lettered by the worker as 2 h ahead of its clock; a call without a time of its own was
    timed by the wall clock, 2 h after the worker's now."""
    behind = settings.with_overrides(clock_offset_ms=-2 * 3_600_000)
    with ThreadedCollector(behind) as running:
        refused = running.post("/v1/track", track("u-1", timestamp=datetime.now(timezone.utc).isoformat()))
        assert (refused.status_code, refused.json()["code"]) == (400, "future_time")
        assert running.post("/v1/track", track("u-2")).status_code == 200
    [event] = all_events(read_messages(behind, behind.topic_events, events=1))
    assert abs(event["time"] - (time.time() * 1000 - 2 * 3_600_000)) < 60_000


def test_calls_nested_too_deep_are_refused_and_dead_lettered_and_the_good_ones_kept(
    collector: ThreadedCollector, settings: Settings
) -> None:
    good = [track("u-1"), track("u-2")]
    # Deeper than events may nest (the engine would refuse them), deeper than orjson writes
    # (255), and nearly as deep as a request may be read at all (orjson reads 1,024 levels).
    # The body is spelt out: no encoder here writes the deepest.
    levels = (40, 300, 1015)
    deep = [track("u-3", messageId=f"deep-{n}", properties={"x": f"nested-{n}"}) for n in levels]
    raw = orjson.dumps({"batch": [good[0], *deep, good[1]]})
    for n in levels:
        raw = raw.replace(f'"nested-{n}"'.encode(), b"[" * n + b'"bottom"' + b"]" * n)
    response = collector.post("/v1/batch", raw)
    assert response.status_code == 200
    body = response.json()
    assert body["accepted"] == 2
    # The engine's refusal, as for any field it would refuse.
    assert [(r["messageId"], r["code"]) for r in body["rejected"]] == [(call["messageId"], "bad_field") for call in deep]
    assert all("properties.x nests objects and arrays more than 32 levels deep" in r["message"] for r in body["rejected"])
    assert sorted(e["event_id"] for e in all_events(read_messages(settings, settings.topic_events, events=2))) == sorted(
        call["messageId"] for call in good
    )
    letters = {orjson.loads(letter["original"])["messageId"] if letter["original"] else None: letter
               for letter in all_events(read_messages(settings, settings.topic_deadletter, events=3))}
    # The deepest cannot be written out again: its letter says so instead of holding it.
    assert set(letters) == {"deep-40", "deep-300", None}
    assert letters[None]["detail"].endswith("(the call is not kept: it is nested too deep to be written out)")


def test_a_body_nested_past_what_json_readers_take_is_refused_whole_saying_so(collector: ThreadedCollector) -> None:
    # A 2 KB ASCII body was told "deeper than can be read once its bytes that are not UTF-8 are
    # repaired": it had no such bytes, and the client was sent looking for an encoding fault.
    raw = orjson.dumps({"batch": [track("u-1"), track("u-2", properties={"x": "nested"})]})
    raw = raw.replace(b'"nested"', b"[" * 1100 + b'"bottom"' + b"]" * 1100)
    response = collector.post("/v1/batch", raw)
    assert response.status_code == 400
    assert response.json()["code"] == "too_large"
    assert response.json()["message"] == ("the body nests objects and arrays about 1,000 levels deep or more, where no call may "
                                          "nest more than 32: the request is refused whole, its calls unread")


def test_a_bad_single_call_is_answered_400_and_dead_lettered(collector: ThreadedCollector, settings: Settings) -> None:
    response = collector.post("/v1/track", {"userId": "u-1", "messageId": "m-1", "writeKey": WRITE_KEY}, key=None)
    assert response.status_code == 400
    assert response.json()["code"] == "missing_event"
    [letter] = all_events(read_messages(settings, settings.topic_deadletter, events=1))
    assert letter["reason"] == "missing_event"
    assert "writeKey" not in orjson.loads(letter["original"])  # the key is not copied into the dead letters


def scrape(settings: Settings) -> dict[str, float]:
    """The collector's samples on its operations port, as {'name{labels}': value}."""
    text = requests.get(f"http://127.0.0.1:{settings.collector_metrics_port}/metrics", timeout=5).text
    return {name: float(value) for name, _, value in (line.rpartition(" ") for line in text.splitlines() if line.startswith("leadstream_collector_"))}


def test_requests_calls_and_refusals_are_counted_on_the_operations_port(collector: ThreadedCollector, settings: Settings) -> None:
    before = scrape(settings)  # the registry is the test process's: compare with what it held before
    assert collector.post("/v1/batch", {"batch": [track("u-1"), {"type": "track", "userId": "u-2"}, track("u-3")]}).status_code == 200
    assert collector.post("/v1/track", {"userId": "u-1", "messageId": "m-1"}).status_code == 400
    assert collector.post("/v1/batch", b"{").status_code == 400
    assert collector.post("/v1/batch", {"batch": []}, key="wk-unknown").status_code == 401
    # Unknown paths and methods (a scanner's probes) are no requests of a call: the refusal
    # alert's share of 4xx answers would count them against the clients' requests.
    assert collector.post("/v1/trak", track("u-4")).status_code == 404
    assert requests.get(f"{collector.url}/v1/track", timeout=10).status_code == 405
    after = scrape(settings)

    def added(sample: str) -> float:
        return after.get(sample, 0) - before.get(sample, 0)

    assert {sample: added(sample) for sample in after if added(sample) and "_bucket" not in sample and "_created" not in sample} == {
        'leadstream_collector_requests_total{call="batch",status="200"}': 1,
        'leadstream_collector_requests_total{call="track",status="400"}': 1,
        'leadstream_collector_requests_total{call="batch",status="400"}': 1,
        'leadstream_collector_requests_total{call="batch",status="401"}': 1,
        'leadstream_collector_calls_accepted_total{source="website"}': 2,
        'leadstream_collector_calls_refused_total{source="website"}': 2,  # one call of the batch, the single call
        'leadstream_collector_rejected_total{code="missing_event"}': 2,  # one call of the batch, the single call
        'leadstream_collector_rejected_total{code="bad_json"}': 1,
        'leadstream_collector_rejected_total{code="unauthorized"}': 1,
        'leadstream_collector_request_seconds_count{call="batch"}': 3,
        'leadstream_collector_request_seconds_count{call="track"}': 1,
        'leadstream_collector_request_seconds_sum{call="batch"}': added('leadstream_collector_request_seconds_sum{call="batch"}'),
        'leadstream_collector_request_seconds_sum{call="track"}': added('leadstream_collector_request_seconds_sum{call="track"}'),
    }  # fmt: skip
    assert after["leadstream_collector_kafka_connected"] == 1
    assert after["leadstream_collector_in_flight_bytes"] == 0
    operations = f"http://127.0.0.1:{settings.collector_metrics_port}"
    assert requests.get(f"{operations}/readyz", timeout=5).json() == {"ready": True}
    assert requests.get(f"{operations}/healthz", timeout=5).status_code == 200
    assert requests.get(f"{collector.url}/metrics", timeout=5).status_code == 404  # never on the public port


def test_the_operations_port_shows_the_collectors_metrics_not_the_other_processes(collector: ThreadedCollector, settings: Settings) -> None:
    # The collector imports modules it shares with the connectors, and this test process every
    # process's metrics, as a connector imports the worker's: each showed the others' families (a
    # connector's `leadstream_worker_ready 0` kept LeadstreamWorkerNotReady firing).
    import sinks.metrics  # noqa: F401
    import streams.metrics  # noqa: F401

    text = requests.get(f"http://127.0.0.1:{settings.collector_metrics_port}/metrics", timeout=5).text
    declared = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE leadstream_")}
    assert "leadstream_collector_requests_total" in declared
    assert {name for name in declared if not name.startswith("leadstream_collector_")} == set()


def gzipped(body: Any) -> bytes:
    return gzip.compress(orjson.dumps(body))


def padded_batch(size: int) -> dict[str, Any]:
    """A batch of valid calls holding about `size` bytes of JSON."""
    per_call = 30_000
    return {"batch": [track("u-1", properties={"pad": "x" * per_call}) for _ in range(size // per_call + 1)]}


def deflated(body: Any) -> bytes:
    """Raw deflate (RFC 1951), as many clients send `Content-Encoding: deflate`."""
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(orjson.dumps(body)) + compressor.flush()


GZIP = {"Content-Encoding": "gzip"}
DEFLATE = {"Content-Encoding": "deflate"}
REJECTIONS = [
    ("/v1/track", orjson.dumps(track("u")), {"Content-Type": "application/xml"}, "bad_content_type"),
    ("/v1/track", b'{"userId": "u", "event": "A"', {}, "bad_json"),
    ("/v1/track", b"[1, 2]", {}, "bad_json"),
    ("/v1/track", b'{"userId": "u\\ud83d", "event": "A", "n": NaN}', {}, "bad_json"),  # repaired, still not JSON
    ("/v1/batch", b'{"batch": {"type": "track"}}', {}, "bad_batch"),
    ("/v1/batch", b"{}", {}, "bad_batch"),
    ("/v1/batch", b'{"batch": [], "context": "web"}', {}, "bad_batch"),
    ("/v1/track", orjson.dumps(track("u")), {"Content-Encoding": "br"}, "bad_encoding"),
    ("/v1/track", b"this is not gzip", GZIP, "bad_gzip"),
    ("/v1/track", gzipped(track("u"))[:-12], GZIP, "bad_gzip"),
    ("/v1/track", gzipped(track("u")) + b"garbage", GZIP, "bad_gzip"),
    ("/v1/track", deflated(track("u")) + b"garbage", DEFLATE, "bad_gzip"),
    ("/v1/track", deflated(track("u"))[:-3], DEFLATE, "bad_gzip"),
    ("/v1/track", orjson.dumps(track("u", properties={"pad": "x" * CALL_LIMIT_BYTES})), {}, "too_large"),
    ("/v1/batch", orjson.dumps(padded_batch(BATCH_LIMIT_BYTES)), {}, "too_large"),
    ("/v1/batch", gzipped(padded_batch(BATCH_LIMIT_BYTES)), GZIP, "too_large"),
    ("/v1/batch", gzip.compress(b" " * 50_000_000), GZIP, "too_large"),  # a gzip bomb: 50 MB from 50 KB
]


def test_bad_requests_get_400_with_the_reason_and_nothing_is_written(collector: ThreadedCollector, settings: Settings) -> None:
    for path, body, headers, code in REJECTIONS:
        response = collector.post(path, body, headers=headers)
        assert (response.status_code, response.json()["code"]) == (400, code), (path, headers, body[:60])
        assert response.json()["message"]
        if code == "too_large":  # one call was told to send smaller batches
            assert ("smaller batches" in response.json()["message"]) == (path == "/v1/batch"), response.json()["message"]
    for topic in (settings.topic_events, settings.topic_deadletter):
        assert read_messages(settings, topic, events=0, settle_s=0.5) == []


def test_a_refused_content_type_or_gzip_body_is_named_as_the_client_sent_it(collector: ThreadedCollector) -> None:
    """A gzip body without Content-Encoding was "not JSON: str is not valid UTF-8: surrogates not
    allowed"; a request with no Content-Type, or one aiohttp cannot parse, was told its type was
    'application/octet-stream', which it never sent."""
    unlabelled = collector.post("/v1/batch", gzipped({"batch": [track("u")]}))
    assert (unlabelled.status_code, unlabelled.json()["code"]) == (400, "bad_encoding")
    assert "gzip-compressed" in unlabelled.json()["message"] and "Content-Encoding: gzip" in unlabelled.json()["message"]
    untyped = collector.post("/v1/track", track("u"), headers={"Content-Type": None})
    assert (untyped.status_code, untyped.json()["code"]) == (400, "bad_content_type")
    assert untyped.json()["message"] == "the request has no Content-Type; send application/json"
    malformed = collector.post("/v1/track", track("u"), headers={"Content-Type": "application/json, text/plain"})
    assert malformed.json()["message"] == "Content-Type is 'application/json, text/plain'; send application/json"


def test_every_gzip_member_and_both_kinds_of_deflate_are_read(collector: ThreadedCollector, settings: Settings) -> None:
    calls = [track(f"u-{i}") for i in range(4)]
    raw = orjson.dumps({"batch": calls[:2]})
    members = gzip.compress(raw[:40]) + gzip.compress(raw[40:])  # what `cat a.gz b.gz` makes: one gzip file
    for body, headers in ((members, GZIP), (deflated(calls[2]), DEFLATE), (zlib.compress(orjson.dumps(calls[3])), DEFLATE)):
        path = "/v1/batch" if body is members else "/v1/track"
        response = collector.post(path, body, headers=headers)
        assert (response.status_code, response.json()["success"]) == (200, True), (headers, response.text)
    written = all_events(read_messages(settings, settings.topic_events, events=4))
    assert sorted(e["event_id"] for e in written) == sorted(call["messageId"] for call in calls)


def test_bodies_just_within_the_limits_after_gzip_are_accepted(collector: ThreadedCollector, settings: Settings) -> None:
    batch = padded_batch(BATCH_LIMIT_BYTES - 40_000)
    assert BATCH_LIMIT_BYTES - 40_000 < len(orjson.dumps(batch)) <= BATCH_LIMIT_BYTES
    assert collector.post("/v1/batch", gzipped(batch), headers=GZIP).json() == {"success": True, "accepted": len(batch["batch"])}
    call = track("u", properties={"pad": "x" * (CALL_LIMIT_BYTES - 200)})
    assert collector.post("/v1/track", gzipped(call), headers=GZIP).json()["accepted"] == 1


@pytest.mark.parametrize(
    ("auth", "body_key"),
    [
        (("wk-unknown", ""), None),  # HTTP Basic, unknown key
        (None, "wk-unknown"),  # in the body, unknown key
        (None, None),  # no key at all
        ("Digest username=" + WRITE_KEY, None),  # not Basic
        ("Basic !!notbase64", None),
    ],
)
def test_a_wrong_write_key_gets_401_and_nothing_is_written(
    collector: ThreadedCollector, settings: Settings, auth: Any, body_key: str | None
) -> None:
    body: dict[str, Any] = {"batch": [track("u-1")]}
    if body_key:
        body["writeKey"] = body_key
    headers = {"Content-Type": "application/json"}
    if isinstance(auth, str):
        headers["Authorization"] = auth
    response = requests.post(f"{collector.url}/v1/batch", data=orjson.dumps(body), auth=auth if isinstance(auth, tuple) else None,
                             headers=headers, timeout=10)
    assert (response.status_code, response.json()["code"]) == (401, "unauthorized")
    for topic in (settings.topic_events, settings.topic_deadletter):
        assert read_messages(settings, topic, events=0, settle_s=0.5) == []


def test_segments_oauth_mode_is_refused_naming_it_and_nothing_is_written(collector: ThreadedCollector, settings: Settings) -> None:
    """Segment's library in OAuth mode sends a Bearer token from Segment's authorization server
    beside the write key in the body. The collector cannot verify that token: it was refused as
    if the client had sent no usable credentials ("use HTTP Basic"), leaving the operator to guess
    that OAuth was the problem."""
    body = {"batch": [track("u-1")], "writeKey": WRITE_KEY}  # what segment.analytics.request.post sends
    response = requests.post(f"{collector.url}/v1/batch", data=orjson.dumps(body), timeout=10,
                             headers={"Content-Type": "application/json", "Authorization": "Bearer eyJhbGciOiJSUzI1NiJ9.e30.c2ln"})
    assert (response.status_code, response.json()["code"]) == (401, "oauth_unsupported")
    assert "OAuth" in response.json()["message"] and "HTTP Basic" in response.json()["message"]
    for topic in (settings.topic_events, settings.topic_deadletter):
        assert read_messages(settings, topic, events=0, settle_s=0.5) == []


def test_a_beacon_with_the_key_in_a_text_plain_body_is_accepted(collector: ThreadedCollector, settings: Settings) -> None:
    response = requests.post(
        f"{collector.url}/v1/page",
        data=orjson.dumps({"writeKey": WRITE_KEY, "anonymousId": "a-7", "properties": {"path": "/"}}),
        headers={"Content-Type": "text/plain;charset=UTF-8", "Origin": "https://acme.test"},
        timeout=10,
    )
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    [event] = all_events(read_messages(settings, settings.topic_events, events=1))
    assert (event["lead_id"], event["type"]) == ("anon:a-7", "page_view")


def test_the_snippet_and_cors_preflight_are_served(collector: ThreadedCollector) -> None:
    script = requests.get(f"{collector.url}/v1/leadstream.js", timeout=10)
    assert script.status_code == 200
    assert script.headers["Content-Type"].startswith("application/javascript")
    assert "sendBeacon" in script.text
    preflight = requests.options(f"{collector.url}/v1/batch", headers={"Origin": "https://acme.test"}, timeout=10)
    assert preflight.status_code == 204
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]


def test_a_preflight_allows_the_headers_it_names_and_answers_expose_retry_after(collector: ThreadedCollector) -> None:
    """Browser libraries add headers of their own (SentAt, X-Retry-Count) that the preflight did
    not allow; a 503's Retry-After was not exposed, so a page could not read how long to wait."""
    asked = "sentat, x-retry-count,Rsa-Retry-Attempt"
    preflight = requests.options(f"{collector.url}/v1/page", timeout=10,
                                 headers={"Origin": "https://acme.test", "Access-Control-Request-Headers": asked})
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Headers"].endswith(asked)
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
    for bad in ("x-a x-b", "x" * 2000, "a;b", "x-a,"):  # not a header list: the fixed list, not an echo
        answer = requests.options(f"{collector.url}/v1/page", timeout=10, headers={"Access-Control-Request-Headers": bad})
        assert answer.headers["Access-Control-Allow-Headers"] == "Authorization, Content-Type, Content-Encoding, AnonymousId"
    for response in (requests.post(f"{collector.url}/v1/page", json={}, timeout=10),  # 401: no write key
                     requests.get(f"{collector.url}/v1/track", timeout=10),  # 405, raised by aiohttp
                     requests.post(f"{collector.url}/v1/trak", data=b"{}", timeout=10)):  # 404, raised by aiohttp
        assert response.status_code in (401, 404, 405)
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert response.headers["Access-Control-Expose-Headers"] == "Retry-After"


def test_a_mistyped_path_or_method_is_answered_in_the_calls_json_shape(collector: ThreadedCollector) -> None:
    """aiohttp answered 404 and 405 in plain text ("404: Not Found"): a client reading `code` and
    `message`, as of every other refusal, failed to parse it, and nothing said which paths exist."""
    missing = requests.post(f"{collector.url}/v1/trak", data=b"{}", timeout=10)
    assert (missing.status_code, missing.headers["Content-Type"]) == (404, "application/json")
    assert missing.json()["code"] == "unknown_path"
    # Every path served, the short ones analytics.js posts to too (they were left out).
    assert missing.json()["message"] == (
        "no call at /v1/trak: the collector takes POST /v1/CALL (CALL one of track, page, screen, identify, group, alias, "
        "batch, import, or the short forms t, p, s, i, g, a, b), POST /beacon/v1/batch and GET /v1/leadstream.js")
    wrong = requests.get(f"{collector.url}/v1/track", timeout=10)
    assert (wrong.status_code, wrong.json()["code"], wrong.headers["Allow"]) == (405, "method_not_allowed", "POST")
    assert wrong.json()["message"] == "GET /v1/track: the path takes POST"
    assert wrong.headers["Access-Control-Allow-Origin"] == "*"


def raw_request(port: int, head: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(head)
    return sock


def read_status(sock: socket.socket) -> tuple[int, bytes]:
    response = b""
    while b"\r\n\r\n" not in response or not response.rstrip().endswith(b"}"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        response += chunk
    return int(response.split(b" ", 2)[1]), response.partition(b"\r\n\r\n")[2]


def headers_for(length: int) -> bytes:
    return (
        f"POST /v1/track HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n"
        f"Authorization: Basic {base64.b64encode(f'{WRITE_KEY}:'.encode()).decode()}\r\n\r\n"
    ).encode()


def test_a_client_sending_its_body_slowly_is_cut_off_by_the_timeout(collector: ThreadedCollector) -> None:
    body = orjson.dumps(track("u-slow"))
    sock = raw_request(collector.settings.collector_port, headers_for(len(body)) + body[:10])
    started = time.monotonic()
    try:
        # Meanwhile other clients are served.
        assert collector.post("/v1/track", track("u-fast")).status_code == 200
        for byte in body[10:20]:
            sock.sendall(bytes([byte]))
            time.sleep(0.15)
        status, payload = read_status(sock)
    finally:
        sock.close()
    assert (status, orjson.loads(payload)["code"]) == (408, "body_timeout")
    assert 0.9 < time.monotonic() - started < 5


def test_a_body_cut_short_by_the_client_is_dropped_without_an_error(
    collector: ThreadedCollector, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    body = orjson.dumps(track("u-1"))
    sock = raw_request(collector.settings.collector_port, headers_for(len(body)) + body[: len(body) // 2])
    try:
        sock.shutdown(socket.SHUT_WR)  # the client gives up half-way: there is nobody left to answer
        assert sock.recv(1024) == b""
    finally:
        sock.close()
    assert collector.post("/v1/track", track("u-2")).status_code == 200
    [event] = all_events(read_messages(settings, settings.topic_events, events=1))
    assert event["lead_id"] == "u-2"
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


def test_kafka_down_gives_503_with_retry_after(settings: Settings) -> None:
    down = settings.with_overrides(kafka_bootstrap=f"127.0.0.1:{free_port()}")
    with ThreadedCollector(down, wait_ready=False) as collector:
        # Both ports' /readyz, with the Retry-After of the calls refused meanwhile (they had none).
        for url in (collector.url, f"http://127.0.0.1:{down.collector_metrics_port}"):
            not_ready = requests.get(f"{url}/readyz", timeout=5)
            assert (not_ready.status_code, not_ready.headers.get("Retry-After")) == (503, "2"), url
        response = collector.post("/v1/batch", {"batch": [track("u-1")]})
        assert response.status_code == 503
        assert int(response.headers["Retry-After"]) > 0
        assert response.json()["code"] == "unavailable"
        # Still a 401 for a wrong key, and a 400 for bad headers: those never depend on Kafka. A
        # body is read only when it could be written (a bad one is refused once Kafka is back).
        assert collector.post("/v1/batch", {"batch": []}, key="wk-unknown").status_code == 401
        assert collector.post("/v1/batch", b"{", headers={"Content-Type": "text/html"}).status_code == 400


def test_a_missing_topic_is_named_its_lines_throttled_and_its_producer_closed_at_stop(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A collector whose events topic did not exist (LEADSTREAM_TOPIC_EVENTS misspelt, or started
    before `leadstream topics`) answered 503 "not connected to Kafka at 127.0.0.1:9092 yet" though
    the broker answered, let aiokafka log "Topic ... not found in cluster metadata" ten times a
    second, and stopped with "Unclosed AIOKafkaProducer": its attempt under way was cancelled
    before its producer was stopped."""
    missing = f"{settings.topic_events}-misspelt"
    throttle_kafka_retries()  # as run_collector does
    with ThreadedCollector(settings.with_overrides(topic_events=missing), wait_ready=False) as collector:
        operations = f"http://127.0.0.1:{settings.collector_metrics_port}"

        def reasons() -> list[str]:
            return [requests.get(f"{url}/readyz", timeout=5).json().get("reason", "") for url in (collector.url, operations)]

        wait_for(lambda: all(missing in reason for reason in reasons()), timeout_s=30, what="/readyz naming the topic")
        said = f"Kafka at {settings.kafka_bootstrap} answers, but topic {missing!r} does not exist: run `leadstream topics`, or check LEADSTREAM_TOPIC_EVENTS"
        assert reasons() == [said, said]
        response = collector.post("/v1/track", track("u-1"))
        assert (response.status_code, response.json()["message"]) == (503, said)
        time.sleep(collector_module.CONNECT_RETRY_S + 1)  # into the next attempt, which waits for the topic
    gc.collect()
    lines = [record.getMessage() for record in caplog.records]
    assert not [line for line in lines if "Unclosed AIOKafkaProducer" in line]
    # Seconds of attempts: once, or twice with the first after the interval.
    assert len([line for line in lines if f"Topic {missing} not found in cluster metadata" in line]) <= 2


@pytest.fixture
def mapped_calls(monkeypatch: pytest.MonkeyPatch) -> list[None]:
    """One entry per call the collector maps (Mapper.map), in any request."""
    calls: list[None] = []
    map_call = Mapper.map

    def counted(self: Mapper, *args: Any, **kwargs: Any) -> Mapped:
        calls.append(None)
        return map_call(self, *args, **kwargs)

    monkeypatch.setattr(Mapper, "map", counted)
    return calls


def test_while_kafka_is_down_a_batch_is_answered_503_without_mapping_its_calls(settings: Settings, mapped_calls: list[None]) -> None:
    """A batch was mapped whole before the collector found it could not write it: during an outage,
    each retry of each client cost a 4 MB batch's second of CPU, all in vain."""
    down = settings.with_overrides(kafka_bootstrap=f"127.0.0.1:{free_port()}")
    with ThreadedCollector(down, wait_ready=False) as collector:
        response = collector.post("/v1/batch", {"batch": [track(f"u-{i}") for i in range(10_000)]})
        assert (response.status_code, response.json()["code"]) == (503, "unavailable")
    assert mapped_calls == []


def test_more_unacknowledged_bytes_than_allowed_gives_unavailable(settings: Settings) -> None:
    writer = connected(KafkaWriter(settings.with_overrides(collector_max_in_flight_bytes=2000, collector_ack_timeout_ms=5000)),
                       NeverAcknowledges())

    async def attempt() -> None:
        waiting = asyncio.create_task(writer.write([Outgoing(settings.topic_events, 0, b"u", b"x" * 1500)]))
        await asyncio.sleep(0.05)  # its bytes await the acknowledgement
        with pytest.raises(Unavailable, match="LEADSTREAM_COLLECTOR_MAX_IN_FLIGHT_BYTES") as caught:
            await writer.write([Outgoing(settings.topic_events, 0, b"u", b"x" * 1000)])
        assert caught.value.retry_after_s > 0
        waiting.cancel()

    asyncio.run(attempt())


def test_a_request_alone_over_the_bound_on_unacknowledged_bytes_is_too_large(settings: Settings, mapped_calls: list[None]) -> None:
    """A request whose events and dead letters alone held more than
    LEADSTREAM_COLLECTOR_MAX_IN_FLIGHT_BYTES was answered 503 "0 bytes already await Kafka's
    acknowledgement": no retry could pass, and the client was told to retry it (4 MB of tiny bad
    calls, a million dead letters, took the collector 10-18 s of its event loop each time). It is
    refused once the calls mapped so far exceed the bound, the rest left unmapped (all of them
    were mapped first)."""
    with ThreadedCollector(settings.with_overrides(collector_max_in_flight_bytes=20_000)) as collector:
        assert collector.post("/v1/batch", {"batch": [track("u-1")]}).status_code == 200
        mapped_calls.clear()
        response = collector.post("/v1/batch", {"batch": [1] * 100_000})  # dead letters of ~160 bytes
        assert (response.status_code, response.json()["code"]) == (400, "too_large")
        assert "LEADSTREAM_COLLECTOR_MAX_IN_FLIGHT_BYTES" in response.json()["message"]
        assert len(mapped_calls) < 1_000
        assert collector.post("/v1/batch", {"batch": [track("u-2")]}).status_code == 200
    assert sorted(e["lead_id"] for e in all_events(read_messages(settings, settings.topic_events, events=2))) == ["u-1", "u-2"]
    assert read_messages(settings, settings.topic_deadletter, events=0, settle_s=0.5) == []


class NeverAcknowledges:
    """A producer whose sends are queued and never acknowledged: a broker that stopped answering."""

    def __init__(self) -> None:
        self.pending: list[asyncio.Future[None]] = []

    async def send(self, topic: str, value: bytes, key: bytes | None = None, partition: int | None = None) -> asyncio.Future[None]:
        self.pending.append(asyncio.get_running_loop().create_future())
        return self.pending[-1]


class FakeKafka:
    """A producer of a broker that answers (its metadata; each send acknowledged at once) until
    `answering` is set False, then answers nothing (each send never acknowledged) until it is set back."""

    def __init__(self, partitions: int = 4) -> None:
        self.answering = True
        self.client = self.cluster = self  # aiokafka's producer asks its client for metadata, held by its cluster
        self.partitions = partitions  # of every topic
        self.pending: list[asyncio.Future[None]] = []

    async def force_metadata_update(self) -> bool:
        return self.answering

    def partitions_for_topic(self, topic: str) -> set[int]:
        return set(range(self.partitions))

    async def send(self, topic: str, value: bytes, key: bytes | None = None, partition: int | None = None) -> asyncio.Future[None]:
        self.pending.append(asyncio.get_running_loop().create_future())
        if self.answering:
            self.pending[-1].set_result(None)
        return self.pending[-1]


def connected(writer: KafkaWriter, producer: object) -> KafkaWriter:
    """The writer as `connect` leaves it, with `producer` in place of aiokafka's."""
    settings = writer.settings
    writer.partitions = {topic: settings.partitions for topic in (settings.topic_events, settings.topic_profiles, settings.topic_deadletter)}
    writer._producer = producer
    writer._answered(True)
    return writer


AUTH = {"Authorization": "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()}


def test_a_kafka_that_does_not_acknowledge_in_time_gives_unavailable(settings: Settings) -> None:
    writer = connected(KafkaWriter(settings.with_overrides(collector_ack_timeout_ms=200)), NeverAcknowledges())

    async def attempt() -> float:
        started = time.monotonic()
        with pytest.raises(Unavailable, match="LEADSTREAM_COLLECTOR_ACK_TIMEOUT_MS") as caught:
            await writer.write([Outgoing(settings.topic_events, 0, b"u", b"{}")])
        assert caught.value.retry_after_s > 0
        return time.monotonic() - started

    assert 0.2 <= asyncio.run(attempt()) < 1.0
    assert writer._in_flight_bytes == 0  # the bound is released for later requests


def test_a_collector_killed_mid_request_lost_nothing_it_acknowledged(settings: Settings) -> None:
    collector = CollectorProcess(settings)
    collector.start(ready_timeout_s=30)
    url = f"http://127.0.0.1:{settings.collector_port}"
    acknowledged: list[str] = []
    stop = threading.Event()

    def client(n: int) -> None:
        with requests.Session() as session:
            while not stop.is_set():
                batch = [track(f"u-{n}-{i % 7}") for i in range(50)]
                try:
                    response = session.post(f"{url}/v1/batch", data=orjson.dumps({"batch": batch}), auth=(WRITE_KEY, ""),
                                            headers={"Content-Type": "application/json"}, timeout=10)
                except requests.ConnectionError:
                    return
                if response.status_code == 200:
                    acknowledged.extend(call["messageId"] for call in batch)

    clients = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    try:
        for thread in clients:
            thread.start()
        time.sleep(1.5)
    finally:
        collector.kill()  # SIGKILL while requests are in flight
        stop.set()
        for thread in clients:
            thread.join(timeout=15)
    assert len(acknowledged) >= 500
    written = {e["event_id"] for e in all_events(read_messages(settings, settings.topic_events, events=len(acknowledged)))}
    assert set(acknowledged) <= written


def test_a_request_waits_its_turn_behind_the_bodies_being_parsed_then_gets_503(settings: Settings) -> None:
    """Bodies being parsed and written hold LEADSTREAM_COLLECTOR_MAX_PARSING_BYTES at most (concurrent
    huge batches took gigabytes): a request beyond it waits for a turn, and is answered 503 with
    Retry-After if none comes within LEADSTREAM_COLLECTOR_ACK_TIMEOUT_MS."""
    bounded = settings.with_overrides(collector_max_parsing_bytes=1000, collector_ack_timeout_ms=1000)
    auth = {"Authorization": "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()}

    async def scenario() -> None:
        writer = KafkaWriter(bounded)
        await writer.connect()
        collector = Collector(bounded, load_sources(bounded.collector_write_keys), writer)
        try:
            async with TestClient(TestServer(create_app(collector))) as client:
                others = await collector._parsing.acquire(1000)  # other requests' bodies, being parsed
                refused = await client.post("/v1/track", json=track("u-refused"), headers=auth)
                assert (refused.status, (await refused.json())["code"]) == (503, "unavailable")
                assert int(refused.headers["Retry-After"]) > 0
                assert "LEADSTREAM_COLLECTOR_MAX_PARSING_BYTES" in (await refused.json())["message"]
                assert collector._parsing.held_bytes == 1000  # the refused request holds nothing
                waiting = asyncio.create_task(client.post("/v1/track", json=track("u-served"), headers=auth))
                await asyncio.sleep(0.3)
                assert not waiting.done()
                collector._parsing.release(others)
                assert (await waiting).status == 200
                assert collector._parsing.held_bytes == 0
        finally:
            await writer.close()

    asyncio.run(scenario())
    assert [e["lead_id"] for e in all_events(read_messages(settings, settings.topic_events, events=1))] == ["u-served"]


def test_requests_waiting_their_turn_hold_no_body_read_or_inflated(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """A body was read and inflated before its request waited for its turn: with Kafka stalled, 300
    gzip batches of 207 KB, each 4 MB inflated, took the collector from 48 MB to 1.29 GB, though
    LEADSTREAM_COLLECTOR_MAX_PARSING_BYTES was 8 MB. A request now holds its turn before reading its
    body (by its Content-Length, or the limit when compressed), so those waiting hold none: the
    inflated bodies held at once stay within the bound."""
    bound = 1024 * 1024
    stalled = settings.with_overrides(collector_max_parsing_bytes=bound, collector_ack_timeout_ms=1000)
    inflated = orjson.dumps({"batch": [track(f"u-{i}", properties={"pad": "x" * 20_000}) for i in range(40)]})
    body = gzip.compress(inflated)
    assert len(body) < 50_000 < 800_000 < len(inflated) < bound  # one at a time: its turn holds all the bound
    held: dict[asyncio.Task[Any] | None, int] = {}  # a request's task: the bytes of its inflated body
    most_held = 0
    inflate, ingest = collector_module._inflate, Collector.ingest

    def inflating(raw: bytes, encoding: str, limit: int) -> bytes:
        nonlocal most_held
        inflated = inflate(raw, encoding, limit)
        held[asyncio.current_task()] = len(inflated)
        most_held = max(most_held, sum(held.values()))
        return inflated

    async def ingesting(self: Collector, request: Any, call: str) -> Any:
        try:
            return await ingest(self, request, call)
        finally:
            held.pop(asyncio.current_task(), None)

    monkeypatch.setattr(collector_module, "_inflate", inflating)
    monkeypatch.setattr(Collector, "ingest", ingesting)

    async def scenario() -> list[int]:
        writer = connected(KafkaWriter(stalled), NeverAcknowledges())
        collector = Collector(stalled, load_sources(stalled.collector_write_keys), writer)
        server = TestServer(create_app(collector))
        await server.start_server(auto_decompress=False)  # as `serve` runs it
        async with TestClient(server) as client:
            headers = {**AUTH, **GZIP, "Content-Type": "application/json"}
            answers = await asyncio.gather(*(client.post("/v1/batch", data=body, headers=headers) for _ in range(40)))
        assert collector._parsing.held_bytes == 0
        return [answer.status for answer in answers]

    assert asyncio.run(scenario()) == [503] * 40
    assert held == {}
    # 40 bodies, 32 MB, were held at once (and took 58 MB of Python's memory, one alone 13 MB).
    assert len(inflated) <= most_held <= bound, f"{most_held / 1e6:.1f} MB of inflated bodies held at once"


def test_while_kafka_does_not_answer_calls_get_503_at_once_and_are_taken_again_once_it_does(
    settings: Settings, mapped_calls: list[None]
) -> None:
    """Once connected, a collector whose Kafka stopped answering had each request wait out the ack
    timeout, a huge batch mapped first (0.3-0.6 s of CPU), for its 503: only a collector that had
    never connected answered at once. The 503 now comes before the body is read while Kafka is
    known not to answer (the latest metadata request or write went unanswered), and calls are
    taken again once a metadata request is answered."""
    down = settings.with_overrides(collector_ack_timeout_ms=2000)
    kafka = FakeKafka()
    batch = {"batch": [track(f"u-{i}") for i in range(5_000)]}

    async def scenario() -> None:
        writer = connected(KafkaWriter(down), kafka)
        watching = asyncio.create_task(writer.watch(interval_s=0.05))
        collector = Collector(down, load_sources(down.collector_write_keys), writer)
        try:
            async with TestClient(TestServer(create_app(collector))) as client:
                assert (await client.post("/v1/batch", json=batch, headers=AUTH)).status == 200
                mapped_calls.clear()
                kafka.answering = False
                await asyncio.sleep(0.3)  # a few metadata requests, unanswered
                assert not writer.ready
                started = time.monotonic()
                refused = await client.post("/v1/batch", json=batch, headers=AUTH)
                assert (refused.status, (await refused.json())["code"]) == (503, "unavailable")
                assert int(refused.headers["Retry-After"]) > 0
                assert time.monotonic() - started < 0.5
                assert mapped_calls == []
                kafka.answering = True
                await asyncio.sleep(0.3)
                assert writer.ready
                assert (await client.post("/v1/batch", json=batch, headers=AUTH)).status == 200
        finally:
            watching.cancel()

    asyncio.run(scenario())


def test_a_write_kafka_does_not_acknowledge_in_time_has_kafka_asked_at_once(settings: Settings) -> None:
    """While Kafka is taken not to answer, calls are refused untried: only `watch` can see it
    answer again. A write that timed out (Kafka slow with one huge batch, or gone) has it ask at
    once, not at its next turn (5 s), so a Kafka merely slow refuses calls no longer than that."""
    kafka = FakeKafka()
    writer = connected(KafkaWriter(settings.with_overrides(collector_ack_timeout_ms=100)), kafka)

    async def scenario() -> None:
        watching = asyncio.create_task(writer.watch(interval_s=60))
        try:
            kafka.answering = False  # this write's acknowledgement never comes
            with pytest.raises(Unavailable, match="LEADSTREAM_COLLECTOR_ACK_TIMEOUT_MS"):
                await writer.write([Outgoing(settings.topic_events, 0, b"u", b"{}")])
            assert not writer.ready
            kafka.answering = True  # but the broker answers its metadata
            await asyncio.sleep(0.2)
            assert writer.ready
        finally:
            watching.cancel()

    asyncio.run(scenario())


class OutOfSequence(FakeKafka):
    """The producer of a partition whose idempotent sequence it lost: each send fails as aiokafka's
    does after a batch it gave up on during a broker's graceful stop."""

    def __init__(self) -> None:
        super().__init__()
        self.stopped = False

    async def send(self, topic: str, value: bytes, key: bytes | None = None, partition: int | None = None) -> asyncio.Future[None]:
        from aiokafka.errors import OutOfOrderSequenceNumber

        failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        failed.set_exception(OutOfOrderSequenceNumber())
        return failed

    async def stop(self) -> None:
        self.stopped = True


def test_a_producer_that_lost_its_sequence_is_replaced_and_calls_are_taken_again(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """After a broker's graceful restart aiokafka's idempotent producer failed every write to one
    partition with OutOfOrderSequenceNumber, and the collector kept it: that partition's calls were
    answered 503 for 41 minutes, until the collector was restarted, while /readyz said ready. It is
    replaced by a new producer (connected as at start), said once, counted, and not ready meanwhile."""
    stuck, fresh = OutOfSequence(), FakeKafka()
    writer = connected(KafkaWriter(settings), stuck)
    starting = asyncio.Event()

    async def connect(self: KafkaWriter) -> None:
        await starting.wait()
        connected(self, fresh)

    monkeypatch.setattr(KafkaWriter, "connect", connect)
    replaced = collector_module.metrics.PRODUCERS_REPLACED.labels("OutOfOrderSequenceNumber")
    before = replaced._value.get()
    message = [Outgoing(settings.topic_events, 1, b"u", b"{}")]

    async def scenario() -> None:
        for _ in range(3):  # the writes under way on it when it fails: one replacement
            with pytest.raises(Unavailable, match="OutOfOrderSequenceNumber|being replaced"):
                await writer.write(message)
        await asyncio.sleep(0.05)
        assert stuck.stopped and not writer.ready  # the new one is not connected yet
        starting.set()
        await asyncio.sleep(0.05)
        assert writer.ready
        await writer.write(message)
        assert fresh.pending and fresh.pending[-1].done()

    with caplog.at_level(logging.ERROR, logger="leadstream.collector"):
        asyncio.run(scenario())
    said = [r.getMessage() for r in caplog.records if "cannot write again" in r.getMessage()]
    assert len(said) == 1 and "OutOfOrderSequenceNumber()" in said[0]
    assert replaced._value.get() == before + 1


def test_a_topic_that_does_not_exist_is_named_while_the_collector_waits_for_it(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    # Its warning said only UnknownTopicOrPartitionError(), under aiokafka's errors; then that it
    # could not use Kafka, which answered.
    missing = settings.topic_profiles + "-typo"
    writer = KafkaWriter(settings.with_overrides(topic_profiles=missing))

    def said() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "leadstream.collector" and "does not exist" in r.getMessage()]

    async def first_attempt() -> None:
        connecting = asyncio.ensure_future(writer.connect())
        deadline = time.monotonic() + 20
        while not said() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        connecting.cancel()

    with caplog.at_level(logging.WARNING, logger="leadstream.collector"):
        asyncio.run(first_attempt())
    assert said() and said()[0].startswith(f"Kafka at {settings.kafka_bootstrap} answers, but topic {missing!r} does not exist: "
                                           "run `leadstream topics`, or check LEADSTREAM_TOPIC_PROFILES; answering 503")


def test_a_request_that_is_not_valid_http_is_refused_in_one_line_not_a_logged_traceback(
    collector: ThreadedCollector, caplog: pytest.LogCaptureFixture
) -> None:
    # aiohttp logged each at ERROR with a traceback: from the internet, any scanner fills the log.
    with caplog.at_level(logging.INFO):
        for head in (b"POST /v1/track HTTP/1.1\r\nHost: x\r\nContent-Type: a/b\r\nContent-Type: c/d\r\nContent-Length: 2\r\n\r\n{}",
                     b"POST /v1/track HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"):
            with raw_request(int(collector.url.rsplit(":", 1)[1]), head) as sock:
                assert sock.recv(65536).split(b" ", 2)[1] == b"400"
        wait_for(lambda: len([r for r in caplog.records if r.name == "aiohttp.server"]) == 2, what="both refusals logged")
    said = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert [(r.levelname, r.exc_info) for r in said] == [("INFO", None)] * 2
    assert all(r.getMessage().startswith("refused a request that is not valid HTTP from 127.0.0.1: ") for r in said)


def test_a_request_that_is_not_valid_http_is_logged_without_its_credentials_on_one_line(
    collector: ThreadedCollector, caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp's message quotes the line it could not parse, over several lines: the write key of
    a bad Authorization header or of a request line's query string was copied into the log."""
    secret = base64.b64encode(b"wk_app:").decode()
    heads = [f"POST /v1/track HTTP/1.1\r\nHost: x\r\nAuthorization : Basic {secret}\r\n\r\n".encode(),
             b"POST /v1/track?writeKey=wk_site HTTP/9.9\r\nHost: x\r\n\r\n",
             f"POST /v1/track HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {secret}{'A' * 8200}\r\n\r\n".encode()]
    with caplog.at_level(logging.INFO):
        for head in heads:
            with raw_request(int(collector.url.rsplit(":", 1)[1]), head) as sock:
                assert sock.recv(65536).split(b" ", 2)[1] == b"400"
        wait_for(lambda: len([r for r in caplog.records if r.name == "aiohttp.server"]) == len(heads), what="refusals logged")
    said = [r.getMessage() for r in caplog.records if r.name == "aiohttp.server"]
    for line in said:
        assert line.startswith("refused a request that is not valid HTTP from 127.0.0.1: "), line
        assert "\n" not in line and secret not in line and "wk_" not in line and "Basic" not in line, line


def test_the_first_answer_of_kafka_is_logged_as_ready_and_only_a_return_as_again(caplog: pytest.LogCaptureFixture) -> None:
    # A collector just started logged "Kafka at ... answers again", as after an outage.
    writer = KafkaWriter(Settings())
    with caplog.at_level(logging.INFO, logger="leadstream.collector"):
        writer._answered(True)
        writer._answered(False)
        writer._answered(True)
    said = [record.getMessage() for record in caplog.records if "answer" in record.getMessage()]
    assert [line.split(": ")[0].split(" ", 3)[-1] for line in said] == ["answers", "does not answer", "answers again"]


def test_a_topic_partitions_were_added_to_is_refused_at_start_and_makes_a_running_collector_unready(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Partitions added to the events topic under a running collector: it logged the new count at
    INFO, stayed ready and put leads by the topic's 6 partitions, where the worker, partitioning by
    LEADSTREAM_PARTITIONS (4), has not their states. At its next look at the metadata it is unready,
    said once, its calls answered 503 naming the topic and both counts; and a collector started
    on such a topic refuses to."""
    with caplog.at_level(logging.INFO, logger="leadstream.collector"), ThreadedCollector(settings) as collector:
        assert collector.post("/v1/track", track("u-1")).status_code == 200
        add_partitions(settings, [settings.topic_profiles], 6)
        said = (f"topic {settings.topic_profiles} has 6 partitions, but LEADSTREAM_PARTITIONS is 4: a lead's records go to the "
                "partition its id makes under LEADSTREAM_PARTITIONS")
        operations = f"http://127.0.0.1:{settings.collector_metrics_port}/readyz"
        wait_for(lambda: said in requests.get(operations, timeout=5).json().get("reason", ""), timeout_s=30,
                 what="/readyz naming the topic's count")
        response = collector.post("/v1/identify", {"type": "identify", "userId": "u-1", "traits": {"plan": "pro"},
                                                   "messageId": uuid.uuid4().hex})
        assert response.status_code == 503 and said in response.json()["message"], response.text
        time.sleep(collector_module.WATCH_S + 1)  # another look at the metadata: said once
    assert len([r for r in caplog.records if said in r.getMessage() and r.levelno == logging.ERROR]) == 1
    assert read_messages(settings, settings.topic_profiles, events=1, timeout_s=3) == []
    started = leadstream(settings, "collector", check=False, timeout=60)
    assert started.returncode == 1 and f"leadstream collector: {said}" in started.stderr, started.stderr
    assert "Changing the partition count" in started.stderr
