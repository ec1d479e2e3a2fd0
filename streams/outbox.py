"""Records leaving the worker, sent in per-partition batches.

aiokafka's `send()` costs ~10 us of Python per record; appending to a record batch and sending
whole batches costs ~2.5 us (measured here: 68k vs 396k records/s on the local broker). The
worker writes one state record and one score change per changed lead per batch, so this is its
main output path. Every record gets an explicit partition: the key's partition by Kafka's
default partitioner, so consumers see what a keyed `send()` would have produced.

JSON values queued here are encoded with `encode_json` (msgspec), not orjson: orjson (>= 3.12)
returns bytes that each hold a 4 KiB allocation for as long as they live, and a catch-up batch
queues tens of thousands of score changes before it flushes them (measured here: 4.0 us per
orjson result kept until later against 1.2 us, and 155 MB of allocations for one batch of
38,000 summaries). msgspec's bytes are their own size; for the same values both write the
same bytes.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiokafka import AIOKafkaProducer

from streams.errors import MembershipLost
from streams.partitioning import partition_for

#: JSON bytes of a value to queue in the outbox (see the module doc for why not orjson).
encode_json = msgspec.json.Encoder().encode

#: Kafka record headers: (name, value) pairs.
Headers = tuple[tuple[str, bytes], ...]
#: A queued record: key, value (None: a tombstone), headers.
Record = tuple[bytes | None, bytes | None, Headers]


def encode_json_or_none(value: Any) -> bytes | None:
    """`encode_json(value)`, or None for a value nested deeper than msgspec writes (near 1,000
    levels, Python's recursion limit; orjson reads up to 1,024): input that was read but cannot
    be written out again, which the engine refuses anyway (scoring.events.MAX_NESTING)."""
    try:
        return encode_json(value)
    except RecursionError:
        return None


class Outbox:
    def __init__(self, bootstrap_servers: str, partitions: int, client_id: str = "leadstream",
                 may_write: Callable[[], Awaitable[bool]] | None = None) -> None:
        """`may_write`: asked before each flush sends anything (streams/membership.py); None: always."""
        self.bootstrap_servers = bootstrap_servers
        self.may_write = may_write
        self.client_id = client_id
        self.partitions = partitions
        self._producer: AIOKafkaProducer | None = None
        self._started = False
        self._pending: dict[tuple[str, int], list[Record]] = defaultdict(list)
        # Callers sharing an outbox (the lead stage and the decay timer) flush in turns, so a
        # flush never returns while records added before it are still in flight under another
        # one (and two first flushes do not start two producers).
        self._flushing: asyncio.Lock | None = None

    def _new_producer(self) -> AIOKafkaProducer:
        """Not started: it builds batches before `may_write` is asked, and starts once it says yes."""
        return AIOKafkaProducer(
            bootstrap_servers=self.bootstrap_servers,
            acks="all",
            enable_idempotence=True,
            # The outbox builds whole batches and flushes them on purpose: lingering would only
            # delay each flush (2 ms a flush, two flushes a batch, measured here), and crossings with it.
            linger_ms=0,
            max_batch_size=512 * 1024,
            client_id=self.client_id,
        )

    async def stop(self) -> None:
        if self._producer is not None and self._started:
            await self._producer.stop()
        self._producer, self._started = None, False

    def add(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None,
            headers: Headers = ()) -> None:
        """Queue a record (a None value is a tombstone); sent at the next flush."""
        if partition is None:
            partition = partition_for(key.decode(), self.partitions) if key else 0
        self._pending[(topic, partition)].append((key, value, headers))

    def mark(self) -> dict[tuple[str, int], int]:
        """Where the queue stands: `rollback` drops what is added after."""
        return {key: len(records) for key, records in self._pending.items()}

    def rollback(self, mark: dict[tuple[str, int], int]) -> None:
        """Drops the records added since `mark`. For work that does not await in between: a
        flush in between would have taken (and sent) them."""
        for key in list(self._pending):
            kept = mark.get(key, 0)
            if kept:
                del self._pending[key][kept:]
            else:
                del self._pending[key]

    def __len__(self) -> int:
        return sum(len(records) for records in self._pending.values())

    async def flush(self) -> None:
        """Send everything added so far and wait until Kafka acknowledged all of it.
        MembershipLost, with all of it dropped, when `may_write` says no."""
        if self._flushing is None:  # created inside the worker's event loop
            self._flushing = asyncio.Lock()
        async with self._flushing:
            pending, self._pending = self._pending, defaultdict(list)
            if pending:
                if self._producer is None:
                    self._producer = self._new_producer()
                # Built before `may_write` is asked, not after: what a pause that begins after its
                # answer still lets out (streams/membership.py) is then only the hand-over to the
                # producer, where it was the building too, most of a flush (a paused worker's
                # states were found written over its successor's in 3 of 10 runs of the paused-worker
                # test on a loaded machine).
                batches = self._batches(self._producer, pending)
                if self.may_write is not None and not await self.may_write():
                    raise MembershipLost(f"{len(pending)} partitions' records not written: the worker's group membership is lost")
                if not self._started:
                    try:
                        await self._producer.start()
                    except BaseException:
                        self._producer = None  # a new one at the next flush, as before a first start
                        raise
                    self._started = True
                await asyncio.gather(*[await self._producer.send_batch(batch, topic, partition=partition)
                                       for topic, partition, batch in batches])

    @staticmethod
    def _batches(producer: AIOKafkaProducer, pending: dict[tuple[str, int], list[Record]]) -> list[tuple[str, int, Any]]:
        """The records as whole record batches, (topic, partition, batch) in order."""
        batches = []
        for (topic, partition), records in pending.items():
            batch = producer.create_batch()
            for key, value, headers in records:
                listed = list(headers) if headers else []  # aiokafka's record builder takes a list only
                if batch.append(key=key, value=value, timestamp=None, headers=listed) is None:
                    batches.append((topic, partition, batch))
                    batch = producer.create_batch()
                    if batch.append(key=key, value=value, timestamp=None, headers=listed) is None:
                        raise ValueError(f"a record of {len(value or b'')} bytes for {topic} exceeds the producer's batch size")
            if batch.record_count():
                batches.append((topic, partition, batch))
        return batches
