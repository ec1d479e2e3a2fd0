"""The wire format of the raw events topic.

A Kafka message value is either one event (a JSON object) or an envelope of several events (a
JSON array of event objects), all of leads that live on the message's partition. Producers we
write (`leadstream send --events-per-message`, the collector) pack envelopes because Faust pays
~100 us per consumed message, whatever its size; single-event messages from other producers keep
working.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable, Iterator

import orjson

from streams.partitioning import partition_for

MAX_MESSAGE_BYTES = 1_000_000  # the broker's default message.max.bytes is 1 MB


def pack(events: Iterable[bytes], max_events: int, max_bytes: int = MAX_MESSAGE_BYTES) -> Iterator[bytes]:
    """Pack serialized events into envelopes of at most `max_events` events and `max_bytes` bytes."""
    for chunk in _chunked((("", event) for event in events), max_events, max_bytes):
        yield _envelope([event for _, event in chunk])


def pack_by_partition(events: Iterable[tuple[str, bytes]], partitions: int, max_events: int) -> Iterator[tuple[int, bytes]]:
    """(partition, envelope) for (lead id, event bytes) pairs: each envelope holds events of
    leads of its partition only, in their order."""
    for partition, _, message in pack_keyed(events, partitions, max_events):
        yield partition, message


def pack_keyed(events: Iterable[tuple[str, bytes]], partitions: int, max_events: int,
               max_bytes: int = MAX_MESSAGE_BYTES, *, per_lead: bool = False) -> Iterator[tuple[int, str | None, bytes]]:
    """(partition, key, message) as `pack_by_partition` packs them, each keyed by its lead when
    it holds one lead's events (a single event is keyed by its lead, as any producer keys it),
    by none when it holds several leads' (the collector keys its messages so too). `per_lead`:
    every envelope holds one lead's events, so every message has a key, as a compacted topic
    (the profiles topic) requires."""
    groups: dict[object, list[tuple[str, bytes]]] = defaultdict(list)
    for lead, event in events:
        groups[lead if per_lead else partition_for(lead, partitions)].append((lead, event))
    for pairs in groups.values():
        partition = partition_for(pairs[0][0], partitions)
        for chunk in _chunked(pairs, max_events, max_bytes):
            first = chunk[0][0]
            key = first if all(lead == first for lead, _ in chunk) else None
            yield partition, key, _envelope([event for _, event in chunk])


def _chunked(pairs: Iterable[tuple[str, bytes]], max_events: int, max_bytes: int) -> Iterator[list[tuple[str, bytes]]]:
    """(lead, event) pairs in runs whose envelopes hold at most `max_events` events and `max_bytes` bytes."""
    chunk: list[tuple[str, bytes]] = []
    size = 2
    for pair in pairs:
        if chunk and (len(chunk) >= max_events or size + len(pair[1]) + 1 > max_bytes):
            yield chunk
            chunk, size = [], 2
        chunk.append(pair)
        size += len(pair[1]) + 1
    if chunk:
        yield chunk


def _envelope(chunk: list[bytes]) -> bytes:
    return chunk[0] if len(chunk) == 1 else b"[" + b",".join(chunk) + b"]"


def unpack(value: bytes) -> list[Any]:
    """The events of one message, as parsed JSON values (objects expected; the engine checks).

    Raises orjson.JSONDecodeError when the message is not JSON at all.
    """
    parsed = orjson.loads(value)
    return parsed if isinstance(parsed, list) else [parsed]
