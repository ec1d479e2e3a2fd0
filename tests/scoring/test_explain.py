"""Semantic 9: the score broken down by rule (points, occurrences, capped, decayed) and the
recent history of changes."""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scoring import Engine
from scoring.scales import Bands, Scale
from tests.scoring.support import DAY, HOUR, T0, Run, engine, ev, shipped

B2B = Engine([shipped("b2b")])


def b2b_lead() -> Run:
    return Run(B2B).apply(
        ev("identify", product="b2b", traits={"title": "VP Sales", "email": "vp@globex.com"}),
        *(ev("page_view", at=i, product="b2b", properties={"url": "https://acme.io/pricing"}) for i in range(1, 4)),
        *(ev("email_open", at=i, product="b2b", properties={"email_id": "m1"}) for i in range(4, 7)),
        ev("form_submit", at=7, product="b2b", properties={"form": "demo_request"}),
    )


def test_explain_breaks_the_score_down_by_rule() -> None:
    run = b2b_lead()
    explained = B2B.explain("b2b", "L1", run.state("L1", "b2b"), T0 + 40 * DAY)
    assert explained["score"] == 8 + 1 + 30 + 30 + 1 - 15
    assert (explained["behaviour_points"], explained["fit_points"], explained["decayed"]) == (46, 9, -15)
    assert explained["rules"] == [
        {"rule": "demo request", "points": 30, "occurrences": 1, "capped": 0, "bonuses": 0, "decayed": -7.38, "in_model": True},
        {"rule": "pricing page", "points": 30, "occurrences": 3, "capped": 0, "bonuses": 0, "decayed": -7.38, "in_model": True},
        # -0.2459 rounded to -0.24, not -0.25: the rows' -7.377, -7.377 and -0.2459 add up to the -15 shown.
        {"rule": "e-mail open", "points": 1, "occurrences": 3, "capped": 2, "bonuses": 0, "decayed": -0.24, "in_model": True},
    ]
    assert explained["fit"] == [{"rule": "senior title", "points": 8}, {"rule": "business e-mail", "points": 1}]
    assert (explained["level"], explained["cell"], explained["next_decay_ms"]) == ("sql", "B2", T0 + 7 + 60 * DAY)  # 55: above 60 - 10


def test_history_lists_the_recent_changes_newest_first() -> None:
    run = b2b_lead()
    history = B2B.explain("b2b", "L1", run.state("L1", "b2b"), T0 + 40 * DAY)["history"]
    assert history[:3] == [
        {"time": T0 + 7 + 30 * DAY, "rule": "decay", "points": -15},
        {"time": T0 + 7, "rule": "demo request", "points": 30},
        {"time": T0 + 4, "rule": "e-mail open", "points": 1},
    ]
    assert history[-1] == {"time": T0, "rule": "fit", "points": 9}


def test_history_keeps_the_configured_number_of_changes() -> None:
    # Rules' changes are recorded by the compiled rule code, fit changes (a title that keeps
    # changing) by the state itself: both trim the history. Webinars and cancelled meetings in
    # turn keep the lead between the floor and the ceiling, where every occurrence is a change.
    meetings = (ev("webinar_attended" if i % 2 else "meeting_cancelled", at=i, product="b2b") for i in range(1, 41))
    titles = (ev("identify", at=i, product="b2b", traits={"title": "VP Sales" if i % 2 else "Engineer"}) for i in range(40))
    for events, labels in ((meetings, {"webinar attended", "meeting cancelled"}), (titles, {"fit"})):
        state = Run(B2B).apply(*events).state("L1", "b2b")
        history = B2B.explain("b2b", "L1", state, T0 + 40)["history"]
        assert len(history) == 8 and all(change["rule"] in labels for change in history), history
        assert 3 * 8 <= len(state.history) <= 3 * 2 * 8  # (time, points, label) triples, trimmed at twice the setting


