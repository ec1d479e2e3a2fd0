"""Identity stitching end to end: Segment calls through a real collector, scored by a real worker."""

from __future__ import annotations

import base64
import io
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import orjson
import pytest
from kafka import KafkaConsumer

from streams.history import read_to_end
from streams.offline import score_file
from streams.partitioning import partition_for
from streams.processes import CollectorProcess, WorkerProcess
from streams.send import open_producer, produce
from streams.settings import Settings
from tests.infra import leadstream, read_topic, swept, wait_for, write_jsonl
from tests.scoring.support import MODELS_DIR

WRITE_KEY = "wk_site"


@pytest.fixture
def collector(isolated: Settings) -> Iterator[CollectorProcess]:
    proc = CollectorProcess(isolated.with_overrides(collector_write_keys=f"{WRITE_KEY}=website"))
    proc.start()
    yield proc
    proc.stop()


def call(settings: Settings, path: str, body: dict) -> None:
    auth = base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{settings.collector_port}/v1/{path}",
        data=orjson.dumps(body),
        headers={"Content-Type": "application/json", "Authorization": f"Basic {auth}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def page(anonymous_id: str, n: int, url: str, at: str) -> dict:
    return {"type": "page", "anonymousId": anonymous_id, "messageId": f"{anonymous_id}-p{n}", "timestamp": at,
            "properties": {"url": url, "time_on_page_s": 30}, "context": {"app": {"name": "b2b"}}}


def rekeyed(settings: Settings, event_id: str) -> Any:
    """The record (a kafka-python ConsumerRecord) of the events topic that re-keys the event to
    its visitor's lead, or None."""
    consumer = KafkaConsumer(settings.topic_events, bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, group_id=None, consumer_timeout_ms=2_000)
    try:
        for record in consumer:
            value = orjson.loads(record.value)
            if isinstance(value, dict) and value.get("event_id") == event_id and value.get("stitched_from"):
                return record
    finally:
        consumer.close()
    return None


def b2b_score(proc: WorkerProcess, lead: str) -> float | None:
    status, body = proc.get(f"/leads/{lead}/")
    return orjson.loads(body)["models"].get("b2b", {}).get("score") if status == 200 else None


def crossings(settings: Settings, expect: int) -> list[dict]:
    return [c for _, c in read_topic(settings, settings.topic_crossings, expect=expect, idle_s=4)]


def test_anonymous_browsing_then_identify_makes_one_lead_with_one_mql_crossing(
    isolated: Settings, own_redis: Settings, collector: CollectorProcess, worker: Callable[..., WorkerProcess]
) -> None:
    proc = worker()
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 600))
    # An anonymous visitor reads pricing twice and a case study: 24 points, past MQL's 20, but
    # an anonymous profile publishes no crossing.
    call(isolated, "batch", {"batch": [
        page("a-123", 1, "https://acme.io/pricing", now),
        page("a-123", 2, "https://acme.io/pricing", now),
        page("a-123", 3, "https://acme.io/case-studies/globex", now),
    ]})
    wait_for(lambda: b2b_score(proc, "anon:a-123") == 24, 60, "the visitor scored at 24", 0.3)
    assert crossings(isolated, expect=0) == []

    # Sign-up: identify links the visitor to the known lead, whose own event scores too.
    call(isolated, "identify", {"userId": "u-ada", "anonymousId": "a-123", "messageId": "id-1", "timestamp": now,
                                "traits": {"email": "ada@initech.io"}, "context": {"app": {"name": "b2b"}}})
    call(isolated, "track", {"userId": "u-ada", "event": "Webinar Attended", "messageId": "t-1", "timestamp": now,
                             "context": {"app": {"name": "b2b"}}})
    # Anonymous events arriving after the merge go to the lead; a re-sent one never counts twice.
    wait_for(lambda: b2b_score(proc, "u-ada") == 24 + 10 + 1, 60, "the visitor merged into u-ada", 0.3)
    call(isolated, "page", page("a-123", 4, "https://acme.io/about", now))
    call(isolated, "page", page("a-123", 1, "https://acme.io/pricing", now))
    wait_for(lambda: b2b_score(proc, "u-ada") == 24 + 10 + 1 + 1, 60, "the about page forwarded to u-ada", 0.3)
    # The about page was re-keyed to u-ada with where the worker read it. A worker reading the
    # visitor's record again after a restart would re-key it again: that copy (here under
    # another id, so only its origin tells it) changes nothing, however many events came since.
    forwarded = rekeyed(isolated, "a-123-p4")
    assert forwarded is not None
    origin = dict(forwarded.headers)["leadstream-origin"].decode().split(" ")
    assert origin[:2] == [isolated.topic_events, str(partition_for("anon:a-123", isolated.partitions))], origin
    copy = {**orjson.loads(forwarded.value), "event_id": "a-123-p4-copy"}
    producer = open_producer(isolated)
    producer.send(isolated.topic_events, orjson.dumps(copy), key=b"u-ada", headers=forwarded.headers)
    # A second identify and an alias for the same visitor merge nothing again.
    call(isolated, "identify", {"userId": "u-ada", "anonymousId": "a-123", "messageId": "id-2", "timestamp": now,
                                "context": {"app": {"name": "b2b"}}})
    call(isolated, "alias", {"userId": "u-ada", "previousId": "a-123", "messageId": "al-1", "timestamp": now})
    # An event a producer writes to Kafka itself, without the collector's anonymous_id field, is
    # decoded in one pass (no JSON object kept) and forwarded all the same.
    direct = {"event_id": "k-1", "lead_id": "anon:a-123", "type": "page_view", "time": int(time.time() * 1000) - 600_000,
              "product": "b2b", "properties": {"url": "https://acme.io/demo"}}
    produce(producer, isolated.topic_events, [("anon:a-123", orjson.dumps(direct))], events_per_message=1,
            partitions=isolated.partitions)
    producer.close()

    found = crossings(isolated, expect=1)
    assert [(c["lead_id"], c["from_level"], c["to_level"]) for c in found] == [("u-ada", "nurture", "mql")]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status, body = proc.get("/leads/u-ada/")
        if status == 200 and orjson.loads(body)["models"]["b2b"]["score"] == 44:
            break
        time.sleep(0.5)
    explained = orjson.loads(body)["models"]["b2b"]
    # 24 merged (pricing 2 x 10, case study 4) + webinar 10 + about 1 + demo 8 + business e-mail fit 1.
    assert explained["score"] == 44, explained
    assert "merged from anonymous visitor anon:a-123" in orjson.dumps(explained).decode()
    # The visitor's own state moved into the lead: only the marker is left, which says where.
    status, body = proc.get("/leads/anon:a-123/")
    assert (status, orjson.loads(body)) == (200, {"lead_id": "anon:a-123", "models": {}, "merged_into": "u-ada"})

    # Forgotten, the visitor's marker goes; it was said to be an id with no state, though what
    # was scored under it lives on in u-ada.
    leadstream(own_redis, "forget", "anon:a-123")  # own_redis: the erasure is recorded in Redis, not under the shared prefix
    wait_for(lambda: proc.get("/leads/anon:a-123/")[0] == 404, 60, "the visitor's marker erased", 0.3)
    assert "forgotten ids that were merged into another lead: count=1" in proc.log.read_text()
    assert proc.metric("leadstream_forget_requests_without_state_total") == [0.0]


