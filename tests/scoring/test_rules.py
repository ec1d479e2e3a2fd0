"""Semantic 1: rules match an event type plus conditions on properties and traits."""

from __future__ import annotations

import pytest

from scoring import Engine
from tests.scoring.support import Run, engine, ev, shipped

CONDITIONS = [
    # (condition in TOML, properties, traits, matches)
    ('properties.form = "demo"', {"form": "demo"}, {}, True),
    ('properties.form = "demo"', {"form": "Demo"}, {}, False),
    ('properties.form = "demo"', {}, {}, False),
    ("properties.seats = 5", {"seats": 5}, {}, True),
    ('properties.form = ["demo", "contact"]', {"form": "contact"}, {}, True),
    ('properties.form = ["demo", "contact"]', {"form": "newsletter"}, {}, False),
    ('properties.form = ["demo", "contact"]', {"form": ["demo"]}, {}, False),
    ('properties.form = { ne = "newsletter" }', {"form": "demo"}, {}, True),
    ('properties.form = { ne = "newsletter" }', {"form": "newsletter"}, {}, False),
    ('properties.form = { not_in = ["a", "b"] }', {"form": "c"}, {}, True),
    ('properties.form = { not_in = ["a", "b"] }', {"form": "a"}, {}, False),
    ('properties.url = { prefix = "https://acme.io/blog/" }', {"url": "https://acme.io/blog/x"}, {}, True),
    ('properties.url = { prefix = "https://acme.io/blog/" }', {"url": "HTTPS://ACME.IO/BLOG/x"}, {}, True),
    ('properties.url = { prefix = "https://acme.io/blog/" }', {"url": "https://acme.io/about"}, {}, False),
    ('properties.url = { glob = "*/pricing*" }', {"url": "https://acme.io/pricing?plan=pro"}, {}, True),
    ('properties.url = { glob = "*/pricing*" }', {"url": "https://acme.io/about"}, {}, False),
    ('properties.url = { glob = "*/pricing" }', {"url": "https://acme.io/pricing"}, {}, True),
    ('properties.url = { glob = "*/pricing" }', {"url": "https://acme.io/pricing/x"}, {}, False),
    ('properties.url = { glob = "https://acme.io/*" }', {"url": "https://acme.io/x"}, {}, True),
    ('properties.url = { glob = "https://acme.io/" }', {"url": "https://acme.io/"}, {}, True),
    ('properties.url = { glob = "*/docs/?/intro" }', {"url": "https://a.io/docs/2/intro"}, {}, True),
    ('properties.url = { glob = "*/docs/?/intro" }', {"url": "https://a.io/docs/22/intro"}, {}, False),
    ('properties.url = { glob = ["*/a*", "*/b*"] }', {"url": "https://x.io/b"}, {}, True),
    ('properties.url = { glob = "*/pricing*" }', {"url": 42}, {}, False),
    ("properties.time_on_page_s = { gte = 120 }", {"time_on_page_s": 120}, {}, True),
    ("properties.time_on_page_s = { gte = 120 }", {"time_on_page_s": 119.5}, {}, False),
    ("properties.time_on_page_s = { gte = 120 }", {"time_on_page_s": "130"}, {}, False),
    ("properties.time_on_page_s = { gte = 120 }", {"time_on_page_s": True}, {}, False),
    ("properties.time_on_page_s = { gt = 10, lt = 20 }", {"time_on_page_s": 15}, {}, True),
    ("properties.time_on_page_s = { gt = 10, lt = 20 }", {"time_on_page_s": 20}, {}, False),
    ("properties.time_on_page_s = { lte = 5 }", {"time_on_page_s": 5}, {}, True),
    ("properties.coupon = { exists = true }", {"coupon": "X"}, {}, True),
    ("properties.coupon = { exists = false }", {"coupon": "X"}, {}, False),
    ('properties.agent = { contains = ["bot", "spider"] }', {"agent": "Googlebot/2.1"}, {}, True),
    ('properties.agent = { contains = "bot" }', {"agent": "Mozilla"}, {}, False),
    ('traits.title = { words = ["vp", "head of"] }', {}, {"title": "VP Sales"}, True),
    ('traits.title = { words = ["vp", "head of"] }', {}, {"title": "Head of Growth"}, True),
    ('traits.title = { words = ["cto"] }', {}, {"title": "Director"}, False),
    ('traits.country = ["DE", "AT"]', {}, {"country": "AT"}, True),
    ('traits.email = { domain = "free" }', {}, {"email": "jane@gmail.com"}, True),
    ('traits.email = { domain = "business" }', {}, {"email": "jane@globex.com"}, True),
    ('traits.email = { domain = "business" }', {}, {"email": "not an address"}, False),
    # Terms that start or end with a non-word character are words too.
    ('traits.skills = { words = ["c++", ".net"] }', {}, {"skills": "C++ and Go"}, True),
    ('traits.skills = { words = ["c++", ".net"] }', {}, {"skills": "senior .NET developer"}, True),
    ('traits.skills = { words = ["c++", ".net"] }', {}, {"skills": "c++x"}, False),
    ('traits.title = { words = ["vp"] }', {}, {"title": "svp, sales"}, False),
    # A phrase's space is any run of whitespace in the value (CRM titles with doubled spaces,
    # tabs, no-break spaces), and so is a run in the phrase; punctuation is as written.
    ('traits.title = { words = "head of" }', {}, {"title": "Head  of Sales"}, True),
    ('traits.title = { words = "head of" }', {}, {"title": "Head\tof Sales"}, True),
    ('traits.title = { words = "head of" }', {}, {"title": "Head\u00a0of Sales"}, True),
    ('traits.title = { words = "head  of" }', {}, {"title": "Head of Sales"}, True),
    ('traits.title = { words = "head of" }', {}, {"title": "Head of-Sales"}, True),
    ('traits.title = { words = "head of" }', {}, {"title": "Head-of Sales"}, False),
    ('traits.title = { words = "head of" }', {}, {"title": "Headof Sales"}, False),
    ('traits.title = { words = "head of" }', {}, {"title": "Head  office"}, False),
    # JSON true is not 1 (nor false 0), although Python's True == 1; 1 and 1.0 are one number.
    ("properties.flag = true", {"flag": True}, {}, True),
    ("properties.flag = true", {"flag": 1}, {}, False),
    ("properties.flag = true", {"flag": 1.0}, {}, False),
    ("properties.flag = false", {"flag": 0}, {}, False),
    ("properties.n = 1", {"n": True}, {}, False),
    ("properties.n = 1", {"n": 1.0}, {}, True),
    ("properties.n = { ne = 1 }", {"n": True}, {}, True),
    ("properties.n = { ne = true }", {"n": 1}, {}, True),
    ("properties.n = { ne = true }", {"n": True}, {}, False),
    ('properties.form = ["contact", 1]', {"form": True}, {}, False),
    ('properties.form = ["contact", 1]', {"form": 1}, {}, True),
    ('properties.form = ["contact", true]', {"form": 1}, {}, False),
    ('properties.form = ["contact", true]', {"form": True}, {}, True),
    ('properties.form = ["contact", true]', {"form": "contact"}, {}, True),
    ('properties.form = { in = [true, 1] }', {"form": 1}, {}, True),  # a set of the two held only true
    ('properties.form = { in = [true, 1] }', {"form": True}, {}, True),
    ("properties.form = [1, true, 1.0]", {"form": True}, {}, True),
    ("properties.form = [1, true, 1.0]", {"form": 1.0}, {}, True),
    ("properties.form = { not_in = [false, 0] }", {"form": 0}, {}, False),
    ("properties.form = { not_in = [false, 0] }", {"form": False}, {}, False),
    ('properties.form = { not_in = [1, 2] }', {"form": True}, {}, True),
    ('properties.form = { not_in = [1, 2] }', {"form": 2.0}, {}, False),
]


