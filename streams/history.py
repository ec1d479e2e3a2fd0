"""`leadstream history`: the raw events and profiles topics, as they are now, written to a
JSON-lines file.

It is the event history `leadstream score` and `leadstream review` read: one message value per
line, an envelope staying one line (both commands read envelopes). The profiles topic holds the
`identify`, `group` and `alias` calls the collector takes (traits, accounts, stitching): without
it, offline scores of collector-fed leads would have no fit and no merged visitors. Retention
bounds how far back each topic goes, and the profiles topic is compacted, but not before its
records are as old as the events topic's retention (streams/topics.py, profiles_config): the
file has every profile update of the events it holds, and each lead's latest of those before.
A profiles topic whose lag is shorter than the events topic's retention.ms (created by an earlier
release, or the events kept longer since), or longer (the events kept shorter since), is named in a
warning, with `leadstream topics` to fix it.
So is a topic whose oldest records retention has deleted (its partitions' first offsets, and what
scoring the file then misses: streams/log_start.py).

Only committed records are read, as the worker reads them: an aborted transaction's are left
out, and a transaction still open ends the read of its partition until it is committed.

The records of every partition of both topics are written in one order, near the one the
worker, which reads them all in one stream, took them in: merged by their Kafka timestamps
(within a millisecond, by event time), each partition's records in their own order. So each
lead's events keep their order (a lead's events and profile updates share its partition: the
topics are co-partitioned), which is what scoring by event time needs, and the scorers stitch a
visitor as the worker did: its events come before the identify that merges it into a lead of
another partition, and of two leads that identify it, the first to do so gets it (written
partition by partition, the events of a visitor on a later partition than its lead's came after
the lead's newer events, and were late there). The partitions are read side by side, each
fetched again as its records are written, not into memory first.

A message whose value is not JSON (the worker dead-lettered it) is left out and counted, as are
tombstones (requests to forget a lead) and the events the worker re-keyed to the lead a visitor
became (with `stitched_from`; the scorers re-key the originals); the file never gets a line
the scorers would have to reject as bad JSON. So are the events and profile updates of a lead
written before a request to forget it: the profiles topic is read for those requests first, and
an envelope keeps its other leads' events, as their producer wrote them.
"""

from __future__ import annotations

import heapq
import os
import stat
import sys
import tempfile
import time
from collections import deque
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO, Any, Iterator, NamedTuple

import orjson

from scoring.events import optional_id, parse_time_ms
from streams.errors import InputError, ServiceError
from streams.envelope import items_written
from streams.kafka_clients import open_client
from streams.log_start import lost_beginning
from streams.settings import Settings
from streams.topics import partition_count, topic_specs, weak_settings

#: How long reading may go without a record before the partitions' ends are taken as unreachable.
STALL_S = 30.0

#: How many records a poll may return: all that were fetched. A poll that returned part of what
#: was fetched of a partition kept the rest aside in kafka-python (3.0.12) once the partition was
#: paused, and gives it back only while no other partition's records wait in line: the partition
#: could stall for good.
ALL_FETCHED = sys.maxsize

#: The value of a record whose bytes are not JSON.
NOT_JSON = object()


class Read(NamedTuple):
    """A record (kafka-python ConsumerRecord) with its value read as JSON: NOT_JSON when it is
    none, None for a tombstone (and for a JSON null)."""

    record: Any
    value: Any


def read_to_end(settings: Settings, topic: str) -> Iterator[Any]:
    """Every committed record `topic` holds now (kafka-python ConsumerRecord), partition by
    partition in offset order, up to each partition's last stable offset as of the call."""
    with _reading(settings, topic) as reader:
        for partition in reader.partitions:
            yield from reader.read(partition)


def read_merged(settings: Settings, topics: list[str]) -> Iterator[Read]:
    """Every record the `topics` hold now, the records of all their partitions merged into one
    order, each partition's kept: by Kafka timestamp, then by event time (`_order`), then in the
    order of `topics` and of partitions."""
    with ExitStack() as stack:
        readers = [stack.enter_context(_reading(settings, topic)) for topic in topics]
        yield from heapq.merge(*(map(_read, reader.read(partition)) for reader in readers for partition in reader.partitions),
                               key=_order)


