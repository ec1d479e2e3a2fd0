"""Per (model, lead) state: what the engine remembers about a lead, and its compact bytes.

The stream worker keeps a lead's state as this object between batches and writes its bytes to
the changelog once per batch in which it changed; bytes are read back only when a worker
recovers. So the layout is chosen for the per-event work first: recent event ids and `once_per`
values are hashed (a membership test costs the same however many are remembered, where a
substring search of a log grew with it), and the history is one flat list of
(time, points, label) triples, appended without formatting. Bytes are MessagePack (msgspec):
one C call encodes the fields as one array, id generations as arrays, and decoding checks every
field's type, so a corrupt or foreign value is a `StateError`, never a half-read state.

A live worker holds every state of its partitions, so memory per state is held down too. The id
generations are dicts (id -> None), not sets: a dict of a few strings takes about half the
memory of a set of them (a set of 5-16 takes 728 bytes, a dict 352-632; on the engine
benchmark's 99,611 states, 975 bytes of ids per state as sets, 633 as dicts), and a dict of
strings is not tracked by the garbage collector, so its full collections, which read every
object a tracked one refers to, skip the ids (a set is tracked: each id was read). Their order
is insertion order, so equal histories encode equally.

Bounds (what keeps a state small however active the lead):
- recent event ids: two generations of at most `remember_events` ids each (an id over 64
  characters, or not ASCII, is kept as its digest, `kept_key`); a generation is
  dropped when its newest event is older than the lead's newest event minus the allowed
  lateness (a replay of such an event is late anyway), and the older generation is dropped when
  the newer one fills up. So at least the last `remember_events` ids, and every id younger than
  the lateness up to that count, are recognised as duplicates.
- `once_per` values: at least the last 100 per event type and field a rule of the model
  de-duplicates (repeat.ONCE_PER_MEMORY; others are dropped, repeat.adopt_seen), each at most 64
  ASCII characters (a longer value, or one beyond ASCII, is kept as its digest, `kept_key`).
- history: the last `history` changes (model setting), at most twice that between trims.
- window counters: only windows that can still receive an event within the lateness, at most
  lateness / window + 1 a cap or bonus (models are checked against a bound on load:
  repeat.MAX_COUNTER_WINDOWS and MAX_MODEL_WINDOWS), newest first since layout 8. Earlier
  layouts kept them in the order their windows came: they are ordered when read.

States written by earlier versions are still read: JSON arrays (layouts 1 and 2), MessagePack
without trait times (layout 3; its traits then give way to any update, as they did), without
the revision (layout 4; revision 0), without the earlier idle period (layout 5; none),
without the time before which compaction forgot (layout 6; 0: until the next compaction, the
lateness alone decides) and without a bonus's paid mark (layout 7 and all before: their bonus
counters are read as `earlier_bonus_count`s).
"""

from __future__ import annotations

import hashlib
import sys
from types import GenericAlias
from typing import Annotated, Any, Callable, Union

import msgspec
import orjson

from scoring.errors import StateError

#: Separated records in the logs of the JSON layouts (1 and 2) that earlier versions wrote.
SEPARATOR = "\x7f"

_VERSION = 1  # accounts
_LEAD_VERSION = 8  # MessagePack (7: bonus counters without paid marks, 6: nor forgotten_before_ms, 5: nor the earlier idle period, 4: nor the revision, 3: nor trait times); 1 and 2 JSON
#: The first layout whose bonus counters hold paid marks; layout 7 has the same fields.
_PAID_MARKS = 8

