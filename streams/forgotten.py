"""The erasure registry: which leads `leadstream forget` erased, and when, kept in Redis.

The worker erases a lead from what it keeps and publishes (streams/scorer.py, streams/erasure.py),
but records of the lead written before the request stay on topics that keep everything for
their retention: crossings a connector that is stopped or lagging has not delivered yet, the
connectors' dead letters, the worker's dead letters. Read after the erasure, a crossing would
send the person's data to a CRM again, and a replayed event would bring the lead back into the
worker. So `leadstream forget` records each erasure here, and connectors (sinks/runner.py) and
`leadstream replay-dlq` (streams/replay.py) drop what of the lead was written to Kafka before it (by
the record's Kafka timestamp: a crossing's own time is ahead of the erasure when its events were
timed ahead of the clock).

`{prefix}:forgotten:{digest}` holds the time of the request, epoch ms, for TTL_MS. The digest
(BLAKE2b, as accounts keep of the leads that left them) stands for the id because a list of
the people who asked to be forgotten is itself personal data: the keys cannot be read back into
ids, though an id someone already holds can be tested against them, as every lookup must.

The records are only as lasting as Redis: one that keeps its writes in memory alone until a
snapshot, or evicts keys, loses erasures. `durability_warning` tells the commands that rely on
them (the connectors, `leadstream forget`) at their start.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass

from redis import Redis, RedisError, ResponseError

from scoring.state import kept_key
from streams.services import REDIS_DURABILITY_ARGS
from streams.settings import Settings
from streams.topics import DEAD_LETTER_RETENTION_MS

#: Kafka deletes a log segment whole, once its newest record is past retention, and rolls a
#: segment at the latest after log.roll.hours (168 by default): a record outlives its topic's
#: retention by up to that long.
SEGMENT_ROLL_MS = 7 * 24 * 3600 * 1000
#: How long an erasure is remembered: as long as the longest-kept topic that may hold the lead's
#: records (the dead-letter topics, the worker's and the connectors'; crossings and account
#: updates are kept the broker's default, 7 days) can still be read.
TTL_MS = DEAD_LETTER_RETENTION_MS + SEGMENT_ROLL_MS


@dataclass(frozen=True)
class Forgotten:
    redis: Redis
    prefix: str

    def _key(self, lead_id: str) -> str:
        return f"{self.prefix}:forgotten:{kept_key(lead_id)[1:]}"  # the digest alone, without its '#'

    def record(self, lead_ids: list[str], at_ms: int) -> None:
        """The leads were asked to be forgotten at `at_ms` (a later request replaces an earlier one)."""
        pipe = self.redis.pipeline(transaction=False)
        for lead_id in lead_ids:
            pipe.set(self._key(lead_id), at_ms, px=TTL_MS)
        pipe.execute()

    def covers(self, lead_id: str, time_ms: int) -> bool:
        """Whether a record of the lead written to Kafka at `time_ms` (its timestamp) is from
        before the lead's last erasure (within TTL_MS): it belongs to the person erased, not to a
        lead that came back later."""
        erased_ms = self.redis.get(self._key(lead_id))
        return erased_ms is not None and time_ms <= int(erased_ms)


def durability_warning(redis: Redis) -> str | None:
    """One line saying how this Redis can lose the erasure records and the connectors' delivered
    ids (no append-only file: a crash loses the writes since the last snapshot, which a quiet Redis
    may never take; an eviction policy: keys dropped at maxmemory); None when it keeps them, or
    when CONFIG is refused (managed Redis disables it; their persistence is the provider's)."""
    try:
        config = {**redis.config_get("appendonly"), **redis.config_get("maxmemory-policy")}
    except ResponseError:
        return None
    problems = []
    if _text(config.get("appendonly")) != "yes":
        problems.append("appendonly is no (a crash loses the writes since its last snapshot)")
    policy = _text(config.get("maxmemory-policy"))
    if policy and policy != "noeviction":
        problems.append(f"maxmemory-policy is {policy} (it evicts keys when full)")
    if not problems:
        return None
    return (f"Redis (LEADSTREAM_REDIS_URL) can lose erasure records and delivered ids, so forgotten leads' crossings "
            f"or delivered ones could be sent again: {'; '.join(problems)}. Run it as `leadstream services up` does: "
            f"redis-server {shlex.join(REDIS_DURABILITY_ARGS)} (README: What Redis leadstream needs)")


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


def warn_if_not_durable(settings: Settings, command: str) -> None:
    """At the start of a command that relies on the records: `durability_warning`'s line on
    standard error. A Redis out of reach says nothing here: the command itself reports it."""
    from sinks.ledger import redis_client

    redis = redis_client(settings)
    try:
        warning = durability_warning(redis)
    except RedisError:
        return
    finally:
        redis.close()
    if warning is not None:
        print(f"leadstream {command}: warning: {warning}", file=sys.stderr)
