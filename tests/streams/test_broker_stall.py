"""A broker that stops answering (hung, or cut off from a process without a reset) makes the
worker, the collector and a connector not ready until it answers again: each said it was ready
throughout, so no load balancer nor alert on readiness saw the outage. And a broker stopped and
started again leaves the collector writing as before."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from pathlib import Path
from typing import Iterator

import pytest

from streams import services
from streams.collector import METADATA_RETRY_S, KafkaWriter, Outgoing
from streams.errors import Unavailable
from streams.processes import CollectorProcess, WorkerProcess, free_port
from streams.settings import Settings
from streams.topics import ensure_topics
from tests.infra import wait_for
from tests.streams.test_worker_stop import own_kafka  # noqa: F401 - the fixture


class ConnectorProcess(WorkerProcess):
    """A `leadstream sink redis` child process; its probes on LEADSTREAM_METRICS_PORT."""

    command = "sink"
    args = ("redis",)

    @property
    def port(self) -> int:
        return self.settings.metrics_port


@pytest.fixture
def fleet(tmp_path: Path, own_kafka: services.Kafka) -> Iterator[list[WorkerProcess]]:  # noqa: F811 - the fixture
    settings = own_kafka.settings.namespaced(
        "stall", state_dir=tmp_path / "worker-state", worker_port=free_port(), collector_port=free_port(),
        collector_metrics_port=free_port(), metrics_port=free_port(), collector_write_keys="stall-key=web",
        redis_url=Settings().redis_url, redis_prefix=f"stall-{tmp_path.name}", kafka_connect_timeout_s=3)
    ensure_topics(settings)
    processes = [WorkerProcess(settings), CollectorProcess(settings), ConnectorProcess(settings)]
    try:
        for process in processes:
            process.start()
        yield processes
    finally:
        for process in processes:
            process.kill()


def test_every_process_is_not_ready_while_its_broker_does_not_answer(own_kafka: services.Kafka,  # noqa: F811
                                                                      fleet: list[WorkerProcess]) -> None:
    broker = own_kafka.pid()
    assert broker is not None
    os.killpg(broker, signal.SIGSTOP)  # its connections stay open, and nothing answers on them
    try:
        for process in fleet:
            wait_for(lambda: process.get("/readyz")[0] == 503, 45, f"the {process.command} not ready", 0.5)
    finally:
        os.killpg(broker, signal.SIGCONT)
    for process in fleet:
        wait_for(lambda: process.ready(), 90, f"the {process.command} ready again", 0.5)


def test_a_collector_whose_broker_restarts_writes_every_partition_again_and_waits_between_its_retries(
    own_kafka: services.Kafka, caplog: pytest.LogCaptureFixture  # noqa: F811
) -> None:
    """After a graceful stop and start of its broker, the collector refused every call of one
    partition with 503 (OutOfOrderSequenceNumber) until it was restarted, while /readyz said
    ready: aiokafka's idempotent producer had given up on a batch of that partition, leaderless
    during the stop, after numbering it. And while the broker was down it asked for metadata
    ~1,200 times a second, as fast as each connect was refused."""
    settings = own_kafka.settings.namespaced("restart")
    ensure_topics(settings)
    writer = KafkaWriter(settings)

    async def scenario() -> tuple[int, float]:
        await writer.connect()
        watching = asyncio.create_task(writer.watch(interval_s=1))
        every_partition = [Outgoing(settings.topic_events, p, b"u", b"{}") for p in range(writer.partitions[settings.topic_events])]
        stopping = False

        async def feed() -> None:  # writes under way when the broker stops, as clients keep sending
            while not stopping:
                with contextlib.suppress(Unavailable):
                    await writer.write(every_partition)
                await asyncio.sleep(0.02)

        feeding = asyncio.create_task(feed())
        try:
            await asyncio.sleep(1)
            broker = own_kafka.pid()
            assert broker is not None
            os.killpg(broker, signal.SIGTERM)
            await asyncio.sleep(4)  # stopped by now
            caplog.clear()
            started = time.monotonic()
            await asyncio.sleep(5)
            asks = sum(1 for r in caplog.records if r.name == "aiokafka" and r.msg == "Unable to update metadata from %s")
            per_s = asks / (time.monotonic() - started)
            await asyncio.to_thread(own_kafka.up)
            stopping = True
            await feeding
            deadline, written = time.monotonic() + 60, 0
            while time.monotonic() < deadline and written < 20:  # every partition, again and again
                try:
                    await writer.write(every_partition)
                    written += 1
                except Unavailable:
                    written = 0
                    await asyncio.sleep(0.2)
            return written, per_s
        finally:
            stopping = True
            feeding.cancel()
            watching.cancel()
            await writer.close()

    with caplog.at_level(logging.ERROR, logger="aiokafka"):
        written, asks_per_s = asyncio.run(scenario())
    assert written == 20
    assert asks_per_s <= 1 / METADATA_RETRY_S + 1, f"{asks_per_s:.0f} metadata requests a second"
