"""An optional cache of decoded lead states in front of the table that holds their bytes.

`Engine.apply_batch` updates the states `get_state` hands it in place and returns the changed
ones, so a caller may keep them decoded between batches instead of decoding its table's bytes
again: the next batch gets the same live object, already up to date. That is safe on three
conditions, which `StateCache` keeps:

1. the cached object is exactly what the table holds: a batch's changed states are kept only
   once they are written (`commit`); if the batch is not written (an error, a failed send),
   every state the batch was handed is dropped (`rollback`), because the engine changed them
   in place and the table still holds their old bytes;
2. a state replaced outside `apply_batch` (a decay sweep, an identity merge: `Engine.decay`
   returns a new object) is put in (`put`) or dropped (`forget`) when it is written;
3. states of partitions the worker no longer owns are dropped (`clear`, on a rebalance).

Nothing else is shared: transitions, summaries and member scores copy what they carry. The cache
is bounded (`max_states`, least recently used first out). Pure: no clock, no I/O, not
thread-safe (one per worker task).

Measured on the engine benchmark (1M b2b events, 100k Zipf-skewed leads, CPython 3.11): it does
not pay there. A decoded state takes about five times the memory of its bytes (peak RSS 340 ->
635 MB with every lead cached), and keeping them alive costs the garbage collector and the CPU
caches more than decoding saves: 22.6 us/event reading bytes vs 25.4 with the 20k most recent
leads cached (both with a tuned collector, see the engine's performance notes). Enable it only
where measurements on the real workload say so.

    cache = StateCache(max_states=200_000)
    result = engine.apply_batch(events, cache.reader(read_from_table))
    try:
        write(result.states)          # the changelog, as without the cache
    except BaseException:
        cache.rollback()
        raise
    cache.commit(result)
"""

from __future__ import annotations

from itertools import islice
from typing import TYPE_CHECKING, Callable

from scoring.state import LeadState

if TYPE_CHECKING:
    from scoring.engine import BatchResult

Key = tuple[str, str]


class StateCache:
    """Decoded states by (model, lead id), at most `max_states` of them."""

    __slots__ = ("max_states", "_states", "_lent", "hits", "misses")

    def __init__(self, max_states: int = 100_000) -> None:
        if max_states < 1:
            raise ValueError("max_states must be at least 1")
        self.max_states = max_states
        self._states: dict[Key, LeadState] = {}
        #: Keys handed to the engine since the last commit or rollback.
        self._lent: set[Key] = set()
        self.hits = 0
        self.misses = 0

    def reader(self, get_state: Callable[[str, str], LeadState | None]) -> Callable[[str, str], LeadState | None]:
        """A `get_state` for `apply_batch`: the cached state, else `get_state` (the table)."""
        states, lent = self._states, self._lent

        def read(model: str, lead_id: str) -> LeadState | None:
            key = (model, lead_id)
            lent.add(key)
            state = states.pop(key, None)
            if state is not None:
                states[key] = state  # most recently used last
                self.hits += 1
                return state
            self.misses += 1
            return get_state(model, lead_id)

        return read

    def commit(self, result: BatchResult) -> None:
        """The batch's changed states were written: keep them (they are what the table holds)."""
        states = self._states
        for key, state in result.states.items():
            states.pop(key, None)
            states[key] = state
        self._lent.clear()
        self._trim()

    def rollback(self) -> None:
        """The batch was not written: drop every state it was handed (the engine may have
        changed them in place)."""
        for key in self._lent:
            self._states.pop(key, None)
        self._lent.clear()

    def put(self, model: str, lead_id: str, state: LeadState) -> None:
        """A state written outside `apply_batch` (after a decay sweep or a merge)."""
        key = (model, lead_id)
        self._states.pop(key, None)
        self._states[key] = state
        self._trim()

    def forget(self, model: str, lead_id: str) -> None:
        self._states.pop((model, lead_id), None)

    def clear(self) -> None:
        """Drops everything (partitions revoked, or a table restored)."""
        self._states.clear()
        self._lent.clear()

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, key: object) -> bool:
        return key in self._states

    def _trim(self) -> None:
        states = self._states
        excess = len(states) - self.max_states
        if excess > 0:
            for key in list(islice(states, excess)):  # the least recently used come first
                del states[key]
