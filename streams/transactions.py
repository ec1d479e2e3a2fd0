"""Input from transactional producers: committed records only, and the log's own holes.

A producer with transactions (Kafka Streams or Flink writing with exactly-once, a CDC tool)
writes a commit or abort marker after each transaction, and may write records it then aborts.
Faust reads uncommitted records: aborted events were scored and their crossings reached the
CRMs. And a marker takes an offset no consumer is handed, which the worker's check that no
offset is skipped (streams/offset_sequence.py) took for lost events: at the head of an
assignment, a worker that stopped itself at every start.

So the worker's consumer reads committed records only (`read_committed`), and a hole in a
partition's offsets is looked up in the log (`LogReader`, which reads as the worker does)
before it is called a gap: where the log holds no record the worker reads, the hole is the
log's own (markers, aborted records) and is gone past, counted as `log_hole`.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from streams.fetcher import fetcher_of
from streams.kafka_clients import open_client
from streams.settings import Settings

log = logging.getLogger("leadstream.worker")

#: aiokafka's code for the isolation level `read_committed` (aiokafka.consumer.fetcher).
READ_COMMITTED = 1


def read_committed(consumer: Any) -> bool:
    """Make this Faust consumer's aiokafka consumer read committed records only, from its next
    fetch on (Faust asks for committed reads only when it runs transactions itself). False, with
    a warning, when the consumer is not built as faust-streaming 0.15 and aiokafka 0.14 build it."""
    fetcher = fetcher_of(consumer, "it reads uncommitted records: aborted transactions' events would be scored", "_isolation_level")
    if fetcher is None:
        return False
    fetcher._isolation_level = READ_COMMITTED
    return True


class LogReader:
    """Tells whether a partition's offsets hold records the worker reads, committed ones, from a
    consumer of its own (blocking: kafka-python). Thread-safe: the stages ask on the event loop
    at the head of an assignment, and from a thread for holes further on."""

    def __init__(self, settings: Settings, timeout_s: float = 5.0) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self._consumer: Any = None
        self._lock = threading.Lock()

    def holds_records(self, topic: str, partition: int, start: int, end: int) -> bool:
        """Whether offsets `start` to `end - 1` hold a record; True also when the log could not be
        read within the timeout (a hole not shown to be the log's own is taken for lost records)."""
        from kafka import TopicPartition
        from kafka.errors import KafkaError

        from streams.errors import ServiceError

        with self._lock:
            try:
                consumer = self._consumer = self._consumer or self._open()
                tp = TopicPartition(topic, partition)
                consumer.assign([tp])
                consumer.seek(tp, start)
                deadline = time.monotonic() + self.timeout_s
                while time.monotonic() < deadline:
                    records = consumer.poll(timeout_ms=200).get(tp, [])
                    if records:
                        return bool(records[0].offset < end)
                    if consumer.position(tp) >= end:  # gone past markers only
                        return False
            except (KafkaError, ServiceError, OSError) as exc:
                log.warning("offsets %d..%d of topic %s partition %d not looked up in the log: cause=%r",
                            start, end - 1, topic, partition, exc)
        return True

    def _open(self) -> Any:
        from kafka import KafkaConsumer

        timeout_ms = int(self.timeout_s * 1000)
        return open_client(self.settings, KafkaConsumer, group_id=None, enable_auto_commit=False,
                           isolation_level="read_committed", auto_offset_reset="earliest",
                           request_timeout_ms=timeout_ms, client_id="leadstream-log-reader")

    def close(self) -> None:
        with self._lock:
            if self._consumer is not None:
                self._consumer.close()
                self._consumer = None
