"""streams.batching: the worker's batches of stream events, on an in-memory Faust channel
(the batching is the same over a topic; the worker's integration tests run it on the broker)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import faust

from streams.batching import batches


def run_with_stream(scenario: Callable[[faust.ChannelT[Any], faust.Stream[Any]], Awaitable[None]]) -> None:
    async def main() -> None:
        # Never connects: an in-memory channel's events stay in the process.
        app = faust.App("test-batching", broker="kafka://127.0.0.1:1", store="memory://", loop=asyncio.get_running_loop())
        app.flow_control.resume()  # a started worker's Faust does this; channels wait on it
        channel: faust.ChannelT[Any] = app.channel()
        await scenario(channel, app.stream(channel))

    asyncio.run(main())


def test_batches_hold_at_most_max_messages_in_stream_order() -> None:
    async def scenario(channel: faust.ChannelT[Any], stream: faust.Stream[Any]) -> None:
        got: list[list[int]] = []

        async def consume() -> None:
            async for batch in batches(stream, 3, max_bytes=1 << 20, within_s=5.0):
                got.append([event.value for event in batch])
                for event in batch:
                    await stream.ack(event)

        task = asyncio.ensure_future(consume())
        for value in range(9):
            await channel.send(value=value)
        while sum(map(len, got)) < 9:
            await asyncio.sleep(0.01)
        task.cancel()
        assert [value for batch in got for value in batch] == list(range(9))
        assert max(map(len, got)) == 3

    run_with_stream(scenario)


def test_batches_hold_at_most_max_bytes_of_values_and_a_larger_message_alone() -> None:
    # What bounds the time a batch holds the event loop: 500 envelopes of ~1 MB were one batch
    # of 1.2M events, whose scoring outlasted the producer's timeout for the last batch's writes.
    sizes = [400, 400, 300, 200, 1500, 100, 900, 100]

    async def scenario(channel: faust.ChannelT[Any], stream: faust.Stream[Any]) -> None:
        got: list[list[int]] = []

        async def consume() -> None:
            async for batch in batches(stream, 500, max_bytes=1000, within_s=5.0):
                got.append([len(event.value) for event in batch])
                for event in batch:
                    await stream.ack(event)

        task = asyncio.ensure_future(consume())
        for size in sizes:
            await channel.send(value=b"x" * size)
        while sum(map(len, got)) < len(sizes) - 1:  # the last one waits out within_s
            await asyncio.sleep(0.01)
        task.cancel()
        # A batch is handed over on reaching max_bytes, or before the message that would pass it;
        # a message is never split.
        assert got == [[400, 400], [300, 200], [1500], [100, 900]]

    run_with_stream(scenario)


def test_a_batch_short_of_max_is_handed_over_after_within() -> None:
    async def scenario(channel: faust.ChannelT[Any], stream: faust.Stream[Any]) -> None:
        iterator = batches(stream, 500, max_bytes=1 << 20, within_s=0.3).__aiter__()
        started = time.monotonic()
        first = asyncio.ensure_future(iterator.__anext__())
        await channel.send(value="only")
        batch = await asyncio.wait_for(first, timeout=5.0)
        assert [event.value for event in batch] == ["only"]
        assert time.monotonic() - started >= 0.25
        await iterator.aclose()

    run_with_stream(scenario)


def test_events_are_left_for_the_caller_to_acknowledge_and_later_ones_gather_meanwhile() -> None:
    async def scenario(channel: faust.ChannelT[Any], stream: faust.Stream[Any]) -> None:
        acked: list[str] = []
        ack = stream.ack

        async def recording_ack(event: Any) -> bool:
            acked.append(event.value)
            return await ack(event)

        stream.ack = recording_ack  # type: ignore[method-assign]
        got: list[list[str]] = []
        held: list[Any] = []

        async def consume() -> None:
            async for batch in batches(stream, 500, max_bytes=1 << 20, within_s=0.05):
                got.append([event.value for event in batch])
                held.extend(batch)  # acknowledged later, as the worker does once a batch is durable
                await asyncio.sleep(0.2)

        task = asyncio.ensure_future(consume())
        await channel.send(value="a")
        while not got:
            await asyncio.sleep(0.01)
        for value in "bcd":  # while "a" is processed
            await channel.send(value=value)
        while len(got) < 2:
            await asyncio.sleep(0.01)
        task.cancel()
        assert got == [["a"], ["b", "c", "d"]]
        assert acked == []
        for event in held:
            await stream.ack(event)
        assert acked == ["a", "b", "c", "d"]

    run_with_stream(scenario)
