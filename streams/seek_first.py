"""Seek, then resume: closes a race in Faust's recovery that loses events.

When a worker finishes recovering its tables, Faust (faust-streaming 0.15.3,
`Recovery._resume_streams` and `on_recovery_completed`) resumes the stream partitions first
and only then seeks them to their committed offsets. Records the fetcher delivers in between
move Faust's read offsets ahead of the seek; what follows the seek is then taken for a gap:
a message or two per partition never reaches the agent and is marked acknowledged, and the
last message of each partition comes twice. The kill-and-restart test
(tests/streams/test_worker_state.py) caught it as crossings missing after a restart.

Faust also throws records away when a rebalance begins while a fetch is in flight (the fetch
returns after the flow was stopped; `Consumer.getmany`), and relies on that seek to read them
again. But aiokafka (0.14, `AIOKafkaConsumer.seek_to_committed`) seeks only to a committed
offset above 0: a partition the group has never committed, or committed at 0, stays where the
fetch left it, and the records thrown away were never read. Faust, whose gap check at the head
also needs a committed offset, then commits past them. The chaos run saw it on the identity
topic, whose partitions get their first records late: four users never merged with their
visitors.

Nor may a stream partition be fetched between that seek and the resumption of the flow:
`FlowControlEvent.resume` (mode 0.4, `app.flow_control.resume()`, which Recovery calls right
after the seek) empties every agent's queue, and the records fetched in between are gone. They
are not acknowledged, but Faust's read offset has gone past them, and its commit lets a hole of
one offset at the head through (`Consumer._new_offset`: `min(acked) - committed > 1`). A chaos run
lost an events message so: it arrived during the seek, after a rebalance its worker kept the
partition through, and the commit went past it.

Nor may the emptying of a full queue resume a paused partition. When an agent's queue fills up,
Faust stops taking its partition's records from the fetcher (`Consumer.on_buffer_full`), and
takes them again once the queue drains (`on_buffer_drop`), paused or not. A rebalance pauses the
stream partitions and empties the queues, so a busy worker's partitions were taken again at once:
the new assignment's first records arrived before the seek, behind Faust's read offset left over
from the last assignment, and were dropped (`_drain_messages`), and the records the emptied queue
held were never read again, and were committed past. A test saw 4 records lost at each rebalance.

Nor may the recovery of a generation the group has left seek and resume the flow. Faust ends a
recovery early (`Recovery.on_recovery_completed`, `_resume_streams`) when the consumer
generation has changed, but takes the new generation only when the new assignment is handed
over (`ConsumerRebalanceListener.on_partitions_assigned`). A recovery that ended during the next
rebalance, after the revocation, passed that check: it sought the stream partitions, resumed the
flow and started the fetcher while the next generation's tables were being restored, and once
that generation sought them in turn, the first events message it was handed was 146 offsets
past the one sought (a chaos run; the worker stopped itself, streams/offset_sequence.py).

And chaos runs saw the first message of a partition kept across two rebalances a second apart
be a later one than the offset sought, by a way not closed here (streams/offset_sequence.py
tells what the logs show). Faust takes the messages in between for a gap and commits past them;
the worker stopped itself, and its successor read them again.

`install` makes the consumer hold back the resumption of stream partitions until the flow is
resumed after the seek (`Consumer.resume_flow`, which Recovery calls right after emptying the
queues), so the first record delivered is the committed one, and makes that seek send a stream
partition with no committed offset to its beginning, as `consumer_auto_offset_reset="earliest"`
would (records read again, as every rebalance reads again those after a committed offset), tells
of records the log deleted before the group read them (streams/log_start.py), and
makes a queue that drains leave a paused partition paused (taken again once it is resumed). And
from a rebalance's start until its assignment the app has no generation (`NO_GENERATION`), so
that what the generation before still does ends at Faust's checks: a recovery's seek and
resumption, a fetch's records (`Consumer.getmany`), a stream's messages. Last, whatever the way,
a partition of a topic without legitimate holes whose first message after the seek is beyond
the offset sought is sought back to it, once, and the messages fetched before that seek are
dropped (`FirstMessages`); should the first message still be beyond it, the stage's own check
stops the worker, as before. And a message a stream skips is never acknowledged (Faust's
pure-Python stream iterator did, its Cython one does not): from a rebalance's start, a commit
before the revocation would have passed the messages skipped for having no generation.
"""

