"""Semantic 6: an ordered ladder with hysteresis; each crossing, up or down, is one transition
record carrying lead, model, levels, score, grade, time and the top reasons."""

from __future__ import annotations

import pytest

from tests.scoring.support import DAY, T0, Run, engine, ev

RULES = (
    '[[rules]]\nname = "up"\nevent = "up"\npoints = 1\n'
    '[[rules]]\nname = "down"\nevent = "down"\npoints = -1\n'
    '[[rules]]\nname = "jump"\nevent = "jump"\npoints = 70\n'
)
LADDER = '[thresholds]\nbase = "nurture"\nhysteresis = 5\nladder = [{ level = "mql", at = 20 }, { level = "sql", at = 60, hysteresis = 10 }]\n'


def ladder_engine():
    return engine('[model]\nname = "m"\n' + RULES + LADDER, header=False)


def walk(steps: str) -> Run:
    """Events from a string: '+' one point up, '-' one point down, 'J' seventy up."""
    kinds = {"+": "up", "-": "down", "J": "jump"}
    return Run(ladder_engine()).apply(*(ev(kinds[c], at=i) for i, c in enumerate(steps)))


@pytest.mark.parametrize(
    ("steps", "crossings"),
    [
        ("+" * 19, []),
        ("+" * 20, [("nurture", "mql")]),
        ("+" * 20 + "-+-+-+", [("nurture", "mql")]),  # wobbling at the line: no flapping
        ("+" * 20 + "-" * 5, [("nurture", "mql")]),  # 15: not below 20 - 5
        ("+" * 20 + "-" * 6, [("nurture", "mql"), ("mql", "nurture")]),  # 14
        ("+" * 20 + "-" * 6 + "+" * 5, [("nurture", "mql"), ("mql", "nurture")]),  # back at 19
        ("+" * 20 + "-" * 6 + "+" * 6, [("nurture", "mql"), ("mql", "nurture"), ("nurture", "mql")]),
        ("J", [("nurture", "sql")]),  # two lines at once: one transition
        ("J" + "-" * 20, [("nurture", "sql")]),  # 50: not below 60 - 10
        ("J" + "-" * 21, [("nurture", "sql"), ("sql", "mql")]),
        ("J" + "-" * 56, [("nurture", "sql"), ("sql", "mql"), ("mql", "nurture")]),
    ],
)
def test_ladder_with_hysteresis(steps: str, crossings: list[tuple[str, str]]) -> None:
    assert walk(steps).levels() == crossings


def test_transition_record() -> None:
    run = Run(ladder_engine()).apply(
        ev("identify", traits={"email": "jane@globex.com"}, account_id="globex"),
        *(ev("up", at=i + 1) for i in range(19)),
        ev("jump", at=100),
    )
    (record,) = [t.to_dict() for t in run.transitions]
    assert record == {
        "id": record["id"],
        "kind": "lead",
        "model": "m",
        "lead_id": "L1",
        "account_id": "globex",
        "from_level": "nurture",
        "to_level": "sql",
        "direction": "up",
        "score": 89,
        "normalized": 100.0,
        "grade": None,
        "engagement": None,
        "cell": None,
        "temperature": None,
        "time": T0 + 100,
        "reasons": [{"rule": "jump", "points": 70}, {"rule": "up", "points": 19}],
        "traits": {"email": "jane@globex.com"},
    }
    assert len(record["id"]) == 40


def test_transition_ids_are_deterministic_and_distinct() -> None:
    first = walk("+" * 20 + "-" * 6 + "+" * 6)
    again = walk("+" * 20 + "-" * 6 + "+" * 6)
    ids = [t.id for t in first.transitions]
    assert ids == [t.id for t in again.transitions]
    assert len(set(ids)) == 3


def test_a_lead_whose_state_was_forgotten_crosses_with_new_ids_when_it_comes_back() -> None:
    first = walk("+" * 20)
    # Forgotten (or merged into another lead): its state is gone, and the same lead id, later,
    # counts its crossings from 1 again. Connectors that delivered the first life's crossing
    # must not take the second's for it.
    later = Run(ladder_engine()).apply(*(ev("up", at=DAY + i) for i in range(20)))
    (before,), (after,) = first.transitions, later.transitions
    assert (before.lead_id, before.sequence) == (after.lead_id, after.sequence) == ("L1", 1)
    assert before.id != after.id


def test_direction_down() -> None:
    (_, down) = walk("+" * 20 + "-" * 6).transitions
    assert (down.direction, down.score, down.to_level) == ("down", 14, "nurture")


def test_fractional_points_reach_a_line_their_decimal_sum_reaches() -> None:
    """0.3 - 0.1 is 0.19999999999999998 in binary: still on the line at 0.2, as its reader sees it."""
    rules = '[[rules]]\nname = "a"\nevent = "a"\npoints = 0.3\n[[rules]]\nname = "b"\nevent = "b"\npoints = -0.1\n'
    ladder = '[thresholds]\nbase = "x"\nladder = [{ level = "y", at = 0.2 }, { level = "z", at = 0.5 }]\n'
    run = Run(engine('[model]\nname = "m"\n' + rules + ladder, header=False)).apply(ev("a", at=0), ev("b", at=1))
    assert run.levels() == [("x", "y")] and run.state().level == "y"
    rising = Run(engine('[model]\nname = "m"\n' + rules + ladder, header=False))
    rising.apply(*(ev("b", at=i) for i in range(3)), *(ev("a", at=10 + i) for i in range(2)), *(ev("b", at=20 + i) for i in range(4)))
    # Clipped at the floor, then 0.3 (y), 0.6 (z), 0.49999999999999994 (still z: on its line), 0.4 (y), and
    # 0.19999999999999996 (still y)
    assert rising.levels() == [("x", "y"), ("y", "z"), ("z", "y")]


def test_a_late_event_crosses_at_its_own_time_before_the_crossing_published_earlier() -> None:
    # Why consumers order a lead's crossings by offset, not by time (README, "Topics").
    run = Run(ladder_engine()).apply(ev("jump", at=DAY), ev("down", at=DAY // 2), *(ev("down", at=DAY // 2 + i) for i in range(1, 21)))
    assert [(t.to_level, t.time_ms) for t in run.transitions] == [("sql", T0 + DAY), ("mql", T0 + DAY // 2 + 20)]
