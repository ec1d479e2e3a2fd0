"""`leadstream demo`: start everything, stream a month of sample behaviour, show the hot leads.

Leaves the services and the worker running so the user can explore (the web view, `leadstream
send`, the topics), and says how to stop it all.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

import orjson

from streams import processes, services
from streams.bench import workload
from streams.errors import ServiceError
from streams.history import read_to_end
from streams.lag import LagProbe
from streams.send import open_producer, produce
from streams.settings import PROJECT_ROOT, SOURCE_TREE, Settings
from streams.topics import ensure_topics, producer_partitions

DAY_MS = 86_400_000
DEMO_LEADS = 3_000
DEMO_EVENTS = 60_000


def saas_story(now_ms: int) -> list[dict[str, Any]]:
    """A few product-led sign-ups for the start-small SaaS model: some activate, some don't."""
    events = []
    for n in range(40):
        lead = f"saas-user-{n:03d}"
        steps = ["signup", "created_task", "created_project", "created_task", "invited_teammate"][: 1 + n % 5]
        for i, kind in enumerate(steps):
            events.append({"event_id": f"saas-{n}-{i}", "lead_id": lead, "type": kind, "product": "saas",
                           "time": now_ms - (5 - i) * 3_600_000})
    return events


def background_names(settings: Settings) -> tuple[str, str]:
    """The names the demo's worker and Redis sink run under: the app id's, like its consumer
    groups, so demos of different app ids (and the tests') do not take each other's processes."""
    return f"{settings.app_id}-worker", f"{settings.app_id}-sink-redis"


def start(name: str, args: list[str], settings: Settings, port: tuple[int, str], ready: Callable[[], bool]) -> None:
    """Start `leadstream ARGS` in the background unless it runs already; wait until ready.
    `port` is where it answers `ready` (and the setting naming it): it must be free first, or
    another process (another app id's demo, a test's worker) would answer for it while it exits."""
    if processes.running(name, settings):
        print(f"{name}: already running")
        return
    processes.check_port(settings.bind_host, *port)
    pid, log = processes.start_background(name, args, settings)
    deadline = time.monotonic() + 120
    while not ready():
        if not processes.alive(pid):
            raise ServiceError(f"{name} exited while starting; see {log}")
        if time.monotonic() > deadline:
            raise ServiceError(f"{name} was not ready within 120 s; see {log}")
        time.sleep(0.5)
    print(f"{name}: started (pid {pid}); log: {log}")


