"""Lines recurring through an outage (streams/log_throttle.py): said once an interval, counting those left out."""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka.net.selector import NetworkSelector

from scoring import ModelError
from scoring.model import load_model
from streams.log_throttle import (KAFKA_RETRIES, LOG_INTERVAL_S, SLOW_STEP_LOGGER, SLOW_STEP_S, KafkaRetries, OutOfFiles,
                                 SlowSteps, Throttle, throttle_kafka_retries)


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def test_a_throttle_says_the_first_then_once_an_interval_with_how_many_were_left_out() -> None:
    clock = FakeClock()
    throttle = Throttle(10.0, clock)
    said = []
    for step_s in (0, 1, 1, 7.9, 0.1, 0, 30):  # at 0, 1, 2, 9.9, 10, 10, 40 s
        clock.now_s += step_s
        said.append(throttle.due())
    assert said == [0, None, None, None, 3, None, 1]


@pytest.fixture
def aiokafka_log(caplog: pytest.LogCaptureFixture) -> Iterator[tuple[logging.Logger, FakeClock]]:
    """aiokafka's loggers with a throttle of their own on a fake clock (the one installed, if any, set aside)."""
    clock = FakeClock()
    retries = KafkaRetries(clock)
    loggers = [logging.getLogger(name) for name in KAFKA_RETRIES]
    installed = {logger.name: [f for f in logger.filters if isinstance(f, KafkaRetries)] for logger in loggers}
    for logger in loggers:
        for existing in installed[logger.name]:
            logger.removeFilter(existing)
        logger.addFilter(retries)
    caplog.set_level(logging.ERROR, logger="aiokafka")
    yield loggers[0], clock
    for logger in loggers:
        logger.removeFilter(retries)
        for existing in installed[logger.name]:
            logger.addFilter(existing)


def test_a_workers_consumer_retries_are_throttled_on_their_own_loggers(
    aiokafka_log: tuple[logging.Logger, FakeClock], caplog: pytest.LogCaptureFixture
) -> None:
    """A worker's consumer logs its failed fetches and coordinator requests on aiokafka's child
    loggers, whose records the filter of `aiokafka` never sees: 20 lines a second more."""
    for _ in range(20):
        logging.getLogger("aiokafka.consumer.fetcher").error("Failed fetch messages from %s: %s", 1, "NodeNotReadyError")
        logging.getLogger("aiokafka.consumer.group_coordinator").error("Group Coordinator Request failed: %s", "NodeNotReadyError")
    assert [r.getMessage() for r in caplog.records if r.name.startswith("aiokafka.consumer")] == [
        "Failed fetch messages from 1: NodeNotReadyError", "Group Coordinator Request failed: NodeNotReadyError"]


def test_aiokafkas_connection_retries_are_said_once_an_interval_and_its_other_errors_each_time(
    aiokafka_log: tuple[logging.Logger, FakeClock], caplog: pytest.LogCaptureFixture
) -> None:
    """While Kafka was down, aiokafka logged ~30 lines a second at ERROR, two messages over and over."""
    logger, clock = aiokafka_log
    for _ in range(2):
        for _ in range(30):
            logger.error("Unable connect to node with id %s: %s", 1, ConnectionRefusedError(111, "Connection refused"))
            logger.error("Unable to update metadata from %s", [1])
            logger.error("Unexpected error in sender routine")
        clock.now_s += LOG_INTERVAL_S
    said = [record.getMessage() for record in caplog.records if record.name == "aiokafka"]
    assert said.count("Unexpected error in sender routine") == 60
    retries = [line for line in said if line != "Unexpected error in sender routine"]
    assert retries == [
        "Unable connect to node with id 1: [Errno 111] Connection refused",
        "Unable to update metadata from [1]",
        "Unable connect to node with id 1: [Errno 111] Connection refused (29 more such lines left out since the last)",
        "Unable to update metadata from [1] (29 more such lines left out since the last)",
    ]