def lost_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """Partition -> the first offset its log still has, for the partitions of `topic` whose log
    no longer starts at 0 (retention or delete-records removed the records before)."""
    with _reading(settings, topic) as reader:
        starts = reader.consumer.beginning_offsets(reader.partitions)
    return {tp.partition: start for tp, start in starts.items() if start > 0}


def _read(record: Any) -> Read:
    """The record with its value read as JSON."""
    if record.value is None:
        return Read(record, None)
    try:
        return Read(record, orjson.loads(record.value))
    except orjson.JSONDecodeError:
        return Read(record, NOT_JSON)


def _order(read: Read) -> tuple[int, int]:
    """Where a record goes among those of other partitions: at its Kafka timestamp, the time the
    stream had it; within one millisecond (a file `leadstream send` sends gets many records in
    each), at its (first) event's time, so that what happened first is scored first. A record
    without an event time (refused by the scorers, or left out of the file) comes first in its
    millisecond."""
    value = read.value
    first = value[0] if isinstance(value, list) and value else value
    time_ms = parse_time_ms(first.get("time")) if isinstance(first, dict) else None
    return read.record.timestamp, time_ms if isinstance(time_ms, int) else 0


@contextmanager
def _reading(settings: Settings, topic: str) -> Iterator[_Partitions]:
    from kafka import KafkaConsumer

    # Committed records only, as the worker reads them: kafka-python reads uncommitted ones unless
    # told, and an aborted transaction's events went into the file (scored offline for leads the
    # worker never had), its dead letters to `replay-dlq`. The end offsets are then the last
    # stable ones: a transaction still open, and what follows it, waits for a later read.
    consumer = open_client(settings, KafkaConsumer, enable_auto_commit=False, group_id=None, client_id="leadstream-history",
                           isolation_level="read_committed")
    try:
        yield _Partitions(consumer, topic)
    finally:
        consumer.close()


class _Partitions:
    """Every partition of one topic, assigned to a consumer of no group, each read from its
    beginning to its end offset as of the start. The partitions' reads may be interleaved: a
    partition is fetched again only once what was fetched of it is used up (the others are
    paused meanwhile), so what is held of each is at most one fetch (`max_partition_fetch_bytes`),
    and one more that kafka-python holds aside for it while it is paused."""

    def __init__(self, consumer: Any, topic: str) -> None:
        from kafka import TopicPartition

        numbers = consumer.partitions_for_topic(topic)
        if not numbers:
            raise _no_such_topic(topic)
        self.consumer = consumer
        self.partitions = [TopicPartition(topic, number) for number in sorted(numbers)]
        consumer.assign(self.partitions)
        consumer.seek_to_beginning()
        self.ends: dict[Any, int] = consumer.end_offsets(self.partitions)
        self.fetched: dict[Any, deque[Any]] = {partition: deque() for partition in self.partitions}

    def read(self, partition: Any) -> Iterator[Any]:
        """The partition's records (kafka-python ConsumerRecord) in offset order."""
        fetched = self.fetched[partition]
        while fetched or self._behind(partition):
            if not fetched:
                self._fetch(partition)
            while fetched:
                yield fetched.popleft()

    def _behind(self, partition: Any) -> bool:
        return bool(self.consumer.position(partition) < self.ends[partition])

    def _fetch(self, wanted: Any) -> None:
        """Polls until records of `wanted` come or its position reaches its end, with it every
        partition that has none fetched and is not at its end yet."""
        consumer = self.consumer
        started = time.monotonic()
        while not self.fetched[wanted] and self._behind(wanted):
            if time.monotonic() - started > STALL_S:
                raise ServiceError(f"{wanted.topic} partition {wanted.partition}: no record for {STALL_S:.0f} s before its end "
                                   f"offset {self.ends[wanted]}")
            idle = {partition for partition in self.partitions if not self.fetched[partition] and self._behind(partition)}
            consumer.pause(*(partition for partition in self.partitions if partition not in idle))
            consumer.resume(*idle)
            for partition, records in consumer.poll(timeout_ms=500, max_records=ALL_FETCHED).items():
                end = self.ends[partition]
                self.fetched[partition].extend(record for record in records if record.offset < end)


