"""The delivery machinery every connector shares: consume, deliver, retry, dead-letter, commit.

Each connector is its own consumer group (`leadstream-sink-<name>`, after LEADSTREAM_APP_ID), so connectors fail, lag
and scale independently. Messages are queued by key, one lane per lead (or account): a lead's
crossings are delivered in order, one after the other, while up to LEADSTREAM_SINK_CONCURRENCY
lanes are delivered at once so that API latency is hidden, all within the connector's shared rate
limit. The consumer goes on polling while lanes deliver, so one lead whose deliveries fail and
wait out their backoff holds back only its own later crossings, not the others'. A partition's
offset is committed up to its first message not yet delivered, skipped as already delivered, or
dead-lettered; a crash re-delivers from there and the ledger (sinks.ledger) turns what was done
into skips. A partition with MAX_UNCOMMITTED messages behind its committed offset is not fetched
until some are committed, which bounds the memory that a lead stuck in retries can make the
others' messages take.

A batched sink (Sink.batched: the Redis read model, whose cost is a round trip per call) has one
lane per source partition instead: its queued messages, up to MAX_BATCH, are read, checked and
handed to `Sink.deliver_batch` together, in their order, a failure of one tried again with
those after it; the batch is committed once it is all done. A poll's messages are all queued
before lanes start, so that a lane's first batch takes them.

A delivery done whose record in the ledger Redis refuses (out of memory, a read-only replica)
is not tried again: the record alone is, with backoff, the lane and its commit held and the
connector not ready, until Redis takes it or the connector stops (`_record_delivered`). A try
that such a Redis refuses (the read model's writes, a step's record) is retried and dead-lettered
as any failure, for `sink replay-dlq` once Redis takes writes again, but the connector is not
ready from then until a delivery is done, and the lines of the retries and dead letters are said
at most every LOG_INTERVAL_S, with how many were left out: every message fails alike meanwhile,
and a read model over its Redis's maxmemory said ~75 lines a second while /readyz said ready.
So are they while Redis cannot be reached (`/readyz` says so from its ping): a read model whose
Redis was stopped dead-lettered 2,280 changes in 4 s, a WARNING line each.

While Kafka is out of reach (a broker stopped or killed), the runner's calls to it that fail
(the offset commit, a poll, a dead letter's write) are tried again on the loop's next pass (a
dead letter before anything after it is committed), the offsets done kept to be committed once it
answers, the connector not ready meanwhile and the failures logged at most every LOG_INTERVAL_S:
a commit's KafkaConnectionError ended the connector, with a traceback, within a second of the
broker going away.

A 401 (`CredentialsError`) dead-letters nothing: every message would fail the same way, and a
revoked token would otherwise send the whole stream to the dead-letter topic while the
connector looked healthy. The connector instead goes not-ready, logs the error, and tries the
same delivery again every LEADSTREAM_SINK_BACKOFF_MAX_MS, its batch uncommitted, until the
credentials work or it is restarted with new ones; a replay of dead letters stops at once. A quota
of a day used up (`QuotaExhausted`: HubSpot's daily limit, Salesforce's requests of 24 hours) is held alike, until it is renewed.

A message that fails with `PermanentError`, or still fails after LEADSTREAM_SINK_MAX_ATTEMPTS
tries, goes to the connector's dead-letter topic `<source topic>-dlq-<connector>` with the
reason; `replay_dead_letters` re-drives them once the cause is fixed, except those that newer
messages about the same record overtook meanwhile (counted as `stale`), each message once however
many letters of it a crash left (the others counted as `repeated`). A record of the dead-letter
topic that cannot be replayed (not a dead letter, a letter that kept only the first bytes of
a message too large for it, or one whose message the connector still cannot read) is counted as
`unreplayable`, logged, and committed past; it stays where it is, and is not dead-lettered again.

A lead crossing of a lead `leadstream forget` erased at or after its time (streams/forgotten.py)
is not delivered, live or replayed, and is counted as `erased`: a connector that was behind when
the lead was forgotten would send the person's data to the CRM again.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from itertools import islice
from typing import Any, Callable, Generic, Iterator, TypeVar

from redis import RedisError

from sinks import metrics
from sinks.base import Position, Sink
from sinks.errors import PermanentError, Refused, RetryableError, StaleError, Stopping, Unsettled
from sinks.ledger import Ledger, NoSteps, await_redis, redis_client
from streams import probes
from streams.addresses import authority
from streams.deadletter import DeadLetter, Repeats
from streams.errors import ServiceError, redis_trouble, refuses_writes, unreachable
from streams.forgotten import Forgotten
from streams.history import ALL_FETCHED, read_to_end
from streams.kafka_clients import open_client
from streams.log_throttle import Throttle, throttle_kafka_retries
from streams.settings import Settings
from streams.topics import DEAD_LETTER_RETENTION_MS, TopicSpec, ensure_topics, partition_count, require_topic

T = TypeVar("T")
log = logging.getLogger("leadstream.sinks")

MAX_POLL_RECORDS = 200
#: Messages a batched sink (Sink.batched) is handed at most at once: a lane's queue, up to this.
MAX_BATCH = 500
#: Messages of a partition taken and not yet committed past which it is not fetched: the
#: messages queued behind a lead whose deliveries are retried stay in memory until it is done.
MAX_UNCOMMITTED = 1000
#: Lanes that may wait out a retry's backoff (on a pool thread each) beside the
#: LEADSTREAM_SINK_CONCURRENCY that deliver: so many leads failing at once hold up the others.
WAITING_LANES = 64
DLQ_RETENTION_MS = DEAD_LETTER_RETENTION_MS
#: How old the consumer's view of its topic's partitions may get: one small request to Kafka each time.
METADATA_MAX_AGE_MS = 5000
#: Shortest wait between two tries under refused credentials: with LEADSTREAM_SINK_BACKOFF_MAX_MS
#: at 0 a connector posted to a receiver answering 401 thousands of times a second, for good.
HOLD_MIN_S = 1.0
#: Seconds /readyz waits for Redis's answer to its ping: a probe gives up after a second or so
#: (Kubernetes' timeoutSeconds is 1 by default), and a stalled Redis kept it LEADSTREAM_SINK_TIMEOUT_S.
PROBE_TIMEOUT_S = 1.0
#: Wait before a Kafka call that failed for Kafka out of reach (a dead letter's write) is tried again.
KAFKA_RETRY_S = 1.0


def group_id(settings: Settings, connector: str) -> str:
    """`leadstream-sink-<connector>` with the default app id; tests and side-by-side deployments differ."""
    return f"{settings.app_id}-sink-{connector}"


def dlq_topic(source_topic: str, connector: str) -> str:
    return f"{source_topic}-dlq-{connector}"


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    base_ms: int
    max_ms: int
    #: The longest a try waits for its answer (LEADSTREAM_SINK_TIMEOUT_S).
    timeout_s: float = 0.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(settings.sink_max_attempts, settings.sink_backoff_base_ms, settings.sink_backoff_max_ms, settings.sink_timeout_s)

    def delay_s(self, attempt: int, jitter: float, retry_after_s: float | None = None) -> float:
        """Exponential backoff with equal jitter (`jitter` in [0, 1)), never under the server's
        Retry-After as far as `server_wait_s` honours it.

        Jitter spreads the retries of many stalled deliveries so they do not hit a recovering
        API all at once.
        """
        return max(self.backoff_s(attempt, jitter), self.server_wait_s(retry_after_s) or 0.0)

    def backoff_s(self, attempt: int, jitter: float = 1.0) -> float:
        """The wait after try `attempt` of our own (equal jitter), a server's Retry-After aside."""
        cap_ms: float = min(self.max_ms, self.base_ms * 2 ** min(attempt - 1, self._doublings()))
        return (cap_ms / 2 + jitter * cap_ms / 2) / 1000

    def _doublings(self) -> int:
        """Doublings of a base of 1 ms or more that pass `max_ms`: doubling further changes no wait,
        and 2 ** (attempt - 1) for the 2,147,483,647th try is an integer of 256 MB."""
        return self.max_ms.bit_length()

    def budget_s(self) -> float:
        """The longest the waits between `max_attempts` tries add up to, and one timeout (42 s by
        default): a message's failed tries and waits together get no longer (`spent`), so a try
        that timed out is retried, and a receiver that accepts and never answers has the message
        dead-lettered within the budget and the last try's timeout. Counting tries alone, each
        waiting out the timeout, the first dead letter came 3 min 48 s after a receiver hung,
        where one answering 500 has it within the 16 to 32 s the README says."""
        # The waits after the last doubling are all the longest: counted, not summed one by one, as
        # LEADSTREAM_SINK_MAX_ATTEMPTS=2147483647 (retry for good) was still summing 10 minutes after
        # the first failure, the connector holding its partitions undelivered and deaf to SIGTERM.
        growing = min(self.max_attempts, self._doublings() + 1)
        waits = sum(self.backoff_s(attempt) for attempt in range(1, growing))
        return waits + (self.max_attempts - growing) * self.backoff_s(growing) + self.timeout_s

    def spent(self, tries: int, spent_s: float, next_wait_s: float) -> bool:
        """Whether a message is to be dead-lettered after its try `tries` failed: tries are out,
        or the next would start past the budget, `spent_s` (its failed tries and our own waits
        so far) and `next_wait_s` (our own next wait) counted."""
        return tries >= self.max_attempts or spent_s + next_wait_s > self.budget_s()

    def server_wait_s(self, retry_after_s: float | None) -> float | None:
        """A server's Retry-After, at most `max_ms`: the wait holds every delivery of the connector,
        whose quota they share, so a day-long one would stall the connector for a day (the delivery
        is tried again, and after `max_attempts` dead-lettered for a replay)."""
        return None if retry_after_s is None else min(retry_after_s, self.max_ms / 1000)

    def hold_s(self) -> float:
        """The wait between two tries under refused credentials (a 401): the longest backoff, at
        least HOLD_MIN_S. Every try is refused alike until the connector restarts with others."""
        return max(self.max_ms / 1000, HOLD_MIN_S)


