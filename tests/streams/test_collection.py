"""The collector pause around batches (streams/collection.py)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest

from streams.collection import BatchPause


@pytest.fixture(autouse=True)
def collector_restored() -> Iterator[None]:
    enabled = gc.isenabled()
    yield
    if enabled:
        gc.enable()
    else:
        gc.disable()


def test_the_collector_does_not_run_inside_a_batch_and_runs_again_after() -> None:
    gc.enable()
    pause = BatchPause(True)
    with pause:
        assert not gc.isenabled()
    assert gc.isenabled()


def test_interleaved_batches_resume_the_collector_when_the_last_one_ends() -> None:
    gc.enable()
    pause = BatchPause(True)
    seen: list[bool] = []
    first_entered = asyncio.Event()
    second_entered = asyncio.Event()

    async def first() -> None:
        with pause:
            first_entered.set()
            await second_entered.wait()
        seen.append(gc.isenabled())  # the second batch is still running

    async def second() -> None:
        await first_entered.wait()
        with pause:
            second_entered.set()
            await asyncio.sleep(0.01)
        seen.append(gc.isenabled())

    async def both() -> None:
        await asyncio.gather(first(), second())

    asyncio.run(both())
    assert seen == [False, True]


def test_a_failing_batch_resumes_the_collector() -> None:
    gc.enable()
    with pytest.raises(RuntimeError), BatchPause(True):
        raise RuntimeError("batch failed")
    assert gc.isenabled()


def test_a_collector_paused_elsewhere_stays_paused() -> None:
    gc.disable()
    with BatchPause(True):
        assert not gc.isenabled()
    assert not gc.isenabled()


def test_disabled_it_leaves_the_collector_alone() -> None:
    gc.enable()
    with BatchPause(False):
        assert gc.isenabled()
    assert gc.isenabled()
