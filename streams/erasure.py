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
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import orjson

from scoring.errors import StateError

if TYPE_CHECKING:
    from streams.lead_states import States

#: The key of the marker in a lead's states; its value is the offsets, as a JSON object's text.
FORGOTTEN = "\x00forgotten"

#: (topic, partition) -> the committed offset (the next to read), None where none is known.
Committed = Callable[[str, int], "int | None"]


def marker(offsets: dict[str, int]) -> States:
    """The table entry of a lead forgotten after these offsets (topic -> last offset read)."""
    return {FORGOTTEN: orjson.dumps(offsets).decode()}


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
