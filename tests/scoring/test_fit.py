"""Semantic 4: fit points from traits give a grade A-D, behaviour gives engagement 1-4, and
together the grid cell A1..D4 (A1 best)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scoring import Engine, LeadState
from scoring.config import Table
from scoring.fit import parse_domains, shipped_list
from tests.scoring.support import DAY, T0, Run, engine, ev, shipped

B2B = Engine([shipped("b2b")])


@pytest.mark.parametrize(
    ("traits", "fit_points", "grade"),
    [
        ({}, 0, "C"),
        ({"title": "VP Sales"}, 8, "B"),
        ({"title": "Head  of\tSales"}, 8, "B"),  # a CRM's doubled space or tab is a phrase's space
        ({"title": "Head of Marketing", "company_size": 250, "industry": "software", "country": "DE", "email": "a@globex.com"}, 19, "A"),
        ({"title": "Marketing Manager", "company_size": 250}, 8, "B"),
        ({"title": "Working Student"}, -30, "D"),
        ({"title": "Marketing Intern", "company_size": 250, "industry": "software"}, -22, "D"),
        ({"company_size": 5}, -5, "D"),
        ({"company_size": 20000}, 0, "C"),
        ({"email": "jane@gmail.com"}, -10, "D"),
        ({"email": "jane@mailinator.com"}, -25, "D"),
        ({"email": "spy@hubspot.com"}, -50, "D"),
        ({"email": "spy@eu.rivalscore.io"}, -50, "D"),  # model's own addition, subdomain too
        ({"email": "jane@globex.com", "country": "US"}, 3, "C"),
    ],
)
def test_fit_points_and_grade(traits: dict, fit_points: int, grade: str) -> None:
    run = Run(B2B).apply(ev("identify", product="b2b", traits=traits))
    state = run.state("L1", "b2b")
    assert state.fit == fit_points
    assert B2B.summary("b2b", "L1", state, state.watermark_ms)["grade"] == grade


@pytest.mark.parametrize(
    ("behaviour", "engagement"),
    [(0, 4), (9, 4), (10, 3), (29, 3), (30, 2), (59, 2), (60, 1), (150, 1)],
)
def test_engagement_level_from_behaviour_points(behaviour: int, engagement: int) -> None:
    state = B2B.new_state("b2b")
    state.behaviour = behaviour
    assert B2B.summary("b2b", "L1", state, 0)["engagement"] == engagement


def test_grid_cell_combines_grade_and_engagement() -> None:
    run = Run(B2B).apply(
        ev("identify", product="b2b", traits={"title": "CTO", "company_size": 400, "email": "cto@globex.com", "country": "DE"}),
        ev("form_submit", at=1, product="b2b", properties={"form": "demo_request"}),
        ev("meeting_booked", at=2, product="b2b"),
        ev("webinar_attended", at=3, product="b2b"),
    )
    summary = run.engine.summary("b2b", "L1", run.state("L1", "b2b"), run.state("L1", "b2b").watermark_ms)
    assert (summary["grade"], summary["engagement"], summary["cell"]) == ("A", 1, "A1")


def test_traits_update_fit_and_a_null_forgets_one() -> None:
    run = Run(B2B).apply(ev("identify", product="b2b", traits={"title": "Student"}))
    assert run.state("L1", "b2b").fit == -30
    run.apply(ev("identify", at=1, product="b2b", traits={"title": None}))
    assert run.state("L1", "b2b").fit == 0
    assert "title" not in run.state("L1", "b2b").traits


def test_a_trait_changed_from_1_to_true_is_changed() -> None:
    # As in JSON, true is not 1: Python's 1 == True kept the 1, and the fit rule on true never held.
    run = Run(engine('[[fit]]\nname = "vip"\npoints = 30\ntraits.vip = true\n'))
    run.apply(ev("identify", traits={"vip": 1}), ev("identify", at=1, traits={"vip": True}))
    assert run.state().traits["vip"] is True and run.state().fit == 30
    run.apply(ev("identify", at=2, traits={"vip": 1}))
    assert run.state().traits["vip"] == 1 and run.state().traits["vip"] is not True and run.state().fit == 0


def test_traits_on_any_event_update_fit() -> None:
    run = Run(B2B).apply(ev("page_view", product="b2b", properties={"url": "https://acme.io/"}, traits={"email": "x@gmail.com"}))
    assert run.state("L1", "b2b").fit == -10


@pytest.mark.parametrize("batch", [1, 2])
def test_a_late_update_that_only_dates_a_trait_is_kept_whatever_the_batches(batch: int) -> None:
    # An identify beyond the lateness repeating a title an earlier one set moved only the title's
    # time: alone in its batch, the state was not written, and an older update arriving next
    # (here at T0 + 5) took the title over the newer one; in a batch with another event it was.
    run = Run(B2B).apply(ev("identify", product="b2b", traits={"title": "VP Sales"}),
                         ev("page_view", at=3 * DAY, product="b2b", properties={"url": "https://acme.io/"}))
    run.apply(ev("identify", at=10, product="b2b", traits={"title": "VP Sales", "email": None}, event_id="late"),
              ev("identify", at=5, product="b2b", traits={"title": "Student"}, event_id="older"), batch=batch)
    assert run.state("L1", "b2b").traits["title"] == "VP Sales"
    assert run.state("L1", "b2b").trait_times == {"title": T0 + 10, "email": T0 + 10}


def test_only_traits_the_model_uses_or_keeps_are_stored() -> None:
    run = Run(B2B).apply(ev("identify", product="b2b", traits={"email": "a@globex.com", "shoe_size": 44}))
    assert run.state("L1", "b2b").traits == {"email": "a@globex.com"}


def test_shipped_domain_lists_are_real_and_replaceable() -> None:
    assert {"gmail.com", "outlook.com"} <= shipped_list("free")
    assert "mailinator.com" in shipped_list("disposable")
    assert "marketo.com" in shipped_list("competitor")
    # They pass the check a model's own lists get.
    kinds = ("free", "disposable", "competitor")
    lists = parse_domains(Table("b2b.toml", "[domains]", {kind: {"replace": sorted(shipped_list(kind))} for kind in kinds}))
    assert lists.classes == parse_domains(None).classes
    run = Run(
        engine(
            '[[fit]]\nname = "free"\npoints = -10\ntraits.email = { domain = "free" }\n'
            '[domains]\nfree = { replace = ["example.org"] }\n'
        )
    )
    run.apply(ev("identify", traits={"email": "a@gmail.com"}), ev("identify", lead="L2", traits={"email": "a@example.org"}))
    assert run.state("L1").fit == 0
    assert run.state("L2").fit == -10


def test_an_empty_replace_empties_a_shipped_list() -> None:
    """The shipped competitors are an example every model uses unless it replaces them: a lead at
    oracle.com was never `business`, and `replace = []` was refused (only a dummy entry helped)."""
    assert parse_domains(None).classify("cio@oracle.com") == "competitor"
    lists = parse_domains(Table("saas.toml", "[domains]", {"competitor": {"replace": []}}))
    assert lists.classify("cio@oracle.com") == "business"
    lists = parse_domains(Table("saas.toml", "[domains]", {"competitor": {"replace": [], "add": ["rival.io"]}}))
    assert (lists.classify("cio@oracle.com"), lists.classify("a@rival.io")) == ("business", "competitor")


def test_domain_class_precedence() -> None:
    lists = parse_domains(None)
    assert lists.classify("a@GMAIL.com") == "free"
    assert lists.classify("a@mail.hubspot.com") == "competitor"
    assert lists.classify("a@globex.com") == "business"
    assert lists.classify("no-at-sign") is None
    assert lists.classify(42) is None


@pytest.mark.parametrize(
    ("email", "kind"),
    [
        ("jane@mailinator.com.", "disposable"),  # a fully qualified name: delivered to mailinator.com
        ("jane@Gmail.Com.", "free"),
        ("jane@ｇｍａｉｌ.com", "free"),  # fullwidth letters are the ASCII ones in a domain
        ("jane@gmail。com", "free"),  # so is an ideographic full stop
        ("jane@xn--bcher-kva.de", "competitor"),  # listed in Unicode, written in punycode
        ("jane@BÜCHER.de", "competitor"),
        ("jane@shop.bücher.de.", "competitor"),
        ("jane@gmail..com", "business"),  # no domain to map: as written
    ],
)
def test_domain_class_ignores_trailing_dots_and_the_form_of_an_international_domain(email: str, kind: str) -> None:
    run = Run(
        engine(
            '[[fit]]\nname = "kind"\npoints = 1\ntraits.email = { domain = "' + kind + '" }\n'
            '[domains]\ncompetitor = { add = ["bücher.de"] }\n'
        )
    )
    run.apply(ev("identify", traits={"email": email}))
    assert run.state().fit == 1


_TRAIT_VALUES = st.one_of(
    st.none(), st.booleans(), st.sampled_from([0, 1, 1.0, 9, 10, 200, 250.0, 5000, 8000]),
    st.sampled_from(["VP Sales", "Student", "engineer", "Head of Growth", "DE", "US", "software", "retail"]),
    st.sampled_from(["a@gmail.com", "b@GMAIL.com", "c@mailinator.com", "d@rivalscore.io", "e@acme.io", "f@eu.acme.io", "nope"]),
    st.lists(st.integers(), max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(["title", "company_size", "industry", "country", "email", "x"]), _TRAIT_VALUES), min_size=1, max_size=6))
def test_remembered_fit_rules_are_the_rules_that_hold(traits_seen: list[dict]) -> None:
    """Fit rules are remembered by what they read of the traits (values with their types, and
    the domain class of an e-mail only tested by `domain`): never another lead's answer."""
    runtime = Engine([shipped("b2b")]).runtime("b2b")
    for traits in traits_seen + traits_seen:  # the second round answers from memory
        expected = tuple(runtime.fit_match({}, traits)) if runtime.fit_match else ()
        state = runtime.new_state()
        state.traits = traits
        state.fit_found = None  # what changes traits resets what was derived from them
        rules, points, _ = runtime.fit_of(state)
        assert rules == expected
        assert points == sum(rule.points for rule in expected)


