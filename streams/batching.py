"""Batches of a Faust stream's events: handed over as soon as they are ready, filled while behind.

Faust's `Stream.take_events(max, within)` waits `within` after every batch unless `max`
messages arrive first, and holds new messages back while a batch is processed. Each event then
waits for the batch before it, for the timer, then for its own batch: at 5,000 events/s, most
of the crossing latency. Here, while the worker keeps up, a batch is handed over as soon as the
stream has no further message ready, and messages arriving while a batch is processed gather
for the next one. While it is behind (its newest message was produced over `BEHIND_S` ago: a
catch-up, a restart, a burst), a batch waits up to `fill_s` for more, as `take_events` did:
large batches amortise the per-batch costs (two flushes, each changed lead written once), and
without that wait a catch-up ran in smaller batches at two thirds of the speed (measured with
`leadstream bench pipeline`).

The mechanism is the one `take_events` uses: a stream processor collects each event while the
stream is drained in the background, and events are acknowledged only after their batch was
processed, so Faust never commits an offset past an event that was not.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any, cast

import faust
from faust.types import ChannelT, EventT

#: A batch whose newest message was produced longer ago than this is filled (see the module doc).
BEHIND_S = 0.1


async def batches(stream: faust.Stream[Any], max_messages: int, fill_s: float) -> AsyncIterator[list[EventT[Any]]]:
    """Lists of 1 to `max_messages` events, in stream order, each acknowledged once the caller
    asks for the next list (or stops)."""
    pending: list[EventT[Any]] = []
    ready = asyncio.Event()  # pending has events, and the stream ran dry or the batch is full
    full = asyncio.Event()
    room = asyncio.Event()  # pending is below max_messages
    room.set()
    # A stream iterates a channel; the stream's own queue holds what its background drain has
    # yet to run through `collect`.
    channel = cast(ChannelT[Any], stream.channel)
    queue = channel.queue

    async def collect(value: Any) -> Any:
        event = stream.current_event
        if event is None:  # Faust sets it before its processors run
            raise RuntimeError("a stream processor ran without a current event")
        pending.append(event)
        if len(pending) >= max_messages:
            ready.set()
            full.set()
            room.clear()
            await room.wait()  # back-pressure: the stream pauses until this batch is taken
        elif queue.empty():
            ready.set()
        return value

    acks = stream.enable_acks
    stream.enable_acks = False  # acknowledged below, after their batch
    stream.add_processor(collect)
    stream._enable_passive(channel)  # the private hook take_events uses to drain in the background
    try:
        while not stream.should_stop:
            if await stream.wait_for_stopped(ready):  # type: ignore[arg-type] # an asyncio.Event is awaitable as mode expects
                break
            if time.time() - pending[-1].message.timestamp > BEHIND_S:
                await stream.wait_for_stopped(full, timeout=fill_s)  # type: ignore[arg-type]
            ready.clear()
            full.clear()
            batch = pending[:]
            pending.clear()
            room.set()
            try:
                yield batch
            finally:
                for event in batch:
                    await stream.ack(event)
    finally:
        stream.enable_acks = acks
        stream._processors.remove(collect)
