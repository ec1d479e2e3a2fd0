"""`leadstream bench pipeline`: the whole worker on the real broker, against the raw ceiling.

In one run, on topics of its own:
1. produce a reproducible workload (Zipf-skewed leads, the B2B example model) in envelopes;
2. (a) the raw ceiling: a plain aiokafka consumer loop parsing the same topic, in three passes
   of which the median counts (one pass reads 300k events in about 0.6 s, short enough for a
   hiccup of this shared machine to move it by a third: single passes read 404k-719k events/s
   within one hour here);
3. (b) one `leadstream worker` scoring it from its start to its last batch done, state durable
   (the batch's crossings, score changes and changelog records acknowledged by Kafka);
4. crossing latency: events produced at a fixed offered rate, from produce time (which is the
   event time) to the crossing being readable on the sink topic;
5. recovery: a fresh worker restoring the table from the changelog until it is ready.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import orjson

from streams.bench import print_figures, workload
from streams.lag import LagProbe
from streams.processes import WorkerProcess, free_port
from streams.send import open_producer, produce
from streams.settings import Settings
from streams.topics import delete_topics, ensure_topics, producer_partitions

DAY_MS = 86_400_000
RAW_PASSES = 3
LIVE_PREFIX = "live-"


@contextmanager
def bench_pipeline(settings: Settings, metrics: bool, **changes: Any) -> Iterator[Settings]:
    """`settings` for a pipeline of the benchmark's own: app id and topics `bench-<tag>-*` (made
    here), a free worker port, its state and the child processes' logs in a scratch directory
    (`state_dir`'s parent). The topics and the directory are removed when the run ends however it
    ends (an error, Ctrl-C, SIGTERM: see streams/cli.py `_bench`): each run left nine topics
    behind, their partitions piling up on the broker (see `delete_topics`)."""
    workdir = Path(tempfile.mkdtemp(prefix="leadstream-bench-"))
    settings = settings.namespaced(
        f"bench-{uuid.uuid4().hex[:8]}",
        state_dir=workdir / "state",
        worker_port=free_port(),
        faust_sensors=1 if metrics else 0,
        log_level="warning",
        **changes,
    )
    try:
        ensure_topics(settings)
        yield settings
    finally:
        try:
            delete_topics(settings, settings.app_id)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


async def raw_ceiling(settings: Settings, expected_events: int) -> float:
    """events/s of aiokafka getmany + orjson parse + a dict count per lead: Python's ceiling here."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        settings.topic_events,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=32 * 1024 * 1024,
    )
    await consumer.start()
    counts: dict[str, int] = {}
    seen = 0
    try:
        started = time.perf_counter()
        while seen < expected_events:
            batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            for messages in batches.values():
                for message in messages:
                    parsed = orjson.loads(message.value)
                    for event in parsed if isinstance(parsed, list) else (parsed,):
                        lead = event["lead_id"]
                        counts[lead] = counts.get(lead, 0) + 1
                        seen += 1
        return seen / (time.perf_counter() - started)
    finally:
        await consumer.stop()


def crossing_latencies(settings: Settings, rate_per_s: int, seconds: float, leads: int, seed: int) -> list[float]:
    """Offer `rate_per_s` events for `seconds` (event time = produce time) and time their crossings."""
    from kafka import KafkaConsumer

    latencies: list[float] = []
    stop = threading.Event()

    def listen() -> None:
        consumer = KafkaConsumer(settings.topic_crossings, bootstrap_servers=settings.kafka_bootstrap,
                                 auto_offset_reset="latest", group_id=None, fetch_max_wait_ms=5)
        consumer.poll(timeout_ms=500)  # join: position at the end before producing
        ready.set()
        while not stop.is_set():
            for messages in consumer.poll(timeout_ms=50).values():
                now_ms = time.time() * 1000
                for message in messages:
                    crossing = orjson.loads(message.value)
                    # Only crossings of the offered events: decay steps of the first phase's
                    # leads come due meanwhile, stamped with their due time, not a produce time.
                    if crossing.get("kind") == "lead" and crossing["lead_id"].startswith(LIVE_PREFIX):
                        latencies.append(now_ms - crossing["time"])
        consumer.close()

    ready = threading.Event()
    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    ready.wait(30)
    partitions = producer_partitions(settings, [settings.topic_events])
    producer = open_producer(settings)
    tick_s = 0.02
    per_tick = max(1, int(rate_per_s * tick_s))
    generator = workload.generate(int(rate_per_s * seconds), leads, seed, 0, 1)
    deadline = time.monotonic()
    try:
        for _ in range(int(seconds / tick_s)):
            now_ms = int(time.time() * 1000)
            chunk = []
            for _ in range(per_tick):
                event = next(generator)
                event["time"] = now_ms
                event["lead_id"] = LIVE_PREFIX + event["lead_id"]
                chunk.append((event["lead_id"], orjson.dumps(event)))
            produce(producer, settings.topic_events, chunk, events_per_message=per_tick, partitions=partitions)
            deadline += tick_s
            time.sleep(max(0.0, deadline - time.monotonic()))
    finally:
        producer.close()
    time.sleep(2.0)
    stop.set()
    listener.join(10)
    return latencies


