"""What the worker's stages share: a consumed message, and the durable keyed state they keep.

Both tables (leads, accounts) are keyed by the id their events are keyed by and hold one state
per model in one value, framed as repeated [u8 name length][name][u32 length][bytes], each
model's state in the engine's own bytes.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Generic, Iterable, Iterator, MutableMapping, Protocol, TypeVar

from scoring.errors import StateError
from streams.deadletter import DeadLetter, WorkerReason
from streams.outbox import Headers, Outbox
from streams.stitching import Origin
from streams.partitioning import partition_for

S = TypeVar("S")
#: A changelog record to send: topic, key, value (None: a tombstone), partition.
Record = tuple[str, bytes, bytes | None, int]


@dataclass(frozen=True, slots=True)
class Consumed:
    """One consumed Kafka message. A tombstone (a null value) has `tombstone` set and an empty
    `value`, so code that does not look for tombstones reads it as bytes that are not JSON.
    `timestamp_ms` is the record's Kafka timestamp (0 where none is known). A `part` is one item
    of an envelope, split off to find an item that makes a stage raise (streams/isolation.py):
    its offset is its envelope's, which the other items share. `origin` is where an event
    re-keyed to the lead its visitor was merged into was read (`stitching.origin`). A
    tombstone keeps its `headers` (a request to forget names what was sent before it:
    streams/erasure.py)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    tombstone: bool = False
    timestamp_ms: int = 0
    part: bool = False
    origin: Origin | None = None
    headers: Headers = ()

    def dead_letter(self, reason: WorkerReason, detail: str, original: bytes | None) -> DeadLetter:
        """The worker's dead letter of this message (or of `original`, an item of it), keyed like it."""
        return DeadLetter(reason, detail, original, self.topic, self.partition, self.offset, self.key)


def read_from(batch: Iterable[Consumed]) -> set[tuple[str, int]]:
    """The topic partitions a batch's messages were read from."""
    return {(message.topic, message.partition) for message in batch}


_LENGTH = struct.Struct(">I")


def frame(values: dict[str, bytes]) -> bytes:
    """One table value from each model's state bytes."""
    parts = []
    for model, raw in values.items():
        name = model.encode()
        parts.append(b"%c%b%b%b" % (len(name), name, _LENGTH.pack(len(raw)), raw))
    return b"".join(parts)


def unframe(value: bytes) -> dict[str, bytes]:
    """Each model's state bytes from a table value; StateError when it is not one."""
    values: dict[str, bytes] = {}
    pos, end = 0, len(value)
    try:
        while pos < end:
            name_len = value[pos]
            name = value[pos + 1 : pos + 1 + name_len].decode()
            pos += 1 + name_len
            (length,) = _LENGTH.unpack_from(value, pos)
            pos += 4
            if pos + length > end:
                raise ValueError(f"model {name!r} claims {length} bytes, {end - pos} are left")
            values[name] = value[pos : pos + length]
            pos += length
    except (ValueError, struct.error) as exc:  # UnicodeDecodeError is a ValueError
        raise StateError(f"table value of an unknown layout: {exc}") from None
    return values


def parts(value: bytes, names: frozenset[bytes]) -> dict[bytes, bytes]:
    """The bytes of those of a table value's parts whose (encoded) name is in `names`, the others
    only stepped over: what a restore reads of each value it judges (streams/bulk_store.py).
    StateError when it is not a table value."""
    found: dict[bytes, bytes] = {}
    pos, end = 0, len(value)
    try:
        while pos < end:
            start = pos + 1 + value[pos]
            (length,) = _LENGTH.unpack_from(value, start)
            name, pos = value[pos + 1 : start], start + 4 + length
            if pos > end:
                raise ValueError(f"a part claims {length} bytes, {end - start - 4} are left")
            if name in names:
                found[name] = value[start + 4 : pos]
    except (ValueError, struct.error) as exc:
        raise StateError(f"table value of an unknown layout: {exc}") from None
    return found


class TableData(Protocol):
    """A table's local store (streams/bulk_store.py): the bytes recovery restored, and a
    write of a value sent to the changelog."""

    data: MutableMapping[bytes, bytes]

    def write(self, key: bytes, value: bytes, partition: int) -> None: ...

    def delete(self, key: bytes) -> None: ...


class MemoryData:
    """A table's local store in a dict alone, with no changelog to restore it from: the stages
    without Kafka (`leadstream bench stages`, tests)."""

    def __init__(self) -> None:
        self.data: MutableMapping[bytes, bytes] = {}

    def write(self, key: bytes, value: bytes, partition: int) -> None:
        self.data[key] = value

    def delete(self, key: bytes) -> None:
        self.data.pop(key, None)


