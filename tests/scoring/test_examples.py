"""The shipped example models behave as their comments say, and events are routed to the
models whose filter takes them."""

from __future__ import annotations

import pytest

from scoring import Engine
from tests.scoring.support import DAY, T0, MODELS_DIR, Run, ev

ALL = Engine.from_directory(MODELS_DIR)


def test_saas_start_small_makes_an_mql_at_20() -> None:
    run = Run(ALL).apply(
        ev("signup", product="saas"), ev("created_task", at=1, product="saas"), ev("created_project", at=2, product="saas")
    )
    assert run.score("L1", "saas_start_small") == 15 and run.levels() == []
    run.apply(ev("created_task", at=3, product="saas"))
    assert run.levels() == [("lead", "mql")]


@pytest.mark.parametrize(
    ("kind", "properties", "points"),
    [
        ("page_view", {"url": "https://acme.io/pricing"}, 10),
        ("page_view", {"url": "https://acme.io/about"}, 1),
        ("page_view", {"url": "https://acme.io/careers"}, -10),
        ("page_view", {"url": "https://acme.io/", "user_agent": "Mozilla/5.0 (compatible; bingbot/2.0)"}, -50),
        ("page_view", {"url": "https://acme.io/customers/globex", "time_on_page_s": 150}, 4 + 3),
        ("unsubscribe", {}, -30),
        ("meeting_cancelled", {}, -15),
        ("form_submit", {"form": "demo_request"}, 30),
        ("form_submit", {"form": "newsletter"}, 0),
    ],
)
def test_b2b_rules(kind: str, properties: dict, points: int) -> None:
    run = Run(ALL).apply(*(ev("webinar_attended", at=i, product="b2b") for i in range(6)))  # 60 points
    run.apply(ev(kind, at=10, product="b2b", properties=properties))
    assert run.score("L1", "b2b") == 60 + points


@pytest.mark.parametrize("industry", ["software", "Software", "Financial Services"])
def test_b2b_target_industry_matches_whatever_the_case_a_crm_sends(industry: str) -> None:
    # Segment's and CRMs' traits say "Software": the list compared exactly, case included.
    run = Run(ALL).apply(ev("identify", product="b2b", traits={"industry": industry}))
    assert ALL.explain("b2b", "L1", run.state("L1", "b2b"), T0)["fit"] == [{"rule": "target industry", "points": 3}]


def test_b2b_pricing_binge_bonus() -> None:
    run = Run(ALL).apply(*(ev("page_view", at=i * DAY // 2, product="b2b", properties={"url": "https://acme.io/pricing"}) for i in range(5)))
    assert run.score("L1", "b2b") == 50 + 20


def test_analytics_addon_half_life() -> None:
    run = Run(ALL).apply(ev("trial_started", product="analytics"), ev("teammate_invited", product="analytics"))
    state = run.state("L1", "analytics_addon")
    assert ALL.summary("analytics_addon", "L1", state, T0 + 14 * DAY)["score"] == pytest.approx(15)
    assert run.levels() == [("trial", "activated")]


def test_a_half_life_score_a_hair_below_a_line_is_never_shown_on_it() -> None:
    # 15 + 15 points a second apart are 29.99998 when the second comes: shown as 30.0 beside
    # `trial`, under the line at 30 that it has not reached.
    run = Run(ALL).apply(ev("trial_started", product="analytics"), ev("teammate_invited", at=1000, product="analytics"))
    summary = ALL.summary("analytics_addon", "L1", run.state("L1", "analytics_addon"), T0 + 1000)
    assert (summary["score"], summary["level"], run.levels()) == (29.99, "trial", [])


def test_routing_by_product() -> None:
    run = Run(ALL).apply(
        ev("signup", lead="A", product="saas"),
        ev("login", lead="B", product="b2b"),  # read without points (b2b's unscored_types)
        ev("signup", lead="C", product="unknown"),
        ev("identify", lead="D", traits={"email": "d@gmail.com"}),
    )
    assert sorted(run.store) == [
        ("analytics_addon", "D"), ("b2b", "B"), ("b2b", "D"), ("saas_start_small", "A"), ("saas_start_small", "D"),
    ]  # fmt: skip
    unknown = ALL.parse(ev("signup", product="unknown"))
    assert ALL.apply_batch([unknown], lambda m, l: None).unrouted == [unknown]
