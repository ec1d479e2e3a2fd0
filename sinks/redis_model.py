"""Redis read model: per scoring model a hot-leads and a hot-accounts leaderboard, and a hash
per lead and per account.

Fed by the score-changes topic (compacted): lead summaries keyed `<model>/<lead_id>`, account
summaries keyed `<model>:account/<account_id>` (streams/rollup.py):

- `{prefix}:top:{model}`: sorted set, member lead id, score the lead's score.
- `{prefix}:lead:{model}:{lead_id}`: hash of score, normalized, grade, engagement, cell,
  temperature, level, last_activity_ms, as_of_ms (the summary's `time`: when its score was valued,
  epoch ms) and top_reasons (JSON list of {rule, points}). A lead in no account under a half-life
  is published again only when it crosses a line, so its score is as of then, and a reader needs
  that time to tell a stale one; hashes written before as_of_ms was have none until their lead's
  next change (`leadstream top` leaves it blank).
- `{prefix}:top-accounts:{model}` and `{prefix}:account:{model}:{account_id}`: the same for
  accounts, the hash holding score, normalized, level, temperature, members (how many) and
  top_members (JSON list of {lead_id, score}).

- the hash's field `version`: "<partition> <offset>" of the score-changes message the entry was
  last written from; after a tombstone, `{prefix}:removed:{model}:{kind}:{digest}` holds it, as
  the mark that the entry is gone, for DLQ_RETENTION_MS (30 days). In the hash, not a key of its
  own, a live entry costs no second key. The key holds the id's BLAKE2b digest (as
  streams/forgotten.py does), not the id: a tombstone is often a forgotten lead's, and a key
  naming the person for 30 days after the erasure would keep what `forget` erased. Releases
  before this one wrote `{prefix}:version:{model}:{kind}:{id}`: `upgrade_version_keys` renames
  them at the connector's start.

An entry is written by one Lua script, so a reader never sees a leaderboard entry without its
hash: it checks the keys' types before its first write, and Redis refuses it whole over
maxmemory (a Redis 7 flagged script: the shipped Redis and docker-compose's image are 7.0). A tombstone (null value) removes the entry. Writes are overwrites with the latest state,
so a redelivered message is harmless and no ledger is needed. The sink is batched (Sink.batched):
the runner hands it the messages queued from a source partition, in their order, up to
MAX_BATCH, and it sends one script call each in one pipeline, one round trip for all (one per
message held it to a few thousand a second, behind a worker at 5,000 events/s). Redis runs them
in order, so two changes of one key in a batch land in their order, as the runner keeps them
across batches. Each call's answer is its own: a replayed change found older is stale, and a
call Redis failed is tried again with the batch's calls after it (overwrites, again in order)
while those before it are done; offsets are committed once the whole batch is. A malformed
message is dead-lettered by the runner before the batch is sent, the others written. A replayed
dead letter is applied only when it is newer (a larger offset on the same partition) than the
message the entry was last written from, in the same script: an old summary must not overwrite
a newer one, nor bring back a forgotten lead. The summary's `time` cannot order them: a decay
step is timed by the worker's clock, and the next event's summary by that event's time, which
is usually behind it. Messages read live are applied as they come (the runner keeps their
order), so a re-created topic, whose offsets start again, heals the versions. The runner makes
the erasure check of the connectors (Sink.lead_of) on replayed lead summaries, not on
tombstones (they only remove): a dead letter is readable up to 37 days and the removed entry's
version kept 30, and without the check a forgotten lead's summary replayed after that came
back. Live messages are not checked (a Redis call each, on the read model's hot path): they
come in order, and a forgotten lead's summaries before its tombstone. The version check keeps
an older summary from bringing back an entry that a tombstone of another kind removed (a
merged visitor, an account without members).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Sequence, cast

import orjson
from redis import Redis

from scoring.events import json_kind
from scoring.state import kept_key
from sinks.base import Position, Sink, Steps, json_number
from sinks.errors import PermanentError, StaleError
from sinks.ledger import glob_escaped, redis_client
from sinks.runner import DLQ_RETENTION_MS
from streams.settings import Settings
from streams.tables import columns, points

HASH_FIELDS = ("score", "normalized", "grade", "engagement", "cell", "temperature", "level", "last_activity_ms", "as_of_ms")
#: The hash fields the summary names otherwise (the others keep its names): a lead's `time`, when
#: its score was valued, named with its unit as last_activity_ms is.
_SUMMARY_NAME = {"as_of_ms": "time"}
ACCOUNT_HASH_FIELDS = ("score", "normalized", "level", "temperature", "members")
#: The model part of an account summary's key ends so (a model name has no ':').
ACCOUNT_SUFFIX = ":account"
#: The JSON list each kind's hash keeps as one field: lead reasons, account best members.
_LIST_FIELD = {"lead": "top_reasons", "account": "top_members"}
#: KEYS: leaderboard, entry hash, entry version. ARGV: id, score, partition, offset, replayed
#: ("1"/"0"), how long a tombstone's version stays (s), then the hash's fields and values (none:
#: a tombstone). 1 when written, 0 when a replayed message is not newer than the stored one.
#: The shebang makes it a Redis 7 function-flagged script without `allow-oom`: Redis refuses it
#: whole over maxmemory (as it refuses SET), where a plain script's first command, DEL, was let
#: through, and every write after it. What can fail (another program's key of another type) is
#: checked before the first write, so a refused call leaves the entry as it was.
_WRITE = """#!lua
local types = {'zset', 'hash', 'string'}
for i, expected in ipairs(types) do
  local found = redis.call('TYPE', KEYS[i])['ok']
  if found ~= expected and found ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. KEYS[i] .. ' holds a ' .. found .. ', where the read model keeps a ' .. expected)
  end
