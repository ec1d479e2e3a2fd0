"""Events timed ahead of the worker's clock: refused beyond LEADSTREAM_MAX_FUTURE_MS, and never
the time other leads' published summaries are valued at."""

from __future__ import annotations

import asyncio
import re
import time

import orjson

from scoring import Engine
from streams import lead_states
from streams.partitioning import partition_for
from streams.scorer import Scorer
from streams.settings import Settings
from streams.stage import Consumed, LiveTable, MemoryData
from tests.scoring.support import DAY, shipped
from tests.streams.stage_support import Kept


def scorer_with(settings: Settings) -> tuple[Scorer, Kept]:
    outbox = Kept()
    engine = Engine([shipped("analytics_addon"), shipped("b2b")])
    return Scorer(engine, settings, LiveTable(MemoryData(), "changelog", 4, 100, lead_states.decode), outbox, 4), outbox


def test_a_leads_summary_is_not_valued_at_another_leads_event_ahead_of_the_clock() -> None:
    """One lead's event three days ahead (LEADSTREAM_MAX_FUTURE_MS=0: no limit) decayed the
    half-life score of every other lead of its batch to its time in the read models: 35 points
    published as 30.17, and a lead the crossings had at `activated` read `trial` there."""
    settings = Settings(max_future_ms=0)
    scorer, outbox = scorer_with(settings)
    now = int(time.time() * 1000)
    hq = [{"event_id": "h1", "lead_id": "hq", "type": "trial_started", "product": "analytics", "time": now - 60_000},
          {"event_id": "h2", "lead_id": "hq", "type": "data_source_connected", "product": "analytics", "time": now - 59_000}]
    fq = [{"event_id": "f1", "lead_id": "fq", "type": "trial_started", "product": "analytics", "time": now + 3 * DAY}]
    asyncio.run(scorer.process([Consumed(settings.topic_events, partition_for(lead, 4), 0, None, orjson.dumps(events))
                                for lead, events in (("hq", hq), ("fq", fq))]))  # one batch
    summaries = {(s["lead_id"], s["model"]): s for s in (orjson.loads(v) for t, _, v in outbox.sent if t == settings.topic_scores and v)}
    published = summaries[("hq", "analytics_addon")]
    assert published["score"] > 34.99 and published["level"] == "activated" and published["time"] <= time.time() * 1000
    assert summaries[("fq", "analytics_addon")]["time"] == now + 3 * DAY  # its own points, valued at its own time


def test_the_dead_letter_of_an_event_ahead_says_by_how_much_in_seconds() -> None:
    # "0.0 h ahead of the worker's clock (LEADSTREAM_MAX_FUTURE_MS allows 0.0166667 h)" for 130 s against 60 s.
    settings = Settings(max_future_ms=60_000)
    scorer, outbox = scorer_with(settings)
    event = {"event_id": "a1", "lead_id": "ana", "type": "trial_started", "product": "analytics", "time": int(time.time() * 1000) + 130_000}
    asyncio.run(scorer.process([Consumed(settings.topic_events, partition_for("ana", 4), 0, b"ana", orjson.dumps(event))]))
    [letter] = [orjson.loads(v) for t, _, v in outbox.sent if t == settings.topic_deadletter and v]
    assert letter["reason"] == "future_time"
    assert "s ahead of the worker's clock, more than the 60 s LEADSTREAM_MAX_FUTURE_MS allows" in letter["detail"]
    assert re.search(r", (\d+) s ahead", letter["detail"]).group(1) in ("129", "130")  # type: ignore[union-attr]


def test_the_dead_letter_of_an_event_ahead_of_a_clock_moved_back_names_the_offset() -> None:
    # An event 4 h behind the wall clock was said to be "72,000 s ahead of the worker's clock" alone.
    settings = Settings(clock_offset_ms=-DAY)
    scorer, outbox = scorer_with(settings)
    event = {"event_id": "a1", "lead_id": "ana", "type": "trial_started", "product": "analytics", "time": int(time.time() * 1000) - 4 * 3_600_000}
    asyncio.run(scorer.process([Consumed(settings.topic_events, partition_for("ana", 4), 0, b"ana", orjson.dumps(event))]))
    [letter] = [orjson.loads(v) for t, _, v in outbox.sent if t == settings.topic_deadletter and v]
    assert re.fullmatch(r"event 'a1' of lead 'ana' is timed [^,]+, 7[12],\d{3} s ahead of the worker's clock \(the wall clock moved "
                        rf"by LEADSTREAM_CLOCK_OFFSET_MS={-DAY}, reading [-0-9T:]+\+00:00\), more than the 3,600 s "
                        "LEADSTREAM_MAX_FUTURE_MS allows: fix the sender's clock", letter["detail"])
