"""Batches compressed with any of Kafka's codecs, as Java and librdkafka producers may send them
(lz4, zstd and snappy as well as gzip), are read by the worker and by `leadstream history`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import orjson
from kafka import KafkaProducer

from streams.processes import WorkerProcess
from streams.settings import Settings
from tests.infra import leadstream
from tests.streams.test_worker_state import page, scores_by_key

CODECS = ("gzip", "lz4", "snappy", "zstd")


def test_the_worker_and_history_read_batches_of_every_codec(
    isolated: Settings, worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    # Without the codecs' libraries, an lz4 batch stopped the worker (UnsupportedCodecError) at
    # every start, and `history` with a traceback.
    now = int(time.time() * 1000) - 60_000
    for n, codec in enumerate(CODECS):
        producer = KafkaProducer(bootstrap_servers=isolated.kafka_bootstrap, compression_type=codec)
        event = page(f"lead-{codec}", 0, "https://acme.io/pricing", now + n)
        producer.send(isolated.topic_events, key=event["lead_id"].encode(), value=orjson.dumps(event))
        producer.flush()
        producer.close()

    worker()

    assert sorted(scores_by_key(isolated, expect=len(CODECS))) == sorted(f"b2b/lead-{codec}" for codec in CODECS)
    out = tmp_path / "history.jsonl"
    leadstream(isolated, "history", "--out", str(out))
    assert sorted(orjson.loads(line)["lead_id"] for line in out.read_bytes().splitlines()) == sorted(f"lead-{codec}" for codec in CODECS)
