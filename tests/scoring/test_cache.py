"""The optional cache of decoded states: the same results as reading the table every batch,
and nothing kept from a batch that was not written."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from scoring import Engine, LeadState, StateCache
from tests.scoring.support import DAY, Run, ev, shipped
from tests.scoring.test_properties import b2b_events, outcome

B2B = Engine([shipped("b2b")])


class CachedRun(Run):
    """A Run whose states are also kept decoded between batches, as a worker opting in would."""

    def __init__(self, engine: Engine, max_states: int = 1_000) -> None:
        super().__init__(engine)
        self.cache = StateCache(max_states)
        self.last: dict[tuple[str, str], LeadState] = {}

    def _batch(self, events: Any) -> None:
        result = self.engine.apply_batch(events, self.cache.reader(self.get))
        self.last = result.states
        for key, state in result.states.items():
            self.store[key] = state.to_bytes()
        self.transitions += result.transitions
        self.late += result.late
        self.rejected += result.rejected
        self.account_updates += result.account_updates
        self.cache.commit(result)


@settings(max_examples=60, deadline=None)
@given(b2b_events(), st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=8), st.integers(1, 3))
def test_cached_states_give_the_same_results(events: list[dict[str, Any]], cuts: list[int], max_states: int) -> None:
    plain, cached = Run(B2B), CachedRun(B2B, max_states)
    start = 0
    for size in cuts + [len(events)]:
        plain.apply(*events[start : start + size])
        cached.apply(*events[start : start + size])
        start += size
    assert outcome(cached) == outcome(plain)
    assert len(cached.cache) <= max_states


def test_the_next_batch_gets_the_same_live_state() -> None:
    run = CachedRun(B2B).apply(ev("webinar_attended", product="b2b"))
    kept = run.last[("b2b", "L1")]
    run.apply(ev("webinar_attended", at=1, product="b2b"))
    assert run.cache.hits == 1 and run.last[("b2b", "L1")] is kept
    assert LeadState.from_bytes(run.store[("b2b", "L1")]) == kept and kept.behaviour == 20


def test_a_batch_not_written_leaves_nothing_behind() -> None:
    run = CachedRun(B2B).apply(ev("webinar_attended", product="b2b"))
    before = run.store[("b2b", "L1")]
    failed = B2B.apply_batch([B2B.parse(ev("demo_requested", at=1, product="b2b", event_id="x"))], run.cache.reader(run.get))
    assert ("b2b", "L1") in failed.states  # changed in place...
    run.cache.rollback()  # ...but never written
    assert ("b2b", "L1") not in run.cache
    run.apply(ev("demo_requested", at=1, product="b2b", event_id="x"))  # redelivered: scores once
    assert LeadState.from_bytes(run.store[("b2b", "L1")]) != LeadState.from_bytes(before)
    assert run.score(model_name="b2b") == Run(B2B).apply(
        ev("webinar_attended", product="b2b"), ev("demo_requested", at=1, product="b2b", event_id="x")
    ).score(model_name="b2b")


def test_decayed_states_are_put_back() -> None:
    run = CachedRun(B2B).apply(ev("webinar_attended", product="b2b"))
    state = run.cache.reader(run.get)("b2b", "L1")
    run.cache.rollback()
    assert state is not None
    decayed, _ = B2B.decay("b2b", "L1", state, state.watermark_ms + 31 * DAY)
    assert decayed is not state  # a new object: the caller writes it and puts it in
    run.cache.put("b2b", "L1", decayed)
    run.store[("b2b", "L1")] = decayed.to_bytes()
    assert run.cache.reader(run.get)("b2b", "L1") is decayed


def test_least_recently_used_states_go_first() -> None:
    cache = StateCache(max_states=2)
    for lead in ("a", "b", "c"):
        cache.put("m", lead, B2B.new_state("b2b"))
    assert ("m", "a") not in cache and len(cache) == 2
