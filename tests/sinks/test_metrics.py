"""A real `leadstream sink` process serves /metrics, /healthz and /readyz with exact counts."""

from __future__ import annotations

import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client import REGISTRY
from redis import RedisError

from sinks import connectors, metrics
from sinks.runner import OUTCOMES, SinkRunner, outcome_label
from streams import probes
from sinks.webhook import WebhookSink
from streams.processes import free_port
from streams.errors import ServiceError
from streams.settings import Settings
from tests.sinks.conftest import RedisServer, crossing, produce, running
from tests.infra import wait_for
from tests.sinks.fake_http import WebhookReceiver


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return 0, ""


def sample(metrics: str, line_start: str) -> float:
    values = [float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith(line_start + " ")]
    assert len(values) == 1, f"{line_start} not exported exactly once"
    return values[0]


def test_connector_metrics_count_every_outcome_exactly(
    sink_settings: Settings, webhook: WebhookReceiver, sink_process: Any
) -> None:
    port = free_port()
    settings = sink_settings.with_overrides(webhook_url=f"{webhook.url}/hook", metrics_port=port)
    now_ms = int(time.time() * 1000)
    first, second = crossing(1, "mql", time=now_ms), crossing(2, "sql", time=now_ms)
    produce(settings, [first, second, first])  # the third is a redelivered duplicate

    proc = sink_process(settings, "webhook")
    wait_for(lambda: get(port, "/healthz")[0] == 200, what="/healthz")
    wait_for(lambda: get(port, "/readyz")[0] == 200, what="/readyz")
    wait_for(lambda: len(webhook.requests_to("POST", "^/hook$")) == 2, what="two posts")

    def counted() -> bool:
        text = get(port, "/metrics")[1]
        return 'outcome="skipped"' in text and 'outcome="delivered"' in text

    wait_for(counted, what="the outcome counters")
    text = get(port, "/metrics")[1]
    assert sample(text, 'leadstream_sink_deliveries_total{connector="webhook",outcome="delivered"}') == 2
    assert sample(text, 'leadstream_sink_deliveries_total{connector="webhook",outcome="skipped"}') == 1
    assert sample(text, 'leadstream_sink_delivery_latency_seconds_count{connector="webhook"}') == 2
    # Every outcome from the start, at 0: a first dead letter (a series first at 1) counted
    # nothing in rate(), which Prometheus starts from a series' first sample.
    assert sample(text, 'leadstream_sink_deliveries_total{connector="webhook",outcome="dead_lettered"}') == 0
    for outcome in map(outcome_label, OUTCOMES):
        sample(text, f'leadstream_sink_deliveries_total{{connector="webhook",outcome="{outcome}"}}')
    assert sample(text, 'leadstream_sink_ready{connector="webhook"}') == 1
    # No retry, no quota wait: 0 from the start, where their panels showed "No data".
    assert sample(text, 'leadstream_sink_backoff_seconds_total{connector="webhook"}') == 0
    assert sample(text, 'leadstream_sink_rate_limit_wait_seconds_total{connector="webhook"}') == 0
    assert len(webhook.requests_to("POST", "^/hook$")) == 2, proc.tail()


def families(metrics: str) -> set[str]:
    """The leadstream metric families a /metrics text declares."""
    return {line.split()[2] for line in metrics.splitlines() if line.startswith("# TYPE leadstream_")}


def test_a_connector_exports_its_own_metrics_not_the_workers(sink_settings: Settings, webhook: WebhookReceiver, sink_process: Any) -> None:
    # It imports modules it shares with the worker, which import the worker's metrics: its /metrics
    # showed them too, leadstream_worker_ready at 0, and min(leadstream_worker_ready) over every
    # scraped process was 0 however ready the workers were (LeadstreamWorkerNotReady fired for good).
    port = free_port()
    proc = sink_process(sink_settings.with_overrides(webhook_url=f"{webhook.url}/hook", metrics_port=port), "webhook")
    wait_for(lambda: get(port, "/readyz")[0] == 200, what="/readyz")
    text = get(port, "/metrics")[1]
    assert "leadstream_sink_ready" in families(text), proc.tail()
    assert {name for name in families(text) if not name.startswith("leadstream_sink_")} == set()
    assert sample(text, "process_open_fds") > 0  # the process's own families are still shown


