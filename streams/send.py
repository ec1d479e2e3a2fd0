"""`leadstream send FILE`: produce a JSON-lines file of events to the raw events topic.

Each event is keyed by its lead id and goes to that lead's partition under LEADSTREAM_PARTITIONS
(a topic of another count is refused: streams.topics.keyed_partitions). With
`--events-per-message N`, events of the same partition are packed into envelopes (see
streams/envelope.py), keyed by their lead when they hold one lead's events only, each sent once
full. The file is read as it is sent, never held whole (`produce`). A line may be
one event or an envelope of several (as `leadstream history` writes them). Lines, and events of
an envelope, that are not JSON objects with a lead id are reported by line number and skipped;
the rest is sent.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

import orjson

from scoring.events import EMPTY_ENVELOPE, MAX_EVENT_BYTES, Rejection, loads, optional_id, unreadable
from streams.deliveries import MAX_PENDING_BYTES, Deliveries
from streams.envelope import pack_keyed
from streams.errors import InputError, ServiceError
from streams.kafka_clients import open_client
from streams.outbox import encode_json
from streams.jsonlines import numbered_lines
from streams.settings import Settings
from streams.partitioning import partition_for
from streams.topics import keyed_partitions, partition_count


def read_events(lines: IO[bytes], bad: list[str]) -> Iterator[tuple[str, bytes]]:
    """(lead id, event bytes) for each event of each valid line, a JSON object or an envelope (a
    JSON array of them, as `leadstream history` writes a message that held several); a message
    appended to `bad` for each bad line, or bad event of an envelope."""
    for number, line in numbered_lines(lines):
        try:
            value = loads(line)
        except orjson.JSONDecodeError as exc:
            bad.append(f"line {number}: {unreadable(exc, 'not JSON', line)[1]}; skipped")
            continue
        if isinstance(value, list):
            if not value:
                bad.append(f"line {number}: {EMPTY_ENVELOPE}; skipped")
            for n, item in enumerate(value, 1):
                lead = _lead_id(item, f"line {number}, event {n} of its envelope", bad)
                if lead is not None:
                    yield lead, encode_json(item)  # not orjson: it writes no integer beyond 64 bits
            continue
        lead = _lead_id(value, f"line {number}", bad)
        if lead is not None:
            yield lead, line


def _lead_id(event: Any, where: str, bad: list[str]) -> str | None:
    """The event's lead id as the engine reads it (a number is its decimal text), which keys it."""
    lead = optional_id(event, "lead_id") if isinstance(event, dict) else None
    if isinstance(lead, str):
        return lead
    why = f" ({lead.detail})" if isinstance(lead, Rejection) else ""
    bad.append(f"{where}: no `lead_id` (a text or a whole number), so no partition{why}; skipped")
    return None


def open_producer(settings: Settings) -> Any:  # a kafka.KafkaProducer (kafka-python is untyped)
    from kafka import KafkaProducer

    return open_client(settings, KafkaProducer, acks="all", linger_ms=5, batch_size=256 * 1024, client_id="leadstream-send")


