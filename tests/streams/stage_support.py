"""Helpers of the tests that run the worker's stages without Kafka."""

from __future__ import annotations

from collections import defaultdict

from streams.outbox import Headers, Outbox


class Kept(Outbox):
    """An outbox that keeps what it would send: `sent` (topic, key, value), `placed` the same
    with each record's partition, and `headers` each placed record's headers."""

    def __init__(self) -> None:
        super().__init__("", 4)
        self.sent: list[tuple[str, bytes | None, bytes | None]] = []
        self.placed: list[tuple[str, int, bytes | None, bytes | None]] = []
        self.headers: list[Headers] = []

    async def flush(self) -> None:
        pending, self._pending = self._pending, defaultdict(list)
        for (topic, partition), records in pending.items():
            for key, value, headers in records:
                self.placed.append((topic, partition, key, value))
                self.sent.append((topic, key, value))
                self.headers.append(headers)


def written(data: dict[bytes, bytes], records: list[tuple[bytes, bytes | None]]) -> dict[bytes, bytes]:
    """A table's data after these changelog records (key, value; None deletes) over `data`:
    what a worker stopped after writing them leaves its successor."""
    table = dict(data)
    for key, value in records:
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value
    return table
