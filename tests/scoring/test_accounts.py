"""Semantic 8: member scores combine into an account score (sum, max or top-k) that has its
own ladder and transitions."""

from __future__ import annotations

import math
from typing import Any
from unittest import mock

import msgspec
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scoring import AccountState, MemberScore, accounts
from tests.scoring.support import DAY, T0, Run, engine, ev

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
    assert eng.models[0].accounts.score(state) == score


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


@pytest.mark.parametrize(("combine", "named"), [("max", ["a"]), ("top_k", ["a", "b"]), ("sum", ["a", "b", "c"])])
def test_an_account_crossing_s_reasons_are_the_members_its_score_counts(combine: str, named: list[str]) -> None:
    # Under max and top_k they named every member: reasons adding up to more than the score.
    _, [crossing] = roll(combine, [("c", 10, 0), ("b", 20, 1), ("a", 50, 2)])
    assert [reason["lead_id"] for reason in crossing.to_dict()["reasons"]] == named


def test_an_account_crossing_names_the_latest_change_that_moved_it_stamped_with_its_time() -> None:
    # It named the last update in the order a batch happened to give (which partition came
    # first), and a decay step's crossing carried its member's newest event time.
    eng = account_engine("sum")
    later, earlier = MemberScore("m", "acme", "b", 30, T0 + 5), MemberScore("m", "acme", "a", 30, T0 + 1)
    state, [up] = eng.apply_account_updates("m", "acme", None, [later, earlier])
    assert (up.lead_id, up.time_ms, up.direction) == ("b", T0 + 5, "up")
    step = MemberScore("m", "acme", "a", 0, T0 + 1, revision=2, changed_ms=T0 + 30 * DAY)
    _, [down] = eng.apply_account_updates("m", "acme", state, [step])
    assert (down.lead_id, down.time_ms, down.direction) == ("a", T0 + 30 * DAY, "down")


def test_a_batchs_updates_cross_each_line_they_pass_as_one_by_one_and_name_the_member_that_moved_it() -> None:
    """The account crossed once per batch, to where the batch left it: three members climbing
    in one message crossed to engaged at 140, never to buying, though the account had reached
    150 and 140 lies in buying's hysteresis band; and the crossing named the batch's last
    changed member, whose update (under top_k, outside the best) had not moved the score."""
    eng = engine(RULE + '[accounts]\ncombine = "top_k"\ntop_k = 3\nbase = "unaware"\nhysteresis = 10\n'
                 'ladder = [{ level = "engaged", at = 60 }, { level = "buying", at = 150 }]\n')
    climbing = [MemberScore("m", "acme", lead, score, T0 + at) for lead, score, at in
                (("s0", 50, 0), ("s4", 50, 1), ("s6", 50, 2), ("s6", 40, 3))]
    state, crossed = eng.apply_account_updates("m", "acme", None, climbing)
    assert [(t.to_level, t.lead_id, t.time_ms, t.score) for t in crossed] == [
        ("engaged", "s4", T0 + 1, 100), ("buying", "s6", T0 + 2, 150)]
    assert state.level == "buying"  # 140: within the band below buying's line
    one_by_one = None
    for update in climbing:
        one_by_one, _ = eng.apply_account_updates("m", "acme", one_by_one, [update])
    assert one_by_one == state
    moves = [MemberScore("m", "beta", lead, score, T0 + at) for lead, score, at in
             (("r0", 50, 0), ("r1", 10, 1), ("r2", 10, 2), ("r5", 1, 3))]
    _, [engaged] = eng.apply_account_updates("m", "beta", None, moves)
    assert (engaged.lead_id, engaged.time_ms, engaged.score) == ("r1", T0 + 1, 60)  # r5's 1 point is not among the best


def test_a_leaving_in_a_batch_is_crossed_in_its_place_unless_it_is_a_merge_taken_with_its_leads_update() -> None:
    """Any leaving made the whole batch's updates one step: a member rising over the line, then
    another moving out (back within the band), never crossed. A merged visitor's leaving and its
    lead's update (which takes the visitor's points in) still are one step: apart, the account
    crossed down and up again."""
    eng = engine(RULE + '[accounts]\ncombine = "sum"\nbase = "unaware"\nhysteresis = 10\n'
                 'ladder = [{ level = "engaged", at = 60 }]\n')
    state, _ = eng.apply_account_updates("m", "acme", None, [MemberScore("m", "acme", "m4", 50, T0), MemberScore("m", "acme", "m7", 5, T0 + 1)])
    moved = [MemberScore("m", "acme", "m8", 5, T0 + 2), MemberScore("m", "acme", "m7", 0, T0 + 3, left=True, revision=2)]
    state, crossed = eng.apply_account_updates("m", "acme", state, moved)
    assert [(t.to_level, t.lead_id, t.score) for t in crossed] == [("engaged", "m8", 60)] and state.level == "engaged"
    beta, [up] = eng.apply_account_updates("m", "beta", None, [MemberScore("m", "beta", "u", 30, T0), MemberScore("m", "beta", "anon:v", 40, T0)])
    merge = [MemberScore("m", "beta", "anon:v", 0, T0 + 4, left=True, revision=2, into="u"),
             MemberScore("m", "beta", "u", 70, T0 + 4, revision=3)]
    beta, crossed = eng.apply_account_updates("m", "beta", beta, merge)  # apart: 70 -> 30 (down) -> 70 (up)
    assert crossed == [] and beta.level == "engaged"
    assert orjson.loads(msgspec.json.encode(merge[0]))["into"] == "u" and "into" not in orjson.loads(msgspec.json.encode(merge[1]))


