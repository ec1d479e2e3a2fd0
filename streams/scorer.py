"""The scoring stage: batches of raw Kafka messages in, durable lead states and crossings out.

This is the adapter between Kafka and the pure engine. It knows nothing of Faust: the Faust app
(streams/app.py) hands it batches of consumed messages and gives it the lead table (a
`LiveTable`: states kept live) and an `Outbox` (the producer).

Delivery guarantee: at-least-once input with idempotent state. For each batch, everything it
produces (crossings, score changes, account updates, identity links, dead letters) is sent and
acknowledged by Kafka first, then the changed states (changelog); the batch's offsets are
committed only after both. After a crash the worker re-reads uncommitted messages against the
recovered state: events already in the state are dropped by the engine's event-id
de-duplication (so a durable state implies its outputs are durable too), and outputs whose
state write was lost are produced again, crossings with the same deterministic id, which
consumers drop.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import orjson

from scoring import Engine, Event, LeadState, MemberScore, Rejection, Transition, identity
from scoring.decay import HalfLifeDecay
from scoring.errors import StateError
from scoring.model import Model
from scoring.events import EMPTY_ENVELOPE, MAX_EVENT_BYTES, decode_message, parse_value, too_large, unreadable
from streams import erasure, lead_states, membership, metrics, read_offsets, stitching
from streams.deadletter import DeadLetter, WorkerReason
from streams.errors import MembershipLost
from streams.envelope import items_written, unpack
from streams.isolation import internal_error, isolate, log_raised, split_envelope, undone_if_it_raises
from streams.offset_sequence import LogStart, LookUp, OffsetSequence
from streams.outbox import Headers, Outbox, encode_json, encode_json_or_none
from streams.partitioning import partition_for, partitioned_otherwise
from streams.rollup import lead_score_key, publish_updates
from streams.settings import FutureLimit, Settings
from streams.lead_states import States
from streams.lead_states import encode as encode_states
from streams.overlap import Done, InFlight, make_durable
from streams.stage import Consumed, LiveTable, Record, read_from
from streams.sweep_clock import SweepClocks

log = logging.getLogger("leadstream.worker")

#: Event types that may stitch an old id to a lead (see streams/stitching.py).
LINKING_TYPES = frozenset(("identify", "alias"))
#: Decay steps applied between two pauses of the sweep: a wave of idle leads coming due (after
#: a replay, or a downtime) must not hold up the scoring of arriving events, whose latency
#: matters; a decay applied a few seconds late changes nothing anyone can see.
DECAY_CHUNK = 250
#: Products of unrouted events the log names (`Scorer._tell_unrouted`): beyond, the counter says it.
UNROUTED_TOLD_MAX = 100
DECAY_PAUSE_S = 0.02
#: A rebuild of the decay index lets the event loop run at least this often: run in one go, a
#: worker of a million leads answered nothing (/healthz, /metrics, views) for 26 s after its
#: tables were restored, long enough for a liveness probe to kill it mid-recovery.
REBUILD_SLICE_S = 0.05
#: Leads indexed between two looks at the clock (a look costs more than indexing a lead).
REBUILD_LOOK_EVERY = 500
#: A long rebuild says how far it got this often: the worker is not ready meanwhile.
REBUILD_PROGRESS_S = 10.0


@dataclass(slots=True)
class BatchStats:
    """What one batch did; recorded into the metrics once per batch, when it is written."""

    messages: int = 0
    events: int = 0
    scored: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    #: model -> events beyond its allowed lateness
    late: dict[str, int] = field(default_factory=dict)
    unrouted: int = 0
    #: events whose lead's states hold them already (streams/read_offsets.py)
    read_again: int = 0
    crossings: list[Transition] = field(default_factory=list)
    new_leads: dict[str, int] = field(default_factory=dict)
    #: The newest time of the events read from the events topic, the event-time lag's measure:
    #: with every record's, a batch of fresh profile updates said the worker was caught up while
    #: its events were minutes behind.
    newest_on_events_ms: int = 0
    #: Per partition, the newest event time and Kafka timestamp read from the events topic (the
    #: sweep's clocks, streams/sweep_clock.py), as a list of the two.
    read_on_events: dict[int, list[int]] = field(default_factory=dict)

    def add(self, other: BatchStats) -> None:
        """Counts what `other` (a part of the batch, streams/isolation.py) did as well."""
        self.events += other.events
        self.scored += other.scored
        for reason, count in other.rejected.items():
            self.rejected[reason] = self.rejected.get(reason, 0) + count
        for model, count in other.late.items():
            self.late[model] = self.late.get(model, 0) + count
        self.unrouted += other.unrouted
        self.read_again += other.read_again
        self.crossings += other.crossings
        for model, count in other.new_leads.items():
            self.new_leads[model] = self.new_leads.get(model, 0) + count
        self.newest_on_events_ms = max(self.newest_on_events_ms, other.newest_on_events_ms)
        for partition, (event_ms, appended_ms) in other.read_on_events.items():
            newest = self.read_on_events.setdefault(partition, [0, 0])
            newest[0], newest[1] = max(newest[0], event_ms), max(newest[1], appended_ms)

    def record(self) -> None:
        """Once the batch is written (`make_durable`): a batch the fence dropped counts for
        nothing, its records being read, scored and counted again by their partitions' owner."""
        metrics.EVENTS_CONSUMED.inc(self.events)
        metrics.EVENTS_SCORED.inc(self.scored)
        for model, count in self.late.items():
            metrics.EVENTS_LATE.labels(model).inc(count)
        metrics.EVENTS_UNROUTED.inc(self.unrouted)
        metrics.EVENTS_READ_AGAIN.inc(self.read_again)
        metrics.BATCH_EVENTS.observe(self.events)
        for reason, count in self.rejected.items():
            metrics.EVENTS_REJECTED.labels(reason).inc(count)
        for model, count in self.new_leads.items():
            metrics.LEADS_IN_STATE.labels(model).inc(count)
        metrics.count_crossings(self.crossings)
        # The newest the worker has read, not the last batch's: batches alternate partitions, and
        # one of a partition behind the others swung the lag by minutes from scrape to scrape.
        if self.newest_on_events_ms > metrics.NEWEST_SCORED.ms:
            metrics.NEWEST_SCORED.ms = self.newest_on_events_ms


class DecayIndex:
    """When each lead's next decay step is due, per owned partition: a sweep costs what is due.

    A lead's due time moves with every batch that changes it, mostly later (new activity), so
    an entry is added only when it is due before the lead's earliest entry: that one fires
    first, and the sweep finds the step not yet due and schedules it again. So the index holds
    about one entry per lead, however often leads change."""

    def __init__(self) -> None:
        self._heaps: dict[int, list[tuple[int, str, str]]] = {}
        self._earliest: dict[tuple[str, str], int] = {}

    def schedule(self, partition: int, due_ms: int, lead_id: str, model: str) -> None:
        key = (lead_id, model)
        earliest = self._earliest.get(key)
        if earliest is not None and earliest <= due_ms:
            return
        self._earliest[key] = due_ms
        heapq.heappush(self._heaps.setdefault(partition, []), (due_ms, lead_id, model))

    def partitions(self) -> list[int]:
        """The partitions with entries (some may be stale)."""
        return list(self._heaps)

    def pop_due(self, until_ms: Mapping[int, int], limit: int) -> list[tuple[int, str, str]]:
        """Up to `limit` (partition, lead, model) whose step was due by their partition's time in
        `until_ms` (none of a partition it leaves out); entries may be stale."""
        due: list[tuple[int, str, str]] = []
        earliest = self._earliest
        for partition, heap in self._heaps.items():
            partition_ms = until_ms.get(partition)
            if partition_ms is None:
                continue
            while heap and heap[0][0] <= partition_ms and len(due) < limit:
                due_ms, lead_id, model = heapq.heappop(heap)
                if earliest.get((lead_id, model)) == due_ms:
                    del earliest[(lead_id, model)]
                due.append((partition, lead_id, model))
        return due

    def forget(self, partitions: set[int]) -> None:
        """Drops the entries of these partitions (taken away from this worker: their new owner
        indexes their leads when it has restored them)."""
        earliest = self._earliest
        for partition in partitions & self._heaps.keys():
            for due_ms, lead_id, model in self._heaps.pop(partition):
                if earliest.get((lead_id, model)) == due_ms:
                    del earliest[(lead_id, model)]

    def __len__(self) -> int:
        return sum(len(heap) for heap in self._heaps.values())