def erasures(settings: Settings) -> dict[str, int]:
    """Lead id -> the Kafka timestamp of the latest request to forget it the profiles topic holds
    (a tombstone keyed by the lead id, streams/forget.py); empty when there is no profiles topic."""
    if partition_count(settings, settings.topic_profiles) == 0:
        return {}
    erased: dict[str, int] = {}
    for record in read_to_end(settings, settings.topic_profiles):
        if record.value is None and record.key is not None:
            lead_id = record.key.decode("utf-8", "replace")
            erased[lead_id] = max(erased.get(lead_id, 0), record.timestamp)
    return erased


def _without_erased(value: bytes, parsed: Any, timestamp: int, erased: dict[str, int]) -> tuple[bytes | None, int]:
    """The message without the events of leads forgotten at or after its timestamp (None when
    none is left), and how many it lost."""
    items = parsed if isinstance(parsed, list) else [parsed]
    gone = [isinstance(item, dict) and erased.get(_lead_text(item), -1) >= timestamp for item in items]
    if not any(gone):
        return value, 0
    if all(gone):
        return None, len(items)
    written = items_written(value)
    kept = [raw for raw, dropped in zip(written, gone) if not dropped] if written else [
        orjson.dumps(item) for item, dropped in zip(items, gone) if not dropped]
    return b"[" + b",".join(kept) + b"]", sum(gone)


def _lead_text(item: dict[str, Any]) -> str:
    """An event's lead id as the engine reads it ("" when it has none the engine takes)."""
    lead_id = optional_id(item, "lead_id")
    return lead_id if isinstance(lead_id, str) else ""


def unlagged_profiles(settings: Settings) -> str | None:
    """A warning when the profiles topic is compacted before its records are as old as the events
    topic keeps its own (min.compaction.lag.ms under its retention.ms, as on a topic an earlier
    release created): it may have lost what offline scores need of the events the file holds; or
    after (over it, the events' retention shortened since): a forgotten lead's profile records
    outlast what the README's erasure timeline says. None when the lag is the retention."""
    topic = settings.topic_profiles
    for review in weak_settings(settings, [spec for spec in topic_specs(settings) if spec.name == topic]):
        if review.warnings:  # the events kept for ever
            return review.warnings[0]
        lag = next((shortfall for shortfall in review.shortfalls if shortfall.name == "min.compaction.lag.ms"), None)
        if lag and lag.was is not None and int(lag.was) > int(lag.value):
            return (f"{topic}: warning: compacted with min.compaction.lag.ms={lag.was}, more than {settings.topic_events}'s "
                    f"retention.ms={lag.value}: a lead's profile records (traits, e-mail) outlive its events, and those of a "
                    f"lead forgotten stay until the request to forget it is {lag.was} ms old, not {lag.value} (README: "
                    "Forgetting a lead). Run `leadstream topics`, which lowers it")
        if lag:
            return (f"{topic}: warning: compacted with min.compaction.lag.ms={lag.before}, less than "
                    f"{settings.topic_events}'s retention.ms={lag.value}: it may have lost the identifies and aliases that "
                    "merged visitors into leads, and traits older than each lead's latest, of events the file holds: such "
                    "visitors score as leads of their own, and leads on their latest traits only. From now on, keep them as "
                    "long as the events: run `leadstream topics`, which sets it")
    return None


def default_topics(settings: Settings) -> list[str]:
    """What `leadstream history` reads unless told: the raw events and the profile updates."""
    return [settings.topic_events, settings.topic_profiles]


