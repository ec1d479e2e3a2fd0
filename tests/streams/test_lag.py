"""The lag probes of the worker and the connectors (streams/lag.py), on the real broker."""

from __future__ import annotations

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from streams.lag import LagProbe
from streams.settings import INT32_MAX, Settings


@pytest.mark.parametrize("connect_timeout_s", [540, INT32_MAX])
def test_a_connect_timeout_of_9_minutes_or_more_still_opens_the_probe(isolated: Settings, connect_timeout_s: int) -> None:
    # kafka-python's consumer refused a request timeout not under its connections' idle time
    # (540 s): the probe never opened, and the worker and connectors were never ready.
    probe = LagProbe(isolated.with_overrides(kafka_connect_timeout_s=connect_timeout_s))
    try:
        assert probe.lag(isolated.app_id, isolated.topic_events) == dict.fromkeys(range(isolated.partitions), 0)
    finally:
        probe.close()


def send(settings: Settings, tp: TopicPartition, count: int) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    try:
        for n in range(count):
            producer.send(tp.topic, key=b"k", value=b"%d" % n, partition=tp.partition)
        producer.flush()
    finally:
        producer.close()


def test_offsets_the_log_deleted_before_the_group_read_them_are_no_lag(isolated: Settings) -> None:
    # Counted from offset 0 (no committed offset) or from a committed offset the log no longer
    # has, they were a lag no one could work off: a webhook connector's 16 dead letters, deleted
    # as the dead-letter topic's retention would, kept its dead-letter depth at 16 for good.
    tp = TopicPartition(isolated.topic_events, 1)
    send(isolated, tp, 5)
    admin = KafkaAdminClient(bootstrap_servers=isolated.kafka_bootstrap)
    try:
        admin.delete_records({tp: 5})
    finally:
        admin.close()
    behind = f"{isolated.app_id}-behind"
    committer = KafkaConsumer(bootstrap_servers=isolated.kafka_bootstrap, group_id=behind, enable_auto_commit=False)
    try:
        committer.commit({tp: OffsetAndMetadata(2, "", -1)})  # read up to 2 before the records went
    finally:
        committer.close()
    probe = LagProbe(isolated)
    try:
        assert probe.lag(isolated.app_id, tp.topic)[1] == 0
        assert probe.lag(behind, tp.topic)[1] == 0
        send(isolated, tp, 3)  # records after the log's start wait as ever
        assert probe.lag(isolated.app_id, tp.topic)[1] == 3
        assert probe.lag(behind, tp.topic)[1] == 3
    finally:
        probe.close()
