"""A rule renamed with `renamed_from` keeps what lead states hold under its earlier name: its
ledger entry (explanations), its cap's and bonus's window counters, its `once_per` values."""

from __future__ import annotations

import pytest

from scoring import ModelError
from scoring.identity import merge
from tests.scoring.support import DAY, MINUTE, T0, Run, engine, ev, model

LIMITED = '[[rules]]\nname = "{name}"\nevent = "page_view"\npoints = 1\n{extra}' \
          'bonus = {{ count = 2, window = "1d", points = 100 }}\ncap = {{ max = 3, window = "1d" }}\n'


def limited(name: str, extra: str = "") -> str:
    return LIMITED.format(name=name, extra=extra)


def test_a_renamed_rule_keeps_its_ledger_cap_and_bonus_counts() -> None:
    """Kept under the rule's name, the counts of the day's windows were lost to the rename: the
    bonus paid again at the second occurrence after it and the cap let three more through; the
    explanation showed the points earned before as a rule no longer in the model."""
    run = Run(engine(limited("o"))).apply(ev(at=0), ev(at=MINUTE))
    run.engine = engine(limited("o2", 'renamed_from = "o"\n'))
    explained = run.engine.explain("m", "L1", run.state(), T0 + 2 * MINUTE)  # read before the renamed rule's next event
    assert [(row["rule"], row["points"], row["in_model"]) for row in explained["rules"]] == [("o2", 102, True)]
    assert "o" in run.state().ledger  # reading did not change the state
    run.apply(*(ev(at=i * MINUTE) for i in range(2, 5)))
    assert run.score() == 1 + 101 + 1  # the bonus once, the third occurrence the cap's last
    assert run.state().ledger == {"o2": [103, 5, 2, 1]}
    assert set(run.state().windows) == {"cap:o2", "bonus:o2"}


def test_the_explanation_s_history_names_a_renamed_rule_by_its_name_now() -> None:
    """Its rules showed the new name and its history the old one for the changes scored
    before the rename, though MODELS.md says the explanation shows the new name at once."""
    run = Run(engine(limited("o"))).apply(ev(at=0), ev(at=MINUTE))
    run.engine = engine(limited("o2", 'renamed_from = "o"\n'))
    explained = run.engine.explain("m", "L1", run.state(), T0 + 2 * MINUTE)
    assert [(row["rule"], row["points"]) for row in explained["history"]] == [("o2", 101), ("o2", 1)]
    run.apply(ev(at=2 * MINUTE))
    explained = run.engine.explain("m", "L1", run.state(), T0 + 3 * MINUTE)
    assert [row["rule"] for row in explained["history"]] == ["o2", "o2", "o2"]


def test_counts_a_state_holds_under_both_names_add_up() -> None:
    """Renamed first without `renamed_from`, then with it: the day's counts of both names
    join (the cap's add up, the bonus paid under one has paid), as do the ledger entries."""
    run = Run(engine(limited("o"))).apply(ev(at=0), ev(at=MINUTE))
    run.engine = engine(limited("o2"))
    run.apply(ev(at=2 * MINUTE))
    run.engine = engine(limited("o2", 'renamed_from = "o"\n'))
    run.apply(ev(at=3 * MINUTE), ev(at=4 * MINUTE))
    assert run.state().ledger == {"o2": [1 + 101 + 1 + 0 + 0, 5, 2, 1]}
    assert run.state().windows["bonus:o2"][1] == -1  # paid


def test_counters_of_other_windows_under_both_names_join_newest_first() -> None:
    """Each window once, newest first, as the lookup of a window by bisection needs: joined in
    the order the names came, a day's counter could be missed and its cap passed."""
    capped = '[[rules]]\nname = "{name}"\nevent = "page_view"\npoints = 1\ncap = {{ max = 1, window = "1d" }}\n{extra}'
    run = Run(engine(capped.format(name="o", extra=""), lateness="3d")).apply(ev(at=0), ev(at=2 * DAY))
    run.engine = engine(capped.format(name="o2", extra=""), lateness="3d")
    run.apply(ev(at=DAY))
    run.engine = engine(capped.format(name="o2", extra='renamed_from = "o"\n'), lateness="3d")
    run.apply(*(ev(at=day * DAY + MINUTE) for day in (2, 0, 1)))  # each day's cap used
    assert run.state().ledger == {"o2": [3, 6, 3, 0]}
    day = T0 // DAY
    assert run.state().windows == {"cap:o2": [day + 2, 1, day + 1, 1, day, 1]}


