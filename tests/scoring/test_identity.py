"""Merging an anonymous visitor's state into a known lead: once, with its history and ids."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest

from scoring import Engine, LeadState, parse_model
from scoring.identity import merge
from streams.settings import PROJECT_ROOT
from scoring.repeat import ONCE_PER_MEMORY
from tests.scoring.support import DAY, HOUR, MINUTE, SECOND, T0, Run, engine, ev

T = 1_763_884_800_000
ENGINE = Engine.from_directory(PROJECT_ROOT / "scoring" / "models")


def page(lead: str, n: int, url: str, **extra: Any) -> dict:
    return {"event_id": f"{lead}-{n}", "lead_id": lead, "type": "page_view", "product": "b2b", "time": T + n * 1000,
            "properties": {"url": url, "time_on_page_s": 30}, **extra}


def scored(*events: dict) -> dict[str, LeadState]:
    result = ENGINE.apply_batch([ENGINE.parse(e) for e in events], lambda model, lead: None)
    return {lead: state for (model, lead), state in result.states.items() if model == "b2b"}


def score(lead: str, state: LeadState) -> float:
    return ENGINE.summary("b2b", lead, state, T + 60_000)["score"]


def test_a_merge_adds_the_visitors_points_and_crosses_once() -> None:
    states = scored(page("anon:a", 1, "https://acme.io/pricing"), page("anon:a", 2, "https://acme.io/pricing"),
                    page("u", 3, "https://acme.io/about"))
    merged, crossings = merge(ENGINE, "b2b", "u", states["u"], states["anon:a"], "anon:a", T + 10_000)
    assert score("u", merged) == 21
    assert [(c.lead_id, c.from_level, c.to_level) for c in crossings] == [("u", "nurture", "mql")]
    # Whole points stay whole (the README's promise for `score`); they came out 21.0.
    assert (score("u", merged).__class__, crossings[0].score.__class__) == (int, int)
    history = ENGINE.explain("b2b", "u", merged, T + 10_000)["history"]
    assert {"time": T + 10_000, "rule": "merged from anonymous visitor anon:a", "points": 20} in history

    again, more = merge(ENGINE, "b2b", "u", merged, states["anon:a"], "anon:a", T + 20_000)
    assert (score("u", again), more) == (21, [])


def test_a_known_lead_merged_by_an_alias_is_named_a_lead() -> None:
    # It was called an anonymous visitor, whatever it was.
    states = scored(page("u2", 1, "https://acme.io/pricing"), page("u3", 2, "https://acme.io/about"))
    merged, _ = merge(ENGINE, "b2b", "u3", states["u3"], states["u2"], "u2", T + 10_000)
    rules = [row["rule"] for row in ENGINE.explain("b2b", "u3", merged, T + 10_000)["history"]]
    assert "merged from lead u2" in rules and not any("anonymous" in rule for rule in rules)


def test_a_long_visitors_merge_is_remembered_as_a_digest_and_still_merged_once() -> None:
    visitor = "anon:" + "é" * 80  # an id of 256 characters is allowed: whole, its marker took a quarter KB of the state
    states = scored(page(visitor, 1, "https://acme.io/pricing"), page("u", 3, "https://acme.io/about"))
    merged, _ = merge(ENGINE, "b2b", "u", states["u"], states[visitor], visitor, T + 10_000)
    assert "merge:" + visitor not in merged.ids and score("u", merged) == 11
    again, more = merge(ENGINE, "b2b", "u", LeadState.from_bytes(merged.to_bytes()), states[visitor], visitor, T + 20_000)
    assert (score("u", again), more) == (11, [])
    # A lead that kept the marker whole (written before markers were digested) merges it no more.
    whole = states["u"].copy()
    whole.remember_event("merge:" + visitor, T, 1000)
    assert score("u", merge(ENGINE, "b2b", "u", whole, states[visitor], visitor, T + 20_000)[0]) == score("u", whole)


def test_events_the_visitor_already_scored_never_score_again_on_the_lead() -> None:
    visit = page("anon:a", 1, "https://acme.io/pricing")
    states = scored(visit)
    merged, _ = merge(ENGINE, "b2b", "u", None, states["anon:a"], "anon:a", T + 5_000)
    replay = ENGINE.apply_batch([ENGINE.parse({**visit, "lead_id": "u"})], lambda model, lead: merged)
    assert replay.states == {} and score("u", merged) == 10


def test_the_known_leads_traits_win_and_the_visitors_fill_gaps() -> None:
    states = scored(
        {"event_id": "i1", "lead_id": "anon:a", "type": "identify", "product": "b2b", "time": T,
         "traits": {"title": "VP Marketing", "email": "x@gmail.com"}},
        {"event_id": "i2", "lead_id": "u", "type": "identify", "product": "b2b", "time": T, "traits": {"email": "ada@initech.io"}},
    )
    merged, _ = merge(ENGINE, "b2b", "u", states["u"], states["anon:a"], "anon:a", T + 1_000)
    assert merged.traits["email"] == "ada@initech.io" and merged.traits["title"] == "VP Marketing"
    assert merged.fit == 9  # senior title 8 + business e-mail 1 (the visitor's free address lost)
    assert merged.trait_times == {"email": T, "title": T}  # a later, older update of the title does not undo it
    older = ENGINE.apply_batch([ENGINE.parse({"event_id": "i0", "lead_id": "u", "type": "identify", "product": "b2b",
                                              "time": T - 1_000, "traits": {"title": "Intern"}})], lambda model, lead: merged)
    assert older.states[("b2b", "u")].traits["title"] == "VP Marketing"


def test_a_trait_the_known_lead_forgot_is_not_refilled_by_the_visitor() -> None:
    states = scored(
        {"event_id": "i1", "lead_id": "anon:a", "type": "identify", "product": "b2b", "time": T, "traits": {"title": "VP Marketing"}},
        {"event_id": "i2", "lead_id": "u", "type": "identify", "product": "b2b", "time": T, "traits": {"title": None}},
    )
    merged, _ = merge(ENGINE, "b2b", "u", states["u"], states["anon:a"], "anon:a", T + 1_000)
    assert "title" not in merged.traits


def test_merging_into_a_new_lead_starts_from_the_visitors_state() -> None:
    states = scored(page("anon:a", 1, "https://acme.io/case-studies/x"))
    merged, crossings = merge(ENGINE, "b2b", "u", None, states["anon:a"], "anon:a", T + 1_000)
    assert score("u", merged) == 4 and crossings == []


def test_a_merge_keeps_each_rule_and_the_model_within_max_points_and_the_rows_adding_up() -> None:
    # The ledgers were added in full: a rule of max_points 10 held 20 after a merge, and points
    # the model's max_points clipped showed in explanations as a decay the model does not have.
    text = ('[model]\nname = "m"\nmax_points = 100\n'
            '[[rules]]\nname = "click"\nevent = "click"\npoints = 5\nmax_points = 10\n'
            '[[rules]]\nname = "demo"\nevent = "demo"\npoints = 30\n'
            '[thresholds]\nbase = "cold"\nladder = [{ level = "mql", at = 200 }]\n')
    engine = Engine([parse_model(text, "m.toml")])
    events = [{"event_id": f"{lead}-{kind}-{n}", "lead_id": lead, "type": kind, "time": T + n}
              for lead in ("u", "anon:a") for kind, count in (("click", 3), ("demo", 2)) for n in range(count)]
    states = {lead: state for (_, lead), state in engine.apply_batch([engine.parse(e) for e in events], lambda m, l: None).states.items()}
    assert states["u"].behaviour == 70 and states["anon:a"].behaviour == 70
    merged, _ = merge(engine, "m", "u", states["u"], states["anon:a"], "anon:a", T + 10)
    explained = engine.explain("m", "u", merged, T + 10)
    rows = {row["rule"]: (row["points"], row["capped"]) for row in explained["rules"]}
    assert merged.behaviour == 100
    assert rows == {"click": (10, 3), "demo": (90, 1)}  # click: 10 more clipped by its own max; demo: 30 by the model's
    assert sum(points for points, _ in rows.values()) == merged.behaviour and explained["decayed"] == 0


def test_a_line_half_life_decay_passed_before_a_merge_is_crossed_at_its_time() -> None:
    model = parse_model(
        '[model]\nname = "h"\n[[rules]]\nname = "visit"\nevent = "visit"\npoints = 20\n[decay]\nhalf_life = "10d"\n'
        '[thresholds]\nbase = "lead"\nladder = [{ level = "mql", at = 15 }]\n', "h.toml"
    )
    engine = Engine([model])
    day = 86_400_000
    visits = [{"event_id": lead, "lead_id": lead, "type": "visit", "time": T + at} for lead, at in (("u", 0), ("anon:a", 25 * day))]
    states = {lead: state for (_, lead), state in engine.apply_batch([engine.parse(e) for e in visits], lambda m, l: None).states.items()}
    fell_ms = engine.runtime("h").next_due_ms(states["u"])
    assert fell_ms is not None and fell_ms < T + 25 * day
    # Merged 25 days on: decay took u below the line after 4 days, as a sweep then would have
    # said, and the visitor's points take it back over.
    merged, crossings = merge(engine, "h", "u", states["u"], states["anon:a"], "anon:a", T + 25 * day)
    assert [(c.from_level, c.to_level, c.time_ms) for c in crossings] == [("mql", "lead", fell_ms), ("lead", "mql", T + 25 * day)]
    assert merged.level == "mql"


def test_a_half_life_merge_values_both_profiles_at_one_time_and_clips_them_where_time_order_did() -> None:
    """A visitor's points valued at its event (day 2) merged by an identify timed at day 1 into a
    lead valued at day 1 are not decayed a day more than their age: the sum is valued at day 2.
    Profiles a sweep valued at day 2 (a worker's clock is ahead of a late identify) are clipped
    by the ceiling as at the link, then decayed, as in time order."""
    engine_h = engine('[[rules]]\nname = "visit"\nevent = "visit"\npoints = 20\n[decay]\nhalf_life = "1d"\n', settings="max_points = 30\n")
    run = Run(engine_h).apply(ev("visit", at=DAY, lead="L"), ev("visit", at=2 * DAY, lead="anon:v"))
    merged, _ = merge(engine_h, "m", "L", run.state("L"), run.state("anon:v"), "anon:v", T0 + DAY)
    assert (merged.as_of_ms, merged.behaviour) == (T0 + 2 * DAY, 20 / 2 + 20)

    run = Run(engine_h).apply(ev("visit", at=DAY, lead="L"), ev("visit", at=DAY, lead="anon:v"))
    lead, _ = engine_h.decay("m", "L", run.state("L"), T0 + 2 * DAY)
    visitor, _ = engine_h.decay("m", "anon:v", run.state("anon:v"), T0 + 2 * DAY)
    merged, _ = merge(engine_h, "m", "L", lead, visitor, "anon:v", T0 + DAY)
    assert (merged.as_of_ms, merged.behaviour) == (T0 + 2 * DAY, 30 / 2)  # not 20 / 2 + 20 / 2

def test_a_half_life_merge_after_a_sweep_does_not_cross_again_the_lines_the_sweep_crossed() -> None:
    """A lead (25 points) that a sweep a day on took below MQL at 0.32 days, merged with a
    visitor of no points by an identify timed at hour 1: the merge settles the sum as it is
    valued now. Settled as it stood at the link, it crossed up to MQL at hour 1 and down again
    at 0.32 days: a second copy of the sweep's crossing, and a deal, where with no sweep before
    the identify there is one crossing down."""
    model = engine('[[rules]]\nname = "visit"\nevent = "visit"\npoints = 25\n[[rules]]\nname = "other"\nevent = "other"\n'
                   'points = 0\n[decay]\nhalf_life = "1d"\n')

    def crossed(swept: bool) -> list[tuple[str, int]]:
        run = Run(model).apply(ev("visit", lead="L"), ev("other", lead="anon:v"))
        lead, visitor, swept_out = run.state("L"), run.state("anon:v"), []
        if swept:
            lead, swept_out = model.decay("m", "L", lead, T0 + DAY)
            visitor, _ = model.decay("m", "anon:v", visitor, T0 + DAY)
        state, at_merge = merge(model, "m", "L", lead, visitor, "anon:v", T0 + HOUR)
        state, after = model.decay("m", "L", state, T0 + 2 * DAY)
        return [(t.to_level, t.time_ms) for t in swept_out + at_merge + after]

    fell_ms = T0 + math.ceil(DAY * math.log2(25 / 20)) + 1
    assert crossed(True) == crossed(False) == [("cold", fell_ms)]

def test_a_half_life_merge_does_not_cross_the_lead_alone_down_after_the_link() -> None:
    """A lead at 25 points merged at hour 1 with a visitor at 20 that a sweep valued a day on:
    both are valued at that day for the sum, but the lead alone crossing below MQL at 0.32 days
    is not published (the visitor's points keep the merged lead above the line until 1.17 days),
    as with no sweep. It was, then crossed back up at once: a pair of crossings of no meaning."""
    model = engine('[[rules]]\nname = "visit"\nevent = "visit"\npoints = 5\n[decay]\nhalf_life = "1d"\n')

    def crossed(swept: bool) -> list[tuple[str, int]]:
        run = Run(model).apply(*[ev("visit", lead="L", event_id=f"l{n}") for n in range(5)],
                               *[ev("visit", lead="anon:v", event_id=f"v{n}") for n in range(4)])
        visitor = run.state("anon:v")
        if swept:
            visitor, _ = model.decay("m", "anon:v", visitor, T0 + DAY)
        state, at_merge = merge(model, "m", "L", run.state("L"), visitor, "anon:v", T0 + HOUR)
        state, after = model.decay("m", "L", state, T0 + 3 * DAY)
        return [(t.to_level, t.time_ms) for t in at_merge + after]

    fell_ms = T0 + math.ceil(DAY * math.log2(45 / 20)) + 1
    assert crossed(True) == crossed(False) == [("cold", fell_ms)]

#: The shipped b2b model with a 10-day half-life in place of its steps (the audit's).
B2B_HALF_LIFE = re.sub(r"\[decay\]\nsteps = \[.*?\n\]\n", '[decay]\nhalf_life = "10d"\n',
                       (PROJECT_ROOT / "scoring" / "models" / "b2b.toml").read_text(), flags=re.S)


@pytest.mark.parametrize(("lead", "traits", "points"), [
    ("known-4", {"email": "k4@corp.com", "title": "Marketing Manager", "country": "DE"}, 13.5),  # 6 fit points
    ("known-3", {"email": "k@corp.com"}, 8.5),  # 1
])
def test_a_late_identify_values_the_visitor_at_the_time_the_worker_swept_it(lead: str, traits: dict[str, str], points: float) -> None:
    """The audit's case: a visitor's demo request (30) of 20 days ago, which the worker's first
    sweep (swept: due time after due time) took below MQL, due at day 10, and published at 7.5
    today, merged by an identify timed 26 s after the request that arrives after that sweep.
    The sweep left the visitor valued at day 10, at 15, and the merge valued both then: the lead
    with 6 fit points crossed up to MQL at 21, for the next sweep to cross down a moment later at
    14.99, and one with 1 was published at 16 where its view said 8.5, with no sweep due to put it
    right. Valued as the sweep published it, the merged lead is 7.5 + its fit points, as
    `leadstream score --at` now gives it (which merges at the link, crossing up and down in
    between: a pair the README says a worker that swept first does not publish)."""
    b2b = Engine([parse_model(B2B_HALF_LIFE, "b2b.toml")])
    now = T + 20 * DAY
    request = {"event_id": "w1", "lead_id": "anon:v-4", "type": "form_submit", "time": T, "product": "b2b",
               "properties": {"form": "demo_request"}}
    identify = {"event_id": "w2", "lead_id": lead, "type": "identify", "time": T + 26_000, "anonymous_id": "v-4",
                "product": "b2b", "traits": traits}

    def merged(swept: bool) -> tuple[LeadState, list[tuple[str, int]]]:
        run = Run(b2b).apply(request)
        visitor = run.state("anon:v-4", "b2b")
        if swept:
            b2b.runtime("b2b").decay(visitor, "anon:v-4", now, [], swept=True)
            assert b2b.summary("b2b", "anon:v-4", visitor, now)["score"] == 7.5
        run.apply(identify)
        state, at_merge = merge(b2b, "b2b", lead, run.state(lead, "b2b"), visitor, "anon:v-4", T + 26_000)
        later = b2b.decay("b2b", lead, state, now + 2 * SECOND)[1]  # the next sweep
        return state, [(t.to_level, t.time_ms) for t in (*at_merge, *later)]

    state, crossed = merged(swept=True)
    assert crossed == []
    # The worker's score change for the merge, asked at the link's time, says what the view says now.
    at_link = b2b.summary("b2b", lead, state, T + 26_000)
    assert (at_link["score"], at_link["level"]) == (b2b.summary("b2b", lead, state, now)["score"], "nurture") == (points, "nurture")
    history = b2b.explain("b2b", lead, state, now)["history"]
    assert {"time": T + 26_000, "rule": "merged from anonymous visitor anon:v-4", "points": 7.5} in history

    offline, crossed = merged(swept=False)
    assert b2b.summary("b2b", lead, offline, now)["score"] == points
    assert [level for level, _ in crossed] == ["mql", "nurture"]


def test_a_merge_takes_the_steps_due_by_the_links_time_whenever_sweeps_ran() -> None:
    """A sweep that took both profiles' 30-day steps before an identify timed at hour 3 arrived
    (a worker's clock is ahead of late events) leaves the merge as without it: the steps were not
    due at the link, and the merged lead takes one step, from its latest activity, when due."""
    b2b = ENGINE

    def merged_at_day_40(swept: bool) -> LeadState:
        run = Run(b2b).apply(*[ev("webinar_attended", at=n * HOUR, lead=lead, event_id=f"{lead}{n}", product="b2b")
                               for lead, n in (("anon:v", 0), ("anon:v", 1), ("L", 0), ("L", 2))])
        source, target = run.get("b2b", "anon:v"), run.get("b2b", "L")
        assert source is not None and target is not None
        if swept:
            source, _ = b2b.decay("b2b", "anon:v", source, T0 + 31 * DAY)
            target, _ = b2b.decay("b2b", "L", target, T0 + 31 * DAY)
        state, _ = merge(b2b, "b2b", "L", target, source, "anon:v", T0 + 3 * HOUR)
        return b2b.decay("b2b", "L", state, T0 + 40 * DAY)[0]

    swept, unswept = merged_at_day_40(True), merged_at_day_40(False)
    assert (swept.behaviour, swept.steps_taken) == (unswept.behaviour, unswept.steps_taken) == (40 - 15, (-15,))


def test_a_merge_after_a_sweep_takes_again_the_steps_it_gives_back_that_the_sweep_had_taken() -> None:
    """An identify arriving after a sweep took both profiles' 30-day steps: the merge gives them
    back (they were not due at the link) and takes the merged lead's step again at once, as due
    by the time the sweep ran, so no crossing goes up at the merge and down at the next sweep."""
    b2b = ENGINE
    run = Run(b2b).apply(*[ev("webinar_attended", at=n * HOUR, lead=lead, event_id=f"{lead}{n}", product="b2b")
                           for lead, n in (("anon:v", 0), ("L", 1))])
    source, target = run.get("b2b", "anon:v"), run.get("b2b", "L")
    assert source is not None and target is not None
    source, _ = b2b.decay("b2b", "anon:v", source, T0 + 31 * DAY)
    target, _ = b2b.decay("b2b", "L", target, T0 + 31 * DAY)
    assert (source.behaviour, target.behaviour) == (0, 0)  # each 10 points, the step clipped at the floor
    state, crossings = merge(b2b, "b2b", "L", target, source, "anon:v", T0 + 3 * HOUR)
    state, later = b2b.decay("b2b", "L", state, T0 + 31 * DAY + MINUTE)
    assert crossings == later == []
    assert (state.behaviour, state.steps_taken, state.level) == (20 - 15, (-15,), "nurture")


def test_a_merge_keeps_the_visitors_cap_windows_the_lead_has_not_when_it_has_others() -> None:
    """Window counters were merged per rule: a lead with a counter of its own for the rule took
    none of the visitor's, so an open arriving late on a day the visitor had used the cap
    scored past it."""
    capped = engine('[[rules]]\nname = "o"\nevent = "o"\npoints = 1\ncap = { max = 1, window = "1d" }\n', lateness="2d")
    run = Run(capped).apply(ev("o", at=HOUR, lead="V"), ev("o", at=DAY + HOUR, lead="V"), ev("o", at=DAY + 2 * HOUR, lead="L"))
    merged, _ = merge(capped, "m", "L", run.state("L"), run.state("V"), "V", T0 + DAY + 3 * HOUR)
    run.store[("m", "L")] = merged.to_bytes()
    assert run.score("L") == 2  # the visitor's day 0, and day 1 once: one lead's day 1 took one
    assert run.state("L").ledger["o"][2] == 1
    run.apply(ev("o", at=2 * HOUR, lead="L"), ev("o", at=DAY + 4 * HOUR, lead="L"))  # day 0 arriving late, day 1 again
    assert run.score("L") == 2
    assert run.state("L").ledger["o"][2] == 3  # both capped


def test_a_merge_keeps_the_lead_within_its_bounds_of_once_per_values_and_window_counters() -> None:
    """The visitor's `once_per` values were joined to the lead's without their bound (400 kept
    where at most 200 are), and its windows beyond the lead's lateness were kept, until the
    lead's next events trimmed them."""
    capped = engine('[[rules]]\nname = "o"\nevent = "o"\npoints = 1\nonce_per = "properties.id"\ncap = { max = 1, window = "1h" }\n')
    run = Run(capped).apply(*(ev("o", at=i * MINUTE, lead="V", properties={"id": f"v{i}"}) for i in range(250)))
    run.apply(*(ev("o", at=DAY + i * MINUTE, lead="L", properties={"id": f"l{i}"}) for i in range(250)))
    merged, _ = merge(capped, "m", "L", run.state("L"), run.state("V"), "V", T0 + 2 * DAY)
    assert [len(values) for values in merged.seen.values()] == [2 * ONCE_PER_MEMORY]
    assert list(merged.seen["o properties.id"])[-1] == "l249"  # the lead's newest kept
    compacted = merged.copy()
    capped.runtime("m").compact(compacted)
    assert merged.windows == compacted.windows and len(merged.windows["cap:o"]) < 2 * 24


def test_the_leads_own_recent_event_ids_stay_known_after_a_merge() -> None:
    """The visitor's ids were added after the lead's, and as generations filled up they pushed
    out the lead's newest: an event the lead had just scored, delivered again after the merge,
    scored a second time. The newest generations are kept, whoever's they are."""
    counted = engine('[[rules]]\nname = "o"\nevent = "o"\npoints = 1\n', settings="remember_events = 4")
    run = Run(counted).apply(*(ev("o", at=i * MINUTE, lead="V", event_id=f"v{i}") for i in range(12)))
    run.apply(*(ev("o", at=HOUR + i * MINUTE, lead="L", event_id=f"l{i}") for i in range(6)))
    merged, _ = merge(counted, "m", "L", run.state("L"), run.state("V"), "V", T0 + 2 * HOUR)
    run.store[("m", "L")] = merged.to_bytes()
    assert run.score("L") == 18
    run.apply(ev("o", at=HOUR + 5 * MINUTE, lead="L", event_id="l5"), ev("o", at=HOUR + 4 * MINUTE, lead="L", event_id="l4"))
    assert run.score("L") == 18
    assert len(merged.ids) + len(merged.old_ids) <= 2 * 4
    assert merge(counted, "m", "L", merged.copy(), run.state("V"), "V", T0 + 3 * HOUR)[0] == merged  # sent again: dropped


def pricing(lead: str, n: int) -> dict:
    return page(lead, n, "https://acme.io/pricing")


def test_a_merge_pays_the_bonus_the_visitors_and_the_leads_visits_reach_together() -> None:
    """The audit's case (b2b: 5 pricing visits in a week pay 20 once): 4 visits as a visitor, 1
    as the lead, then 2 more. Of a window both had, the lead's count stood, so the visitor's 4
    did not count: 70 points, where the same 7 visits of one lead make 90."""
    states = scored(*(pricing("anon:v9", n) for n in range(1, 5)), pricing("N9", 5),
                    *(pricing("C9", n) for n in range(11, 18)))
    merged, _ = merge(ENGINE, "b2b", "N9", states["N9"], states["anon:v9"], "anon:v9", T + 6_000)
    later = ENGINE.apply_batch([ENGINE.parse(pricing("N9", n)) for n in (7, 8)], lambda model, lead: merged).states
    merged = later[("b2b", "N9")]
    assert score("N9", merged) == score("C9", states["C9"]) == 90
    assert merged.ledger["pricing page"] == states["C9"].ledger["pricing page"] == [90, 7, 0, 1]
    history = ENGINE.explain("b2b", "N9", merged, T + 60_000)["history"]
    # Paid at the merge under the rule's name, as an event completing it is: the rows add up.
    assert {"time": T + 6_000, "rule": "pricing page", "points": 20} in history
    assert {"time": T + 6_000, "rule": "merged from anonymous visitor anon:v9", "points": 40} in history


def test_a_bonus_both_profiles_paid_in_one_window_is_paid_once() -> None:
    states = scored(*(pricing("anon:v", n) for n in range(1, 6)), *(pricing("u", n) for n in range(11, 16)))
    merged, _ = merge(ENGINE, "b2b", "u", states["u"], states["anon:v"], "anon:v", T + 20_000)
    assert merged.ledger["pricing page"] == [120, 10, 0, 1] and score("u", merged) == 120


def test_a_bonus_completed_only_by_an_event_both_profiles_counted_is_not_paid_at_the_merge() -> None:
    """A visitor's event delivered again under the lead before the merge (README, Identity
    stitching) is counted by both: it does not make up a bonus's count; the next visit does."""
    visits = [pricing("anon:v", n) for n in range(1, 5)]
    states = scored(*visits, {**visits[0], "lead_id": "u"})
    merged, _ = merge(ENGINE, "b2b", "u", states["u"], states["anon:v"], "anon:v", T + 6_000)
    assert merged.ledger["pricing page"][3] == 0
    later = ENGINE.apply_batch([ENGINE.parse(pricing("u", 7))], lambda model, lead: merged).states[("b2b", "u")]
    assert later.ledger["pricing page"][3] == 1


def email_open(lead: str, n: int, email_id: str) -> dict:
    return {"event_id": f"{lead}-{n}", "lead_id": lead, "type": "email_open", "product": "b2b", "time": T + n * 1000,
            "properties": {"email_id": email_id}}


def test_occurrences_both_profiles_scored_past_a_cap_are_taken_off_and_counted_capped() -> None:
    """The e-mail open cap is one a day: one e-mail (or two) opened by the visitor and the lead on
    the same day scored 2 points, 0 capped; one lead scores 1, 1 capped."""
    for lead_email in ("m1", "m2"):
        states = scored(email_open("anon:v", 1, "m1"), email_open("u", 2, lead_email),
                        email_open("c", 1, "m1"), email_open("c", 2, lead_email))
        merged, _ = merge(ENGINE, "b2b", "u", states["u"], states["anon:v"], "anon:v", T + 6_000)
        assert merged.ledger["e-mail open"] == states["c"].ledger["e-mail open"] == [1, 2, 1, 0]
        explained = ENGINE.explain("b2b", "u", merged, T + 6_000)
        assert explained["behaviour_points"] == sum(row["points"] for row in explained["rules"]) == 1
        later = ENGINE.apply_batch([ENGINE.parse(email_open("u", 3, "m3"))], lambda model, lead: merged).states
        assert later[("b2b", "u")].ledger["e-mail open"] == [1, 3, 2, 0]  # the day's cap used


def test_points_taken_off_past_a_cap_leave_a_rule_at_its_max_points_there() -> None:
    """The visitor's open past the cap is taken off before the rule's max_points clips the sum:
    a lead at its 10 e-mail points keeps them."""
    opens = [{**email_open("u", n, f"m{n}"), "time": T + n * 86_400_000} for n in range(10)]
    states = scored(*opens, {**email_open("anon:v", 99, "x"), "time": T + 9 * 86_400_000 + 1})
    assert states["u"].ledger["e-mail open"][0] == 10
    merged, _ = merge(ENGINE, "b2b", "u", states["u"], states["anon:v"], "anon:v", T + 9 * 86_400_000 + 5)
    assert merged.ledger["e-mail open"][:2] == [10, 11] and merged.behaviour == 10
