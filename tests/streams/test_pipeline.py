"""The scoring worker end to end on the real broker: events in with `leadstream send`, crossings out."""

from __future__ import annotations

import base64
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import orjson
from kafka import KafkaProducer

from streams.partitioning import partition_for
from streams.processes import WorkerProcess
from streams.settings import Settings
from tests.infra import leadstream, read_topic, wait_for, write_jsonl

HOUR_MS = 3_600_000


def saas(lead: str, kinds: list[str], start_ms: int, prefix: str = "") -> list[dict]:
    return [
        {"event_id": f"{prefix}{lead}-{i}", "lead_id": lead, "type": kind, "product": "saas", "time": start_ms + i * HOUR_MS}
        for i, kind in enumerate(kinds)
    ]


def latest_scores(settings: Settings, expect: int | None = None) -> dict[str, dict]:
    return {key.decode(): value for key, value in read_topic(settings, settings.topic_scores, expect=expect, idle_s=2)}


def test_threshold_event_arrives_exactly_once_with_lead_and_score(
    isolated: Settings, worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    start = int(time.time() * 1000) - 48 * HOUR_MS
    events = (
        saas("ada", ["signup", "created_task", "created_project", "created_task", "created_project"], start)
        + saas("bob", ["signup", "created_task"], start)
    )
    sent = leadstream(isolated, "send", str(write_jsonl(tmp_path / "events.jsonl", events)))
    assert "sent 7 events in 7 messages" in sent.stdout

    worker()

    crossings = read_topic(isolated, isolated.topic_crossings, expect=1)
    assert len(crossings) == 1
    key, crossing = crossings[0]
    assert key == b"ada"
    assert (crossing["lead_id"], crossing["direction"], crossing["from_level"]) == ("ada", "up", "lead")
    assert crossing["to_level"] == "mql"
    assert crossing["score"] == 20  # the fourth +5 event reached the MQL line at 20
    scores = latest_scores(isolated, expect=2)
    assert scores["saas_start_small/ada"]["score"] == 25
    assert scores["saas_start_small/bob"]["score"] == 10


def test_send_to_a_topic_that_does_not_exist_says_so(isolated: Settings, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "events.jsonl", saas("ada", ["signup"], int(time.time() * 1000)))
    missing = f"{isolated.topic_events}-nowhere"
    sent = leadstream(isolated, "send", "--topic", missing, str(path), check=False, timeout=20)
    assert sent.returncode == 1
    assert sent.stderr.strip() == f"leadstream send: topic {missing!r} does not exist; run `leadstream topics` (or check --topic)"


def test_envelopes_score_like_single_event_messages(isolated: Settings, worker: Callable[..., WorkerProcess], tmp_path: Path) -> None:
    start = int(time.time() * 1000) - 48 * HOUR_MS
    events = [e for n in range(30) for e in saas(f"lead-{n}", ["signup", "created_task", "created_project", "created_task"][: 1 + n % 4], start)]
    sent = leadstream(isolated, "send", "--events-per-message", "50", str(write_jsonl(tmp_path / "events.jsonl", events)))
    assert f"sent {len(events)} events in " in sent.stdout and "in 75 messages" not in sent.stdout

    worker()

    crossings = read_topic(isolated, isolated.topic_crossings, expect=7)
    assert sorted(c["lead_id"] for _, c in crossings) == sorted(f"lead-{n}" for n in range(30) if n % 4 == 3)
    scores = latest_scores(isolated, expect=30)
    assert {k: v["score"] for k, v in scores.items()} == {f"saas_start_small/lead-{n}": 5 * (1 + n % 4) for n in range(30)}


def test_bad_input_goes_to_the_dead_letter_topic_and_the_rest_is_scored(
    isolated: Settings, worker: Callable[..., WorkerProcess]
) -> None:
    start = int(time.time() * 1000) - 48 * HOUR_MS
    good = saas("carol", ["signup", "created_task", "created_project", "created_task"], start)
    wrong_home = next(f"x{n}" for n in range(100) if partition_for(f"x{n}", 4) != partition_for("carol", 4))
    producer = KafkaProducer(bootstrap_servers=isolated.kafka_bootstrap)
    topic = isolated.topic_events
    producer.send(topic, key=b"carol", value=orjson.dumps(good[0]))
    # A client clock decades ahead, in an envelope decoded in one pass: scored, it would make
    # every later event of carol late.
    future = {**good[3], "event_id": "from-2099", "time": "2099-01-01T00:00:00Z"}
    producer.send(topic, partition=partition_for("carol", 4), value=orjson.dumps([future]))
    producer.send(topic, key=b"carol", value=b"{not json")
    producer.send(topic, key=b"carol", value=orjson.dumps({"lead_id": "carol", "time": start}))  # no type
    producer.send(topic, key=b"carol", value=orjson.dumps({**good[1], "time": "yesterday-ish"}))  # wrong time
    # Misspelt types: one in an envelope taking the careful path (it holds a bad event), one
    # in a message decoded in one pass.
    typo = {**good[2], "event_id": "typo-1", "type": "created_prject"}
    envelope = [good[1], {**good[2], "lead_id": wrong_home}, typo, good[2], good[3]]
    producer.send(topic, partition=partition_for("carol", 4), value=orjson.dumps(envelope))
    producer.send(topic, key=b"carol", value=orjson.dumps({**good[3], "event_id": "typo-2", "type": "sign-up"}))
    producer.send(topic, key=b"carol", value=orjson.dumps({**good[3], "event_id": "huge", "properties": {"blob": "x" * 100_000}}))
    # Nested deeper than msgspec reads or writes (its RecursionError once stopped the worker),
    # in an envelope with a redelivered good event; and deeper than orjson writes, alone.
    def deep(levels: int, event_id: str) -> bytes:
        return orjson.dumps({**good[3], "event_id": event_id, "properties": {"x": "nested"}}).replace(
            b'"nested"', b"[" * levels + b"]" * levels)

    producer.send(topic, partition=partition_for("carol", 4), value=b"[" + orjson.dumps(good[0]) + b"," + deep(1000, "deep-1000") + b"]")
    producer.send(topic, key=b"carol", value=deep(300, "deep-300"))
    producer.send(topic, key=b"carol", value=deep(2000, "deep-2000"))  # deeper than orjson reads: too large, not bad JSON
    # An event encoded twice: a JSON text in an envelope is no event, however readable the text.
    twice = orjson.dumps({**good[3], "event_id": "twice"}).decode()
    producer.send(topic, partition=partition_for("carol", 4), value=orjson.dumps([twice]))
    producer.send(topic, key=b"carol", value=b" [ ]")  # an envelope of no event: a producer's bug
    # A text that is not UTF-8 (a Latin-1 export): msgspec's UnicodeDecodeError once failed the batch.
    latin1 = orjson.dumps({**good[3], "event_id": "latin-1", "traits": {"name": "Ren\u00e9"}}).replace("\u00e9".encode(), b"\xe9")
    producer.send(topic, key=b"carol", value=latin1)
    producer.flush()
    producer.close()

    proc = worker()

    dead = read_topic(isolated, isolated.topic_deadletter, expect=14)
    reasons = sorted(letter["reason"] for _, letter in dead)
    assert len(dead) == 14, reasons
    assert [letter["original"] for _, letter in dead if letter["detail"].startswith("an envelope (JSON array) of no event")] == [" [ ]"]
    encoded_twice = next(letter for _, letter in dead if letter["reason"] == "wrong_type")
    assert (encoded_twice["detail"], orjson.loads(encoded_twice["original"])) == ("an event must be a JSON object, got a text", twice)
    nested = [letter for _, letter in dead if "levels deep" in letter["detail"]]
    assert [letter["reason"] for letter in nested] == ["too_large", "too_large", "too_large"]
    assert [letter for letter in nested if "1,024 levels deep" in letter["detail"] and letter["original"].startswith("{")]
    # One written out alone; the other too deep to be, so its letter holds its whole message.
    assert [orjson.loads(letter["original"])["event_id"] for letter in nested
            if letter["original"].startswith("{") and "1,024" not in letter["detail"]] == ["deep-300"]
    assert [letter for letter in nested if "the original is the whole message" in letter["detail"]]
    assert "bad_json" in reasons and "wrong_partition" in reasons and "too_large" in reasons
    misspelt = [letter for _, letter in dead if letter["reason"] == "unknown_type"]
    assert [orjson.loads(letter["original"])["event_id"] for letter in misspelt] == ["typo-1", "typo-2"]
    assert orjson.loads(misspelt[0]["original"]) == typo
    assert "'created_prject'" in misspelt[0]["detail"] and "saas_start_small scores created_project, created_task, signup" in misspelt[0]["detail"]
    from_the_future = next(letter for _, letter in dead if letter["reason"] == "future_time")
    assert orjson.loads(from_the_future["original"]) == future
    assert "timed 2099-01-01T00:00:00+00:00" in from_the_future["detail"] and "LEADSTREAM_MAX_FUTURE_MS" in from_the_future["detail"]
    for _, letter in dead:
        assert letter["detail"] and letter["source"]["topic"] in (topic, None)
    bad_json, not_utf8 = [letter for _, letter in dead if letter["reason"] == "bad_json"]
    assert bad_json["original"] == "{not json" and bad_json["source"]["partition"] == partition_for("carol", 4)
    assert base64.b64decode(not_utf8["original_base64"]) == latin1 and "it is not UTF-8 text (byte 0xe9" in not_utf8["detail"]
    crossings = read_topic(isolated, isolated.topic_crossings, expect=1)
    assert [(c["lead_id"], c["to_level"], c["score"]) for _, c in crossings] == [("carol", "mql", 20)]
    status, body = proc.get("/metrics")
    assert status == 200
    assert b'leadstream_events_rejected_total{reason="bad_json"} 2.0' in body
    # Every input topic's lag (those of the profiles and identity topics were not measured: a
    # backlog of erasure requests was invisible to the alert on growing lag).
    inputs = (isolated.topic_events, isolated.topic_profiles, isolated.topic_identity, isolated.topic_accounts)
    wait_for(lambda: all(f'leadstream_consumer_lag{{partition="0",topic="{topic}"}}'.encode() in proc.get("/metrics")[1]
                         for topic in inputs), what="a lag series for each input topic")


def test_messages_near_kafkas_limit_that_are_not_json_are_dead_lettered_and_the_worker_goes_on(
    isolated: Settings, worker: Callable[..., WorkerProcess]
) -> None:
    """Their letters, with the originals escaped or in base64, would be 1.3-6 MB: the broker
    refused them and the worker stopped, at every restart."""
    start = int(time.time() * 1000) - 48 * HOUR_MS
    good = saas("carol", ["signup", "created_task", "created_project", "created_task"], start)
    producer = KafkaProducer(bootstrap_servers=isolated.kafka_bootstrap)
    for garbage in (b"\x01" * 1_000_000, b"\xff" * 1_000_000):
        producer.send(isolated.topic_events, key=b"carol", value=garbage)
    for event in good:
        producer.send(isolated.topic_events, key=b"carol", value=orjson.dumps(event))
    producer.flush()
    producer.close()
    proc = worker()

    dead = [letter for _, letter in read_topic(isolated, isolated.topic_deadletter, expect=2)]
    assert [(letter["reason"], letter["original_size"]) for letter in dead] == [("bad_json", 1_000_000)] * 2
    crossings = read_topic(isolated, isolated.topic_crossings, expect=1)
    assert [(c["lead_id"], c["to_level"]) for _, c in crossings] == [("carol", "mql")]
    assert proc.proc is not None and proc.proc.poll() is None and proc.ready()


def test_a_lead_of_several_models_keeps_each_models_state_through_a_restart(
    isolated: Settings, worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    start = int(time.time() * 1000) - 48 * HOUR_MS
    events = saas("ada", ["signup", "created_task"], start) + [
        {"event_id": f"ada-a{i}", "lead_id": "ada", "type": kind, "product": "analytics", "time": start + (i + 3) * HOUR_MS}
        for i, kind in enumerate(["trial_started", "data_source_connected"])
    ]
    path = write_jsonl(tmp_path / "events.jsonl", events)
    offline = [orjson.loads(line) for line in leadstream(isolated, "score", "--events", str(path)).stdout.splitlines()]
    expected = {r["model"]: r["score"] for r in offline if r["record"] == "lead"}
    assert set(expected) == {"saas_start_small", "analytics_addon"}
    leadstream(isolated, "send", "--events-per-message", "10", str(path))  # one message: one batch

    first = worker()
    assert {k: v["score"] for k, v in latest_scores(isolated, expect=2).items()} == {f"{m}/ada": s for m, s in expected.items()}
    first.stop()
    # A fresh worker has only the changelog: the lead's one record holds both models' states.
    second = worker()
    status, body = second.get("/leads/ada/")
    assert status == 200, body
    # (Scores are read at the current time, and the add-on model decays: compare what each counted.)
    models = orjson.loads(body)["models"]
    assert {model: sum(row["occurrences"] for row in view["rules"]) for model, view in models.items()} == {
        "saas_start_small": 2, "analytics_addon": 2}


def test_the_worker_bounds_how_long_the_broker_holds_its_fetches(isolated: Settings, worker: Callable[..., WorkerProcess]) -> None:
    # Faust builds its consumer with a fixed 1.5 s fetch wait, which stalled the worker
    # (streams/fetch_wait.py): the worker must find that value where it sets its own.
    proc = worker(replace(isolated, fetch_max_wait_ms=70))
    assert "fetch wait set: max_wait_ms=70 (was 1500)" in proc.log.read_text(errors="replace")


def test_a_lead_whose_kept_traits_would_make_a_crossing_larger_than_kafka_takes_is_refused_trait_by_trait(
    isolated: Settings, worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    """Sixty traits of 4,096 control characters, two an event, were each taken (4,096
    characters) but are 24 KB of JSON: carol's crossing was 1.5 MB, the broker refused it and
    the worker stopped, at every restart. Each such trait is refused with its event now."""
    names = [f"t{i}" for i in range(60)]
    models = tmp_path / "models"
    models.mkdir()
    (models / "wide.toml").write_text(
        f'[model]\nname = "wide"\nkeep_traits = {orjson.dumps(names).decode()}\n'
        '[[rules]]\nname = "signed up"\nevent = "signup"\npoints = 25\n'
        '[thresholds]\nbase = "lead"\nladder = [{ level = "mql", at = 20 }]\n'
    )
    start = int(time.time() * 1000) - HOUR_MS
    identifies = [{"event_id": f"i{n}", "lead_id": "carol", "type": "identify", "time": start + n,
                   "traits": {name: "\x01" * 4096 for name in names[n : n + 2]}} for n in range(0, 60, 2)]
    signups = [{"event_id": "s", "lead_id": lead, "type": "signup", "time": start + 100} for lead in ("carol", "dave")]
    producer = KafkaProducer(bootstrap_servers=isolated.kafka_bootstrap)
    for event in identifies + signups:
        producer.send(isolated.topic_events, key=event["lead_id"].encode(), value=orjson.dumps(event))
    producer.flush()
    producer.close()
    proc = worker(replace(isolated, models_dir=models))

    crossings = read_topic(isolated, isolated.topic_crossings, expect=2)
    assert sorted((c["lead_id"], c["to_level"]) for _, c in crossings) == [("carol", "mql"), ("dave", "mql")]
    dead = [letter for _, letter in read_topic(isolated, isolated.topic_deadletter, expect=30)]
    assert len(dead) == 30 and {letter["reason"] for letter in dead} == {"too_large"}
    assert dead[0]["detail"].startswith("traits.t0 is 24576 bytes of JSON, at most 4096 are kept")
    assert proc.proc is not None and proc.proc.poll() is None and proc.ready()


def test_a_topic_of_large_envelopes_is_scored_in_batches_bounded_by_bytes_without_a_restart(
    isolated: Settings, worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    """Envelopes of thousands of events (the collector writes them up to ~1 MB) were taken 500
    messages a batch: a catch-up batch of 1.2M events held the event loop for most of a minute,
    the last batch's writes timed out in the producer, the worker stopped, and its replacement
    took the same batch again. A batch now holds at most LEADSTREAM_BATCH_MAX_BYTES of messages."""
    start = int(time.time() * 1000) - 48 * HOUR_MS
    kinds = ["signup", "created_task", "created_project"]
    events = [{"event_id": f"lead-{n}-{i}", "lead_id": f"lead-{n}", "type": kinds[i % 3], "product": "saas", "time": start + i}
              for n in range(4_000) for i in range(20)]
    sent = leadstream(isolated, "send", "--events-per-message", "4000", str(write_jsonl(tmp_path / "events.jsonl", events)))
    messages = int(sent.stdout.split(f"sent {len(events)} events in ")[1].split()[0])  # ~20, of up to ~500 KB
    proc = worker(replace(isolated, batch_max_bytes=800_000))

    def metric(name: str) -> float:
        line = next(line for line in proc.get("/metrics")[1].decode().splitlines() if line.startswith(name + " "))
        return float(line.split()[-1])

    wait_for(lambda: metric("leadstream_events_consumed_total") == len(events), timeout_s=180, what="every event scored")
    # Two whole envelopes are over the bound (a partition's last is smaller): 500 messages a batch
    # took the 80,000 events in two to four batches.
    batches = metric("leadstream_batch_events_count")
    assert batches >= messages / 2 and metric('leadstream_batch_events_bucket{le="10000.0"}') == batches
    assert proc.proc is not None and proc.proc.poll() is None and proc.ready()


def test_an_accounts_crossings_from_one_batch_are_those_leadstream_score_gives_event_by_event(
    isolated: Settings, worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    """Eight demo requests of one lead (+30 each) in one message, so one batch: the account heard
    only the lead's last score, 150, and crossed unaware -> buying, where `leadstream score`
    crosses to engaged at 60, then to buying at 150; a CRM mapping acting on engaged never fired.
    Two members of another account taking turns in one message cross it as event by event too."""
    start = int(time.time() * 1000) - 48 * HOUR_MS
    pair = next((a, b) for a, b in ((f"p{n}", f"q{n}") for n in range(100)) if partition_for(a, 4) == partition_for(b, 4))

    def demo(n: int, lead: str, account: str) -> dict:
        return {"event_id": f"{lead}-{n}", "lead_id": lead, "type": "form_submit", "product": "b2b", "time": start + n * 1000,
                "account_id": account, "properties": {"form": "demo_request"}}

    events = [demo(n, "ac1-lead", "ac1-acct") for n in range(8)] + [demo(n, pair[n % 2], "ac2-acct") for n in range(8)]
    path = write_jsonl(tmp_path / "events.jsonl", events)
    offline = [orjson.loads(line) for line in leadstream(isolated, "score", "--events", str(path)).stdout.splitlines()]
    transitions = [r for r in offline if r["record"] == "transition"]
    expected = sorted((r["account_id"], r["time"], r["to_level"], r["score"], r["id"]) for r in transitions if r["kind"] == "account")
    assert [(account, level, score) for account, _, level, score, _ in expected] == [
        ("ac1-acct", "engaged", 60), ("ac1-acct", "buying", 150), ("ac2-acct", "engaged", 60), ("ac2-acct", "buying", 150)]
    sent = leadstream(isolated, "send", "--events-per-message", "8", str(path))
    assert f"sent {len(events)} events in 2 messages" in sent.stdout  # one message per account's members

    worker()

    crossings = [c for _, c in read_topic(isolated, isolated.topic_crossings, expect=len(transitions))]
    assert sorted((c["account_id"], c["time"], c["to_level"], c["score"], c["id"]) for c in crossings if c["kind"] == "account") == expected
