"""What a connector has already done, kept in Redis so it survives restarts and rebalances.

Three kinds of keys per connector, all expiring after LEADSTREAM_SINK_DELIVERED_TTL_S:

- `{prefix}:sink:{connector}:delivered:{crossing id}`: the crossing was delivered; the runner
  skips it when Kafka hands it out again (a crash before the offset commit, a rebalance, a
  replay of the dead letters).
- `{prefix}:sink:{connector}:steps:{crossing id}`: a hash of the record-creating steps of a
  delivery in progress, each `pending` (about to call the CRM), `unsettled:<ms>` (its call
  timed out then: the CRM may still be creating the record) or `done:<record id>`. A step found
  `pending` may have reached the CRM before the process died, so it is looked up in the CRM (by
  the crossing id the record carries) before it is tried again; one found `unsettled` is looked
  up until the CRM has had the request's timeout again to finish it, and created again only
  then (a retry that created it at once made a second deal or task when the first call ended
  after the connector gave up on it).
- `{prefix}:sink:{connector}:last:{order key}`: "<partition> <offset>" of the last delivered
  message about a record (a lead's or account's level in a model, Sink.order_key). A replayed
  dead letter older than it (same partition, smaller offset) is skipped as stale: an up-crossing
  to sql dead-lettered during an outage must not create a deal once the lead has cooled down.
  Offsets, not crossing times, order them: a decay step's crossing is timed by the worker's
  clock, a later event's crossing by that event's time, which is usually behind it.
  A lead's `last` keys name it: `leadstream forget` deletes them (`forget_leads`).
"""

from __future__ import annotations

import itertools
import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from redis import Redis, RedisError

from sinks.base import Position
from sinks.errors import OutcomeUnknown, Unsettled
from streams.errors import ServiceError, redis_trouble
from streams.settings import Settings

log = logging.getLogger("leadstream.sinks")

#: Wait before a Redis that did not answer a connector's start is asked again (await_redis).
START_RETRY_S = 1.0

_PENDING = "pending"
_UNSETTLED = "unsettled:"
_DONE = "done:"


def redis_client(settings: Settings, timeout_s: float | None = None) -> Redis:
    """Redis as the connectors (their ledger, the read model) and `leadstream top` use it: a
    connection or command that gets no answer within `timeout_s` (LEADSTREAM_SINK_TIMEOUT_S unless
    told) fails as a RedisError, so a stalled Redis (a stopped host, a partition leaving the
    connection open) is retried or reported, not waited for (redis-py waits forever before 8.0, 5 s since)."""
    timeout_s = settings.sink_timeout_s if timeout_s is None else timeout_s
    return Redis.from_url(settings.redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)


def await_redis(redis: Redis, settings: Settings, kept: str, stop: threading.Event | None = None) -> None:
    """Redis's first answer to a connector as it starts, waited for as Kafka's is: asked again until
    it comes, for LEADSTREAM_KAFKA_CONNECT_TIMEOUT_S from the first try, then a ServiceError saying
    what the connector keeps there (`kept`) and what went wrong. Not at the first failure: a Redis
    that stalled a moment longer than LEADSTREAM_SINK_TIMEOUT_S (a 1 s timeout and a 3 s stall), or
    was still starting (refusing connections, loading its data), stopped the connector where a
    broker as slow would have been waited for. A password or ACL refused is told at once: asked
    again, it gives the same answer. `stop` set cuts the wait short (a ServiceError too)."""
    from redis.exceptions import AuthenticationError, NoPermissionError

    deadline = time.monotonic() + settings.kafka_connect_timeout_s
    for tries in itertools.count(1):
        try:
            redis.ping()
            return
        except RedisError as exc:
            trouble = redis_trouble(exc, settings.redis_url)
            if isinstance(exc, (AuthenticationError, NoPermissionError)) or time.monotonic() >= deadline:
                raise ServiceError(f"cannot start without Redis, {kept}: {trouble}") from None
            if tries == 1:  # once: the tries after it fail alike, and the error at the deadline says it again
                log.warning("Redis does not answer yet, asked again for up to %g s from the first try "
                            "(LEADSTREAM_KAFKA_CONNECT_TIMEOUT_S): %s", settings.kafka_connect_timeout_s, trouble)
        if (stop or threading.Event()).wait(min(START_RETRY_S, max(0.0, deadline - time.monotonic()))):
            raise ServiceError("stopped before Redis answered")


