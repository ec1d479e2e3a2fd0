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

`install` makes the consumer hold back the resumption of stream partitions until the seek
that follows it is done, so the first record delivered is the committed one, and makes that
seek send a stream partition with no committed offset to its beginning, as
`consumer_auto_offset_reset="earliest"` would (records read again, as every rebalance reads again
those after a committed offset).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping


def install(consumer: Any) -> None:
    """Wrap this consumer's `resume_partitions`, `perform_seek` and `seek_to_committed` (once)."""
    if getattr(consumer, "_leadstream_seek_first", False):
        return
    consumer._leadstream_seek_first = True
    resume = consumer.resume_partitions
    perform_seek = consumer.perform_seek
    seek_to_committed = consumer.seek_to_committed
    held: set[Any] = set()

    def resume_partitions(tps: Iterable[Any]) -> None:
        streams = {tp for tp in tps if not consumer._is_changelog_tp(tp)}
        held.update(streams)  # resumed by the seek that Faust runs next
        rest = set(tps) - streams
        if rest:
            resume(rest)

    async def seek_then_resume() -> None:
        try:
            await perform_seek()
        finally:
            if held:
                waiting = set(held)
                held.clear()
                resume(waiting)

    async def seek_to_committed_or_beginning() -> Mapping[Any, int]:
        committed: Mapping[Any, int] = await seek_to_committed()
        # Changelog partitions are left to the table recovery, which seeks them itself.
        uncommitted = [tp for tp, offset in committed.items() if not offset and not consumer._is_changelog_tp(tp)]
        if uncommitted:
            await consumer.seek_wait(await consumer.earliest_offsets(*uncommitted))
        return committed

    consumer.resume_partitions = resume_partitions
    consumer.perform_seek = seek_then_resume
    consumer.seek_to_committed = seek_to_committed_or_beginning
