"""`leadstream send` reads a JSON-lines file: each event keyed by its lead id, as the worker
will read that id, and every line it cannot key reported by number."""

from __future__ import annotations

import io
import itertools
import re
from pathlib import Path
from typing import Any, Iterator

import orjson
import pytest

from streams.envelope import pack_by_partition, pack_keyed
from streams.errors import ServiceError
from streams.kafka_clients import open_client
from streams.partitioning import partition_for
from streams.send import produce, read_events
from streams.settings import Settings
from streams.topics import TopicSpec, ensure_topics
from tests.infra import leadstream, read_to_end, write_jsonl


def test_lines_are_keyed_by_lead_id_and_bad_ones_reported() -> None:
    lines = io.BytesIO(
        b'{"lead_id": "ada", "type": "signup"}\n'
        b"\n"
        b'{"lead_id": 42, "type": "signup"}\n'  # a number id is its decimal text, as in the engine
        b"{broken\n"
        b'{"lead_id": true}\n'
        b'{"lead_id": 4.2}\n'
        b'{"type": "signup"}\n'
        b"[1, 2]\n"
        b'[{"lead_id": "cy", "n": 1}, {"lead_id": 7}, {"n": 3}]\n'  # an envelope, as `history` writes one: each event sent
        b'{"lead_id": "Ren\xe9"}\n'
        b"[]\n"
    )
    bad: list[str] = []
    assert [(lead, event) for lead, event in read_events(lines, bad) if lead != "ada"] == [
        ("42", b'{"lead_id": 42, "type": "signup"}'), ("cy", b'{"lead_id":"cy","n":1}'), ("7", b'{"lead_id":7}')]
    assert [line.split(":")[0] for line in bad] == ["line 4", "line 5", "line 6", "line 7", "line 8, event 1 of its envelope",
                                                    "line 8, event 2 of its envelope", "line 9, event 3 of its envelope",
                                                    "line 10", "line 11"]
    assert "no `lead_id` (a text or a whole number)" in bad[1]
    assert "not JSON: it is not UTF-8 text (byte 0xe9 at offset 16)" in bad[7]


def test_a_byte_order_mark_and_windows_line_ends_are_read() -> None:
    lines = io.BytesIO(b'\xef\xbb\xbf{"lead_id": "ada"}\r\n{"lead_id": "bob"}\r\n')
    bad: list[str] = []
    assert [(lead, event) for lead, event in read_events(lines, bad)] == [("ada", b'{"lead_id": "ada"}'), ("bob", b'{"lead_id": "bob"}')]
    assert bad == []


def test_envelopes_hold_one_partitions_leads_in_their_order() -> None:
    events = [(f"lead-{i % 7}", b'{"n": %d}' % i) for i in range(40)]
    packed = list(pack_by_partition(events, 4, max_events=3))
    for partition, message in packed:
        items = orjson.loads(message)
        items = items if isinstance(items, list) else [items]
        assert len(items) <= 3
        assert {partition_for(f"lead-{item['n'] % 7}", 4) for item in items} == {partition}
    # Every event once, and each partition's events in the order they came.
    unpacked = [(p, item["n"]) for p, m in packed for item in (lambda v: v if isinstance(v, list) else [v])(orjson.loads(m))]
    assert sorted(n for _, n in unpacked) == list(range(40))
    for partition in range(4):
        numbers = [n for p, n in unpacked if p == partition]
        assert numbers == sorted(numbers)


def test_envelopes_are_packed_as_the_pairs_are_read() -> None:
    """`leadstream send --events-per-message 100` of a 2.1M-event file read the whole file
    before sending its first message (1.3 GB): each partition's events were grouped first. An
    envelope now goes as soon as it is full, so one envelope a partition is held."""
    read = 0

    def pairs() -> Iterator[tuple[str, bytes]]:
        nonlocal read
        for n in range(10_000):
            read += 1
            yield f"lead-{n % 7}", b'{"n": %d}' % n

    for packed in (pack_keyed(pairs(), 4, max_events=3), pack_keyed(pairs(), 4, max_events=3, per_lead=True)):
        first = list(itertools.islice(packed, 20))
        assert len(first) == 20 and read <= 20 * 3 + 7 * 2  # at most an open envelope a partition (a lead) besides
        read = 0
    # An envelope that would pass max_bytes closes before the event that would not fit, as before.
    sized = pack_keyed([("a", b'{"x": "%s"}' % (b"x" * 35))] * 5, 4, 10, max_bytes=100)
    assert [message.count(b'{"x"') for _, _, message in sized] == [2, 2, 1]