def test_a_stalled_redis_makes_the_connector_not_ready_and_its_ledger_fail_within_the_timeout(
    sink_settings: Settings, webhook: WebhookReceiver, redis_server: RedisServer
) -> None:
    # The ledger's client had no timeout: with Redis stalled, /readyz, and every delivery's
    # ledger look-up, waited forever.
    settings = sink_settings.with_overrides(redis_url=redis_server.url, webhook_url=webhook.url)
    runner = SinkRunner(WebhookSink(settings), settings)
    runner.assigned.set()  # as once the consumer holds partitions
    wait_for(runner.ready, what="the connector to be ready")
    redis_server.stall()

    answers: list[object] = []

    def probe() -> None:
        answers.append(runner.ready())
        try:
            runner.ledger.delivered("lead-1/b2b/up/mql/1")
        except RedisError as exc:
            answers.append(exc)

    asking = threading.Thread(target=probe, daemon=True)
    asking.start()
    asking.join(timeout=3 * settings.sink_timeout_s + 2)

    assert len(answers) == 2, f"still waiting for Redis: {answers}"
    assert answers[0] is False and isinstance(answers[1], RedisError)


def test_a_connector_waits_at_start_for_a_redis_that_stalls_past_its_timeout_as_it_waits_for_kafka(
    sink_settings: Settings, webhook: WebhookReceiver, redis_server: RedisServer
) -> None:
    # Its one ping at start failed after LEADSTREAM_SINK_TIMEOUT_S (1 s here) and the connector
    # refused to start ("cannot start without Redis ... Timeout reading"), under a Redis stalled 3 s,
    # where a broker as slow is waited for up to LEADSTREAM_KAFKA_CONNECT_TIMEOUT_S.
    settings = sink_settings.with_overrides(redis_url=redis_server.url, webhook_url=webhook.url, kafka_connect_timeout_s=10)
    produce(settings, [crossing(1)])
    redis_server.stall()
    resumed = threading.Timer(3 * settings.sink_timeout_s, redis_server.resume)
    resumed.start()
    try:
        with running(SinkRunner(WebhookSink(settings), settings)) as ran:
            wait_for(lambda: ran, 60, "the connector to deliver the topic")
    finally:
        resumed.cancel()
        redis_server.resume()

    assert ran[0].delivered == 1 and len(webhook.requests_to("POST", "")) == 1


def test_the_read_model_waits_at_start_for_a_redis_that_stalls_past_its_timeout(
    sink_settings: Settings, redis_server: RedisServer
) -> None:
    # `sink redis` renames its old keys before the runner starts: that first call failed after 1 s alike.
    settings = sink_settings.with_overrides(redis_url=redis_server.url, kafka_connect_timeout_s=10)
    redis_server.stall()
    resumed = threading.Timer(3 * settings.sink_timeout_s, redis_server.resume)
    resumed.start()
    try:
        model = connectors.build("redis", settings)
    finally:
        resumed.cancel()
        redis_server.resume()

    assert model.name == "redis"


def test_a_connector_whose_redis_never_answers_stops_at_start_within_the_kafka_connect_timeout(
    sink_settings: Settings, webhook: WebhookReceiver, redis_server: RedisServer
) -> None:
    settings = sink_settings.with_overrides(redis_url=redis_server.url, webhook_url=webhook.url, kafka_connect_timeout_s=3)
    redis_server.stall()
    started = time.monotonic()
    with pytest.raises(ServiceError, match="cannot start without Redis, where the connector keeps the ids of what it "
                                           r"delivered: Redis could not be reached \(Timeout"):
        SinkRunner(WebhookSink(settings), settings).run(stop_at_end=True)

    # The deadline, plus the last ping's timeout and the topic checks before it.
    assert time.monotonic() - started < settings.kafka_connect_timeout_s + settings.sink_timeout_s + 10
    assert not webhook.requests_to("POST", "")


