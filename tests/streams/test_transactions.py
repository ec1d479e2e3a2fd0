"""Events from a producer with transactions (streams/transactions.py): committed ones scored,
aborted ones never, and a transaction's markers are no lost offsets, at the head of an
assignment either."""

from __future__ import annotations

import asyncio
import errno
import logging
import threading
import time
import uuid
from typing import Callable

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from streams.partitioning import partition_for
from streams.processes import WorkerProcess
from streams.settings import Settings
from streams.transactions import LogReader
from tests.infra import send_batched, wait_for

LEAD = "tx-ada"
#: How long abort_large's transaction may stay open: 10 minutes, under the broker's longest (15).
TRANSACTION_TIMEOUT_MS = 600_000


def pricing(n: int, at_ms: int, url: str = "https://acme.io/pricing") -> bytes:
    return orjson.dumps({"event_id": f"tx-{n}", "lead_id": LEAD, "type": "page_view", "product": "b2b", "time": at_ms,
                         "properties": {"url": url, "time_on_page_s": 20}})


def send(settings: Settings, *values: bytes) -> None:
    plain = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    for value in values:
        plain.send(settings.topic_events, key=LEAD.encode(), value=value)
    plain.flush()
    plain.close()


def abort_large(settings: Settings, records: int, at_ms: int) -> None:
    """One transaction of `records` events of 1 KB each on the lead's partition, aborted."""
    asyncio.run(_abort_large(settings, records, at_ms))


async def _abort_large(settings: Settings, records: int, at_ms: int) -> None:
    # kafka-python's 80,000 sends took 163 s of the test's 223 on a loaded machine (send_batched).
    # The broker aborts a transaction open longer than its producer's timeout (60 s by default)
    # and fences the producer: the next send failed (BUMPING_PRODUCER_EPOCH).
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, transactional_id=f"tx-{uuid.uuid4().hex}",
                                max_batch_size=1_000_000, max_request_size=2_000_000,
                                transaction_timeout_ms=TRANSACTION_TIMEOUT_MS)
    await producer.start()
    try:
        await producer.begin_transaction()
        partition, tag = partition_for(LEAD, settings.partitions), uuid.uuid4().hex
        values = (orjson.dumps({"event_id": f"tx-aborted-{tag}-{n}", "lead_id": LEAD, "type": "page_view", "product": "b2b",
                                "time": at_ms, "properties": {"url": "https://acme.io/demo", "pad": "q" * 900}}) for n in range(records))
        await send_batched(producer, settings.topic_events, ((partition, LEAD.encode(), value) for value in values))
        await producer.abort_transaction()  # every record is in the log before the abort marker
    finally:
        await producer.stop()


def lag_of(running: WorkerProcess, settings: Settings) -> float | None:
    series = f'leadstream_consumer_lag{{partition="{partition_for(LEAD, settings.partitions)}",topic="{settings.topic_events}"}}'
    found = [line for line in running.get("/metrics")[1].decode().splitlines() if line.startswith(series + " ")]
    return float(found[0].rsplit(" ", 1)[1]) if found else None


def score(worker: WorkerProcess) -> float | None:
    status, body = worker.get(f"/leads/{LEAD}/")
    return orjson.loads(body)["models"]["b2b"]["score"] if status == 200 else None


def test_committed_events_score_aborted_ones_never_and_markers_are_no_lost_offsets(
    isolated: Settings, worker: Callable[..., WorkerProcess]
) -> None:
    # Aborted events were scored (their crossings reached the CRMs), each commit marker was
    # logged and counted as skipped offsets, and a worker whose committed offset was a marker
    # stopped itself at every start.
    now = int(time.time() * 1000) - 60_000
    producer = KafkaProducer(bootstrap_servers=isolated.kafka_bootstrap, transactional_id=f"tx-{uuid.uuid4().hex}")
    producer.init_transactions()

    def transaction(value: bytes, commit: bool) -> None:
        producer.begin_transaction()
        producer.send(isolated.topic_events, key=LEAD.encode(), value=value)
        producer.flush()
        producer.commit_transaction() if commit else producer.abort_transaction()

    first = worker()
    transaction(pricing(1, now), commit=True)  # 10 points
    transaction(pricing(2, now + 1, "https://acme.io/demo"), commit=False)  # never to score
    wait_for(lambda: score(first) == 10, 60, "the committed event scored", 0.3)
    first.stop()  # its committed offset: the commit marker's, right after the event

    transaction(pricing(3, now + 2, "https://acme.io/demo"), commit=False)
    plain = KafkaProducer(bootstrap_servers=isolated.kafka_bootstrap)
    plain.send(isolated.topic_events, key=LEAD.encode(), value=pricing(4, now + 3))  # 10 more
    plain.flush()
    plain.close()
    producer.close()

    second = worker()
    wait_for(lambda: score(second) == 20, 60, "the plain event scored after the aborted one", 0.3)
    assert second.proc is not None and second.proc.poll() is None, second.tail()
    metrics = second.get("/metrics")[1].decode()
    assert 'leadstream_offset_anomalies_total{kind="log_hole"}' in metrics
    assert 'leadstream_offset_anomalies_total{kind="gap"} 0.0' in metrics
    for proc in (first, second):
        log = proc.log.read_text()
        assert "offsets skipped" not in log and "were never handed" not in log, proc.tail()


