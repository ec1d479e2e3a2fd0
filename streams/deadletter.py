"""Dead letters: input leadstream rejected, kept with the reason so nothing is silently lost.

A dead letter's value is JSON: the reason code, a sentence naming the problem, where the input
came from (topic, partition, offset) and the original bytes (as text when they are UTF-8, else
base64). It is keyed like its source message.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import orjson

from streams.outbox import encode_json


@dataclass(frozen=True, slots=True)
class DeadLetter:
    reason: str
    detail: str
    original: bytes
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    key: bytes | None = None

    def to_bytes(self) -> bytes:
        record: dict[str, object] = {
            "reason": self.reason,
            "detail": self.detail,
            "source": {"topic": self.topic, "partition": self.partition, "offset": self.offset},
        }
        try:
            record["original"] = self.original.decode("utf-8")
        except UnicodeDecodeError:
            record["original_base64"] = base64.b64encode(self.original).decode("ascii")
        return encode_json(record)

    @classmethod
    def from_bytes(cls, value: bytes | None, key: bytes | None = None) -> DeadLetter:
        """A dead letter as `to_bytes` wrote it (`key`: its message's key); ValueError when the
        value is not one."""
        try:
            record = orjson.loads(value or b"")
            source = record.get("source") or {}
            text = record.get("original")
            original = text.encode() if isinstance(text, str) else base64.b64decode(record["original_base64"], validate=True)
            return cls(record["reason"], record.get("detail", ""), original,
                       source.get("topic"), source.get("partition"), source.get("offset"), key)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:  # JSON and base64 errors are ValueErrors
            raise ValueError(f"not a dead letter as leadstream writes them: {exc!r}") from None

