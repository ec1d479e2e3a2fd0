"""`leadstream forget LEAD_ID ...`: erase leads from leadstream (a data subject's erasure request).

A request is a tombstone (a null value) keyed by the lead id on the profiles topic, on the lead's
partition, so the worker that owns the lead's state gets it in order with the lead's profile
updates; any Kafka producer may send the same record. Its headers (streams/erasure.py,
SENT_BEFORE) say how far the lead's partition of the events and identity topics reached when it
was sent: the lead's records before that are dropped however late the worker reads them (Kafka
orders the request only with the profiles topic). The worker (streams/scorer.py), after the
batch the request arrives in:
- takes the lead out of its accounts' roll-ups (which may cross down),
- publishes a tombstone per model on the compacted score-changes topic (the Redis read model
  and `leadstream top` drop the lead),
- deletes the lead's entry from the lead table, with a tombstone on its compacted changelog
  once the request's offsets are committed (until then a marker holds the place: streams/erasure.py),
  and counts it in `leadstream_leads_forgotten_total`.
On the compacted topics (score changes, changelog) compaction then removes the lead's earlier
records, and on the profiles topic once the request is as old as the events topic's retention
(streams/topics.py, profiles_config). Records on the topics that keep everything for their retention time (raw
events, crossings, identity, dead letters) age out with it; what the CRM connectors delivered
is the CRM's to erase.

Meanwhile, `leadstream forget` records each erasure in Redis (streams/forgotten.py), so that the
CRM connectors do not deliver the lead's older crossings, the Redis read model not take back its
older summaries from a dead-letter replay, nor `leadstream replay-dlq` re-send its dead-lettered
events, and deletes the connectors' ledger keys that name the lead (sinks/ledger.py). That Redis
must keep them (README: What Redis leadstream needs; `forget` warns at start when it may not).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from redis import RedisError

from scoring.events import MAX_ID_CHARS, is_id
from sinks.ledger import forget_leads, redis_client
from streams import erasure, kafka_clients
from streams.deliveries import Deliveries
from streams.errors import InputError, ServiceError, redis_trouble
from streams.forgotten import TTL_MS, Forgotten
from streams.partitioning import partition_for
from streams.send import open_producer
from streams.settings import Settings
from streams.topics import producer_partitions


def lead_ids(args: list[str], from_file: Path | None) -> list[str]:
    """The ids given, then those of the file (one per line; `-`: standard input), in order, once each."""
    ids = list(args)
    if from_file is not None:
        try:
            text = sys.stdin.read() if str(from_file) == "-" else from_file.read_text(encoding="utf-8")
        except OSError as exc:  # its strerror alone: str() repeated the file's name, "[Errno 2] ...: '/x'"
            raise InputError(f"cannot read lead ids from {from_file}: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise InputError(f"cannot read lead ids from {from_file}: {exc}") from None
        # A byte order mark (Windows tools save one) would stick to the first id, and the lead
        # it names would silently stay; it is not in any id a person means.
        text = text.removeprefix("\ufeff")
        # Each line as written: ids may begin or end with spaces, and one stripped named another
        # lead (or none), while the lead meant stayed.
        listed = [line for line in text.splitlines() if line.strip()]
        spaced = sum(line != line.strip() for line in listed)
        if spaced:
            print(f"leadstream forget: {spaced} id{'s' if spaced != 1 else ''} of {from_file} begin or end with spaces, "
                  "kept as written (an id is exact)", file=sys.stderr)
        ids += listed
    if not ids:
        raise InputError("no lead ids given: name them, or pass --from FILE (one id per line)")
    for lead_id in ids:
        if not is_id(lead_id):
            shown = repr(lead_id) if len(lead_id) <= 80 else f"{lead_id[:60]!r}... ({len(lead_id)} characters)"
            raise InputError(f"{shown} is not a lead id (1-{MAX_ID_CHARS} characters, no control character): nothing was sent")
    return list(dict.fromkeys(ids))


def end_offsets(settings: Settings, partitions: set[int]) -> dict[int, dict[str, int]]:
    """Partition -> topic -> its end offset (the next to be written), for the topics whose
    records of a lead could make it up again: the raw events and identity topics. Past an open
    transaction's records too: should it commit, they were sent before the request."""
    from kafka.errors import KafkaError

    topics = (settings.topic_events, settings.topic_identity)
    try:
        return kafka_clients.end_offsets(settings, topics, partitions)
    except KafkaError as exc:
        raise ServiceError(f"cannot read the end offsets of {' and '.join(topics)} (run `leadstream topics`): {exc}; "
                           "nothing was sent") from None


def request(settings: Settings, ids: list[str]) -> str:
    """Sends the requests to forget `ids` (a tombstone each, on its lead's partition under
    LEADSTREAM_PARTITIONS, whose count the three topics must have, with the
    end offsets of that partition on the topics that could make the lead up again); returns
    the topic they went to."""
    topic = settings.topic_profiles
    # The end offsets are asked of the lead's partition on the events and identity topics too:
    # under the profiles topic's own count, after partitions were added to it, requests went
    # where the worker refused them, and partitions that topic had and the others lacked ended
    # in a KeyError.
    partitions = producer_partitions(settings, (topic, settings.topic_events, settings.topic_identity))
    homes = {lead_id: partition_for(lead_id, partitions) for lead_id in ids}
    # Read before any request is sent: what comes after a request is a new profile's.
    ends = end_offsets(settings, set(homes.values()))
    producer = open_producer(settings)
    deliveries = Deliveries(producer)
    try:
        for lead_id, partition in homes.items():
            deliveries.send(topic, None, key=lead_id.encode(), partition=partition,
                            headers=list(erasure.request_headers(ends[partition])))
        deliveries.settle()
    finally:
        producer.close()
    if deliveries.failed:
        raise ServiceError(f"{deliveries.summary(topic)} Run the same `leadstream forget` again once the cause is fixed: "
                           "a lead asked to be forgotten twice is forgotten once")
    return topic


def forget(settings: Settings, ids: list[str]) -> int:
    requested_ms = int(time.time() * 1000)  # before the requests: what the worker erases is older
    topic = request(settings, ids)
    leads = f"{len(ids)} lead{'s' if len(ids) != 1 else ''}"
    print(f"asked to forget {leads}: a tombstone each on {topic}; the worker erases them when it reads them")
    # The requests first: they are the erasure, and a Redis out of reach must not hold them back.
    try:
        record_erasures(settings, ids, requested_ms)
    except RedisError as exc:
        raise ServiceError(
            f"the requests were sent, but {redis_trouble(exc, settings.redis_url)}. The erasures are not "
            "recorded for the CRM connectors and `leadstream replay-dlq`, which may still deliver or bring back these leads' "
            "older records, and the connectors' ledger still names them. Run the same `leadstream forget` again once Redis "
            "answers (asking again is safe)") from None
    print(f"recorded in Redis: connectors and replays drop the older records of these {leads} for "
          f"{TTL_MS // (24 * 3600 * 1000)} days")
    return 0


def record_erasures(settings: Settings, ids: list[str], requested_ms: int) -> None:
    """Records the erasures in the registry (streams/forgotten.py) and deletes the connectors'
    ledger keys that name the leads (sinks/ledger.py)."""
    redis = redis_client(settings)
    try:
        Forgotten(redis, settings.redis_prefix).record(ids, requested_ms)
        forget_leads(redis, settings.redis_prefix, ids)
    finally:
        redis.close()
