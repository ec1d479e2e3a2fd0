"""Semantic 5: inactivity steps and half-life decay, exact whenever evaluated, with a floor,
and the time the next step is due."""

from __future__ import annotations

import math

import pytest

from scoring import Engine
from tests.scoring.support import DAY, HOUR, T0, Run, engine, ev, shipped

STEPS = (
    '[[rules]]\nname = "visit"\nevent = "visit"\npoints = 40\n'
    '[[rules]]\nname = "small"\nevent = "small"\npoints = 1\n'
    '[[rules]]\nname = "spam"\nevent = "spam"\npoints = -5\n'
    '[decay]\nsteps = [{ idle = "30d", points = -15 }, { idle = "60d", points = -30 }, { idle = "90d", points = -50 }]\n'
)


def decayed(run: Run, day: float, lead: str = "L1") -> float:
    state, _ = run.engine.decay("m", lead, run.state(lead), T0 + int(day * DAY))
    return run.engine.summary("m", lead, state, T0 + int(day * DAY))["score"]


@pytest.mark.parametrize(("day", "score"), [(0, 80), (29.9, 80), (30, 65), (59, 65), (60, 35), (90, 0), (400, 0)])
def test_steps_relative_to_last_activity(day: float, score: float) -> None:
    run = Run(engine(STEPS)).apply(ev("visit"), ev("visit", at=1))
    assert decayed(run, day + 1 / DAY) == score


def test_steps_are_never_applied_twice_whenever_evaluated() -> None:
    run = Run(engine(STEPS)).apply(ev("visit"), ev("visit"))
    state = run.state()
    for day in (31, 31, 45, 61, 61, 95):
        state, _ = run.engine.decay("m", "L1", state, T0 + day * DAY)
    once, _ = run.engine.decay("m", "L1", run.state(), T0 + 95 * DAY)
    assert state == once
    assert state.behaviour == 0 and state.steps_taken == (-15, -30, -35)


def test_activity_restarts_the_idle_clock() -> None:
    run = Run(engine(STEPS)).apply(ev("visit"), ev("visit", at=1))
    run.apply(ev("small", at=40 * DAY))  # one step taken (day 30) before this activity
    assert run.score() == 66
    assert decayed(run, 69) == 66  # 29 days after the new activity
    assert decayed(run, 70) == 51


def test_negative_events_are_not_activity() -> None:
    run = Run(engine(STEPS)).apply(ev("visit"), ev("visit", at=1), ev("spam", at=20 * DAY))
    assert decayed(run, 31) == 75 - 15


def test_activity_that_arrives_after_a_step_it_precedes_gives_the_step_back() -> None:
    run = Run(engine(STEPS)).apply(ev("visit"), ev("visit"))
    state, transitions = run.engine.decay("m", "L1", run.state(), T0 + 60 * DAY + HOUR)
    assert (state.behaviour, [t.to_level for t in transitions]) == (35, ["mql"])
    run.store[("m", "L1")] = state.to_bytes()
    run.apply(ev("small", at=60 * DAY - HOUR))  # happened an hour before the second step was due
    assert run.score() == 80 - 15 + 1
    assert run.levels()[-1] == ("mql", "sql")


def test_a_negative_event_that_arrives_after_a_step_it_precedes_comes_before_the_step() -> None:
    # At the floor (0) points are clipped, so a step's order with negative events matters.
    spam = [ev("spam", at=20 * DAY, event_id=f"s{n}") for n in range(6)]
    run = Run(engine(STEPS)).apply(ev("visit"))
    swept, _ = run.engine.decay("m", "L1", run.state(), T0 + 30 * DAY + HOUR)  # a worker's sweep: 40 - 15
    run.store[("m", "L1")] = swept.to_bytes()
    run.apply(*spam)  # timed before the step, arriving after it: each comes before it, which is taken again after
    assert (run.state().behaviour, run.state().steps_taken) == (0, (-10,))  # 40 - 30, then the step at the floor
    assert [t.direction for t in run.transitions] == ["up", "down"]  # to mql with the visit, down at the sweep: no flapping
    run.apply(ev("visit", at=29 * DAY))  # the lead was not idle 30 days after all
    in_time = Run(engine(STEPS)).apply(ev("visit"), *spam, ev("visit", at=29 * DAY))
    assert run.score() == in_time.score() == 40 - 30 + 40  # not 40 - 15 - 25 (clipped) + 15 + 40