class NotWritten:
    """`send --failed FILE`: the messages Kafka did not write, or may not have, one a line (one
    event, or an envelope: lines `read_events` reads), so that only those are sent again."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._file = open(path, "wb")  # emptied: after a send it holds that send's failures only
        except OSError as exc:
            raise InputError(f"cannot write --failed {path}: {exc.strerror}") from exc

    def add(self, message: bytes) -> None:
        self._file.write(message + b"\n")

    def close(self) -> None:
        self._file.close()


def produce(producer: Any, topic: str, events: Iterable[tuple[str, bytes]], events_per_message: int, *, partitions: int,
            compacted: bool = False, max_pending_bytes: int = MAX_PENDING_BYTES,
            not_written: NotWritten | None = None) -> tuple[int, int]:
    """Send (lead id, event bytes) pairs, keyed by lead or packed per partition, each on its
    lead's partition of `partitions` (streams.topics.keyed_partitions) (per lead to a
    `compacted` topic, which refuses a message without a key), with at most `max_pending_bytes`
    of messages awaiting the broker's answer; (events, messages) sent. The pairs are read as
    they are sent: packed, one envelope a partition waits to fill.

    ServiceError, once every message has its answer, when any was not written or may not have
    been (streams.deliveries); `not_written`, given, keeps those messages."""
    if events_per_message < 1:
        raise InputError("--events-per-message must be at least 1")
    deliveries = Deliveries(producer, max_pending_bytes=max_pending_bytes,
                            not_written=None if not_written is None else not_written.add)
    sent_events = 0

    def counted(pairs: Iterable[tuple[str, bytes]]) -> Iterator[tuple[str, bytes]]:
        nonlocal sent_events
        for pair in pairs:
            sent_events += 1
            yield pair

    messages: Iterable[tuple[int, str | None, bytes]]
    if events_per_message == 1:
        # Placed here, not by the producer's partitioner, which follows the topic's own count.
        messages = ((partition_for(lead, partitions), lead, event) for lead, event in counted(events))
    else:
        messages = pack_keyed(counted(events), partitions, events_per_message, per_lead=compacted)
    try:
        for partition, key, value in messages:
            deliveries.send(topic, value, partition=partition, key=None if key is None else key.encode())
        deliveries.settle()
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (streams.cli): it said nothing of what it had written
        deliveries.settle()  # a second one ends the wait
        raise SendStopped(_stopped(deliveries, topic, sent_events, events_per_message, not_written)) from None
    if deliveries.failed:
        resend = _RESEND_ALL if not_written is None else _RESEND_FAILED.format(path=not_written.path)
        raise ServiceError(deliveries.summary(topic, lambda error: _remedy(error, events_per_message)) + resend)
    return sent_events, deliveries.messages


#: What a failed send tells the user to do next, without --failed and with it (the file's name).
_RESEND_ALL = (" Sending the file again, once the cause is fixed, sends its written events again too: the worker drops an "
               "event whose id is among its lead's last remember_events (64 by default), so that is safe for a file of "
               "at most that many events a lead, and scores older ones again (README: Events); --failed FAILED writes "
               "out the messages not written, to send those alone")
_RESEND_FAILED = (" The messages not written, or not known to be written, are in {path}, one a line: send that file once "
                  "the cause is fixed (the worker drops an event it already scored when its id is among its lead's last "
                  "remember_events, 64 by default, so sending one written after all is safe)")


class SendStopped(KeyboardInterrupt):
    """A send stopped by Ctrl-C or SIGTERM before the end of its input: it still ends as an
    interrupted command does (exit 130), its message saying what Kafka wrote of what it read."""


def _stopped(deliveries: Deliveries, topic: str, events_read: int, events_per_message: int,
             not_written: NotWritten | None) -> str:
    unpacked = "; those waiting for their message to fill were not sent" if events_per_message > 1 else ""
    kept = "" if not_written is None or not deliveries.failed else f"; the messages not written are in {not_written.path}"
    return (f"stopped after reading {events_read} events of the input{unpacked}: Kafka wrote "
            f"{deliveries.messages - deliveries.failed} of the {deliveries.messages} messages sent to {topic}, "
            f"{deliveries.failed} not written or not known to be{kept}; the rest of the input was not sent")


def _remedy(exc: Exception, events_per_message: int) -> str:
    if "OutOfOrderSequence" in exc.__class__.__name__:
        return (": the broker refuses the batches of a partition that follow one of its that had no answer in time, "
                "their sequence numbers then out of step, so they were not written")
    if "TooLarge" not in exc.__class__.__name__:
        return ""
    if events_per_message == 1:  # one event per message already: the event itself is that large
        return (": a message larger than the topic's max.message.bytes (1 MB by default) is refused, and this one held "
                f"one event (the worker refuses an event over {MAX_EVENT_BYTES} bytes anyway, as too_large): find it "
                "in the file, and send it smaller")
    return (": a message larger than the topic's max.message.bytes (1 MB by default) is refused; send fewer events "
            "per message (--events-per-message), or raise the topic's limit")


def send_file(path: Path, settings: Settings, topic: str | None = None, events_per_message: int = 1,
              failed: Path | None = None) -> int:
    topic = settings.topic_events if topic is None else topic  # an empty name is no topic, not the default
    bad: list[str] = []
    count = partition_count(settings, topic)
    if count == 0:
        raise ServiceError(f"topic {topic!r} does not exist; run `leadstream topics` (or check --topic)")
    partitions = keyed_partitions(settings, topic, count)
    if failed is not None and str(path) != "-" and _same_file(path, failed):
        raise InputError(f"--failed {failed} is the file being sent: emptied to take the failures, it would be lost; "
                         "name another file")
    try:
        stream = sys.stdin.buffer if str(path) == "-" else open(path, "rb")
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from exc
    not_written = None if failed is None else NotWritten(failed)
    producer = open_producer(settings)
    try:
        with stream:
            sent_events, sent_messages = produce(producer, topic, read_events(stream, bad), events_per_message,
                                                 partitions=partitions, compacted=topic == settings.topic_profiles,
                                                 not_written=not_written)
    finally:
        producer.close()
        if not_written is not None:
            not_written.close()
        for line in bad:  # also when Kafka refused messages
            print(line, file=sys.stderr)
    skipped = f"; {len(bad)} bad lines skipped" if bad else ""
    print(f"sent {sent_events} events in {sent_messages} messages to {topic}{skipped}")
    return 1 if bad else 0


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # either missing: then not the same
        return False
