"""The bulk-restoring table store (streams/bulk_store.py) on the real broker: every key ends with
its latest changelog value, tombstones delete, a partition held is read on from where it was,
a partition no longer active is forgotten (and read from its beginning if it comes back), and
the worker's recovery gauge counts down what a restore has left."""

from __future__ import annotations

import asyncio
import functools
from typing import Any, cast

import faust
import orjson
import pytest
from faust.tables.manager import TableManager
from faust.types import TP
from kafka import KafkaProducer
from prometheus_client import REGISTRY

from streams import bulk_store, erasure, kafka_clients, lead_states, read_offsets
from streams.app import create_app
from streams.errors import ConfigError
from streams.model_reload import ModelDirectory
from streams.partitioning import partition_for
from streams.settings import Settings
from streams.stage import frame, unframe
from streams.topics import TopicSpec, ensure_topics
from tests.infra import add_partitions

PARTITIONS = 4


def home(key: str, partitions: int = PARTITIONS) -> int:
    """The partition a worker writes the key's records on: a restore refuses keys written elsewhere."""
    return partition_for(key, partitions)


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
            key, partition = f"k{i}".encode(), home(f"k{i}")
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
            write(isolated, topic, [(home("k1"), b"k1", b"later"), (home("k8"), b"k8", None)])
            expected[b"k1"] = b"later"
            expected.pop(b"k8")
            await store.on_recovery_completed(tps, set())
            assert dict(store.data) == expected
            assert store._applied[TP(topic, home("k1"))] == len([r for r in records if r[0] == home("k1")])

            # A value its owner sends is kept with its partition (and dropped with it below).
            store.write(b"k6", b"sent", home("k6"))
            assert store.data[b"k6"] == b"sent"

            # Partitions no longer active are dropped, then read anew when they come back.
            await store.on_recovery_completed({TP(topic, 0)}, set())
            assert dict(store.data) == {k: v for k, v in expected.items() if home(k.decode()) == 0}
            await store.on_recovery_completed(tps, set())
            assert dict(store.data) == expected
        finally:
            await store.on_stop()

    asyncio.run(scenario())


def test_a_restore_started_while_an_earlier_one_runs_reads_the_new_assignment(isolated: Settings) -> None:
    """Back-to-back rebalances: Faust stops waiting for the restores of a recovery that a new
    rebalance interrupts, without cancelling them, and restores the store again for the new
    assignment while the earlier restore still runs on the store's consumer. The new restore
    must read its partitions to the end (the chaos runs saw it fail, and the worker go ready)."""
    app = faust.App(isolated.app_id, broker=f"kafka://{isolated.kafka_bootstrap}", store="memory://")
    table = bulk_store.raw_table(app, "t", PARTITIONS)
    topic = table.changelog_topic_name
    ensure_topics(isolated, [TopicSpec(topic, PARTITIONS)])
    tps = {TP(topic, p) for p in range(PARTITIONS)}
    write(isolated, topic, [(home(f"k{i}"), f"k{i}".encode(), b"first") for i in range(400)])
    later = [(home(f"k{i}"), f"k{i}".encode(), b"later") for i in range(0, 400, 3)]
    expected = {f"k{i}".encode(): b"later" if i % 3 == 0 else b"first" for i in range(400) if home(f"k{i}") >= 2}

    async def scenario() -> None:
        store = table.data
        assert isinstance(store, bulk_store.BulkRestoreStore)
        consumer = await store._ensure_consumer()
        try:
            await store.on_recovery_completed(tps, set())  # the worker's first recovery: every partition held
            write(isolated, topic, later)
            # The next recovery's restores (one task per table, as Faust starts them)...
            interrupted = asyncio.ensure_future(table.on_recovery_completed(tps, set()))
            while not consumer.assignment():
                await asyncio.sleep(0)
            # ... are still running when a new rebalance gives the worker partitions 2 and 3.
            current = {tp for tp in tps if tp.partition >= 2}
            await table.on_rebalance(current, tps - current, set())
            await asyncio.wait_for(table.on_recovery_completed(current, set()), timeout=30)
            assert dict(store.data) == expected
            await asyncio.wait([interrupted])
            assert interrupted.cancelled() or interrupted.exception() is None
            assert dict(store.data) == expected  # the interrupted restore added nothing afterwards
        finally:
            await store.on_stop()

    asyncio.run(scenario())


