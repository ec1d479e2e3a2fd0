"""Faust's check that each assigned partition's stream processes what is fetched, measured from
the last rebalance rather than from when the worker started.

Faust's consumer reports, at ERROR with a page of possible causes, a partition that has records
waiting and that its stream has "not started processing" since the worker started, once the
worker is older than `stream_processing_timeout` (5 minutes). Its monitor forgets when each
stream last processed an event at every rebalance (it clears `stream_inbound_time`), so a worker
up for more than 5 minutes that was handed a partition with a backlog was reported as a hung
stream in the seconds before its first batch of that partition: in every takeover. The monitor's
map here answers, for a partition with no event since, the time it was last cleared: the check
then reports only a stream idle for 5 minutes since the rebalance, which is a real stall.
"""

from __future__ import annotations

from time import monotonic
from typing import Any

import faust


class SinceCleared(dict[Any, float]):
    """`Monitor.stream_inbound_time`: partition -> monotonic time of its stream's last event,
    or of the last clear for a partition with none since."""

    def __init__(self) -> None:
        super().__init__()
        self.cleared = monotonic()

    def clear(self) -> None:
        super().clear()
        self.cleared = monotonic()

    def get(self, key: Any, default: Any = None) -> Any:  # Faust reads it with get(tp)
        return super().get(key, self.cleared)


def install(app: faust.App) -> None:
    """Once the worker runs (its monitor is the one its sensors use): idempotent."""
    monitor = app.monitor
    if not isinstance(monitor.stream_inbound_time, SinceCleared):
        monitor.stream_inbound_time = SinceCleared()
