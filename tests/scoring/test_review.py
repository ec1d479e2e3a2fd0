"""Reviewing a model against outcomes (scoring/review.py): AUC, rates per level and scale, rule
lifts and the findings drawn from them."""

from __future__ import annotations

from itertools import product

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scoring.review import Reviewed, auc, review, z_statistic
from tests.scoring.support import model

MODEL = model(
    """
[[rules]]
name = "pricing"
event = "page_view"
points = 10

[[rules]]
name = "careers"
event = "page_view"
points = -10

[[rules]]
name = "heavy week"
event = "query_run"
points = 0
bonus = { count = 5, window = "1w", points = 15 }

[[rules]]
name = "webinar"
event = "webinar_attended"
points = 5

[[fit]]
name = "senior"
points = 8
traits.title = { in = ["vp", "cto"] }

[grades]
A = { min = 8 }
B = { min = 4, below = 8 }
C = { min = 0, below = 4 }
D = { below = 0 }

[engagement]
1 = { min = 60 }
2 = { min = 30, below = 60 }
3 = { min = 10, below = 30 }
4 = { below = 10 }
"""
)


def lead(
    name: str, converted: bool, score: float = 0, level: str = "cold", rules: tuple[str, ...] = (), cell: str | None = None,
    normalized: float = 0,
) -> Reviewed:  # fmt: skip
    grade, engagement = (cell[0], int(cell[1])) if cell else (None, None)
    return Reviewed(name, converted, score, normalized, level, grade, engagement, cell, None, frozenset(rules))


def many(count: int, converted: int, **fields: object) -> list[Reviewed]:
    """`count` alike leads of which the first `converted` converted."""
    return [lead(f"lead-{i}", i < converted, **fields) for i in range(count)]  # type: ignore[arg-type]


def pairwise_auc(scores: list[float], converted: list[bool]) -> float:
    """The definition: over every (converted, not converted) pair, 1 when the converted lead
    scored higher, 1/2 on a tie."""
    pairs = [(p, n) for p, n in product(range(len(scores)), repeat=2) if converted[p] and not converted[n]]
    wins = sum(1.0 if scores[p] > scores[n] else 0.5 if scores[p] == scores[n] else 0.0 for p, n in pairs)
    return wins / len(pairs)


def test_auc_of_a_perfect_a_reversed_and_a_useless_ranking() -> None:
    assert auc([1, 2, 3, 4], [False, False, True, True]) == 1.0
    assert auc([4, 3, 2, 1], [False, False, True, True]) == 0.0
    assert auc([5, 5, 5, 5], [False, True, False, True]) == 0.5
    assert auc([1, 2], [True, True]) is None  # nothing to rank against
    assert auc([], []) is None


@given(st.lists(st.tuples(st.integers(-5, 5), st.booleans()), min_size=2, max_size=40))
def test_auc_is_the_share_of_pairs_ranked_right(leads: list[tuple[int, bool]]) -> None:
    scores, converted = [float(s) for s, _ in leads], [c for _, c in leads]
    found = auc(scores, converted)
    if all(converted) or not any(converted):
        assert found is None
        return
    assert found == pytest.approx(pairwise_auc(scores, converted), abs=1e-4)
    # Reversing the scores reverses the ranking; ties stay ties.
    assert auc([-s for s in scores], converted) == pytest.approx(1 - found, abs=2e-4)


def test_z_statistic() -> None:
    # 50/100 against 30/100: pooled 0.4, standard error sqrt(0.4 * 0.6 * 0.02) = 0.0693.
    assert z_statistic(100, 50, 100, 30) == 2.89
    assert z_statistic(100, 30, 100, 50) == -2.89
    assert z_statistic(0, 0, 100, 30) is None
    assert z_statistic(10, 10, 10, 10) is None  # everyone converted: no spread


def test_levels_give_rates_and_precision_and_recall_at_or_above_each_line() -> None:
    leads = many(10, 1, level="cold") + many(6, 2, level="mql") + many(4, 3, level="sql")
    report = review(MODEL, leads)
    assert (report["leads"], report["converted"], report["conversion_rate"]) == (20, 6, 0.3)
    assert report["levels"] == [
        {"level": "cold", "at": None, "leads": 10, "converted": 1, "rate": 0.1, "precision_at_or_above": 0.3, "recall_at_or_above": 1.0},
        {"level": "mql", "at": 20, "leads": 6, "converted": 2, "rate": 0.3333, "precision_at_or_above": 0.5, "recall_at_or_above": 0.8333},
        {"level": "sql", "at": 60, "leads": 4, "converted": 3, "rate": 0.75, "precision_at_or_above": 0.75, "recall_at_or_above": 0.5},
    ]  # fmt: skip


