"""The marker a forgotten lead leaves until its request is committed (streams/erasure.py), without
a broker: found again in a recovered table, and gone once the consumer committed past it; and
what a request's headers say was sent before it, dropped however late it is read."""

from __future__ import annotations

import asyncio
import logging

import orjson
import pytest

from scoring import Engine
from scoring.errors import StateError
from streams import erasure, lead_states, metrics, read_offsets
from streams.partitioning import partition_for
from streams.scorer import Scorer
from streams.settings import Settings
from streams.stage import Consumed, LiveTable, MemoryData, frame
from tests.scoring.support import shipped
from tests.streams.stage_support import Kept

SETTINGS = Settings()
ENGINE = Engine([shipped("b2b")])


def test_a_marker_goes_once_every_offset_it_names_is_committed_and_the_states_beside_it_stay() -> None:
    forgotten = erasure.marker({SETTINGS.topic_events: 5, SETTINGS.topic_profiles: 2})
    data = {b"gone": lead_states.encode(forgotten),
            b"back": lead_states.encode({**forgotten, "b2b": ENGINE.new_state("b2b")}),  # events since the request
            b"kept": lead_states.encode({"b2b": ENGINE.new_state("b2b")})}
    store = LiveTable(MemoryData(), "leads-changelog", 4, 1_000, lead_states.decode)
    store.table.data.update(data)
    committed = {SETTINGS.topic_events: 5, SETTINGS.topic_profiles: 3}  # the next offsets to read
    outbox = Kept()
    scorer = Scorer(ENGINE, SETTINGS, store, outbox, 4, lambda topic, partition: committed.get(topic))
    asyncio.run(scorer.rebuild_indexes({0, 1, 2, 3}))  # as after a recovery
    assert len(scorer.erasures) == 2

    assert asyncio.run(scorer.clear_erasures()) == 0  # offset 5 of the events topic is not committed yet
    assert store.table.data == data and outbox.placed == []
    committed[SETTINGS.topic_events] = 6
    assert asyncio.run(scorer.clear_erasures()) == 2
    assert b"gone" not in store.table.data and set(lead_states.decode(store.table.data[b"back"])) == {"b2b"}
    assert store.table.data[b"kept"] == data[b"kept"]
    assert sorted((key, value is None) for _, _, key, value in outbox.placed) == [(b"back", False), (b"gone", True)]
    assert {partition for _, partition, _, _ in outbox.placed} == {partition_for("gone", 4), partition_for("back", 4)} and not scorer.erasures


def test_without_committed_offsets_the_markers_stay() -> None:
    store = LiveTable(MemoryData(), "leads-changelog", 4, 1_000, lead_states.decode)
    store.table.data[b"gone"] = lead_states.encode(erasure.marker({SETTINGS.topic_events: 0}))
    scorer = Scorer(ENGINE, SETTINGS, store, Kept(), 4)
    asyncio.run(scorer.rebuild_indexes({0, 1, 2, 3}))
    assert asyncio.run(scorer.clear_erasures()) == 0 and b"gone" in store.table.data


@pytest.mark.parametrize("text", [b"[1]", b'{"events": "5"}', b"{not json", b"\xff"])
def test_a_marker_that_is_not_one_makes_the_lead_unreadable_naming_it(text: bytes) -> None:
    with pytest.raises(StateError, match="marker"):
        lead_states.decode(frame({erasure.FORGOTTEN: text}))


def test_only_records_up_to_the_offsets_of_the_forgetting_batch_are_read_again() -> None:
    states = erasure.marker({SETTINGS.topic_events: 5})
    assert erasure.read_again(states, SETTINGS.topic_events, 5)
    assert not erasure.read_again(states, SETTINGS.topic_events, 6)
    assert not erasure.read_again(states, SETTINGS.topic_identity, 0)  # none of that topic was in the batch
    assert not erasure.read_again({}, SETTINGS.topic_events, 0)


