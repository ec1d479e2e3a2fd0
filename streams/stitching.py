"""Identity stitching through Kafka: anonymous visitors merged into the leads they become.

The collector keys an anonymous visitor's events by `anon:<anonymousId>`. When an `identify`
(userId + anonymousId) or an `alias` (userId + previousId) arrives, the scorer sends a *link*
on the identity topic, keyed by the old id so it lands on the partition holding its state:

1. link `{"kind": "link", "source": S, "target": U, "time": t}` (partition of S): S's states are
   sent on as a *merge* keyed by U, and once Kafka has it, S's table entry becomes a marker
   "merged into U". A link to an id already merged is ignored: merging twice adds nothing. An
   identify or alias whose old id could never be a lead's (longer than an id may be once
   `anon:` is put before it, or with a control character) is refused with its event, which is
   dead-lettered as `bad_value`: no record the worker writes is one it cannot read back.
2. merge `{"kind": "merge", "source": S, "target": U, "time": t, "states": {model: base64}}`
   (partition of U): each state is merged into U's by `scoring.identity.merge`, which records it
   as an event `merge:S`, so a redelivered merge is a duplicate; crossings follow as usual. When
   U was itself merged into W since, the merge is sent on to W (`hops` counts these).
3. A loop of links (two aliases sent at once, each naming the other: each id becomes the
   other's marker before either merge arrives) would leave the states of both in flight for
   ever. So a merge whose target turns out merged into the merge's own source, or that was sent
   on MAX_HOPS times already, goes back to its source instead (a merge with source = target),
   and there its states replace the source's marker: the source is a lead again, with what it
   had, and nothing is lost or counted twice. Arriving where the source has states already (a
   redelivered return), it is dropped.
4. Events that reach a merged id later are re-keyed to its target and produced again on the
   events topic (with `stitched_from`), where the target's event-id memory drops any that the
   visitor's profile had already scored. An alias chain (S -> U -> W) is followed hop by hop, at
   most MAX_HOPS; a longer chain is a loop and goes to the dead-letter topic.
5. Each re-keyed event, link and merge carries where the record it was made from was read
   (`Origin`, a record header): a worker that reads that record again after a restart makes it
   again, under a new offset, and the receiving id's states drop the copy by its origin
   (streams/read_offsets.py), however many events that id had since.

Both tables (marker and states) are the lead table, so a restarted worker recovers them like
any lead state. Anonymous profiles are scored but never publish crossings: no CRM can act on
them; the known lead crosses when the merge lifts it.
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Annotated, Any, Literal, NamedTuple

import msgspec

from scoring import LeadState
from scoring.errors import StateError
from scoring.events import MAX_ID_CHARS, MAX_TIME_MS, UNDECODABLE, Id, Rejection, is_id, optional_id
from scoring.identity import ANONYMOUS_PREFIX
from streams.outbox import Headers, encode_json

if TYPE_CHECKING:
    from scoring import Transition
    from streams.lead_states import States

#: The lead-table entry of an id merged into another: {MERGED_INTO: target id}.
MERGED_INTO = "\x00merged_into"
MAX_HOPS = 8


def merged_into(states: States) -> str | None:
    return states.get(MERGED_INTO)  # type: ignore[return-value]  # the marker's value is the target id


def marker(target: str) -> States:
    return {MERGED_INTO: target}


def is_anonymous(lead_id: str | None) -> bool:
    return lead_id is not None and lead_id.startswith(ANONYMOUS_PREFIX)


def publishable(transition: Transition) -> bool:
    """Whether a crossing goes out: an anonymous visitor's does not (no CRM can act on it; the
    known lead crosses when a merge lifts it)."""
    return not (transition.kind == "lead" and is_anonymous(transition.lead_id))


def may_link(raw: bytes) -> bool:
    """Whether a message's bytes may hold a stitching link (an anonymous_id or previous_id
    field; a `\\u` escape could spell either name), or an alias, which must name one: only those
    need their JSON objects read."""
    return b"anonymous_id" in raw or b"previous_id" in raw or b"\\u" in raw or b"alias" in raw


def links_of(item: dict[str, Any]) -> list[tuple[str, str]] | Rejection:
    """(old id, new id) pairs an identify or alias event asks to stitch; or, when its old id
    could never be a lead's, why (naming the field and the bound): the event is refused, since
    the link record would name an id no record of the identity topic may carry. Ids are read
    as the engine reads the event's own: a number is its decimal text (an identify of lead 43
    links lead "43", which it is scored as), and an id of another type is refused."""
    kind = item.get("type")
    if kind != "identify" and kind != "alias":
        return []
    target = optional_id(item, "lead_id")
    if not isinstance(target, str) or is_anonymous(target):  # the event itself is refused, or a visitor's
        return []
    if kind == "identify":
        anonymous_id = _old_id(item, "anonymous_id")
        if not isinstance(anonymous_id, str):
            return anonymous_id or []
        source = ANONYMOUS_PREFIX + anonymous_id
        if not is_id(source):
            return _not_an_id("anonymous_id", anonymous_id, MAX_ID_CHARS - len(ANONYMOUS_PREFIX),
                              f" (the visitor's lead id is {ANONYMOUS_PREFIX!r} + anonymous_id, at most {MAX_ID_CHARS})")
        return [(source, target)]
    previous = _old_id(item, "previous_id")
    if previous is None:  # an alias is nothing but its link: one naming no old id is a sender's bug to show
        said = "missing" if "previous_id" not in item else "null" if item["previous_id"] is None else "empty"
        return Rejection("missing_field", f"field 'previous_id' is {said}: an alias names the id the lead had before "
                                          "(Segment's previousId), which is all it is for")
    if not isinstance(previous, str):
        return previous
    if not is_id(previous):
        return _not_an_id("previous_id", previous, MAX_ID_CHARS, "")
    # Segment's previousId is an anonymousId or an earlier userId: stitch whichever exists
    # (`anon:` + a previous_id near the limit is no id, so no visitor can have it).
    sources = [previous] if is_anonymous(previous) else [ANONYMOUS_PREFIX + previous, previous]
    return [(source, target) for source in sources if source != target and is_id(source)]


def _old_id(item: dict[str, Any], field: str) -> str | Rejection | None:
    """The old id an event names in `field`, as a text (checked by the caller, whose message
    names the bound); None when it names none (absent, null or empty); a Rejection for a value
    that is no id (an object, an array, a boolean)."""
    value = item.get(field)
    if value is None or value == "":
        return None
    return value if value.__class__ is str else optional_id(item, field)


def _not_an_id(field: str, value: str, limit: int, why: str) -> Rejection:
    if len(value) > limit:
        return Rejection("bad_value", f"field {field!r} must be 1 to {limit} characters{why}, got {len(value)}: no lead can have "
                         "that id (its own events are refused too), so there is nothing to stitch; have the sender keep its "
                         "ids within the limit")
    return Rejection("bad_value", f"field {field!r} contains a control character: {value!r}")


class IdentityRecord(msgspec.Struct, frozen=True, omit_defaults=True):
    """A link or a merge as it crosses the identity topic (see the module doc); `states` and
    `hops` only in a merge: each model's state bytes, base64, and how many times it was sent on
    to the lead its target had been merged into (absent: 0)."""

    kind: Literal["link", "merge"]
    source: Id
    target: Id
    time_ms: Annotated[int, msgspec.Meta(ge=0, lt=MAX_TIME_MS)] = msgspec.field(name="time")
    states: dict[str, str] = {}
    hops: Annotated[int, msgspec.Meta(ge=0)] = 0


class IdentityRecordError(ValueError):
    """An identity topic record leadstream did not write, or cannot read: it is dead-lettered."""


_decode_record = msgspec.json.Decoder(IdentityRecord).decode


def link_record(source: str, target: str, time_ms: int) -> bytes:
    return encode_json(IdentityRecord("link", source, target, time_ms))


def merge_record(source: str, target: str, time_ms: int, states: States) -> bytes:
    encoded = {model: base64.b64encode(state.to_bytes()).decode("ascii") for model, state in states.items()}  # type: ignore[union-attr]
    return encode_json(IdentityRecord("merge", source, target, time_ms, encoded))


def read_record(value: bytes) -> tuple[IdentityRecord, dict[str, LeadState]]:
    """A record of the identity topic, with a merge's states decoded; IdentityRecordError,
    naming the problem, for anything else (checked whole before any of it is used)."""
    try:
        record = _decode_record(value)
    except UNDECODABLE as exc:
        raise IdentityRecordError(f"identity record unreadable: {exc}") from None
    states = {}
    for model, raw in record.states.items():
        try:
            states[model] = LeadState.from_bytes(base64.b64decode(raw, validate=True))
        except (binascii.Error, StateError) as exc:
            raise IdentityRecordError(f"merge record of {record.source!r} into {record.target!r}: state of model {model!r} "
                                      f"unreadable: {exc}") from None
    return record, states


def returned(record: IdentityRecord) -> bool:
    """Whether a merge is on its way back to its source (see `onward`)."""
    return record.kind == "merge" and record.source == record.target


def onward(record: IdentityRecord, merged_into: str) -> IdentityRecord:
    """A merge whose target turns out merged into `merged_into`, sent on to it, one hop further;
    or back to its source (`returned`) when that would close a loop (`merged_into` is the source,
    whose own states these are) or it was sent on MAX_HOPS times already: folded into no lead, it
    would bounce between markers for ever, and its states with it."""
    if merged_into == record.source or record.hops >= MAX_HOPS:
        return msgspec.structs.replace(record, target=record.source)
    return msgspec.structs.replace(record, target=merged_into, hops=record.hops + 1)


class Origin(NamedTuple):
    """Where the event a record re-keys was read: its message's topic, partition and offset, and
    its position among the message's events."""

    topic: str
    partition: int
    offset: int
    position: int


