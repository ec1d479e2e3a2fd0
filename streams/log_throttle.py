"""Lines that recur while a service is down, said at most once an interval with how many were left out.

An outage must not flood the log: aiokafka logged 30-60 lines a second at ERROR while Kafka was
unreachable, burying whatever else happened meanwhile.
"""

from __future__ import annotations

import errno
import logging
import re
import time
from typing import Callable

#: How often a recurring line is said at most.
LOG_INTERVAL_S = 10.0
#: An open, a listing or a socket refused for want of file descriptors: the process's (EMFILE)
#: or the whole system's (ENFILE).
OUT_OF_FILES = frozenset({errno.EMFILE, errno.ENFILE})

# The Kafka clients' lines for each failed attempt to reach a broker, by logger, repeated for as
# long as it is down. Their other errors are said as they come.
KAFKA_RETRIES = {
    # aiokafka (0.14), the worker's and the collector's: ~60 a second from a worker (its consumer's
    # fetches and group coordinator retry too), ~10 from the collector (its producer waits between
    # metadata requests no broker answered: streams.collector.METADATA_RETRY_S); and, before it has
    # reached a broker (a collector started while Kafka is down), one a second for each bootstrap server.
    "aiokafka": (  # client.py: a known broker's, then the bootstrap servers' (refused; connected, no answer)
        "Unable connect to node with id %s: %s", "Unable to update metadata from %s",
        'Unable connect to "%s:%s": %s', 'Unable to request metadata from "%s:%s": %s',
    ),
    # A topic the collector's producer waits for (misspelt, or not made yet): ~10 a second, for
    # as long as it is missing (the collector says which, and what to run).
    "aiokafka.cluster": ("Topic %s not found in cluster metadata",),
    "aiokafka.consumer.fetcher": ("Failed fetch messages from %s: %s",),
    "aiokafka.consumer.group_coordinator": ("Group Coordinator Request failed: %s",),
    # kafka-python (3.0), the connectors' (and every lag probe's, the worker's too): a running
    # connector whose broker was killed logged 260 lines in 30 s, most of them these (58 once throttled).
    "kafka.net.manager": (
        "Attempting bootstrap to %s at %s:%s (rack %s)", "Initializing connection for node_id %s at %s:%s (rack=%s)",  # info
        "Bootstrap %s not ready; waiting %.2f secs", "Bootstrap connection to %s failed: %s (backoff %.2f secs)",
        "Connection failed: %s", "Bootstrap failed: %s",
    ),
    "kafka.net.connection": ("%s: Connection lost: %s",),
    # Said with a traceback (log.exception) of a reset or refused socket: said here on one line.
    "kafka.net.transport": (
        "%s: Error receiving network data closing socket", "%s: Error sending request data: %s", "%s: socket disconnected",
    ),
    "kafka.cluster": ("No node available for metadata refresh - backoff/retry", "Metadata refresh: failed %s"),
    "kafka.coordinator": ("Error sending %s to node %s [%s]",),
    "kafka.consumer.fetcher": ("Fetch to node %s failed: %s",),
}


