"""`leadstream history`: the raw topic on the real broker, written as the file score and review read."""

from __future__ import annotations

import io
from pathlib import Path

import orjson

from streams.offline import score_file
from streams.send import open_producer, produce
from streams.settings import Settings
from tests.infra import leadstream
from tests.scoring.support import MODELS_DIR, T0
from tests.streams.test_offline import SAAS_EVENTS, write


def scored(path: Path) -> list[dict]:
    out = io.StringIO()
    assert score_file(MODELS_DIR, path, table=False, out=out, err=io.StringIO()) == 0
    return [orjson.loads(line) for line in out.getvalue().splitlines()]


def test_the_topic_written_to_a_file_scores_as_the_events_sent(isolated: Settings, tmp_path: Path) -> None:
    topic = isolated.topic_events
    producer = open_producer(isolated)
    try:
        # Envelopes of up to 2 events for the first half, single events for the rest.
        half = len(SAAS_EVENTS) // 2
        produce(producer, topic, ((e["lead_id"], orjson.dumps(e)) for e in SAAS_EVENTS[:half]), 2)
        produce(producer, topic, ((e["lead_id"], orjson.dumps(e)) for e in SAAS_EVENTS[half:]), 1)
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
        produce(producer, isolated.topic_events, ((e["lead_id"], orjson.dumps(e)) for e in pages), 1)
        produce(producer, isolated.topic_profiles, [(identify["lead_id"], orjson.dumps(identify))], 1)
    finally:
        producer.close()

    out = tmp_path / "history.jsonl"
    leadstream(isolated, "history", "--out", str(out))
    leads = {(r["model"], r["lead_id"]): (r["score"], r["grade"]) for r in scored(out) if r["record"] == "lead"}
    expected = {(r["model"], r["lead_id"]): (r["score"], r["grade"])
                for r in scored(write(tmp_path / "sent.jsonl", [*pages, identify])) if r["record"] == "lead"}
    assert leads == expected
    assert ("b2b", "anon:a-1") not in leads and leads[("b2b", "u-1")][1] is not None  # merged, and graded on its traits
