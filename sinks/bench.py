"""`leadstream bench sinks`: deliveries per second of each connector against its local stand-in.

Each run produces crossings to a fresh topic on the real broker and drains them with the real
runner (Redis ledger, rate limiter, lanes) into the test suite's CRM stand-ins, once answering
at once and once 50 ms late, with one lane and with sixteen. Every crossing costs exactly one
API request (a down-crossing of a lead whose CRM id is known), so deliveries/s is requests/s.
The rate is measured at the server, first request to last, so consumer-group joins do not count.
A last run shows HubSpot's default quota (100 per 10 s) capping whatever concurrency adds.
The Redis read model's figure is score changes written per second (5,000 over the topic's
partitions, into the real Redis), from its first batch's start to its last batch's end.

It runs from a source checkout: the stand-ins live in tests/sinks/ (the bench measures the
machinery, not a CRM).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import ssl
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import orjson

from sinks.base import Sink
from sinks.errors import SinkError
from sinks.runner import SinkRunner
from streams import services
from streams.settings import PROJECT_ROOT, Settings
from streams.topics import TopicSpec, delete_topics, ensure_topics

LATENCIES_MS = (0, 50)
CONCURRENCIES = (1, 16)
CROSSINGS = 300
# High enough that only latency and concurrency decide, yet every request passes the limiter.
BENCH_QUOTA = "5000/1s"


@dataclass(frozen=True)
class Run:
    deliveries_per_s: float
    wall_s: float
    delivered: int


def main(args: argparse.Namespace, settings: Settings) -> int:
    if str(PROJECT_ROOT) not in sys.path:
        sys.path.insert(0, str(PROJECT_ROOT))  # the stand-ins are the test suite's
    try:
        __import__("tests.sinks.fake_http")
    except ImportError:
        raise SinkError("`leadstream bench sinks` needs a source checkout: the CRM stand-ins live in tests/sinks/") from None
    services.up(settings)
    figures: dict[str, Any] = {
        "crossings_per_run": CROSSINGS,
        "requests_per_delivery": 1,
        "quota": BENCH_QUOTA,
        "deliveries_per_s": {},
    }
    for connector in ("hubspot", "salesforce", "webhook"):
        figures["deliveries_per_s"][connector] = {
            f"latency_{latency_ms}ms": {
                f"concurrency_{concurrency}": _run(settings, connector, latency_ms, concurrency, CROSSINGS, BENCH_QUOTA)
                .deliveries_per_s
                for concurrency in CONCURRENCIES
            }
            for latency_ms in LATENCIES_MS
        }
    capped = _run(settings, "hubspot", 50, 16, 120, "100/10s")
    figures["hubspot_default_quota_100_per_10s"] = {"latency_50ms": {"concurrency_16": capped.deliveries_per_s}}
    figures["redis_read_model_updates_per_s"] = _run(settings, "redis", 0, 16, 5000, BENCH_QUOTA).deliveries_per_s
    if args.json:
        print(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode())
    else:
        for connector, by_latency in figures["deliveries_per_s"].items():
            for latency, by_concurrency in by_latency.items():
                cells = "  ".join(f"{c}: {v:8.1f}/s" for c, v in by_concurrency.items())
                print(f"{connector:<11} {latency:<13} {cells}")
        print(f"hubspot at its default quota (100/10s), 50 ms, 16 lanes: {capped.deliveries_per_s:.1f}/s")
        print(f"redis read model: {figures['redis_read_model_updates_per_s']:.0f} updates/s")
    return 0


def _run(base: Settings, connector: str, latency_ms: int, concurrency: int, count: int, quota: str) -> Run:
    tag = uuid.uuid4().hex[:8]
    settings = base.with_overrides(
        app_id=f"bench-{tag}", topic_crossings=f"bench-{tag}-crossings", topic_scores=f"bench-{tag}-scores",
        redis_prefix=f"bench-{tag}", sink_concurrency=concurrency, hubspot_rate_limit=quota,
        salesforce_rate_limit=quota, webhook_rate_limit=quota,
    )
    topic = settings.topic_scores if connector == "redis" else settings.topic_crossings
    try:  # the run's topics and keys go however it ends (an error, Ctrl-C, SIGTERM)
        with _stand_in(connector, settings, count, latency_ms / 1000) as (connected, build, times):
            ensure_topics(connected, [TopicSpec(topic, connected.partitions)])
            _produce(connected, topic, connector, count)
            started = time.monotonic()
            stats = SinkRunner(build(connected), connected).run(stop_at_end=True)
            wall_s = time.monotonic() - started
            stamps = sorted(times()) or [started, started + wall_s]
    finally:
        _cleanup(settings, topic)
    span_s = max(stamps[-1] - stamps[0], 1e-6)
    return Run(round((len(stamps) - 1) / span_s, 1), round(wall_s, 2), stats.delivered)


@contextmanager
def _stand_in(connector: str, settings: Settings, count: int, latency_s: float) -> Iterator[tuple[Settings, Callable[[Settings], Sink[Any]], Callable[[], list[float]]]]:
    """The connector's stand-in, seeded with `count` leads, in its own process (so that it does
    not share the runner's interpreter lock), and how to build the sink."""
    if connector == "redis":
        from sinks.redis_model import RedisModelSink

        starts: list[float] = []
        done: list[float] = []

        class TimedRedisModel(RedisModelSink):
            # Each update is done when its batch is; the time runs from the first batch's start,
            # as from a stand-in's first request: from its end it would leave that batch out.
            def deliver_batch(self, items: Any) -> list[Exception | None]:
                starts.append(time.monotonic())
                errors = super().deliver_batch(items)
                done.extend([time.monotonic()] * len(items))
                return errors

        yield settings, TimedRedisModel, lambda: starts[:1] + done
        return
    parent, child = multiprocessing.get_context("spawn").Pipe()
    process = multiprocessing.get_context("spawn").Process(target=_serve, args=(connector, count, latency_s, child), daemon=True)
    process.start()
    url, ca_bundle = parent.recv()
    if connector == "hubspot":
        from sinks.hubspot import HubSpotSink
        from tests.sinks.fake_hubspot import TOKEN

        settings = settings.with_overrides(hubspot_base_url=url, hubspot_access_token=TOKEN)
        build: Callable[[Settings], Sink[Any]] = HubSpotSink
    elif connector == "salesforce":
        from sinks.salesforce import SalesforceSink
        from tests.sinks.fake_salesforce import SESSION_ID

        os.environ["REQUESTS_CA_BUNDLE"] = ca_bundle
        settings = settings.with_overrides(salesforce_instance_url=url, salesforce_access_token=SESSION_ID)
        build = SalesforceSink
    else:
        from sinks.webhook import WebhookSink

        settings = settings.with_overrides(webhook_url=url, webhook_secret="bench-secret")
        build = WebhookSink
    stamps: list[float] = []

    def times() -> list[float]:
        if not stamps:
            parent.send("stop")
            stamps.extend(parent.recv())
        return stamps

    try:
        yield settings, build, times
    finally:
        times()
        process.join(timeout=10)


