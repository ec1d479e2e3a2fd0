"""The broker benchmarks (`bench pipeline`, `collector`, `sinks`) leave nothing behind, however
they end: not their topics (partitions piling up on the broker), their scratch directories, nor
their child processes (the workers run in sessions of their own, which no signal to the
benchmark reaches)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from sinks import bench as sinks_bench
from streams.bench import collector as collector_bench
from streams.bench import pipeline
from streams.kafka_clients import open_client
from streams.processes import CollectorProcess, command_line
from streams.settings import PROJECT_ROOT, Settings


def _topics(settings: Settings, prefix: str) -> list[str]:
    from kafka import KafkaAdminClient

    admin = open_client(settings, KafkaAdminClient, client_id="test-bench-cleanup")
    try:
        return sorted(name for name in admin.list_topics() if name.startswith(prefix))
    finally:
        admin.close()


def _gone(pid: int) -> bool:
    """Whether a process (not necessarily our child) has ended: absent, or a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _child_worker(parent: int) -> int | None:
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and "streams.cli worker" in (command_line(int(stat.parent.name)) or ""):
            return int(stat.parent.name)
    return None


def _environ(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(pair.decode().split("=", 1) for pair in pairs if b"=" in pair)


def test_a_pipeline_benchmark_told_to_stop_stops_its_worker_and_deletes_its_topics(local_services: Settings) -> None:
    bench = subprocess.Popen([sys.executable, "-m", "streams.cli", "bench", "pipeline", "--events", "20000", "--json"],
                             cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while (worker := _child_worker(bench.pid)) is None and time.monotonic() < deadline and bench.poll() is None:
            time.sleep(0.1)
        assert worker is not None, f"no worker started: {bench.stderr.read().decode() if bench.poll() is not None else ''}"
        env = _environ(worker)
        time.sleep(1.0)  # well into its start
        bench.send_signal(signal.SIGTERM)
        assert bench.wait(timeout=90) == 130
        deadline = time.monotonic() + 5
        while not _gone(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _gone(worker), "the worker outlived its benchmark"
        assert _topics(local_services, env["LEADSTREAM_APP_ID"]) == []
        assert not Path(env["LEADSTREAM_STATE_DIR"]).parent.exists()
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()


def test_a_pipeline_benchmark_interrupted_before_its_worker_deletes_its_topics(local_services: Settings, monkeypatch) -> None:
    # Ctrl-C while the workload is produced (or the raw loop reads it): before any `finally`.
    seen: list[Settings] = []

    def interrupted(settings: Settings) -> Any:
        seen.append(settings)
        assert _topics(settings, settings.app_id)  # made by then
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "open_producer", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(local_services, events=1000, leads=100, seed=7, events_per_message=200, metrics=False)
    assert _topics(local_services, seen[0].app_id) == []
    assert not seen[0].state_dir.exists()


def test_a_collector_benchmark_deletes_its_topics(local_services: Settings, monkeypatch) -> None:
    seen: list[Settings] = []

    class Recorded(CollectorProcess):
        def __init__(self, settings: Settings) -> None:
            seen.append(settings)
            super().__init__(settings)

    monkeypatch.setattr(collector_bench, "CollectorProcess", Recorded)
    figures = collector_bench.run(local_services, seconds=0.5, leads=200, seed=7)
    assert figures["events_accepted"] > 0
    assert _topics(local_services, seen[0].app_id) == []
    assert not seen[0].state_dir.parent.exists()


def test_a_sinks_benchmark_interrupted_deletes_its_topic(local_services: Settings, monkeypatch) -> None:
    seen: list[str] = []

    def interrupted(settings: Settings, topic: str, connector: str, count: int) -> None:
        seen.append(topic)
        raise KeyboardInterrupt

    monkeypatch.setattr(sinks_bench, "_produce", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sinks_bench._run(local_services, "redis", 0, 1, 10, "unlimited")
    assert _topics(local_services, seen[0]) == []

