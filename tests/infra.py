"""Helpers for integration tests: real worker processes, reading topics to the end, free ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson

from streams.settings import PROJECT_ROOT, Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path


def leadstream(settings: Settings, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the real `leadstream` CLI with these settings, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        env={**os.environ, **settings.as_env()},
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
    )


def read_topic(settings: Settings, topic: str, *, expect: int | None = None, timeout_s: float = 60.0, idle_s: float = 3.0) -> list[tuple[bytes | None, dict]]:
    """Every record of a topic as (key, parsed JSON value), from the beginning.

    Reads until `expect` records arrived (then a little longer, to see duplicates), or until the
    topic was idle for `idle_s` seconds, or the timeout.
    """
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        consumer_timeout_ms=500,
    )
    records: list[tuple[bytes | None, dict]] = []
    deadline = time.monotonic() + timeout_s
    last_new = time.monotonic()
    reached_at: float | None = None
    try:
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=300)
            for messages in batch.values():
                for message in messages:
                    records.append((message.key, orjson.loads(message.value)))
                    last_new = time.monotonic()
            if expect is not None and len(records) >= expect and reached_at is None:
                reached_at = time.monotonic()
            if reached_at is not None and time.monotonic() - reached_at > idle_s:
                break
            if expect is None and time.monotonic() - last_new > idle_s:
                break
    finally:
        consumer.close()
    return records


class WorkerProcess:
    """A real `leadstream worker` subprocess, started and stopped by a test."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.log = settings.state_dir.parent / f"worker-{settings.worker_port}-{time.monotonic_ns()}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, ready_timeout_s: float = 90.0) -> None:
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "worker"],
                env={**os.environ, **self.settings.as_env()},
                cwd=PROJECT_ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.tail()}")
            if self.get("/readyz")[0] == 200:
                return
            time.sleep(0.3)
        raise AssertionError(f"worker not ready within {ready_timeout_s} s:\n{self.tail()}")

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.settings.worker_port}{path}", timeout=5) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return 0, b""

    def kill(self) -> None:
        """SIGKILL: no shutdown, no LeaveGroup, no final commit."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"
