"""How the worker uses Python's garbage collector.

Scoring allocates many objects per batch (events, touched states, summaries, outgoing
records) and keeps most of them until the batch ends, so a young collection during a batch
finds nearly all of them alive: they are scanned, promoted, and scanned again in the middle
generation before they die at the end of the batch. Measured with gc callbacks in the worker
of `leadstream bench pipeline --events 300000`: young and middle collections took 0.73 s of an
8 s run, 0.30 s with the pause below. Nothing the engine builds is cyclic; reference counting
frees it as soon as the batch lets go.

The offline commands (`leadstream score` and `review`) tune it the same way at start: they keep
every lead's state too, and the collector's full collections, which read every object each
tracked object refers to, grow with them (500,000 events of the engine benchmark's workload over
100,000 leads: 19-24 s to score with Python's settings, 13-14 s tuned, the same output).
"""

from __future__ import annotations

import gc
import time
from types import TracebackType
from typing import Any

from streams.metrics import GC_PAUSE_SECONDS


def tune_collector(young_threshold: int) -> None:
    """Collects less often in every generation: what exists at start-up (modules, models,
    Faust) is frozen out of collections, and a young collection waits for `young_threshold`
    allocations instead of 700. 0 leaves the collector as Python sets it."""
    if young_threshold <= 0:
        return
    gc.collect()
    gc.freeze()
    gc.set_threshold(young_threshold, 20, 100)


class BatchPause:
    """A context in which the collector does not run: a batch is scored inside it, and its
    garbage is collected after it, once the batch's temporary objects are gone and only what
    it keeps (new states) is left to scan. Nested and interleaved entries (two stages whose
    batches await the producer at the same time) pause it once; it runs again when the last
    one leaves. A collector paused by someone else stays paused."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._depth = 0
        self._resume = False

    def __enter__(self) -> None:
        if not self.enabled:
            return
        if self._depth == 0:
            self._resume = gc.isenabled()
            gc.disable()
        self._depth += 1

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        if not self.enabled:
            return
        self._depth -= 1
        if self._depth == 0 and self._resume:
            gc.enable()


class PauseClock:
    """Times each collection into `leadstream_gc_pause_seconds`: a pause holds up every batch
    and crossing of the worker, so it belongs beside the batch times."""

    def __init__(self) -> None:
        self._started = 0.0
        self._observe = [GC_PAUSE_SECONDS.labels(str(generation)).observe for generation in range(3)]

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self._observe[info["generation"]](time.perf_counter() - self._started)

    def install(self) -> None:
        if self not in gc.callbacks:
            gc.callbacks.append(self)