def test_an_occurrence_the_ceiling_leaves_nothing_is_no_change_in_the_history() -> None:
    # The audit: at b2b's max_points of 150 every webinar wrote a 0-point row, and 8 of them
    # (the model's history) pushed out the demo requests that earned every point.
    demos = (ev("form_submit", at=i, product="b2b", properties={"form": "demo_request"}) for i in range(1, 7))
    webinars = (ev("webinar_attended", at=i, product="b2b") for i in range(10, 18))
    explained = B2B.explain("b2b", "L1", Run(B2B).apply(*demos, *webinars).state("L1", "b2b"), T0 + 20)
    assert explained["score"] == 150
    # The sixth demo request earned nothing either: capped, as the breakdown says, and no change.
    assert explained["history"] == [{"time": T0 + i, "rule": "demo request", "points": 30} for i in range(5, 0, -1)]
    assert [(row["rule"], row["points"], row["occurrences"], row["capped"]) for row in explained["rules"]] == [
        ("demo request", 150, 6, 1), ("webinar attended", 0, 8, 8)]


LIMITS = """
[[rules]]
name = "big"
event = "big"
points = 30
[[rules]]
name = "bad"
event = "bad"
points = -30
[[rules]]
name = "click"
event = "click"
points = 3
max_points = 5
cap = { max = 3, window = "1d" }
"""


def test_no_limit_writes_a_0_point_row_under_steps_or_a_half_life() -> None:
    # The model's ceiling and floor, a rule's own ceiling and cap: an occurrence they leave
    # nothing is counted as capped, not written as a change. Under a half-life the points decay
    # between events, and topping a lead up to its ceiling again seconds later moves it by less
    # than the hundredth a row shows: 0 as well.
    for decay in ('steps = [{ idle = "30d", points = -15 }]', 'half_life = "10d"'):
        run_engine = engine(LIMITS + f"[decay]\n{decay}\n", settings="max_points = 60\nhistory = 5")
        clicks = [ev("click", at=i * 1_000) for i in range(1, 6)]
        run = Run(run_engine).apply(ev("bad"), *clicks, *(ev("big", at=i * 1_000) for i in range(6, 12)))
        explained = run_engine.explain("m", "L1", run.state(), T0 + 12_000)
        assert [row["rule"] for row in explained["history"]] == ["big", "big", "click", "click"], (decay, explained["history"])
        assert [row["points"] for row in explained["history"]] == [25, 30, 2, 3], decay  # newest first
        assert {row["rule"]: row["capped"] for row in explained["rules"]} == {"big": 5, "bad": 1, "click": 4}, decay
        assert round(sum(row["points"] + row["decayed"] for row in explained["rules"]), 2) == explained["behaviour_points"]


def test_0_point_rows_a_state_was_written_with_are_not_shown() -> None:
    # States written before rule rows of 0 points were left out still hold them: shown, a lead
    # at its ceiling kept 8 such rows until something else changed its score. A merge's row is
    # shown even of 0 points: it says that the visitor's profile is in the lead's.
    run = Run(B2B).apply(*(ev("form_submit", at=i, product="b2b", properties={"form": "demo_request"}) for i in range(1, 3)))
    state = run.state("L1", "b2b")
    state.history += [T0 + 3, 0, "demo request", T0 + 4, 0, "merged from anonymous visitor anon:v", T0 + 5, 0, "demo request"]
    assert B2B.explain("b2b", "L1", state, T0 + 5)["history"] == [
        {"time": T0 + 4, "rule": "merged from anonymous visitor anon:v", "points": 0},
        {"time": T0 + 2, "rule": "demo request", "points": 30},
        {"time": T0 + 1, "rule": "demo request", "points": 30},
    ]


def test_summary_has_top_reasons() -> None:
    run = b2b_lead()
    summary = B2B.summary("b2b", "L1", run.state("L1", "b2b"), T0 + 8)
    assert summary["top_reasons"] == [
        {"rule": "demo request", "points": 30},
        {"rule": "pricing page", "points": 30},
        {"rule": "senior title", "points": 8},
        {"rule": "business e-mail", "points": 1},
        {"rule": "e-mail open", "points": 1},
    ]
    assert set(summary) >= {"lead_id", "model", "score", "normalized", "grade", "engagement", "cell", "temperature", "level", "last_activity_ms"}


def _floored_half_life(half_life: str, **points: float) -> Engine:
    """A rule per keyword, scoring its points on events of its name, under a half-life and a
    floor of -100."""
    rules = "".join(f'[[rules]]\nname = "{name}"\nevent = "{name}"\npoints = {value}\n' for name, value in points.items())
    return engine(rules + f'[decay]\nhalf_life = "{half_life}"\n', settings="floor = -100")


def _rows(explained: dict[str, Any]) -> list[tuple[str, float, float]]:
    return [(row["rule"], row["points"], row["decayed"]) for row in explained["rules"]]


