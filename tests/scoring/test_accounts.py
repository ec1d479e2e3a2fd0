"""Semantic 8: member scores combine into an account score (sum, max or top-k) that has its
own ladder and transitions."""

from __future__ import annotations

import pytest

from scoring import AccountState, MemberScore
from tests.scoring.support import T0, Run, engine, ev

RULE = '[[rules]]\nname = "p"\nevent = "p"\npoints = 10\n'


def account_engine(combine: str):
    top_k = "top_k = 2\n" if combine == "top_k" else ""
    return engine(RULE + f'[accounts]\ncombine = "{combine}"\n{top_k}base = "quiet"\nladder = [{{ level = "engaged", at = 50 }}]\n')


def roll(combine: str, updates: list[tuple[str, float, int]]) -> tuple[AccountState, list]:
    eng = account_engine(combine)
    state, transitions = None, []
    for lead, score, at in updates:
        state, crossed = eng.apply_account("m", "acme", state, MemberScore("m", "acme", lead, score, T0 + at))
        transitions += crossed
    assert state is not None
    return state, transitions


@pytest.mark.parametrize(
    ("combine", "score"),
    [("sum", 60 + 30 + 20), ("max", 60), ("top_k", 60 + 30)],
)
def test_combine(combine: str, score: float) -> None:
    eng = account_engine(combine)
    state, _ = roll(combine, [("a", 60, 0), ("b", 30, 0), ("c", 20, 0)])
    assert eng.models[0].accounts.score(state.members) == score


def test_latest_member_score_wins_and_stale_updates_are_ignored() -> None:
    state, _ = roll("sum", [("a", 10, 5), ("a", 40, 10), ("a", 99, 7)])
    assert state.members == {"a": [40, T0 + 10]}


def test_account_transitions_up_and_down() -> None:
    _, transitions = roll("sum", [("a", 30, 0), ("b", 30, 1), ("b", 10, 2)])
    records = [t.to_dict() for t in transitions]
    assert [(r["kind"], r["from_level"], r["to_level"], r["direction"], r["score"]) for r in records] == [
        ("account", "quiet", "engaged", "up", 60),
        ("account", "engaged", "quiet", "down", 40),
    ]
    assert records[0]["account_id"] == "acme" and records[0]["lead_id"] == "b"
    assert records[0]["reasons"] == [{"rule": "member", "lead_id": "a", "points": 30}, {"rule": "member", "lead_id": "b", "points": 30}]
    assert records[0]["id"] != records[1]["id"]


def test_batches_report_member_scores_of_leads_with_an_account() -> None:
    run = Run(account_engine("sum")).apply(ev("p", account_id="acme"), ev("p", at=1), ev("p", lead="L2"))
    assert run.account_updates == [MemberScore("m", "acme", "L1", 20, T0 + 1)]


def test_account_state_round_trips() -> None:
    state, _ = roll("top_k", [("a", 60, 0), ("b", 30, 0)])
    assert AccountState.from_bytes(state.to_bytes()) == state
