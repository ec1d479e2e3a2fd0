"""The worker's decay index: a sweep takes only what is due, in due order, a chunk at a time."""

from __future__ import annotations

from streams.scorer import DecayIndex


def test_pop_due_takes_only_due_entries_earliest_first_up_to_the_limit() -> None:
    index = DecayIndex()
    for due, lead in ((30, "c"), (10, "a"), (20, "b"), (99, "late")):
        index.schedule(0, due, lead, "b2b")
    index.schedule(1, 15, "other-partition", "b2b")
    assert index.pop_due(25, limit=2) == [(0, "a", "b2b"), (0, "b", "b2b")]
    assert index.pop_due(25, limit=10) == [(1, "other-partition", "b2b")]
    assert index.pop_due(25, limit=10) == []
    assert len(index) == 2
    assert index.pop_due(100, limit=10) == [(0, "c", "b2b"), (0, "late", "b2b")]


def test_a_lead_rescheduled_later_keeps_one_entry_and_an_earlier_time_is_honoured() -> None:
    index = DecayIndex()
    for due in (50, 60, 70, 80):  # activity moves the step later with every batch
        index.schedule(0, due, "a", "b2b")
    assert len(index) == 1
    index.schedule(0, 40, "a", "b2b")  # a late activity gave a step back: due earlier
    assert index.pop_due(45, limit=10) == [(0, "a", "b2b")]
    index.schedule(0, 90, "a", "b2b")  # the sweep found it not due, and schedules it again
    assert index.pop_due(85, limit=10) == [(0, "a", "b2b")]  # the entry of 50 (stale: the sweep checks)
    assert index.pop_due(95, limit=10) == [(0, "a", "b2b")]
    assert len(index) == 0