#: A finite number: NaN or an infinity in a stored state would make every comparison of the
#: lead's score false, and it never crossed a line again.
_Number = Union[int, Annotated[float, msgspec.Meta(ge=-sys.float_info.max, le=sys.float_info.max)]]
#: A rule's ledger entry: points, occurrences, capped, bonuses (the engine indexes all four).
_Entry = Annotated[list[_Number], msgspec.Meta(min_length=4, max_length=4)]
#: Window counters: (window index, count) pairs, flat (scoring.repeat).
_Counts = Annotated[list[int], msgspec.Meta(min_length=2)]
#: The types of a lead state's fields as stored, in order, the layout version first. They are
#: what the engine relies on, so a foreign or corrupt record that does not hold them is a
#: StateError when read, never an exception while scoring the lead's events.
_FIELDS: tuple[Any, ...] = (
    int,  # layout version
    _Number, _Number, int, int, tuple[_Number, ...],  # behaviour, fit, as_of_ms, last_activity_ms, steps_taken
    int, str, int, dict[str, Any], Union[str, None],  # watermark_ms, level, crossings, traits, account_id
    dict[str, _Entry], dict[str, _Counts], dict[str, dict[str, None]],  # ledger, windows, seen
    list[str], int, list[str], int,  # ids, ids_max_ms, old_ids, old_ids_max_ms
    list[Union[int, float, str]], int,  # history, windows_drop_ms
    dict[str, int], int,  # trait_times, revision
    int, tuple[_Number, ...],  # earlier_activity_ms, earlier_steps
    int,  # forgotten_before_ms
)  # fmt: skip
_encode = msgspec.msgpack.Encoder().encode
_decode_layout = msgspec.msgpack.Decoder(GenericAlias(tuple, _FIELDS)).decode
#: Layouts earlier versions wrote are the same without the last fields, which later versions
#: added: (version, decode, the values it lacks, as a state without them has them).
_EARLIER_LAYOUTS: tuple[tuple[int, Callable[[Any], tuple[Any, ...]], tuple[Any, ...]], ...] = tuple(
    (version, msgspec.msgpack.Decoder(GenericAlias(tuple, _FIELDS[: -len(missing)])).decode, missing)
    for version, missing in (
        (6, (0,)),  # no time before which compaction forgot
        (5, (0, (), 0)),  # nor the earlier idle period
        (4, (0, 0, (), 0)),  # nor the revision
        (3, ({}, 0, 0, (), 0)),  # nor trait times
    )
)

#: A bonus counter (window counters under "bonus:" keys, scoring.repeat.bonus_due) holds the
#: occurrences its window has counted, BONUS_PAID once the bonus is paid there, or, read from a
#: state of an earlier layout, `earlier_bonus_count(count)`: those counted up to the bonus's
#: `count` and stopped there, paying, so whether they paid depends on the `count` in force.
BONUS_PAID = -1
_BONUS_PREFIX = "bonus:"


def earlier_bonus_count(count: int) -> int:
    """A bonus counter of an earlier layout, as kept now (below BONUS_PAID: its own inverse)."""
    return -2 - count


def _mark_earlier_bonus_counts(windows: dict[str, list[int]]) -> None:
    for key, counts in windows.items():
        if key.startswith(_BONUS_PREFIX):
            counts[1::2] = [earlier_bonus_count(count) for count in counts[1::2]]


def newest_first(counts: dict[int, int]) -> list[int]:
    """Window counters (window index -> count) as a state keeps them: flat pairs, newest window
    first (scoring.repeat)."""
    return [value for index in sorted(counts, reverse=True) for value in (index, counts[index])]


def _order_windows(windows: dict[str, list[int]]) -> None:
    """Orders the window counters of a state of layout 7 or earlier newest first: those kept them
    in the order their windows came (a window listed twice, as none wrote it, keeps one count)."""
    for key, counts in windows.items():
        if len(counts) > 2 and any(newer <= older for newer, older in zip(counts[0::2], counts[2::2])):
            windows[key] = newest_first(dict(zip(counts[0::2], counts[1::2])))


#: The old id generation of a state that has none (never mutated: generations are swapped).
NO_IDS: frozenset[str] = frozenset()
#: Longest event id or `once_per` value a state keeps as it is (in ASCII: 64 bytes); a longer
#: one is kept as its 128-bit digest (`kept_key`).
KEY_CHARS = 64


def kept_key(text: str) -> str:
    """What a state keeps of a long event id or `once_per` value: '#' and its 128-bit digest.
    Kept whole, 2 x 1,024 event ids of 256 characters (up to 4 bytes each) made a state of up
    to 2 MB, and 200 once_per values of 64 KiB one of 13 MB: more than Kafka takes in a record."""
    return "#" + hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def encode(values: tuple[Any, ...]) -> bytes:
    """Account state bytes: the layout version, then the values, as one orjson array."""
    return right_sized(orjson.dumps((_VERSION, *values)))


