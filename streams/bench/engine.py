"""`leadstream bench engine`: the pure scoring engine against a plain orjson parse loop.

The workload is generated before any timing, from a seed, so runs are reproducible: the shared
B2B workload of streams/bench/workload.py (half the events on leads drawn uniformly, half
Zipf-skewed; e-mail opens and clicks, page views with URLs, form fills, profile updates,
negative events) scored by the example B2B model, with 1% redelivered duplicates and a few
late events. The loops run over the same bytes in the same process:

- parse only: `orjson.loads` of every event;
- engine: `engine.parse` (msgspec decoding into checked events) and `apply_batch` in batches of
  1000 events against a dict of live states, encoding each changed state with `to_bytes()` once
  per batch (its changelog record) as soon as the batch's last event of its lead is applied
  (`apply_batch`'s `settled`), as the stream worker does (streams/lead_states.py: states
  stay live between batches; bytes are decoded only after a recovery, which
  `decode_us_per_state` measures);
- engine with a tuned collector: the first loop again with the collector used as the worker
  uses it (streams/collection.py: tuned at start-up, LEADSTREAM_GC_YOUNG_THRESHOLD, and paused
  during each batch); the collector takes a quarter to a third of the first loop's time on
  this workload;
- two yardsticks, neither of them leadstream: the naive dict-increment scorer that issue 3
  measures the engine against (orjson parse, the lead's total plus its event type's points),
  and a minimal durable scorer, the least any scorer whose state survives a restart must do
  per event here: the naive one, plus dropping a repeated event id (the last 64 kept per lead)
  and writing each changed lead's state (its points and ids) once per batch of 1000 events.

`summaries_skippable_share` is the share of changed states whose summary the batch did not
change (`BatchResult.score_changed`): score changes the worker does not publish.

Where the time goes: `py-spy record -f raw -o profile.txt -- leadstream bench engine` (py-spy is
in the dev extra).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import random
import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable

import msgspec
import orjson

from scoring import Engine, LeadState, load_model
from scoring.state import right_sized
from streams.bench import print_figures, workload
from streams.settings import Settings
from streams.collection import BatchPause, tune_collector

BATCH_EVENTS = 1000
START_MS = 1_761_955_200_000  # 2025-11-01T00:00:00Z
SPAN_MS = 30 * 86_400_000
LATE_MS = 3 * 86_400_000  # beyond the b2b model's 1 day of lateness for an active lead
MODEL_FILE = Path(__file__).resolve().parents[2] / "scoring" / "models" / "b2b.toml"


def generate(events: int, leads: int, seed: int) -> list[bytes]:
    """The serialized workload: the shared B2B behaviour (streams/bench/workload.py), with 1%
    of the events replaced by redeliveries of a recent event and 0.2% sent 3 days late."""
    rng = random.Random(seed)
    out: list[bytes] = []
    for event in workload.generate(events, leads, seed, START_MS, SPAN_MS):
        if out and rng.random() < 0.01:
            out.append(out[-rng.randint(1, min(len(out), 500))])
            continue
        if rng.random() < 0.002:
            event["time"] -= LATE_MS
        out.append(right_sized(orjson.dumps(event)))
    return out


def run(data: list[bytes], engine: Engine) -> dict[str, Any]:
    """Times the loops over `data`; returns the figures."""
    parse_s = min(_timed(lambda: _parse_only(data)) for _ in range(2))
    counts = {"transitions": 0, "late": 0, "rejected": 0, "states_written": 0, "score_changed": 0}
    store: dict[tuple[str, str], LeadState] = {}
    written: dict[tuple[str, str], bytes] = {}
    engine_s = _timed(lambda: _score(data, engine, store, written, counts, BatchPause(False)))
    leads_scored, outcome = len(store), _fingerprint(store)
    raw = list(written.values())
    del store, written  # the next loop starts from nothing, as this one did

    # The same loop with the collector tuned as the worker tunes it at start-up: a batch's live
    # events and states are then not scanned and promoted several times over before it ends.
    tuned_store: dict[tuple[str, str], LeadState] = {}
    thresholds = gc.get_threshold()
    tune_collector(Settings.gc_young_threshold)
    try:
        tuned_s = _timed(lambda: _score(data, engine, tuned_store, {}, None, BatchPause(True)))
        # The codec as the worker uses it, collector tuned: encoding a changed state for its
        # changelog record, and decoding one a recovery restored.
        encode_s = _timed(lambda: [state.to_bytes() for state in tuned_store.values()])
        decode_s = _timed(lambda: [LeadState.from_bytes(value) for value in raw])
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
    assert _fingerprint(tuned_store) == outcome
    del tuned_store
    points: dict[str, float] = {}
    for rule in engine.models[0].rules:
        points.setdefault(rule.event, rule.points)
    naive_s = _timed(lambda: _naive(data, points))
    minimal_s = _timed(lambda: _minimal_durable(data, points))
    sizes = sorted(map(len, raw))
    parse_rate = len(data) / parse_s
    engine_rate = len(data) / engine_s
    return {
        "events": len(data),
        "leads_scored": leads_scored,
        "engine_events_per_s": round(engine_rate),
        "parse_only_events_per_s": round(parse_rate),
        "ratio": round(engine_rate / parse_rate, 3),
        "us_per_event": round(1e6 / engine_rate, 2),
        "engine_gc_tuned_events_per_s": round(len(data) / tuned_s),
        "ratio_gc_tuned": round(len(data) / tuned_s / parse_rate, 3),
        "naive_scorer_events_per_s": round(len(data) / naive_s),
        "minimal_durable_events_per_s": round(len(data) / minimal_s),
        "minimal_durable_ratio": round(len(data) / minimal_s / parse_rate, 3),
        "bytes_per_lead_state": round(sum(sizes) / len(sizes), 1),
        "bytes_per_lead_state_p99": sizes[int(len(sizes) * 0.99)],
        "bytes_per_lead_state_max": sizes[-1],
        "encode_us_per_state": round(encode_s / len(raw) * 1e6, 2),
        "decode_us_per_state": round(decode_s / len(raw) * 1e6, 2),
        "states_written_per_batch": round(counts["states_written"] * BATCH_EVENTS / len(data), 1),
        "summaries_skippable_share": round(1 - counts["score_changed"] / max(1, counts["states_written"]), 3),
        "transitions": counts["transitions"],
        "late": counts["late"],
        "rejected": counts["rejected"],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "python": sys.version.split()[0],
    }


def _score(
    data: list[bytes], engine: Engine, store: dict[tuple[str, str], LeadState], written: dict[tuple[str, str], bytes],
    counts: dict[str, int] | None, pause: BatchPause,
) -> None:
    """The engine as the worker drives it: batches of parsed events against live states, each
    changed state encoded once per batch (`written` keeps the last bytes of each)."""
    parse = engine.parse
    get = store.get

    def settled(key: tuple[str, str], state: LeadState, score_changed: bool) -> None:
        store[key] = state
        written[key] = state.to_bytes()

    for start in range(0, len(data), BATCH_EVENTS):
        with pause:
            result = engine.apply_batch([parse(raw) for raw in data[start : start + BATCH_EVENTS]], lambda model, lead: get((model, lead)), settled)
        if counts is not None:
            counts["transitions"] += len(result.transitions)
            counts["late"] += len(result.late)
            counts["rejected"] += len(result.rejected) + len(result.unknown_type)
            counts["states_written"] += len(result.states)
            counts["score_changed"] += len(result.score_changed)


def _fingerprint(store: dict[tuple[str, str], LeadState]) -> str:
    """A digest of every state's values, to check that two loops computed the same."""
    digest = hashlib.sha256()
    for key in sorted(store):
        digest.update(orjson.dumps((key, store[key].as_dict())))
    return digest.hexdigest()


