"""`leadstream demo`: start everything, stream a month of sample behaviour, show the hot leads.

Leaves the services and the worker running so the user can explore (the web view, `leadstream
send`, the topics), and says how to stop it all.
"""

from __future__ import annotations

import time

import orjson

from streams import processes, services
from streams.bench import workload
from streams.errors import ServiceError
from streams.lag import LagProbe
from streams.send import open_producer, produce
from streams.settings import Settings
from streams.topics import ensure_topics

DAY_MS = 86_400_000
DEMO_LEADS = 3_000
DEMO_EVENTS = 60_000


def saas_story(now_ms: int) -> list[dict]:
    """A few product-led sign-ups for the start-small SaaS model: some activate, some don't."""
    events = []
    for n in range(40):
        lead = f"saas-user-{n:03d}"
        steps = ["signup", "created_task", "created_project", "created_task", "invited_teammate"][: 1 + n % 5]
        for i, kind in enumerate(steps):
            events.append({"event_id": f"saas-{n}-{i}", "lead_id": lead, "type": kind, "product": "saas",
                           "time": now_ms - (5 - i) * 3_600_000})
    return events


def start_worker(settings: Settings) -> None:
    if processes.running("worker", settings):
        print("worker: already running")
        return
    pid, log = processes.start_background("worker", ["worker"], settings)
    probe = processes.WorkerProcess(settings)
    deadline = time.monotonic() + 120
    while probe.get("/readyz")[0] != 200:
        if not processes.alive(pid):
            raise ServiceError(f"the worker exited while starting; see {log}")
        if time.monotonic() > deadline:
            raise ServiceError(f"the worker was not ready within 120 s; see {log}")
        time.sleep(0.5)
    print(f"worker: started (pid {pid}); log: {log}")


def read_all(settings: Settings, topic: str) -> list[tuple[bytes | None, dict]]:
    """Every record of a topic so far, as (key, parsed value)."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest",
                             group_id=None, enable_auto_commit=False, consumer_timeout_ms=2000)
    records = [(message.key, orjson.loads(message.value)) for message in consumer]
    consumer.close()
    return records


def run_demo(settings: Settings) -> int:
    for line in services.up(settings):
        print(line)
    ensure_topics(settings)
    start_worker(settings)

    now_ms = int(time.time() * 1000)
    events = list(workload.generate(DEMO_EVENTS, DEMO_LEADS, seed=2026, start_ms=now_ms - 30 * DAY_MS, span_ms=30 * DAY_MS))
    events += saas_story(now_ms)
    producer = open_producer(settings)
    try:
        sent, messages = produce(producer, settings.topic_events, ((e["lead_id"], orjson.dumps(e)) for e in events), 200)
    finally:
        producer.close()
    print(f"sent {sent} sample events ({messages} Kafka messages) covering the last 30 days")

    probe = LagProbe(settings.kafka_bootstrap)
    try:
        deadline = time.monotonic() + 300
        while any(probe.lag(settings.app_id, settings.topic_events).values()) and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        probe.close()
    time.sleep(1.0)

    scores = list({key: value for key, value in read_all(settings, settings.topic_scores)}.values())
    hottest = sorted(scores, key=lambda s: (-s["score"], s["lead_id"]))[:15]
    print("\nHottest leads")
    print(f"{'lead':<16} {'model':<18} {'score':>7} {'0-100':>6} {'cell':>5} {'temperature':<12} {'level':<10} top reasons")
    for s in hottest:
        reasons = ", ".join(f"{r['rule']} {r['points']:+g}" for r in s.get("top_reasons", [])[:3])
        print(f"{s['lead_id']:<16} {s['model']:<18} {s['score']:>7.1f} {s['normalized']:>6} {s['cell'] or '-':>5} "
              f"{s['temperature']:<12} {s['level']:<10} {reasons}")
    crossings = [value for _, value in read_all(settings, settings.topic_crossings)]
    ups = [c for c in crossings if c["direction"] == "up"]
    print(f"\nThreshold crossings fired: {len(crossings)} ({len(ups)} up, {len(crossings) - len(ups)} down); the latest:")
    for c in sorted(crossings, key=lambda c: c["time"])[-10:]:
        subject = c["lead_id"] if c["kind"] == "lead" else c["account_id"]
        print(f"  {c['kind']:<7} {subject:<16} {c['model']:<18} "
              f"{c['from_level']} -> {c['to_level']} at score {c['score']:.1f} ({c['cell'] or 'no grid'})")
    print(
        f"\nExplore: curl http://127.0.0.1:{settings.worker_port}/leads/{hottest[0]['lead_id'] if hottest else 'LEAD'}/"
        f"  (the explanation of a lead's score)"
        "\nStop everything: .venv/bin/leadstream services down"
    )
    return 0
