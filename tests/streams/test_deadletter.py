"""Dead letters read back as they were written (streams/deadletter.py): the sinks' replay and
`leadstream replay-dlq` both read them this way."""

from __future__ import annotations

import asyncio
import base64
import zlib

import orjson
import pytest

from scoring import Engine
from streams import lead_states
from streams.deadletter import KEPT_HEAD_BYTES, KEPT_KEY_BYTES, DeadLetter
from streams.envelope import MAX_MESSAGE_BYTES
from streams.partitioning import partition_for
from streams.scorer import Scorer
from streams.settings import Settings
from streams.stage import Consumed, LiveTable, MemoryData
from tests.scoring.support import T0, shipped
from tests.streams.stage_support import Kept


@pytest.mark.parametrize("original", [b'{"lead_id": "ada"}', b"\xff\xfe not UTF-8", b"", None])
def test_a_letter_reads_back_as_written(original: bytes | None) -> None:
    letter = DeadLetter("bad_json", "message is not JSON", original, "leadstream-events", 3, 41, b"ada")
    assert DeadLetter.from_bytes(letter.to_bytes(), b"ada") == letter


def test_a_tombstone_is_kept_as_a_null_original_not_an_empty_one() -> None:
    letter = DeadLetter("permanent", "redis: down", None, "leadstream-scores", 0, 9, b"b2b/ada")
    assert orjson.loads(letter.to_bytes())["original"] is None
    assert DeadLetter.from_bytes(letter.to_bytes()).original is None


def test_a_letter_fits_in_a_kafka_message_with_its_key() -> None:
    """A message of 200 KB of quotes keyed by 650 KB (under the broker's 1 MB) made a letter of
    400 KB (each quote escaped) that did not fit beside its key: the broker refused it, and the
    worker stopped at every restart."""
    original = b'"' * 200_000
    # A key longer than any lead id is cut: one of 1,048,300 bytes (the broker takes it beside a
    # value of one byte) left no room for the letter at all, and the worker stopped at every restart.
    for key in (b"k" * 650_000, b"k" * 995_000, b"k" * 1_048_300):
        letter = DeadLetter("bad_json", "message is not JSON", original, "leadstream-events", 1, 7, key)
        value = letter.to_bytes()
        assert letter.message_key == key[:KEPT_KEY_BYTES]
        assert len(value) + KEPT_KEY_BYTES <= MAX_MESSAGE_BYTES
        assert orjson.loads(value)["key_size"] == len(key) and orjson.loads(value)["original"] == original.decode()
    short = DeadLetter("bad_json", "message is not JSON", original, "leadstream-events", 1, 7, b"k" * KEPT_KEY_BYTES)
    assert short.message_key == short.key and "key_size" not in orjson.loads(short.to_bytes())


@pytest.mark.parametrize("value", [b"{oops", b"[]", b'{"reason": "x"}', b'{"reason": "x", "original_base64": "%%%"}', None])
def test_anything_else_is_refused_with_a_value_error(value: bytes | None) -> None:
    with pytest.raises(ValueError, match="not a dead letter as leadstream writes them"):
        DeadLetter.from_bytes(value)


@pytest.mark.parametrize("original", [b"\x01" * 1_000_000, b"\xff" * 1_000_000, b'"' * 600_000])
def test_an_original_too_large_for_a_kafka_message_is_kept_as_its_size_and_head(original: bytes) -> None:
    """Escaped (six bytes a control character, two a quote) or in base64, these originals made
    letters of 1.2-6 MB, which the broker refuses: the worker stopped, at every restart."""
    letter = DeadLetter("bad_json", "message is not JSON: " + "x" * 10_000, original, "leadstream-events", 1, 7, b"k")
    value = letter.to_bytes()
    assert len(value) <= MAX_MESSAGE_BYTES
    record = orjson.loads(value)
    assert record["original_size"] == len(original)
    assert base64.b64decode(record["original_head_base64"]) == original[:KEPT_HEAD_BYTES]
    assert len(record["detail"]) < 5000
    read = DeadLetter.from_bytes(value)
    assert (read.original, read.whole) == (b"", False)  # nothing to replay


