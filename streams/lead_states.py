"""How a lead's scoring state for every model is stored in one table value.

The lead table is keyed by lead id, the same key as the raw events, so a lead's state sits on
its events' partition and a web request for a lead can be routed by key. One value holds the
state of each model the lead was scored by; each model state is the engine's own compact bytes.
Layout: repeated [u8 name length][name][u32 state length][state].
"""

from __future__ import annotations

import struct

_HEADER = struct.Struct(">B")
_LENGTH = struct.Struct(">I")


def encode(states: dict[str, bytes]) -> bytes:
    parts = []
    for model, state in states.items():
        name = model.encode()
        parts.append(_HEADER.pack(len(name)) + name + _LENGTH.pack(len(state)) + state)
    return b"".join(parts)


def decode(value: bytes) -> dict[str, bytes]:
    states: dict[str, bytes] = {}
    pos, end = 0, len(value)
    while pos < end:
        (name_len,) = _HEADER.unpack_from(value, pos)
        pos += 1
        name = value[pos : pos + name_len].decode()
        pos += name_len
        (state_len,) = _LENGTH.unpack_from(value, pos)
        pos += 4
        states[name] = value[pos : pos + state_len]
        pos += state_len
    return states