class LiveTable(Generic[S]):
    """A table as a stage uses it: a local read of a key's states by model, live, and a write
    that also goes to the changelog through the outbox (so it is sent after what the outbox
    already holds).

    The table's `data` holds every key's latest bytes: recovery fills it from the changelog and
    `put` keeps it current with what it sends. The states of the `max_live` keys most recently
    read or written are also kept as objects (a lead's take a few kilobytes, its bytes a few
    hundred), so a batch decodes only the keys it has not seen lately and re-creates nothing.
    A read prefers the live states, so a recovery that stops at an older end offset cannot
    replace a newer state; the live states of partitions taken away are dropped (`forget`),
    since another worker may change them before they come back.
    """

    def __init__(
        self, table: TableData, changelog: str, partitions: int, max_live: int, decode: Callable[[bytes], dict[str, S]] | None
    ) -> None:
        """`decode`: a key's states from its value; None for a table that reads more than the
        value (it overrides `decoded`)."""
        self.table = table
        self.recovered = table.data
        self.changelog = changelog
        self.partitions = partitions
        self.max_live = max_live
        self.decode = decode
        self.live: OrderedDict[str, dict[str, S]] = OrderedDict()

    def states(self, key: str) -> dict[str, S]:
        """The key's states by model, live: changes to them are the table's (written by
        `put`); an empty dict, not kept, for a key without state. StateError when its stored
        value cannot be read (written by something else, or corrupt): the value is left as it is."""
        states = self.live.get(key)
        if states is None:
            states = self.stored(key)
            if states:
                self._keep(key, states)
        else:
            self.live.move_to_end(key)
        return states

    def peek(self, key: str) -> dict[str, S]:
        """The key's states as `states` reads them, for a reader outside the stages (the web
        views): a state decoded from its bytes is not kept live, so no reader but the stages
        decides which states are live. StateError as for `states`."""
        states = self.live.get(key)
        return self.stored(key) if states is None else states

    def stored(self, key: str) -> dict[str, S]:
        """The key's states as last written (decoded from its bytes, not kept): what its live
        states were before work that changed them in place failed."""
        value = self.recovered.get(key.encode())
        return {} if value is None else self.decoded(key, value)

    def decoded(self, key: str, value: bytes) -> dict[str, S]:
        """The states of a key's value (a table that keeps some in records of their own reads them too)."""
        assert self.decode is not None, "a table without `decode` overrides `decoded`"
        return self.decode(value)

    def state_keys(self) -> Iterator[bytes]:
        """The table's keys that hold a key's states (a table may keep other records)."""
        return iter(list(self.recovered))

    def put(self, key: str, partition: int, states: dict[str, S], value: bytes, outbox: Outbox) -> None:
        """Keeps `states` as the key's, and sends `value` (their bytes) to the changelog."""
        outbox.add(*self.write(key, partition, states, value))

    def write(self, key: str, partition: int, states: dict[str, S], value: bytes) -> Record:
        """Keeps `states` as the key's and `value` as its bytes; returns the changelog record,
        for the caller to send once what the change caused is durable (streams/scorer.py)."""
        raw_key = key.encode()
        self.table.write(raw_key, value, partition)
        self._keep(key, states)
        return self.changelog, raw_key, value, partition

    def delete(self, key: str, partition: int, outbox: Outbox) -> None:
        """Drops the key's states, and sends a tombstone to the changelog (compaction erases
        the key's earlier records there)."""
        outbox.add(*self.remove(key, partition))

    def remove(self, key: str, partition: int) -> Record:
        """Drops the key's states; returns the changelog's tombstone, for the caller to send."""
        raw_key = key.encode()
        self.table.delete(raw_key)
        self.live.pop(key, None)
        return self.changelog, raw_key, None, partition

    def _keep(self, key: str, states: dict[str, S]) -> None:
        live = self.live
        live[key] = states
        live.move_to_end(key)
        if len(live) > self.max_live:
            live.popitem(last=False)  # the least recently used: its bytes are in `recovered`

    def forget(self, partitions: set[int]) -> None:
        """Drops the live states of keys on these partitions (revoked from this worker)."""
        for key in [key for key in self.live if partition_for(key, self.partitions) in partitions]:
            del self.live[key]

    def drop(self, keys: Iterable[str]) -> None:
        """Drops these keys' live states, changed in place by work that failed before writing
        them: they are decoded again from their bytes, as they were before it, when next read."""
        for key in keys:
            self.live.pop(key, None)

    def drop_live(self) -> None:
        """Drops every live state (each is decoded again from its bytes when next read): after
        the models changed, as a restart would, so nothing derived under the old models stays."""
        self.live.clear()

    def items(self, partitions: set[int], unreadable: list[str] | None = None) -> Iterator[tuple[str, dict[str, S]]]:
        """The states of every key on these partitions (decoded, not kept live); the keys whose
        value cannot be read are passed over, and appended to `unreadable` when given."""
        for raw_key in self.state_keys():
            key = raw_key.decode()
            if partition_for(key, self.partitions) in partitions:
                states = self.live.get(key)
                if not states:
                    try:
                        states = self.decoded(key, self.recovered[raw_key])
                    except StateError:
                        if unreadable is not None:
                            unreadable.append(key)
                        continue
                yield key, states

    def __len__(self) -> int:
        return len(self.recovered)