def test_tenths_of_the_scale_show_where_a_line_would_sit() -> None:
    leads = many(4, 0, normalized=5) + many(4, 1, normalized=10) + many(2, 2, normalized=99.9) + many(2, 1, normalized=100)
    bands = review(MODEL, leads)["bands"]
    assert [band["from"] for band in bands] == list(range(0, 100, 10))
    assert bands[0] == {"from": 0, "leads": 4, "converted": 0, "rate": 0.0, "precision_at_or_above": 0.3333, "recall_at_or_above": 1.0}
    assert bands[1] == {"from": 10, "leads": 4, "converted": 1, "rate": 0.25, "precision_at_or_above": 0.5, "recall_at_or_above": 1.0}
    assert bands[5] == {"from": 50, "leads": 0, "converted": 0, "rate": None, "precision_at_or_above": 0.75, "recall_at_or_above": 0.75}
    assert bands[9] == {"from": 90, "leads": 4, "converted": 3, "rate": 0.75, "precision_at_or_above": 0.75, "recall_at_or_above": 0.75}


def test_a_level_the_model_no_longer_has_counts_as_the_base_level() -> None:
    report = review(MODEL, [lead("a", True, level="retired"), lead("b", False, level="sql")])
    assert [(row["level"], row["leads"]) for row in report["levels"]] == [("cold", 1), ("mql", 0), ("sql", 1)]


def test_grades_engagement_and_cells_best_first() -> None:
    report = review(MODEL, [lead("a", True, cell="A1"), lead("b", False, cell="A1"), lead("c", False, cell="C4")])
    assert [row["label"] for row in report["grades"]] == ["A", "B", "C", "D"]
    assert report["grades"][0] == {"label": "A", "leads": 2, "converted": 1, "rate": 0.5}
    assert [row["label"] for row in report["engagement"]] == [1, 2, 3, 4]
    assert report["engagement"][3] == {"label": 4, "leads": 1, "converted": 0, "rate": 0.0}
    assert [row["label"] for row in report["cells"]][:5] == ["A1", "A2", "A3", "A4", "B1"]
    assert len(report["cells"]) == 16
    assert report["temperature"] == []  # the model has no temperature bands


def test_rule_rows_compare_its_leads_with_the_others() -> None:
    leads = many(40, 30, rules=("pricing",)) + many(60, 15)
    row = next(r for r in review(MODEL, leads)["rules"] if r["rule"] == "pricing")
    assert row == {
        "rule": "pricing", "kind": "behaviour", "points": 10, "bonus": None, "leads": 40, "converted": 30,
        "rate": 0.75, "rate_without": 0.25, "lift": 1.67, "z": z_statistic(40, 30, 60, 15),
    }  # fmt: skip
    assert row["z"] > 4


def test_a_lift_is_of_the_rates_not_of_the_rates_as_shown() -> None:
    # 3 of 1,218 leads (0.25% shown) against 3 of 4,003 (0.07% shown): 3.57 of the rates as
    # shown, 3.29 of the rates.
    row = next(r for r in review(MODEL, many(1218, 3, rules=("pricing",)) + many(2785, 0))["rules"] if r["rule"] == "pricing")
    assert (row["rate"], row["lift"]) == (0.0025, 3.29)


@settings(deadline=None)  # thousands of leads an example
@given(st.integers(1, 3000), st.integers(0, 20), st.integers(0, 3000), st.integers(0, 20))
def test_a_lift_is_the_rules_rate_over_the_overall_rate(leads: int, converted: int, others: int, others_converted: int) -> None:
    # Few conversions a side, as B2B has them: where rounding the rates first moved the lift most.
    converted, others_converted = min(converted, leads), min(others_converted, others)
    row = next(r for r in review(MODEL, many(leads, converted, rules=("pricing",)) + many(others, others_converted))["rules"] if r["rule"] == "pricing")
    total = converted + others_converted
    if not total:
        assert row["lift"] is None
        return
    assert row["lift"] == pytest.approx((converted / leads) / (total / (leads + others)), abs=0.005 + 1e-9)


def test_findings_name_rules_whose_outcomes_contradict_their_points() -> None:
    leads = (
        many(40, 4, rules=("pricing", "senior"))  # gives points, converts less
        + many(40, 30, rules=("careers", "senior"))  # takes points, converts more
        + many(40, 12, rules=("webinar", "heavy week", "senior"))
    )
    findings = review(MODEL, leads)["findings"]
    assert findings == [
        "rule 'pricing' gives +10 points, but its 40 leads converted at 10.0%, the others at 52.5% (z -4.51): "
        "lower its points or narrow its conditions",
        "rule 'careers' takes -10 points, but its 40 leads converted at 75.0%, the others at 20.0% (z 5.84): "
        "reconsider the penalty",
    ]


