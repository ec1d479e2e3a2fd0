"""kafka-python clients as every leadstream command opens them.

kafka-python waits 30 s for a broker's first answer (its `bootstrap_timeout_ms`): a command run
against a broker that is down sat silent that long. Ours wait LEADSTREAM_KAFKA_CONNECT_TIMEOUT_S,
then fail with a ServiceError naming the address and the setting.
"""

from __future__ import annotations

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
