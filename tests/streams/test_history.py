"""`leadstream history`: the raw topic on the real broker, written as the file score and review read."""

from __future__ import annotations

import io
import itertools
import os
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Callable

import orjson
import pytest
from kafka import KafkaAdminClient, KafkaProducer, TopicPartition

from streams.history import read_to_end, write_history
from streams.log_start import lost_beginning
from streams.offline import score_file
from streams.partitioning import partition_for
from streams.processes import WorkerProcess
from streams.send import open_producer, produce
from streams.settings import Settings
from streams.topics import EVENTS_RETENTION_MS, TopicSpec, ensure_topics, profiles_config, topic_specs
from tests.infra import leadstream, wait_for
from tests.scoring.support import DAY, HOUR, MINUTE, MODELS_DIR, T0
from tests.streams.test_offline import SAAS_EVENTS, write


def scored(path: Path) -> list[dict]:
    out = io.StringIO()
    assert score_file(MODELS_DIR, path, table=False, out=out, err=io.StringIO()) == 0
    return [orjson.loads(line) for line in out.getvalue().splitlines()]


def on_partition(prefix: str, partition: int, partitions: int) -> str:
    """The first id `prefix` + a number that lives on `partition`."""
    return next(f"{prefix}{n}" for n in itertools.count() if partition_for(f"{prefix}{n}", partitions) == partition)


def pricing_view(visitor: str, n: int, time_ms: int) -> dict:
    return {"event_id": f"{visitor}-{n}", "lead_id": visitor, "anonymous_id": visitor.removeprefix("anon:"), "type": "page_view",
            "product": "b2b", "time": time_ms, "properties": {"url": "https://acme.io/pricing", "time_on_page_s": 30}}


def identify_event(lead: str, visitor: str, time_ms: int) -> dict:
    return {"event_id": f"{lead}-id", "lead_id": lead, "anonymous_id": visitor.removeprefix("anon:"), "type": "identify",
            "product": "b2b", "time": time_ms}


def test_the_topic_written_to_a_file_scores_as_the_events_sent(isolated: Settings, tmp_path: Path) -> None:
    topic = isolated.topic_events
    producer = open_producer(isolated)
    try:
        # Envelopes of up to 2 events for the first half, single events for the rest.
        half = len(SAAS_EVENTS) // 2
        produce(producer, topic, ((e["lead_id"], orjson.dumps(e)) for e in SAAS_EVENTS[:half]), 2, partitions=isolated.partitions)
        produce(producer, topic, ((e["lead_id"], orjson.dumps(e)) for e in SAAS_EVENTS[half:]), 1, partitions=isolated.partitions)
        # What other producers may leave on the topic: a pretty-printed event spanning lines,
        # bytes that are not JSON, and a record without a value.
        pretty = {"event_id": "p", "lead_id": "cleo", "type": "signup", "time": SAAS_EVENTS[0]["time"], "product": "saas"}
        producer.send(topic, key=b"cleo", value=orjson.dumps(pretty, option=orjson.OPT_INDENT_2), partition=0)
        not_json = producer.send(topic, key=b"x", value=b"\x00not json", partition=0)
        producer.send(topic, key=b"x", value=None, partition=0)
        producer.flush()
        not_json_offset = not_json.get(timeout=10).offset
    finally:
        producer.close()

    out = tmp_path / "history.jsonl"
    done = leadstream(isolated, "history", "--out", str(out))
    assert done.stderr.splitlines()[-4:] == [
        f"{topic}: wrote {len(SAAS_EVENTS) - half + 2 + 1} messages",  # 3 events in 2 envelopes, 3 single, cleo
        f"{topic}: left out 1 messages that are not JSON (the first at partition 0 offset {not_json_offset})",
        f"{topic}: left out 1 tombstones (records without a value, which the worker dead-letters)",  # only the profiles topic's ask to forget
        f"{isolated.topic_profiles}: wrote 0 messages",
    ]
    lines = out.read_bytes().splitlines()
    assert all(orjson.loads(line) for line in lines)  # each line one JSON value
    expected = scored(write(tmp_path / "sent.jsonl", [*SAAS_EVENTS, pretty]))
    assert sorted(map(orjson.dumps, scored(out))) == sorted(map(orjson.dumps, expected))


