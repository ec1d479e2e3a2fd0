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
log's own (markers, aborted records) and is gone past, counted as `log_hole`. A hole is called
one or the other only once it was read through, however long that takes (an aborted
transaction may hold gigabytes): a lookup reads for a while and says how far it got.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Sequence

from streams.fetcher import fetcher_of
from streams.kafka_clients import open_client
from streams.log_throttle import OutOfFiles
from streams.settings import Settings

log = logging.getLogger("leadstream.worker")

#: aiokafka's code for the isolation level `read_committed` (aiokafka.consumer.fetcher).
READ_COMMITTED = 1
#: A lookup's answer: whether each of the first holes asked about holds a record the worker
#: reads, and the offset the reading got to in the next one (`LogReader.look_up`).
Reading = tuple[list[bool], int]
#: A hole this many offsets or fewer past where the reading is is read on to rather than sought:
#: a seek drops what was fetched, and the records between holes are few when markers are many.
SEEK_OVER = 10_000


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
    """Tells whether holes in a partition's offsets hold records the worker reads, committed
    ones, from a consumer of its own (blocking: kafka-python). Thread-safe.

    A lookup reads the log: the broker answers no question such as "any committed record
    between these offsets" without sending the records, aborted ones included (a fetch's list
    of aborted transactions comes with their records), and an aborted transaction may hold
    gigabytes. So a lookup reads for a while (`within_s`) and says how far it got: the caller
    asks again from there, and a hole is never called anything before it was read to its end
    (a 5 s timeout that took a hole not read through for lost records stopped the worker at
    every start after 100 MB of aborted records, and counted them as a gap while it ran)."""

    def __init__(self, settings: Settings, timeout_s: float = 5.0) -> None:
        self.settings = settings
        self.timeout_s = timeout_s  # each request to the broker's
        self._consumer: Any = None
        self._lock = threading.Lock()
        # Each round (a second apart) fails alike until files close.
        self._out_of_files = OutOfFiles(log, "looking holes in the offsets up in the log")

    def look_up(self, topic: str, partition: int, holes: Sequence[tuple[int, int]], within_s: float) -> Reading:
        """Reads the log through the `holes` (each `(start, end)`: offsets `start` to `end - 1`;
        in order, apart) for about `within_s`: whether each of the first ones holds a record the
        worker reads, as far as the reading got, and the offset it got to in the next one (its
        start when none was read: the broker could not be read, or a transaction still open holds
        the reading back). The holes may be near each other, with the records the worker was
        handed between them: one reading goes through them all, as a transactional producer
        committing each message leaves a marker after each."""
        from kafka import TopicPartition
        from kafka.errors import KafkaError

        from streams.errors import ServiceError

        answers: list[bool] = []
        reached = holes[0][0] if holes else 0
        with self._lock:
            try:
                consumer = self._consumer = self._consumer or self._open()
                tp = TopicPartition(topic, partition)
                if consumer.assignment() != {tp}:
                    consumer.assign([tp])
                position: int | None = None  # where the consumer reads from: sought to each hole far from the last
                deadline = time.monotonic() + within_s
                while len(answers) < len(holes) and time.monotonic() < deadline:
                    start = holes[len(answers)][0]
                    if position is None or position < start - SEEK_OVER:
                        position = start
                        consumer.seek(tp, start)
                    for record in consumer.poll(timeout_ms=200).get(tp, []):
                        # Holes passed with no record in them, then the one this record is in, if any.
                        while len(answers) < len(holes) and record.offset >= holes[len(answers)][1]:
                            answers.append(False)
                        if len(answers) < len(holes) and record.offset >= holes[len(answers)][0]:
                            answers.append(True)
                    position = consumer.position(tp)
                    while len(answers) < len(holes) and position >= holes[len(answers)][1]:  # gone past markers only
                        answers.append(False)
                    if len(answers) < len(holes):
                        reached = max(reached, min(position, holes[len(answers)][1]))
            except (KafkaError, ServiceError, OSError) as exc:
                self._not_read(topic, partition, exc)
        if len(answers) < len(holes):
            reached = max(reached, holes[len(answers)][0])
        return answers, reached

    def log_start(self, topic: str, partition: int) -> int | None:
        """The first offset the partition's log still has (retention and delete-records move it
        on); None when the broker did not say."""
        from kafka import TopicPartition
        from kafka.errors import KafkaError

        from streams.errors import ServiceError

        tp = TopicPartition(topic, partition)
        with self._lock:
            try:
                self._consumer = self._consumer or self._open()
                return int(self._consumer.beginning_offsets([tp])[tp])
            except (KafkaError, ServiceError, OSError) as exc:
                self._not_read(topic, partition, exc)
                return None

    def _not_read(self, topic: str, partition: int, exc: BaseException) -> None:
        if not self._out_of_files.said(exc):
            log.warning("offsets of topic %s partition %d not looked up in the log, to be looked up again: cause=%r",
                        topic, partition, exc)

    def _open(self) -> Any:
        from kafka import KafkaConsumer

        timeout_ms = int(self.timeout_s * 1000)
        return open_client(self.settings, KafkaConsumer, group_id=None, enable_auto_commit=False,
                           isolation_level="read_committed", auto_offset_reset="earliest",
                           request_timeout_ms=timeout_ms, client_id="leadstream-log-reader",
                           # kafka-python checks CRCs in Python: 85% of a lookup's time (80 MB of
                           # aborted records read in 8 s, 1 s without). The worker's consumer
                           # checks those of the records it scores; these are only looked at.
                           check_crcs=False)

    def close(self) -> None:
        with self._lock:
            if self._consumer is not None:
                self._consumer.close()
                self._consumer = None
