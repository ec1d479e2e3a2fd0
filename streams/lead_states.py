"""The lead table: each lead's scoring state for every model, kept live between batches.

The table is keyed by lead id, the same key as the raw events, so a lead's state sits on its
events' partition and a web request for a lead can be routed by key. One value holds the state
of each model the lead was scored by (and, for an id merged into another lead, the marker
`stitching.MERGED_INTO` -> target id).

A changelog value is each model state's engine bytes, framed (streams/stage.py). In memory,
the leads this worker has used lately are also kept as live `LeadState` objects, so a batch
neither decodes nor re-creates the states it reads (`LeadStore`).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Iterator, MutableMapping, Protocol, Union

from scoring import LeadState
from streams.outbox import Outbox
from streams.partitioning import partition_for
from streams.stage import frame, unframe
from streams.stitching import MERGED_INTO

#: A lead's states by model; an id merged into another lead holds {MERGED_INTO: target id}.
States = dict[str, Union[LeadState, str]]


def encode(states: States) -> bytes:
    return frame({model: state.encode() if state.__class__ is str else state.to_bytes()  # type: ignore[union-attr]
                  for model, state in states.items()})


def decode(value: bytes) -> States:
    return {model: raw.decode() if model == MERGED_INTO else LeadState.from_bytes(raw) for model, raw in unframe(value).items()}


class TableData(Protocol):
    """A table's local store: the bytes recovery restored, and a write of a sent value."""

    data: MutableMapping[bytes, bytes]

    def write(self, key: bytes, value: bytes, partition: int) -> None: ...


class LeadStore:
    """The lead table as the scorer uses it: a local read of a lead's live states, and a write
    that also goes to the changelog through the outbox (so it is sent after what the outbox
    already holds).

    `table` is the lead table's store (streams/bulk_store.py), whose `data` recovery fills with
    changelog bytes and `put` keeps current with the bytes it sends, so every lead's latest
    bytes are there. The states of the `max_live` leads most recently read or written are also
    kept as objects (a few kilobytes each, where the bytes take a few hundred), so a batch
    decodes only the leads it has not seen lately. A read prefers the live states, so a
    recovery that stops at an older end offset cannot replace a newer state; the live states of
    partitions taken away are dropped (`forget`), since another worker may change them before
    they come back.
    """

    def __init__(self, table: TableData, changelog: str, partitions: int, max_live: int) -> None:
        self.table = table
        self.recovered = table.data
        self.changelog = changelog
        self.partitions = partitions
        self.max_live = max_live
        self.live: OrderedDict[str, States] = OrderedDict()

    def states(self, lead_id: str) -> States:
        """The lead's states by model, live: changes to them are the store's (written by
        `put`); an empty dict, not kept, for a lead without state."""
        states = self.live.get(lead_id)
        if states is None:
            value = self.recovered.get(lead_id.encode())
            if value is None:
                return {}
            states = decode(value)
            self._keep(lead_id, states)
        else:
            self.live.move_to_end(lead_id)
        return states

    def put(self, lead_id: str, partition: int, states: States, value: bytes, outbox: Outbox) -> None:
        """Keeps `states` as the lead's, and sends `value` (their `encode`) to the changelog."""
        key = lead_id.encode()
        self.table.write(key, value, partition)
        self._keep(lead_id, states)
        outbox.add(self.changelog, key, value, partition)

    def _keep(self, lead_id: str, states: States) -> None:
        live = self.live
        live[lead_id] = states
        live.move_to_end(lead_id)
        if len(live) > self.max_live:
            live.popitem(last=False)  # the least recently used: its bytes are in `recovered`

    def forget(self, partitions: set[int]) -> None:
        """Drops the live states of leads on these partitions (revoked from this worker)."""
        for lead_id in [lead for lead in self.live if partition_for(lead, self.partitions) in partitions]:
            del self.live[lead_id]

    def items(self, partitions: set[int]) -> Iterator[tuple[str, States]]:
        """The states of every lead on these partitions (decoded, not kept live)."""
        for key in list(self.recovered):
            lead_id = key.decode()
            if partition_for(lead_id, self.partitions) in partitions:
                yield lead_id, self.live.get(lead_id) or decode(self.recovered[key])

    def __len__(self) -> int:
        return len(self.recovered)