@dataclass(frozen=True, slots=True)
class Envelope:
    """A message to deliver, with where it came from (kept through dead-lettering and replay)."""

    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int
    replayed: bool = False  # it comes from a dead letter
    timestamp_ms: int = 0  # its Kafka timestamp, or its dead letter's

    @property
    def where(self) -> str:
        """Where it was read, for the log: not its key, which may name a person."""
        return f"{self.topic}/{self.partition}@{self.offset}"


@dataclass(frozen=True, slots=True)
class _Item(Generic[T]):
    """A message read as the sink's item, with what the runner keeps such items by."""

    env: Envelope
    item: T
    delivery_id: str | None
    order_key: str | None
    position: Position


@dataclass
class Stats:
    delivered: int = 0
    skipped: int = 0
    ignored: int = 0
    dead_lettered: int = 0
    retries: int = 0
    unreplayable: int = 0
    stale: int = 0
    erased: int = 0
    repeated: int = 0
    dropped: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, outcome: str, connector: str) -> None:
        with self._lock:
            setattr(self, outcome, getattr(self, outcome) + 1)
        metrics.DELIVERIES.labels(connector, outcome_label(outcome)).inc()

    def as_dict(self) -> dict[str, int]:
        return {outcome: getattr(self, outcome) for outcome in OUTCOMES}


#: What a connector counts, the one list of it (Stats' counts): its metrics export each from its
#: start (metrics.connector_started).
OUTCOMES = tuple(f.name for f in fields(Stats) if not f.name.startswith("_"))


def failing_alike(exc: Exception) -> str | None:
    """How a Redis error fails every call of the connector alike, as its throttled lines say it
    (SinkRunner._refusal_said); None for an error of the call's own (WRONGTYPE on one entry's key)."""
    if refuses_writes(exc):
        return "refuses writes"
    if unreachable(exc):
        return "cannot be reached"
    return None


def outcome_label(outcome: str) -> str:
    """The outcome label of leadstream_sink_deliveries_total that counts `outcome`."""
    return "retried" if outcome == "retries" else outcome


class _Partition:
    """The offsets of one partition taken from the consumer and not yet committed, in order."""

    def __init__(self) -> None:
        self.taken: deque[int] = deque()
        self.finished: set[int] = set()

    def committable(self) -> int | None:
        """The offset to commit: past the finished offsets at the head, never past one still
        being delivered; None when none is finished there."""
        last = None
        while self.taken and self.taken[0] in self.finished:
            last = self.taken.popleft()
            self.finished.remove(last)
        return None if last is None else last + 1

    def first_not_done(self) -> int | None:
        """The first offset taken and not finished (queued or being delivered); None when all are."""
        return next((offset for offset in self.taken if offset not in self.finished), None)


@dataclass(frozen=True, slots=True)
class _Job:
    envelope: Envelope
    lane: bytes | int
    partition: _Partition
    offset: int  # in the consumed topic: the dead-letter topic's for a replay, not the envelope's


