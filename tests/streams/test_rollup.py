"""The account stage's wire format: member updates packed per account partition, decoded in one
pass when well formed, a bad record dead-lettered alone with its reason."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import orjson
import pytest

from scoring import AccountState, Engine, MemberScore
from streams.account_table import AccountTable
from streams.deadletter import DeadLetter
from streams.envelope import MAX_MESSAGE_BYTES
from streams.partitioning import partition_for
from streams.rollup import Rollup, publish_updates
from streams.settings import Settings
from streams.stage import Consumed, MemoryData, frame
from tests.scoring.support import shipped
from tests.streams.stage_support import Kept


class Collected:
    """Records an outbox would send."""

    def __init__(self) -> None:
        self.records: list[tuple[str, bytes | None, bytes, int | None]] = []

    def add(self, topic: str, key: bytes | None, value: bytes, partition: int | None = None) -> None:
        self.records.append((topic, key, value, partition))


def decode(stage: Rollup, message: Consumed) -> list[MemberScore]:
    """The stage's updates of a message, its dead letters queued as a batch's are."""
    dead: list[DeadLetter] = []
    updates = stage._decode(message, dead)
    stage._queue_dead(dead)
    return updates


def test_updates_cross_kafka_as_documented_and_decode_back() -> None:
    settings = Settings()
    updates = [MemberScore("b2b", "acme", "L1", 20, 1_762_128_000_000), MemberScore("b2b", "acme", "L2", 35.5, 1_762_128_000_001)]
    outbox = Collected()
    publish_updates(outbox, settings, updates, 4)  # type: ignore[arg-type]
    [(topic, key, value, partition)] = outbox.records
    assert topic == settings.topic_accounts and key is None
    assert orjson.loads(value) == [
        {"model": "b2b", "account_id": "acme", "lead_id": "L1", "score": 20, "time": 1_762_128_000_000},
        {"model": "b2b", "account_id": "acme", "lead_id": "L2", "score": 35.5, "time": 1_762_128_000_001},
    ]
    stage = Rollup(Engine([shipped("b2b")]), settings, None, Collected())  # type: ignore[arg-type]
    assert decode(stage, Consumed(topic, partition or 0, 7, None, value)) == [
        MemberScore("b2b", "acme", "L1", 20.0, 1_762_128_000_000), MemberScore("b2b", "acme", "L2", 35.5, 1_762_128_000_001),
    ]


def test_a_batch_of_more_updates_than_a_kafka_message_holds_is_sent_in_several_envelopes_in_order() -> None:
    settings = Settings()
    long_id = "\u4e2d" * 250  # 750 bytes in UTF-8
    updates = [MemberScore("b2b", "acme", f"{n}-{long_id}", n, 1_762_128_000_000 + n) for n in range(3000)]
    outbox = Collected()
    publish_updates(outbox, settings, updates, 4)  # type: ignore[arg-type]
    assert len(outbox.records) > 2  # 2.5 MB as one array
    assert all(len(value) <= MAX_MESSAGE_BYTES for _, _, value, _ in outbox.records)
    assert {partition for _, _, _, partition in outbox.records} == {partition_for("acme", 4)}
    stage = Rollup(Engine([shipped("b2b")]), settings, None, Collected())  # type: ignore[arg-type]
    assert [u for _, _, value, partition in outbox.records for u in decode(stage, Consumed(settings.topic_accounts, partition or 0, 0, None, value))] == updates


def test_a_bad_update_is_dead_lettered_and_the_others_kept() -> None:
    settings = Settings()
    dead = Collected()
    stage = Rollup(Engine([shipped("b2b")]), settings, None, dead)  # type: ignore[arg-type]
    good: dict[str, Any] = {"model": "b2b", "account_id": "acme", "lead_id": "L1", "score": 20, "time": 5}
    bad = {**good, "lead_id": "L2", "score": "lots"}
    decoded = decode(stage, Consumed(settings.topic_accounts, 1, 9, None, orjson.dumps([good, bad])))
    assert decoded == [MemberScore("b2b", "acme", "L1", 20.0, 5)]
    [(topic, _, letter, partition)] = dead.records
    assert topic == settings.topic_deadletter and partition == 1
    assert orjson.loads(letter)["reason"] == "bad_account_update"
    assert orjson.loads(letter)["source"] == {"topic": settings.topic_accounts, "partition": 1, "offset": 9}


def test_a_leaving_crosses_as_left_true_and_a_mistyped_one_is_dead_lettered() -> None:
    settings = Settings()
    dead = Collected()
    stage = Rollup(Engine([shipped("b2b")]), settings, None, dead)  # type: ignore[arg-type]
    outbox = Collected()
    publish_updates(outbox, settings, [MemberScore("b2b", "acme", "L1", 0, 5, left=True)], 4)  # type: ignore[arg-type]
    [(_, _, value, partition)] = outbox.records
    assert orjson.loads(value) == [{"model": "b2b", "account_id": "acme", "lead_id": "L1", "score": 0, "time": 5, "left": True}]
    assert decode(stage, Consumed(settings.topic_accounts, partition or 0, 1, None, value)) == [
        MemberScore("b2b", "acme", "L1", 0, 5, left=True)]
    good: dict[str, Any] = {"model": "b2b", "account_id": "acme", "lead_id": "L1", "score": 0, "time": 5, "left": True}
    decoded = decode(stage, Consumed(settings.topic_accounts, 1, 9, None, orjson.dumps([good, {**good, "left": "yes"}])))
    assert decoded == [MemberScore("b2b", "acme", "L1", 0, 5, left=True)]
    [(_, _, letter, _)] = dead.records
    assert orjson.loads(letter)["reason"] == "bad_account_update" and "Expected `bool`, got `str` - at `$.left`" in orjson.loads(letter)["detail"]


def test_an_update_for_a_model_the_worker_does_not_have_is_dead_lettered_not_raised() -> None:
    settings = Settings()
    dead = Collected()
    stage = Rollup(Engine([shipped("b2b")]), settings, None, dead)  # type: ignore[arg-type]
    good: dict[str, Any] = {"model": "b2b", "account_id": "acme", "lead_id": "L1", "score": 20, "time": 5}
    value = orjson.dumps([good, {**good, "model": "retired"}])
    assert decode(stage, Consumed(settings.topic_accounts, 2, 3, None, value)) == [MemberScore("b2b", "acme", "L1", 20.0, 5)]
    [(_, _, letter, _)] = dead.records
    assert orjson.loads(letter)["reason"] == "unknown_model" and "'retired'" in orjson.loads(letter)["detail"]
    # A model added, which a worker of the group has loaded and this one not yet: said, with the remedy.
    assert "not loaded here yet" in orjson.loads(letter)["detail"]
    assert "`leadstream replay-dlq --reason unknown_model` once every worker's GET /models/ shows it" in orjson.loads(letter)["detail"]
    assert orjson.loads(orjson.loads(letter)["original"])["model"] == "retired"


GOOD_UPDATE: dict[str, Any] = {"model": "b2b", "account_id": "acme", "lead_id": "L1", "score": 20, "time": 5}


@pytest.mark.parametrize(
    ("record", "named"),
    [
        (1, "Expected `object`, got `int`"),
        ("L2", "Expected `object`, got `str`"),
        ({**GOOD_UPDATE, "account_id": ["acme"]}, "at `$.account_id`"),
        ({**GOOD_UPDATE, "account_id": ""}, "at `$.account_id`"),
        ({**GOOD_UPDATE, "lead_id": {"id": "L2"}}, "at `$.lead_id`"),
        ({**GOOD_UPDATE, "model": ["b2b"]}, "at `$.model`"),
        ({**GOOD_UPDATE, "score": "1e999"}, "at `$.score`"),
        ({**GOOD_UPDATE, "score": 1e300}, "at `$.score`"),
        ({**GOOD_UPDATE, "time": -1}, "at `$.time`"),
        ({k: v for k, v in GOOD_UPDATE.items() if k != "lead_id"}, "missing required field `lead_id`"),
    ],
)
def test_an_update_not_written_by_leadstream_is_dead_lettered_naming_the_field(record: Any, named: str) -> None:
    """Anything on the accounts topic is refused alone with the field named; before, such
    records raised out of the stage (an AttributeError or TypeError) and stopped the worker."""
    settings = Settings()
    dead = Collected()
    stage = Rollup(Engine([shipped("b2b")]), settings, None, dead)  # type: ignore[arg-type]
    value = orjson.dumps([GOOD_UPDATE, record])
    assert decode(stage, Consumed(settings.topic_accounts, 0, 4, None, value)) == [MemberScore("b2b", "acme", "L1", 20.0, 5)]
    [(_, _, letter, _)] = dead.records
    assert orjson.loads(letter)["reason"] == "bad_account_update" and named in orjson.loads(letter)["detail"]


def test_a_message_with_a_text_that_is_not_utf8_is_dead_lettered_not_raised() -> None:
    """msgspec raises UnicodeDecodeError (no DecodeError) for a field's text that is not UTF-8."""
    settings = Settings()
    dead = Collected()
    stage = Rollup(Engine([shipped("b2b")]), settings, None, dead)  # type: ignore[arg-type]
    value = orjson.dumps([GOOD_UPDATE, {**GOOD_UPDATE, "lead_id": "Ren\u00e9"}]).replace("\u00e9".encode(), b"\xe9")
    assert decode(stage, Consumed(settings.topic_accounts, 0, 4, None, value)) == []
    [(_, _, letter, _)] = dead.records
    assert orjson.loads(letter)["reason"] == "bad_json" and "it is not UTF-8 text (byte 0xe9 at offset" in orjson.loads(letter)["detail"]
    assert orjson.loads(letter)["original_base64"]


