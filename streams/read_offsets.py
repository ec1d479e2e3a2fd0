"""How far a lead's states have read each input topic, so that a record read again after a
restart changes nothing, however many events of the lead came since.

After a crash, or when a partition moves, a worker reads again every record after the committed
offsets, against the states recovered from the changelog, which may hold them already. The
engine drops an event it has seen by its id, but a state remembers only the lead's last
`remember_events` ids (64 by default): a lead with more events than that among the records read
again had the older ones scored twice. A chaos run (tests/chaos.py, 120,000 events fed fast while
workers were killed) ended with a busy lead 7 points above the offline scorer's, its rules
counting 14 occurrences twice.

So a lead's entry in the lead table carries, beside its states, {READ: offsets}: for each input
topic, the greatest offset of the lead's partition whose records of the lead its states hold
(the entry is written once per batch, with all of the batch's changes to the lead). A record at
or before it is one read again, and is dropped whole. The event-id check remains for duplicates
that Kafka did not make: a producer or collector that sent an event twice.

A record the worker makes from one it read, and sends to another id's partition (an event
re-keyed to the lead its visitor was merged into, a link, a merge: streams/stitching.py), is made
again, as a new record at a new offset, by a worker that reads the first one again. Its copies
are told apart by where the event it came from was read, its origin (a record header). For the
records arriving on a topic from one topic and partition of origin, the offsets also keep the
greatest origin (offset, position in the message) that the lead's states hold: a worker makes
such records in the order it reads that partition, so an origin at or before it is a copy. (The
replay property test makes such copies with states that remember 2 event ids,
tests/streams/test_scoring_replay.py; so does `python -m tests.chaos --visitors 300
--remember-events 2`.)

The value is a JSON object's text (topic name -> offset; "<topic>/<topic of origin>/<partition
of origin>" -> [offset, position]), like a forgotten lead's marker (streams/erasure.py): keyed
by name, so the offsets of a topic replaced by another one (a renamed `LEADSTREAM_TOPIC_*`) never
stand for the new one's. A topic deleted and created again
under its name starts its offsets again: an offset at or beyond the partition's end cannot be
one of its records, and the worker scores the records it would have dropped (`LogEnd`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from scoring.errors import StateError

if TYPE_CHECKING:
    from streams.lead_states import States
    from streams.stitching import Origin

#: The key of the offsets in a lead's states.
READ = "\x00read"

#: (topic, partition) -> the partition's end offset (the next to be written), None where not known.
LogEnd = Callable[[str, int], "int | None"]

#: READ's offsets: topic -> offset (an int); origin key -> [offset, position] (see the module doc).
Offsets = dict[str, Any]


def origin_key(topic: str, origin: Origin) -> str:
    """The key of the origins of records that arrive on `topic` made from records of `origin`'s
    topic and partition: they arrive in the order the worker read those."""
    # A topic's name holds no "/" (only letters, digits, ".", "_" and "-"): no origin key is a topic's.
    return f"{topic}/{origin.topic}/{origin.partition}"


def holds(offsets: Offsets, key: str, mark: list[int]) -> bool:
    """Whether the origin `mark` ([offset, position]) is at or before the one kept under `key`:
    a copy of a record the states hold."""
    held = offsets.get(key)
    return held is not None and mark <= held


def checked(text: str, what: str) -> str:
    """An offsets value as read from the table; StateError, naming `what` it is, when it is not one."""
    parsed(text, what)
    return text


def parsed(text: str, what: str) -> Offsets:
    """The offsets of a value as read from the table; StateError, naming `what` it is, when it is not one."""
    try:
        offsets = orjson.loads(text)
    except orjson.JSONDecodeError:
        offsets = None
    if offsets.__class__ is not dict or not all(
            offset.__class__ is list and len(offset) == 2 and all(n.__class__ is int for n in offset) if "/" in key
            else offset.__class__ is int for key, offset in offsets.items()):
        raise StateError(f"{what} that is not an object of integer offsets (and [offset, position] origins): {text[:100]!r}")
    return offsets  # a dict of offsets, checked above


def read(states: States) -> Offsets:
    """The offsets up to which the states hold the lead's records (none known: empty)."""
    text = states.get(READ)
    return {} if text is None else orjson.loads(text)  # type: ignore[arg-type]  # the offsets' value is a text


def encode(offsets: Offsets) -> str:
    """The value of READ for these offsets."""
    return orjson.dumps(offsets).decode()


def drop_topic(offsets: Offsets, topic: str) -> None:
    """Takes out the offsets of `topic` and of the events re-keyed from it: they are those of a
    topic since deleted and created again under its name, which hold none of its records."""
    for key in [key for key in offsets if topic in key.split("/")[:2]]:
        del offsets[key]


def lagging(later: Offsets, kept: Offsets) -> list[str]:
    """The keys on which `later`, the offsets of a lead's entry written after one with `kept`,
    are behind, when they are ahead on none (else none): that entry holds a part of what the
    earlier one held, and nothing more (a paused worker's late write: streams/bulk_store.py).
    A key that only one of them has counts as the lowest offset in the other."""
    for key, offset in later.items():
        if key not in kept or offset > kept[key]:
            return []
    return [key for key, offset in kept.items() if key not in later or later[key] < offset]


def position(key: str, offset: Any, partition: int) -> tuple[str, int, int]:
    """The topic, partition and offset that `offset`, kept under `key` by a lead of `partition`,
    counts in: the lead's partition of a topic; an origin's partition of its topic of origin."""
    if "/" in key:
        _, topic, origin_partition = key.split("/")
        return topic, int(origin_partition), offset[0]
    return key, partition, offset


def kept(states: States) -> States:
    """The offsets alone, for an entry that replaces the states (empty when it has none)."""
    return {READ: states[READ]} if READ in states else {}
