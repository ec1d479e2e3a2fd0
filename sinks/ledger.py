"""What a connector has already done, kept in Redis so it survives restarts and rebalances.

Two kinds of keys per connector, both expiring after LEADSTREAM_SINK_DELIVERED_TTL_S:

- `{prefix}:sink:{connector}:delivered:{crossing id}`: the crossing was delivered; the runner
  skips it when Kafka hands it out again (a crash before the offset commit, a rebalance, a
  replay of the dead letters).
- `{prefix}:sink:{connector}:steps:{crossing id}`: a hash of the record-creating steps of a
  delivery in progress, each `pending` (about to call the CRM) or `done:<record id>`. A step
  found `pending` may have reached the CRM before the process died, so it is looked up in the
  CRM (by the crossing id the record carries) before it is tried again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from redis import Redis

_PENDING = "pending"
_DONE = "done:"


@dataclass(frozen=True)
class Ledger:
    redis: Redis
    prefix: str
    connector: str
    ttl_s: int

    def _key(self, kind: str, delivery_id: str) -> str:
        return f"{self.prefix}:sink:{self.connector}:{kind}:{delivery_id}"

    def delivered(self, delivery_id: str) -> bool:
        return bool(self.redis.exists(self._key("delivered", delivery_id)))

    def mark_delivered(self, delivery_id: str) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(self._key("delivered", delivery_id), "1", ex=self.ttl_s)
        pipe.delete(self._key("steps", delivery_id))
        pipe.execute()

    def steps(self, delivery_id: str) -> StepJournal:
        return StepJournal(self.redis, self._key("steps", delivery_id), self.ttl_s)


@dataclass(frozen=True)
class StepJournal:
    """The `Steps` of one delivery (see sinks.base.Steps)."""

    redis: Redis
    key: str
    ttl_s: int

    def once(self, step: str, perform: Callable[[], str], find: Callable[[], str | None]) -> str:
        state = self.redis.hget(self.key, step)
        state = state.decode() if isinstance(state, bytes) else state
        if state and state.startswith(_DONE):
            return state[len(_DONE):]
        if state == _PENDING:
            found = find()
            if found is not None:
                self._record(step, _DONE + found)
                return found
        self._record(step, _PENDING)
        record_id = perform()
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