def test_batches_report_member_scores_of_leads_with_an_account() -> None:
    run = Run(account_engine("sum")).apply(ev("p", account_id="acme"), ev("p", at=1), ev("p", lead="L2"))
    # The score after each event of the lead, its state's revision then (L2 has no account).
    assert run.account_updates == [MemberScore("m", "acme", "L1", 10, T0, revision=1), MemberScore("m", "acme", "L1", 20, T0 + 1, revision=2)]


def test_a_member_counts_in_its_account_with_the_score_its_lead_shows() -> None:
    # 2 behaviour points and a fit rule's 0.335: the lead shows 2.34 (its points to the
    # hundredth each, as its explanation adds them up), and was a member at 2.33, its exact
    # 2.335 rounded once. A half-life lead at 19.997, held below its MQL line at 20, shows 19.99
    # and was a member at 20.
    fit = '[[fit]]\nname = "third"\npoints = 0.335\ntraits.t = { exists = true }\n'
    half_life = '[decay]\nhalf_life = "1d"\n'
    accounts = '[accounts]\nbase = "quiet"\nladder = [{ level = "engaged", at = 50 }]\n'
    rules = '[[rules]]\nname = "p"\nevent = "p"\npoints = 1\n[[rules]]\nname = "q"\nevent = "q"\npoints = 40\n'
    fitted = Run(engine(rules + fit + accounts)).apply(ev("p", account_id="acme", traits={"t": 1}), ev("p", at=1))
    decaying = Run(engine(rules + half_life + accounts)).apply(ev("q", account_id="acme"))
    at = T0 + math.ceil(DAY * math.log2(40 / 19.997))
    decayed, _ = decaying.engine.decay("m", "L1", decaying.state(), at)
    for run, state, time_ms, shown in ((fitted, fitted.state(), T0 + 1, 2.34), (decaying, decayed, at, 19.99)):
        assert run.engine.summary("m", "L1", state, time_ms)["score"] == shown
        member = run.engine.member_score("m", "L1", state, time_ms)
        assert member is not None and member.score == shown
        account, _ = run.engine.apply_account("m", "acme", None, member)
        summary = run.engine.account_summary("m", "acme", account)
        assert (summary["score"], summary["top_members"]) == (shown, [{"lead_id": "L1", "score": shown}])
    assert fitted.account_updates[-1].score == 2.34


_LADDER = ('[[rules]]\nname = "n"\nevent = "n"\npoints = -10\n[accounts]\ncombine = "top_k"\ntop_k = 2\nbase = "unaware"\n'
           'hysteresis = 5\nladder = [{ level = "engaged", at = 20 }, { level = "buying", at = 40 }]\n')


Crossed = list[tuple[str, str, str | None, float]]


def _crossings_by_account(events: list[dict[str, Any]], cuts: list[int], model: str = RULE + _LADDER) -> dict[str, Crossed]:
    """Each account's crossings (id, level, lead, score) of the events scored in batches cut at
    `cuts`, each batch's updates rolled up together by account, as the account stage takes a
    scorer batch's message."""
    run = Run(engine(model))
    states: dict[str, AccountState] = {}
    out: dict[str, Crossed] = {}
    for start, end in zip([0, *cuts], [*cuts, len(events)]):
        before = len(run.account_updates)
        run.apply(*events[start:end])
        for (_, account_id), updates in accounts.by_account(run.account_updates[before:]).items():
            states[account_id], crossed = run.engine.apply_account_updates("m", account_id, states.get(account_id), updates)
            out.setdefault(account_id, []).extend((t.id, t.to_level, t.lead_id, t.score) for t in crossed)
    return out


def _account_crossings(events: list[dict[str, Any]], cuts: list[int], model: str = RULE + _LADDER) -> Crossed:
    """The crossings of account acme (see `_crossings_by_account`)."""
    return _crossings_by_account(events, cuts, model).get("acme", [])


def test_a_members_events_of_one_batch_take_its_account_over_each_line_as_batches_of_one_do() -> None:
    """A batch told the account only each member's last score: five events of one lead, +10
    each, crossed unaware -> buying at 50 where one event a batch (`leadstream score`) crossed to
    engaged at 20, then to buying at 40, so a CRM mapping acting on engaged never fired."""
    events = [ev("p", at=n, event_id=f"e{n}", account_id="acme") for n in range(5)]
    one_batch = _account_crossings(events, [])
    assert [(level, score) for _, level, _, score in one_batch] == [("engaged", 20), ("buying", 40)]
    assert one_batch == _account_crossings(events, list(range(1, len(events))))  # the same ids: the same crossings


def _member_events(steps: list[tuple[str, str, str | None]], ids: int = 1000) -> list[dict[str, Any]]:
    """Events of (lead, type, account id or None), one millisecond apart, their ids repeating
    every `ids` events (a lead's event of a repeated id is a duplicate)."""
    return [ev(kind, at=n, lead=lead, event_id=f"e{n % ids}", **({} if account is None else {"account_id": account}))
            for n, (lead, kind, account) in enumerate(steps)]


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(st.tuples(st.sampled_from(["L1", "L2", "L3"]), st.sampled_from(["p", "p", "n", "visit", "identify"]),
                                st.sampled_from([None, None, None, "acme", "beta", "gamma"])), min_size=1, max_size=24),
       cuts=st.sets(st.integers(1, 23)))
def test_an_accounts_crossings_do_not_depend_on_how_its_members_events_are_batched(
        steps: list[tuple[str, str, str | None]], cuts: set[int]) -> None:
    """Members' events in time order, cut into batches anywhere (a worker's fetches, or a
    successor's after a restart scoring them again), cross every account as batches of one do,
    with the same ids, members joining and moving between accounts (an event without an
    account id leaves the lead's as it is) as they go; a member's events of no points between
    its changes (a duplicate, one no rule scores) add no update."""
    events = _member_events(steps, ids=20)
    one_by_one = _crossings_by_account(events, list(range(1, len(events))))
    assert _crossings_by_account(events, sorted(c for c in cuts if c < len(events))) == one_by_one


