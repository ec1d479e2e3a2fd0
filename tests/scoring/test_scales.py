"""Semantic 7: raw points, 0-100 normalised, letter grade and temperature, per model."""

from __future__ import annotations

import pytest

from tests.scoring.support import Run, engine, ev

SCALES = (
    '[[rules]]\nname = "p"\nevent = "p"\npoints = 10\n'
    '[[fit]]\nname = "vp"\npoints = 12\ntraits.title = { words = ["vp"] }\n'
    "[scale]\nzero_at = 10\nhundred_at = 110\n"
    '[temperature]\ncold = { below = 30 }\nwarm = { min = 30, below = 70 }\nhot = { min = 70 }\n'
    '[grades]\nA = { min = 10 }\nB = { min = 5, below = 10 }\nC = { min = 0, below = 5 }\nD = { below = 0 }\n'
)


@pytest.mark.parametrize(
    ("visits", "vp", "score", "normalized", "temperature", "grade"),
    [
        (0, False, 0, 0.0, "cold", "C"),
        (1, False, 10, 0.0, "cold", "C"),
        (4, False, 40, 30.0, "warm", "C"),
        (7, True, 82, 72.0, "hot", "A"),
        (20, True, 212, 100.0, "hot", "A"),
    ],
)
def test_every_scale(visits: int, vp: bool, score: float, normalized: float, temperature: str, grade: str) -> None:
    run = Run(engine(SCALES)).apply(ev("identify", traits={"title": "VP Sales" if vp else "Engineer"}))
    run.apply(*(ev("p", at=i + 1) for i in range(visits)))
    summary = run.engine.summary("m", "L1", run.state(), run.state().watermark_ms)
    assert (summary["score"], summary["normalized"], summary["temperature"], summary["grade"]) == (
        score,
        normalized,
        temperature,
        grade,
    )


def test_default_scale_puts_the_top_line_at_100() -> None:
    run = Run(engine('[[rules]]\nname = "p"\nevent = "p"\npoints = 15\n')).apply(ev("p"), ev("p"))
    assert run.engine.summary("m", "L1", run.state(), 0)["normalized"] == 50.0  # sql at 60


def test_a_scale_table_without_hundred_at_keeps_the_top_line_at_100() -> None:
    run = Run(engine('[[rules]]\nname = "p"\nevent = "p"\npoints = 15\n[scale]\nzero_at = 10\n')).apply(ev("p"), ev("p"))
    assert run.engine.summary("m", "L1", run.state(), 0)["normalized"] == 40.0  # (30 - 10) / (60 - 10), sql at 60


def test_fractional_points_reach_a_band_their_decimal_sum_reaches() -> None:
    # 0.7 + 0.1 is 0.7999999999999999 and 0.3 - 0.1 is 0.19999999999999998 in binary: the lead
    # shown 0.8 behaviour points and fit rows of 0.3 and -0.1 is in the bands at 0.8 and 0.2.
    bands = (
        '[[rules]]\nname = "a"\nevent = "a"\npoints = 0.7\n'
        '[[rules]]\nname = "b"\nevent = "b"\npoints = 0.1\n'
        '[[fit]]\nname = "vp"\npoints = 0.3\ntraits.title = "vp"\n'
        '[[fit]]\nname = "free"\npoints = -0.1\ntraits.email = { domain = "free" }\n'
        '[grades]\nA = { min = 0.3 }\nB = { min = 0.2, below = 0.3 }\nC = { min = 0, below = 0.2 }\nD = { below = 0 }\n'
        '[engagement]\n1 = { min = 0.8 }\n2 = { min = 0.5, below = 0.8 }\n3 = { min = 0.2, below = 0.5 }\n4 = { below = 0.2 }\n'
    )
    run = Run(engine(bands)).apply(ev("identify", traits={"title": "vp", "email": "jane@gmail.com"}), ev("a", at=1), ev("b", at=2))
    summary = run.engine.summary("m", "L1", run.state(), run.state().watermark_ms)
    assert (summary["grade"], summary["engagement"], summary["cell"]) == ("B", 1, "B1")


@pytest.mark.parametrize(("points", "shown"), [(51, 63.8), (47, 58.8), (1, 1.3), (0, 0.0), (80, 100.0), (90, 100.0), (-5, 0.0)])
def test_the_0_100_scale_shows_one_decimal_a_half_rounded_up(points: float, shown: float) -> None:
    # 51 of 80 points showed 63.7 (100 * (51 / 80) is 63.74999...), while 47 of 80 showed 58.8.
    from scoring.scales import Scale

    assert Scale(0, 80).normalize(points) == shown


@pytest.mark.parametrize("bands", [None, "temperature"])
def test_the_0_100_value_reaches_100_only_at_hundred_at(bands: str | None) -> None:
    # The default scale's 100 is the top line: 35.669 points under a top line at 35.67 showed
    # normalized 100.0 beside the level under it.
    from scoring.scales import Bands, Scale

    temperature = Bands(("cold", "hot"), (float("-inf"), 50.0)) if bands else None
    scale = Scale(0, 35.67)
    assert scale.placed(35.669, temperature)[0] == 99.9
    assert scale.placed(35.67, temperature)[0] == 100.0
    assert scale.placed(40, temperature)[0] == 100.0
    assert scale.placed(35.66, temperature)[0] == 99.9  # 99.97 rounds to 100.0: held


def test_a_lead_below_the_default_scales_top_line_is_not_shown_at_100() -> None:
    header = '[model]\nname = "m"\n[thresholds]\nbase = "low"\nladder = [{ level = "top", at = 35.67 }]\n'
    run = Run(engine(header + '[[rules]]\nname = "p"\nevent = "p"\npoints = 35.669\n', header=False)).apply(ev("p"))
    summary = run.engine.summary("m", "L1", run.state(), 0)
    assert (summary["level"], summary["normalized"]) == ("low", 99.9)
