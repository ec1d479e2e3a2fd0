"""Redis read model: per scoring model a hot-leads leaderboard and a hash per lead.

Fed by the score-changes topic (compacted, key `<model>/<lead_id>`):

- `{prefix}:top:{model}`: sorted set, member lead id, score the lead's score.
- `{prefix}:lead:{model}:{lead_id}`: hash of score, normalized, grade, engagement, cell,
  temperature, level, last_activity_ms and top_reasons (JSON list of {rule, points}).

Both are written in one MULTI, so a reader never sees a leaderboard entry without its hash. A
tombstone (null value) removes the lead. Writes are overwrites with the latest state, so a
redelivered message is harmless and no ledger is needed; per-lead order is kept by the runner.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, cast

import orjson
from redis import Redis

from sinks.base import Sink, Steps
from sinks.errors import PermanentError
from streams.settings import Settings

HASH_FIELDS = ("score", "normalized", "grade", "engagement", "cell", "temperature", "level", "last_activity_ms")


@dataclass(frozen=True)
class ScoreChange:
    model: str
    lead_id: str
    #: None for a tombstone: the lead is gone from the model.
    fields: dict[str, str] | None
    score: float = 0.0


def leaderboard_key(prefix: str, model: str) -> str:
    return f"{prefix}:top:{model}"


def lead_key(prefix: str, model: str, lead_id: str) -> str:
    return f"{prefix}:lead:{model}:{lead_id}"


class RedisModelSink(Sink[ScoreChange]):
    name = "redis"

    def __init__(self, settings: Settings) -> None:
        self.redis = Redis.from_url(settings.redis_url, socket_timeout=settings.sink_timeout_s)
        self.prefix = settings.redis_prefix

    def source_topic(self, settings: Settings) -> str:
        return settings.topic_scores

    def parse(self, key: bytes | None, value: bytes | None) -> ScoreChange:
        model, _, lead_id = (key or b"").decode(errors="replace").partition("/")
        if not model or not lead_id:
            raise PermanentError(f"score change key {key!r} is not '<model>/<lead_id>'")
        if value is None:
            return ScoreChange(model, lead_id, None)
        try:
            raw = orjson.loads(value)
            score = float(raw["score"])
            # The worker writes null for what a lead does not have yet (no activity, no grade).
            fields = {name: "" if raw.get(name) is None else str(raw[name]) for name in HASH_FIELDS}
            fields["top_reasons"] = orjson.dumps(raw.get("top_reasons") or []).decode()
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise PermanentError(f"score change {model}/{lead_id} is not the documented JSON: {exc!r}") from None
        return ScoreChange(model, lead_id, fields, score)

    def delivery_id(self, item: ScoreChange) -> None:
        return None

    def deliver(self, item: ScoreChange, steps: Steps) -> None:
        pipe = self.redis.pipeline(transaction=True)
        board, lead = leaderboard_key(self.prefix, item.model), lead_key(self.prefix, item.model, item.lead_id)
        if item.fields is None:
            pipe.zrem(board, item.lead_id)
            pipe.delete(lead)
        else:
            pipe.zadd(board, {item.lead_id: item.score})
            pipe.delete(lead)  # a field the producer dropped must not linger
            pipe.hset(lead, mapping=item.fields)  # type: ignore[arg-type]  # redis-py's Mapping is invariant
        pipe.execute()

    def close(self) -> None:
        self.redis.close()


def top_leads(redis: Redis, prefix: str, model: str, limit: int) -> list[dict[str, Any]]:
    """The `limit` highest-scored leads of a model, best first, each with its hash."""
    entries = cast(list[tuple[bytes, float]], redis.zrevrange(leaderboard_key(prefix, model), 0, limit - 1, withscores=True))
    pipe = redis.pipeline(transaction=False)
    for member, _ in entries:
        pipe.hgetall(lead_key(prefix, model, member.decode()))
    rows = []
    for (member, score), stored in zip(entries, pipe.execute()):
        row: dict[str, Any] = {k.decode(): v.decode() for k, v in stored.items()}
        row.update(lead_id=member.decode(), score=score)
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    header = ("#", "lead", "score", "norm", "grade", "cell", "temp", "level", "last activity (UTC)", "top reasons")
    lines = [header]
    for rank, row in enumerate(rows, 1):
        reasons = orjson.loads(row.get("top_reasons") or "[]")
        last_ms = row.get("last_activity_ms") or ""
        last = datetime.fromtimestamp(int(last_ms) / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M") if last_ms.isdigit() else ""
        lines.append((
            str(rank), row["lead_id"], f"{row['score']:g}", row.get("normalized", ""), row.get("grade", ""),
            row.get("cell", ""), row.get("temperature", ""), row.get("level", ""), last,
            ", ".join(f"{r['rule']} {float(r['points']):+g}" for r in reasons[:3]),
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)


def print_top(settings: Settings, model: str, limit: int) -> int:
    """`leadstream top`: the hottest leads of a model, from Redis, as a table."""
    from redis import RedisError

    from streams.errors import ServiceError

    try:
        rows = top_leads(Redis.from_url(settings.redis_url), settings.redis_prefix, model, limit)
    except RedisError as exc:
        raise ServiceError(f"cannot read Redis at {settings.redis_url} ({exc}); run `leadstream services up`") from None
    if not rows:
        print(f"no leads for model {model!r} in Redis yet: is `leadstream sink redis` running, and the worker scoring?")
        return 0
    print(format_table(rows))
    return 0
