"""Events from a producer with transactions (streams/transactions.py): committed ones scored,
aborted ones never, and a transaction's markers are no lost offsets, at the head of an
assignment either."""

from __future__ import annotations

import time
import uuid
from typing import Callable

import orjson
from kafka import KafkaProducer

from streams.processes import WorkerProcess
from streams.settings import Settings
from tests.infra import wait_for

LEAD = "tx-ada"


def pricing(n: int, at_ms: int, url: str = "https://acme.io/pricing") -> bytes:
    return orjson.dumps({"event_id": f"tx-{n}", "lead_id": LEAD, "type": "page_view", "product": "b2b", "time": at_ms,
                         "properties": {"url": url, "time_on_page_s": 20}})


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
