"""The event contract, and turning raw input into an `Event` or a `Rejection` without raising.

An event is one JSON object (see scoring/MODELS.md, "Events"). Parsing checks what the engine
relies on and nothing more: unknown top-level fields are ignored, so payloads of other tools
(Segment's `context`, `anonymousId`) pass through. A bad event is never an exception: it is a
`Rejection` with a short `reason` code a dead-letter consumer can count and a `detail` sentence
naming the field.

Two paths, one contract. Well-formed JSON bytes are decoded straight into an `Event` by msgspec,
which checks types and bounds in C while it parses (about 0.6 us an event here, against 2.2 us
for orjson and the same checks in Python). Anything that path refuses, and every parsed value
handed in, takes the careful path: the JSON read as a value (`loads`), then each check in turn,
so a rejection names the first field that is wrong, and the forms only it accepts (numeric ids,
ISO-8601 times, null maps, an identify without event id) still pass.

An integer beyond 64 bits is refused wherever an event holds it (ids, traits, properties),
naming the field: most JSON readers (orjson, JavaScript's) read one as a float, its digits lost,
and a lead's state and the topics' other readers could not keep it either.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any, Callable, Literal

import msgspec
import orjson

#: Largest single event accepted, in bytes of JSON.
MAX_EVENT_BYTES = 64 * 1024
#: Most properties plus traits one event may carry.
MAX_FIELDS = 256
#: Largest trait value in bytes of JSON (a text's without its quotes). A lead's state keeps its
#: traits, and each crossing carries them: both must stay small enough for Kafka to take (1 MB
#: a crossing). Bytes, not characters: 4,096 control characters are 24 KB of JSON (`\u0001`
#: each), and a lead with 60 such traits made a crossing of 1.5 MB, which stopped the worker.
MAX_TRAIT_SIZE = 4096
#: Texts of at most this many characters fit in MAX_TRAIT_SIZE whatever they hold (a character
#: is at most 6 bytes of JSON): only longer ones are measured.
_SHORT_TEXT = MAX_TRAIT_SIZE // 6
#: Longest lead id, event id, account id or event type.
MAX_ID_CHARS = 256
#: Levels of objects and arrays one property or trait value may nest. No tracking plan needs
#: more, and much deeper values cannot be handled at all: orjson writes at most 255 levels, and
#: msgspec stops near 1,000 with Python's recursion limit (a RecursionError, not a DecodeError).
MAX_NESTING = 32
#: What msgspec raises for input it cannot decode: DecodeError, UnicodeDecodeError for a known
#: field's text that is not UTF-8, and RecursionError for nesting deeper than it reads. The
#: careful path (orjson) then says what is wrong; none of them is raised.
UNDECODABLE = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)
#: Event times outside [2000-01-01, 2100-01-01) are refused: almost always another unit sent as ms.
MIN_TIME_MS = 946_684_800_000
MAX_TIME_MS = 4_102_444_800_000
#: Epoch units other than ms that times are sent in, each with the range of 2000-2099 in it.
_OTHER_UNITS = tuple(
    (unit, MIN_TIME_MS * per_second // 1000, MAX_TIME_MS * per_second // 1000)
    for unit, per_second in (("seconds", 1), ("microseconds", 10**6), ("nanoseconds", 10**9))
)
#: Second 60 of a time of day (RFC 3339's leap second), which `datetime` cannot hold.
_LEAP_SECOND = re.compile(r"[Tt ]\d\d:?\d\d:?60(?!\d)")

IDENTIFY = "identify"
#: Event types that say who a lead is (traits, account, other ids), not what it did: every model
#: reads them, with no rule naming them.
PROFILE_TYPES = frozenset((IDENTIFY, "group", "alias"))

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
# Integers orjson writes: signed and unsigned 64-bit.
_MIN_INT, _MAX_INT = -(2**63), 2**64 - 1
_ONE_MS = timedelta(milliseconds=1)

# What an id may not hold: Unicode's control characters, and line and paragraph separators
# (ids are echoed in logs, dead letters, Kafka keys and CRM fields). `str.isprintable` refuses
# more than these (format characters such as the joiner of an emoji sequence, non-ASCII
# spaces), so it is the quick test, and this one decides when it fails.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")

# Shared by every event without properties or traits; the engine never mutates event maps.
_EMPTY: dict[str, Any] = {}


#: An id or type as decoded messages carry it (events, account updates, identity records).
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_CHARS)]
_TimeMs = Annotated[int, msgspec.Meta(ge=MIN_TIME_MS, lt=MAX_TIME_MS)]


class Event(msgspec.Struct, gc=False):
    """One validated event. `time_ms` is event time (epoch ms, the JSON field `time`); maps are
    never mutated. (Not tracked by the garbage collector: an event refers to nothing that
    refers back.)"""

    event_id: Id
    lead_id: Id
    type: Id
    time_ms: _TimeMs = msgspec.field(name="time")
    properties: dict[str, Any] = {}
    traits: dict[str, Any] = {}
    account_id: Id | None = None
    product: str | None = None


_decode_event = msgspec.json.Decoder(Event).decode
_decode_message = msgspec.json.Decoder(Event | list[Event]).decode
_decode_any = msgspec.json.Decoder().decode
#: msgspec, not orjson, to write an event back out: it writes integers beyond 64 bits too.
_encode = msgspec.json.Encoder().encode


#: The codes of the inputs the engine refuses, the one list of them: the worker's metrics export
#: each from its start (streams.deadletter.WORKER_REASONS), and mypy holds every refusal to it.
RejectionReason = Literal["bad_json", "wrong_type", "missing_field", "bad_value", "too_large"]


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why an input was refused. `reason` is a short code (RejectionReason), `detail` names the
    field. `raw` is the input as received (bytes, or the parsed JSON value) for the dead-letter
    record.
    """

    reason: RejectionReason
    detail: str
    raw: Any = None