def test_a_time_beyond_any_event_time_is_refused_not_stored() -> None:
    settings = Settings()
    dead = Collected()
    stage = Rollup(Engine([shipped("b2b")]), settings, None, dead)  # type: ignore[arg-type]
    # JSON integers beyond 64 bits, which no encoder writes back into the account's state.
    value = orjson.dumps([GOOD_UPDATE]).replace(b'"time":5', b'"time":1000000000000000000000000000000')
    assert decode(stage, Consumed(settings.topic_accounts, 0, 4, None, value)) == []
    [(_, _, letter, _)] = dead.records
    assert "at `$.time`" in orjson.loads(letter)["detail"]


def test_an_update_for_an_account_whose_state_cannot_be_read_is_dead_lettered_and_the_others_rolled_up() -> None:
    settings = Settings()
    outbox = Kept()
    store = AccountTable(MemoryData(), "accounts-changelog", 4, 10)
    stage = Rollup(Engine([shipped("b2b")]), settings, store, outbox)
    # Account states of a wrong shape: members not an object; not JSON at all.
    store.table.write(b"acme", frame({"b2b": b'[1, [], "unaware", 0]'}), 0)
    store.table.write(b"globex", frame({"b2b": b"\xff"}), 0)
    updates = [{**GOOD_UPDATE, "account_id": account} for account in ("acme", "globex", "initech")]
    asyncio.run(stage.process([Consumed(settings.topic_accounts, 0, 4, None, orjson.dumps(updates))]))
    letters = [orjson.loads(v) for topic, _, v in outbox.sent if topic == settings.topic_deadletter and v]
    assert [(letter["reason"], orjson.loads(letter["original"])["account_id"]) for letter in letters] == [
        ("unreadable_state", "acme"), ("unreadable_state", "globex")]
    assert "account 'acme' cannot be read (account state with a field of the wrong type" in letters[0]["detail"]
    assert [key for topic, key, _ in outbox.sent if topic == "accounts-changelog"] == [b"initech"]


