"""The topics leadstream owns, with their partition counts, cleanup policies and settings.

Created explicitly with the admin client (the broker has auto-creation off), idempotently. Faust
creates its own changelog topics (compacted) when the worker starts. A topic an earlier release
created lacks the settings that came since: `leadstream topics` gives it those (STRONGER).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterable, NamedTuple

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
    #: A topic whose records this one's go with (the profiles topic's: the events'): compaction
    #: leaves a record alone as long as that topic keeps its own, min.compaction.lag.ms being at
    #: least its retention.ms (required_config).
    outlives: str | None = None


#: How long the raw events stay readable: the broker's `log.retention.ms`, which `leadstream services
#: up` sets (streams/services.py; docker-compose.yml's broker has the same). The events topic takes
#: the broker's, so a broker of your own may keep them longer: the profiles topic's
#: min.compaction.lag.ms follows the events topic's actual retention.ms (required_config).
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
#: The table changelogs' (streams/bulk_store.py), given through Faust, which creates them.
CHANGELOG_CONFIG = {**COMPACTED, "max.message.bytes": str(LARGE_RECORD_BYTES)}
#: The worker's tables (streams/app.py), whose changelogs Faust names `<app id>-<table>-changelog`.
LEADS_TABLE, ACCOUNTS_TABLE = "leads", "accounts"
#: How long a topic just created may go undescribed by the broker.
DESCRIBE_TIMEOUT_S = 10.0
#: The settings an existing topic is given when its own value is weaker than its spec's, and which
#: way is stronger (1: larger, -1: smaller). A topic created by an earlier release lacks those that
#: came since: the profiles topic's min.compaction.lag.ms (8cdfa41), the identity topic's and the
#: changelogs' max.message.bytes (0730b87) and the changelogs' compaction settings (35ddcd8). The others are left as
#: they are: a cleanup policy or a partition count changed would change what the topic holds or
#: where a lead lives, and the dead letters' retention is the operator's trade between replaying
#: and erasing.
STRONGER = {
    "min.compaction.lag.ms": 1,
    "delete.retention.ms": 1,
    "max.message.bytes": 1,
    "segment.ms": -1,
    "min.cleanable.dirty.ratio": -1,
}
#: Of those, the settings for compaction (segment.ms: a segment is compacted once rolled), nothing
#: to a topic an operator made a deleting one (cleanup.policy=delete): not its shortfalls.
COMPACTION_ONLY = frozenset({"min.compaction.lag.ms", "delete.retention.ms", "min.cleanable.dirty.ratio", "segment.ms"})
#: The setting a topic that outlives another (TopicSpec.outlives) takes from that one's retention.ms,
#: set to it either way: lowered as well as raised.
FOLLOWING = frozenset({"min.compaction.lag.ms"})


def topic_specs(settings: Settings) -> list[TopicSpec]:
    n = settings.partitions
    return [  # the events topic first: the profiles topic's lag follows its retention
        TopicSpec(settings.topic_events, n, copartitioned=True),
        TopicSpec(settings.topic_profiles, n, profiles_config(), copartitioned=True, outlives=settings.topic_events),
        TopicSpec(settings.topic_crossings, n),
        # A read model only needs each lead's latest score.
        TopicSpec(settings.topic_scores, n, COMPACTED, copartitioned=True),
        TopicSpec(settings.topic_accounts, n, copartitioned=True),
        TopicSpec(settings.topic_identity, n, {"max.message.bytes": str(LARGE_RECORD_BYTES)}, copartitioned=True),
        TopicSpec(settings.topic_deadletter, n, {"retention.ms": str(DEAD_LETTER_RETENTION_MS)}, copartitioned=True),
    ]


def changelog_specs(settings: Settings) -> list[TopicSpec]:
    """The worker's table changelogs: Faust creates them, `leadstream topics` only brings existing
    ones to their settings."""
    return [TopicSpec(f"{settings.app_id}-{table}-changelog", settings.partitions, CHANGELOG_CONFIG, copartitioned=True)
            for table in (LEADS_TABLE, ACCOUNTS_TABLE)]


def profiles_config() -> dict[str, str]:
    """The profiles topic's settings. Its records are more than each lead's latest traits: an
    identify's `anonymous_id` and an alias's `previous_id` merge identities, and each update holds
    the traits in force for the events after it. Whoever reads the topics from the beginning (a
    worker of a new app id rescoring, `leadstream history` for score and review) needs every one
    of them that an event the events topic still holds goes with: once the lead's next update came,
    plain compaction dropped the identify that merged a visitor, which then scored as a lead of its
    own. So compaction leaves a record alone until it is as old as the events (by its Kafka
    timestamp), and keeps each lead's latest beyond that. The lag here is the retention the events
    get from leadstream's broker; the topic is created with, and brought to, the events topic's
    actual retention.ms (required_config).

    A tombstone here is a request to forget the lead (streams/forget.py). The lag holds it back
    too: the lead's earlier records (traits, e-mail) go once it is as old as the lag, a week, as
    its events on the events topic age out about then. Compaction then keeps it another week
    (`delete.retention.ms`; Kafka's default is a day), so a worker down for up to two weeks still
    reads it, and `leadstream history` leaves out the lead's events while the events topic may
    hold them (a segment is deleted once its newest record is past retention)."""
    return {**COMPACTED, "min.compaction.lag.ms": str(EVENTS_RETENTION_MS), "delete.retention.ms": str(FORGET_RETENTION_MS)}


def ensure_topics(settings: Settings, specs: list[TopicSpec] | None = None, alter: bool = True) -> list[str]:
    """Create the missing topics; report each one. An existing topic keeps its partitions and
    cleanup policy, but is given (`alter`, `leadstream topics`; the worker only warns, see
    weak_settings) each setting of STRONGER its spec requires that it has weaker, with a line per
    setting, as are the existing table changelogs when all of leadstream's topics are ensured
    (`specs` None). A ConfigError, once the missing ones are created, when a co-partitioned one (or
    an existing changelog, all being ensured) has another partition count than its spec's; a ServiceError when the broker refuses a setting."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    reviewed = changelog_specs(settings) if specs is None else []
    specs = topic_specs(settings) if specs is None else specs
    admin = open_client(settings, KafkaAdminClient, client_id="leadstream-topics")
    try:
        existing = set(admin.list_topics())
        lines: dict[str, list[str]] = {}
        for spec in specs:
            if spec.name in existing:
                lines[spec.name] = [f"topic {spec.name}: exists"]
                continue
            # Its spec's settings, with the lag that the events topic, created before it, requires.
            review = _review(admin, [spec], existing | set(lines))[0] if spec.outlives else Review(spec.name, spec.config, [], [])
            try:
                admin.create_topics(
                    [NewTopic(spec.name, num_partitions=spec.partitions, replication_factor=1, topic_configs=review.config)]
                )
            except TopicAlreadyExistsError:
                lines[spec.name] = [f"topic {spec.name}: exists"]
                continue
            policy = spec.config.get("cleanup.policy", "delete")
            lines[spec.name] = [f"topic {spec.name}: created ({spec.partitions} partitions, cleanup.policy={policy})",
                                *review.warnings]
        if alter:
            for review in _review(admin, [spec for spec in specs + reviewed if spec.name in existing], existing):
                _alter(admin, settings, review.shortfalls)
                lines.setdefault(review.topic, []).extend([shortfall.set_line() for shortfall in review.shortfalls]
                                                          + review.warnings)
        _check_partitions(admin, [spec for spec in specs if spec.copartitioned and spec.name in existing],
                          [spec for spec in reviewed if spec.name in existing])
        return [line for topic_lines in lines.values() for line in topic_lines]
    finally:
        admin.close()


class Setting(NamedTuple):
    """A topic's setting as the broker describes it."""

    value: str
    #: Whether the topic has it of its own (not the broker's default).
    own: bool


class Shortfall(NamedTuple):
    """A setting of an existing topic weaker than its spec requires (STRONGER), or, for a lag that
    follows another topic's retention, other than it (`shortfalls`' `exact`)."""

    topic: str
    name: str
    value: str
    #: The topic's own value; None when it has none (the broker's default applies).
    was: str | None

    @property
    def before(self) -> str:
        return "unset" if self.was is None else self.was

    def set_line(self) -> str:
        return f"topic {self.topic}: set {self.name}={self.value} (was {self.before})"

    def kafka_configs(self, settings: Settings) -> str:
        """The command that sets it by hand."""
        return (f"kafka-configs.sh --bootstrap-server {settings.kafka_bootstrap} --alter --entity-type topics "
                f"--entity-name {self.topic} --add-config {self.name}={self.value}")


class Review(NamedTuple):
    """The settings a topic requires (its spec's, resolved by required_config), those it lacks
    of them when it exists, and what no setting gives it (warning lines)."""

    topic: str
    config: dict[str, str]
    shortfalls: list[Shortfall]
    warnings: list[str]


def weak_settings(settings: Settings, specs: list[TopicSpec] | None = None) -> list[Review]:
    """What the existing topics of `specs` (leadstream's and the table changelogs when None) lack
    of their settings, as the broker describes them now; those lacking nothing are left out."""
    from kafka import KafkaAdminClient

    specs = topic_specs(settings) + changelog_specs(settings) if specs is None else specs
    admin = open_client(settings, KafkaAdminClient, client_id="leadstream-topics")
    try:
        existing = set(admin.list_topics())
        reviews = _review(admin, [spec for spec in specs if spec.name in existing], existing)
        return [review for review in reviews if review.shortfalls or review.warnings]
    finally:
        admin.close()


def required_config(spec: TopicSpec, retention_ms: int | None) -> dict[str, str]:
    """The settings `spec`'s topic requires, given the retention.ms of the topic it outlives
    (None: it does not exist, or the spec outlives none): min.compaction.lag.ms is that retention.
    A topic kept for ever (-1) cannot be outlived by a lag that still lets compaction remove what
    a request to forget a lead asks it to: the lag then stays the spec's (outlived_warning)."""
    if not _follows(spec, retention_ms):
        return spec.config
    return {**spec.config, "min.compaction.lag.ms": str(retention_ms)}


def _follows(spec: TopicSpec, retention_ms: int | None) -> bool:
    """Whether `spec`'s lag is the retention.ms of the topic it outlives (required_config)."""
    return spec.outlives is not None and retention_ms is not None and retention_ms >= 0


def shortfalls(topic: str, required: dict[str, str], described: dict[str, Setting],
               exact: frozenset[str] = frozenset()) -> list[Shortfall]:
    """Each setting of STRONGER in `required` that the topic, described as the broker does, has
    weaker, and each of `exact` that it has otherwise."""
    weak = []
    for name, value in required.items():
        if name in COMPACTION_ONLY and not _compacted(described):
            continue
        setting = described.get(name)
        if setting is None or (name not in STRONGER and name not in exact):
            continue
        short = float(value) - float(setting.value)
        if (name in exact and short) or (name in STRONGER and short * STRONGER[name] > 0):
            weak.append(Shortfall(topic, name, value, setting.value if setting.own else None))
    return weak


def outlived_warning(spec: TopicSpec, lag_ms: int) -> str:
    """The topic `spec` outlives keeps its records for ever: what a finite lag of `lag_ms` loses."""
    return (f"topic {spec.name}: warning: {spec.outlives} keeps its records for ever (retention.ms=-1), and no "
            f"min.compaction.lag.ms does while compaction still removes what `leadstream forget` asks it to: reading it "
            f"from the beginning (`leadstream history`, a new app id) may miss identifies and aliases, which merge "
            f"visitors, older than {lag_ms} ms. Give {spec.outlives} the retention.ms offline reads need, and run "
            "`leadstream topics` again")


def compacting_warning(spec: TopicSpec, described: dict[str, Setting]) -> str | None:
    """A topic leadstream creates deleting that its own settings compact (made by hand, or
    altered): compaction keeps only the latest record of each key, and these topics are keyed by
    lead, so a lead's earlier records go once their segment is cleaned, read or not. The worker
    found the events removed so as holes the log holds nothing in (counted as `log_hole`, as a
    transaction's markers are): 4 of a lead's 6 events never scored, and not a word of it."""
    policy = described.get("cleanup.policy")
    if policy is None or "compact" in spec.config.get("cleanup.policy", "delete") or not _compacted(described):
        return None
    return (f"topic {spec.name}: warning: cleanup.policy={policy.value}, where leadstream creates it with "
            "cleanup.policy=delete: compaction keeps only the latest record of each key (a lead), so a lead's earlier "
            "records are removed, read or not (events never scored, dead letters never replayed). leadstream leaves a "
            f"topic's cleanup policy to you: set it with `kafka-configs.sh --bootstrap-server <broker> --alter "
            f"--entity-type topics --entity-name {spec.name} --add-config cleanup.policy=delete`")


def _review(admin: Any, specs: list[TopicSpec], existing: set[str]) -> list[Review]:
    """Each spec's required settings and what its topic lacks of them (the topics exist)."""
    outlived = {spec.outlives for spec in specs if spec.outlives in existing}
    described = _describe(admin, sorted({spec.name for spec in specs if spec.name in existing} | outlived))
    reviews = []
    for spec in specs:
        retention_ms = int(described[spec.outlives]["retention.ms"].value) if spec.outlives in outlived else None
        required = required_config(spec, retention_ms)
        current = described.get(spec.name, {})
        warnings = []
        if retention_ms is not None and retention_ms < 0 and _compacted(current):
            lag = current["min.compaction.lag.ms"].value if "min.compaction.lag.ms" in current else required["min.compaction.lag.ms"]
            warnings.append(outlived_warning(spec, int(lag)))
        compacting = compacting_warning(spec, current)
        if compacting:
            warnings.append(compacting)
        # A lag longer than the retention it follows keeps a forgotten lead's profile records that
        # much longer than its events (README, Forgetting a lead): brought down to it, too.
        exact = FOLLOWING if _follows(spec, retention_ms) else frozenset()
        reviews.append(Review(spec.name, required, shortfalls(spec.name, required, current, exact), warnings))
    return reviews


def _compacted(described: dict[str, Setting]) -> bool:
    policy = described.get("cleanup.policy")
    return policy is None or "compact" in policy.value


def _describe(admin: Any, topics: list[str]) -> dict[str, dict[str, Setting]]:
    """Every setting of each topic, its own or the broker's default."""
    from kafka.admin import ConfigResource, ConfigResourceType

    resources = [ConfigResource(ConfigResourceType.TOPIC, topic) for topic in topics]
    deadline = time.monotonic() + DESCRIBE_TIMEOUT_S
    while True:
        described = admin.describe_configs(resources, config_filter="all").get("topic", {}) if topics else {}
        # kafka-python describes a topic it got an error for as having no settings: one created
        # a moment ago, until the broker's metadata has it.
        unknown = [topic for topic in topics if not described.get(topic)]
        if not unknown:
            return {topic: {name: Setting(entry["value"], entry["config_source"] == "DYNAMIC_TOPIC_CONFIG")
                            for name, entry in described[topic].items()} for topic in topics}
        if time.monotonic() > deadline:
            raise ServiceError(f"the broker describes no settings of {', '.join(unknown)} (within {DESCRIBE_TIMEOUT_S:.0f} s)")
        time.sleep(0.1)


def _alter(admin: Any, settings: Settings, weak: list[Shortfall]) -> None:
    """Sets the settings, each alone (incremental: the topic's others are left as they are)."""
    from kafka.admin import ConfigResource, ConfigResourceType

    if not weak:
        return
    resource = ConfigResource(ConfigResourceType.TOPIC, weak[0].topic, {shortfall.name: shortfall.value for shortfall in weak})
    result = admin.alter_configs([resource], incremental=True)["topic"][weak[0].topic]
    if result != "OK":
        commands = "; ".join(f"`{shortfall.kafka_configs(settings)}`" for shortfall in weak)
        raise ServiceError(f"topic {weak[0].topic}: the broker refused its settings ({result}): set them with {commands}")


def _check_partitions(admin: Any, specs: list[TopicSpec], changelogs: list[TopicSpec]) -> None:
    """ConfigError naming each existing topic, and table changelog, whose partition count is not
    its spec's. A lead lives on the partition LEADSTREAM_PARTITIONS makes of its id; on a topic of
    another count, producers put its events elsewhere (every one dead-lettered as wrong_partition),
    and the worker's writes to a partition the topic lacks stopped it at every restart
    (AssertionError: Unrecognized partition). A changelog holds the states of the count it was
    created with, each lead's on its partition then: unchecked, new topics of another count (as
    this error's advice made them) started workers that sat unready for minutes, Faust creating
    the changelog again and again, and then stopped, each of them, on the split assignment
    (streams/assignor.py)."""
    checked = specs + changelogs
    if not checked:
        return
    counts = {topic["name"]: len(topic["partitions"]) for topic in admin.describe_topics([spec.name for spec in checked])}

    def wrong(of: list[TopicSpec]) -> str:
        return ", ".join(f"{spec.name} has {counts[spec.name]}" for spec in of if counts.get(spec.name, spec.partitions) != spec.partitions)

    topics, states = wrong(specs), wrong(changelogs)
    problems = []
    if topics:
        # Not "set it to the topics' count": after partitions were added to them (and to the
        # changelogs), that started workers that found 88 leads of 200 nowhere and scored them
        # again from nothing (states_of_another_count now stops them).
        problems.append(f"{topics} partitions: leadstream's topics must all have the same count, the one LEADSTREAM_PARTITIONS "
                        "says. Partitions added to a topic cannot be taken back, and the setting raised to the new count "
                        "leaves each lead's state and earlier events on the partition of the count they were written under, "
                        "where the workers no longer look: score the events again under the new count (README: Changing "
                        "the partition count). Only if the setting changed, not the topics, set it back to the count they "
                        "were created with")
    if states:
        problems.append(f"the worker's table changelogs ({states} partitions) hold the lead and account states of that "
                        "count, each lead's on the partition its id had then, which workers of another count cannot read. "
                        "Start the workers under a new LEADSTREAM_APP_ID (its changelogs are created with this count), or "
                        "delete these changelogs (the states are lost), and score the events again from `leadstream "
                        "history` (README: Changing the partition count)")
    if problems:
        raise ConfigError(f"LEADSTREAM_PARTITIONS is {checked[0].partitions}, but " + "; and ".join(problems))


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
    return partition_counts(settings, [topic])[topic]


def partition_counts(settings: Settings, topics: Iterable[str]) -> dict[str, int]:
    """`partition_count` of each of `topics`, asked with one client."""
    from kafka import KafkaConsumer

    consumer = open_client(settings, KafkaConsumer, enable_auto_commit=False, client_id="leadstream-topics")
    try:
        return {topic: len(consumer.partitions_for_topic(topic) or ()) for topic in topics}
    finally:
        consumer.close()


def keyed_partitions(settings: Settings, topic: str, count: int) -> int:
    """The partitions over which a producer of records keyed by a lead (or account) puts them on
    `topic`, which has `count`: LEADSTREAM_PARTITIONS, by which the worker finds where a lead's
    state lives, never the topic's own count. ConfigError when they differ: partitions added to
    a topic made `send`, `forget`, `replay-dlq` and the collector, which followed the topic's
    count, put leads where their states are not (dead-lettered as wrong_partition, or a forget
    that forgot nothing), with no word said. The one place every producer of keyed records asks."""
    if count != settings.partitions:
        raise ConfigError(count_changed(settings, topic, count))
    return count


def count_changed(settings: Settings, topic: str, count: int) -> str:
    """What a producer says of `topic`, which has `count` partitions, not LEADSTREAM_PARTITIONS."""
    return (f"topic {topic} has {count} partitions, but LEADSTREAM_PARTITIONS is {settings.partitions}: a lead's records "
            "go to the partition its id makes under LEADSTREAM_PARTITIONS, beside its state, so none is written to it. The count cannot be "
            "changed in place: partitions added to a topic, or the setting raised, leave the leads' states and earlier "
            "records on the partitions of the old count; score the events again under the new count (README: Changing the "
            "partition count)")


def producer_partitions(settings: Settings, topics: Iterable[str]) -> int:
    """`keyed_partitions` of `topics`, which must all exist (a ServiceError naming one that
    does not), as the broker counts their partitions now."""
    counts = partition_counts(settings, topics)
    for topic, count in counts.items():
        if count == 0:
            raise ServiceError(missing_topic(settings, topic))
        keyed_partitions(settings, topic, count)
    return settings.partitions


def require_topic(settings: Settings, topic: str) -> int:
    """`topic`'s partitions; a ServiceError naming it and the setting that names it when it does
    not exist (a command reading it would wait for it for ever, or make topics after its typo)."""
    partitions = partition_count(settings, topic)
    if partitions == 0:
        raise ServiceError(missing_topic(settings, topic))
    return partitions


def missing_topic(settings: Settings, topic: str) -> str:
    """What to do about `topic`, which does not exist, naming the setting that names it."""
    variable = next((env for env, value in settings.as_env().items() if env.startswith("LEADSTREAM_TOPIC_") and value == topic),
                    "its setting")
    return f"topic {topic!r} does not exist: run `leadstream topics`, or check {variable}"


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
