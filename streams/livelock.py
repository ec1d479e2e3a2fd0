"""Faust's livelock detector, kept from crashing the worker on a partition that awaits a reset.

Every 2.5 commit intervals Faust (faust-streaming 0.15, drivers/aiokafka.py `verify_event_path`)
reads each assigned partition's position from aiokafka's subscription state, which asserts it
has one (aiokafka 0.14, `TopicPartitionState.position`). A partition has none while aiokafka
resets it: after a fetch of an offset the log no longer has (retention or delete-records removed
records the group had not read, streams/log_start.py), until the broker says where the log
starts. A detector round in that window raised AssertionError and crashed the consumer, and
with it the worker. Such a partition is skipped: the detector has nothing to measure on it until
its position is known, a moment later.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("leadstream.worker")


def install(consumer: Any) -> bool:
    """Wrap this (started) Faust consumer's `verify_event_path`, once. False, with a warning,
    when the consumer is not built as faust-streaming 0.15 and aiokafka 0.14 build it."""
    thread = getattr(consumer, "_thread", None)
    verify = getattr(thread, "verify_event_path", None)
    if thread is None or verify is None:
        log.warning("the Kafka consumer has no thread with verify_event_path, as faust-streaming 0.15 builds it: a "
                    "partition being reset to its log's start may crash the worker (streams/livelock.py)")
        return False
    if getattr(thread, "_leadstream_livelock", False):
        return True
    thread._leadstream_livelock = True

    def verify_unless_resetting(now: float, tp: Any) -> None:
        if _awaiting_reset(thread, tp):
            return None
        return verify(now, tp)  # type: ignore[no-any-return]

    thread.verify_event_path = verify_unless_resetting
    return True


def _awaiting_reset(thread: Any, tp: Any) -> bool:
    from aiokafka import TopicPartition

    try:
        assignment = thread._ensure_consumer()._fetcher._subscriptions.subscription.assignment
        state = assignment.state_value(TopicPartition(tp.topic, tp.partition)) if assignment else None
    except AttributeError:  # built otherwise: Faust's own check decides
        return False
    return state is not None and not state.has_valid_position
