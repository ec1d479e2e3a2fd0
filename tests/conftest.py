"""Fixtures shared by the whole suite.

Integration tests run against the real local Kafka broker and redis-server, which the suite
starts itself (`leadstream services up` is idempotent) and never skips when they are absent;
the alert rules' tests run Prometheus's promtool, which it fetches likewise (streams/promtool.py).
Each test gets its own topics, consumer group, state directory and ports, so tests are
independent of one another and of earlier runs.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest
from redis import Redis

from streams import services
from streams.promtool import ensure_promtool
from streams.processes import WorkerProcess
from streams.settings import Settings
from streams.topics import delete_topics, ensure_topics
from streams.processes import free_port


@pytest.fixture(scope="session")
def local_services() -> Settings:
    """The real Kafka and Redis, started if they are not running yet."""
    base = Settings.from_env()
    services.up(base)
    return base


@pytest.fixture(scope="session")
def promtool() -> Path:
    """Prometheus's promtool, fetched into LEADSTREAM_SERVICES_DIR on first use (streams/promtool.py)."""
    return ensure_promtool(Settings.from_env().services_dir)


@pytest.fixture
def isolated(local_services: Settings, tmp_path: Path) -> Iterator[Settings]:
    """Settings with this test's own topics, app id (consumer group), state directory and ports."""
    tag = uuid.uuid4().hex[:10]
    settings = local_services.namespaced(
        f"test-{tag}",
        state_dir=tmp_path / "worker-state",
        worker_port=free_port(),
        collector_port=free_port(),
        metrics_port=free_port(),
        collector_metrics_port=free_port(),
    )
    ensure_topics(settings)
    yield settings
    delete_topics(settings, settings.app_id)


@pytest.fixture
def worker(isolated: Settings) -> Iterator[Callable[..., WorkerProcess]]:
    """A factory of real `leadstream worker` processes for this test; all are stopped afterwards."""
    started: list[WorkerProcess] = []

    def start(settings: Settings | None = None) -> WorkerProcess:
        proc = WorkerProcess(settings or isolated)
        started.append(proc)
        proc.start()
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def own_redis(isolated: Settings) -> Iterator[Settings]:
    """`isolated` with a Redis key prefix of this test's own; its keys are deleted afterwards."""
    prefix = f"t-{uuid.uuid4().hex[:10]}"
    yield isolated.with_overrides(redis_prefix=prefix)
    redis = Redis.from_url(isolated.redis_url)
    keys = list(redis.scan_iter(f"{prefix}:*", count=1000))
    if keys:
        redis.delete(*keys)
    redis.close()