def test_a_restore_that_fails_stops_the_worker_and_never_completes_the_recovery(isolated: Settings) -> None:
    """Faust does not look at how a table's restore ended: it resumes the streams and reports
    ready once the restores are over. A failed restore (here the broker knows no such partition,
    and the offsets request times out) stops the worker instead, and never lets recovery go on."""
    app = faust.App(isolated.app_id, broker=f"kafka://{isolated.kafka_bootstrap}", store="memory://",
                    broker_request_timeout=2.0)
    table = bulk_store.raw_table(app, "t", PARTITIONS)
    topic = table.changelog_topic_name
    ensure_topics(isolated, [TopicSpec(topic, 2)])  # partition 3, restored below, does not exist
    recovered: list[bool] = []

    @table.on_recover
    async def on_recover() -> None:
        recovered.append(True)

    async def scenario() -> None:
        store = table.data
        assert isinstance(store, bulk_store.BulkRestoreStore)
        restore = asyncio.ensure_future(table.on_recovery_completed({TP(topic, 3)}, set()))
        try:
            done, _ = await asyncio.wait([restore], timeout=10)
            assert not done, "the recovery completed after its restore failed"
            assert app.crashed
            assert not recovered
        finally:
            restore.cancel()  # as the worker's shutdown does
            await asyncio.wait([restore])
            await store.on_stop()

    asyncio.run(scenario())


