"""Batches of a Faust stream's events that the caller acknowledges, when their batch is durable.

Faust's `Stream.take_events(max, within)` acknowledges a batch's events as soon as the code
that took the batch asks for the next one. A stage's batch is durable only once its two
flushes are acknowledged by Kafka (its outputs, then its states: streams/scorer.py), so with
`take_events` a stage had to wait for both before it could take the next batch, and the worker
sat idle for every flush. Here the caller acknowledges each event itself (`Stream.ack`), after
its batch is durable, so it can score the next batch while the last one's flushes are in flight
(streams/overlap.py); Faust commits no offset past an event that is not acknowledged.

The timing is `take_events`': a batch is handed over when `max_messages` events are waiting,
or `within_s` after the last one was handed over; events arriving meanwhile gather for the next
batch (`take_events` holds them back until the last batch is acknowledged).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import faust
from faust.types import ChannelT, EventT


async def batches(stream: faust.Stream[Any], max_messages: int, within_s: float) -> AsyncIterator[list[EventT[Any]]]:
    """Lists of 1 to `max_messages` events, in stream order, not acknowledged: the caller
    acknowledges each with `stream.ack(event)` once it is done with it."""
    pending: list[EventT[Any]] = []
    full = asyncio.Event()
    room = asyncio.Event()  # pending is below max_messages
    room.set()

    async def collect(value: Any) -> Any:
        event = stream.current_event
        if event is None:  # Faust sets it before its processors run
            raise RuntimeError("a stream processor ran without a current event")
        pending.append(event)
        if len(pending) >= max_messages:
            full.set()
            room.clear()
            await room.wait()  # back-pressure: the stream pauses until this batch is taken
        return value

    acks = stream.enable_acks
    stream.enable_acks = False  # acknowledged by the caller
    stream.add_processor(collect)
    # The hook `take_events` uses to run the stream, and so `collect`, in the background.
    stream._enable_passive(cast(ChannelT[Any], stream.channel))
    try:
        while not stream.should_stop:
            # An asyncio.Event is awaitable as mode expects; its annotation names its own Event.
            await stream.wait_for_stopped(full, timeout=within_s)  # type: ignore[arg-type]
            if not pending:
                continue
            full.clear()
            batch = pending[:]
            pending.clear()
            room.set()
            yield batch
    finally:
        stream.enable_acks = acks
        stream._processors.remove(collect)
