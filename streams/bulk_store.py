"""Faust's memory store, restoring its changelog partitions in bulk instead of record by record.

Why: Faust (faust-streaming 0.15.3) restores a table through the path built for stream
messages, once per changelog record: `Consumer._drain_messages` runs `Service.wait_first`
(four asyncio tasks created, three of them cancelled), the conductor decodes the record into an
`Event` and queues it, and `Recovery._slurp_changelogs` takes it off the queue with
`asyncio.wait_for` (another task and a timer) and recounts the remaining offsets:
3,500-7,000 records/s on these 2-core machines (150-280 us of event loop per record; the
store's own `apply_changelog_batch` is ~1% of it), 40-80 s for the lead table's changelog.
No setting removes that path: a larger `stream_buffer_maxsize` and fetch size, or no Faust
sensors, changed recovery by a few percent.

How: the store reports its active changelog partitions as held up to their end offset
(`persisted_offset`, the hook Faust's RocksDB store uses for the offsets it persisted), so
Faust's recovery finds nothing to read, and the store fills itself while recovery completes
(`on_recovery_completed`, which Faust awaits before the `on_recover` callbacks, before it
resumes the streams and before the worker reports ready). It reads each partition with a
consumer of its own, `getmany` in large fetches, from the first offset it does not hold to
the partition's current end, and writes key -> value straight into the dict (150-300k
records/s here): the latest record of a key wins, a tombstone (null value) deletes it, as in
Faust's memory store. Except, in the lead table, a record that has read less than the one
before it: a worker paused past its session timeout can still let out, on resume, states it had
handed its producer just before, after its successor's newer ones (streams/membership.py). The
latest of those held the successor's, and the next restore took the paused worker's instead: 143
leads' live states not the offline scores in one run of tests/streams/test_membership.py. So
when a key is read again in a restore, the store asks the table (`behind`, the lead table's
READ offsets, streams/read_offsets.py, with its erasure marker's) whether the later value has
read no record the earlier one has not, and fewer: it is then kept out. Values that have read
alike (a decay sweep, the same records scored again) or each further on some input, or
without offsets, go by their place, as before; and so does a later value that the earlier one
is ahead of only by offsets at or past the input partition's end, offsets of a topic since
created again under its name, which a lead's states drop then (`read_offsets.drop_topic`).
Only records read in the same restore are compared: once the log cleaner has compacted the
changelog past both, the late one is all that is left (see README "Delivery guarantee"). Faust's count of the records its recovery has left has none of these: the
store counts what its restore has left itself (`restore_remaining`).

One restore runs at a time, the latest assignment's (a new rebalance cancels the one before, see
`on_recovery_completed`), and a restore that fails stops the worker: Faust would go on and
report ready with the partitions unread.

Only for tables whose keys and values are raw bytes (the "raw" codec): what is read is stored
as it is. Standby partitions are left to Faust's own path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable, Iterable, Optional, cast

import faust
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition
from kafka.errors import KafkaError as KafkaPythonError
from faust.stores import memory
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth, server_list
from faust.types import TP

from streams.erasure import EndsNow
from streams.errors import ConfigError, ServiceError
from streams.partitioning import counts_placing, partition_for
from streams.topics import CHANGELOG_CONFIG

log = logging.getLogger("leadstream.worker")

#: Records whose keys a restore checks at the start of each partition it reads (`_check_placed`):
#: under another count than the one they were written under, most keys of a partition belong on
#: another, so a few tell; the rest of the restore pays nothing.
CHECKED_RECORDS = 16

#: Bytes fetched at once: whole segments of changelog instead of Faust's 1 MB per partition.
MAX_PARTITION_FETCH_BYTES = 8 * 1024 * 1024
FETCH_MAX_BYTES = 32 * 1024 * 1024

#: (earlier value, later value, partition) -> where the later value, read after the earlier one
#: for the same key, has read less and nowhere more (topic, partition, offset the earlier one
#: had read); empty when it has not (streams/lead_states.py `behind`).
Behind = Callable[[bytes, bytes, int], "list[tuple[str, int, int]]"]


class BulkRestoreStore(memory.Store):  # type: ignore[type-arg]  # faust's Store is generic only in its stubs
    """`faust.stores.memory.Store` whose active changelog partitions are restored in bulk."""

    def __post_init__(self) -> None:
        super().__post_init__()
        # Offset of the last changelog record applied to `data`, by active partition held: the
        # data holds that partition's log up to there, so reading on from it ends up current.
        self._applied: dict[TP, int] = {}
        # What `persisted_offset` tells Faust's recovery for the current assignment: the last
        # offset of each active changelog partition when it was assigned.
        self._claimed: dict[TP, int] = {}
        self._consumer: Optional[AIOKafkaConsumer] = None
        # Changelog records the restore running has left to read, counted in offsets as Faust's
        # recovery counts its own (a compacted log holds fewer records); 0 between restores.
        # Counted again after each fetch.
        self.restore_remaining = 0
        # The restore running on `_consumer`, if any (on_recovery_completed).
        self._restoring: Optional[asyncio.Future[None]] = None
        # The table's judge of a value read after another for the same key (None: the latest wins),
        # and the end offsets of its inputs' partitions now (None: not known, the latest wins).
        self.behind: Optional[Behind] = None
        self.ends_now: Optional[EndsNow] = None
        # End offsets of input partitions, asked of the broker by the restore running.
        self._input_ends: dict[tuple[str, int], Optional[int]] = {}

    def persisted_offset(self, tp: TP) -> Optional[int]:
        return self._claimed.get(tp)

    def write(self, key: bytes, value: bytes, partition: int) -> None:
        """A value its owner has sent to the changelog, kept as a recovery would have kept it
        (so it is dropped with its partition when the partition goes to another worker)."""
        self.data[key] = value
        self._key_partition[key] = partition

    def delete(self, key: bytes) -> None:
        """A key its owner has sent a tombstone for, dropped as a recovery would drop it."""
        self.data.pop(key, None)
        self._key_partition.pop(key, None)

    def restore_anew(self) -> None:
        """Holds no partition any more: the next restore of each reads it from its beginning, with
        what the data has of it dropped (values written that never reached the changelog:
        streams/membership.py)."""
        self._applied.clear()

    async def on_rebalance(
        self, assigned: set[TP], revoked: set[TP], newly_assigned: set[TP], generation_id: int = 0
    ) -> None:
        # Called before Faust's recovery reads `persisted_offset` (TableManager.on_rebalance).
        topic = self.table.changelog_topic.get_topic_name()
        actives = [tp for tp in self.app.assignor.assigned_actives() if tp.topic == topic]
        self._claimed = {}
        if not actives:
            return
        try:
            consumer = await self._ensure_consumer()
            ends = await consumer.end_offsets([TopicPartition(tp.topic, tp.partition) for tp in actives])
        except (KafkaError, OSError, asyncio.TimeoutError) as exc:
            # Nothing claimed: Faust reads the partitions its own (slow) way, and the restore
            # below still brings them up to date.
            log.warning("changelog end offsets not read, table=%s cause=%r", self.table_name, exc)
            return
        self._claimed = {tp: ends[TopicPartition(tp.topic, tp.partition)] - 1 for tp in actives}

    async def on_recovery_completed(self, active_tps: set[TP], standby_tps: set[TP]) -> None:
        # One restore at a time, the latest assignment's: a rebalance that interrupts a recovery
        # makes Faust stop waiting for its restores (its `_wait` cancels the `asyncio.wait` over
        # the tables' tasks, not the tasks), and it restores again for the new assignment while
        # the earlier restore still runs on this store's consumer, whose assignment each of them
        # replaces or clears. What the earlier one read stays held (`_applied`).
        await self._cancel_restore()
        for tp in list(self._applied):
            if tp not in active_tps:  # no longer ours: its keys go below, it is read anew if it returns
                del self._applied[tp]
        if active_tps:
            self._restoring = asyncio.ensure_future(self._restore(active_tps))
            try:
                await self._restoring
            except Exception as exc:
                await self._stop_worker(exc)
        await super().on_recovery_completed(active_tps, standby_tps)

    async def on_start(self) -> None:
        await super().on_start()
        # Connected, and the changelog's metadata known, before the first rebalance:
        # `on_rebalance` runs inside the assignment callback, and time spent there lets the
        # group consumer's first long-poll fetch (1.5 s) go out ahead of Faust's own offset
        # requests for recovery, which then wait behind it on the same connection.
        consumer = await self._ensure_consumer()
        topic = self.table.changelog_topic
        partitions = self.table.partitions or self.app.conf.topic_partitions
        try:
            await topic.maybe_declare()
            await consumer.end_offsets([TopicPartition(topic.get_topic_name(), p) for p in range(partitions)])
        except Exception as exc:  # only a head start: the first rebalance fetches the metadata itself
            log.warning("changelog metadata not fetched ahead, table=%s cause=%r", self.table_name, exc)

    async def on_stop(self) -> None:
        await super().on_stop()
        await self._cancel_restore()
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def _ensure_consumer(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            conf = self.app.conf
            consumer = AIOKafkaConsumer(
                bootstrap_servers=server_list(conf.broker_consumer, 9092),
                client_id=f"{conf.broker_client_id}-restore-{self.table_name}",
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                isolation_level="read_committed" if self.app.in_transaction else "read_uncommitted",
                max_partition_fetch_bytes=MAX_PARTITION_FETCH_BYTES,
                fetch_max_bytes=FETCH_MAX_BYTES,
                request_timeout_ms=int(conf.broker_request_timeout * 1000),
                **credentials_to_aiokafka_auth(conf.broker_credentials, conf.ssl_context),
            )
            await consumer.start()
            self._consumer = consumer
        return self._consumer

    async def _cancel_restore(self) -> None:
        # A loop: another call may have started a restore while this one waited.
        while self._restoring is not None and not self._restoring.done():
            self._restoring.cancel()
            await asyncio.wait([self._restoring])  # its `finally` has left the consumer unassigned

    async def _stop_worker(self, exc: Exception) -> None:
        """A restore failed: the worker stops, and a new one (restarted by its supervisor)
        restores the table. Faust does not look at how the restores ended (`asyncio.wait`, then
        it resumes the streams and reports ready): this never returns, so that the worker never
        scores on partitions it has not read; the worker's shutdown cancels it."""
        if isinstance(exc, ConfigError):  # a new worker would stop alike
            log.critical("the worker stops, refusing to score on this table's states: %s", exc)
        else:
            log.critical("table restore failed: stopping the worker, so that a new one restores the table from its "
                         "changelog: table=%s cause=%r", self.table_name, exc)
        await self.app.crash(exc)
        await asyncio.Event().wait()

    async def _restore(self, tps: Iterable[TP]) -> None:
        """Read each partition from the first offset not held to its current end."""
        consumer = await self._ensure_consumer()
        partitions = {TopicPartition(tp.topic, tp.partition): tp for tp in tps}
        consumer.assign(list(partitions))
        try:
            await self._read_to_end(consumer, partitions)
        finally:
            # Nothing assigned between restores: the consumer fetches nothing in the meantime.
            consumer.unsubscribe()
            self.restore_remaining = 0  # also when cut short: the next restore counts its own

    async def _read_to_end(self, consumer: AIOKafkaConsumer, partitions: dict[TopicPartition, TP]) -> None:
        ends = await consumer.end_offsets(list(partitions))
        todo: dict[TopicPartition, int] = {}
        for kafka_tp, tp in partitions.items():
            held = self._applied.get(tp)
            if held is not None and held >= ends[kafka_tp]:
                held = None  # the log is shorter than what we hold (recreated topic): start over
            if held is None:
                # Not held (first assignment, or back from another worker): what is left of an
                # earlier ownership goes, the partition is read from its beginning.
                self._drop_partition(tp.partition)
                await consumer.seek_to_beginning(kafka_tp)
            else:
                consumer.seek(kafka_tp, held + 1)
            if (held if held is not None else -1) + 1 < ends[kafka_tp]:
                todo[kafka_tp] = ends[kafka_tp]
            else:
                self._applied[tp] = ends[kafka_tp] - 1
        if not todo:
            return
        started, count = time.monotonic(), 0
        consumer.pause(*(kafka_tp for kafka_tp in partitions if kafka_tp not in todo))
        data, key_partition, behind = self.data, self._key_partition, self.behind
        # Values that a tombstone of this restore deleted: a late value after it is judged against them.
        gone: dict[bytes, bytes] = {}
        kept_out = 0
        self._input_ends = {}
        self.restore_remaining = await self._unread(consumer, partitions, todo)
        unchecked = set(todo)
        while todo:
            await asyncio.sleep(0)  # getmany returns without yielding while records are buffered
            batches = await consumer.getmany(*todo, timeout_ms=1000)
            for kafka_tp, records in batches.items():
                partition = kafka_tp.partition
                if kafka_tp in unchecked and records:
                    unchecked.discard(kafka_tp)
                    self._check_placed(kafka_tp, [record.key for record in records[:CHECKED_RECORDS]])
                for record in records:
                    key, value = record.key, record.value
                    if value is None:
                        earlier = data.pop(key, None)
                        key_partition.pop(key, None)
                        if behind is not None and earlier is not None:
                            gone[key] = earlier
                        continue
                    if behind is not None:
                        # Only a key read before is judged: a first value is decoded by nobody.
                        earlier = data.get(key)
                        if earlier is None and gone:
                            earlier = gone.get(key)
                        if earlier is not None and await self._has_read_less(behind(earlier, value, partition)):
                            kept_out += 1
                            continue
                        gone.pop(key, None)
                    data[key] = value
                    key_partition[key] = partition
                count += len(records)
                if records:
                    # The data holds this partition up to here: a restore cut short by a new
                    # rebalance goes on from it.
                    self._applied[partitions[kafka_tp]] = records[-1].offset
            self.restore_remaining = await self._unread(consumer, partitions, todo)
        elapsed = time.monotonic() - started
        log.info(
            "table restored in bulk: table=%s records=%d keys=%d seconds=%.2f records_per_s=%d",
            self.table_name, count, len(data), elapsed, count / elapsed if elapsed else 0,
        )
        if kept_out:
            log.warning("changelog values that had read less than the one before them were kept out, as late writes "
                        "of a worker that had lost its partitions: table=%s values=%d", self.table_name, kept_out)

    async def _has_read_less(self, positions: list[tuple[str, int, int]]) -> bool:
        """Whether the input records at `positions` (topic, partition, offset), which an earlier
        value had read and a later one has not, are records of the partitions now: not when one
        is at or past its partition's end, or the end cannot be asked (the topic was created
        again, or deleted), where the later value goes by its place."""
        if not positions or self.ends_now is None:
            return False
        unknown = {(topic, partition) for topic, partition, _ in positions} - self._input_ends.keys()
        if unknown:
            try:
                # Blocking (as the scorer asks it), and rare: only for values a restore would keep
                # out, while the worker is not ready yet. Asked from a thread instead, kafka-python's
                # client left the restore's `asyncio.run` in the tests waiting after it returned.
                found = self.ends_now({topic for topic, _ in unknown},
                                      {partition for _, partition in unknown})
            except (KafkaPythonError, ServiceError) as exc:
                log.warning("input end offsets not read, table=%s cause=%r", self.table_name, exc)
                found = {}
            for topic, partition in unknown:
                self._input_ends[(topic, partition)] = found.get(partition, {}).get(topic)
        for topic, partition, offset in positions:
            end = self._input_ends[(topic, partition)]
            if end is None or offset >= end:
                return False
        return True

    async def _unread(self, consumer: AIOKafkaConsumer, partitions: dict[TopicPartition, TP],
                      todo: dict[TopicPartition, int]) -> int:
        """Offsets left to read before the end offsets in `todo`. A partition read to its end
        leaves `todo`, held up to there, and is paused."""
        left = 0
        for kafka_tp, end in list(todo.items()):
            position = await consumer.position(kafka_tp)
            if position >= end:
                self._applied[partitions[kafka_tp]] = end - 1
                consumer.pause(kafka_tp)
                del todo[kafka_tp]
            else:
                left += end - position
        return left

    def _check_placed(self, tp: TopicPartition, keys: list[bytes]) -> None:
        """ConfigError when the keys of a partition's records belong on another partition under
        the table's count: they were written under another count, before partitions were added
        to the changelog (and its topics, and LEADSTREAM_PARTITIONS raised to match). Unchecked,
        workers restored such states where no lead of theirs was looked for, and scored 88 leads of
        200 again from nothing (new crossings under new ids), said only by a warning of offsets
        beyond a partition's end. A key is its lead's or account's id, or an account's record of
        its own, `<account id> 0xFF ...` (0xFF is in no UTF-8 text)."""
        ids = [key.split(b"\xff", 1)[0].decode("utf-8", "replace") for key in keys if key]
        partitions = self.table.partitions or self.app.conf.topic_partitions
        if all(partition_for(id_, partitions) == tp.partition for id_ in ids):
            return
        # Any count that divides the one written under places them alike: the most that does is named.
        written = counts_placing(ids, tp.partition, partitions)
        under = f"{written[-1]} partitions (the most that put them all there)" if written else "fewer partitions"
        raise ConfigError(
            f"{tp.topic} has {partitions} partitions, but the states on its partition {tp.partition} were written under "
            f"{under}: under {partitions} (LEADSTREAM_PARTITIONS) leads among them belong on other partitions, so partitions "
            "were added to it, and a worker would find none of their states and score them again from nothing. A count "
            "cannot be changed in place: stop the workers, and score the events again under the new count, with a new "
            "LEADSTREAM_APP_ID (README: Changing the partition count)")

    def _drop_partition(self, partition: int) -> None:
        doomed = [key for key, p in self._key_partition.items() if p == partition]
        for key in doomed:
            self.data.pop(key, None)
            del self._key_partition[key]


