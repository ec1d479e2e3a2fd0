"""The worker's durable per-lead state on the real broker: caps, profiles, decay timers,
account roll-ups, and the kill-and-restart guarantee checked against the offline scorer."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import orjson

from scoring import Engine
from streams.bench import workload
from streams.lag import LagProbe
from streams.processes import WorkerProcess, free_port
from streams.send import open_producer, produce
from streams.settings import Settings
from tests.infra import leadstream, read_model_scores, read_to_end, read_topic, wait_for, write_jsonl
from tests.streams.test_account_table import crc32_colliding_ids

MINUTE_MS = 60_000
DAY_MS = 86_400_000


def b2b(lead: str, n: int, kind: str, at_ms: int, **fields: object) -> dict:
    return {"event_id": f"{lead}-{n}", "lead_id": lead, "type": kind, "product": "b2b", "time": at_ms, **fields}


def page(lead: str, n: int, url: str, at_ms: int) -> dict:
    return b2b(lead, n, "page_view", at_ms, properties={"url": url, "time_on_page_s": 20})


def scores_by_key(settings: Settings, expect: int | None = None) -> dict[str, dict]:
    return {key.decode(): value for key, value in read_topic(settings, settings.topic_scores, expect=expect, idle_s=2)}


def send(settings: Settings, events: list[dict], topic: str | None = None, appended_at_event_times: bool = False) -> None:
    """`appended_at_event_times`: each with its event time as its Kafka timestamp, as a
    collector appends events as they happen, not all now."""
    producer = open_producer(settings)
    try:
        if appended_at_event_times:
            for e in events:
                producer.send(topic or settings.topic_events, key=e["lead_id"].encode(), value=orjson.dumps(e), timestamp_ms=e["time"])
            producer.flush()
        else:
            produce(producer, topic or settings.topic_events, ((e["lead_id"], orjson.dumps(e)) for e in events), 1,
                    partitions=settings.partitions)
    finally:
        producer.close()


def wait_caught_up(settings: Settings) -> None:
    """Returns once the worker's group has committed every message of the events and account topics."""
    probe = LagProbe(settings)
    try:
        probe.wait_caught_up(settings.app_id, [settings.topic_events, settings.topic_accounts], timeout_s=180)
    finally:
        probe.close()


def test_caps_bonuses_and_a_profile_update_crossing(isolated: Settings, worker: Callable[..., WorkerProcess]) -> None:
    now = int(time.time() * 1000) - 60 * MINUTE_MS
    opens = [b2b("olga", n, "email_open", now + n * MINUTE_MS, properties={"email_id": "spring-launch"}) for n in range(6)]
    pricing = [page("pete", n, "https://acme.io/pricing", now + n * MINUTE_MS) for n in range(5)]
    fit_lead = [page("fay", 0, "https://acme.io/pricing", now), page("fay", 1, "https://acme.io/case-studies/globex", now + MINUTE_MS)]
    send(isolated, opens + pricing + fit_lead)
    profile = b2b("fay", 2, "identify", now + 2 * MINUTE_MS,
                  traits={"email": "fay@initech.io", "title": "VP Marketing", "company_size": 250})
    send(isolated, [profile], topic=isolated.topic_profiles)

    worker()

    scores = scores_by_key(isolated, expect=3)
    # Six opens of one e-mail on one day: one counts (cap 1/day, once per e-mail id).
    assert scores["b2b/olga"]["score"] == 1
    # Five pricing visits within a week: 5 x 10, plus the +20 frequency bonus once.
    assert scores["b2b/pete"]["score"] == 70
    # Behaviour 14 (pricing 10, customer story 4) + fit 14 (senior title 8, company size 5, business e-mail 1).
    assert scores["b2b/fay"]["score"] == 28
    crossings = {c["lead_id"]: c for _, c in read_topic(isolated, isolated.topic_crossings, expect=2)}
    assert (crossings["fay"]["from_level"], crossings["fay"]["to_level"], crossings["fay"]["cell"]) == ("nurture", "mql", "B3")
    assert crossings["fay"]["traits"]["email"] == "fay@initech.io"
    assert crossings["pete"]["to_level"] == "sql" and crossings["pete"]["score"] == 70
    assert "olga" not in crossings


