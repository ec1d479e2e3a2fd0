"""The lead table: each lead's scoring state for every model, kept live between batches.

The table is keyed by lead id, the same key as the raw events, so a lead's state sits on its
events' partition and a web request for a lead can be routed by key. One value holds the state
of each model the lead was scored by (and, for an id merged into another lead, the marker
`stitching.MERGED_INTO` -> target id).

A changelog value is each model state's engine bytes, framed (streams/stage.py). In memory,
a lead this worker has read since it recovered is kept as live `LeadState` objects, so a batch
neither decodes nor re-creates the states it reads: recovery fills the table with bytes, and
`LeadStore.states` decodes a lead's bytes the first time it is needed and keeps the objects.
"""

from __future__ import annotations

from typing import Iterator, Mapping, Union

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


class LeadStore:
    """The lead table as the scorer uses it: a local read of a lead's live states, and a write
    that also goes to the changelog through the outbox (so it is sent after what the outbox
    already holds).

    `recovered` is the table's own mapping (Faust's memory store), which Faust's recovery fills
    with changelog bytes; the live states of the leads read since are kept apart from it, so a
    recovery that reads the changelog up to an older end offset can never replace a newer
    state. The live states of partitions taken away are dropped (`forget`): another worker may
    change them before they come back, through the changelog.
    """

    def __init__(self, recovered: Mapping[bytes, bytes], changelog: str, partitions: int) -> None:
        self.recovered = recovered
        self.changelog = changelog
        self.partitions = partitions
        self.live: dict[str, States] = {}

    def states(self, lead_id: str) -> States:
        """The lead's states by model, live: changes to them are the store's (written by
        `put`); an empty dict, not kept, for a lead without state."""
        states = self.live.get(lead_id)
        if states is None:
            value = self.recovered.get(lead_id.encode())
            if value is None:
                return {}
            states = self.live[lead_id] = decode(value)
        return states

    def put(self, lead_id: str, partition: int, states: States, value: bytes, outbox: Outbox) -> None:
        """Keeps `states` as the lead's, and sends `value` (their `encode`) to the changelog."""
        self.live[lead_id] = states
        outbox.add(self.changelog, lead_id.encode(), value, partition)

    def forget(self, partitions: set[int]) -> None:
        """Drops the live states of leads on these partitions (revoked from this worker)."""
        for lead_id in [lead for lead in self.live if partition_for(lead, self.partitions) in partitions]:
            del self.live[lead_id]

    def items(self) -> Iterator[tuple[str, States]]:
        """Every lead's states (decoding, and keeping live, those recovered as bytes)."""
        for key in list(self.recovered):
            lead_id = key.decode()
            if lead_id not in self.live:
                yield lead_id, self.states(lead_id)
        yield from list(self.live.items())

    def __len__(self) -> int:
        return len(self.live) + sum(1 for key in self.recovered if key.decode() not in self.live)