def test_a_bonus_only_rule_is_judged_by_its_bonus() -> None:
    leads = many(40, 2, rules=("heavy week",)) + many(40, 20)
    (finding,) = [f for f in review(MODEL, leads)["findings"] if "heavy week" in f]
    assert finding.startswith("rule 'heavy week' gives +15 points, but its 40 leads converted at 5.0%")


def test_no_finding_from_too_few_leads_or_a_difference_chance_explains() -> None:
    few = many(5, 0, rules=("pricing", "careers", "webinar", "heavy week", "senior")) + many(100, 50, rules=("careers", "webinar", "heavy week", "senior"))
    assert review(MODEL, few, min_leads=20)["findings"] == []
    # 45% against 55%, 40 leads a side: z = -0.89, chance explains it.
    close = many(40, 18, rules=("pricing", "careers", "webinar", "heavy week", "senior")) + many(40, 22, rules=("careers", "webinar", "heavy week", "senior"))
    assert review(MODEL, close)["findings"] == []


def test_a_difference_is_a_finding_by_its_z_not_by_its_z_as_shown() -> None:
    # 6 of 20 against 54 of 100: z -1.9596, shown -1.96, is short of 1.96 (two-sided p 0.0500).
    every = ("careers", "webinar", "heavy week", "senior")
    rule = many(20, 6, rules=("pricing", *every)) + many(100, 54, rules=every)
    assert next(r["z"] for r in review(MODEL, rule)["rules"] if r["rule"] == "pricing") == -1.96
    assert review(MODEL, rule)["findings"] == []
    level = many(100, 54, level="mql", rules=("pricing", *every)) + many(20, 6, level="sql", rules=("pricing", *every))
    assert review(MODEL, level)["findings"] == []
    # 6 of 21 against 54 of 100 is beyond it: z -2.12.
    assert [f[:26] for f in review(MODEL, many(21, 6, rules=("pricing", *every)) + many(100, 54, rules=every))["findings"]] == ["rule 'pricing' gives +10 p"]


def test_rules_no_reviewed_lead_triggered_are_named() -> None:
    findings = review(MODEL, [lead("a", True, rules=("pricing", "careers", "senior", "gone rule"))])["findings"]
    assert findings == [
        f"rule '{name}' matched none of the reviewed leads: check its event type and conditions against your events"
        for name in ("heavy week", "webinar")
    ]


def test_a_fit_rule_no_reviewed_lead_met_is_named_as_one() -> None:
    # It was told to check its event type: a fit rule has none, it reads traits.
    findings = review(MODEL, [lead("a", True, rules=("pricing", "careers", "webinar", "heavy week"))])["findings"]
    assert findings == ["fit rule 'senior' matched none of the reviewed leads: check its trait conditions against your "
                        "leads' traits (identify events)"]


def test_a_level_converting_less_than_the_one_below_is_a_finding() -> None:
    rules = ("pricing", "careers", "webinar", "heavy week", "senior")
    leads = many(50, 25, level="mql", rules=rules) + many(50, 5, level="sql", rules=rules) + many(5, 1, level="cold", rules=rules)
    assert review(MODEL, leads)["findings"] == [
        "level 'sql' converted at 10.0%, less than 'mql' at 50.0% (z -4.36): the points that lift leads to 'sql' "
        "do not predict conversion"
    ]


def test_a_model_without_reviewed_leads_says_so() -> None:
    report = review(MODEL, [])
    assert (report["leads"], report["conversion_rate"], report["auc"]) == (0, None, None)
    assert report["findings"] == ["no lead with an outcome has events this model scores: nothing to review"]


@given(
    st.lists(
        st.tuples(st.booleans(), st.sampled_from(["cold", "mql", "sql"]), st.floats(0, 100), st.sets(st.sampled_from(["pricing", "careers", "senior"]))),
        max_size=60,
    )
)
def test_figures_add_up_whatever_the_leads(rows: list[tuple[bool, str, float, set[str]]]) -> None:
    leads = [lead(f"l{i}", c, level=level, normalized=n, rules=tuple(rules)) for i, (c, level, n, rules) in enumerate(rows)]
    report = review(MODEL, leads)
    converted = sum(c for c, _, _, _ in rows)
    for steps in (report["levels"], report["bands"]):
        assert sum(step["leads"] for step in steps) == len(leads)
        assert sum(step["converted"] for step in steps) == converted
        # Everything is at or above the bottom step; recall can only fall going up.
        assert steps[0]["precision_at_or_above"] == report["conversion_rate"]
        recalls = [step["recall_at_or_above"] for step in steps]
        if converted:
            assert recalls[0] == 1.0 and recalls == sorted(recalls, reverse=True)
        else:
            assert recalls == [None] * len(steps)
    for row in report["rules"]:
        holders = [c for c, _, _, rules in rows if row["rule"] in rules]
        assert (row["leads"], row["converted"]) == (len(holders), sum(holders))