def test_rows_add_up_when_a_half_life_brings_negative_points_back() -> None:
    # Below a zero floor, a half-life halves negative points too: the rows carry what it gave back.
    run = Run(_floored_half_life("10d", unsubscribed=-30, bounced=-10)).apply(ev("unsubscribed"), ev("bounced"))
    explained = run.engine.explain("m", "L1", run.state(), T0 + 10 * DAY)
    assert explained["score"] == -20
    assert _rows(explained) == [("unsubscribed", -30, 15), ("bounced", -10, 5)]


def test_what_the_floor_adds_is_shown_so_the_parts_make_the_score() -> None:
    # 30 behaviour points and a competitor's -50 fit points: the floor (0) is the score.
    competitor = (
        '[[rules]]\nname = "demo request"\nevent = "demo"\npoints = 30\n'
        '[[fit]]\nname = "competitor"\npoints = -50\ntraits.email = { domain = "competitor" }\n'
        '[domains]\ncompetitor = { add = ["rival.io"] }\n'
    )
    run = Run(engine(competitor)).apply(ev("demo", traits={"email": "eve@rival.io"}))
    explained = run.engine.explain("m", "L1", run.state(), T0)
    parts = sum(row["points"] + row["decayed"] for row in explained["rules"]) + sum(row["points"] for row in explained["fit"])
    assert (explained["score"], parts, explained["floor_points"]) == (0, -20, 20)
    assert run.engine.summary("m", "L1", run.state(), T0)["top_reasons"] == [
        {"rule": "competitor", "points": -50},
        {"rule": "demo request", "points": 30},
        {"rule": "floor", "points": 20},
    ]


def test_a_summary_says_the_time_its_half_life_points_are_valued_at() -> None:
    # Asked at a time before the lead's points were valued (a merge or a sweep valued them at a
    # worker's later clock, then an event of an earlier time came), the points stay as valued:
    # decay is not undone, and the summary is at that later time.
    run = Run(engine('[[rules]]\nname = "visit"\nevent = "visit"\npoints = 40\n[decay]\nhalf_life = "1d"\n'))
    run.apply(ev("visit"), ev("visit", at=DAY))
    state = run.state()
    assert state.as_of_ms == T0 + DAY
    early, late = (run.engine.summary("m", "L1", state, T0 + days * DAY) for days in (0, 2))
    assert (early["time"], early["score"]) == (T0 + DAY, 60)
    assert (late["time"], late["score"]) == (T0 + 2 * DAY, 30)
    steps = Run(engine('[[rules]]\nname = "visit"\nevent = "visit"\npoints = 40\n')).apply(ev("visit"), ev("visit", at=DAY))
    assert steps.engine.summary("m", "L1", steps.state(), T0)["time"] == T0  # no half-life: the time asked


def test_reasons_leave_out_decay_too_small_to_show() -> None:
    # Seconds of a 14-day half-life take 0.0001 of 35 points: shown as "decay: -0.0" before.
    addon = Engine([shipped("analytics_addon")])
    run = Run(addon).apply(ev("trial_started", product="analytics"), ev("data_source_connected", at=0, product="analytics"))
    seconds_later = addon.summary("analytics_addon", "L1", run.state("L1", "analytics_addon"), T0 + 4000)
    assert [reason["rule"] for reason in seconds_later["top_reasons"]] == ["trial started", "data source connected"]
    days_later = addon.summary("analytics_addon", "L1", run.state("L1", "analytics_addon"), T0 + 14 * DAY)
    assert {"rule": "decay", "points": -17.5} in days_later["top_reasons"]


