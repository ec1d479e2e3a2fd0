"""The contract between the delivery runner and a connector, and the crossing record they share.

A connector is small: it parses a message's value and performs one delivery, raising
`RetryableError` or `PermanentError` (sinks.errors) when it cannot. Everything else (consumer
group, ordering, concurrency, rate limit, retries, idempotency, dead letters, offset commits)
is the runner's.

Guarantee: effectively once per crossing. The runner skips crossings it has delivered (by id,
in Redis) and commits offsets only after delivery, so redelivery after a crash or rebalance
never repeats a finished delivery; a step that creates a CRM record runs through `Steps.once`,
which finds the record instead of creating it again when a crash hit between the CRM's answer
and its bookkeeping. Updates of existing records are idempotent and simply run again.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from functools import cached_property
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Generic, Protocol, Sequence, TypeVar

import orjson

from scoring.events import MAX_TIME_MS, MIN_TIME_MS, json_kind
from sinks.errors import PermanentError
from sinks.ratelimit import Limiter
from streams.settings import Settings

T = TypeVar("T")


class Steps(Protocol):
    def once(self, step: str, perform: Callable[[], str], find: Callable[[], str | None]) -> str:
        """Run `perform` (which creates something and returns its id) at most once per delivery.

        After a crash between `perform` and the bookkeeping, `find` looks the record up (by the
        crossing id it carries) instead; it returns None when the record was never created.
        """
        ...


@dataclass(frozen=True, slots=True)
class Position:
    """Where a message stands on its source topic. Messages of one key are on one partition, so
    a larger offset is a newer record of that key. `replayed`: it comes back from a dead letter,
    and newer messages of its key may have been delivered meanwhile."""

    partition: int
    offset: int
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class Reason:
    """A rule and its points; for an account crossing, a member lead (`lead_id`) and its score."""

    rule: str
    points: float
    lead_id: str = ""


#: Why a crossing may lack a trait by which a connector finds a record, for its dead letter.
UNKEPT_TRAITS = ("a crossing carries only the traits its model kept when the lead's events were scored: those its "
                 "keep_traits lists then; a trait added to keep_traits since comes with the lead's next event carrying it")


@dataclass(frozen=True, slots=True)
class Crossing:
    """One threshold crossing, as the worker writes it to the sink topic."""

    id: str
    kind: str
    lead_id: str
    account_id: str | None
    model: str
    from_level: str
    to_level: str
    direction: str
    score: float
    normalized: float
    grade: str
    engagement: int
    cell: str
    temperature: str
    time_ms: int
    reasons: tuple[Reason, ...] = ()
    traits: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, value: bytes | None) -> Crossing:
        if value is None:
            raise PermanentError("not a crossing: a tombstone (a message without a value)")
        try:
            raw = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise PermanentError(f"not a crossing: the value is not JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise PermanentError("not a crossing: the value is not a JSON object")
        try:
            direction = _text(raw["direction"], "direction")
            if direction not in ("up", "down"):
                raise ValueError(f"direction must be 'up' or 'down', not {direction!r}")
            kind = _text_or_none(raw.get("kind"), "kind") or "lead"
            if kind not in ("lead", "account"):
                raise ValueError(f"kind must be 'lead' or 'account', not {kind!r}")
            traits = raw.get("traits") or {}
            if not isinstance(traits, dict):
                raise ValueError(f"field 'traits' must be an object, got {json_kind(traits)}")
            return cls(
                id=_text(raw["id"], "id"),
                kind=kind,
                # An account crossing is about the account as a whole: it may name no lead.
                lead_id=_text(raw["lead_id"], "lead_id") if kind == "lead" else _text_or_none(raw.get("lead_id"), "lead_id") or "",
                account_id=_text_or_none(raw.get("account_id"), "account_id"),
                model=_text(raw["model"], "model"),
                from_level=_text_or_none(raw.get("from_level"), "from_level") or "",
                to_level=_text(raw["to_level"], "to_level"),
                direction=direction,
                score=json_number(raw["score"], "score"),
                normalized=json_number(raw.get("normalized") or 0, "normalized"),
                grade=_text_or_none(raw.get("grade"), "grade") or "",
                engagement=_whole(raw.get("engagement") or 0, "engagement"),
                cell=_text_or_none(raw.get("cell"), "cell") or "",
                temperature=_text_or_none(raw.get("temperature"), "temperature") or "",
                time_ms=_time_ms(raw["time"]),
                reasons=tuple(Reason(_text(r["rule"], "reasons.rule"), json_number(r["points"], "reasons.points"),
                                     _text_or_none(r.get("lead_id"), "reasons.lead_id") or "")
                              for r in _objects(raw.get("reasons") or [], "reasons")),
                # Traits are the lead's own, of any JSON type (company_size: 250): CRMs get them as text.
                traits={str(k): str(v) for k, v in traits.items() if v is not None},
            )
        except KeyError as exc:
            raise PermanentError(f"not a crossing: field {exc.args[0]!r} is missing") from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise PermanentError(f"not a crossing: {exc}") from None
        except RecursionError:  # JSON orjson reads (1,024 levels) but Python cannot turn into text
            raise PermanentError("not a crossing: a field nests objects and arrays too deep") from None

    @property
    def email(self) -> str:
        return self.traits.get("email", "")

    def reasons_text(self) -> str:
        """'pricing_page +30, webinar +10': what made the lead cross, for a CRM note (for an
        account: 'lead-7 +61, lead-2 +40', its members with the most points)."""
        return ", ".join(f"{r.lead_id or r.rule} {r.points:+g}" for r in self.reasons)

    def template_fields(self) -> dict[str, Any]:
        """The names a mapping's text templates may use (see sinks/mappings/*.toml)."""
        return {
            "id": self.id,
            "lead_id": self.lead_id,
            "account_id": self.account_id or "",
            "email": self.email,
            # Who a task or deal is about: a lead the CRM found by its id trait may have no e-mail,
            # and "{email}" then left a subject naming nobody ("Follow up:  is now sql").
            "contact": self.email or self.lead_id,
            "model": self.model,
            "from_level": self.from_level,
            "level": self.to_level,
            "direction": self.direction,
            "score": _number(self.score),
            "normalized": _number(self.normalized),
            "grade": self.grade,
            "engagement": self.engagement,
            "cell": self.cell,
            "temperature": self.temperature,
            "reasons": self.reasons_text(),
        }


