"""The decay sweep's clock per partition (streams/sweep_clock.py): a sweep brings a partition's
leads only as far as its events were read, so a backlog of old events read in parts, with sweeps
between them, crosses as `leadstream score` does; a worker that keeps up decays idle leads on time."""

from __future__ import annotations

import asyncio
import io
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import orjson
import pytest

from scoring import Engine, parse_model
from streams import lead_states
from streams.offline import apply_file
from streams.partitioning import partition_for
from streams.processes import WorkerProcess, free_port
from streams.scorer import Scorer
from streams.settings import Settings
from streams.stage import Consumed, LiveTable, MemoryData
from streams.sweep_clock import HANDED_WITHIN_MS, QUIET_MS, SweepClocks
from tests.infra import leadstream, read_topic, wait_for, write_jsonl
from tests.streams.stage_support import Kept
from tests.streams.test_worker_state import send, wait_caught_up

DAY = 86_400_000
NOW = 1_800_000_000_000  # the worker's and the wall clock, unless a case says otherwise


def clocks_after(*reads: tuple[int, int, int]) -> SweepClocks:
    """Clocks of partition 0 after batches (newest event time, newest Kafka timestamp, wall clock
    at the read)."""
    clocks = SweepClocks()
    for event_ms, appended_ms, wall_ms in reads:
        clocks.read({0: [event_ms, appended_ms]}, wall_ms)
    return clocks


@pytest.mark.parametrize(("case", "reads", "now_ms", "expected"), [
    # Live: events read moments after they happen; the clock is the worker's, less those moments.
    ("keeping up", [(NOW - 400, NOW - 300, NOW - 200)], NOW, NOW - 100),
    ("keeping up, quiet for a while", [(NOW - QUIET_MS, NOW - QUIET_MS + 100, NOW - QUIET_MS + 200)], NOW, NOW - 100),
    # A backlog of 10-day-old events, sent 20 s ago: its time runs on only those 20 s, until
    # nothing more comes for QUIET_MS.
    ("backlog sent in parts", [(NOW - 10 * DAY, NOW - 20_000, NOW - 19_000)], NOW, NOW - 10 * DAY + 20_000),
    ("backlog, quiet since", [(NOW - 10 * DAY, NOW - QUIET_MS - 1_000, NOW - QUIET_MS)], NOW, NOW),
    ("the newest event read, not the last", [(NOW - 10 * DAY, NOW - 20_000, NOW - 19_000),
                                             (NOW - 11 * DAY, NOW - 20_000, NOW - 19_000)], NOW, NOW - 10 * DAY + 20_000),
    # Catching up after downtime: records appended an hour before they were read. More may
    # wait, as old as the last: the newest event time alone, until the partition is quiet.
    ("catching up", [(NOW - 3_600_000, NOW - 3_600_000, NOW - 1_000)], NOW, NOW - 3_600_000),
    ("caught up, quiet for less than QUIET_MS", [(NOW - 3_600_000, NOW - 3_600_000, NOW - HANDED_WITHIN_MS)], NOW, NOW - 3_600_000),
    ("caught up, quiet since", [(NOW - 3_600_000, NOW - 3_600_000, NOW - QUIET_MS)], NOW, NOW),
    # A producer that stamps its records with the events' own times (Kafka Streams, Flink and
    # Kafka Connect may): a backlog 10 days old looks appended 10 days ago, so the time since says
    # nothing of the pause before its next part. Run on from it once read 10 s before, its leads
    # were decayed to the present within a pause shorter than QUIET_MS.
    ("a backlog stamped with its events' times, in a pause", [(NOW - 10 * DAY, NOW - 10 * DAY, NOW - 15_000)], NOW, NOW - 10 * DAY),
    ("a backlog stamped with its events' times, quiet since", [(NOW - 10 * DAY, NOW - 10 * DAY, NOW - QUIET_MS)], NOW, NOW),
    ("live events stamped with their own times", [(NOW - 300, NOW - 300, NOW - 200)], NOW, NOW),
    ("no Kafka timestamps", [(NOW - 10 * DAY, 0, NOW - 1_000)], NOW, NOW),
    ("an event ahead of the clock", [(NOW + 60_000, NOW - 1_000, NOW - 500)], NOW, NOW),
])
def test_a_partitions_clock(case: str, reads: list[tuple[int, int, int]], now_ms: int, expected: int) -> None:
    assert clocks_after(*reads).until_ms(0, now_ms, now_ms) == expected, case