class BulkRestoredTable(faust.Table):  # type: ignore[type-arg]
    """A Faust table kept in a `BulkRestoreStore` (raw bytes keys and values only)."""

    @property
    def store(self) -> BulkRestoreStore:
        """The table's local store, as `_new_store` made it (`data` is typed as any store)."""
        return cast(BulkRestoreStore, self.data)

    #: Set by `raw_table` before the store is made.
    behind: Optional[Behind] = None
    ends_now: Optional[EndsNow] = None

    def _new_store(self) -> Any:
        if self.key_type is not bytes or self.value_type is not bytes:
            raise TypeError(f"table {self.name!r}: bulk restore stores raw bytes keys and values only")
        store = BulkRestoreStore(
            "memory://",
            self.app,
            self,
            table_name=self.name,
            key_type=self.key_type,
            key_serializer=self.key_serializer,
            value_serializer=self.value_serializer,
            value_type=self.value_type,
            loop=self.loop,
            options=self.options,
        )
        store.behind, store.ends_now = self.behind, self.ends_now
        return store


def raw_table(app: faust.App, name: str, partitions: int, behind: Optional[Behind] = None,
              ends_now: Optional[EndsNow] = None) -> BulkRestoredTable:
    """A table of raw bytes keys and values, restored in bulk (what `app.Table` would define).
    Its changelog (topics.CHANGELOG_CONFIG) takes records of up to topics.LARGE_RECORD_BYTES (see
    there), and is compacted as the other compacted topics are (topics.COMPACTED): on Kafka's
    defaults a forgotten lead's traits stayed in its earlier records for a week at least (segments
    roll after 7 days, and the active one is never compacted), and a recovery read them all.
    `behind` judges a value read after another for its key, against the input partitions' end
    offsets that `ends_now` gives (see the module doc); without them the latest wins."""
    table = BulkRestoredTable(app, name=name, beacon=app.tables.beacon, partitions=partitions,
                              key_type=bytes, value_type=bytes,
                              extra_topic_configs=CHANGELOG_CONFIG)
    table.behind, table.ends_now = behind, ends_now
    app.tables.add(table)
    return table
