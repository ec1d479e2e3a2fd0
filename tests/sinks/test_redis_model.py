"""The Redis read model from the score-changes topic, and `leadstream top`."""

from __future__ import annotations

import logging
import re
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from redis import Redis

from sinks import connectors
from sinks.base import Position
from sinks.errors import PermanentError, StaleError
from sinks.redis_model import (RedisModelSink, ScoreChange, entry_key, lead_key, leaderboard_key, start_over, top_entries,
                                version_key)
from sinks.runner import SinkRunner, group_id
from streams.errors import ServiceError
from streams.forgotten import Forgotten
from streams.history import read_to_end
from streams.processes import free_port
from streams.settings import Settings
from streams.topics import TopicSpec, ensure_topics
from tests.infra import add_partitions, leadstream, wait_for
from streams.log_throttle import LOG_INTERVAL_S
from tests.sinks.conftest import REFUSING_WRITES, RedisServer, SilentRedis, SinkProcess, drain
from tests.sinks.fake_clock import FakeClock


def score_change(lead: str, score: float, **fields: Any) -> dict[str, Any]:
    return {
        "lead_id": lead, "model": "b2b", "score": score, "normalized": int(score), "grade": "A", "engagement": 2,
        "cell": "A2", "temperature": "hot" if score > 60 else "warm", "level": "sql" if score > 60 else "mql",
        "last_activity_ms": 1763884800000, "time": 1764662400000,  # a decay step's, 9 days after
        "top_reasons": [{"rule": "pricing_page", "points": 30}, {"rule": "demo_request", "points": 25}],
        **fields,
    }


def publish(settings: Settings, changes: list[tuple[str, dict[str, Any] | None]], partition: int | None = None) -> None:
    """`partition`: all of them to that one, so that the connector takes them as one batch."""
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    for key, value in changes:
        producer.send(settings.topic_scores, key=key.encode(), value=None if value is None else orjson.dumps(value),
                      partition=partition)
    producer.flush()
    producer.close()


def unreachable(settings: Settings) -> Settings:
    """The read model's Redis does not answer (a restart, a failover); the runner's ledger does."""
    return settings.with_overrides(redis_url=f"redis://127.0.0.1:{free_port()}")


def test_score_changes_keep_the_leaderboard_and_lead_hashes_current(sink_settings: Settings) -> None:
    publish(sink_settings, [
        ("b2b/lead-1", score_change("lead-1", 40)),
        ("b2b/lead-2", score_change("lead-2", 75)),
        ("b2b/lead-3", score_change("lead-3", 55)),
        ("b2b/lead-1", score_change("lead-1", 90)),  # newer state of lead-1 wins
        ("b2b/lead-3", None),  # tombstone: lead-3 left the model
        ("trial/lead-1", score_change("lead-1", 12, model="trial", last_activity_ms=None, grade=None)),
    ])

    stats = drain(RedisModelSink(sink_settings), sink_settings)

    assert stats.delivered == 6
    redis, prefix = Redis.from_url(sink_settings.redis_url, decode_responses=True), sink_settings.redis_prefix
    assert redis.zrevrange(leaderboard_key(prefix, "b2b"), 0, -1, withscores=True) == [("lead-1", 90.0), ("lead-2", 75.0)]
    assert redis.zrange(leaderboard_key(prefix, "trial"), 0, -1) == ["lead-1"]
    lead = redis.hgetall(lead_key(prefix, "b2b", "lead-1"))
    assert (lead["score"], lead["grade"], lead["temperature"], lead["level"]) == ("90", "A", "hot", "sql")
    # The message it was written from is in the hash: a live entry costs no key of its own.
    assert lead["version"].split()[1].isdigit() and not redis.exists(version_key(prefix, "b2b", "lead", "lead-1"))
    assert redis.exists(version_key(prefix, "b2b", "lead", "lead-3"))  # a tombstone's mark
    assert lead["last_activity_ms"] == "1763884800000"
    assert lead["as_of_ms"] == "1764662400000"  # the summary's time: a reader could not tell how old a score was
    assert orjson.loads(lead["top_reasons"])[0] == {"rule": "pricing_page", "points": 30}
    assert not redis.exists(lead_key(prefix, "b2b", "lead-3"))
    trial = redis.hgetall(lead_key(prefix, "trial", "lead-1"))
    assert (trial["last_activity_ms"], trial["grade"]) == ("", "")  # null in the topic: empty, not "None"


def test_a_score_that_is_not_a_number_is_dead_lettered_as_malformed_at_once(sink_settings: Settings) -> None:
    # float() read "nan" and "inf": ZADD refused them, as a RedisError retried until the
    # attempts ran out, dead-lettered as retries_exhausted.
    publish(sink_settings, [
        ("b2b/lead-1", {**score_change("lead-1", 40), "score": "nan"}),
        ("b2b/lead-2", {**score_change("lead-2", 40), "score": "-inf"}),
        ("b2b/lead-3", {**score_change("lead-3", 40), "score": "40"}),
        ("b2b/lead-4", score_change("lead-4", 55)),
    ])

    stats = drain(RedisModelSink(sink_settings), sink_settings)

    assert (stats.delivered, stats.dead_lettered, stats.retries) == (1, 3, 0)
    letters = [orjson.loads(r.value) for r in read_to_end(sink_settings, f"{sink_settings.topic_scores}-dlq-redis")]
    assert [letter["reason"] for letter in letters] == ["malformed"] * 3
    assert all("field 'score' must be a number, got a text" in letter["detail"] for letter in letters)
    redis, prefix = Redis.from_url(sink_settings.redis_url, decode_responses=True), sink_settings.redis_prefix
    assert redis.zrange(leaderboard_key(prefix, "b2b"), 0, -1) == ["lead-4"]