def run(settings: Settings, events: int, leads: int, seed: int, events_per_message: int, metrics: bool, workers: int = 1) -> dict[str, Any]:
    with bench_pipeline(settings, metrics) as settings:
        return _measure(settings, events, leads, seed, events_per_message, metrics, workers)


def _measure(settings: Settings, events: int, leads: int, seed: int, events_per_message: int, metrics: bool,
             workers: int) -> dict[str, Any]:
    now_ms = int(time.time() * 1000)
    data = workload.serialized(events, leads, seed, now_ms - 30 * DAY_MS, 30 * DAY_MS)
    producer = open_producer(settings)
    try:
        produce(producer, settings.topic_events, ((orjson.loads(e)["lead_id"], e) for e in data), events_per_message,
                partitions=producer_partitions(settings, [settings.topic_events]))
    finally:
        producer.close()
    del data

    raw_passes = [asyncio.run(raw_ceiling(settings, events)) for _ in range(RAW_PASSES)]
    raw_events_per_s = statistics.median(raw_passes)

    probe = LagProbe(settings)
    # Several workers share the partitions as a deployment would run them: each its own
    # process, web port and data directory, one consumer group.
    fleet = [
        WorkerProcess(replace(settings, worker_port=free_port() if i else settings.worker_port,
                              state_dir=settings.state_dir.parent / f"w{i}"))
        for i in range(workers)
    ]
    try:
        for worker in fleet:
            worker.spawn()
        # The clock starts when the first worker is ready: it scores while the others join.
        _first_ready(fleet)
        started, cpu_before = time.time(), [worker.cpu_s() for worker in fleet]
        probe.wait_caught_up(settings.app_id, [settings.topic_events, settings.topic_accounts], timeout_s=1800)
        committed_s = time.time() - started
        cpu_s = sum(worker.cpu_s() - before for worker, before in zip(fleet, cpu_before))
        # The end is the last batch of either stage done, its outputs and states acknowledged:
        # the group's committed offsets, which told that it was over, trail it by up to the
        # worker's commit interval (1 s).
        elapsed = max(value for worker in fleet for value in worker.metric("leadstream_batch_done_timestamp_seconds")) - started
        latencies = crossing_latencies(settings, rate_per_s=5000, seconds=10, leads=5000, seed=seed + 1)
        state_leads = sum(sum(worker.metric("leadstream_leads_in_state")) for worker in fleet)
        rss = sum(worker.peak_rss_mb() for worker in fleet)
    finally:
        for worker in fleet:
            worker.stop()
    recovering = WorkerProcess(settings)
    try:
        began = time.perf_counter()
        recovering.start(ready_timeout_s=1800)
        recovery_s = time.perf_counter() - began
    finally:
        recovering.stop()
        probe.close()
    ordered = sorted(latencies)
    return {
        "events": events,
        "leads": leads,
        "events_per_message": events_per_message,
        "metrics": metrics,
        "workers": workers,
        "raw_events_per_s": round(raw_events_per_s),
        "raw_events_per_s_passes": [round(rate) for rate in raw_passes],
        "pipeline_events_per_s": round(events / elapsed),
        "ratio": round(events / elapsed / raw_events_per_s, 3),
        "pipeline_s": round(elapsed, 2),
        "offsets_committed_s": round(committed_s, 2),
        # Steadier than wall time on a shared machine: CPU stolen by neighbours is not counted.
        # All workers together, as is the peak memory.
        "worker_cpu_us_per_event": round(cpu_s / events * 1e6, 1),
        "crossing_latency_ms_p50": round(statistics.median(ordered), 1) if ordered else None,
        "crossing_latency_ms_p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 1) if ordered else None,
        "latency_crossings": len(ordered),
        "state_leads": int(state_leads),
        "worker_peak_rss_mb": round(rss, 1),
        "recovery_s": round(recovery_s, 2),
    }


def _first_ready(fleet: list[WorkerProcess], timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(worker.ready() for worker in fleet):
            return
        time.sleep(0.02)
    raise TimeoutError(f"no worker ready within {timeout_s:.0f} s:\n{fleet[0].tail()}")


def main(args: argparse.Namespace, settings: Settings) -> int:
    if not 1 <= args.workers <= settings.partitions:
        raise SystemExit(f"--workers must be between 1 and the partition count ({settings.partitions}), got {args.workers}")
    result = run(settings, args.events, args.leads, args.seed, args.events_per_message, metrics=not args.no_metrics,
                 workers=args.workers)
    print_figures(result, args.json)
    return 0