def test_a_requests_headers_say_the_last_offset_of_each_topic_sent_before_it() -> None:
    headers = erasure.request_headers({SETTINGS.topic_events: 20_006, SETTINGS.topic_identity: 0})
    assert headers == ((erasure.SENT_BEFORE, f"{SETTINGS.topic_events} 20006".encode()),
                       (erasure.SENT_BEFORE, f"{SETTINGS.topic_identity} 0".encode()))
    topics = {SETTINGS.topic_events, SETTINGS.topic_identity}
    # An empty partition had nothing sent before the request.
    assert erasure.sent_before([*headers, ("other", b"x")], topics) == ({SETTINGS.topic_events: 20_005}, [])


@pytest.mark.parametrize(("value", "reason"), [
    (b"leadstream-events", "malformed"), (b"leadstream-events -5", "malformed"), (b"leadstream-events +5", "malformed"),
    (b"leadstream-events 5 6", "malformed"), (b"leadstream-events \xd9\xa3", "malformed"), (b"\xff 5", "malformed"),
    (b" 5", "malformed"), (b"leadstream-events " + b"9" * 5000, "malformed"), (None, "malformed"),
    (b"leadstream-profiles 5", "unknown_topic"),
])
def test_a_header_that_cannot_say_what_was_sent_before_is_ignored_with_its_reason(value: bytes | None, reason: str) -> None:
    good = (erasure.SENT_BEFORE, f"{SETTINGS.topic_identity} 3".encode())
    assert erasure.sent_before([(erasure.SENT_BEFORE, value), good], {SETTINGS.topic_events, SETTINGS.topic_identity}) == (
        {SETTINGS.topic_identity: 2}, [reason])


def test_records_a_request_says_were_sent_before_it_are_dropped_when_read_later_and_later_ones_start_a_new_profile() -> None:
    """A worker behind reads the request before the lead's events sent earlier: they are dropped,
    and the marker stays until they are committed; an event sent after the request is scored."""
    lead = "lead-f"
    partition = partition_for(lead, 4)
    store = LiveTable(MemoryData(), "leads-changelog", 4, 1_000, lead_states.decode)
    committed: dict[str, int] = {}
    outbox = Kept()
    scorer = Scorer(ENGINE, SETTINGS, store, outbox, 4, lambda topic, _: committed.get(topic))
    now = SETTINGS.now_ms()

    def demo(offset: int) -> Consumed:
        value = {"event_id": f"e-{offset}", "lead_id": lead, "type": "form_submit", "product": "b2b", "time": now,
                 "properties": {"form": "demo_request"}, "traits": {"email": "f@initech.io"}}
        return Consumed(SETTINGS.topic_events, partition, offset, lead.encode(), orjson.dumps(value))

    request = Consumed(SETTINGS.topic_profiles, partition, 0, lead.encode(), b"", True,
                       headers=erasure.request_headers({SETTINGS.topic_events: 12, SETTINGS.topic_identity: 0}))
    asyncio.run(scorer.process([demo(0), request]))  # the request read with the first of the lead's queued events
    asyncio.run(scorer.process([demo(offset) for offset in range(1, 12)]))
    assert store.states(lead) == erasure.marker({SETTINGS.topic_events: 11, SETTINGS.topic_profiles: 0})
    assert not [record for record in outbox.sent if record[0] == SETTINGS.topic_crossings]

    committed.update({SETTINGS.topic_events: 11, SETTINGS.topic_profiles: 1})
    assert asyncio.run(scorer.clear_erasures()) == 0  # offset 11, read, is not committed yet
    asyncio.run(scorer.process([demo(12)]))  # sent after the request: a new profile
    assert erasure.FORGOTTEN in store.states(lead) and "b2b" in store.states(lead)
    committed[SETTINGS.topic_events] = 12
    assert asyncio.run(scorer.clear_erasures()) == 1
    assert set(store.states(lead)) == {"b2b", read_offsets.READ}


