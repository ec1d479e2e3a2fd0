"""`leadstream history`: the raw events and profiles topics, as they are now, written to a
JSON-lines file.

It is the event history `leadstream score` and `leadstream review` read: one message value per
line, an envelope staying one line (both commands read envelopes). The profiles topic holds the
`identify`, `group` and `alias` calls the collector takes (traits, accounts, stitching): without
it, offline scores of collector-fed leads would have no fit and no merged visitors. Partitions
are written one after the other; within one, the records of both topics (co-partitioned: a
lead's events and profile updates share its partition) are merged by their Kafka timestamps, the
order the worker, which reads both in one stream, took them in. So each lead's events keep their
order, which is what scoring by event time needs. Retention bounds how far back each topic goes,
and the profiles topic is compacted: it keeps each lead's latest profile update.

A message whose value is not JSON (the worker dead-lettered it) is left out and counted, as are
tombstones (requests to forget a lead); the file never gets a line the scorers would have to
reject as bad JSON.
"""

from __future__ import annotations

import heapq
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any, Iterator

import orjson

from streams.errors import InputError, ServiceError
from streams.kafka_clients import open_client
from streams.settings import Settings
from streams.topics import partition_count

#: How long reading may go without a record before the partitions' ends are taken as unreachable.
STALL_S = 30.0


def read_to_end(settings: Settings, topic: str) -> Iterator[Any]:
    """Every record `topic` holds now (kafka-python ConsumerRecord), partition by partition in
    offset order, up to each partition's end offset as of the call."""
    with ExitStack() as stack:
        consumer = stack.enter_context(_Reader(settings))
        for number in consumer.partitions(topic):
            yield from consumer.read(topic, number)


def read_merged(settings: Settings, topics: list[str]) -> Iterator[Any]:
    """Every record the co-partitioned `topics` hold now, partition by partition; within one,
    the topics' records merged by timestamp (ties in the order of `topics`)."""
    with ExitStack() as stack:
        readers = [stack.enter_context(_Reader(settings)) for _ in topics]
        numbers = sorted(set().union(*(set(reader.partitions(topic)) for reader, topic in zip(readers, topics))))
        for number in numbers:
            yield from heapq.merge(*(reader.read(topic, number) for reader, topic in zip(readers, topics)),
                                   key=lambda record: record.timestamp)


class _Reader:
    """A consumer of no group, reading one partition at a time from its beginning to its end
    offset as of when it starts."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def __enter__(self) -> _Reader:
        from kafka import KafkaConsumer

        self.consumer = open_client(self.settings, KafkaConsumer, enable_auto_commit=False, group_id=None,
                                    client_id="leadstream-history")
        return self

    def __exit__(self, *_: object) -> None:
        self.consumer.close()

    def partitions(self, topic: str) -> list[int]:
        numbers = self.consumer.partitions_for_topic(topic)
        if not numbers:
            raise _no_such_topic(topic)
        return sorted(numbers)

    def read(self, topic: str, number: int) -> Iterator[Any]:
        from kafka import TopicPartition

        partition = TopicPartition(topic, number)
        consumer = self.consumer
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


def default_topics(settings: Settings) -> list[str]:
    """What `leadstream history` reads unless told: the raw events and the profile updates."""
    return [settings.topic_events, settings.topic_profiles]


def write_history(settings: Settings, out: IO[bytes], topics: list[str] | None = None, err: IO[str] = sys.stderr) -> int:
    """Writes the topics' message values as JSON lines; returns the exit status."""
    topics = topics or default_topics(settings)
    written = dict.fromkeys(topics, 0)
    not_json = dict.fromkeys(topics, 0)
    tombstones = dict.fromkeys(topics, 0)
    first_not_json: dict[str, str] = {}
    for record in read_merged(settings, topics):
        value, topic = record.value, record.topic
        if value is None:
            tombstones[topic] += 1
            continue
        try:
            orjson.loads(value)  # is it JSON at all?
        except orjson.JSONDecodeError:
            not_json[topic] += 1
            first_not_json.setdefault(topic, f"partition {record.partition} offset {record.offset}")
            continue
        if b"\n" in value or b"\r" in value:
            # JSON that spans lines (pretty-printed by some producer) is made one line again. Valid
            # JSON has line breaks only between tokens (a string holds them escaped), so they can
            # go as they are, whatever the value (re-encoding fails on values nested too deep).
            value = value.replace(b"\r", b" ").replace(b"\n", b" ")
        out.write(value + b"\n")
        written[topic] += 1
    for topic in topics:
        print(f"{topic}: wrote {written[topic]} messages", file=err)
        if not_json[topic]:
            print(f"{topic}: left out {not_json[topic]} messages that are not JSON (the first at {first_not_json[topic]})", file=err)
        if tombstones[topic]:
            what = ": requests to forget a lead" if topic == settings.topic_profiles else ", which the worker dead-letters"
            print(f"{topic}: left out {tombstones[topic]} tombstones (records without a value{what})", file=err)
    return 0


def history_file(settings: Settings, path: Path, topics: list[str] | None = None) -> int:
    """`leadstream history --out PATH` ('-': stdout). A topic that does not exist leaves no file."""
    topics = topics or default_topics(settings)
    for topic in topics:
        if partition_count(settings, topic) == 0:
            raise _no_such_topic(topic)
    if str(path) == "-":
        return write_history(settings, sys.stdout.buffer, topics)
    try:
        handle = path.open("wb")
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror}") from None
    with handle:
        return write_history(settings, handle, topics)


def _no_such_topic(topic: str) -> InputError:
    return InputError(f"topic {topic!r} does not exist; check --topic (or LEADSTREAM_TOPIC_EVENTS and LEADSTREAM_TOPIC_PROFILES)")