from __future__ import annotations

import logging
from typing import Any, AsyncIterator, Callable, Collection, Iterable, Mapping

from streams import metrics
from streams.log_start import LogStarts

log = logging.getLogger("leadstream.worker")

#: The app's consumer generation from a rebalance's start until its assignment (Kafka's start at 1).
NO_GENERATION = -1


class FirstMessages:
    """The offset each sought partition of a topic without legitimate holes (`topics`) must hand
    over first, and the seek back to it when a fetch hands over a later one first."""

    def __init__(self, consumer: Any, topics: Collection[str]) -> None:
        self.consumer = consumer
        self.topics = frozenset(topics)
        self.due: dict[Any, int] = {}
        self.sought_back: set[Any] = set()

    def expect(self, sought: Mapping[Any, int]) -> None:
        for tp, offset in sought.items():
            if tp.topic in self.topics:
                self.due[tp] = offset
                self.sought_back.discard(tp)

    def forget(self) -> None:
        self.due.clear()
        self.sought_back.clear()

    async def from_the_offsets_sought(self, fetched: AsyncIterator[tuple[Any, Any]]) -> AsyncIterator[tuple[Any, Any]]:
        """The messages of one fetch (`Consumer.getmany`), less those of a partition whose first
        message after its seek is beyond the offset sought: that partition is sought back to it,
        once. Another such message after that goes through, to the stage's own check
        (streams/offset_sequence.py), which stops the worker: a retention that deleted the
        offset sought since would have it sought back for ever."""
        dropping: set[Any] = set()
        async for tp, message in fetched:
            if tp in dropping:
                continue  # the rest of what came before the seek back: read again after it
            due = self.due.get(tp)
            if due is not None and message.offset >= due:
                if message.offset == due or tp in self.sought_back:
                    self.due.pop(tp, None)  # a rebalance's start (in the consumer's thread) may have cleared it
                else:
                    self.sought_back.add(tp)
                    dropping.add(tp)
                    metrics.OFFSET_ANOMALIES.labels("sought_back").inc()
                    log.warning("first message beyond the offset sought, sought back to it: topic=%s partition=%d "
                                "sought=%d handed=%d", tp.topic, tp.partition, due, message.offset)
                    try:
                        await self.consumer.seek_wait({tp: due})
                    except Exception:
                        # A rebalance that began meanwhile seeks the partition again (or takes it
                        # away); else the messages dropped would never be read: the worker stops.
                        if self.due.get(tp) == due:
                            raise
                    continue
            yield tp, message