def test_messages_kafka_refuses_are_reported_and_the_others_written(isolated: Settings, tmp_path: Path) -> None:
    # Before, `send` said "sent 3 events" and exited 0 whatever Kafka did with them: a message
    # over the topic's max.message.bytes was lost without a word.
    topic = f"{isolated.app_id}-small"
    ensure_topics(isolated, [TopicSpec(topic, 4, {"max.message.bytes": "10000"})])
    lines = [{"event_id": f"e{n}", "lead_id": f"lead-{n}", "type": "page_view", "time": 1_767_225_600_000,
              "properties": {"blob": "x" * (50_000 if n == 1 else 10)}} for n in range(3)]
    path = write_jsonl(tmp_path / "events.jsonl", lines)
    for per_message in ("1", "5"):
        done = leadstream(isolated, "send", str(path), "--topic", topic, "--events-per-message", per_message, check=False)
        assert done.returncode == 1, done
        assert f"Kafka wrote {2 if per_message == '1' else 1} of the {3 if per_message == '1' else 2} messages sent to {topic}; refused 1" in done.stderr
        assert "MessageSizeTooLargeError" in done.stderr and "max.message.bytes" in done.stderr
        # One event a message already: "send fewer events per message" was no help.
        assert ("this one held one event" in done.stderr) == (per_message == "1")
    written = sorted(event["event_id"] for _, value in read_to_end(isolated, topic)
                     for event in (value if isinstance(value, list) else [value]))
    assert written == ["e0", "e0", "e2", "e2"]


def test_failed_writes_out_the_messages_kafka_refused_and_only_those_are_sent_again(isolated: Settings, tmp_path: Path) -> None:
    """A send that Kafka wrote in part could only be sent again whole, the written events with
    the others (safe only within the worker's memory of ids). `--failed FILE` keeps the
    messages not written, one a line, as `send` reads them: an event, or an envelope. Kafka
    refuses a batch of several messages one of which is too large; kafka-python splits it
    and sends it again (it may refuse its neighbours too), and its `flush` then raised
    UnknownError('Future not done'): `send` ended in a traceback, saying nothing of what it wrote."""
    for per_message in ("1", "6"):
        topic = f"{isolated.app_id}-small-{per_message}"
        ensure_topics(isolated, [TopicSpec(topic, 4, {"max.message.bytes": "10000"})])
        lines = [{"event_id": f"e{n}", "lead_id": f"lead-{n}", "type": "page_view", "time": 1_767_225_600_000,
                  "properties": {"blob": "x" * (50_000 if n in (1, 4) else 10)}} for n in range(6)]
        path, failed = write_jsonl(tmp_path / "events.jsonl", lines), tmp_path / "failed.jsonl"
        failed.write_bytes(b"left by an earlier send\n")
        done = leadstream(isolated, "send", str(path), "--topic", topic, "--events-per-message", per_message,
                          "--failed", str(failed), check=False)
        assert done.returncode == 1, done
        said = re.search(r"Kafka wrote (\d+) of the (\d+) messages sent to \S+; refused (\d+), the first with "
                         r"MessageSizeTooLargeError", done.stderr)
        assert said and f"are in {failed}, one a line" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr and "Sending the file again" not in done.stderr
        written, messages, refused = map(int, said.groups())
        kept = [orjson.loads(line) for line in failed.read_bytes().splitlines()]
        assert len(kept) == refused == messages - written
        # Packed, partition 1's three events were one envelope, kept as one line.
        assert any(isinstance(line, list) for line in kept) == (per_message == "6")
        kept_ids = [event["event_id"] for line in kept for event in (line if isinstance(line, list) else [line])]
        in_topic = [event["event_id"] for _, value in read_to_end(isolated, topic)
                    for event in (value if isinstance(value, list) else [value])]
        assert {"e1", "e4"} <= set(kept_ids) and sorted(kept_ids + in_topic) == [f"e{n}" for n in range(6)]
        own = f"{isolated.app_id}-resent-{per_message}"
        ensure_topics(isolated, [TopicSpec(own, isolated.partitions, {})])
        resent = leadstream(isolated, "send", str(failed), "--topic", own)
        assert f"sent {len(kept_ids)} events" in resent.stdout
        assert sorted(event["event_id"] for _, event in read_to_end(isolated, own)) == sorted(kept_ids)