def _reschedules(model: Model, was: Model | None) -> bool:
    """Whether an edit from `was` to `model` may change when its leads' decay is next due, so
    that the steps scheduled would be applied late or never: a schedule changed; for a
    half-life, anything the time a score falls through a line depends on (the lines, fit
    points, floor, accounts); a model new to the worker, or back in the directory (a sweep drops
    the due steps of a model that is not there)."""
    if model.decay is None:
        return False  # steps left scheduled find nothing due, and go
    if was is None:
        return True
    if isinstance(model.decay, HalfLifeDecay):
        return model != was
    return model.decay != was.decay


class Scorer:
    def __init__(self, engine: Engine, settings: Settings, store: LiveTable[LeadState | str], outbox: Outbox, partitions: int,
                 committed: erasure.Committed | None = None, log_end: read_offsets.LogEnd | None = None,
                 look_up: LookUp | None = None, ends_now: erasure.EndsNow | None = None,
                 log_start: LogStart | None = None) -> None:
        """`committed` tells the consumer's committed offsets, after which the markers of
        forgotten leads go (streams/erasure.py); without it (no consumer) they stay. `log_end`
        tells the partitions' end offsets, which find the offsets of a topic created again
        (streams/read_offsets.py); without it, they are taken for the topic's. `look_up`
        looks holes in an input partition's offsets up in the log (streams/transactions.py);
        without it, every hole is a gap; `log_start` says where its log begins, before which a
        hole was deleted unread (streams/offset_sequence.py). `ends_now` asks the broker for end offsets, where a
        request to forget names one past those `log_end` saw (`_past_the_end`); without it,
        such a request is honoured."""
        self.engine = engine
        self.settings = settings
        self.store = store
        self.outbox = outbox
        self.partitions = partitions
        #: What a record's origin may name (`_origin`): what the worker reads records from.
        self.input_topics = frozenset((settings.topic_events, settings.topic_profiles, settings.topic_identity))
        self.decay_index = DecayIndex()
        #: How far a sweep may bring each partition's leads: as far as its events were read.
        self.clocks = SweepClocks()
        self.committed = committed
        self.log_end = log_end
        self.ends_now = ends_now
        self._started_again: set[tuple[str, int]] = set()  # partitions of topics created again, logged
        self.erasures = erasure.Waiting()
        self.models = {model.name for model in engine.models}
        metrics.models_known(self.models)
        #: Products of unrouted events the log has named since the models last changed.
        self._unrouted_told: set[str | None] = set()
        self.sequence = OffsetSequence({settings.topic_events, settings.topic_identity}, look_up, log_start)
        # A batch and a decay sweep update the same live states in place, and each writes them
        # to the changelog only after the crossings they caused are acknowledged: they take
        # turns, so neither writes a state carrying the other's changes before those are.
        self._turns: asyncio.Lock | None = None
        #: Bumped by each rebuild of the indexes and by `revoke`: a rebuild whose number has
        #: moved on since it began stops where it is, its index never used.
        self._rebuild = 0
        #: The last batch's flushes, running while the next batch is scored (streams/overlap.py).
        self.in_flight = InFlight()

    def _tell_unrouted(self, events: list[Event]) -> None:
        """Logs each product among the events no model's [filter] takes, once (per model edit):
        a source set up without its product (the collector's write key) had its events counted
        and dropped with not a word in the log."""
        new = {event.product for event in events} - self._unrouted_told
        if not new or len(self._unrouted_told) >= UNROUTED_TOLD_MAX:
            return
        self._unrouted_told |= new
        taken = sorted({product for model in self.engine.models for product in model.products or ()})
        log.warning("events no model's [filter] takes are counted (leadstream_events_unrouted_total), not scored: %s; the "
                    "models take the products %s, and an event without one goes to the models without a [filter] (give the "
                    "collector's write key its product, `key=source:product`, or the events their `product`)",
                    ", ".join(sorted("no product" if product is None else f"product {product!r}" for product in new)),
                    ", ".join(taken) or "none")

    async def use(self, engine: Engine, owned: set[int]) -> None:
        """Scores with `engine` from the next batch or decay sweep on (models edited while the
        worker runs, streams/model_reload.py), with what a restart would do to the states."""
        async with self._turn():
            await self.in_flight.wait()
            before = {model.name: model for model in self.engine.models}
            self.engine = engine
            self.models = {model.name for model in engine.models}
            metrics.models_known(self.models)
            self._unrouted_told.clear()
            # Fit points derived under the old [[fit]] rules are cached in the live states.
            self.store.drop_live()
            # Re-indexing costs what a recovery's indexing does: only when a due time may differ.
            if any(_reschedules(model, before.get(model.name)) for model in engine.models):
                await self._rebuild_indexes(owned)

    def _turn(self) -> asyncio.Lock:
        if self._turns is None:  # created inside the worker's event loop
            self._turns = asyncio.Lock()
        return self._turns

    def now_ms(self) -> int:
        """The worker's clock (`Settings.now_ms`)."""
        return self.settings.now_ms()

    def wall_ms(self, now_ms: int) -> int:
        """The wall clock at the worker's `now_ms` (less LEADSTREAM_CLOCK_OFFSET_MS): Kafka's
        timestamps are on it."""
        return now_ms - self.settings.clock_offset_ms

    async def settle(self) -> None:
        """Returns once the batch or decay sweep in flight (if any) has written its states."""
        async with self._turn():
            await self.in_flight.wait()

    async def revoke(self, partitions: set[int]) -> None:
        """A rebalance took these partitions away: once the batch or decay sweep in flight has
        written its states, their leads' live states and scheduled decay steps go. A sweep
        under way (one chunk at a time) would otherwise go on decaying leads another worker
        now owns, from their bytes here, and write them to the changelog after that worker
        restored them: steps applied twice, and a state without the events it has scored since
        sent after its own. The index is rebuilt for the owned partitions once recovery is done;
        a rebuild under way stops at its next pause (`rebuild_indexes`), not holding this up."""
        self._rebuild += 1
        async with self._turn():
            await self.in_flight.wait()
            self.store.forget(partitions)
            self.decay_index.forget(partitions)
            self.clocks.forget(partitions)
            self.erasures.forget(partitions)
            metrics.DECAY_DUE.set(len(self.decay_index))

    async def process(self, batch: Sequence[Consumed], done: Done | None = None) -> BatchStats:
        """Scores a batch and returns once it is durable; or, given `done`, as soon as it is
        scored, with its flushes running in the background (after the batch before's) and
        `done(True)` awaited once they are acknowledged: the worker acknowledges the batch's messages
        there (streams/overlap.py); `done(False)` when the batch is dropped unwritten (streams/membership.py)."""
        self.sequence.observe(batch)
        if self.sequence.at_head:
            await self.sequence.check_head()
        async with self._turn():
            with metrics.BATCH_SECONDS.time():
                try:
                    stats, records = await self._process(batch)
                except MembershipLost:  # stitching's own flushes (streams/membership.py)
                    membership.dropped("score", read_from(batch))
                    if done is not None:
                        await done(False)
                    return BatchStats(messages=len(batch))
                self.clocks.read(stats.read_on_events, self.wall_ms(self.now_ms()))
                await self.in_flight.wait()
                self.in_flight.start(make_durable(self.outbox, records, done, "score", read_from(batch), stats.record))
            if done is None:
                await self.in_flight.wait()
        return stats

    async def _process(self, batch: Sequence[Consumed]) -> tuple[BatchStats, list[Record]]:
        """Scores a batch: its outputs are queued in the outbox and its states written to the
        live table; returns the changelog records to send once the outputs are acknowledged.
        Input that makes scoring raise is found and dead-lettered (streams/isolation.py)."""
        stats = BatchStats(messages=len(batch))
        requested = await self._requested(batch)
        # Identity links and merges first, so the events of this batch see who is merged.
        identity = [m for m in batch if m.topic == self.settings.topic_identity and not m.tombstone]
        if identity:
            dead: list[DeadLetter] = []
            # Stitching writes states itself: after the batch before's, which may be the same leads'.
            await self.in_flight.wait()
            await self._stitch(identity, dead, requested)
            self._queue_dead(dead, stats)
        rest = [m for m in batch if m.topic != self.settings.topic_identity or m.tombstone] if identity else batch
        records: list[Record] = []

        def refuse(message: Consumed, exc: Exception) -> None:
            stats.events += 1
            self._queue_dead([internal_error(exc, message, "scoring this event")], stats)

        for part, part_records in isolate(rest, lambda part: self._attempt(part, batch, requested), split_envelope, refuse):
            stats.add(part)
            records += part_records
        return stats, records

    def _attempt(self, messages: Sequence[Consumed], batch: Sequence[Consumed],
                 requested: dict[str, dict[str, int]]) -> tuple[BatchStats, list[Record]]:
        """`_score`, or nothing at all when it raises."""
        return undone_if_it_raises(self.outbox, self.store, lambda known: self._score(messages, known, batch, requested))

    def _queue_dead(self, dead: list[DeadLetter], stats: BatchStats) -> None:
        for letter in dead:
            stats.rejected[letter.reason] = stats.rejected.get(letter.reason, 0) + 1
            self.outbox.add(self.settings.topic_deadletter, letter.message_key, letter.to_bytes(), letter.partition)

    def _score(self, messages: Sequence[Consumed], known: dict[str, States], batch: Sequence[Consumed],
               requested: dict[str, dict[str, int]]) -> tuple[BatchStats, list[Record]]:
        """Scores messages of `batch` (no identity records): queues their outputs, writes their
        states to the live table and returns the changelog records. `known` gets each lead's
        live states, looked up once; `requested`, the records the batch's requests to forget
        cover (`_requested`)."""
        stats = BatchStats()
        dead: list[DeadLetter] = []
        # Leads to forget (lead id -> partition and offset of the request), after this batch's events: all they left goes.
        forget: dict[str, tuple[int, int]] = {}
        events = []
        # Each message's decoded events, to find the message of an event the engine refuses.
        sources: list[tuple[Consumed, list[Any] | None, list[Event]]] = []
        links: list[tuple[str, str, int, Headers]] = []
        partition_of: dict[str, int] = {}
        # Lead id -> the offsets its states had read before the batch, and those of its records
        # in the batch (topic -> the greatest offset; and re-keyed events' origins): streams/read_offsets.py.
        read_before: dict[str, read_offsets.Offsets] = {}
        reached: dict[str, read_offsets.Offsets] = {}
        states_of = self.store.states
        clock_ms = self.now_ms()
        future = self.settings.future_limit(clock_ms, "the worker's clock")
        horizon_ms = future.horizon_ms
        for message in messages:
            if message.tombstone:
                self._tombstone(message, forget, dead, stats)
                continue
            items, decoded = self._decode(message, dead, stats)
            sources.append((message, items, decoded))
            # An envelope's item scored alone (streams/isolation.py) reads the envelope only in
            # part: its offset is not one the lead's states hold all of.
            topic, offset, whole = message.topic, message.offset, not message.part
            # Events re-keyed to their visitor's lead: a copy made by a worker that read the
            # visitor's record again is dropped by its origin. (A part's position is not known.)
            origin = self._origin(message) if whole else None
            if origin is not None:
                origin_key = read_offsets.origin_key(topic, origin)
            for position, event in enumerate(decoded):
                if event.time_ms > horizon_ms:
                    if items is None:  # decoded in one pass: the dead letter needs the object
                        items = unpack(message.value)
                    dead.append(self._from_the_future(event, _original(message.value, items, position), future, message))
                    continue
                lead_id = event.lead_id
                states = known.get(lead_id)
                if states is None:
                    try:
                        states = known[lead_id] = states_of(lead_id)
                    except StateError as exc:
                        if items is None:
                            items = unpack(message.value)
                        dead.append(self._unreadable(lead_id, exc, _original(message.value, items, position), message))
                        continue
                read = read_before.get(lead_id)
                if read is None:
                    read = read_before[lead_id] = read_offsets.read(states)
                if offset <= read.get(topic, -1):
                    if self._holds(read, topic, message.partition):
                        stats.read_again += 1
                        continue  # its lead's states hold it: read again after a restart
                    read_offsets.drop_topic(read, topic)  # offsets of the topic before it was created again
                # The marker's presence is checked inline: this runs once per event, and leads have none.
                if erasure.FORGOTTEN in states and erasure.read_again(states, topic, offset):
                    continue  # scored before its lead was forgotten, or sent before the request
                if requested and lead_id in requested and offset <= requested[lead_id].get(topic, -1):
                    continue  # sent before a request of this batch to forget its lead: scored, it would publish crossings before the erasure
                if origin is not None:
                    mark = [origin.offset, origin.position + position]
                    lead_reached = reached.get(lead_id)
                    # The batch's own origins first: both copies may be in one batch.
                    if read_offsets.holds(lead_reached if lead_reached is not None and origin_key in lead_reached else read,
                                          origin_key, mark):
                        stats.read_again += 1
                        continue
                target = stitching.merged_into(states)
                if target is not None:
                    if items is None:  # decoded in one pass: forwarding, which is rare, needs the objects
                        items = unpack(message.value)
                    self._forward(items, position, target, message, dead)
                    continue
                if items is not None and event.type in LINKING_TYPES:
                    linked = stitching.links_of(items[position])
                    if isinstance(linked, Rejection):  # an old id no lead can have: refused here, not once its link is read back
                        dead.append(message.dead_letter(linked.reason, linked.detail, _original(message.value, items, position)))
                        continue
                    read_at = origin_headers(message, position)
                    links.extend((source, target, event.time_ms, read_at) for source, target in linked)
                events.append(event)
                partition_of[lead_id] = message.partition
                if whole:
                    lead_reached = reached.get(lead_id)
                    if lead_reached is None:
                        lead_reached = reached[lead_id] = {}
                    if offset > lead_reached.get(topic, -1):
                        lead_reached[topic] = offset
                    if origin is not None:
                        lead_reached[origin_key] = mark
        # Set before the engine hands the changed states over, so that they are encoded with them.
        for lead_id, offsets in reached.items():
            known[lead_id][read_offsets.READ] = read_offsets.encode({**read_before[lead_id], **offsets})

        events_topic = self.settings.topic_events
        read_on_events = stats.read_on_events
        for message, _, decoded in sources:
            if message.topic != events_topic:
                continue
            newest = read_on_events.get(message.partition)
            if newest is None:
                newest = read_on_events[message.partition] = [0, 0]
            for event in decoded:
                if newest[0] < event.time_ms <= horizon_ms:
                    newest[0] = event.time_ms
            if message.timestamp_ms > newest[1]:
                newest[1] = message.timestamp_ms
        stats.newest_on_events_ms = max((newest[0] for newest in read_on_events.values()), default=0)
        # Partition -> the time its leads' summaries are valued at, taken when one of them first
        # settles: the newest event time read from the events topic on that partition, by this
        # batch or one before (a batch of its late events does not take the time back), not the
        # batch's newest. A batch holds several partitions, and during a backlog a lead on one read
        # days behind another was published valued days ahead of its own events still to read (a
        # score and level it never had at that time). Nor beyond the worker's clock: one lead's
        # event ahead of it (within LEADSTREAM_MAX_FUTURE_MS, or any with the check off) decayed
        # the others to its time.
        valued_ms: dict[int, int] = {}
        clocks = self.clocks
        writes: dict[str, tuple[int, States, bytes | None]] = {}
        new_leads = stats.new_leads

        def settled(key: tuple[str, str], state: LeadState, score_changed: bool) -> None:
            """A changed state, final for this batch: summarised and encoded now, while it is in
            the CPU's caches (the engine calls this right after its lead's last event)."""
            model, lead_id = key
            states = known[lead_id]
            if model not in states:
                new_leads[model] = new_leads.get(model, 0) + 1
                states[model] = state
            partition = partition_of[lead_id]
            now_ms = valued_ms.get(partition)
            if now_ms is None:
                now_ms = valued_ms[partition] = min(clocks.event_ms(partition, read_on_events), clock_ms)
            # Never before the lead's own newest event: a profile update, on another topic, may be
            # newer than the events read of its partition, and its state holds it.
            if state.watermark_ms > now_ms:
                now_ms = state.watermark_ms
            # A state whose summary the batch left as it was (a duplicate, a capped open,
            # a counter moved) is written, but its score change would repeat the last one.
            self._changed(model, lead_id, state, now_ms, partition, score_changed)
            # A lead with states of several models is encoded after the batch, once, after all of
            # them; one with a single model's (beside its read offsets), now.
            writes[lead_id] = (partition, states, encode_states(states) if len(states) == 2 else None)

        result = self.engine.apply_batch(events, lambda model, lead_id: known[lead_id].get(model), settled)  # type: ignore[arg-type, return-value]
        unscored_late = 0
        for late in result.late:
            unscored_late += not late.scored
            for model in late.models:
                stats.late[model] = stats.late.get(model, 0) + 1
        stats.unrouted = len(result.unrouted)
        if result.unrouted:
            self._tell_unrouted(result.unrouted)
        stats.scored = len(events) - len(result.rejected) - unscored_late - stats.unrouted - len(result.unknown_type)
        if result.unknown_type:
            self._unknown_types(result.unknown_type, sources, dead)

        # Everything the batch produces goes first (crossings, score changes, account updates,
        # links, dead letters), the states that record it last: once a state is durable, what
        # it caused is in Kafka too, because a replay against that state changes nothing.
        stats.crossings = self._queue_crossings(result.transitions)
        outbox = self.outbox
        for source, target, time_ms, read_at in links:
            outbox.add(self.settings.topic_identity, source.encode(), stitching.link_record(source, target, time_ms), headers=read_at)
        account_updates = result.account_updates
        erased: dict[str, tuple[int, States]] = {}  # forgotten leads' markers
        if forget:
            account_updates = account_updates + self._forget(forget, known, writes, batch, requested, erased)
        publish_updates(outbox, self.settings, account_updates, self.partitions)
        self._queue_dead(dead, stats)
        # Every state encoded before any is written, so an encoding that raises changes nothing.
        encoded = [(lead_id, partition, states, encode_states(states) if value is None else value)
                   for lead_id, (partition, states, value) in writes.items()]
        records = [self.store.write(*write) for write in encoded]
        records += [self.store.write(lead_id, partition, states, encode_states(states)) for lead_id, (partition, states) in erased.items()]
        return stats, records

    async def decay_due(self, now_ms: int, limit: int = DECAY_CHUNK) -> int:
        """Apply up to `limit` decay steps due on the owned partitions by now, or by the time
        each partition's events were read up to if earlier (streams/sweep_clock.py); the caller
        repeats while a full chunk came back, yielding between chunks so scoring is never held
        up for long. Returns how many index entries were taken."""
        async with self._turn():
            await self.in_flight.wait()  # the states it writes carry that batch's changes
            return await self._decay_due(now_ms, limit)

    async def _decay_due(self, now_ms: int, limit: int) -> int:
        applied = 0
        crossings: list[Transition] = []
        # Each member update with the time of the last step it carries, lead id and model: see below.
        members: list[tuple[int, str, str, MemberScore]] = []
        writes: dict[str, tuple[int, States]] = {}
        wall_ms = self.wall_ms(now_ms)
        until = {partition: until_ms for partition in self.decay_index.partitions()
                 if (until_ms := self.clocks.until_ms(partition, now_ms, wall_ms)) is not None}
        due_entries = self.decay_index.pop_due(until, limit)
        taken = len(due_entries)
        for partition, lead_id, model in due_entries:
            until_ms = until[partition]
            try:
                # A lead this chunk decayed already (in another model) is taken as the chunk left
                # it: its live states may have been evicted since (LEADSTREAM_LIVE_LEADS), and its
                # bytes are those before the chunk.
                states = writes[lead_id][1] if lead_id in writes else self.store.states(lead_id)
            except StateError:  # its events are dead-lettered until it is repaired or forgotten
                continue
            state = states.get(model)
            if not isinstance(state, LeadState) or model not in self.models:  # gone, or a merge marker
                continue
            runtime = self.engine.runtime(model)
            due = runtime.next_due_ms(state)
            if due is None or due > until_ms:  # stale entry: activity moved the step later
                if due is not None:
                    self.decay_index.schedule(partition, due, lead_id, model)
                continue
            # In place, like a batch's events: the state is written after the crossings.
            before = runtime.score(state)
            crossed = len(crossings)
            try:
                changed_ms = runtime.decay(state, lead_id, until_ms, crossings, swept=True)
            except Exception as exc:  # a bug: the lead stays as it was, and the sweep goes on
                del crossings[crossed:]
                states[model] = self.store.stored(lead_id)[model]
                metrics.DECAY_FAILURES.inc()
                log_raised(exc, "a decay step raised %s; the lead is left as it was until the worker restarts: model=%s "
                           "partition=%d", model, partition)
                continue
            applied += 1
            self._changed(model, lead_id, state, until_ms, partition)
            writes[lead_id] = (partition, states)
            # Its account counts the decayed score (at the lead's newest event time, as the
            # updates of its events are: decay is not news of a later event); a crossing it
            # causes is stamped with the last due time taken, at which the score is valued.
            member = runtime.member_score(lead_id, state, state.watermark_ms, changed_ms or 0)
            if member is not None and runtime.score(state) != before:
                members.append((changed_ms or until_ms, lead_id, model, member))
        queued = self._queue_crossings(crossings)
        # The accounts take the updates in the order of the steps they carry, not of the index:
        # a successor that sweeps after a crash, with some of the sweep's states written and
        # others not, finds their steps due at other times; in the index's order an account
        # could then cross at another member's update, under another id.
        members.sort(key=lambda item: item[:3])
        publish_updates(self.outbox, self.settings, [member for *_, member in members], self.partitions)
        await self.outbox.flush()  # crossings, score changes and account updates before the states below
        metrics.count_crossings(queued)  # published: a flush the fence refuses raises before
        for lead_id, (partition, states) in writes.items():
            self.store.put(lead_id, partition, states, encode_states(states), self.outbox)
        await self.outbox.flush()
        metrics.DECAY_STEPS.inc(applied)
        metrics.DECAY_DUE.set(len(self.decay_index))
        return taken

    async def rebuild_indexes(self, owned: set[int]) -> bool:
        """After recovery or a rebalance: index the due steps of the leads on owned partitions,
        and the markers of forgotten leads that wait for their offsets to be committed. Returns
        False when a rebalance (`revoke`) cut it short: the next recovery rebuilds them."""
        async with self._turn():
            return await self._rebuild_indexes(owned)

    async def _rebuild_indexes(self, owned: set[int]) -> bool:
        """`rebuild_indexes`, its turn taken: no batch or sweep runs in its pauses, which let the
        event loop answer probes and heartbeats (a million leads take tens of seconds). The new
        indexes replace the old ones whole once done, so no sweep ever reads a part of one."""
        self._rebuild += 1
        rebuild = self._rebuild
        decay_index, erasures = DecayIndex(), erasure.Waiting()
        leads: dict[str, int] = {}
        unreadable: list[str] = []
        began_s = paused_s = told_s = time.monotonic()
        for read, (lead_id, states) in enumerate(self.store.items(owned, unreadable), 1):
            partition = partition_for(lead_id, self.partitions)
            if erasure.FORGOTTEN in states:
                erasures.add(partition, lead_id)
            for model, state in states.items():
                if model not in self.models:  # a model removed from the directory (or a marker): its states rest
                    continue
                leads[model] = leads.get(model, 0) + 1
                due = self.engine.next_due_ms(model, state)  # type: ignore[arg-type]
                if due is not None:
                    decay_index.schedule(partition, due, lead_id, model)
            if read % REBUILD_LOOK_EVERY or time.monotonic() - paused_s < REBUILD_SLICE_S:
                continue
            await asyncio.sleep(0)
            if rebuild != self._rebuild:  # the partitions are moving: what it read may be gone
                log.info("decay index rebuild left off for a rebalance: leads_read=%d", read)
                return False
            paused_s = time.monotonic()
            if paused_s - told_s >= REBUILD_PROGRESS_S:
                told_s = paused_s
                log.info("decay index rebuild under way (not ready until done): leads_read=%d of keys=%d seconds=%.1f",
                         read, len(self.store), paused_s - began_s)
        self.decay_index, self.erasures = decay_index, erasures
        if unreadable:  # ids are not logged: they may be personal data
            log.warning("lead states unreadable, left as they are (their events go to the dead-letter topic): count=%d",
                        len(unreadable))
        metrics.LEADS_IN_STATE.clear()
        for model, count in leads.items():
            metrics.LEADS_IN_STATE.labels(model).set(count)
        metrics.DECAY_DUE.set(len(self.decay_index))
        return True

    async def clear_erasures(self) -> int:
        """Drops the markers of forgotten leads whose offsets the consumer has committed since
        (streams/erasure.py): a tombstone on the changelog, or the states of the lead's events
        since, written without it. Returns how many went."""
        if self.committed is None or not self.erasures:
            return 0
        async with self._turn():
            await self.in_flight.wait()  # the batch that wrote a marker, or the lead's states since
            cleared = 0
            for partition, lead_id, states in self.erasures.due(self.store.states, self.committed):
                rest = erasure.without(states)
                if lead_states.scored(rest):  # the states of its events since (its offsets read alone are no reason to keep its id)
                    self.store.put(lead_id, partition, rest, encode_states(rest), self.outbox)
                else:
                    self.store.delete(lead_id, partition, self.outbox)
                cleared += 1
            await self.outbox.flush()
        return cleared

    async def _stitch(self, messages: list[Consumed], dead: list[DeadLetter], requested: dict[str, dict[str, int]]) -> None:
        """Links move a merged id's states on as a merge; merges fold them into the target, are
        sent on when it was merged itself, or come back to their source (see streams/stitching.py).
        A record that a request of the batch to forget its id covers (`_requested`) is dropped."""
        crossings: list[Transition] = []
        members: list[MemberScore] = []
        # Each id's states as the batch leaves them (a marker, merged into, or given back),
        # stored once what they caused is acknowledged: a later record of the batch for the
        # same id reads them here, so it neither misses an earlier one's change nor undoes it.
        pending: dict[str, tuple[int, States]] = {}
        for message in messages:
            # A record that makes stitching raise (a bug) leaves nothing: what it queued, its
            # states in `pending` (replaced, never changed in place) and its crossings and
            # members are taken back, and it is dead-lettered; the batch goes on.
            mark, before, counts = self.outbox.mark(), dict(pending), (len(crossings), len(members), len(dead))
            try:
                self._stitch_one(message, pending, crossings, members, dead, requested)
            except Exception as exc:
                self.outbox.rollback(mark)
                pending.clear()
                pending.update(before)
                del crossings[counts[0]:], members[counts[1]:], dead[counts[2]:]
                dead.append(internal_error(exc, message, "applying this identity record"))
        queued = self._queue_crossings(crossings)
        publish_updates(self.outbox, self.settings, members, self.partitions)
        await self.outbox.flush()  # the merges, crossings, score changes and account updates before the states below
        metrics.count_crossings(queued)  # published: a flush the fence refuses raises before
        for lead_id, (partition, states) in pending.items():
            self.store.put(lead_id, partition, states, encode_states(states), self.outbox)
        await self.outbox.flush()

    def _stitch_one(self, message: Consumed, pending: dict[str, tuple[int, States]], crossings: list[Transition],
                    members: list[MemberScore], dead: list[DeadLetter], requested: dict[str, dict[str, int]]) -> None:
        """One identity record of `_stitch`: its outputs queued, its states put in `pending`."""
        try:
            record, incoming = stitching.read_record(message.value)
        except stitching.IdentityRecordError as exc:
            dead.append(message.dead_letter("bad_identity_record", str(exc), message.value))
            return
        kind, source, target, time_ms = record.kind, record.source, record.target, record.time_ms
        subject = source if kind == "link" else target  # the id whose states the record acts on
        home = partition_for(subject, self.partitions)
        if home != message.partition:  # its state lives elsewhere: acting here would split the lead
            advice = partitioned_otherwise(subject, message.key, message.partition, self.partitions) or "key it by that id"
            dead.append(message.dead_letter("wrong_partition", f"{kind} record for {subject!r} arrived on partition "
                                            f"{message.partition}, but that id's is {home}: {advice}", message.value))
            return
        try:
            states = pending[subject][1] if subject in pending else self.store.states(subject)
        except StateError as exc:
            dead.append(self._unreadable(subject, exc, message.value, message))
            return
        read = read_offsets.read(states)
        if message.offset <= read.get(message.topic, -1):
            if self._holds(read, message.topic, message.partition):
                return  # applied before, and read again after a restart
            read_offsets.drop_topic(read, message.topic)
        if erasure.read_again(states, message.topic, message.offset):
            return  # applied before the id was forgotten, or sent before the request
        if message.offset <= requested.get(subject, {}).get(message.topic, -1):
            return  # sent before a request of this batch to forget the id
        read[message.topic] = message.offset
        origin = self._origin(message)
        if origin is not None:  # a copy made by a worker that read the record it came from again (streams/read_offsets.py)
            key, mark = read_offsets.origin_key(message.topic, origin), [origin.offset, origin.position]
            if read_offsets.holds(read, key, mark):
                return
            read[key] = mark
        merged_into = stitching.merged_into(states)
        # What stays of the entry when its states go: the marker of a forgetting (until committed)
        # and the offsets read, this record's now among them.
        markers = {**erasure.kept(states), read_offsets.READ: read_offsets.encode(read)}
        if kind == "link":
            if merged_into is not None or source == target:
                return  # merged before: merging twice adds nothing (and into itself, nothing at all)
            own = lead_states.scored(states)
            if own:
                self.outbox.add(self.settings.topic_identity, target.encode(),
                                stitching.merge_record(source, target, time_ms, own), headers=origin_headers(message, 0))
                # The visitor's points now count in the lead's, in read models. Its accounts
                # lose it at the merge, in the same update as the lead's new score: left now,
                # the account would fall without the visitor's points nor the lead's new ones
                # until the merge arrives, and cross down and up again.
                self._withdraw(source, own, message.partition, time_ms)
            else:
                # No states to move, yet read models may list the id: a worker scored its events and
                # published their score, and was killed before it wrote the states (a chaos run left
                # two visitors listed so). Its later events go to the lead, so no score of its own stays.
                self._unlist(source, message.partition)
            pending[source] = (message.partition, {**markers, **stitching.marker(target)})
        elif stitching.returned(record):
            if merged_into is None:
                return  # its states are back already (a redelivered return): taking them twice would double them
            # The source's own states, back in place of its marker: it is scored, listed and
            # counted in its account again, as it was before its link.
            pending[source] = (message.partition, {**markers, **incoming})
            for model, state in incoming.items():
                if model in self.models:
                    member = self.engine.returning(model, source, state, time_ms)
                    self._changed(model, source, state, time_ms, message.partition)
                    if member is not None:
                        members.append(member)
        elif merged_into is not None:  # the target was itself merged since: follow the chain, or go back
            self._forward_merge(record, merged_into, message)
        else:
            states = dict(states)
            for model, state in incoming.items():
                if model not in self.models:
                    continue
                existing = states.get(model)
                leaving = self.engine.leaving(model, source, state, time_ms, into=target)  # the visitor's own membership ends
                if leaving is not None:
                    members.append(leaving)
                state, crossed = identity.merge(self.engine, model, target, None if existing is None else existing.copy(),  # type: ignore[union-attr]
                                                state, source, time_ms)
                crossings.extend(crossed)
                states[model] = state
                self._changed(model, target, state, time_ms, message.partition)
                # The merged points count in the lead's account at once, not at its next event.
                member = self.engine.member_score(model, target, state, state.watermark_ms)
                if member is not None:
                    members.append(member)
            # A merge read again after a restart must not add the visitor's points twice.
            states[read_offsets.READ] = markers[read_offsets.READ]
            pending[target] = (message.partition, states)

    def _holds(self, read: read_offsets.Offsets, topic: str, partition: int) -> bool:
        """Whether the states' offset of `topic` can be one of its records: not when it is at or
        beyond the partition's end, as after the topic was deleted and created again under its
        name (its offsets started again). That is logged, once a partition."""
        end = None if self.log_end is None else self.log_end(topic, partition)
        if end is None or read[topic] < end:
            return True
        if (topic, partition) not in self._started_again:
            self._started_again.add((topic, partition))
            log.warning("lead states hold offsets beyond the end of a partition, as after its topic was created again: its "
                        "records are scored and the states' offsets start again: topic=%s partition=%d end=%d", topic, partition, end)
        return False

    def _forward_merge(self, record: stitching.IdentityRecord, merged_into: str, message: Consumed) -> None:
        """Sends a merge on to the lead its target was merged into, or back to its source when
        that would close a loop of links or the chain is too long (`stitching.onward`)."""
        onward = stitching.onward(record, merged_into)
        if stitching.returned(onward):
            # Ids are not logged: they may be personal data.
            log.warning("a merge went back to the id it came from: %s", "its target was merged into it (a loop of links)"
                        if merged_into == record.source else f"it was sent on {stitching.MAX_HOPS} times (a loop of links)")
        self.outbox.add(self.settings.topic_identity, onward.target.encode(), encode_json(onward), headers=origin_headers(message, 0))

    def _origin(self, message: Consumed) -> stitching.Origin | None:
        """The origin a record's header gives, if a worker of ours could have written it: made
        from a record of a topic the worker reads. Another producer's header of that name (or a
        record copied with its headers from elsewhere) made its events look like copies of
        records read before, and they were dropped without a word."""
        origin = message.origin
        if origin is None or origin.topic not in self.input_topics or origin.partition >= self.partitions:
            return None
        return origin

    def _tombstone(self, message: Consumed, forget: dict[str, tuple[int, int]], dead: list[DeadLetter], stats: BatchStats) -> None:
        """A message without a value: on the profiles topic, a request to forget the lead it is
        keyed by (streams/forget.py); anywhere else, a mistake."""
        profiles = self.settings.topic_profiles
        lead_id = _key_text(message.key)
        if message.topic == profiles and lead_id:
            home = partition_for(lead_id, self.partitions)
            if home == message.partition:
                forget.setdefault(lead_id, (message.partition, message.offset))
                return
            # Keyed by the lead id (that is what it names), so the partitioner is what was wrong.
            reason: WorkerReason = "wrong_partition"
            detail = (
                f"request to forget lead {lead_id!r} arrived on partition {message.partition}, but the lead's is {home}: "
                f"{partitioned_otherwise(lead_id, message.key, message.partition, self.partitions)}; or send it with "
                "`leadstream forget`, which puts it on the lead's partition")
        elif message.topic == profiles:
            reason, detail = "tombstone", "a tombstone on the profiles topic without a lead id (UTF-8) as its key: nothing to forget"
        else:
            if message.topic == self.settings.topic_events:
                stats.events += 1
            reason, detail = "tombstone", (
                f"a message without a value (a tombstone) on {message.topic}, which takes JSON: to forget a lead, send a "
                f"tombstone keyed by its id to {profiles}, as `leadstream forget` does")
        dead.append(message.dead_letter(reason, detail, None))

    async def _requested(self, batch: Sequence[Consumed]) -> dict[str, dict[str, int]]:
        """For each lead a request of the batch asks to forget, the last offsets of its partition
        that its requests say were sent before them (streams/erasure.py, SENT_BEFORE). Headers that
        cannot say it are ignored, counted and logged: the request covers the other topics. So
        are those naming an offset past the partition's end: honoured, one dropped every later
        record of the lead, unsaid, until the topic reached that offset."""
        headed: list[tuple[str, int, dict[str, int]]] = []
        ignored: list[str] = []
        for message in batch:
            if not (message.tombstone and message.headers and message.topic == self.settings.topic_profiles):
                continue
            lead_id = _key_text(message.key)
            if not lead_id or partition_for(lead_id, self.partitions) != message.partition:
                continue  # dead-lettered (`_tombstone`)
            covered, bad = erasure.sent_before(message.headers, self.sequence.topics)
            headed.append((lead_id, message.partition, covered))
            ignored += bad
        requested: dict[str, dict[str, int]] = {}
        ends = await self._past_the_end(headed) if headed else {}
        for lead_id, partition, covered in headed:
            for topic in erasure.beyond(covered, ends.get(partition, {})):
                del covered[topic]
                ignored.append(erasure.BEYOND_END)
            requested[lead_id] = erasure.covering(requested.get(lead_id, {}), covered)
        for reason in ignored:
            metrics.FORGET_HEADERS_IGNORED.labels(reason).inc()
        if ignored:
            log.warning("headers of requests to forget ignored (%s: \"<topic> <end offset>\" of the events or identity topic, "
                        "at most the partition's end): "
                        "%s; those requests cover the records of that topic the worker had read, not those sent before them "
                        "and still to be read", erasure.SENT_BEFORE,
                        ", ".join(f"{reason}={ignored.count(reason)}" for reason in sorted(set(ignored))))
        return requested

    async def _past_the_end(self, headed: list[tuple[str, int, dict[str, int]]]) -> dict[int, dict[str, int]]:
        """Partition -> topic -> its end offset, for the partitions of requests whose headers name
        an offset at or past the end the worker's fetches last saw (`log_end`): asked of the
        broker then (`ends_now`, in a thread), for that end lags behind while the worker is (it
        fetches a partition again only once what it fetched is scored), and a request sent by
        `leadstream forget` names at most the end when it was sent. Empty where the broker could
        not be asked: the headers are honoured, as before the check, rather than a true request
        ignored."""
        doubtful: dict[int, set[str]] = {}
        for _, partition, covered in headed:
            for topic, last in covered.items():
                seen = None if self.log_end is None else self.log_end(topic, partition)
                if seen is None or last >= seen:
                    doubtful.setdefault(partition, set()).add(topic)
        if not doubtful or self.ends_now is None:
            return {}
        try:
            return await asyncio.to_thread(self.ends_now, set().union(*doubtful.values()), set(doubtful))
        except Exception as exc:  # noqa: BLE001 - any failure to ask leaves the headers honoured, and is said
            log.warning("end offsets not asked of the broker: requests to forget that name offsets past those the worker "
                        "fetched last are honoured: cause=%r", exc)
            return {}

    def _forget(self, forget: dict[str, tuple[int, int]], known: dict[str, States], writes: dict[str, Any],
                batch: Sequence[Consumed], requested: dict[str, dict[str, int]],
                erased: dict[str, tuple[int, States]]) -> list[MemberScore]:
        """Queues what erases each lead from the outputs (see `_withdraw`; returns its accounts'
        updates), keeps its states from being written and puts the marker that replaces them in
        `erased` (streams/erasure.py), to be written once these are acknowledged: it covers what the
        batch held, what the lead's marker covered already and what `requested` says was sent
        before the request. A request read again after a restart, its lead forgotten since,
        changes nothing.

        A lead leaves its accounts right after its last update there: at its newest event's time,
        as its state's next revision (`Engine.leaving`). A worker that scores the batch again after
        a crash sends the same leaving (at the worker's clock, the accounts crossed again under new
        ids), and the lead's events read after the request (a new profile) count in its accounts
        again from the first later than that. (At the request's Kafka timestamp, a new profile's
        events timed before the request never counted there, while the lead was listed with them.)"""
        leaving: list[MemberScore] = []
        nothing = 0  # requests for ids with no state
        unread = 0  # requests for ids with no state yet, whose records sent before them are still to be read
        merged = 0  # requests for ids merged into another lead, whose marker goes
        ends: dict[int, dict[str, int]] = {}  # partition -> topic -> the batch's last offset there
        for lead_id, (partition, offset) in forget.items():
            try:
                states = known[lead_id] if lead_id in known else self.store.states(lead_id)
            except StateError:
                states = None
            if states is not None and erasure.read_again(states, self.settings.topic_profiles, offset):
                continue
            writes.pop(lead_id, None)
            if partition not in ends:
                last: dict[str, int] = {}
                ends[partition] = last
                for message in batch:
                    if message.partition == partition and message.offset > last.get(message.topic, -1):
                        last[message.topic] = message.offset
            # The offsets its states had read stay beside the marker: a copy of a record made for
            # the lead elsewhere (a visitor's re-keyed event, a merge), made again under a new
            # offset after a restart, is told by its origin, not started anew as the lead's next record.
            covered = erasure.covering(ends[partition], requested.get(lead_id, {}), {} if states is None else erasure.offsets(states))
            erased[lead_id] = (partition, {**erasure.marker(covered), **({} if states is None else read_offsets.kept(states))})
            self.erasures.add(partition, lead_id)
            if states is None:
                # Unreadable: its read-model entries go all the same (one per model it may have
                # been scored by); which accounts it was in cannot be known.
                self._unlist(lead_id, partition)
                metrics.LEADS_FORGOTTEN.inc()
                continue
            leaving += self._withdraw(lead_id, states, partition, time_ms=0)  # right after its last update
            # Scored by any model, loaded or not: one removed from the directory made the lead
            # "an id with no state", though its states rested in the table.
            scored = [model for model, state in states.items() if isinstance(state, LeadState)]
            for model in self.models.intersection(scored):
                metrics.LEADS_IN_STATE.labels(model).dec()
            if scored:
                metrics.LEADS_FORGOTTEN.inc()
            elif stitching.merged_into(states) is not None:
                metrics.LEADS_FORGOTTEN.inc()
                merged += 1
            else:  # never scored, or forgotten already, or its records are still to be read: its marker holds all the same
                metrics.FORGET_REQUESTS_WITHOUT_STATE.inc()
                if any(offset >= (self.sequence.next_offset(topic, partition) or 0)
                       for topic, offset in covered.items() if topic in self.sequence.topics):
                    unread += 1
                else:
                    nothing += 1
        if erased:
            # Ids are not logged: they may be personal data.
            log.info("leads forgotten: count=%d", len(erased) - nothing - unread)
        if unread:
            log.info("requests to forget ids not scored yet, with records sent before the request still to be read: count=%d; "
                     "those records are dropped as they are read", unread)
        if merged:
            # It said the id had no state: what was scored under it lives on in the lead.
            log.warning("forgotten ids that were merged into another lead: count=%d; the points, event ids and traits "
                        "scored under them are the lead's now (GET /leads/ID/ of such an id names it, as merged_into): "
                        "forget that lead too to erase them", merged)
        if nothing:
            log.warning("requests to forget an id with no state (never scored under it, or forgotten already): count=%d; "
                        "a request must be keyed by the lead id the events carry (not an e-mail address, say), as "
                        "`leadstream forget` keys it", nothing)
        return leaving

    def _unlist(self, lead_id: str, partition: int) -> None:
        """Takes an id whose states are not known out of the read models: a tombstone of its
        score per model it may have been scored by."""
        for model in self.models:
            self.outbox.add(self.settings.topic_scores, lead_score_key(model, lead_id), None, partition)

    def _withdraw(self, lead_id: str, states: States, partition: int, time_ms: int) -> list[MemberScore]:
        """Takes an id whose states go away (merged into a lead, or forgotten) out of the read
        models (a tombstone per model on the compacted score-changes topic) and out of its
        accounts (the member updates returned, for the models this worker has), at `time_ms`
        or right after the state's last update, whichever is later (`Engine.leaving`). A model this
        worker does not have now (removed from the directory, renamed) is left too: its states rest
        in the table, and so do its accounts, where the lead stayed a member, its points counted;
        the account stage dead-letters the update as `unknown_model` until the model is back, and
        `leadstream replay-dlq --reason unknown_model` applies it then."""
        leaving: list[MemberScore] = []
        for model, state in states.items():
            if state.__class__ is str:  # a marker (merged into another id, or forgotten lately): no score of its own
                continue
            self.outbox.add(self.settings.topic_scores, lead_score_key(model, lead_id), None, partition)
            member = self.engine.leaving(model, lead_id, state, time_ms)  # type: ignore[arg-type]
            if member is not None:
                leaving.append(member)
        return leaving

    def _forward(self, items: list[Any], position: int, target: str, message: Consumed, dead: list[DeadLetter]) -> None:
        """Sends the event `items[position]` on to the lead its id was merged into, with where it was read."""
        item = items[position]
        onward = stitching.forwarded(item, target)
        if onward is None:
            dead.append(message.dead_letter("alias_loop", f"lead {item['lead_id']!r} was re-keyed {stitching.MAX_HOPS} times: an alias loop",
                                            _original(message.value, items, position)))
            return
        self.outbox.add(self.settings.topic_events, target.encode(), encode_json(onward), headers=origin_headers(message, position))

    def _decode(self, message: Consumed, dead: list[DeadLetter], stats: BatchStats) -> tuple[list[Any] | None, list[Event]]:
        """The message's accepted events, with their JSON objects in the same order when they
        were parsed on the careful path (None when the whole message was decoded in one pass:
        its objects are then `unpack(message.value)`, see `_decode_at_once`)."""
        at_once = self._decode_at_once(message.value, message.partition)
        if at_once is not None:
            stats.events += len(at_once)
            return None, at_once
        return self._decode_carefully(message, dead, stats)

    def _decode_at_once(self, value: bytes, partition: int) -> list[Event] | None:
        """Every event of a message decoded by msgspec in one pass, or None for the careful path:
        when any event is bad or on the wrong partition (its dead letter needs its object), or
        when the message may hold a stitching link, which needs the event's object too (a
        `\\u` escape could spell a field name, so it takes the careful path as well)."""
        if stitching.may_link(value):
            return None
        events = decode_message(value)  # None for a message over MAX_EVENT_BYTES too
        if events is None:
            return None
        partitions = self.partitions
        for event in events:
            if partition_for(event.lead_id, partitions) != partition:
                return None
        return events

    def _decode_carefully(self, message: Consumed, dead: list[DeadLetter], stats: BatchStats) -> tuple[Accepted, list[Event]]:
        def reject(reason: WorkerReason, detail: str, original: bytes) -> None:
            dead.append(message.dead_letter(reason, detail, original))

        try:
            items = unpack(message.value)
        except orjson.JSONDecodeError as exc:
            stats.events += 1  # how many events it held is unknowable: it counts as one
            reject(*unreadable(exc, "message is not JSON", message.value), message.value)
            return Accepted(), []
        if not items:
            stats.events += 1  # as an unreadable message: it held no event, yet it is one
            reject("bad_value", EMPTY_ENVELOPE, message.value)
            return Accepted(), []
        accepted = Accepted()
        events: list[Event] = []
        # Only a big message can hold a too-large event, so small ones skip re-serialising.
        check_sizes = len(message.value) > MAX_EVENT_BYTES
        for index, item in enumerate(items):
            stats.events += 1
            raw = _written(message.value, index, item) if check_sizes else None
            if raw is not None and len(raw) > MAX_EVENT_BYTES:
                reject("too_large", too_large(len(raw)), raw)
                continue
            parsed = parse_value(item)  # not Engine.parse: an item that is a text is no event, not JSON to read
            if isinstance(parsed, Rejection):
                if raw is None:  # not written out for the size check above
                    raw = _written(message.value, index, item)
                if raw is None:
                    reject(parsed.reason, f"{parsed.detail} (the original is the whole message: this event is nested too deep "
                           "to be written out alone)", message.value)
                else:
                    reject(parsed.reason, parsed.detail, raw)
                continue
            if partition_for(parsed.lead_id, self.partitions) != message.partition:
                advice = (partitioned_otherwise(parsed.lead_id, message.key, message.partition, self.partitions)
                          or "key single events by lead id, or pack only one partition's leads")
                reject(
                    "wrong_partition",
                    f"lead {parsed.lead_id!r} belongs on partition {partition_for(parsed.lead_id, self.partitions)}, "
                    f"not {message.partition}: {advice}",
                    _written(message.value, index, item) or message.value,
                )
                continue
            accepted.append(item)
            accepted.positions.append(index)
            events.append(parsed)
        return accepted, events

    def _unknown_types(self, refused: list[Event], sources: list[tuple[Consumed, list[Any] | None, list[Event]]],
                       dead: list[DeadLetter]) -> None:
        """Dead letters for the events of a type no model they went to knows (rare: the
        batch's messages are searched for them only when there are some)."""
        wanted = {id(event) for event in refused}
        for message, items, decoded in sources:
            for position, event in enumerate(decoded):
                if id(event) in wanted:
                    if items is None:
                        items = unpack(message.value)
                    dead.append(message.dead_letter("unknown_type", self.engine.unknown_type(event), _original(message.value, items, position)))

    @staticmethod
    def _unreadable(lead_id: str, exc: StateError, original: bytes, message: Consumed) -> DeadLetter:
        detail = (f"the stored state of lead {lead_id!r} cannot be read ({exc}): its input goes to the dead-letter topic until "
                  "the state is repaired, or the lead forgotten (`leadstream forget`); replay it then (`leadstream replay-dlq`)")
        return message.dead_letter("unreadable_state", detail, original)

    @staticmethod
    def _from_the_future(event: Event, original: bytes, future: FutureLimit, message: Consumed) -> DeadLetter:
        # Scored, it would move the lead's watermark ahead, and its real events would all be late.
        return message.dead_letter("future_time", future.refusal(event) + ": fix the sender's clock", original)

    def _changed(self, model: str, lead_id: str, state: LeadState, now_ms: int, partition: int, publish: bool = True) -> None:
        """A lead's state changed: schedule its next decay step and queue its score change
        (unless `publish` is false: the summary is the same as before)."""
        due = self.engine.next_due_ms(model, state)
        if due is not None:
            self.decay_index.schedule(partition, due, lead_id, model)
        if publish:
            self._add_summary(model, lead_id, state, now_ms, partition)

    def _add_summary(self, model: str, lead_id: str, state: LeadState, now_ms: int, partition: int) -> None:
        summary = self.engine.summary(model, lead_id, state, now_ms)
        self.outbox.add(self.settings.topic_scores, lead_score_key(model, lead_id), encode_json(summary), partition)

    def _queue_crossings(self, transitions: list[Transition]) -> list[Transition]:
        """Queue crossings in the outbox (anonymous visitors' are kept back: no CRM can act on
        them; the known lead crosses when a merge lifts it). Returns those queued."""
        published: list[Transition] = []
        for transition in transitions:
            if not stitching.publishable(transition):
                continue
            record = transition.to_dict()
            key = record["lead_id"] if record.get("kind") == "lead" else record["account_id"]
            self.outbox.add(self.settings.topic_crossings, str(key).encode(), encode_json(record))
            published.append(transition)
        return published