@pytest.mark.parametrize(("earlier", "batch", "crossed"), [
    # In beta and back within a batch: acme never lost it, so it did not dip to unaware and
    # came back (to buying, at 40, where batches of one cross it there from unaware).
    pytest.param([("L1", "p", "acme"), ("L1", "p", None)], [("L1", "p", "beta"), ("L1", "p", "acme")],
                 {"acme": [("engaged", "L1", 20), ("unaware", None, 0), ("buying", "L1", 40)],
                  "beta": [("engaged", "L1", 30), ("unaware", None, 0)]}, id="there-and-back"),
    # Its leaving was dated at its last event of the batch, not at the move: the same levels,
    # but acme's crossing down had another time and so another id.
    pytest.param([], [("L1", "p", None), ("L1", "p", "acme"), ("L1", "p", "beta"), ("L1", "p", None)],
                 {"acme": [("engaged", "L1", 20), ("unaware", None, 0)], "beta": [("engaged", "L1", 30), ("buying", "L1", 40)]},
                 id="moved-then-scored"),
    # Two members changing places: acme took L2 in before L1 left it (at L1's next event), and
    # crossed up to buying at 50, then down to engaged, where batches of one cross it down to
    # unaware, then up to engaged; beta, the other way round.
    pytest.param([("L1", "p", "acme"), ("L1", "p", None), ("L2", "p", "beta"), ("L2", "p", None)],
                 [("L1", "p", "beta"), ("L2", "p", "acme"), ("L1", "p", None)],
                 {"acme": [("engaged", "L1", 20), ("unaware", None, 0), ("engaged", "L2", 30)],
                  "beta": [("engaged", "L2", 20), ("buying", "L1", 50), ("engaged", None, 30), ("buying", "L1", 40)]},
                 id="changing-places"),
    # Joining within the batch, after events in none: counted from the join on.
    pytest.param([], [("L1", "p", None), ("L1", "p", None), ("L1", "p", "acme"), ("L1", "p", None)],
                 {"acme": [("engaged", "L1", 30), ("buying", "L1", 40)]}, id="joining"),
])
def test_a_member_moving_within_a_batch_leaves_its_account_at_the_move_as_batches_of_one_do(
        earlier: list[tuple[str, str, str | None]], batch: list[tuple[str, str, str | None]],
        crossed: dict[str, list[tuple[str, str | None, float]]]) -> None:
    """A member that moved to another account within a batch was told to leave the accounts it
    was in only as the batch ended, dated at its last event, and not at all the one it came back
    to: as found by the test above, once its events carried accounts."""
    events = _member_events(earlier + batch)
    one_by_one = _crossings_by_account(events, list(range(1, len(events))))
    assert {account: [crossing[1:] for crossing in out] for account, out in one_by_one.items()} == crossed
    assert _crossings_by_account(events, [len(earlier)] if earlier else []) == one_by_one


def test_account_state_round_trips() -> None:
    state, _ = roll("top_k", [("a", 60, 0), ("b", 30, 0)])
    assert AccountState.from_bytes(state.to_bytes()) == state


def test_a_lead_that_moves_leaves_its_old_account_which_may_cross_down() -> None:
    eng = account_engine("sum")
    run = Run(eng).apply(*[ev("p", at=i, lead="L1", account_id="acme") for i in range(3)],
                         *[ev("p", at=i, lead="L2", account_id="acme") for i in range(3)])
    run.apply(ev("p", at=5, lead="L1", account_id="globex"))
    assert run.account_updates[-2:] == [MemberScore("m", "acme", "L1", 0, T0 + 5, left=True, revision=4),
                                        MemberScore("m", "globex", "L1", 40, T0 + 5, revision=4)]
    accounts: dict[str, AccountState] = {}
    crossings = []
    for update in run.account_updates:
        accounts[update.account_id], crossed = eng.apply_account("m", update.account_id, accounts.get(update.account_id), update)
        crossings += [(t.account_id, t.from_level, t.to_level) for t in crossed]
    assert accounts["acme"].members == {"L2": [30, T0 + 2, 3]} and accounts["globex"].members == {"L1": [40, T0 + 5, 4]}
    assert crossings == [("acme", "quiet", "engaged"), ("acme", "engaged", "quiet")]


def test_a_leaving_is_ignored_when_stale_or_of_no_member_and_a_later_return_counts() -> None:
    eng = account_engine("sum")
    state, _ = roll("sum", [("a", 30, 10), ("b", 20, 10)])
    for stale in (MemberScore("m", "acme", "a", 0, T0 + 9, left=True), MemberScore("m", "acme", "z", 0, T0 + 20, left=True)):
        state, crossed = eng.apply_account("m", "acme", state, stale)
        assert crossed == [] and set(state.members) == {"a", "b"}
    state, _ = eng.apply_account("m", "acme", state, MemberScore("m", "acme", "a", 0, T0 + 10, left=True))
    assert state.members == {"b": [20, T0 + 10]}
    state, _ = eng.apply_account("m", "acme", state, MemberScore("m", "acme", "a", 35, T0 + 11))
    assert state.members == {"b": [20, T0 + 10], "a": [35, T0 + 11]}


def test_member_updates_cross_kafka_as_json_with_left_and_revision_only_when_set() -> None:
    assert msgspec.json.encode(MemberScore("m", "acme", "a", 30.5, 1)) == b'{"model":"m","account_id":"acme","lead_id":"a","score":30.5,"time":1}'
    left = MemberScore("m", "acme", "a", 0, 1, left=True, revision=7)
    assert msgspec.json.encode(left).endswith(b'"time":1,"left":true,"revision":7}')
    assert msgspec.json.decode(msgspec.json.encode(left), type=MemberScore) == left
    for wrong in (b"-1", b"18446744073709551615", b'"7"'):  # what orjson cannot write in an account state, or a text
        with pytest.raises(msgspec.ValidationError, match="revision"):
            msgspec.json.decode(b'{"model":"m","account_id":"acme","lead_id":"a","score":1,"time":1,"revision":' + wrong + b"}",
                                type=MemberScore)


