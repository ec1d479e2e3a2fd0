"""A broker that stops answering (hung, or cut off from a process without a reset) makes the
worker, the collector and a connector not ready until it answers again: each said it was ready
throughout, so no load balancer nor alert on readiness saw the outage."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Iterator

import pytest

from streams import services
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
