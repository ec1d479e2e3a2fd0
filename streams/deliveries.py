"""Messages the commands (`send`, `replay-dlq`, `forget`) hand to a kafka-python producer,
followed until Kafka has answered each, so a command says what it did not write.

The producer's `flush` is no such check (it is still called, to send at once what lingers): it
returns whatever became of the messages, and it raised `UnknownError('Future not done')` after
Kafka refused a batch of several messages as too large, which the producer then splits and sends
again (kafka-python 3.0.12: `flush` waits on the first batch's future, which the split wakes
without completing). Each message's own future follows it into the split batches, so waiting on
those is exact.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, Callable

#: Bytes of messages handed to the producer whose outcome is not known yet; a command waits for
#: the oldest before handing over more. kafka-python's producer has no bound of its own: a send
#: of a 370 MB file queued its 21,003 messages at once, and the batches still waiting their turn
#: on a busy broker when its delivery timeout (120 s) ran out expired, half of them. 16 MB is
#: about 10 s of writing for that broker (1.6 MB/s).
MAX_PENDING_BYTES = 16 * 1024 * 1024


class Failed:
    """Messages of one outcome other than written: how many, and why the first."""

    def __init__(self) -> None:
        self.count = 0
        self.first: Exception | None = None

    def add(self, cause: Exception) -> None:
        self.count += 1
        self.first = self.first or cause


class Deliveries:
    """Messages sent through one producer and what Kafka answered: written, refused (the
    broker or the producer answered with an error) and unknown (no answer within the producer's
    delivery timeout, when a batch in flight may have been written) are counted apart.
    `not_written`, given, is handed the value of each message refused or unknown, on the
    producer's thread (a lock keeps its calls apart)."""

    def __init__(self, producer: Any, *, max_pending_bytes: int = MAX_PENDING_BYTES,
                 not_written: Callable[[bytes], None] | None = None) -> None:
        self.producer = producer
        self.max_pending_bytes = max_pending_bytes
        self.not_written = not_written
        self.messages = 0
        self.refused, self.unknown = Failed(), Failed()
        self._pending: deque[tuple[Any, int]] = deque()  # (future, message bytes), oldest first
        self._pending_bytes = 0
        self._lock = threading.Lock()

    def send(self, topic: str, value: bytes | None, *, partition: int, key: bytes | None = None, **extra: Any) -> None:
        """Hands one message to the producer, first waiting for the oldest ones while those
        without an answer hold more than `max_pending_bytes`."""
        from kafka.errors import KafkaError

        self.messages += 1
        try:
            future = self.producer.send(topic, key=key, value=value, partition=partition, **extra)
        except KafkaError as exc:  # refused by the producer itself (larger than its max_request_size)
            self._failed(value, exc)
            return
        future.add_errback(self._failed, value)
        size = len(value or b"")
        self._pending.append((future, size))
        self._pending_bytes += size
        # Answered messages are let go at once: held until the bound, the futures of 16 MB of
        # one-event messages took 65 MB more than the messages.
        while self._pending and (self._pending[0][0].is_done or self._pending_bytes > self.max_pending_bytes):
            self._settle_oldest()

    def settle(self) -> None:
        """Waits until Kafka has answered every message (or the producer's delivery timeout
        has given up on it)."""
        from kafka.errors import KafkaError

        try:
            # Sends what waits for its batch to fill (linger_ms) at once: waited on without it,
            # each message waited out the linger, 5 ms more to every crossing of the pipeline
            # benchmark's latency phase (one `produce` every 20 ms).
            self.producer.flush()
        except KafkaError:  # the split batch of the module's docstring: the futures below say what became of each
            pass
        while self._pending:
            self._settle_oldest()

    @property
    def failed(self) -> int:
        return self.refused.count + self.unknown.count

    def summary(self, topic: str, remedy: Callable[[Exception], str] = lambda _: "") -> str:
        """What became of the messages, when some were not written; `remedy` says what to do
        about a refusal, from the first one's error."""
        parts = [f"Kafka wrote {self.messages - self.failed} of the {self.messages} messages sent to {topic}"]
        if self.refused.first is not None:
            parts.append(f"refused {self.refused.count}, the first with {cause(self.refused.first)}"
                         f"{remedy(self.refused.first)}")
        if self.unknown.first is not None:
            parts.append(f"{self.unknown.count} had no answer within the producer's delivery timeout (the broker too "
                         f"slow or unreachable), so may or may not have been written, the first with "
                         f"{cause(self.unknown.first)}")
        return "; ".join(parts) + "."

    def _settle_oldest(self) -> None:
        from kafka.errors import KafkaError

        oldest, size = self._pending.popleft()
        try:
            oldest.get()
        except KafkaError:  # counted by its errback
            pass
        self._pending_bytes -= size

    def _failed(self, value: bytes | None, error: Exception) -> None:
        from kafka.errors import KafkaError

        with self._lock:
            # A retriable error is what kafka-python's retries, unbounded, end with when the
            # delivery timeout runs out (KafkaTimeoutError): a batch that was in flight then may
            # have been written (in the audit, 336 of the 10,698 messages reported refused were).
            (self.unknown if isinstance(error, KafkaError) and error.retriable else self.refused).add(error)
            if self.not_written is not None and value is not None:
                self.not_written(value)


def cause(exc: Exception) -> str:
    """An error's class and, when it has one, its message (the broker's refusals have none)."""
    detail = exc.args[0] if exc.args else None
    return f"{exc.__class__.__name__} ({detail})" if detail else exc.__class__.__name__