def test_a_merge_counts_in_the_leads_account_at_once_replaces_the_visitor_in_read_models_and_offline_agrees(
    isolated: Settings, worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    # u-1 of account acme has 11 points; an anonymous visitor earns 51 and then turns out to be
    # u-1. The merge alone lifts u-1 to SQL and acme (top 3 members) past "engaged" at 60.
    start = int(time.time() * 1000) - 600_000

    def event(n: int, lead: str, kind: str, **fields: object) -> dict[str, object]:
        return {"event_id": f"m-{n}", "lead_id": lead, "type": kind, "time": start + n * 1000, "product": "b2b", **fields}

    def visit(n: int, url: str) -> dict[str, object]:
        return event(n, "anon:v1", "page_view", properties={"url": url}, anonymous_id="v1")

    events = [
        event(1, "u-1", "identify", traits={"email": "ada@initech.io"}, account_id="acme"),
        event(2, "u-1", "webinar_attended"),
        visit(3, "https://acme.io/pricing"), visit(4, "https://acme.io/pricing"), visit(5, "https://acme.io/demo"),
        visit(6, "https://acme.io/case-studies/globex"), visit(7, "https://acme.io/case-studies/initech"),
        # The visitor's company was guessed (say, from its IP): it counts in globex until the merge.
        event(8, "anon:v1", "form_submit", properties={"form": "contact"}, anonymous_id="v1", account_id="globex"),
        event(9, "u-1", "identify", anonymous_id="v1"),
    ]  # fmt: skip
    proc = worker()
    producer = open_producer(isolated)

    def send(batch: list[dict[str, object]]) -> None:
        produce(producer, isolated.topic_events, [(str(e["lead_id"]), orjson.dumps(e)) for e in batch],
                events_per_message=1, partitions=isolated.partitions)

    # The two ids live on different partitions, which the worker reads in no set order: the
    # visitor's events are scored before the identify goes out, so the merge takes all of them.
    send(events[:-1])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status, body = proc.get("/leads/anon:v1/")
        if status == 200 and orjson.loads(body)["models"].get("b2b", {}).get("score") == 51:
            break
        time.sleep(0.3)
    else:
        raise AssertionError(f"the visitor was not scored at 51: {status} {body!r}")
    send(events[-1:])
    producer.close()

    def seen(crossing: dict[str, object]) -> tuple[object, ...]:
        who = crossing["lead_id"] if crossing["kind"] == "lead" else crossing["account_id"]
        return crossing["kind"], who, crossing["from_level"], crossing["to_level"], crossing["score"]

    expected = [("lead", "u-1", "nurture", "sql", 62), ("account", "acme", "unaware", "engaged", 62)]
    assert sorted(map(seen, crossings(isolated, expect=2))) == sorted(expected)
    # Read models drop the visitor (a tombstone on the compacted score changes): its points are u-1's now.
    latest = {record.key: record.value for record in read_to_end(isolated, isolated.topic_scores)}
    assert latest[b"b2b/anon:v1"] is None
    assert orjson.loads(latest[b"b2b/u-1"])["score"] == 62
    # The visitor leaves globex (u-1 stays in its own acme): its points count once, in acme.
    updates = [u for record in read_to_end(isolated, isolated.topic_accounts) for u in orjson.loads(record.value)]
    assert [(u["account_id"], u["lead_id"]) for u in updates if u.get("left")] == [("globex", "anon:v1")]
    out = io.StringIO()
    score_file(MODELS_DIR, write_jsonl(tmp_path / "events.jsonl", events), table=False, out=out, err=io.StringIO())
    offline = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert sorted(seen(r) for r in offline if r["record"] == "transition") == sorted(expected)
    assert {r["account_id"]: r["members"] for r in offline if r["record"] == "account"} == {"acme": 1}  # globex, left without members, is not listed


def score_of(proc: WorkerProcess, lead_id: str) -> float | None:
    status, body = proc.get(f"/leads/{lead_id}/")
    model = orjson.loads(body)["models"].get("b2b") if status == 200 else None
    return None if model is None else model["score"]


def test_two_leads_aliased_to_each_other_at_once_keep_their_own_points_and_nothing_loops(
    isolated: Settings, worker: Callable[..., WorkerProcess]
) -> None:
    # Two aliases sent at once, each naming the other lead: both links go out before either
    # merge arrives, so each lead becomes a marker pointing at the other. Before, the merges
    # were sent on between the two markers for ever (~90 identity records a second) and both
    # leads' states were lost. Now each merge finds its target merged into its own source and
    # goes back there: both leads keep what they had, and the identity topic falls quiet.
    # The two leads share a partition and their aliases one message, so one batch sends both links.
    a = "loopA-1"
    b = next(f"loopB-{n}" for n in range(1, 1000) if partition_for(f"loopB-{n}", isolated.partitions) == partition_for(a, isolated.partitions))
    start = int(time.time() * 1000) - 600_000

    def event(n: int, lead: str, kind: str, **fields: object) -> tuple[str, bytes]:
        return lead, orjson.dumps({"event_id": f"l-{n}", "lead_id": lead, "type": kind, "time": start + n * 1000,
                                   "product": "b2b", **fields})

    proc = worker()
    producer = open_producer(isolated)
    produce(producer, isolated.topic_events, [event(1, a, "page_view", properties={"url": "https://acme.io/pricing"}),
                                              event(2, b, "page_view", properties={"url": "https://acme.io/pricing"})], 1,
            partitions=isolated.partitions)
    wait_for(lambda: score_of(proc, a) == 10 and score_of(proc, b) == 10, what="both leads scored at 10")
    produce(producer, isolated.topic_events, [event(3, b, "alias", previous_id=a), event(4, a, "alias", previous_id=b)], 2,
            partitions=isolated.partitions)
    # The links (the old ids and their anon: forms), the two merges and the two that came back.
    identity = read_topic(isolated, isolated.topic_identity, expect=8, idle_s=5)
    assert sorted((r["kind"], r["source"], r["target"]) for _, r in identity) == sorted([
        ("link", a, b), ("link", f"anon:{a}", b), ("link", b, a), ("link", f"anon:{b}", a),
        ("merge", a, b), ("merge", b, a), ("merge", a, a), ("merge", b, b),
    ])  # fmt: skip
    wait_for(lambda: score_of(proc, a) == 10 and score_of(proc, b) == 10, what="both leads back at 10")
    # Each lead is a lead again: its later events score on it, not bounced as an alias loop.
    produce(producer, isolated.topic_events, [event(5, a, "page_view", properties={"url": "https://acme.io/case-studies/globex"})], 1,
            partitions=isolated.partitions)
    producer.close()
    wait_for(lambda: score_of(proc, a) == 14, what="loopA-1's later event scored on it")
    assert score_of(proc, b) == 10
    assert read_topic(isolated, isolated.topic_deadletter, idle_s=2) == []
    assert len(read_topic(isolated, isolated.topic_identity, expect=8, idle_s=2)) == 8  # and nothing more since


def test_an_identify_or_alias_whose_old_id_no_lead_can_have_is_dead_lettered_as_sent(
    isolated: Settings, worker: Callable[..., WorkerProcess]
) -> None:
    # "anon:" + a 300-character anonymous id is longer than any lead id (256): before, the
    # worker wrote that link anyway, then refused its own record on reading it back
    # (bad_identity_record), and the dead letter held the worker's record, not the user's event.
    now = int(time.time() * 1000) - 600_000
    sent = [
        {"event_id": "i-1", "lead_id": "u-1", "type": "identify", "time": now, "product": "b2b", "anonymous_id": "a" * 300},
        {"event_id": "al-1", "lead_id": "u-2", "type": "alias", "time": now, "product": "b2b", "previous_id": "p" * 300},
        # 253 characters is an id, though "anon:" + it is not: only the id itself is linked.
        {"event_id": "al-2", "lead_id": "u-3", "type": "alias", "time": now, "product": "b2b", "previous_id": "q" * 253},
        # An old id that is no id at all was passed over (the alias linked nothing, silently); a
        # number is read as its decimal text, as the engine reads lead 43, whose identify linked nothing.
        {"event_id": "al-3", "lead_id": "u-4", "type": "alias", "time": now, "product": "b2b", "previous_id": ["p"]},
        {"event_id": "i-2", "lead_id": 43, "type": "identify", "time": now, "product": "b2b", "anonymous_id": 7},
        # An alias naming no old id at all was taken as an event of nothing, silently.
        {"event_id": "al-4", "lead_id": "u-5", "type": "alias", "time": now, "product": "b2b"},
    ]
    proc = worker()
    producer = open_producer(isolated)
    where = {}
    for event in sent:
        metadata = producer.send(isolated.topic_events, key=str(event["lead_id"]).encode(), value=orjson.dumps(event)).get(timeout=10)
        where[event["event_id"]] = {"topic": isolated.topic_events, "partition": metadata.partition, "offset": metadata.offset}
    producer.close()
    letters = [letter for _, letter in read_topic(isolated, isolated.topic_deadletter, expect=4)]
    assert sorted(letter["reason"] for letter in letters) == ["bad_value", "bad_value", "missing_field", "wrong_type"], letters
    alias, no_id, none, identify = sorted(letters, key=lambda letter: str(orjson.loads(letter["original"])["event_id"]))
    assert no_id["detail"] == "field 'previous_id' must be a text or an integer, got an array"
    assert none["detail"].startswith("field 'previous_id' is missing: an alias names the id the lead had before")
    assert orjson.loads(no_id["original"]) == sent[3] and no_id["source"] == where["al-3"]
    assert "field 'anonymous_id' must be 1 to 251 characters" in identify["detail"] and "got 300" in identify["detail"]
    assert "field 'previous_id' must be 1 to 256 characters" in alias["detail"] and "got 300" in alias["detail"]
    assert orjson.loads(identify["original"]) == sent[0] and orjson.loads(alias["original"]) == sent[1]
    assert identify["source"] == where["i-1"] and alias["source"] == where["al-1"]
    # Only the link the worker can read back went out, and it was read back without complaint.
    identity = read_topic(isolated, isolated.topic_identity, expect=2)
    assert sorted((r["kind"], r["source"], r["target"]) for _, r in identity) == [("link", "anon:7", "43"), ("link", "q" * 253, "u-3")]
    assert len(read_topic(isolated, isolated.topic_deadletter, expect=4, idle_s=1)) == 4
    assert proc.get("/leads/u-1/")[0] == 404  # refused as a whole, as an event with any other id too long is


def test_an_identify_arriving_after_sweeps_took_the_steps_settles_the_merged_lead_once(
    isolated: Settings, collector: CollectorProcess, worker: Callable[..., WorkerProcess]
) -> None:
    """The worker's clock runs 31 days ahead. A lead with two webinars (20 points, MQL) and a
    visitor with one (10) have their 30-day step (-15) taken by sweeps, the lead's a crossing
    down to nurture, before the identify linking them arrives. The merge gives both steps back
    (they were not due at the link) and takes the merged lead's again at once: 15 points, still
    nurture (in the band the hysteresis keeps for an MQL, not for a lead below), and no crossing.
    Left to the next sweep, the merge crossed up at 30 points, a second crossing to MQL."""
    proc = worker(isolated.with_overrides(clock_offset_ms=31 * 86_400_000, decay_interval_s=1))
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 600))
    webinar = {"event": "Webinar Attended", "timestamp": now, "context": {"app": {"name": "b2b"}}}
    call(isolated, "track", {**webinar, "userId": "u-lou", "messageId": "w-lou-1"})
    call(isolated, "track", {**webinar, "userId": "u-lou", "messageId": "w-lou-2"})
    call(isolated, "track", {**webinar, "anonymousId": "v-1", "messageId": "w-v"})
    # Once their partitions have had nothing to read for QUIET_MS (30 s): the events are a backlog to the worker.
    wait_for(lambda: b"leadstream_decay_steps_total 2.0" in proc.get("/metrics")[1], 90, "both profiles' steps swept", 0.3)

    call(isolated, "identify", {"userId": "u-lou", "anonymousId": "v-1", "messageId": "id-lou", "timestamp": now,
                                "context": {"app": {"name": "b2b"}}})
    wait_for(lambda: b2b_score(proc, "u-lou") == 20 + 10 - 15, 60, "the visitor merged into u-lou", 0.3)
    swept(proc, 3)
    assert [(c["lead_id"], c["to_level"], c["score"]) for c in crossings(isolated, expect=2)] == [
        ("u-lou", "mql", 20), ("u-lou", "nurture", 5)]
