"""The scoring worker's Prometheus metrics, beside Faust's own sensors on the same /metrics.

Counters are incremented once per batch, not per event, so metrics cost next to nothing on the
hot path.
"""

from __future__ import annotations

import math
import time
from typing import Iterable, Literal, get_args

from prometheus_client import Counter, Gauge, Histogram

from scoring import Transition
from streams.deadletter import WORKER_REASONS
from streams.erasure import IGNORED_REASONS

EVENTS_CONSUMED = Counter(
    "leadstream_events_consumed", "Events read from the raw topic (envelopes counted by event), in batches written (not dropped by the fence)."
)
EVENTS_SCORED = Counter("leadstream_events_scored", "Events applied to lead states.")
EVENTS_REJECTED = Counter("leadstream_events_rejected", "Events sent to the dead-letter topic, by reason.", ["reason"])
EVENTS_LATE = Counter(
    "leadstream_events_late", "Events beyond a model's allowed lateness, by model: it counted them, not scored them.", ["model"]
)
EVENTS_UNROUTED = Counter(
    "leadstream_events_unrouted", "Events whose product no model's filter takes: counted, not scored (check the product names)."
)
EVENTS_READ_AGAIN = Counter(
    "leadstream_events_read_again",
    "Events dropped because their lead's states hold them already: records read again after a restart or a rebalance "
    "(streams/read_offsets.py). A surge with no restart means an input topic was created again without the worker's state.",
)
BATCH_SECONDS = Histogram(
    "leadstream_batch_seconds",
    "Time to score one batch of messages and write its results.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
GC_PAUSE_SECONDS = Histogram(
    "leadstream_gc_pause_seconds",
    "Time the process stood still in one collection of the garbage collector, by generation "
    "(2 is a full collection: it scans every object, lead states included).",
    ["generation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
BATCH_EVENTS = Histogram(
    "leadstream_batch_events", "Events in one scored batch.", buckets=(1, 10, 100, 1_000, 5_000, 10_000, 50_000, 100_000)
)
BATCH_DONE = Gauge(
    "leadstream_batch_done_timestamp_seconds",
    "When each stage last finished a batch, its outputs and states acknowledged by Kafka, or started (Unix time).",
    ["stage"],
)
STAGE_STALLED = Gauge(
    "leadstream_stage_stalled_seconds",
    "Seconds the stage has finished no batch while messages of this worker's own partitions of its topics waited: "
    "since its last batch done (or its start), or since the lag last showed none of them waiting (0 while none wait; "
    "those behind a transaction still open, which it cannot read yet, do not count).",
    ["stage"],
)

OPEN_TRANSACTION_WAIT = Gauge(
    "leadstream_open_transaction_wait_seconds",
    "Seconds the workers have read all they can of the partition while records wait behind a transaction still open "
    "on it (read_committed reads nothing past its first record): a producer's transaction holds it, not the worker. "
    "0 while none waits so; such a partition is not counted as waiting in leadstream_stage_stalled_seconds.",
    ["topic", "partition"],
)


class StageClock:
    """For STAGE_STALLED, per stage: when it last finished a batch (or started), and when the lag
    last showed none of this worker's own partitions of it waiting. The batch's age alone, against
    the whole group's lag, told nothing of one worker stuck among others that score (the freshest
    worker's batch stood for all), and a worker with nothing to read (a spare, or partitions
    without traffic) aged as if stuck. Unix times: worked out at each scrape, so that a stage stuck
    in a batch ages though the timer that measures the lag runs late."""

    def __init__(self) -> None:
        self._since: dict[str, float] = {}

    def moved(self, stage: str, at_s: float) -> None:
        """The stage finished a batch, started, or had nothing waiting at `at_s`."""
        self._since[stage] = max(at_s, self._since.get(stage, at_s))

    def stalled_s(self, stage: str, now_s: float) -> float:
        return max(0.0, now_s - self._since.get(stage, now_s))


STAGES = StageClock()


def batch_done(stage: str) -> None:
    """The stage finished a batch, outputs and states acknowledged."""
    BATCH_DONE.labels(stage).set_to_current_time()
    STAGES.moved(stage, time.time())


def stage_started(stage: str) -> None:
    """The stage's figures from its start: a stage stuck in its first batch, or given none while
    events wait, has an age too."""
    batch_done(stage)
    STAGE_STALLED.labels(stage).set_function(lambda: STAGES.stalled_s(stage, time.time()))


EVENT_TIME_LAG = Gauge("leadstream_event_time_lag_seconds", "Now minus the newest event time read from the events topic since the worker started (NaN before).")


class _NewestScored:
    """The newest event time read from the events topic since the worker started (0: none yet)."""

    ms = 0


NEWEST_SCORED = _NewestScored()


def event_time_lag_s(now_ms: int) -> float:
    """For EVENT_TIME_LAG, worked out at each scrape: set per batch, it stood still when batches
    stopped (a stalled worker showed the lag it had at its last batch, and no alert on it could
    fire). NaN (no value on a dashboard, no alert) until the worker has scored an event since it
    started: it showed 0, a worker just restarted with nothing to score looking perfectly fresh."""
    return max(0.0, (now_ms - NEWEST_SCORED.ms) / 1000) if NEWEST_SCORED.ms else math.nan


# The whole group's lag, which every worker exports: dashboards take one per partition (max).
CONSUMER_LAG = Gauge("leadstream_consumer_lag", "End offset minus committed offset of the workers' group (0 when only transaction markers or aborted records lie between).", ["topic", "partition"])
CROSSINGS = Counter("leadstream_crossings", "Threshold crossings published (acknowledged by Kafka).", ["model", "level", "direction", "kind"])
BATCHES_FENCED = Counter(
    "leadstream_batches_fenced",
    "Batches (stage score or rollup) and decay sweeps (decay) dropped unwritten because the worker was no longer, or could "
    "not confirm it was, a member of its consumer group (paused past the session timeout): their records are scored again.",
    ["stage"],
)
DECAY_STEPS = Counter("leadstream_decay_steps", "Decay steps applied by the timer.")
DECAY_SWEEPS = Counter("leadstream_decay_sweeps", "Sweeps of the decay timer done over the owned partitions, one an interval while ready (not one the fence drops).")
DECAY_FAILURES = Counter("leadstream_decay_failures", "Decay steps that raised (a bug): the lead is left as it was.")
DECAY_DUE = Gauge("leadstream_decay_index_size", "Scheduled decay steps of the leads on owned partitions.")
LEADS_FORGOTTEN = Counter("leadstream_leads_forgotten", "Leads erased on request (`leadstream forget`, a tombstone on the profiles topic).")
FORGET_REQUESTS_WITHOUT_STATE = Counter(
    "leadstream_forget_requests_without_state",
    "Requests to forget an id that had no state (never scored under it, or forgotten already): often a request keyed by "
    "something else than the lead id, unless records of the id sent before the request were still to be read.")
FORGET_HEADERS_IGNORED = Counter(
    "leadstream_forget_headers_ignored",
    "Headers of requests to forget that could not say what was sent before the request (streams/erasure.py), by reason: "
    "the request covers the other topics, or only what the worker had read.", ["reason"])
LEADS_IN_STATE = Gauge("leadstream_leads_in_state", "Leads with state on this worker, by model.", ["model"])
RECOVERY_REMAINING = Gauge("leadstream_table_recovery_remaining", "Changelog records left to replay before the tables are ready.")
OFFSET_ANOMALIES = Counter(
    "leadstream_offset_anomalies",
    "Messages of the raw, identity or account-updates topic delivered out of sequence within one assignment: "
    "`gap` (offsets skipped: events this worker never saw), `log_hole` (offsets with no committed record: a transaction's "
    "markers, aborted records), `repeat` (an offset delivered again) or `sought_back` "
    "(a first message after a rebalance's seek beyond the offset sought: the partition sought back to it); and, at a seek, "
    "`deleted_unread` (offsets the log deleted, by retention or delete-records, before the group read them: never scored).",
    ["kind"],
)
REBALANCES = Counter("leadstream_rebalances", "Consumer group rebalances this worker went through.")
ReloadOutcome = Literal["applied", "rejected"]
MODEL_RELOADS = Counter(
    "leadstream_model_reloads", "Edits of the models directory the worker found: applied, or rejected (they do not load).", ["outcome"]
)
# Every series whose labels are known at start exists from it, at 0: Prometheus takes a series'
# first sample as its baseline, so one that first appears at 1 has increased by nothing, and the
# first dead letter of a reason (internal_error, missing_field, ...), gap, rejected model edit
# or batch fenced went unalerted and off the dashboards' rates.
for _reason in WORKER_REASONS:
    EVENTS_REJECTED.labels(_reason)
for _kind in ("gap", "log_hole", "repeat", "sought_back", "deleted_unread"):
    OFFSET_ANOMALIES.labels(_kind)
for _outcome in get_args(ReloadOutcome):
    MODEL_RELOADS.labels(_outcome)
for _stage in ("score", "rollup", "decay"):  # streams.membership.dropped's
    BATCHES_FENCED.labels(_stage)
for _header_reason in IGNORED_REASONS:
    FORGET_HEADERS_IGNORED.labels(_header_reason)
MODELS_BROKEN = Gauge(
    "leadstream_models_broken", "1 while the models directory holds an edit that does not load (the worker scores with the models it has)."
)
#: A worker scores each lead of its partitions with its own models: the group's workers showing
#: different fingerprints score alike events differently (alerted: LeadstreamModelsDiffer).
MODELS_FINGERPRINT = Gauge(
    "leadstream_models_fingerprint",
    "1, labelled with the worker's app id (its group) and the fingerprint of the model files it scores with (GET /models/).",
    ["app_id", "fingerprint"],
)
READY = Gauge("leadstream_worker_ready", "1 when tables are recovered, the worker is scoring and Kafka answers, else 0.")


def model_reloaded(outcome: ReloadOutcome) -> None:
    MODEL_RELOADS.labels(outcome).inc()


def count_crossings(transitions: Iterable[Transition]) -> None:
    for t in transitions:
        CROSSINGS.labels(t.model, t.to_level, t.direction, t.kind).inc()


def models_known(models: Iterable[str]) -> None:
    """Exports the per-model counters at 0 for `models` (at start, after an edit of the models): a
    model without late events showed "No data" on its panel rather than 0."""
    for model in models:
        EVENTS_LATE.labels(model)