def test_an_account_summary_shows_score_scales_level_and_best_members() -> None:
    eng = account_engine("top_k")
    state, _ = roll("top_k", [("a", 30, 0), ("b", 40, 1), ("c", 5, 2)])
    assert eng.account_summary("m", "acme", state) == {
        "account_id": "acme", "model": "m", "score": 70, "normalized": 100.0, "level": "engaged", "temperature": None,
        "members": 3, "top_members": [{"lead_id": "b", "score": 40}, {"lead_id": "a", "score": 30}, {"lead_id": "c", "score": 5}],
    }
    plain = engine(RULE)  # no [accounts]: members kept, nothing to score them by
    state, _ = plain.apply_account("m", "acme", None, MemberScore("m", "acme", "a", 30, T0))
    summary = plain.account_summary("m", "acme", state)
    assert (summary["score"], summary["normalized"], summary["level"], summary["members"]) == (None, None, None, 1)


ACMAX = RULE + '[accounts]\ncombine = "max"\nbase = "unaware"\nhysteresis = 10\nladder = [{ level = "engaged", at = 40 }, { level = "buying", at = 80 }]\n'


@pytest.mark.parametrize(
    ("edited", "level", "crossed"),
    [
        # max -> sum: 120 points, past buying at 80.
        (ACMAX.replace('"max"', '"sum"'), "buying", ("engaged", "buying")),
        # buying taken off the ladder: an account at buying crosses from it, down to where its
        # score puts it, as a lead does (the CRM has buying).
        (ACMAX.replace(', { level = "buying", at = 80 }', "").replace('"max"', '"sum"'), "engaged", ("buying", "engaged")),
    ],
)
def test_an_account_an_edit_of_accounts_leaves_out_of_place_shows_where_its_score_puts_it_and_crosses_there_at_its_next_change(
    edited: str, level: str, crossed: tuple[str, str]
) -> None:
    """Its summary showed the score of the new roll-up beside the level it last crossed to (120
    `engaged`, below buying at 80) until a member's update crossed it."""
    state = None
    for n, lead in enumerate(("r1", "r2", "r3")):
        state, _ = engine(ACMAX).apply_account("m", "racc", state, MemberScore("m", "racc", lead, 40, T0 + n))
    assert state is not None and state.level == "engaged"
    if "buying" not in edited:
        state.level = "buying"  # as it was before the edit took buying off the ladder
    now = engine(edited)
    summary = now.account_summary("m", "racc", state)
    assert (summary["score"], summary["level"]) == (120, level)
    # It crosses there at its next change, as `leadstream score` with the edited model does.
    state, transitions = now.apply_account("m", "racc", state, MemberScore("m", "racc", "r1", 41, T0 + 10))
    assert [(t.from_level, t.to_level) for t in transitions] == [crossed]
    assert now.account_summary("m", "racc", state)["level"] == level == state.level


def test_an_account_of_a_model_whose_accounts_was_removed_loses_its_level_at_its_next_change() -> None:
    """Its summary showed the level of a ladder the model no longer has; one added again starts
    at its base, as a new account."""
    state, _ = engine(ACMAX).apply_account("m", "racc", None, MemberScore("m", "racc", "r1", 40, T0))
    assert state.level == "engaged"
    plain = engine(RULE)
    assert plain.account_summary("m", "racc", state)["level"] is None
    state, transitions = plain.apply_account("m", "racc", state, MemberScore("m", "racc", "r2", 10, T0 + 1))
    assert (state.level, transitions, plain.rolling) == ("", [], frozenset())
    state, transitions = engine(ACMAX).apply_account("m", "racc", state, MemberScore("m", "racc", "r2", 11, T0 + 2))
    assert [(t.from_level, t.to_level) for t in transitions] == [("unaware", "engaged")]


def test_an_account_knows_when_its_latest_remembered_member_left() -> None:
    state, _ = roll("sum", [("a", 30, 0), ("b", 30, 1)])
    assert state.last_left_ms() is None
    for lead, at in (("b", 9), ("a", 5)):
        state.update(MemberScore("m", "acme", lead, 0, T0 + at, True))
    assert (state.members, state.last_left_ms()) == ({}, T0 + 9)


def test_an_accounts_newest_member_time_follows_its_updates_and_leavings() -> None:
    """Kept as updates come (what dates a crossing: `accounts._cross`), and worked out again
    once the member that held it leaves."""
    state, _ = roll("sum", [("a", 30, 3), ("b", 30, 1)])
    assert state.newest_ms() == T0 + 3
    state.update(MemberScore("m", "acme", "b", 20, T0 + 7))
    assert state.newest_ms() == T0 + 7
    state.update(MemberScore("m", "acme", "b", 0, T0 + 8, True))
    assert state.newest_ms() == T0 + 3
    state.update(MemberScore("m", "acme", "a", 0, T0 + 9, True))
    assert state.newest_ms() == 0


@pytest.mark.parametrize(
    ("bounds", "normalized"),
    [("", 50.0), ("hundred_at = 200\n", 25.0), ("zero_at = 20\n", 37.5), ("zero_at = 20\nhundred_at = 120\n", 30.0)],
)
def test_an_account_scale_takes_the_models_for_a_bound_it_leaves_out(bounds: str, normalized: float) -> None:
    """The model's own scale runs to 100 points here; the account's bounds default to it."""
    eng = engine(RULE + "[scale]\nhundred_at = 100\n"
                 + f'[accounts]\nbase = "quiet"\nladder = [{{ level = "engaged", at = 50 }}]\n{bounds}')
    state, _ = eng.apply_account("m", "acme", None, MemberScore("m", "acme", "a", 50, T0))
    assert eng.account_summary("m", "acme", state)["normalized"] == normalized


