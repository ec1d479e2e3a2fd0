"""leadstream's topics (streams/topics.py) on the real broker: created with their partition
counts, existing ones of another count refused, and existing ones given the settings this release
requires."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Callable

import pytest
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType

from streams.history import read_to_end as records_to_end
from streams.processes import WorkerProcess
from streams.settings import Settings
from streams.topics import (COMPACTED, FORGET_RETENTION_MS, LARGE_RECORD_BYTES, TopicSpec, changelog_specs, ensure_topics,
                            partition_count, topic_config, topic_specs)
from tests.infra import add_partitions, leadstream, read_to_end, wait_for, write_jsonl

DAY_MS = 24 * 3600 * 1000


def earlier_release(settings: Settings, events_retention_ms: int) -> None:
    """Topics as a3c2d13 (and the releases before 2026-12-04 for the changelog) created them: the
    profiles topic without min.compaction.lag.ms, the leads changelog on Kafka's defaults; the
    events topic keeping its records `events_retention_ms`."""
    old_profiles = {**COMPACTED, "delete.retention.ms": str(FORGET_RETENTION_MS)}
    ensure_topics(settings, [TopicSpec(settings.topic_events, 4, {"retention.ms": str(events_retention_ms)}),
                             TopicSpec(settings.topic_profiles, 4, old_profiles),
                             TopicSpec(f"{settings.app_id}-leads-changelog", 4, {"cleanup.policy": "compact"})])


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
    # Not "Set it to the topics' count": after partitions were added, that leaves every state where
    # no worker looks for it.
    assert "Set it to the topics' count" not in done.stderr
    assert "score the events again under the new count (README: Changing the partition count)" in done.stderr
    # The others were created all the same; the worker refuses to start on the same line.
    assert partition_count(settings, settings.topic_identity) == 4
    worker = leadstream(settings, "worker", check=False)
    assert worker.returncode == 1 and f"{settings.topic_events} has 8 partitions" in worker.stderr


def test_changelogs_of_another_partition_count_are_refused_at_once_saying_what_to_do(isolated: Settings) -> None:
    # Before, the topics' own advice (deleted, then created with the new count) left the changelogs
    # of the old count: `leadstream topics` said nothing of them, and the worker sat unready for
    # 3 minutes, Faust creating the changelog again and again, then stopped on a split assignment.
    settings = isolated.namespaced(f"{isolated.app_id}-c")  # deleted with the test's own topics
    ensure_topics(settings, [TopicSpec(spec.name, 2, spec.config) for spec in changelog_specs(settings)])
    done = leadstream(settings, "topics", check=False)
    assert done.returncode == 1, done
    assert (f"LEADSTREAM_PARTITIONS is 4, but the worker's table changelogs ({settings.app_id}-leads-changelog has 2, "
            f"{settings.app_id}-accounts-changelog has 2 partitions)" in done.stderr), done.stderr
    assert "new LEADSTREAM_APP_ID" in done.stderr and "delete these changelogs" in done.stderr, done.stderr
    assert partition_count(settings, settings.topic_events) == 4  # leadstream's own topics, created all the same
    started = time.monotonic()
    worker = leadstream(settings, "worker", check=False)
    assert worker.returncode == 1 and "leads-changelog has 2" in worker.stderr and time.monotonic() - started < 30, worker.stderr


def test_a_worker_refuses_states_restored_from_a_changelog_partitions_were_added_to(
    isolated: Settings, worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    """Partitions added to every topic and both changelogs, then LEADSTREAM_PARTITIONS raised to
    match: `leadstream topics` said only "exists", and the workers restored each state on the
    partition of the old count, where they no longer looked for its lead: 88 leads of 200 started
    again from nothing, new crossings under new ids. The worker stops before it scores, naming
    the changelog and both counts."""
    start = int(time.time() * 1000) - 48 * 3_600_000
    events = [{"event_id": f"lead-{n}-{i}", "lead_id": f"lead-{n}", "type": kind, "product": "saas",
               "time": start + i * 3_600_000} for n in range(40) for i, kind in enumerate(["signup", "created_task"])]
    leadstream(isolated, "send", str(write_jsonl(tmp_path / "events.jsonl", events)))
    first = worker()
    changelogs = [spec.name for spec in changelog_specs(isolated)]
    wait_for(lambda: len({record.key for record in records_to_end(isolated, changelogs[0])}) >= 40, timeout_s=60,
             what="the states in the changelog")
    first.stop()
    add_partitions(isolated, [spec.name for spec in topic_specs(isolated)] + changelogs, 6)
    six = isolated.with_overrides(partitions=6)
    assert leadstream(six, "topics").stdout.count(": exists") == 7  # every count agrees with the setting
    started = leadstream(six, "worker", check=False, timeout=120)
    said = started.stdout + started.stderr
    assert started.returncode != 0, said[-3000:]
    assert (f"{changelogs[0]} has 6 partitions, but the states on its partition" in said
            and "were written under 4 partitions" in said and "README: Changing the partition count" in said), said[-3000:]


def test_producers_of_keyed_records_refuse_a_topic_partitions_were_added_to(own_redis: Settings, tmp_path: Path) -> None:
    """`send`, `forget` and `replay-dlq` put each lead on the partition of the topic's own count:
    with partitions added to the events topic, `send` wrote 70 events of 200 on partitions the
    worker does not find their leads on (dead-lettered as wrong_partition, or on partitions no
    worker reads), and `replay-dlq --reason wrong_partition` would have sent them back to the same.
    Each refuses, naming the topic and both counts, and sends nothing."""
    settings = own_redis
    add_partitions(settings, [settings.topic_events], 6)
    path = write_jsonl(tmp_path / "events.jsonl", [{"event_id": f"e{n}", "lead_id": f"lead-{n}", "type": "page_view",
                                                    "time": 1_767_225_600_000} for n in range(200)])
    said = (f"topic {settings.topic_events} has 6 partitions, but LEADSTREAM_PARTITIONS is 4: a lead's records go to the "
            "partition its id makes under LEADSTREAM_PARTITIONS, beside its state, so none is written to it")
    for command in (["send", str(path)], ["send", str(path), "--events-per-message", "20"], ["forget", "lead-0"],
                    ["replay-dlq", "--reason", "wrong_partition"]):
        done = leadstream(settings, *command, check=False)
        assert done.returncode == 1 and said in done.stderr, (command, done)
        assert "README: Changing the partition count" in done.stderr
    assert partition_count(settings, settings.topic_events) == 6
    assert read_to_end(settings, settings.topic_events) == [] and read_to_end(settings, settings.topic_profiles) == []


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


def test_topics_an_earlier_release_created_are_given_the_settings_this_one_requires(isolated: Settings) -> None:
    # `leadstream topics` said "exists" of them and exited 0: the profiles topic was compacted as
    # soon as its segments rolled, taking the identifies and aliases that merged visitors from
    # `leadstream history` and rescores, and the changelog refused a lead's record over 1 MB.
    settings = isolated.namespaced(f"{isolated.app_id}-old")  # deleted with the test's own topics
    earlier_release(settings, 30 * DAY_MS)
    out = leadstream(settings, "topics").stdout.splitlines()
    profiles, changelog = settings.topic_profiles, f"{settings.app_id}-leads-changelog"
    # As long as the events topic keeps its records, not a fixed week.
    assert f"topic {profiles}: set min.compaction.lag.ms={30 * DAY_MS} (was unset)" in out, out
    assert f"topic {changelog}: set max.message.bytes={LARGE_RECORD_BYTES} (was unset)" in out, out
    assert f"topic {changelog}: set segment.ms=600000 (was unset)" in out, out
    assert f"topic {settings.topic_events}: exists" in out and not any(f"topic {settings.topic_events}: set" in line for line in out)
    config = topic_config(settings, profiles)
    # Incrementally: what the topic had stays.
    assert config == {**COMPACTED, "delete.retention.ms": str(FORGET_RETENTION_MS), "min.compaction.lag.ms": str(30 * DAY_MS)}
    assert topic_config(settings, changelog) == {"cleanup.policy": "compact", "segment.ms": "600000",
                                                 "min.cleanable.dirty.ratio": "0.1", "max.message.bytes": str(LARGE_RECORD_BYTES)}
    assert partition_count(settings, profiles) == 4
    again = leadstream(settings, "topics").stdout
    assert ": set " not in again, again


def test_the_profiles_topic_is_created_with_the_lag_of_the_events_topics_retention(isolated: Settings) -> None:
    settings = isolated.namespaced(f"{isolated.app_id}-new")  # deleted with the test's own topics
    ensure_topics(settings, [TopicSpec(settings.topic_events, 4, {"retention.ms": str(30 * DAY_MS)})])
    ensure_topics(settings)
    assert topic_config(settings, settings.topic_profiles)["min.compaction.lag.ms"] == str(30 * DAY_MS)


def test_events_kept_for_ever_leave_the_lag_as_it_is_with_a_warning(isolated: Settings) -> None:
    # No lag keeps the profile records for ever while compaction still removes a forgotten lead's.
    settings = isolated.namespaced(f"{isolated.app_id}-ever")  # deleted with the test's own topics
    earlier_release(settings, -1)
    out = leadstream(settings, "topics").stdout
    assert (f"topic {settings.topic_profiles}: warning: {settings.topic_events} keeps its records for ever (retention.ms=-1)"
            in out), out
    assert f"Give {settings.topic_events} the retention.ms offline reads need, and run `leadstream topics` again" in out
    assert f"{settings.topic_profiles}: set min.compaction.lag.ms={7 * DAY_MS} (was unset)" in out  # a week at least
    history = leadstream(settings, "history", "--out", "-").stderr
    assert f"topic {settings.topic_profiles}: warning: {settings.topic_events} keeps its records for ever" in history


def test_a_lag_longer_than_the_events_retention_is_lowered_to_it(isolated: Settings) -> None:
    # `leadstream topics` only raised the lag: events kept a day after 30 days left the profiles
    # topic's lag at 30 days without a word, so a forgotten lead's traits stayed 30 days where the
    # README's erasure timeline says a day.
    settings = isolated.namespaced(f"{isolated.app_id}-short")  # deleted with the test's own topics
    ensure_topics(settings, [TopicSpec(settings.topic_events, 4, {"retention.ms": str(30 * DAY_MS)})])
    ensure_topics(settings)
    # A topic just created is described with no settings until the broker's metadata has it.
    wait_for(lambda: topic_config(settings, settings.topic_profiles).get("min.compaction.lag.ms") == str(30 * DAY_MS))
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        events = ConfigResource(ConfigResourceType.TOPIC, settings.topic_events, {"retention.ms": str(DAY_MS)})
        assert admin.alter_configs([events], incremental=True)["topic"][settings.topic_events] == "OK"
    finally:
        admin.close()
    history = leadstream(settings, "history", "--out", "-").stderr
    assert (f"{settings.topic_profiles}: warning: compacted with min.compaction.lag.ms={30 * DAY_MS}, more than "
            f"{settings.topic_events}'s retention.ms={DAY_MS}") in history, history
    out = leadstream(settings, "topics").stdout.splitlines()
    assert f"topic {settings.topic_profiles}: set min.compaction.lag.ms={DAY_MS} (was {30 * DAY_MS})" in out, out
    assert topic_config(settings, settings.topic_profiles)["min.compaction.lag.ms"] == str(DAY_MS)
    assert "warning" not in leadstream(settings, "history", "--out", "-").stderr
    again = leadstream(settings, "topics").stdout
    assert ": set " not in again, again


def test_a_profiles_topic_an_operator_made_deleting_is_not_given_compaction_settings(isolated: Settings) -> None:
    # It was told it lacked min.compaction.lag.ms, which compacts nothing on a topic that is not.
    settings = isolated.namespaced(f"{isolated.app_id}-del")  # deleted with the test's own topics
    ensure_topics(settings, [TopicSpec(settings.topic_events, 4, {"retention.ms": str(30 * DAY_MS)}),
                             TopicSpec(settings.topic_profiles, 4, {"cleanup.policy": "delete", "retention.ms": str(30 * DAY_MS)})])
    out = leadstream(settings, "topics").stdout
    assert f"topic {settings.topic_profiles}: set" not in out, out
    assert not {"min.compaction.lag.ms", "delete.retention.ms"} & set(topic_config(settings, settings.topic_profiles))
    history = leadstream(settings, "history", "--out", "-").stderr
    assert "warning" not in history, history


def test_the_worker_says_what_an_earlier_release_s_topics_lack(isolated: Settings,
                                                               worker: Callable[..., WorkerProcess]) -> None:
    # The worker started on them without a word; it leaves their settings to `leadstream topics`.
    settings = isolated.namespaced(f"{isolated.app_id}-w")  # deleted with the test's own topics
    earlier_release(settings, 7 * DAY_MS)
    proc = worker(settings)
    lines = [line for line in proc.log.read_text().splitlines() if "weaker than this release requires" in line]
    assert len(lines) == 1, proc.log.read_text()
    assert f"{settings.topic_profiles} min.compaction.lag.ms=unset (needs {7 * DAY_MS})" in lines[0]
    assert "run `leadstream topics`, which sets them" in lines[0]
    assert "min.compaction.lag.ms" not in topic_config(settings, settings.topic_profiles)


def test_a_topic_leadstream_deletes_that_an_operator_made_compacted_is_warned_of(isolated: Settings,
                                                                                  worker: Callable[..., WorkerProcess]) -> None:
    # An events topic made by hand with cleanup.policy=compact lost a lead's earlier events to
    # compaction before the worker read them (4 of 6 never scored, counted as log holes), and
    # neither `leadstream topics` ("exists") nor the worker said a word of its policy.
    settings = isolated.namespaced(f"{isolated.app_id}-cmp")  # deleted with the test's own topics
    ensure_topics(settings, [TopicSpec(settings.topic_events, 4, {"cleanup.policy": "compact"}),
                             TopicSpec(settings.topic_deadletter, 4, {"cleanup.policy": "compact,delete"})])
    out = leadstream(settings, "topics").stdout
    for topic, policy in ((settings.topic_events, "compact"), (settings.topic_deadletter, "compact,delete")):
        assert (f"topic {topic}: warning: cleanup.policy={policy}, where leadstream creates it with cleanup.policy=delete"
                in out), out
        assert f"--entity-name {topic} --add-config cleanup.policy=delete" in out, out
    assert out.count(": warning: cleanup.policy=") == 2, out  # not the topics compacted by design (profiles, scores)
    proc = worker(settings)
    log = proc.log.read_text()
    assert f"topic {settings.topic_events}: warning: cleanup.policy=compact" in log, proc.tail()
