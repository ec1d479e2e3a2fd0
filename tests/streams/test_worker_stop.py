"""A worker stops within its stop budget on SIGTERM, its broker gone or not."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
from kafka import KafkaAdminClient
from kafka.admin import NewPartitions

from streams import services
from streams.processes import WorkerProcess, free_port
from streams.settings import Settings
from streams.topics import ensure_topics
from streams.worker import EXIT_STOP_TIMEOUT, STOP_TIMEOUT_S
from tests.streams.test_services import controller_free_pair, own_services
from tests.streams.test_worker_state import page, send

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


def kill_broker_then_stop(kafka: services.Kafka, worker: WorkerProcess, backoff_s: float) -> int:
    """Kill the worker's broker, wait `backoff_s`, SIGTERM the worker: its exit status, once it has
    exited within the budget."""
    broker = kafka.pid()
    assert broker is not None and worker.proc is not None
    os.killpg(broker, signal.SIGKILL)
    time.sleep(backoff_s)
    os.killpg(worker.proc.pid, signal.SIGTERM)
    try:
        return worker.proc.wait(timeout=STOP_BUDGET_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {STOP_BUDGET_S:.0f} s after SIGTERM:\n{worker.tail()}")


def own_worker(kafka: services.Kafka, tmp_path: Path) -> WorkerProcess:
    settings = kafka.settings.namespaced("stop", state_dir=tmp_path / "worker-state", worker_port=free_port())
    ensure_topics(settings)
    worker = WorkerProcess(settings)
    worker.start()
    return worker


def test_a_worker_whose_broker_is_gone_stops_on_sigterm_within_the_budget(tmp_path: Path, own_kafka: services.Kafka) -> None:
    # It took 61 s: aiokafka's fetcher, closing, re-raised the cancellation of a fetch sleeping
    # its retry backoff, and Faust's consumer thread ended without saying it had shut down, which
    # mode waits 60 s for (streams/consumer_stop.py).
    worker = own_worker(own_kafka, tmp_path)
    try:
        # Its fetches fail and back off, again and again, for these 2 s: then it stops cleanly.
        assert kill_broker_then_stop(own_kafka, worker, backoff_s=2) == 0, worker.tail()
    finally:
        worker.kill()


def test_a_worker_whose_broker_is_gone_mid_stream_stops_on_sigterm_within_the_budget(
    tmp_path: Path, own_kafka: services.Kafka
) -> None:
    # With messages not yet committed, Faust's stop commits them, and the commit waits for the
    # group's coordinator as long as the broker is gone: it never stopped. Now it exits after
    # STOP_TIMEOUT_S, saying so.
    worker = own_worker(own_kafka, tmp_path)
    try:
        now_ms = int(time.time() * 1000)
        send(worker.settings, [page(f"lead-{n % 5000}", n, "/pricing", now_ms) for n in range(100_000)])
        time.sleep(0.3)  # it is scoring them
        assert kill_broker_then_stop(own_kafka, worker, backoff_s=0.5) == EXIT_STOP_TIMEOUT, worker.tail()
        assert f"not stopped within {STOP_TIMEOUT_S:.0f} s of being told to" in worker.tail(400)
    finally:
        worker.kill()


def test_a_worker_logging_to_a_file_writes_no_terminal_control_codes(isolated: Settings) -> None:
    # At level warning Faust drew its progress spinner (cursor hiding, backspaces) into the log
    # file as well as into a terminal.
    worker = WorkerProcess(isolated.with_overrides(log_level="warning"))
    worker.start()
    worker.stop()
    log = worker.log.read_bytes()
    assert worker.proc is not None and worker.proc.returncode == 0, worker.tail()
    assert b"\x1b" not in log and b"\x08" not in log, log[-2000:]


@pytest.mark.parametrize(("code", "status", "said"), [(None, 0, ""), (0, 0, ""), (3, 3, ""), ("cannot go on", 1, "cannot go on")])
def test_a_stopped_worker_exits_without_the_interpreters_teardown(code: object, status: int, said: str) -> None:
    # Freeing a million lead states object by object at the interpreter's exit took 15 s and
    # more of a full core after the worker had stopped (3.75 s for 200k leads; 1.1 s without).
    script = ("import atexit, logging, sys; atexit.register(lambda: print('torn down')); "
              "logging.basicConfig(stream=sys.stdout); logging.getLogger('x').warning('last line'); "
              f"from streams.worker import _exit_at_once; _exit_at_once({code!r})")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == status, done.stderr
    assert done.stdout == "WARNING:x:last line\n"  # logs flushed, atexit's teardown never ran
    assert done.stderr.strip() == said


def test_a_worker_that_stops_itself_says_why_without_a_traceback(
    isolated: Settings, worker: Callable[..., WorkerProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker stopping itself (here: handed a partition added to the events topic, without its
    changelog partition) crashes its consumer thread too, which ends and closes its loop first:
    mode then failed to tell that thread to stop ("Event loop is closed"), an ERROR with a
    14-line traceback under the worker's own CRITICAL line (in 4 runs of 4 of this test), and each
    stop a worker makes itself by a "NoneType: None" line (streams/worker.py, _NoMissingTraceback)."""
    monkeypatch.setenv("CONSUMER_METADATA_MAX_AGE_MS", "1000")  # Faust's: it finds the partition within a second
    running = worker(isolated)
    admin = KafkaAdminClient(bootstrap_servers=isolated.kafka_bootstrap)
    admin.create_partitions({isolated.topic_events: NewPartitions(total_count=isolated.partitions + 1)})
    admin.close()
    assert running.proc is not None
    running.proc.wait(timeout=60)
    log = running.log.read_text()
    assert "checking the partitions assigned failed" in log and "SplitAssignment" in log
    assert "Traceback" not in log, log[log.index("Traceback") - 300:][:1500]
    # mode's "Crashed reason=..." is logged as an exception outside any: a bare line followed it.
    assert "NoneType: None" not in log, log[log.index("NoneType: None") - 300:][:600]