class _InFlight:
    """What the consumer handed out and this member has not committed: per partition its offsets,
    per key a lane, the queue of its messages, the first ones being delivered (one, or a batch).

    The consumer's thread takes messages and commits; pool threads take a lane's `batch`, deliver
    it and `finish` it; the rebalance listener revokes partitions (while the consumer's thread is
    in `poll`). One lock guards it all.
    """

    def __init__(self, *, by_partition: bool = False) -> None:
        self._lock = threading.Lock()
        self._partitions: dict[Any, _Partition] = {}
        self._lanes: dict[bytes | int, deque[_Job]] = {}
        # A batched sink's lane is the source partition's (Sink.batched): per key, nearly every
        # lane of a read model held one message, and a batch of one is a round trip per message.
        self._by_partition = by_partition
        self._sending: dict[bytes | int, int] = {}  # lane -> jobs at its head being delivered, when not one
        self.error: BaseException | None = None  # a lane's, for the consumer's thread to raise

    def take(self, tp: Any, offset: int, envelope: Envelope | None) -> _Job | None:
        """Track the message; the job when it opens a lane, for the caller to start it."""
        with self._lock:
            partition = self._partitions.setdefault(tp, _Partition())
            partition.taken.append(offset)
            if envelope is None:  # nothing to deliver: done
                partition.finished.add(offset)
                return None
            # A keyless message keeps its partition's order.
            lane_of = envelope.partition if self._by_partition or envelope.key is None else envelope.key
            job = _Job(envelope, lane_of, partition, offset)
            lane = self._lanes.get(job.lane)
            if lane is not None:
                lane.append(job)
                return None
            self._lanes[job.lane] = deque([job])
            return job

    def batch(self, head: _Job, limit: int) -> list[_Job]:
        """The lane's queued jobs from its head on, at most `limit`, to deliver together."""
        with self._lock:
            lane = self._lanes[head.lane]
            assert lane[0] is head
            jobs = list(islice(lane, limit))
            self._sending[head.lane] = len(jobs)
            return jobs

    def finish(self, done: list[_Job]) -> _Job | None:
        """Finish `done`, the lane's `batch` (delivered, skipped or dead-lettered); the lane's next
        job, or None when the lane is empty and closed."""
        key = done[0].lane
        with self._lock:
            lane = self._lanes[key]
            for job in done:
                job.partition.finished.add(job.offset)
                lane.popleft()
            self._sending.pop(key, None)
            if lane:
                return lane[0]
            del self._lanes[key]
            return None

    def fail(self, error: BaseException) -> None:
        """A lane ended in `error`, which ends the run. The lane stays open, so that its key's
        later messages wait behind the one that failed rather than overtake it."""
        with self._lock:
            self.error = self.error or error

    def revoke(self, tps: Any) -> dict[Any, int]:
        """Forget partitions taken away by a rebalance: their queued jobs are dropped, and the ones
        being delivered finish into partitions no longer tracked, so no offset of theirs is committed
        (neither by this assignment nor by a later one of the same partition, tracked anew). Per
        partition with a message not done, the offset to read it again from if it comes back."""
        with self._lock:
            gone = {tp: self._partitions.pop(tp) for tp in tps if tp in self._partitions}
            dropped = set(gone.values())
            self._drop_queued(lambda job: job.partition in dropped)
            return {tp: offset for tp, partition in gone.items() if (offset := partition.first_not_done()) is not None}

    def committable(self) -> dict[Any, int]:
        with self._lock:
            return {tp: offset for tp, partition in self._partitions.items() if (offset := partition.committable()) is not None}

    def full(self) -> set[Any]:
        """The partitions not to fetch from for now."""
        with self._lock:
            return {tp for tp, partition in self._partitions.items() if len(partition.taken) >= MAX_UNCOMMITTED}

    def idle(self) -> bool:
        """Everything taken is committed."""
        with self._lock:
            return not any(partition.taken for partition in self._partitions.values())

    def close(self) -> None:
        """Drop every queued job: a lane ends once its delivery under way is."""
        with self._lock:
            self._drop_queued(lambda job: True)

    def _drop_queued(self, dropped: Callable[[_Job], bool]) -> None:
        for key, lane in self._lanes.items():
            sending = self._sending.get(key, 1)  # a lane's head is being delivered from when it opens
            self._lanes[key] = deque([*islice(lane, sending), *(job for job in islice(lane, sending, None) if not dropped(job))])