@dataclass(frozen=True)
class Ledger:
    redis: Redis
    prefix: str
    connector: str
    ttl_s: int
    #: How long a step whose call timed out is looked for before it is created again.
    settle_s: float

    def _key(self, kind: str, delivery_id: str) -> str:
        return f"{self.prefix}:sink:{self.connector}:{kind}:{delivery_id}"

    def delivered(self, delivery_id: str) -> bool:
        return bool(self.redis.exists(self._key("delivered", delivery_id)))

    def mark_delivered(self, delivery_id: str, order_key: str | None = None, position: Position | None = None) -> None:
        """The delivery is done; with `order_key`, `position` is the last delivered message about that record."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(self._key("delivered", delivery_id), "1", ex=self.ttl_s)
        pipe.delete(self._key("steps", delivery_id))
        if order_key is not None and position is not None:
            pipe.set(self._key("last", order_key), f"{position.partition} {position.offset}", ex=self.ttl_s)
        pipe.execute()

    def overtaken(self, order_key: str, position: Position) -> bool:
        """Whether a newer message about the record than the one at `position` was delivered."""
        stored = self.redis.get(self._key("last", order_key))
        if stored is None:
            return False
        partition, _, offset = (stored.decode() if isinstance(stored, bytes) else str(stored)).partition(" ")
        # Another partition (the topic's partition count changed): the offsets do not compare.
        return partition == str(position.partition) and int(offset) > position.offset

    def steps(self, delivery_id: str) -> StepJournal:
        return StepJournal(self.redis, self._key("steps", delivery_id), self.ttl_s, self.settle_s)


def forget_leads(redis: Redis, prefix: str, lead_ids: Iterable[str]) -> None:
    """Deletes every connector's `last` keys of the leads (one scan, however many leads). A
    lead's order key is `lead/<id>/<model>`, and no model name holds a '/', so the id is all
    between `lead/` and the last '/', whatever characters it has."""
    ids = set(lead_ids)
    keys = re.compile(re.escape(f"{prefix}:sink:") + r"[^:]+:last:lead/(.*)/[^/]*", re.DOTALL)
    doomed = []
    for key in redis.scan_iter(match=f"{glob_escaped(prefix)}:sink:*:last:lead/*", count=1000):
        found = keys.fullmatch(key.decode("utf-8", "replace"))
        if found is not None and found.group(1) in ids:
            doomed.append(key)
    if doomed:
        redis.delete(*doomed)


def glob_escaped(text: str) -> str:
    """`text` matched as it is by a Redis pattern (a prefix may hold `*`, `?` or `[`)."""
    return re.sub(r"([\\*?\[\]])", r"\\\1", text)


@dataclass(frozen=True)
class StepJournal:
    """The `Steps` of one delivery (see sinks.base.Steps)."""

    redis: Redis
    key: str
    ttl_s: int
    settle_s: float

    def once(self, step: str, perform: Callable[[], str], find: Callable[[], str | None]) -> str:
        state = self.redis.hget(self.key, step)
        state = state.decode() if isinstance(state, bytes) else state
        if state and state.startswith(_DONE):
            return state[len(_DONE):]
        if state == _PENDING or (state and state.startswith(_UNSETTLED)):
            found = find()
            if found is not None:
                self._record(step, _DONE + found)
                return found
            if state.startswith(_UNSETTLED):
                waited_s = time.time() - int(state[len(_UNSETTLED):]) / 1000
                if waited_s < self.settle_s:
                    raise Unsettled(f"{step}: the call that timed out {waited_s:.1f} s ago has made no record yet; it is "
                                    f"looked for until it has had {self.settle_s:g} s, then made again", self.settle_s - waited_s)
        self._record(step, _PENDING)
        try:
            record_id = perform()
        except OutcomeUnknown:
            self._record(step, f"{_UNSETTLED}{int(time.time() * 1000)}")
            raise
        self._record(step, _DONE + record_id)
        return record_id

    def _record(self, step: str, state: str) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.key, step, state)
        pipe.expire(self.key, self.ttl_s)
        pipe.execute()


class NoSteps:
    """For sinks whose writes are idempotent (the Redis read model): every step just runs."""

    def once(self, step: str, perform: Callable[[], str], find: Callable[[], str | None]) -> str:
        return perform()