def _number(value: float) -> float | int:
    """61.0 as 61, so CRM fields and texts read like the score, not like a float."""
    return int(value) if float(value).is_integer() else round(value, 2)


def _time_ms(value: Any) -> int:
    """Epoch ms within the years events may have (scoring.events): connectors date CRM tasks by
    it, and a time no datetime holds would fail only after the CRM record was updated."""
    ms = _whole(value, "time")
    if not MIN_TIME_MS <= ms < MAX_TIME_MS:
        raise ValueError(f"field 'time' is {ms}, outside years 2000-2099 in epoch milliseconds")
    return ms


def json_number(value: object, name: str) -> float:
    """A field the producer writes as a JSON number. JSON has none that is not finite (orjson
    refuses NaN and 1e400), but float() reads the strings "nan" and "inf": Redis refuses NaN in a
    sorted set, and a CRM's JSON cannot carry either."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"field {name!r} must be a number, got {json_kind(value)}")
    return float(value)


def _whole(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"field {name!r} must be a whole number, got {json_kind(value)}")
    return value


def _objects(value: object, name: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise ValueError(f"field {name!r} must be an array of objects, got {json_kind(value)}"
                         + (" holding others" if isinstance(value, list) else ""))
    return value


def _text(value: object, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"field {name!r}: expected a non-empty string, got {value!r:.100}")
    return value


def _text_or_none(value: object, name: str) -> str | None:
    """A field the worker writes as a string, or null. Anything else is not its record: a list
    account_id became an IN-list in Salesforce's SOQL, an object failed only in the delivery."""
    if value is None or isinstance(value, str):
        return value
    raise ValueError(f"field {name!r} must be a string or null, got {json_kind(value)}")