def test_a_request_with_no_state_whose_records_are_still_to_be_read_does_not_blame_its_key(caplog: pytest.LogCaptureFixture) -> None:
    lead = "lead-f"
    partition = partition_for(lead, 4)
    store = LiveTable(MemoryData(), "leads-changelog", 4, 1_000, lead_states.decode)
    scorer = Scorer(ENGINE, SETTINGS, store, Kept(), 4)
    queued = Consumed(SETTINGS.topic_profiles, partition, 0, lead.encode(), b"", True,
                      headers=erasure.request_headers({SETTINGS.topic_events: 5}))
    with caplog.at_level(logging.INFO, "leadstream.worker"):
        asyncio.run(scorer.process([queued]))
        assert "records sent before the request still to be read: count=1" in caplog.text
        assert "must be keyed by the lead id" not in caplog.text
        assert erasure.offsets(store.states(lead)) == {SETTINGS.topic_events: 4, SETTINGS.topic_profiles: 0}
        # A plain request keyed by no lead's id, as before.
        asyncio.run(scorer.process([Consumed(SETTINGS.topic_profiles, partition_for("ada@initech.io", 4), 1,
                                             b"ada@initech.io", b"", True)]))
        assert "must be keyed by the lead id" in caplog.text


def test_a_malformed_header_is_counted_and_logged_and_the_request_still_applies(caplog: pytest.LogCaptureFixture) -> None:
    lead = "lead-f"
    store = LiveTable(MemoryData(), "leads-changelog", 4, 1_000, lead_states.decode)
    scorer = Scorer(ENGINE, SETTINGS, store, Kept(), 4)
    before = metrics.FORGET_HEADERS_IGNORED.labels("malformed")._value.get()
    request = Consumed(SETTINGS.topic_profiles, partition_for(lead, 4), 7, lead.encode(), b"", True,
                       headers=((erasure.SENT_BEFORE, b"\xff"),))
    with caplog.at_level(logging.WARNING, "leadstream.worker"):
        asyncio.run(scorer.process([request]))
    assert metrics.FORGET_HEADERS_IGNORED.labels("malformed")._value.get() == before + 1
    assert "headers of requests to forget ignored" in caplog.text and "malformed=1" in caplog.text
    assert store.states(lead) == erasure.marker({SETTINGS.topic_profiles: 7})


def demo_request(lead: str, offset: int) -> Consumed:
    value = {"event_id": f"e-{offset}", "lead_id": lead, "type": "form_submit", "product": "b2b", "time": SETTINGS.now_ms(),
             "properties": {"form": "demo_request"}}
    return Consumed(SETTINGS.topic_events, partition_for(lead, 4), offset, lead.encode(), orjson.dumps(value))


def test_a_header_naming_an_offset_past_the_partition_s_end_is_ignored_counted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    """Honoured, `leadstream-sent-before: <events topic> 999999999` dropped the lead's every event
    unsaid (no state, no dead letter, no log line) until the topic reached that offset."""
    lead = "fx-0"
    partition = partition_for(lead, 4)
    store = LiveTable(MemoryData(), "leads-changelog", 4, 1_000, lead_states.decode)
    asked: list[tuple[set[str], set[int]]] = []

    def ends_now(topics: set[str], partitions: set[int]) -> dict[int, dict[str, int]]:
        asked.append((set(topics), set(partitions)))
        return {partition: {SETTINGS.topic_events: 3, SETTINGS.topic_identity: 0}}

    seen = {SETTINGS.topic_events: 3}  # the end the worker's fetches saw
    scorer = Scorer(ENGINE, SETTINGS, store, Kept(), 4, log_end=lambda topic, _: seen.get(topic), ends_now=ends_now)
    before = metrics.FORGET_HEADERS_IGNORED.labels(erasure.BEYOND_END)._value.get()
    request = Consumed(SETTINGS.topic_profiles, partition, 7, lead.encode(), b"", True,
                       headers=erasure.request_headers({SETTINGS.topic_events: 999_999_999}))
    with caplog.at_level(logging.WARNING, "leadstream.worker"):
        asyncio.run(scorer.process([request]))
    assert asked == [({SETTINGS.topic_events}, {partition})]
    assert metrics.FORGET_HEADERS_IGNORED.labels(erasure.BEYOND_END)._value.get() == before + 1
    assert "headers of requests to forget ignored" in caplog.text and f"{erasure.BEYOND_END}=1" in caplog.text
    assert store.states(lead) == erasure.marker({SETTINGS.topic_profiles: 7})
    asyncio.run(scorer.process([demo_request(lead, offset) for offset in range(3, 8)]))  # sent after the request
    assert store.states(lead)["b2b"].behaviour > 0


