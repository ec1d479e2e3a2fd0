"""Records the events topic deleted before a running worker read them (streams/log_start.py,
streams/offset_sequence.py): counted and told as a seek finding them tells them."""

from __future__ import annotations

import logging
import os
import signal
import time
import uuid
from typing import Callable

import orjson
import pytest
from faust.types import TP
from kafka import KafkaAdminClient, KafkaProducer, TopicPartition
from prometheus_client import REGISTRY

from streams import log_start

from streams.partitioning import partition_for
from streams.processes import WorkerProcess
from streams.settings import Settings
from tests.infra import wait_for

LEAD = "behind-ada"


def send(settings: Settings, first: int, count: int) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    at_ms = int(time.time() * 1000)
    for n in range(first, first + count):
        producer.send(settings.topic_events, key=LEAD.encode(), partition=partition_for(LEAD, settings.partitions),
                      value=orjson.dumps({"event_id": f"behind-{n}", "lead_id": LEAD, "type": "page_view", "product": "b2b",
                                          "time": at_ms + n, "properties": {"url": "https://acme.io/pricing"}}))
    producer.flush()
    producer.close()


def anomalies(running: WorkerProcess, kind: str) -> float:
    text = running.get("/metrics")[1].decode()
    series = f'leadstream_offset_anomalies_total{{kind="{kind}"}} '
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(series))


def test_a_running_worker_whose_unread_records_are_deleted_counts_and_tells_them_and_scores_on(
    isolated: Settings, worker: Callable[..., WorkerProcess]
) -> None:
    """Retention or delete-records removing records a running worker had not read yet: its
    fetch was moved on to the log's start, and the hole it left was looked up in the log, which
    was moved on alike and found no record: counted as `log_hole`, harmless, the events lost
    with no word (aiokafka's one INFO line)."""
    running = worker(isolated)
    consumed = lambda: sum(running.metric("leadstream_events_consumed_total"))  # noqa: E731
    send(isolated, 0, 3)
    wait_for(lambda: consumed() == 3, what="the first events scored")
    tp = TopicPartition(isolated.topic_events, partition_for(LEAD, isolated.partitions))
    assert running.proc is not None
    os.kill(running.proc.pid, signal.SIGSTOP)  # behind, for a few seconds: well within its session
    try:
        send(isolated, 3, 12)  # offsets 3 to 14; a fetch waiting when it stopped may have taken the first
        admin = KafkaAdminClient(bootstrap_servers=isolated.kafka_bootstrap)
        admin.delete_records({tp: 12})
        admin.close()
    finally:
        os.kill(running.proc.pid, signal.SIGCONT)
    send(isolated, 15, 1)
    # Every event either scored or told as deleted unread.
    wait_for(lambda: consumed() + anomalies(running, "deleted_unread") == 16, what="each event scored or told deleted")
    lost = int(anomalies(running, "deleted_unread"))
    assert 8 <= lost <= 9 and consumed() == 16 - lost  # 3 or 4 to 11
    told = [line for line in running.log.read_text().splitlines() if "deleted before this group read them" in line]
    assert len(told) == 1 and "WARNING" in told[0], told
    assert (f"topic={tp.topic} partition={tp.partition} read_up_to={12 - lost} log_start=12 lost={lost} "
            "(the group was stopped or behind longer than the topic keeps its records") in told[0], told
    assert anomalies(running, "log_hole") == 0 and anomalies(running, "gap") == 0
    assert running.metric("leadstream_rebalances_total") == [1.0]  # the running worker's reading, not a seek's


def test_a_running_worker_whose_unread_account_updates_are_deleted_counts_and_tells_them(
    isolated: Settings, worker: Callable[..., WorkerProcess]
) -> None:
    """The account-updates topic, read by the roll-up, alike: its holes were gaps, alerted as a
    worker stopping itself, where the log had deleted them before the roll-up read them."""
    from streams.history import read_to_end

    running = worker(isolated)
    producer = KafkaProducer(bootstrap_servers=isolated.kafka_bootstrap)
    producer.send(isolated.topic_events, key=LEAD.encode(), partition=partition_for(LEAD, isolated.partitions),
                  value=orjson.dumps({"event_id": "acct-0", "lead_id": LEAD, "type": "page_view", "product": "b2b",
                                      "account_id": "acme", "time": int(time.time() * 1000),
                                      "properties": {"url": "https://acme.io/pricing"}}))
    producer.flush()
    wait_for(lambda: len(list(read_to_end(isolated, isolated.topic_accounts))) == 1, what="the member's update")
    [update] = list(read_to_end(isolated, isolated.topic_accounts))
    wait_for(lambda: running.get("/accounts/acme/")[0] == 200, what="the update rolled up")
    tp = TopicPartition(isolated.topic_accounts, update.partition)
    assert running.proc is not None
    os.kill(running.proc.pid, signal.SIGSTOP)  # behind, for a few seconds: well within its session
    try:
        for _ in range(12):  # offsets 1 to 12: the update again, which the account knows; one a batch, as
            # the worker's fetch waiting when it stopped may take the first batch there is
            producer.send(tp.topic, key=update.key, value=update.value, partition=tp.partition)
            producer.flush()
        admin = KafkaAdminClient(bootstrap_servers=isolated.kafka_bootstrap)
        admin.delete_records({tp: 10})
        admin.close()
    finally:
        os.kill(running.proc.pid, signal.SIGCONT)
    producer.send(tp.topic, key=update.key, value=update.value, partition=tp.partition)
    producer.close()
    wait_for(lambda: anomalies(running, "deleted_unread") + anomalies(running, "gap") >= 8, what="the hole told")
    lost = int(anomalies(running, "deleted_unread"))
    assert 8 <= lost <= 9, lost
    told = [line for line in running.log.read_text().splitlines() if "deleted before this group read them" in line]
    assert len(told) == 1 and f"topic={tp.topic} partition={tp.partition} read_up_to={10 - lost} log_start=10" in told[0], told
    assert anomalies(running, "gap") == 0


def test_a_hole_told_by_the_running_worker_is_not_told_again_by_the_seek_of_a_rebalance_before_its_commit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A rebalance before the group commits past the hole seeks the partition back to the offset
    committed before it, where the log still starts: the seek's check counted the hole again, and
    the offsets the worker had read and scored since that commit besides."""
    counted = lambda: REGISTRY.get_sample_value("leadstream_offset_anomalies_total", {"kind": "deleted_unread"}) or 0.0  # noqa: E731
    topic = f"t-told-{uuid.uuid4().hex[:8]}"
    before = counted()
    seeks = log_start.LogStarts()
    with caplog.at_level(logging.WARNING, logger="leadstream.worker"):
        log_start.deleted_unread(topic, 0, 12, 20, "read_up_to")  # committed 5, read 5 to 11, then moved on to 20
        seeks.check({TP(topic, 0): 5}, {TP(topic, 0): 20})  # a rebalance: sought to 5, the log starting at 20
        assert counted() - before == 8
        seeks.check({TP(topic, 0): 5}, {TP(topic, 0): 26})  # deleted further before the group read on
    assert counted() - before == 14
    told = [record.getMessage() for record in caplog.records if "deleted before this group read them" in record.getMessage()]
    assert [line.split(" (")[0] for line in told] == [
        f"offsets deleted before this group read them, never to be scored: topic={topic} partition=0 read_up_to=12 log_start=20 lost=8",
        f"offsets deleted before this group read them, never to be scored: topic={topic} partition=0 committed=5 log_start=26 lost=6"]
