"""Connectors and `leadstream forget`: a lead's crossings timed at or before its erasure are not
delivered, by a connector that was behind nor by a replay of its dead letters."""

from __future__ import annotations

import logging
import shlex
import time
from pathlib import Path

import orjson
import pytest
from prometheus_client import REGISTRY
from redis import Redis

from sinks.webhook import WebhookSink
from streams.forgotten import durability_warning
from streams.services import REDIS_DURABILITY_ARGS
from streams.settings import Settings
from tests.infra import leadstream
from tests.sinks.conftest import RedisServer, crossing, drain, produce
from tests.sinks.fake_http import WebhookReceiver


def erased_count() -> float:
    return REGISTRY.get_sample_value("leadstream_sink_deliveries_total", {"connector": "webhook", "outcome": "erased"}) or 0.0


def test_a_connector_behind_delivers_no_crossing_of_a_lead_forgotten_since_but_a_later_one(
    sink_settings: Settings, webhook: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    # The connector was stopped while lead-1 crossed mql and sql; started after the forget, it
    # posted both, the person's e-mail in them, to the receiver.
    settings = sink_settings.with_overrides(webhook_url=webhook.url + "/hook")
    # The sql crossing is timed 30 minutes ahead (its events were, within LEADSTREAM_MAX_FUTURE_MS):
    # timed after the erasure, it was delivered. What counts is when it was written to Kafka.
    produce(settings, [crossing(1, "mql", email="pat@private.example", seq=1),
                       crossing(1, "sql", email="pat@private.example", seq=2, time=int(time.time() * 1000) + 30 * 60_000),
                       crossing(2, "mql")])
    leadstream(settings, "forget", "lead-1")
    # The lead comes back: what it does after the erasure is a new profile's, and is delivered.
    produce(settings, [crossing(1, "mql", seq=3, time=int(time.time() * 1000) + 1000)])
    before = erased_count()

    with caplog.at_level(logging.INFO, logger="leadstream.sinks"):
        stats = drain(WebhookSink(settings), settings)

    posted = [orjson.loads(request.body) for request in webhook.requests_to("POST", "/hook")]
    assert sorted(p["id"] for p in posted) == ["lead-1/b2b/up/mql/3", "lead-2/b2b/up/mql/1"]
    assert (stats.delivered, stats.erased, stats.dead_lettered) == (2, 2, 0)
    assert erased_count() - before == 2
    skipped = [r.getMessage() for r in caplog.records if "forgotten" in r.getMessage()]
    assert len(skipped) == 2 and not any("lead-1" in line or crossing(1, "mql")["id"] in line for line in skipped)


def test_a_replay_of_dead_letters_does_not_deliver_those_of_a_lead_forgotten_since(
    sink_settings: Settings, webhook: WebhookReceiver
) -> None:
    settings = sink_settings.with_overrides(webhook_url=webhook.url + "/hook")
    webhook.inject("status", status=400, count=2, body={"error": "not now"})
    produce(settings, [crossing(1, "sql", email="pat@private.example"), crossing(2, "sql")])
    assert drain(WebhookSink(settings), settings).dead_lettered == 2
    leadstream(settings, "forget", "lead-1")

    result = leadstream(settings, "sink", "replay-dlq", "webhook", check=False)

    assert result.returncode == 0, result.stderr
    assert "1 delivered" in result.stdout and "1 of leads forgotten since (not delivered)" in result.stdout
    posted = [orjson.loads(request.body) for request in webhook.requests_to("POST", "/hook")]
    assert [p["lead_id"] for p in posted][2:] == ["lead-2"]  # after the two refused


def test_a_redis_that_can_lose_or_evict_erasures_is_warned_of_at_the_start_of_the_commands_relying_on_them(
    sink_settings: Settings, tmp_path: Path
) -> None:
    # Run with snapshots alone, a Redis killed lost every `forgotten:` key written since its last
    # one (a quiet Redis: all of them), and with allkeys-lru it evicted them: forgotten leads'
    # crossings were then delivered, and nothing said the Redis was unfit.
    server = RedisServer(tmp_path, "--maxmemory-policy", "allkeys-lru")
    try:
        settings = sink_settings.with_overrides(redis_url=server.url)
        redis = Redis.from_url(server.url)
        warning = durability_warning(redis)
        assert warning is not None and "appendonly is no" in warning and "maxmemory-policy is allkeys-lru" in warning
        assert f"redis-server {shlex.join(REDIS_DURABILITY_ARGS)} " in warning  # the cure is the arguments `services up` runs

        result = leadstream(settings, "sink", "replay-dlq", "webhook", check=False)
        assert [line for line in result.stderr.splitlines() if "warning" in line] == [f"leadstream sink: warning: {warning}"]
        redis.close()
    finally:
        server.stop()


@pytest.mark.parametrize("args", [
    REDIS_DURABILITY_ARGS,  # what `services up` and docker-compose.yml run
    ("--rename-command", "CONFIG", ""),  # managed Redis disables CONFIG: its persistence is the provider's
], ids=["services-up", "no-config"])
def test_a_redis_that_keeps_erasures_or_refuses_config_is_not_warned_of(tmp_path: Path, args: tuple[str, ...]) -> None:
    server = RedisServer(tmp_path, *args)
    try:
        redis = Redis.from_url(server.url)
        assert durability_warning(redis) is None
        redis.close()
    finally:
        server.stop()