class SinkRunner(Generic[T]):
    def __init__(self, sink: Sink[T], settings: Settings, *, stop: threading.Event | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """`clock`: what the throttled log lines are timed by."""
        self.sink = sink
        self.settings = settings
        self.source_topic = sink.source_topic(settings)
        self.dlq_topic = dlq_topic(self.source_topic, sink.name)
        self.policy = RetryPolicy.from_settings(settings)
        self.stop = stop or threading.Event()
        self.stats = Stats()
        metrics.connector_started(sink.name, map(outcome_label, OUTCOMES))
        # A wait for the quota can last a CRM's Retry-After (up to the longest backoff): a stop cuts it short.
        sink.limiter.stop_on(self.stop)
        self.ledger = Ledger(redis_client(settings), settings.redis_prefix, sink.name, settings.sink_delivered_ttl_s,
                             settle_s=settings.sink_timeout_s)
        self.forgotten = Forgotten(self.ledger.redis, settings.redis_prefix)
        self._probe_redis = redis_client(settings, min(PROBE_TIMEOUT_S, settings.sink_timeout_s))  # see ready()
        #: delivery id -> Redis's refusal, for each delivery done whose ledger write is being retried: not ready.
        self._unrecorded: dict[str, str] = {}
        self._producer: Any = None  # set while consuming; dead letters go through it
        self.assigned = threading.Event()  # the consumer holds partitions: readiness
        self.refused: Refused | None = None  # the service's refusal while it lasts: not ready
        self.kafka_answering = True  # the broker answered the last lag probe (`watch`) and took the loop's last calls
        self._kafka_failures = Throttle(clock=clock)  # see _kafka_failed
        #: Redis's refusal of the connector's writes (redis_trouble), from a try it refused until a delivery is done: not ready.
        self.writes_refused: str | None = None
        #: How Redis fails every call of the connector alike ("refuses writes", "cannot be reached"), from a
        #: try it failed so until a delivery is done: the lines of tries and dead letters are throttled.
        self.redis_failing: str | None = None
        self._refused_tries = Throttle(clock=clock)  # the lines said meanwhile: see _refusal_said
        self._refused_letters = Throttle(clock=clock)
        self._not_ready: str | None = "starting"  # why not, as last said
        self._replaying = False
        self._drop_permanent = False  # while replaying: `sink replay-dlq --drop-permanent`
        self._calls = threading.BoundedSemaphore(settings.sink_concurrency)  # see _call_slot
        self._newest_letters: dict[tuple[str, int], int] = {}  # while replaying: _newest_letter_offsets
        self._replayed: Repeats[tuple[str | None, int | None, int]] = Repeats()  # while replaying: source positions taken

    # -- running -------------------------------------------------------------------------

    def run(self, *, stop_at_end: bool = False) -> Stats:
        """Deliver the source topic until stopped (or, with `stop_at_end`, until it is caught up)."""
        return self._consume(self.source_topic, group_id(self.settings, self.sink.name), self._as_envelope, stop_at_end)

    def replay_dead_letters(self, *, drop_permanent: bool = False) -> Stats:
        """Re-drive every dead letter present now, each source message once; those that fail again
        are dead-lettered anew, once each, but with `drop_permanent` those that fail for good
        (PermanentError: a contact the CRM lacks, a lead without a trait to find it by) are
        dropped: logged and counted, their letters committed past and written no more. Dead-lettered
        again, such a letter kept the dead-letter depth above 0, and its alert firing, for the
        letters' retention."""
        self._replaying = True
        self._drop_permanent = drop_permanent
        require_topic(self.settings, self.source_topic)  # said first, as the connector says it
        self._newest_letters = self._newest_letter_offsets() if partition_count(self.settings, self.dlq_topic) else {}
        self._replayed = Repeats()
        return self._consume(self.dlq_topic, group_id(self.settings, self.sink.name) + "-replay", self._from_dead_letter, True)

    def _newest_letter_offsets(self) -> dict[tuple[str, int], int]:
        """(record, source partition) -> the source offset of the newest dead letter about the record
        (Sink.order_key) present now. A replay skips the others as overtaken: an outage that
        dead-lettered a lead's up-crossing to sql and then its way back down made the replay create
        the deal and task, the ledger having delivered neither."""
        newest: dict[tuple[str, int], int] = {}
        for message in read_to_end(self.settings, self.dlq_topic):
            try:
                letter = DeadLetter.from_bytes(message.value, message.key)
                if letter.original is None or letter.partition is None or letter.offset is None:
                    continue
                key = self.sink.order_key(self.sink.parse(letter.key, letter.original, Position(letter.partition, letter.offset, True)))
            except Exception:  # noqa: BLE001 - a letter that is no item: the replay reports it as it comes to it
                continue
            if key is not None and letter.offset > newest.get((key, letter.partition), -1):
                newest[key, letter.partition] = letter.offset
        return newest

    def _consume(self, topic: str, group: str, to_envelope: Callable[[object], Envelope | None], stop_at_end: bool) -> Stats:
        from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer
        from kafka.errors import CommitFailedError, RetriableError
        from kafka.structs import OffsetAndMetadata

        # Else it would wait for the topic for ever, aiokafka logging its absence ten times a
        # second, and make a dead-letter topic named after it.
        require_topic(self.settings, self.source_topic)
        # As Kafka is: a URL that reaches no Redis (a typo, a port) is told at start, where it
        # read every record, tried each until its retries ran out, and dead-lettered it.
        await_redis(self.ledger.redis, self.settings, "where the connector keeps the ids of what it delivered", self.stop)
        ensure_topics(self.settings, [TopicSpec(self.dlq_topic, self.settings.partitions, {"retention.ms": str(DLQ_RETENTION_MS)})])
        consumer = open_client(
            self.settings,
            KafkaConsumer,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=MAX_POLL_RECORDS,
            # A crashed sink's partitions move to a live member after 6 s (the broker's minimum)
            # rather than kafka-python's 45 s: deliveries stall no longer than that.
            session_timeout_ms=6000,
            heartbeat_interval_ms=2000,
            # kafka-python (3.0.12) reads its topics' partitions again every 5 minutes by default:
            # a group that joined on an answer without them (a race at start, seen in CI), and
            # partitions added to the topic, held crossings undelivered that long.
            metadata_max_age_ms=METADATA_MAX_AGE_MS,
        )
        flight = _InFlight(by_partition=self.sink.batched)
        sink_name = self.sink.name

        class Rebalanced(ConsumerRebalanceListener):  # type: ignore[misc]
            """Every rebalance revokes all partitions (eager), and the messages queued from them are
            dropped; a partition given back is read again from its first message not done. Not
            from where kafka-python had fetched, which it goes on from in a partition it keeps
            (3.0.x, SubscriptionState.assign_from_subscribed): past the dropped messages, which
            the next one done committed (28 of 80 crossings lost to a second connector's start).
            Nor from the committed offset: nothing moved it meanwhile, and the messages done since
            need not be read again. The seek makes kafka-python discard what it had fetched after it.

            Called from within `poll`, maybe on kafka-python's own thread: it must not block."""

            def __init__(self) -> None:
                self.resume: dict[Any, int] = {}

            def on_partitions_revoked(self, revoked: Any) -> None:
                self.resume.update(flight.revoke(revoked))
                for tp in revoked:  # another member may own it now: its commits are its own
                    uncommitted.pop(tp, None)

            def on_partitions_lost(self, lost: Any) -> None:
                # Membership lost: kafka-python forgets the partitions' positions, and one that
                # comes back starts from its committed offset, which another member may have moved.
                flight.revoke(lost)
                for tp in lost:
                    self.resume.pop(tp, None)
                    uncommitted.pop(tp, None)

            def on_partitions_assigned(self, assigned: Any) -> None:
                for tp in assigned:
                    if tp in self.resume:
                        log.info("sink %s: %s/%d given back by a rebalance: read again from offset %d, its first message "
                                 "not done", sink_name, tp.topic, tp.partition, self.resume[tp])
                        consumer.seek(tp, self.resume[tp])
                self.resume.clear()  # a partition that went elsewhere comes back from its committed offset

        #: Per partition, the offset to commit that Kafka has not taken yet: `flight` hands each once.
        uncommitted: dict[Any, int] = {}

        def commit() -> None:
            uncommitted.update(flight.committable())
            if not uncommitted:
                return
            try:
                # Bounded: kafka-python waits for ever by default, and a hung broker would stop the loop.
                consumer.commit({tp: OffsetAndMetadata(offset, "", -1) for tp, offset in uncommitted.items()},
                                timeout_ms=self.settings.kafka_connect_timeout_s * 1000)
            except CommitFailedError as exc:
                # The partitions moved to another member, which gets these messages again; the
                # ledger makes its deliveries skips.
                log.warning("sink %s: offsets not committed (%s); the new owner re-reads them", self.sink.name, exc)
            except RetriableError as exc:  # Kafka out of reach: the offsets wait for the next pass
                self._kafka_failed("offsets not committed", exc)
                return
            uncommitted.clear()

        consumer.subscribe([topic], listener=Rebalanced())
        # A metadata answer after the subscription, before the first poll joins the group: else the
        # join came before an answer named the topic, and its assignor gave this member nothing
        # ("No partition metadata for topic", at nearly every start) until a rejoin. Asked before
        # the subscription (5f676ac, reverted), the answer named the topic but left kafka-python's
        # snapshot of the subscribed topics' partitions empty: the first join gave the partitions,
        # the next answer (not the same as the snapshot the assignment was made on) made it join
        # again, and the messages under way were taken again, dead letters written twice.
        consumer.topics()
        producer = self._producer = open_client(self.settings, KafkaProducer, acks="all", linger_ms=5)
        end: dict[Any, int] | None = None
        pool = ThreadPoolExecutor(max_workers=self.settings.sink_concurrency + WAITING_LANES, thread_name_prefix=f"sink-{self.sink.name}")
        log.info("sink %s: consuming %s as group %s; dead letters to %s", self.sink.name, topic, group, self.dlq_topic)
        try:
            while not self.stop.is_set():
                # Every record fetched: one that a poll leaves behind when its partition is then
                # paused (full, below) kafka-python (3.0.12) keeps aside, past its position, and
                # gives back only while no other partition's records wait: the Redis read model
                # of the demo stalled for good, its partitions 300 records short of their ends.
                try:
                    batch = consumer.poll(timeout_ms=300, max_records=ALL_FETCHED)
                except RetriableError as exc:
                    self._kafka_failed("poll failed", exc)
                    batch = {}
                    self.stop.wait(KAFKA_RETRY_S)  # it may fail at once, pass after pass
                if flight.error is not None:
                    raise flight.error
                # Not once for good: a connector whose partitions went to another member is not ready.
                if consumer.assignment():
                    self.assigned.set()
                else:
                    self.assigned.clear()
                if stop_at_end and end is None and consumer.assignment():
                    # Replay only what is there now: what gets dead-lettered again during the
                    # replay lands after this end and waits for the next replay.
                    end = consumer.end_offsets(list(consumer.assignment()))
                    log.info("sink %s: replaying %s up to offsets %s", self.sink.name, topic,
                             {tp.partition: offset for tp, offset in end.items() if offset})
                opened = []
                for tp, records in batch.items():
                    for m in records:
                        if end is not None and m.offset >= end.get(tp, 0):
                            continue
                        job = flight.take(tp, m.offset, to_envelope(m))
                        if job is not None:
                            opened.append(job)
                # Started once the whole poll is queued, so that a batched sink's lane takes it at once.
                for job in opened:
                    pool.submit(self._run_lane, flight, job)
                commit()
                full, paused = flight.full(), consumer.paused()
                if full - paused:
                    consumer.pause(*(full - paused))
                if paused - full:
                    consumer.resume(*(paused - full))
                if end is not None and flight.idle() and all(consumer.position(tp) >= offset for tp, offset in end.items()):
                    break
            # After a stop, the deliveries under way end at their next wait; those that finished are committed.
            flight.close()
            pool.shutdown(wait=True)
            commit()
            if self.stop.is_set():
                log.info("sink %s: stopped; what it had not delivered is re-read on the next start", self.sink.name)
        finally:
            flight.close()
            pool.shutdown(wait=True, cancel_futures=True)
            producer.flush()
            producer.close()
            consumer.close(autocommit=False)
            self.sink.close()
        return self.stats

    def _run_lane(self, flight: _InFlight, job: _Job | None) -> None:
        """Deliver a lane's messages until it is empty, one at a time or, for a batched sink, as
        many as are queued; on a pool thread. After a stop, or one that cut a wait short
        (Stopping), the jobs under way stay unfinished, their offsets uncommitted."""
        try:
            while job is not None and not self.stop.is_set():
                jobs = flight.batch(job, MAX_BATCH if self.sink.batched else 1)
                outcomes = self._deliver_batch([j.envelope for j in jobs]) if self.sink.batched else [self._deliver(job.envelope)]
                for outcome in outcomes:
                    self.stats.add(outcome, self.sink.name)
                job = flight.finish(jobs)
        except Stopping:
            pass
        except BaseException as exc:  # noqa: BLE001 - raised on the consumer's thread, which ends the run
            flight.fail(exc)

    # -- operations ----------------------------------------------------------------------

    def ready(self) -> bool:
        """Holding partitions, Kafka answering, credentials accepted and Redis (the ledger, the read
        model) reached and taking its writes: deliveries can happen. Redis is asked with a short timeout
        (PROBE_TIMEOUT_S): a probe waits for the answer."""
        unrecorded = list(self._unrecorded.values())  # copied at once: lanes change it meanwhile
        why = ("no partitions of its source topic yet" if not self.assigned.is_set()
               else "Kafka does not answer" if not self.kafka_answering
               else f"{self.refused.refusal}: {self.refused}" if self.refused is not None
               else f"{len(unrecorded)} deliveries done are not yet recorded in its ledger: {unrecorded[0]}" if unrecorded
               else f"{refused}; its deliveries are retried, then dead-lettered for `leadstream sink replay-dlq "
                    f"{self.sink.name}`" if (refused := self.writes_refused) is not None
               else None)
        if why is None:
            try:
                self._probe_redis.ping()
            except RedisError as exc:
                why = redis_trouble(exc, self.settings.redis_url)
        if why != self._not_ready:  # said once, as it changes: probes ask every few seconds
            if why is not None and self._not_ready is None and self.assigned.is_set():
                log.warning("sink %s: not ready: %s", self.sink.name, why)
            elif why is None and self._not_ready is not None:
                log.info("sink %s: ready", self.sink.name)
            self._not_ready = why
        metrics.READY.labels(self.sink.name).set(0 if why else 1)
        return why is None

    def _kafka_failed(self, what: str, exc: Exception) -> None:
        """A call of the loop failed for Kafka out of reach: `what` is tried again on a later pass.
        Not ready until the lag probe (`watch`) finds Kafka answering; said at most every LOG_INTERVAL_S."""
        self.kafka_answering = False
        self.ready()
        left_out = self._kafka_failures.due()
        if left_out is not None:
            more = f" ({left_out} more such failures since the last)" if left_out else ""
            log.warning("sink %s: %s, tried again until Kafka answers (not ready meanwhile): %r%s", self.sink.name, what, exc, more)

    def watch(self, interval_s: float = 5.0) -> None:
        """Consumer lag and dead-letter depth, as the broker sees them, every few seconds."""
        from kafka.errors import KafkaError

        from streams.lag import LagProbe

        probe: LagProbe | None = None
        group = group_id(self.settings, self.sink.name)
        while not self.stop.wait(interval_s):
            try:
                probe = probe or LagProbe(self.settings)
                for partition, lag in probe.lag(group, self.source_topic).items():
                    metrics.CONSUMER_LAG.labels(self.sink.name, str(partition)).set(lag)
                # Dead letters a replay has not yet consumed.
                metrics.DLQ_DEPTH.labels(self.sink.name).set(sum(probe.lag(group + "-replay", self.dlq_topic).values()))
                self.kafka_answering = True
            except (KafkaError, OSError, ServiceError) as exc:  # ServiceError: the broker did not answer in time
                log.warning("sink %s: lag not measured, not ready until Kafka answers: %r", self.sink.name, exc)
                self.kafka_answering = False
                # A frozen figure would say all is well: the lag of 0, or dead letters none waiting.
                metrics.CONSUMER_LAG.clear()
                metrics.DLQ_DEPTH.clear()
            self.ready()
        if probe is not None:
            probe.close()

    # -- one message, or a batch ---------------------------------------------------------

    def _deliver(self, env: Envelope) -> str:
        read = self._read(env)
        if isinstance(read, str):
            return read
        it = read
        return self._retried(it.delivery_id or env.where, lambda: self._attempt(it),
                             lambda reason, detail: self._dead_letter(env, reason, detail))

    def _deliver_batch(self, envs: list[Envelope]) -> list[str]:
        """Deliver a batched sink's messages (Sink.batched), in their order, with one call for all
        those that pass the checks each message gets; their outcomes. An item the call failed is
        tried again with every one after it (the sink's writes are overwrites, done again in
        order), until the tries run out and those are dead-lettered."""
        outcomes: dict[int, str] = {}
        pending: list[tuple[int, _Item[T]]] = []
        for n, env in enumerate(envs):
            read = self._read(env)
            if isinstance(read, str):
                outcomes[n] = read
            else:
                pending.append((n, read))

        def attempt() -> str:
            sending = []
            for n, it in pending:
                try:
                    held = self._held_back(it)
                except StaleError as exc:
                    held = self._stale(it.env.where, exc)
                if held is None:
                    sending.append((n, it))
                else:
                    outcomes[n] = held
            try:
                errors = self.sink.deliver_batch([it.item for _, it in sending]) if sending else []
            except (StaleError, PermanentError) as exc:
                # Raised for the whole call rather than returned per item: each item sent has it.
                # Left to _retried, a stale call gave its items no outcome (a KeyError stopped the
                # lane), and a refused one dead-lettered those skipped or erased above too.
                errors = [exc] * len(sending)
            for (n, it), error in zip(sending, errors, strict=True):
                if error is None:
                    outcomes[n] = self._delivered(it)
                elif isinstance(error, StaleError):
                    outcomes[n] = self._stale(it.env.where, error)
                elif isinstance(error, PermanentError):
                    outcomes[n] = self._dead_letter(it.env, "permanent", f"{error}")
                else:
                    del pending[:[m for m, _ in pending].index(n)]  # those before it are done
                    raise error
            pending.clear()
            return "delivered"

        def give_up(reason: str, detail: str) -> str:
            for n, it in pending:
                outcomes[n] = self._dead_letter(it.env, reason, detail)
            return "dead_lettered"

        if pending:
            self._retried(f"the batch of {len(envs)} from {envs[0].where}", attempt, give_up)
        return [outcomes[n] for n in range(len(envs))]

    def _read(self, env: Envelope) -> _Item[T] | str:
        """The message as the sink's item, or its outcome when there is nothing to deliver."""
        position = Position(env.partition, env.offset, env.replayed)
        try:
            item = self.sink.parse(env.key, env.value, position)
        except PermanentError as exc:
            if env.replayed:  # its letter stays: a copy would come back at every replay, for ever
                log.warning("sink %s: the dead letter of %s/%d@%d is not replayed: its message is still not a record (%s)",
                            self.sink.name, env.topic, env.partition, env.offset, exc)
                return "unreplayable"
            return self._dead_letter(env, "malformed", f"{exc}")
        except Exception as exc:  # noqa: BLE001 - a record no parser foresaw: set aside, the connector goes on
            log.exception("sink %s: unexpected error reading %s/%d@%d", self.sink.name, env.topic, env.partition, env.offset)
            return self._dead_letter(env, "malformed", f"unreadable: {exc!r}")
        if not self.sink.handles(item):
            return "ignored"
        return _Item(env, item, self.sink.delivery_id(item), self.sink.order_key(item), position)

    def _retried(self, what: str, attempt: Callable[[], str], give_up: Callable[[str, str], str]) -> str:
        """`attempt`'s outcome, tried again while it fails in a way a later try may not; when
        tries run out or it fails for good, `give_up(reason, detail)`'s (a dead letter)."""
        tries = 0
        # Its failed tries' time and our own waits between them: not a server's Retry-After (a
        # quota is not a failure), nor waits for credentials or a timed-out call's record.
        spent_s = 0.0
        while True:
            tries += 1
            try:
                with self._call_slot(tries):
                    began = time.monotonic()
                    return attempt()
            except PermanentError as exc:
                return give_up("permanent", f"{exc}")
            except StaleError as exc:
                return self._stale(what, exc)
            except Stopping:
                raise
            except Refused as exc:
                self._hold(exc)
                tries -= 1  # no try at this message: the service refuses the connector, not it
                continue
            except Unsettled as exc:
                log.info("sink %s: %s: %s", self.sink.name, what, exc)
                if self.stop.wait(exc.wait_s):
                    raise Stopping() from None
                tries -= 1  # no try: the CRM may still be making the record a timed-out call asked for
                continue
            except RetryableError as exc:
                error: Exception = exc
            except RedisError as exc:  # the ledger's, or the read model's: say which service failed
                error = RetryableError(redis_trouble(exc, self.settings.redis_url))
                if (failing := failing_alike(exc)) is not None:
                    self.redis_failing = failing
                if refuses_writes(exc) and self.writes_refused != str(error):
                    self.writes_refused = str(error)
                    self.ready()  # said as it comes, not at the next probe
            except Exception as exc:  # noqa: BLE001 - a client raised something unforeseen
                # Retried, then dead-lettered like any failure, so one odd answer cannot stop
                # the connector; the traceback is logged for the bug report.
                log.exception("sink %s: unexpected error delivering %s", self.sink.name, what)
                error = exc
            spent_s += time.monotonic() - began
            jitter = random.random()
            backoff_s = self.policy.backoff_s(tries, jitter)
            if self.policy.spent(tries, spent_s, backoff_s):
                return give_up("retries_exhausted", f"after {tries} attempts in {spent_s:.1f} s: {error}")
            spent_s += backoff_s
            delay_s = self.policy.delay_s(tries, jitter, getattr(error, "retry_after_s", None))
            if (more := self._refusal_said(self._refused_tries)) is not None:
                log.warning("sink %s: attempt %d for %s failed, retrying in %.2f s: %s%s", self.sink.name, tries, what, delay_s,
                            error, more)
            self.stats.add("retries", self.sink.name)
            metrics.BACKOFF_SECONDS.labels(self.sink.name).inc(delay_s)
            if self.stop.wait(delay_s):
                raise Stopping()

    def _stale(self, what: str, exc: StaleError) -> str:
        log.info("sink %s: %s not applied: %s", self.sink.name, what, exc)
        return "stale"

    def _erased(self, item: T, env: Envelope) -> bool:
        """Whether `leadstream forget` erased the item's lead after the item was written to Kafka
        (its Kafka timestamp, or its dead letter's). Not the crossing's own time: an event timed
        ahead of the clock (within LEADSTREAM_MAX_FUTURE_MS) made a crossing timed after the
        erasure, which a connector behind then delivered, the person's e-mail in it."""
        lead_id = self.sink.lead_of(item)
        return lead_id is not None and self.forgotten.covers(lead_id, env.timestamp_ms)

    def _attempt(self, it: _Item[T]) -> str:
        """One try at delivering `it`: its outcome, or the error of a try that failed."""
        held = self._held_back(it)
        if held is not None:
            return held
        self.sink.deliver(it.item, self.ledger.steps(it.delivery_id) if it.delivery_id is not None else NoSteps())
        return self._delivered(it)

    def _held_back(self, it: _Item[T]) -> str | None:
        """Why `it` is not to be delivered now (skipped, erased), raising StaleError when newer
        messages overtook it; None when it is to be."""
        env = it.env
        if it.delivery_id is not None and self.ledger.delivered(it.delivery_id):
            return "skipped"
        if self._erased(it.item, env):
            # Where it was read, not its lead or crossing id: the log must not keep whom it was about.
            log.info("sink %s: %s/%d@%d not delivered: its lead was forgotten (leadstream forget) after it",
                     self.sink.name, env.topic, env.partition, env.offset)
            return "erased"
        if env.replayed and it.order_key is not None and self.ledger.overtaken(it.order_key, it.position):
            raise StaleError(f"{it.order_key}: a newer message than {env.topic}/{env.partition}@{env.offset} was delivered")
        if env.replayed and it.order_key is not None and self._newest_letters.get((it.order_key, env.partition), -1) > env.offset:
            raise StaleError(f"{it.order_key}: a newer dead letter than {env.topic}/{env.partition}@{env.offset} is replayed")
        return None

    def _delivered(self, it: _Item[T]) -> str:
        """The bookkeeping of a delivery done."""
        if self.refused is not None:
            self.refused = None
            self.ready()
            log.info("sink %s: the service takes its deliveries again; delivering", self.sink.name)
        if self.writes_refused is not None:
            self.writes_refused = None
            self.ready()
        self.redis_failing = None
        if it.delivery_id is not None:
            self._record_delivered(it, it.delivery_id)
        crossing_ms = getattr(it.item, "time_ms", None)
        if crossing_ms is not None:
            metrics.DELIVERY_LATENCY.labels(self.sink.name).observe(max(0.0, time.time() - crossing_ms / 1000))
        # A crossing delivered is an event of interest; a read model's write (no id: one per
        # score change, about one per event) is not, and at INFO would flood the log.
        log.log(logging.INFO if it.delivery_id is not None else logging.DEBUG, "sink %s: delivered %s", self.sink.name,
                it.delivery_id or it.env.where)
        return "delivered"

    def _record_delivered(self, it: _Item[T], delivery_id: str) -> None:
        """Writes a delivery the service took to the ledger, tried again until Redis takes it or the
        connector stops. A failed write failed the attempt, and the delivery was tried again whole:
        under a Redis that answers reads but refuses writes (out of memory, a read-only replica) a
        webhook was POSTed LEADSTREAM_SINK_MAX_ATTEMPTS times, then dead-lettered for a replay to
        POST again. The lane waits meanwhile, so its offset is not committed past the unrecorded
        delivery: a connector stopped before the write re-reads the message and delivers it once
        more, as after a crash. The call slot stays taken too: the other lanes' deliveries would
        go unrecorded alike, and each is one a stop would send again."""
        tries = 0
        while True:
            try:
                self.ledger.mark_delivered(delivery_id, it.order_key, it.position)
                break
            except RedisError as exc:
                tries += 1
                self._unrecorded[delivery_id] = trouble = redis_trouble(exc, self.settings.redis_url)
                delay_s = self.policy.delay_s(tries, random.random())
                log.error("sink %s: %s was delivered, but its record in the ledger failed (try %d), tried again in %.2f s; "
                          "the delivery is not repeated, its offset is held until the record is written, and /readyz "
                          "answers 503 meanwhile: %s", self.sink.name, delivery_id, tries, delay_s, trouble)
                if self.stop.wait(delay_s):
                    self._unrecorded.pop(delivery_id, None)
                    raise Stopping() from None
        if tries:
            self._unrecorded.pop(delivery_id, None)
            log.info("sink %s: %s recorded as delivered after %d failed tries", self.sink.name, delivery_id, tries)

    @contextmanager
    def _call_slot(self, tries: int) -> Iterator[None]:
        """One of the LEADSTREAM_SINK_CONCURRENCY tries at once, try `tries` of its message. Taken
        for a try only, not for the waits between tries: lanes waiting out their backoff held every
        pool thread, and a connector with that many leads failing delivered no other lead's
        crossings meanwhile. A try that fails with a server's Retry-After, or a 429 without one,
        pauses every delivery of the connector (Sink.limiter), whose quota they share: the
        Retry-After, or the longest backoff of the try. A 429 without Retry-After backed off its
        own lane only, the others calling on into the limit, each for a 429 of its own."""
        while not self._calls.acquire(timeout=0.2):
            if self.stop.is_set():
                raise Stopping()
        try:
            yield
        except RetryableError as exc:
            # Paused before the slot is given back: a lane that took it meanwhile sent its request
            # into the Retry-After.
            if (pause_s := self._pause_s(exc, tries)) is not None:
                self.sink.limiter.pause_until(time.monotonic() + pause_s)
            raise
        finally:
            self._calls.release()

    def _pause_s(self, exc: RetryableError, tries: int) -> float | None:
        """How long every delivery waits after try `tries` failed with `exc`; None: only its lane does."""
        server_s = self.policy.server_wait_s(exc.retry_after_s)
        return server_s if server_s is not None or not exc.throttled else self.policy.backoff_s(tries)

    def _hold(self, refusal: Refused) -> None:
        """Wait before trying again under a refusal of every delivery (credentials, a quota used up);
        a replay (a command, not a service) ends instead."""
        if self._replaying:
            raise refusal
        if type(self.refused) is not type(refusal):
            log.error("sink %s: %s: %s. Nothing is delivered until %s, and nothing is dead-lettered for the refusal: "
                      "only what no credentials could deliver is, failing before any request (not a crossing, or one "
                      "that names no way to find its record); /readyz answers 503 and the same delivery is tried again "
                      "every %g s", self.sink.name, refusal.refusal, refusal, refusal.until, self.policy.hold_s())
        self.refused = refusal
        self.ready()
        if self.stop.wait(self.policy.hold_s()):
            raise Stopping()

    def _dead_letter(self, env: Envelope, reason: str, detail: str) -> str:
        if env.replayed and reason == "permanent" and self._drop_permanent:
            log.warning("sink %s: the dead letter of %s/%d@%d is dropped (--drop-permanent), not dead-lettered again: %s",
                        self.sink.name, env.topic, env.partition, env.offset, detail)
            return "dropped"
        letter = DeadLetter(reason=reason, detail=f"{self.sink.name}: {detail}", original=env.value,
                            topic=env.topic, partition=env.partition, offset=env.offset, key=env.key)
        from kafka.errors import KafkaError

        assert self._producer is not None
        # Waited for: the offset commit that follows must never outrun the dead letter. Tried again
        # while it fails, as a failure here ended the connector: Kafka out of reach, or a letter
        # in flight when kafka-python's idempotent producer renumbered after a broker's restart
        # (KIP-360: such batches fail, OutOfOrderSequenceNumber, and the producer goes on).
        while True:
            try:
                self._producer.send(self.dlq_topic, key=letter.message_key, value=letter.to_bytes()).get(timeout=60)
                break
            except KafkaError as exc:
                self._kafka_failed(f"the dead letter of {env.where} not written", exc)
                if self.stop.wait(KAFKA_RETRY_S):
                    raise Stopping() from None
        more = self._refusal_said(self._refused_letters) if reason == "retries_exhausted" else ""
        if more is not None:
            log.warning("sink %s: dead-lettered %s/%d@%d to %s (%s): %s%s",
                        self.sink.name, env.topic, env.partition, env.offset, self.dlq_topic, reason, detail, more)
        return "dead_lettered"

    def _refusal_said(self, throttle: Throttle) -> str | None:
        """Whether a line about a try that failed, or a message dead-lettered for its tries, is said:
        while Redis fails every call alike (failing_alike), once every LOG_INTERVAL_S of `throttle`,
        so None for one left out, and for one said what to add to it (how many were left out); ""
        otherwise."""
        if self.redis_failing is None:
            return ""
        left_out = throttle.due()
        if left_out is None:
            return None
        return f" ({left_out} more such lines left out since the last, while Redis {self.redis_failing})" if left_out else ""

    @staticmethod
    def _as_envelope(message: object) -> Envelope:
        return Envelope(message.key, message.value, message.topic, message.partition, message.offset,  # type: ignore[attr-defined]
                        timestamp_ms=message.timestamp)  # type: ignore[attr-defined]

    def _from_dead_letter(self, message: object) -> Envelope | None:
        """The message a dead letter keeps; None for a record with nothing to replay (counted as
        `unreplayable` and logged; the replay commits past it rather than stop at it for good)."""
        where = f"{message.topic}/{message.partition}@{message.offset}"  # type: ignore[attr-defined]
        try:
            letter = DeadLetter.from_bytes(message.value, message.key)  # type: ignore[attr-defined]
        except ValueError as exc:
            log.warning("sink %s: %s is not replayed: %s", self.sink.name, where, exc)
            self.stats.add("unreplayable", self.sink.name)
            return None
        if letter.offset is not None and not self._replayed.first((letter.topic, letter.partition, letter.offset)):
            # A second letter of a message (a crash before the offset commit wrote it again): both
            # were replayed and, still failing, dead-lettered again, so the copies never collapsed
            # and every replay counted them twice. Its first letter's replay stands for it.
            log.info("sink %s: the dead letter %s is not replayed: it is a copy of one of %s/%s@%s this replay took already",
                     self.sink.name, where, letter.topic, letter.partition, letter.offset)
            self.stats.add("repeated", self.sink.name)
            return None
        if not letter.whole:
            log.warning("sink %s: the dead letter %s is not replayed: it kept only the first bytes of %s/%s@%s, "
                        "a message too large to keep whole (%s)",
                        self.sink.name, where, letter.topic, letter.partition, letter.offset, letter.detail)
            self.stats.add("unreplayable", self.sink.name)
            return None
        return Envelope(letter.key, letter.original, letter.topic, letter.partition, letter.offset, replayed=True,  # type: ignore[arg-type]
                        timestamp_ms=message.timestamp)  # type: ignore[attr-defined]


def stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM and SIGINT set `stop`, from a thread of its own. A handler that set it ran in the
    main thread, between two of its bytecodes, and the event's lock is not re-entrant: a signal
    coming while the main thread held it (in `stop.wait`, or in the handler of a signal before,
    as `timeout` and process managers send SIGTERM twice) left the connector hung for good."""
    woken, wake = os.pipe()
    os.set_blocking(wake, False)
    signal.set_wakeup_fd(wake)  # Python's C handler writes to it, taking no lock
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)

    def wait() -> None:
        os.read(woken, 1)
        stop.set()

    threading.Thread(target=wait, name="sink-signals", daemon=True).start()


def run_sink(sink: Sink[T], settings: Settings) -> int:
    """`leadstream sink NAME`: deliver until SIGTERM or Ctrl-C, with /metrics, /healthz, /readyz."""
    throttle_kafka_retries()  # kafka-python's, ~4 lines a second at WARNING and ERROR while Kafka is down
    runner = SinkRunner(sink, settings)
    stop_on_signals(runner.stop)
    server = probes.serve(settings.metrics_port, runner.ready, settings.bind_host, "LEADSTREAM_METRICS_PORT", settings.idle_timeout_ms,
                          metrics=probes.OwnMetrics("leadstream_sink_"))
    watcher = threading.Thread(target=runner.watch, name="sink-watch", daemon=True)
    watcher.start()
    log.info("sink %s: starting; /metrics, /healthz and /readyz on %s", sink.name, authority(settings.bind_host, settings.metrics_port))
    try:
        stats = runner.run()
    except ServiceError:
        if not runner.stop.is_set():
            raise
        # SIGTERM while the start waited for Kafka or Redis (up to LEADSTREAM_KAFKA_CONNECT_TIMEOUT_S):
        # the stop asked for, not a failure to report.
        log.info("sink %s: stopped before Kafka and Redis answered", sink.name)
        return 0
    finally:
        server.shutdown()
    log.info("sink %s: stopped after %s", sink.name, stats.as_dict())
    return 0


def replay(sink: Sink[T], settings: Settings, *, drop_permanent: bool = False) -> int:
    """`leadstream sink replay-dlq NAME [--drop-permanent]`: re-drive the dead letters present now, then exit."""
    runner = SinkRunner(sink, settings)
    stats = runner.replay_dead_letters(drop_permanent=drop_permanent)
    print(f"replayed {runner.dlq_topic}: {stats.delivered} delivered, {stats.skipped} already delivered, "
          f"{stats.stale} overtaken by newer records, {stats.dead_lettered} dead-lettered again, "
          f"{stats.unreplayable} not replayable (see the log), {stats.erased} of leads forgotten since (not delivered), "
          f"{stats.repeated} copies of letters replayed already, {stats.dropped} failing for good dropped (--drop-permanent)")
    return 0 if stats.dead_lettered == stats.unreplayable == 0 else 1