@pytest.mark.parametrize(("key", "value", "named"), [
    (b"b2b/x", {"score": 5, "top_reasons": "x"}, "field 'top_reasons' must be an array of {\"rule\": text, \"points\": number}"),
    (b"b2b/x", {"score": 5, "top_reasons": [{"rule": "a"}]}, "field 'top_reasons' must be an array"),
    (b"b2b/x", {"score": 5, "top_reasons": [{"rule": "a", "points": "lots"}]}, "field 'top_reasons' must be an array"),
    (b"b2b:account/acme", {"score": 5, "top_members": "x"}, "field 'top_members' must be an array of {\"lead_id\": text, \"score\": number}"),
    (b"b2b:account/acme", {"score": 5, "top_members": [{"lead_id": "l"}]}, "field 'top_members' must be an array"),
    (b"b2b/x", {"normalized": 5}, "field 'score' is missing"),
    (b"b2b/\xff\xfe", {"score": 5}, "is not UTF-8 text"),
])
def test_a_summary_leadstream_top_could_not_show_is_refused_naming_the_field(
    sink_settings: Settings, key: bytes, value: dict[str, Any], named: str
) -> None:
    # Written to Redis as delivered, each made `leadstream top` fail with a traceback (a
    # TypeError, KeyError or ValueError) for the whole model; a key not UTF-8 became "\ufffd\ufffd".
    with pytest.raises(PermanentError, match=re.escape(named)):
        RedisModelSink(sink_settings).parse(key, orjson.dumps(value), Position(0, 0))


def test_a_dead_lettered_tombstone_is_replayed_as_a_tombstone_and_the_lead_is_forgotten(sink_settings: Settings) -> None:
    publish(sink_settings, [("b2b/u-42", score_change("u-42", 67))])
    drain(RedisModelSink(sink_settings), sink_settings)
    # `leadstream forget u-42` while Redis cannot be reached: retried, then dead-lettered.
    publish(sink_settings, [("b2b/u-42", None)])
    assert drain(RedisModelSink(unreachable(sink_settings)), sink_settings).dead_lettered == 1
    [letter] = [orjson.loads(r.value) for r in read_to_end(sink_settings, f"{sink_settings.topic_scores}-dlq-redis")]
    assert letter["original"] is None
    assert "Redis could not be reached (Error 111 connecting to 127.0.0.1:" in letter["detail"]  # it named no service
    assert "LEADSTREAM_REDIS_URL" in letter["detail"]

    replayed = SinkRunner(RedisModelSink(sink_settings), sink_settings).replay_dead_letters()

    assert (replayed.delivered, replayed.dead_lettered) == (1, 0)
    redis, prefix = Redis.from_url(sink_settings.redis_url), sink_settings.redis_prefix
    assert redis.zrange(leaderboard_key(prefix, "b2b"), 0, -1) == []
    assert not redis.exists(lead_key(prefix, "b2b", "u-42"))


def test_a_replayed_summary_or_tombstone_never_overwrites_a_newer_one(sink_settings: Settings) -> None:
    # While Redis cannot be reached, lead-a's 80 and lead-b's summary are dead-lettered; then
    # lead-a decays to 10 and lead-b is forgotten, both delivered.
    publish(sink_settings, [("b2b/lead-a", score_change("lead-a", 80)), ("b2b/lead-b", score_change("lead-b", 70))])
    assert drain(RedisModelSink(unreachable(sink_settings)), sink_settings).dead_lettered == 2
    publish(sink_settings, [("b2b/lead-a", score_change("lead-a", 10, level="nurture")), ("b2b/lead-b", None)])
    assert drain(RedisModelSink(sink_settings), sink_settings).delivered == 2

    replayed = SinkRunner(RedisModelSink(sink_settings), sink_settings).replay_dead_letters()

    assert (replayed.delivered, replayed.stale, replayed.dead_lettered) == (0, 2, 0)
    redis, prefix = Redis.from_url(sink_settings.redis_url, decode_responses=True), sink_settings.redis_prefix
    assert redis.zrange(leaderboard_key(prefix, "b2b"), 0, -1, withscores=True) == [("lead-a", 10.0)]
    assert redis.hget(lead_key(prefix, "b2b", "lead-a"), "level") == "nurture"
    assert not redis.exists(lead_key(prefix, "b2b", "lead-b"))
    assert 0 < redis.ttl(version_key(prefix, "b2b", "lead", "lead-b")) <= 30 * 24 * 3600


