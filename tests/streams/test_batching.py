"""streams.batching: the worker's batches of stream events, on an in-memory Faust channel
(the batching is the same over a topic; the worker's integration tests run it on the broker)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import faust

from streams.batching import BEHIND_S, batches


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
            async for batch in batches(stream, 3, fill_s=5.0):
                got.append([event.value for event in batch])
                await asyncio.sleep(0.01)  # scoring takes a while; more arrive meanwhile

        task = asyncio.ensure_future(consume())
        for value in range(10):
            await channel.send(value=value)
        while sum(map(len, got)) < 10:
            await asyncio.sleep(0.01)
        task.cancel()
        assert [value for batch in got for value in batch] == list(range(10))
        assert max(map(len, got)) == 3

    run_with_stream(scenario)


def test_a_lone_message_is_handed_over_without_waiting_for_a_timer() -> None:
    async def scenario(channel: faust.ChannelT[Any], stream: faust.Stream[Any]) -> None:
        iterator = batches(stream, 500, fill_s=5.0).__aiter__()
        first = asyncio.ensure_future(iterator.__anext__())
        await channel.send(value="only")
        # Fresh, so not filled; Faust's take_events(500, within=5) would hold it for 5 s.
        batch = await asyncio.wait_for(first, timeout=1.0)
        assert [event.value for event in batch] == ["only"]
        await iterator.aclose()

    run_with_stream(scenario)


def test_messages_arriving_during_a_batch_gather_into_the_next() -> None:
    async def scenario(channel: faust.ChannelT[Any], stream: faust.Stream[Any]) -> None:
        got: list[list[str]] = []
        busy = asyncio.Event()

        async def consume() -> None:
            async for batch in batches(stream, 500, fill_s=5.0):
                got.append([event.value for event in batch])
                busy.set()
                await asyncio.sleep(0.2)

        task = asyncio.ensure_future(consume())
        await channel.send(value="a")
        await busy.wait()
        for value in "bcd":  # while "a" is processed
            await channel.send(value=value)
            await asyncio.sleep(0.02)
        while len(got) < 2:
            await asyncio.sleep(0.01)
        task.cancel()
        assert got == [["a"], ["b", "c", "d"]]

    run_with_stream(scenario)


def test_a_batch_is_filled_while_the_worker_is_behind() -> None:
    async def scenario(channel: faust.ChannelT[Any], stream: faust.Stream[Any]) -> None:
        iterator = batches(stream, 500, fill_s=0.3).__aiter__()
        first = asyncio.ensure_future(iterator.__anext__())
        produced = time.time() - BEHIND_S - 10  # a backlog: produced before the worker got to it
        for value in "xyz":
            await channel.send(value=value, timestamp=produced)
            await asyncio.sleep(0.05)
        batch = await asyncio.wait_for(first, timeout=5.0)
        assert [event.value for event in batch] == ["x", "y", "z"]
        await iterator.aclose()

    run_with_stream(scenario)


def test_a_full_batch_is_not_held_for_the_fill_time() -> None:
    async def scenario(channel: faust.ChannelT[Any], stream: faust.Stream[Any]) -> None:
        iterator = batches(stream, 2, fill_s=60.0).__aiter__()
        first = asyncio.ensure_future(iterator.__anext__())
        produced = time.time() - BEHIND_S - 10
        for value in "ab":
            await channel.send(value=value, timestamp=produced)
            await asyncio.sleep(0.05)
        batch = await asyncio.wait_for(first, timeout=5.0)
        assert [event.value for event in batch] == ["a", "b"]
        await iterator.aclose()

    run_with_stream(scenario)


def test_events_are_acknowledged_only_after_their_batch() -> None:
    async def scenario(channel: faust.ChannelT[Any], stream: faust.Stream[Any]) -> None:
        acked: list[int] = []
        ack = stream.ack

        async def recording_ack(event: Any) -> bool:
            acked.append(event.value)
            return await ack(event)

        stream.ack = recording_ack  # type: ignore[method-assign]
        seen: list[int] = []

        async def consume() -> None:
            async for batch in batches(stream, 2, fill_s=5.0):
                values = [event.value for event in batch]
                assert not set(values) & set(acked), "acknowledged before its batch was processed"
                assert set(seen) <= set(acked), "an earlier batch is still unacknowledged"
                seen.extend(values)

        task = asyncio.ensure_future(consume())
        for value in range(5):
            await channel.send(value=value)
        while len(acked) < 5:
            await asyncio.sleep(0.01)
        task.cancel()
        assert acked == list(range(5))

    run_with_stream(scenario)