def test_decay_timer_moves_an_idle_lead_back_to_nurture(isolated: Settings, worker: Callable[..., WorkerProcess]) -> None:
    now = int(time.time() * 1000) - 10 * MINUTE_MS
    events = [b2b("dora", 0, "form_submit", now, account_id="acme", properties={"form": "demo_request"})]
    send(isolated, events)
    offset_ms = 100 * DAY_MS  # the worker's clock runs 100 days ahead: the lead has been idle that long
    proc = worker(isolated.with_overrides(clock_offset_ms=offset_ms, decay_interval_s=1))

    # Swept to the worker's clock once its partition has had nothing to read for QUIET_MS (30 s).
    crossings = [c for _, c in read_topic(isolated, isolated.topic_crossings, expect=2, timeout_s=90)]
    assert [(c["from_level"], c["to_level"], c["direction"]) for c in crossings] == [("nurture", "mql", "up"), ("mql", "nurture", "down")]
    engine = Engine.from_directory(isolated.models_dir)
    result = engine.apply_batch([engine.parse(e) for e in events], lambda model, lead: None)
    expected, _ = engine.decay("b2b", "dora", result.states[("b2b", "dora")], now + offset_ms)
    decayed = engine.summary("b2b", "dora", expected, now + offset_ms)["score"]
    assert crossings[1]["score"] == decayed < crossings[0]["score"]
    # Her account counts her decayed score, not the one she had before she went idle.
    summaries = [s for key, s in read_topic(isolated, isolated.topic_scores, expect=4) if key == b"b2b:account/acme"]
    assert [s["score"] for s in summaries] == [crossings[0]["score"], decayed]
    _, body = proc.get("/metrics")
    assert b"leadstream_decay_steps_total 1.0" in body