@pytest.mark.parametrize(("case", "offset_ms", "read", "expected"), [
    # Kafka's timestamps are the wall clock's, which LEADSTREAM_CLOCK_OFFSET_MS does not move: a
    # backlog sent a second ago has run on a second, however far the worker's clock is moved.
    # Run on by the worker's clock, a worker 40 days ahead decayed it 40 days on at once.
    ("a backlog, the worker ahead", 40 * DAY, (NOW - 3 * DAY, NOW - 1_000, NOW - 500), NOW - 3 * DAY + 1_000),
    ("a backlog, the worker behind", -40 * DAY, (NOW - 50 * DAY, NOW - 1_000, NOW - 500), NOW - 50 * DAY + 1_000),
    # Live events carry the worker's time (the collector stamps its arrival times with it): the
    # worker's clock less the moments since they were sent.
    ("keeping up, the worker ahead", 40 * DAY, (NOW + 40 * DAY - 400, NOW - 300, NOW - 200), NOW + 40 * DAY - 100),
    ("keeping up, the worker behind", -365 * DAY, (NOW - 365 * DAY - 400, NOW - 300, NOW - 200), NOW - 365 * DAY - 100),
    # Catching up is told by the wall clock too: read an hour after the append.
    ("catching up, the worker ahead", 40 * DAY, (NOW + 40 * DAY - 3_600_000, NOW - 3_600_000, NOW - 1_000), NOW + 40 * DAY - 3_600_000),
    # Leads sent now, timed now, to a worker 30 days ahead: a backlog to it, swept there once quiet.
    ("events of the wall clock's time, quiet since", 30 * DAY, (NOW - 60_000, NOW - QUIET_MS - 1_000, NOW - QUIET_MS), NOW + 30 * DAY),
])
def test_a_partitions_clock_runs_on_by_the_wall_clock_since_the_append(
    case: str, offset_ms: int, read: tuple[int, int, int], expected: int
) -> None:
    assert clocks_after(read).until_ms(0, NOW + offset_ms, NOW) == expected, case


def test_a_partition_not_read_since_its_assignment_is_not_swept_before_it_is_quiet() -> None:
    """Not before QUIET_MS from the assignment, which comes after the previous owner's last read:
    a rebalance during a backlog's pause leaves the moved partitions' leads where the next part
    finds them. Swept once the consumer had had the time to hand what waited (HANDED_WITHIN_MS),
    a worker joining 10 s into a 27 s pause decayed them to the present."""
    clocks = SweepClocks()
    clocks.assigned([0, 1], NOW)
    assert clocks.until_ms(0, NOW + 1_000, NOW + 1_000) is None  # its backlog may not be handed yet
    assert clocks.until_ms(0, NOW + HANDED_WITHIN_MS + 3_000, NOW + HANDED_WITHIN_MS + 3_000) is None  # a backlog's pause
    assert clocks.until_ms(0, NOW + QUIET_MS, NOW + QUIET_MS) == NOW + QUIET_MS  # quiet: to the worker's clock
    clocks.read({1: [NOW - DAY, NOW - 500]}, NOW + 1_000)
    assert clocks.until_ms(1, NOW + 2_000, NOW + 2_000) == NOW - DAY + 2_500
    # A rebalance: taken away, then assigned again (another worker may have read it meanwhile).
    clocks.forget([1])
    assert clocks.until_ms(1, NOW + 2_000, NOW + 2_000) == NOW + 2_000  # not this worker's: no clock kept
    clocks.assigned([1], NOW + 5_000)
    assert clocks.until_ms(1, NOW + 5_000 + QUIET_MS - 1, NOW + 5_000 + QUIET_MS - 1) is None
    assert clocks.until_ms(2, NOW, NOW) == NOW  # a worker without a consumer's assignments (tests, tools)


HALF_LIFE = """
[model]
name = "hl"
[[rules]]
name = "demo"
event = "demo"
points = 30
[decay]
half_life = "10d"
[thresholds]
base = "nurture"
hysteresis = 5
ladder = [{ level = "mql", at = 25 }, { level = "sql", at = 50 }]
"""