def decode(data: bytes | bytearray | memoryview, kind: str, lengths: tuple[int, ...]) -> list[Any]:
    """The values of account state bytes (the version first), checking there are as many as
    one of `lengths` (a layout that gained a field is still read without it)."""
    try:
        values = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise StateError(f"{kind} state is not valid JSON: {exc}") from None
    if values.__class__ is not list or len(values) not in lengths or values[0] != _VERSION:
        raise StateError(f"{kind} state of an unknown layout (expected version {_VERSION} with "
                         f"{' or '.join(map(str, lengths))} values)")
    return values


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
        "ids_max_ms",
        "old_ids",
        "old_ids_max_ms",
        "history",
        "windows_drop_ms",
        "trait_times",
        "revision",
        "earlier_activity_ms",
        "earlier_steps",
        "forgotten_before_ms",
        "fit_found",
    )

    behaviour: float
    fit: float
    #: The time `behaviour` is valued at: under a half-life, the latest an event, a sweep or a
    #: merge valued it at; without one, the newest event time, so that a model edited to a
    #: half-life decays the points it has from then.
    as_of_ms: int
    #: Time of the newest event that matched a positive rule; 0 before any.
    last_activity_ms: int
    #: Step decay: points taken by each step since the last activity, in step order.
    steps_taken: tuple[float, ...]
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
    #: what `once_per` rules de-duplicate (scoring.repeat.seen_key) -> the values already seen,
    #: oldest first (a dict used as an ordered set)
    seen: dict[str, dict[str, None]]
    #: the newer generation of remembered event ids (a dict used as a set), and its newest event time
    ids: dict[str, None]
    ids_max_ms: int
    #: the older generation (NO_IDS when there is none)
    old_ids: dict[str, None] | frozenset[str]
    old_ids_max_ms: int
    #: recent changes, oldest first, flat: time_ms, points, label, time_ms, points, label, ...
    history: list[Any]
    #: The earliest compaction cutoff (newest event time minus lateness) at which a window
    #: counter's window has closed, so compaction skips the counters before; 0: not known.
    #: The engine keeps it exact (scoring.repeat.bump, ModelRuntime.compact); code that adds
    #: counters otherwise may leave it late, which only keeps closed counters a little longer.
    windows_drop_ms: int
    #: trait name -> event time of the value in `traits` (or of its forgetting: a null): an
    #: older event arriving later does not overwrite it, so traits follow event time.
    trait_times: dict[str, int]
    #: Changes taken: events counted, decay steps, merges. It numbers the lead's updates to its
    #: account (`MemberScore.revision`), which orders those of one event time: an account that
    #: takes a batch of updates again after a restart then knows which it has. Not compared by
    #: `__eq__`: a half-life decay counts once per sweep that changed the score.
    revision: int
    #: Step decay: the idle period before the last activity, while a step it took may still be
    #: given back: its activity time and the points its steps took. An activity arriving late
    #: within it shows the lead was not idle that long (0 and (): none).
    earlier_activity_ms: int
    earlier_steps: tuple[float, ...]
    #: Compaction forgot the ids, window counters and idle period of events before this time
    #: (the newest event time minus the lateness, when it last ran): an event older than it is
    #: late, whatever the lateness. A lateness an edit lengthened would otherwise reach events
    #: whose ids and counters are gone, and a replay of one scored again, a cap let one more
    #: through. 0: nothing known forgotten.
    forgotten_before_ms: int
    #: Derived, not stored: the fit rules the traits meet, their points and reason items, as
    #: `ModelRuntime.fit_of` found them; None until asked. Code that changes `traits` resets it.
    fit_found: tuple[Any, ...] | None

    @classmethod
    def new(cls, level: str, fit: float) -> LeadState:
        state = cls.__new__(cls)
        (
            state.behaviour, state.fit, state.as_of_ms, state.last_activity_ms, state.steps_taken,
            state.watermark_ms, state.level, state.crossings, state.traits, state.account_id,
            state.ledger, state.windows, state.seen, state.ids, state.ids_max_ms,
            state.old_ids, state.old_ids_max_ms, state.history, state.windows_drop_ms, state.trait_times, state.revision,
            state.earlier_activity_ms, state.earlier_steps, state.forgotten_before_ms, state.fit_found,
        ) = (0, fit, 0, 0, (), 0, level, 0, {}, None, {}, {}, {}, {}, 0, NO_IDS, 0, [], 0, {}, 0, 0, (), 0, None)  # fmt: skip
        return state

    def to_bytes(self) -> bytes:
        return _encode(
            (
                _LEAD_VERSION, self.behaviour, self.fit, self.as_of_ms, self.last_activity_ms, self.steps_taken,
                self.watermark_ms, self.level, self.crossings, self.traits, self.account_id, self.ledger,
                self.windows, self.seen, tuple(self.ids), self.ids_max_ms, tuple(self.old_ids), self.old_ids_max_ms,
                self.history, self.windows_drop_ms, self.trait_times, self.revision, self.earlier_activity_ms,
                self.earlier_steps, self.forgotten_before_ms,
            )
        )  # fmt: skip

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> LeadState:
        if data[:1] == b"[":  # a JSON layout of an earlier version
            return _valued_at_newest_event(_from_json_layout(data))
        try:
            values: tuple[Any, ...] = _decode_layout(data)
            version = _LEAD_VERSION
        except msgspec.ValidationError as exc:
            values, version = _earlier_layout(data, exc)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # a text that is not UTF-8: the latter
            raise _unreadable(exc) from None
        if values[0] != version and not (version == _LEAD_VERSION and values[0] == _PAID_MARKS - 1):
            raise StateError(f"lead state of an unknown layout version {values[0]} (expected {_LEAD_VERSION})")
        _check_pairs_and_triples(values[12], values[18])
        state = cls.__new__(cls)
        (
            _, state.behaviour, state.fit, state.as_of_ms, state.last_activity_ms, state.steps_taken,
            state.watermark_ms, state.level, state.crossings, state.traits, state.account_id, state.ledger,
            state.windows, state.seen, ids, state.ids_max_ms, old_ids, state.old_ids_max_ms,
            state.history, state.windows_drop_ms, state.trait_times, state.revision, state.earlier_activity_ms,
            state.earlier_steps, state.forgotten_before_ms,
        ) = values  # fmt: skip
        state.ids = dict.fromkeys(ids)
        state.old_ids = dict.fromkeys(old_ids) if old_ids else NO_IDS
        state.fit_found = None
        if values[0] < _PAID_MARKS:  # layout 8 writes its counters newest first, with paid marks
            _order_windows(state.windows)
            _mark_earlier_bonus_counts(state.windows)
        return _valued_at_newest_event(state)

    def copy(self) -> LeadState:
        return LeadState.from_bytes(self.to_bytes())

    def as_dict(self) -> dict[str, Any]:
        """Every field as plain values (copies; sets sorted): for tests and debugging."""
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
            "seen": {rule: list(values) for rule, values in self.seen.items()},
            "ids": sorted(self.ids),
            "ids_max_ms": self.ids_max_ms,
            "old_ids": sorted(self.old_ids),
            "old_ids_max_ms": self.old_ids_max_ms,
            "history": list(self.history),
            "trait_times": dict(self.trait_times),
            "earlier_activity_ms": self.earlier_activity_ms,
            "earlier_steps": list(self.earlier_steps),
            "forgotten_before_ms": self.forgotten_before_ms,
        }

    def __eq__(self, other: object) -> bool:
        """Same values (the order of keys in a map, and `windows_drop_ms`, a hint, aside)."""
        return isinstance(other, LeadState) and self.as_dict() == other.as_dict()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"LeadState({self.as_dict()!r})"

    # -- recent event ids ------------------------------------------------------------------

    def knows_event(self, event_id: str) -> bool:
        """Whether the event id is among the remembered ones."""
        return event_id in self.ids or event_id in self.old_ids

    def remember_event(self, event_id: str, time_ms: int, per_generation: int) -> None:
        ids = self.ids
        if len(ids) >= per_generation:
            self.old_ids, self.old_ids_max_ms = ids, self.ids_max_ms
            ids = self.ids = {}
            self.ids_max_ms = 0
        ids[event_id] = None
        if time_ms > self.ids_max_ms:
            self.ids_max_ms = time_ms

    def forget_events_before(self, time_ms: int) -> None:
        """Drops generations whose every event is older than `time_ms` (they would be late)."""
        if self.old_ids and self.old_ids_max_ms < time_ms:
            self.old_ids, self.old_ids_max_ms = NO_IDS, 0
        if self.ids and self.ids_max_ms < time_ms:
            self.ids, self.ids_max_ms = {}, 0

    # -- history ---------------------------------------------------------------------------

    def record(self, time_ms: int, points: float, label: str, keep: int) -> None:
        """Appends a change. The last `keep` changes are always kept; the list is trimmed back
        to them once it holds twice as many (trimming on every change would cost more)."""
        history = self.history
        history += (time_ms, round(points, 2) if points.__class__ is float else points, label)
        if len(history) > 6 * keep:
            del history[: -3 * keep]

    def changes(self, keep: int) -> list[tuple[int, float, str]]:
        """The last `keep` recorded changes, oldest first, as (time_ms, points, label)."""
        history = self.history[-3 * keep :]
        return list(zip(history[0::3], history[1::3], history[2::3]))


