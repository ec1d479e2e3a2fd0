"""The stages' check that each partition's messages arrive in sequence (streams/offset_sequence.py)."""

from __future__ import annotations

import asyncio
from typing import Sequence

import pytest
from faust.types import TP
from prometheus_client import REGISTRY

from scoring import Engine, MemberScore
from streams import lead_states
from streams.account_table import AccountTable
from streams.errors import SkippedOffsets
from streams.offset_sequence import OffsetSequence
from streams.outbox import Outbox
from streams.rollup import Rollup, publish_updates
from streams.scorer import Scorer
from streams.settings import Settings
from streams.stage import Consumed, LiveTable, MemoryData
from streams.transactions import Reading
from tests.scoring.support import shipped
from tests.streams.test_overlap import pricing_view
from tests.streams.test_rollup import Collected


def counted(kind: str) -> float:
    return REGISTRY.get_sample_value("leadstream_offset_anomalies_total", {"kind": kind}) or 0.0


def messages(topic: str, partition: int, *offsets: int) -> list[Consumed]:
    return [Consumed(topic, partition, offset, b"k", b"{}") for offset in offsets]


def test_gaps_and_repeats_are_counted_per_partition() -> None:
    sequence = OffsetSequence({"events"})
    gaps, repeats = counted("gap"), counted("repeat")
    sequence.observe(messages("events", 0, 10, 11, 12) + messages("events", 1, 40, 41))
    sequence.observe(messages("events", 0, 13, 14) + messages("events", 1, 42))
    assert (counted("gap"), counted("repeat")) == (gaps, repeats)  # the first offset seen starts a partition

    sequence.observe(messages("events", 0, 18, 19))  # 15, 16 and 17 never came
    assert counted("gap") == gaps + 3
    sequence.observe(messages("events", 1, 42, 43))  # 42 again
    assert counted("repeat") == repeats + 1
    sequence.observe(messages("events", 1, 44))  # in sequence after the repeat
    assert (counted("gap"), counted("repeat")) == (gaps + 3, repeats + 1)


def test_unchecked_topics_and_a_rebalance_start_over() -> None:
    sequence = OffsetSequence({"events"})
    gaps = counted("gap")
    sequence.observe(messages("profiles", 0, 1, 5, 9))  # compacted: holes are normal
    sequence.observe(messages("events", 2, 100))
    sequence.reset()  # partition 2 went to another worker and came back further on
    sequence.observe(messages("events", 2, 250, 251))
    assert counted("gap") == gaps


def test_after_a_rebalance_the_first_message_must_be_at_the_offset_sought() -> None:
    # Faust sets its read offset to the committed offset at the seek, so its own gap check
    # takes a first message beyond it for the next in sequence (streams/seek_first.py).
    sequence = OffsetSequence({"events"})
    gaps = counted("gap")
    sequence.observe(messages("events", 2, 100))
    sequence.reset()
    sequence.seed({TP("events", 2): 250, TP("events", 3): 7, TP("profiles", 0): 40})
    sequence.observe(messages("events", 2, 250, 251) + messages("profiles", 0, 45))
    assert counted("gap") == gaps
    with pytest.raises(SkippedOffsets) as skipped:
        sequence.observe(messages("events", 3, 8))  # offset 7 never came
    assert str(skipped.value) == ("topic events partition 3: offsets 7 to 7, from the one it was sought to, were never "
                                  "handed to this worker, which was handed 8 first")
    assert counted("gap") == gaps + 1
    sequence.observe(messages("events", 2, 260))  # a hole further on is counted, as before
    assert counted("gap") == gaps + 9


class Log:
    """A log whose `empty` offsets hold no record the worker reads, read `per_lookup` offsets
    at most by each lookup, as `LogReader.look_up` answers."""

    def __init__(self, empty: set[int], per_lookup: int = 1_000_000) -> None:
        self.empty = empty
        self.per_lookup = per_lookup
        self.lookups = 0

    def look_up(self, topic: str, partition: int, holes: Sequence[tuple[int, int]], within_s: float) -> Reading:
        self.lookups += 1
        answers: list[bool] = []
        budget = self.per_lookup
        for start, end in holes:
            for offset in range(start, end):
                if budget == 0:
                    return answers, offset
                budget -= 1
                if offset not in self.empty:
                    answers.append(True)
                    break
            else:
                answers.append(False)
        return answers, holes[len(answers)][0] if len(answers) < len(holes) else 0


