"""How far the decay sweep may bring each partition's leads: to the time its events were read up
to, not to the worker's clock alone.

A sweep values a lead at the time it brings it to (half-life decay) and publishes the crossings
due by then; an event of that lead read afterwards, timed before that, is behind the decayed
state: its points are discounted from there and the crossings differ from those of the events in
time order (scoring/MODELS.md, "Out-of-order events"). Swept at the wall clock, a worker fed a
backlog of days-old events in parts (a history sent again, a rescore under a new app id that
takes longer than a sweep interval) decayed every lead to today between the parts, and scored
the next part behind it: 126 crossings of 372 missing and 75 others, under other ids, than
`leadstream score` gives for the same file, or the worker given it in one go.

So a partition's sweep clock is the newest event time read from the events topic on it, run on
by the time since the Kafka timestamp of the newest record read there (when it was appended),
never past the worker's clock. That time is the wall clock's, which Kafka's timestamps are on and
LEADSTREAM_CLOCK_OFFSET_MS does not move: run on by the worker's clock, a backlog's was run on by
the offset besides, and a worker 40 days ahead decayed a part's leads 40 days on seconds after
reading it (9,557 lead crossings against 7,616 of `leadstream score`). A worker that keeps up
reads events moments after they happen, so that is its clock less those moments, and idle leads
decay on time; a backlog of old events keeps its own time, running on only for the pauses
between its parts. While a partition's records are read long after they were appended (a worker
catching up after downtime), and after it until it is quiet, its clock is the newest event time
alone: the time since the append says nothing of the events still to read, nor, once caught up,
of a pause, where a producer stamped its records with the events' own times (Kafka Streams,
Flink and Kafka Connect may; a backlog then looks appended days ago: run on from that once
caught up for HANDED_WITHIN_MS, its leads were swept to the present between two parts 15 s
apart). A partition with nothing read for QUIET_MS is swept to the worker's clock: a backlog's
decay then comes to the present, as `leadstream score --at` brings it, and so does a quiet
partition's whose newest event was old when appended.

A partition not read since it was assigned (at start, or by a rebalance, which takes every
partition's clock away) is not swept before QUIET_MS from the assignment either. Its previous
owner read it last before that, so a takeover during a backlog (a worker joining, one stopped,
killed or frozen) keeps the guarantee below; swept once the consumer had had the time to hand
what waited there (HANDED_WITHIN_MS), a worker joining 10 s into a 27 s pause between two parts
decayed the moved partitions' leads to the present, and the next part came behind them. Its
leads' restored states do not tell how far it was read: a merged lead carries the times of
events read on another partition.

So the guarantee: parts of a backlog sent less than QUIET_MS apart, each timed after the newest
event of the part before by more than the pause between them (events in time order), are
crossed as in one go.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

#: How long after its append a worker that keeps up hands a record to the stages, at most: a
#: fetch waits 500 ms, a batch 20 ms, a batch before it seconds at worst.
HANDED_WITHIN_MS = 10_000
#: A partition given nothing to read for this long (since its last read, or its assignment) is
#: swept to the worker's clock: the parts of a backlog sent further apart than this are not taken
#: for one.
QUIET_MS = 30_000


@dataclass(slots=True)
class _Read:
    #: The newest event time read from the events topic on the partition.
    event_ms: int
    #: The newest Kafka timestamp read there (0: the records carried none).
    appended_ms: int
    #: When a batch last read it, and whether that batch's newest record was appended more than
    #: HANDED_WITHIN_MS before: the consumer was behind (wall clock, as Kafka's timestamps are).
    read_wall_ms: int
    behind: bool


class SweepClocks:
    """Per owned partition of the events topic: how far a sweep may bring its leads (`until_ms`)."""

    def __init__(self) -> None:
        self._read: dict[int, _Read] = {}
        #: Partitions assigned and not read since: the wall clock at the assignment.
        self._assigned: dict[int, int] = {}

    def read(self, newest: Mapping[int, Sequence[int]], wall_ms: int) -> None:
        """A batch read events of these partitions: partition -> (newest event time, newest
        Kafka timestamp) among them."""
        for partition, (event_ms, appended_ms) in newest.items():
            self._assigned.pop(partition, None)
            was = self._read.get(partition)
            if was is not None:
                event_ms, appended_ms = max(event_ms, was.event_ms), max(appended_ms, was.appended_ms)
            behind = 0 < appended_ms < wall_ms - HANDED_WITHIN_MS
            self._read[partition] = _Read(event_ms, appended_ms, wall_ms, behind)

    def assigned(self, partitions: Iterable[int], wall_ms: int) -> None:
        """These partitions are owned: those not read since are not swept before QUIET_MS, as if
        read now (the previous owner's last read was earlier)."""
        for partition in partitions:
            if partition not in self._read:
                self._assigned.setdefault(partition, wall_ms)

    def forget(self, partitions: Iterable[int]) -> None:
        """Taken away: a new assignment starts them again."""
        for partition in partitions:
            self._read.pop(partition, None)
            self._assigned.pop(partition, None)

    def event_ms(self, partition: int, batch: Mapping[int, Sequence[int]]) -> int:
        """The newest event time read from the events topic on the partition, by a batch before
        (since its assignment) or by `batch` (partition -> (newest event time, newest Kafka
        timestamp), not yet `read`); 0 when none has been."""
        read, newest = self._read.get(partition), batch.get(partition)
        return max(read.event_ms if read is not None else 0, newest[0] if newest is not None else 0)

    def until_ms(self, partition: int, now_ms: int, wall_ms: int) -> int | None:
        """How far a sweep at the worker's `now_ms` (and the wall clock's `wall_ms`, which Kafka's
        timestamps are on; they differ by LEADSTREAM_CLOCK_OFFSET_MS) may bring the partition's
        leads; None: not at all yet."""
        read = self._read.get(partition)
        if read is None:
            since = self._assigned.get(partition)
            return None if since is not None and wall_ms - since < QUIET_MS else now_ms
        quiet_ms = wall_ms - read.read_wall_ms
        if quiet_ms >= QUIET_MS or not read.appended_ms:  # no timestamps: nothing to run the clock on from
            return now_ms
        if read.behind:
            # Catching up: more may wait, as old as the last read. Caught up, its records'
            # timestamps still do not tell how long the partition's producer has been silent:
            # one that stamps them with the events' times (Kafka Streams, Flink, Kafka Connect
            # may) makes a backlog look appended days ago, and run on from that 10 s into a pause
            # between two of its parts, the clock brought their leads to the present.
            return min(read.event_ms, now_ms)
        return min(now_ms, read.event_ms + max(0, wall_ms - read.appended_ms))
