"""`leadstream send FILE`: produce a JSON-lines file of events to the raw events topic.

Each event is keyed by its lead id and goes to that lead's partition. With
`--events-per-message N`, events of the same partition are packed into envelopes (see
streams/envelope.py), keyed by their lead when they hold one lead's events only. A line may be
one event or an envelope of several (as `leadstream history` writes them). Lines, and events of
an envelope, that are not JSON objects with a lead id are reported by line number and skipped;
the rest is sent.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

import orjson

from scoring.events import EMPTY_ENVELOPE, MAX_EVENT_BYTES, Rejection, loads, optional_id, unreadable
from streams.envelope import pack_keyed
from streams.errors import InputError, ServiceError
from streams.kafka_clients import open_client
from streams.jsonlines import numbered_lines
from streams.settings import Settings
from streams.topics import partition_count


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
                    yield lead, orjson.dumps(item)
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
            f"the first with {_cause(refused.first)}{_remedy(refused.first, events_per_message)}"
        )
    return sent_events, sent_messages


def _remedy(exc: Exception, events_per_message: int) -> str:
    if "TooLarge" not in exc.__class__.__name__:
        return ""
    if events_per_message == 1:  # one event per message already: the event itself is that large
        return (": a message larger than the topic's max.message.bytes (1 MB by default) is refused, and this one held "
                f"one event (the worker refuses an event over {MAX_EVENT_BYTES} bytes anyway, as too_large): find it "
                "in the file, and send it smaller")
    return (": a message larger than the topic's max.message.bytes (1 MB by default) is refused; send fewer events "
            "per message (--events-per-message), or raise the topic's limit")


def _cause(exc: Exception) -> str:
    """An error's class and, when it has one, its message (the broker's refusals have none)."""
    detail = exc.args[0] if exc.args else None
    return f"{exc.__class__.__name__} ({detail})" if detail else exc.__class__.__name__


def send_file(path: Path, settings: Settings, topic: str | None = None, events_per_message: int = 1) -> int:
    topic = settings.topic_events if topic is None else topic  # an empty name is no topic, not the default
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
