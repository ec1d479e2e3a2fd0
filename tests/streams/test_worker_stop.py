"""A worker stops within its stop budget on SIGTERM, its broker gone or not."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from streams import services
from streams.processes import WorkerProcess, free_port
from streams.settings import Settings
from streams.topics import ensure_topics
from tests.streams.test_services import controller_free_pair, own_services

#: `docker compose down`'s default wait between SIGTERM and SIGKILL.
STOP_BUDGET_S = 10.0


@pytest.fixture
def own_kafka(tmp_path: Path) -> Iterator[services.Kafka]:
    """A broker of this test's own, on its own ports and folder: the test kills it."""
    kafka = services.Kafka(own_services(tmp_path, controller_free_pair(), free_port()))
    kafka.up()
    try:
        yield kafka
    finally:
        kafka.down()


def test_a_worker_whose_broker_is_gone_stops_on_sigterm_within_the_budget(tmp_path: Path, own_kafka: services.Kafka) -> None:
    # It took 61 s: aiokafka's fetcher, closing, re-raised the cancellation of a fetch sleeping
    # its retry backoff, and Faust's consumer thread ended without saying it had shut down, which
    # mode waits 60 s for (streams/consumer_stop.py).
    settings = own_kafka.settings.namespaced("stop", state_dir=tmp_path / "worker-state", worker_port=free_port())
    ensure_topics(settings)
    worker = WorkerProcess(settings)
    worker.start()
    try:
        broker = own_kafka.pid()
        assert broker is not None
        os.killpg(broker, signal.SIGKILL)
        time.sleep(2)  # its fetches fail and back off, again and again
        assert worker.proc is not None
        os.killpg(worker.proc.pid, signal.SIGTERM)
        try:
            code = worker.proc.wait(timeout=STOP_BUDGET_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {STOP_BUDGET_S:.0f} s after SIGTERM:\n{worker.tail()}")
        assert code == 0, worker.tail()
    finally:
        worker.kill()
