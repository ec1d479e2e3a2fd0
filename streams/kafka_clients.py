"""kafka-python clients as every leadstream command opens them.

kafka-python waits 30 s for a broker's first answer (its `bootstrap_timeout_ms`): a command run
against a broker that is down sat silent that long. Ours wait LEADSTREAM_KAFKA_CONNECT_TIMEOUT_S,
then fail with a ServiceError naming the address and the setting.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any, Callable, TypeVar

from streams.errors import kafka_unreachable
from streams.settings import Settings

C = TypeVar("C")

#: kafka-python's default: it closes a connection idle this long.
CONNECTIONS_MAX_IDLE_MS = 9 * 60 * 1000


def open_client(settings: Settings, client: Callable[..., C], **config: Any) -> C:
    """`client` (KafkaAdminClient, KafkaConsumer or KafkaProducer) of the settings' broker, with `config`."""
    from kafka.errors import KafkaError

    # kafka-python's consumer refuses a request timeout that is not under the idle time it
    # closes connections after (KafkaConfigurationError): the lag probes, which wait
    # LEADSTREAM_KAFKA_CONNECT_TIMEOUT_S, failed to open at 540 s or more, and the worker and
    # connectors were never ready. The idle time follows a timeout that long.
    request_timeout_ms = config.get("request_timeout_ms", 0)
    if request_timeout_ms >= CONNECTIONS_MAX_IDLE_MS and "connections_max_idle_ms" not in config:
        config["connections_max_idle_ms"] = request_timeout_ms + 1000
    try:
        return client(bootstrap_servers=settings.kafka_bootstrap,
                      bootstrap_timeout_ms=settings.kafka_connect_timeout_s * 1000, **config)
    except KafkaError as exc:
        raise kafka_unreachable(settings.kafka_bootstrap, exc, settings.kafka_connect_timeout_s) from exc


def end_offsets(settings: Settings, topics: Iterable[str], partitions: Collection[int]) -> dict[int, dict[str, int]]:
    """Partition -> topic -> its end offset now, the next offset to be written: past every record,
    those of a transaction still open included (the consumer reads uncommitted records, so the
    broker answers the high watermark, not the last stable offset). Raises kafka-python's
    KafkaError, or ServiceError when the broker cannot be reached."""
    from kafka import KafkaConsumer, TopicPartition

    # A broker that stops answering is told within the connect timeout, not kafka-python's 305 s:
    # the worker asks from within a batch.
    consumer: Any = open_client(settings, KafkaConsumer, enable_auto_commit=False, client_id="leadstream-end-offsets",
                                request_timeout_ms=settings.kafka_connect_timeout_s * 1000)
    try:
        ends = consumer.end_offsets([TopicPartition(topic, partition) for topic in topics for partition in partitions])
    finally:
        consumer.close()
    by_partition: dict[int, dict[str, int]] = {partition: {} for partition in partitions}
    for tp, end in ends.items():
        by_partition[tp.partition][tp.topic] = end
    return by_partition
