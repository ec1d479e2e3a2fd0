"""Per (model, lead) state: what the engine remembers about a lead, and its compact bytes.

The stream worker keeps millions of these in Faust tables and reads, updates and writes back
each changed one once per batch, so decoding and encoding cost as much as scoring. The bytes are
one orjson array of plain values, decoded by one call into the slots of a `LeadState` and
encoded by one call from them; the bounded logs (recent event ids, `once_per` keys, history) are
single strings of records separated by U+007F rather than JSON lists, because one string
decodes about five times faster than a list of the same items.

A layout of raw parts sliced by offsets, with the maps decoded only when an event touches them,
was measured and did not pay in CPython 3.11: the slicing, offsets and lazy accessors cost more
bytecode per state than orjson spends decoding the maps it skips (5-10% slower end to end).

Bounds (what keeps a state small however active the lead):
- recent event ids: two generations of at most `remember_events` ids each; a generation is
  dropped when its newest event is older than the lead's newest event minus the allowed
  lateness (a replay of such an event is late anyway), and the older generation is dropped when
  the newer one fills up. So at least the last `remember_events` ids, and every id younger than
  the lateness up to that count, are recognised as duplicates.
- `once_per` keys: at least the last 100 per rule (repeat.ONCE_PER_MEMORY).
- history: the last `history` changes (model setting), in at most about 48 characters a change.
- window counters: only windows that can still receive an event within the lateness.
"""

from __future__ import annotations

from typing import Any

import orjson

from scoring.errors import StateError

#: Separates records in the string logs; event ids containing it are rejected by the parser.
SEPARATOR = "\x7f"

_VERSION = 1  # accounts; lead states written before layout 2
_LEAD_VERSION = 2  # layout 1 plus `windows_drop_ms`

#: The history log is trimmed back to its last `history` changes beyond this many characters
#: a change (a change takes about 30).
HISTORY_CHARS_PER_CHANGE = 48


def encode(values: tuple[Any, ...]) -> bytes:
    """State bytes: the layout version, then the values, as one orjson array."""
    return right_sized(orjson.dumps((_VERSION, *values)))


def decode(data: bytes | bytearray | memoryview, kind: str, length: int) -> list[Any]:
    """The values of state bytes (the version first), checking the layout has `length` values."""
    try:
        values = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise StateError(f"{kind} state is not valid JSON: {exc}") from None
    if values.__class__ is not list or len(values) != length or values[0] != _VERSION:
        raise StateError(f"{kind} state of an unknown layout (expected version {_VERSION} with {length} values)")
    return values


_dumps = orjson.dumps
_loads = orjson.loads


def right_sized(data: bytes) -> bytes:
    """A copy of orjson output that holds only its length: orjson >= 3.12 returns bytes whose
    allocation is at least 4 KiB and never shrinks it, which a table of millions of states kept
    in memory cannot afford (ijl/orjson#483; Home Assistant trims the same way)."""
    return bytes(memoryview(data))