def parse_event(raw: bytes | bytearray | memoryview | str | dict[str, Any] | Any) -> Event | Rejection:
    """One event from JSON bytes/text or an already-parsed JSON value; never raises."""
    if raw.__class__ is dict:
        return _from_dict(raw)
    if not isinstance(raw, (bytes, bytearray, memoryview, str)):
        return Rejection("wrong_type", f"an event must be a JSON object, got {json_kind(raw)}", raw)
    if len(raw) > MAX_EVENT_BYTES:
        return Rejection("too_large", too_large(len(raw)), raw)
    try:
        event = _decode_event(raw)
    except UNDECODABLE:
        event = None
    if event is not None and _sound(event):
        return event
    try:
        value = loads(raw)
    except orjson.JSONDecodeError as exc:
        return Rejection(*unreadable(exc, "not valid JSON", raw), raw)
    if value.__class__ is not dict:
        return Rejection("wrong_type", f"an event must be a JSON object, got {json_kind(value)}", raw)
    return _from_dict(value)


# Once json.loads has joined the pairs, any surrogate left in a text is a lone one.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def read_json(raw: bytes | bytearray | memoryview | str) -> Any:
    """JSON as orjson reads it, but an integer beyond 64 bits whole: orjson reads one as a float,
    its digits lost, which a refusal could then not tell from a number written as a float.
    msgspec reads what orjson reads, as fast; orjson's value where msgspec stops (nesting near
    Python's recursion limit, up to orjson's 1,024 levels), and its error for what is no JSON."""
    try:
        return _decode_any(raw)
    except UNDECODABLE:
        return orjson.loads(raw)


def loads(raw: bytes | bytearray | memoryview | str) -> Any:
    """JSON as `read_json` reads it, a lone surrogate escape in a text read as U+FFFD (see
    `with_lone_surrogates_replaced`); orjson's error for anything else it refuses."""
    try:
        return read_json(raw)
    except orjson.JSONDecodeError as exc:
        if "surrogate in string" not in str(exc):
            raise
        try:
            return with_lone_surrogates_replaced(raw if isinstance(raw, str) else bytes(raw).decode("utf-8"))
        except (ValueError, RecursionError):  # not JSON even so (json's errors are ValueErrors)
            raise exc from None


