"""The topics leadstream owns, with their partition counts and cleanup policies.

Created explicitly with the admin client (the broker has auto-creation off), idempotently. Faust
creates its own changelog topics (compacted) when the worker starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from streams.errors import ConfigError, ServiceError
from streams.kafka_clients import open_client
from streams.settings import Settings


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)
    #: Whether the topic must have exactly `partitions` partitions, being an existing one too:
    #: the worker reads and writes it by a lead's partition, which it computes with
    #: LEADSTREAM_PARTITIONS. (Records keyed by lead and read by others may have any count.)
    copartitioned: bool = False


#: How long the raw events stay readable: the broker's `log.retention.ms`, which `leadstream services
#: up` sets (streams/services.py; docker-compose.yml's broker has the same). The events topic takes
#: the broker's, so a broker of your own may keep them longer: see min.compaction.lag.ms below.
EVENTS_RETENTION_MS = 7 * 24 * 3600 * 1000
FORGET_RETENTION_MS = 7 * 24 * 3600 * 1000
#: The worker's and the connectors' dead-letter topics (sinks/runner.py): a month to fix a cause
#: and replay. The erasure registry (streams/forgotten.py) outlives them.
DEAD_LETTER_RETENTION_MS = 30 * 24 * 3600 * 1000
#: The largest record the table changelogs and the identity topic take (Kafka's default is 1 MB).
#: A lead's changelog record holds its state in every model, and a merge record every state of
#: the visitor merged: each state is bounded (scoring/state.py), a few hundred KB at most, but a
#: lead of several models can hold more than 1 MB, and a record the broker refuses stops the
#: worker at every restart. Records leave through record batches, which the producer does not
#: cap at its max_request_size, and consumers read a record larger than their fetch size.
LARGE_RECORD_BYTES = 16 * 1024 * 1024
COMPACTED = {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.1", "segment.ms": "600000"}


def topic_specs(settings: Settings) -> list[TopicSpec]:
    n = settings.partitions
    return [
        TopicSpec(settings.topic_events, n, copartitioned=True),
        TopicSpec(settings.topic_profiles, n, profiles_config(), copartitioned=True),
        TopicSpec(settings.topic_crossings, n),
        # A read model only needs each lead's latest score.
        TopicSpec(settings.topic_scores, n, COMPACTED, copartitioned=True),
        TopicSpec(settings.topic_accounts, n, copartitioned=True),
        TopicSpec(settings.topic_identity, n, {"max.message.bytes": str(LARGE_RECORD_BYTES)}, copartitioned=True),
        TopicSpec(settings.topic_deadletter, n, {"retention.ms": str(DEAD_LETTER_RETENTION_MS)}, copartitioned=True),
    ]


def profiles_config() -> dict[str, str]:
    """The profiles topic's settings. Its records are more than each lead's latest traits: an
    identify's `anonymous_id` and an alias's `previous_id` merge identities, and each update holds
    the traits in force for the events after it. Whoever reads the topics from the beginning (a
    worker of a new app id rescoring, `leadstream history` for score and review) needs every one
    of them that an event the events topic still holds goes with: once the lead's next update came,
    plain compaction dropped the identify that merged a visitor, which then scored as a lead of its
    own. So compaction leaves a record alone until it is as old as the events (by its Kafka
    timestamp), and keeps each lead's latest beyond that.

    A tombstone here is a request to forget the lead (streams/forget.py). The lag holds it back
    too: the lead's earlier records (traits, e-mail) go once it is a week old, as its events on
    the events topic age out about then. Compaction then keeps it another week
    (`delete.retention.ms`; Kafka's default is a day), so a worker down for up to two weeks still
    reads it, and `leadstream history` leaves out the lead's events while the events topic may
    hold them (a segment is deleted once its newest record is past retention)."""
    return {**COMPACTED, "min.compaction.lag.ms": str(EVENTS_RETENTION_MS), "delete.retention.ms": str(FORGET_RETENTION_MS)}


def ensure_topics(settings: Settings, specs: list[TopicSpec] | None = None) -> list[str]:
    """Create the missing topics; report each one. Existing topics are left as they are; a
    ConfigError, once the missing ones are created, when a co-partitioned one has another
    partition count than its spec's."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    specs = topic_specs(settings) if specs is None else specs
    admin = open_client(settings, KafkaAdminClient, client_id="leadstream-topics")
    try:
        existing = set(admin.list_topics())
        lines = []
        for spec in specs:
            if spec.name in existing:
                lines.append(f"topic {spec.name}: exists")
                continue
            try:
                admin.create_topics(
                    [NewTopic(spec.name, num_partitions=spec.partitions, replication_factor=1, topic_configs=spec.config)]
                )
            except TopicAlreadyExistsError:
                lines.append(f"topic {spec.name}: exists")
                continue
            policy = spec.config.get("cleanup.policy", "delete")
            lines.append(f"topic {spec.name}: created ({spec.partitions} partitions, cleanup.policy={policy})")
        _check_partitions(admin, [spec for spec in specs if spec.copartitioned and spec.name in existing])
        return lines
    finally:
        admin.close()


def _check_partitions(admin: Any, specs: list[TopicSpec]) -> None:
    """ConfigError naming each existing topic whose partition count is not its spec's. A lead
    lives on the partition LEADSTREAM_PARTITIONS makes of its id; on a topic of another count,
    producers put its events elsewhere (every one dead-lettered as wrong_partition), and the
    worker's writes to a partition the topic lacks stopped it at every restart
    (AssertionError: Unrecognized partition)."""
    if not specs:
        return
    counts = {topic["name"]: len(topic["partitions"]) for topic in admin.describe_topics([spec.name for spec in specs])}
    wrong = [f"{spec.name} has {counts[spec.name]}" for spec in specs if counts.get(spec.name, spec.partitions) != spec.partitions]
    if wrong:
        raise ConfigError(
            f"LEADSTREAM_PARTITIONS is {specs[0].partitions}, but {', '.join(wrong)} partitions: leadstream's topics must "
            "all have the same count, the one LEADSTREAM_PARTITIONS says. Set it to the topics' count, or recreate them "
            "with `leadstream topics` once deleted (their records are lost)"
        )


def topic_config(settings: Settings, topic: str) -> dict[str, str]:
    """The settings `topic` was given, as the broker describes them: those of its own only (one
    not listed is the broker's default)."""
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType

    admin = open_client(settings, KafkaAdminClient, client_id="leadstream-topics")
    try:
        described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])["topic"][topic]
        return {name: entry["value"] for name, entry in described.items()}
    finally:
        admin.close()