@pytest.mark.parametrize(("condition", "properties", "traits", "matches"), CONDITIONS)
def test_condition(condition: str, properties: dict, traits: dict, matches: bool) -> None:
    run = Run(engine(f'[[rules]]\nname = "r"\nevent = "e"\npoints = 7\n{condition}\n'))
    run.apply(ev("identify", traits=traits), ev("e", at=1, properties=properties))
    assert run.score() == (7 if matches else 0)


def test_every_condition_of_a_rule_must_hold() -> None:
    run = Run(engine('[[rules]]\nname = "r"\nevent = "e"\npoints = 5\nproperties.a = 1\nproperties.b = 2\n'))
    run.apply(ev("e", properties={"a": 1}), ev("e", properties={"a": 1, "b": 2}))
    assert run.score() == 5


def test_rule_scores_only_its_event_type() -> None:
    run = Run(engine('[[rules]]\nname = "signup"\nevent = "signup"\npoints = 5\n'))
    run.apply(ev("signup"), ev("login"), ev("signup"))
    assert run.score() == 10


def test_negative_points_take_away_but_not_below_the_floor() -> None:
    run = Run(
        engine(
            '[[rules]]\nname = "demo"\nevent = "demo"\npoints = 30\n'
            '[[rules]]\nname = "unsubscribe"\nevent = "unsubscribe"\npoints = -50\n'
        )
    )
    run.apply(ev("demo"), ev("unsubscribe", at=1))
    assert run.score() == 0
    run.apply(ev("demo", at=2))
    assert run.score() == 30