def install(consumer: Any, on_sought: Callable[[Mapping[Any, int]], None] | None = None,
            in_sequence: Collection[str] = ()) -> None:
    """Wrap this consumer's `resume_partitions`, `perform_seek`, `seek_to_committed`,
    `resume_flow`, `on_buffer_drop`, `getmany` and `ack`, and its app's `on_rebalance_start`
    (once), before the app starts: Faust's conductor keeps the `on_buffer_drop` it finds when it
    subscribes, its fetcher the `getmany`. `on_sought` is told the offset each stream partition
    was sought to; the partitions of `in_sequence` topics, which have no legitimate holes (no
    compaction, no transactions), are sought back to it if a later message comes first."""
    if getattr(consumer, "_leadstream_seek_first", False):
        return
    consumer._leadstream_seek_first = True
    first = FirstMessages(consumer, in_sequence)
    log_starts = LogStarts()
    resume = consumer.resume_partitions
    perform_seek = consumer.perform_seek
    seek_to_committed = consumer.seek_to_committed
    resume_flow = consumer.resume_flow
    held: set[Any] = set()
    # The consumer generation whose seek is done: only its resumption of the flow resumes the
    # held partitions (a rebalance between a seek and the flow's resumption has its own seek).
    sought: list[int | None] = [None]

    def resume_partitions(tps: Iterable[Any]) -> None:
        streams = {tp for tp in tps if not consumer._is_changelog_tp(tp)}
        if streams:
            held.update(streams)  # resumed by the flow's resumption after the seek that follows
            sought[0] = None
        rest = set(tps) - streams
        if rest:
            resume(rest)

    async def seek_and_hold() -> None:
        await perform_seek()
        sought[0] = consumer.app.consumer_generation_id

    def resume_flow_then_partitions() -> None:
        resume_flow()
        if held and sought[0] is not None and sought[0] == consumer.app.consumer_generation_id:
            waiting = held & set(consumer.assignment())
            held.clear()
            sought[0] = None
            if waiting:
                resume(waiting)

    async def seek_to_committed_or_beginning() -> Mapping[Any, int]:
        committed: Mapping[Any, int] = await seek_to_committed()
        # Changelog partitions are left to the table recovery, which seeks them itself.
        streams = {tp: offset for tp, offset in committed.items() if not consumer._is_changelog_tp(tp)}
        if not streams:
            return committed
        earliest = await consumer.earliest_offsets(*streams)
        log_starts.check(streams, earliest)
        uncommitted = {tp: earliest[tp] for tp, offset in streams.items() if not offset}
        if uncommitted:
            await consumer.seek_wait(uncommitted)
        # A committed offset the log no longer has (retention deleted it) is read from its first
        # offset, as aiokafka resets it (consumer_auto_offset_reset="earliest"); the records
        # deleted unread are told (log_starts, above).
        offsets = {tp: max(offset or 0, earliest[tp]) for tp, offset in streams.items()}
        first.expect(offsets)
        if on_sought is not None:
            on_sought(offsets)
        return committed

    consumer.resume_partitions = resume_partitions
    consumer.perform_seek = seek_and_hold
    consumer.seek_to_committed = seek_to_committed_or_beginning
    consumer.resume_flow = resume_flow_then_partitions
    on_buffer_drop = consumer.on_buffer_drop

    def on_buffer_drop_unless_paused(tp: Any) -> None:
        if tp in consumer._paused_partitions:
            consumer._buffered_partitions.discard(tp)  # taken again when it is resumed
            return
        on_buffer_drop(tp)

    consumer.on_buffer_drop = on_buffer_drop_unless_paused
    getmany = consumer.getmany

    def getmany_from_the_offsets_sought(timeout: float) -> AsyncIterator[tuple[Any, Any]]:
        return first.from_the_offsets_sought(getmany(timeout))

    consumer.getmany = getmany_from_the_offsets_sought
    ack = consumer.ack
    acks_enabled_for = consumer.app.topics.acks_enabled_for

    def ack_unless_skipped(message: Any) -> bool:
        # Faust's pure-Python stream iterator (streams.py `_py_aiter`, used where its Cython one
        # is not built) acknowledges a message it skips (of another generation, or while the
        # flow is stopped), which no agent was handed: a commit would pass it. A message handed
        # to an agent was tracked first; the Cython iterator acknowledges no skipped one.
        if not message.tracked and acks_enabled_for(message.topic):
            return False
        result: bool = ack(message)
        return result

    consumer.ack = ack_unless_skipped
    app = consumer.app
    rebalance_start = app.on_rebalance_start

    def on_rebalance_start_without_generation() -> None:
        # Called by the rebalance listener as the revocation begins (aiokafka), before any await.
        app.consumer_generation_id = NO_GENERATION
        first.forget()
        rebalance_start()

    app.on_rebalance_start = on_rebalance_start_without_generation