#: The header that carries a re-keyed event's origin, as ASCII "<topic> <partition> <offset>
#: <position>" (a topic's name has no space).
ORIGIN = "leadstream-origin"


def origin_headers(origin: Origin) -> Headers:
    return ((ORIGIN, b"%s %d %d %d" % (origin.topic.encode(), origin.partition, origin.offset, origin.position)),)


def origin(headers: Any) -> Origin | None:
    """The origin among a record's headers ((name, value) pairs); None when it has none, or one
    this worker did not write (it is then only a duplicate's event id that can drop it again)."""
    for name, value in headers or ():
        if name == ORIGIN:
            try:
                topic, *numbers = value.decode("ascii").split(" ")
                fields = [int(number) for number in numbers]
            except (ValueError, AttributeError):  # not ASCII, not numbers; no bytes
                return None
            return Origin(topic, *fields) if topic and len(fields) == 3 and min(fields) >= 0 else None
    return None


def forwarded(item: dict[str, Any], target: str) -> dict[str, Any] | None:
    """The event re-keyed to the lead its id was merged into; None past MAX_HOPS (a loop)."""
    trail = list(item.get("stitched_from") or ())
    if len(trail) >= MAX_HOPS:
        return None
    return {**item, "lead_id": target, "stitched_from": [*trail, item["lead_id"]]}
