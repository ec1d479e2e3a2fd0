"""leadstream's topics (streams/topics.py) on the real broker: created with their partition
counts, and existing ones of another count refused."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from streams.settings import Settings
from streams.topics import TopicSpec, ensure_topics, partition_count
from tests.infra import leadstream, write_jsonl


def test_existing_topics_of_another_partition_count_are_refused_by_name(isolated: Settings) -> None:
    # Before, `leadstream topics` and the worker said "exists" and went on: producers put each
    # lead on the partition of the topic's own count, so the worker dead-lettered its events as
    # wrong_partition, and its first write to a partition the other topics lack stopped it
    # (AssertionError: Unrecognized partition), at every restart.
    settings = isolated.namespaced(f"{isolated.app_id}-b")  # deleted with the test's own topics
    ensure_topics(settings, [TopicSpec(settings.topic_events, 8), TopicSpec(settings.topic_crossings, 6)])
    done = leadstream(settings, "topics", check=False)
    assert done.returncode == 1, done
    assert (f"LEADSTREAM_PARTITIONS is 4, but {settings.topic_events} has 8 partitions" in done.stderr
            and settings.topic_crossings not in done.stderr), done.stderr  # read by key only: any count will do
    assert "Set it to the topics' count, or recreate them" in done.stderr
    # The others were created all the same; the worker refuses to start on the same line.
    assert partition_count(settings, settings.topic_identity) == 4
    worker = leadstream(settings, "worker", check=False)
    assert worker.returncode == 1 and f"{settings.topic_events} has 8 partitions" in worker.stderr


@pytest.mark.parametrize("command", [
    ["topics"], ["send", "{events}"], ["forget", "lead-1"], ["history", "--out", "{out}"], ["replay-dlq", "--reason", "x"],
])
def test_an_unreachable_broker_is_named_within_seconds(isolated: Settings, tmp_path: Path, command: list[str]) -> None:
    # kafka-python waits 30 s by default for the first answer: each command sat silent that long.
    events = write_jsonl(tmp_path / "events.jsonl", [{"lead_id": "lead-1", "type": "page_view", "time": "2025-11-23T08:00:00Z"}])
    args = [arg.format(events=events, out=tmp_path / "history.jsonl") for arg in command]
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        bootstrap = f"127.0.0.1:{closed.getsockname()[1]}"
    started = time.monotonic()
    done = leadstream(isolated.with_overrides(kafka_bootstrap=bootstrap, kafka_connect_timeout_s=2), *args, check=False)
    assert done.returncode == 1 and time.monotonic() - started < 10, done
    assert f"cannot reach Kafka at {bootstrap} within 2 s (LEADSTREAM_KAFKA_CONNECT_TIMEOUT_S)" in done.stderr
