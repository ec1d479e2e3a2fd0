"""Repeat behaviour: frequency bonuses, per-window caps, once-per-key de-duplication, ceilings.

Windows are tumbling and calendar aligned in UTC: a "1d" window is a UTC day, a whole number of
weeks starts on Monday 00:00 UTC, other lengths count from the epoch. Aligned windows make every
count a function of the set of events, not of their arrival order, so late events within the
allowed lateness land in the right window and batch boundaries change nothing.

A lead's counters live in `LeadState.windows`: key -> flat list [window index, count, ...] of
the windows still open to events, newest window first (older ones are dropped once they are
beyond the lateness). A bonus's count becomes BONUS_PAID once the bonus is paid in its window
(`bonus_due`). Newest first, an event in time order finds its window at the front, as the
generated code looks for it, and any other window is found by bisection: searched one by one,
a 1-minute cap under a 30-day lateness kept 43,200 windows and each event read them all.

How one occurrence of a rule with limits scores (written inline for each rule by
scoring/compiler.py): a repeated `once_per` value is not a new occurrence at all (no points, no
bonus count); every other occurrence counts towards the bonus, then the cap decides whether it
scores, then the rule's ceiling (`max_points`) clips. Refused occurrences count as capped.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Iterable

import msgspec

from scoring.config import Table, format_duration_ms
from scoring.errors import ModelError
from scoring.state import BONUS_PAID, KEY_CHARS, LeadState, earlier_bonus_count, kept_key, newest_first

if TYPE_CHECKING:
    from scoring.rules import Rule

_DAY_MS = 86_400_000
_WEEK_MS = 7 * _DAY_MS
# 1970-01-01 was a Thursday: shifting by 3 days makes week windows start on Mondays.
_MONDAY_SHIFT_MS = 3 * _DAY_MS

#: How many distinct `once_per` keys a rule remembers per lead (at least this many, at most twice).
ONCE_PER_MEMORY = 100

#: Most windows a cap or bonus counts in per lead: `lateness / window` (rounded up; it keeps one
#: more at most). 1,440 is a 1-minute window under a day of lateness: about 9 KB of a lead's
#: state. A 1-minute cap under 30 days kept 43,200 windows, 260 KB of every active lead's state.
MAX_COUNTER_WINDOWS = 1_440
#: Most windows all the caps and bonuses of a model count in per lead (`lateness / window`,
#: summed): about 90 KB of a lead's state at 6 bytes a window, 260 KB at most (18), within the
#: few hundred KB a state is bounded to (streams/topics.py: the changelog record of a lead holds
#: its states in every model).
MAX_MODEL_WINDOWS = 14_400


@dataclass(frozen=True, slots=True)
class Window:
    """A tumbling window length and its calendar alignment (build with `Window.of`)."""

    length_ms: int
    shift_ms: int

    @classmethod
    def of(cls, length_ms: int) -> Window:
        return cls(length_ms, _MONDAY_SHIFT_MS if length_ms % _WEEK_MS == 0 else 0)

    def index(self, time_ms: int) -> int:
        return (time_ms + self.shift_ms) // self.length_ms

    def end_ms(self, index: int) -> int:
        """When window `index` ends: the first time whose index is higher."""
        return (index + 1) * self.length_ms - self.shift_ms


@dataclass(frozen=True, slots=True)
class Cap:
    """At most `max_scored` scored occurrences per window; the rest count as capped."""

    max_scored: int
    window: Window


@dataclass(frozen=True, slots=True)
class Bonus:
    """`points` once per window in which the rule's occurrences reach `count`."""

    count: int
    window: Window
    points: float


@dataclass(frozen=True, slots=True)
class OncePer:
    """Only the first occurrence per value of a field scores (e.g. one open per e-mail id)."""

    source: str  # "properties" or "traits"
    key: str


