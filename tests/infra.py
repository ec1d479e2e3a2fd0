"""Helpers for integration tests: running the CLI, reading topics to the end, free ports."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import orjson

from streams.processes import WorkerProcess
from streams.settings import PROJECT_ROOT, Settings


def wait_for(condition: Callable[[], object], timeout_s: float = 30.0, what: str = "condition", poll_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def swept(proc: WorkerProcess, sweeps: int, timeout_s: float = 60.0) -> None:
    """Returns once the worker's decay timer has done `sweeps` more sweeps: all but the first
    began after the call. A fixed sleep of that many intervals let a loaded machine do fewer."""
    def done() -> float:
        return sum(proc.metric("leadstream_decay_sweeps_total"))

    before = done()
    wait_for(lambda: done() >= before + sweeps, timeout_s, f"{sweeps} decay sweeps", 0.2)


def unprivileged(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """`leadstream ARGS` run by a user that directories' modes bind: the user nobody when this is
    root (which may write and read anything), else this user."""
    user = {"user": 65534, "group": 65534} if os.geteuid() == 0 else {}
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], env={**os.environ, **settings.as_env()}, cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=60, **user)  # type: ignore[call-overload]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path


def leadstream(settings: Settings, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the real `leadstream` CLI with these settings, as a user would. A run that outlives
    `timeout` fails with the tail of what it logged, to show where it was waiting."""
    try:
        return subprocess.run(
            [sys.executable, "-m", "streams.cli", *args],
            env={**os.environ, **settings.as_env()},
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )
    except subprocess.TimeoutExpired as exc:
        logged = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
        raise AssertionError(f"leadstream {' '.join(args)} still running after {timeout:.0f} s; its log ends:\n{logged[-4000:]}") from None


def add_partitions(settings: Settings, topics: list[str] | tuple[str, ...], count: int) -> None:
    """Raise the topics to `count` partitions, as `kafka-topics.sh --alter --partitions` does."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewPartitions

    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        admin.create_partitions({topic: NewPartitions(count) for topic in topics})
    finally:
        admin.close()


def read_model_scores(offline: list[dict]) -> dict[str, float]:
    """The score the score-changes topic should end with for each key, from `leadstream score`'s
    records: each lead's (`model/lead`) and each account's (`model:account/account`)."""
    leads = {f"{r['model']}/{r['lead_id']}": r["score"] for r in offline if r["record"] == "lead"}
    accounts = {f"{r['model']}:account/{r['account_id']}": r["score"] for r in offline
                if r["record"] == "account" and r["score"] is not None}  # models without [accounts] publish none
    return {**leads, **accounts}


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


def read_to_end(settings: Settings, topic: str) -> list[tuple[bytes | None, dict]]:
    """Every record a topic holds now, in each partition's order, as (key, parsed JSON value):
    read until every partition's end offset as of the call (for topics that are final, however
    many records they hold)."""
    from streams.history import read_to_end as records_to_end

    return [(record.key, orjson.loads(record.value)) for record in records_to_end(settings, topic)]


async def send_batched(producer: Any, topic: str, records: Iterable[tuple[int, bytes, bytes]]) -> None:
    """Sends (partition, key, value) records in order through a started aiokafka producer, in
    batches its compiled builder fills, and returns once Kafka has them all. kafka-python encodes
    each record in Python: on a loaded machine, 2 ms a record (80,000 sends took 163 s)."""
    batches: dict[int, Any] = {}
    sent: list[Any] = []
    for partition, key, value in records:
        batch = batches.setdefault(partition, producer.create_batch())
        if batch.append(key=key, value=value, timestamp=None) is None:  # full: sent, and the record starts the next
            sent.append(await producer.send_batch(batch, topic, partition=partition))
            batch = batches[partition] = producer.create_batch()
            batch.append(key=key, value=value, timestamp=None)
    for partition, batch in batches.items():
        sent.append(await producer.send_batch(batch, topic, partition=partition))
    await asyncio.gather(*sent)
