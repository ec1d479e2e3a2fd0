"""The check that a stage is handed each partition's messages in sequence (streams/scorer.py,
streams/rollup.py)."""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping, Sequence

from streams import metrics
from streams.errors import SkippedOffsets
from streams.stage import Consumed

log = logging.getLogger("leadstream.worker")


#: (topic, partition, start, end) -> whether the log holds records the worker reads in [start, end)
HoldsRecords = Callable[[str, int, int, int], bool]
#: Holes further on waiting to be looked up; more are counted as gaps at once (a log read each
#: would fall behind a producer that commits a transaction per message).
MAX_UNCHECKED = 10_000


class OffsetSequence:
    """Checks that each partition's messages arrive in sequence, once: a skipped offset is input
    a stage never processed (events or identity records never scored, member updates never
    rolled up), which no later check would notice (streams/seek_first.py closes the ways Faust
    was seen to do it). Each stage checks its own topics; only topics without compaction are
    checked, and a hole is looked up in the log before it is called a gap: a transaction's
    markers and aborted records are holes of the log's own (streams/transactions.py).

    A hole at the head of an assignment (the first message of a partition after its seek is
    beyond the offset sought) is sought back to once, before the stages see it
    (streams/seek_first.py, `FirstMessages`). One that comes again stops the worker
    (SkippedOffsets, raised before the batch is processed or acknowledged): Faust would commit
    past it, and the messages in it would be lost; a new worker reads them again from the
    committed offset. Chaos runs under load saw such holes after a rebalance: 84 events
    messages (60 leads scored without some of their events), and, once the events topic was
    checked, a hole in an events partition that stopped the worker while 117 accounts were
    rolled up without some member updates (most likely a hole in the account-updates topic,
    unchecked then). Later runs' logs show the likely way: a worker keeps a partition across two
    rebalances a second apart, is sought back to the committed offset, and is handed first a
    record fetched before the second one. Faust (0.15.3) stamps a fetched record with the
    consumer generation current when it converts it, after the fetch returns
    (`Consumer.getmany`, `_to_message`), so a fetch that spans a rebalance passes its streams'
    check of generations (which fetch it is was not found in Faust's or aiokafka's code: hence
    the seek back, whatever the way). A second way a chaos run showed, a recovery of the
    generation before that ends during a rebalance and resumes the flow, is closed
    (streams/seek_first.py). A hole further on is counted and logged."""

    def __init__(self, topics: set[str], holds_records: HoldsRecords | None = None) -> None:
        """`holds_records(topic, partition, start, end)` tells whether the log holds records the
        worker reads at offsets `start` to `end - 1` (streams/transactions.py): a hole where it
        holds none is the log's own (a transaction's markers, aborted records), not a gap."""
        self.topics = topics
        self.holds_records = holds_records
        self._next: dict[tuple[str, int], int] = {}
        self._sought: set[tuple[str, int]] = set()  # partitions sought and not yet handed a message
        #: Holes further on than the head, to be looked up in the log (`check_holes`), at most MAX_UNCHECKED
        self.unchecked: list[tuple[str, int, int, int]] = []

    def observe(self, batch: Sequence[Consumed]) -> None:
        following, sought = self._next, self._sought
        for message in batch:
            if message.topic not in self.topics:
                continue
            key = (message.topic, message.partition)
            expected = following.get(key)
            if expected is not None and message.offset != expected:
                if message.offset > expected:
                    if key in sought:
                        # Looked up now (blocking, once an assignment at most): the batch waits on it.
                        if not self._log_hole(message.topic, message.partition, expected, message.offset):
                            metrics.OFFSET_ANOMALIES.labels("gap").inc(message.offset - expected)
                            raise SkippedOffsets(f"topic {message.topic} partition {message.partition}: offsets {expected} "
                                                 f"to {message.offset - 1}, from the one it was sought to, were never handed "
                                                 f"to this worker, which was handed {message.offset} first")
                    elif self.holds_records is not None and len(self.unchecked) < MAX_UNCHECKED:
                        self.unchecked.append((message.topic, message.partition, expected, message.offset))
                    else:
                        self._gap(message.topic, message.partition, expected, message.offset)
                else:
                    metrics.OFFSET_ANOMALIES.labels("repeat").inc()
            if sought:
                sought.discard(key)
            following[key] = max(message.offset + 1, expected or 0)

    def next_offset(self, topic: str, partition: int) -> int | None:
        """The offset of the next message of the partition the stage is to be handed (None
        where it is not known yet): those before it were read."""
        return self._next.get((topic, partition))

    def check_holes(self) -> None:
        """Looks the holes found further on up in the log: each is counted and logged as a gap,
        unless it is the log's own. Blocking: run it in a thread."""
        holes, self.unchecked = self.unchecked, []
        for topic, partition, start, end in holes:
            if not self._log_hole(topic, partition, start, end):
                self._gap(topic, partition, start, end)

    def _log_hole(self, topic: str, partition: int, start: int, end: int) -> bool:
        if self.holds_records is None or self.holds_records(topic, partition, start, end):
            return False
        metrics.OFFSET_ANOMALIES.labels("log_hole").inc(end - start)
        log.debug("offsets with no committed record: topic=%s partition=%d offsets=%d..%d", topic, partition, start, end - 1)
        return True

    @staticmethod
    def _gap(topic: str, partition: int, start: int, end: int) -> None:
        metrics.OFFSET_ANOMALIES.labels("gap").inc(end - start)
        log.warning("offsets skipped: topic=%s partition=%d missing=%d..%d", topic, partition, start, end - 1)

    def reset(self) -> None:
        """After a rebalance: a partition may come back from another worker further on."""
        self._next.clear()
        self._sought.clear()

    def seed(self, sought: Mapping[Any, int]) -> None:
        """The offsets the stream partitions (`TP`s) were sought to after a rebalance (the
        committed one, or the first one the log still has): the first message of each must be
        there, or the messages before it were never scored (and Faust may commit past them:
        streams/seek_first.py)."""
        for tp, offset in sought.items():
            if tp.topic in self.topics:
                self._next[(tp.topic, tp.partition)] = offset
                self._sought.add((tp.topic, tp.partition))
