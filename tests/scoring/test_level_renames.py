"""A ladder edited under leads that hold its levels: a level renamed with `renamed_from` is the
same level under its new name (no crossing), and a lead at a level removed, or renamed without
`renamed_from`, crosses from the level it held to its place on the new ladder at its next change,
so that the crossings a CRM receives chain (each one's from_level the last one's to_level)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scoring import ModelError
from scoring.accounts import AccountState
from scoring.identity import merge
from tests.scoring.support import DAY, HOUR, T0, Run, engine, ev

RULES = '[[rules]]\nname = "up"\nevent = "up"\npoints = 1\n[[rules]]\nname = "down"\nevent = "down"\npoints = -1\n' \
        '[[rules]]\nname = "jump"\nevent = "jump"\npoints = 30\n'
LADDER = '[thresholds]\nbase = "nurture"\n{extra}ladder = [{lines}]\n'
#: The audit's model `lv`: nurture < mql at 25 (hysteresis 5) < sql at 50 (hysteresis 10).
LV = '{ level = "mql", at = 25, hysteresis = 5 }, { level = "sql", at = 50, hysteresis = 10 }'
RENAMED = ('{ level = "marketing_qualified", at = 25, hysteresis = 5, renamed_from = "mql" }, '
           '{ level = "sales_qualified", at = 50, hysteresis = 10, renamed_from = ["sql"] }')
QUIETLY = ('{ level = "marketing_qualified", at = 25, hysteresis = 5 }, '
           '{ level = "sales_qualified", at = 50, hysteresis = 10 }')


def lv(lines: str = LV, extra: str = "", body: str = RULES) -> Any:
    return engine('[model]\nname = "m"\n' + body + LADDER.format(extra=extra, lines=lines), header=False)


def leads(body: str = RULES) -> Run:
    """L1 reached sql, then fell to 41 (sql, within its band); L2 at mql with 26; L3 at mql
    with 21 (within its band)."""
    walks = {"L1": ["jump"] * 2 + ["down"] * 19, "L2": ["up"] * 26, "L3": ["up"] * 26 + ["down"] * 5}
    run = Run(lv(body=body)).apply(*(ev(kind, at=i, lead=lead) for lead, kinds in walks.items() for i, kind in enumerate(kinds)))
    assert [run.state(lead).level for lead in walks] == ["sql", "mql", "mql"]
    run.transitions.clear()
    return run


def crossings(run: Run) -> list[tuple[str | None, str, str, str, float]]:
    return [(t.lead_id, t.from_level, t.to_level, t.direction, t.score) for t in run.transitions]


def one_more_each(run: Run, kind: str = "up") -> Run:
    return run.apply(*(ev(kind, at=HOUR, lead=lead) for lead in ("L1", "L2", "L3")))


def test_a_level_renamed_with_renamed_from_is_the_same_level_and_crosses_under_its_new_name() -> None:
    """Each lead's next event read it at the base (nurture): L1 crossed up to MQL from a
    demotion out of SQL, L2 was handed over as an MQL a second time, L3 became nurture with no
    crossing at all, and the CRM kept its "mql"."""
    run = leads()
    run.engine = lv(RENAMED)
    summary = run.engine.summary("m", "L1", run.state("L1"), T0 + HOUR)  # a read before its next event
    assert summary["level"] == "sales_qualified" and run.state("L1").level == "sql"  # reading changes nothing
    one_more_each(run)
    assert crossings(run) == []
    assert [run.state(lead).level for lead in ("L1", "L2", "L3")] == ["sales_qualified", "marketing_qualified", "marketing_qualified"]
    run.apply(*(ev("down", at=HOUR + i, lead="L1") for i in range(1, 4)))  # 42 -> 39, below 50 - 10
    assert crossings(run) == [("L1", "sales_qualified", "marketing_qualified", "down", 39)]


def test_a_summary_after_the_renamed_level_s_next_event_shows_the_new_name() -> None:
    """The event that adopts the new name changes what the lead shows: the worker publishes its
    summary (CHANGED), though an event of no points changes nothing else."""
    run = leads(RULES + '[[rules]]\nname = "seen"\nevent = "seen"\npoints = 0\n')
    run.engine = lv(RENAMED, body=RULES + '[[rules]]\nname = "seen"\nevent = "seen"\npoints = 0\n')
    result = run.engine.apply_batch([run.engine.parse(ev("seen", at=HOUR, lead="L2"))], run.get)
    assert result.states[("m", "L2")].level == "marketing_qualified" and result.score_changed == {("m", "L2")}
    assert result.transitions == []


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        # Renamed without saying so: the CRM has "mql"/"sql", which no longer exist; down, as the
        # lead was handed over at that level already.
        (QUIETLY, [("L1", "sql", "marketing_qualified", "down", 42), ("L2", "mql", "marketing_qualified", "down", 27),
                   ("L3", "mql", "nurture", "down", 22)]),
        # sql removed: its scores fall to mql, the level below it.
        ('{ level = "mql", at = 25, hysteresis = 5 }', [("L1", "sql", "mql", "down", 42)]),
        # mql removed: L2 and L3 fall to the base; L1 stays at sql.
        ('{ level = "sql", at = 50, hysteresis = 10 }', [("L2", "mql", "nurture", "down", 27), ("L3", "mql", "nurture", "down", 22)]),
    ],
)
def test_a_lead_at_a_level_the_ladder_no_longer_has_crosses_from_it_at_its_next_event(
    lines: str, expected: list[tuple[str, str, str, str, float]],
) -> None:
    run = leads()
    run.engine = lv(lines)
    one_more_each(run)
    assert crossings(run) == expected
    one_more_each(run)  # once placed, a lead crosses only over lines
    assert crossings(run) == expected


def test_an_event_lifting_a_lead_from_a_removed_level_over_a_line_crosses_up() -> None:
    """Placed where its score before the event reaches (L2: 26, the base once mql is gone), the
    lead crosses up when the event takes it over a line: a hand-over it has not had."""
    run = leads()
    run.engine = lv('{ level = "sql", at = 50, hysteresis = 10 }')
    run.apply(ev("jump", at=HOUR, lead="L2"), ev("jump", at=HOUR, lead="L1"))
    assert crossings(run) == [("L2", "mql", "sql", "up", 56)]  # L1, at sql, went on up nowhere


def test_the_base_renamed_with_base_renamed_from_or_without() -> None:
    """Every lead at the base would cross to the new name at its next change without it."""
    run = Run(lv()).apply(ev("up", at=0, lead="L1"))
    quiet = Run(run.engine, dict(run.store))
    run.engine = engine('[model]\nname = "m"\n' + RULES + f'[thresholds]\nbase = "cold"\nbase_renamed_from = "nurture"\nladder = [{LV}]\n',
                        header=False)
    run.apply(ev("up", at=HOUR, lead="L1"))
    assert crossings(run) == [] and run.state().level == "cold"
    quiet.engine = engine('[model]\nname = "m"\n' + RULES + f'[thresholds]\nbase = "cold"\nladder = [{LV}]\n', header=False)
    quiet.apply(ev("up", at=HOUR, lead="L1"))
    assert crossings(quiet) == [("L1", "nurture", "cold", "down", 2)]


STEPS = '[decay]\nsteps = [{ idle = "1d", points = -3 }]\n'


def test_a_decay_step_crosses_from_a_removed_level() -> None:
    run = leads(RULES + STEPS)
    run.engine = lv('{ level = "mql", at = 25, hysteresis = 5 }', body=RULES + STEPS)
    state, out = run.engine.decay("m", "L1", run.state("L1"), T0 + 2 * DAY)
    assert [(t.from_level, t.to_level, t.direction, t.score) for t in out] == [("sql", "mql", "down", 38)]
    assert state.level == "mql"
    assert run.engine.decay("m", "L1", state, T0 + 2 * DAY)[1] == []  # evaluating again changes nothing


def test_a_half_life_sweep_crosses_from_a_removed_level_when_decay_takes_it_through_a_line() -> None:
    half_life = RULES + '[decay]\nhalf_life = "1d"\n'
    run = leads(half_life)
    run.engine = lv('{ level = "mql", at = 25, hysteresis = 5 }', body=half_life)
    state = run.state("L1")  # at removed sql with 41, placed at mql: due when decay takes it below 20
    due = run.engine.next_due_ms("m", state)
    assert due is not None
    state, out = run.engine.decay("m", "L1", state, due)
    assert [(t.from_level, t.to_level, t.direction) for t in out] == [("sql", "nurture", "down")]


def test_a_merge_into_a_lead_at_a_removed_level_crosses_from_it() -> None:
    run = leads()
    run.engine = lv('{ level = "mql", at = 25, hysteresis = 5 }')
    visitor = run.engine.new_state("m")
    merged, out = merge(run.engine, "m", "L1", run.state("L1"), visitor, "anon-1", T0 + HOUR)
    assert [(t.from_level, t.to_level, t.direction) for t in out] == [("sql", "mql", "down")] and merged.level == "mql"


ACCOUNTS = '[accounts]\ncombine = "sum"\nbase = "unaware"\nladder = [{lines}]\n'
ACCOUNT_LADDER = '{ level = "engaged", at = 20 }, { level = "buying", at = 40 }'


def test_an_account_level_renamed_or_removed() -> None:
    """The account ladder takes `renamed_from` too; an account at a level it no longer has
    crosses from it at its next change."""
    def accounts(lines: str) -> Any:
        return engine('[model]\nname = "m"\n' + RULES + LADDER.format(extra="", lines=LV) + ACCOUNTS.format(lines=lines), header=False)

    run = Run(accounts(ACCOUNT_LADDER)).apply(*(ev("up", at=i, account_id="acme") for i in range(45)))
    account, crossed = run.engine.apply_account_updates("m", "acme", None, run.account_updates)
    assert account.level == "buying" and [t.to_level for t in crossed] == ["engaged", "buying"]
    update = run.apply(ev("up", at=HOUR, account_id="acme")).account_updates[-1]
    renamed = accounts('{ level = "engaged", at = 20 }, { level = "ready", at = 40, renamed_from = "buying" }')
    assert renamed.account_summary("m", "acme", account)["level"] == "ready"
    state, out = renamed.apply_account_updates("m", "acme", AccountState.from_bytes(account.to_bytes()), [update])
    assert out == [] and state.level == "ready"
    state, out = accounts('{ level = "engaged", at = 20 }').apply_account_updates("m", "acme", AccountState.from_bytes(account.to_bytes()), [update])
    assert [(t.from_level, t.to_level, t.direction) for t in out] == [("buying", "engaged", "down")]


RULE_LINE = '{{ level = "a", at = 10{extra} }}, {{ level = "b", at = 20 }}'


@pytest.mark.parametrize(
    ("extra", "lines", "fragments"),
    [
        ("", RULE_LINE.format(extra=', renamed_from = "b"'),
         ["m.toml", "[thresholds]", "field 'ladder[1].renamed_from'", "no level of this ladder has now", "'b'"]),
        ("", RULE_LINE.format(extra=', renamed_from = "a"'), ["field 'ladder[1].renamed_from'", "'a'"]),
        ("", RULE_LINE.format(extra=', renamed_from = "nurture"'), ["field 'ladder[1].renamed_from'", "'nurture'"]),
        ('base_renamed_from = "a"\n', RULE_LINE.format(extra=""), ["field 'base_renamed_from'", "level 'nurture'", "'a'"]),
        ('base_renamed_from = "old"\n', RULE_LINE.format(extra=', renamed_from = ["x", "old"]'),
         ["field 'ladder[1].renamed_from'", "one level claims once", "level 'nurture' claims it too", "'old'"]),
        ("", RULE_LINE.format(extra=', renamed_from = ["old", "old"]'), ["field 'ladder[1].renamed_from'", "'old'"]),
        ("", RULE_LINE.format(extra=", renamed_from = []"), ["field 'ladder[1].renamed_from'", "non-empty list"]),
        ("", RULE_LINE.format(extra=', renamed_from = "x\\ny"'), ["field 'ladder[1].renamed_from'", "one line"]),
    ],
)
def test_renamed_from_errors_name_file_ladder_and_field(extra: str, lines: str, fragments: list[str]) -> None:
    with pytest.raises(ModelError) as raised:
        lv(lines, extra=extra)
    for fragment in fragments:
        assert fragment in str(raised.value)


def test_renamed_from_in_an_account_ladder_is_checked_too() -> None:
    with pytest.raises(ModelError, match=r"\[accounts\], field 'ladder\[2\].renamed_from'.*'engaged'"):
        engine('[model]\nname = "m"\n' + RULES + LADDER.format(extra="", lines=LV)
               + ACCOUNTS.format(lines='{ level = "engaged", at = 20 }, { level = "buying", at = 40, renamed_from = "engaged" }'),
               header=False)


_EDITS = {
    "renamed": RENAMED,
    "quietly": QUIETLY,
    "sql removed": '{ level = "mql", at = 25, hysteresis = 5 }',
    "mql removed": '{ level = "sql", at = 50, hysteresis = 10 }',
    "one renamed, one removed": '{ level = "sales_qualified", at = 50, hysteresis = 10, renamed_from = "sql" }',
}


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["up", "down", "jump"]), st.sampled_from(["L1", "L2"])), max_size=30),
       st.sampled_from(sorted(_EDITS)),
       st.lists(st.tuples(st.sampled_from(["up", "down", "jump", "seen"]), st.sampled_from(["L1", "L2"])), max_size=12),
       st.integers(1, 5))
def test_crossings_chain_through_any_ladder_edit(
    before: list[tuple[str, str]], edit: str, after: list[tuple[str, str]], batch: int,
) -> None:
    """Whatever an edit renames or removes, each lead's crossings chain from the base, none
    from a level to itself, and a lead's next change takes it to a level the ladder has. A
    rename with `renamed_from` changes nothing but names: the crossings are those of the
    unedited model, renamed."""
    body = RULES + '[[rules]]\nname = "seen"\nevent = "seen"\npoints = 0\n'
    events = [ev(kind, at=i, lead=lead) for i, (kind, lead) in enumerate(before)]
    later = [ev(kind, at=HOUR + i, lead=lead) for i, (kind, lead) in enumerate(after)]
    run = Run(lv(body=body)).apply(*events, batch=batch)
    run.engine = lv(_EDITS[edit], body=body)
    run.apply(*later, batch=batch)
    # After the edit a level renamed with `renamed_from` is crossed from under its new name.
    renames = {"renamed": {"mql": "marketing_qualified", "sql": "sales_qualified"},
               "one renamed, one removed": {"sql": "sales_qualified"}}.get(edit, {})
    held = {"L1": "nurture", "L2": "nurture"}
    for t in run.transitions:
        was = renames.get(held[t.lead_id], held[t.lead_id]) if t.time_ms >= T0 + HOUR else held[t.lead_id]
        assert t.from_level == was != t.to_level
        held[t.lead_id] = t.to_level
    names = set(run.engine.runtime("m").ladder.names)
    for lead in {lead for _, lead in after} & {key[1] for key in run.store}:
        assert run.state(lead).level in names
    if edit == "renamed":
        unedited = Run(lv(body=body)).apply(*events, *later, batch=batch)
        new = {"mql": "marketing_qualified", "sql": "sales_qualified"}
        renamed = [(t.lead_id, t.from_level, t.to_level, t.direction, t.score) for t in unedited.transitions]
        cut = len([t for t in unedited.transitions if t.time_ms < T0 + HOUR])
        renamed[cut:] = [(lead, new.get(a, a), new.get(b, b), d, s) for lead, a, b, d, s in renamed[cut:]]
        assert crossings(run) == renamed
