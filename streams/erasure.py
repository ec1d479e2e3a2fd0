"""What a forgotten lead leaves in the lead table until its request is committed.

A request to forget a lead (streams/forget.py) is applied after the events of the batch it
arrives in: the lead's states go. Were its table entry deleted at once, a worker that stopped
after the deletion reached the changelog, and before the batch's offsets were committed, would
score the batch again from nothing: the lead's events would make it up again from fewer points
and publish crossings (with its traits) that the first scoring never published, under new ids,
for a lead its owner asked to be forgotten.

So the entry first becomes a marker, {FORGOTTEN: offsets}: for each input topic, the last
offset of the lead's partition that the batch held. A record of the lead at or before them is
one read again after a restart, and is dropped; a later one starts a new profile beside the
marker. The offsets the lead's states had read (streams/read_offsets.py) stay beside it too, so a
copy of a record made for the lead on another partition (a visitor's event re-keyed to it, a
merge), made again under a new offset by a worker that read its source again, is still told by
its origin; a new profile keeps them. Once the consumer has committed past all of the marker's
offsets, no worker reads those records again, and the marker goes: the changelog gets a
tombstone (or the lead's new states without it).
`Waiting` keeps the leads whose marker waits for that, per partition.

Kafka orders a request only with the records of its own partition of the profiles topic: a
worker that is behind (or down) reads it before records of the lead on the events and identity
topics that were sent before it, which would make the lead up again, with its traits, and
publish its crossings. So `leadstream forget` tells, in a header per topic (SENT_BEFORE), the
end offset of the lead's partition when it sent the request: the marker covers the records
before it too, however late they are read, and stays until they are committed. A request
without such headers (any other producer's tombstone) covers what the worker had read. A header
naming an offset at or past the partition's end when the worker reads the request was sent by
no `leadstream forget` (written by hand, or from another cluster): honoured, it would drop the
lead's every record until the topic reached that offset, so it is ignored as a malformed one is.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Container, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import orjson

from scoring.errors import StateError

if TYPE_CHECKING:
    from streams.lead_states import States
    from streams.outbox import Headers

#: The key of the marker in a lead's states; its value is the offsets, as a JSON object's text.
FORGOTTEN = "\x00forgotten"

#: (topic, partition) -> the committed offset (the next to read), None where none is known.
Committed = Callable[[str, int], "int | None"]


#: (topics, partitions) -> partition -> topic -> its end offset now (the next to be written, past
#: an open transaction's records), asked of the broker: blocking.
EndsNow = Callable[[Collection[str], Collection[int]], dict[int, dict[str, int]]]

#: Why a SENT_BEFORE header naming an offset at or past its partition's end is ignored.
BEYOND_END = "beyond_end"
#: Why a SENT_BEFORE header is ignored: `sent_before`'s reasons, and BEYOND_END.
MALFORMED, UNKNOWN_TOPIC = "malformed", "unknown_topic"
IGNORED_REASONS = (MALFORMED, UNKNOWN_TOPIC, BEYOND_END)


#: The header of a request that names the end offset of the lead's partition of a topic when
#: the request was sent, as ASCII "<topic> <offset>" (a topic's name has no space), once per topic.
SENT_BEFORE = "leadstream-sent-before"


def request_headers(ends: dict[str, int]) -> Headers:
    """A request's headers: for each topic, the end offset of the lead's partition (the next
    offset to be written there) when it was sent."""
    return tuple((SENT_BEFORE, b"%s %d" % (topic.encode(), end)) for topic, end in ends.items())


def sent_before(headers: Iterable[tuple[str, Any]], topics: Container[str]) -> tuple[dict[str, int], list[str]]:
    """The last offset of each of `topics` that a request's headers say was sent before it (a
    topic with none sent before is left out), and the reason each SENT_BEFORE header that cannot
    be one is ignored: "malformed" (not "<topic> <offset>"), "unknown_topic" (not one of `topics`).
    One past the partition's end is told by `beyond`, once that end is known."""
    last: dict[str, int] = {}
    ignored: list[str] = []
    for name, value in headers:
        if name != SENT_BEFORE:
            continue
        try:
            topic, end = value.decode("ascii").split(" ")
        except (ValueError, AttributeError):  # not ASCII, not two fields; no bytes
            topic, end = "", ""
        if not topic or not end.isdigit() or len(end) > 19:  # an offset is a 64-bit integer
            ignored.append(MALFORMED)
        elif topic not in topics:
            ignored.append(UNKNOWN_TOPIC)
        elif int(end) > 0:
            last[topic] = max(last.get(topic, -1), int(end) - 1)
    return last, ignored