def test_failed_refuses_the_file_being_sent(isolated: Settings, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "events.jsonl", [{"event_id": "e0", "lead_id": "lead-0", "type": "page_view",
                                                     "time": 1_767_225_600_000}])
    done = leadstream(isolated, "send", str(path), "--failed", str(tmp_path / "." / "events.jsonl"), check=False)
    assert done.returncode != 0 and "is the file being sent" in done.stderr, done
    assert orjson.loads(path.read_bytes())["event_id"] == "e0"


def test_packed_messages_of_one_lead_are_keyed_by_it_as_the_collectors_are(isolated: Settings, tmp_path: Path) -> None:
    """README "Events": a single event is keyed by its lead id; an envelope has no key only when
    it holds several leads' events. `send --events-per-message 5` sent every message without a
    key, a lone event among them."""
    assert {partition_for(lead, 4) for lead in ("lead-42", "lead-99")} == {3}  # one partition, one envelope
    lines = [{"event_id": f"e{n}", "lead_id": lead, "type": "page_view", "time": 1_767_225_600_000}
             for n, lead in enumerate(["lead-42", "lead-99", "lead-7", "lead-7", "u-42"])]
    path = write_jsonl(tmp_path / "events.jsonl", lines)
    leadstream(isolated, "send", str(path), "--events-per-message", "5")
    keyed = sorted((key or b"", [e["event_id"] for e in (value if isinstance(value, list) else [value])])
                   for key, value in read_to_end(isolated, isolated.topic_events))
    assert keyed == [(b"", ["e0", "e1"]), (b"lead-7", ["e2", "e3"]), (b"u-42", ["e4"])]


def test_packed_messages_to_the_compacted_profiles_topic_each_hold_one_lead(isolated: Settings, tmp_path: Path) -> None:
    """A compacted topic refuses a message without a key: `send --topic <profiles>
    --events-per-message 5` packed two leads of one partition into one envelope without a key,
    which Kafka refused (InvalidRecordError), and the error blamed the message's size."""
    lines = [{"event_id": f"p{n}", "lead_id": lead, "type": "identify", "time": 1_767_225_600_000, "traits": {"n": n}}
             for n, lead in enumerate(["lead-42", "lead-99", "lead-42"])]
    path = write_jsonl(tmp_path / "profiles.jsonl", lines)
    done = leadstream(isolated, "send", str(path), "--topic", isolated.topic_profiles, "--events-per-message", "5")
    assert "sent 3 events in 2 messages" in done.stdout
    keyed = sorted((key, [e["event_id"] for e in (value if isinstance(value, list) else [value])])
                   for key, value in read_to_end(isolated, isolated.topic_profiles))
    assert keyed == [(b"lead-42", ["p0", "p2"]), (b"lead-99", ["p1"])]


class _Watched:
    """A producer that notes, at each send, how many of its messages have no answer yet."""

    def __init__(self, producer: Any) -> None:
        self.producer, self.futures, self.most_pending = producer, [], 0  # type: ignore[var-annotated]

    def send(self, topic: str, **message: Any) -> Any:
        self.futures = [future for future in self.futures if not future.is_done]
        self.most_pending = max(self.most_pending, len(self.futures))
        future = self.producer.send(topic, **message)
        self.futures.append(future)
        return future

    def flush(self) -> None:
        self.producer.flush()


def _events(count: int, blob_bytes: int) -> list[tuple[str, bytes]]:
    return [(f"lead-{n}", orjson.dumps({"event_id": f"e{n}", "lead_id": f"lead-{n}", "type": "page_view",
                                         "time": 1_767_225_600_000, "properties": {"blob": "x" * blob_bytes}}))
            for n in range(count)]


