"""Records a topic's log deleted before they were read. Retention (retention.ms, retention.bytes)
and delete-records remove a partition's oldest records whether a group has read them or not;
a consumer then asking for an offset the log no longer has is moved on to the log's first one
(auto_offset_reset="earliest"), which aiokafka says in one INFO line, and a group new to the
topic (a new app id: a rescore) starts there. Either way the records before are never scored,
which nothing else shows: the worker's offset check (streams/offset_sequence.py) expects the
first message at the log's start, as it must (streams/seek_first.py). A running worker fallen
as far behind is moved on alike by its fetch: the hole this leaves in the offsets it is handed
is told the same way (`deleted_unread`) once the offset check finds it before the log's start."""

from __future__ import annotations

import logging
from typing import Any, Mapping

from streams import metrics

log = logging.getLogger("leadstream.worker")

#: (topic, partition) -> the log start up to which this process has told its offsets deleted unread.
_told_up_to: dict[tuple[str, int], int] = {}


def lost_beginning(topic: str, starts: Mapping[int, int]) -> str:
    """What reading `topic` from its beginning misses, `starts` being partition -> the first
    offset its log still has, for the partitions whose log no longer starts at 0."""
    partitions = ", ".join(f"partition {partition} starts at offset {start}" for partition, start in sorted(starts.items()))
    return (f"topic {topic} has lost its beginning (retention or delete-records removed its oldest records): {partitions}, "
            f"{sum(starts.values())} offsets gone in all. Whatever reads it from its beginning (a worker of a new app id, "
            "`leadstream score`, `review` or `send` of a `leadstream history` file) scores each lead from what is left, as "
            "if what was removed never happened: a lead whose earlier events, identifies or traits are gone gets another "
            "score than it was published with, and crossings under new ids, which the connectors deliver as new (README: "
            "Changing the partition count, What is lost)")


def deleted_unread(topic: str, partition: int, offset: int, start: int, reading: str) -> None:
    """Offsets `offset` to `start - 1` of a partition were deleted before the group read them:
    counted (leadstream_offset_anomalies_total{kind="deleted_unread"}, alerted) and logged, the
    same whether a seek found them (`reading` "committed": the group's committed offset, before
    the log's start) or a running worker's reading did (streams/offset_sequence.py, "read_up_to":
    the offset it was to read next, where its fetch was moved on to the log's start).

    Each offset once a process: a rebalance before the group commits past a hole the running
    worker told seeks the partition back to the committed offset, before the same log start, and
    the seek's check found the hole again (and the offsets read meanwhile, now deleted too)."""
    untold = max(offset, _told_up_to.get((topic, partition), offset))
    if untold >= start:
        return
    _told_up_to[(topic, partition)] = start
    metrics.OFFSET_ANOMALIES.labels("deleted_unread").inc(start - untold)
    log.warning("offsets deleted before this group read them, never to be scored: topic=%s partition=%d %s=%d log_start=%d "
                "lost=%d (the group was stopped or behind longer than the topic keeps its records: retention.ms, or "
                "delete-records); reading on from the log start", topic, partition, reading, offset, start, start - untold)


class LogStarts:
    """Checks where the worker's group is sought to after a rebalance against the first offset
    each partition's log still has (streams/seek_first.py asks the broker for it at each seek,
    once a partition and assignment). A committed offset before it: the records in between were
    deleted unread, counted (leadstream_offset_anomalies_total{kind="deleted_unread"}) and
    logged. No committed offset (a new group) and a log that no longer starts at 0: logged. Each partition's finding is told once a process,
    until its committed offset or its log's start moves (a rebalance before the group commits
    again seeks it to the same offsets)."""

    def __init__(self) -> None:
        self._told: set[tuple[Any, int | None, int]] = set()

    def check(self, committed: Mapping[Any, int | None], starts: Mapping[Any, int]) -> None:
        """`committed`: stream partition (`TP`) -> the group's committed offset (None: none),
        `starts`: the first offset each one's log has."""
        new: dict[str, dict[int, int]] = {}
        for tp, offset in committed.items():
            start = starts[tp]
            if start <= (offset or 0) or (tp, offset, start) in self._told:
                continue
            self._told.add((tp, offset, start))
            if offset is None:
                new.setdefault(tp.topic, {})[tp.partition] = start
                continue
            deleted_unread(tp.topic, tp.partition, offset, start, "committed")
        for topic, partitions in sorted(new.items()):
            log.warning("a group new to the topic: %s", lost_beginning(topic, partitions))