def test_an_account_scale_takes_the_models_zero_at_when_it_gives_only_hundred_at() -> None:
    eng = engine(RULE + "[scale]\nzero_at = 10\nhundred_at = 110\n"
                 + '[accounts]\nbase = "quiet"\nladder = [{ level = "engaged", at = 50 }]\nhundred_at = 210\n')
    state, _ = eng.apply_account("m", "acme", None, MemberScore("m", "acme", "a", 50, T0))
    assert eng.account_summary("m", "acme", state)["normalized"] == 20.0  # (50 - 10) / (210 - 10); was 0 to 210


_SCORE = st.one_of(st.integers(-1000, 1000), st.floats(-1e6, 1e6, allow_nan=False).map(lambda x: round(x, 2)))


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["sum", "max", "top_k"]),
    st.lists(st.tuples(st.sampled_from("abcdefgh"), _SCORE, st.integers(0, 50), st.booleans()), max_size=60),
    st.sampled_from([0, 3, accounts.BEST_KEPT_FROM]),
)
def test_the_combined_score_kept_per_update_is_the_exact_one_of_the_members(
    combine: str, updates: list[tuple[str, float, int, bool]], best_kept_from: int
) -> None:
    """The roll-up keeps its members' scores in order and their exact sum as updates come (and
    a large account its members in order of score), so an update's cost and naming the best
    members do not grow with the account: what it keeps must be what the members are, after any
    mix of updates, stale ones and leavings, and read back from bytes alike. The best members
    are found by a pass over them, or kept in order from the start or from a few members on."""
    with mock.patch.object(accounts, "BEST_KEPT_FROM", best_kept_from):
        roll_checked(account_engine(combine), combine, updates)


def roll_checked(eng: Any, combine: str, updates: list[tuple[str, float, int, bool]]) -> None:
    rollup = eng.models[0].accounts
    state = None
    for lead, score, at, left in updates:
        state, _ = eng.apply_account("m", "acme", state, MemberScore("m", "acme", lead, score, T0 + at, left))
        scores = sorted(member[0] for member in state.members.values())
        expected = (0 if not scores else max(scores) if combine == "max"
                    else math.fsum(scores[-2:]) if combine == "top_k" else math.fsum(scores))
        assert rollup.score(state) == expected
        assert rollup.score(AccountState.from_bytes(state.to_bytes())) == expected
        # The best members, as summaries and crossings name them: by score, then by lead id.
        assert state.best(3) == sorted(((lead, m[0]) for lead, m in state.members.items()), key=lambda x: (-x[1], x[0]))[:3]


def test_updates_taken_again_after_a_member_left_do_not_bring_it_back_nor_cross_again() -> None:
    eng = account_engine("sum")
    updates = [MemberScore("m", "acme", "u-42@example.com", 60, T0 + 1), MemberScore("m", "acme", "u-42@example.com", 0, T0 + 2, left=True)]
    state, crossed = None, []
    for update in updates:
        state, transitions = eng.apply_account("m", "acme", state, update)
        crossed += transitions
    assert state is not None and [t.to_level for t in crossed] == ["engaged", "quiet"]
    # A worker stopped after writing the account, before committing the updates: they come again.
    again = AccountState.from_bytes(state.to_bytes())
    for update in updates:
        again, transitions = eng.apply_account("m", "acme", again, update)
        assert transitions == []
    assert again == state and again.members == {} and again.crossings == 2
    # The leaving is kept as a digest: the bytes do not hold the lead's id.
    assert b"u-42" not in state.to_bytes()
    # Moving back at the time it left (no newer event since) is a membership again.
    moved_back, _ = eng.apply_account("m", "acme", AccountState.from_bytes(again.to_bytes()),
                                      MemberScore("m", "acme", "u-42@example.com", 60, T0 + 2))
    assert list(moved_back.members) == ["u-42@example.com"]
    # Coming back later is a new membership.
    back, transitions = eng.apply_account("m", "acme", again, MemberScore("m", "acme", "u-42@example.com", 70, T0 + 3))
    assert list(back.members) == ["u-42@example.com"] and [t.to_level for t in transitions] == ["engaged"]


def test_an_account_remembers_its_latest_leavings_only_and_reads_states_written_before_it_kept_them() -> None:
    from scoring.accounts import GONE_MEMORY

    state = AccountState({}, "quiet", 0)
    for n in range(GONE_MEMORY + 10):
        state.update(MemberScore("m", "acme", f"L{n}", 0, T0 + n, left=True))
    assert len(state.gone) == GONE_MEMORY
    assert state.update(MemberScore("m", "acme", "L5", 10, T0 + 1))  # its leaving forgotten: taken
    assert not state.update(MemberScore("m", "acme", f"L{GONE_MEMORY + 5}", 10, T0 + 1))  # from before its leaving
    old = AccountState.from_bytes(b'[1,{"a":[10,5]},"quiet",0]')
    assert (old.members, old.gone) == ({"a": [10, 5]}, {})


