"""A stage's batch made durable in the background while the stage scores the next one.

A batch is durable after two flushes, each a produce round trip: its outputs, then the states
that record them (streams/scorer.py). Waiting for both before taking the next batch left the
worker idle for about a sixth of a catch-up and added both round trips to every crossing's
latency. Instead, a stage hands the flushes to `InFlight` and scores the next batch meanwhile;
the batch after waits for them before its own start, so at most one batch is in flight, each
batch's changelog records are sent after the batch before's (its states' bytes are encoded and
its local table data written when it is scored: streams/stage.py `LiveTable.write`), and an
error in the flushes reaches the stage at its next batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection

from streams import membership
from streams.errors import MembershipLost
from streams.outbox import Outbox
from streams.stage import Record


class WriteFailed(Exception):
    """The flushes of a batch in flight failed: Kafka refused or lost its outputs or states. It
    reaches whoever waits for them first, a decay sweep or a model reload as well as the next
    batch, so it names itself: the worker's log blamed the sweep for a batch's record too large."""


class InFlight:
    """At most one batch's flushes running in the background."""

    def __init__(self) -> None:
        self._task: asyncio.Future[None] | None = None

    def start(self, finish: Awaitable[None]) -> None:
        """Runs `finish` (the batch's flushes, then its acknowledgement) in the background;
        the batch before must be done (`wait`)."""
        if self._task is not None:
            raise RuntimeError("a batch is still in flight: wait() for it before starting the next")
        self._task = asyncio.ensure_future(finish)

    async def wait(self) -> None:
        """Returns once the batch in flight, if any, is done; raises what its flushes raised
        (once). A caller cancelled while it waits leaves the flushes running."""
        task = self._task
        if task is None:
            return
        try:
            await asyncio.shield(task)
        except Exception as exc:
            raise WriteFailed(f"writing a scored batch's outputs and states to Kafka failed: {exc!r}") from exc
        finally:
            if self._task is task and task.done():
                self._task = None


#: What a stage does once a batch is over: True, its outputs and states written (its messages are
#: acknowledged); False, dropped unwritten (their offsets must not be committed: streams/membership.py).
Done = Callable[[bool], Awaitable[None]]


async def make_durable(outbox: Outbox, records: list[Record], done: Done | None, stage: str,
                       read: Collection[tuple[str, int]], written: Callable[[], None] | None = None) -> None:
    """A scored batch's flushes: what it produced (queued in `outbox`), then the changelog
    `records` of the states that record it; then `written()` (its metrics) and `done(True)`. A
    worker that lost its group membership writes neither (streams/membership.py), and its
    messages, read from the partitions `read`, are let go with `done(False)`: their partitions'
    owner scores them again, and counts them (counted here too, a fenced worker's crossings
    were counted twice, though published once)."""
    try:
        await outbox.flush()
        for record in records:
            outbox.add(*record)
        await outbox.flush()
    except MembershipLost:
        membership.dropped(stage, read)
        if done is not None:
            await done(False)
        return
    if written is not None:
        written()
    if done is not None:
        await done(True)
