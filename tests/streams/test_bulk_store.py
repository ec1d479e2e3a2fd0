"""The bulk-restoring table store (streams/bulk_store.py) on the real broker: every key ends with
its latest changelog value, tombstones delete, a partition held is read on from where it was,
and a partition no longer active is forgotten (and read from its beginning if it comes back)."""

from __future__ import annotations

import asyncio

import faust
from faust.types import TP
from kafka import KafkaProducer

from streams import bulk_store
from streams.settings import Settings
from streams.topics import TopicSpec, ensure_topics

PARTITIONS = 4


def write(settings: Settings, topic: str, records: list[tuple[int, bytes, bytes | None]]) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    try:
        for partition, key, value in records:
            producer.send(topic, key=key, value=value, partition=partition)
        producer.flush()
    finally:
        producer.close()


def test_restores_latest_values_and_tombstones_and_follows_the_assignment(isolated: Settings) -> None:
    app = faust.App(isolated.app_id, broker=f"kafka://{isolated.kafka_bootstrap}", store="memory://")
    table = bulk_store.raw_table(app, "t", PARTITIONS)
    topic = table.changelog_topic_name
    ensure_topics(isolated, [TopicSpec(topic, PARTITIONS)])
    tps = {TP(topic, p) for p in range(PARTITIONS)}
    expected: dict[bytes, bytes] = {}
    records: list[tuple[int, bytes, bytes | None]] = []
    for round_ in range(3):
        for i in range(2000):
            key, partition = f"k{i}".encode(), i % PARTITIONS
            if round_ == 2 and i % 7 == 0:
                records.append((partition, key, None))  # tombstone
                expected.pop(key, None)
            elif round_ < 2 or i % 3 == 0:
                value = f"{key.decode()}-{round_}".encode()
                records.append((partition, key, value))
                expected[key] = value
    write(isolated, topic, records)

    async def scenario() -> None:
        store = table.data
        assert isinstance(store, bulk_store.BulkRestoreStore)
        await store._ensure_consumer()
        try:
            await store.on_recovery_completed(tps, set())
            assert dict(store.data) == expected
            assert not store._consumer.assignment()  # fetches nothing between restores

            # Held partitions are read on from where they were: later records win.
            write(isolated, topic, [(1, b"k1", b"later"), (2, b"k2", None)])
            expected[b"k1"] = b"later"
            expected.pop(b"k2")
            await store.on_recovery_completed(tps, set())
            assert dict(store.data) == expected
            assert store._applied[TP(topic, 1)] == len([r for r in records if r[0] == 1])

            # A value its owner sends is kept with its partition (and dropped with it below).
            store.write(b"k9", b"sent", 1)
            assert store.data[b"k9"] == b"sent"

            # Partitions no longer active are dropped, then read anew when they come back.
            await store.on_recovery_completed({TP(topic, 0)}, set())
            assert dict(store.data) == {k: v for k, v in expected.items() if int(k[1:]) % PARTITIONS == 0}
            await store.on_recovery_completed(tps, set())
            assert dict(store.data) == expected
        finally:
            await store.on_stop()

    asyncio.run(scenario())
