"""A worker given no partitions stays in its group (streams/spare.py), on the real broker, with
Faust's max poll interval (BROKER_MAX_POLL_INTERVAL, 1000 s by default) cut to seconds."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Callable

import orjson
import pytest

from streams.processes import WorkerProcess, free_port
from streams.send import open_producer, produce
from streams.settings import Settings
from streams.topics import ensure_topics
from tests.infra import wait_for

MAX_POLL_INTERVAL_S = 5


def test_a_spare_worker_and_an_idle_owner_stay_in_the_group_past_the_max_poll_interval(
    isolated: Settings, worker: Callable[..., WorkerProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, the spare, which fetched nothing, left the group once the interval was over (about
    # 17 minutes with Faust's default), answered 503 from then on, and never took the partition
    # over when its owner stopped.
    monkeypatch.setenv("BROKER_MAX_POLL_INTERVAL", str(MAX_POLL_INTERVAL_S))  # Faust's own setting, read by the workers
    settings = isolated.namespaced(f"{isolated.app_id}-one", partitions=1)  # two workers, one with nothing
    ensure_topics(settings)
    now = int(time.time() * 1000) - 60_000
    event = {"event_id": "e1", "lead_id": "lead-1", "type": "form_submit", "product": "b2b", "time": now,
             "properties": {"form": "demo_request"}}
    producer = open_producer(settings)
    try:
        produce(producer, settings.topic_events, [("lead-1", orjson.dumps(event))], 1, partitions=settings.partitions)
    finally:
        producer.close()
    workers = [worker(settings), worker(replace(settings, worker_port=free_port(), state_dir=settings.state_dir / "second"))]
    wait_for(lambda: all(w.ready() for w in workers) and sum(sum(w.metric("leadstream_leads_in_state")) for w in workers) == 1,
             60, "the lead scored by one worker", 0.3)
    owner, spare = sorted(workers, key=lambda w: -sum(w.metric("leadstream_leads_in_state")))

    time.sleep(4 * MAX_POLL_INTERVAL_S)  # no traffic: the owner's partition idle, the spare with none

    for each in workers:
        assert each.ready(), each.tail()
        assert "LeaveGroup" not in each.log.read_text(errors="replace"), each.tail()
        status, body = each.get("/leads/lead-1/")  # the spare asks the owner
        assert status == 200 and orjson.loads(body)["models"]["b2b"]["score"] > 0, (status, body)
    owner.stop()
    wait_for(lambda: spare.ready() and spare.get("/leads/lead-1/")[0] == 200, 60, "the spare taking the partition over", 0.3)