def test_reasons_leave_out_a_rule_s_points_too_small_to_show() -> None:
    # Two visits (50 points) decayed 15 hours under a 1-hour half-life, then an unsubscribe: the
    # floor (0) left its -7 the 0.0015 points the lead had, which the reasons showed as
    # {"rule": "unsubscribe", "points": 0}. Its explanation row stays (one occurrence, capped).
    rules = '[[rules]]\nname = "visit"\nevent = "v"\npoints = 25\n[[rules]]\nname = "unsubscribe"\nevent = "u"\npoints = -7\n'
    run = Run(engine(rules + '[decay]\nhalf_life = "1h"\n')).apply(ev("v"), ev("v", at=1), ev("u", at=15 * HOUR))
    assert -0.005 < run.state().ledger["unsubscribe"][0] < 0
    summary = run.engine.summary("m", "L1", run.state(), T0 + 15 * HOUR)
    assert summary["top_reasons"] == [{"rule": "decay", "points": -50}, {"rule": "visit", "points": 50}]
    explained = run.engine.explain("m", "L1", run.state(), T0 + 15 * HOUR)
    assert [(row["rule"], row["points"], row["capped"]) for row in explained["rules"]] == [("visit", 50, 0), ("unsubscribe", 0, 1)]
    # Points that show as a hundredth are a reason: 0.005 is shown 0.01.
    tiny = Run(engine('[[rules]]\nname = "r"\nevent = "r"\npoints = 0.005\n')).apply(ev("r"))
    assert tiny.engine.summary("m", "L1", tiny.state(), T0)["top_reasons"] == [{"rule": "r", "points": 0.01}]


@pytest.mark.parametrize("decay", ['half_life = "3d"', 'steps = [{ idle = "1d", points = -10 }]'])
@pytest.mark.parametrize("batch", [None, 1])
def test_a_crossing_decay_makes_before_an_event_that_changes_fit_shows_the_fit_it_had(decay: str, batch: int | None) -> None:
    # A visit (25, MQL at 20), then two days later an identify that meets a fit rule of 5.5: its
    # event first takes the decay due before it, which crosses the lead down on day 1. That
    # crossing's reasons read the fit rules of the traits already merged, revising the fit
    # points on the way, unrecorded: visit 25, big 5.5 and decay -5 (or -10) beside a score of
    # 19.99 (15), and the history had no `fit` row, its rows making 25 (15) of 21.25 (20.5). So
    # in a state read back (batch 1) as in one kept live.
    rules = '[[rules]]\nname = "visit"\nevent = "v"\npoints = 25\n[[fit]]\nname = "big"\npoints = 5.5\ntraits.size = { gte = 100 }\n'
    run = Run(engine(rules + f"[decay]\n{decay}\n")).apply(ev("v"), ev("identify", at=2 * DAY, traits={"size": 500}), batch=batch)
    down, up = run.transitions[1:]
    assert (down.to_level, up.to_level, up.time_ms) == ("cold", "mql", T0 + 2 * DAY)
    assert [reason["rule"] for reason in down.reasons] == ["visit", "decay"]
    assert sum(round(reason["points"] * 100) for reason in down.reasons) == round(down.score * 100)
    explained = run.engine.explain("m", "L1", run.state(), T0 + 2 * DAY)
    assert explained["history"][0] == {"time": T0 + 2 * DAY, "rule": "fit", "points": 5.5}
    assert [reason["rule"] for reason in up.reasons] == ["visit", "decay", "big"]


@pytest.mark.parametrize("decay", ['half_life = "3d"', 'steps = [{ idle = "1d", points = -10 }]'])
@pytest.mark.parametrize("batch", [None, 1])
def test_a_crossing_decay_makes_before_an_event_carries_the_traits_the_lead_had_then(decay: str, batch: int | None) -> None:
    # The same lead: a visit with a title, and two days later an identify that changes the title
    # and brings a size. The crossing down on day 1 is a fact of day 1: the CRM connectors write
    # its traits to the record, so it must not carry what the lead only said on day 2.
    rules = '[[rules]]\nname = "visit"\nevent = "v"\npoints = 25\n[[fit]]\nname = "big"\npoints = 5.5\ntraits.size = { gte = 100 }\n'
    run = Run(engine(rules + f"[decay]\n{decay}\n", settings='keep_traits = ["title"]')).apply(
        ev("v", traits={"title": "intern"}), ev("identify", at=2 * DAY, traits={"size": 500, "title": "CTO"}), batch=batch)
    down, up = run.transitions[1:]
    assert (down.to_level, down.time_ms < T0 + 2 * DAY, up.to_level) == ("cold", True, "mql")
    assert down.traits == {"title": "intern"}
    assert up.traits == {"title": "CTO", "size": 500}
    assert run.state().traits == {"title": "CTO", "size": 500}


