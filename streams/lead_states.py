"""The lead table's values: each lead's scoring state for every model.

The table is keyed by lead id, the same key as the raw events, so a lead's state sits on its
events' partition and a web request for a lead can be routed by key. One value holds the state
of each model the lead was scored by (and, for an id merged into another lead, the marker
`stitching.MERGED_INTO` -> target id; for a lead forgotten lately, `erasure.FORGOTTEN` ->
offsets) and how far they have read each input topic (`read_offsets.READ` -> offsets), framed
(streams/stage.py); the worker keeps the leads it used lately live (`stage.LiveTable`).
"""

from __future__ import annotations

from typing import Union

from scoring import LeadState
from scoring.errors import StateError
from streams import read_offsets
from streams.erasure import FORGOTTEN, covering
from streams.read_offsets import READ, Offsets, checked, parsed
from streams.stage import frame, parts, unframe
from streams.stitching import MERGED_INTO

#: A lead's states by model; an id merged into another lead holds {MERGED_INTO: target id}, a
#: lead forgotten lately {FORGOTTEN: offsets} (beside the states of its events since); each
#: written by a batch of records also holds {READ: offsets}. Markers are texts.
States = dict[str, Union[LeadState, str]]

#: The names of the parts that say how far a value has read (`progress`).
_READ, _FORGOTTEN = READ.encode(), FORGOTTEN.encode()
_OFFSETS = frozenset((_READ, _FORGOTTEN))

#: What each marker is, for the error naming one that cannot be read.
_MARKERS = {MERGED_INTO: "merge marker", FORGOTTEN: "erasure marker", READ: "read offsets"}


def encode(states: States) -> bytes:
    return frame({model: state.encode() if state.__class__ is str else state.to_bytes()  # type: ignore[union-attr]
                  for model, state in states.items()})


def decode(value: bytes) -> States:
    """A lead's states from its table value; StateError when any of it cannot be read."""
    states: States = {}
    for model, raw in unframe(value).items():
        what = _MARKERS.get(model)
        if what is None:
            states[model] = LeadState.from_bytes(raw)
            continue
        try:
            text = raw.decode()
        except UnicodeDecodeError as exc:
            raise StateError(f"{what} unreadable: {exc}") from None
        states[model] = text if model == MERGED_INTO else checked(text, what)
    return states


def scored(states: States) -> States:
    """The states of the models, the markers left out."""
    return {model: state for model, state in states.items() if state.__class__ is not str}


def progress(value: bytes) -> Offsets:
    """How far a table value has read the inputs, its states left undecoded: its READ offsets,
    and those its erasure marker covers (the greater of each topic's); empty when it has neither,
    or when they cannot be read."""
    try:
        found = parts(value, _OFFSETS)
        read = parsed(found[_READ].decode(), "read offsets") if _READ in found else {}
        forgotten = parsed(found[_FORGOTTEN].decode(), "erasure marker") if _FORGOTTEN in found else {}
    except (StateError, UnicodeDecodeError):  # a value the worker cannot read either: kept by its place
        return {}
    if not forgotten:
        return read
    return {**read, **covering({topic: read[topic] for topic in forgotten if topic in read}, forgotten)}


def behind(kept: bytes, later: bytes, partition: int) -> list[tuple[str, int, int]]:
    """Where `later`, a value of a lead of `partition` written after `kept`, has read less than
    `kept` when it has read no further anywhere (else nothing): each as the topic, partition and
    offset `kept` had read (streams/bulk_store.py). Two values that read alike are not, nor is
    a later value without offsets (written by none of the worker's batches: older data)."""
    kept_offsets = progress(kept)
    later_offsets = progress(later) if kept_offsets else {}
    if not later_offsets:
        return []
    return [read_offsets.position(key, kept_offsets[key], partition)
            for key in read_offsets.lagging(later_offsets, kept_offsets)]