def test_earlier_names_in_a_list_and_once_per_values_an_earlier_version_kept_under_the_name() -> None:
    opens = '[[rules]]\nname = "{name}"\nevent = "email_open"\npoints = 5\nonce_per = "properties.email_id"\n'
    run = Run(engine(opens.format(name="open") + limited("pricing"))).apply(
        ev("email_open", properties={"email_id": "m-1"}), ev(at=MINUTE))
    state = run.state()
    state.seen = {"open": state.seen.pop("email_open properties.email_id")}  # as an earlier version kept them
    run.store[("m", "L1")] = state.to_bytes()
    run.engine = engine(opens.format(name="e-mail opened") + 'renamed_from = ["opened", "open"]\n'
                        + limited("pricing page", 'renamed_from = "pricing"\n'))
    run.apply(ev("email_open", at=2 * MINUTE, properties={"email_id": "m-1"}), ev(at=3 * MINUTE))
    assert run.score() == 5 + 1 + 101
    assert run.state().ledger == {"e-mail opened": [5, 2, 1, 0], "pricing page": [102, 2, 0, 1]}
    assert run.state().seen == {"email_open properties.email_id": {"m-1": None}}


def test_a_visitor_merged_after_a_rename_joins_the_rules_entry_within_its_max_points() -> None:
    before = engine(limited("o", "max_points = 102\n"))
    run = Run(before).apply(ev(at=0, lead="V"), ev(at=MINUTE, lead="V"), ev(at=0, lead="L"), ev(at=MINUTE, lead="L"))
    after = engine(limited("o2", 'max_points = 102\nrenamed_from = "o"\n'))
    merged, _ = merge(after, "m", "L", run.state("L"), run.state("V"), "V", T0 + 2 * MINUTE)
    # 102 + 102, less the day's second bonus and the occurrence past the cap of 3: 103, clipped
    # at the rule's 102.
    assert merged.ledger == {"o2": [102, 4, 2, 1]}
    assert merged.behaviour == 102
    assert merged.windows["cap:o2"][1] == 4  # the counts add up, as in any merge
    assert "o" in run.state("V").ledger  # the visitor's state as it was


RULE = '[[rules]]\nname = "{name}"\nevent = "page_view"\npoints = 1\n'


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        (RULE.format(name="a") + 'renamed_from = "b"\n' + RULE.format(name="b"),
         ["m.toml", "rule 'a'", "field 'renamed_from'", "no rule of this model has now", "'b'"]),
        (RULE.format(name="a") + 'renamed_from = "a"\n', ["rule 'a'", "field 'renamed_from'", "'a'"]),
        (RULE.format(name="a") + 'renamed_from = "vp"\n[[fit]]\nname = "vp"\npoints = 1\ntraits.title = "vp"\n',
         ["rule 'a'", "field 'renamed_from'", "'vp'"]),
        (RULE.format(name="a") + 'renamed_from = "old"\n' + RULE.format(name="b") + 'renamed_from = ["x", "old"]\n',
         ["rule 'b'", "field 'renamed_from'", "one rule claims once", "'old'", "also claimed by rule 'a'"]),
        (RULE.format(name="a") + 'renamed_from = ["old", "old"]\n', ["rule 'a'", "field 'renamed_from'", "'old'"]),
        (RULE.format(name="a") + "renamed_from = []\n", ["rule 'a'", "field 'renamed_from'", "non-empty list"]),
        (RULE.format(name="a") + 'renamed_from = "x\\ny"\n', ["rule 'a'", "field 'renamed_from'", "one line"]),
    ],
)
def test_renamed_from_errors_name_file_rule_and_field(body: str, fragments: list[str]) -> None:
    with pytest.raises(ModelError) as error:
        model(body)
    for fragment in fragments:
        assert fragment in str(error.value)
