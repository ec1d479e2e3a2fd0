"""`leadstream send FILE`: produce a JSON-lines file of events to the raw events topic.

Each event is keyed by its lead id and goes to that lead's partition. With
`--events-per-message N`, events of the same partition are packed into envelopes (see
streams/envelope.py), keyed by their lead when they hold one lead's events only. Lines that are not JSON objects with a lead id are reported by line
number and skipped; the rest is sent.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

import orjson

from streams.envelope import pack_keyed
from streams.errors import InputError, ServiceError
from streams.kafka_clients import open_client
from streams.jsonlines import numbered_lines
from streams.settings import Settings
from streams.topics import partition_count


def read_events(lines: IO[bytes], bad: list[str]) -> Iterator[tuple[str, bytes]]:
    """(lead id, event bytes) for each valid line; a message appended to `bad` for each bad one."""
    for number, line in numbered_lines(lines):
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            bad.append(f"line {number}: not JSON ({exc}); skipped")
            continue
        lead = event.get("lead_id") if isinstance(event, dict) else None
        if lead.__class__ is int:  # the engine reads a number id as its decimal text; so is it keyed
            lead = str(lead)
        if not isinstance(lead, str) or not lead:
            bad.append(f"line {number}: no `lead_id` (a text or a whole number), so no partition; skipped")
            continue
        yield lead, line


def open_producer(settings: Settings) -> Any:  # a kafka.KafkaProducer (kafka-python is untyped)
    from kafka import KafkaProducer

    return open_client(settings, KafkaProducer, acks="all", linger_ms=5, batch_size=256 * 1024, client_id="leadstream-send")


class _Refused:
    """The messages Kafka did not take: how many, and why the first was not."""

    def __init__(self) -> None:
        self.count = 0
        self.first: Exception | None = None

    def add(self, cause: Exception) -> None:
        self.count += 1
        self.first = self.first or cause


def produce(producer: Any, topic: str, events: Iterable[tuple[str, bytes]], events_per_message: int,
            *, compacted: bool = False) -> tuple[int, int]:
    """Send (lead id, event bytes) pairs, keyed by lead or packed per partition (per lead to a
    `compacted` topic, which refuses a message without a key); (events, messages) sent.
    ServiceError, once the others are written, when Kafka refused any message: the producer's
    `flush` returns whether or not its messages were written."""
    from kafka.errors import KafkaError

    if events_per_message < 1:
        raise InputError("--events-per-message must be at least 1")
    partitions = len(producer.partitions_for(topic))
    refused = _Refused()

    def send(**message: Any) -> None:
        try:
            future = producer.send(topic, **message)
        except KafkaError as exc:  # refused by the producer itself (larger than its max_request_size)
            refused.add(exc)
            return
        future.add_errback(refused.add)

    sent_events = sent_messages = 0
    if events_per_message == 1:
        for lead, event in events:
            send(key=lead.encode(), value=event)
            sent_events += 1
        sent_messages = sent_events
    else:
        pairs = list(events)  # packed per partition, so all of them are read first anyway
        for partition, key, message in pack_keyed(pairs, partitions, events_per_message, per_lead=compacted):
            send(key=None if key is None else key.encode(), value=message, partition=partition)
            sent_messages += 1
        sent_events = len(pairs)
    producer.flush()
    if refused.first is not None:
        raise ServiceError(
            f"Kafka refused {refused.count} of the {sent_messages} messages sent to {topic} (the others were written), "
            f"the first with {_cause(refused.first)}{_remedy(refused.first)}"
        )
    return sent_events, sent_messages


def _remedy(exc: Exception) -> str:
    if "TooLarge" not in exc.__class__.__name__:
        return ""
    return (": a message larger than the topic's max.message.bytes (1 MB by default) is refused; send fewer events "
            "per message (--events-per-message), or raise the topic's limit")


def _cause(exc: Exception) -> str:
    """An error's class and, when it has one, its message (the broker's refusals have none)."""
    detail = exc.args[0] if exc.args else None
    return f"{exc.__class__.__name__} ({detail})" if detail else exc.__class__.__name__


def send_file(path: Path, settings: Settings, topic: str | None = None, events_per_message: int = 1) -> int:
    topic = topic or settings.topic_events
    bad: list[str] = []
    if partition_count(settings, topic) == 0:
        raise ServiceError(f"topic {topic!r} does not exist; run `leadstream topics` (or check --topic)")
    try:
        stream = sys.stdin.buffer if str(path) == "-" else open(path, "rb")
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from exc
    producer = open_producer(settings)
    try:
        with stream:
            sent_events, sent_messages = produce(producer, topic, read_events(stream, bad), events_per_message,
                                                 compacted=topic == settings.topic_profiles)
    finally:
        producer.close()
        for line in bad:  # also when Kafka refused messages
            print(line, file=sys.stderr)
    skipped = f"; {len(bad)} bad lines skipped" if bad else ""
    print(f"sent {sent_events} events in {sent_messages} messages to {topic}{skipped}")
    return 1 if bad else 0