def test_whole_member_scores_stay_integers_through_kafka_as_in_leadstream_score() -> None:
    """The account summary and crossing the stage publishes show a member's whole score as an
    integer (README "Topics": `{"lead_id": "lead-42", "score": 67}`), as `leadstream score`
    does: a JSON 67 read back as 67.0 would write `"score": 67.0` to every consumer."""
    settings = Settings()
    outbox = Kept()
    stage = Rollup(Engine([shipped("b2b")]), settings, AccountTable(MemoryData(), "accounts-changelog", 4, 10), outbox)
    updates = [MemberScore("b2b", "acme", "lead-42", 67, 1_763_884_806_000, revision=3),  # crosses with lead-7's points in
               MemberScore("b2b", "acme", "lead-7", 55.5, 1_763_884_802_000, revision=2)]
    collected = Collected()
    publish_updates(collected, settings, updates, 4)  # type: ignore[arg-type]
    [(topic, _, value, partition)] = collected.records
    assert [type(update.score) for update in decode(stage, Consumed(topic, partition or 0, 0, None, value))] == [int, float]
    asyncio.run(stage.process([Consumed(topic, partition or 0, 0, None, value)]))
    [summary] = [orjson.loads(v) for t, _, v in outbox.sent if t == settings.topic_scores and v]
    assert summary["top_members"] == [{"lead_id": "lead-42", "score": 67}, {"lead_id": "lead-7", "score": 55.5}]
    [crossing] = [orjson.loads(v) for t, _, v in outbox.sent if t == settings.topic_crossings and v]
    assert [type(reason["points"]) for reason in crossing["reasons"]] == [int, float]