def partition_count(settings: Settings, topic: str) -> int:
    """How many partitions `topic` has; 0 when it does not exist. Asked of the broker's metadata
    at once (a producer would wait a minute for a topic that never appears)."""
    from kafka import KafkaConsumer

    consumer = open_client(settings, KafkaConsumer, enable_auto_commit=False, client_id="leadstream-topics")
    try:
        return len(consumer.partitions_for_topic(topic) or ())
    finally:
        consumer.close()


def require_topic(settings: Settings, topic: str) -> int:
    """`topic`'s partitions; a ServiceError naming it and the setting that names it when it does
    not exist (a command reading it would wait for it for ever, or make topics after its typo)."""
    partitions = partition_count(settings, topic)
    if partitions == 0:
        variable = next((env for env, value in settings.as_env().items() if env.startswith("LEADSTREAM_TOPIC_") and value == topic),
                        "its setting")
        raise ServiceError(f"topic {topic!r} does not exist: run `leadstream topics`, or check {variable}")
    return partitions


def delete_topics(settings: Settings, prefix: str) -> list[str]:
    """Delete every topic whose name starts with `prefix` (a test's or a benchmark's own
    pipeline, Faust's changelog topics included), so runs do not pile partitions onto the broker
    (thousands of them make its start take minutes). Returns the names deleted."""
    from kafka import KafkaAdminClient

    admin = open_client(settings, KafkaAdminClient, client_id="leadstream-topics")
    try:
        doomed = sorted(name for name in admin.list_topics() if name.startswith(prefix))
        if doomed:
            admin.delete_topics(doomed)
        return doomed
    finally:
        admin.close()