def with_lone_surrogates_replaced(text: str) -> Any:
    """JSON text parsed with each lone surrogate escape (`"\\ud83d"`: what JavaScript's
    JSON.stringify writes for a text cut between the halves of an emoji) read as U+FFFD.

    orjson refuses a whole message for one, so one page title cut short lost every event of its
    envelope. U+FFFD is what browsers' decoders and Go's encoding/json put there, and the repair
    is the same every time the message is read, so the event keeps its id. ValueError when the
    text is not JSON even so (NaN and numbers orjson does not take get this far)."""
    return lone_surrogates_replaced(json.loads(text))  # the stdlib reads lone surrogates


def lone_surrogates_replaced(value: Any) -> Any:
    """A value json.loads read (where a lone surrogate is a character of its own) as `read_json`
    reads JSON, each lone surrogate U+FFFD; ValueError for what orjson does not take (NaN, Infinity)."""
    return read_json(json_with_lone_surrogates_replaced(value))


def json_with_lone_surrogates_replaced(value: Any) -> bytes:
    """A value json.loads read as JSON text, each lone surrogate U+FFFD and each integer whole."""
    return _LONE_SURROGATE.sub("\ufffd", json.dumps(value, ensure_ascii=False)).encode()


def holds_lone_surrogate(text: str) -> bool:
    return _LONE_SURROGATE.search(text) is not None


def unreadable(exc: orjson.JSONDecodeError, what: str, raw: bytes | bytearray | memoryview | str) -> tuple[RejectionReason, str]:
    """The reason and detail of input orjson cannot read: `what` it is (e.g. "not valid JSON"),
    unless it is JSON nesting deeper than orjson reads, which is too large, not bad."""
    if str(exc).startswith("str is not valid UTF-8") and not isinstance(raw, str):
        # orjson says "surrogates not allowed" at char 0 whatever the byte: say which, and where.
        try:
            bytes(raw).decode("utf-8")
        except UnicodeDecodeError as bad:
            return "bad_json", (f"{what}: it is not UTF-8 text (byte 0x{bad.object[bad.start]:02x} at offset {bad.start}); "
                                "JSON must be UTF-8: send or save it as UTF-8")
    if str(exc).startswith("depth limit exceeded"):
        return ("too_large", f"it nests objects and arrays more than 1,024 levels deep, which is more than can be read "
                             f"(an event may nest {MAX_NESTING}): no event of it can be told apart")
    return "bad_json", f"{what}: {exc}"


def parse_value(value: Any) -> Event | Rejection:
    """One event from a parsed JSON value (an item of an envelope): an object, or refused. A
    text is not parsed as JSON again: an event encoded twice is a producer's bug to fix."""
    if value.__class__ is dict:
        return _from_dict(value)
    return Rejection("wrong_type", f"an event must be a JSON object, got {json_kind(value)}", value)


def parse_message(raw: bytes | bytearray | memoryview | str) -> list[Event | Rejection]:
    """The events of one wire message: a JSON object, or a JSON array of objects (an envelope)."""
    events = decode_message(raw)
    if events is not None:
        return events  # type: ignore[return-value]  # list is invariant; every item is an Event
    try:
        value = loads(raw)
    except orjson.JSONDecodeError as exc:
        return [Rejection(*unreadable(exc, "not valid JSON", raw), raw)]
    if value.__class__ is list:
        if not value:
            return [Rejection("bad_value", EMPTY_ENVELOPE, raw)]
        if len(raw) <= MAX_EVENT_BYTES:  # then no event of it can be larger
            return [parse_value(item) for item in value]
        return [_sized(item) for item in value]
    if value.__class__ is dict:
        if len(raw) > MAX_EVENT_BYTES:
            return [Rejection("too_large", too_large(len(raw)), raw)]
        return [_from_dict(value)]
    return [Rejection("wrong_type", f"an event must be a JSON object, got {json_kind(value)}", raw)]


#: Why a message that is an empty JSON array is refused: a producer sending one has a bug (it
#: meant to send events), which a dead letter shows where silence would hide it.
EMPTY_ENVELOPE = "an envelope (JSON array) of no event: send one event object, or an array of one or more"


def too_large(size: int) -> str:
    """The detail of a `too_large` rejection of an event of `size` bytes."""
    return f"event is {size} bytes, at most {MAX_EVENT_BYTES} are accepted"


