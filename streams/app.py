"""The Faust application: topics, tables, agents, timers and web views around the scorer.

Two stages, each a Faust agent with a table whose changelog makes it durable:
- `score`: raw events (keyed by lead) -> lead table -> crossings, score changes, account updates;
- `rollup`: account updates (re-keyed by account through Kafka) -> account table -> account crossings.
Both take batches of messages (streams/batching.py), so Faust's per-message cost is paid once
per message and the state is written once per changed key per batch, straight to the changelog
through the producer rather than through `Table.__setitem__` (which costs a codec round and a
future per write, see ../shared/PERF.md); and each scores the next batch while the last one's
flushes run (streams/overlap.py), so the worker does not sit idle waiting for Kafka.
"""

from __future__ import annotations

import asyncio
# asyncio.to_thread's executor module, which concurrent.futures imports at its first use: a
# worker out of open files then could not read it, and the timer's error ended the worker.
import concurrent.futures.thread  # noqa: F401
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime, timezone
from typing import Any, cast

import aiohttp
import faust
import mode
import orjson
from faust.tables.manager import TableManager
from faust.tables.recovery import Recovery
from faust.transport.consumer import Consumer
from faust.types import TP
from faust.types.tuples import ack_lock
from faust.web import Request, Response, View
from kafka.errors import KafkaError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from scoring import Engine
from scoring.errors import StateError
from streams import (assignor, batching, bulk_store, consumer_stop, erasure, fetch_wait, kafka_clients, lead_states, livelock, membership,
                     metrics, read_offsets, routing, seek_first, spare, stitching, stream_idle, transactions)
from streams.account_table import AccountTable
from streams.addresses import advertised, authority
from streams.assignor import AlignedPartitionAssignor
from streams.collection import BatchPause
from streams.errors import MembershipLost, ServiceError
from streams.http_guard import aiohttp_limits
from streams.lag import LagProbe
from streams.log_throttle import OutOfFiles
from streams.model_reload import ModelDirectory
from streams.outbox import Outbox
from streams.overlap import Done, WriteFailed
from streams.partitioning import partition_for
from streams.probes import NOT_READY_RETRY_AFTER_S, OwnMetrics
from streams.rollup import Rollup
from streams.scorer import DECAY_CHUNK, DECAY_PAUSE_S, REBUILD_SLICE_S, Scorer
from streams.settings import Settings
from streams.stage import Consumed, LiveTable
from streams.topics import ACCOUNTS_TABLE, LEADS_TABLE

log = logging.getLogger("leadstream.worker")
#: What the worker's /metrics shows: its own families, not the connectors' and the collector's,
#: whose modules the CLI imports (they showed declared, without a value).
WORKER_METRICS = OwnMetrics("leadstream_", others=("leadstream_sink_", "leadstream_collector_"))
#: A stage's `process`: a batch of consumed messages, and what to do once it is durable.
Process = Callable[[list[Consumed], Done], Awaitable[Any]]
#: Members the /accounts/{id}/ view lists, the highest scored first.
ACCOUNT_VIEW_MEMBERS = 100
#: Entries of a lead's states that views leave out (streams/erasure.py, streams/read_offsets.py).
LEAD_MARKERS = frozenset((erasure.FORGOTTEN, read_offsets.READ))
#: A killed worker's partitions move after the session timeout: kept short. A worker paused
#: longer loses its membership and writes nothing more for them (streams/membership.py).
SESSION_TIMEOUT_S = 10.0


def canonical_url(settings: Settings) -> str:
    """The URL this worker gives the others, which forward it the requests of views for the keys it
    owns (streams/routing.py). Faust's default, http://{web_host}:{web_port}, is no URL for an IPv6
    address; and the address the worker listens on is none to reach it at when it is a wildcard:
    workers bound to 0.0.0.0 on several machines each told the others to ask http://0.0.0.0:PORT,
    which is the asker's own machine (on the same port, itself: a 404 for a lead another owns)."""
    return f"http://{authority(advertised(settings.bind_host, settings.advertised_host), settings.worker_port)}"


