"""A real worker's /metrics after a known stream: exact counts of what it did."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Callable

import orjson
from kafka import KafkaProducer

from streams.deadletter import WORKER_REASONS
from streams.processes import WorkerProcess
from streams.settings import Settings
from tests.infra import read_topic

HOUR_MS = 3_600_000


def sample(metrics: str, line_start: str) -> float:
    values = [float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith(line_start + " ")]
    assert len(values) == 1, f"{line_start} not exported exactly once"
    return values[0]


def test_worker_metrics_count_a_known_stream_exactly(isolated: Settings, worker: Callable[..., WorkerProcess]) -> None:
    start = int(time.time() * 1000) - 2 * HOUR_MS
    good = [
        {"event_id": f"{lead}-{i}", "lead_id": lead, "type": kind, "product": "saas", "time": start + i * 60_000}
        for lead, kinds in (("ada", ["signup", "created_task", "created_project", "created_task"]), ("bob", ["signup", "created_task"]))
        for i, kind in enumerate(kinds)
    ]
    producer = KafkaProducer(bootstrap_servers=isolated.kafka_bootstrap)
    for event in good:
        producer.send(isolated.topic_events, key=event["lead_id"].encode(), value=orjson.dumps(event))
    producer.send(isolated.topic_events, key=b"ada", value=b"{oops")
    producer.send(isolated.topic_events, key=b"ada", value=orjson.dumps({"lead_id": "ada", "time": start}))
    producer.send(isolated.topic_events, key=b"ada", value=orjson.dumps({**good[0], "event_id": "dup-of-nothing", "type": "signup"}))
    producer.send(isolated.topic_events, key=b"ada", value=orjson.dumps(good[1]))  # a redelivery: same event id
    producer.send(isolated.topic_events, key=b"ada", value=orjson.dumps({**good[0], "event_id": "typo", "product": "sass"}))
    # An identify (every model takes it) 12 hours older than ada's query: beyond the analytics
    # model's 6 hours of lateness, within the others' day, which score it.
    producer.send(isolated.topic_events, key=b"ada", value=orjson.dumps({**good[0], "event_id": "q", "type": "query_run", "product": "analytics"}))
    producer.send(isolated.topic_events, key=b"ada", value=orjson.dumps({"event_id": "who", "lead_id": "ada", "type": "identify", "time": start - 12 * HOUR_MS}))
    producer.flush()
    producer.close()

    began = time.time()
    proc = worker()
    read_topic(isolated, isolated.topic_crossings, expect=1)
    read_topic(isolated, isolated.topic_deadletter, expect=2)

    def metrics() -> str:
        return proc.get("/metrics")[1].decode()

    deadline = time.monotonic() + 30
    while sample(metrics(), "leadstream_events_consumed_total") < 13 and time.monotonic() < deadline:
        time.sleep(0.2)
    text = metrics()
    assert sample(text, "leadstream_events_consumed_total") == 13
    # 6 good events, one more signup, the query and the identify apply; the redelivered event
    # changes nothing but is consumed; no model takes the product "sass".
    assert sample(text, "leadstream_events_scored_total") == 10
    assert sample(text, "leadstream_events_unrouted_total") == 1
    assert sample(text, 'leadstream_events_rejected_total{reason="bad_json"}') == 1
    assert sample(text, 'leadstream_events_rejected_total{reason="missing_field"}') == 1
    assert sample(text, 'leadstream_crossings_total{direction="up",kind="lead",level="mql",model="saas_start_small"}') == 1
    assert sample(text, 'leadstream_leads_in_state{model="saas_start_small"}') == 2
    assert sample(text, "leadstream_worker_ready") == 1
    assert sample(text, 'leadstream_events_late_total{model="analytics_addon"}') == 1
    # A model without late events counts 0 from the start: its panel showed "No data".
    assert sample(text, 'leadstream_events_late_total{model="b2b"}') == 0
    # The scoring stage's last batch ended after the worker started and before this read.
    assert began < sample(text, 'leadstream_batch_done_timestamp_seconds{stage="score"}') <= time.time()
    # The account stage had nothing to do: its time is its start, so a stage stuck from the
    # start has an age too.
    assert began < sample(text, 'leadstream_batch_done_timestamp_seconds{stage="rollup"}') <= time.time()
    assert "leadstream_faust_" in text  # Faust's own sensors beside ours
    # Alerts take `increase` of these: a series that first appeared at 1 increased by nothing.
    assert sample(text, 'leadstream_events_rejected_total{reason="internal_error"}') == 0
    for reason in set(WORKER_REASONS) - {"bad_json", "missing_field"}:
        assert sample(text, f'leadstream_events_rejected_total{{reason="{reason}"}}') == 0
    for kind in ("gap", "deleted_unread"):
        assert sample(text, f'leadstream_offset_anomalies_total{{kind="{kind}"}}') == 0
    # The dashboard's increase() of batches dropped unwritten: a first one, at 1, showed nothing.
    for stage in ("score", "rollup", "decay"):
        assert sample(text, f'leadstream_batches_fenced_total{{stage="{stage}"}}') == 0
    for reason in ("malformed", "unknown_topic", "beyond_end"):  # README, Forgetting a lead
        assert sample(text, f'leadstream_forget_headers_ignored_total{{reason="{reason}"}}') == 0


def test_the_event_time_lag_grows_while_nothing_is_scored() -> None:
    # Set at each batch, it stood still when batches stopped: a stalled worker showed the lag
    # of its last batch.
    from streams import metrics

    before = metrics.NEWEST_SCORED.ms
    try:
        metrics.NEWEST_SCORED.ms = 1_000_000
        assert metrics.event_time_lag_s(1_060_000) == 60 and metrics.event_time_lag_s(1_061_500) == 61.5
    finally:
        metrics.NEWEST_SCORED.ms = before



def test_the_event_time_lag_is_unknown_until_an_event_is_scored_and_follows_the_worker_clock(
        isolated: Settings, worker: Callable[..., WorkerProcess]) -> None:
    # It read 0 after a (re)start until an event was scored: a restarted worker with nothing to
    # score looked perfectly fresh on the dashboard. And it took the wall clock, not the worker's.
    proc = worker(isolated.with_overrides(clock_offset_ms=HOUR_MS))
    assert math.isnan(sample(proc.get("/metrics")[1].decode(), "leadstream_event_time_lag_seconds"))
    now = int(time.time() * 1000)
    event = {"event_id": "e1", "lead_id": "ada", "type": "signup", "product": "saas", "time": now}
    producer = KafkaProducer(bootstrap_servers=isolated.kafka_bootstrap)
    producer.send(isolated.topic_events, key=b"ada", value=orjson.dumps(event))
    producer.flush()
    producer.close()
    deadline = time.monotonic() + 30
    while math.isnan(lag := sample(proc.get("/metrics")[1].decode(), "leadstream_event_time_lag_seconds")):
        assert time.monotonic() < deadline, "the event was not scored"
        time.sleep(0.2)
    assert 3600 <= lag < 3600 + (time.time() * 1000 - now) / 1000 + 1


def test_the_event_time_lag_follows_the_newest_event_read_from_the_events_topic() -> None:
    # It took each batch's newest record of any topic: a batch of fresh profile updates said the
    # worker was caught up while its events were minutes behind, and a batch of a partition
    # behind the others swung it back by minutes (184, 21, 173, 52 s in four scrapes).
    from streams import metrics
    from streams.partitioning import partition_for
    from streams.stage import Consumed
    from tests.streams.test_future_events import scorer_with

    settings = Settings()
    scorer, _ = scorer_with(settings)
    now = int(time.time() * 1000)

    def read(topic: str, lead: str, event_time: int, offset: int) -> None:
        event = {"event_id": f"{lead}-{offset}", "lead_id": lead, "type": "identify" if topic == settings.topic_profiles else "signup",
                 "product": "saas", "time": event_time, "traits": {"title": "CTO"}}
        asyncio.run(scorer.process([Consumed(topic, partition_for(lead, 4), offset, lead.encode(), orjson.dumps(event))]))

    before = metrics.NEWEST_SCORED.ms
    try:
        metrics.NEWEST_SCORED.ms = 0
        read(settings.topic_events, "ada", now - 600_000, 0)
        assert metrics.NEWEST_SCORED.ms == now - 600_000
        read(settings.topic_profiles, "ada", now - 1_000, 0)  # a fresh identify: the events are still 10 minutes behind
        assert metrics.NEWEST_SCORED.ms == now - 600_000
        read(settings.topic_events, "bob", now - 900_000, 0)  # a partition further behind
        assert metrics.NEWEST_SCORED.ms == now - 600_000
        read(settings.topic_events, "bob", now - 300_000, 1)
        assert metrics.NEWEST_SCORED.ms == now - 300_000
    finally:
        metrics.NEWEST_SCORED.ms = before


def test_a_stage_stalls_while_it_finishes_no_batch_and_stops_stalling_at_a_batch_or_with_nothing_waiting() -> None:
    from streams.metrics import StageClock

    clock = StageClock()
    clock.moved("score", 1_000.0)  # its start
    assert clock.stalled_s("score", 1_240.0) == 240
    clock.moved("score", 1_300.0)  # a batch done, or the lag showing none of its partitions waiting
    assert clock.stalled_s("score", 1_301.5) == 1.5
    clock.moved("score", 1_200.0)  # a measure that began before the batch ended leaves its time
    assert clock.stalled_s("score", 1_310.0) == 10
    assert clock.stalled_s("rollup", 1_310.0) == 0  # not started: nothing to say


def test_a_worker_with_nothing_to_read_is_not_stalled_however_old_its_last_batch(
        isolated: Settings, worker: Callable[..., WorkerProcess]) -> None:
    # The stalled-scoring alert took the age of the freshest worker's last batch while the
    # group had lag: one worker stuck among others that score went unalerted. Each worker's own
    # figure grows only while messages of its own partitions wait; a spare worker, or one whose
    # partitions get no events, stays near 0 (the lag is measured every 5 s).
    proc = worker()
    deadline = time.monotonic() + 60

    def figures() -> tuple[float, float]:
        text = proc.get("/metrics")[1].decode()
        return (time.time() - sample(text, 'leadstream_batch_done_timestamp_seconds{stage="score"}'),
                sample(text, 'leadstream_stage_stalled_seconds{stage="score"}'))

    while (age := figures()[0]) < 20 and time.monotonic() < deadline:
        time.sleep(0.5)
    age, stalled = figures()
    assert age >= 20
    assert 0 <= stalled < 15
    assert 0 <= sample(proc.get("/metrics")[1].decode(), 'leadstream_stage_stalled_seconds{stage="rollup"}') < 15


def test_the_worker_shows_no_connector_or_collector_metric_families(isolated: Settings, worker: Callable[..., WorkerProcess]) -> None:
    # The CLI imports the connectors' metrics (sinks.connectors, sinks.base): the worker's /metrics
    # declared leadstream_sink_deliveries_total, leadstream_sink_ready and the others, with no
    # value, as if a connector ran in it.
    text = worker().get("/metrics")[1].decode()
    assert "# TYPE leadstream_events_consumed_total counter" in text
    assert [line for line in text.splitlines() if line.startswith("# TYPE leadstream_sink_")] == []
    assert [line for line in text.splitlines() if line.startswith("# TYPE leadstream_collector_")] == []
