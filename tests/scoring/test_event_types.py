"""The event types a model knows: those its rules score, the profile types and its
`unscored_types`; an event of any other type is refused (`unknown_type`), not silently read."""

from __future__ import annotations

import pytest

from scoring import Engine, ModelError
from tests.scoring.support import Run, engine, ev, model

SIGNUP = '[[rules]]\nname = "signed up"\nevent = "signup"\npoints = 5\n'


def test_a_type_no_rule_scores_is_refused_with_what_the_model_reads() -> None:
    scorer = engine(SIGNUP, settings='unscored_types = ["login"]')
    typo = scorer.parse(ev("sigup"))
    result = scorer.apply_batch([typo], lambda m, l: None)
    assert result.unknown_type == [typo] and result.states == {}
    assert scorer.unknown_type(typo) == (
        "event type 'sigup' is one no model it is routed to knows (m scores signup and reads login unscored): "
        "a misspelt type, or one to score with a rule or to list in the model's [model] unscored_types"
    )


def test_listed_and_profile_types_are_read_without_points() -> None:
    scorer = engine(SIGNUP, settings='unscored_types = ["login"]')
    run = Run(scorer).apply(
        ev("login", traits={"title": "VP Sales"}),
        ev("group", at=1, account_id="acme"),
        ev("alias", at=2),
        ev("identify", at=3, traits={"email": "ada@acme.io"}),
        ev("signup", at=4),
    )
    state = run.state("L1", "m")
    assert run.score("L1", "m") == 5
    assert (state.account_id, state.traits["title"], state.traits["email"]) == ("acme", "VP Sales", "ada@acme.io")


def test_a_type_one_routed_model_knows_is_read_by_the_others_too() -> None:
    scorer = Engine([model(SIGNUP, name="a"), model('[[rules]]\nname = "in"\nevent = "login"\npoints = 2\n', name="b")])
    run = Run(scorer).apply(ev("login", traits={"title": "CTO"}))
    assert (run.score("L1", "a"), run.score("L1", "b")) == (0, 2)
    assert run.state("L1", "a").traits["title"] == "CTO"


def test_a_star_reads_every_type() -> None:
    scorer = engine(SIGNUP, settings='unscored_types = ["*"]')
    anything = scorer.parse(ev("whatever_happened"))
    result = scorer.apply_batch([anything], lambda m, l: None)
    assert result.unknown_type == [] and list(result.states) == [("m", "L1")]


@pytest.mark.parametrize("kind", ["identify", "group", "alias"])
def test_a_profile_update_without_product_reaches_every_model_even_filtered_ones(kind: str) -> None:
    # A Segment group() from a website source without product gave the lead no account at all.
    scorer = Engine([model(SIGNUP + '[filter]\nproduct = "saas"\n', name="a"), model(SIGNUP + '[filter]\nproduct = "b2b"\n', name="b")])
    other = scorer.parse(ev("signup"))  # no product: no model takes it
    update = scorer.parse(ev(kind, at=1, traits={"email": "a@b.io"}, account_id="acme"))
    result = scorer.apply_batch([other, update], lambda m, l: None)
    assert (result.unrouted, result.unknown_type, sorted(result.states)) == ([other], [], [("a", "L1"), ("b", "L1")])
    assert [state.account_id for state in result.states.values()] == ["acme", "acme"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [('["*", "login"]', 'either "*" alone'), ("[1]", "a text or a non-empty list of texts"), ("[]", "a text or a non-empty list")],
)
def test_unscored_types_are_validated(value: str, expected: str) -> None:
    with pytest.raises(ModelError, match="unscored_types") as error:
        model(SIGNUP, settings=f"unscored_types = {value}")
    assert expected in str(error.value) and "m.toml" in str(error.value)
