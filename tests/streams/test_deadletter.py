"""Dead letters read back as they were written (streams/deadletter.py): the sinks' replay and
`leadstream replay-dlq` both read them this way."""

from __future__ import annotations

import pytest

from streams.deadletter import DeadLetter


@pytest.mark.parametrize("original", [b'{"lead_id": "ada"}', b"\xff\xfe not UTF-8", b""])
def test_a_letter_reads_back_as_written(original: bytes) -> None:
    letter = DeadLetter("bad_json", "message is not JSON", original, "leadstream-events", 3, 41, b"ada")
    assert DeadLetter.from_bytes(letter.to_bytes(), b"ada") == letter


@pytest.mark.parametrize("value", [b"{oops", b"[]", b'{"reason": "x"}', b'{"reason": "x", "original_base64": "%%%"}', None])
def test_anything_else_is_refused_with_a_value_error(value: bytes | None) -> None:
    with pytest.raises(ValueError, match="not a dead letter as leadstream writes them"):
        DeadLetter.from_bytes(value)
