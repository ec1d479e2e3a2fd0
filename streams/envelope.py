"""The wire format of the raw events topic.

A Kafka message value is either one event (a JSON object) or an envelope of several events (a
JSON array of event objects), all of leads that live on the message's partition. Producers we
write (`leadstream send --events-per-message`, the collector) pack envelopes because Faust pays
~100 us per consumed message, whatever its size; single-event messages from other producers keep
working.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any, Hashable, Iterable, Iterator

from scoring.events import loads
from streams.partitioning import partition_for

MAX_MESSAGE_BYTES = 1_000_000  # the broker's default message.max.bytes is 1 MB


def pack(events: Iterable[bytes], max_events: int, max_bytes: int = MAX_MESSAGE_BYTES) -> Iterator[bytes]:
    """Pack serialized events into envelopes of at most `max_events` events and `max_bytes` bytes."""
    for run in _runs(((None, "", event) for event in events), max_events, max_bytes):
        yield _envelope([event for _, event in run])


def pack_by_partition(events: Iterable[tuple[str, bytes]], partitions: int, max_events: int) -> Iterator[tuple[int, bytes]]:
    """(partition, envelope) for (lead id, event bytes) pairs: each envelope holds events of
    leads of its partition only, in their order, and comes out once full, so only one envelope
    a partition is held, whatever the number of pairs. The order of the pairs across partitions
    is not kept: a partition's events wait in their envelope behind later pairs of other
    partitions. Keeping it would let an envelope hold only a run of consecutive pairs of one
    partition: under two events on average with leads spread over four partitions, which would
    undo the packing (Faust's cost is per message)."""
    for partition, _, message in pack_keyed(events, partitions, max_events):
        yield partition, message


def pack_keyed(events: Iterable[tuple[str, bytes]], partitions: int, max_events: int,
               max_bytes: int = MAX_MESSAGE_BYTES, *, per_lead: bool = False) -> Iterator[tuple[int, str | None, bytes]]:
    """(partition, key, message) as `pack_by_partition` packs them, each keyed by its lead when
    it holds one lead's events (a single event is keyed by its lead, as any producer keys it),
    by none when it holds several leads' (the collector keys its messages so too). `per_lead`:
    every envelope holds one lead's events, so every message has a key, as a compacted topic
    (the profiles topic) requires; an envelope is then held for each lead until it fills or
    the pairs end."""
    grouped = ((lead if per_lead else partition_for(lead, partitions), lead, event) for lead, event in events)
    for run in _runs(grouped, max_events, max_bytes):
        first = run[0][0]
        key = first if all(lead == first for lead, _ in run) else None
        yield partition_for(first, partitions), key, _envelope([event for _, event in run])


def _runs(grouped: Iterable[tuple[Hashable, str, bytes]], max_events: int, max_bytes: int) -> Iterator[list[tuple[str, bytes]]]:
    """(group, lead, event) triples as runs of one group's (lead, event) pairs, in their order,
    whose envelopes hold at most `max_events` events and `max_bytes` bytes. A run is yielded
    as soon as it is full (an event that would not fit closes it), the runs still open when the
    triples end after them, so a long input is never held whole (`leadstream send` of a
    2.1M-event file read it all first, 1.3 GB)."""
    runs: dict[Hashable, list[tuple[str, bytes]]] = {}
    sizes: dict[Hashable, int] = {}  # each open run's envelope size: "[", "]" and a byte per event for its comma
    for group, lead, event in grouped:
        run = runs.get(group)
        if run is not None and sizes[group] + len(event) + 1 > max_bytes:
            yield run
            run = None
        if run is None:
            run = runs[group] = []
            sizes[group] = 2
        run.append((lead, event))
        sizes[group] += len(event) + 1
        if len(run) >= max_events:
            yield runs.pop(group)
    yield from runs.values()


def _envelope(chunk: list[bytes]) -> bytes:
    return chunk[0] if len(chunk) == 1 else b"[" + b",".join(chunk) + b"]"


def unpack(value: bytes) -> list[Any]:
    """The events of one message, as parsed JSON values (objects expected; the engine checks),
    a lone surrogate escape read as U+FFFD as the engine reads it (scoring/events.py).

    Raises orjson.JSONDecodeError when the message is not JSON at all.
    """
    parsed = loads(value)
    return parsed if isinstance(parsed, list) else [parsed]


_SCANNER = json.JSONDecoder()


@lru_cache(maxsize=4)  # an envelope's dead letters are written one after another
def items_written(value: bytes) -> list[bytes] | None:
    """Each item of the envelope `value` as its producer wrote it, byte for byte (a dead letter
    keeps these: an item parsed and written out again loses the way its numbers and texts were
    spelt). None when `value` is no envelope that Python's own JSON
    parser reads (nested deeper than its recursion limit, say)."""
    try:
        text = value.decode("utf-8")
        position = len(text) - len(text.lstrip())
        if text[position:position + 1] != "[":
            return None
        spans: list[bytes] = []
        position = _after_blanks(text, position + 1)
        if text[position:position + 1] == "]":
            return spans
        while True:
            _, end = _SCANNER.raw_decode(text, position)
            spans.append(text[position:end].encode("utf-8"))
            position = _after_blanks(text, end)
            if text[position:position + 1] == "]":
                return spans
            if text[position:position + 1] != ",":
                return None
            position = _after_blanks(text, position + 1)
    except (ValueError, RecursionError):  # JSON and UTF-8 errors are ValueErrors
        return None


def _after_blanks(text: str, position: int) -> int:
    while text[position:position + 1] in (" ", "\t", "\n", "\r"):
        position += 1
    return position