def beyond(covered: dict[str, int], ends: dict[str, int]) -> list[str]:
    """The topics whose last offset `covered` names (`sent_before`) is at or past the end of the
    partition in `ends` (the next offset to be written there): no record sent before the request
    could be there. A topic without a known end is not among them."""
    return [topic for topic, last in covered.items() if topic in ends and last >= ends[topic]]


def marker(offsets: dict[str, int]) -> States:
    """The table entry of a lead forgotten after these offsets (topic -> the last offset of the
    lead's partition its request covers)."""
    return {FORGOTTEN: orjson.dumps(offsets).decode()}


def covering(*offsets: dict[str, int]) -> dict[str, int]:
    """The offsets that cover all of those given: the greatest of each topic."""
    merged: dict[str, int] = {}
    for each in offsets:
        for topic, offset in each.items():
            if offset > merged.get(topic, -1):
                merged[topic] = offset
    return merged


def offsets(states: States) -> dict[str, int]:
    """The offsets a lead was forgotten after (none when it was not)."""
    text = states.get(FORGOTTEN)
    return {} if text is None else orjson.loads(text)  # type: ignore[arg-type]  # a marker's value is a text


def read_again(states: States, topic: str, offset: int) -> bool:
    """Whether a record of the lead at `offset` of `topic` was read before its states were
    forgotten: read again after a restart, it must change nothing."""
    return FORGOTTEN in states and offset <= offsets(states).get(topic, -1)


def without(states: States) -> States:
    """The states, the marker left out."""
    return {model: state for model, state in states.items() if model != FORGOTTEN}


def kept(states: States) -> States:
    """The marker alone (empty when the lead has none)."""
    return {FORGOTTEN: states[FORGOTTEN]} if FORGOTTEN in states else {}


class Waiting:
    """The leads whose marker waits for its offsets to be committed, by partition."""

    def __init__(self) -> None:
        self._leads: dict[int, set[str]] = {}

    def add(self, partition: int, lead_id: str) -> None:
        self._leads.setdefault(partition, set()).add(lead_id)

    def forget(self, partitions: set[int]) -> None:
        """Drops those of partitions taken away (their new owner finds the markers in its table)."""
        for partition in partitions:
            self._leads.pop(partition, None)

    def clear(self) -> None:
        self._leads.clear()

    def __len__(self) -> int:
        return sum(map(len, self._leads.values()))

    def due(self, read: Callable[[str], States], committed: Committed) -> Iterator[tuple[int, str, States]]:
        """Each lead (partition, id, states as `read` gives them) whose marker's offsets are all
        committed, taken out of the waiting; a lead whose marker is gone, or whose entry cannot
        be read, is taken out too."""
        for partition, leads in self._leads.items():
            for lead_id in list(leads):
                try:
                    states = read(lead_id)
                except StateError:  # spoilt since: its events are dead-lettered until it is forgotten again
                    leads.discard(lead_id)
                    continue
                if all((committed(topic, partition) or 0) > offset for topic, offset in offsets(states).items()):
                    leads.discard(lead_id)
                    if FORGOTTEN in states:
                        yield partition, lead_id, states
