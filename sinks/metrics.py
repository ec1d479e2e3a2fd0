"""What an on-call engineer watches of a connector: outcomes, latency, retries, quota waits, DLQ.

Served with /healthz and /readyz on LEADSTREAM_METRICS_PORT by `sinks.probes`.
"""

from __future__ import annotations

from typing import Iterable

from prometheus_client import Counter, Gauge, Histogram

DELIVERIES = Counter(
    "leadstream_sink_deliveries",
    "Messages a connector finished, by outcome: delivered, skipped (already delivered), ignored (nothing for "
    "this connector, such as an account crossing for a CRM connector with no account mapping), dead_lettered, "
    "unreplayable (a record of the dead-letter topic a replay cannot re-drive), stale (a replayed dead letter that "
    "newer messages of its record overtook: not applied), erased (a lead crossing of a lead `leadstream forget` erased "
    "after it was written to Kafka: not delivered), repeated (a second dead letter of a message a replay took already, "
    "a crash before the offset commit having written it twice: not replayed again), dropped (a replayed dead letter "
    "that failed for good again, under --drop-permanent: not dead-lettered again); retried counts each failed attempt "
    "that was retried.",
    ["connector", "outcome"],
)
DELIVERY_LATENCY = Histogram(
    "leadstream_sink_delivery_latency_seconds",
    "From the crossing's time to the CRM's acknowledgement.",
    ["connector"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
)
BACKOFF_SECONDS = Counter("leadstream_sink_backoff_seconds", "Time spent waiting between retries.", ["connector"])
RATE_LIMIT_WAIT_SECONDS = Counter(
    "leadstream_sink_rate_limit_wait_seconds", "Time deliveries waited for the connector's API quota.", ["connector"]
)
DLQ_DEPTH = Gauge("leadstream_sink_dlq_depth", "Dead letters not yet replayed, per connector.", ["connector"])
CONSUMER_LAG = Gauge("leadstream_sink_consumer_lag", "Messages of the source topic not yet committed.", ["connector", "partition"])
READY = Gauge("leadstream_sink_ready", "1 when the connector has partitions, Kafka and Redis answer and its CRM takes its credentials, else 0.",
              ["connector"])


def connector_started(connector: str, outcomes: Iterable[str]) -> None:
    """Exports the connector's counters at 0 from its start: until its first retry or quota wait
    their panels showed "No data" rather than no time waited, and Prometheus takes a series' first
    sample as its baseline, so a first retry or dead letter (a series first at 1) counted nothing
    in the delivery alerts' rates."""
    for counter in (BACKOFF_SECONDS, RATE_LIMIT_WAIT_SECONDS):
        counter.labels(connector)
    for outcome in outcomes:
        DELIVERIES.labels(connector, outcome)