def test_the_recovery_gauge_counts_down_the_records_a_bulk_restore_has_left(
    isolated: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`leadstream_table_recovery_remaining` showed only Faust's own count, which the bulk
    restore leaves at 0 (the store claims every partition read to its end): it said 0 for as
    long as a worker restored its tables. It is what the restore has left before each fetch,
    and 0 once it is done; what Faust's own recovery has left counts too."""
    # No Faust sensors: they register in the process's one Prometheus registry, as another test's app does.
    settings = isolated.with_overrides(faust_sensors=False)
    app = create_app(settings, ModelDirectory(settings.models_dir))
    table = app.tables["leads"]
    assert isinstance(table, bulk_store.BulkRestoredTable)
    topic = table.changelog_topic_name
    ensure_topics(settings, [TopicSpec(topic, PARTITIONS)])
    total = 8000  # one record per key: the keys restored are the records read
    write(settings, topic, [(home(f"lead-{i}"), f"lead-{i}".encode(), b"s" * 100) for i in range(total)])
    # Small fetches, so that the restore takes many.
    monkeypatch.setattr(bulk_store, "MAX_PARTITION_FETCH_BYTES", 16 * 1024)

    def gauge() -> float | None:
        return REGISTRY.get_sample_value("leadstream_table_recovery_remaining")

    async def scenario() -> None:
        store = table.store
        consumer = await store._ensure_consumer()
        fetch = consumer.getmany
        seen: list[tuple[float | None, int]] = []  # (gauge, keys restored) before each fetch

        async def getmany(*tps: Any, **kwargs: Any) -> Any:
            seen.append((gauge(), len(store.data)))
            return await fetch(*tps, **kwargs)

        monkeypatch.setattr(consumer, "getmany", getmany)
        try:
            await store.on_recovery_completed({TP(topic, p) for p in range(PARTITIONS)}, set())
        finally:
            await store.on_stop()
        assert len(store.data) == total
        assert len(seen) >= 4, seen  # several fetches, so several counts between the first and the last
        assert seen[0] == (total, 0)
        assert [left for left, _ in seen] == [total - restored for _, restored in seen]
        assert gauge() == 0
        # Faust's own recovery, with 30 records left of a partition the store could not claim.
        recovery = cast(TableManager, app.tables).recovery
        recovery.active_highwaters[TP(topic, 0)] = 40
        recovery.active_offsets[TP(topic, 0)] = 10
        assert gauge() == 30

    asyncio.run(scenario())


@pytest.mark.parametrize("written_under", [4, 6])
def test_states_written_under_another_partition_count_stop_the_worker_naming_both(
    isolated: Settings, caplog: pytest.LogCaptureFixture, written_under: int
) -> None:
    """Partitions added to the changelog (and to the topics, and LEADSTREAM_PARTITIONS raised to
    match, which `leadstream topics` let pass) left each state on the partition of the count it was
    written under: workers restored them, found 88 leads of 200 nowhere and scored them again from
    nothing. The restore checks where the first records of each partition belong, and stops the
    worker naming the changelog and both counts; states written under the table's count (an
    account's records of its own among them) restore as before."""
    app = faust.App(isolated.app_id, broker=f"kafka://{isolated.kafka_bootstrap}", store="memory://")
    table = bulk_store.raw_table(app, "t", 6)
    topic = table.changelog_topic_name
    ensure_topics(isolated, [TopicSpec(topic, written_under)])
    leads = [f"lead-{n}" for n in range(200)]
    write(isolated, topic, [(home(lead, written_under), lead.encode(), b"state") for lead in leads]
          + [(home("acct-1", written_under), b"acct-1\xffb2b\xff2/0", b"page")])
    if written_under != 6:  # Kafka refuses a count a topic has already
        add_partitions(isolated, [topic], 6)
    tps = {TP(topic, p) for p in range(6)}

    async def scenario() -> None:
        store = table.store
        restore = asyncio.ensure_future(table.on_recovery_completed(tps, set()))
        try:
            done, _ = await asyncio.wait([restore], timeout=10)
            if written_under == 6:
                assert done and not app.crashed and len(store.data) == 201
                return
            assert not done and app.crashed
            assert isinstance(app.crash_reason, ConfigError)
            said = str(app.crash_reason)
            assert (f"{topic} has 6 partitions, but the states on its partition" in said
                    and "were written under 4 partitions" in said and "Changing the partition count" in said), said
            assert "the worker stops, refusing to score on this table's states" in caplog.text
        finally:
            restore.cancel()
            await asyncio.wait([restore])
            await store.on_stop()

    asyncio.run(scenario())


def entry(label: str, read: dict[str, object] | None = None, forgotten: dict[str, int] | None = None) -> bytes:
    """A lead table value as the worker frames it (streams/lead_states.py): its offsets, and a
    part that tells the values apart."""
    parts = {"label": label.encode()}
    if read is not None:
        parts[read_offsets.READ] = read_offsets.encode(read).encode()
    if forgotten is not None:
        parts[erasure.FORGOTTEN] = orjson.dumps(forgotten)
    return frame(parts)


def test_a_lead_value_that_has_read_less_than_the_one_before_it_is_kept_out_of_a_restore(isolated: Settings) -> None:
    """A worker paused past its session timeout can let out, on resume, states it had handed its
    producer before the pause: written after its successor's newer ones, they were what the next
    restore took. Later values that read alike (a decay sweep), further on some input, or without
    offsets, still win; so does one whose earlier value's offsets are past the input's end (a
    topic created again)."""
    events, identity = isolated.topic_events, isolated.topic_identity
    # Each input partition's end: 20.
    write(isolated, events, [(partition, b"e", b"{}") for partition in range(PARTITIONS) for _ in range(20)])
    app = faust.App(isolated.app_id, broker=f"kafka://{isolated.kafka_bootstrap}", store="memory://")
    table = bulk_store.raw_table(app, "leads", PARTITIONS, lead_states.behind,
                                 functools.partial(kafka_clients.end_offsets, isolated))
    topic = table.changelog_topic_name
    ensure_topics(isolated, [TopicSpec(topic, PARTITIONS)])
    origin = f"{identity}/{events}/1"  # events re-keyed from the events topic's partition 1
    cases = {  # key -> its values in changelog order, and the one a restore keeps
        "late": ([entry("new", {events: 12, identity: 3}), entry("old", {events: 9, identity: 3})], "new"),
        "late-origin": ([entry("new", {events: 9, origin: [7, 2]}), entry("old", {events: 9, origin: [7, 1]})], "new"),
        "decayed": ([entry("scored", {events: 12}), entry("decayed", {events: 12})], "decayed"),
        "each-ahead": ([entry("a", {events: 12, identity: 3}), entry("b", {events: 9, identity: 4})], "b"),
        "further": ([entry("a", {events: 9}), entry("b", {events: 12, identity: 0})], "b"),
        "no-offsets": ([entry("a", {events: 12}), entry("b")], "b"),
        "recreated": ([entry("old-topic", {events: 500}), entry("new-topic", {events: 3})], "new-topic"),
        "forgotten": ([entry("marker", {events: 5}, forgotten={events: 14}), entry("old", {events: 12})], "marker"),
    }
    records: list[tuple[int, bytes, bytes | None]] = []
    for key, (values, _) in cases.items():
        records += [(home(key), key.encode(), value) for value in values]
    # Erased: a tombstone, then a paused worker's state from before it, then the lead's new events.
    records += [(home("erased"), b"erased", entry("marker", {events: 5}, forgotten={events: 14})),
                (home("erased"), b"erased", None),
                (home("erased"), b"erased", entry("old", {events: 12}))]
    records += [(home("back"), b"back", entry("marker", {events: 5}, forgotten={events: 14})),
                (home("back"), b"back", None),
                (home("back"), b"back", entry("old", {events: 12})),
                (home("back"), b"back", entry("new", {events: 16}))]
    write(isolated, topic, records)
    expected = {key.encode(): next(v for v in values if unframe(v)["label"] == kept.encode())
                for key, (values, kept) in cases.items()}
    expected[b"back"] = records[-1][2]  # type: ignore[assignment]

    async def scenario() -> None:
        store = table.store
        try:
            await store.on_recovery_completed({TP(topic, p) for p in range(PARTITIONS)}, set())
            assert {key: unframe(value)["label"] for key, value in store.data.items()} == {
                key: unframe(value)["label"] for key, value in expected.items()}
        finally:
            await store.on_stop()

    asyncio.run(scenario())