@pytest.mark.parametrize(("value", "reason"), [
    (b'{"event_id": "e9",  "lead_id": "carol", "type": "page_view", "time": 1000000000000000000000000000000}', "bad_value"),
    (b'{"event_id": "e9",  "lead_id": "carol", "type": "demo_call", "time": 1762128000000, "product": "b2b"}', "unknown_type"),
    (b' {"event_id": "e9", "lead_id": "carol", "type": "page_view", "time": "2099-01-01T00:00:00Z", "product": "b2b"}', "future_time"),
])
def test_a_message_of_one_event_is_dead_lettered_byte_for_byte(value: bytes, reason: str) -> None:
    # Written out again, its spaces were gone and its time read 1e30: the README promises the original bytes.
    settings = Settings()
    outbox = Kept()
    scorer = Scorer(Engine([shipped("b2b")]), settings, LiveTable(MemoryData(), "changelog", 4, 100, lead_states.decode), outbox, 4)
    asyncio.run(scorer.process([Consumed(settings.topic_events, partition_for("carol", 4), 0, b"carol", value)]))
    [letter] = [orjson.loads(v) for topic, _, v in outbox.sent if topic == settings.topic_deadletter and v]
    assert (letter["reason"], letter["original"]) == (reason, value.decode())
    # An envelope's event is written out alone: the envelope holds others.
    envelope = b"[" + value + b", " + orjson.dumps({"event_id": "ok", "lead_id": "carol", "type": "page_view", "time": T0}) + b"]"
    asyncio.run(scorer.process([Consumed(settings.topic_events, partition_for("carol", 4), 1, None, envelope)]))
    letters = [orjson.loads(v) for topic, _, v in outbox.sent if topic == settings.topic_deadletter and v]
    # As written in the envelope: parsed and written out again, the time read 1e30 (a float).
    assert len(letters) == 2 and letters[1]["original"] == value.strip().decode()


def envelope_letters(envelope: bytes, lead: str = "carol") -> tuple[list[dict[str, object]], Scorer]:
    settings = Settings()
    outbox = Kept()
    scorer = Scorer(Engine([shipped("b2b")]), settings, LiveTable(MemoryData(), "changelog", 4, 100, lead_states.decode), outbox, 4)
    asyncio.run(scorer.process([Consumed(settings.topic_events, partition_for(lead, 4), 0, None, envelope)]))
    return [orjson.loads(v) for topic, _, v in outbox.sent if topic == settings.topic_deadletter and v], scorer


def test_an_envelope_s_events_are_dead_lettered_as_their_producer_wrote_them() -> None:
    """Each letter kept its event parsed and written out again: an integer over 64 bits (a lead id
    the detail asked to send as a text) came back as 1.2345678901234568e22, 1.10 as 1.1."""
    good = orjson.dumps({"event_id": "ok", "lead_id": "carol", "type": "page_view", "time": T0, "product": "b2b"})
    bad = [b'{"event_id": "u1", "lead_id": 12345678901234567890123, "type": "page_view", "time": 1}',
           b'{"event_id":"u2","lead_id":"carol","type":"page_veiw","time":%d,"product":"b2b","properties":{"a":1.10,"e":1E2}}' % T0,
           b'"not an event"', b'{"event_id": "u3", "lead_id": "y", "type": "page_view", "time": %d}' % T0]
    letters, _ = envelope_letters(b" [ " + b" ,\n".join([bad[0], good, bad[1], bad[2], bad[3]]) + b"\t]")
    wrong = [letter for letter in letters if letter["reason"] == "wrong_partition"]
    assert partition_for("y", 4) != partition_for("carol", 4) and len(wrong) == 1
    assert sorted(str(letter["original"]) for letter in letters) == sorted(raw.decode() for raw in bad)


def test_a_lone_surrogate_escape_in_an_envelope_loses_none_of_its_events() -> None:
    """orjson refuses a whole message for one `\\ud83d` (a title cut mid-emoji by JSON.stringify):
    the worker dead-lettered the envelope as bad_json, while `leadstream score` read it as U+FFFD."""
    events = [orjson.dumps({"event_id": f"e{n}", "lead_id": "carol", "type": "page_view", "time": T0 + n, "product": "b2b",
                            "properties": {"url": "https://acme.io/pricing", "title": "Pricing"}}) for n in range(3)]
    events[1] = events[1].replace(b'"Pricing"', b'"Pricing \\ud83d"')
    letters, scorer = envelope_letters(b"[" + b",".join(events) + b"]")
    assert letters == []
    states = scorer.store.states("carol")
    assert states["b2b"].behaviour > 0 and all(states["b2b"].knows_event(f"e{n}") for n in range(3))