def test_aiokafkas_bootstrap_retries_are_said_once_an_interval(
    aiokafka_log: tuple[logging.Logger, FakeClock], caplog: pytest.LogCaptureFixture
) -> None:
    """A collector started while Kafka was down logged its bootstrap attempt's failure once a
    second (client.py's own wording for a bootstrap server, not a known broker's), 25 lines in 25 s."""
    logger, clock = aiokafka_log
    caplog.set_level(logging.WARNING, logger="aiokafka")  # the second is a warning
    refused = ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 18206)")
    for _ in range(2):
        for _ in range(10):
            logger.error('Unable connect to "%s:%s": %s', "127.0.0.1", 18206, refused)
            logger.warning('Unable to request metadata from "%s:%s": %s', "127.0.0.1", 18206, "KafkaTimeoutError")
            clock.now_s += 1
    assert [record.getMessage() for record in caplog.records if record.name == "aiokafka"] == [
        "Unable connect to \"127.0.0.1:18206\": [Errno 111] Connect call failed ('127.0.0.1', 18206)",
        'Unable to request metadata from "127.0.0.1:18206": KafkaTimeoutError',
        "Unable connect to \"127.0.0.1:18206\": [Errno 111] Connect call failed ('127.0.0.1', 18206) "
        "(9 more such lines left out since the last)",
        'Unable to request metadata from "127.0.0.1:18206": KafkaTimeoutError (9 more such lines left out since the last)',
    ]


def test_kafka_pythons_retries_are_said_once_an_interval(
    aiokafka_log: tuple[logging.Logger, FakeClock], caplog: pytest.LogCaptureFixture
) -> None:
    """A connector whose broker was killed logged ~130 lines in 30 s (kafka-python's, its lag
    probes' too), ~90 at ERROR: each attempt's bootstrap, connection and metadata lines."""
    _, clock = aiokafka_log
    caplog.set_level(logging.WARNING, logger="kafka")
    refused = "KafkaConnectionError: 111 ECONNREFUSED"
    attempt = [
        ("kafka.net.manager", "Bootstrap %s not ready; waiting %.2f secs", ("bootstrap-0", 0.44)),
        ("kafka.net.manager", "Bootstrap connection to %s failed: %s (backoff %.2f secs)", ("bootstrap-0", refused, 0.44)),
        ("kafka.net.manager", "Connection failed: %s", (refused,)),
        ("kafka.net.manager", "Bootstrap failed: %s", ("KafkaTimeoutError: Unable to bootstrap from 127.0.0.1:9092",)),
        ("kafka.net.connection", "%s: Connection lost: %s", ("<KafkaConnection node_id=1>", refused)),
        ("kafka.cluster", "No node available for metadata refresh - backoff/retry", ()),
        ("kafka.cluster", "Metadata refresh: failed %s", (refused,)),
        ("kafka.coordinator", "Error sending %s to node %s [%s]", ("FindCoordinatorRequest", 1, refused)),
        ("kafka.consumer.fetcher", "Fetch to node %s failed: %s", (1, refused)),
    ]
    for _ in range(20):
        for name, message, args in attempt:
            logging.getLogger(name).log(logging.WARNING if "ready;" in message or "backoff" in message else logging.ERROR,
                                        message, *args)
        clock.now_s += 1
    said = [record.getMessage() for record in caplog.records if record.name.startswith("kafka.")]
    assert len(said) == 2 * len(attempt)  # at 0 and 10 s
    assert said[len(attempt)].endswith(" (9 more such lines left out since the last)")


def test_a_socket_kafka_python_loses_is_said_on_one_line_without_its_traceback(
    aiokafka_log: tuple[logging.Logger, FakeClock], caplog: pytest.LogCaptureFixture
) -> None:
    # kafka-python says a reset socket with log.exception: a connector whose broker was killed
    # printed a traceback of the socket's recv in its log.
    _, clock = aiokafka_log
    caplog.set_level(logging.WARNING, logger="kafka")
    transport = logging.getLogger("kafka.net.transport")
    for _ in range(3):
        try:
            raise ConnectionResetError(104, "Connection reset by peer")
        except ConnectionResetError:
            transport.exception("%s: Error receiving network data closing socket", "<KafkaTransport node=1>")
        clock.now_s += 1
    said = [record for record in caplog.records if record.name == "kafka.net.transport"]
    assert [record.getMessage() for record in said] == [
        "<KafkaTransport node=1>: Error receiving network data closing socket: ConnectionResetError(104, 'Connection reset by peer')"
    ]
    assert said[0].exc_info is None and "Traceback" not in caplog.text


def test_the_throttle_of_aiokafkas_retries_is_installed_once() -> None:
    throttle_kafka_retries()
    throttle_kafka_retries()
    for name in ("aiokafka", "aiokafka.consumer.fetcher", "aiokafka.consumer.group_coordinator"):
        assert sum(isinstance(f, KafkaRetries) for f in logging.getLogger(name).filters) == 1, name


