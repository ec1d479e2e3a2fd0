"""Faust's idle-stream check counts from the last rebalance (streams/stream_idle.py)."""

from __future__ import annotations

from time import monotonic

from faust.sensors.monitor import Monitor
from faust.types import TP

from streams.stream_idle import SinceCleared


def test_a_partition_with_no_event_since_a_rebalance_reads_as_processed_at_the_rebalance() -> None:
    # Faust's monitor forgets every stream's last event at each rebalance; its consumer then took
    # a partition with records waiting for a stream that had not processed any since the worker
    # started, and logged a hung stream in every takeover by a worker up for over 5 minutes.
    monitor = Monitor()
    assert monitor.stream_inbound_time.get(TP("events", 0)) is None  # Faust's own: "not started"
    monitor.stream_inbound_time = SinceCleared()
    before = monotonic()
    monitor._clear_topic_related_sensors()  # as at the start and the end of a rebalance
    assert before <= monitor.stream_inbound_time.get(TP("events", 0)) <= monotonic()
    monitor.stream_inbound_time[TP("events", 1)] = 5.0  # as the stream's events set it
    assert monitor.stream_inbound_time.get(TP("events", 1)) == 5.0
