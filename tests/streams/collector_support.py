"""Helpers of the collector's tests: a collector served from a thread (and fixtures that start one
for a test, importing them), a track call, and reading what it wrote."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
import requests

from streams.collector import load_sources, serve
from streams.settings import Settings

WRITE_KEY = "wk-test-site"
SOURCES = f"{WRITE_KEY}=website"


class ThreadedCollector:
    """The real collector (`streams.collector.serve`) on its own event loop in a thread of the test."""

    def __init__(self, settings: Settings, *, wait_ready: bool = True) -> None:
        self.settings = settings
        self.url = f"http://127.0.0.1:{settings.collector_port}"
        self._wait_ready = wait_ready
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="collector", daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            await serve(self.settings, load_sources(self.settings.collector_write_keys), self._stop)

        try:
            asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            self._failure = exc

    def __enter__(self) -> ThreadedCollector:
        self._thread.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._failure is not None:
                raise AssertionError(f"collector failed: {self._failure!r}")
            try:
                status = requests.get(f"{self.url}/readyz", timeout=2).status_code
            except requests.ConnectionError:
                status = 0
            if status == 200 or (status and not self._wait_ready):
                return self
            time.sleep(0.05)
        raise AssertionError("collector not ready within 30 s")

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "collector did not stop"

    def post(self, path: str, body: Any, *, key: str | None = WRITE_KEY, headers: dict[str, str] | None = None) -> requests.Response:
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        return requests.post(
            f"{self.url}{path}",
            data=data,
            auth=(key, "") if key is not None else None,
            headers={"Content-Type": "application/json", **(headers or {})},
            timeout=30,
        )


@dataclass(frozen=True)
class Message:
    partition: int
    key: bytes | None
    events: list[dict[str, Any]]


def read_messages(settings: Settings, *topics: str, events: int, timeout_s: float = 30.0, settle_s: float = 1.0) -> list[Message]:
    """Messages of the topics from the beginning, until they hold `events` events (then `settle_s` more, to see extras)."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        *topics, bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest", enable_auto_commit=False, group_id=None
    )
    found: list[Message] = []
    count = 0
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                for record in records:
                    value = orjson.loads(record.value)
                    found.append(Message(record.partition, record.key, value if isinstance(value, list) else [value]))
                    count += len(found[-1].events)
            if count >= events:
                deadline = min(deadline, time.monotonic() + settle_s)
    finally:
        consumer.close()
    return found


def all_events(messages: list[Message]) -> list[dict[str, Any]]:
    return [event for message in messages for event in message.events]


@pytest.fixture
def settings(isolated: Settings) -> Settings:
    """The test's own settings with the test site's write key (import it with `collector`)."""
    return isolated.with_overrides(collector_write_keys=SOURCES, collector_body_timeout_ms=1000)


@pytest.fixture
def collector(settings: Settings) -> Iterator[ThreadedCollector]:
    with ThreadedCollector(settings) as running:
        yield running


def track(lead: str, **extra: Any) -> dict[str, Any]:
    """A track call of the lead with its own messageId."""
    return {"type": "track", "userId": lead, "event": "Pricing Viewed", "messageId": uuid.uuid4().hex, **extra}