def test_leadstream_top_prints_the_hottest_leads_as_a_table(sink_settings: Settings) -> None:
    publish(sink_settings, [(f"b2b/lead-{n}", score_change(f"lead-{n}", 10 + n * 7)) for n in range(8)])
    drain(RedisModelSink(sink_settings), sink_settings)

    result = leadstream(sink_settings, "top", "--model", "b2b", "--limit", "3")

    lines = result.stdout.splitlines()
    assert lines[0].split() == ["#", "lead", "score", "norm", "grade", "cell", "temp", "level", "as", "of", "(UTC)", "last",
                                "activity", "(UTC)", "top", "reasons"]
    assert [line.split()[:3] for line in lines[1:]] == [["1", "lead-7", "59"], ["2", "lead-6", "52"], ["3", "lead-5", "45"]]
    assert lines[1].split()[3:] == ["59", "A", "A2", "warm", "mql", "2025-12-02", "08:00", "2025-11-23", "08:00",
                                    "pricing_page", "+30,", "demo_request", "+25"]
    empty = leadstream(sink_settings, "top", "--model", "analytics_addon")  # a model with no lead in Redis yet
    assert "no leads for model 'analytics_addon' in Redis yet" in empty.stdout
    # It asked whether the connector ran, of a model whose accounts have no score at all.
    no_rollup = leadstream(sink_settings, "top", "--model", "saas_start_small", "--accounts")
    assert no_rollup.stdout.startswith("model 'saas_start_small' has no [accounts] table") and no_rollup.returncode == 0
    # An entry written otherwise (an earlier version, by hand) shows no reasons; it stopped `top` for the model.
    # One written before as_of_ms shows none.
    redis = Redis.from_url(sink_settings.redis_url)
    redis.hset(lead_key(sink_settings.redis_prefix, "b2b", "lead-6"), "top_reasons", '"x"')
    redis.hdel(lead_key(sink_settings.redis_prefix, "b2b", "lead-6"), "as_of_ms")
    again = leadstream(sink_settings, "top", "--model", "b2b", "--limit", "3").stdout.splitlines()
    assert again[2].split()[:2] == ["2", "lead-6"] and again[2].split()[-3:] == ["mql", "2025-11-23", "08:00"]
    assert again[1] == lines[1]


def test_leadstream_top_against_a_stalled_redis_fails_within_the_timeout(sink_settings: Settings, silent_redis: SilentRedis) -> None:
    # Its client had no timeout of ours: `top` waited for the stalled Redis forever with
    # redis-py before 8.0 (its default then), and 5 s (redis-py's default since) whatever the setting.
    url = silent_redis.url.replace("redis://", "redis://admin:hunter2@")  # a password Redis does not ask for is ignored
    settings = sink_settings.with_overrides(redis_url=url)
    assert settings.sink_timeout_s == 1

    result = leadstream(settings, "top", "--model", "b2b", check=False, timeout=30)

    assert result.returncode == 1, result.stderr
    # The time spent waiting on Redis, not the whole run's: on a loaded machine the CLI's own
    # start made that 7.4 s, where the test allowed 4.
    wait_for(lambda: silent_redis.waits, 10, "the CLI's connection to Redis closed")
    assert sum(silent_redis.waits) < 2 * settings.sink_timeout_s, silent_redis.waits
    assert "cannot read the read model: Redis could not be reached (Timeout" in result.stderr
    assert "hunter2" not in result.stderr  # it printed the URL, password and all


@pytest.mark.parametrize("password, told", [("wrong-pw", "Redis refused the password (or user) of LEADSTREAM_REDIS_URL"),
                                             (None, "Redis requires a password, and LEADSTREAM_REDIS_URL gives none")])
def test_a_read_model_whose_redis_refuses_its_password_says_so_and_never_shows_it(
    sink_settings: Settings, tmp_path: Path, password: str | None, told: str
) -> None:
    # `sink redis` said "cannot reach Redis at LEADSTREAM_REDIS_URL (...); the read model starts
    # once it answers", and exited: Redis had answered, refusing the password, and nothing waited.
    server = RedisServer(tmp_path, password="s3cret-pw")
    try:
        url = server.url.replace("s3cret-pw", password) if password else server.url.replace(":s3cret-pw@", "")
        with pytest.raises(ServiceError) as refused:
            connectors.build("redis", sink_settings.with_overrides(redis_url=url))
    finally:
        server.stop()

    assert str(refused.value).startswith(f"cannot start without Redis, where the read model is kept: {told}"), refused.value
    assert "starts once it answers" not in str(refused.value) and "wrong-pw" not in str(refused.value)


def test_leadstream_top_of_a_model_that_does_not_exist_says_so(sink_settings: Settings) -> None:
    # It said "no leads for model 'b2c' in Redis yet: is `leadstream sink redis` running?", exit 0.
    result = leadstream(sink_settings, "top", "--model", "b2c", check=False)
    assert result.returncode == 1
    assert "leadstream top: no model named 'b2c' in" in result.stderr and "(models: analytics_addon, b2b, saas_start_small)" in result.stderr