def test_an_aborted_transaction_s_events_are_left_out_as_the_worker_leaves_them(isolated: Settings, tmp_path: Path) -> None:
    """kafka-python reads uncommitted records unless told: the 50 events of an aborted transaction
    were in the file, and `leadstream score` of it scored leads the worker never had. The same
    reader takes the dead letters `replay-dlq` sends back."""
    topic = isolated.topic_events
    producer = KafkaProducer(bootstrap_servers=isolated.kafka_bootstrap, transactional_id=f"history-{uuid.uuid4().hex}")
    try:
        producer.init_transactions()
        for lead, commit in (("hab", False), ("hok", True)):
            producer.begin_transaction()
            for n in range(10):
                event = {"event_id": f"{lead}-{n}", "lead_id": f"{lead}-{n % 5}", "type": "signup", "product": "saas",
                         "time": T0 + n * MINUTE}
                producer.send(topic, key=event["lead_id"].encode(), value=orjson.dumps(event))
            producer.flush()
            producer.commit_transaction() if commit else producer.abort_transaction()
    finally:
        producer.close()

    out = tmp_path / "history.jsonl"
    done = leadstream(isolated, "history", "--out", str(out))
    assert f"{topic}: wrote 10 messages" in done.stderr
    assert {orjson.loads(line)["lead_id"] for line in out.read_bytes().splitlines()} == {f"hok-{n}" for n in range(5)}
    assert sum(1 for _ in read_to_end(isolated, topic)) == 10


def test_a_topic_named_twice_is_read_once(isolated: Settings) -> None:
    producer = open_producer(isolated)
    try:
        produce(producer, isolated.topic_events, ((e["lead_id"], orjson.dumps(e)) for e in SAAS_EVENTS[:3]), 1, partitions=isolated.partitions)
    finally:
        producer.close()
    out, err = io.BytesIO(), io.StringIO()
    assert write_history(isolated, out, [isolated.topic_events, isolated.topic_events], err) == 0
    assert len(out.getvalue().splitlines()) == 3
    assert err.getvalue().splitlines() == [f"{isolated.topic_events}: wrote 3 messages"]


def test_the_file_is_its_owner_s_alone_as_it_holds_the_leads_traits(isolated: Settings, tmp_path: Path) -> None:
    # Written as the umask left it (644): every user of the machine could read every lead's e-mail.
    producer = open_producer(isolated)
    try:
        produce(producer, isolated.topic_events, ((e["lead_id"], orjson.dumps(e)) for e in SAAS_EVENTS[:3]), 1, partitions=isolated.partitions)
    finally:
        producer.close()
    out = tmp_path / "history.jsonl"
    umask = os.umask(0o022)  # the child's, as a shell gives it
    try:
        leadstream(isolated, "history", "--out", str(out))
    finally:
        os.umask(umask)
    assert len(out.read_bytes().splitlines()) == 3
    assert out.stat().st_mode & 0o777 == 0o600


def test_a_topic_that_does_not_exist_is_a_one_line_error(isolated: Settings, tmp_path: Path) -> None:
    done = leadstream(isolated, "history", "--out", str(tmp_path / "h.jsonl"), "--topic", f"{isolated.app_id}-nothing", check=False)
    assert done.returncode == 1
    assert done.stderr.strip() == f"leadstream history: topic '{isolated.app_id}-nothing' does not exist; check --topic (or LEADSTREAM_TOPIC_EVENTS and LEADSTREAM_TOPIC_PROFILES)"
    assert not (tmp_path / "h.jsonl").exists()  # no empty file left behind