def _key_text(key: bytes | None) -> str:
    """A message's key as text ("" when it has none, or it is not UTF-8)."""
    try:
        return key.decode() if key else ""
    except UnicodeDecodeError:
        return ""


def _lone(value: bytes) -> bool:
    """Whether a message is one event, not an envelope: its dead letter then keeps the message
    itself, byte for byte, as the original (an envelope's keeps its event, written out alone)."""
    return value.lstrip()[:1] != b"["


class Accepted(list[Any]):
    """The objects of a message's events the careful path accepted, with their positions among
    the message's items (those it refused are left out)."""

    __slots__ = ("positions",)

    def __init__(self) -> None:
        super().__init__()
        self.positions: list[int] = []


def _original(value: bytes, items: list[Any], position: int) -> bytes:
    """What a dead letter of the event `items[position]` of the message `value` keeps: the
    message itself, or the event as written in its envelope (see `_lone`, `_written`)."""
    index = items.positions[position] if isinstance(items, Accepted) else position
    return _written(value, index, items[position]) or value


def _written(value: bytes, index: int, item: Any) -> bytes | None:
    """The item at `index` of the message `value`: the message itself when it is one event, else
    the item as its producer wrote it in the envelope, or failing that written out again (None
    when it is nested too deep to be)."""
    if _lone(value):
        return value
    written = items_written(value)
    if written is not None and index < len(written):
        return written[index]
    return encode_json_or_none(item)


def origin_headers(message: Consumed, position: int) -> Headers:
    """The headers of a record made from the event at `position` of `message` (0 for an identity
    record): where it was read (`stitching.Origin`). None for a part of an envelope, whose
    position among the envelope's events is not known: copies of what it makes are dropped by
    event id alone."""
    if message.part:
        return ()
    return stitching.origin_headers(stitching.Origin(message.topic, message.partition, message.offset, position))