def account_change(account: str, score: float, members: list[tuple[str, float]]) -> dict[str, Any]:
    """An account summary as the worker's roll-up stage writes it (scoring.accounts.summary)."""
    return {"account_id": account, "model": "b2b", "score": score, "normalized": round(score / 2), "level": "engaged",
            "temperature": "warm", "members": len(members), "top_members": [{"lead_id": l, "score": s} for l, s in members]}


def test_account_summaries_keep_their_own_leaderboard_and_leadstream_top_accounts_prints_it(sink_settings: Settings) -> None:
    publish(sink_settings, [
        ("b2b/acme", score_change("acme", 33)),  # a lead that happens to be called like an account
        ("b2b:account/acme", account_change("acme", 120, [("lead-1", 70), ("lead-2", 50)])),
        ("b2b:account/globex", account_change("globex", 64, [("lead-9", 64)])),
        ("b2b:account/initech", account_change("initech", 20, [("lead-5", 20)])),
    ])

    stats = drain(RedisModelSink(sink_settings), sink_settings)

    assert (stats.delivered, stats.dead_lettered) == (4, 0)
    redis, prefix = Redis.from_url(sink_settings.redis_url, decode_responses=True), sink_settings.redis_prefix
    assert redis.zrevrange(leaderboard_key(prefix, "b2b", "account"), 0, -1) == ["acme", "globex", "initech"]
    assert redis.zrange(leaderboard_key(prefix, "b2b"), 0, -1, withscores=True) == [("acme", 33.0)]  # leads apart
    acme = redis.hgetall(entry_key(prefix, "b2b", "account", "acme"))
    assert (acme["score"], acme["members"], acme["level"]) == ("120", "2", "engaged")
    assert orjson.loads(acme["top_members"]) == [{"lead_id": "lead-1", "score": 70}, {"lead_id": "lead-2", "score": 50}]

    lines = leadstream(sink_settings, "top", "--model", "b2b", "--accounts", "--limit", "2").stdout.splitlines()
    assert lines[0].split() == ["#", "account", "score", "norm", "temp", "level", "members", "best", "members"]
    assert lines[1].split() == ["1", "acme", "120", "60", "warm", "engaged", "2", "lead-1", "70,", "lead-2", "50"]
    assert lines[2].split()[:2] == ["2", "globex"] and len(lines) == 3