def wait_processed(probe: LagProbe, group: str, topics: list[str], name: str, settings: Settings, timeout_s: float = 300) -> None:
    """Until the background process `name` (consumer group `group`) has processed `topics`;
    a ServiceError naming its log if it stops meanwhile or does not catch up in time."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            probe.wait_caught_up(group, topics, timeout_s=2, poll_s=0.5)
            return
        except TimeoutError:
            pass
        log = processes.log_file(name, settings)
        if processes.running(name, settings) is None:
            raise ServiceError(f"{name} stopped before it processed the sample events; see {log}")
        if time.monotonic() > deadline:
            raise ServiceError(f"{name} did not process the sample events within {timeout_s:.0f} s; see {log}")


def answers(port: int, path: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def leadstream_command() -> str:
    """How the user runs this leadstream, for the commands the demo suggests: `leadstream` when
    PATH finds this installation's script, else the script's path (`.venv/bin/leadstream` from a
    clone's root, as `make demo` runs it). The demo said `.venv/bin/leadstream` to every user: a pip
    install has no such file, and `services down` there said "No such file or directory"."""
    script = Path(sys.executable).parent / "leadstream"
    on_path = shutil.which("leadstream")
    if not script.is_file() or (on_path is not None and os.path.samefile(on_path, script)):
        return "leadstream"
    return str(script.relative_to(Path.cwd())) if script.is_relative_to(Path.cwd()) else str(script)


def _how_to_edit(settings: Settings, command: str) -> str:
    """Where to edit the models. Those a pip install ships are pip's files in site-packages, which
    the next install replaces (and a system-wide one this user cannot write): the user edits a copy."""
    if SOURCE_TREE or not settings.models_dir.is_relative_to(PROJECT_ROOT):
        return (f"edit {settings.models_dir}/*.toml"
                "\n                                            and the running worker applies it, or says what is wrong")
    return (f"shipped with leadstream; to edit them, {command} models --copy-to my-models"
            "\n                                            and run the worker with LEADSTREAM_MODELS_DIR=my-models")


def explore(settings: Settings) -> str:
    """The demo's last words: what to look at next, and how to stop it all."""
    command = leadstream_command()
    return (
        f"\nExplore: curl http://127.0.0.1:{settings.worker_port}/leads/LEAD_ID/  (why a lead has its score)"
        f"\n         curl http://127.0.0.1:{settings.worker_port}/models/  (the models in use: {_how_to_edit(settings, command)})"
        f"\n         curl http://127.0.0.1:{settings.worker_port}/metrics"
        f"\n         {command} history --out history.jsonl   (the events, to score or review offline:"
        f"\n         {command} review --events history.jsonl --outcomes YOUR_CRM_EXPORT.csv --table)"
        f"\nStop everything: {command} services down"
    )


def run_demo(settings: Settings) -> int:
    from sinks.redis_model import print_top
    from sinks.runner import group_id

    for line in services.up(settings):
        print(line)
    ensure_topics(settings)
    worker, sink = background_names(settings)
    start(worker, ["worker"], settings, (settings.worker_port, "LEADSTREAM_WORKER_PORT"),
          lambda: answers(settings.worker_port, "/readyz"))
    start(sink, ["sink", "redis"], settings, (settings.metrics_port, "LEADSTREAM_METRICS_PORT"),
          lambda: answers(settings.metrics_port, "/readyz"))

    now_ms = int(time.time() * 1000)
    events = list(workload.generate(DEMO_EVENTS, DEMO_LEADS, seed=2026, start_ms=now_ms - 30 * DAY_MS, span_ms=30 * DAY_MS))
    events += saas_story(now_ms)
    producer = open_producer(settings)
    try:
        sent, messages = produce(producer, settings.topic_events, ((e["lead_id"], orjson.dumps(e)) for e in events), 200,
                                 partitions=producer_partitions(settings, [settings.topic_events]))
    finally:
        producer.close()
    print(f"sent {sent} sample events ({messages} Kafka messages) covering the last 30 days")

    probe = LagProbe(settings)
    try:
        wait_processed(probe, settings.app_id, [settings.topic_events, settings.topic_accounts], worker, settings)
        wait_processed(probe, group_id(settings, "redis"), [settings.topic_scores], sink, settings)
    finally:
        probe.close()

    for model in ("b2b", "saas_start_small"):
        print(f"\nHottest leads of model {model} (leadstream top --model {model} --limit 10, from Redis)")
        print_top(settings, model, 10)
    print("\nHottest accounts of model b2b (leadstream top --model b2b --accounts --limit 5)")
    print_top(settings, "b2b", 5, accounts=True)
    # This run's: a demo run again under the same app id finds the earlier runs' in the topic.
    crossings = [orjson.loads(record.value) for record in read_to_end(settings, settings.topic_crossings)
                 if record.timestamp >= now_ms]
    ups = [c for c in crossings if c["direction"] == "up"]
    print(f"\nThreshold crossings this run fired: {len(crossings)} ({len(ups)} up, {len(crossings) - len(ups)} down); the latest:")
    for c in sorted(crossings, key=lambda c: c["time"])[-10:]:
        subject = c["lead_id"] if c["kind"] == "lead" else c["account_id"]
        print(f"  {c['kind']:<7} {subject:<16} {c['model']:<18} "
              f"{c['from_level']} -> {c['to_level']} at score {c['score']:.1f} ({c['cell'] or 'no grid'})")
    print(explore(settings))
    return 0
