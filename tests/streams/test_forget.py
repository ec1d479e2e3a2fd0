"""Erasure on the real broker: `leadstream forget` takes a lead out of every place the worker
keeps or publishes it, through a restart; tombstones elsewhere are dead letters, never a crash."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import orjson
import pytest
from kafka import KafkaProducer
from redis import Redis

from scoring.state import LeadState
from streams import stitching
from streams.history import read_to_end
from streams.partitioning import partition_for
from streams.processes import WorkerProcess, free_port
from streams.settings import Settings
from streams.topics import topic_config
from tests.infra import add_partitions, leadstream, read_topic, wait_for, write_jsonl
from tests.streams.test_durability_failures import set_max_message_bytes

MINUTE_MS = 60_000


def event(lead: str, n: int, kind: str, at_ms: int, **fields: object) -> dict[str, object]:
    return {"event_id": f"{lead}-{n}", "lead_id": lead, "type": kind, "product": "b2b", "time": at_ms, **fields}


def latest(settings: Settings, topic: str) -> dict[bytes | None, bytes | None]:
    return {record.key: record.value for record in read_to_end(settings, topic)}


def scored(proc: WorkerProcess, lead: str, score: float) -> bool:
    status, body = proc.get(f"/leads/{lead}/")
    return status == 200 and orjson.loads(body)["models"].get("b2b", {}).get("score") == score


def test_forget_erases_a_lead_from_states_read_models_and_accounts_through_a_restart(
    isolated: Settings, own_redis: Settings, worker: Callable[..., WorkerProcess]
) -> None:
    now = int(time.time() * 1000) - 30 * MINUTE_MS
    producer = KafkaProducer(bootstrap_servers=isolated.kafka_bootstrap)
    for n, kind in enumerate(("form_submit", "meeting_booked")):
        value = event("u-1", n, kind, now + n, account_id="acme", properties={"form": "demo_request"})
        producer.send(isolated.topic_events, key=b"u-1", value=orjson.dumps(value))
    producer.send(isolated.topic_events, key=b"u-2", value=orjson.dumps(event("u-2", 0, "webinar_attended", now, account_id="acme")))
    profile = event("u-1", 9, "identify", now + 5, traits={"email": "ada@initech.io", "title": "VP Marketing"})
    producer.send(isolated.topic_profiles, key=b"u-1", value=orjson.dumps(profile))
    producer.flush()
    proc = worker()
    wait_for(lambda: scored(proc, "u-2", 10) and proc.get("/leads/u-1/")[0] == 200, 60, "both leads scored", 0.3)

    result = leadstream(own_redis, "forget", "u-1")  # own_redis: the erasure is recorded in Redis, not under the shared prefix
    assert "asked to forget 1 lead" in result.stdout

    wait_for(lambda: proc.get("/leads/u-1/")[0] == 404, 60, "u-1 erased on the worker", 0.3)
    scores = latest(isolated, isolated.topic_scores)
    assert scores[b"b2b/u-1"] is None and orjson.loads(scores[b"b2b/u-2"] or b"{}")["score"] == 10
    # The lead's table entry is a marker until the request's offsets are committed, then goes
    # with a tombstone (streams/erasure.py).
    changelog = f"{isolated.app_id}-leads-changelog"
    wait_for(lambda: latest(isolated, changelog).get(b"u-1", b"") is None, 60, "u-1's tombstone on the changelog", 0.5)
    assert latest(isolated, changelog)[b"u-2"] is not None
    # acme stops counting u-1: past "engaged" (60) with it, back under the line without it.
    def acme() -> list[tuple[str, str]]:
        crossings = [orjson.loads(r.value or b"") for r in read_to_end(isolated, isolated.topic_crossings)]
        return [(c["from_level"], c["to_level"]) for c in crossings if c["kind"] == "account"]

    wait_for(lambda: len(acme()) == 2, 60, "acme's crossing back down", 0.3)
    assert acme() == [("unaware", "engaged"), ("engaged", "unaware")]
    # The crossing the erasure caused does not carry the erased id out to the CRMs.
    down = [c for c in map(orjson.loads, (r.value or b"" for r in read_to_end(isolated, isolated.topic_crossings))) if c["kind"] == "account"][-1]
    assert down["lead_id"] is None and "u-1" not in orjson.dumps(down).decode()
    assert proc.metric("leadstream_leads_forgotten_total") == [1.0]
    # Asked again, and for an id no event carries (an e-mail address for a lead id): nothing was
    # erased, and it said "leads forgotten: count=1" and counted them as leads forgotten.
    leadstream(own_redis, "forget", "u-1", "ada@initech.io")
    wait_for(lambda: proc.metric("leadstream_forget_requests_without_state_total") == [2.0], 60, "both requests read", 0.3)
    assert proc.metric("leadstream_leads_forgotten_total") == [1.0]
    assert "requests to forget an id with no state" in proc.log.read_text()

    # A fresh worker recovers the tables from the changelogs: u-1 stays forgotten.
    proc.stop()
    again = worker()
    assert again.get("/leads/u-1/")[0] == 404
    assert scored(again, "u-2", 10)
    # The lead's next event starts a new profile, with nothing of the old one, and its account
    # counts it again: the leaving stood at the erased profile's newest event, not at the
    # request's time, which is later than this event's.
    later = event("u-1", 20, "webinar_attended", now + MINUTE_MS, account_id="acme")
    producer.send(isolated.topic_events, key=b"u-1", value=orjson.dumps(later))
    producer.flush()
    producer.close()
    wait_for(lambda: scored(again, "u-1", 10), 60, "u-1's new profile scored from its new event alone", 0.3)

    def acme_score() -> object:
        value = latest(isolated, isolated.topic_scores).get(b"b2b:account/acme")
        return None if value is None else orjson.loads(value)["score"]

    wait_for(lambda: acme_score() == 20, 60, "acme counting u-2 and u-1's new profile (10 each)", 0.3)


def test_no_latest_record_of_the_account_changelog_or_the_score_changes_names_a_lead_that_left_a_paged_account(
    own_redis: Settings, worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    """An account of more than 1,024 members keeps them in pages (streams/account_table.py),
    each written with what the members its batch updated were before it, a lead that left
    included: the page's latest record, which compaction keeps, named a forgotten lead (its id,
    score and time) for good, and every member of an account they all left."""
    now = int(time.time() * 1000) - 30 * MINUTE_MS
    members = 1100  # past the 1,024 an account's value holds itself
    joined = [event(f"FG-{n}", 0, "page_view", now + n, account_id="fgacct") for n in range(members)]
    joined += [event(f"MV-{n}", 0, "page_view", now + n, account_id="mvacct") for n in range(members)]
    leadstream(own_redis, "send", "--events-per-message", "200", str(write_jsonl(tmp_path / "joined.jsonl", joined)))
    proc = worker()

    def summary(account: str) -> object:
        value = latest(own_redis, own_redis.topic_scores).get(f"b2b:account/{account}".encode(), b"")
        return value if value in (b"", None) else orjson.loads(value)["members"]

    wait_for(lambda: summary("fgacct") == members and summary("mvacct") == members, 120, "both accounts rolled up", 1)
    moved = [event(f"MV-{n}", 1, "page_view", now + MINUTE_MS + n, account_id="elsewhere") for n in range(members)]
    leadstream(own_redis, "send", "--events-per-message", "200", str(write_jsonl(tmp_path / "moved.jsonl", moved)))
    assert "asked to forget 1 lead" in leadstream(own_redis, "forget", "FG-7").stdout
    wait_for(lambda: proc.get("/leads/FG-7/")[0] == 404 and summary("fgacct") == members - 1 and summary("mvacct") is None,
             120, "FG-7 forgotten, the MV leads moved out", 1)

    changelog = f"{own_redis.app_id}-accounts-changelog"

    def naming() -> list[bytes]:
        """The keys of the accounts changelog whose latest record names FG-7 or, outside the
        account they moved to, an MV lead."""
        return [key or b"" for key, value in latest(own_redis, changelog).items()
                if value is not None and (b'"FG-7"' in value or (b'"MV-' in value and not (key or b"").startswith(b"elsewhere")))]

    # The account's records are sent once its batch's crossings are written: a moment after the summaries.
    wait_for(lambda: not naming(), 30, "no latest record of the accounts changelog naming a lead that left", 1)
    # Nor the score-changes topic (the account summaries' best members, the lead's own key).
    assert not [key for key, value in latest(own_redis, own_redis.topic_scores).items() if value is not None and b'"FG-7"' in value]
    assert latest(own_redis, own_redis.topic_scores)[b"b2b/FG-7"] is None
    # mvacct, left by all its members, is inline again: its pages are deleted.
    assert not [key for key, value in latest(own_redis, changelog).items() if (key or b"").startswith(b"mvacct\xff") and value is not None]


def test_tombstones_where_none_belong_are_dead_lettered_and_the_worker_goes_on(
    isolated: Settings, worker: Callable[..., WorkerProcess]
) -> None:
    now = int(time.time() * 1000) - 30 * MINUTE_MS
    producer = KafkaProducer(bootstrap_servers=isolated.kafka_bootstrap)
    producer.send(isolated.topic_events, key=b"carol", value=None)
    producer.send(isolated.topic_identity, key=b"anon:x", value=None)
    producer.send(isolated.topic_accounts, key=b"acme", value=None, partition=0)
    wrong = (partition_for("carol", 4) + 1) % 4
    producer.send(isolated.topic_profiles, key=b"carol", value=None, partition=wrong)  # a forget on the wrong partition
    producer.send(isolated.topic_profiles, key=b"\xff\xfe", value=None)  # a forget keyed by no text: no replay can mend it
    producer.send(isolated.topic_events, key=b"carol", value=orjson.dumps(event("carol", 1, "webinar_attended", now)))
    producer.flush()
    producer.close()

    proc = worker()

    dead = {(letter["source"]["topic"], letter["reason"]): letter for _, letter in read_topic(isolated, isolated.topic_deadletter, expect=5)}
    assert set(dead) == {(isolated.topic_events, "tombstone"), (isolated.topic_identity, "tombstone"),
                         (isolated.topic_accounts, "tombstone"), (isolated.topic_profiles, "wrong_partition"),
                         (isolated.topic_profiles, "tombstone")}
    assert "leadstream forget" in dead[(isolated.topic_events, "tombstone")]["detail"]
    assert "request to forget lead 'carol'" in dead[(isolated.topic_profiles, "wrong_partition")]["detail"]
    wait_for(lambda: scored(proc, "carol", 10), 60, "carol's event scored after the tombstones", 0.3)

    # Replayed, the request to forget goes to carol's own partition, as a tombstone (it was sent
    # back as an empty value, refused as bad JSON); the tombstones where none belong stay.
    out = leadstream(isolated, "replay-dlq", "--reason", "wrong_partition", "--reason", "tombstone").stdout
    assert "wrong_partition: replayed 1" in out and "not replayable: 3 (a tombstone where none belongs)" in out
    # It was counted as replayed, and came back as a dead letter at every replay.
    assert "tombstone: replayed 0" in out and "not replayable: 1 (a request to forget keyed by no lead id (UTF-8 text))" in out
    wait_for(lambda: proc.get("/leads/carol/")[0] == 404, 60, "carol forgotten by the replayed request", 0.3)


def test_the_profiles_topic_keeps_forget_requests_a_week_after_compaction(isolated: Settings) -> None:
    config = topic_config(isolated, isolated.topic_profiles)
    assert config["cleanup.policy"] == "compact" and config["delete.retention.ms"] == str(7 * 24 * 3600 * 1000)
    # Which comes a week after the request at the earliest: compaction waits as long as the events stay.
    assert config["min.compaction.lag.ms"] == str(7 * 24 * 3600 * 1000)


def test_a_lead_whose_stored_state_cannot_be_read_is_set_aside_and_can_be_forgotten(
    isolated: Settings, own_redis: Settings, worker: Callable[..., WorkerProcess]
) -> None:
    """A table value no worker can read (written to the changelog by something else, or by a
    later version) once stopped the worker at every recovery. Now it is left as it is, the lead's
    events go to the dead-letter topic saying why, everyone else is scored, and forgetting the
    lead clears it."""
    now = int(time.time() * 1000)
    producer = KafkaProducer(bootstrap_servers=isolated.kafka_bootstrap)
    producer.send(isolated.topic_events, key=b"u-1", value=orjson.dumps(event("u-1", 0, "webinar_attended", now)))
    producer.flush()
    proc = worker()
    wait_for(lambda: scored(proc, "u-1", 10), 60, "u-1 scored", 0.3)
    proc.stop()  # the changelog topic exists now: spoil u-1's value in it
    changelog = f"{isolated.app_id}-leads-changelog"
    producer.send(changelog, key=b"u-1", value=b"\x03b2b\x00\x00\x00\x09not state", partition=partition_for("u-1", isolated.partitions))
    for n, lead in enumerate(("u-1", "u-2")):
        producer.send(isolated.topic_events, key=lead.encode(), value=orjson.dumps(event(lead, 10 + n, "webinar_attended", now + 1)))
    producer.flush()

    again = worker()  # recovers, indexes decay and becomes ready all the same
    wait_for(lambda: scored(again, "u-2", 10), 60, "u-2 scored", 0.3)
    [(_, letter)] = read_topic(isolated, isolated.topic_deadletter, expect=1)
    assert letter["reason"] == "unreadable_state" and "lead 'u-1'" in letter["detail"] and "leadstream forget" in letter["detail"]
    assert orjson.loads(letter["original"])["event_id"] == "u-1-10"
    status, body = again.get("/leads/u-1/")
    assert status == 500 and b"cannot be read" in body

    leadstream(own_redis, "forget", "u-1")
    wait_for(lambda: again.get("/leads/u-1/")[0] == 404, 60, "u-1 forgotten", 0.3)
    producer.send(isolated.topic_events, key=b"u-1", value=orjson.dumps(event("u-1", 20, "webinar_attended", now + 2)))
    producer.flush()
    producer.close()
    wait_for(lambda: scored(again, "u-1", 10), 60, "u-1 scored anew", 0.3)


@pytest.mark.parametrize("added_to", ["profiles", "identity"])
def test_forget_refuses_topics_partitions_were_added_to_naming_them(own_redis: Settings, added_to: str) -> None:
    """With partitions added to the profiles topic, `forget` put its requests by that topic's
    count: "asked to forget 1 lead" and exit 0, while the worker dead-lettered the request (on
    another partition than the lead's under LEADSTREAM_PARTITIONS) and kept the lead; and lead-5,
    on a partition the identity topic lacks, ended in a KeyError traceback. Added to either, it
    refuses, naming the topic and both counts, and sends nothing."""
    topic = own_redis.topic_profiles if added_to == "profiles" else own_redis.topic_identity
    add_partitions(own_redis, [topic], 6)
    done = leadstream(own_redis, "forget", *(f"lead-{n}" for n in range(6)), check=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done
    assert done.stderr.startswith(f"leadstream forget: topic {topic} has 6 partitions, but LEADSTREAM_PARTITIONS is 4"), done.stderr
    assert list(read_to_end(own_redis, own_redis.topic_profiles)) == []


def test_forget_records_the_erasure_by_a_digest_and_deletes_the_connectors_ledger_keys_of_the_lead(own_redis: Settings) -> None:
    redis = Redis.from_url(own_redis.redis_url)
    prefix = own_redis.redis_prefix
    # The webhook ledger kept "lead/<id>/<model>" 14 days after the lead was forgotten.
    doomed = [f"{prefix}:sink:webhook:last:lead/u-1/b2b", f"{prefix}:sink:hubspot:last:lead/u-1/b2b.v2"]
    kept = [f"{prefix}:sink:webhook:last:lead/u-10/b2b", f"{prefix}:sink:webhook:last:lead/u-1/x/b2b",
            f"{prefix}:sink:webhook:last:account/u-1/b2b", f"{prefix}:sink:webhook:delivered:c-1"]
    for key in doomed + kept:
        redis.set(key, "0 7")
    before_ms = int(time.time() * 1000)

    result = leadstream(own_redis, "forget", "u-1", "u-[2]")

    assert "recorded in Redis" in result.stdout
    assert [bool(redis.exists(key)) for key in doomed + kept] == [False] * len(doomed) + [True] * len(kept)
    erasures = [key for key in redis.scan_iter(f"{prefix}:forgotten:*")]
    assert len(erasures) == 2 and not any(b"u-1" in key or b"u-[2]" in key for key in erasures)
    for key in erasures:
        assert before_ms <= int(redis.get(key) or 0) <= int(time.time() * 1000)
        assert redis.pttl(key) > 37 * 24 * 3600 * 1000 - 60_000
    redis.close()


def test_forget_requests_kafka_refuses_fail_the_command_and_record_no_erasure(own_redis: Settings) -> None:
    """`forget` flushed its producer and said "asked to forget" whatever Kafka answered: a
    request refused was an erasure that never reached the worker, with the command's exit 0."""
    set_max_message_bytes(own_redis, own_redis.topic_profiles, 64)  # a request with its headers is larger
    try:
        refused = leadstream(own_redis, "forget", "u-1", "u-2", check=False)
    finally:
        set_max_message_bytes(own_redis, own_redis.topic_profiles, 1_048_588)
    assert refused.returncode == 1, refused
    assert f"Kafka wrote 0 of the 2 messages sent to {own_redis.topic_profiles}; refused 2" in refused.stderr
    assert "Run the same `leadstream forget` again" in refused.stderr and "asked to forget" not in refused.stdout
    redis = Redis.from_url(own_redis.redis_url)
    assert list(redis.scan_iter(f"{own_redis.redis_prefix}:forgotten:*")) == []
    redis.close()
    assert list(read_to_end(own_redis, own_redis.topic_profiles)) == []


def test_forget_with_redis_out_of_reach_sends_the_requests_then_fails_saying_what_to_redo(own_redis: Settings) -> None:
    settings = own_redis.with_overrides(redis_url=f"redis://127.0.0.1:{free_port()}/0")

    result = leadstream(settings, "forget", "u-1", check=False)

    assert result.returncode == 1
    assert "asked to forget 1 lead" in result.stdout
    assert "the requests were sent, but Redis could not be reached" in result.stderr
    assert "Run the same `leadstream forget` again once Redis answers" in result.stderr
    requests = [(record.key, record.value) for record in read_to_end(settings, settings.topic_profiles)]
    assert requests == [(b"u-1", None)]


def queue_behind_fillers(settings: Settings, producer: KafkaProducer, lead: str, events: list[dict[str, object]]) -> None:
    """20,000 events of other leads on the lead's partition, then the lead's: a worker that was
    down reads the request to forget it (on the profiles topic, which Kafka does not order with
    the events topic) long before them."""
    home = partition_for(lead, settings.partitions)
    fillers = [f"filler-{n}" for n in range(2_000) if partition_for(f"filler-{n}", settings.partitions) == home][:200]
    now = int(time.time() * 1000) - 30 * MINUTE_MS
    for n in range(20_000):
        filler = fillers[n % len(fillers)]
        producer.send(settings.topic_events, key=filler.encode(), value=orjson.dumps(event(filler, n, "page_view", now, properties={"url": "/"})))
    for value in events:
        producer.send(settings.topic_events, key=lead.encode(), value=orjson.dumps(value))
    producer.flush()


def read_through(settings: Settings, producer: KafkaProducer, proc: WorkerProcess, lead: str) -> None:
    """Returns once the worker has scored a lead's partition of the events topic up to now: an
    event sent after the rest, of another lead of that partition, is scored."""
    home = partition_for(lead, settings.partitions)
    sentinel = next(f"sentinel-{n}" for n in range(100) if partition_for(f"sentinel-{n}", settings.partitions) == home)
    producer.send(settings.topic_events, key=sentinel.encode(),
                  value=orjson.dumps(event(sentinel, 0, "webinar_attended", int(time.time() * 1000))))
    producer.flush()
    wait_for(lambda: scored(proc, sentinel, 10), 120, "the lead's partition read through", 0.3)


def crossings_of(settings: Settings, lead: str) -> list[dict[str, object]]:
    crossings = (orjson.loads(r.value or b"") for r in read_to_end(settings, settings.topic_crossings))
    return [c for c in crossings if c.get("lead_id") == lead]


def demo_requests(lead: str, first: int, at_ms: int) -> list[dict[str, object]]:
    identify = event(lead, first, "identify", at_ms, traits={"email": "f@initech.io", "title": "VP Marketing"})
    return [identify, *(event(lead, first + n, "form_submit", at_ms + n, properties={"form": "demo_request"}) for n in range(1, 6))]


def test_a_lead_forgotten_while_its_events_wait_behind_others_is_not_made_up_again_by_them(
    own_redis: Settings, worker: Callable[..., WorkerProcess]
) -> None:
    """The audit's case: a lead's events are sent, then the request to forget it, while the worker
    is down; the worker reads the request first. The events sent before it are dropped as they are
    read; an event sent after it starts a new profile."""
    now = int(time.time() * 1000) - 30 * MINUTE_MS
    producer = KafkaProducer(bootstrap_servers=own_redis.kafka_bootstrap, linger_ms=20)
    queue_behind_fillers(own_redis, producer, "lead-f", demo_requests("lead-f", 0, now))
    leadstream(own_redis, "forget", "lead-f")

    proc = worker()
    read_through(own_redis, producer, proc, "lead-f")
    assert proc.get("/leads/lead-f/")[0] == 404
    assert crossings_of(own_redis, "lead-f") == []
    assert latest(own_redis, own_redis.topic_scores).get(b"b2b/lead-f") is None
    log = proc.log.read_text()
    assert "records sent before the request still to be read: count=1" in log and "must be keyed by the lead id" not in log
    # Its marker goes once the offsets it covers are committed: a tombstone on the changelog.
    changelog = f"{own_redis.app_id}-leads-changelog"
    wait_for(lambda: latest(own_redis, changelog).get(b"lead-f", b"") is None, 60, "lead-f's tombstone on the changelog", 0.5)

    producer.send(own_redis.topic_events, key=b"lead-f", value=orjson.dumps(event("lead-f", 50, "webinar_attended", now + MINUTE_MS)))
    producer.flush()
    producer.close()
    wait_for(lambda: scored(proc, "lead-f", 10), 60, "lead-f's new profile scored from its new event alone", 0.3)
    assert b"f@initech.io" not in proc.get("/leads/lead-f/")[1]


def test_a_lead_scored_before_is_not_made_up_again_by_its_events_queued_behind_the_request(
    own_redis: Settings, worker: Callable[..., WorkerProcess]
) -> None:
    now = int(time.time() * 1000) - 30 * MINUTE_MS
    producer = KafkaProducer(bootstrap_servers=own_redis.kafka_bootstrap, linger_ms=20)
    producer.send(own_redis.topic_events, key=b"lead-f", value=orjson.dumps(event("lead-f", 0, "webinar_attended", now)))
    producer.flush()
    proc = worker()
    wait_for(lambda: scored(proc, "lead-f", 10), 60, "lead-f scored", 0.3)
    crossed_before = crossings_of(own_redis, "lead-f")  # published before the request: allowed
    proc.stop()

    queue_behind_fillers(own_redis, producer, "lead-f", demo_requests("lead-f", 10, now + 1))
    leadstream(own_redis, "forget", "lead-f")
    again = worker()
    read_through(own_redis, producer, again, "lead-f")
    producer.close()
    assert again.get("/leads/lead-f/")[0] == 404
    assert crossings_of(own_redis, "lead-f") == crossed_before
    assert latest(own_redis, own_redis.topic_scores).get(b"b2b/lead-f", b"") is None
    assert again.metric("leadstream_leads_forgotten_total") == [1.0]


def test_a_merge_into_a_forgotten_lead_queued_before_the_request_does_not_make_it_up_again(
    own_redis: Settings, worker: Callable[..., WorkerProcess]
) -> None:
    """An identify naming the visitor's anonymous id (its link makes a merge, after the request
    was read), and a merge already on the identity topic, both sent before the request."""
    now = int(time.time() * 1000) - 30 * MINUTE_MS
    producer = KafkaProducer(bootstrap_servers=own_redis.kafka_bootstrap, linger_ms=20)
    for n in range(3):
        visit = event("anon:v9", n, "form_submit", now + n, properties={"form": "demo_request"}, anonymous_id="v9")
        producer.send(own_redis.topic_events, key=b"anon:v9", value=orjson.dumps(visit))
    merged = stitching.merge_record("anon:v8", "lead-f", now, {"b2b": LeadState.new("nurture", 0)})
    producer.send(own_redis.topic_identity, key=b"lead-f", value=merged, partition=partition_for("lead-f", own_redis.partitions))
    identify = event("lead-f", 0, "identify", now + 5, traits={"email": "f@initech.io"}, anonymous_id="v9")
    queue_behind_fillers(own_redis, producer, "lead-f", [identify])
    leadstream(own_redis, "forget", "lead-f")

    proc = worker()
    read_through(own_redis, producer, proc, "lead-f")
    producer.close()
    wait_for(lambda: proc.get("/leads/anon:v9/")[0] == 200, 60, "the visitor scored", 0.3)
    assert proc.get("/leads/lead-f/")[0] == 404
    assert crossings_of(own_redis, "lead-f") == []
    assert latest(own_redis, own_redis.topic_scores).get(b"b2b/lead-f") is None


def test_a_request_whose_header_names_an_offset_past_the_end_is_applied_without_it(
    isolated: Settings, worker: Callable[..., WorkerProcess]
) -> None:
    """Honoured, a header naming offset 999999999 of the events topic held the lead forgotten until
    the topic reached it: its next 5 events were read and never scored, with no dead letter, no
    log line and no count."""
    proc = worker()
    now = int(time.time() * 1000) - 30 * MINUTE_MS
    home = partition_for("fx-0", isolated.partitions)
    producer = KafkaProducer(bootstrap_servers=isolated.kafka_bootstrap)
    producer.send(isolated.topic_profiles, key=b"fx-0", value=None, partition=home,
                  headers=[("leadstream-sent-before", f"{isolated.topic_events} 999999999".encode())])
    producer.flush()
    ignored = 'leadstream_forget_headers_ignored_total{reason="beyond_end"} 1.0'
    wait_for(lambda: ignored in proc.get("/metrics")[1].decode(), 60, "the header ignored", 0.3)
    for n in range(5):
        producer.send(isolated.topic_events, key=b"fx-0", value=orjson.dumps(event("fx-0", n, "webinar_attended", now + n)))
    producer.flush()
    producer.close()
    wait_for(lambda: proc.get("/leads/fx-0/")[0] == 200, 60, "fx-0 scored", 0.3)
    assert "beyond_end=1" in proc.log.read_text()