@pytest.mark.parametrize(("taken_over", "stamped"), [(False, False), (True, False), (False, True)])
def test_a_backlog_read_in_parts_with_sweeps_between_crosses_as_leadstream_score_does(tmp_path: Path, taken_over: bool, stamped: bool) -> None:
    """The sweep between the parts valued the lead at the wall clock: down to nurture at day
    5.8, so its demo of day 4 came behind it and took it to mql, where in time order the demo
    took it from mql to sql (other crossings, under other ids). Taken over between the parts
    (a rebalance: revoked, restored, assigned again), its partition was swept to the wall clock
    once the consumer had had HANDED_WITHIN_MS to hand what waited there, within the pause.
    `stamped`: the records carry their events' times as Kafka timestamps (a producer such as
    Kafka Streams or Flink): the clock ran on from those, to the present, once the partition had
    had nothing to read for HANDED_WITHIN_MS."""
    wall = int(time.time() * 1000)
    start = wall - 12 * DAY
    lead, partitions = "ann", 4
    partition = partition_for(lead, partitions)
    events = [{"event_id": f"{lead}-{n}", "lead_id": lead, "type": "demo", "time": start + day * DAY} for n, day in enumerate((0, 4))]
    engine = Engine([parse_model(HALF_LIFE, "hl.toml")])
    settings = Settings()
    outbox = Kept()
    scorer = Scorer(engine, settings, LiveTable(MemoryData(), "changelog", partitions, 100, lead_states.decode), outbox, partitions)

    async def parts() -> None:
        for offset, event in enumerate(events):  # each part sent just now, and swept after
            appended = event["time"] if stamped else int(time.time() * 1000)
            await scorer.process([Consumed(settings.topic_events, partition, offset, lead.encode(),
                                           orjson.dumps(event), timestamp_ms=appended)])
            await scorer.decay_due(scorer.now_ms())
            if taken_over:
                await scorer.revoke(set(range(partitions)))
                await scorer.rebuild_indexes({partition})
                scorer.clocks.assigned([partition], scorer.wall_ms(scorer.now_ms()))
            await scorer.decay_due(scorer.now_ms() + HANDED_WITHIN_MS + 5_000)  # within the pause before the next part

    asyncio.run(parts())
    crossings = [orjson.loads(value)["id"] for topic, _, value in outbox.sent if topic == settings.topic_crossings and value]
    run = apply_file(engine, write_jsonl(tmp_path / "events.jsonl", events), io.StringIO())
    run.finish()
    assert [(t.from_level, t.to_level) for t in run.transitions] == [("nurture", "mql"), ("mql", "sql")]
    assert crossings == [t.id for t in run.transitions]


def test_a_lead_of_a_partition_that_keeps_up_decays_on_time() -> None:
    engine = Engine([parse_model(HALF_LIFE, "hl.toml")])
    settings = Settings()
    outbox = Kept()
    scorer = Scorer(engine, settings, LiveTable(MemoryData(), "changelog", 4, 100, lead_states.decode), outbox, 4)
    wall = int(time.time() * 1000)
    event = {"event_id": "bo-0", "lead_id": "bo", "type": "demo", "time": wall - 1_000}

    async def scenario() -> None:
        await scorer.process([Consumed(settings.topic_events, partition_for("bo", 4), 0, b"bo", orjson.dumps(event), timestamp_ms=wall - 900)])
        await scorer.decay_due(wall + 6 * DAY)  # the worker's clock, six days on: down through 25 - 5 at day 5.8

    asyncio.run(scenario())
    crossings = [orjson.loads(value) for topic, _, value in outbox.sent if topic == settings.topic_crossings and value]
    assert [(c["from_level"], c["to_level"]) for c in crossings] == [("nurture", "mql"), ("mql", "nurture")]
    assert crossings[1]["time"] < wall + 6 * DAY


def half_life_backlog(isolated: Settings, tmp_path: Path, clock_offset_ms: int = 0) -> tuple[Settings, list[list[dict[str, Any]]]]:
    """Settings of a half-life model swept every second, and 12 days of its events in three
    parts: each of 24 leads has a demo in each part, 4 days after the one before."""
    settings = replace(isolated, models_dir=tmp_path / "models", decay_interval_s=1, clock_offset_ms=clock_offset_ms)
    settings.models_dir.mkdir()
    (settings.models_dir / "hl.toml").write_text(HALF_LIFE)
    start = int(time.time() * 1000) - 13 * DAY
    leads = [f"lead-{n}" for n in range(24)]
    return settings, [[{"event_id": f"{lead}-{k}", "lead_id": lead, "type": "demo", "time": start + k * 4 * DAY + n * 3_600_000}
                       for n, lead in enumerate(leads)] for k in range(3)]