def test_a_transaction_s_marker_at_a_partition_s_end_is_no_lag(isolated: Settings, worker: Callable[..., WorkerProcess]) -> None:
    # The group commits up to the last record, never past the marker after it: the partition
    # showed a lag of 1 for good once the producer went quiet, and the stalled-scoring alert fired.
    producer = KafkaProducer(bootstrap_servers=isolated.kafka_bootstrap, transactional_id=f"tx-{uuid.uuid4().hex}")
    producer.init_transactions()
    producer.begin_transaction()
    sent = producer.send(isolated.topic_events, key=LEAD.encode(), value=pricing(1, int(time.time() * 1000) - 60_000))
    producer.commit_transaction()
    producer.close()
    running = worker()
    wait_for(lambda: score(running) == 10, 60, "the event scored", 0.3)
    partition = f'leadstream_consumer_lag{{partition="{sent.get().partition}",topic="{isolated.topic_events}"}}'

    def lag() -> float | None:
        found = [line for line in running.get("/metrics")[1].decode().splitlines() if line.startswith(partition + " ")]
        return float(found[0].rsplit(" ", 1)[1]) if found else None

    wait_for(lambda: lag() is not None, 30, "the partition's lag measured", 0.5)
    wait_for(lambda: lag() == 0, 30, "no lag for the marker", 0.5)


def test_a_large_aborted_transaction_is_a_log_hole_at_the_head_of_an_assignment_and_further_on(
    isolated: Settings, worker: Callable[..., WorkerProcess]
) -> None:
    # 80 MB of aborted records take the log reader longer than its 5 s timeout to read through,
    # which took the hole for lost records: the worker stopped itself at every start after it
    # (SkippedOffsets at the head of its assignment), and, while running, counted it as a gap
    # and showed it as lag for good on a partition holding nothing to read.
    now = int(time.time() * 1000) - 60_000
    first = worker()
    send(isolated, pricing(1, now))
    wait_for(lambda: score(first) == 10, 60, "the first event scored", 0.3)
    first.stop()

    abort_large(isolated, 80_000, now + 1)
    send(isolated, pricing(2, now + 2))
    second = worker()
    wait_for(lambda: score(second) == 20 or second.proc is None or second.proc.poll() is not None, 120,
             "the event after the aborted transaction scored", 0.5)
    assert second.proc is not None and second.proc.poll() is None, second.tail()
    assert score(second) == 20

    abort_large(isolated, 80_000, now + 3)  # while it runs, with nothing after it: all it holds is gone past
    wait_for(lambda: lag_of(second, isolated) == 0, 120, "no lag for the aborted records", 1.0)
    send(isolated, pricing(3, now + 4))
    wait_for(lambda: score(second) == 30, 60, "the event after the second aborted transaction scored", 0.3)
    wait_for(lambda: second.metric("leadstream_offset_anomalies_total") and
             'leadstream_offset_anomalies_total{kind="log_hole"} 160002.0' in second.get("/metrics")[1].decode(),
             30, "both transactions counted as log holes", 0.5)
    assert 'leadstream_offset_anomalies_total{kind="gap"} 0.0' in second.get("/metrics")[1].decode()
    log = second.log.read_text()
    assert "offsets skipped" not in log and "were never handed" not in log, second.tail()


def test_a_transaction_per_message_leaves_no_gap_and_holds_no_gauge_back(
    isolated: Settings, worker: Callable[..., WorkerProcess]
) -> None:
    # Each message's commit marker is a hole, and each was looked up alone (18 ms), inside the
    # timer that refreshes the lag and readiness gauges: six producers committing 580
    # transactions a second held them for 4.6 minutes, and holes beyond 10,000 waiting were
    # counted as gaps at once (tests/streams/test_offset_sequence.py has that many).
    running = worker()
    now = int(time.time() * 1000) - 60_000
    sent: list[int] = []

    def produce(name: str) -> None:
        producer = KafkaProducer(bootstrap_servers=isolated.kafka_bootstrap, transactional_id=f"tx-{uuid.uuid4().hex}", linger_ms=0)
        producer.init_transactions()
        n, until = 0, time.monotonic() + 20
        while time.monotonic() < until:
            producer.begin_transaction()
            lead = f"tx-{name}-{n % 50}"
            producer.send(isolated.topic_events, key=lead.encode(),
                          value=orjson.dumps({"event_id": f"tx-{name}-{n}", "lead_id": lead, "type": "page_view",
                                              "product": "b2b", "time": now + n, "properties": {"url": "https://acme.io/blog/x"}}))
            producer.commit_transaction()
            n += 1
        producer.close()
        sent.append(n)

    producers = [threading.Thread(target=produce, args=(str(p),)) for p in range(4)]
    for thread in producers:
        thread.start()
    for thread in producers:
        thread.join()

    def scored() -> float:
        return sum(running.metric("leadstream_events_scored_total"))

    wait_for(lambda: scored() == sum(sent), 60, f"the {sum(sent)} events scored", 0.5)
    # Every marker before its partition's last event (none after it shows a marker as a hole):
    # not each partition's last marker alone, as the four producers' transactions interleave, and
    # two or more markers may follow a partition's last event (the fresh clone's run waited for
    # a count one short of that for good).
    holes = markers_before_the_last_event(isolated)
    assert sum(sent) - isolated.partitions * len(producers) <= holes <= sum(sent)
    wait_for(lambda: 'leadstream_offset_anomalies_total{kind="log_hole"} %d.0' % holes
             in running.get("/metrics")[1].decode(), 30, "every marker counted as a log hole", 0.5)
    assert 'leadstream_offset_anomalies_total{kind="gap"} 0.0' in running.get("/metrics")[1].decode()
    log = running.log.read_text()
    assert "offsets skipped" not in log, running.tail()
    assert "Timer observe is overlapping" not in log, running.tail()  # the lag and readiness gauges were not held