class Throttle:
    """Says when a recurring thing is due to be said again, and how many times it came meanwhile."""

    def __init__(self, interval_s: float = LOG_INTERVAL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self._left_out = 0
        self._said_at_s = float("-inf")

    def due(self) -> int | None:
        """None while the last saying is under `interval_s` old (this one counted as left out);
        else how many were left out since, and this one is said."""
        now_s = self.clock()
        if now_s - self._said_at_s < self.interval_s:
            self._left_out += 1
            return None
        left_out, self._left_out, self._said_at_s = self._left_out, 0, now_s
        return left_out


class KafkaRetries(logging.Filter):
    """The Kafka clients' connection retries (KAFKA_RETRIES), each at most once every
    LOG_INTERVAL_S, saying how many were left out."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._throttles = {message: Throttle(clock=clock) for messages in KAFKA_RETRIES.values() for message in messages}

    def filter(self, record: logging.LogRecord) -> bool:
        throttle = self._throttles.get(str(record.msg))
        if throttle is None:
            return True
        left_out = throttle.due()
        if left_out is None:
            return False
        on_one_line(record, left_out)  # a broker gone: its traceback tells nothing more
        return True


def on_one_line(record: logging.LogRecord, left_out: int) -> None:
    """Makes a throttled `record` one line: the error of its traceback, if any, said at its end
    instead, then how many like it were left out."""
    if record.exc_info and record.exc_info[1] is not None:
        record.msg = f"{record.msg}: {record.exc_info[1]!r}"
        record.exc_info = record.exc_text = None
    if left_out:
        record.msg = f"{record.msg} ({left_out} more such lines left out since the last)"


_KAFKA_RETRIES = KafkaRetries()

#: kafka-python (3.0) times each step of the tasks of its IO thread by the wall clock and warns of
#: one over 0.1 s as "likely a tight sync loop inside a coroutine". Its tasks are its own; in our
#: processes such a step is mostly its thread waiting for the GIL, which a connector's delivery
#: threads, a worker's scoring of a batch (it holds the event loop 1-5 s) and a busy machine keep
#: from it: in a 40-minute soak each connector said it 1-2 times a minute, the only WARNING lines of
#: a connector with nothing wrong (no lag, retry or rebalance), steps of 0.10-0.90 s. Steps from
#: SLOW_STEP_S are still said, at most once every LOG_INTERVAL_S: a second is a third of the
#: group's heartbeat interval.
SLOW_STEP_S = 1.0
SLOW_STEP_LOGGER = "kafka.net.selector"
_SLOW_STEP = re.compile(r"Task .* ran for (\d+(?:\.\d+)?)s \(>")


class SlowSteps(logging.Filter):
    """kafka-python's slow-step warnings: those under SLOW_STEP_S only at debug level (as DEBUG
    lines), the others at most once every LOG_INTERVAL_S, saying how many were left out."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._throttle = Throttle(clock=clock)

    def filter(self, record: logging.LogRecord) -> bool:
        step = _SLOW_STEP.match(str(record.msg))
        if step is None:
            return True
        if float(step.group(1)) < SLOW_STEP_S:
            if not logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
                return False
            record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
            return True
        left_out = self._throttle.due()
        if left_out is None:
            return False
        on_one_line(record, left_out)
        return True


_SLOW_STEPS = SlowSteps()


def throttle_kafka_retries() -> None:
    """Said by each long-running process (the collector, the worker, the connectors) before it
    connects; kafka-python's slow steps are left to SlowSteps."""
    for name in KAFKA_RETRIES:  # a logger's filters see only its own records, not its children's
        logging.getLogger(name).addFilter(_KAFKA_RETRIES)  # once: it is one object
    logging.getLogger(SLOW_STEP_LOGGER).addFilter(_SLOW_STEPS)


def out_of_files(exc: BaseException) -> bool:
    """Whether `exc`, or an error it was raised from or while handling, is an open refused for
    want of file descriptors (a ModelError says a model file's OSError, raised from None)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in OUT_OF_FILES:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class OutOfFiles:
    """A periodic task of a process at its limit of open files: each failed round is the same
    error until files close, so it is said at most once every LOG_INTERVAL_S, on one line saying
    what to do, and the task tries again at its next round (a traceback at each round told
    nothing more, and an exception out of a Faust timer ends the worker)."""

    def __init__(self, logger: logging.Logger, work: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.work = work
        self._throttle = Throttle(clock=clock)

    def said(self, exc: BaseException) -> bool:
        """True when `exc` is for want of file descriptors (said, or left out within the
        interval); False for any other error, left to the caller."""
        if not out_of_files(exc):
            return False
        left_out = self._throttle.due()
        if left_out is not None and self.logger.isEnabledFor(logging.WARNING):
            record = self.logger.makeRecord(
                self.logger.name, logging.WARNING, __file__, 0,
                f"{self.work} not done, out of open files, tried again at its next round: raise the process's limit "
                "(LimitNOFILE of its systemd unit, ulimit -n, docker run --ulimit nofile=) or find what holds them "
                f"(ls /proc/PID/fd): {exc!r}", (), None)
            on_one_line(record, left_out)
            self.logger.handle(record)
        return True
