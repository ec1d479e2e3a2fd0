"""Dead letters: input leadstream rejected, kept with the reason so nothing is silently lost.

A dead letter's value is JSON: the reason code, a sentence naming the problem, where the input
came from (topic, partition, offset) and the original bytes (as text when they are UTF-8, else
base64; null when the message had no value, a tombstone, so that a replay sends a tombstone
again). It is keyed like its source message.

A letter must fit in a Kafka message with its key, or the worker could not write it and would
stop (at every restart, on the same input): a key longer than any lead id (KEPT_KEY_BYTES) is
cut, its length kept as `key_size`, and an original that would make the two larger than
MAX_MESSAGE_BYTES (a message near Kafka's limit that is not JSON, whose escaping or base64 makes
it up to six times larger, or one with a large key) is kept as its size and first bytes only, as
many as fit beside the key, and such a letter cannot be replayed.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Generic, Hashable, Literal, TypeVar, get_args

import orjson

from scoring.events import RejectionReason
from streams.envelope import MAX_MESSAGE_BYTES
from streams.outbox import encode_json

#: Of an original too large to keep whole, the bytes a letter keeps (for a person to look at).
KEPT_HEAD_BYTES = 64 * 1024
#: A detail is a sentence; one that quotes a huge value is cut here.
MAX_DETAIL_CHARS = 4096
#: Of a source key longer than this (no lead id is: they are at most 256 characters), a letter
#: keeps its first bytes: a key near Kafka's limit made every letter of its message too large
#: to write, which stopped the worker at every restart.
KEPT_KEY_BYTES = 1024

K = TypeVar("K", bound=Hashable)

#: The reasons the worker dead-letters input for, the one list of them: the engine's refusals and
#: the worker's own. Its metrics export each at 0 from the start (streams.metrics), and mypy holds
#: every letter of the worker to it (Consumed.dead_letter).
WorkerReason = Literal[
    RejectionReason, "unknown_type", "wrong_partition", "future_time", "tombstone", "unreadable_state", "alias_loop",
    "internal_error", "bad_identity_record", "bad_account_update", "unknown_model",
]
WORKER_REASONS: tuple[WorkerReason, ...] = get_args(WorkerReason)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    #: The worker's are a WorkerReason (streams.stage.Consumed.dead_letter), the collector's a
    #: RefusalCode, a connector's its own (sinks/runner.py).
    reason: str
    detail: str
    #: None: the message was a tombstone (no value), which is not the same as an empty value.
    original: bytes | None
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    key: bytes | None = None
    #: False for a letter read back that kept only the original's size and first bytes
    #: (`original` is then empty): there is nothing to replay.
    whole: bool = True

    @property
    def message_key(self) -> bytes | None:
        """The key of the letter's own message: its source's, cut to KEPT_KEY_BYTES."""
        return self.key if self.key is None or len(self.key) <= KEPT_KEY_BYTES else self.key[:KEPT_KEY_BYTES]

    def to_bytes(self) -> bytes:
        record: dict[str, object] = {
            "reason": self.reason,
            "detail": self.detail if len(self.detail) <= MAX_DETAIL_CHARS else self.detail[:MAX_DETAIL_CHARS] + "...",
            "source": {"topic": self.topic, "partition": self.partition, "offset": self.offset},
        }
        if self.key is not None and len(self.key) > KEPT_KEY_BYTES:
            record["key_size"] = len(self.key)
        if self.original is None:
            record["original"] = None
            return encode_json(record)
        try:
            record["original"] = self.original.decode("utf-8")
        except UnicodeDecodeError:
            record["original_base64"] = base64.b64encode(self.original).decode("ascii")
        value = encode_json(record)
        room = MAX_MESSAGE_BYTES - len(self.message_key or b"")  # the broker counts the key in a message's size
        if len(value) <= room:
            return value
        record.pop("original", None)
        record.pop("original_base64", None)
        record["original_size"] = len(self.original)
        # base64 is 4/3 the size; 8 KiB for the rest of the letter (its detail is cut at 4,096).
        head = min(KEPT_HEAD_BYTES, max(0, (room - 8192) * 3 // 4))
        record["original_head_base64"] = base64.b64encode(self.original[:head]).decode("ascii")
        return encode_json(record)

    @classmethod
    def from_bytes(cls, value: bytes | None, key: bytes | None = None) -> DeadLetter:
        """A dead letter as `to_bytes` wrote it (`key`: its message's key); ValueError when the
        value is not one."""
        try:
            record = orjson.loads(value or b"")
            source = record.get("source") or {}
            text = record.get("original")
            whole = "original_size" not in record  # else too large to keep: not replayable
            original: bytes | None
            if isinstance(text, str):
                original = text.encode()
            elif "original" in record and text is None:  # a tombstone
                original = None
            elif not whole:
                original = b""
            else:
                original = base64.b64decode(record["original_base64"], validate=True)
            return cls(record["reason"], record.get("detail", ""), original,
                       source.get("topic"), source.get("partition"), source.get("offset"), key, whole)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:  # JSON and base64 errors are ValueErrors
            raise ValueError(f"not a dead letter as leadstream writes them: {exc!r}") from None


class Repeats(Generic[K]):
    """The inputs one replay of a dead-letter topic took, so that it re-drives each once however
    many letters of it the topic holds: a crash between a letter and its offset commit writes it
    again, and an input still refused after a replay has a letter from each. What makes two
    letters one input (K) is the replay's: the worker's sends an input back to a new offset, so it
    goes by the input's topic, key and bytes; a connector's keeps the source position of what it
    replays, and goes by that. One reader's: not thread-safe."""

    def __init__(self) -> None:
        self._taken: set[K] = set()

    def first(self, identity: K) -> bool:
        """Whether no letter of this input came before in this replay; it is taken from now on."""
        if identity in self._taken:
            return False
        self._taken.add(identity)
        return True