end
if ARGV[5] == '1' then
  local stored = redis.call('HGET', KEYS[2], 'version') or redis.call('GET', KEYS[3])
  if stored then
    local partition, offset = string.match(stored, '^(%d+) (%d+)$')
    if partition == ARGV[3] and tonumber(offset) >= tonumber(ARGV[4]) then
      return 0
    end
  end
end
local version = ARGV[3] .. ' ' .. ARGV[4]
redis.call('DEL', KEYS[2])
if #ARGV == 6 then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('SET', KEYS[3], version, 'EX', ARGV[6])
else
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
  redis.call('HSET', KEYS[2], 'version', version, unpack(ARGV, 7))
  redis.call('DEL', KEYS[3])
end
return 1
"""


@dataclass(frozen=True)
class ScoreChange:
    model: str
    #: "lead" or "account"
    kind: str
    #: the lead id or the account id
    id: str
    #: None for a tombstone: the entry is gone from the model.
    fields: dict[str, str] | None
    position: Position
    score: float = 0.0


def leaderboard_key(prefix: str, model: str, kind: str = "lead") -> str:
    return f"{prefix}:top:{model}" if kind == "lead" else f"{prefix}:top-accounts:{model}"


def lead_key(prefix: str, model: str, lead_id: str) -> str:
    return f"{prefix}:lead:{model}:{lead_id}"


#: The fields of each item of a lead's `top_reasons` and an account's `top_members`: a text and a
#: number (`leadstream top` shows them).
_LIST_ITEM = {"lead": ("rule", "points"), "account": ("lead_id", "score")}


def _listed(items: Any, name: str, fields: tuple[str, str]) -> Any:
    """A summary's list field, checked as `leadstream top` reads it."""
    text, number = fields
    if not isinstance(items, list) or not all(
        isinstance(item, dict) and isinstance(item.get(text), str) and isinstance(item.get(number), (int, float))
        and not isinstance(item.get(number), bool) for item in items
    ):
        raise ValueError(f"field {name!r} must be an array of {{\"{text}\": text, \"{number}\": number}} objects, "
                         f"got {json_kind(items)}")
    return items


def entry_key(prefix: str, model: str, kind: str, entry_id: str) -> str:
    return lead_key(prefix, model, entry_id) if kind == "lead" else f"{prefix}:account:{model}:{entry_id}"


