"""Typed reading of a model file's TOML tables, with errors that name file, place and field.

Every value a model file holds is read through a `Table`, so every mistake a marketing-ops
person can make is reported the same way: `b2b.toml: rule 'pricing page', field 'cap.window':
expected a positive duration such as '7d', '12h' or '30m', got '-1d'`.
"""

from __future__ import annotations

import difflib
import math
import re
from datetime import date, datetime, time
from typing import Any, Callable, Iterable

from scoring.errors import ModelError

_REQUIRED: Any = object()

_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w)")
_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
#: Bounds of a model's numbers of points (points, lines, bands, scale ends) and durations. A
#: billion points is far beyond any model and keeps the sums a lead or account accumulates within
#: what their states and member updates carry (scoring/accounts.py: 10^12); a century is beyond
#: any window, lateness or half-life, and keeps the times computed from one within 64 bits.
MAX_POINTS = 1_000_000_000
MAX_DURATION_MS = 36_500 * 86_400_000
#: Most characters of a text a model file gives (a name, an event type, a level, a field): rule
#: names are kept in every lead's history and carried by every crossing's reasons, and a rule
#: named with 2,000,000 characters made a crossing of 4 MB, beyond what Kafka takes in a
#: message. As many as an event's `type` may have (scoring.events.MAX_ID_CHARS), so every type
#: an event can carry can be named. A model's `description`, for people only, may be longer.
MAX_TEXT_CHARS = 256
MAX_DESCRIPTION_CHARS = 4_096
DURATION_HINT = "a positive duration of at most 36500d such as '7d', '12h' or '30m' (units: ms, s, m, h, d, w)"


#: What a user most often did, by the start of tomllib's message (it names line and column only).
_TOML_HINTS = (
    (("Invalid value", "Expected newline or end of document after a statement"),
     "texts, durations and dates go in straight double quotes (\"1d\", \"Pricing\"; not “curly” ones), "
     "true and false in lower case, one key = value a line"),
    (("Invalid initial character for a key part", "Expected '=' after a key"),
     "an inline table { ... } is written on one line, without a comma after its last entry"),
    (("Cannot declare",), "a [table] appears once a file; [[rules]] and [[fit]] are the blocks that repeat"),
    (("Cannot overwrite a value",), "a key is given twice in one table"),
    (("Unclosed array", "Unclosed inline table"), "a [ or { is not closed"),
)
_TOML_LINE = re.compile(r"at line (\d+), column \d+")


def toml_problem(exc: Exception, text: str, quote: bool = True) -> str:
    """tomllib's error, the line it names quoted (unless `quote` is false: a file of secrets),
    and what to write instead when the mistake is a usual one."""
    problem = str(exc)
    line = _TOML_LINE.search(problem)
    # As tomllib counts lines: splitlines() also split at U+2028, U+2029 and U+0085, which a
    # comment or text may hold, and the line quoted was another than the one named.
    lines = text.split("\n")
    if quote and line is not None and 0 < int(line.group(1)) <= len(lines):
        written = lines[int(line.group(1)) - 1].strip()
        problem += f": {written[:120]!r}" + (" ..." if len(written) > 120 else "")
    for starts, hint in _TOML_HINTS:
        if problem.startswith(starts):
            return f"{problem} ({hint})"
    return problem


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """` (did you mean X?)` for the known name closest to a misspelt one, or nothing."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.8)
    return f" (did you mean {close[0]}?)" if close else ""


def not_utf8(exc: UnicodeDecodeError) -> str:
    """Where a file's bytes stop being UTF-8, as a line an editor shows."""
    data = exc.object if isinstance(exc.object, bytes) else bytes(exc.object)
    line = data[:exc.start].count(b"\n") + 1
    return f"not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}): save the file as UTF-8"


def parse_duration_ms(text: str) -> int | None:
    """Milliseconds of a duration like '7d'; None when the text is not a positive duration of at
    most MAX_DURATION_MS."""
    match = _DURATION.fullmatch(text.strip())
    if match is None or not match.group(1).isascii():  # \d takes other scripts' digits too
        return None
    ms = int(match.group(1)) * _UNIT_MS[match.group(2)]
    return ms if 0 < ms <= MAX_DURATION_MS else None


def format_duration_ms(ms: int) -> str:
    """A duration as a model file writes it, in the largest unit up to days that divides it
    ('30d', '90m'): weeks are read, but people count decay and half-lives in days."""
    for unit in ("d", "h", "m", "s"):
        if ms % _UNIT_MS[unit] == 0:
            return f"{ms // _UNIT_MS[unit]}{unit}"
    return f"{ms}ms"