def _sized(item: Any) -> Event | Rejection:
    """An event of a big envelope: refused as too large when it is, written out alone."""
    try:
        size = len(_encode(item))
    except RecursionError:  # nested too deep to write out: parse_value says so
        size = 0
    return Rejection("too_large", too_large(size), item) if size > MAX_EVENT_BYTES else parse_value(item)


def decode_message(raw: bytes | bytearray | memoryview | str) -> list[Event] | None:
    """The events of a message in which every event is well formed, decoded in one pass; None
    when any is not (or the message is not JSON), and for a message over MAX_EVENT_BYTES, which
    may hold an event over it: `parse_message` then finds which and why."""
    if len(raw) > MAX_EVENT_BYTES:
        return None
    try:
        decoded: Event | list[Event] = _decode_message(raw)
    except UNDECODABLE:
        return None
    if isinstance(decoded, Event):
        return [decoded] if _sound(decoded) else None
    if not decoded:
        return None  # an empty envelope is refused: `parse_message` says why
    for event in decoded:
        if not _sound(event):
            return None
    return decoded


def _sound(event: Event) -> bool:
    """The checks a msgspec schema cannot say: no control character in an id (the contract,
    scoring/MODELS.md: ids are echoed in logs, dead letters and headers), a bounded
    number of fields, no integer beyond 64 bits (msgspec reads them whole; see the module's
    docstring), and values nested at most MAX_NESTING levels deep."""
    if len(event.properties) + len(event.traits) > MAX_FIELDS:
        return False
    if not (event.event_id.isprintable() and event.lead_id.isprintable()) or (
        event.account_id is not None and not event.account_id.isprintable()
    ):  # the quick test failed: is it a control character (see _CONTROL)?
        if not (is_id(event.event_id) and is_id(event.lead_id) and (event.account_id is None or is_id(event.account_id))):
            return False
    # The checks are `_value_problem`'s, inline (but nan and infinities, which JSON has not): this runs for every event, and calling it cost
    # 0.2-0.4 us more per event (decode_message of the bench workload, 1.5-1.7 us).
    for value in event.traits.values():
        if value.__class__ is int and not _MIN_INT <= value <= _MAX_INT:
            return False
        if value.__class__ is str and len(value) > _SHORT_TEXT and _text_size(value) > MAX_TRAIT_SIZE:
            return False
        if (value.__class__ is dict or value.__class__ is list) and _trait_problem("", value) is not None:
            return False
    for value in event.properties.values():
        if value.__class__ is int:
            if not _MIN_INT <= value <= _MAX_INT:
                return False
        elif (value.__class__ is dict or value.__class__ is list) and (nesting(value) > MAX_NESTING or _holds(value, _beyond_64_bits)):
            return False
    return True


def nesting(value: Any, limit: int = MAX_NESTING) -> int:
    """Levels of objects and arrays in a JSON value (0 for a scalar), counted up to one more
    than `limit`; level by level, so no value is too deep to measure."""
    depth, level = 0, [value]
    while depth <= limit:
        inner: list[Any] = []
        found = False
        for item in level:
            if item.__class__ is dict:
                inner.extend(item.values())
                found = True
            elif item.__class__ is list:
                inner.extend(item)
                found = True
        if not found:
            return depth
        depth += 1
        level = inner
    return depth


def _holds(value: Any, leaf: Callable[[Any], bool]) -> bool:
    """Whether a JSON value holds, at any depth, a leaf for which `leaf` is true (called for
    values already known to nest at most MAX_NESTING levels)."""
    if value.__class__ is dict:
        return any(_holds(item, leaf) for item in value.values())
    if value.__class__ is list:
        return any(_holds(item, leaf) for item in value)
    return leaf(value)


def _beyond_64_bits(value: Any) -> bool:
    return value.__class__ is int and not _MIN_INT <= value <= _MAX_INT


def _not_finite(value: Any) -> bool:
    """A nan or an infinity (x - x is nan for both)."""
    return value.__class__ is float and value - value != 0


def is_id(text: str) -> bool:
    """Whether a text may be an id: 1 to MAX_ID_CHARS characters, no control character."""
    return 0 < len(text) <= MAX_ID_CHARS and (text.isprintable() or _CONTROL.search(text) is None)