class Sink(ABC, Generic[T]):
    """What the runner drives: parse one message, deliver it."""

    name: ClassVar[str]

    @cached_property
    def limiter(self) -> Limiter:
        """The connector's API quota, none by default; the runner pauses it on 429 with Retry-After.
        Each connector's own: a pause holds its deliveries, not another connector's."""
        return Limiter(connector=self.name)

    #: Whether the runner hands `deliver_batch` the messages queued from a source partition, up to
    #: MAX_BATCH at once, instead of `deliver` one lead's at a time beside the others': for a sink
    #: whose writes are overwrites, each needing no Steps, and for which a call per message is
    #: the cost (the Redis read model: a round trip each held it to a few thousand a second).
    batched: ClassVar[bool] = False

    def source_topic(self, settings: Settings) -> str:
        return settings.topic_crossings

    @abstractmethod
    def parse(self, key: bytes | None, value: bytes | None, position: Position) -> T:
        """The message as the connector's record; PermanentError when it is not one."""

    def handles(self, item: T) -> bool:
        """Whether this connector has anything to do with the item (the runner counts the others
        as `ignored`, and commits past them)."""
        return True

    def order_key(self, item: T) -> str | None:
        """The record whose state the item sets, for the runner to skip a replayed item that newer
        ones of that record overtook (see sinks.ledger); None when the connector keeps no order
        (the Redis read model orders its own writes)."""
        return None

    def lead_of(self, item: T) -> str | None:
        """The lead whose data the item carries, for the runner to drop it when `leadstream
        forget` erased the lead after the item was written to Kafka (streams/forgotten.py); None
        when it carries no lead's data (an account crossing), or when the connector's own order
        erases it (the Redis read model's live messages and tombstones: sinks/redis_model.py)."""
        return None

    @abstractmethod
    def delivery_id(self, item: T) -> str | None:
        """The id the runner remembers delivered items by; None when delivering twice is harmless."""

    @abstractmethod
    def deliver(self, item: T, steps: Steps) -> None:
        """Perform the action; raise RetryableError or PermanentError when it fails."""

    def deliver_batch(self, items: Sequence[T]) -> list[Exception | None]:
        """A batched sink's: perform the items' actions in their order, in as few calls as the
        service allows; per item None when done, else its error (StaleError, PermanentError, or
        one that a later try may not meet: that item and all after it are tried again). Raise when
        none of them is known to be done."""
        raise NotImplementedError(f"sink {self.name} does not deliver batches")

    def close(self) -> None:
        """Release connections (called once when the runner stops)."""


class CrossingSink(Sink[Crossing]):
    """A connector fed by the sink topic's threshold crossings."""

    #: The traits a lead crossing's record is found by, in the order they are tried (none: the
    #: connector finds none, as the webhook); a model that keeps none of them makes its crossings
    #: undeliverable (sinks.connectors warns of it).
    lookup_traits: ClassVar[tuple[str, ...]] = ()

    def parse(self, key: bytes | None, value: bytes | None, position: Position) -> Crossing:
        return Crossing.from_json(value)

    def delivery_id(self, item: Crossing) -> str:
        return item.id

    def order_key(self, item: Crossing) -> str:
        return order_key_of(item)

    def lead_of(self, item: Crossing) -> str | None:
        return lead_of(item)


def lead_of(crossing: Crossing) -> str | None:
    """A lead crossing's lead; None for an account's (not one lead's data, and after a forget it
    names no lead)."""
    return crossing.lead_id if crossing.kind == "lead" else None


def order_key_of(crossing: Crossing) -> str:
    """A lead's (or account's) level in a model: what its crossings move up and down."""
    return f"{crossing.kind}/{crossing.lead_id if crossing.kind == 'lead' else crossing.account_id}/{crossing.model}"
