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
    from streams.offset_sequence import HoldsRecords  # the worker's metrics are no connector's


class LagProbe:
    """Blocking (kafka-python); call it from a thread in async code.

    Opening it raises ServiceError when the broker does not answer within
    LEADSTREAM_KAFKA_CONNECT_TIMEOUT_S; measuring raises kafka-python's KafkaError.
    """

    def __init__(self, settings: Settings, holds_records: HoldsRecords | None = None) -> None:
        """`holds_records` (streams/transactions.py) tells the offsets a transaction's markers or
        aborted records take from lag: the group never commits past a marker that ends a
        partition, which left a lag of 1 for good (and a stalled-scoring alert) once a
        transactional producer went quiet."""
        self.holds_records = holds_records
        self._seen: dict[tuple[str, int], tuple[int, int]] = {}  # (topic, partition) -> (committed, end) last measured
        self._holding_none: set[tuple[str, int, int, int]] = set()  # (topic, partition, committed, end) looked up
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
        result = {}
        for tp, end in ends.items():
            meta = committed.get(tp)
            done = meta.offset if meta is not None and meta.offset >= 0 else 0
            result[tp.partition] = 0 if end > done and self._holds_none(topic, tp.partition, done, end) else max(0, end - done)
        return result

    def _holds_none(self, topic: str, partition: int, committed: int, end: int) -> bool:
        """Whether the offsets between the committed one and the end hold no record the group
        reads. Looked up only when they stood still since the last measure (a group at work
        moves them, and a lookup reads the log), once per such pair."""
        if self.holds_records is None:
            return False
        key = (topic, partition, committed, end)
        if key in self._holding_none:
            return True
        if self._seen.get((topic, partition)) != (committed, end):
            self._seen[(topic, partition)] = (committed, end)
            return False
        if self.holds_records(topic, partition, committed, end):
            return False
        if len(self._holding_none) > 100_000:  # pairs of long ago
            self._holding_none.clear()
        self._holding_none.add(key)
        return True

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
