"""Semantic 10: event time, not arrival time; out-of-order events within the allowed lateness
score as if in order; later ones are counted and reported, not scored."""

from __future__ import annotations

import random

import pytest

from scoring import Engine
from tests.scoring.support import DAY, HOUR, T0, Run, engine, ev, model

MODEL = (
    '[[rules]]\nname = "visit"\nevent = "visit"\npoints = 10\nbonus = { count = 3, window = "1d", points = 5 }\n'
    '[[rules]]\nname = "open"\nevent = "open"\npoints = 1\ncap = { max = 1, window = "1d" }\n'
    '[decay]\nsteps = [{ idle = "30d", points = -15 }]\n'
)


def events() -> list[dict]:
    return [ev("visit", at=h * HOUR) for h in (1, 2, 3, 30)] + [ev("open", at=h * HOUR) for h in (1, 5, 26, 27)]


def test_out_of_order_within_lateness_scores_as_in_order() -> None:
    ordered = Run(engine(MODEL, lateness="2d")).apply(*sorted(events(), key=lambda e: e["time"]))
    shuffled_events = events()
    random.Random(3).shuffle(shuffled_events)
    shuffled = Run(engine(MODEL, lateness="2d")).apply(*shuffled_events, batch=3)
    assert ordered.score() == shuffled.score() == 40 + 5 + 2
    assert ordered.state().ledger == shuffled.state().ledger


@pytest.mark.parametrize(("behind", "late"), [(0, False), (DAY - 1, False), (DAY, False), (DAY + 1, True), (40 * DAY, True)])
def test_lateness_boundary(behind: int, late: bool) -> None:
    run = Run(engine(MODEL, lateness="1d")).apply(ev("visit", at=40 * DAY))
    before = run.store[("m", "L1")]
    straggler = ev("visit", at=40 * DAY - behind)
    run.apply(straggler)
    assert [late.event.event_id for late in run.late] == ([straggler["event_id"]] if late else [])
    assert (run.store[("m", "L1")] == before) is late


def test_an_event_late_for_one_model_is_reported_for_it_and_scored_by_the_others() -> None:
    run = Run(Engine([model(MODEL, name="quick", lateness="1h"), model(MODEL, name="patient", lateness="1d")]))
    run.apply(ev("visit", at=10 * DAY))
    straggler, ancient = ev("visit", at=10 * DAY - 2 * HOUR), ev("visit", at=DAY)
    run.apply(straggler, ancient)
    assert [(late.event.event_id, late.models, late.scored) for late in run.late] == [
        (straggler["event_id"], ("quick",), True),
        (ancient["event_id"], ("quick", "patient"), False),
    ]
    assert run.score(model_name="quick") == 10 and run.score(model_name="patient") == 20


def test_lateness_is_relative_to_the_lead_not_to_other_leads() -> None:
    run = Run(engine(MODEL, lateness="1h")).apply(ev("visit", lead="busy", at=10 * DAY), ev("visit", lead="quiet", at=0))
    assert run.late == [] and run.score("quiet") == 10


def test_windows_follow_event_time_not_arrival() -> None:
    run = Run(engine(MODEL, lateness="3d")).apply(ev("open", at=2 * DAY), ev("open", at=DAY), ev("open", at=DAY + HOUR))
    assert run.score() == 2  # one per calendar day of the events


FIT = (
    '[[rules]]\nname = "visit"\nevent = "visit"\npoints = 10\n'
    '[[fit]]\nname = "senior"\npoints = 10\ntraits.title = { words = ["vp"] }\n'
    '[[fit]]\nname = "in DACH"\npoints = 5\ntraits.country = ["DE", "AT", "CH"]\n'
)


def test_traits_follow_event_time_whatever_order_profile_updates_arrive_in() -> None:
    """Each trait takes the value of its newest update by event time; a null forgets it as of then."""
    updates = [
        ev("identify", at=1 * HOUR, traits={"title": "Intern", "country": "FR"}),
        ev("identify", at=2 * HOUR, traits={"country": "DE"}),
        ev("visit", at=3 * HOUR, traits={"title": "VP Sales"}),
        ev("identify", at=4 * HOUR, traits={"country": None}),
        ev("identify", at=5 * HOUR, traits={"company": "Globex"}),
    ]
    outcomes = set()
    for seed in range(12):
        shuffled = list(updates)
        random.Random(seed).shuffle(shuffled)
        run = Run(engine(FIT, lateness="1d", settings='keep_traits = ["title", "country", "company"]')).apply(*shuffled, batch=2)
        state = run.state()
        outcomes.add((tuple(sorted(state.traits.items())), state.fit, run.score()))
    assert outcomes == {((("company", "Globex"), ("title", "VP Sales")), 10, 20)}


def test_a_late_events_traits_and_first_account_are_taken_though_it_scores_nothing() -> None:
    """A worker catching up reads the events topic ahead of the profiles topic: an identify more
    than the lateness behind its lead's newest event was dropped whole, so the lead kept no
    traits and no fit for good. Its points still count as late; its traits count where no newer
    update set them, and its account when the lead has none."""
    run = Run(engine(FIT, lateness="1d", settings='keep_traits = ["title", "country"]'))
    run.apply(ev("visit", at=3 * DAY), ev("identify", at=3 * DAY + HOUR, traits={"country": "FR"}))
    assert (run.score(), run.levels()) == (10, [])
    run.apply(ev("identify", at=0, event_id="late-1", traits={"title": "VP Sales", "country": "DE"}, account_id="acme"))
    state = run.state()
    assert [late.event.event_id for late in run.late] == ["late-1"]  # reported late all the same
    assert (state.traits, state.fit, state.account_id) == ({"title": "VP Sales", "country": "FR"}, 10, "acme")
    assert run.levels() == [("cold", "mql")]  # 10 + 10 fit: over the line at 20
    [crossing] = run.transitions
    assert crossing.time_ms == T0 + 3 * DAY + HOUR  # the lead's newest event time, not 3 days back
    assert run.account_updates[-1].account_id == "acme"
    store = dict(run.store)
    run.apply(ev("identify", at=0, event_id="late-1", traits={"title": "VP Sales", "country": "DE"}, account_id="acme"),
              ev("group", at=HOUR, account_id="globex"))  # again, and an older account: nothing changes
    assert run.store == store and len(run.transitions) == 1 and run.state().account_id == "acme"