def test_holes_the_log_holds_no_record_in_are_the_logs_own_not_gaps() -> None:
    """A transaction's markers and aborted records take offsets no consumer reading committed
    records is handed: looked up in the log (here, a log whose offsets 7 to 9 and 20 hold none)."""
    log = Log({7, 8, 9, 20})
    sequence = OffsetSequence({"events"}, log.look_up)
    gaps, holes = counted("gap"), counted("log_hole")
    sequence.seed({TP("events", 3): 7})
    sequence.observe(messages("events", 3, 10, 11))  # at the head: looked up before the batch is processed, and gone past
    asyncio.run(sequence.check_head())
    assert (counted("gap"), counted("log_hole")) == (gaps, holes + 3)
    sequence.observe(messages("events", 3, *range(13, 20), 21))  # further on: looked up later, from a thread
    assert sequence.unchecked == [("events", 3, 12, 13), ("events", 3, 20, 21)]
    assert sequence.holes_waiting()
    sequence.check_holes()
    assert (counted("gap"), counted("log_hole"), sequence.unchecked, sequence.holes_waiting()) == (gaps + 1, holes + 4, [], False)
    assert log.lookups == 2  # a partition's holes are read through in one go
    sequence.reset()
    sequence.seed({TP("events", 3): 30})
    sequence.observe(messages("events", 3, 31))
    with pytest.raises(SkippedOffsets):  # a hole with records in it, at the head: lost input, as before
        asyncio.run(sequence.check_head())


def test_a_hole_not_read_through_is_read_on_never_called_a_gap() -> None:
    """100 MB of aborted records took 12 s to read, and a lookup that had not got through in 5 s
    took the hole for lost records: at the head of an assignment, the worker stopped itself at
    every start; further on, 400,001 offsets were counted as a gap."""
    aborted = set(range(100, 5_100))
    log = Log(aborted, per_lookup=1_000)  # a fifth of the hole per lookup
    sequence = OffsetSequence({"events"}, log.look_up)
    gaps, holes = counted("gap"), counted("log_hole")
    sequence.seed({TP("events", 3): 100})
    sequence.observe(messages("events", 3, 5_100, 5_101))
    asyncio.run(sequence.check_head())  # read on until read through
    assert (counted("gap"), counted("log_hole"), log.lookups) == (gaps, holes + 5_000, 5)

    aborted.update(range(5_102, 10_102))
    sequence.observe(messages("events", 3, 10_102))
    for round_ in range(4):
        sequence.check_holes()
        assert sequence.holes_waiting() and counted("gap") == gaps
    sequence.check_holes()
    assert (counted("gap"), counted("log_hole"), sequence.holes_waiting()) == (gaps, holes + 10_000, False)


def test_a_marker_after_each_message_is_never_a_gap_however_many() -> None:
    """A producer committing a transaction per message leaves a marker after each: more than
    10,000 waiting to be looked up were counted as gaps at once, and each was looked up alone."""
    log = Log(set(range(1, 50_000, 2)))
    sequence = OffsetSequence({"events"}, log.look_up)
    gaps, holes = counted("gap"), counted("log_hole")
    for first in range(0, 50_000, 1_000):
        sequence.observe(messages("events", 0, *range(first, first + 1_000, 2)))
    sequence.check_holes()
    assert (counted("gap"), counted("log_hole"), log.lookups) == (gaps, holes + 24_999, 1)