def test_profile_updates_are_in_the_history_so_offline_scores_have_fit_and_merged_visitors(isolated: Settings, tmp_path: Path) -> None:
    """The collector sends identify, group and alias calls to the profiles topic: a history of
    the raw topic alone scored a collector-fed lead with no traits and its visitor apart."""
    def page(lead: str, n: int, url: str) -> dict:
        return {"event_id": f"{lead}-{n}", "lead_id": lead, "type": "page_view", "product": "b2b", "time": T0 + n * 60_000,
                "properties": {"url": url, "time_on_page_s": 30}}

    pages = [page("anon:a-1", 1, "https://acme.io/pricing"), page("anon:a-1", 2, "https://acme.io/pricing"),
             page("u-1", 3, "https://acme.io/about")]
    identify = {"event_id": "id-1", "lead_id": "u-1", "anonymous_id": "a-1", "type": "identify", "product": "b2b",
                "time": T0 + 4 * 60_000, "traits": {"email": "ada@initech.io", "title": "VP Marketing"}}
    producer = open_producer(isolated)
    try:
        produce(producer, isolated.topic_events, ((e["lead_id"], orjson.dumps(e)) for e in pages), 1, partitions=isolated.partitions)
        produce(producer, isolated.topic_profiles, [(identify["lead_id"], orjson.dumps(identify))], 1, partitions=isolated.partitions)
    finally:
        producer.close()

    out = tmp_path / "history.jsonl"
    leadstream(isolated, "history", "--out", str(out))
    leads = {(r["model"], r["lead_id"]): (r["score"], r["grade"]) for r in scored(out) if r["record"] == "lead"}
    expected = {(r["model"], r["lead_id"]): (r["score"], r["grade"])
                for r in scored(write(tmp_path / "sent.jsonl", [*pages, identify])) if r["record"] == "lead"}
    assert leads == expected
    assert ("b2b", "anon:a-1") not in leads and leads[("b2b", "u-1")][1] is not None  # merged, and graded on its traits


def test_a_visitor_on_a_later_partition_than_its_lead_is_stitched_as_in_the_file_sent(isolated: Settings, tmp_path: Path) -> None:
    """A visitor reads pricing three times, identifies as a lead an hour later, and the lead sends
    the contact form three days later. Written partition by partition, the history had the
    visitor's views (on a later partition) after the lead's form: `score` re-keyed them to a lead
    three days ahead of them, and they were late (15 points, nurture, for 45, mql)."""
    lead = on_partition("u-", 0, isolated.partitions)
    visitor = on_partition("anon:v", isolated.partitions - 1, isolated.partitions)
    form = {"event_id": f"{lead}-form", "lead_id": lead, "type": "form_submit", "product": "b2b", "time": T0 + 3 * DAY,
            "properties": {"form": "contact"}}
    sent = write(tmp_path / "sent.jsonl", [*(pricing_view(visitor, n, T0 + n * MINUTE) for n in range(3)),
                                           identify_event(lead, visitor, T0 + HOUR), form])
    leadstream(isolated, "send", str(sent))  # sent at once: most records share a Kafka timestamp

    out = tmp_path / "history.jsonl"
    leadstream(isolated, "history", "--out", str(out))
    expected = scored(sent)
    assert [(r["lead_id"], r["score"], r["level"]) for r in expected if r["record"] == "lead"] == [(lead, 45, "mql")]
    assert scored(out) == expected