def _serve(connector: str, count: int, latency_s: float, conn: Any) -> None:
    """The stand-in process: serve until told to stop, then hand back when requests arrived."""
    from tests.sinks.fake_http import WebhookReceiver
    from tests.sinks.fake_hubspot import FakeHubSpot
    from tests.sinks.fake_salesforce import FakeSalesforce

    ca_bundle = ""
    if connector == "hubspot":
        server: Any = FakeHubSpot()
        for n in range(count):
            server.objects["contacts"][_hubspot_id(n)] = server._record(_hubspot_id(n), {"email": f"lead-{n}@acme.io"})
    elif connector == "salesforce":
        context, ca_bundle = _tls()
        server = FakeSalesforce(context)
        for n in range(count):
            server.records["Lead"][_salesforce_id(n)] = {"Id": _salesforce_id(n), "Email": f"lead-{n}@acme.io"}
    else:
        server = WebhookReceiver()
    server.latency_s = latency_s
    server.start()
    conn.send((server.url, ca_bundle))
    conn.recv()
    # Arrival times on this process's monotonic clock: only their differences are used.
    conn.send([r.at for r in server.requests])
    server.stop()


def _produce(settings: Settings, topic: str, connector: str, count: int) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=20, acks="all")
    for n in range(count):
        lead = f"lead-{n}"
        if connector == "redis":
            key = f"b2b/{lead}".encode()
            value = {"lead_id": lead, "model": "b2b", "score": n % 100, "normalized": n % 100, "grade": "A",
                     "engagement": 1, "cell": "A1", "temperature": "warm", "level": "mql", "last_activity_ms": 0,
                     "time": 1763884800000, "top_reasons": [{"rule": "pricing_page", "points": 30}]}
        else:
            key = lead.encode()
            value = {"id": f"bench/{lead}", "kind": "lead", "lead_id": lead, "account_id": None, "model": "b2b",
                     "from_level": "mql", "to_level": "engaged", "direction": "down", "score": 20.0,
                     "normalized": 20, "grade": "B", "engagement": 1, "cell": "B1", "temperature": "cold",
                     "time": 1763884800000, "reasons": [],
                     "traits": {"email": f"{lead}@acme.io", "hubspot_id": _hubspot_id(n), "salesforce_id": _salesforce_id(n)}}
        producer.send(topic, key=key, value=orjson.dumps(value))
    producer.flush()
    producer.close()


def _hubspot_id(n: int) -> str:
    """The stand-in's id of lead n's contact: a number, as the connector requires."""
    return str(10_000_000 + n)


def _salesforce_id(n: int) -> str:
    """The stand-in's id of lead n's Lead: 18 letters and digits, as the connector requires."""
    return f"00Q{n:012d}AAA"


def _cleanup(settings: Settings, topic: str) -> None:
    from redis import Redis

    delete_topics(settings, topic)  # the topic and its dead-letter topics
    redis = Redis.from_url(settings.redis_url)
    keys = list(redis.scan_iter(f"{settings.redis_prefix}:*", count=5000))
    for start in range(0, len(keys), 1000):
        redis.delete(*keys[start:start + 1000])
    redis.close()


def _tls() -> tuple[ssl.SSLContext, str]:
    """A throwaway CA for the Salesforce stand-in (simple-salesforce only speaks https)."""
    import tempfile

    import trustme

    ca = trustme.CA()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    bundle = os.path.join(tempfile.mkdtemp(prefix="leadstream-bench-"), "ca.pem")
    ca.cert_pem.write_to_path(bundle)
    return context, bundle
