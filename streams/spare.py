"""A worker given no partitions stays in its consumer group, ready to take some over.

aiokafka's heartbeat task leaves the group once its consumer has not fetched for the max poll
interval (Faust's `broker_max_poll_interval`, 1000 s by default), and its coordinator does not
join again until the consumer fetches (group_coordinator.py `_heartbeat_routine`,
`ensure_active_group`). Faust's consumer fetches only when it has partitions to fetch: with none
it sleeps a second and looks again (transport/consumer.py `_wait_next_records`). So a spare
worker (more workers than partitions) sent LeaveGroup about 17 minutes after it joined, answered
503 to /readyz and to every view from then on, and took nothing over when an owner stopped.

While the consumer has no partition assigned, `Spare.keep` marks a fetch as aiokafka's own
fetches do. A worker with partitions is left alone: it fetches each time round, with a wait when
they are idle; and one whose partitions are all paused (its stage stuck, its buffers full)
fetches nothing and still leaves the group after the interval, which is what the interval is for.
"""

from __future__ import annotations

import asyncio
from typing import Any

from streams.fetcher import fetcher_of


class Spare:
    """The subscription state of the worker's aiokafka consumer, and the loop of the consumer's
    thread, which fetches and so is the one to mark a fetch: found at each assignment."""

    def __init__(self) -> None:
        self.subscriptions: Any | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def assigned(self, consumer: Any) -> None:
        fetcher = fetcher_of(consumer, "a worker given no partitions leaves its group after the max poll interval "
                                       "(streams/spare.py)", "_subscriptions")
        self.subscriptions = None if fetcher is None else fetcher._subscriptions
        self.loop = None if fetcher is None else consumer._thread.thread_loop

    def keep(self) -> None:
        """Marks a fetch, on the consumer's thread, if the consumer has no partition then."""
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._mark)

    def _mark(self) -> None:
        subscriptions = self.subscriptions
        if subscriptions is not None and not subscriptions.assigned_partitions():
            with subscriptions.fetch_context():  # how aiokafka tells its coordinator the consumer polls
                pass