def test_an_edited_ceiling_or_floor_clips_only_points_that_move_past_it() -> None:
    rules = ('[[rules]]\nname = "demo"\nevent = "demo"\npoints = 50\n'
             '[[rules]]\nname = "unsubscribe"\nevent = "unsubscribe"\npoints = -30\n')
    run = Run(engine(rules, settings="max_points = 150\n")).apply(*(ev("demo", at=i) for i in range(3)))
    run.engine = engine(rules, settings="max_points = 50\n")  # lowered below the lead's 150
    run.apply(ev("unsubscribe", at=10))
    assert run.state().behaviour == 120  # was 150: the -30 was clipped as if it went past the ceiling
    run.apply(ev("demo", at=11))
    assert run.state().behaviour == 120 and run.state().ledger["demo"][2] == 1  # capped: it would go further past

    run = Run(engine(rules, settings="floor = -100\n")).apply(ev("unsubscribe"), ev("unsubscribe", at=1))
    run.engine = engine(rules, settings="floor = 0\n")  # raised above the lead's -60
    run.apply(ev("demo", at=10))
    assert run.state().behaviour == -10  # was -60
    run.apply(ev("unsubscribe", at=11))
    assert run.state().behaviour == -10 and run.state().ledger["unsubscribe"][2] == 1


def test_trait_conditions_use_the_traits_known_so_far() -> None:
    run = Run(engine('[[rules]]\nname = "dach demo"\nevent = "demo"\npoints = 5\ntraits.country = ["DE", "AT"]\n'))
    run.apply(ev("demo"), ev("identify", at=1, traits={"country": "DE"}), ev("demo", at=2))
    assert run.score() == 5


def test_page_values_make_pricing_worth_more_than_about() -> None:
    run = Run(Engine([shipped("b2b")]))
    pricing = ev("page_view", lead="P", product="b2b", properties={"url": "https://acme.io/pricing"})
    about = ev("page_view", lead="A", product="b2b", properties={"url": "https://acme.io/about"})
    run.apply(pricing, about)
    assert run.score("P", "b2b") == 10
    assert run.score("A", "b2b") == 1


def test_several_rules_can_match_one_event() -> None:
    run = Run(
        engine(
            '[[rules]]\nname = "pricing"\nevent = "page_view"\npoints = 10\nproperties.url = { glob = "*/pricing*" }\n'
            '[[rules]]\nname = "read"\nevent = "page_view"\npoints = 3\nproperties.time_on_page_s = { gte = 120 }\n'
        )
    )
    run.apply(ev(properties={"url": "https://acme.io/pricing", "time_on_page_s": 130}))
    assert run.score() == 13
    assert {row["rule"] for row in run.engine.explain("m", "L1", run.state(), run.state().watermark_ms)["rules"]} == {"pricing", "read"}
