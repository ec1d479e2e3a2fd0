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
