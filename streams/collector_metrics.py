"""What an on-call engineer watches of the collector: requests by status, calls taken and
refused, answer time, and the bytes awaiting Kafka's acknowledgement (the 503 threshold).

Served with /healthz and /readyz on LEADSTREAM_COLLECTOR_METRICS_PORT by streams.probes, not on
the public ingestion port.
"""

from __future__ import annotations

from typing import Iterable

from prometheus_client import Counter, Gauge, Histogram

from streams.errors import REFUSAL_CODES, REFUSAL_STATUSES

REQUESTS = Counter("leadstream_collector_requests", "Requests answered, by call and HTTP status.", ["call", "status"])
ACCEPTED = Counter("leadstream_collector_calls_accepted", "Calls written to Kafka and acknowledged, by source.", ["source"])
REJECTED = Counter(
    "leadstream_collector_rejected",
    "Refusals by reason code: a request refused whole counts once, each bad call of a batch once (and is dead-lettered).",
    ["code"],
)
# REJECTED mixes requests and calls, so no share of it is a share of anything: a batch of 100
# calls refused for its write key counts 1, against ACCEPTED's 100. This one counts in ACCEPTED's
# unit, and requests refused whole are REQUESTS' 4xx (the alert takes each share on its own).
CALLS_REFUSED = Counter(
    "leadstream_collector_calls_refused",
    "Calls refused one by one and dead-lettered (a bad call of a batch, or a bad single call), by source.",
    ["source"],
)
REQUEST_SECONDS = Histogram(
    "leadstream_collector_request_seconds",
    "Time from a request's arrival to its answer, Kafka's acknowledgement included.",
    ["call"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
IN_FLIGHT_BYTES = Gauge(
    "leadstream_collector_in_flight_bytes", "Bytes of events awaiting Kafka's acknowledgement (503 beyond LEADSTREAM_COLLECTOR_MAX_IN_FLIGHT_BYTES)."
)
KAFKA_CONNECTED = Gauge("leadstream_collector_kafka_connected",
                        "1 while the collector is connected to Kafka and Kafka answers (its metadata, asked every 5 s, and its acks), else 0; "
                        "0 too while a topic it writes to does not exist (/readyz names it).")
PRODUCERS_REPLACED = Counter(
    "leadstream_collector_producers_replaced",
    "Kafka producers replaced by a new one after a failure they never leave (an idempotent producer's sequence lost "
    "after a broker restart), by error.",
    ["error"],
)


def collector_started(sources: Iterable[str], calls: Iterable[str]) -> None:
    """Exports the counters of every source, call, answer and refusal code at 0 from the start:
    Prometheus takes a series' first sample as its baseline, so a source's first refused calls, or
    the first 401s of a rotated write key, counted nothing in the alerts' rates."""
    for source in sources:
        ACCEPTED.labels(source)
        CALLS_REFUSED.labels(source)
    for code in REFUSAL_CODES:
        REJECTED.labels(code)
    statuses = ("200", *map(str, REFUSAL_STATUSES), "500", "503")
    for call in calls:
        for status in statuses:
            REQUESTS.labels(call, status)