def test_holes_before_the_logs_start_are_told_deleted_unread_not_looked_up() -> None:
    """Retention deleting records a running worker had not read: its fetch was moved on to the
    log's start, and the lookup, moved on alike, called the hole the log's own (`log_hole`)."""
    log = Log(set())  # every offset the log has holds a record
    starts = {3: 50}
    sequence = OffsetSequence({"events"}, log.look_up, lambda topic, partition: starts.get(partition))
    deleted, gaps, holes = counted("deleted_unread"), counted("gap"), counted("log_hole")
    sequence.observe(messages("events", 3, 10, 60))  # 11 to 49 deleted, 50 to 59 held records it was not handed
    sequence.observe(messages("events", 4, 0, 9))  # where the log starts not known: looked up at the next round
    sequence.check_holes()
    assert (counted("deleted_unread"), counted("gap"), counted("log_hole")) == (deleted + 39, gaps + 10, holes)
    assert sequence.holes_waiting() and log.lookups == 1
    starts[4] = 0
    sequence.check_holes()
    assert (counted("deleted_unread"), counted("gap"), sequence.holes_waiting()) == (deleted + 39, gaps + 18, False)
    # Of two readings' holes overlapping (a partition read again after a rebalance), each offset is told once.
    sequence.unchecked = [("events", 3, 100, 120), ("events", 3, 110, 130)]
    starts[3] = 140
    sequence.check_holes()
    assert counted("deleted_unread") == deleted + 39 + 30 and not sequence.holes_waiting()
    # At the head of an assignment: deleted unread, no records skipped that a new worker could read again.
    sequence.reset()
    sequence.seed({TP("events", 3): 150})
    starts[3] = 170
    sequence.observe(messages("events", 3, 170))
    asyncio.run(sequence.check_head())
    assert (counted("deleted_unread"), counted("gap")) == (deleted + 89, gaps + 18)


class Counting(Outbox):
    """An outbox that counts what it would send."""

    def __init__(self) -> None:
        super().__init__("", 4)
        self.sent = 0

    async def flush(self) -> None:
        self.sent += sum(map(len, self._pending.values()))
        self._pending.clear()


def test_a_batch_handed_over_after_a_hole_stops_the_stage_before_it_is_scored_or_acknowledged() -> None:
    async def scenario() -> tuple[int, int, list[str]]:
        settings = Settings()
        outbox = Counting()
        store = LiveTable(MemoryData(), "changelog", 4, 100, lead_states.decode)
        scorer = Scorer(Engine([shipped("b2b")]), settings, store, outbox, 4)
        view = pricing_view("e1", "ada", 12)
        scorer.sequence.seed({TP(settings.topic_events, view.partition): 10})  # the committed offset: 10 and 11 skipped
        acknowledged: list[str] = []

        async def done(written: bool) -> None:
            acknowledged.append("batch")

        with pytest.raises(SkippedOffsets):
            await scorer.process([view], done)
        await scorer.settle()
        return len(store), outbox.sent, acknowledged

    assert asyncio.run(scenario()) == (0, 0, [])


def test_member_updates_handed_over_after_a_hole_stop_the_account_stage_before_they_are_rolled_up_or_acknowledged() -> None:
    """A chaos run saw a hole at the head of an account-updates partition go through while the
    events topic's stopped the worker: 117 accounts rolled up without some member updates."""

    async def scenario() -> tuple[int, int, list[str]]:
        settings = Settings()
        outbox = Counting()
        store = AccountTable(MemoryData(), "accounts-changelog", 4, 10)
        stage = Rollup(Engine([shipped("b2b")]), settings, store, outbox)
        collected = Collected()
        publish_updates(collected, settings, [MemberScore("b2b", "acme", "lead-42", 67, 1_000, revision=1)], 4)  # type: ignore[arg-type]
        [(topic, _, value, partition)] = collected.records
        assert partition is not None
        # Sought to the committed offset 30, and handed 31 first. The scoring stage's
        # sequence has no say on this topic: each stage checks its own.
        stage.sequence.seed({TP(topic, partition): 30, TP(settings.topic_events, 0): 5})
        acknowledged: list[str] = []

        async def done(written: bool) -> None:
            acknowledged.append("batch")

        with pytest.raises(SkippedOffsets, match=f"topic {topic} partition {partition}: offsets 30 to 30"):
            await stage.process([Consumed(topic, partition, 31, None, value)], done)
        await stage.settle()
        return len(store), outbox.sent, acknowledged

    assert asyncio.run(scenario()) == (0, 0, [])