def _naive(data: list[bytes], points: dict[str, float]) -> None:
    loads = orjson.loads
    totals: dict[str, float] = {}
    total, points_of = totals.get, points.get
    for raw in data:
        event = loads(raw)
        lead = event["lead_id"]
        totals[lead] = total(lead, 0) + points_of(event["type"], 0)


def _minimal_durable(data: list[bytes], points: dict[str, float]) -> None:
    loads, encode = orjson.loads, msgspec.msgpack.encode
    states: dict[str, list[Any]] = {}  # lead -> [points, recent event ids]
    state_of, points_of = states.get, points.get
    for start in range(0, len(data), BATCH_EVENTS):
        changed: dict[str, list[Any]] = {}
        for raw in data[start : start + BATCH_EVENTS]:
            event = loads(raw)
            lead = event["lead_id"]
            state = state_of(lead)
            if state is None:
                state = states[lead] = [0, {}]
            ids, event_id = state[1], event["event_id"]
            if event_id in ids:
                continue
            ids[event_id] = None
            if len(ids) > 64:
                del ids[next(iter(ids))]
            state[0] += points_of(event["type"], 0)
            changed[lead] = state
        for state in changed.values():
            encode((state[0], tuple(state[1])))


def _parse_only(data: list[bytes]) -> None:
    loads = orjson.loads
    for raw in data:
        loads(raw)


def _timed(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def main(args: argparse.Namespace, settings: Settings) -> int:
    engine = Engine([load_model(MODEL_FILE)])
    started = time.perf_counter()
    data = generate(args.events, args.leads, args.seed)
    figures = {"seed": args.seed, "leads": args.leads, "generate_s": round(time.perf_counter() - started, 1)}
    figures.update(run(data, engine))
    print_figures(figures, args.json)
    return 0

