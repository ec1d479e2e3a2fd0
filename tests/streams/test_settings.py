"""Settings from the environment: a value leadstream cannot use is refused at once, naming the
variable and what it expects, instead of failing later with a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from scoring.events import MAX_TIME_MS, MIN_TIME_MS
from streams.errors import ConfigError
from streams.settings import Settings

DAY_MS = 86_400_000
#: Settings whose refusal does not repeat the value: it may hold a credential.
SECRET = ("LEADSTREAM_WEBHOOK_URL", "LEADSTREAM_REDIS_URL", "LEADSTREAM_HUBSPOT_ACCESS_TOKEN", "LEADSTREAM_SALESFORCE_ACCESS_TOKEN")

REFUSED = [
    ("LEADSTREAM_PARTITIONS", "0", "an integer from 1 to 9000"),
    ("LEADSTREAM_PARTITIONS", "-4", "an integer from 1 to 9000"),
    ("LEADSTREAM_WORKER_PORT", "70000", "a TCP port"),
    ("LEADSTREAM_METRICS_PORT", "0", "a TCP port"),
    ("LEADSTREAM_COLLECTOR_METRICS_PORT", "-1", "a TCP port"),
    ("LEADSTREAM_BATCH_MAX_MESSAGES", "0", "an integer from 1 to 2147483647"),
    ("LEADSTREAM_BATCH_WITHIN_MS", "-1", "an integer from 0 to 2147483647"),
    ("LEADSTREAM_DECAY_INTERVAL_S", "0", "an integer from 1 to 2147483647"),
    ("LEADSTREAM_MODELS_RELOAD_S", "-5", "an integer from 0 to 2147483647"),
    ("LEADSTREAM_MAX_FUTURE_MS", "-1", "an integer from 0 to 3162240000000"),
    ("LEADSTREAM_SINK_CONCURRENCY", "0", "an integer from 1 to 1000"),
    # A thread and an HTTP pool slot each: 20,000,000 held the first delivery 12 s, 220 MB.
    ("LEADSTREAM_SINK_CONCURRENCY", "1001", "an integer from 1 to 1000"),
    ("LEADSTREAM_SINK_CONCURRENCY", "2147483647", "an integer from 1 to 1000"),
    ("LEADSTREAM_SINK_MAX_ATTEMPTS", "0", "an integer from 1 to 2147483647"),
    ("LEADSTREAM_SINK_TIMEOUT_S", "-10", "an integer from 1 to 2147483647"),
    ("LEADSTREAM_SINK_DELIVERED_TTL_S", "0", "an integer from 1 to 2147483647"),
    ("LEADSTREAM_FAUST_SENSORS", "2", "0 or 1"),
    ("LEADSTREAM_LOG_LEVEL", "loud", "one of debug, info, warning, error"),
    ("LEADSTREAM_KAFKA_BOOTSTRAP", "localhost", "host:port servers"),
    ("LEADSTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:9092,kafka", "host:port servers"),
    # kafka-python drops a scheme, aiokafka does not: `topics` ran, the worker failed with a traceback.
    ("LEADSTREAM_KAFKA_BOOTSTRAP", "PLAINTEXT://kafka:9092", "host:port servers"),
    ("LEADSTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:9092,ftp://127.0.0.1:9093", "host:port servers"),
    ("LEADSTREAM_KAFKA_BOOTSTRAP", ":9092", "host:port servers"),
    ("LEADSTREAM_REDIS_URL", "localhost:6379", "a Redis URL"),
    ("LEADSTREAM_REDIS_URL", "redis://127.0.0.1:99999/0", "a Redis URL with a host and a port from 1 to 65535"),
    ("LEADSTREAM_REDIS_URL", "redis://:hunter2@redis:99999/0", "a Redis URL with a host and a port from 1 to 65535"),
    ("LEADSTREAM_KAFKA_HEAP", "lots", "a Java heap size"),
    # Below the broker's starting heap (-Xms256m), java refused to start it, naming no setting.
    ("LEADSTREAM_KAFKA_HEAP", "255m", "a Java heap size of 256m or more"),
    ("LEADSTREAM_KAFKA_HEAP", "1", "a Java heap size of 256m or more"),
    # Kafka's controller refuses to create a topic of more than 10,000 partitions and settings.
    ("LEADSTREAM_PARTITIONS", "9001", "an integer from 1 to 9000"),
    ("LEADSTREAM_WEBHOOK_URL", "hooks.example.com/leadstream", "an http(s) URL"),
    ("LEADSTREAM_WEBHOOK_URL", "htps://hooks.example.com/leadstream", "an http(s) URL"),
    ("LEADSTREAM_WEBHOOK_URL", "https:///leadstream", "an http(s) URL"),
    ("LEADSTREAM_WEBHOOK_URL", "https://hooks.example.com:0/leadstream", "an http(s) URL"),
    ("LEADSTREAM_HUBSPOT_BASE_URL", "api.hubapi.com", "an http(s) URL"),
    ("LEADSTREAM_SALESFORCE_INSTANCE_URL", "acme.my.salesforce.com", "an http(s) URL"),
    # simple-salesforce adds the v: /services/data/vv59.0/ answered 404 to every crossing.
    ("LEADSTREAM_SALESFORCE_API_VERSION", "v59.0", "a Salesforce API version: digits.digits without a v"),
    ("LEADSTREAM_SALESFORCE_API_VERSION", "59", "a Salesforce API version"),
    ("LEADSTREAM_ADVERTISED_HOST", "http://worker-2", "a host name or an IP address"),
    ("LEADSTREAM_ADVERTISED_HOST", "worker-2:6066", "a host name or an IP address"),
    ("LEADSTREAM_PARTITIONS", "four", "an integer"),
    # Python's int() takes these; a shell test, Kafka or a YAML file reads them otherwise or refuses them.
    ("LEADSTREAM_PARTITIONS", "1_000", "an integer: write it with the digits 0-9 alone"),
    ("LEADSTREAM_BATCH_MAX_MESSAGES", "+5", "an integer: write it with the digits 0-9 alone"),
    ("LEADSTREAM_WORKER_PORT", " 6066", "an integer: write it with the digits 0-9 alone"),
    ("LEADSTREAM_SINK_TIMEOUT_S", "10\n", "an integer: write it with the digits 0-9 alone"),
    ("LEADSTREAM_DECAY_INTERVAL_S", "\u0665", "an integer: write it with the digits 0-9 alone"),  # Arabic-Indic five
    ("LEADSTREAM_LIVE_LEADS", "\uff15", "an integer: write it with the digits 0-9 alone"),  # fullwidth five
    # Beyond what Kafka's clients send (32 bits) or C takes: a traceback far from the variable, or a stalled process.
    ("LEADSTREAM_PARTITIONS", "3000000000", "an integer from 1 to 9000"),
    ("LEADSTREAM_FETCH_MAX_WAIT_MS", "3000000000", "an integer from 0 to 60000"),
    # Held past the worker's 90 s request timeout, every idle fetch timed out: never ready, nothing scored.
    ("LEADSTREAM_FETCH_MAX_WAIT_MS", "120000", "an integer from 0 to 60000"),
    ("LEADSTREAM_COLLECTOR_ACK_TIMEOUT_MS", "3000000000", "an integer from 1 to 2147483647"),
    ("LEADSTREAM_GC_YOUNG_THRESHOLD", "99999999999", "an integer from 0 to 2147483647"),
    ("LEADSTREAM_SINK_DELIVERED_TTL_S", "99999999999999999999", "an integer from 1 to 2147483647"),
    ("LEADSTREAM_CLOCK_OFFSET_MS", "-9999999999999", "an integer from -3162240000000 to 3162240000000"),
    # Redis URLs redis-py would read as database 0 on localhost, or refuse with a traceback.
    ("LEADSTREAM_REDIS_URL", "redis://[x]:1", "a Redis URL with a host and a port"),
    ("LEADSTREAM_REDIS_URL", "redis://h:6379/abc", "a Redis URL with a host and, after it, a database number"),
    ("LEADSTREAM_REDIS_URL", "redis:///0", "a Redis URL with a host"),
    # Query options redis-py gives its connections: a TypeError or ValueError traceback at the first command.
    ("LEADSTREAM_REDIS_URL", "redis://:hunter2@h:6379/0?sockettimeout=5", "a Redis URL whose query holds options redis-py takes"),
    ("LEADSTREAM_REDIS_URL", "redis://h:6379/0?socket_timeout=abc", "a Redis URL whose query holds options redis-py takes"),
    ("LEADSTREAM_REDIS_URL", "unix:///run/redis.sock?db=x", "a Redis URL whose query holds options redis-py takes"),
    # Names Kafka refuses: a traceback from the admin client or Faust.
    ("LEADSTREAM_TOPIC_EVENTS", "my events", "a Kafka topic name"),
    ("LEADSTREAM_TOPIC_CROSSINGS", "x" * 250, "a Kafka topic name"),
    ("LEADSTREAM_TOPIC_EVENTS", ".", "a Kafka topic name"),
    ("LEADSTREAM_TOPIC_DEADLETTER", "..", "a Kafka topic name"),
    # The connectors' dead-letter topics, `<name>-dlq-<connector>`, would be longer than Kafka takes.
    ("LEADSTREAM_TOPIC_CROSSINGS", "x" * 235, "a Kafka topic name of at most 234 characters"),
    ("LEADSTREAM_TOPIC_SCORES", "x" * 240, "a Kafka topic name of at most 239 characters"),
    ("LEADSTREAM_APP_ID", "team/leadstream", "1 to 200 letters, digits"),
    ("LEADSTREAM_BIND_HOST", "http://x", "a host name or an IP address"),
    # Sent in a header: every request failed as it was sent, each crossing dead-lettered as a "malformed answer".
    ("LEADSTREAM_HUBSPOT_ACCESS_TOKEN", "pat\u2013na1-0c3b8f2e", "a token of printable ASCII characters"),
    ("LEADSTREAM_HUBSPOT_ACCESS_TOKEN", "pat-na1-0c3b8f2e\r", "a token of printable ASCII characters"),
    ("LEADSTREAM_SALESFORCE_ACCESS_TOKEN", "00D5e000000abc!AQ0A GdR", "a token of printable ASCII characters"),
    ("LEADSTREAM_COLLECTOR_HOST", "0.0.0.0:8088", "a host name or an IP address"),
]


@pytest.mark.parametrize(("variable", "value", "expected"), REFUSED)
def test_a_value_out_of_range_is_refused_naming_the_variable(variable: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({variable: value})
    # A hook's URL is not repeated (its path and query are often its credential), nor Redis's
    # (redis://user:password@host), nor a CRM's token.
    shown = variable if variable in SECRET else f"{variable}={value!r}"
    if variable in SECRET:
        assert value not in str(refused.value)
    assert str(refused.value).startswith(f"{shown} is not {expected}")


@pytest.mark.parametrize(
    ("variable", "value", "field", "parsed"),
    [
        ("LEADSTREAM_MODELS_RELOAD_S", "0", "models_reload_s", 0),
        ("LEADSTREAM_MAX_FUTURE_MS", "0", "max_future_ms", 0),
        ("LEADSTREAM_GC_YOUNG_THRESHOLD", "0", "gc_young_threshold", 0),
        ("LEADSTREAM_CLOCK_OFFSET_MS", "-86400000", "clock_offset_ms", -86_400_000),
        ("LEADSTREAM_WORKER_PORT", "65535", "worker_port", 65535),
        ("LEADSTREAM_SINK_CONCURRENCY", "1000", "sink_concurrency", 1000),
        ("LEADSTREAM_LOG_LEVEL", "WARNING", "log_level", "WARNING"),
        ("LEADSTREAM_KAFKA_BOOTSTRAP", "kafka:19092,[::1]:9092", "kafka_bootstrap", "kafka:19092,[::1]:9092"),
        ("LEADSTREAM_REDIS_URL", "rediss://:secret@redis.example:6380/2", "redis_url", "rediss://:secret@redis.example:6380/2"),
        ("LEADSTREAM_REDIS_URL", "unix:///run/redis.sock", "redis_url", "unix:///run/redis.sock"),
        ("LEADSTREAM_REDIS_URL", "redis://h:6379/0?socket_timeout=5&health_check_interval=30", "redis_url",
         "redis://h:6379/0?socket_timeout=5&health_check_interval=30"),
        ("LEADSTREAM_KAFKA_BOOTSTRAP", " kafka-1:9092 , 10.0.0.2:9092", "kafka_bootstrap", " kafka-1:9092 , 10.0.0.2:9092"),
        ("LEADSTREAM_KAFKA_HEAP", "512m", "kafka_heap", "512m"),
        ("LEADSTREAM_KAFKA_HEAP", "256m", "kafka_heap", "256m"),
        ("LEADSTREAM_KAFKA_HEAP", "262144k", "kafka_heap", "262144k"),
        ("LEADSTREAM_PARTITIONS", "9000", "partitions", 9000),
        ("LEADSTREAM_SALESFORCE_API_VERSION", "62.0", "salesforce_api_version", "62.0"),
        ("LEADSTREAM_ADVERTISED_HOST", "leadstream_worker_2.svc", "advertised_host", "leadstream_worker_2.svc"),
        ("LEADSTREAM_ADVERTISED_HOST", "fd00::7", "advertised_host", "fd00::7"),
        ("LEADSTREAM_WEBHOOK_URL", "http://127.0.0.1:8080/hook?token=x", "webhook_url", "http://127.0.0.1:8080/hook?token=x"),
        ("LEADSTREAM_HUBSPOT_ACCESS_TOKEN", "pat-na1-0c3b8f2e-11aa-4b2c", "hubspot_access_token", "pat-na1-0c3b8f2e-11aa-4b2c"),
        ("LEADSTREAM_SALESFORCE_ACCESS_TOKEN", "00D5e000000abc!AQ0A.GdR_x", "salesforce_access_token", "00D5e000000abc!AQ0A.GdR_x"),
    ],
)
def test_documented_values_at_the_edges_are_taken(variable: str, value: str, field: str, parsed: object) -> None:
    assert getattr(Settings.from_env({variable: value}), field) == parsed


def test_the_defaults_pass_their_own_checks() -> None:
    assert Settings.from_env(Settings().as_env()) == Settings()


def test_a_command_says_so_in_one_line_without_a_traceback() -> None:
    done = subprocess.run([sys.executable, "-m", "streams.cli", "services", "up"], capture_output=True, text=True,
                          env={**os.environ, "LEADSTREAM_KAFKA_BOOTSTRAP": "localhost"}, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "leadstream services: LEADSTREAM_KAFKA_BOOTSTRAP='localhost' is not host:port servers, comma separated (e.g. 127.0.0.1:9092)"
    ]


def test_a_leadstream_variable_that_is_no_setting_is_warned_of_naming_the_likely_one() -> None:
    # Misspelt, it left its setting at the default without a word.
    from streams.settings import unknown_variables

    assert unknown_variables({"LEADSTREAM_KAFKA_BOOTSTRAP_SERVERS": "kafka:9092", "LEADSTREAM_WORKERPORT": "7000",
                              "LEADSTREAM_REDIS_URL": "redis://r:6379/0", "LEADSTREAMING": "x", "PATH": "/bin"}) == [
        "LEADSTREAM_KAFKA_BOOTSTRAP_SERVERS is not a setting (did you mean LEADSTREAM_KAFKA_BOOTSTRAP?), so it changes "
        "nothing; `leadstream settings` lists them",
        "LEADSTREAM_WORKERPORT is not a setting (did you mean LEADSTREAM_WORKER_PORT?), so it changes nothing; "
        "`leadstream settings` lists them",
    ]


def test_the_topics_connectors_read_are_refused_where_a_dead_letter_topic_would_pass_kafka_s_limit() -> None:
    from sinks.connectors import NAMES
    from sinks.runner import dlq_topic

    longest = Settings.from_env({"LEADSTREAM_TOPIC_CROSSINGS": "c" * 234, "LEADSTREAM_TOPIC_SCORES": "s" * 239})
    for connector in NAMES:
        source = longest.topic_scores if connector == "redis" else longest.topic_crossings
        assert len(dlq_topic(source, connector)) <= 249, connector
    assert max(len(dlq_topic(longest.topic_crossings, c)) for c in NAMES if c != "redis") == 249


def test_topics_whose_names_differ_only_by_dot_and_underscore_are_refused_naming_both() -> None:
    # Kafka takes them for the same topic: creating the second failed with a traceback.
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"LEADSTREAM_TOPIC_EVENTS": "acme.events", "LEADSTREAM_TOPIC_ACCOUNTS": "acme_events"})
    assert str(refused.value) == ("LEADSTREAM_TOPIC_EVENTS='acme.events' and LEADSTREAM_TOPIC_ACCOUNTS='acme_events' differ "
                                  "only by '.' and '_', which Kafka takes for the same topic: each needs a topic of its own")
    assert Settings.from_env({"LEADSTREAM_TOPIC_EVENTS": "acme.events", "LEADSTREAM_TOPIC_ACCOUNTS": "acme.accounts"})


def test_the_collectors_two_ports_as_one_are_refused_naming_both() -> None:
    # Its second listen failed, saying another process held the port (a second collector?).
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"LEADSTREAM_COLLECTOR_PORT": "18209", "LEADSTREAM_COLLECTOR_METRICS_PORT": "18209"})
    assert str(refused.value) == ("LEADSTREAM_COLLECTOR_PORT and LEADSTREAM_COLLECTOR_METRICS_PORT are both 18209: the collector "
                                  "listens on both, its calls and its probes apart, so each needs a port of its own")
    # Processes of their own, each listening on one: the same port on two hosts is no clash.
    assert Settings.from_env({"LEADSTREAM_WORKER_PORT": "18209", "LEADSTREAM_METRICS_PORT": "18209"})


@pytest.mark.parametrize("beyond_ms", [MAX_TIME_MS + DAY_MS, MIN_TIME_MS - DAY_MS])
def test_a_clock_offset_beyond_the_years_of_event_times_is_refused(beyond_ms: int) -> None:
    # The collector timed each call without a timestamp by the moved clock, and answered every one
    # 400 bad_field "outside years 2000-2099", which no client could mend.
    offset_ms = beyond_ms - int(time.time() * 1000)
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"LEADSTREAM_CLOCK_OFFSET_MS": str(offset_ms)})
    assert str(refused.value).startswith(f"LEADSTREAM_CLOCK_OFFSET_MS={offset_ms} moves the clock to ")
    assert "outside the years 2000-2099" in str(refused.value)
    # A day inside the range is taken: replays of data from around 2000 or tests near 2100.
    inside_ms = (MAX_TIME_MS - DAY_MS if beyond_ms > MAX_TIME_MS else MIN_TIME_MS + DAY_MS) - int(time.time() * 1000)
    assert Settings.from_env({"LEADSTREAM_CLOCK_OFFSET_MS": str(inside_ms)}).clock_offset_ms == inside_ms


def test_two_settings_naming_one_topic_are_refused() -> None:
    # A dead-letter topic that was the events topic had the worker reject its own letters, each
    # wrapping the one before, until they filled the broker's disk.
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"LEADSTREAM_TOPIC_EVENTS": "acme-events", "LEADSTREAM_TOPIC_DEADLETTER": "acme-events"})
    assert str(refused.value) == ("LEADSTREAM_TOPIC_EVENTS='acme-events' and LEADSTREAM_TOPIC_DEADLETTER='acme-events' both "
                                  "name the same topic: each needs a topic of its own")
