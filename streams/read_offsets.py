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

The value is a JSON object's text (topic name -> offset), like a forgotten lead's marker
(streams/erasure.py): keyed by name, so the offsets of a topic replaced by another one (a
renamed `LEADSTREAM_TOPIC_*`) never stand for the new one's. A topic deleted and created again
under its name starts its offsets again: an offset at or beyond the partition's end cannot be
one of its records, and the worker scores the records it would have dropped (`LogEnd`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import orjson

from scoring.errors import StateError

if TYPE_CHECKING:
    from streams.lead_states import States

#: The key of the offsets in a lead's states.
READ = "\x00read"

#: (topic, partition) -> the partition's end offset (the next to be written), None where not known.
LogEnd = Callable[[str, int], "int | None"]


def checked(text: str, what: str) -> str:
    """An offsets value as read from the table; StateError, naming `what` it is, when it is not one."""
    try:
        offsets = orjson.loads(text)
    except orjson.JSONDecodeError:
        offsets = None
    if offsets.__class__ is not dict or not all(offset.__class__ is int for offset in offsets.values()):
        raise StateError(f"{what} that is not an object of integer offsets: {text[:100]!r}")
    return text


def read(states: States) -> dict[str, int]:
    """The offsets up to which the states hold the lead's records (none known: empty)."""
    text = states.get(READ)
    return {} if text is None else orjson.loads(text)  # type: ignore[arg-type]  # the offsets' value is a text


def encode(offsets: dict[str, int]) -> str:
    """The value of READ for these offsets (topic -> offset)."""
    return orjson.dumps(offsets).decode()


def kept(states: States) -> States:
    """The offsets alone, for an entry that replaces the states (empty when it has none)."""
    return {READ: states[READ]} if READ in states else {}