LIBRDKAFKA_LEAD = "t3-19"  # murmur2 puts it on partition 2 of 4; librdkafka's default (CRC32 of the key) on 0


@pytest.mark.parametrize(
    ("topic", "key", "value", "named"),
    [
        ("events", b"t3-19", {"event_id": "e1", "lead_id": LIBRDKAFKA_LEAD, "type": "page_view", "time": T0, "product": "b2b"},
         "partitioner=murmur2_random"),
        ("events", b"someone", {"event_id": "e1", "lead_id": LIBRDKAFKA_LEAD, "type": "page_view", "time": T0, "product": "b2b"},
         "key single events by lead id"),
        ("identity", b"t3-19", {"kind": "link", "source": LIBRDKAFKA_LEAD, "target": "ada", "time": T0},
         "partitioner=murmur2_random"),
        ("identity", b"ada", {"kind": "link", "source": LIBRDKAFKA_LEAD, "target": "ada", "time": T0}, "key it by that id"),
        ("profiles", b"t3-19", None, "partitioner=murmur2_random"),
    ],
)
def test_a_message_keyed_by_its_lead_id_on_another_partition_names_the_partitioner(
    topic: str, key: bytes, value: dict | None, named: str
) -> None:
    """librdkafka's clients (confluent-kafka...) hash the key with CRC32 unless told otherwise:
    228 of 300 events keyed by their lead id were dead-lettered with the advice to key them by
    the lead id, which they were."""
    settings = Settings()
    assert (partition_for(LIBRDKAFKA_LEAD, 4), zlib.crc32(LIBRDKAFKA_LEAD.encode()) % 4) == (2, 0)
    outbox = Kept()
    scorer = Scorer(Engine([shipped("b2b")]), settings, LiveTable(MemoryData(), "changelog", 4, 100, lead_states.decode), outbox, 4)
    message = Consumed(getattr(settings, f"topic_{topic}"), 0, 0, key, b"" if value is None else orjson.dumps(value), value is None)
    asyncio.run(scorer.process([message]))
    [letter] = [orjson.loads(v) for t, _, v in outbox.sent if t == settings.topic_deadletter and v]
    assert letter["reason"] == "wrong_partition" and named in letter["detail"], letter["detail"]
    if named == "partitioner=murmur2_random":
        assert "keyed by the lead id but partitioned otherwise than Kafka's default murmur2 partitioner" in letter["detail"]
        assert "CRC32, puts it on partition 0, where it came" in letter["detail"]
        # Not CRC32 alone: partitions added to the topic put leads elsewhere too, for every
        # producer following its count (an audit's 57 letters blamed librdkafka for that).
        assert ("over 4 partitions (LEADSTREAM_PARTITIONS)" in letter["detail"]
                and "or the topic's partition count changed" in letter["detail"]
                and "README, Changing the partition count" in letter["detail"]), letter["detail"]


@pytest.mark.parametrize("field", ["traits", "properties"])
@pytest.mark.parametrize("with_link", [True, False])
def test_an_event_holding_an_integer_beyond_64_bits_is_dead_lettered_naming_its_field(field: str, with_link: bool) -> None:
    """An identify's trait (or a property) of 99999999999999999999999999 was read as the float
    1e+26 and scored: its digits were gone from the lead's view and its crossings. An identify
    with an anonymous_id (a link) takes the careful path; msgspec's path read the integer whole."""
    link = b', "anonymous_id": "v-1"' if with_link else b""
    value = (b'{"event_id": "e9", "lead_id": "carol", "type": "identify", "time": %d, "product": "b2b"%s, '
             b'"%s": {"hubspot_id": 99999999999999999999999999}}' % (T0, link, field.encode()))
    letters, scorer = envelope_letters(value)
    assert [(letter["reason"], letter["detail"], letter["original"]) for letter in letters] == [
        ("too_large", f"{field}.hubspot_id holds an integer beyond 64 bits, which loses digits as a JSON number: send such a "
                      "number as a text", value.decode())]
    assert scorer.store.states("carol") == {}