def test_updates_of_one_time_taken_again_change_nothing_as_the_revision_orders_them() -> None:
    """A late event's update, or a decay step's, carries the time of the lead's newest event:
    two updates of one time, taken again after a restart, must not move the account back and
    forth (before revisions, the first was taken again, and the account crossed twice more)."""
    eng = account_engine("sum")
    updates = [MemberScore("m", "acme", "a", 30, T0 + 1, revision=1),  # a: 30 at its newest event
               MemberScore("m", "acme", "a", 60, T0 + 1, revision=2),  # a late event: up, engaged
               MemberScore("m", "acme", "a", 20, T0 + 1, revision=3),  # a decay step: down, quiet
               MemberScore("m", "acme", "b", 10, T0 + 1, revision=1),
               MemberScore("m", "acme", "b", 0, T0 + 1, left=True, revision=2),  # b moves away
               MemberScore("m", "acme", "b", 15, T0 + 1, revision=3)]  # and back, with no newer event
    state, crossed = None, []
    for update in updates:
        state, transitions = eng.apply_account("m", "acme", state, update)
        crossed += [t.to_level for t in transitions]
    assert state is not None and crossed == ["engaged", "quiet"]
    assert state.members == {"a": [20, T0 + 1, 3], "b": [15, T0 + 1, 3]}
    for start in range(len(updates)):  # the batch taken again from any of its updates
        again = AccountState.from_bytes(state.to_bytes())
        for update in updates[start:]:
            again, transitions = eng.apply_account("m", "acme", again, update)
            assert transitions == []
        assert again == state
    # An update of the same time and revision with another score (a half-life decay evaluated
    # later, or a state written before revisions) is taken, as one of the same time was before.
    later, _ = eng.apply_account("m", "acme", AccountState.from_bytes(state.to_bytes()), MemberScore("m", "acme", "a", 18, T0 + 1, revision=3))
    assert later.members["a"] == [18, T0 + 1, 3]
    unnumbered, _ = eng.apply_account("m", "acme", None, MemberScore("m", "acme", "a", 30, T0 + 1))
    unnumbered, _ = eng.apply_account("m", "acme", unnumbered, MemberScore("m", "acme", "a", 20, T0 + 1))
    assert unnumbered.members == {"a": [20, T0 + 1]}


def test_a_leaving_is_remembered_with_its_revision_and_read_back_beside_leavings_of_times_only() -> None:
    state = AccountState.from_bytes(b'[1,{"a":[10,5]},"quiet",0,{"' + accounts.kept_key("z").encode() + b'":7}]')
    assert state.update(MemberScore("m", "acme", "a", 0, 5, left=True, revision=4))
    assert not state.update(MemberScore("m", "acme", "a", 10, 5, revision=3))  # from before the leaving
    assert not state.update(MemberScore("m", "acme", "z", 10, 6, revision=9))  # before z's leaving, a time only
    assert state.update(MemberScore("m", "acme", "a", 12, 5, revision=4))  # at the leaving's own order: back
    read = AccountState.from_bytes(state.to_bytes())
    assert read == state and read.gone == {accounts.kept_key("z"): 7, accounts.kept_key("a"): [5, 4]}
    for wrong in (b'{"x":[5]}', b'{"x":[5,"1"]}', b'{"x":"5"}'):
        with pytest.raises(accounts.StateError, match="gone"):
            AccountState.from_bytes(b'[1,{},"quiet",0,' + wrong + b"]")
    with pytest.raises(accounts.StateError, match="revision"):
        AccountState.from_bytes(b'[1,{"a":[10,5,"3"]},"quiet",0]')


def test_a_lead_state_counts_its_changes_and_its_account_updates_carry_the_count() -> None:
    """`LeadState.revision`: one per event counted and per decay step, none for a duplicate or
    a late event; a merge is one change after both; a leaving is the state's next revision."""
    from scoring import identity

    day = 86_400_000
    eng = engine(RULE + '[accounts]\ncombine = "sum"\nbase = "quiet"\nladder = [{ level = "engaged", at = 50 }]\n[decay]\nsteps = [{ idle = "30d", points = -5 }, { idle = "60d", points = -5 }]\n')
    run = Run(eng).apply(ev("p", at=10, account_id="acme", event_id="a"), ev("p", at=2 * day, event_id="b"))
    run.apply(ev("p", at=2 * day, event_id="b"), ev("p", at=0, event_id="late"))  # a duplicate, and one beyond the lateness
    assert len(run.late) == 1 and run.state().revision == 2
    assert [u.revision for u in run.account_updates] == [1, 2]  # the first batch's two events; none of the second's
    state, _ = eng.decay("m", "L1", run.state(), T0 + 63 * day)  # both steps due
    assert state.revision == 4 and eng.decay("m", "L1", state, T0 + 64 * day)[0].revision == 4
    assert eng.member_score("m", "L1", state, state.watermark_ms).revision == 4  # type: ignore[union-attr]
    assert eng.leaving("m", "L1", state, 0).revision == 5  # type: ignore[union-attr]
    other = Run(eng).apply(*[ev("p", at=n, lead="L2") for n in range(7)]).state("L2")
    merged, _ = identity.merge(eng, "m", "L2", other, state, "L1", T0 + 63 * day)
    assert merged.revision == 10  # after the lead's 7 and its 2 steps due by the link's time, and the visitor's 4


def test_a_state_returned_by_a_merge_loop_is_taken_back_where_its_leaving_took_it_out() -> None:
    """A visitor's leaving, then its states sent back as they were (`Engine.returning`): its
    account takes it back, and the updates before the leaving, taken again, do not."""
    eng = account_engine("sum")
    run = Run(eng).apply(ev("p", at=10, account_id="acme"), ev("p", at=20))
    *_, joined = run.account_updates  # after both events
    visitor = run.state()
    leaving = eng.leaving("m", "L1", visitor, T0 + 5)  # the link's time is before its newest event
    state, _ = eng.apply_account("m", "acme", None, joined)
    state, _ = eng.apply_account("m", "acme", state, leaving)  # type: ignore[arg-type]
    assert state.members == {}
    back = eng.returning("m", "L1", visitor, T0 + 5)
    assert back is not None and back.order == leaving.order  # type: ignore[union-attr]
    state, _ = eng.apply_account("m", "acme", state, back)
    assert state.members == {"L1": [20, T0 + 20, 3]}
    assert visitor.revision == 3 and not state.update(joined)