def test_an_account_whose_last_member_left_is_taken_out_of_read_models_and_comes_back_with_a_member() -> None:
    """A lead that moves to another account leaves the first one without members: the stage
    publishes a tombstone for it, not a summary of 0 members at score 0 that would stay on the
    hot-accounts leaderboard (`leadstream top --accounts`) for good."""
    settings = Settings()
    outbox = Kept()
    stage = Rollup(Engine([shipped("b2b")]), settings, AccountTable(MemoryData(), "accounts-changelog", 4, 10), outbox)

    def roll(*updates: MemberScore) -> dict[bytes | None, Any]:
        outbox.sent.clear()
        collected = Collected()
        publish_updates(collected, settings, updates, 4)  # type: ignore[arg-type]
        asyncio.run(stage.process([Consumed(topic, partition or 0, 0, None, value) for topic, _, value, partition in collected.records]))
        return {key: v and orjson.loads(v) for topic, key, v in outbox.sent if topic == settings.topic_scores}

    assert roll(MemberScore("b2b", "acme", "lead-42", 67, 1_000, revision=1))[b"b2b:account/acme"]["members"] == 1
    moved = roll(MemberScore("b2b", "acme", "lead-42", 0, 2_000, True, 2), MemberScore("b2b", "globex", "lead-42", 70, 2_000, revision=2))
    assert moved[b"b2b:account/acme"] is None
    assert moved[b"b2b:account/globex"]["members"] == 1
    back = roll(MemberScore("b2b", "acme", "lead-7", 20, 3_000, revision=1))
    assert back[b"b2b:account/acme"]["members"] == 1 and back[b"b2b:account/acme"]["level"] == "unaware"


def test_an_account_of_a_model_whose_accounts_was_removed_leaves_read_models_at_its_next_change() -> None:
    """Its summary stayed in read models (`leadstream top --accounts`) for good: only the
    accounts of models with [accounts] got summaries or tombstones. A model that never had
    [accounts] keeps its accounts' members and publishes nothing."""
    settings = Settings()
    outbox = Kept()
    store = AccountTable(MemoryData(), "accounts-changelog", 4, 10)
    b2b = shipped("b2b")

    def roll(stage: Rollup, *updates: MemberScore) -> dict[bytes | None, Any]:
        outbox.sent.clear()
        collected = Collected()
        publish_updates(collected, settings, updates, 4)  # type: ignore[arg-type]
        asyncio.run(stage.process([Consumed(topic, partition or 0, 0, None, value) for topic, _, value, partition in collected.records]))
        return {key: v and orjson.loads(v) for topic, key, v in outbox.sent if topic == settings.topic_scores}

    assert roll(Rollup(Engine([b2b]), settings, store, outbox), MemberScore("b2b", "acme", "lead-42", 67, 1_000))[b"b2b:account/acme"]
    removed = Rollup(Engine([replace(b2b, accounts=None)]), settings, store, outbox)
    assert roll(removed, MemberScore("b2b", "acme", "lead-7", 20, 2_000)) == {b"b2b:account/acme": None}
    assert roll(removed, MemberScore("b2b", "acme", "lead-7", 25, 3_000)) == {}  # taken out once
    assert store.states("acme")["b2b"].members.keys() == {"lead-42", "lead-7"}