def _value_problem(properties: dict[str, Any], traits: dict[str, Any]) -> tuple[RejectionReason, str] | None:
    """The reason and detail of a rejection for the first property or trait no JSON can carry
    (a nan or an infinity: `bad_value`), or nested deeper than MAX_NESTING or holding an integer
    beyond 64 bits, or a trait a lead's state cannot keep (`_trait_problem`: `too_large`)."""
    for key, value in properties.items():
        if value.__class__ is int:
            if not _MIN_INT <= value <= _MAX_INT:
                return "too_large", beyond_64_bits(f"properties.{key}")
        elif value.__class__ is float:
            if _not_finite(value):
                return "bad_value", _not_a_json_number(f"properties.{key}", value)
        elif value.__class__ is dict or value.__class__ is list:
            if nesting(value) > MAX_NESTING:
                return "too_large", _too_deep(f"properties.{key}")
            if _holds(value, _beyond_64_bits):
                return "too_large", beyond_64_bits(f"properties.{key}")
            if _holds(value, _not_finite):
                return "bad_value", _not_a_json_number(f"properties.{key}", value)
    for key, value in traits.items():
        if value.__class__ is float:
            if _not_finite(value):
                return "bad_value", _not_a_json_number(f"traits.{key}", value)
        elif value.__class__ is not bool and value is not None:
            problem = _trait_problem(key, value)
            if problem is not None:
                return "too_large", problem
            if (value.__class__ is dict or value.__class__ is list) and _holds(value, _not_finite):
                return "bad_value", _not_a_json_number(f"traits.{key}", value)
    return None


def _not_a_json_number(field: str, value: Any) -> str:
    """Why a field holding a nan or an infinity is refused. Only an event handed in parsed can:
    JSON has neither (a pandas frame has nan for every empty cell). Kept, it was a trait that
    `exists` found, no comparison held for, and explanations wrote out as JSON no reader takes."""
    written = repr(value) if value.__class__ is float else "a nan or an infinity within it"
    return f"{field} is {written}, which no JSON number is: send null (a trait's null forgets it), or leave the field out"


def _trait_problem(key: str, value: Any) -> str | None:
    """Why a lead's state cannot keep this trait value, if it cannot: nested too deep, an
    integer beyond 64 bits, or larger than MAX_TRAIT_SIZE."""
    kind = value.__class__
    if kind is str:
        if len(value) > _SHORT_TEXT and (size := _text_size(value)) > MAX_TRAIT_SIZE:
            return f"traits.{key} is {size} bytes of JSON, at most {MAX_TRAIT_SIZE} are kept: send long texts as properties"
        return None
    if kind is not int and kind is not dict and kind is not list:
        return None
    if kind is not int and nesting(value) > MAX_NESTING:
        return _too_deep(f"traits.{key}")
    if _holds(value, _beyond_64_bits):
        return beyond_64_bits(f"traits.{key}")
    if kind is not int and len(encoded := _encode(value)) > MAX_TRAIT_SIZE:
        return f"traits.{key} is {len(encoded)} bytes of JSON, at most {MAX_TRAIT_SIZE} are kept: send large values as properties"
    return None


def _text_size(text: str) -> int:
    """Bytes of a text in JSON, without its quotes: UTF-8, with control characters, quotes and
    backslashes escaped."""
    try:
        return len(_encode(text)) - 2
    except UnicodeEncodeError:  # a lone surrogate (only in an event handed in parsed): 6 bytes escaped, at most
        return 6 * len(text)


def fits_64_bits(value: int) -> bool:
    """Whether an integer is one JSON readers keep whole (orjson: signed or unsigned 64 bits)."""
    return _MIN_INT <= value <= _MAX_INT


def beyond_64_bits(field: str) -> str:
    """Why a field holding an integer beyond 64 bits is refused, the collector's word for its own
    fields too."""
    return f"{field} holds an integer beyond 64 bits, which loses digits as a JSON number: send such a number as a text"


def _too_deep(field: str) -> str:
    return f"{field} nests objects and arrays more than {MAX_NESTING} levels deep, which is the most accepted"


#: A date alone, as CRMs export a close date and people type one.
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def parse_moment_ms(value: Any) -> int | str:
    """As `parse_time_ms`, and a date alone (YYYY-MM-DD) is its midnight, UTC: for times people
    give (`--at`) and outcomes CRMs export, not for events, whose time says when they happened."""
    if isinstance(value, str) and _DATE.fullmatch(value.strip()):
        value = value.strip() + "T00:00:00+00:00"
    return parse_time_ms(value)


