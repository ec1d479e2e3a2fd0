"""Seek, then resume: closes a race in Faust's recovery that loses events.

When a worker finishes recovering its tables, Faust (faust-streaming 0.15.3,
`Recovery._resume_streams` and `on_recovery_completed`) resumes the stream partitions first
and only then seeks them to their committed offsets. Records the fetcher delivers in between
move Faust's read offsets ahead of the seek; what follows the seek is then taken for a gap:
a message or two per partition never reaches the agent and is marked acknowledged, and the
last message of each partition comes twice. The kill-and-restart test
(tests/streams/test_worker_state.py) caught it as crossings missing after a restart.

`install` makes the consumer hold back the resumption of stream partitions until the seek
that follows it is done, so the first record delivered is the committed one.
"""

from __future__ import annotations

from typing import Any, Iterable


def install(consumer: Any) -> None:
    """Wrap this consumer's `resume_partitions` and `perform_seek` (once)."""
    if getattr(consumer, "_leadstream_seek_first", False):
        return
    consumer._leadstream_seek_first = True
    resume = consumer.resume_partitions
    perform_seek = consumer.perform_seek
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

    consumer.resume_partitions = resume_partitions
    consumer.perform_seek = seek_then_resume
