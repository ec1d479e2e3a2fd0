"""streams/seek_first.py on Faust's own consumer and app, a real rebalance and the real broker:
records Faust fetched and threw away because the rebalance had stopped its flow are read again,
also on a partition the group has never committed or committed at 0, which aiokafka's
`seek_to_committed` leaves where the fetch left it (the chaos run's four users never merged);
a recovery that ends during the next rebalance leaves the stream partitions alone; a partition
handed a later message first after its seek is sought back to the offset sought; and messages a
stream skips are not acknowledged."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any, AsyncIterator

import faust
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from faust.types import TP
from kafka import KafkaProducer
from prometheus_client import REGISTRY

from streams import bulk_store, consumer_stop, livelock, log_start, seek_first
from streams.settings import Settings

PARTITION = 1
RECORDS = 5


def produce(settings: Settings, topic: str, values: list[bytes]) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    try:
        for value in values:
            producer.send(topic, key=value, value=value, partition=PARTITION)
        producer.flush()
    finally:
        producer.close()


async def commit(settings: Settings, topic: str, offset: int) -> None:
    """Commit an offset for the worker's group (0: as a tool resetting the group to the start would)."""
    tp = TopicPartition(topic, PARTITION)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=settings.app_id,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.commit({tp: offset})
        assert await consumer.committed(tp) == offset
    finally:
        await consumer.stop()