def version_key(prefix: str, model: str, kind: str, entry_id: str) -> str:
    return f"{prefix}:removed:{model}:{kind}:{kept_key(entry_id)[1:]}"  # the digest alone, without its '#'


#: KEYS: a version key as releases before `removed:` wrote it (naming the id), the one that
#: replaces it. A newer mark already there stays.
_UPGRADE = """#!lua
local version = redis.call('GET', KEYS[1])
if version then
  local ttl_ms = redis.call('PTTL', KEYS[1])
  if ttl_ms > 0 then
    redis.call('SET', KEYS[2], version, 'PX', ttl_ms, 'NX')
  end
  redis.call('DEL', KEYS[1])
end
return 0
"""


def upgrade_version_keys(redis: Redis, prefix: str) -> int:
    """Renames the removed entries' version keys an earlier release named by id to their digest
    names (version_key), their TTL kept, so that a replay after the upgrade is still checked
    against them; how many. One SCAN of the keyspace, at the connector's start."""
    upgrade = redis.register_script(_UPGRADE)
    legacy = f"{prefix}:version:"
    renamed = 0
    # Escaped: a prefix may hold `*`, `?` or `[`, and `t?` matched another deployment's `ta:version:` keys, renamed into its own.
    for key in redis.scan_iter(f"{glob_escaped(legacy)}*", count=10_000):
        try:
            model, kind, entry_id = key.decode()[len(legacy):].split(":", 2)
        except (UnicodeDecodeError, ValueError):
            continue  # not a key leadstream wrote
        if kind in _LIST_FIELD:
            upgrade([key, version_key(prefix, model, kind, entry_id)], [])
            renamed += 1
    return renamed