def test_a_lead_beyond_the_member_bound_counts_as_the_bound() -> None:
    # 1,001 events of the largest points a model may give: a score beyond 10^12, which member
    # updates cannot carry (the account stage refused the engine's own update as malformed).
    run = Run(engine('[[rules]]\nname = "p"\nevent = "p"\npoints = 1e9\n[accounts]\nbase = "quiet"\nladder = [{ level = "engaged", at = 50 }]\n'))
    run.apply(*(ev("p", i, account_id="acme") for i in range(1001)))
    assert run.score() > accounts.MAX_MEMBER_POINTS
    update = run.account_updates[-1]
    assert update.score == accounts.MAX_MEMBER_POINTS
    assert msgspec.json.decode(msgspec.json.encode(update), type=MemberScore) == update
    state, _ = run.engine.apply_account("m", "acme", None, update)
    assert AccountState.from_bytes(state.to_bytes()).members == {"L1": [1e12, T0 + 1000, update.revision]}


@pytest.mark.parametrize("combine", ["sum", "max"])
def test_a_whole_member_score_a_stored_state_keeps_as_a_float_is_shown_as_an_integer(combine: str) -> None:
    """A state written while member updates were read as floats holds 67.0: its summary and
    crossings show 67, as a lead's own summary does (README "Topics"), not 67.0."""
    eng = account_engine(combine)
    state = AccountState.from_bytes(AccountState({"lead-42": [67.0, T0], "lead-7": [5.5, T0]}, "quiet", 0).to_bytes())
    shown = eng.account_summary("m", "acme", state)
    assert shown["top_members"] == [{"lead_id": "lead-42", "score": 67}, {"lead_id": "lead-7", "score": 5.5}]
    assert [type(member["score"]) for member in shown["top_members"]] == [int, float]
    assert type(shown["score"]) is (float if combine == "sum" else int)
    _, [crossing] = eng.apply_account("m", "acme", state, MemberScore("m", "acme", "lead-1", 2, T0 + 1))
    named = {"sum": 3, "max": 1, "top_k": 2}[combine]
    assert [type(reason["points"]) for reason in crossing.reasons] == [int, float, int][:named]


# -- decay's account updates: their time and their score belong together ----------------------

_DECAYING = {
    "steps": '[decay]\nsteps = [{ idle = "30d", points = -15 }, { idle = "60d", points = -30 }, { idle = "90d", points = -50 }]\n',
    "half_life": '[decay]\nhalf_life = "10d"\n',
}
_ROLLED = (RULE + '[[rules]]\nname = "visit"\nevent = "visit"\npoints = 40\n'
           '[accounts]\nbase = "quiet"\nhysteresis = 5\nladder = [{ level = "engaged", at = 30 }]\n')


def _member_run(decay: str) -> Run:
    return Run(engine(_ROLLED + _DECAYING[decay])).apply(ev("visit", account_id="acme"))


def _score_at(run: Run, time_ms: int) -> float:
    state, _ = run.engine.decay("m", "L1", run.state(), time_ms)
    return round(run.engine.runtime("m").score(state), 2)


def test_a_sweep_after_downtime_values_a_half_life_member_at_the_last_due_time_it_dates_its_update_at() -> None:
    """A sweep weeks late valued the member at its own time but dated the account's update at
    the first due time it found, so the account crossed on a day with a score of weeks later."""
    run = _member_run("half_life")
    runtime = run.engine.runtime("m")
    state = run.state()
    first_due = runtime.next_due_ms(state)
    assert first_due is not None
    now = T0 + 30 * DAY
    changed = runtime.decay(state, "L1", now, [], swept=True)
    assert changed is not None and first_due < changed <= now
    assert runtime.next_due_ms(state) > now  # every due time by now taken: the state is valued at the last
    member = runtime.member_score("L1", state, state.watermark_ms, changed)
    assert member is not None and member.at_ms == changed and member.score == _score_at(run, changed)


@pytest.mark.parametrize("decay", ["steps", "half_life"])
def test_decay_an_event_brings_forward_crosses_the_account_when_it_was_due_with_its_score_then(decay: str) -> None:
    """No sweep had taken the decay (a worker reading queued events after downtime): the account
    took it with the event's update and crossed at the event's time, 40 days after the step."""
    run = _member_run(decay)
    event_day = 100
    run.apply(ev("p", at=event_day * DAY, account_id="acme"))
    _, crossings = run.engine.apply_account_updates("m", "acme", None, run.account_updates)
    [down] = [(t.direction, t.time_ms, t.score) for t in crossings if t.direction == "down"]
    assert down[1] < T0 + event_day * DAY
    assert down[2] == _score_at(_member_run(decay), down[1])


@settings(max_examples=60, deadline=None)
@given(decay=st.sampled_from(sorted(_DECAYING)), gaps=st.lists(st.integers(1, 80 * 24), min_size=1, max_size=5))
def test_an_accounts_crossings_are_the_same_whether_sweeps_or_events_take_the_decay_due(decay: str, gaps: list[int]) -> None:
    """A sweep at an event's time just before it, or none, gives the account the same crossings:
    the event's own update comes after the decay's, which is dated when it was due."""
    times = [T0]
    for hours in gaps:
        times.append(times[-1] + hours * 3_600_000)
    kinds = ["visit" if n % 3 == 0 else "p" for n in range(len(times))]

    def crossings(swept: bool) -> list[tuple[str, int, float]]:
        run = Run(engine(_ROLLED + _DECAYING[decay]))
        runtime = run.engine.runtime("m")
        for n, (time_ms, kind) in enumerate(zip(times, kinds)):
            state = run.get("m", "L1")
            if swept and state is not None:
                before = runtime.score(state)
                changed = runtime.decay(state, "L1", time_ms, [], swept=True)
                run.store[("m", "L1")] = state.to_bytes()
                if changed is not None and runtime.score(state) != before:
                    run.account_updates.append(runtime.member_score("L1", state, state.watermark_ms, changed))
            run.apply(ev(kind, at=time_ms - T0, event_id=f"e{n}", account_id="acme"))
        _, out = run.engine.apply_account_updates("m", "acme", None, run.account_updates)
        return [(t.to_level, t.time_ms, t.score) for t in out]

    assert crossings(swept=True) == crossings(swept=False)



