"""Lead state: compact bytes that round-trip, and the bounds that keep a state small."""

from __future__ import annotations

import pytest

from scoring import Engine, LeadState, StateError
from tests.scoring.support import DAY, HOUR, T0, Run, engine, ev, shipped

RULE = '[[rules]]\nname = "v"\nevent = "v"\npoints = 1\n'


def test_round_trip_and_size_of_a_b2b_lead() -> None:
    run = Run(Engine([shipped("b2b")])).apply(
        ev("identify", product="b2b", traits={"email": "jane@globex.com", "title": "VP Sales", "company_size": 300}),
        *(ev("page_view", at=i, product="b2b", properties={"url": "https://acme.io/pricing"}) for i in range(3)),
        ev("email_open", at=9, product="b2b", properties={"email_id": "m-1"}),
    )
    raw = run.store[("b2b", "L1")]
    assert LeadState.from_bytes(raw).to_bytes() == raw
    assert len(raw) < 600


@pytest.mark.parametrize("raw", [b"not json", b"{}", b"[2]", b"[1, 2, 3]"])
def test_unreadable_state_bytes_raise_state_error(raw: bytes) -> None:
    with pytest.raises(StateError):
        LeadState.from_bytes(raw)


def test_event_ids_are_bounded_by_count() -> None:
    run = Run(engine(RULE, settings="remember_events = 4"))
    first = ev("v", event_id="first")
    run.apply(first, *(ev("v", at=i) for i in range(1, 8)))
    assert run.state().ids_count + run.state().old_ids.count("\x7f") - 1 <= 8
    run.apply(first)  # within the last 4 to 8 ids: still known
    assert run.score() == 8
    run.apply(*(ev("v", at=i) for i in range(8, 16)))
    run.apply(first)  # forgotten by count, and within the lateness: scores again (the documented bound)
    assert run.score() == 17


def test_event_ids_are_forgotten_once_beyond_the_lateness() -> None:
    run = Run(engine(RULE, lateness="1h", settings="remember_events = 1"))  # one id a generation
    old = ev("v", event_id="old")
    run.apply(old, ev("v", at=2 * HOUR))
    assert "old" not in run.state().ids + run.state().old_ids
    run.apply(old)  # a replay of it is late, not a second score
    assert run.score() == 2 and len(run.late) == 1


def test_window_counters_are_dropped_when_no_event_can_reach_them() -> None:
    rule = '[[rules]]\nname = "o"\nevent = "o"\npoints = 1\ncap = { max = 1, window = "1d" }\n'
    run = Run(engine(rule, lateness="1h")).apply(ev("o"), ev("o", at=DAY + 2 * HOUR))
    assert run.state().windows == {"cap:o": [(T0 + DAY) // DAY, 1]}


def test_copy_is_independent() -> None:
    run = Run(engine(RULE)).apply(ev("v"))
    state = run.state()
    copy = state.copy()
    copy.ledger["v"][0] = 99
    assert state.ledger["v"][0] == 1 and copy != state