class LeadState:
    """What one model knows about one lead. Mutable: the engine updates it in place.

    Points are kept apart: `behaviour` (implicit, decays, clamped to the model's floor and
    ceiling) and `fit` (explicit, from traits, never decays); the score is their sum, clamped.
    """

    __slots__ = (
        "behaviour",
        "fit",
        "as_of_ms",
        "last_activity_ms",
        "steps_taken",
        "watermark_ms",
        "level",
        "crossings",
        "traits",
        "account_id",
        "ledger",
        "windows",
        "seen",
        "ids",
        "ids_count",
        "ids_max_ms",
        "old_ids",
        "old_ids_max_ms",
        "history",
        "windows_drop_ms",
    )

    behaviour: float
    fit: float
    #: Half-life decay: the time `behaviour` is valued at.
    as_of_ms: int
    #: Time of the newest event that matched a positive rule; 0 before any.
    last_activity_ms: int
    #: Step decay: points taken by each step since the last activity, in step order.
    steps_taken: list[float]
    #: Newest event time seen; events older than this minus the lateness are late.
    watermark_ms: int
    level: str
    #: Threshold crossings so far; numbers each transition id.
    crossings: int
    traits: dict[str, Any]
    account_id: str | None
    #: rule name -> [points, occurrences, capped, bonuses]
    ledger: dict[str, list[float]]
    #: window counters, see scoring.repeat
    windows: dict[str, list[int]]
    #: rule name -> log of `once_per` values already seen
    seen: dict[str, str]
    ids: str
    ids_count: int
    ids_max_ms: int
    old_ids: str
    old_ids_max_ms: int
    #: log of "time_ms points label" records, oldest first
    history: str
    #: The earliest compaction cutoff (newest event time minus lateness) at which a window
    #: counter's window has closed, so compaction skips the counters before; 0: not known.
    #: The engine keeps it exact (scoring.repeat.bump, ModelRuntime.compact); code that adds
    #: counters otherwise may leave it late, which only keeps closed counters a little longer.
    windows_drop_ms: int

    @classmethod
    def new(cls, level: str, fit: float) -> LeadState:
        state = cls.__new__(cls)
        (
            state.behaviour, state.fit, state.as_of_ms, state.last_activity_ms, state.steps_taken,
            state.watermark_ms, state.level, state.crossings, state.traits, state.account_id,
            state.ledger, state.windows, state.seen, state.ids, state.ids_count, state.ids_max_ms,
            state.old_ids, state.old_ids_max_ms, state.history, state.windows_drop_ms,
        ) = (0, fit, 0, 0, [], 0, level, 0, {}, None, {}, {}, {}, "", 0, 0, "", 0, "", 0)  # fmt: skip
        return state

    def to_bytes(self) -> bytes:
        return right_sized(
            _dumps(
                (
                    _LEAD_VERSION, self.behaviour, self.fit, self.as_of_ms, self.last_activity_ms, self.steps_taken,
                    self.watermark_ms, self.level, self.crossings, self.traits, self.account_id, self.ledger,
                    self.windows, self.seen, self.ids, self.ids_count, self.ids_max_ms, self.old_ids,
                    self.old_ids_max_ms, self.history, self.windows_drop_ms,
                )
            )
        )  # fmt: skip

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> LeadState:
        try:
            values = _loads(data)
        except orjson.JSONDecodeError as exc:
            raise StateError(f"lead state is not valid JSON: {exc}") from None
        state = cls.__new__(cls)
        if values.__class__ is list and len(values) == 21 and values[0] == _LEAD_VERSION:
            (
                _, state.behaviour, state.fit, state.as_of_ms, state.last_activity_ms, state.steps_taken,
                state.watermark_ms, state.level, state.crossings, state.traits, state.account_id, state.ledger,
                state.windows, state.seen, state.ids, state.ids_count, state.ids_max_ms, state.old_ids,
                state.old_ids_max_ms, state.history, state.windows_drop_ms,
            ) = values  # fmt: skip
            return state
        if values.__class__ is list and len(values) == 20 and values[0] == _VERSION:  # layout 1
            (
                _, state.behaviour, state.fit, state.as_of_ms, state.last_activity_ms, state.steps_taken,
                state.watermark_ms, state.level, state.crossings, state.traits, state.account_id, state.ledger,
                state.windows, state.seen, state.ids, state.ids_count, state.ids_max_ms, state.old_ids,
                state.old_ids_max_ms, state.history,
            ) = values  # fmt: skip
            state.windows_drop_ms = 0
            return state
        raise StateError(f"lead state of an unknown layout (expected version {_LEAD_VERSION} with 21 values)")

    def copy(self) -> LeadState:
        return LeadState.from_bytes(self.to_bytes())

    def as_dict(self) -> dict[str, Any]:
        """Every field as plain values (copies): for tests and debugging."""
        return {
            "behaviour": self.behaviour,
            "fit": self.fit,
            "as_of_ms": self.as_of_ms,
            "last_activity_ms": self.last_activity_ms,
            "steps_taken": list(self.steps_taken),
            "watermark_ms": self.watermark_ms,
            "level": self.level,
            "crossings": self.crossings,
            "traits": dict(self.traits),
            "account_id": self.account_id,
            "ledger": {name: list(entry) for name, entry in self.ledger.items()},
            "windows": {key: list(counts) for key, counts in self.windows.items()},
            "seen": dict(self.seen),
            "ids": self.ids,
            "ids_count": self.ids_count,
            "ids_max_ms": self.ids_max_ms,
            "old_ids": self.old_ids,
            "old_ids_max_ms": self.old_ids_max_ms,
            "history": self.history,
        }

    def __eq__(self, other: object) -> bool:
        """Same values (the order of keys in a map, and `windows_drop_ms`, a hint, aside)."""
        return isinstance(other, LeadState) and self.as_dict() == other.as_dict()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"LeadState({self.to_bytes().decode()})"

    # -- recent event ids ------------------------------------------------------------------

    def knows_event(self, event_id: str) -> bool:
        """Whether the event id is among the remembered ones."""
        needle = f"{SEPARATOR}{event_id}{SEPARATOR}"
        return needle in self.ids or needle in self.old_ids

    def remember_event(self, event_id: str, time_ms: int, per_generation: int) -> None:
        if self.ids_count >= per_generation:
            self.old_ids, self.old_ids_max_ms = self.ids, self.ids_max_ms
            self.ids, self.ids_count, self.ids_max_ms = "", 0, 0
        self.ids = f"{self.ids or SEPARATOR}{event_id}{SEPARATOR}"
        self.ids_count += 1
        if time_ms > self.ids_max_ms:
            self.ids_max_ms = time_ms

    def forget_events_before(self, time_ms: int) -> None:
        """Drops generations whose every event is older than `time_ms` (they would be late)."""
        if self.old_ids and self.old_ids_max_ms < time_ms:
            self.old_ids, self.old_ids_max_ms = "", 0
        if self.ids and self.ids_max_ms < time_ms:
            self.ids, self.ids_count, self.ids_max_ms = "", 0, 0

    # -- history ---------------------------------------------------------------------------

    def record(self, time_ms: int, points: float, label: str, keep: int) -> None:
        """Appends a change. The last `keep` changes are always kept; once the log is longer
        than HISTORY_CHARS_PER_CHANGE x `keep` characters it is trimmed back to them (trimming
        by length spares counting records on every change)."""
        if points.__class__ is float:
            points = round(points, 2)
        log = f"{self.history or SEPARATOR}{time_ms} {points} {label}{SEPARATOR}"
        if len(log) > HISTORY_CHARS_PER_CHANGE * keep:
            records = log.count(SEPARATOR) - 1
            if records > keep:
                log = SEPARATOR + log.split(SEPARATOR, records - keep + 1)[-1]
        self.history = log

    def changes(self, keep: int) -> list[tuple[int, float, str]]:
        """The last `keep` recorded changes, oldest first, as (time_ms, points, label)."""
        out = []
        for record in self.history.split(SEPARATOR)[-keep - 1 :]:
            if record:
                time_ms, points, label = record.split(" ", 2)
                out.append((int(time_ms), float(points) if "." in points or "e" in points else int(points), label))
        return out
