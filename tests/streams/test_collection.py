"""The collector pause around batches, and the timing of its pauses (streams/collection.py)."""

from __future__ import annotations

import asyncio
import gc
from contextlib import contextmanager
from collections.abc import Iterator

import pytest

from streams.collection import BatchPause, PauseClock
from streams.metrics import GC_PAUSE_SECONDS


@pytest.fixture(autouse=True)
def collector_restored() -> Iterator[None]:
    enabled = gc.isenabled()
    callbacks = list(gc.callbacks)
    yield
    gc.callbacks[:] = callbacks
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


def _timed(generation: int) -> tuple[float, float]:
    """Collections counted and seconds paused so far, in one generation."""
    samples = {sample.name: sample.value for metric in GC_PAUSE_SECONDS.collect() for sample in metric.samples
               if sample.labels.get("generation") == str(generation)}
    return samples.get("leadstream_gc_pause_seconds_count", 0.0), samples.get("leadstream_gc_pause_seconds_sum", 0.0)


@contextmanager
def _only_collections_asked_for() -> Iterator[None]:
    """No automatic collection (threads of earlier tests allocate too) between two readings."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def test_each_collection_is_timed_in_its_generation() -> None:
    PauseClock().install()
    garbage = []
    for _ in range(20_000):  # a full collection with something to scan and something to free
        cycle: list[object] = []
        cycle.append(cycle)
        garbage.append(cycle)
    del garbage, cycle
    with _only_collections_asked_for():
        full_before, young_before = _timed(2), _timed(0)
        gc.collect(2)
        gc.collect(0)
        full_after, young_after = _timed(2), _timed(0)
    assert full_after[0] == full_before[0] + 1 and full_after[1] > full_before[1]
    assert young_after[0] == young_before[0] + 1


def test_installed_twice_it_times_a_collection_once() -> None:
    clock = PauseClock()
    clock.install()
    clock.install()
    with _only_collections_asked_for():
        before = _timed(1)
        gc.collect(1)
        after = _timed(1)
    assert after[0] == before[0] + 1