def is_number(value: object) -> bool:
    # bool is an int subclass, but `points = true` is a mistake, not 1 point. TOML also reads
    # `inf`, `nan` and 1e400 (infinite) as floats: no score, line or bound can be one of those.
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def toml_value(value: Any) -> str:
    """A value read from a model file as the file writes it, for error messages: texts quoted
    as Python quotes them (the messages have always shown 'ten'), but `true` where Python
    writes True, a date-time in ISO form, and lists and tables of those."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(map(toml_value, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key} = {toml_value(item)}" for key, item in value.items()) + "}"
    return repr(value)


#: Most characters of a value an error message quotes: a [filter] product list of 20,000 texts
#: with one number among them was quoted whole, 189 KB in one message (a line of the worker's log,
#: its /models/ view), which did not say where in it the mistake was.
MAX_QUOTED_CHARS = 300


def quoted(value: Any) -> str:
    """`toml_value`, cut to MAX_QUOTED_CHARS with the length it has whole."""
    written = toml_value(value)
    if len(written) <= MAX_QUOTED_CHARS:
        return written
    return f"{written[:MAX_QUOTED_CHARS]} ... ({len(written):,} characters)"


def first_wrong(items: list[Any], right: Callable[[Any], bool]) -> int | None:
    """The index of the first item `right` refuses, None when it refuses none."""
    return next((n for n, item in enumerate(items) if not right(item)), None)


class Table:
    """One TOML table of a model file, knowing where it sits for error messages.

    `where` names the place ("rule 'pricing page'", "[decay]"); `prefix` is prepended to field
    names of nested tables ("cap." for the `cap` table of a rule).
    """

    __slots__ = ("file", "where", "data", "prefix")

    def __init__(self, file: str, where: str, data: dict[str, Any], prefix: str = "") -> None:
        self.file = file
        self.where = where
        self.data = data
        self.prefix = prefix

    def error(self, key: str, expected: str, got: Any = _REQUIRED, wrong: int | None = None) -> ModelError:
        """The error of a field; `wrong` is the index of the item of the list `got` that is wrong."""
        found = "" if got is _REQUIRED else f", got {quoted(got)}"
        if wrong is not None:
            found += f" (item {wrong + 1:,} of {len(got):,} is {quoted(got[wrong])})"
        return ModelError(f"{self.file}: {self.where}, field '{self.prefix}{key}': expected {expected}{found}")

    def check_keys(self, allowed: Iterable[str]) -> None:
        """Unknown keys are errors: a misspelt option must not be silently ignored."""
        allowed = tuple(allowed)
        for key in self.data:
            if key not in allowed:
                raise ModelError(
                    f"{self.file}: {self.where}, field '{self.prefix}{key}': unknown field{did_you_mean(key, allowed)} "
                    f"(expected one of: {', '.join(allowed)})"
                )

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str, default: Any = _REQUIRED) -> Any:
        if key in self.data:
            return self.data[key]
        if default is _REQUIRED:
            raise self.error(key, "a value (this field is required)")
        return default

    def string(self, key: str, default: Any = _REQUIRED, max_chars: int = MAX_TEXT_CHARS) -> Any:
        value = self.raw(key, default)
        if value is not default and (not isinstance(value, str) or not value.strip() or not value.isprintable()
                                     or len(value) > max_chars):
            raise self.error(key, f"a non-empty text on one line of at most {max_chars:,} characters", value)
        return value

    def number(self, key: str, default: Any = _REQUIRED, minimum: float | None = None) -> Any:
        value = self.raw(key, default)
        if value is default:
            return value
        if not is_number(value):
            raise self.error(key, "a finite number", value)
        if minimum is not None and value < minimum:
            raise self.error(key, f"a number of at least {minimum}", value)
        if not -MAX_POINTS <= value <= MAX_POINTS:
            raise self.error(key, f"a number from {-MAX_POINTS:,} to {MAX_POINTS:,}", value)
        return value

    def integer(self, key: str, default: Any = _REQUIRED, minimum: int = 0, maximum: int | None = None) -> Any:
        value = self.raw(key, default)
        if value is default:
            return value
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum or (maximum is not None and value > maximum):
            expected = f"a whole number of at least {minimum}" if maximum is None else f"a whole number from {minimum} to {maximum}"
            raise self.error(key, expected, value)
        return value

    def duration_ms(self, key: str, default: Any = _REQUIRED) -> Any:
        value = self.raw(key, default)
        if value is default:
            return value
        duration = parse_duration_ms(value) if isinstance(value, str) else None
        if duration is None:
            raise self.error(key, DURATION_HINT, value)
        return duration

    def strings(self, key: str, default: Any = _REQUIRED) -> Any:
        """A text or a list of texts, as a tuple (one text is a list of one)."""
        value = self.raw(key, default)
        if value is default:
            return value
        items = [value] if isinstance(value, str) else value
        wrong = first_wrong(items, _text) if isinstance(items, list) else None
        if not isinstance(items, list) or not items or wrong is not None:
            raise self.error(key, "a text or a non-empty list of texts", value, None if isinstance(value, str) else wrong)
        return tuple(items)

    def table(self, key: str, where: str | None = None) -> Table | None:
        """A nested table, or None when absent; `where` starts a new place (a section)."""
        value = self.raw(key, None)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self.error(key, "a table", value)
        if where is not None:
            return Table(self.file, where, value)
        return Table(self.file, self.where, value, f"{self.prefix}{key}.")

    def tables(self, key: str) -> list[dict[str, Any]]:
        """An array of tables (`[[rules]]`), as plain dicts for the caller to name."""
        value = self.raw(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.error(key, "an array of tables ([[" + key + "]] sections)", value)
        return value