@pytest.mark.parametrize(
    ("seen", "broker", "asked"),
    [
        (20, 20, False),  # within what the worker's fetches saw: the broker is not asked
        (5, 20, True),  # past it (a worker behind fetches a partition again only once it scored what it had)
        (None, 20, True),  # not fetched yet
        (5, None, True),  # the broker could not be asked: honoured
    ],
)
def test_a_header_within_the_partition_s_end_is_honoured_however_stale_the_end_the_worker_saw(
    seen: int | None, broker: int | None, asked: bool
) -> None:
    lead = "fx-1"
    partition = partition_for(lead, 4)
    store = LiveTable(MemoryData(), "leads-changelog", 4, 1_000, lead_states.decode)
    calls: list[int] = []

    def ends_now(topics: set[str], partitions: set[int]) -> dict[int, dict[str, int]]:
        calls.append(1)
        if broker is None:
            raise OSError("the broker went away")
        return {partition: {SETTINGS.topic_events: broker}}

    scorer = Scorer(ENGINE, SETTINGS, store, Kept(), 4, log_end=lambda topic, _: seen, ends_now=ends_now)
    request = Consumed(SETTINGS.topic_profiles, partition, 0, lead.encode(), b"", True,
                       headers=erasure.request_headers({SETTINGS.topic_events: 12}))
    asyncio.run(scorer.process([request]))
    assert bool(calls) == asked
    covered = {SETTINGS.topic_events: 11, SETTINGS.topic_profiles: 0}
    assert set(store.states(lead)) == {erasure.FORGOTTEN} and erasure.offsets(store.states(lead)) == covered
    asyncio.run(scorer.process([demo_request(lead, offset) for offset in range(12)]))  # sent before the request
    assert set(store.states(lead)) == {erasure.FORGOTTEN} and erasure.offsets(store.states(lead)) == covered


def test_a_lead_forgotten_while_its_model_is_out_of_the_directory_leaves_that_model_s_accounts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Its states of the removed model rested in the table, and so did its accounts: forgotten
    then, the lead stayed a member there, its points counted, and the worker warned that the id
    had no state. Its leaving goes now (the account stage dead-letters it as unknown_model until
    the model is back, for replay-dlq)."""
    store = LiveTable(MemoryData(), "leads-changelog", 4, 1_000, lead_states.decode)
    outbox = Kept()
    scorer = Scorer(ENGINE, SETTINGS, store, outbox, 4)
    partition = partition_for("ada", 4)
    event = {"event_id": "e1", "lead_id": "ada", "type": "form_submit", "product": "b2b", "account_id": "acme",
             "time": 1_764_000_000_000}
    asyncio.run(scorer.process([Consumed(SETTINGS.topic_events, partition, 0, b"ada", orjson.dumps(event))]))
    asyncio.run(scorer.use(Engine([shipped("saas_start_small")]), {0, 1, 2, 3}))  # b2b.toml moved out of the directory

    with caplog.at_level(logging.INFO, logger="leadstream.worker"):
        asyncio.run(scorer.process([Consumed(SETTINGS.topic_profiles, partition, 0, b"ada", b"", tombstone=True)]))

    updates = [u for topic, _, value in outbox.sent if topic == SETTINGS.topic_accounts and value for u in orjson.loads(value)]
    assert [(u["model"], u["account_id"], u["lead_id"], u.get("left")) for u in updates][-1] == ("b2b", "acme", "ada", True)
    assert "leads forgotten: count=1" in caplog.text and "no state" not in caplog.text
