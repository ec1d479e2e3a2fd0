"""A real worker answers its probes while it indexes the leads it recovered (streams/scorer.py
`Scorer.rebuild_indexes`), and says it is not ready until it is done."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from datetime import datetime

import orjson
from kafka import KafkaProducer

from scoring import Engine
from streams import lead_states
from streams.partitioning import partition_for
from streams.processes import WorkerProcess
from streams.scorer import Scorer
from streams.settings import Settings
from streams.stage import Consumed, LiveTable, MemoryData
from streams.topics import LEADS_TABLE, changelog_specs, ensure_topics
from tests.scoring.support import shipped
from tests.streams.stage_support import Kept

#: Enough that the index takes seconds to rebuild (8-50 us a lead here, by the load of the machine).
LEADS = 300_000


def state_with_a_step_due(settings: Settings) -> bytes:
    """A b2b lead's table value, after a demo request: a decay step is due later."""
    store = LiveTable(MemoryData(), "changelog", settings.partitions, 10, lead_states.decode)
    event = {"event_id": "e", "lead_id": "lead", "type": "form_submit", "time": int(time.time() * 1000) - 60_000, "product": "b2b",
             "properties": {"form": "demo_request"}}
    asyncio.run(Scorer(Engine([shipped("b2b")]), settings, store, Kept(), settings.partitions).process(
        [Consumed(settings.topic_events, partition_for("lead", settings.partitions), 0, b"lead", orjson.dumps(event))]))
    return store.table.data[b"lead"]


def logged_at(line: str) -> float:
    """The Unix time of a worker's log line (`[2026-12-07 10:36:17,942] ...`, local time)."""
    return datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def test_a_worker_answers_healthz_while_it_indexes_the_leads_it_recovered_and_is_ready_after(isolated: Settings) -> None:
    """Indexed in one go, a million leads held the worker's loop for 26 s after its tables were
    restored: /healthz, /readyz and /metrics answered nothing, and the log said nothing, so a
    liveness probe would have killed it mid-recovery."""
    ensure_topics(isolated, changelog_specs(isolated))
    changelog = f"{isolated.app_id}-{LEADS_TABLE}-changelog"
    value = state_with_a_step_due(isolated)
    producer = KafkaProducer(bootstrap_servers=isolated.kafka_bootstrap, linger_ms=20, batch_size=1 << 20)
    for n in range(LEADS):
        key = f"lead-{n}"
        producer.send(changelog, key=key.encode(), value=value, partition=partition_for(key, isolated.partitions))
    producer.flush()
    producer.close()

    proc = WorkerProcess(isolated)
    answers: list[tuple[float, int, bool]] = []  # when, /healthz's status, whether /readyz said ready just before
    done = threading.Event()

    def probe() -> None:
        while not done.is_set():
            ready = proc.get("/readyz")[0] == 200
            answers.append((time.time(), proc.get("/healthz")[0], ready))
            time.sleep(0.02)

    prober = threading.Thread(target=probe)
    proc.spawn()
    prober.start()
    try:
        proc.wait_ready(180)
    finally:
        done.set()
        prober.join()
        proc.stop()
    line = next(line for line in proc.log.read_text().splitlines() if "recovery done" in line)
    indexed = int(re.search(r"decay_steps_indexed=(\d+)", line)[1])  # type: ignore[index]
    index_s = float(re.search(r"index_seconds=([\d.]+)", line)[1])  # type: ignore[index]
    assert indexed == LEADS
    assert index_s > 1.0, f"the rebuild took {index_s} s: too few leads to tell"
    ended = logged_at(line)
    began = ended - index_s
    alive = [at for at, status, _ in answers if status == 200 and began <= at <= ended]
    gaps = [later - earlier for earlier, later in zip([began, *alive], [*alive, ended])]
    # Before, none at all; a loaded machine may hold up either process for a moment, hence the margin.
    assert len(alive) >= 3 and max(gaps) < index_s / 2, \
        f"/healthz answered {len(alive)} times in a rebuild of {index_s:.1f} s, {max(gaps):.1f} s at most between two"
    assert not [at for at, _, ready in answers if ready and at <= ended], "ready before the index was rebuilt"
