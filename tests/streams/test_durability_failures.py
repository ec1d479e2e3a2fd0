"""A batch whose outputs Kafka refuses is never passed over: the worker stops, and its successor
scores the batch again from the changelogs and the committed offsets, so no crossing is lost."""

from __future__ import annotations

import itertools
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import orjson
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType

from streams.lag import LagProbe
from streams.processes import WorkerProcess
from streams.settings import Settings
from streams.topics import topic_config
from tests.infra import leadstream, read_topic, write_jsonl
from tests.streams.test_worker_state import MINUTE_MS, page, scores_by_key, send


def set_max_message_bytes(settings: Settings, topic: str, size: int) -> None:
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, client_id="leadstream-tests")
    try:
        admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs={"max.message.bytes": str(size)})])
    finally:
        admin.close()


def test_a_worker_whose_crossings_kafka_refuses_stops_and_its_successor_publishes_them_once(
    isolated: Settings, worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    now = int(time.time() * 1000) - 60 * MINUTE_MS
    events = [page("pete", n, "https://acme.io/pricing", now + n * MINUTE_MS) for n in range(5)]
    offline = [orjson.loads(line) for line in
               leadstream(isolated, "score", "--events", str(write_jsonl(tmp_path / "events.jsonl", events))).stdout.splitlines()]
    expected = sorted((r["id"], r["to_level"]) for r in offline if r["record"] == "transition")
    assert expected
    # The broker refuses every record of the crossings topic (each is larger than this), as it
    # would a record over its limit, or any produce while it is down for longer than the
    # producer waits.
    set_max_message_bytes(isolated, isolated.topic_crossings, 64)
    first = worker()
    send(isolated, events)
    assert first.proc is not None
    # More events keep coming, so the scoring agent (not only the decay timer) meets the failure.
    stop = threading.Event()

    def feed() -> None:
        for n in itertools.count():
            if stop.wait(0.1):
                return
            send(isolated, [page("quinn", n, "https://acme.io/about", now + n)])

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        status = first.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the worker went on after Kafka refused a batch's outputs:\n{first.tail()}") from None
    finally:
        stop.set()
        feeder.join()
    assert status != 0, first.tail()
    assert "stopping the worker" in first.log.read_text()

    set_max_message_bytes(isolated, isolated.topic_crossings, 1_048_588)
    worker()
    crossings = [c for _, c in read_topic(isolated, isolated.topic_crossings, expect=len(expected))]
    assert sorted((c["id"], c["to_level"]) for c in crossings) == expected
    assert scores_by_key(isolated)["b2b/pete"]["score"] == 70


def max_message_bytes(settings: Settings, topic: str) -> int:
    return int(topic_config(settings, topic).get("max.message.bytes", 1_048_588))


def test_a_lead_whose_states_in_all_models_exceed_a_megabyte_is_written_and_recovered(
    isolated: Settings, worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    """Ten models, each remembering two generations of 1,024 ids of 64 characters: the lead's
    changelog record is about 1.3 MB, more than Kafka's default limit, which stopped the worker."""
    models = tmp_path / "models"
    models.mkdir()
    for n in range(10):
        (models / f"m{n}.toml").write_text(
            f'[model]\nname = "m{n}"\nremember_events = 1024\nlateness = "30d"\n'
            '[[rules]]\nname = "visit"\nevent = "visit"\npoints = 1\n'
            '[thresholds]\nbase = "cold"\nladder = [{ level = "warm", at = 5000 }]\n')
    settings = replace(isolated, models_dir=models)
    now = int(time.time() * 1000) - 60 * MINUTE_MS
    events = [{"event_id": f"{n:08d}".ljust(64, "x"), "lead_id": "ada", "type": "visit", "time": now + n} for n in range(2048)]
    leadstream(settings, "send", "--events-per-message", "200", str(write_jsonl(tmp_path / "events.jsonl", events)))
    first = worker(settings)
    assert max_message_bytes(settings, f"{settings.app_id}-leads-changelog") > 2_000_000
    assert max_message_bytes(settings, settings.topic_identity) > 2_000_000
    # Compacted as the profiles topic is: on Kafka's defaults a forgotten lead's traits stayed a
    # week at least in the changelogs' earlier records.
    for table in ("leads", "accounts"):
        config = topic_config(settings, f"{settings.app_id}-{table}-changelog")
        assert (config["segment.ms"], config["min.cleanable.dirty.ratio"]) == ("600000", "0.1")
    # Offsets are committed only once the states are in the changelog.
    probe = LagProbe(settings)
    try:
        probe.wait_caught_up(settings.app_id, [settings.topic_events], timeout_s=60)
    except TimeoutError:
        raise AssertionError(f"the worker did not commit the events: its states were not written\n{first.tail()}") from None
    finally:
        probe.close()
    assert first.proc is not None and first.proc.poll() is None
    first.stop()

    second = worker(settings)  # its states come from the changelog alone: nothing is left to score again
    status, body = second.get("/leads/ada/")
    assert status == 200, body
    assert {model: explained["score"] for model, explained in orjson.loads(body)["models"].items()} == {f"m{n}": 2048 for n in range(10)}