def test_the_lag_watch_names_an_unreachable_broker_within_the_connect_timeout_keeps_trying_and_exports_no_frozen_figure(
    sink_settings: Settings, webhook: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    # Its clients waited kafka-python's 30 s for the broker's first answer, whatever
    # LEADSTREAM_KAFKA_CONNECT_TIMEOUT_S said, and the warning did not say where Kafka was looked for.
    # The figures it measured before Kafka went: the lag was taken away, the dead letters' depth
    # stayed, a frozen 0 that said none waited, or a frozen count that kept the alert on.
    metrics.CONSUMER_LAG.labels("webhook", "0").set(3)
    metrics.DLQ_DEPTH.labels("webhook").set(5)
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        bootstrap = f"127.0.0.1:{closed.getsockname()[1]}"
    settings = sink_settings.with_overrides(kafka_bootstrap=bootstrap, kafka_connect_timeout_s=1, webhook_url=webhook.url)
    runner = SinkRunner(WebhookSink(settings), settings)
    watching = threading.Thread(target=runner.watch, kwargs={"interval_s": 0.1}, daemon=True)
    caplog.set_level(logging.WARNING, logger="leadstream.sinks")
    watching.start()
    unreachable = f"cannot reach Kafka at {bootstrap} within 1 s (LEADSTREAM_KAFKA_CONNECT_TIMEOUT_S)"

    def warned_twice() -> bool:
        return sum(unreachable in r.getMessage() for r in caplog.records if "lag not measured" in r.getMessage()) >= 2

    try:
        wait_for(warned_twice, timeout_s=8, what="two warnings naming the unreachable broker")
        assert watching.is_alive()  # it keeps trying
        for name in ("leadstream_sink_consumer_lag", "leadstream_sink_dlq_depth"):
            assert [s for family in REGISTRY.collect() for s in family.samples if s.name == name] == [], name
    finally:
        runner.stop.set()
        watching.join(timeout=5)
    assert not watching.is_alive()


def test_readiness_under_a_stalled_redis_answers_within_about_a_second_whatever_the_sink_timeout(
    sink_settings: Settings, webhook: WebhookReceiver, redis_server: RedisServer
) -> None:
    # /readyz pinged with LEADSTREAM_SINK_TIMEOUT_S (10 s by default): a probe that gives up after
    # a second or two never saw its 503.
    settings = sink_settings.with_overrides(redis_url=redis_server.url, webhook_url=webhook.url, sink_timeout_s=10)
    runner = SinkRunner(WebhookSink(settings), settings)
    runner.assigned.set()  # as once the consumer holds partitions
    wait_for(runner.ready, what="the connector to be ready")
    redis_server.stall()
    started = time.monotonic()
    assert not runner.ready()
    assert time.monotonic() - started < 2


def test_a_probe_that_hangs_up_before_its_answer_leaves_no_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    # A client that gave up (curl -m 2, a kubelet's timeoutSeconds) left http.server's 20-line
    # "Exception occurred during processing of request ... BrokenPipeError" in the log each time.
    answering = threading.Event()

    def slow_ready() -> bool:
        answering.wait(5)
        return False

    port = free_port()
    server = probes.serve(port, slow_ready, "127.0.0.1", "LEADSTREAM_METRICS_PORT", Settings().idle_timeout_ms,
                          metrics=probes.OwnMetrics("leadstream_sink_"))
    try:
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port)) as client:
                client.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # a reset
            time.sleep(0.2)
        answering.set()
        time.sleep(0.5)
        assert get(port, "/healthz")[0] == 200  # still serving
    finally:
        server.shutdown()
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Exception occurred" not in err, err
