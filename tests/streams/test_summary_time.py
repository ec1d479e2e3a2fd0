"""The time a lead's published score change is valued at (its `time`): no later than what the
worker has read of the lead's own partition. Valued at the batch's newest event time, a lead
read days behind another partition of its batch was published with the score and level of a
time whose events of its own had not been read yet (a backlog's score changes, in read models
and `leadstream top`, wrong until the lead's next change)."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import orjson

from streams.partitioning import partition_for
from streams.processes import WorkerProcess
from streams.settings import Settings
from streams.stage import Consumed
from tests.infra import leadstream, read_to_end, write_jsonl
from tests.scoring.support import DAY
from tests.streams.test_future_events import scorer_with
from tests.streams.test_worker_state import send, wait_caught_up

#: What a score change and `leadstream score`'s record of the lead must agree on.
SHOWN = ("time", "score", "normalized", "level", "temperature", "last_activity_ms")


def trial(lead: str, n: int, kind: str, at_ms: int) -> dict:
    return {"event_id": f"{lead}-{n}", "lead_id": lead, "type": kind, "product": "analytics", "time": at_ms}


def on_partitions(partitions: int) -> list[str]:
    """A lead id on each partition, in partition order."""
    leads: dict[int, str] = {}
    n = 0
    while len(leads) < partitions:
        leads.setdefault(partition_for(f"lead-{n}", partitions), f"lead-{n}")
        n += 1
    return [leads[partition] for partition in range(partitions)]


def offline(settings: Settings, tmp_path: Path, events: list[dict], summary: dict) -> dict:
    """`leadstream score`'s record of the summary's lead: its events up to the summary's time, at that time."""
    at = datetime.fromtimestamp(summary["time"] / 1000, timezone.utc).isoformat(timespec="milliseconds")
    path = write_jsonl(tmp_path / f"{summary['lead_id']}-{summary['time']}.jsonl",
                       [e for e in events if e["lead_id"] == summary["lead_id"] and e["time"] <= summary["time"]])
    records = map(orjson.loads, leadstream(settings, "score", "--events", str(path), "--at", at).stdout.splitlines())
    return next(r for r in records if r["record"] == "lead" and r["model"] == summary["model"])


def test_a_leads_summary_is_valued_at_what_was_read_of_its_own_partition() -> None:
    """One batch: a lead's trial on one partition and, on another, an event ten days later. The
    first lead was published at that later time, its 20 points decayed to 12.2, though its data
    source connected five days after its trial (read in the next batch) took it to activated."""
    settings = Settings()
    scorer, outbox = scorer_with(settings)
    behind, ahead = on_partitions(4)[:2]
    start = int(time.time() * 1000) - 30 * DAY
    batches = [[trial(behind, 0, "trial_started", start), trial(ahead, 0, "trial_started", start + 10 * DAY)],
               [trial(behind, 1, "data_source_connected", start + 5 * DAY)]]

    async def read() -> None:
        for offset, batch in enumerate(batches):
            await scorer.process([Consumed(settings.topic_events, partition_for(e["lead_id"], 4), offset, e["lead_id"].encode(),
                                           orjson.dumps(e), timestamp_ms=int(time.time() * 1000)) for e in batch])

    asyncio.run(read())
    summaries = [orjson.loads(v) for t, _, v in outbox.sent if t == settings.topic_scores and v]
    published = [(s["time"], s["level"]) for s in summaries if s["lead_id"] == behind and s["model"] == "analytics_addon"]
    assert published == [(start, "trial"), (start + 5 * DAY, "activated")]
    # The lead ahead is valued at its own partition's time, as before.
    assert [s["time"] for s in summaries if s["lead_id"] == ahead and s["model"] == "analytics_addon"] == [start + 10 * DAY]


def test_a_backlogs_score_changes_are_as_leadstream_score_values_them_at_their_time(
    isolated: Settings, worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    """On the real broker: a backlog that a worker reads in one batch, one partition's lead ten
    days ahead of the others'; their next events, five days after their first, come later. Each
    score change of theirs is what `leadstream score` says of the lead's events up to its time."""
    ahead, *behind = on_partitions(isolated.partitions)
    start = int(time.time() * 1000) - 30 * DAY
    first = [trial(ahead, 0, "trial_started", start + 10 * DAY)]
    first += [trial(lead, 0, "trial_started", start + n * 60_000) for n, lead in enumerate(behind)]
    then = [trial(lead, 1, "data_source_connected", start + 5 * DAY + n * 60_000) for n, lead in enumerate(behind)]
    send(isolated, first)
    worker()  # started after the send: it reads every partition's backlog at once
    wait_caught_up(isolated)
    send(isolated, then)
    wait_caught_up(isolated)

    summaries = [s for key, s in read_to_end(isolated, isolated.topic_scores)
                 if key and s["lead_id"] in behind and s["model"] == "analytics_addon"]
    assert len(summaries) >= 2 * len(behind), summaries
    for summary in summaries:
        expected = offline(isolated, tmp_path, first + then, summary)
        assert {k: summary[k] for k in SHOWN} == {k: expected[k] for k in SHOWN}, summary["lead_id"]


def test_a_lead_changed_by_a_profile_update_alone_is_valued_no_earlier_than_it() -> None:
    """Its partition's events topic not read (a profile update, on its own topic, is often
    fresher): the summary is at the update's time, not at 0, nor at another partition's events."""
    settings = Settings()
    scorer, outbox = scorer_with(settings)
    profiled, other = on_partitions(4)[:2]
    start = int(time.time() * 1000) - 30 * DAY
    update = {"event_id": "p-1", "lead_id": profiled, "type": "identify", "product": "b2b", "time": start,
              "traits": {"email": "fay@initech.io", "title": "VP Marketing", "company_size": 250}}
    event = trial(other, 0, "trial_started", start + 10 * DAY)
    asyncio.run(scorer.process([Consumed(settings.topic_profiles, partition_for(profiled, 4), 0, profiled.encode(), orjson.dumps(update)),
                                Consumed(settings.topic_events, partition_for(other, 4), 0, other.encode(), orjson.dumps(event))]))
    [summary] = [orjson.loads(v) for t, _, v in outbox.sent if t == settings.topic_scores and v and orjson.loads(v)["lead_id"] == profiled]
    assert summary["time"] == start