def test_negative_points_decayed_to_nearly_nothing_show_as_0_not_minus_0() -> None:
    rules = '[[rules]]\nname = "bad"\nevent = "bad"\npoints = -3\n[decay]\nhalf_life = "1d"\n'
    run = Run(engine(rules, settings="floor = -100")).apply(ev("bad"))
    explained = run.engine.explain("m", "L1", run.state(), T0 + 30 * DAY)
    assert (explained["score"], explained["behaviour_points"]) == (0, 0) and "-0.0" not in orjson.dumps(explained).decode()


def test_whole_half_life_points_are_written_as_integers_as_a_step_model_s() -> None:
    # The README says `score` is an integer when the points are whole: the shipped half-life
    # model's crossings and summaries wrote 41.0, where a step model wrote 41.
    addon = Engine([shipped("analytics_addon")])
    # A second apart: the first event's points decayed by a hair, and rounded back to whole.
    run = Run(addon).apply(ev("trial_started", product="analytics"), ev("data_source_connected", at=1000, product="analytics"))
    summary = addon.summary("analytics_addon", "L1", run.state("L1", "analytics_addon"), T0 + 1000)
    assert b'"score":35,' in orjson.dumps(summary) and summary["score"].__class__ is int
    assert run.transitions and all(crossing.score.__class__ is int for crossing in run.transitions)
    assert b"35.0" not in orjson.dumps(addon.explain("analytics_addon", "L1", run.state("L1", "analytics_addon"), T0 + 1000))


def test_a_half_life_takes_each_rule_s_points_towards_zero_in_its_rows() -> None:
    # Two days of a one-day half-life leave a quarter of every rule's points: the +10 rule's
    # row lost 7.5 and the -50 one's was given back 37.5. The +10 rule's row showed all 30
    # points given back ("decayed": 30.0), the -50 rule's none.
    run = Run(_floored_half_life("1d", good=10, bad=-50)).apply(ev("good"), ev("bad"))
    explained = run.engine.explain("m", "L1", run.state(), T0 + 2 * DAY)
    assert (explained["score"], explained["behaviour_points"], explained["decayed"]) == (-10, -10, 30)
    assert _rows(explained) == [("bad", -50, 37.5), ("good", 10, -7.5)]
    # Positive overall, the same: the -10 rule's row is given back its share too (it showed none).
    run = Run(_floored_half_life("1d", good=50, bad=-10)).apply(ev("good"), ev("bad"))
    assert _rows(run.engine.explain("m", "L1", run.state(), T0 + DAY)) == [("good", 50, -25), ("bad", -10, 5)]


def test_a_half_life_of_rules_of_different_ages_puts_decay_on_one_side() -> None:
    # A -29 just now and a +30 two days old: no one share of both rules' points makes the -22.5
    # decay took (it would be 22.5 times their sum of 1 point), so it is the positive rule's.
    run = Run(_floored_half_life("1d", good=30, bad=-29)).apply(ev("good"), ev("bad", at=2 * DAY))
    explained = run.engine.explain("m", "L1", run.state(), T0 + 2 * DAY)
    assert (explained["score"], explained["decayed"]) == (-21.5, -22.5)
    assert _rows(explained) == [("good", 30, -22.5), ("bad", -29, 0)]


_BANDS = (
    '[[rules]]\nname = "visit"\nevent = "visit"\npoints = 40\n'
    '[decay]\nhalf_life = "14d"\n'
    '[engagement]\n1 = { min = 30 }\n2 = { min = 20, below = 30 }\n3 = { min = 10, below = 20 }\n4 = { below = 10 }\n'
    '[scale]\nhundred_at = 100\n'
    '[temperature]\ncold = { below = 30 }\nwarm = { min = 30 }\n'
)


def test_a_number_is_never_shown_rounded_into_a_band_it_has_not_reached() -> None:
    # 29.997 behaviour points: engagement 2 (below 30) and temperature cold were shown beside a
    # score of 30 and a 0-100 value of 30.0 (warm, taken from the rounded value), engagement
    # from the exact points.
    run = Run(engine(_BANDS)).apply(ev("visit"))
    at = T0 + math.ceil(14 * DAY * math.log2(40 / 29.997))
    explained = run.engine.explain("m", "L1", run.state(), at)
    assert 29.99 < run.engine.decay("m", "L1", run.state(), at)[0].behaviour < 29.998
    shown = {key: explained[key] for key in ("score", "behaviour_points", "normalized", "engagement", "temperature")}
    assert shown == {"score": 29.99, "behaviour_points": 29.99, "normalized": 29.9, "engagement": 2, "temperature": "cold"}
    summary = run.engine.summary("m", "L1", run.state(), at)
    assert (summary["score"], summary["normalized"], summary["engagement"], summary["temperature"]) == (29.99, 29.9, 2, "cold")


