"""The lead table's values: each lead's scoring state for every model.

The table is keyed by lead id, the same key as the raw events, so a lead's state sits on its
events' partition and a web request for a lead can be routed by key. One value holds the state
of each model the lead was scored by (and, for an id merged into another lead, the marker
`stitching.MERGED_INTO` -> target id; for a lead forgotten lately, `erasure.FORGOTTEN` ->
offsets), framed (streams/stage.py); the worker keeps the leads
it used lately live (`stage.LiveTable`).
"""

from __future__ import annotations

from typing import Union

from scoring import LeadState
from scoring.errors import StateError
from streams.stage import frame, unframe
from streams.erasure import FORGOTTEN, checked
from streams.stitching import MERGED_INTO

#: A lead's states by model; an id merged into another lead holds {MERGED_INTO: target id}, a
#: lead forgotten lately {FORGOTTEN: offsets} (beside the states of its events since).
States = dict[str, Union[LeadState, str]]


def encode(states: States) -> bytes:
    return frame({model: state.encode() if state.__class__ is str else state.to_bytes()  # type: ignore[union-attr]
                  for model, state in states.items()})


def decode(value: bytes) -> States:
    """A lead's states from its table value; StateError when any of it cannot be read."""
    try:
        return {model: raw.decode() if model == MERGED_INTO else checked(raw.decode()) if model == FORGOTTEN else LeadState.from_bytes(raw)
                for model, raw in unframe(value).items()}
    except UnicodeDecodeError as exc:  # a marker's text
        raise StateError(f"marker unreadable: {exc}") from None