def markers_before_the_last_event(settings: Settings) -> int:
    """The offsets of the events topic that hold no committed event, before each partition's last event."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, isolation_level="read_committed",
                             enable_auto_commit=False)
    try:
        partitions = [TopicPartition(settings.topic_events, p) for p in range(settings.partitions)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        end = consumer.end_offsets(partitions)  # read committed: the last stable offset, every transaction ended
        last: dict[int, int] = {}
        events: dict[int, int] = {}
        deadline = time.monotonic() + 60
        while any(consumer.position(tp) < end[tp] for tp in partitions):
            assert time.monotonic() < deadline, "the events topic not read to its end in 60 s"
            for records in consumer.poll(timeout_ms=500).values():
                for message in records:
                    last[message.partition] = message.offset
                    events[message.partition] = events.get(message.partition, 0) + 1
        return sum(last[p] + 1 - events[p] for p in last)
    finally:
        consumer.close()


def test_lookups_out_of_open_files_say_so_once_an_interval(
    isolated: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """At the open-file limit, each round (a second apart) warned that the offsets were not
    looked up, with the error alone: a line a second, saying nothing of what to do."""
    reader = LogReader(isolated)

    def refused() -> None:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(reader, "_open", refused)
    with caplog.at_level(logging.WARNING, logger="leadstream.worker"):
        for _ in range(3):
            assert reader.look_up(isolated.topic_events, 0, [(3, 5)], 0.1) == ([], 3)
        assert reader.log_start(isolated.topic_events, 0) is None
    lines = [record.getMessage() for record in caplog.records if record.name == "leadstream.worker"]
    assert len(lines) == 1 and lines[0].startswith("looking holes in the offsets up in the log not done, out of open files"), lines


def test_a_partition_held_back_by_an_open_transaction_is_told_apart_from_a_stalled_stage(
    isolated: Settings, worker: Callable[..., WorkerProcess]
) -> None:
    # read_committed reads nothing past an open transaction's first record, the plain events
    # after it included: leadstream_stage_stalled_seconds grew with the lag and
    # LeadstreamScoringStalled fired on a worker that had read all it could, with nothing to
    # tell the operator that a producer's transaction, not the worker, held the partition.
    now = int(time.time() * 1000) - 60_000
    send(isolated, pricing(1, now))
    running = worker()
    wait_for(lambda: score(running) == 10, 60, "the event before the transaction scored", 0.3)
    producer = KafkaProducer(bootstrap_servers=isolated.kafka_bootstrap, transactional_id=f"tx-{uuid.uuid4().hex}",
                             transaction_timeout_ms=TRANSACTION_TIMEOUT_MS)
    producer.init_transactions()
    producer.begin_transaction()
    producer.send(isolated.topic_events, key=LEAD.encode(), value=pricing(2, now + 1))
    producer.flush()  # in the log, its transaction left open
    send(isolated, pricing(3, now + 2))  # a plain event behind it
    partition = partition_for(LEAD, isolated.partitions)
    series = f'leadstream_open_transaction_wait_seconds{{partition="{partition}",topic="{isolated.topic_events}"}}'

    def held_s() -> float | None:
        found = [line for line in running.get("/metrics")[1].decode().splitlines() if line.startswith(series + " ")]
        return float(found[0].rsplit(" ", 1)[1]) if found else None

    try:
        wait_for(lambda: (held_s() or 0) >= 15, 60, "the wait on the open transaction measured", 0.5)
        assert lag_of(running, isolated) == 2  # the lag still counts what waits
        # Moved on at each lag measure (every 5 s) while nothing the worker can read waits.
        assert max(running.metric("leadstream_stage_stalled_seconds")) < 10, running.get("/metrics")[1].decode()
        assert score(running) == 10
        producer.commit_transaction()
    finally:
        producer.close()
    wait_for(lambda: score(running) == 30, 60, "the events behind the transaction scored once it committed", 0.3)
    wait_for(lambda: held_s() == 0, 30, "no wait once the transaction committed", 0.5)