def _edited(vp_points: int) -> Engine:
    return engine(
        '[[rules]]\nname = "signed up"\nevent = "signup"\npoints = 5\n'
        f'[[fit]]\nname = "vp"\npoints = {vp_points}\ntraits.title = {{ glob = "*VP*" }}\n'
        '[decay]\nsteps = [{ idle = "30d", points = -1 }]\n'
    )


def test_an_edited_fit_rule_revises_stored_states_at_their_first_use() -> None:
    """Marketing refines the model and restarts the worker: states written under the old [[fit]]
    rules are read back, and their fit points, score, reasons and crossings follow the new ones."""
    before = Run(_edited(30)).apply(ev("identify", traits={"title": "VP Sales"}), ev("signup", at=60_000))
    assert (before.score(), before.levels()) == (35, [("cold", "mql")])

    after = Run(_edited(5), store=dict(before.store))
    summary = after.engine.summary("m", "L1", after.state(), after.state().watermark_ms)
    assert summary["score"] == 10 and {"rule": "vp", "points": 5} in summary["top_reasons"]

    after.apply(ev("signup", at=120_000))
    state = after.state()
    assert (state.fit, after.score()) == (5, 15)
    assert after.levels() == [("mql", "cold")]  # 15 is below the MQL line the old fit put it over
    explained = after.engine.explain("m", "L1", state, state.watermark_ms)
    assert explained["fit"] == [{"rule": "vp", "points": 5}]
    assert {"time": ev("signup", at=120_000)["time"], "rule": "fit", "points": -25} in explained["history"]