@pytest.mark.parametrize(("line", "normalized"), [
    ('[temperature]\ncold = { below = 30 }\nwarm = { min = 30 }\n', 29.9),
    ('[thresholds]\nbase = "cold"\nladder = [{ level = "mql", at = 30 }, { level = "sql", at = 100 }]\n', 30.0),
    ('[engagement]\n1 = { min = 30 }\n2 = { min = 20, below = 30 }\n3 = { min = 10, below = 20 }\n4 = { below = 10 }\n', 30.0),
])
def test_the_0_100_value_is_held_off_the_temperature_bands_alone(line: str, normalized: float) -> None:
    # scoring/MODELS.md said 29.997 points under "an engagement band, a temperature band or a
    # ladder line at 30" show 29.99 "(and 29.9 on the 0-100 scale)": the score is held off all
    # three, the 0-100 value (`Scale.placed`) off the temperature bands only, whose label it is.
    thresholds = "" if line.startswith("[thresholds]") else '[thresholds]\nbase = "cold"\nladder = [{ level = "mql", at = 100 }]\n'
    body = ('[model]\nname = "m"\n[[rules]]\nname = "visit"\nevent = "visit"\npoints = 40\n[decay]\nhalf_life = "14d"\n'
            '[scale]\nhundred_at = 100\n' + thresholds + line)
    run = Run(engine(body, header=False)).apply(ev("visit"))
    at = T0 + math.ceil(14 * DAY * math.log2(40 / 29.997))
    summary = run.engine.summary("m", "L1", run.state(), at)
    assert (summary["score"], summary["normalized"]) == (29.99, normalized)


def test_a_crossing_shows_its_labels_beside_numbers_that_agree() -> None:
    # Decay takes the lead down through a line at 30, a hair below it: the crossing showed
    # 29.99 and engagement 2 beside a 0-100 value of 30.0, "warm".
    header = '[model]\nname = "m"\n[thresholds]\nbase = "cold"\nladder = [{ level = "mql", at = 30 }]\n'
    run = Run(engine(header + _BANDS, header=False)).apply(ev("visit"))
    _, crossings = run.engine.decay("m", "L1", run.state(), T0 + 30 * DAY)
    assert [(c.to_level, c.score, c.normalized, c.engagement, c.temperature) for c in crossings] == [("cold", 29.99, 29.9, 2, "cold")]
    # Its reasons add up to the 29.99 shown: the decay was rounded alone, to -10.
    assert crossings[0].reasons == ({"rule": "visit", "points": 40}, {"rule": "decay", "points": -10.01})


def test_top_reasons_add_up_to_the_score_held_below_a_line() -> None:
    # 29.997 points under a line at 30 are shown 29.99, and the explanation's rows make it with
    # a decay of -10.01; the top reasons said +40 and decay -10.
    run = Run(engine(_BANDS)).apply(ev("visit"))
    at = T0 + math.ceil(14 * DAY * math.log2(40 / 29.997))
    summary, explained = run.engine.summary("m", "L1", run.state(), at), run.engine.explain("m", "L1", run.state(), at)
    assert summary["score"] == explained["score"] == 29.99
    assert summary["top_reasons"] == [{"rule": "visit", "points": 40}, {"rule": "decay", "points": explained["decayed"]}]
    assert explained["decayed"] == -10.01
    # Without decay: a rule's 34.999 points under a line at 35 are shown 35 beside a score of
    # 34.99, as its explanation row is, with the hundredth the line holds back shown as decay.
    header = '[model]\nname = "m"\n[thresholds]\nbase = "cold"\nladder = [{ level = "mql", at = 35 }]\n'
    run = Run(engine(header + '[[rules]]\nname = "r"\nevent = "r"\npoints = 34.999\n', header=False)).apply(ev("r"))
    summary, explained = run.engine.summary("m", "L1", run.state(), T0), run.engine.explain("m", "L1", run.state(), T0)
    assert summary["score"] == 34.99
    assert summary["top_reasons"] == [{"rule": "r", "points": 35}, {"rule": "decay", "points": -0.01}]
    assert (explained["rules"][0]["points"], explained["decayed"]) == (35, -0.01)