DAY_MS = 86_400_000


class Accounts:
    """A roll-up stage over a table in memory, fed updates one batch at a time."""

    def __init__(self, settings: Settings, data: dict[bytes, bytes] | None = None) -> None:
        self.settings = settings
        self.outbox = Kept()
        self.store = AccountTable(MemoryData(), "accounts-changelog", 4, 10)
        self.store.table.data.update(data or {})
        self.stage = Rollup(Engine([shipped("b2b")]), settings, self.store, self.outbox)

    def roll(self, *updates: MemberScore) -> None:
        self.outbox.sent.clear()
        collected = Collected()
        publish_updates(collected, self.settings, updates, 4)  # type: ignore[arg-type]
        asyncio.run(self.stage.process([Consumed(topic, partition or 0, 0, None, value)
                                        for topic, _, value, partition in collected.records]))

    def changelog(self) -> dict[bytes | None, bytes | None]:
        return {key: value for topic, key, value in self.outbox.sent if topic == "accounts-changelog"}

    def crossings(self) -> list[dict[str, Any]]:
        return [orjson.loads(v) for topic, _, v in self.outbox.sent if topic == self.settings.topic_crossings and v]


def test_an_account_emptied_that_never_crossed_is_removed_at_once_with_a_tombstone() -> None:
    """A lead (a bot) that names a new account at each event left each one behind without
    members, kept for good: 80,000 such accounts in the changelog, restored at every start. One
    that never crossed holds nothing a new account would not, so it goes as it is emptied."""
    accounts = Accounts(Settings())
    accounts.roll(MemberScore("b2b", "rnd-0", "acc-bot", 2, 1_000, revision=1))
    assert accounts.changelog()[b"rnd-0"] is not None
    accounts.roll(MemberScore("b2b", "rnd-0", "acc-bot", 0, 2_000, True, 2), MemberScore("b2b", "rnd-1", "acc-bot", 3, 2_000, revision=2))
    assert accounts.changelog()[b"rnd-0"] is None  # a tombstone: compaction erases the account
    assert b"rnd-0" not in accounts.store.table.data and "rnd-0" not in accounts.store.live
    assert list(accounts.store.table.data) == [b"rnd-1"]
    # A member joining it again finds a new account, as it would have found the one removed.
    accounts.roll(MemberScore("b2b", "rnd-0", "lead-7", 70, 3_000, revision=1))
    [crossing] = accounts.crossings()
    assert (crossing["account_id"], crossing["to_level"]) == ("rnd-0", "engaged")
    assert accounts.store.states("rnd-0")["b2b"].crossings == 1