def test_the_events_the_worker_re_keyed_to_a_visitors_lead_are_left_out(
    isolated: Settings, worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    """Two leads identify one visitor, the second once the worker merged it into the first; the
    visitor's next view is re-keyed by the worker to the first lead, a copy on its partition.
    Written partition by partition, the history gave the visitor to the second lead (on a
    lower partition), and the copy counted the view for the first one as well. The scorers
    re-key the original themselves: the copy is left out, so that it never counts for a lead
    they did not merge the visitor into."""
    first = on_partition("u-", 1, isolated.partitions)
    second = on_partition("u-", 0, isolated.partitions)
    visitor = on_partition("anon:v", isolated.partitions - 1, isolated.partitions)
    start = int(time.time() * 1000) - 600_000
    events = [*(pricing_view(visitor, n, start + n * 1000) for n in range(3)), identify_event(first, visitor, start + 3000),
              identify_event(second, visitor, start + 4000), pricing_view(visitor, 5, start + 5000)]
    proc = worker()
    producer = open_producer(isolated)

    def send(batch: list[dict]) -> None:
        produce(producer, isolated.topic_events, [(e["lead_id"], orjson.dumps(e)) for e in batch],
                events_per_message=1, partitions=isolated.partitions)

    try:
        # Each step once the worker took the one before, so that only the last view is re-keyed
        # (the identify, on another partition, may overtake views sent with it).
        send(events[:3])
        wait_for(lambda: b2b_score(proc, visitor) == 30, 60, "the visitor's three pricing views scored", 0.3)
        send(events[3:4])
        wait_for(lambda: merged_into(proc, visitor) == first, 60, f"the visitor merged into {first}", 0.3)
        send(events[4:])
    finally:
        producer.close()
    wait_for(lambda: any(b"stitched_from" in record.value for record in read_to_end(isolated, isolated.topic_events)), 60,
             "the worker's copy of the last view", 0.3)

    out = tmp_path / "history.jsonl"
    done = leadstream(isolated, "history", "--out", str(out))
    assert scored(out) == scored(write(tmp_path / "sent.jsonl", events))
    assert (f"{isolated.topic_events}: left out 1 events the worker re-keyed to the lead their visitor became (with "
            "`stitched_from`): score and review re-key the originals, which the file holds") in done.stderr.splitlines()
    assert b"stitched_from" not in out.read_bytes()


def lead_view(proc: WorkerProcess, lead_id: str) -> dict:
    """The worker's view of a lead (`GET /leads/ID/`), empty while it has none."""
    status, body = proc.get(f"/leads/{lead_id}/")
    return orjson.loads(body) if status == 200 else {}


def b2b_score(proc: WorkerProcess, lead_id: str) -> float | None:
    return lead_view(proc, lead_id).get("models", {}).get("b2b", {}).get("score")


def merged_into(proc: WorkerProcess, lead_id: str) -> str | None:
    return lead_view(proc, lead_id).get("merged_into")


def test_the_events_of_a_lead_forgotten_after_them_are_left_out(own_redis: Settings, tmp_path: Path) -> None:
    """The history wrote an erased lead's events and traits, and `leadstream score` of the file
    made the lead up again, although the command saw the request to forget it."""
    partitions = own_redis.partitions
    erin = on_partition("erin-", 0, partitions)
    ada = on_partition("ada-", 0, partitions)

    def event(lead: str, n: int, **traits: str) -> dict:
        return {"event_id": f"{lead}-{n}", "lead_id": lead, "type": "identify" if traits else "signup", "product": "saas",
                "time": T0 + n * MINUTE, **({"traits": traits} if traits else {})}

    before = [event(erin, 1, email="erin@private.example"), event(ada, 2), event(erin, 3)]
    after = event(erin, 4)
    producer = open_producer(own_redis)
    try:
        envelope = b"[" + b" , ".join(orjson.dumps(e) for e in before[1:]) + b"]"  # ada's and erin's, as a producer packs them
        producer.send(own_redis.topic_events, key=erin.encode(), value=orjson.dumps(before[0]), partition=0)
        producer.send(own_redis.topic_events, key=None, value=envelope, partition=0)
        producer.flush()
        time.sleep(0.05)  # the request comes after them (Kafka timestamps are in milliseconds)
        leadstream(own_redis, "forget", erin)
        time.sleep(0.05)
        producer.send(own_redis.topic_events, key=erin.encode(), value=orjson.dumps(after), partition=0)
        producer.flush()
    finally:
        producer.close()

    out = tmp_path / "history.jsonl"
    done = leadstream(own_redis, "history", "--out", str(out))
    assert f"{own_redis.topic_events}: left out 2 events of leads forgotten after them (`leadstream forget`)" in done.stderr
    lines = out.read_bytes().splitlines()
    assert lines == [b"[" + orjson.dumps(before[1]) + b"]", orjson.dumps(after)]  # ada's as written; erin's after the request
    assert b"erin@private.example" not in out.read_bytes()


def test_an_identify_that_merged_a_visitor_outlives_the_compaction_of_the_profiles_topic(isolated: Settings, tmp_path: Path) -> None:
    """The profiles topic was compacted down to each lead's latest update as soon as its segments
    rolled: a lead's next identify took away the one that had merged its visitor, and a history
    read after it scored the visitor as a lead of its own, which the worker had merged (309 of
    81.5k leads in a soak). Compaction now waits until a profile record is as old as the events.
    The topics here, of the real settings but for segments rolled after a second and cleaned at
    any dirt, are compacted within the broker's cleaner backoff (15 s): the one without the lag
    shows that compaction did run."""
    def pipeline(tag: str, lagged: bool) -> Settings:
        settings = isolated.namespaced(f"{isolated.app_id}-{tag}")  # deleted with the test's own topics
        specs = {spec.name: spec for spec in topic_specs(settings)}
        profiles = specs[settings.topic_profiles]
        config = {**profiles.config, "segment.ms": "1000", "min.cleanable.dirty.ratio": "0.01"}
        if not lagged:  # as an earlier release created it, whatever the events topic's retention
            config.pop("min.compaction.lag.ms", None)
            profiles = TopicSpec(profiles.name, profiles.partitions, config)
        ensure_topics(settings, [specs[settings.topic_events], replace(profiles, config=config)])
        return settings

    lagged, unlagged = pipeline("lag", True), pipeline("nolag", False)
    views = [pricing_view("anon:v-1", n, T0 + n * MINUTE) for n in (1, 2)]
    merging = {**identify_event("u-8119", "anon:v-1", T0 + 3 * MINUTE), "traits": {"email": "ada@initech.io"}}
    later = {"event_id": "u-8119-2", "lead_id": "u-8119", "type": "identify", "product": "b2b", "time": T0 + 4 * MINUTE,
             "traits": {"title": "VP Marketing"}}
    # Another lead of u-8119's partition, written once the segment of its identifies is old enough
    # to roll: the newest segment is never cleaned.
    other = on_partition("u-", partition_for("u-8119", isolated.partitions), isolated.partitions)
    roller = {"event_id": "r", "lead_id": other, "type": "identify", "product": "b2b", "time": T0 + 5 * MINUTE}
    producer = open_producer(isolated)
    try:
        for settings in (lagged, unlagged):
            produce(producer, settings.topic_events, ((e["lead_id"], orjson.dumps(e)) for e in views), 1, partitions=isolated.partitions)
            produce(producer, settings.topic_profiles, ((e["lead_id"], orjson.dumps(e)) for e in (merging, later)), 1, partitions=isolated.partitions)
        time.sleep(1.5)
        for settings in (lagged, unlagged):
            produce(producer, settings.topic_profiles, [(other, orjson.dumps(roller))], 1, partitions=isolated.partitions)
    finally:
        producer.close()

    def holds_merging(settings: Settings) -> bool:
        return any(record.value and orjson.loads(record.value).get("anonymous_id") == "v-1"
                   for record in read_to_end(settings, settings.topic_profiles))

    wait_for(lambda: not holds_merging(unlagged), 90, "the cleaner compacting the profiles topic without the lag", 1)
    for _ in range(5):  # without the lag, the cleaner's next passes took this topic's identify too
        assert holds_merging(lagged)
        time.sleep(1)

    def history(settings: Settings) -> tuple[set[str], str]:
        out = tmp_path / f"{settings.app_id}.jsonl"
        done = leadstream(settings, "history", "--out", str(out))
        return {r["lead_id"] for r in scored(out) if r["record"] == "lead"}, done.stderr

    leads, stderr = history(lagged)
    assert "anon:v-1" not in leads and "u-8119" in leads and "warning" not in stderr
    # Without the lag, the visitor the worker merged is a lead of its own, and history says why.
    leads, stderr = history(unlagged)
    assert "anon:v-1" in leads and "u-8119" in leads
    assert (f"{unlagged.topic_profiles}: warning: compacted with min.compaction.lag.ms=unset, less than "
            f"{unlagged.topic_events}'s retention.ms={EVENTS_RETENTION_MS}") in stderr
    assert "run `leadstream topics`, which sets it" in stderr  # kafka-configs.sh is not installed by `services up`


def test_a_profiles_lag_shorter_than_the_events_topics_retention_is_warned_of(isolated: Settings, tmp_path: Path) -> None:
    # The lag was compared with a fixed week: events kept 30 days had profile records compacted
    # after 7 without a word.
    settings = isolated.namespaced(f"{isolated.app_id}-long")  # deleted with the test's own topics
    specs = {spec.name: spec for spec in topic_specs(settings)}
    events = replace(specs[settings.topic_events], config={"retention.ms": str(30 * DAY)})
    # The lag a week, the old rule's, not the events topic's retention.ms as `leadstream topics` gives it now.
    ensure_topics(settings, [events, TopicSpec(settings.topic_profiles, settings.partitions, profiles_config())])
    stderr = leadstream(settings, "history", "--out", str(tmp_path / "history.jsonl")).stderr
    assert (f"{settings.topic_profiles}: warning: compacted with min.compaction.lag.ms={EVENTS_RETENTION_MS}, less than "
            f"{settings.topic_events}'s retention.ms={30 * DAY}") in stderr, stderr


def test_a_topic_whose_beginning_retention_deleted_is_warned_of(isolated: Settings) -> None:
    # A rescore from a topic whose oldest records are gone scores leads without their first
    # events and identifies: the audit's 200 SQL leads came back as nurture->mql under new ids,
    # and history said only "wrote 200 messages".
    topic = isolated.topic_events
    producer = KafkaProducer(bootstrap_servers=isolated.kafka_bootstrap, acks="all")
    try:
        for n in range(5):
            producer.send(topic, key=b"k", value=orjson.dumps(SAAS_EVENTS[n]), partition=1)
        producer.flush()
    finally:
        producer.close()
    admin = KafkaAdminClient(bootstrap_servers=isolated.kafka_bootstrap)
    try:
        admin.delete_records({TopicPartition(topic, 1): 3})
    finally:
        admin.close()
    out, err = io.BytesIO(), io.StringIO()
    assert write_history(isolated, out, [topic], err) == 0
    assert len(out.getvalue().splitlines()) == 2
    assert err.getvalue().splitlines() == [f"{topic}: warning: {lost_beginning(topic, {1: 3})}", f"{topic}: wrote 2 messages"]
    assert "partition 1 starts at offset 3, 3 offsets gone in all" in lost_beginning(topic, {1: 3})


def test_a_history_stopped_midway_leaves_no_file_cut_short_and_the_last_one_whole(
        isolated: Settings, tmp_path: Path, monkeypatch) -> None:
    """Written in place, a history stopped midway (Ctrl-C, SIGTERM, a broker gone) left a file cut
    short, which `score` and `review` took for the whole history."""
    from streams import history

    def stopped(settings: Settings, out, topics: list[str]) -> int:
        out.write(b'{"event_id": "e1", "lead_id": "u1", "type": "page_view", "time": 1767225600000}\n')
        raise KeyboardInterrupt

    path = tmp_path / "history.jsonl"
    monkeypatch.setattr(history, "write_history", stopped)
    with pytest.raises(KeyboardInterrupt):
        history.history_file(isolated, path)
    assert list(tmp_path.iterdir()) == []
    path.write_text("the last history\n")
    path.chmod(0o640)
    with pytest.raises(KeyboardInterrupt):
        history.history_file(isolated, path)
    assert path.read_text() == "the last history\n" and list(tmp_path.iterdir()) == [path]
    monkeypatch.undo()
    assert history.history_file(isolated, path) == 0  # written whole: in its place, with its mode
    assert path.read_text() == "" and (path.stat().st_mode & 0o777) == 0o640
    assert history.history_file(isolated, tmp_path / "new.jsonl") == 0
    assert ((tmp_path / "new.jsonl").stat().st_mode & 0o777) == 0o600
