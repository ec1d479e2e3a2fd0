"""Fencing: a worker that may have lost its consumer group membership writes nothing.

Kafka transactions are not used (README "Delivery guarantee"), so nothing on the broker stops a
worker the group has moved on without from writing to the changelogs and output topics. A worker
paused longer than the session timeout (SIGSTOP, a stalled VM, a long swap) is such a worker: the
group hands its partitions to another, which recovers the states from the changelogs and scores
from the committed offsets; when the paused worker resumes, the batch it had in flight, and the
batches it scores from what it had fetched, wrote states older than the new owner's after them.
Being the newest in the compacted changelog, they were what the next owner recovered, and the
events scored meanwhile were lost for good (their offsets committed); their score changes and
crossings went out too. aiokafka tells the worker only at its next heartbeat, and the worker's
event loop resumes at the same moment as the consumer's thread: a check of the coordinator's
generation alone lets the batch in flight write first.

So every flush of the worker's outboxes asks `Membership.holds` first, which answers True only
when the group still has this worker as the member, in the generation, that was assigned the
partitions (`assigned`) and when the broker heard from it recently enough that it cannot have
expired it: a heartbeat the coordinator answered (or a rebalance in progress, whose member it
still is) was *sent* less than half the session timeout ago, by the monotonic clock, which goes
on during a pause. The broker keeps a member for the session timeout after it receives a
heartbeat, which is after the heartbeat was sent; and a generation ends only with a rebalance the
member takes part in (so its generation here changes) or that removes it for not answering for
that long. When the last heartbeat answered is older than that (after a pause, a stalled broker),
the check makes a heartbeat round trip itself, on the consumer's thread, and waits for a definite
answer: the coordinator's answer that the member is current, or that it is not (aiokafka then
resets the generation).

When the check fails, the flush sends nothing and raises `MembershipLost`: the stage drops the
batch (not acknowledged, so not committed), and the membership is given up until the next
assignment, so the batches already scored from the same fetches are dropped too. Everything the
worker scored since the loss is in its tables only: the live states are dropped, and the tables'
partitions are restored from their beginnings at the next assignment (`on_lost`). The consumer
is asked to rejoin the group (it does so by itself when the coordinator said the member is gone):
a rebalance sends every partition back to its committed offset, so the new owner, or this worker
again, scores the dropped records.

What is left open: a pause that begins after the check and before the flush's produce request
leaves the process (microseconds of Python and the producer's send). Closing that needs the
broker's help, Kafka transactions with their producer epochs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from streams import metrics

log = logging.getLogger("leadstream.worker")

#: Pause between heartbeats of a check that got no answer (the broker unreachable, or moving its coordinator).
RETRY_S = 0.2


class Lease(NamedTuple):
    """A group membership: the generation and the member id the coordinator gave the worker."""

    generation: int
    member_id: str


class Membership:
    """Whether the worker still holds the partitions it was assigned (see the module doc)."""

    def __init__(self, session_timeout_s: float, on_lost: Callable[[], None]) -> None:
        """`on_lost` runs once per membership lost: it drops what the worker scored under it."""
        self.session_timeout_s = session_timeout_s
        self.on_lost = on_lost
        self.lease: Lease | None = None
        #: Monotonic time a heartbeat that the coordinator answered was sent.
        self.heard_s = float("-inf")
        self._coordinator: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def assigned(self, consumer: Any) -> None:
        """The group assigned this (started) Faust consumer its partitions: its membership is
        the one every write is checked against, until `revoked`."""
        thread = consumer._thread
        coordinator = thread._consumer._coordinator
        if coordinator is not self._coordinator:
            self._coordinator, self._loop = coordinator, thread.thread_loop
            self._hear(coordinator)
        # Faust's generation is the assignment's; the coordinator's may be a later rebalance's
        # by now, and a rebalance begun since has none (streams/seek_first.py).
        generation, member_id = consumer.app.consumer_generation_id, coordinator.member_id
        self.lease = Lease(generation, member_id) if generation > 0 and member_id else None

    def revoked(self) -> None:
        """The partitions went (after the batch in flight wrote): nothing is written until the next assignment."""
        self.lease = None

    def _hear(self, coordinator: Any) -> None:
        """Records when each heartbeat the coordinator answers was sent (aiokafka keeps only
        when its answer came, in a local of its heartbeat task)."""
        heartbeat = coordinator._do_heartbeat

        async def heartbeat_heard() -> bool:
            sent_s = time.monotonic()
            answered: bool = await heartbeat()
            if answered:
                self.heard_s = max(self.heard_s, sent_s)
            return answered

        coordinator._do_heartbeat = heartbeat_heard

    def _current(self, lease: Lease) -> bool:
        coordinator = self._coordinator
        return lease == (coordinator.generation, coordinator.member_id)

    def _fresh(self) -> bool:
        return time.monotonic() - self.heard_s < self.session_timeout_s / 2

    async def holds(self) -> bool:
        """Whether the worker may write for the partitions it was assigned; False once the
        membership is lost, or while none is assigned."""
        lease = self.lease
        if lease is None:
            return False
        if self._current(lease) and self._fresh():
            return True
        given_up_s = time.monotonic() + self.session_timeout_s
        while self._current(lease) and not self._fresh() and time.monotonic() < given_up_s:
            # A heartbeat that fails without a verdict (no coordinator, no connection) is sent again.
            if not await self._heartbeat():
                await asyncio.sleep(RETRY_S)
        if self.lease == lease and self._current(lease) and self._fresh():
            return True
        self._lose()
        return False

    async def _heartbeat(self) -> bool:
        assert self._loop is not None, "a lease is only given by `assigned`"
        beat = asyncio.run_coroutine_threadsafe(self._coordinator._do_heartbeat(), self._loop)
        try:
            answered: bool = await asyncio.wait_for(asyncio.wrap_future(beat), self.session_timeout_s / 2)
        except Exception:  # a timeout, or the heartbeat raised for the coordinator's routine: no verdict
            return False
        return answered

    def _lose(self) -> None:
        if self.lease is None:
            return
        self.lease = None
        self.on_lost()
        assert self._loop is not None
        # A member that is still current (the check gave up on a broker that did not answer)
        # rejoins all the same: the rebalance sends the dropped records' partitions back to their committed offsets.
        self._loop.call_soon_threadsafe(self._coordinator.request_rejoin)


def dropped(stage: str, partitions: Iterable[tuple[str, int]]) -> None:
    """Counts and logs a batch (or decay sweep) of a stage, `score`, `rollup` or `decay`, whose
    writes a lost membership dropped (partitions, not ids: ids may be personal data)."""
    metrics.BATCHES_FENCED.labels(stage).inc()
    log.warning("a batch of the %s stage dropped, nothing of it written: this worker is no longer, or cannot confirm it is, a member of its "
                "consumer group (paused longer than the session timeout?); the partitions' owner scores their records again "
                "from the committed offsets: partitions=%s", stage, ", ".join(f"{topic}/{partition}" for topic, partition in sorted(set(partitions))))