def assert_crossed_as_leadstream_score_does(settings: Settings, parts: list[list[dict[str, Any]]], tmp_path: Path) -> None:
    """The crossings topic holds those `leadstream score` makes of the parts' events, as of an
    hour after the newest (within QUIET_MS of the last part, a worker's clock has not run further)."""
    events = write_jsonl(tmp_path / "events.jsonl", [event for part in parts for event in part])
    newest = datetime.fromtimestamp(max(e["time"] for part in parts for e in part) / 1000 + 3600, timezone.utc).isoformat()
    offline = [[r["id"] for r in map(orjson.loads, leadstream(settings, "score", "--events", str(events), *at).stdout.splitlines())
                if r["record"] == "transition"] for at in ((), ("--at", newest))]
    assert offline[0] == offline[1], "a line falls due within the hour after the newest event: the worker's sweeps cross it"
    # Per lead: up to mql (30), to sql (52.7 at day 4), then, with a third part, down to mql as
    # it decays under 45 (day 6.3) and to sql (70 at day 8).
    assert len(offline[0]) == (4 if len(parts) == 3 else 2) * len(parts[0])
    crossings = [c["id"] for _, c in read_topic(settings, settings.topic_crossings, expect=len(offline[0]), idle_s=3)]
    assert sorted(crossings) == sorted(offline[0])


@pytest.mark.parametrize("clock_offset_days", [0, 40])
def test_a_worker_fed_a_backlog_in_parts_with_sweeps_between_crosses_as_leadstream_score_does(
    isolated: Settings, worker: Callable[..., WorkerProcess], tmp_path: Path, clock_offset_days: int
) -> None:
    """On the real broker: the parts each read and swept (every second) before the next is
    sent, as a history sent again under a new app id or a worker catching up reads them. Swept
    at the wall clock, every lead of the first part crossed down before its demo of the second
    part came, behind the decayed state. With the worker's clock 40 days ahead
    (LEADSTREAM_CLOCK_OFFSET_MS), each part's clock ran on by those 40 days besides the seconds
    since it was sent, to the same effect."""
    settings, parts = half_life_backlog(isolated, tmp_path, clock_offset_days * DAY)
    worker(settings)
    for part in parts:
        send(settings, part)
        wait_caught_up(settings)
        time.sleep(2.5)  # sweeps ran
    assert_crossed_as_leadstream_score_does(settings, parts, tmp_path)


def test_a_worker_joining_between_two_parts_of_a_backlog_leaves_them_crossed_as_leadstream_score_does(
    isolated: Settings, worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    """A rebalance takes every partition's clock away, and each owner swept the partitions it
    was assigned to the wall clock once the consumer had had HANDED_WITHIN_MS to hand what
    waited there: a worker joining during a backlog's pause shorter than QUIET_MS decayed the
    leads to today, the next part behind them."""
    settings, parts = half_life_backlog(isolated, tmp_path)
    parts = parts[:2]
    first = worker(settings)
    second = WorkerProcess(replace(settings, worker_port=free_port(), state_dir=settings.state_dir / "second"))
    second.spawn()  # it joins the group seconds after the first has read the first part
    try:
        send(settings, parts[0])
        wait_caught_up(settings)
        wait_for(lambda: first.ready() and second.ready(), 60, "both workers sharing the partitions")
        assert sum(first.metric("leadstream_events_scored_total")) == len(parts[0]), "the first part was read after the rebalance"
        time.sleep((HANDED_WITHIN_MS + 3_000) / 1000)  # sweeps ran on the partitions as assigned
        send(settings, parts[1])
        wait_caught_up(settings)
        time.sleep(2.5)
        assert_crossed_as_leadstream_score_does(settings, parts, tmp_path)
    finally:
        second.stop()


def test_a_worker_fed_a_backlog_stamped_with_its_events_times_crosses_as_leadstream_score_does(
    isolated: Settings, worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    """On the real broker, records whose Kafka timestamps are their events' times (a producer
    such as Kafka Streams or Flink): caught up on the first part, 13 days old by those
    timestamps, the worker ran the partitions' clocks on from them once it had had nothing to
    read for HANDED_WITHIN_MS, and swept every lead to the present within the pause."""
    settings, parts = half_life_backlog(isolated, tmp_path)
    parts = parts[:2]
    worker(settings)
    send(settings, parts[0], appended_at_event_times=True)
    wait_caught_up(settings)
    time.sleep((HANDED_WITHIN_MS + 3_000) / 1000)  # caught up, in a pause shorter than QUIET_MS: sweeps ran
    send(settings, parts[1], appended_at_event_times=True)
    wait_caught_up(settings)
    time.sleep(2.5)
    assert_crossed_as_leadstream_score_does(settings, parts, tmp_path)
