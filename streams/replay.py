"""`leadstream replay-dlq`: re-drive the worker's dead letters once their cause is fixed.

A dead letter keeps the input it refused (one event, not the envelope it came in) and where it
came from. Some causes are fixed outside the input: a model that did not know an event type
(`unknown_type`) now scores it or lists it in `unscored_types`, a sender's clock was fixed
(`future_time`), a producer keyed by the wrong id or partitioned otherwise than Kafka's default
(`wrong_partition`: a librdkafka client without `partitioner=murmur2_random`). Replaying sends each
chosen letter's original bytes back to the topic it came from, keyed by its lead id (on that
lead's partition under LEADSTREAM_PARTITIONS, whatever partition it first arrived on; source
topics of another count are refused, as `send` refuses them: streams.topics.keyed_partitions);
an account update the account stage refused goes back to its account's partition. A request to forget a lead (a tombstone on the profiles topic) that arrived on the wrong
partition goes back as a tombstone on the lead's own.

Replays are stateless and safe to repeat: an event scores once per event id, so an event
replayed twice, or replayed after its sender also sent it again, scores once. An input that is
still refused is dead-lettered again; a replay sends each input once, however many letters
earlier replays left of it. A replayed event is scored at its own event time, so one
further behind its lead's newest event than the model's `lateness` is counted late, not scored.

A letter of a lead (the lead id of the event it keeps) that `leadstream forget` erased at or
after the letter was written (streams/forgotten.py) is not replayed: it would bring the lead,
traits and all, back into the worker. A request to forget is replayed as any.
"""

from __future__ import annotations

import hashlib
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import IO

import orjson
from redis import RedisError

from scoring.events import loads, optional_id
from sinks.ledger import redis_client
from streams.deadletter import DeadLetter, Repeats
from streams.deliveries import Deliveries
from streams.errors import ServiceError, redis_trouble
from streams.forgotten import Forgotten
from streams.history import read_to_end
from streams.partitioning import partition_for
from streams.send import open_producer
from streams.settings import Settings
from streams.topics import producer_partitions, require_topic


@dataclass
class Replay:
    """What a replay did (or, dry, would do), by reason."""

    replayed: Counter[str] = field(default_factory=Counter)
    #: Letters of the chosen reasons that cannot be replayed, by why not.
    unreplayable: Counter[str] = field(default_factory=Counter)
    #: The first letter of each replayed reason, to show what is being re-driven.
    examples: dict[str, str] = field(default_factory=dict)
    #: Every reason of the letters read (since the time asked), to name them when none has one asked for.
    seen: Counter[str] = field(default_factory=Counter)
    #: (topic, key, digest of the input) of each input sent, and the letters of one sent already
    sent: Repeats[tuple[str, bytes | None, bytes | None]] = field(default_factory=Repeats)
    repeats: int = 0


def replay_dead_letters(settings: Settings, reasons: set[str], since_ms: int = 0, dry_run: bool = False,
                        out: IO[str] = sys.stdout) -> Replay:
    """Re-sends the original input of every dead letter with one of `reasons`, written at or
    after `since_ms`, to its source topic; prints and returns what it did."""
    require_topic(settings, settings.topic_deadletter)
    redis = redis_client(settings)
    try:
        return _replay(settings, reasons, since_ms, dry_run, out, Forgotten(redis, settings.redis_prefix))
    except RedisError as exc:
        raise ServiceError(f"{redis_trouble(exc, settings.redis_url)}. Redis keeps the leads `leadstream forget` erased, "
                           "whose letters must not be replayed, so the replay stopped. Run it again once Redis answers "
                           "(what it sent already scores once)") from None
    finally:
        redis.close()