class RedisModelSink(Sink[ScoreChange]):
    name = "redis"
    batched = True

    def __init__(self, settings: Settings) -> None:
        self.redis = redis_client(settings)
        self.prefix = settings.redis_prefix
        self.write = self.redis.register_script(_WRITE)

    def source_topic(self, settings: Settings) -> str:
        return settings.topic_scores

    def parse(self, key: bytes | None, value: bytes | None, position: Position) -> ScoreChange:
        try:
            model, _, entry_id = (key or b"").decode().partition("/")
        except UnicodeDecodeError:  # as lead ids are texts: two such keys would be one entry, "\ufffd"
            raise PermanentError(f"score change key {key!r} is not UTF-8 text") from None
        kind = "account" if model.endswith(ACCOUNT_SUFFIX) else "lead"
        model = model.removesuffix(ACCOUNT_SUFFIX)
        if not model or not entry_id:
            raise PermanentError(f"score change key {key!r} is not '<model>/<lead_id>' or '<model>:account/<account_id>'")
        if value is None:
            return ScoreChange(model, kind, entry_id, None, position)
        names = HASH_FIELDS if kind == "lead" else ACCOUNT_HASH_FIELDS
        try:
            raw = orjson.loads(value)
            score = json_number(raw["score"] or 0, "score")
            # The worker writes null for what an entry does not have yet (no activity, no grade).
            fields = {name: "" if (given := raw.get(_SUMMARY_NAME.get(name, name))) is None else str(given) for name in names}
            listed = _LIST_FIELD[kind]
            fields[listed] = orjson.dumps(_listed(raw.get(listed) or [], listed, _LIST_ITEM[kind])).decode()
        except KeyError as exc:
            raise PermanentError(f"score change {key!r} is not the documented JSON: field {exc.args[0]!r} is missing") from None
        except (orjson.JSONDecodeError, TypeError, ValueError, AttributeError) as exc:
            raise PermanentError(f"score change {key!r} is not the documented JSON: {exc}") from None
        return ScoreChange(model, kind, entry_id, fields, position, score)

    def delivery_id(self, item: ScoreChange) -> None:
        return None

    def lead_of(self, item: ScoreChange) -> str | None:
        # Replayed lead summaries only: see the module's docstring.
        return item.id if item.position.replayed and item.kind == "lead" and item.fields is not None else None

    def deliver(self, item: ScoreChange, steps: Steps) -> None:
        [error] = self.deliver_batch([item])
        if error is not None:
            raise error

    def deliver_batch(self, items: Sequence[ScoreChange]) -> list[Exception | None]:
        # One pipeline, one round trip (and redis-py's check that the script is loaded) for all:
        # a round trip per message held the read model to about 2,600 a second, behind a worker
        # at 5,000 events/s for good. Redis runs the calls in order, each script whole, and goes
        # on past one that fails; its error comes back in its place.
        pipe = self.redis.pipeline(transaction=False)
        for item in items:
            keys = [leaderboard_key(self.prefix, item.model, item.kind), entry_key(self.prefix, item.model, item.kind, item.id),
                    version_key(self.prefix, item.model, item.kind, item.id)]
            at = item.position
            args: list[str | float | int] = [item.id, item.score, at.partition, at.offset, int(at.replayed), DLQ_RETENTION_MS // 1000]
            for name, value in (item.fields or {}).items():  # all of them: a field the producer dropped must not linger
                args += [name, value]
            self.write(keys, args, client=pipe)
        return [written if isinstance(written, Exception) else None if written else self._stale(item)
                for item, written in zip(items, pipe.execute(raise_on_error=False), strict=True)]

    @staticmethod
    def _stale(item: ScoreChange) -> StaleError:
        at = item.position
        return StaleError(f"{item.kind} {item.id} of model {item.model}: the entry was written from a newer "
                          f"message than partition {at.partition} offset {at.offset}")

    def close(self) -> None:
        self.redis.close()


def start_over(settings: Settings) -> None:
    """`leadstream sink redis --rebuild`: deletes the read model's consumer group, so that the
    connector reads the score-changes topic from its beginning (the runner's consumers start at
    the earliest offset) and writes every entry again, after Redis lost its data (a restart
    without persistence, a flush). The topic is compacted: it holds each lead's and account's
    latest summary, and a forgotten lead's tombstone after its summaries. Kafka refuses while a
    connector of the group runs: it would keep its offsets."""
    from kafka import KafkaAdminClient
    from kafka.errors import GroupIdNotFoundError, KafkaError

    from sinks.runner import group_id
    from streams.errors import ServiceError
    from streams.kafka_clients import open_client

    group = group_id(settings, RedisModelSink.name)
    admin: Any = open_client(settings, KafkaAdminClient, client_id="leadstream-rebuild")
    try:
        # kafka-python 3 answers {group: "OK" or the error class's name}.
        outcome = str(admin.delete_groups([group]).get(group, "OK"))
    except KafkaError as exc:
        raise ServiceError(f"cannot delete consumer group {group} to rebuild the read model: {exc}") from None
    finally:
        admin.close()
    # A group that never committed (or was deleted already) reads from the beginning as it is.
    if outcome not in ("OK", GroupIdNotFoundError.__name__):
        raise ServiceError(f"cannot delete consumer group {group} to rebuild the read model ({outcome}): stop "
                           "every `leadstream sink redis` of this app id first")


def top_entries(redis: Redis, prefix: str, model: str, limit: int, kind: str = "lead") -> list[dict[str, Any]]:
    """The `limit` highest-scored leads (or accounts) of a model, best first, each with its hash
    and its id as `lead_id` (or `account_id`)."""
    # Redis reads an index as a signed 64-bit integer: `top --limit 10000000000000000000` was
    # refused, blamed on LEADSTREAM_REDIS_URL; a limit past it is every entry, as -1 (the last) is.
    last = limit - 1 if limit <= 2**63 else -1
    entries = cast(list[tuple[bytes, float]], redis.zrevrange(leaderboard_key(prefix, model, kind), 0, last, withscores=True))
    pipe = redis.pipeline(transaction=False)
    for member, _ in entries:
        pipe.hgetall(entry_key(prefix, model, kind, member.decode()))
    rows = []
    for (member, score), stored in zip(entries, pipe.execute()):
        row: dict[str, Any] = {k.decode(): v.decode() for k, v in stored.items()}
        row.update({f"{kind}_id": member.decode(), "score": score})
        rows.append(row)
    return rows


def _stored_list(row: dict[str, Any], name: str, fields: tuple[str, str]) -> list[dict[str, Any]]:
    """A hash's list field as `parse` checks it; empty for one written otherwise (by an earlier
    version, or by hand), so that one entry cannot stop `leadstream top` for its whole model."""
    try:
        return cast(list[dict[str, Any]], _listed(orjson.loads(row.get(name) or "[]"), name, fields))
    except (orjson.JSONDecodeError, ValueError):
        return []


def _minute(row: dict[str, Any], name: str) -> str:
    """A hash's epoch-ms field as a UTC minute; blank when it has none (written by an earlier version, or null)."""
    ms = row.get(name) or ""
    return datetime.fromtimestamp(int(ms) / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M") if ms.isdigit() else ""


def format_table(rows: list[dict[str, Any]]) -> str:
    # "as of": the score, level and temperature are the lead's then, maybe long ago (module docstring).
    header = ("#", "lead", "score", "norm", "grade", "cell", "temp", "level", "as of (UTC)", "last activity (UTC)", "top reasons")
    lines: list[tuple[str, ...]] = []
    for rank, row in enumerate(rows, 1):
        reasons = _stored_list(row, "top_reasons", _LIST_ITEM["lead"])
        lines.append((
            str(rank), row["lead_id"], points(float(row["score"])), row.get("normalized", ""), row.get("grade", ""),
            row.get("cell", ""), row.get("temperature", ""), row.get("level", ""), _minute(row, "as_of_ms"),
            _minute(row, "last_activity_ms"), ", ".join(f"{r['rule']} {points(float(r['points']), signed=True)}" for r in reasons[:3]),
        ))
    return columns(header, lines)


def format_account_table(rows: list[dict[str, Any]]) -> str:
    header = ("#", "account", "score", "norm", "temp", "level", "members", "best members")
    lines: list[tuple[str, ...]] = []
    for rank, row in enumerate(rows, 1):
        best = _stored_list(row, "top_members", _LIST_ITEM["account"])
        lines.append((
            str(rank), row["account_id"], points(float(row["score"])), row.get("normalized", ""), row.get("temperature", ""),
            row.get("level", ""), row.get("members", ""), ", ".join(f"{m['lead_id']} {points(float(m['score']))}" for m in best[:3]),
        ))
    return columns(header, lines)


def print_top(settings: Settings, model: str, limit: int, accounts: bool = False) -> int:
    """`leadstream top`: the hottest leads (or accounts) of a model, from Redis, as a table."""
    from redis import RedisError

    from streams.errors import ConfigError, ServiceError, redis_trouble

    kind = "account" if accounts else "lead"
    try:
        rows = top_entries(redis_client(settings), settings.redis_prefix, model, limit, kind)
    except RedisError as exc:
        raise ServiceError(f"cannot read the read model: {redis_trouble(exc, settings.redis_url)}") from None
    if not rows:
        models = _models(settings)
        if models is not None and model not in models:
            raise ConfigError(f"no model named {model!r} in {settings.models_dir} (models: {', '.join(sorted(models)) or 'none'})")
        if models is not None and accounts and not models[model]:
            print(f"model {model!r} has no [accounts] table: its accounts have no score to rank (scoring/MODELS.md, `[accounts]`)")
            return 0
        print(f"no {kind}s for model {model!r} in Redis yet: is `leadstream sink redis` running, and the worker scoring? "
              "If Redis lost its data, rebuild the read model: stop it, run `leadstream sink redis --rebuild`")
        return 0
    print(format_account_table(rows) if accounts else format_table(rows), end="")
    return 0


def _models(settings: Settings) -> dict[str, bool] | None:
    """The models of LEADSTREAM_MODELS_DIR, and whether each rolls leads up into accounts; None
    when they do not load (the worker reading Redis may run elsewhere, with other files: its
    models are not this machine's to judge)."""
    from scoring.errors import ModelError
    from scoring.model import load_directory

    try:
        return {model.name: model.accounts is not None for model in load_directory(settings.models_dir)}
    except (ModelError, OSError):
        return None