def worker_app(settings: Settings, datadir: Path, seen: dict[str, list[bytes]], busy_s: float = 0.0,
               table: bool = False, buffer: int = 4096, sought: list[dict[Any, int]] | None = None) -> faust.App:
    """The worker's subscriptions (streams/app.py): events, profiles and identity to one agent,
    accounts to another, read from the earliest offset when the group has no commit, with
    streams/seek_first.py installed as the worker installs it. Each event takes the agents
    `busy_s`, as scoring does: records fetched meanwhile wait in their queue, of `buffer` records.
    With `table`, the worker's lead table: Faust's recovery then resumes the flow before it seeks
    the stream partitions, as in the worker. Offsets are committed every 0.1 s. `sought` gets
    what seek_first tells the worker's offset check after each seek."""
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        store="memory://",
        datadir=str(datadir),
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        processing_guarantee="at_least_once",
        web_enabled=False,
        stream_wait_empty=False,
        stream_buffer_maxsize=buffer,
        broker_commit_interval=0.1,
        loop=asyncio.get_running_loop(),
    )
    seek_first.install(app.consumer, on_sought=None if sought is None else sought.append,
                       in_sequence={settings.topic_events, settings.topic_identity, settings.topic_accounts})
    raw: dict[str, Any] = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}

    async def collect(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            seen.setdefault(event.message.topic, []).append(event.value)
            await asyncio.sleep(busy_s)

    if table:
        bulk_store.raw_table(app, "leads", settings.partitions)
    app.agent(app.topic(settings.topic_events, settings.topic_profiles, settings.topic_identity, **raw),
              name="score")(collect)
    app.agent(app.topic(settings.topic_accounts, **raw), name="rollup")(collect)
    return app


@contextlib.asynccontextmanager
async def running(app: faust.App, tp: TP) -> AsyncIterator[None]:
    """The app started and owning `tp` with its flow running (its first rebalance done), for at
    most a minute; then stopped."""
    await app.start()
    try:
        async with asyncio.timeout(60):
            while app.rebalancing or not app.consumer.flow_active or tp not in app.consumer.assignment():
                await asyncio.sleep(0.05)
            livelock.install(app.consumer)  # as the worker does: Faust's check crashed a reset's consumer
            yield
    finally:
        # As the worker does (streams/consumer_stop.py): a fetch that ignores its cancellation
        # once held the stop past the test's timeout.
        consumer_stop.install(app.consumer)
        await app.stop()


def rejoin(consumer: Any) -> None:
    """The group rebalances, as when a worker joins or leaves."""
    kafka_consumer = consumer._thread._consumer
    consumer._thread.thread_loop.call_soon_threadsafe(kafka_consumer._coordinator.request_rejoin)


async def read_on(settings: Settings, topic: str, seen: dict[str, list[bytes]]) -> list[bytes]:
    """What the app's agents saw of `topic`, once they have seen a record produced now."""
    produce(settings, topic, [b"after"])
    while b"after" not in seen.get(topic, []):
        await asyncio.sleep(0.05)
    return seen[topic]


# Committed at 2 (after two earlier records): the records before it stay behind, as before the fix.
@pytest.mark.parametrize("committed", [None, 0, 2], ids=["never-committed", "committed-0", "committed-2"])
@pytest.mark.parametrize("topic_of", ["topic_identity", "topic_accounts"])
def test_records_thrown_away_as_a_rebalance_begins_are_read_again(
    isolated: Settings, tmp_path: Path, topic_of: str, committed: int | None
) -> None:
    # The chaos run's case: a partition's first records arrive while it is between owners; the
    # fetch in flight when the rebalance began returns them once aiokafka has sent the partition,
    # uncommitted, to its earliest offset, while the worker is still recovering its tables.
    topic = getattr(isolated, topic_of)
    tp = TP(topic, PARTITION)
    produce(isolated, topic, [f"earlier-{n}".encode() for n in range(committed or 0)])
    values = [str(n).encode() for n in range(RECORDS)]

    async def scenario() -> tuple[bool, list[bytes]]:
        if committed is not None:
            await commit(isolated, topic, committed)
        seen: dict[str, list[bytes]] = {}
        app = worker_app(isolated, tmp_path / "state", seen)
        consumer = app.consumer
        fetch = consumer._getmany
        rebalance = {"requested": False, "began": False, "records_arrived": False}
        fetched = asyncio.Event()
        thrown_away: list[bool] = []

        async def fetch_across_a_rebalance(*, active_partitions: Any, timeout: float) -> Any:
            if not rebalance["requested"] or rebalance["began"]:
                return await fetch(active_partitions=active_partitions, timeout=timeout)
            rebalance["began"] = True
            # Faust waits 1 s; waiting longer only makes sure this fetch outlasts the rebalance.
            in_flight = asyncio.ensure_future(fetch(active_partitions=active_partitions, timeout=30.0))
            kafka_consumer = consumer._thread._consumer
            while not kafka_consumer._fetcher._fetch_waiters and not in_flight.done():
                await asyncio.sleep(0.01)
            rejoin(consumer)  # while this fetch waits
            records = await in_flight
            # What makes Faust's getmany throw them away and seek back to the committed offsets.
            thrown_away.append(tp in records and not consumer.flow_active)
            fetched.set()
            return records

        async def on_revoked(sender: Any, *args: Any, **kwargs: Any) -> None:
            if rebalance["began"] and not rebalance["records_arrived"]:
                rebalance["records_arrived"] = True
                await asyncio.to_thread(produce, isolated, topic, values)

        async def on_rebalance_complete(sender: Any, *args: Any, **kwargs: Any) -> None:
            # Sent by Faust's Recovery before it seeks and resumes the flow: the worker's tables
            # take longer to recover than the fetch in flight takes to return.
            if rebalance["began"]:
                await fetched.wait()

        consumer._getmany = fetch_across_a_rebalance
        app.on_partitions_revoked.connect(on_revoked)
        app.on_rebalance_complete.connect(on_rebalance_complete)
        async with running(app, tp):
            rebalance["requested"] = True
            await fetched.wait()
            return thrown_away == [True], await read_on(isolated, topic, seen)

    assert asyncio.run(scenario()) == (True, [*values, b"after"])


def test_records_fetched_between_the_seek_and_the_flow_resuming_are_not_lost(isolated: Settings, tmp_path: Path) -> None:
    # The chaos run's lost events message: it arrived while the worker, which kept its partition
    # through a rebalance, sought it to the committed offset. Faust's resumption of the flow
    # right after the seek empties the agents' queues (mode's FlowControlEvent.resume), and the
    # commit went past it.
    topic = isolated.topic_events
    tp = TP(topic, PARTITION)
    values = [str(n).encode() for n in range(RECORDS)]

    async def scenario() -> list[bytes]:
        loop = asyncio.get_running_loop()
        seen: dict[str, list[bytes]] = {}
        app = worker_app(isolated, tmp_path / "state", seen, busy_s=0.2, table=True)
        consumer = app.consumer
        rebalancing = {"armed": False}
        read_offset_at_resume: list[int | None] = []

        async def seek_then_wait_for_the_fetch() -> None:
            await seek()
            if rebalancing["armed"]:
                # Before the fix the partition was fetching again here: Faust's read offset
                # passes the records as they are queued, ahead of the flow's resumption.
                until = loop.time() + 3
                while (consumer._read_offset.get(tp) or -1) < RECORDS - 1 and loop.time() < until:
                    await asyncio.sleep(0.01)
                read_offset_at_resume.append(consumer._read_offset.get(tp))

        async def on_assigned(sender: Any, *args: Any, **kwargs: Any) -> None:
            nonlocal seek
            if seek is None:
                seek = consumer.perform_seek
                consumer.perform_seek = seek_then_wait_for_the_fetch

        async def on_rebalance_complete(sender: Any, *args: Any, **kwargs: Any) -> None:
            # Sent by Faust's Recovery before it seeks: the records are in the log by then.
            if rebalancing["armed"] and not read_offset_at_resume:
                await asyncio.to_thread(produce, isolated, topic, values)

        seek: Any = None
        app.on_partitions_assigned.connect(on_assigned)
        app.on_rebalance_complete.connect(on_rebalance_complete)
        async with running(app, tp):
            rebalancing["armed"] = True
            rejoin(consumer)
            while not read_offset_at_resume:
                await asyncio.sleep(0.05)
            return await read_on(isolated, topic, seen)

    assert asyncio.run(scenario()) == [*values, b"after"]


def test_a_partition_paused_for_a_rebalance_is_not_fetched_again_when_its_full_queue_is_emptied(
    isolated: Settings, tmp_path: Path
) -> None:
    # A busy agent fills its queue: Faust stops taking its partition's records from the fetcher
    # (Consumer.on_buffer_full). A rebalance pauses the partition and empties the queue, and the
    # emptied queue told the consumer to take them again (on_buffer_drop), paused or not: records
    # of the new assignment were then taken before the seek, behind a read offset left over from
    # the last one, and dropped; the queue's records were never read again, and committed past.
    topic = isolated.topic_events
    tp = TP(topic, PARTITION)
    count = 120
    values = [str(n).encode() for n in range(count)]  # a fresh topic: each value is its offset

    async def scenario() -> tuple[list[bytes], list[str]]:
        seen: dict[str, list[bytes]] = {}
        app = worker_app(isolated, tmp_path / "state", seen, busy_s=0.01, table=True, buffer=4)
        committed_past: list[str] = []
        async with running(app, tp):
            await asyncio.to_thread(produce, isolated, topic, values)
            for read in (20, 50, 80, count):
                while len(set(seen.get(topic, []))) < read:
                    committed = app.consumer._committed_offset.get(tp) or 0
                    unread = set(values[:committed]) - set(seen.get(topic, []))
                    if unread:
                        committed_past.append(f"committed {committed}, never read {sorted(int(v) for v in unread)}")
                        return sorted(set(seen[topic]), key=int), committed_past
                    await asyncio.sleep(0.005)
                rejoin(app.consumer)
            return sorted(set(seen[topic]), key=int), committed_past

    assert asyncio.run(scenario()) == (values, [])


@pytest.mark.parametrize("committed", [2, 0, None], ids=["committed-2", "committed-0", "never-committed"])
def test_offsets_the_log_deleted_unread_are_read_from_its_first_one_and_told(
    isolated: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture, committed: int | None
) -> None:
    # Retention deleted records the group had not read: aiokafka reads on from the log's first
    # offset, and the worker's offset check expects that one (streams/scorer.py OffsetSequence
    # stops the worker at a hole; this one is no hole of its making). The records deleted are
    # never scored: a group that had committed an offset before them counts and logs them (a
    # worker down longer than the retention: the audit saw only aiokafka's INFO line), one new to
    # the topic (a rescore under a new app id) is told that the topic has lost its beginning.
    topic = isolated.topic_events
    tp = TP(topic, PARTITION)
    values = [str(n).encode() for n in range(RECORDS + 3)]
    produce(isolated, topic, values)
    before = deleted_unread()

    async def scenario() -> tuple[list[dict[Any, int]], list[bytes]]:
        if committed is not None:
            await commit(isolated, topic, committed)
        admin = AIOKafkaAdminClient(bootstrap_servers=isolated.kafka_bootstrap)
        await admin.start()
        try:
            await admin.delete_records({TopicPartition(topic, PARTITION): RecordsToDelete(before_offset=4)})
        finally:
            await admin.close()
        seen: dict[str, list[bytes]] = {}
        sought: list[dict[Any, int]] = []
        app = worker_app(isolated, tmp_path / "state", seen, table=True, sought=sought)
        async with running(app, tp):
            return sought, await read_on(isolated, topic, seen)

    with caplog.at_level(logging.WARNING, logger="leadstream.worker"):
        sought, read = asyncio.run(scenario())
    assert [offsets[tp] for offsets in sought] == [4]
    assert read == [*values[4:], b"after"]
    told = [record.getMessage() for record in caplog.records if record.name == "leadstream.worker"]
    if committed is None:
        assert deleted_unread() == before
        assert [line for line in told if "lost its beginning" in line] == [
            f"a group new to the topic: {log_start.lost_beginning(topic, {PARTITION: 4})}"]
    else:
        assert deleted_unread() - before == 4 - committed
        assert [line for line in told if "deleted before" in line] == [
            f"offsets deleted before this group read them, never to be scored: topic={topic} partition={PARTITION} "
            f"committed={committed} log_start=4 lost={4 - committed} (the group was stopped or behind longer than the "
            "topic keeps its records: retention.ms, or delete-records); reading on from the log start"]


def deleted_unread() -> float:
    return REGISTRY.get_sample_value("leadstream_offset_anomalies_total", {"kind": "deleted_unread"}) or 0.0


def test_a_recovery_that_ends_after_the_next_rebalance_began_neither_seeks_nor_resumes_the_flow(
    isolated: Settings, tmp_path: Path
) -> None:
    # The chaos run's second hole: a recovery's tables took longer than the group's patience, the
    # next rebalance revoked the partitions, and then the recovery's end sought them and resumed
    # the flow and the fetcher (Faust's generation check passes until the next assignment),
    # while the next generation's tables were being restored.
    topic = isolated.topic_events
    tp = TP(topic, PARTITION)

    async def scenario() -> tuple[list[bool], bool]:
        seen: dict[str, list[bytes]] = {}
        sought: list[dict[Any, int]] = []
        app = worker_app(isolated, tmp_path / "state", seen, table=True, sought=sought)
        table = app.tables["leads"]
        restore = table.on_recovery_completed
        held, release, ended = asyncio.Event(), asyncio.Event(), asyncio.Event()
        armed = {"on": False}

        async def slow_restore(active: Any, standby: Any) -> None:
            if armed["on"] and not held.is_set():
                held.set()
                await release.wait()
            await restore(active, standby)

        recovery = app.tables.recovery  # type: ignore[attr-defined]
        completed = recovery.on_recovery_completed

        async def on_recovery_completed(generation_id: int = 0) -> None:
            try:
                await completed(generation_id)
            finally:
                if release.is_set():
                    ended.set()

        flow_while_revoked: list[bool] = []

        async def on_revoked(sender: Any, *args: Any, **kwargs: Any) -> None:
            if held.is_set() and not release.is_set():
                release.set()  # the held recovery ends now, while this rebalance is under way
                seeks = len(sought)
                async with asyncio.timeout(10):
                    await ended.wait()
                flow_while_revoked.extend([app.consumer.flow_active, len(sought) > seeks])

        table.on_recovery_completed = slow_restore
        recovery.on_recovery_completed = on_recovery_completed
        app.on_partitions_revoked.connect(on_revoked)
        async with running(app, tp):
            armed["on"] = True
            async with asyncio.timeout(40):
                rejoin(app.consumer)
                await held.wait()
                rejoin(app.consumer)
                while not flow_while_revoked or app.rebalancing or not app.consumer.flow_active:
                    await asyncio.sleep(0.05)
                read = await read_on(isolated, topic, seen)
            return flow_while_revoked, read == [b"after"]

    # Neither the flow resumed nor a seek made in the revoked generation; the worker reads on.
    assert asyncio.run(scenario()) == ([False, False], True)


def jumping_seeks(consumer: Any, tp: TP, to: int, every_seek: bool) -> list[int]:
    """After the first seek to the committed offsets (with `every_seek`, after every seek of `tp`
    too), the consumer's position in `tp` is `to`, while Faust takes it to be the offset sought:
    what a fetch from before the seek returning after it comes to. Returns the offsets `tp` is
    sought to by `seek_wait`."""
    thread = consumer._thread
    seek_to_committed, seek_wait = thread.seek_to_committed, thread.seek_wait
    sought: list[int] = []

    async def seek_to_committed_then_ahead() -> Any:
        committed = await seek_to_committed()
        if not sought:
            sought.append(committed[tp])
            await seek_wait({tp: to})
        return committed

    async def seek_wait_then_ahead(partitions: Any) -> None:
        await seek_wait(partitions)
        if tp in partitions:
            sought.append(partitions[tp])
            if every_seek:
                await seek_wait({tp: to})

    thread.seek_to_committed = seek_to_committed_then_ahead
    thread.seek_wait = seek_wait_then_ahead
    return sought


def handed_after_a_jump(settings: Settings, datadir: Path, topic: str,
                        every_seek: bool) -> tuple[list[int], list[bytes]]:
    """Ten records in a partition committed at 2, and a worker whose position jumps to 6 after
    its seek (`jumping_seeks`): the offsets the partition was sought to, and what the agent saw."""
    tp = TP(topic, PARTITION)
    produce(settings, topic, [str(n).encode() for n in range(2 * RECORDS)])

    async def scenario() -> tuple[list[int], list[bytes]]:
        await commit(settings, topic, 2)
        seen: dict[str, list[bytes]] = {}
        app = worker_app(settings, datadir, seen)
        sought = jumping_seeks(app.consumer, tp, to=6, every_seek=every_seek)
        async with running(app, tp):
            return sought, await read_on(settings, topic, seen)

    return asyncio.run(scenario())


@pytest.mark.parametrize("topic_of", ["topic_events", "topic_accounts"])
def test_a_partition_handed_a_later_message_first_after_its_seek_is_sought_back_to_the_offset_sought(
    isolated: Settings, tmp_path: Path, topic_of: str
) -> None:
    # The chaos runs' first way of holes comes to this, whatever the fetch that brings it: the
    # first message handed after a rebalance's seek is beyond the committed one. Before the fix,
    # Faust took the messages skipped for a gap and would commit past them.
    sought, seen = handed_after_a_jump(isolated, tmp_path / "state", getattr(isolated, topic_of), every_seek=False)
    assert (sought, seen) == ([2, 2], [str(n).encode() for n in range(2, 2 * RECORDS)] + [b"after"])


def test_a_partition_sought_back_once_hands_its_messages_over_if_the_first_is_still_beyond(
    isolated: Settings, tmp_path: Path
) -> None:
    # As when retention deleted the offset sought since: no second seek back (it would go on for
    # ever); the stage's own check then sees the hole (streams/offset_sequence.py).
    sought, seen = handed_after_a_jump(isolated, tmp_path / "state", isolated.topic_events, every_seek=True)
    assert (sought, seen) == ([2, 2], [str(n).encode() for n in range(6, 2 * RECORDS)] + [b"after"])


@pytest.mark.parametrize("iterator", ["cython", "pure-python"])
def test_messages_a_stream_skips_as_a_rebalance_begins_are_not_acknowledged(
    isolated: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, iterator: str
) -> None:
    # From a rebalance's start (called in the consumer's thread) until the revocation reaches
    # the app, the stream skips the queued messages, which have a generation and the app none.
    # Faust's pure-Python stream iterator (used where its Cython one is not built) acknowledged
    # them, so a commit in that moment would have passed messages no agent was handed.
    if iterator == "pure-python":
        monkeypatch.setattr(faust.streams, "_CStreamIterator", None)
    topic = isolated.topic_events
    tp = TP(topic, PARTITION)
    produce(isolated, topic, [str(n).encode() for n in range(RECORDS)])

    async def scenario() -> tuple[list[bytes], int | None]:
        seen: dict[str, list[bytes]] = {}
        app = worker_app(isolated, tmp_path / "state", seen, busy_s=1.0)  # the others wait in its queue
        async with running(app, tp):
            while not seen.get(topic):
                await asyncio.sleep(0.01)
            generation = app.consumer_generation_id
            app.on_rebalance_start()
            # The agent is done with its event, the stream skips the rest, and the app commits
            # every 0.1 s what is acknowledged: the first commit, then a few more.
            async with asyncio.timeout(30):
                while app.consumer._committed_offset.get(tp) is None:
                    await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)
            committed = app.consumer._committed_offset.get(tp)
            app.consumer_generation_id, app.rebalancing = generation, False  # no rebalance follows
            return seen[topic], committed

    # Before the fix, the pure-Python iterator's commit was at 5.
    assert asyncio.run(scenario()) == ([b"0"], 1)