def _replay(settings: Settings, reasons: set[str], since_ms: int, dry_run: bool, out: IO[str], forgotten: Forgotten) -> Replay:
    sources = {settings.topic_events, settings.topic_profiles, settings.topic_identity, settings.topic_accounts}
    # A letter goes back to its lead's partition under LEADSTREAM_PARTITIONS: under its topic's
    # own count, once partitions were added, to the wrong one again.
    partitions = producer_partitions(settings, sorted(sources))
    replay = Replay()
    producer = None if dry_run else open_producer(settings)
    deliveries = None if producer is None else Deliveries(producer)
    try:
        for record in read_to_end(settings, settings.topic_deadletter):
            if record.timestamp < since_ms:
                continue
            try:
                letter = DeadLetter.from_bytes(record.value, record.key)
            except ValueError:
                replay.unreplayable["not a dead letter as leadstream writes them"] += 1
                continue
            reason, topic = letter.reason, letter.topic
            replay.seen[reason] += 1
            if reason not in reasons:
                continue
            if topic is None:  # refused before Kafka: the collector's answer told the client why
                replay.unreplayable["refused by the collector, never in a topic: the client sends it again once fixed"] += 1
                continue
            if topic not in sources:
                replay.unreplayable[f"source topic {topic!r} is not one the worker reads"] += 1
                continue
            key: bytes | None
            partition: int | None
            if letter.original is None and letter.whole:  # a tombstone: a request to forget the lead it is keyed by
                if topic != settings.topic_profiles or not letter.key:
                    replay.unreplayable["a tombstone where none belongs"] += 1
                    continue
                lead_id = _text(letter.key)
                if lead_id is None:  # the worker refuses it again, whatever partition it goes to
                    replay.unreplayable["a request to forget keyed by no lead id (UTF-8 text)"] += 1
                    continue
                key, partition = letter.key, partition_for(lead_id, partitions)
            elif not letter.original:
                replay.unreplayable["no original input kept"] += 1
                continue
            else:
                lead_id = _id(letter.original, "lead_id")
                if lead_id is not None and forgotten.covers(lead_id, record.timestamp):
                    replay.unreplayable["their lead was forgotten (leadstream forget) after they were dead-lettered"] += 1
                    continue
                if topic == settings.topic_accounts:
                    key, partition = _account_destination(letter, partitions)
                else:
                    key, partition = _destination(lead_id, letter.key, letter.partition, partitions)
            if partition is None:
                replay.unreplayable["neither a lead id nor a source partition to send it to"] += 1
                continue
            # An input still refused after a replay has a letter from each replay: sent once, or
            # every replay sent each of them, and the letters of what stayed refused doubled.
            sent = (topic, key, None if letter.original is None else hashlib.blake2b(letter.original, digest_size=16).digest())
            if not replay.sent.first(sent):
                replay.repeats += 1
                continue
            replay.replayed[reason] += 1
            replay.examples.setdefault(reason, letter.detail)
            if deliveries is not None:
                deliveries.send(topic, letter.original, key=key, partition=partition)
        if deliveries is not None:
            deliveries.settle()
    finally:
        if producer is not None:
            producer.close()
    _report(replay, reasons, dry_run, since_ms > 0, out)
    if deliveries is not None and deliveries.failed:
        raise ServiceError(f"{deliveries.summary('their source topics')} Their letters stay on the dead-letter topic: "
                           "run replay-dlq again once the cause is fixed (an input sent twice scores once)")
    return replay



def _id(original: bytes, field: str) -> str | None:
    """The input's id `field` (`lead_id`, `account_id`), as the engine reads ids (42 is "42");
    None when it has none."""
    try:
        value = loads(original)
    except orjson.JSONDecodeError:
        return None
    found = optional_id(value, field) if isinstance(value, dict) else None
    return found if isinstance(found, str) else None


def _destination(lead_id: str | None, key: bytes | None, partition: int | None, partitions: int) -> tuple[bytes | None, int | None]:
    """Keyed by the input's lead id on that lead's partition (right even for a letter that
    arrived on the wrong one); without a lead id, as it came."""
    if lead_id is not None:
        return lead_id.encode(), partition_for(lead_id, partitions)
    if isinstance(partition, int) and 0 <= partition < partitions:
        return key, partition
    return key, None


def _account_destination(letter: DeadLetter, partitions: int) -> tuple[bytes | None, int | None]:
    """An account update goes back, unkeyed as the worker publishes it, to its account's
    partition (streams/rollup.py publish_updates), whose worker holds the account. Sent to its
    lead's, as events are, an update the worker had refused for a model it did not have yet
    made the account stage keep the account on that partition: a second, partial account, and
    a changelog on which the next start stopped, taking it for a changed partition count."""
    account_id = None if letter.original is None else _id(letter.original, "account_id")
    if account_id is not None:
        return letter.key, partition_for(account_id, partitions)
    return _destination(None, letter.key, letter.partition, partitions)


def _text(key: bytes) -> str | None:
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _report(replay: Replay, reasons: set[str], dry_run: bool, since: bool, out: IO[str]) -> None:
    verb = "would replay" if dry_run else "replayed"
    for reason in sorted(reasons):
        count = replay.replayed[reason]
        example = f"; first: {replay.examples[reason]}" if reason in replay.examples else ""
        if not replay.seen[reason]:  # a misspelt reason, or one whose letters are gone
            held = ", ".join(f"{seen} ({count})" for seen, count in sorted(replay.seen.items())) or "no letter"
            where = "letters since --since" if since else "the topic holds"  # not the whole topic: say so
            example = f"; no dead letter has this reason ({where}: {held})"
        print(f"{reason}: {verb} {count}{example}", file=out)
    if replay.repeats:
        print(f"sent once: {replay.repeats} more letters of inputs sent already (an input still refused after a replay "
              "has a letter from each)", file=out)
    for why, count in sorted(replay.unreplayable.items()):
        print(f"not replayable: {count} ({why})", file=out)