def write_history(settings: Settings, out: IO[bytes], topics: list[str] | None = None, err: IO[str] = sys.stderr) -> int:
    """Writes the topics' message values as JSON lines, a topic named twice once; returns the exit status."""
    topics = list(dict.fromkeys(topics or default_topics(settings)))  # read twice, its messages were written twice
    written = dict.fromkeys(topics, 0)
    not_json = dict.fromkeys(topics, 0)
    tombstones = dict.fromkeys(topics, 0)
    rekeyed = dict.fromkeys(topics, 0)
    forgotten = dict.fromkeys(topics, 0)
    first_not_json: dict[str, str] = {}
    warning = unlagged_profiles(settings) if settings.topic_profiles in topics else None
    if warning:
        print(warning, file=err)
    for topic in topics:
        lost = lost_offsets(settings, topic)
        if lost:
            print(f"{topic}: warning: {lost_beginning(topic, lost)}", file=err)
    erased = erasures(settings)
    for record, parsed in read_merged(settings, topics):
        value, topic = record.value, record.topic
        if value is None:
            tombstones[topic] += 1
            continue
        if parsed is NOT_JSON:
            not_json[topic] += 1
            first_not_json.setdefault(topic, f"partition {record.partition} offset {record.offset}")
            continue
        if isinstance(parsed, dict) and "stitched_from" in parsed:
            # The worker's copy of a merged visitor's event, re-keyed to the lead it merged the
            # visitor into. The scorers re-key the original themselves, to the lead they merge it
            # into: a copy kept counted the event twice when that was another lead (two leads
            # identified the visitor about at once), or when that lead's event-id memory had
            # forgotten the original by the copy's turn.
            rekeyed[topic] += 1
            continue
        if erased:
            kept, dropped = _without_erased(value, parsed, record.timestamp, erased)
            forgotten[topic] += dropped
            if kept is None:
                continue
            value = kept
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
        if forgotten[topic]:
            print(f"{topic}: left out {forgotten[topic]} events of leads forgotten after them (`leadstream forget`)", file=err)
        if rekeyed[topic]:
            print(f"{topic}: left out {rekeyed[topic]} events the worker re-keyed to the lead their visitor became (with "
                  "`stitched_from`): score and review re-key the originals, which the file holds", file=err)
    return 0


def history_file(settings: Settings, path: Path, topics: list[str] | None = None) -> int:
    """`leadstream history --out PATH` ('-': stdout). A topic that does not exist leaves no file."""
    topics = topics or default_topics(settings)
    for topic in topics:
        if partition_count(settings, topic) == 0:
            raise _no_such_topic(topic)
    if str(path) == "-":
        return write_history(settings, sys.stdout.buffer, topics)
    if not _replaceable(path):  # /dev/stdout, a pipe: written in place, as they cannot be replaced
        try:
            handle = os.fdopen(os.open(path, os.O_WRONLY | os.O_TRUNC), "wb")
        except OSError as exc:
            raise InputError(f"cannot write {path}: {exc.strerror}") from None
        with handle:
            return write_history(settings, handle, topics)
    return _write_whole(settings, path, topics)


def _replaceable(path: Path) -> bool:
    """Whether `path` is a regular file or none: one the whole history can take the place of."""
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except FileNotFoundError:
        return True


def _write_whole(settings: Settings, path: Path, topics: list[str]) -> int:
    """Writes the history beside `path`, and puts it there once whole. Written in place, a history
    stopped midway (Ctrl-C, SIGTERM, a broker gone) left a file cut short where the last one was,
    which `score` and `review` took for the whole history without a word."""
    try:
        # Its owner's alone, whatever the umask (mkstemp's 0600): it holds every lead's traits
        # (e-mails, names, phones), and was written 644, readable by every user of the machine.
        fd, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            code = write_history(settings, handle, topics)
        if path.exists():  # a file that exists keeps its mode
            os.chmod(partial, stat.S_IMODE(path.stat().st_mode))
        os.replace(partial, path)
    except BaseException:
        os.unlink(partial)
        raise
    return code


def _no_such_topic(topic: str) -> InputError:
    return InputError(f"topic {topic!r} does not exist; check --topic (or LEADSTREAM_TOPIC_EVENTS and LEADSTREAM_TOPIC_PROFILES)")