def _earlier_layout(data: bytes | bytearray | memoryview, error: msgspec.ValidationError) -> tuple[tuple[Any, ...], int]:
    """The values of a state an earlier version wrote, completed as it would be now, and its
    layout version; StateError (naming `error`, the current layout's) when none reads it."""
    for version, decode_layout, missing in _EARLIER_LAYOUTS:
        try:
            return (*decode_layout(data), *missing), version
        except msgspec.ValidationError:
            continue
        except UnicodeDecodeError as exc:
            raise _unreadable(exc) from None
    raise StateError(f"lead state of an unknown layout (expected version {_LEAD_VERSION}): {error}") from None


def _unreadable(exc: Exception) -> StateError:
    return StateError(f"lead state is not readable MessagePack: {exc}")


def _check_pairs_and_triples(windows: dict[str, list[int]], history: list[Any]) -> None:
    """What the decoder's types cannot say: window counters come in pairs, and the history in
    (time, points, label) triples."""
    for key, counts in windows.items():
        if len(counts) % 2:
            raise StateError(f"lead state has window counters {key!r} of odd length {len(counts)} (expected pairs)")
    if len(history) % 3 or not (
        all(value.__class__ is int for value in history[0::3])
        and all(value.__class__ in (int, float) for value in history[1::3])
        and all(value.__class__ is str for value in history[2::3])
    ):
        raise StateError("lead state has a history that is not (time, points, label) triples")