def _fit_model(points: list[float], grades: str = "") -> Engine:
    """A rule of 1 point on "r" events, and a fit rule per entry of `points` met by a lead with
    the trait `t<i>`."""
    fit = "".join(f'[[fit]]\nname = "f{i}"\npoints = {value}\ntraits.t{i} = {{ exists = true }}\n' for i, value in enumerate(points))
    return engine('[[rules]]\nname = "r"\nevent = "r"\npoints = 1\n' + fit + grades, settings="floor = -100")


def test_fit_rows_and_reasons_of_fit_points_beyond_hundredths_add_up_as_shown() -> None:
    # Two fit rules of 0.335 make 0.67 fit points: their rows showed 0.335 each, beside numbers
    # of two decimals, and the top reasons, each rounded alone, 0.34 and 0.34: 1.68 with the
    # rule's 1 point, of a score of 1.67.
    run = Run(_fit_model([0.335, 0.335])).apply(ev("r", traits={"t0": 1, "t1": 1}))
    explained, summary = run.engine.explain("m", "L1", run.state(), T0), run.engine.summary("m", "L1", run.state(), T0)
    assert (explained["score"], explained["fit_points"]) == (1.67, 0.67)
    assert explained["fit"] == [{"rule": "f0", "points": 0.34}, {"rule": "f1", "points": 0.33}]
    assert summary["top_reasons"] == [{"rule": "r", "points": 1}, {"rule": "f0", "points": 0.34}, {"rule": "f1", "points": 0.33}]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(-3000, 3000), st.booleans()), min_size=1, max_size=4))
def test_fit_rows_and_reasons_make_the_fit_points_and_score_shown(rules: list[tuple[int, bool]]) -> None:
    """Fit rules of any points to the thousandth, met or not, under grade lines of their own: the
    fit rows make the fit points shown, and the top reasons (all of them, at most five) the score."""
    points = [thousandths / 1000 for thousandths, _ in rules]
    grades = "[grades]\nA = { min = 1.005 }\nB = { min = 0.335, below = 1.005 }\nC = { min = 0, below = 0.335 }\nD = { below = 0 }\n"
    run = Run(_fit_model(points, grades)).apply(ev("r", traits={f"t{i}": 1 for i, (_, met) in enumerate(rules) if met}))
    explained, summary = run.engine.explain("m", "L1", run.state(), T0), run.engine.summary("m", "L1", run.state(), T0)

    def cents(value: float) -> int:
        return round(value * 100)

    assert all(row["points"] == round(row["points"], 2) for row in explained["fit"])  # two decimals at most
    assert sum(cents(row["points"]) for row in explained["fit"]) == cents(explained["fit_points"])
    assert sum(cents(reason["points"]) for reason in summary["top_reasons"]) == cents(summary["score"]) == cents(explained["score"])


def test_an_account_s_temperature_is_that_of_its_score_as_a_lead_s() -> None:
    bands = Bands(("cold", "warm"), (float("-inf"), 30))
    # An account score of 29.97 was shown beside 30.0, "warm".
    assert Scale(0, 100).placed(29.97, bands) == (29.9, "cold")
    assert (Scale(0, 100).placed(30, bands), Scale(0, 100).placed(29.94, bands)) == ((30.0, "warm"), (29.9, "cold"))


def test_next_decay_is_when_the_worker_next_sweeps_the_lead_whenever_it_is_read() -> None:
    """A half-life member's next decay was a tenth of its points' decay after the time of the
    read (now + 0.152 x half-life), so it moved with every read; after a due time the worker has
    not swept yet, it is the next one after the sweep that takes it."""
    run = Run(engine('[[rules]]\nname = "visit"\nevent = "visit"\npoints = 40\n[decay]\nhalf_life = "10d"\n'))
    run.apply(ev("visit", account_id="acme"))
    state = run.state()
    due = run.engine.next_due_ms("m", state)
    assert due is not None
    reads = [run.engine.explain("m", "L1", state, T0 + at)["next_decay_ms"] for at in (HOUR, DAY)]
    assert reads == [due, due]
    later = run.engine.explain("m", "L1", state, due + HOUR)["next_decay_ms"]
    swept = state.copy()
    run.engine.runtime("m").decay(swept, "L1", due + HOUR, [], swept=True)
    assert later == run.engine.next_due_ms("m", swept) > due + HOUR