def test_decay_of_a_stored_state_settles_on_the_edited_fit() -> None:
    before = Run(_edited(30)).apply(ev("signup", traits={"title": "VP Sales"}))
    assert (before.score(), before.levels()) == (35, [("cold", "mql")])
    decayed, crossings = _edited(5).decay("m", "L1", before.state(), T0 + 31 * DAY)
    assert (decayed.fit, decayed.behaviour) == (5, 4)
    assert [(t.from_level, t.to_level, t.score, t.time_ms) for t in crossings] == [("mql", "cold", 9, T0 + 30 * DAY)]


def test_an_unchanged_model_reads_its_states_back_unchanged() -> None:
    run = Run(B2B).apply(ev("identify", product="b2b", traits={"title": "VP Sales", "email": "a@gmail.com"}))
    stored = run.state("L1", "b2b")
    history = list(stored.history)
    B2B.summary("b2b", "L1", stored, stored.watermark_ms)
    assert (stored.fit, stored.history) == (-2, history)


def test_half_life_due_time_of_a_stored_state_uses_the_edited_fit() -> None:
    def half_life(vp_points: int) -> Engine:
        return engine(
            '[[rules]]\nname = "signed up"\nevent = "signup"\npoints = 40\n'
            f'[[fit]]\nname = "vp"\npoints = {vp_points}\ntraits.title = {{ glob = "*VP*" }}\n'
            '[decay]\nhalf_life = "7d"\n'
        )

    stored = Run(half_life(10)).apply(ev("signup", traits={"title": "VP Sales"})).state()
    edited = half_life(0)
    revised = stored.copy()
    edited.runtime("m").fit_of(revised)
    assert (stored.fit, revised.fit) == (10, 0)
    # 40 behaviour points fall below the MQL line (20) in 7 days with fit 0, in 14 with fit 10:
    # below it less its tolerance (scoring/thresholds.py) a fraction of a ms later, so 2 ms later.
    assert edited.next_due_ms("m", stored) == edited.next_due_ms("m", revised) == T0 + 7 * DAY + 2
    assert stored.fit == 10  # asking changed nothing


def test_an_edited_fit_rule_s_revision_is_dated_where_it_happens_in_the_history() -> None:
    # A lead's step taken at day 30 under the old rules, then the [[fit]] edit: its history
    # dated the revision at the lead's last event (day 0), listed above the step of day 30.
    signed_up = Run(_edited(30)).apply(ev("signup", traits={"title": "VP Sales"})).state()
    stepped = LeadState.from_bytes(_edited(30).decay("m", "L1", signed_up, T0 + 31 * DAY)[0].to_bytes())
    edited = _edited(5)
    # Reading does not write the lead's history: the edit has not been applied to its state
    # yet (a date made up for it would be the time of each read); its points are shown.
    explained = edited.explain("m", "L1", stepped, T0 + 32 * DAY)
    assert (explained["fit_points"], explained["score"]) == (5, 9)
    assert [(change["time"], change["rule"]) for change in explained["history"][:2]] == [(T0 + 30 * DAY, "decay"), (T0, "signed up")]
    # The sweep that applies it records it at its time.
    swept, _ = edited.decay("m", "L1", stepped, T0 + 32 * DAY)
    changes = [(time_ms, label, points) for time_ms, points, label in swept.changes(10)]
    assert changes[-2:] == [(T0 + 30 * DAY, "decay", -1), (T0 + 32 * DAY, "fit", -25)]
