"""A batch that raised while a stage worked on it: finding the input that fails, scoring the rest.

The engine refuses bad input with a reason and never raises for it (scoring/engine.py), but a
bug, in leadstream or in a check it lacks, can still raise while a batch is scored. Let out of
the agent, the exception would lose the batch until the worker restarts: Faust restarts the
agent on the next messages, while the failed batch's offsets stay uncommitted and its events
unscored, and after a restart the same input fails again. Instead the stage undoes the attempt
and works on each half of the batch in turn, down to single messages and then the single
events of an envelope; what still raises alone is refused (a dead letter naming the exception,
reason `internal_error`), and everything else is scored as it would have been.

A batch with one such event costs about twice its work (the halves that fail are done again);
the order of each lead's events is kept, since the parts are worked on in order.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

import orjson

from streams.deadletter import DeadLetter
from streams.envelope import items_written, unpack
from streams.outbox import Outbox, encode_json_or_none
from streams.stage import Consumed, LiveTable

log = logging.getLogger("leadstream.worker")
#: A place in the code that raised (`where`) is logged at most once in this many seconds.
LOG_EVERY_S = 60
_logged: dict[str, float] = {}

T = TypeVar("T")
R = TypeVar("R")


def isolate(
    items: Sequence[T], attempt: Callable[[Sequence[T]], R], split: Callable[[T], Sequence[T]],
    refuse: Callable[[T, Exception], None],
) -> list[R]:
    """`attempt(items)`; when it raises, the same for each half, in order, down to single items,
    which `split` may divide further (the events of an envelope). Returns the results of the
    attempts that succeeded, in order; `refuse(item, exc)` is called for each item that raised
    alone and cannot be divided. `attempt` must leave no trace when it raises."""
    try:
        return [attempt(items)]
    except Exception as exc:
        if len(items) == 1:
            parts = split(items[0])
            if len(parts) <= 1:
                refuse(items[0], exc)
                return []
            items = parts
    middle = len(items) // 2
    return isolate(items[:middle], attempt, split, refuse) + isolate(items[middle:], attempt, split, refuse)


def undone_if_it_raises(outbox: Outbox, store: LiveTable[Any], work: Callable[[dict[str, Any]], R]) -> R:
    """`work(touched)`, an attempt of `isolate`: it puts in `touched` the keys whose live states
    it reads (and may change in place). When it raises, nothing of it is left: what it queued in
    `outbox` is taken back, and the live states of `touched` are dropped, to be read again from
    their bytes."""
    mark = outbox.mark()
    touched: dict[str, Any] = {}
    try:
        return work(touched)
    except Exception:
        outbox.rollback(mark)
        store.drop(touched)
        raise


def split_envelope(message: Consumed) -> list[Consumed]:
    """An envelope's items as messages of one item each (same source), to find the one that
    makes a stage raise; a message of one item, or one that cannot be split, alone."""
    if message.tombstone:
        return [message]
    try:
        items = unpack(message.value)
    except orjson.JSONDecodeError:
        return [message]
    # As their producer wrote them (their dead letters keep these), else written out again.
    written = items_written(message.value)
    values = list[bytes | None](written) if written else [encode_json_or_none(item) for item in items]
    if len(values) <= 1 or None in values:
        return [message]
    return [replace(message, value=value, part=True) for value in values if value is not None]


def internal_error(exc: Exception, message: Consumed, work: str) -> DeadLetter:
    """The dead letter of a message that raised alone while the stage did `work` with it; logs
    where it raised."""
    # Neither ids nor the exception's text are logged (they may hold personal data): the dead
    # letter has both, the log where the bug is.
    log_raised(exc, f"{work} raised %s; it is dead-lettered as internal_error, the rest of its batch goes on: topic=%s "
               "partition=%d offset=%d", message.topic, message.partition, message.offset)
    detail = (f"{work} raised {exc.__class__.__name__}: {exc}. This is a bug in leadstream (bad input is refused with a "
              "reason, never raised): please report it with this dead letter. The rest of its batch went on; send it back "
              "with `leadstream replay-dlq --reason internal_error` once leadstream is fixed")
    return message.dead_letter("internal_error", detail, message.value)


def log_raised(exc: BaseException, message: str, *context: object) -> None:
    """Logs `message` (its first %s: the exception's class; the rest: `context`) with where the
    exception was raised, once a minute per place: a bug that every event of a catch-up meets
    would otherwise write a traceback per event. Metrics and dead letters count each."""
    location = where(exc)
    now = time.monotonic()
    if now - _logged.get(location, -LOG_EVERY_S) >= LOG_EVERY_S:
        _logged[location] = now
        log.error(message + " (the next from the same place within %d s are counted, not logged)\n%s",
                  exc.__class__.__name__, *context, LOG_EVERY_S, location)


def where(exc: BaseException) -> str:
    """Where an exception was raised (its traceback's frames), without its text: a log line
    of ours must not carry ids or values, which may be personal data."""
    return "".join(traceback.format_tb(exc.__traceback__)).rstrip()
