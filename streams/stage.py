"""What the worker's stages share: a consumed message, and the durable keyed state they keep.

Both tables (leads, accounts) are keyed by the id their events are keyed by and hold one state
per model in one value, framed as repeated [u8 name length][name][u32 length][bytes].
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterable, Protocol

from streams.outbox import Outbox


@dataclass(frozen=True, slots=True)
class Consumed:
    """One consumed Kafka message."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes


_LENGTH = struct.Struct(">I")


def frame(values: dict[str, bytes]) -> bytes:
    """One table value from each model's state bytes."""
    parts = []
    for model, raw in values.items():
        name = model.encode()
        parts.append(b"%c%b%b%b" % (len(name), name, _LENGTH.pack(len(raw)), raw))
    return b"".join(parts)


def unframe(value: bytes) -> dict[str, bytes]:
    """Each model's state bytes from a table value."""
    values: dict[str, bytes] = {}
    pos, end = 0, len(value)
    while pos < end:
        name_len = value[pos]
        name = value[pos + 1 : pos + 1 + name_len].decode()
        pos += 1 + name_len
        (length,) = _LENGTH.unpack_from(value, pos)
        pos += 4
        values[name] = value[pos : pos + length]
        pos += length
    return values


class StateStore(Protocol):
    """Durable state by key (lead or account id): a local read, and a write that also goes to
    the changelog through the outbox (so it is sent after what the outbox already holds)."""

    def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, partition: int, value: bytes, outbox: Outbox) -> None: ...

    def items(self) -> Iterable[tuple[str, bytes]]: ...
