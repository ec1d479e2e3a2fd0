"""The check that a stage is handed each partition's messages in sequence (streams/scorer.py,
streams/rollup.py)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Mapping, Sequence

from streams import metrics
from streams.errors import SkippedOffsets
from streams.log_start import deleted_unread
from streams.stage import Consumed
from streams.transactions import Reading

log = logging.getLogger("leadstream.worker")


#: (topic, partition, holes, within_s) -> whether the first holes hold records the worker reads,
#: and how far the reading got in the next one (streams/transactions.py, `LogReader.look_up`)
LookUp = Callable[[str, int, Sequence[tuple[int, int]], float], Reading]
#: (topic, partition) -> the first offset the partition's log still has; None when the broker
#: did not say (streams/transactions.py, `LogReader.log_start`)
LogStart = Callable[[str, int], int | None]
#: How long a lookup reads a partition's holes before the next partition's turn, or before the
#: batch waiting on a hole at the head of an assignment is told how far it got.
LOOKUP_S = 2.0
#: Holes further on waiting to be looked up, at most: more are left unchecked, with a warning
#: (the lookups read the log as fast as the worker does, so only a log that cannot be read
#: gets them this far behind).
MAX_UNCHECKED = 1_000_000


class OffsetSequence:
    """Checks that each partition's messages arrive in sequence, once: a skipped offset is input
    a stage never processed (events or identity records never scored, member updates never
    rolled up), which no later check would notice (streams/seek_first.py closes the ways Faust
    was seen to do it). Each stage checks its own topics; only topics without compaction are
    checked, and a hole is looked up in the log before it is called a gap: a transaction's
    markers and aborted records are holes of the log's own (streams/transactions.py).

    A hole at the head of an assignment (the first message of a partition after its seek is
    beyond the offset sought) is sought back to once, before the stages see it
    (streams/seek_first.py, `FirstMessages`). One that comes again, and holds records the
    worker reads (looked up before the batch is processed, for as long as reading it takes:
    `check_head`), stops the worker
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
    (streams/seek_first.py). A hole further on is looked up in the log apart from the batches
    (`check_holes`, from a timer of its own), then counted and logged. The part of a hole, at
    the head or further on, before the first offset the log still has was deleted before the
    worker read it (`_past_log_start`): told as deleted unread (streams/log_start.py), not looked up."""

    def __init__(self, topics: set[str], look_up: LookUp | None = None, log_start: LogStart | None = None) -> None:
        """`look_up(topic, partition, holes, within_s)` tells whether holes in a partition's
        offsets hold records the worker reads (streams/transactions.py): a hole that holds none
        is the log's own (a transaction's markers, aborted records), not a gap. `log_start`
        tells where the partition's log begins: a hole before it was deleted unread
        (`_past_log_start`); without it, holes are only looked up."""
        self.topics = topics
        self.look_up = look_up
        self.log_start = log_start
        self._next: dict[tuple[str, int], int] = {}
        self._sought: set[tuple[str, int]] = set()  # partitions sought and not yet handed a message
        #: Holes at the head of an assignment, to be looked up before the batch is processed (`check_head`)
        self.at_head: list[tuple[str, int, int, int]] = []
        #: Holes further on than the head, found by `observe`, to be looked up in the log (`check_holes`)
        self.unchecked: list[tuple[str, int, int, int]] = []
        #: Holes `check_holes` took and has not read through yet, per partition, in order (its thread's alone)
        self._reading: dict[tuple[str, int], list[tuple[int, int]]] = {}
        self._being_read = 0  # holes in `_reading`
        self._left_unchecked = False  # told once

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
                        self._at_head(message.topic, message.partition, expected, message.offset)
                    elif self.look_up is None:
                        self._gap(message.topic, message.partition, expected, message.offset)
                    elif len(self.unchecked) + self._being_read < MAX_UNCHECKED:
                        self.unchecked.append((message.topic, message.partition, expected, message.offset))
                    elif not self._left_unchecked:
                        self._left_unchecked = True
                        log.warning("holes in the offsets handed over left unchecked, neither gaps nor log holes: %d wait to "
                                    "be looked up in the log, which is not read as fast as they come (see the warnings "
                                    "before)", MAX_UNCHECKED)
                else:
                    metrics.OFFSET_ANOMALIES.labels("repeat").inc()
            if sought:
                sought.discard(key)
            following[key] = max(message.offset + 1, expected or 0)

    def _at_head(self, topic: str, partition: int, start: int, end: int) -> None:
        if self.look_up is not None:
            self.at_head.append((topic, partition, start, end))  # looked up before the batch is processed
            return
        self._skipped(topic, partition, start, end)

    @staticmethod
    def _skipped(topic: str, partition: int, start: int, end: int) -> None:
        metrics.OFFSET_ANOMALIES.labels("gap").inc(end - start)
        raise SkippedOffsets(f"topic {topic} partition {partition}: offsets {start} to {end - 1}, from the one it was "
                             f"sought to, were never handed to this worker, which was handed {end} first")

    async def check_head(self) -> None:
        """Looks the holes `observe` found at the head of an assignment up in the log, from a
        thread, for as long as the reading takes (the batch waits on it; the event loop does
        not): SkippedOffsets if one holds records. Only a hole read through is called one or the
        other: one read in part is read on from there, and a log that cannot be read is read
        again a second later."""
        assert self.look_up is not None  # `observe` finds holes at the head for a lookup only
        holes, self.at_head = self.at_head, []
        for topic, partition, start, end in holes:
            while (kept := await asyncio.to_thread(self._past_log_start, topic, partition, [(start, end)])) is None:
                await asyncio.sleep(1.0)  # the broker did not say where the log starts: asked again
            if not kept:
                continue  # deleted unread, all of it: told, and no gap the worker can read again
            start = kept[0][0]
            at = start
            while True:
                answers, reached = await asyncio.to_thread(self.look_up, topic, partition, [(at, end)], LOOKUP_S)
                if answers:
                    break
                if reached == at:  # nothing read: the broker did not answer, or an open transaction holds the log back
                    await asyncio.sleep(1.0)
                at = reached
            if answers[0]:
                self._skipped(topic, partition, start, end)
            self._log_hole(topic, partition, start, end)

    def next_offset(self, topic: str, partition: int) -> int | None:
        """The offset of the next message of the partition the stage is to be handed (None
        where it is not known yet): those before it were read."""
        return self._next.get((topic, partition))

    def holes_waiting(self) -> bool:
        """Whether holes further on wait to be looked up (`check_holes`)."""
        return bool(self.unchecked) or self._being_read > 0

    def check_holes(self) -> None:
        """Looks the holes found further on up in the log: each is counted and logged as a gap,
        unless it is the log's own. A partition's holes are read through in one go (a producer
        committing a transaction per message leaves a marker after each), for `LOOKUP_S` each
        round; those not read through yet wait for the next round. Blocking: run it in a
        thread, one at a time."""
        assert self.look_up is not None
        found, self.unchecked = self.unchecked, []
        for topic, partition, start, end in found:
            self._reading.setdefault((topic, partition), []).append((start, end))
        for (topic, partition), waiting in list(self._reading.items()):
            left = self._past_log_start(topic, partition, waiting)
            if left is None:
                continue  # where the log starts is not known: looked up at the next round
            holes, later = _apart(left)
            if not holes:
                del self._reading[(topic, partition)]
                continue
            answers, reached = self.look_up(topic, partition, holes, LOOKUP_S)
            for (start, end), holds in zip(holes, answers):
                if holds:
                    self._gap(topic, partition, start, end)
                else:
                    self._log_hole(topic, partition, start, end)
            rest = holes[len(answers):]
            if rest:
                start, end = rest[0]
                self._log_hole(topic, partition, start, reached)  # read through as far as that
                rest[0] = (reached, end)
            if rest or later:
                self._reading[(topic, partition)] = rest + later
            else:
                del self._reading[(topic, partition)]
        self._being_read = sum(map(len, self._reading.values()))
        if self._being_read < MAX_UNCHECKED // 2:
            self._left_unchecked = False  # told again, should they pile up again

    def _past_log_start(self, topic: str, partition: int, holes: list[tuple[int, int]]) -> list[tuple[int, int]] | None:
        """The parts of a partition's `holes` the log still has. Those before its first offset
        were deleted (retention, delete-records) before the worker read them: its fetch asked for
        an offset the log no longer had and was moved on to the log's start (auto_offset_reset),
        and so was the lookup's, which found no record there and called them the log's own. They
        are told as a seek finding them would tell them (streams/log_start.py), the worker reading
        on. None when the broker did not say where the log starts: the holes wait. Blocking."""
        if self.log_start is None or not holes:
            return holes
        first = self.log_start(topic, partition)
        if first is None:
            return None
        told_to = 0  # holes of two readings may overlap: each offset told once
        for start, end in sorted(holes):
            if max(start, told_to) < min(end, first):
                deleted_unread(topic, partition, max(start, told_to), min(end, first), "read_up_to")
                told_to = min(end, first)
        return [(max(start, first), end) for start, end in holes if end > first]

    @staticmethod
    def _log_hole(topic: str, partition: int, start: int, end: int) -> None:
        if end > start:
            metrics.OFFSET_ANOMALIES.labels("log_hole").inc(end - start)
            log.debug("offsets with no committed record: topic=%s partition=%d offsets=%d..%d", topic, partition, start, end - 1)

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


def _apart(holes: list[tuple[int, int]]) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """The holes in order, apart from each other, and those overlapping one of them, for a later
    reading: a partition read again after a rebalance shows its holes again, and two holes of
    different readings, merged, may span records one of them was handed."""
    ordered: list[tuple[int, int]] = []
    later: list[tuple[int, int]] = []
    for hole in sorted(set(holes)):
        (ordered if not ordered or hole[0] >= ordered[-1][1] else later).append(hole)
    return ordered, later
