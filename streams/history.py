"""`leadstream history`: the raw events topic, as it is now, written to a JSON-lines file.

It is the event history `leadstream score` and `leadstream review` read: one message value per
line, an envelope staying one line (both commands read envelopes). Partitions are written one
after the other, each in offset order; a lead lives on one partition, so each lead's events keep
their order, which is what scoring by event time needs. The topic's retention bounds how far
back it goes.

A message whose value is not JSON (the worker dead-lettered it) is left out and counted; the
file never gets a line the scorers would have to reject as bad JSON.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import IO, Any, Iterator

import orjson

from streams.errors import InputError, ServiceError, kafka_unreachable
from streams.settings import Settings
from streams.topics import partition_count

#: How long reading may go without a record before the partitions' ends are taken as unreachable.
STALL_S = 30.0


def read_to_end(settings: Settings, topic: str) -> Iterator[Any]:
    """Every record `topic` holds now (kafka-python ConsumerRecord), partition by partition in
    offset order, up to each partition's end offset as of the call."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError

    try:
        consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False, group_id=None, client_id="leadstream-history")
    except KafkaError as exc:
        raise kafka_unreachable(settings.kafka_bootstrap, exc) from exc
    try:
        numbers = consumer.partitions_for_topic(topic)
        if not numbers:
            raise _no_such_topic(topic)
        for number in sorted(numbers):
            partition = TopicPartition(topic, number)
            consumer.assign([partition])
            consumer.seek_to_beginning(partition)
            end = consumer.end_offsets([partition])[partition]
            last_progress = time.monotonic()
            while consumer.position(partition) < end:
                records = consumer.poll(timeout_ms=500).get(partition, [])
                if records:
                    last_progress = time.monotonic()
                elif time.monotonic() - last_progress > STALL_S:
                    raise ServiceError(f"{topic} partition {number}: no record for {STALL_S:.0f} s before its end offset {end}")
                for record in records:
                    if record.offset < end:
                        yield record
    finally:
        consumer.close()


def write_history(settings: Settings, out: IO[bytes], topic: str | None = None, err: IO[str] = sys.stderr) -> int:
    """Writes the topic's message values as JSON lines; returns the exit status."""
    topic = topic or settings.topic_events
    written = left_out = 0
    first_left_out = ""
    for record in read_to_end(settings, topic):
        value = record.value
        try:
            orjson.loads(value)  # is it JSON at all?
        except (orjson.JSONDecodeError, TypeError):  # TypeError: no value (a tombstone)
            left_out += 1
            first_left_out = first_left_out or f"partition {record.partition} offset {record.offset}"
            continue
        if b"\n" in value or b"\r" in value:
            # JSON that spans lines (pretty-printed by some producer) is made one line again. Valid
            # JSON has line breaks only between tokens (a string holds them escaped), so they can
            # go as they are, whatever the value (re-encoding fails on values nested too deep).
            value = value.replace(b"\r", b" ").replace(b"\n", b" ")
        out.write(value + b"\n")
        written += 1
    print(f"{topic}: wrote {written} messages", file=err)
    if left_out:
        print(f"{topic}: left out {left_out} messages that are not JSON (the first at {first_left_out})", file=err)
    return 0


def history_file(settings: Settings, path: Path, topic: str | None = None) -> int:
    """`leadstream history --out PATH` ('-': stdout). A topic that does not exist leaves no file."""
    topic = topic or settings.topic_events
    if partition_count(settings, topic) == 0:
        raise _no_such_topic(topic)
    if str(path) == "-":
        return write_history(settings, sys.stdout.buffer, topic)
    try:
        handle = path.open("wb")
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror}") from None
    with handle:
        return write_history(settings, handle, topic)


def _no_such_topic(topic: str) -> InputError:
    return InputError(f"topic {topic!r} does not exist; check --topic (or LEADSTREAM_TOPIC_EVENTS)")