def test_an_event_before_the_last_activity_comes_before_the_steps_taken_since() -> None:
    run = Run(engine(STEPS)).apply(ev("visit"), ev("visit", at=HOUR))
    swept, _ = run.engine.decay("m", "L1", run.state(), T0 + 95 * DAY)  # a worker's sweep: -15, -30, then -35 at the floor
    run.store[("m", "L1")] = swept.to_bytes()
    run.apply(ev("small", at=HOUR // 2))  # timed before the last activity: before all three steps
    in_time = Run(engine(STEPS)).apply(ev("visit"), ev("small", at=HOUR // 2), ev("visit", at=HOUR))
    assert decayed(run, 96) == decayed(in_time, 96) == 0  # not the late point left over after the steps
    assert run.state().steps_taken == (-15, -30, -36)


def test_late_activity_before_the_last_one_gives_back_the_steps_of_its_idle_period() -> None:
    # Day 0, then day 30 minus an hour (arriving last), then day 30.5: the lead was never idle
    # 30 days. The step taken at day 30 stayed taken: the day-30.5 activity had closed its period.
    run = Run(engine(STEPS)).apply(ev("visit"), ev("visit", at=30 * DAY + 12 * HOUR))
    assert run.state().behaviour == 80 - 15 and run.state().earlier_steps == (-15,)
    run.apply(ev("small", at=30 * DAY - HOUR))
    assert run.state().behaviour == 80 + 1 and run.state().earlier_steps == ()
    assert run.state().changes(2)[0] == (T0 + 30 * DAY - HOUR, 15, "decay given back (an event before it arrived late)")
    # Once no event within the lateness can fall in the period, it is forgotten.
    run = Run(engine(STEPS)).apply(ev("visit"), ev("visit", at=30 * DAY + 12 * HOUR))
    run.apply(ev("spam", at=31 * DAY))  # the lateness is 1 day: the step, due at day 30, is settled
    assert (run.state().earlier_activity_ms, run.state().earlier_steps) == (0, ())


def test_late_activity_gives_back_steps_an_edited_schedule_no_longer_has() -> None:
    run = Run(engine(STEPS)).apply(ev("visit"), ev("visit"))
    state, _ = run.engine.decay("m", "L1", run.state(), T0 + 95 * DAY)
    assert state.steps_taken == (-15, -30, -35)
    run.store[("m", "L1")] = state.to_bytes()
    # The schedule loses its third step while the lead has taken it; an activity from before
    # the second step was due gives back both later steps (the third as due with the second).
    edited = Run(engine(STEPS.replace(', { idle = "90d", points = -50 }', "")), store=run.store)
    edited.apply(ev("small", at=50 * DAY))
    assert edited.score() == 80 - 15 + 1


def test_a_step_the_floor_lets_take_nothing_is_not_in_the_history() -> None:
    # Its "decay 0" rows took the history's few places from the changes that explain a score.
    run = Run(engine(STEPS)).apply(ev("small"))
    state, _ = run.engine.decay("m", "L1", run.state(), T0 + 100 * DAY)
    assert state.changes(10)[-2:] == [(T0, 1, "small"), (T0 + 30 * DAY, -1, "decay")]  # then 60 and 90 days: nothing left
    explained = run.engine.explain("m", "L1", state, T0 + 100 * DAY)
    assert [row["decayed"] for row in explained["rules"]] == [-1] and explained["decayed"] == -1


def test_a_step_that_takes_less_than_a_hundredth_is_not_in_the_history() -> None:
    # The history keeps points to the hundredth: a step the floor let take 0.004 read `decay 0`.
    rules = '[[rules]]\nname = "plus"\nevent = "plus"\npoints = 1.004\n[[rules]]\nname = "minus"\nevent = "minus"\npoints = -1\n'
    run = Run(engine(rules + '[decay]\nsteps = [{ idle = "30d", points = -15 }]\n')).apply(ev("plus"), ev("minus", at=1))
    state, _ = run.engine.decay("m", "L1", run.state(), T0 + 31 * DAY)
    assert state.behaviour == 0 and state.steps_taken
    assert state.changes(10) == [(T0, 1.0, "plus"), (T0 + 1, -1, "minus")]


def test_floor_is_zero_unless_the_model_allows_less() -> None:
    run = Run(engine(STEPS)).apply(ev("small"))
    assert decayed(run, 100) == 0
    negative = Run(engine(STEPS, settings="floor = -100")).apply(ev("small"))
    assert decayed(negative, 100) == 1 - 95


@pytest.mark.parametrize(
    ("events_days", "decay_days", "due_day"),
    [([], [], None), ([0], [], 30), ([0], [31], 60), ([0], [31, 61, 91], None), ([0, 10], [], 40)],
)
def test_next_due(events_days: list[int], decay_days: list[int], due_day: int | None) -> None:
    run = Run(engine(STEPS)).apply(ev("identify"), *(ev("visit", at=d * DAY) for d in events_days))
    state = run.state()
    for day in decay_days:
        state, _ = run.engine.decay("m", "L1", state, T0 + day * DAY)
    assert run.engine.next_due_ms("m", state) == (None if due_day is None else T0 + due_day * DAY)


def test_decay_never_changes_the_state_it_is_given() -> None:
    run = Run(engine(STEPS)).apply(ev("visit"))
    before = run.state().to_bytes()
    state = run.state()
    run.engine.decay("m", "L1", state, T0 + 100 * DAY)
    assert state.to_bytes() == before


HALF_LIFE = '[[rules]]\nname = "visit"\nevent = "visit"\npoints = 40\n[decay]\nhalf_life = "10d"\n'


@pytest.mark.parametrize(("day", "score"), [(0, 80), (10, 40), (20, 20), (30, 10)])
def test_half_life(day: int, score: float) -> None:
    run = Run(engine(HALF_LIFE)).apply(ev("visit"), ev("visit"))
    assert decayed(run, day) == pytest.approx(score, abs=0.01)


def test_a_half_life_crossing_down_shows_a_score_below_the_line_it_left() -> None:
    # Decay passes the line a hair below it: rounded to 2 decimals, it showed on the line (a
    # crossing down from mql, left below 20, at 20.0).
    run = Run(engine(HALF_LIFE)).apply(ev("visit"))  # 40 points, mql at 20
    _, [down] = run.engine.decay("m", "L1", run.state(), T0 + 11 * DAY)
    assert (down.from_level, down.direction) == ("mql", "down") and 19.99 <= down.score < 20


def test_half_life_is_exact_whenever_evaluated_and_discounts_late_events() -> None:
    run = Run(engine(HALF_LIFE, lateness="30d")).apply(ev("visit"))
    state = run.state()
    for day in (3, 7, 10):
        state, _ = run.engine.decay("m", "L1", state, T0 + day * DAY)
    run.store[("m", "L1")] = state.to_bytes()
    run.apply(ev("visit", at=10 * DAY), ev("visit", at=0))  # the second happened 10 days earlier
    assert run.state().behaviour == pytest.approx(20 + 40 + 20)


def test_a_model_switched_to_a_half_life_values_earlier_points_at_the_lead_s_newest_event() -> None:
    # A state written under steps (or no decay) had never been valued under a half-life: its
    # points were decayed from 1970, to 0, and the crossing down was stamped with a 1970 time.
    steps = Run(engine(STEPS)).apply(ev("visit"), ev("visit", at=DAY))  # 80: sql (at 60)
    switched = Run(engine(HALF_LIFE), store=dict(steps.store))
    assert decayed(switched, 11) == pytest.approx(40, abs=0.01)  # one half-life after the newest event
    due = switched.engine.next_due_ms("m", switched.state())
    assert due == pytest.approx(T0 + DAY + 10 * DAY * math.log2(80 / 60), abs=2)
    _, [down] = switched.engine.decay("m", "L1", switched.state(), due)
    assert (down.to_level, down.time_ms) == ("mql", due)
    switched.apply(ev("visit", at=11 * DAY))
    assert switched.score() == pytest.approx(80, abs=0.01)


def test_half_life_next_due_is_when_the_score_falls_through_the_level() -> None:
    run = Run(engine(HALF_LIFE)).apply(ev("visit"), ev("visit"))  # 80: sql (at 60)
    due = run.engine.next_due_ms("m", run.state())
    assert due == pytest.approx(T0 + 10 * DAY * 0.415, abs=DAY // 100)  # 80 * 2^(-t/10d) = 60
    after, transitions = run.engine.decay("m", "L1", run.state(), due)
    assert [t.to_level for t in transitions] == ["mql"]
    before, none = run.engine.decay("m", "L1", run.state(), due - 2)
    assert none == [] and before.level == "sql"


def test_a_half_life_lead_in_an_account_is_due_each_time_decay_took_a_tenth_of_its_points() -> None:
    """Its account holds the score it last sent: due only at its lines, a member kept its
    undecayed points in the account's roll-up until it crossed one."""
    run = Run(engine(HALF_LIFE)).apply(ev("visit", account_id="acme"), ev("visit", lead="L2"))
    tenth = 10 * DAY * math.log2(10 / 9)
    due = run.engine.next_due_ms("m", run.state())
    assert due is not None and due == pytest.approx(T0 + tenth, abs=1)
    decayed, _ = run.engine.decay("m", "L1", run.state(), due)
    assert run.engine.member_score("m", "L1", decayed, due).score == pytest.approx(36, abs=0.01)  # type: ignore[union-attr]
    assert run.engine.next_due_ms("m", decayed) == pytest.approx(due + tenth, abs=1)
    assert run.engine.next_due_ms("m", run.state("L2")) == pytest.approx(T0 + 10 * DAY, abs=2)  # no account: its line (20) only
    faded, _ = run.engine.decay("m", "L1", run.state(), T0 + 60 * DAY)  # 40 * 2^-6 = 0.625: a tenth is no news
    assert faded.level == "cold" and run.engine.next_due_ms("m", faded) is None


def test_half_life_next_due_is_when_negative_points_rise_through_the_next_line() -> None:
    # Below a zero floor, negative behaviour points decay towards zero: the score rises.
    rules = '[[rules]]\nname = "unsubscribed"\nevent = "unsubscribe"\npoints = -30\n[decay]\nhalf_life = "10d"\n'
    fit = '[[fit]]\nname = "vp"\npoints = 40\ntraits.title = "vp"\n'
    run = Run(engine(rules + fit, settings="floor = -100")).apply(ev("identify", traits={"title": "vp"}), ev("unsubscribe"))
    assert (run.score(), run.state().level) == (10, "cold")
    due = run.engine.next_due_ms("m", run.state())
    assert due is not None
    assert due == pytest.approx(T0 + 10 * DAY * math.log2(30 / 20), abs=2)  # -30 * 2^(-t/10d) = -20: a score of 20
    after, transitions = run.engine.decay("m", "L1", run.state(), due)
    assert [(t.from_level, t.to_level) for t in transitions] == [("cold", "mql")]
    before, none = run.engine.decay("m", "L1", run.state(), due - 2)
    assert none == [] and before.level == "cold"


def test_half_life_crossings_are_the_same_whether_a_sweep_or_the_next_event_brings_decay() -> None:
    # 80 falls through sql (at 60) after 4.15 days, then an event at day 5 takes it back over.
    run = Run(engine(HALF_LIFE)).apply(ev("visit"), ev("visit"))
    due = run.engine.next_due_ms("m", run.state())
    assert due is not None
    swept = Run(run.engine, store=dict(run.store), transitions=list(run.transitions))
    state, crossed = run.engine.decay("m", "L1", swept.state(), due)
    swept.store[("m", "L1")], swept.transitions = state.to_bytes(), swept.transitions + crossed
    for each in (run, swept):
        each.apply(ev("visit", at=5 * DAY))
    assert swept.levels() == [("cold", "mql"), ("mql", "sql"), ("sql", "mql"), ("mql", "sql")]
    assert run.levels() == swept.levels()
    assert [t.time_ms for t in run.transitions] == [t.time_ms for t in swept.transitions]
    assert run.state().behaviour == swept.state().behaviour


def test_half_life_lines_passed_before_an_event_are_settled_with_the_fit_before_its_traits() -> None:
    # 80 falls through sql at day 4.15; the identify at day 5 adds 30 fit points from then on.
    fit = '[[fit]]\nname = "vp"\npoints = 30\ntraits.title = "vp"\n'
    run = Run(engine(HALF_LIFE + fit)).apply(ev("visit"), ev("visit"), ev("identify", at=5 * DAY, traits={"title": "vp"}))
    assert run.levels()[2:] == [("sql", "mql"), ("mql", "sql")]
    crossed, regained = (t.time_ms for t in run.transitions[2:])
    assert (crossed, regained) == (pytest.approx(T0 + 10 * DAY * math.log2(80 / 60), abs=2), T0 + 5 * DAY)


def test_a_step_given_back_restores_the_points_and_the_level_follows_arrival_order() -> None:
    """Crossings are published as they happen: an MQL at 15 (the b2b band is 15-19) that a
    sweep's step took to nurture has the step back when an e-mail open timed before it arrives,
    and stays nurture at 16, where in time order it was never demoted (scoring/MODELS.md)."""
    b2b = Engine([shipped("b2b")])
    booked = [ev("meeting_booked", product="b2b"), ev("page_view", at=HOUR, product="b2b", properties={"url": "https://acme.io/careers"})]
    opened = ev("email_open", at=29 * DAY, product="b2b", properties={"email_id": "m1"})
    run = Run(b2b).apply(*booked)
    swept, down = b2b.decay("b2b", "L1", run.state(model_name="b2b"), T0 + 31 * DAY)
    run.store[("b2b", "L1")] = swept.to_bytes()
    run.apply(opened)
    in_time = Run(b2b).apply(*booked, opened)
    assert [(t.to_level, t.score) for t in run.transitions + down] == [("mql", 25), ("nurture", 0)]
    assert (run.score(model_name="b2b"), run.state(model_name="b2b").level) == (25 - 10 + 1, "nurture")
    assert (in_time.score(model_name="b2b"), in_time.state(model_name="b2b").level) == (25 - 10 + 1, "mql")


def test_an_occurrence_that_earns_nothing_is_activity_and_a_0_point_rule_s_bonus_is_not() -> None:
    # As scoring/MODELS.md says: a rule with positive points whose conditions held restarts the
    # idle clock whatever the occurrence earned (a once_per repeat, past its cap, clipped by
    # max_points); a 0-point rule is no activity, though its bonus pays.
    rules = (
        '[[rules]]\nname = "once"\nevent = "once"\npoints = 20\nonce_per = "properties.k"\n'
        '[[rules]]\nname = "capped"\nevent = "capped"\npoints = 20\ncap = { max = 1, window = "7d" }\n'
        '[[rules]]\nname = "ceiling"\nevent = "ceiling"\npoints = 20\nmax_points = 20\n'
        '[[rules]]\nname = "zero"\nevent = "zero"\npoints = 0\nbonus = { count = 2, window = "7d", points = 20 }\n'
        '[decay]\nsteps = [{ idle = "1d", points = -5 }]\n'
    )
    for kind in ("once", "capped", "ceiling"):
        run = Run(engine(rules)).apply(ev(kind, properties={"k": 1}), ev(kind, at=20 * HOUR, properties={"k": 1}))
        assert run.score() == 20 and run.state().last_activity_ms == T0 + 20 * HOUR, kind
        assert decayed(run, 1.5) == 20, kind  # idle since hour 20: the step is due at hour 44
        assert decayed(run, 44 / 24 + 1 / DAY) == 15, kind
    run = Run(engine(rules + '[[rules]]\nname = "visit"\nevent = "visit"\npoints = 1\n')).apply(
        ev("visit"), ev("zero", at=10 * HOUR), ev("zero", at=20 * HOUR)
    )
    assert (run.score(), run.state().last_activity_ms) == (21, T0)
    assert decayed(run, 1.5) == 16