def test_the_read_model_logs_no_line_per_score_change_at_info(sink_settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    # README "Operations": nothing is logged per event at INFO. A score change is about one per
    # event, so a line per write would flood the read model's log at the worker's rate.
    publish(sink_settings, [(f"b2b/lead-{n}", score_change(f"lead-{n}", n)) for n in range(5)])
    with caplog.at_level(logging.INFO, logger="leadstream.sinks"):
        assert drain(RedisModelSink(sink_settings), sink_settings).delivered == 5
    assert not [r.getMessage() for r in caplog.records if "delivered" in r.getMessage() and r.levelno >= logging.INFO]


class Batches(RedisModelSink):
    """The read model, noting the size of each batch the runner hands it."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.sizes: list[int] = []

    def deliver_batch(self, items: Sequence[ScoreChange]) -> list[Exception | None]:
        self.sizes.append(len(items))
        return super().deliver_batch(items)


def test_score_changes_are_written_many_to_a_round_trip(sink_settings: Settings) -> None:
    # One Lua call and one round trip per message held the read model to about 2,600 score
    # changes a second (`leadstream bench sinks`): behind a worker at 5,000 events/s for good.
    publish(sink_settings, [(f"b2b/lead-{n}", score_change(f"lead-{n}", n % 90)) for n in range(200)], partition=0)
    sink = RedisModelSink(sink_settings)
    pool = sink.redis.connection_pool
    sent: list[bytes] = []

    class Counted(pool.connection_class):  # type: ignore[name-defined,misc]
        def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            sent.append(command)
            super().send_packed_command(command, check_health)

    pool.connection_class = Counted

    assert drain(sink, sink_settings).delivered == 200

    assert len(sent) <= 10, f"{len(sent)} round trips for 200 score changes"
    redis = Redis.from_url(sink_settings.redis_url)
    assert redis.zcard(leaderboard_key(sink_settings.redis_prefix, "b2b")) == 200


def test_two_changes_of_a_lead_in_one_batch_are_applied_in_their_order(sink_settings: Settings) -> None:
    publish(sink_settings, [
        ("b2b/lead-1", score_change("lead-1", 40)),
        ("b2b/lead-2", score_change("lead-2", 30)),
        ("b2b/lead-1", score_change("lead-1", 90)),
        ("b2b/lead-2", None),
        ("b2b/lead-3", None),
        ("b2b/lead-3", score_change("lead-3", 20)),
    ], partition=0)
    sink = Batches(sink_settings)

    assert drain(sink, sink_settings).delivered == 6

    assert sink.sizes == [6]
    redis, prefix = Redis.from_url(sink_settings.redis_url, decode_responses=True), sink_settings.redis_prefix
    assert redis.zrange(leaderboard_key(prefix, "b2b"), 0, -1, withscores=True) == [("lead-3", 20.0), ("lead-1", 90.0)]
    assert redis.hget(lead_key(prefix, "b2b", "lead-1"), "score") == "90"
    assert not redis.exists(lead_key(prefix, "b2b", "lead-2")) and redis.exists(version_key(prefix, "b2b", "lead", "lead-2"))
    assert not redis.exists(version_key(prefix, "b2b", "lead", "lead-3"))  # live again: its mark is gone


def test_a_malformed_change_in_a_batch_is_dead_lettered_and_the_others_are_written(sink_settings: Settings) -> None:
    publish(sink_settings, [
        ("b2b/lead-1", score_change("lead-1", 40)),
        ("b2b/lead-2", {**score_change("lead-2", 40), "score": "lots"}),
        ("b2b/lead-3", score_change("lead-3", 70)),
    ], partition=0)
    sink = Batches(sink_settings)

    stats = drain(sink, sink_settings)

    assert (stats.delivered, stats.dead_lettered, stats.retries, sink.sizes) == (2, 1, 0, [2])
    [letter] = [orjson.loads(r.value) for r in read_to_end(sink_settings, f"{sink_settings.topic_scores}-dlq-redis")]
    assert (letter["reason"], letter["source"]["offset"]) == ("malformed", 1)
    redis = Redis.from_url(sink_settings.redis_url, decode_responses=True)
    assert redis.zrange(leaderboard_key(sink_settings.redis_prefix, "b2b"), 0, -1) == ["lead-1", "lead-3"]
    # All committed: nothing is read again.
    assert drain(RedisModelSink(sink_settings), sink_settings).as_dict() == dict.fromkeys(stats.as_dict(), 0)


def test_a_replayed_change_older_than_its_entry_is_stale_among_newer_ones_of_its_batch(sink_settings: Settings) -> None:
    changes: list[tuple[str, dict[str, Any] | None]] = [(f"b2b/lead-{n}", score_change(f"lead-{n}", 50 + n)) for n in range(3)]
    publish(sink_settings, changes, partition=0)
    assert drain(RedisModelSink(unreachable(sink_settings)), sink_settings).dead_lettered == 3
    publish(sink_settings, [("b2b/lead-1", score_change("lead-1", 5, level="nurture"))], partition=0)  # newer than lead-1's letter
    assert drain(RedisModelSink(sink_settings), sink_settings).delivered == 1
    sink = Batches(sink_settings)

    replayed = SinkRunner(sink, sink_settings).replay_dead_letters()

    assert (replayed.delivered, replayed.stale, replayed.dead_lettered) == (2, 1, 0)
    assert sink.sizes == [3]  # lead-1's letter between the others
    redis, prefix = Redis.from_url(sink_settings.redis_url, decode_responses=True), sink_settings.redis_prefix
    assert redis.zrange(leaderboard_key(prefix, "b2b"), 0, -1, withscores=True) == [("lead-1", 5.0), ("lead-0", 50.0), ("lead-2", 52.0)]
    assert redis.hget(lead_key(prefix, "b2b", "lead-1"), "level") == "nurture"


def test_a_redis_failure_mid_batch_commits_nothing_past_it_and_is_tried_again_from_there(sink_settings: Settings) -> None:
    publish(sink_settings, [
        ("b2b/lead-1", score_change("lead-1", 40)),
        ("bad/lead-x", score_change("lead-x", 50, model="bad")),
        ("b2b/lead-2", score_change("lead-2", 60)),
    ], partition=0)
    redis, prefix = Redis.from_url(sink_settings.redis_url, decode_responses=True), sink_settings.redis_prefix
    # Not a sorted set: the script's ZADD fails (WRONGTYPE) for lead-x alone, inside the pipeline.
    redis.set(leaderboard_key(prefix, "bad"), "not a leaderboard")
    settings = sink_settings.with_overrides(sink_max_attempts=100)
    sink = Batches(settings)
    runner = SinkRunner(sink, settings)
    thread = threading.Thread(target=runner.run)
    thread.start()
    try:
        wait_for(lambda: len(sink.sizes) >= 3, what="lead-x tried again")
    finally:
        runner.stop.set()
        thread.join(timeout=30)

    assert sink.sizes[:3] == [3, 2, 2]  # lead-1 done; lead-x tried again from there, lead-2 with it
    assert runner.stats.retries >= 2 and runner.stats.dead_lettered == 0
    assert redis.zrange(leaderboard_key(prefix, "b2b"), 0, -1) == ["lead-1", "lead-2"]
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=group_id(settings, "redis"))
    committed = consumer.committed(TopicPartition(settings.topic_scores, 0))
    consumer.close()
    assert committed is None or committed <= 1  # never past lead-x

    redis.delete(leaderboard_key(prefix, "bad"))  # Redis works again
    stats = drain(RedisModelSink(settings), settings)

    assert stats.dead_lettered == 0 and stats.delivered >= 2
    assert redis.zrange(leaderboard_key(prefix, "bad"), 0, -1, withscores=True) == [("lead-x", 50.0)]
    assert redis.hget(lead_key(prefix, "bad", "lead-x"), "score") == "50"
    assert drain(RedisModelSink(settings), settings).delivered == 0  # all committed now


class Refusing(RedisModelSink):
    """A batched sink that raises one error for its whole call, rather than one per item."""

    def __init__(self, settings: Settings, error: Exception) -> None:
        super().__init__(settings)
        self.error = error

    def deliver_batch(self, items: Sequence[ScoreChange]) -> list[Exception | None]:
        raise self.error


@pytest.mark.parametrize(("error", "outcome"), [(StaleError("overtaken"), "stale"), (PermanentError("refused"), "dead_lettered")])
def test_an_error_a_batched_sink_raises_for_its_whole_call_is_each_items_sent(
    sink_settings: Settings, error: Exception, outcome: str
) -> None:
    publish(sink_settings, [(f"b2b/lead-{n}", score_change(f"lead-{n}", 40 + n)) for n in range(3)], partition=0)

    stats = drain(Refusing(sink_settings, error), sink_settings)

    assert (stats.as_dict()[outcome], stats.delivered) == (3, 0)


def change(sink: RedisModelSink, lead: str, score: float, offset: int) -> ScoreChange:
    return sink.parse(f"b2b/{lead}".encode(), orjson.dumps(score_change(lead, score)), Position(0, offset))


def test_the_read_model_writes_nothing_over_redis_maxmemory(sink_settings: Settings, tmp_path: Path) -> None:
    # SET was refused (OOM), but the script began with DEL, which Redis lets through over the
    # limit, and once a script has written Redis lets the rest of it through: 2,000 new leads
    # were written past the cap.
    server = RedisServer(tmp_path, "--maxmemory", "1000", "--maxmemory-policy", "noeviction")
    try:
        sink = RedisModelSink(sink_settings.with_overrides(redis_url=server.url))
        errors = sink.deliver_batch([change(sink, f"lead-{n}", 40, n) for n in range(20)])

        assert all(error is not None and "used memory > 'maxmemory'" in str(error) for error in errors)
        assert sink.redis.dbsize() == 0
        sink.close()
    finally:
        server.stop()


@contextmanager
def running_read_model(settings: Settings, clock: FakeClock) -> Iterator[SinkRunner[ScoreChange]]:
    """A read model's runner on a thread of its own, once ready; stopped on leaving."""
    runner = SinkRunner(RedisModelSink(settings), settings, clock=clock)
    running = threading.Thread(target=runner.run, daemon=True)
    running.start()
    try:
        wait_for(runner.ready, what="the connector ready")
        yield runner
    finally:
        runner.stop.set()
        running.join(timeout=30)


def dead_letter_40_then_1(settings: Settings, runner: SinkRunner[ScoreChange], clock: FakeClock,
                          between: Callable[[], bool] = lambda: True) -> None:
    """40 changes that Redis fails, then, LOG_INTERVAL_S later, one more, each batch waited for
    until dead-lettered, and `between` holding after each."""
    publish(settings, [(f"b2b/lead-{n}", score_change(f"lead-{n}", n)) for n in range(40)])
    wait_for(lambda: runner.stats.dead_lettered == 40, what="the changes dead-lettered")
    assert between()
    clock.now += LOG_INTERVAL_S
    publish(settings, [("b2b/lead-40", score_change("lead-40", 40))])
    wait_for(lambda: runner.stats.dead_lettered == 41, what="the next change dead-lettered")
    assert between()


@pytest.mark.parametrize("refusal", sorted(REFUSING_WRITES))
def test_the_read_model_is_not_ready_while_redis_refuses_its_writes_and_says_their_failures_once_every_10_s(
    refusal: str, sink_settings: Settings, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Its Redis over maxmemory refused every write: each change was retried, dead-lettered and
    # logged (~75 WARNING lines a second) while /readyz answered 200 {"ready":true}.
    settings = sink_settings.with_overrides(redis_url=redis_server.url)
    refuse, take = REFUSING_WRITES[refusal]
    redis, clock = Redis.from_url(redis_server.url), FakeClock()
    caplog.set_level(logging.INFO, logger="leadstream.sinks")
    with running_read_model(settings, clock) as runner:
        redis.execute_command(*refuse)
        dead_letter_40_then_1(settings, runner, clock, between=lambda: not runner.ready())
        redis.execute_command(*take)
        publish(settings, [("b2b/lead-41", score_change("lead-41", 41))])
        wait_for(lambda: runner.stats.delivered == 1, what="a write taken")
        assert runner.ready()
    said = [record.getMessage() for record in caplog.records if record.name == "leadstream.sinks"]
    letters = [line for line in said if line.startswith("sink redis: dead-lettered")]
    tries = [line for line in said if line.startswith("sink redis: attempt")]
    assert len(letters) == 2 and letters[1].endswith("(39 more such lines left out since the last, while Redis refuses writes)")
    assert len(tries) == 2 and "more such lines left out since the last" in tries[1]
    [not_ready] = [line for line in said if line.startswith("sink redis: not ready")]
    assert "sink redis: not ready: Redis refused the write: it is " in not_ready and "sink replay-dlq redis" in not_ready
    assert "sink redis: ready" in said[said.index(not_ready):]  # once a write is taken
    # Nothing is lost: the replay writes what was dead-lettered.
    replayed = SinkRunner(RedisModelSink(settings), settings).replay_dead_letters()
    assert (replayed.delivered, replayed.dead_lettered) == (41, 0)
    assert redis.zcard(leaderboard_key(settings.redis_prefix, "b2b")) == 42
    redis.close()


def test_the_read_model_says_its_failures_once_every_10_s_while_redis_cannot_be_reached(
    sink_settings: Settings, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Its Redis stopped, a read model dead-lettered 2,280 changes in 4 s, a WARNING line each:
    # every change fails alike meanwhile, as under a Redis that refuses writes.
    settings = sink_settings.with_overrides(redis_url=redis_server.url)
    clock = FakeClock()
    caplog.set_level(logging.INFO, logger="leadstream.sinks")
    with running_read_model(settings, clock) as runner:
        redis_server.stop()
        dead_letter_40_then_1(settings, runner, clock)
    said = [record.getMessage() for record in caplog.records if record.name == "leadstream.sinks"]
    letters = [line for line in said if line.startswith("sink redis: dead-lettered")]
    assert len(letters) == 2 and "Redis could not be reached" in letters[0], letters[:3]
    assert letters[1].endswith("(39 more such lines left out since the last, while Redis cannot be reached)")


def test_the_read_model_reads_a_score_changes_topic_of_another_partition_count_than_the_setting(
    sink_settings: Settings, redis_server: RedisServer
) -> None:
    # README's "Changing the partition count" said the connectors refuse topics of another count
    # than LEADSTREAM_PARTITIONS, as the producers of records keyed by a lead do. They read by key
    # (the lead's entry, its ledger keys), wherever the record is: no check, and none is needed.
    settings = sink_settings.with_overrides(redis_url=redis_server.url)
    ensure_topics(settings, [TopicSpec(settings.topic_scores, settings.partitions)])
    add_partitions(settings, [settings.topic_scores], settings.partitions * 2)
    with running_read_model(settings, FakeClock()) as runner:
        publish(settings, [(f"b2b/lead-{n}", score_change(f"lead-{n}", n)) for n in range(20)])
        wait_for(lambda: runner.stats.delivered == 20, what="the changes written")
    assert Redis.from_url(redis_server.url).zcard(leaderboard_key(settings.redis_prefix, "b2b")) == 20


def test_a_write_that_meets_another_programs_key_leaves_the_entry_as_it_was(sink_settings: Settings) -> None:
    # The script deleted the lead's hash, then failed WRONGTYPE at the leaderboard (a string
    # another program wrote): tried 8 times and dead-lettered, the lead left without its hash.
    sink = RedisModelSink(sink_settings)
    assert sink.deliver_batch([change(sink, "lead-1", 40, 1)]) == [None]
    prefix = sink_settings.redis_prefix
    sink.redis.delete(leaderboard_key(prefix, "b2b"))
    sink.redis.set(leaderboard_key(prefix, "b2b"), "another program's")

    [error] = sink.deliver_batch([change(sink, "lead-1", 90, 2)])

    assert error is not None and "WRONGTYPE" in str(error) and leaderboard_key(prefix, "b2b") in str(error)
    assert sink.redis.hget(lead_key(prefix, "b2b", "lead-1"), "score") == b"40"
    sink.close()


def test_a_replayed_summary_of_a_lead_forgotten_since_does_not_bring_it_back_once_its_removal_mark_expired(
    sink_settings: Settings,
) -> None:
    # The removed entry's version is kept 30 days, a dead letter readable up to 37: replayed
    # after the version expired, the summary was delivered and `top` showed the lead again,
    # though its `forgotten:` key was there.
    publish(sink_settings, [("b2b/u-42", score_change("u-42", 67))])
    assert drain(RedisModelSink(unreachable(sink_settings)), sink_settings).dead_lettered == 1
    Forgotten(Redis.from_url(sink_settings.redis_url), sink_settings.redis_prefix).record(["u-42"], int(time.time() * 1000))
    publish(sink_settings, [("b2b/u-42", None)])  # the worker's tombstone
    assert drain(RedisModelSink(sink_settings), sink_settings).delivered == 1
    redis, prefix = Redis.from_url(sink_settings.redis_url), sink_settings.redis_prefix
    assert redis.delete(version_key(prefix, "b2b", "lead", "u-42")) == 1  # as 30 days would

    replayed = SinkRunner(RedisModelSink(sink_settings), sink_settings).replay_dead_letters()

    assert (replayed.delivered, replayed.erased) == (0, 1)
    assert redis.zrange(leaderboard_key(prefix, "b2b"), 0, -1) == []
    assert not redis.exists(lead_key(prefix, "b2b", "u-42"))


@pytest.mark.parametrize("limit", [2**63, 10**30])
def test_top_with_a_limit_beyond_what_redis_counts_lists_every_lead(sink_settings: Settings, limit: int) -> None:
    # `leadstream top --limit 10000000000000000000`: "Redis (LEADSTREAM_REDIS_URL) answered with an
    # error (value is not an integer or out of range)", blaming a URL that was fine.
    publish(sink_settings, [("b2b/ann", score_change("ann", 67)), ("b2b/bob", score_change("bob", 40))])
    drain(RedisModelSink(sink_settings), sink_settings)

    redis = Redis.from_url(sink_settings.redis_url)
    rows = top_entries(redis, sink_settings.redis_prefix, "b2b", limit)
    assert [row["lead_id"] for row in rows] == ["ann", "bob"]
    assert top_entries(redis, sink_settings.redis_prefix, "b2b", 1) == rows[:1]


def test_a_prefix_holding_a_pattern_character_takes_no_other_deployments_removal_marks(sink_settings: Settings) -> None:
    # LEADSTREAM_REDIS_PREFIX takes any text: the connector's start renamed the earlier release's
    # marks matching `<prefix>:version:*` as a Redis pattern, so prefix `t?` took `ta`'s for its own.
    redis, prefix = Redis.from_url(sink_settings.redis_url), sink_settings.redis_prefix
    neighbour = f"{prefix}a:version:b2b:lead:u-7"
    redis.set(neighbour, "0 50", ex=3600)
    try:
        connectors.build("redis", sink_settings.with_overrides(redis_prefix=f"{prefix}?")).close()
        assert redis.get(neighbour) == b"0 50"
        assert not redis.exists(version_key(f"{prefix}?", "b2b", "lead", "u-7"))
    finally:
        redis.delete(*redis.scan_iter(f"{prefix}*"), neighbour)


def test_no_key_names_a_removed_lead(sink_settings: Settings) -> None:
    # The tombstone's version was kept 30 days under `version:b2b:lead:u-42`, naming the person
    # `forget` erased (whose `forgotten:` key holds a digest for that reason).
    publish(sink_settings, [("b2b/u-42", score_change("u-42", 67)), ("b2b/u-42", None)])
    drain(RedisModelSink(sink_settings), sink_settings)

    redis, prefix = Redis.from_url(sink_settings.redis_url), sink_settings.redis_prefix
    keys = [key.decode() for key in redis.scan_iter(f"{prefix}:*", count=10_000)]
    assert keys == [version_key(prefix, "b2b", "lead", "u-42")]
    assert "u-42" not in keys[0]


def test_an_earlier_releases_removal_marks_are_renamed_at_start_and_still_keep_older_replays_out(
    sink_settings: Settings,
) -> None:
    redis, prefix = Redis.from_url(sink_settings.redis_url), sink_settings.redis_prefix
    redis.set(f"{prefix}:version:b2b:lead:lead:with:colons", "0 50", ex=3600)
    redis.set(f"{prefix}:version:b2b:account:acme", "1 7", ex=3600)

    sink = connectors.build("redis", sink_settings)

    assert not list(redis.scan_iter(f"{prefix}:version:*"))
    assert redis.get(version_key(prefix, "b2b", "lead", "lead:with:colons")) == b"0 50"
    assert 3000 < redis.ttl(version_key(prefix, "b2b", "account", "acme")) <= 3600
    older = sink.parse(b"b2b/lead:with:colons", orjson.dumps(score_change("lead:with:colons", 90)), Position(0, 40, True))
    [error] = sink.deliver_batch([older])
    assert isinstance(error, StaleError)
    sink.close()


def test_the_read_model_is_rebuilt_from_the_score_changes_topic_after_redis_lost_it(sink_settings: Settings) -> None:
    # After a Redis restart without persistence or a flush, only leads that changed again came
    # back, and `top` asked whether the sink was running while it ran.
    publish(sink_settings, [("b2b/lead-1", score_change("lead-1", 40)), ("b2b/lead-2", score_change("lead-2", 75)),
                            ("b2b/lead-3", score_change("lead-3", 55)), ("b2b/lead-3", None)])
    drain(RedisModelSink(sink_settings), sink_settings)
    redis, prefix = Redis.from_url(sink_settings.redis_url, decode_responses=True), sink_settings.redis_prefix
    redis.delete(*redis.scan_iter(f"{prefix}:*"))  # Redis lost it
    assert "leadstream sink redis --rebuild" in leadstream(sink_settings, "top", "--model", "b2b").stdout
    assert drain(RedisModelSink(sink_settings), sink_settings).delivered == 0

    start_over(sink_settings)

    assert drain(RedisModelSink(sink_settings), sink_settings).delivered == 4
    assert redis.zrevrange(leaderboard_key(prefix, "b2b"), 0, -1, withscores=True) == [("lead-2", 75.0), ("lead-1", 40.0)]
    assert redis.hget(lead_key(prefix, "b2b", "lead-1"), "score") == "40"


def test_a_rebuild_is_refused_while_the_read_model_runs(sink_settings: Settings, tmp_path: Path) -> None:
    sink = SinkProcess(sink_settings, "redis", log=tmp_path / "sink.log").start()
    try:
        publish(sink_settings, [("b2b/lead-1", score_change("lead-1", 40))])
        redis = Redis.from_url(sink_settings.redis_url)
        wait_for(lambda: redis.exists(lead_key(sink_settings.redis_prefix, "b2b", "lead-1")), 60, "the running sink's write")

        result = leadstream(sink_settings, "sink", "redis", "--rebuild", check=False)

        assert result.returncode != 0
        assert "stop every `leadstream sink redis` of this app id first" in result.stderr
    finally:
        sink.stop()