def test_a_score_between_two_events_is_told_again_after_decay_an_event_brought_forward_told_a_lower_one() -> None:
    """A member's score between two events, equal to the one its account was told before them,
    was not told again, though the step the second event brought forward had told the account a
    lower one in between: the account, down at the step, stayed down at 40 and crossed up only at
    the next event, a day later and at 50."""
    model = (RULE + '[[rules]]\nname = "visit"\nevent = "visit"\npoints = 40\n[[rules]]\nname = "back"\nevent = "back"\npoints = 20\n'
             '[accounts]\nbase = "quiet"\nhysteresis = 5\nladder = [{ level = "engaged", at = 30 }]\n[decay]\nsteps = [{ idle = "30d", points = -20 }]\n')
    events = [ev(kind, at=day * DAY, event_id=f"e{day}", account_id="acme") for kind, day in (("visit", 0), ("back", 31), ("p", 32))]
    one_batch = _account_crossings(events, [], model)
    assert [(level, score, lead) for _, level, lead, score in one_batch] == [("engaged", 40, "L1"), ("quiet", 20, "L1"), ("engaged", 40, "L1")]
    assert one_batch == _account_crossings(events, [1, 2], model)


# -- a model edit that values members anew ---------------------------------------------------

_UNDECAYED = ('[[rules]]\nname = "demo"\nevent = "demo"\npoints = 30\n[[rules]]\nname = "open"\nevent = "open"\npoints = 1\n')
_HALVING = '[decay]\nhalf_life = "5d"\n'


def _edited_accounts(before: str, after: str, members: list[tuple[str, str, int]]) -> tuple[AccountState, list[Any]]:
    """Account acme after members' events (lead, type, day) scored under model `before`, then
    the first decay sweep of model `after` (the edit as a worker applies it: the states read
    back under the new model, swept at the newest event's time plus 2 days, the updates taken
    in the order of the due times they carry, as `Scorer._decay_due` sends them)."""
    run = Run(engine(before, lateness="30d"))
    account: AccountState | None = None
    for lead, kind, day in sorted(members, key=lambda member: member[2]):
        run.apply(ev(kind, at=day * DAY, lead=lead, account_id="acme"))
        account, _ = run.engine.apply_account_updates("m", "acme", account, run.account_updates)
        run.account_updates.clear()
    now = T0 + (max(day for *_, day in members) + 2) * DAY
    edited = engine(after, lateness="30d")
    runtime = edited.runtime("m")
    swept = []
    for lead, *_ in members:
        state = run.state(lead)
        before_score = runtime.score(state)
        changed = runtime.decay(state, lead, now, [], swept=True)
        member = runtime.member_score(lead, state, state.watermark_ms, changed or 0)
        if member is not None and runtime.score(state) != before_score:
            swept.append((changed or now, lead, member))
    swept.sort(key=lambda item: item[:2])
    return edited.apply_account_updates("m", "acme", account, [member for *_, member in swept])


@pytest.mark.parametrize("combine", ['combine = "sum"', 'combine = "top_k"\ntop_k = 2'])
def test_a_half_life_added_with_accounts_crosses_no_account_on_scores_it_halves(combine: str) -> None:
    """The first sweep after `half_life` and `[accounts]` were added in one edit crossed acme up
    to hot at 60.9 on the day x's one point had decayed to 0.9, before y's and z's demo requests
    existed, with their 30 points each as kept before the edit, then down at 34.62 as their own
    decay came in (under top_k, x's update left the two best as they were and crossed it the
    same): under the new model acme was never at 50."""
    accounts_table = f'[accounts]\n{combine}\nbase = "cold"\nladder = [{{ level = "hot", at = 50 }}]\n'
    members = [("x", "open", 0), ("y", "demo", 13), ("z", "demo", 6)]
    state, crossed = _edited_accounts(_UNDECAYED, _UNDECAYED + _HALVING + accounts_table, members)
    assert [(t.from_level, t.to_level, t.score) for t in crossed] == []
    assert state.level == "cold"
    # The control: with the half-life in the model before, the members' scores the account kept
    # were decayed already, and adding [accounts] crossed nothing either.
    _, crossed = _edited_accounts(_UNDECAYED + _HALVING, _UNDECAYED + _HALVING + accounts_table, members)
    assert crossed == []


def test_a_crossing_a_members_decay_makes_is_dated_no_earlier_than_the_events_of_the_scores_it_counts() -> None:
    """With [accounts] in the model, a half-life added took acme down (61 to 60.9) at x's first
    due time, at day 0.8, though the 60.9 counted y's and z's demo requests of days 13 and 6:
    the crossing said acme was at 60.9 a week before it was."""
    accounts_table = '[accounts]\nbase = "cold"\nladder = [{ level = "hot", at = 61 }]\n'
    members = [("x", "open", 0), ("y", "demo", 13), ("z", "demo", 6)]
    _, crossed = _edited_accounts(_UNDECAYED + accounts_table, _UNDECAYED + _HALVING + accounts_table, members)
    assert [(t.from_level, t.to_level, t.score, t.lead_id, t.time_ms) for t in crossed] == [("hot", "cold", 60.9, "x", T0 + 13 * DAY)]
