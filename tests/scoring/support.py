"""Helpers of the scoring tests: models from TOML snippets, events, and a batch runner."""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

import scoring
from scoring import Engine, Event, Late, LeadState, Transition, load_model, parse_model
from scoring.model import Model

MODELS_DIR = Path(scoring.__file__).parent / "models"

Result = TypeVar("Result")

#: Monday 2025-11-03 00:00:00 UTC: every test time is an offset from it.
T0 = 1_762_128_000_000
SECOND = 1_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR

HEADER = """
[model]
name = "{name}"
lateness = "{lateness}"
{settings}

[thresholds]
base = "cold"
ladder = [{{ level = "mql", at = 20 }}, {{ level = "sql", at = 60 }}]
"""


def model(body: str, name: str = "m", lateness: str = "1d", settings: str = "", header: bool = True) -> Model:
    """A model from TOML; unless `header` is False, a [model] (with extra `settings` lines) and
    a [thresholds] ladder (cold < mql at 20 < sql at 60) are added."""
    text = (HEADER.format(name=name, lateness=lateness, settings=settings) if header else "") + body
    return parse_model(text, f"{name}.toml")


def shipped(name: str) -> Model:
    """One of the example models shipped in scoring/models."""
    return load_model(MODELS_DIR / f"{name}.toml")


def engine(*bodies: str, **kwargs: Any) -> Engine:
    return Engine([model(body, **kwargs) for body in bodies])


_counter = iter(range(1, 10**9))


def ev(kind: str = "page_view", at: int = 0, lead: str = "L1", event_id: str | None = None, **fields: Any) -> dict[str, Any]:
    """An event as JSON would carry it; `at` is ms after T0; unique id unless one is given."""
    event = {"event_id": event_id or f"e-{next(_counter)}", "lead_id": lead, "type": kind, "time": T0 + at}
    event.update(fields)
    return event


@dataclass
class Run:
    """States kept as bytes between batches (as the worker keeps them) and all outputs."""

    engine: Engine
    store: dict[tuple[str, str], bytes] = field(default_factory=dict)
    transitions: list[Transition] = field(default_factory=list)
    late: list[Late] = field(default_factory=list)
    rejected: list[Any] = field(default_factory=list)
    account_updates: list[Any] = field(default_factory=list)

    def apply(self, *events: dict[str, Any] | Event, batch: int | None = None) -> Run:
        parsed = [e if isinstance(e, Event) else self.engine.parse(e) for e in events]
        size = batch or max(len(parsed), 1)
        for start in range(0, len(parsed), size):
            self._batch(parsed[start : start + size])
        return self

    def _batch(self, events: Iterable[Any]) -> None:
        result = self.engine.apply_batch(events, self.get)
        for key, state in result.states.items():
            self.store[key] = state.to_bytes()
        self.transitions += result.transitions
        self.late += result.late
        self.rejected += result.rejected
        self.account_updates += result.account_updates

    def get(self, model_name: str, lead_id: str) -> LeadState | None:
        raw = self.store.get((model_name, lead_id))
        return None if raw is None else LeadState.from_bytes(raw)

    def state(self, lead: str = "L1", model_name: str = "m") -> LeadState:
        state = self.get(model_name, lead)
        assert state is not None, f"no state for {lead} in {model_name}"
        return state

    def score(self, lead: str = "L1", model_name: str = "m", at: int | None = None) -> float:
        state = self.state(lead, model_name)
        now = state.watermark_ms if at is None else T0 + at
        return self.engine.summary(model_name, lead, state, now)["score"]

    def levels(self) -> list[tuple[str, str]]:
        return [(t.from_level, t.to_level) for t in self.transitions]


def beside_a_named_pipe(fifo: Path, read: Callable[[], Result], within_s: float = 10) -> Result:
    """What `read` returns (or raises) with a named pipe made at `fifo`, within `within_s`
    seconds: TimeoutError when it waits on the pipe instead. The pipe is then given a writer
    that closes at once, so that a read waiting on it ends and the test does not hang."""
    os.mkfifo(fifo)
    with ThreadPoolExecutor(1) as pool:
        outcome = pool.submit(read)
        try:
            return outcome.result(timeout=within_s)
        finally:
            with contextlib.suppress(OSError):  # ENXIO: no reader waits on it, as none should
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