def test_an_account_its_members_decay_takes_down_crosses_at_the_step_with_the_id_leadstream_score_gives(
    isolated: Settings, worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    # The crossing carried its member's newest event time: the CRM heard that the account went
    # cold at the moment it became engaged, and `leadstream score --at` stamped it with another
    # time, so another id.
    wall = int(time.time() * 1000)
    ann_ms, abe_ms = wall - 20 * MINUTE_MS, wall - 10 * MINUTE_MS
    events = [b2b(lead, 0, "form_submit", at, account_id="acme", properties={"form": "demo_request"})
              for lead, at in (("ann", ann_ms), ("abe", abe_ms))]
    # Appended as they happened: a partition's sweeps run from its newest event by the time
    # since its append (streams/sweep_clock.py), and Ann's and Abe's are on two partitions.
    send(isolated, events, appended_at_event_times=True)
    # The worker's clock 30 days ahead, less 15 minutes: Ann's 30-day step is due, Abe's not yet
    # (swept there once her partition has had nothing to read for QUIET_MS, 30 s).
    worker(isolated.with_overrides(clock_offset_ms=30 * DAY_MS - 15 * MINUTE_MS, decay_interval_s=1))

    crossings = [c for _, c in read_topic(isolated, isolated.topic_crossings, expect=4, timeout_s=90)]
    account = [c for c in crossings if c["kind"] == "account"]
    step_ms = ann_ms + 30 * DAY_MS
    assert [(c["direction"], c["lead_id"], c["score"], c["time"]) for c in account] == [("up", "abe", 60, abe_ms), ("down", "ann", 45, step_ms)]
    at = datetime.fromtimestamp((step_ms + MINUTE_MS) / 1000, tz=timezone.utc).isoformat()
    scored = leadstream(isolated, "score", "--events", str(write_jsonl(tmp_path / "events.jsonl", events)), "--at", at)
    offline = [r for r in map(orjson.loads, scored.stdout.splitlines()) if r["record"] == "transition" and r["kind"] == "account"]
    assert [c["id"] for c in account] == [r["id"] for r in offline]


def test_decay_an_event_read_after_downtime_brings_forward_crosses_the_account_at_its_step_as_leadstream_score_does(
    isolated: Settings, worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    # A login sent while the worker was down, read before its first sweep, brought the 30- and
    # 60-day steps: the lead crossed down at the 60-day step, its account at the login's time.
    start_ms = int(time.time() * 1000) - 10 * MINUTE_MS
    kinds = [("form_submit", {"form": "demo_request"}), ("meeting_booked", {}), ("form_submit", {"form": "contact"})]
    events = [b2b("sam", n, kind, start_ms + n, account_id="samco", properties=properties) for n, (kind, properties) in enumerate(kinds)]
    send(isolated, events)
    first = worker()
    wait_caught_up(isolated)
    first.stop()
    # Sent while the worker is down, and read by its successor, 70 days on, before its first sweep.
    events.append(b2b("sam", 9, "login", start_ms + 69 * DAY_MS, account_id="samco"))
    send(isolated, events[-1:])
    ahead = replace(isolated.with_overrides(clock_offset_ms=70 * DAY_MS, decay_interval_s=1), worker_port=free_port())
    worker(ahead)

    crossings = [c for _, c in read_topic(isolated, isolated.topic_crossings, expect=5, timeout_s=60)]
    account = [(c["direction"], c["score"], c["time"]) for c in crossings if c["kind"] == "account"]
    assert account == [("up", 70, start_ms + 2), ("down", 25, start_ms + 2 + 60 * DAY_MS)]
    at = datetime.fromtimestamp((start_ms + 70 * DAY_MS) / 1000, tz=timezone.utc).isoformat()
    scored = leadstream(ahead, "score", "--events", str(write_jsonl(tmp_path / "events.jsonl", events)), "--at", at)
    offline = [r["id"] for r in map(orjson.loads, scored.stdout.splitlines()) if r["record"] == "transition" and r["kind"] == "account"]
    assert [c["id"] for c in crossings if c["kind"] == "account"] == offline


def test_account_roll_up_crosses_through_the_rekeyed_stage(isolated: Settings, worker: Callable[..., WorkerProcess]) -> None:
    now = int(time.time() * 1000) - 60 * MINUTE_MS
    events = []
    for n, lead in enumerate(("ann", "ben", "cid")):
        events.append(b2b(lead, 0, "form_submit", now + n * MINUTE_MS, account_id="acme", properties={"form": "demo_request"}))
        events.append(b2b(lead, 1, "meeting_booked", now + n * MINUTE_MS + 1, account_id="acme"))
    send(isolated, events)

    proc = worker()

    crossings = [c for _, c in read_topic(isolated, isolated.topic_crossings, expect=7)]
    account = [c for c in crossings if c["kind"] == "account"]
    assert account, crossings
    assert {c["account_id"] for c in account} == {"acme"}
    # Members 55 each, top-3 combined 165: past "engaged" (60) and "buying" (150).
    assert account[-1]["to_level"] == "buying" and account[-1]["direction"] == "up"
    assert sorted(c["lead_id"] for c in crossings if c["kind"] == "lead" and c["to_level"] == "mql") == ["ann", "ben", "cid"]

    # cid moves to another company: its 55 points leave acme (110 left, under buying's 150 less
    # the hysteresis of 10) and count in globex (56, under engaged's 60).
    send(isolated, [{**page("cid", 2, "https://acme.io/about", now + 10 * MINUTE_MS), "account_id": "globex"}])
    after = [c for _, c in read_topic(isolated, isolated.topic_crossings, expect=len(crossings) + 1)]
    moved = [(c["account_id"], c["from_level"], c["to_level"], c["score"]) for c in after if c not in crossings]
    assert moved == [("acme", "buying", "engaged", 110)]
    # Read models get each account's summary on the score-changes topic, the latest per key.
    summaries = {key: value for key, value in read_to_end(isolated, isolated.topic_scores) if key and b":account/" in key}
    assert {key: (s["score"], s["level"], s["members"]) for key, s in summaries.items()} == {
        b"b2b:account/acme": (110, "engaged", 2), b"b2b:account/globex": (56, "unaware", 1)}
    assert [m["lead_id"] for m in summaries[b"b2b:account/globex"]["top_members"]] == ["cid"]
    # The worker explains an account: its score, level and members, best first.
    status, body = proc.get("/accounts/acme/")
    acme = orjson.loads(body)["models"]["b2b"]
    assert status == 200 and (acme["score"], acme["level"], acme["members"]) == (110, "engaged", 2)
    assert sorted(m["lead_id"] for m in acme["top_members"]) == ["ann", "ben"]
    assert proc.get("/accounts/nosuch/")[0] == 404
    # cid moves on again: globex has no member left, and is gone from the view as from read models.
    send(isolated, [{**page("cid", 3, "https://acme.io/about", now + 11 * MINUTE_MS), "account_id": "initech"}])
    wait_for(lambda: proc.get("/accounts/initech/")[0] == 200, what="cid counted in initech")
    wait_for(lambda: proc.get("/accounts/globex/")[0] == 404, timeout_s=10, what="globex, without members, answered 404")
    # Never having crossed a line, it keeps nothing a new account would not: removed at once
    # (tests/streams/test_emptied_accounts.py has one that crossed, kept for a while).
    assert "no state for account 'globex'" in orjson.loads(proc.get("/accounts/globex/")[1])["error"]
    # A model without [accounts] keeps the members of its leads' accounts, but rolls up none:
    # the view, as the read models, has nothing to show of them.
    send(isolated, [{"event_id": "dan-0", "lead_id": "dan", "type": "signup", "product": "saas", "time": now, "account_id": "hooli"},
                    {**page("dan", 1, "https://acme.io/about", now), "account_id": "hooli"}])
    wait_for(lambda: proc.get("/accounts/hooli/")[0] == 200, what="dan counted in hooli")
    assert list(orjson.loads(proc.get("/accounts/hooli/")[1])["models"]) == ["b2b"]


def test_sigkill_mid_stream_loses_and_duplicates_nothing(
    isolated: Settings, worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    now = int(time.time() * 1000)
    events = list(workload.generate(30_000, 1_500, seed=11, start_ms=now - 6 * 3_600_000, span_ms=6 * 3_600_000))
    path = write_jsonl(tmp_path / "events.jsonl", events)
    offline = [orjson.loads(line) for line in leadstream(isolated, "score", "--events", str(path)).stdout.splitlines()]
    expected_scores = read_model_scores(offline)
    expected_crossings = {r["id"]: r for r in offline if r["record"] == "transition" and r["kind"] == "lead"}
    assert len(expected_crossings) > 100

    # Produce over ~8 s in small envelopes while the worker scores, and kill it half-way: once it
    # has scored a sixth of the events, while the rest are still coming (a fixed sleep killed it
    # before it scored anything, or after it had scored everything, on a slow or a fast machine).
    def feed() -> None:
        producer = open_producer(isolated)
        try:
            for start in range(0, len(events), 500):
                chunk = events[start : start + 500]
                produce(producer, isolated.topic_events, ((e["lead_id"], orjson.dumps(e)) for e in chunk), 20,
                        partitions=isolated.partitions)
                time.sleep(0.13)
        finally:
            producer.close()

    feeder = threading.Thread(target=feed)
    first = worker()
    feeder.start()
    wait_for(lambda: sum(first.metric("leadstream_events_scored_total")) >= len(events) // 6, 60, "a sixth of the events scored")
    assert feeder.is_alive(), "the events were all sent before the kill: it would not land mid-stream"
    first.kill()
    assert first.proc is not None and first.proc.returncode == -9
    feeder.join()
    second = worker()
    # Everything scored and committed: what the topics hold now is final.
    wait_caught_up(isolated)

    crossings = [c for _, c in read_topic(isolated, isolated.topic_crossings, expect=len(expected_crossings), timeout_s=60)]
    lead_crossings = [c for c in crossings if c["kind"] == "lead"]
    by_id = {c["id"]: c for c in lead_crossings}
    assert set(by_id) == set(expected_crossings), "a crossing is missing or unexpected"
    # A crossing produced twice (state write lost in the kill) carries the same id, and is the
    # same crossing: consumers drop it. So every copy is checked, not one per id.
    for crossing in lead_crossings:
        expected_crossing = expected_crossings[crossing["id"]]
        assert (crossing["lead_id"], crossing["to_level"], crossing["score"]) == (
            expected_crossing["lead_id"], expected_crossing["to_level"], expected_crossing["score"],
        )
    # Account crossings depend on how member updates were batched, so the offline scorer does not
    # give them; but a crossing produced again is the same crossing, and each account's crossings,
    # duplicates dropped, go from level to level in the order produced (one partition per account).
    seen: dict[str, dict[str, Any]] = {}
    chains: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for _, crossing in read_to_end(isolated, isolated.topic_crossings):
        if crossing["kind"] != "account":
            continue
        first = seen.setdefault(crossing["id"], crossing)
        if first is crossing:
            chains.setdefault((crossing["model"], crossing["account_id"]), []).append(crossing)
        assert (crossing["from_level"], crossing["to_level"], crossing["score"]) == (first["from_level"], first["to_level"], first["score"])
    assert sum(map(len, chains.values())) > 5, chains
    for chain in chains.values():
        assert all(earlier["to_level"] == later["from_level"] for earlier, later in zip(chain, chain[1:])), chain
    scores = {key.decode(): value for key, value in read_to_end(isolated, isolated.topic_scores)}
    assert {k: v["score"] for k, v in scores.items()} == expected_scores
    # The restarted worker was handed every message from its committed offsets on, in sequence.
    _, body = second.get("/metrics")
    assert b'leadstream_offset_anomalies_total{kind="gap"} 0.0' in body


def test_two_workers_share_the_partitions_and_score_as_one(
    isolated: Settings, worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    now = int(time.time() * 1000)
    events = list(workload.generate(6_000, 400, seed=5, start_ms=now - 6 * 3_600_000, span_ms=6 * 3_600_000))
    offline = [orjson.loads(line) for line in
               leadstream(isolated, "score", "--events", str(write_jsonl(tmp_path / "events.jsonl", events))).stdout.splitlines()]
    expected = {key: score for key, score in read_model_scores(offline).items() if ":account/" not in key}
    expected_accounts = {key: score for key, score in read_model_scores(offline).items() if ":account/" in key}
    producer = open_producer(isolated)
    try:
        produce(producer, isolated.topic_events, ((e["lead_id"], orjson.dumps(e)) for e in events), 20, partitions=isolated.partitions)
    finally:
        producer.close()

    first = worker()
    second = worker(replace(isolated, worker_port=free_port(), state_dir=isolated.state_dir / "second"))
    wait_caught_up(isolated)

    scores = {key.decode(): value for key, value in read_to_end(isolated, isolated.topic_scores)}
    assert {k: v["score"] for k, v in scores.items()} == {**expected, **expected_accounts}
    # Each counts the leads of the partitions it owns, once the first, which may have scored
    # everything alone, has handed the second its share.
    def held() -> list[float]:
        return [sum(w.metric("leadstream_leads_in_state")) for w in (first, second)]

    deadline = time.monotonic() + 60
    while not (first.ready() and second.ready() and all(held()) and sum(held()) == len(expected)) and time.monotonic() < deadline:
        time.sleep(0.5)
    counts = held()
    assert all(counts) and sum(counts) == len(expected), counts
    # Either worker answers for any lead: the one that does not own it asks the owner.
    for key in list(expected)[:20]:
        model, lead_id = key.split("/", 1)
        answers = [w.get(f"/leads/{lead_id}/") for w in (first, second)]
        assert [status for status, _ in answers] == [200, 200], (lead_id, answers)
        assert {orjson.loads(body)["models"][model]["score"] for _, body in answers} == {expected[key]}


def test_an_account_of_thousands_of_members_is_kept_in_pages_and_recovered_from_them(
    isolated: Settings, worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    from streams.history import read_to_end as records_to_end

    now = int(time.time() * 1000) - 60 * MINUTE_MS
    # 2,600 members of one account (paged past 1,024), then a second worker that recovers the
    # account from its pages takes 300 more members and new scores of earlier ones.
    first_batch = [page(f"m{n}", 0, "https://acme.io/pricing", now + n) | {"account_id": "bigco"} for n in range(2_300)]
    second_batch = ([page(f"m{n}", 0, "https://acme.io/pricing", now + n) | {"account_id": "bigco"} for n in range(2_300, 2_600)]
                    + [b2b(f"m{n}", 1, "form_submit", now + 10_000 + n, properties={"form": "demo_request"}) for n in range(0, 2_300, 100)])
    offline = [orjson.loads(line) for line in leadstream(
        isolated, "score", "--events", str(write_jsonl(tmp_path / "events.jsonl", first_batch + second_batch))).stdout.splitlines()]
    expected = read_model_scores(offline)["b2b:account/bigco"]

    send(isolated, first_batch)
    first = worker()
    wait_caught_up(isolated)
    first.stop()
    changelog = f"{isolated.app_id}-accounts-changelog"
    keys = {record.key for record in records_to_end(isolated, changelog)}
    pages = {key for key in keys if key and key.startswith(b"bigco\xffb2b\xff")}
    assert b"bigco" in keys and len(pages) >= 2, keys  # the members in pages, besides the account's record

    send(isolated, second_batch)
    second = worker(replace(isolated, worker_port=free_port()))
    wait_caught_up(isolated)
    summaries = [value for key, value in read_to_end(isolated, isolated.topic_scores) if key == b"b2b:account/bigco"]
    assert summaries[-1]["score"] == expected and summaries[-1]["members"] == 2_600
    status, body = second.get("/accounts/bigco/")
    assert status == 200 and orjson.loads(body)["models"]["b2b"]["members"] == 2_600


def test_an_account_whose_members_ids_collide_under_crc32_is_written_and_recovered(
    isolated: Settings, worker: Callable[..., WorkerProcess]
) -> None:
    """17,000 members with lead ids of 1 KB picked so that their crc32 is 0 modulo 256: pages
    placed by crc32 put them all in one, whose record went past the changelog's 16 MB, and the
    worker stopped at every restart (MessageSizeTooLargeError)."""
    now = int(time.time() * 1000) - 60 * MINUTE_MS
    ids = crc32_colliding_ids(17_001, 256)

    def visit(n: int) -> dict:
        return {"event_id": f"e{n}", "lead_id": ids[n], "type": "page_view", "product": "b2b", "time": now + n,
                "account_id": "megacorp", "properties": {"url": "https://acme.io/pricing", "time_on_page_s": 20}}

    def members(proc: WorkerProcess) -> int:
        status, body = proc.get("/accounts/megacorp/")
        assert status == 200, status
        return orjson.loads(body)["models"]["b2b"]["members"]

    send(isolated, [visit(n) for n in range(17_000)])
    first = worker()
    try:
        wait_caught_up(isolated)  # offsets are committed once the account's records are written
    except TimeoutError:
        raise AssertionError(f"the account's records were not written:\n{first.tail()}") from None
    assert members(first) == 17_000
    first.stop()
    # A worker that recovers the account from its pages takes one member more.
    send(isolated, [visit(17_000)])
    second = worker(replace(isolated, worker_port=free_port()))
    wait_caught_up(isolated)
    assert members(second) == 17_001


def test_a_lead_whose_owner_was_killed_is_a_503_to_retry_until_its_partition_has_moved(
    isolated: Settings, worker: Callable[..., WorkerProcess]
) -> None:
    now = int(time.time() * 1000) - 10 * MINUTE_MS
    leads = [f"lead-{n}" for n in range(16)]
    send(isolated, [b2b(lead, 0, "form_submit", now, properties={"form": "demo_request"}) for lead in leads])
    first = worker()
    second = worker(replace(isolated, worker_port=free_port(), state_dir=isolated.state_dir / "second"))
    wait_caught_up(isolated)
    deadline = time.monotonic() + 60
    while not (first.ready() and second.ready() and all(sum(w.metric("leadstream_leads_in_state")) for w in (first, second))):
        assert time.monotonic() < deadline, "the two workers did not share the leads"
        time.sleep(0.3)
    assert all(first.get(f"/leads/{lead}/")[0] == 200 for lead in leads)

    second.kill()
    # Until the group's session timeout moves the killed worker's partitions, the first cannot
    # reach the owner of some leads: it says so with a 503 to retry, as while it rebalances.
    answers = [first.get(f"/leads/{lead}/") for lead in leads]
    assert {status for status, _ in answers} == {200, 503}, answers
    refused = [orjson.loads(body) for status, body in answers if status == 503]
    assert all("does not answer" in answer["error"] or answer.get("ready") is False for answer in refused), refused
    # Then the first owns every lead, and answers for each.
    deadline = time.monotonic() + 60
    while not all(first.get(f"/leads/{lead}/")[0] == 200 for lead in leads):
        assert time.monotonic() < deadline, "the killed worker's leads never came back"
        time.sleep(0.5)