def parse_time_ms(value: Any) -> int | str:
    """Epoch ms from an int of ms or an ISO-8601 text with a time zone; a problem text otherwise."""
    if value.__class__ is int:
        ms = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.upper())  # RFC 3339 allows "t" and "z" too
        except ValueError:
            return f"field 'time' is not an ISO-8601 time: {value!r}" + leap_second_hint(value)
        if moment.tzinfo is None:
            return f"field 'time' has no time zone: {value!r} (add 'Z' or an offset such as '+01:00')"
        ms = (moment - _EPOCH) // _ONE_MS
        if not MIN_TIME_MS <= ms < MAX_TIME_MS:
            return f"field 'time' is {value!r}, outside years 2000-2099"
        return ms
    elif isinstance(value, float) and not isinstance(value, bool):
        return f"field 'time' must be whole epoch milliseconds (an integer, no decimal point or exponent) or an ISO-8601 text, got {value!r}"
    else:
        return f"field 'time' must be epoch milliseconds or an ISO-8601 text, got {json_kind(value)}"
    if not MIN_TIME_MS <= ms < MAX_TIME_MS:
        shown = ms if ms.bit_length() <= 64 else f"an integer of {ms.bit_length()} bits"  # str() refuses 4,300 digits
        return f"field 'time' is {shown}, outside years 2000-2099 in epoch milliseconds" + _unit_hint(ms)
    return ms


def leap_second_hint(text: str) -> str:
    """Why a time Python cannot read was refused, when it is a leap second (second 60, valid
    RFC 3339): '' otherwise. Refused rather than moved, as no event time may be changed
    silently; the sender knows which second it means."""
    if _LEAP_SECOND.search(text) is None:
        return ""
    return " (leap seconds, second 60, are not accepted: send :59.999 or the second after it, :00)"


def _unit_hint(value: int) -> str:
    """The unit an epoch time out of range was likely sent in, when it is a time of 2000-2099 in
    one: a guess shown that fits no magnitude would send the sender looking for the wrong fault."""
    for unit, low, high in _OTHER_UNITS:
        if low <= value < high:
            return f" ({unit} sent as ms?)"
    return ""


def _from_dict(d: dict[str, Any]) -> Event | Rejection:
    # The per-event hot path: one pass of cheap checks for the well-formed case; anything
    # unusual (a missing or numeric id, an ISO time, a null map) takes the careful path below.
    get = d.get
    lead_id, kind, time_ms, event_id = get("lead_id"), get("type"), get("time"), get("event_id")
    properties, traits = get("properties", _EMPTY), get("traits", _EMPTY)
    account_id, product = get("account_id"), get("product")
    if (
        lead_id.__class__ is str
        and kind.__class__ is str
        and time_ms.__class__ is int
        and event_id.__class__ is str
        and properties.__class__ is dict
        and traits.__class__ is dict
        and (account_id is None or (account_id.__class__ is str and 0 < len(account_id) <= MAX_ID_CHARS))
        and (product is None or product.__class__ is str)
        and MIN_TIME_MS <= time_ms < MAX_TIME_MS
        and 0 < len(lead_id) <= MAX_ID_CHARS
        and 0 < len(kind) <= MAX_ID_CHARS
        and 0 < len(event_id) <= MAX_ID_CHARS
        and event_id.isprintable()
        and lead_id.isprintable()
        and (account_id is None or account_id.isprintable())
        and len(properties) + len(traits) <= MAX_FIELDS
        and _value_problem(properties, traits) is None
    ):
        return Event(event_id, lead_id, kind, time_ms, properties, traits, account_id, product)
    return _checked(d)