def test_a_task_out_of_open_files_says_so_once_an_interval_and_leaves_other_errors_to_its_caller(
    caplog: pytest.LogCaptureFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model file that could not be opened for want of file descriptors was a broken edit,
    said with a traceback at each poll: the ModelError says it, raised from None."""
    def refused(*args: object, **kwargs: object) -> str:
        raise OSError(errno.EMFILE, "Too many open files")

    (tmp_path / "b2b.toml").write_text("")
    with monkeypatch.context() as patched, pytest.raises(ModelError) as raised:
        patched.setattr(os, "open", refused)  # as load_model opens a model file (scoring/model.py, model_bytes)
        load_model(tmp_path / "b2b.toml")
    clock = FakeClock()
    task = OutOfFiles(logging.getLogger("leadstream.worker"), "looking for edits", clock)
    caplog.set_level(logging.WARNING, logger="leadstream.worker")
    for step_s in (0, 1, 1, LOG_INTERVAL_S):
        clock.now_s += step_s
        assert task.said(raised.value)
    assert not task.said(OSError(errno.ENOENT, "No such file or directory"))
    assert not task.said(ValueError("no file at all"))
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 2 and all(line.startswith("looking for edits not done, out of open files") for line in lines), lines
    assert "LimitNOFILE" in lines[0] and lines[1].endswith("(2 more such lines left out since the last)"), lines
    assert all(record.exc_info is None for record in caplog.records)
def _step_of(seconds: float) -> None:
    """One step of a task of kafka-python's IO loop (the loop a connector's consumer runs) that takes `seconds`."""
    selector = NetworkSelector()

    async def step() -> None:
        time.sleep(seconds)  # the step's thread held up, as by the GIL another thread holds

    selector.run(step)


def test_kafka_pythons_warning_of_a_step_under_a_second_is_not_said(caplog: pytest.LogCaptureFixture) -> None:
    """A soak's connectors logged 1-2 a minute at WARNING, steps of 0.10-0.90 s, with nothing wrong."""
    throttle_kafka_retries()
    caplog.set_level(logging.INFO, logger=SLOW_STEP_LOGGER)
    _step_of(0.25)
    assert [r for r in caplog.records if r.name == SLOW_STEP_LOGGER] == []


def test_at_debug_level_a_short_step_is_a_debug_line(caplog: pytest.LogCaptureFixture) -> None:
    throttle_kafka_retries()
    caplog.set_level(logging.DEBUG, logger=SLOW_STEP_LOGGER)
    _step_of(0.25)
    said = [r for r in caplog.records if r.name == SLOW_STEP_LOGGER and "ran for" in r.getMessage()]
    assert [r.levelname for r in said] == ["DEBUG"]


@pytest.fixture
def slow_steps() -> Iterator[FakeClock]:
    """kafka-python's selector logger with a SlowSteps of its own on a fake clock (the installed one set aside)."""
    clock = FakeClock()
    logger = logging.getLogger(SLOW_STEP_LOGGER)
    installed = [f for f in logger.filters if isinstance(f, SlowSteps)]
    for existing in installed:
        logger.removeFilter(existing)
    own = SlowSteps(clock)
    logger.addFilter(own)
    yield clock
    logger.removeFilter(own)
    for existing in installed:
        logger.addFilter(existing)


def test_a_step_of_a_second_or_more_is_said_once_an_interval(slow_steps: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=SLOW_STEP_LOGGER)
    _step_of(SLOW_STEP_S + 0.05)
    logger = logging.getLogger(SLOW_STEP_LOGGER)
    for _ in range(3):  # as kafka-python says it: formatted, without arguments
        logger.warning("Task <kafka.net.selector.Task object at 0x7f> ran for 1.500s (>0.100s threshold). It is blocking")
    slow_steps.now_s += LOG_INTERVAL_S
    logger.warning("Task <kafka.net.selector.Task object at 0x7f> ran for 2.000s (>0.100s threshold). It is blocking")
    logger.warning("Task %r left RUNNING after step; demoting to UNSCHEDULED", "t")  # its other warnings are said
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == SLOW_STEP_LOGGER]
    assert [level for level, _ in said] == ["WARNING"] * 3
    assert "ran for 1.0" in said[0][1]
    assert said[1][1].endswith("ran for 2.000s (>0.100s threshold). It is blocking (3 more such lines left out since the last)")
    assert said[2][1] == "Task 't' left RUNNING after step; demoting to UNSCHEDULED"


def test_the_filter_of_kafka_pythons_slow_steps_is_installed_once() -> None:
    throttle_kafka_retries()
    throttle_kafka_retries()
    assert sum(isinstance(f, SlowSteps) for f in logging.getLogger(SLOW_STEP_LOGGER).filters) == 1
