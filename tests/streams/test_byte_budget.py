"""The bound on bytes held at once (streams/byte_budget.py): who holds, who waits, in which order."""

from __future__ import annotations

import asyncio

import pytest

from streams.byte_budget import ByteBudget


async def _settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


def test_holders_within_the_bound_go_at_once_and_others_wait_for_a_release() -> None:
    async def scenario() -> None:
        budget = ByteBudget(10)
        assert await budget.acquire(6) == 6
        assert await budget.acquire(4) == 4
        waiting = asyncio.create_task(budget.acquire(1))
        await _settle()
        assert not waiting.done()
        budget.release(4)
        assert await waiting == 1
        assert budget.held_bytes == 7

    asyncio.run(scenario())


def test_waiters_are_served_in_order_of_arrival() -> None:
    """A small request that would fit must not overtake a large one waiting before it, or a
    stream of small requests would keep a huge batch waiting for ever."""

    async def scenario() -> None:
        budget = ByteBudget(10)
        await budget.acquire(6)
        large = asyncio.create_task(budget.acquire(8))
        await _settle()
        small = asyncio.create_task(budget.acquire(2))
        await _settle()
        assert not large.done() and not small.done()
        budget.release(6)
        await _settle()
        assert large.done() and small.done()
        assert budget.held_bytes == 10

    asyncio.run(scenario())


def test_a_holder_larger_than_the_bound_holds_all_of_it_alone() -> None:
    async def scenario() -> None:
        budget = ByteBudget(10)
        assert await budget.acquire(25) == 10
        waiting = asyncio.create_task(budget.acquire(1))
        await _settle()
        assert not waiting.done()
        budget.release(10)
        assert await waiting == 1

    asyncio.run(scenario())


def test_a_wait_given_up_holds_nothing_and_lets_those_behind_go() -> None:
    async def scenario() -> None:
        budget = ByteBudget(10)
        await budget.acquire(5)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await budget.acquire(8)  # first in line, and does not fit
        assert budget.held_bytes == 5
        assert await budget.acquire(5) == 5  # no longer behind it

    asyncio.run(scenario())


def test_a_waiter_cancelled_as_its_turn_comes_gives_its_bytes_back() -> None:
    async def scenario() -> None:
        budget = ByteBudget(10)
        await budget.acquire(10)
        first = asyncio.create_task(budget.acquire(10))
        second = asyncio.create_task(budget.acquire(3))
        await _settle()
        budget.release(10)  # grants `first`, which is cancelled before it runs
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert await second == 3
        assert budget.held_bytes == 3

    asyncio.run(scenario())


def test_bytes_held_for_a_bound_are_trimmed_to_the_size_once_known_and_those_waiting_go() -> None:
    """A body's turn is held before it is read, for as much as it may hold (its limit when
    compressed); what it does not need goes to the next in line once it is read."""

    async def scenario() -> None:
        budget = ByteBudget(10)
        held = await budget.acquire(8)
        waiting = asyncio.create_task(budget.acquire(5))
        await _settle()
        assert not waiting.done()
        assert budget.trim(held, 3) == 3
        assert await waiting == 5
        assert budget.held_bytes == 8
        assert budget.trim(5, 9) == 5  # never more than held
        assert budget.held_bytes == 8

    asyncio.run(scenario())
