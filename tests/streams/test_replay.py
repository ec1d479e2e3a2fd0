"""`leadstream replay-dlq`: the worker's dead letters of chosen reasons go back to their source
once the cause is fixed, and score once however often they are replayed."""

from __future__ import annotations

import os
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import orjson
import pytest
from kafka import KafkaProducer

from streams.cli import build_parser
from streams.deadletter import DeadLetter
from streams.history import read_to_end as records_to_end
from streams.partitioning import partition_for
from streams.processes import WorkerProcess
from streams.settings import Settings
from tests.infra import leadstream, read_to_end, read_topic, wait_for
from tests.streams.test_durability_failures import set_max_message_bytes

HOUR_MS = 3_600_000
MODEL = (
    '[model]\nname = "replays"\n'
    '[[rules]]\nname = "signed up"\nevent = "signup"\npoints = 5\n'
    '[thresholds]\nbase = "lead"\nladder = [{ level = "mql", at = 20 }]\n'
)
DEMO_CALL = '[[rules]]\nname = "demo call"\nevent = "demo_call"\npoints = 20\n'


def replays_model(tmp_path: Path) -> Path:
    """A models directory of the MODEL alone."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "replays.toml").write_text(MODEL)
    return models


def test_unknown_types_replayed_after_the_model_learns_them_score_once(
    isolated: Settings, worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    models = replays_model(tmp_path)
    settings = replace(isolated, models_dir=models, models_reload_s=1)
    running = worker(settings)
    start = int(time.time() * 1000) - 2 * HOUR_MS
    # The wrong lead's partition for ada: replayed, the event goes to ada's own.
    elsewhere = next(p for p in range(4) if p != partition_for("ada", 4))
    producer = KafkaProducer(bootstrap_servers=isolated.kafka_bootstrap)
    producer.send(isolated.topic_events, key=b"ada", value=orjson.dumps(
        {"event_id": "s1", "lead_id": "ada", "type": "signup", "time": start}))
    call = {"event_id": "c1", "lead_id": "ada", "type": "demo_call", "time": start + 60_000}
    producer.send(isolated.topic_events, partition=partition_for("ada", 4), value=orjson.dumps([call]))
    producer.send(isolated.topic_events, key=b"ada", value=b"{not json")
    producer.send(isolated.topic_events, partition=elsewhere, value=orjson.dumps(
        [{"event_id": "s2", "lead_id": "ada", "type": "signup", "time": start + 120_000}]))
    producer.flush()
    producer.close()
    dead = read_topic(isolated, isolated.topic_deadletter, expect=3)
    assert sorted(letter["reason"] for _, letter in dead) == ["bad_json", "unknown_type", "wrong_partition"]

    dry = leadstream(isolated, "replay-dlq", "--reason", "unknown_type", "--dry-run").stdout
    assert dry.startswith("unknown_type: would replay 1; first: event type 'demo_call' is one no model it is routed to knows")
    assert _count(isolated, isolated.topic_events) == 4  # a dry run sends nothing
    misspelt = leadstream(isolated, "replay-dlq", "--reason", "unknown_typ", "--dry-run").stdout
    assert misspelt == ("unknown_typ: would replay 0; no dead letter has this reason "
                        "(the topic holds: bad_json (1), unknown_type (1), wrong_partition (1))\n")

    # The model learns the type (applied by the running worker), then its letter goes back.
    fingerprint = orjson.loads(running.get("/models/")[1])["fingerprint"]
    (models / "replays.toml.tmp").write_text(MODEL + DEMO_CALL)
    os.replace(models / "replays.toml.tmp", models / "replays.toml")
    wait_for(lambda: orjson.loads(running.get("/models/")[1])["fingerprint"] != fingerprint, what="the edit applied")
    out = leadstream(isolated, "replay-dlq", "--reason", "unknown_type").stdout
    assert out.startswith("unknown_type: replayed 1")
    crossed = read_topic(isolated, isolated.topic_crossings, expect=1)
    assert [(c["lead_id"], c["to_level"], c["score"]) for _, c in crossed] == [("ada", "mql", 25)]

    # The event sent on the wrong partition goes to ada's own.
    assert leadstream(isolated, "replay-dlq", "--reason", "wrong_partition").stdout.startswith("wrong_partition: replayed 1")
    wait_for(lambda: _score(running) == 30, what="the re-keyed event scored")

    # Both again: each event id scores once; the bad JSON, never chosen, stays where it is.
    leadstream(isolated, "replay-dlq", "--reason", "unknown_type", "--reason", "wrong_partition")
    assert _count(isolated, isolated.topic_events) == 8
    wait_for(lambda: sum(running.metric("leadstream_events_scored_total")) == 5, what="the second replay read")
    assert _score(running) == 30
    assert len(read_topic(isolated, isolated.topic_crossings, expect=1)) == 1
    assert len(read_topic(isolated, isolated.topic_deadletter, expect=3)) == 3


def test_an_integer_lead_id_goes_to_its_partition_and_a_still_refused_input_is_sent_once_a_replay(
    isolated: Settings, worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    # An integer lead id went back as it came, to the wrong partition, at every replay; and each
    # replay sent every letter of an input still refused, those earlier replays left too, so
    # its letters doubled (1, 2, 4, 8).
    running = worker(replace(isolated, models_dir=replays_model(tmp_path)))
    start = int(time.time() * 1000) - HOUR_MS
    elsewhere = next(p for p in range(4) if p != partition_for("7717054266", 4))
    producer = KafkaProducer(bootstrap_servers=isolated.kafka_bootstrap)
    producer.send(isolated.topic_events, partition=elsewhere, value=orjson.dumps(
        {"event_id": "n1", "lead_id": 7717054266, "type": "signup", "time": start}))
    producer.send(isolated.topic_events, key=b"bo", value=orjson.dumps({"event_id": "x1", "lead_id": "bo", "type": "webinar", "time": start}))
    producer.flush()
    producer.close()
    assert sorted(letter["reason"] for _, letter in read_topic(isolated, isolated.topic_deadletter, expect=2)) == [
        "unknown_type", "wrong_partition"]

    assert leadstream(isolated, "replay-dlq", "--reason", "wrong_partition").stdout.startswith("wrong_partition: replayed 1")
    wait_for(lambda: running.get("/leads/7717054266/")[0] == 200, what="the integer lead's event scored")
    for replays in range(1, 4):
        out = leadstream(isolated, "replay-dlq", "--reason", "unknown_type").stdout
        assert out.startswith("unknown_type: replayed 1;"), out
        letters = 1 + replays  # one more each replay, of the one input
        wait_for(lambda: sum(1 for _, letter in read_to_end(isolated, isolated.topic_deadletter)
                             if letter["reason"] == "unknown_type") == letters, what=f"{letters} letters")
    assert f"sent once: {letters - 2} more letters of inputs sent already" in out


def test_replay_validates_its_arguments(isolated: Settings) -> None:
    def since(text: str) -> int:
        return int(build_parser().parse_args(["replay-dlq", "--reason", "malformed", "--since", text]).since)

    assert since("2026-12-01") == since("2026-12-01T00:00:00Z") == since("2026-12-01T01:00:00+01:00") == 1_796_083_200_000
    for text, problem in (("2026-12-01T09:00:00", "it has no time zone"), ("yesterday", "it is not an ISO-8601 time")):
        refused = leadstream(isolated, "replay-dlq", "--reason", "malformed", "--since", text, check=False)
        assert refused.returncode == 2 and "argument --since: expected an ISO-8601 time with its zone" in refused.stderr
        assert problem in refused.stderr
    missing = leadstream(isolated, "replay-dlq", check=False)
    assert missing.returncode == 2 and "--reason" in missing.stderr
    # Letters written before --since are left alone.
    later = leadstream(isolated, "replay-dlq", "--reason", "unknown_type", "--since", "2099-01-01", "--dry-run")
    assert later.stdout == "unknown_type: would replay 0; no dead letter has this reason (letters since --since: no letter)\n"
    # A call the collector refused never was in a topic: it said "source topic None is not one the worker reads".
    producer = KafkaProducer(bootstrap_servers=isolated.kafka_bootstrap)
    producer.send(isolated.topic_deadletter, value=DeadLetter("future_time", "ahead", b'{"type": "track"}').to_bytes()).get(timeout=30)
    producer.close()
    refused = leadstream(isolated, "replay-dlq", "--reason", "future_time", "--dry-run").stdout
    assert "not replayable: 1 (refused by the collector, never in a topic: the client sends it again once fixed)" in refused
    # A reason of nothing, and a dead-letter topic that does not exist (the advice was history's: --topic).
    empty = leadstream(isolated, "replay-dlq", "--reason", " ", check=False)
    assert empty.returncode == 2 and "argument --reason: expected a dead-letter reason, such as unknown_type, got nothing" in empty.stderr
    nope = isolated.with_overrides(topic_deadletter=isolated.topic_deadletter + "-nope")
    gone = leadstream(nope, "replay-dlq", "--reason", "unknown_type", check=False)
    assert (gone.returncode, gone.stderr.strip()) == (1, f"leadstream replay-dlq: topic {nope.topic_deadletter!r} does not exist: run "
                                                         "`leadstream topics`, or check LEADSTREAM_TOPIC_DEADLETTER")


def test_letters_kafka_refuses_to_take_back_fail_the_replay_saying_so(isolated: Settings) -> None:
    """`replay-dlq` flushed its producer and reported every letter replayed whatever Kafka
    answered: an input its source topic refused (here larger than the topic now takes) was
    counted replayed, with exit 0, and never scored."""
    producer = KafkaProducer(bootstrap_servers=isolated.kafka_bootstrap)
    for n, blob in enumerate((10, 20_000, 10)):
        event = orjson.dumps({"event_id": f"e{n}", "lead_id": f"lead-{n}", "type": "webinar", "time": 1_767_225_600_000,
                              "properties": {"blob": "x" * blob}})
        letter = DeadLetter("unknown_type", "no model scores webinar", event, isolated.topic_events, 0, n)
        producer.send(isolated.topic_deadletter, value=letter.to_bytes()).get(timeout=30)
    producer.close()
    set_max_message_bytes(isolated, isolated.topic_events, 10_000)
    replayed = leadstream(isolated, "replay-dlq", "--reason", "unknown_type", check=False)
    assert replayed.returncode == 1, replayed
    assert "unknown_type: replayed 3" in replayed.stdout
    said = re.search(r"Kafka wrote (\d) of the 3 messages sent to their source topics; refused (\d), the first with "
                     r"MessageSizeTooLargeError", replayed.stderr)
    assert said and "run replay-dlq again once the cause is fixed" in replayed.stderr, replayed.stderr
    written = sorted(orjson.loads(record.value)["event_id"] for record in records_to_end(isolated, isolated.topic_events))
    # A batch Kafka refuses as too large may take its neighbours with it (streams/deliveries.py).
    assert "e1" not in written and len(written) == int(said[1]) == 3 - int(said[2]), replayed.stderr


def _count(settings: Settings, topic: str) -> int:
    return sum(1 for _ in records_to_end(settings, topic))


def _score(running: WorkerProcess) -> float:
    return float(orjson.loads(running.get("/leads/ada/")[1])["models"]["replays"]["score"])


def test_letters_of_a_lead_forgotten_since_are_not_replayed_and_those_after_are(
    own_redis: Settings, worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    # lead-m's event was refused (a type no model knew), lead-m was forgotten, the model learnt the
    # type: the replay brought lead-m back, its e-mail and phone with it.
    models = replays_model(tmp_path)
    settings = replace(own_redis, models_dir=models, models_reload_s=1)
    running = worker(settings)
    start = int(time.time() * 1000) - HOUR_MS
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap)

    def call(lead: str, n: int, **fields: object) -> None:
        event = {"event_id": f"{lead}-{n}", "lead_id": lead, "type": "demo_call", "time": start + n, **fields}
        producer.send(settings.topic_events, key=lead.encode(), value=orjson.dumps(event))
        producer.flush()

    call("lead-m", 1, traits={"email": "m@private.example", "phone": "+1 555 0100"})
    call("lead-o", 1)
    read_topic(settings, settings.topic_deadletter, expect=2)
    leadstream(settings, "forget", "lead-m")
    call("lead-m", 2)  # the lead comes back after its erasure: a new profile's, replayed
    read_topic(settings, settings.topic_deadletter, expect=3)
    producer.close()
    fingerprint = orjson.loads(running.get("/models/")[1])["fingerprint"]
    (models / "replays.toml.tmp").write_text(MODEL + DEMO_CALL)
    os.replace(models / "replays.toml.tmp", models / "replays.toml")
    wait_for(lambda: orjson.loads(running.get("/models/")[1])["fingerprint"] != fingerprint, what="the edit applied")

    out = leadstream(settings, "replay-dlq", "--reason", "unknown_type").stdout

    assert out.startswith("unknown_type: replayed 2;"), out
    assert "not replayable: 1 (their lead was forgotten (leadstream forget) after they were dead-lettered)" in out
    wait_for(lambda: running.get("/leads/lead-o/")[0] == 200 and running.get("/leads/lead-m/")[0] == 200, what="both scored")
    wait_for(lambda: sum(running.metric("leadstream_events_scored_total")) == 2, what="the replayed events scored")
    status, body = running.get("/leads/lead-m/")
    assert orjson.loads(body)["models"]["replays"]["score"] == 20 and b"m@private.example" not in body and b"555" not in body


def test_an_account_update_for_a_model_added_to_the_files_but_not_yet_loaded_waits_for_it_and_rolls_up(
    isolated: Settings, worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    """An `[accounts]` model added while two workers of a group run: the first to load it sends
    its leads' updates to accounts the other owns, which dead-lettered them (`unknown_model`) up
    to its own poll, and they stayed lost until `leadstream replay-dlq`. The account stage now
    takes up the edit that the files hold at once (waiting for them to settle as a poll does)."""
    account = '[accounts]\nbase = "cold"\nladder = [{ level = "hot", at = 20 }]\n'
    models = replays_model(tmp_path)
    running = worker(replace(isolated, models_dir=models, models_reload_s=6))
    account_id = "acc-c14"
    (models / "later.toml.tmp").write_text(MODEL.replace('"replays"', '"later"') + account)
    os.replace(models / "later.toml.tmp", models / "later.toml")
    # As another worker that has loaded it sends (publish_updates), long before this one's second look.
    producer = KafkaProducer(bootstrap_servers=isolated.kafka_bootstrap)
    update = {"model": "later", "account_id": account_id, "lead_id": "c14", "score": 30, "time": int(time.time() * 1000) - HOUR_MS}
    producer.send(isolated.topic_accounts, value=orjson.dumps([update]), partition=partition_for(account_id, 4))
    producer.flush()
    producer.close()

    def account_level() -> object:
        status, body = running.get(f"/accounts/{account_id}/")
        return status == 200 and orjson.loads(body)["models"]["later"]["level"]

    wait_for(account_level, timeout_s=40, what="the update rolled up")
    assert account_level() == "hot"
    assert read_topic(isolated, isolated.topic_deadletter, idle_s=1) == []


def test_an_account_update_refused_for_a_model_not_yet_loaded_goes_back_to_its_account_s_partition(
    isolated: Settings, worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    """A worker of the group that had an added model sent an account update to the partition of
    a worker that did not have it yet, which dead-lettered it (`unknown_model`). Replayed, it
    went to its lead's partition as an event does: the account stage kept the account there, and
    the next start stopped on the accounts changelog, taking it for a changed partition count."""
    account = '[accounts]\nbase = "cold"\nladder = [{ level = "hot", at = 20 }]\n'
    models = replays_model(tmp_path)
    settings = replace(isolated, models_dir=models, models_reload_s=1)
    running = worker(settings)
    lead, account_id = "c13", "acc-c13"
    assert partition_for(lead, 4) != partition_for(account_id, 4)
    producer = KafkaProducer(bootstrap_servers=isolated.kafka_bootstrap)
    update = {"model": "later", "account_id": account_id, "lead_id": lead, "score": 30, "time": int(time.time() * 1000) - HOUR_MS}
    producer.send(isolated.topic_accounts, value=orjson.dumps([update]), partition=partition_for(account_id, 4))  # as publish_updates
    producer.flush()
    producer.close()
    [(_, letter)] = read_topic(isolated, isolated.topic_deadletter, expect=1)
    assert letter["reason"] == "unknown_model", letter

    fingerprint = orjson.loads(running.get("/models/")[1])["fingerprint"]
    (models / "later.toml.tmp").write_text(MODEL.replace('"replays"', '"later"') + account)
    os.replace(models / "later.toml.tmp", models / "later.toml")
    wait_for(lambda: orjson.loads(running.get("/models/")[1])["fingerprint"] != fingerprint, what="the edit applied")
    assert leadstream(isolated, "replay-dlq", "--reason", "unknown_model").stdout.startswith("unknown_model: replayed 1")
    replayed = [r.partition for r in records_to_end(isolated, isolated.topic_accounts)]
    assert replayed == [partition_for(account_id, 4)] * 2, replayed

    def account_level() -> object:
        status, body = running.get(f"/accounts/{account_id}/")
        return status == 200 and orjson.loads(body)["models"]["later"]["level"]

    wait_for(lambda: account_level() == "hot", what="the replayed update rolled up")
    running.stop()
    restarted = worker(settings)  # the accounts changelog holds the account on its own partition
    assert restarted.get(f"/accounts/{account_id}/")[0] == 200
