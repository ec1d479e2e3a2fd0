"""`leadstream bench collector`: batch calls through one collector process, against `leadstream send`.

In one run, on topics of its own:
1. a `leadstream collector` child process, ready once connected to Kafka;
2. throughput: concurrent clients on loopback send `/v1/batch` calls of 100 events back to back
   for `--seconds`; `events_per_s` counts events answered 200, so acknowledged by Kafka;
3. latency: batch calls offered at 5,000 events/s for `--seconds`, open loop (each call leaves on
   its schedule whatever the earlier ones do, so a stall is not hidden by the client waiting);
   a call's latency runs from its scheduled departure to its response;
4. baseline: the same events, as the collector writes them, through `leadstream send` with
   envelopes of 100 events.
The calls are the B2B workload (streams/bench/workload.py) as Segment calls: page views, tracks
and identifies (which go to the profiles topic).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import statistics
import time
from datetime import datetime, timezone
from typing import Any, Iterator

import orjson

from streams.bench import print_figures, workload
from streams.bench.pipeline import DAY_MS, bench_pipeline
from streams.processes import CollectorProcess, free_port
from streams.send import send_file
from streams.settings import Settings

BATCH_EVENTS = 100
CLIENTS = 8
OFFERED_EVENTS_PER_S = 5000
WRITE_KEY = "bench"
#: Events generated, and held, for each second of a load phase: enough for the throughput phase.
GENERATED_EVENTS_PER_S = 60_000


def segment_call(event: dict[str, Any]) -> dict[str, Any]:
    """A workload event as the Segment call an app's library would have sent for it."""
    call: dict[str, Any] = {
        "userId": event["lead_id"],
        "messageId": event["event_id"],
        "timestamp": datetime.fromtimestamp(event["time"] / 1000, timezone.utc).isoformat(),
    }
    if event["type"] == "page_view":
        call.update(type="page", properties=event["properties"])
    elif event["type"] == "identify":
        call.update(type="identify", traits=event["traits"])
    else:
        call.update(type="track", event=event["type"], properties=event.get("properties", {}))
    return call


def batches(events: list[dict[str, Any]]) -> list[bytes]:
    return [
        orjson.dumps({"batch": [segment_call(e) for e in events[i : i + BATCH_EVENTS]]})
        for i in range(0, len(events), BATCH_EVENTS)
    ]


class Load:
    """Clients of one collector: an aiohttp session with keep-alive connections, bodies prepared beforehand."""

    def __init__(self, url: str, bodies: list[bytes]) -> None:
        self.url = f"{url}/v1/batch"
        self.bodies = bodies
        self.accepted = 0
        self.failed = 0

    def _next_bodies(self) -> Iterator[bytes]:
        while True:
            yield from self.bodies

    async def _post(self, session: Any, body: bytes) -> None:
        async with session.post(self.url, data=body) as response:
            payload = await response.read()
        if response.status == 200:
            self.accepted += orjson.loads(payload)["accepted"]
        else:
            self.failed += 1

    async def saturate(self, seconds: float) -> float:
        """events/s accepted with CLIENTS calls always in flight."""
        import aiohttp

        bodies = self._next_bodies()
        async with _session(aiohttp) as session:
            deadline = time.perf_counter() + seconds

            async def client() -> None:
                while time.perf_counter() < deadline:
                    await self._post(session, next(bodies))

            started = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(CLIENTS)))
            return self.accepted / (time.perf_counter() - started)

    async def offer(self, events_per_s: int, seconds: float) -> list[float]:
        """Request latencies (ms) of calls leaving on a fixed schedule."""
        import aiohttp

        interval_s = BATCH_EVENTS / events_per_s
        bodies = self._next_bodies()
        latencies: list[float] = []
        async with _session(aiohttp) as session:

            async def timed(departure: float) -> None:
                await self._post(session, next(bodies))
                latencies.append((time.perf_counter() - departure) * 1000)

            started = time.perf_counter()
            calls = []
            for n in range(int(seconds / interval_s)):
                departure = started + n * interval_s
                await asyncio.sleep(max(0.0, departure - time.perf_counter()))
                calls.append(asyncio.create_task(timed(departure)))
            await asyncio.gather(*calls)
        return latencies


def _session(aiohttp: Any) -> Any:
    return aiohttp.ClientSession(
        auth=aiohttp.BasicAuth(WRITE_KEY, ""),
        headers={"Content-Type": "application/json"},
        connector=aiohttp.TCPConnector(limit=64),
    )


def run(settings: Settings, seconds: float, leads: int, seed: int) -> dict[str, Any]:
    with bench_pipeline(settings, metrics=False, collector_write_keys=f"{WRITE_KEY}=bench",
                        collector_port=free_port(), collector_metrics_port=free_port()) as settings:
        return _measure(settings, seconds, leads, seed)


def _measure(settings: Settings, seconds: float, leads: int, seed: int) -> dict[str, Any]:
    # Enough distinct events for GENERATED_EVENTS_PER_S over the throughput phase; beyond, they repeat.
    now_ms = int(time.time() * 1000)
    events = list(workload.generate(int(GENERATED_EVENTS_PER_S * seconds), leads, seed, now_ms - DAY_MS, DAY_MS))
    load = Load(f"http://127.0.0.1:{settings.collector_port}", batches(events))
    collector = CollectorProcess(settings)
    try:
        collector.start(ready_timeout_s=60)
        events_per_s = asyncio.run(load.saturate(seconds))
        accepted = load.accepted
        latencies = sorted(asyncio.run(load.offer(OFFERED_EVENTS_PER_S, seconds)))
    finally:
        collector.stop()
    jsonl = settings.state_dir.parent / "events.jsonl"
    jsonl.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # its summary line is not part of the figures
        send_file(jsonl, settings, events_per_message=BATCH_EVENTS)
    baseline = len(events) / (time.perf_counter() - started)
    return {
        "events_per_s": round(events_per_s),
        "latency_ms_p50": round(statistics.median(latencies), 1),
        "latency_ms_p99": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 1),
        "offered_events_per_s": OFFERED_EVENTS_PER_S,
        "send_baseline_events_per_s": round(baseline),
        "batch_events": BATCH_EVENTS,
        "clients": CLIENTS,
        "seconds": seconds,
        "events_accepted": accepted,
        "calls_refused": load.failed,
        "leads": leads,
    }


def main(args: argparse.Namespace, settings: Settings) -> int:
    figures = run(settings, args.seconds, args.leads, args.seed)
    print_figures(figures, args.json)
    return 0
