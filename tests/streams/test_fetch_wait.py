"""streams/fetch_wait.py on aiokafka's own consumer, and on a consumer not built as Faust builds it."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

import pytest
from aiokafka import AIOKafkaConsumer

from streams import fetch_wait
from streams.settings import Settings


def test_the_wait_is_set_where_aiokafkas_fetcher_reads_it_for_each_request(isolated: Settings) -> None:
    # The worker's log only says the value was found; this checks that the fetcher now holds the
    # new one (its FetchRequests read `_fetch_max_wait_ms`), on a started aiokafka consumer as
    # Faust's consumer thread keeps it.
    async def scenario() -> tuple[bool, int]:
        consumer = AIOKafkaConsumer(isolated.topic_events, bootstrap_servers=isolated.kafka_bootstrap, fetch_max_wait_ms=1500)
        await consumer.start()
        try:
            faust_like = SimpleNamespace(_thread=SimpleNamespace(_consumer=consumer))
            return fetch_wait.install(faust_like, 70), consumer._fetcher._fetch_max_wait_ms
        finally:
            await consumer.stop()

    assert asyncio.run(scenario()) == (True, 70)


def test_a_consumer_built_otherwise_is_left_alone_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    consumer = SimpleNamespace(_thread=SimpleNamespace(_consumer=SimpleNamespace()))
    with caplog.at_level(logging.WARNING, logger="leadstream.worker"):
        assert fetch_wait.install(consumer, 50) is False
    assert "fetch wait not set" in caplog.text and "_fetcher" in caplog.text
