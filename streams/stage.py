"""What the worker's stages share: a consumed message, and the durable keyed state they keep."""

from __future__ import annotations

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


class StateStore(Protocol):
    """Durable state by key (lead or account id): a local read, and a write that also goes to
    the changelog through the outbox (so it is sent after what the outbox already holds)."""

    def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, partition: int, value: bytes, outbox: Outbox) -> None: ...

    def items(self) -> Iterable[tuple[str, bytes]]: ...