def test_an_account_emptied_after_crossing_is_kept_for_the_retention_then_removed_and_crosses_from_the_base_again() -> None:
    """Its level and crossing count wait for a member that joins again within
    LEADSTREAM_EMPTY_ACCOUNT_RETENTION_MS of the last leaving, counted in the members' event time;
    then it goes, and a member joining it later finds a new account: its crossings are numbered
    from 1 again, their ids told apart from the first ones' by their times."""
    settings = replace(Settings(), empty_account_retention_ms=30 * DAY_MS)
    accounts = Accounts(settings)
    accounts.roll(MemberScore("b2b", "acme", "lead-42", 70, 1_000, revision=1))
    [up] = accounts.crossings()
    accounts.roll(MemberScore("b2b", "acme", "lead-42", 0, 2_000, True, 2), MemberScore("b2b", "globex", "lead-42", 70, 2_000, revision=2))
    assert [c["account_id"] for c in accounts.crossings()] == ["acme", "globex"]  # acme down to its base, globex up
    assert accounts.store.states("acme")["b2b"].crossings == 2
    # Within the retention, the account is kept and a member joining continues its numbering.
    accounts.roll(MemberScore("b2b", "initech", "lead-7", 5, 2_000 + 30 * DAY_MS - 1, revision=1))
    assert b"acme" in accounts.store.table.data and b"acme" not in accounts.changelog()
    # Past it, by any member's time (the worker's clock plays no part), at the next batch.
    accounts.roll(MemberScore("b2b", "initech", "lead-7", 6, 2_000 + 30 * DAY_MS, revision=2))
    assert accounts.changelog()[b"acme"] is None and b"acme" not in accounts.store.table.data
    accounts.roll(MemberScore("b2b", "acme", "lead-9", 70, 3_000 + 30 * DAY_MS, revision=1))
    [again] = accounts.crossings()
    assert (again["from_level"], again["to_level"]) == (up["from_level"], up["to_level"]) == ("unaware", "engaged")
    assert accounts.store.states("acme")["b2b"].crossings == 1  # numbered 1, as the first one was
    assert again["id"] != up["id"]


def test_an_account_emptied_again_before_its_removal_is_kept_for_the_retention_from_its_last_leaving() -> None:
    settings = replace(Settings(), empty_account_retention_ms=10 * DAY_MS)
    accounts = Accounts(settings)
    accounts.roll(MemberScore("b2b", "acme", "lead-42", 70, 1_000, revision=1))
    accounts.roll(MemberScore("b2b", "acme", "lead-42", 0, 2_000, True, 2))  # due at 2_000 + 10 days
    accounts.roll(MemberScore("b2b", "acme", "lead-7", 5, 5 * DAY_MS, revision=1))  # back with a member
    accounts.roll(MemberScore("b2b", "acme", "lead-7", 0, 6 * DAY_MS, True, 2))  # emptied again: due at 16 days
    accounts.roll(MemberScore("b2b", "other", "lead-8", 5, 12 * DAY_MS, revision=1))
    accounts.roll(MemberScore("b2b", "other", "lead-8", 6, 12 * DAY_MS + 1, revision=2))
    assert b"acme" in accounts.store.table.data
    accounts.roll(MemberScore("b2b", "other", "lead-8", 7, 16 * DAY_MS, revision=3))
    assert accounts.changelog()[b"acme"] is None and b"acme" not in accounts.store.table.data


def test_a_recovered_table_has_its_emptied_accounts_indexed_and_removed_as_they_are_due() -> None:
    """Accounts emptied before a restart (or by a version that kept them all) are found in the
    table's bytes as it is recovered, and go at the next batch, or once their retention is over."""
    settings = replace(Settings(), empty_account_retention_ms=10 * DAY_MS)
    blank = AccountState({}, "unaware", 0, {"x": 1_000}).to_bytes()
    crossed = AccountState({}, "unaware", 2, {"x": 2_000}).to_bytes()
    held = AccountState({"lead-1": [5, 1_000]}, "unaware", 0).to_bytes()
    data = {b"rnd-0": frame({"b2b": blank}), b"rnd-1": frame({"b2b": blank}), b"acme": frame({"b2b": crossed}),
            b"kept": frame({"b2b": held}), b"lead-[1,{},": frame({"b2b": held})}
    accounts = Accounts(settings, data)
    assert asyncio.run(accounts.stage.index_emptied({0, 1, 2, 3}, 0.05)) == 3
    accounts.roll(MemberScore("b2b", "other", "lead-8", 5, 3_000, revision=1))
    assert {key: value for key, value in accounts.changelog().items() if value is None} == {b"rnd-0": None, b"rnd-1": None}
    assert set(accounts.store.table.data) == {b"acme", b"kept", b"lead-[1,{},", b"other"}
    accounts.roll(MemberScore("b2b", "other", "lead-8", 6, 2_000 + 10 * DAY_MS, revision=2))
    assert accounts.changelog()[b"acme"] is None and set(accounts.store.table.data) == {b"kept", b"lead-[1,{},", b"other"}
