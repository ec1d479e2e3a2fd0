"""Consumer lag as Kafka sees it: end offset minus the group's committed offset, per partition.

Faust exports no lag metric, and its own view of offsets lives in the consumer's memory; asking
the broker measures what an operator means by lag (what a restart would have to re-read).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from streams.kafka_clients import open_client
from streams.settings import Settings

if TYPE_CHECKING:
    from streams.offset_sequence import LookUp  # the worker's metrics are no connector's

#: How long a measure reads a partition's offsets past the committed one, at most: the
#: reading goes on from there at the next measure (a large aborted transaction takes seconds).
LOOKUP_S = 1.0


class LagProbe:
    """Blocking (kafka-python); call it from a thread in async code.

    Opening it raises ServiceError when the broker does not answer within
    LEADSTREAM_KAFKA_CONNECT_TIMEOUT_S; measuring raises kafka-python's KafkaError.
    """

    def __init__(self, settings: Settings, look_up: LookUp | None = None) -> None:
        """`look_up` (streams/transactions.py) tells the offsets a transaction's markers or
        aborted records take from lag: the group never commits past a marker that ends a
        partition, which left a lag of 1 for good (and a stalled-scoring alert) once a
        transactional producer went quiet; and one past a large aborted transaction, 100,012
        offsets of it, on a partition holding nothing to read."""
        self.look_up = look_up
        #: (topic, partition) -> the committed offset last measured, the offset up to which the
        #: log holds no record past it, and whether a record was found there
        self._read: dict[tuple[str, int], tuple[int, int, bool]] = {}
        #: (topic, partition) -> the last stable offset and since when (Unix time) the group has read
        #: all it can of the partition while records past that offset wait (see `open_transaction_s`)
        self._held: dict[tuple[str, int], tuple[int, float]] = {}
        # A broker that stops answering (hung, cut off) is told within this, not kafka-python's
        # 305 s: readiness follows these probes (the worker's, the connectors').
        timeout_ms = settings.kafka_connect_timeout_s * 1000
        self.admin = open_client(settings, KafkaAdminClient, client_id="leadstream-lag", request_timeout_ms=timeout_ms)
        try:
            # No auto-commit asked: else kafka-python warns at each start that it disables it for want of a group.
            self.offsets = open_client(settings, KafkaConsumer, group_id=None, enable_auto_commit=False, client_id="leadstream-lag",
                                       request_timeout_ms=timeout_ms)
        except BaseException:
            self.admin.close()  # callers retry every few seconds: each failed attempt would leak a client
            raise
        try:
            # Its end offsets are the last stable ones: where an open transaction's first record is.
            self.stable = open_client(settings, KafkaConsumer, group_id=None, enable_auto_commit=False, client_id="leadstream-lag",
                                      request_timeout_ms=timeout_ms, isolation_level="read_committed")
        except BaseException:
            self.admin.close()
            self.offsets.close()
            raise

    def ends(self, topic: str) -> dict[TopicPartition, int]:
        """The end offset of each partition of `topic` (none when it does not exist)."""
        partitions = self.offsets.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        return self.offsets.end_offsets(tps) if tps else {}

    def lag(self, group_id: str, topic: str) -> dict[int, int]:
        ends = self.ends(topic)
        if not ends:
            return {}
        committed = self.admin.list_group_offsets({group_id: list(ends)}).get(group_id, {})
        # Offsets the log deleted (retention, delete-records) are read by no one: a group with no
        # committed offset reads from the log's start (auto_offset_reset="earliest"), and one
        # committed before it is moved on to it. Counted from the committed offset or 0, they were
        # a lag no one could work off wherever no look-up took them out (the connectors'): dead
        # letters the topic's retention took before any replay kept leadstream_sink_dlq_depth,
        # and LeadstreamDeadLettersWaiting, up for good.
        starts = self.offsets.beginning_offsets(list(ends))
        stable = self.stable.end_offsets(list(ends))
        result = {}
        for tp, end in ends.items():
            meta = committed.get(tp)
            done = max(meta.offset if meta is not None and meta.offset >= 0 else 0, starts[tp])
            result[tp.partition] = self._unread(topic, tp.partition, done, end)
            self._hold(topic, tp.partition, stable[tp], end, result[tp.partition])
        return result

    def open_transaction_s(self, topic: str, partition: int, now_s: float) -> float | None:
        """How long the group has read all it can of the partition, at the last `lag` measure,
        while records wait behind the first record of a transaction still open: a consumer that
        reads committed records reads none past it, plain ones included, until the transaction
        is committed or aborted (by its producer, or by the broker after its timeout). None when
        none waits so. The worker is not stuck then, the producer is: told apart from a stalled stage."""
        held = self._held.get((topic, partition))
        return max(0.0, now_s - held[1]) if held else None

    def _hold(self, topic: str, partition: int, stable: int, end: int, unread: int) -> None:
        """Held when all the lag is past the last stable offset: nothing before it left to read
        (`_unread` read through the markers up to it), and the rest behind an open transaction."""
        key = (topic, partition)
        if stable >= end or unread != end - stable:
            self._held.pop(key, None)
        elif key not in self._held or self._held[key][0] != stable:
            self._held[key] = (stable, time.time())

    def _unread(self, topic: str, partition: int, committed: int, end: int) -> int:
        """The offsets between the committed one and the end, less those the log shows to hold
        no record the group reads. Looked up only while the committed offset stands still (a
        group at work moves it, and a lookup reads the log), from where the last lookup got to,
        for LOOKUP_S each measure, until a record is found or the end reached."""
        if self.look_up is None or end <= committed:
            return max(0, end - committed)
        key = (topic, partition)
        last = self._read.get(key)
        if last is None or last[0] != committed:
            self._read[key] = (committed, committed, False)
            return end - committed
        _, empty_to, holds = last
        if not holds and empty_to < end:
            answers, reached = self.look_up(topic, partition, [(empty_to, end)], LOOKUP_S)
            holds = answers == [True]
            empty_to = end if answers == [False] else reached
            self._read[key] = (committed, empty_to, holds)
        return end - committed if holds else end - empty_to

    def wait_caught_up(self, group_id: str, topics: list[str], timeout_s: float, poll_s: float = 0.1) -> None:
        """Until the group has committed everything in `topics` (it commits only what it has
        processed, so its outputs are in Kafka too); TimeoutError after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            lags = [self.lag(group_id, topic) for topic in topics]
            if all(lag and not any(lag.values()) for lag in lags):
                return
            time.sleep(poll_s)
        raise TimeoutError(f"group {group_id} did not catch up on {', '.join(topics)} within {timeout_s:.0f} s")

    def close(self) -> None:
        self.admin.close()
        self.offsets.close()
        self.stable.close()
