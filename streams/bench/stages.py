"""`leadstream bench stages`: the worker's two stages in one process, without a broker.

The pipeline benchmark runs the whole worker on the real broker, where Kafka's clients, the
broker itself and the benchmark share two cores, so a change of a tenth in the stages' own
cost is lost in the noise of a few runs. This one runs only what the worker adds: the scoring
stage (`Scorer.process`: decoding, the engine, summaries, state encoding, the tables) and the
account stage (`Rollup.process`) over the pipeline benchmark's workload, packed in the same
envelopes, in batches of 250 messages (50,000 events; the worker's batches at catch-up in the
pipeline benchmark held 48-383 messages), with the collector used as the worker uses it. The outbox counts the
records and bytes each batch would send instead of sending them; the account updates of each
scoring batch are handed to the account stage, as Kafka would after the flush.

Figures are CPU time (`time.process_time`) per event of each stage; the workload is generated
before any timing. Compare commits by alternating runs of it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from collections import Counter, defaultdict
from typing import Any

import orjson

from scoring import Engine, load_model
from streams import lead_states
from streams.account_table import AccountTable
from streams.bench import print_figures, workload
from streams.bench.engine import MODEL_FILE
from streams.collection import BatchPause, tune_collector
from streams.envelope import pack_by_partition
from streams.outbox import Headers, Outbox
from streams.rollup import Rollup
from streams.scorer import Scorer
from streams.settings import Settings
from streams.stage import Consumed, LiveTable, MemoryData

DAY_MS = 86_400_000
BATCH_MESSAGES = 250


class CountingOutbox(Outbox):
    """An outbox whose flush counts what it would send, by topic; the account updates it is
    given are kept for the account stage instead."""

    def __init__(self, partitions: int, accounts_topic: str) -> None:
        super().__init__("", partitions)
        self.accounts_topic = accounts_topic
        self.records: Counter[str] = Counter()
        self.bytes = 0
        self.account_updates: list[Consumed] = []
        self._offsets: Counter[int] = Counter()  # per partition, as Kafka numbers them

    def add(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None, headers: Headers = ()) -> None:
        if topic == self.accounts_topic and value is not None and partition is not None:
            self.account_updates.append(Consumed(topic, partition, self._offsets[partition], key, value))
            self._offsets[partition] += 1
            return
        super().add(topic, key, value, partition, headers)

    async def flush(self) -> None:
        pending, self._pending = self._pending, defaultdict(list)
        for (topic, _), records in pending.items():
            self.records[topic] += len(records)
            self.bytes += sum(len(value or b"") + len(key or b"") for key, value, _ in records)


def messages(settings: Settings, events: int, leads: int, seed: int, events_per_message: int) -> list[Consumed]:
    """The workload as the worker consumes it: envelopes of one partition's leads, in offset
    order interleaved across partitions."""
    now_ms = int(time.time() * 1000)
    data = workload.serialized(events, leads, seed, now_ms - 30 * DAY_MS, 30 * DAY_MS)
    offsets: Counter[int] = Counter()
    out = []
    for partition, value in pack_by_partition(((orjson.loads(e)["lead_id"], e) for e in data), settings.partitions, events_per_message):
        out.append(Consumed(settings.topic_events, partition, offsets[partition], None, value))
        offsets[partition] += 1
    out.sort(key=lambda message: (message.offset, message.partition))
    return out


async def run(settings: Settings, batch: list[Consumed], events: int) -> dict[str, Any]:
    engine = Engine([load_model(MODEL_FILE)])
    outbox = CountingOutbox(settings.partitions, settings.topic_accounts)
    leads = LiveTable(MemoryData(), "leads-changelog", settings.partitions, settings.live_leads, lead_states.decode)
    accounts = AccountTable(MemoryData(), "accounts-changelog", settings.partitions, settings.live_leads)
    scorer = Scorer(engine, settings, leads, outbox, settings.partitions)
    rollup = Rollup(engine, settings, accounts, outbox)
    pause = BatchPause(settings.gc_young_threshold > 0)
    size = BATCH_MESSAGES
    scoring_s = rollup_s = 0.0
    batches = crossings = 0
    for start in range(0, len(batch), size):
        began = time.process_time()
        with pause:
            stats = await scorer.process(batch[start : start + size])
        scored = time.process_time()
        updates, outbox.account_updates = outbox.account_updates, []
        with pause:
            await rollup.process(updates)
        scoring_s += scored - began
        rollup_s += time.process_time() - scored
        batches += 1
        crossings += len(stats.crossings)
    return {
        "events": events,
        "batches": batches,
        "scoring_us_per_event": round(scoring_s / events * 1e6, 2),
        "rollup_us_per_event": round(rollup_s / events * 1e6, 2),
        "us_per_event": round((scoring_s + rollup_s) / events * 1e6, 2),
        "stages_events_per_s": round(events / (scoring_s + rollup_s)),
        "lead_crossings": crossings,
        "records_out": dict(sorted(outbox.records.items())),
        "bytes_out_per_event": round(outbox.bytes / events, 1),
    }


def main(args: argparse.Namespace, settings: Settings) -> int:
    started = time.perf_counter()
    batch = messages(settings, args.events, args.leads, args.seed, args.events_per_message)
    figures: dict[str, Any] = {"leads": args.leads, "events_per_message": args.events_per_message,
                               "batch_messages": BATCH_MESSAGES, "generate_s": round(time.perf_counter() - started, 1)}
    thresholds = gc.get_threshold()
    tune_collector(settings.gc_young_threshold)
    try:
        figures.update(asyncio.run(run(settings, batch, args.events)))
    finally:  # as it was: the command also runs inside other processes (the tests)
        gc.set_threshold(*thresholds)
        gc.unfreeze()
    print_figures(figures, args.json)
    return 0