def create_app(settings: Settings, models: ModelDirectory) -> faust.App:
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        # In memory: a new or restarted worker rebuilds its tables from the changelogs, in bulk
        # (streams/bulk_store.py; `recovery_s` of `leadstream bench pipeline`). The stages read
        # and write the store's data directly (streams/stage.py LiveTable), which Faust's
        # RocksDB store, keyed by partition, would not support as it is.
        store="memory://",
        datadir=str(settings.state_dir),
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        topic_disable_leader=True,
        # Each worker gets the same partitions of every topic: its tables' with its inputs' (streams/assignor.py).
        PartitionAssignor=AlignedPartitionAssignor,
        consumer_auto_offset_reset="earliest",
        processing_guarantee="at_least_once",
        # No standby copies: Faust would keep them current through its record-by-record path,
        # which cannot keep up with another worker's changelog writes and, measured with two
        # workers (`leadstream bench pipeline --workers 2`), took 132 us of CPU per event instead
        # of 36. A worker taking over a partition restores it in bulk in seconds instead.
        table_standby_replicas=0,
        broker_session_timeout=SESSION_TIMEOUT_S,
        broker_heartbeat_interval=1.0,
        broker_commit_interval=1.0,
        producer_acks=-1,
        producer_linger_ms=2,
        producer_max_batch_size=512 * 1024,
        web_bind=settings.bind_host,
        canonical_url=canonical_url(settings),
        web_port=settings.worker_port,
        web_in_thread=False,
        web_application_options={"handler_args": aiohttp_limits(settings.idle_timeout_ms)},
        # Faust's own /router and /table views: the lead views route themselves (streams/routing.py
        # asks app.router, not these), and these told any client every worker's URL, read table
        # values by key, and answered a table they do not know with a 500 and a traceback at ERROR.
        web_router_enabled=False,
        web_tables_enabled=False,
    )
    raw: dict[str, Any] = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
    # Profile (trait) updates are identify events keyed by lead, and identity links and merges
    # are keyed by the id they concern, all co-partitioned with the raw events: one agent keeps
    # each lead's events, traits and stitching in order on one partition, beside its state.
    stage_topics = {"score": (settings.topic_events, settings.topic_profiles, settings.topic_identity),
                    "rollup": (settings.topic_accounts,)}
    events_topic = app.topic(*stage_topics["score"], **raw)
    accounts_topic = app.topic(*stage_topics["rollup"], **raw)
    # bytes keys and values (Faust's "raw" codec), in memory stores that restore their changelog
    # partitions in bulk: Faust's own recovery takes them record by record through its stream
    # path, 3,500-7,000 records/s here (streams/bulk_store.py).
    # A lead's value that has read less than the one before it is a late write (streams/bulk_store.py).
    leads = bulk_store.raw_table(app, LEADS_TABLE, settings.partitions, lead_states.behind,
                                 functools.partial(kafka_clients.end_offsets, settings))
    accounts = bulk_store.raw_table(app, ACCOUNTS_TABLE, settings.partitions)

    lead_store = LiveTable(leads.store, leads.changelog_topic.get_topic_name(), settings.partitions, settings.live_leads,
                           lead_states.decode)
    account_store = AccountTable(accounts.store, accounts.changelog_topic.get_topic_name(), settings.partitions,
                                 settings.live_leads)

    def drop_unwritten() -> None:
        # What was scored since the membership was lost is in the tables only: their live states
        # go now, their data at the next assignment, which restores every partition anew.
        for store, table in ((lead_store, leads), (account_store, accounts)):
            store.drop_live()
            table.store.restore_anew()

    fence = membership.Membership(SESSION_TIMEOUT_S, drop_unwritten)
    # One outbox (one producer) per stage. aiokafka keeps one request in flight per broker, and
    # a flush waits for the flushes before it: with a shared outbox, each lead batch's flushes
    # queued behind the account stage's, which made crossings later (streams/outbox.py).
    outbox = Outbox(settings.kafka_bootstrap, settings.partitions, "leadstream-worker", fence.holds)
    # The models in use change when their files are edited (reload_models below): read them
    # from the stages, which switch between batches.

    def committed(topic: str, partition: int) -> int | None:
        # Faust's record of the offsets it committed (the next to read), which it has no public accessor for.
        return cast(Consumer, app.consumer)._committed_offset.get(TP(topic, partition))

    def log_end(topic: str, partition: int) -> int | None:
        try:  # aiokafka's high watermark: None until a fetch of the partition returned
            end: int | None = app.consumer.highwater(TP(topic, partition))
        except Exception:  # AssertionError when no longer assigned: not known, and the records are taken as read again
            return None
        return end

    log_reader = transactions.LogReader(settings)
    scorer = Scorer(models.current.engine, settings, lead_store, outbox, settings.partitions, committed, log_end,
                    log_reader.look_up, functools.partial(kafka_clients.end_offsets, settings), log_reader.log_start)
    rollup_outbox = Outbox(settings.kafka_bootstrap, settings.partitions, "leadstream-worker-accounts", fence.holds)
    rollup_stage = Rollup(models.current.engine, settings, account_store, rollup_outbox, log_reader.look_up, log_reader.log_start)
    sequences = (scorer.sequence, rollup_stage.sequence)

    def sought(offsets: Mapping[Any, int]) -> None:
        for sequence in sequences:
            sequence.seed(offsets)

    # Before the app starts: Faust's conductor binds the consumer's methods as it subscribes.
    seek_first.install(app.consumer, on_sought=sought, in_sequence=set().union(*(sequence.topics for sequence in sequences)))
    # No garbage collection while a batch is scored: it would only scan the batch's own
    # objects, alive until the batch ends (streams/collection.py).
    batch_pause = BatchPause(settings.gc_young_threshold > 0)

    async def stop_worker(work: str, exc: Exception) -> None:
        """A stage could not make a batch durable (Kafka refused or lost its outputs or states;
        input that makes scoring raise is dead-lettered, streams/isolation.py): the worker stops.
        Going on would pass the batch over: Faust restarts a failed agent on the next messages,
        and the live states already hold the batch, so its crossings would never be published.
        A new worker (restarted by its supervisor) recovers the states from the changelogs and
        scores again everything not committed."""
        cause: BaseException = exc
        if isinstance(exc, WriteFailed):  # the batch in flight's, which `work` waited for
            work, cause = f"writing a scored batch's outputs and states (waited for by {work})", exc.__cause__ or exc
        log.critical("%s failed: stopping the worker, so that a new one recovers from the changelogs and scores what was "
                     "not committed again: cause=%r", work, cause)
        await app.crash(exc)

    @app.service
    class OutboxLifecycle(mode.Service):
        async def on_stop(self) -> None:
            try:  # the last batches' flushes, so their messages are acknowledged
                await asyncio.wait_for(asyncio.gather(scorer.settle(), rollup_stage.settle()), timeout=5.0)
            except Exception as exc:  # stopping anyway: their messages are read again after a restart
                log.warning("stopping with a batch not written: cause=%r", exc)
            await outbox.stop()
            await rollup_outbox.stop()

    if settings.faust_sensors:
        from faust.sensors.prometheus import setup_prometheus_sensors

        setup_prometheus_sensors(app, pattern="/metrics", registry=WORKER_METRICS, name_prefix="leadstream_faust")
    else:

        @app.page("/metrics")
        async def metrics_page(self: View, request: Request) -> Response:
            return self.bytes(generate_latest(WORKER_METRICS), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    spare_member = spare.Spare()

    @app.timer(interval=app.conf.broker_heartbeat_interval)  # type: ignore[untyped-decorator]
    async def stay_in_group() -> None:
        # Well within the max poll interval, after which a consumer that fetched nothing leaves.
        spare_member.keep()

    async def on_revoked(sender: Any, revoked: Any = (), **kwargs: Any) -> None:
        metrics.REBALANCES.inc()
        metrics.READY.set(0)
        # The batch in flight ends (its states acknowledged) before the revoked partitions'
        # live states are dropped and any recovery reads the changelog's end.
        try:
            await scorer.revoke({tp.partition for tp in revoked if tp.topic == settings.topic_events})
            await rollup_stage.settle()
        except Exception as exc:
            await stop_worker("writing the last batch before a rebalance", exc)
            return
        fence.revoked()
        account_store.forget({tp.partition for tp in revoked if tp.topic == settings.topic_accounts})
        for sequence in sequences:
            sequence.reset()
        log.info("rebalance: partitions revoked count=%d", len(revoked))

    async def on_assigned(sender: Any, assigned: Any = (), **kwargs: Any) -> None:
        fetch_wait.install(app.consumer, settings.fetch_max_wait_ms)
        stream_idle.install(app)
        transactions.read_committed(app.consumer)
        consumer_stop.install(app.consumer)
        livelock.install(app.consumer)
        fence.assigned(app.consumer)
        spare_member.assigned(app.consumer)
        owned = sorted(tp.partition for tp in assigned if tp.topic == settings.topic_events)
        log.info("rebalance: partitions assigned events_partitions=%s", owned)
        split = assignor.split(assigned, {settings.topic_events: leads, settings.topic_accounts: accounts})
        if split is not None:  # before any recovery or batch: nothing was scored against missing states
            await stop_worker("checking the partitions assigned", split)

    # Faust awaits coroutine handlers; its signal types only name synchronous ones.
    app.on_partitions_revoked.connect(on_revoked)  # type: ignore[arg-type]
    app.on_partitions_assigned.connect(on_assigned)  # type: ignore[arg-type]
    # Worked out at each scrape, as the restores go: most of a recovery is the tables' bulk
    # restores, which Faust's own count never saw (it showed 0 while they ran), and which can
    # begin and end between two rounds of a timer.
    metrics.RECOVERY_REMAINING.set_function(lambda: _recovery_remaining(app, (leads, accounts)))
    metrics.EVENT_TIME_LAG.set_function(lambda: metrics.event_time_lag_s(settings.now_ms()))
    lag_probe: list[LagProbe] = []
    lag_out_of_files = OutOfFiles(log, "measuring the consumer lag")
    kafka_answering = True  # the broker answered the last lag probe

    def ready() -> bool:
        """For /readyz: scoring, and Kafka answering. A worker cut off from Kafka kept saying it
        was ready, so no alert on readiness fired (its views still answer from its tables)."""
        return _ready(app) and kafka_answering

    @app.timer(interval=5.0)  # type: ignore[untyped-decorator]  # Faust's timer decorator is untyped
    async def observe() -> None:
        """Readiness and consumer lag, as gauges."""
        nonlocal kafka_answering
        try:
            if not lag_probe:  # a reader of its own: the stages' may be reading a partition's holes for seconds
                lag_probe.append(await asyncio.to_thread(LagProbe, settings, transactions.LogReader(settings).look_up))
            waiting: set[tuple[str, int]] = set()
            for topic in (topic for topics in stage_topics.values() for topic in topics):
                lags = await asyncio.to_thread(lag_probe[0].lag, settings.app_id, topic)
                for partition, lag in lags.items():
                    metrics.CONSUMER_LAG.labels(topic, str(partition)).set(lag)
                    held_s = lag_probe[0].open_transaction_s(topic, partition, time.time())
                    metrics.OPEN_TRANSACTION_WAIT.labels(topic, str(partition)).set(held_s or 0.0)
                    # Behind an open transaction the worker has nothing it can read: not stalled.
                    if lag and held_s is None:
                        waiting.add((topic, partition))
            _stages_without_waiting(stage_topics, app.consumer.assignment(), waiting)
            if not kafka_answering:
                log.info("Kafka answers again: ready")
            kafka_answering = True
        except (KafkaError, OSError, ServiceError) as exc:  # ServiceError: the broker did not answer in time
            # A metric must never take the worker down; the next round tries again.
            metrics.CONSUMER_LAG.clear()  # a frozen figure would say all is well
            metrics.OPEN_TRANSACTION_WAIT.clear()
            if not lag_out_of_files.said(exc):  # no fault of Kafka's: it was said to be, at each round
                log.warning("consumer lag not measured, not ready until Kafka answers: cause=%r", exc)
                kafka_answering = False
        metrics.READY.set(1 if ready() else 0)

    @app.timer(interval=1.0)  # type: ignore[untyped-decorator]
    async def check_holes() -> None:
        """Holes in the input partitions' offsets looked up in the log. A timer of its own: in
        `observe`'s, a producer committing a transaction per message held the lag and readiness
        gauges for minutes (one lookup of each marker, 18 ms)."""
        for sequence in sequences:
            if sequence.holes_waiting():
                await asyncio.to_thread(sequence.check_holes)
    within_s = settings.batch_within_ms / 1000

    async def run_stage(stream: faust.StreamT[bytes], process: Process, stage: str, work: str) -> None:
        """Feeds a stage its batches. A batch's messages are acknowledged once its flushes are
        acknowledged by Kafka, which happens while the next batch is processed (streams/overlap.py)."""
        messages = _batches(stream)
        metrics.stage_started(stage)
        try:
            async for batch in batching.batches(messages, settings.batch_max_messages, settings.batch_max_bytes, within_s):
                with batch_pause:
                    await process([_consumed(message) for message in batch], _acknowledge(messages, batch, stage))
        except Exception as exc:
            await stop_worker(work, exc)

    @app.agent(events_topic)
    async def score(stream: faust.StreamT[bytes]) -> None:
        await run_stage(stream, scorer.process, "score", "the scoring stage")

    @app.agent(accounts_topic)
    async def rollup(stream: faust.StreamT[bytes]) -> None:
        await run_stage(stream, rollup_stage.process, "rollup", "the account stage")

    @app.timer(interval=settings.decay_interval_s)  # type: ignore[untyped-decorator]
    async def decay() -> None:
        # Every worker runs this timer; the index only holds leads of partitions it owns, and
        # is rebuilt once a rebalance's recovery is done.
        if not _ready(app):
            return
        now = scorer.now_ms()
        try:
            while await scorer.decay_due(now) == DECAY_CHUNK:
                await asyncio.sleep(DECAY_PAUSE_S)
            await scorer.clear_erasures()
            metrics.DECAY_SWEEPS.inc()
        except MembershipLost:
            membership.dropped("decay", ((settings.topic_events, partition) for partition in owned_partitions()))
        except Exception as exc:
            await stop_worker("the decay sweep", exc)

    def owned_partitions() -> set[int]:
        return {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == settings.topic_events}

    if settings.models_reload_s > 0:
        # One load at a time: the timer's and the account stage's (`Rollup.catch_up`).
        model_turns = asyncio.Lock()

        async def switch_models(load: Callable[[], Awaitable[Engine | None]]) -> None:
            # Not while tables recover: the decay index is rebuilt when they are, by then
            # under the new models too, if the files changed (the next poll sees it).
            if not _ready(app):
                return
            async with model_turns:
                engine = await load()
                if engine is None:
                    return
                try:
                    await scorer.use(engine, owned_partitions())
                except Exception as exc:  # the batch in flight, which it waits for, failed
                    await stop_worker("a model reload", exc)
                    return
                rollup_stage.use(engine)

        async def catch_up() -> None:
            await switch_models(lambda: models.catch_up(settings.models_reload_s))

        rollup_stage.catch_up = catch_up

        @app.timer(interval=settings.models_reload_s)  # type: ignore[untyped-decorator]
        async def reload_models() -> None:
            await switch_models(models.reload)

    @leads.on_recover
    async def index_decay() -> None:
        # Faust marks the recovery complete (ready, the stages and sweeps let go) once this returns.
        owned, began_s = owned_partitions(), time.monotonic()
        if not await scorer.rebuild_indexes(owned):
            return  # a rebalance began meanwhile: its recovery rebuilds them
        scorer.clocks.assigned(owned, scorer.wall_ms(scorer.now_ms()))
        log.info("recovery done: lead table ready leads=%d decay_steps_indexed=%d forgotten_leads_waiting=%d owned_partitions=%s "
                 "index_seconds=%.2f", len(lead_store), len(scorer.decay_index), len(scorer.erasures), sorted(owned),
                 time.monotonic() - began_s)

    @accounts.on_recover
    async def index_account_removals() -> None:
        # The emptied accounts' removals (streams/rollup.py `_emptied`), which only the table's bytes hold.
        began_s = time.monotonic()
        emptied = await rollup_stage.index_emptied(owned_partitions(), REBUILD_SLICE_S)
        log.info("account table recovered: emptied accounts indexed for removal count=%d index_seconds=%.2f", emptied,
                 time.monotonic() - began_s)

    def when_ready(handler: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
        """A view of the tables answers 503 while the worker is not ready. Until its tables are
        recovered a key may hold an older state or none (an answer would show old points, or
        none, as if they were the lead's), and while it rebalances it cannot tell which worker
        owns a key (Faust's routing raised a TypeError: 500). Checked before routing, and with
        no await between it and the read of the states. A worker that owns the key and does not
        answer (stopped, or killed: its partitions move to another worker after the consumer
        session timeout) is a 503 too, not the 500 of Faust's routing."""

        @functools.wraps(handler)
        async def get(view: View, request: Request, **kwargs: Any) -> Response:
            if not _ready(app):
                return view.json({"error": "this worker is not ready: it is recovering its tables from the changelogs "
                                           "or rebalancing; try again in a few seconds (GET /readyz says when it is)",
                                  "ready": False}, status=503, headers={"Retry-After": str(NOT_READY_RETRY_AFTER_S)})
            try:
                return await handler(view, request, **kwargs)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:  # only routing talks to another worker
                log.warning("a view's request not answered by the worker owning its key: cause=%r", exc)
                return view.json({"error": "the worker that owns this key does not answer (it may have stopped: its partitions "
                                           "go to another worker within the consumer session timeout); try again in a few seconds"},
                                 status=503, headers={"Retry-After": "5"})

        return get

    def explained(view: View, kind: str, key: str, store: LiveTable[Any], explain: Callable[[str, Any], dict[str, Any]],
                  shown: Callable[[dict[str, Any], str], tuple[dict[str, Any], str | None]] | None = None) -> Response:
        """A lead's or an account's explanation in each model it has a state in (404 without
        any, 500 naming the problem when its stored state cannot be read). `shown` keeps the
        states to show, and says why none is when it keeps none (given the worker's name)."""
        try:
            # Read, not kept live: the states the stages hold stay theirs alone. A forgotten
            # lead's marker and the offsets its states have read are no states of its; an id
            # merged into another lead is shown with no models.
            peeked = store.peek(key) or {}
            states = {model: state for model, state in peeked.items() if model not in LEAD_MARKERS}
        except StateError as exc:
            return view.json({"error": f"the stored state of {kind} {key!r} cannot be read: {exc}"}, status=500)
        # This worker owns the key (table_route): the one asked may be another, which forwarded
        # the request and sends on this answer, so the worker is named rather than "this worker".
        owner = f"the worker owning its partition {partition_for(key, settings.partitions)} ({app.conf.canonical_url})"
        if not states:
            return view.json({"error": f"no state for {kind} {key!r} on {owner}"}, status=404)
        if shown is not None:
            states, why = shown(states, owner)
            if why is not None:
                return view.json({"error": why}, status=404)
        models = {model: explain(model, state) for model, state in states.items() if model in scorer.models}
        target = stitching.merged_into(peeked) if kind == "lead" else None
        if not models and target is None:  # it answered 200 with no models
            return view.json({"error": f"no state for {kind} {key!r} in the models {owner} scores with; it has states of "
                                       f"models not in LEADSTREAM_MODELS_DIR: {', '.join(sorted(states))}"}, status=404)
        body: dict[str, Any] = {f"{kind}_id": key, "models": models}
        if target is not None:
            body["merged_into"] = target  # where its points went: ask for that lead
        return view.bytes(orjson.dumps(body), content_type="application/json")

    @app.page("/leads/{lead_id}/")
    class LeadView(View):
        @when_ready
        @routing.table_route(app, leads, "lead_id")
        async def get(self, request: Request, lead_id: str) -> Response:
            at = scorer.now_ms()
            return explained(self, "lead", lead_id, lead_store,
                             lambda model, state: scorer.engine.explain(model, lead_id, state, at))

    @app.page("/accounts/{account_id}/")
    class AccountView(View):
        @when_ready
        @routing.table_route(app, accounts, "account_id")
        async def get(self, request: Request, account_id: str) -> Response:
            return explained(self, "account", account_id, account_store,
                             lambda model, state: rollup_stage.engine.account_summary(model, account_id, state, top=ACCOUNT_VIEW_MEMBERS),
                             shown=lambda states, owner: _shown_accounts(rollup_stage.engine, account_id, states, owner,
                                                                            settings.empty_account_retention_ms))

    @app.page("/models/")
    class Models(View):
        async def get(self, request: Request) -> Response:
            return self.json(models.describe())

    @app.page("/healthz")
    class Health(View):
        async def get(self, request: Request) -> Response:
            return self.json({"status": "alive"})

    @app.page("/readyz")
    class Ready(View):
        async def get(self, request: Request) -> Response:
            is_ready = ready()
            metrics.READY.set(1 if is_ready else 0)
            if is_ready:
                return self.json({"ready": True})
            return self.json({"ready": False}, status=503, headers={"Retry-After": str(NOT_READY_RETRY_AFTER_S)})

    # /leads/ID (no trailing slash) was aiohttp's plain-text 404: it is sent on to /leads/ID/.
    cast(Any, app.web).web_app.middlewares.append(routing.append_slash)
    return app


def _shown_accounts(engine: Engine, account_id: str, states: dict[str, Any], owner: str,
                    retention_ms: int) -> tuple[dict[str, Any], str | None]:
    """The account's states the view shows, those read models have, and why none is when none
    is: not those of models without `[accounts]` (they keep its members only, so that an
    `[accounts]` added starts with them), nor those without members (the last one left: the
    account keeps its level and crossing count until it is removed, and read models got its
    tombstone)."""
    rolling = {model: state for model, state in states.items() if model in engine.rolling}
    shown = {model: state for model, state in rolling.items() if state.members}
    if shown:
        return shown, None
    if not rolling:
        return shown, (f"no model that rolls up accounts ([accounts]) has account {account_id!r} on {owner}: it has members only "
                       f"in models without [accounts] or not in LEADSTREAM_MODELS_DIR: {', '.join(sorted(states))}")
    since = max((left for state in rolling.values() if (left := state.last_left_ms()) is not None), default=None)
    when = "" if since is None else f" since {datetime.fromtimestamp(since / 1000, timezone.utc).isoformat(timespec='seconds')}"
    return shown, (f"account {account_id!r} has no members now{when} (its last member left) in {', '.join(sorted(rolling))} on "
                   f"{owner}, so read models no longer show it; it keeps its level and crossing count for a member that joins again "
                   f"until {retention_ms / 86_400_000:g} days after its last member left "
                   "(LEADSTREAM_EMPTY_ACCOUNT_RETENTION_MS), when it is removed")


def _ready(app: faust.App) -> bool:
    return not app.rebalancing and _recovery(app).completed.is_set()


def _recovery_remaining(app: faust.App, tables: Iterable[bulk_store.BulkRestoredTable]) -> int:
    """Changelog records the worker has left to read before its tables are ready: those of
    Faust's own recovery (partitions whose end the stores could not claim), and those of the
    tables' bulk restores, which run once it is over."""
    return _recovery(app).active_remaining_total() + sum(table.store.restore_remaining for table in tables)


def _stages_without_waiting(stage_topics: Mapping[str, tuple[str, ...]], assigned: Iterable[TP], waiting: set[tuple[str, int]]) -> None:
    """Each stage none of whose partitions this worker holds has messages waiting, as the lag
    just measured shows, has not stalled: a worker with nothing to read (a spare, partitions
    without traffic) is not stuck, however old its last batch."""
    held = [(tp.topic, tp.partition) for tp in assigned]
    for stage, topics in stage_topics.items():
        if not any(key in waiting for key in held if key[0] in topics):
            metrics.STAGES.moved(stage, time.time())


def _batches(stream: faust.StreamT[bytes]) -> faust.Stream[bytes]:
    # An agent's stream is a faust.Stream, whose `take_events` the interface type does not name.
    return cast(faust.Stream[bytes], stream)


def _acknowledge(stream: faust.Stream[bytes], batch: list[Any], stage: str) -> Done:
    """What a stage does once a batch's outputs and states are acknowledged by Kafka, or once it
    is dropped unwritten (streams/membership.py)."""

    async def acknowledge(written: bool) -> None:
        if not written:
            _let_go(stream.app.consumer, batch)
            return
        for event in batch:
            await stream.ack(event)
        metrics.batch_done(stage)

    return acknowledge


def _let_go(consumer: Any, batch: list[Any]) -> None:
    """Lets the messages of a batch dropped unwritten go, unacknowledged. Faust's rebalance waits
    until every message handed to a stream is acknowledged (`Consumer.wait_empty`), so they may not
    stay as they are; acknowledged, their offsets would be committed, by a member still current
    (one whose heartbeat the check gave up on), and the records lost. Marked as acknowledged
    (which `Consumer.ack` then passes over) and taken off its list, they are neither waited for
    nor committed: the rebalance sends their partitions back to the committed offsets."""
    unacked = consumer._unacked_messages
    with ack_lock:  # Faust's own, around the same fields
        for event in batch:
            event.message.acked = True
            unacked.discard(event.message)


def _recovery(app: faust.App) -> Recovery:
    # The table manager's interface type does not name the recovery service its class has.
    return cast(TableManager, app.tables).recovery


def _consumed(event: Any) -> Consumed:
    message = event.message
    value = message.value
    # Faust keeps aiokafka's timestamp in seconds; the broker's is whole milliseconds.
    timestamp_ms = round(message.timestamp * 1000) if message.timestamp and message.timestamp > 0 else 0
    headers = message.headers
    if value is None:
        return Consumed(message.topic, message.partition, message.offset, message.key, b"", True, timestamp_ms,
                        headers=tuple(headers or ()))
    return Consumed(message.topic, message.partition, message.offset, message.key, value, False, timestamp_ms,
                    origin=stitching.origin(headers) if headers else None)
