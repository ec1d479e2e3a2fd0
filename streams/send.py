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

import sys
from collections import deque
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

import orjson

from scoring.events import EMPTY_ENVELOPE, MAX_EVENT_BYTES, Rejection, loads, optional_id, unreadable
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


#: Bytes of messages handed to the producer whose outcome is not known yet; a send waits for the
#: oldest before handing over more. kafka-python's producer has no bound of its own: a send of a
#: 370 MB file queued its 21,003 messages at once, and the batches still waiting their turn on a
#: busy broker when its delivery timeout (120 s) ran out expired, half of them. 16 MB is
#: about 10 s of writing for that broker (1.6 MB/s).
MAX_PENDING_BYTES = 16 * 1024 * 1024


class _Failed:
    """Messages of one outcome other than written: how many, and why the first."""

    def __init__(self) -> None:
        self.count = 0
        self.first: Exception | None = None

    def add(self, cause: Exception) -> None:
        self.count += 1
        self.first = self.first or cause


def produce(producer: Any, topic: str, events: Iterable[tuple[str, bytes]], events_per_message: int, *, partitions: int,
            compacted: bool = False, max_pending_bytes: int = MAX_PENDING_BYTES) -> tuple[int, int]:
    """Send (lead id, event bytes) pairs, keyed by lead or packed per partition, each on its
    lead's partition of `partitions` (streams.topics.keyed_partitions) (per lead to a
    `compacted` topic, which refuses a message without a key), with at most `max_pending_bytes`
    of messages awaiting the broker's answer; (events, messages) sent. The pairs are read as
    they are sent: packed, one envelope a partition waits to fill.

    ServiceError, once every message has its answer, when any was not written or may not have
    been (the producer's `flush` returns either way): refused (the broker or the producer
    answered with an error) and unknown (no answer within the producer's delivery timeout:
    written or not) are counted apart."""
    from kafka.errors import KafkaError

    if events_per_message < 1:
        raise InputError("--events-per-message must be at least 1")
    refused, unknown = _Failed(), _Failed()
    pending: deque[tuple[Any, int]] = deque()  # (future, message bytes), oldest first
    pending_bytes = 0

    def failed(cause: Exception) -> None:
        # A retriable error is what kafka-python's retries, unbounded, end with when the delivery
        # timeout runs out (KafkaTimeoutError): a batch that was in flight then may have been
        # written (in the audit, 336 of the 10,698 messages reported refused were).
        (unknown if isinstance(cause, KafkaError) and cause.retriable else refused).add(cause)

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
    sent_messages = 0
    for partition, key, value in messages:
        sent_messages += 1
        try:
            future = producer.send(topic, key=None if key is None else key.encode(), value=value, partition=partition)
        except KafkaError as exc:  # refused by the producer itself (larger than its max_request_size)
            refused.add(exc)
            continue
        future.add_errback(failed)
        pending.append((future, len(value)))
        pending_bytes += len(value)
        # Answered messages are let go at once: held until the bound, the futures of 16 MB of
        # one-event messages took 65 MB more than the messages.
        while pending and (pending[0][0].is_done or pending_bytes > max_pending_bytes):
            oldest, size = pending.popleft()
            try:
                oldest.get()
            except KafkaError:  # counted by its errback
                pass
            pending_bytes -= size
    producer.flush()
    if refused.count or unknown.count:
        raise ServiceError(_summary(topic, sent_messages, refused, unknown, events_per_message))
    return sent_events, sent_messages


def _summary(topic: str, messages: int, refused: _Failed, unknown: _Failed, events_per_message: int) -> str:
    """What became of the messages of a send that did not write them all, and what to do."""
    parts = [f"Kafka wrote {messages - refused.count - unknown.count} of the {messages} messages sent to {topic}"]
    if refused.first is not None:
        parts.append(f"refused {refused.count}, the first with {_cause(refused.first)}"
                     f"{_remedy(refused.first, events_per_message)}")
    if unknown.first is not None:
        parts.append(f"{unknown.count} had no answer within the producer's delivery timeout (the broker too slow or "
                     f"unreachable), so may or may not have been written, the first with {_cause(unknown.first)}")
    return "; ".join(parts) + (
        ". Sending the file again, once the cause is fixed, sends its written events again too: the worker drops an "
        "event whose id is among its lead's last remember_events (64 by default), so that is safe for a file of at "
        "most that many events a lead, and scores older ones again (README: Events)")


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


def _cause(exc: Exception) -> str:
    """An error's class and, when it has one, its message (the broker's refusals have none)."""
    detail = exc.args[0] if exc.args else None
    return f"{exc.__class__.__name__} ({detail})" if detail else exc.__class__.__name__


def send_file(path: Path, settings: Settings, topic: str | None = None, events_per_message: int = 1) -> int:
    topic = settings.topic_events if topic is None else topic  # an empty name is no topic, not the default
    bad: list[str] = []
    count = partition_count(settings, topic)
    if count == 0:
        raise ServiceError(f"topic {topic!r} does not exist; run `leadstream topics` (or check --topic)")
    partitions = keyed_partitions(settings, topic, count)
    try:
        stream = sys.stdin.buffer if str(path) == "-" else open(path, "rb")
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from exc
    producer = open_producer(settings)
    try:
        with stream:
            sent_events, sent_messages = produce(producer, topic, read_events(stream, bad), events_per_message,
                                                 partitions=partitions, compacted=topic == settings.topic_profiles)
    finally:
        producer.close()
        for line in bad:  # also when Kafka refused messages
            print(line, file=sys.stderr)
    skipped = f"; {len(bad)} bad lines skipped" if bad else ""
    print(f"sent {sent_events} events in {sent_messages} messages to {topic}{skipped}")
    return 1 if bad else 0
