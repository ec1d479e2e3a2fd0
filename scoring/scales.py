"""Scales: 0-100 normalisation, and bands that label a number (fit grade, engagement,
temperature).

Bands are written as `A = { min = 40 }`, `B = { min = 20, below = 40 }`, ..., and must tile the
number line: exactly one band without `min` (the lowest), one without `below` (the highest),
and each band's `below` equal to the next band's `min`. An overlap or a gap is an error, so
every score has exactly one label.

A label is that of the exact number, and the number shown beside it is rounded but never across
one of the lines of its label (`held`): 29.997 points under an engagement band from 30 are shown
29.99 beside the band below 30, not 30.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Iterable

from scoring.config import Table
from scoring.errors import ModelError
from scoring.thresholds import TOLERANCE


@dataclass(frozen=True, slots=True)
class Bands:
    """Labels from lowest to highest; `starts[i]` is where label i begins (starts[0] is -inf).

    A value is in a band from TOLERANCE below its `min`, as a score is on a threshold line: fit
    points of 0.3 and -0.1 are 0.19999999999999998 in binary, and must earn the band at 0.2 that
    the fit rows shown with them add up to."""

    labels: tuple[str, ...]
    starts: tuple[float, ...]
    #: `starts` less TOLERANCE.
    lows: tuple[float, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "lows", tuple(start - TOLERANCE for start in self.starts))

    def label(self, value: float) -> str:
        # The last band starting at or below the value (lows[0] is -inf, so there is one).
        return self.labels[bisect_right(self.lows, value) - 1]


@dataclass(frozen=True, slots=True)
class Scale:
    """Maps raw points linearly to 0-100: `zero_at` points is 0, `hundred_at` is 100, clipped."""

    zero_at: float
    hundred_at: float

    def percent(self, points: float) -> float:
        """The points on the 0-100 scale, exact (clipped to 0-100): the hundredfold first, so
        that 51 of 80 points is 63.75 exactly; as 100 * (51 / 80) it was 63.74999..."""
        percent = 100 * (points - self.zero_at) / (self.hundred_at - self.zero_at)
        return min(max(percent, 0.0), 100.0)

    def normalize(self, points: float) -> float:
        """The points on the 0-100 scale, to one decimal, a half rounded up: 51 of 80 points
        (63.75) is 63.8, as 47 of 80 (58.75) is 58.8."""
        return _tenth(self.percent(points))

    def placed(self, points: float, bands: Bands | None) -> tuple[float, str | None]:
        """The points on the 0-100 scale as shown (`normalize`) and their band of `bands` (the
        model's [temperature]): the band of the exact value, and the value shown never rounded
        into another (34.96 of 100 points is cold below 35, shown 34.9, not 35.0), nor up to 100
        short of `hundred_at`: by default that is the top line, and a lead a hair below it read
        100.0 beside the level under it."""
        percent = self.percent(points)
        if bands is None:
            return held(percent, _tenth(percent), _FULL, 10), None
        return held(percent, _tenth(percent), (*bands.lows[1:], *_FULL), 10), bands.label(percent)


#: 100 on the 0-100 scale, less TOLERANCE as a line is (`held`).
_FULL = (100.0 - TOLERANCE,)


def _tenth(percent: float) -> float:
    """To one decimal, a half rounded up (`round` takes a half to the even tenth)."""
    return math.floor(10 * percent + 0.5) / 10


def held(value: float, rounded: float, lows: Iterable[float], step: int) -> float:
    """`rounded` (`value` to 1/`step`), or, where that is across one of `lows` (lines less their
    TOLERANCE, as `Bands.lows` and `Ladder.up` keep them) from `value`, `value` cut to 1/`step`
    towards itself: so a label of the exact value is that of the number shown. A line it has
    not reached is not reached by the number shown (29.997 is 29.99 under a line at 30), and
    one it has (a line of three decimals, 20.004, at 20.0042) is not left (20.01)."""
    if rounded > value:
        if any(value < low <= rounded for low in lows):
            return math.floor(value * step) / step
    elif rounded < value and any(rounded < low <= value for low in lows):
        return math.ceil(value * step) / step
    return rounded


def parse_scale(table: Table | None, default_hundred_at: float, default_zero_at: float = 0) -> Scale:
    """The 0-100 scale; a bound the table leaves out is its default."""
    if table is None:
        return Scale(default_zero_at, default_hundred_at)
    table.check_keys(("zero_at", "hundred_at"))
    zero_at = table.number("zero_at", default_zero_at)
    hundred_at = table.number("hundred_at", default_hundred_at)
    if hundred_at <= zero_at:
        if not table.has("hundred_at"):
            raise table.error("zero_at", f"a number below hundred_at, which is {hundred_at:g} when not given", zero_at)
        raise table.error("hundred_at", f"a number above zero_at ({zero_at})", hundred_at)
    return Scale(zero_at, hundred_at)


def parse_bands(table: Table | None, required_labels: tuple[str, ...] | None = None) -> Bands | None:
    """Bands from a table of `label = { min = .., below = .. }`; `required_labels`, when given,
    is the exact set of labels allowed, best first (e.g. A, B, C, D)."""
    if table is None:
        return None
    if required_labels is not None:
        table.check_keys(required_labels)
        missing = [label for label in required_labels if label not in table.data]
        if missing:
            raise table.error(missing[0], f"a band for every one of {', '.join(required_labels)}")
    if not table.data:  # e.g. a file saved half-way, right after the table's header
        raise ModelError(f"{table.file}: {table.where}: expected at least one band such as cold = {{ below = 35 }}, got none")
    bands = []
    for label in table.data:
        band = table.table(label)
        if band is None:
            raise table.error(label, "a band such as { min = 20, below = 40 }")
        band.check_keys(("min", "below"))
        low, high = band.number("min", float("-inf")), band.number("below", float("inf"))
        if high <= low:  # no score would ever get the label
            raise band.error("below", f"a number above min ({low:g})", high)
        bands.append((low, high, label, band))
    bands.sort(key=lambda b: (b[0], b[1]))
    for (low, high, label, band), (next_low, _, next_label, next_band) in zip(bands, bands[1:]):
        if next_low == float("-inf"):  # two bands without a min
            raise next_band.error("min", f"a min (only the lowest band leaves it out, and {label} is lower), such as min = {high:g}")
        if high > next_low:
            raise band.error("below", f"at most {next_label}.min ({next_low:g}): bands {label} and {next_label} overlap", high)
        if high < next_low:
            raise band.error("below", f"{next_label}.min ({next_low:g}): there is a gap between {label} and {next_label}", high)
    if bands[0][0] != float("-inf"):
        raise bands[0][3].error("min", "no min on the lowest band, so every score has a label", bands[0][0])
    if bands[-1][1] != float("inf"):
        raise bands[-1][3].error("below", "no below on the highest band, so every score has a label", bands[-1][1])
    labels = tuple(b[2] for b in bands)
    if required_labels is not None and labels != tuple(reversed(required_labels)):
        raise table.error(labels[-1], f"bands ordered best first as {', '.join(required_labels)}")
    return Bands(labels, tuple(b[0] for b in bands))
