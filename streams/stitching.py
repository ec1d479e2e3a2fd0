"""Identity stitching through Kafka: anonymous visitors merged into the leads they become.

The collector keys an anonymous visitor's events by `anon:<anonymousId>`. When an `identify`
(userId + anonymousId) or an `alias` (userId + previousId) arrives, the scorer sends a *link*
on the identity topic, keyed by the old id so it lands on the partition holding its state:

1. link `{"kind": "link", "source": S, "target": U, "time": t}` (partition of S): S's states are
   sent on as a *merge* keyed by U, and once Kafka has it, S's table entry becomes a marker
   "merged into U". A link to an id already merged is ignored: merging twice adds nothing.
2. merge `{"kind": "merge", "source": S, "target": U, "time": t, "states": {model: base64}}`
   (partition of U): each state is merged into U's by `scoring.identity.merge`, which records it
   as an event `merge:S`, so a redelivered merge is a duplicate; crossings follow as usual.
3. Events that reach a merged id later are re-keyed to its target and produced again on the
   events topic (with `stitched_from`), where the target's event-id memory drops any that the
   visitor's profile had already scored. An alias chain (S -> U -> W) is followed hop by hop, at
   most MAX_HOPS; a longer chain is a loop and goes to the dead-letter topic.

Both tables (marker and states) are the lead table, so a restarted worker recovers them like
any lead state. Anonymous profiles are scored but never publish crossings: no CRM can act on
them; the known lead crosses when the merge lifts it.
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec

from scoring import LeadState
from scoring.errors import StateError
from scoring.events import MAX_TIME_MS, Id
from streams.outbox import encode_json
from streams.segment import ANONYMOUS_PREFIX

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
    field; a `\\u` escape could spell either name): only those need their JSON objects read."""
    return b"anonymous_id" in raw or b"previous_id" in raw or b"\\u" in raw


def links_from(item: dict[str, Any]) -> list[tuple[str, str]]:
    """(old id, new id) pairs an identify or alias event asks to stitch."""
    kind, target = item.get("type"), item.get("lead_id")
    if not isinstance(target, str) or is_anonymous(target):
        return []
    if kind == "identify":
        anonymous_id = item.get("anonymous_id")
        return [(ANONYMOUS_PREFIX + anonymous_id, target)] if isinstance(anonymous_id, str) and anonymous_id else []
    if kind == "alias":
        previous = item.get("previous_id")
        if not isinstance(previous, str) or not previous:
            return []
        # Segment's previousId is an anonymousId or an earlier userId: stitch whichever exists.
        sources = [previous] if is_anonymous(previous) else [ANONYMOUS_PREFIX + previous, previous]
        return [(source, target) for source in sources if source != target]
    return []


class IdentityRecord(msgspec.Struct, frozen=True, omit_defaults=True):
    """A link or a merge as it crosses the identity topic (see the module doc); `states` only
    in a merge: each model's state bytes, base64."""

    kind: Literal["link", "merge"]
    source: Id
    target: Id
    time_ms: Annotated[int, msgspec.Meta(ge=0, lt=MAX_TIME_MS)] = msgspec.field(name="time")
    states: dict[str, str] = {}


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
    except (msgspec.DecodeError, RecursionError) as exc:
        raise IdentityRecordError(f"identity record unreadable: {exc}") from None
    states = {}
    for model, raw in record.states.items():
        try:
            states[model] = LeadState.from_bytes(base64.b64decode(raw, validate=True))
        except (binascii.Error, StateError) as exc:
            raise IdentityRecordError(f"merge record of {record.source!r} into {record.target!r}: state of model {model!r} "
                                      f"unreadable: {exc}") from None
    return record, states


def forwarded(item: dict[str, Any], target: str) -> dict[str, Any] | None:
    """The event re-keyed to the lead its id was merged into; None past MAX_HOPS (a loop)."""
    trail = list(item.get("stitched_from") or ())
    if len(trail) >= MAX_HOPS:
        return None
    return {**item, "lead_id": target, "stitched_from": [*trail, item["lead_id"]]}