def windows_reached(lateness_ms: int, window: Window) -> int:
    """`lateness / window`, rounded up: how many windows an event within the lateness can reach
    besides the newest, so how many a counter keeps per lead (one more at most)."""
    return -(-lateness_ms // window.length_ms)


def check_windows(file: str, rules: Iterable[Rule], lateness_ms: int) -> None:
    """ModelError when a cap or bonus of the rules would keep more than MAX_COUNTER_WINDOWS
    windows per lead under the lateness, naming the rule and field, or all of them more than
    MAX_MODEL_WINDOWS, naming the lateness and the counters that keep most."""
    lateness = format_duration_ms(lateness_ms)
    kept: list[tuple[int, str]] = []
    for rule in rules:
        for field, limit in (("cap", rule.cap), ("bonus", rule.bonus)):
            if limit is None:
                continue
            reached = windows_reached(lateness_ms, limit.window)
            window = format_duration_ms(limit.window.length_ms)
            if reached > MAX_COUNTER_WINDOWS:
                shortest = format_duration_ms(-(-lateness_ms // (MAX_COUNTER_WINDOWS * 1000)) * 1000)  # in whole seconds
                raise ModelError(
                    f"{file}: rule '{rule.name}', field '{field}.window': expected a window of at least {shortest} under "
                    f"the model's lateness of {lateness} (a {field} counts per lead in every window the lateness reaches, "
                    f"lateness / window, at most {MAX_COUNTER_WINDOWS:,}), got '{window}' ({lateness} / {window} = {reached:,})"
                )
            kept.append((reached, f"rule '{rule.name}' {field} {window}: {reached:,}"))
    total = sum(reached for reached, _ in kept)
    if total > MAX_MODEL_WINDOWS:
        most = ", ".join(what for _, what in sorted(kept, key=lambda item: -item[0])[:3])
        raise ModelError(
            f"{file}: [model], field 'lateness': expected a lateness under which the caps and bonuses count in at most "
            f"{MAX_MODEL_WINDOWS:,} windows per lead in all (lateness / window, summed: each lead's state keeps them), "
            f"or longer windows, got '{lateness}' ({total:,} windows; most: {most})"
        )


def parse_cap(table: Table) -> Cap | None:
    cap = table.table("cap")
    if cap is None:
        return None
    cap.check_keys(("max", "window"))
    return Cap(cap.integer("max", minimum=1), Window.of(cap.duration_ms("window")))


def parse_bonus(table: Table) -> Bonus | None:
    bonus = table.table("bonus")
    if bonus is None:
        return None
    bonus.check_keys(("count", "window", "points"))
    return Bonus(bonus.integer("count", minimum=2), Window.of(bonus.duration_ms("window")), bonus.number("points"))


def parse_once_per(table: Table) -> OncePer | None:
    field = table.string("once_per", None)
    if field is None:
        return None
    source, _, key = field.partition(".")
    if source not in ("properties", "traits") or not key:
        raise table.error("once_per", "a field such as 'properties.email_id' or 'traits.email'", field)
    if "." in key:  # read as the field named "plan.name", where a nested plan's name was meant: every occurrence scored
        outer, _, inner = key.partition(".")
        raise table.error("once_per", f"a field at the top of the {source}: a field inside another ({outer}.{inner}) cannot "
                                      f"be de-duplicated on: send it as a field of its own ({outer}_{inner.replace('.', '_')})", field)
    return OncePer(source, key)


def seen_key(event_type: str, once_per: OncePer) -> str:
    """What a lead's state keeps a rule's `once_per` values under: the event type and field the
    rule de-duplicates ("email_open properties.email_id"). Rules of one model that de-duplicate
    the same field of the same event type share them: a value's first occurrence scores in each
    of those rules it matches, its repeats in none. Keyed by the rule's name, as earlier
    versions kept them, a rule renamed in the model file forgot every value it had seen, and
    e-mails opened before scored again."""
    return f"{event_type} {once_per.source}.{once_per.key}"


def adopt_seen(state: LeadState, keys: dict[str, str]) -> None:
    """Keeps a state's `once_per` values where the model de-duplicates them (`keys`: each rule's
    `seen_key` -> itself, and each rule's name, earlier ones too, -> its `seen_key`): moves those
    that a state written by an earlier version keeps under a rule's name to where they are kept
    now, joining any values there (a visitor's merged into a lead's) and keeping the newest
    2 x ONCE_PER_MEMORY, and drops those no rule of the model de-duplicates any more (a rule
    removed, or de-duplicating another event type or field): kept, nothing read them and they
    stayed in the state for good."""
    seen = state.seen
    for old in [old for old in seen if keys.get(old) != old]:
        values = seen.pop(old)
        key = keys.get(old)
        if key is not None:
            seen[key] = join_seen(values, seen.get(key, {}))


def join_seen(older: dict[str, None], newer: dict[str, None]) -> dict[str, None]:
    """Two sets of `once_per` values kept under one key as one, oldest first (`newer`'s order
    wins for a value in both), within the bound `seen_before` keeps: the newest
    2 x ONCE_PER_MEMORY. Joined without it, a merge or a move could keep 400 values, until the
    rule's next new value trimmed them."""
    joined = {**older, **newer}
    return dict.fromkeys(list(joined)[-2 * ONCE_PER_MEMORY :]) if len(joined) > 2 * ONCE_PER_MEMORY else joined


def join_counts(counts: list[int], other: list[int], bonus: bool) -> list[int]:
    """The window counters of one rule counted under two names (an earlier one, see
    scoring.renames) as one: the counts of a window both have add up, and a bonus's window
    (`bonus`) has paid when it paid under either name."""
    return merge_counts(counts, other, _joined_count if bonus else operator.add)


def merge_counts(counts: list[int], other: list[int], both: Callable[[int, int], int]) -> list[int]:
    """The counters of the windows of `counts` and of `other` (newest first), `both(mine, its)`
    the count of a window both have."""
    joined = dict(zip(counts[0::2], counts[1::2]))
    for index, count in zip(other[0::2], other[1::2]):
        mine = joined.get(index)
        joined[index] = count if mine is None else both(mine, count)
    return newest_first(joined)


def _joined_count(one: int, other: int) -> int:
    """Two bonus counts of one window as one (see scoring.state.BONUS_PAID)."""
    if BONUS_PAID in (one, other):
        return BONUS_PAID
    if one >= 0 and other >= 0:
        return one + other
    # Counted by an earlier layout: the sum stays one, judged against the count in force.
    return earlier_bonus_count(sum(count if count >= 0 else earlier_bonus_count(count) for count in (one, other)))


def bump(state: LeadState, key: str, window: Window, time_ms: int, limit: int, lateness_ms: int) -> int:
    """Adds one to the lead's count of the window of `time_ms` unless it has reached `limit`;
    returns the count before the increment (so `limit` or more means the occurrence was refused)."""
    counts, pos = _counter(state, key, window, time_ms, lateness_ms)
    before = counts[pos]
    if before < limit:
        counts[pos] = before + 1
    return before


def bonus_due(state: LeadState, key: str, window: Window, time_ms: int, count: int, lateness_ms: int) -> bool:
    """Counts an occurrence towards the bonus of the window of `time_ms`; True when the bonus is
    due: the window has counted `count` occurrences, or more (an edit lowered `count` after the
    window had passed it), and has not paid it yet. Once paid, the window is marked so
    (BONUS_PAID) and counts no more: an edit that raises `count` does not make it pay again."""
    counts, pos = _counter(state, key, window, time_ms, lateness_ms)
    counted = bonus_count(counts[pos], count)
    if counted == BONUS_PAID:
        counts[pos] = BONUS_PAID
        return False
    counted += 1
    if counted >= count:
        counts[pos] = BONUS_PAID
        return True
    counts[pos] = counted
    return False


def bonus_count(counted: int, count: int) -> int:
    """A bonus counter's count as a bonus of `count` reads it: BONUS_PAID, or the occurrences
    its window has counted. One read from an earlier layout, which stopped counting once it
    paid, has paid if it reached `count`."""
    if counted < BONUS_PAID:
        counted = earlier_bonus_count(counted)
        return BONUS_PAID if counted >= count else counted
    return counted


def join_caps(counts: list[int], other: list[int], cap: Cap) -> tuple[list[int], int]:
    """The cap counters of two profiles of one lead as one (scoring.identity), and how many
    occurrences the two scored past the cap in windows both have: one profile would have
    refused them. The counts of a window add up (a later occurrence there is refused)."""
    over = 0

    def joined(mine: int, its: int) -> int:
        nonlocal over
        # Each profile's count may be past a `max` an edit lowered: those it scored under the old one.
        over += max(min(mine, cap.max_scored) + min(its, cap.max_scored) - cap.max_scored, 0)
        return mine + its

    return merge_counts(counts, other, joined), over


def join_bonuses(counts: list[int], other: list[int], bonus: Bonus, both_counted: int) -> tuple[list[int], int, int]:
    """The bonus counters of two profiles of one lead as one (scoring.identity): the counters,
    the windows whose joined count reaches the bonus's `count` and that neither profile paid
    (their bonus is due now), and those both paid (one profile pays once). A window's count is
    the sum less `both_counted`, the events both profiles counted (at least either count): an
    event counted twice does not complete a bonus."""
    due = twice = 0

    def joined(mine: int, its: int) -> int:
        nonlocal due, twice
        mine, its = bonus_count(mine, bonus.count), bonus_count(its, bonus.count)
        if BONUS_PAID in (mine, its):
            twice += mine == its
            return BONUS_PAID
        count = max(mine, its, mine + its - both_counted)
        if count >= bonus.count:
            due += 1
            return BONUS_PAID
        return count

    return merge_counts(counts, other, joined), due, twice


def _counter(state: LeadState, key: str, window: Window, time_ms: int, lateness_ms: int) -> tuple[list[int], int]:
    """The lead's counters under `key` and the position of the count of the window of
    `time_ms`, a new window counting 0. A new window lowers `windows_drop_ms` when it ends
    first (compaction then looks at it).

    A new newest window also cuts off the windows the lateness no longer reaches: compaction
    does so only after a lead's last event of a batch, and a batch of a lead's events over
    many windows (100,000 events a minute apart, for a 1-minute cap under a day) kept a window
    for each, inserted each at the front of a growing list (1.3 s for them, 90% of it moving
    the list). So a counter holds at most `lateness / window` + 1 windows at every event."""
    index = (time_ms + window.shift_ms) // window.length_ms
    windows = state.windows
    counts = windows.get(key)
    if counts is None:
        first = not windows
        counts = windows[key] = [index, 0]
        pos = 0
    else:
        first = False
        if counts[0] == index:  # the common case: the newest window
            return counts, 1
        pos = window_position(counts, index)
        if pos < len(counts) and counts[pos] == index:
            return counts, pos + 1
        counts[pos:pos] = (index, 0)
        if not pos:  # a new newest window; the windows cut off count nothing `windows_drop_ms` needs
            drop_closed(counts, window.index(state.watermark_ms - lateness_ms))
    # Keep the bound exact when known; 0 (unknown) stays so until compaction recomputes it. A
    # lead's first counter makes it known: its window's end. Left at 0, the compaction after
    # each new lead's first batch walked its counters to learn what this knows (30% of the
    # compactions of `leadstream bench engine`'s workload).
    drop_ms = state.windows_drop_ms
    if drop_ms or first:
        end_ms = (index + 1) * window.length_ms - window.shift_ms
        if end_ms < drop_ms or not drop_ms:
            state.windows_drop_ms = end_ms
    return counts, pos + 1


def drop_closed(counts: list[int], first_open: int) -> None:
    """Cuts the windows older than `first_open` off the end of `counts` (newest first)."""
    if counts[-2] < first_open:
        # Mostly only the oldest has closed (a window opened as it did): no bisection then.
        alone = len(counts) > 2 and counts[-4] >= first_open
        del counts[-2 if alone else window_position(counts, first_open - 1) :]


def window_position(counts: list[int], index: int) -> int:
    """Where window `index` is in `counts` (newest first), or where it goes: the position of the
    first window not newer. Bisection reads about log2(windows) of them; the windows being
    distinct, the one `n` windows older than the newest is at pair `n` or before."""
    newest = counts[0]
    if index >= newest:
        return 0
    lo, hi = 0, min(len(counts) >> 1, newest - index)
    while lo < hi:
        mid = (lo + hi) >> 1
        if counts[mid << 1] > index:
            lo = mid + 1
        else:
            hi = mid
    return lo << 1


def seen_before(state: LeadState, seen_as: str, value: Any) -> bool:
    """Records `value` under `seen_as` (a rule's `seen_key`); True when it had been recorded
    already (a repeat)."""
    key = value if value.__class__ is str else _value_key(value)
    seen = state.seen.get(seen_as)
    if len(key) > KEY_CHARS or not key.isascii():  # kept as its digest, as event ids are
        if seen is not None and key in seen:  # kept whole by an earlier version
            return True
        key = kept_key(key)
    if seen is None:
        state.seen[seen_as] = {key: None}
        return False
    if key in seen:
        return True
    seen[key] = None
    if len(seen) > 2 * ONCE_PER_MEMORY:
        # Forget the oldest half at once, so trimming costs once per ONCE_PER_MEMORY new keys.
        state.seen[seen_as] = dict.fromkeys(list(seen)[ONCE_PER_MEMORY:])
    return False


_encode_sorted = partial(msgspec.json.encode, order="sorted")


def _value_key(value: Any) -> str:
    """The key of a `once_per` value that is not a text: the digest of its JSON, marked so that
    the number 7 is not the text "7", with 1.0 and 1 one number as conditions compare them."""
    if value.__class__ is float and value.is_integer():
        value = int(value)
    try:
        text = hex(value) if value.__class__ is int else _encode_sorted(value).decode()  # hex: str() refuses 4,300 digits
    except ValueError:  # an integer of over 4,300 digits inside an array or object: no key tells such values apart
        text = "unwritable"
    return kept_key("json:" + text)