def test_a_send_stopped_by_sigterm_ends_as_on_ctrl_c_having_closed_its_producer(isolated: Settings) -> None:
    """`leadstream send -` from a pipe that never ends (a stream, a service manager stopping it):
    Python's default SIGTERM ended it at once (exit 143), its producer not closed, so what it was
    handed and had not sent was lost; it now ends as Ctrl-C ends it, through its `finally`, and says
    what Kafka wrote."""
    import os
    import signal
    import subprocess
    import sys

    from tests.infra import wait_for

    send = subprocess.Popen([sys.executable, "-m", "streams.cli", "send", "-"], stdin=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, env={**os.environ, **isolated.as_env()})
    try:
        assert send.stdin is not None
        send.stdin.write(b"".join(event + b"\n" for _, event in _events(3, 10)))
        send.stdin.flush()  # the pipe stays open: send waits for more
        wait_for(lambda: len(read_to_end(isolated, isolated.topic_events)) == 3, 60, "the first events written")
        send.send_signal(signal.SIGTERM)
        _, err = send.communicate(timeout=60)
    finally:
        send.kill()
    assert send.returncode == 130, err.decode()
    assert b"Traceback" not in err
    # What it wrote, as a send that reaches its end says it: it said nothing.
    assert f"stopped after reading 3 events of the input: Kafka wrote 3 of the 3 messages sent to {isolated.topic_events}, " \
           "0 not written" in err.decode()


def test_a_long_send_waits_for_its_oldest_messages_and_writes_them_all(isolated: Settings) -> None:
    """`leadstream send` of a 370 MB file handed its 21,003 messages to the producer at once:
    on a busy broker the batches still waiting their turn after the delivery timeout (120 s)
    expired, half of the messages. A send waits for its oldest messages once the ones without
    an answer reach max_pending_bytes; here 15 MB, 256 KB at a time, against a 5 s delivery
    timeout."""
    from kafka import KafkaProducer

    producer = _Watched(open_client(isolated, KafkaProducer, acks="all", linger_ms=5, batch_size=256 * 1024,
                                    delivery_timeout_ms=5000, request_timeout_ms=4000))
    events = _events(1500, 10_000)
    try:
        assert produce(producer, isolated.topic_events, events, 1, partitions=isolated.partitions,
                       max_pending_bytes=256 * 1024) == (1500, 1500)
    finally:
        producer.producer.close()
    assert producer.most_pending <= 256 * 1024 // len(events[0][1]) + 1
    assert len(read_to_end(isolated, isolated.topic_events)) == 1500


def test_messages_without_an_answer_are_counted_apart_from_those_refused(isolated: Settings) -> None:
    """A batch that outlives the producer's delivery timeout fails with KafkaTimeoutError, yet
    one that was in flight may have been written: a send counted such messages refused and
    said "the others were written", while the topic held 336 of the 10,698 "refused". They are
    counted apart, as may or may not have been written, and the topic holds at least those
    said written and at most those plus the unknown."""
    from kafka import KafkaProducer

    producer = open_client(isolated, KafkaProducer, acks="all", linger_ms=5, batch_size=256 * 1024,
                           delivery_timeout_ms=100, request_timeout_ms=95)
    try:
        with pytest.raises(ServiceError) as failed:
            produce(producer, isolated.topic_events, _events(3000, 10_000), 1, partitions=isolated.partitions, max_pending_bytes=10**12)
    finally:
        producer.close()
    said = str(failed.value)
    counts = re.match(r"Kafka wrote (\d+) of the 3000 messages sent to \S+; (?:refused (\d+), .*?; )?(\d+) had no answer "
                      r"within the producer's delivery timeout .*?, so may or may not have been written", said)
    assert counts, said
    written, refused, unknown = (int(n or 0) for n in counts.groups())
    assert unknown > 0 and written + refused + unknown == 3000
    assert "Sending the file again" in said and "remember_events" in said and "--failed FAILED" in said
    assert written <= len(read_to_end(isolated, isolated.topic_events)) <= written + unknown
