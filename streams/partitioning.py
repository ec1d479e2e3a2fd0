"""Which partition a lead lives on, the same way Kafka's default partitioner decides it.

Producers that pack several events into one message (the envelope) must put only leads of one
partition in it, and the worker checks that, because a lead's state lives on its key's partition.
"""

from __future__ import annotations

from functools import lru_cache

from kafka.partitioner.default import murmur2


@lru_cache(maxsize=1 << 18)
def partition_for(lead_id: str, partitions: int) -> int:
    # Kafka's DefaultPartitioner: positive murmur2 of the key bytes, modulo the partition count.
    # murmur2 is pure Python (~4 us); active leads recur, so the cache answers most calls.
    return (murmur2(lead_id.encode()) & 0x7FFFFFFF) % partitions
