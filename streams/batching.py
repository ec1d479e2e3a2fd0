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

A batch is bounded by the bytes of its messages' values too (`max_bytes`; a message is never
split, so one larger than that is a batch alone). A stage scores a batch in one go, without
yielding to the event loop, and its cost follows the events it holds, which the number of
messages does not bound: 500 envelopes of ~1 MB from the collector held 1.2M events, whose
scoring blocked the loop for most of a minute while the last batch's flushes waited on it, until
the producer's request timeout failed them and stopped the worker; its replacement took the same
batch again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import faust
from faust.types import ChannelT, EventT


async def batches(stream: faust.Stream[Any], max_messages: int, max_bytes: int,
                  within_s: float) -> AsyncIterator[list[EventT[Any]]]:
    """Lists of 1 to `max_messages` events, in stream order, whose values total at most
    `max_bytes` unless the list is of one event; not acknowledged: the caller acknowledges each
    with `stream.ack(event)` once it is done with it."""
    pending: list[EventT[Any]] = []
    pending_bytes = 0
    full = asyncio.Event()
    room = asyncio.Event()  # pending can take another event
    room.set()

    async def hand_over() -> None:
        full.set()
        room.clear()
        await room.wait()  # back-pressure: the stream pauses until this batch is taken

    async def collect(value: Any) -> Any:
        nonlocal pending_bytes
        event = stream.current_event
        if event is None:  # Faust sets it before its processors run
            raise RuntimeError("a stream processor ran without a current event")
        size = event.message.serialized_value_size
        if pending and pending_bytes + size > max_bytes:
            await hand_over()  # this event starts the next batch
        pending.append(event)
        pending_bytes += size
        if len(pending) >= max_messages or pending_bytes >= max_bytes:
            await hand_over()
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
            pending_bytes = 0
            room.set()
            yield batch
    finally:
        stream.enable_acks = acks
        stream._processors.remove(collect)