def _checked(d: dict[str, Any]) -> Event | Rejection:
    """Every check one by one, so the rejection names the first field that is wrong."""
    lead_id = _identifier(d, "lead_id", required=True)
    if lead_id.__class__ is Rejection:
        return lead_id
    kind = d.get("type")
    if kind.__class__ is not str or not kind or len(kind) > MAX_ID_CHARS:
        return _bad(d, "type", kind, "a non-empty text")
    raw_time = d.get("time")
    if raw_time is None:
        return _missing(d, "time")
    time_ms = parse_time_ms(raw_time)
    if isinstance(time_ms, str):
        reason: RejectionReason = "bad_value" if isinstance(raw_time, (int, str)) and not isinstance(raw_time, bool) else "wrong_type"
        return Rejection(reason, time_ms, d)
    event_id = _identifier(d, "event_id", required=kind != IDENTIFY)
    if event_id.__class__ is Rejection:
        return event_id
    properties = d.get("properties")
    if properties is None:
        properties = _EMPTY
    elif properties.__class__ is not dict:
        return _bad(d, "properties", properties, "an object")
    traits = d.get("traits")
    if traits is None:
        traits = _EMPTY
    elif traits.__class__ is not dict:
        return _bad(d, "traits", traits, "an object")
    if len(properties) + len(traits) > MAX_FIELDS:
        return Rejection(
            "too_large", f"{len(properties)} properties and {len(traits)} traits, at most {MAX_FIELDS} in all", d
        )
    problem = _value_problem(properties, traits)
    if problem is not None:
        return Rejection(*problem, d)
    account_id = _identifier(d, "account_id", required=False)
    if account_id.__class__ is Rejection:
        return account_id
    product = d.get("product")
    if product is not None and product.__class__ is not str:
        return _bad(d, "product", product, "a text")
    if event_id is None:
        event_id = _identify_id(time_ms, traits, properties, account_id, product)
    return Event(event_id, lead_id, kind, time_ms, properties, traits, account_id, product)


def _identify_id(time_ms: int, *content: Any) -> str:
    """The id of an identify sent without one: its time and a digest of what it says, so that
    a copy of it (a redelivery, a replay) is the same event, and two updates of one
    millisecond (one second, in ISO times without fractions) are two: by its time alone, the
    second was taken for a copy and dropped."""
    try:
        said = orjson.dumps(content, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:  # a lone surrogate, in an event handed in parsed: by its time alone
        return f"{IDENTIFY}@{time_ms}"
    return f"{IDENTIFY}@{time_ms}#{hashlib.blake2b(said, digest_size=8).hexdigest()}"


def optional_id(d: dict[str, Any], key: str) -> str | None | Rejection:
    """An optional id field of an event object as the engine reads ids (a number is its
    decimal text): the text, None when absent or null, or why it cannot be an id."""
    value: str | None | Rejection = _identifier(d, key, required=False)
    return value


def _identifier(d: dict[str, Any], key: str, required: bool) -> Any:
    """A text id (numbers are accepted as their decimal text); None when absent and optional."""
    value = d.get(key)
    if value.__class__ is str:
        if not value or len(value) > MAX_ID_CHARS:
            return Rejection("bad_value", f"field '{key}' must be 1 to {MAX_ID_CHARS} characters, got {len(value)}", d)
        if not value.isprintable() and _CONTROL.search(value) is not None:
            return Rejection("bad_value", f"field '{key}' contains a control character: {value!r}", d)
        return value
    if value is None:
        return _missing(d, key) if required else None
    if value.__class__ is int:
        if fits_64_bits(value):
            return str(value)
        return Rejection("wrong_type", beyond_64_bits(f"field '{key}'"), d)
    if value.__class__ is float and value.is_integer():
        return Rejection("wrong_type", f"field '{key}' must be a text or an integer, got a number written with a decimal point "
                                       "or exponent: send such an id as a text", d)
    return _bad(d, key, value, "a text or an integer")


def _missing(d: dict[str, Any], key: str) -> Rejection:
    # A producer that sends null needs a different fix than one that never sets the field.
    return Rejection("missing_field", f"field '{key}' is {'null' if key in d else 'missing'}", d)


def _bad(d: dict[str, Any], key: str, value: Any, expected: str) -> Rejection:
    if value is None:
        return _missing(d, key)
    if value.__class__ is str and expected == "a non-empty text":
        return Rejection("bad_value", f"field '{key}' must be a non-empty text of at most {MAX_ID_CHARS} characters", d)
    return Rejection("wrong_type", f"field '{key}' must be {expected}, got {json_kind(value)}", d)


def json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a text"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    if value is None:
        return "null"
    return type(value).__name__
