"""A rule added to a model in use that tests a trait the model did not keep: the states of leads
scored before hold no value of it, and the edit is said to be so (scoring.model.unkept_traits)."""

from __future__ import annotations

from scoring.model import unkept_traits
from tests.scoring.support import MINUTE, Run, engine, ev, model

SIGNUP = '[[rules]]\nname = "signed up"\nevent = "signup"\npoints = 5\n'
BIG = '[[fit]]\nname = "big company"\npoints = 7\ntraits.company_size = { gte = 50 }\n'


def test_a_fit_rule_on_a_trait_the_model_did_not_keep_sees_it_only_from_the_next_event_carrying_it() -> None:
    """What the worker does, which the warning and MODELS.md describe: `leadstream score` of the
    same events under the edited model gives the 7 points at once."""
    run = Run(engine(SIGNUP)).apply(ev("identify", traits={"company_size": 80, "email": "a@b.io"}), ev("signup", at=MINUTE))
    assert "company_size" not in run.state().traits  # not kept: nothing tested it
    run.engine = engine(SIGNUP + BIG)
    run.apply(ev("signup", at=2 * MINUTE))
    assert run.score() == 10
    run.apply(ev("identify", at=3 * MINUTE, traits={"company_size": 80}))
    assert run.score() == 17
    assert Run(engine(SIGNUP + BIG)).apply(ev("identify", traits={"company_size": 80}), ev("signup", at=MINUTE)).score() == 12


def test_an_edit_is_told_of_each_rule_testing_a_trait_the_model_before_neither_kept_nor_tested() -> None:
    before = [model(SIGNUP + '[[fit]]\nname = "vp"\npoints = 3\ntraits.title = { words = ["vp"] }\n',
                    settings='keep_traits = ["email", "plan"]'),
              model(SIGNUP, name="other")]
    after = [model(SIGNUP + BIG
                   + '[[fit]]\nname = "vp"\npoints = 3\ntraits.title = { words = ["vp"] }\n'  # tested before: kept
                   + '[[fit]]\nname = "paid"\npoints = 2\ntraits.plan = "pro"\n'  # in keep_traits before: kept
                   + '[[rules]]\nname = "emea demo"\nevent = "demo"\npoints = 9\ntraits.region = "emea"\n'
                   + '[[rules]]\nname = "per country"\nevent = "visit"\npoints = 1\nonce_per = "traits.country"\n'),
             model(SIGNUP + BIG, name="new")]  # a model new to the directory has no states to miss a trait
    found = unkept_traits(before, after)
    assert [(u.model, u.kind, u.rule, u.trait) for u in found] == [
        ("m", "rule", "emea demo", "region"), ("m", "rule", "per country", "country"), ("m", "fit rule", "big company", "company_size")]
    message = str(found[-1])
    for fragment in ("m.toml: fit rule 'big company' tests trait 'company_size'", "model 'm' neither kept nor tested",
                     "next event carrying it", "leadstream history", "new LEADSTREAM_APP_ID", "keep_traits beforehand"):
        assert fragment in message, message
    assert unkept_traits(after, after) == []