def _valued_at_newest_event(state: LeadState) -> LeadState:
    """A state written before `as_of_ms` was kept without a half-life (0): its points are
    valued at its newest event. A model edited to a half-life decayed them from 1970 to nothing,
    and stamped the crossings down with 1970 times. (Valued at their own event times they would
    be lower, but a state keeps no per-event points.)"""
    if not state.as_of_ms:
        state.as_of_ms = state.watermark_ms
    return state


def _from_json_layout(data: bytes | bytearray | memoryview) -> LeadState:
    """A state of JSON layout 1 or 2 (versions before MessagePack), converted."""
    try:
        values = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise StateError(f"lead state is not valid JSON: {exc}") from None
    if values.__class__ is not list or (len(values), values[0]) not in ((21, 2), (20, 1)):
        raise StateError(f"lead state of an unknown layout (expected version {_LEAD_VERSION})")
    try:
        (
            _, behaviour, fit, as_of_ms, last_activity_ms, steps_taken, watermark_ms, level, crossings, traits,
            account_id, ledger, windows, seen, ids, _, ids_max_ms, old_ids, old_ids_max_ms, history,
        ) = values[:20]  # fmt: skip
        state = LeadState.new(level, fit)
        state.behaviour, state.as_of_ms, state.last_activity_ms = behaviour, as_of_ms, last_activity_ms
        state.steps_taken, state.watermark_ms, state.crossings = tuple(steps_taken), watermark_ms, crossings
        state.traits, state.account_id, state.ledger, state.windows = traits, account_id, ledger, windows
        state.seen = {rule: dict.fromkeys(key for key in log.split(SEPARATOR) if key) for rule, log in seen.items()}
        state.ids = dict.fromkeys(key for key in ids.split(SEPARATOR) if key)
        state.ids_max_ms = ids_max_ms
        state.old_ids = dict.fromkeys(key for key in old_ids.split(SEPARATOR) if key) or NO_IDS
        state.old_ids_max_ms = old_ids_max_ms
        for record in history.split(SEPARATOR):
            if record:
                time_ms, points, label = record.split(" ", 2)
                state.history += (int(time_ms), float(points) if "." in points or "e" in points else int(points), label)
        state.windows_drop_ms = values[20] if len(values) == 21 else 0
        _order_windows(state.windows)
        _mark_earlier_bonus_counts(state.windows)
    except (TypeError, ValueError, AttributeError) as exc:
        raise StateError(f"lead state of JSON layout {values[0]} has a field of the wrong type: {exc}") from None
    return state
