"""A large account's members in pages (streams/account_table.py): what a batch writes, that the
table reads back what the roll-up holds, and that a batch whose records were written only in
part (a worker killed between them) is rolled up again to the same account."""

from __future__ import annotations

import asyncio
import itertools
import zlib
from functools import partial
from random import Random
from typing import Any

import msgspec
import orjson
from hypothesis import given, settings as hypothesis_settings, strategies as st

from scoring import AccountState, Engine, MemberScore
from streams.account_table import KEY_BYTES, PAGE_MEMBERS, AccountTable, page_key, page_of
from streams.partitioning import partition_for
from streams.rollup import Rollup
from streams.settings import Settings
from streams.stage import Consumed, MemoryData, frame, unframe
from tests.scoring.support import T0, shipped
from tests.streams.stage_support import Kept, written

ENGINE = Engine([shipped("b2b")])
SETTINGS = Settings()
PARTITION = partition_for("acme", 4)
CHANGELOG = "accounts-changelog"


def stage_over(data: dict[bytes, bytes]) -> tuple[Rollup, Kept]:
    """A roll-up stage over a copy of `data`, paging past 4 members, 2 a page, under keys drawn
    from a seed (so hypothesis sees the same records at every run of an example)."""
    table = AccountTable(MemoryData(), CHANGELOG, 4, 100, split_members=4, page_members=2, draw_key=partial(Random(0).randbytes, KEY_BYTES))
    table.table.data.update(data)
    outbox = Kept()
    return Rollup(ENGINE, SETTINGS, table, outbox), outbox


def roll(stage: Rollup, updates: list[MemberScore], offset: int = 0) -> None:
    value = msgspec.json.encode(updates)
    asyncio.run(stage.process([Consumed(SETTINGS.topic_accounts, PARTITION, offset, None, value)]))


def update(lead: int, score: float, at: int, left: bool = False, revision: int = 0) -> MemberScore:
    return MemberScore("b2b", "acme", f"L{lead}", score, T0 + at, left, revision)


def changelog(outbox: Kept, start: int = 0) -> list[tuple[bytes, bytes | None]]:
    """The changelog records the outbox sent, from its `start`th record on, in order."""
    return [(key or b"", value) for topic, key, value in outbox.sent[start:] if topic == CHANGELOG]


def crossing_ids(outbox: Kept, start: int = 0) -> list[str]:
    return [orjson.loads(value)["id"] for topic, _, value in outbox.sent[start:] if topic == SETTINGS.topic_crossings and value]


def model_entry(value: bytes) -> Any:
    """The b2b model's entry of an account's table value, decoded."""
    return orjson.loads(unframe(value)["b2b"])


def secret(data: dict[bytes, bytes]) -> bytes:
    """The key that placed the b2b model's pages of the account in `data`."""
    return bytes.fromhex(model_entry(data[b"acme"])[6])


def page_holding(data: dict[bytes, bytes], lead_id: str, count: int = 4) -> bytes:
    """The key of the page of the account in `data` that holds this member."""
    key = secret(data)
    return page_key("acme", "b2b", count, page_of(lead_id, count, key), key)


def written_by_crc32(members: dict[str, Any], count: int, writes: int | None) -> dict[bytes, bytes]:
    """An account of these members as written before pages were keyed: placed by crc32, under
    `<count>.<n>`; `writes` None: also before the count of writes was kept (pages of the object
    layout)."""
    pages: list[dict[str, Any]] = [{} for _ in range(count)]
    for lead_id, member in members.items():
        pages[zlib.crc32(lead_id.encode()) % count][lead_id] = member
    data = {b"acme\xffb2b\xff%d.%d" % (count, n): orjson.dumps(page if writes is None else [writes, page, {}])
            for n, page in enumerate(pages)}
    data[b"acme"] = frame({"b2b": orjson.dumps([1, count, "unaware", 0, {}] + ([] if writes is None else [writes]))})
    return data


def read_back(data: dict[bytes, bytes]) -> AccountState:
    """The account as a worker that recovered `data` reads it."""
    return stage_over(data)[0].store.stored("acme")["b2b"]


def same(state: AccountState, expected: AccountState) -> bool:
    return (state.members, state.level, state.crossings) == (expected.members, expected.level, expected.crossings)


def same_or_removed(data: dict[bytes, bytes], expected: AccountState) -> bool:
    """The account in `data` is `expected`, or, `expected` emptied of all it holds
    (`AccountState.blank`), none at all (removed, streams/rollup.py), or inline and blank
    (paged when it was emptied: removed by the next batch)."""
    if b"acme" not in data:
        return ENGINE.account_blank("b2b", expected)
    return same(read_back(data), expected)


def unnamed_pages(data: dict[bytes, bytes]) -> list[bytes]:
    """The keys of pages in `data` that the account's value does not name: never read again."""
    entry = model_entry(data[b"acme"]) if b"acme" in data else None
    named: set[bytes] = set()
    if entry is not None and entry[1].__class__ is int:
        key = bytes.fromhex(entry[6])
        named = {page_key("acme", "b2b", entry[1], n, key) for n in range(entry[1])}
    return [raw_key for raw_key in data if b"\xff" in raw_key and raw_key not in named]


def test_an_account_is_written_whole_until_it_passes_the_split_then_in_pages_of_the_members_a_batch_updated() -> None:
    stage, outbox = stage_over({})
    roll(stage, [update(n, 30, n) for n in range(3)])
    assert [key for key, _ in changelog(outbox)] == [b"acme"]  # inline: the members in the value
    assert model_entry(stage.store.table.data[b"acme"])[1] == {f"L{n}": [30, T0 + n] for n in range(3)}

    outbox.sent.clear()
    roll(stage, [update(n, 30, n) for n in range(3, 8)])  # 8 members: 4 pages of 2 on average
    written = [key for key, _ in changelog(outbox)]
    key = secret(stage.store.table.data)
    assert written == [page_key("acme", "b2b", 4, n, key) for n in range(4)] + [b"acme"]  # pages before the value naming them
    assert model_entry(stage.store.table.data[b"acme"])[1] == 4

    outbox.sent.clear()
    roll(stage, [update(5, 70, 100)])
    page = page_holding(stage.store.table.data, "L5")
    assert [key for key, _ in changelog(outbox)] == [page, b"acme"]  # the page first, with what L5 was before
    writes, members, before = orjson.loads(stage.store.table.data[page])
    assert (writes, members["L5"], before) == (2, [70, T0 + 100], {"L5": [30, T0 + 5]})
    assert model_entry(stage.store.table.data[b"acme"])[5] == 2
    assert same(read_back(stage.store.table.data), stage.store.states("acme")["b2b"])

    outbox.sent.clear()
    roll(stage, [update(n, 10, 200 + n) for n in range(8, 17)])  # 17 members: more than 2 a page, 16 pages
    records = changelog(outbox)
    new_key = secret(stage.store.table.data)
    assert new_key != key  # drawn anew with the pages
    assert [key for key, _ in records] == (
        [page_key("acme", "b2b", 16, n, new_key) for n in range(16)] + [b"acme"] + [page_key("acme", "b2b", 4, n, key) for n in range(4)])
    assert [value for _, value in records[-4:]] == [None] * 4  # the old set deleted last
    assert not any(key.startswith(b"acme\xffb2b\xff4/") for key in stage.store.table.data)
    state = read_back(stage.store.table.data)
    assert len(state.members) == 17 and same(state, stage.store.states("acme")["b2b"])
    assert len(stage.store) == 1  # pages are not accounts


def named_leads(data: dict[bytes, bytes]) -> set[str]:
    """The lead ids the latest records of `data` name in pages (members and `before`): what
    compaction keeps of them."""
    named: set[str] = set()
    for raw_key, value in data.items():
        if b"\xff" in raw_key:
            _, members, before = orjson.loads(value)
            named |= {*members, *before}
    return named


def test_a_lead_that_leaves_a_paged_account_is_named_by_none_of_its_pages_once_the_batch_is_written() -> None:
    """A page's `before` held every member the batch updated, a lead that left (moved, merged,
    forgotten) included, by its id, score and time; as the page's latest record it stayed in the
    changelog until a later batch updated a member on that page: for a quiet account, for good."""
    stage, outbox = stage_over({})
    roll(stage, [update(n, 30, n) for n in range(8)])
    start = len(outbox.sent)
    roll(stage, [update(3, 0, 20, left=True), update(4, 50, 21)])  # L3 leaves, L4 stays
    page = page_holding(stage.store.table.data, "L3")
    keys = [key for key, _ in changelog(outbox, start)]
    assert keys[-2:] == [b"acme", page]  # written again after the value, which its `before` was for
    assert orjson.loads(stage.store.table.data[page])[2] == {}
    assert "L3" not in named_leads(stage.store.table.data) and "L4" in named_leads(stage.store.table.data)
    # Every member leaving: the account is inline again and its pages go, after the value, from
    # the last on; a batch cut anywhere in them, rolled up again, leaves none either.
    before_all = dict(stage.store.table.data)
    start = len(outbox.sent)
    everyone = [update(n, 0, 30 + n, left=True) for n in range(8)]
    roll(stage, everyone)
    records = changelog(outbox, start)
    key = secret(before_all)
    assert records[0][0] == b"acme" and records[1:] == [(page_key("acme", "b2b", 4, n, key), None) for n in (3, 2, 1, 0)]
    assert list(stage.store.table.data) == [b"acme"] and model_entry(stage.store.table.data[b"acme"])[1] == {}
    for cut in range(len(records) + 1):
        again, _ = stage_over(written(before_all, records[:cut]))
        roll(again, everyone)
        assert list(again.store.table.data) == [b"acme"]
        assert same(read_back(again.store.table.data), stage.store.states("acme")["b2b"])
    # A lead joining again is kept inline, until the account passes the split again.
    roll(stage, [update(9, 40, 100)])
    assert model_entry(stage.store.table.data[b"acme"])[1] == {"L9": [40, T0 + 100]}


def test_a_paged_account_emptied_that_never_crossed_is_made_inline_then_removed_by_the_next_batch() -> None:
    """Its value goes with a tombstone only once no page is left to delete after it: a batch cut
    between a tombstone and the pages would leave pages no value names, which only a read of
    the value finds (`_stale_pages`)."""
    stage, outbox = stage_over({})
    roll(stage, [update(n, 1, n) for n in range(8)])  # paged, far below the first line
    start = len(outbox.sent)
    roll(stage, [update(n, 0, 30 + n, left=True) for n in range(8)])
    assert [value for _, value in changelog(outbox, start)][1:] == [None] * 4  # the pages go after the value
    assert list(stage.store.table.data) == [b"acme"]
    start = len(outbox.sent)
    roll(stage, [MemberScore("b2b", "other", "L0", 1, T0 + 50, revision=2)])
    assert (b"acme", None) in changelog(outbox, start) and b"acme" not in stage.store.table.data


def test_an_emptied_account_with_stale_pages_has_them_deleted_then_is_removed() -> None:
    """An inline account with pages no value names (a batch cut as it paged it) is removed only
    once a batch has deleted them, and then at the next: it stayed, looked at and put off at
    every batch, while its live state kept its class."""
    key = bytes(KEY_BYTES)
    data = {b"acme": frame({"b2b": AccountState({}, "unaware", 0, {"x": T0}).to_bytes()}),
            page_key("acme", "b2b", 2, 0, key): orjson.dumps([1, {}, {}]), page_key("acme", "b2b", 2, 1, key): orjson.dumps([1, {}, {}])}
    stage, outbox = stage_over(data)
    assert asyncio.run(stage.index_emptied({PARTITION}, 0.05)) == 1
    roll(stage, [MemberScore("b2b", "other", "L0", 1, T0 + 50, revision=1)])
    assert set(stage.store.table.data) == {b"acme", b"other"}  # its stale pages deleted after its value
    roll(stage, [MemberScore("b2b", "other", "L0", 2, T0 + 60, revision=2)])
    assert set(stage.store.table.data) == {b"other"} and (b"acme", None) in changelog(outbox)


def test_a_missing_or_foreign_page_or_a_bad_key_makes_the_account_unreadable_with_the_page_named() -> None:
    stage, _ = stage_over({})
    roll(stage, [update(n, 30, n) for n in range(8)])
    data = dict(stage.store.table.data)
    missing = {key: value for key, value in data.items() if key != page_key("acme", "b2b", 4, 2, secret(data))}
    fresh, outbox = stage_over(missing)
    roll(fresh, [update(9, 50, 50)])
    [letter] = [orjson.loads(v) for topic, _, v in outbox.sent if topic == SETTINGS.topic_deadletter and v]
    assert letter["reason"] == "unreadable_state"
    assert "account 'acme' in model 'b2b': page 2 of 4 is missing from the table" in letter["detail"]
    # A member filed under a page it does not belong in (written by something else).
    other = page_of("L0", 4, secret(data)) ^ 1
    moved = {**data, page_key("acme", "b2b", 4, other, secret(data)): orjson.dumps({"L0": [30, T0]})}
    fresh, outbox = stage_over(moved)
    roll(fresh, [update(9, 50, 50)])
    [letter] = [orjson.loads(v) for topic, _, v in outbox.sent if topic == SETTINGS.topic_deadletter and v]
    assert f"page {other} of 4 is not an object of the members that belong in it" in letter["detail"]
    # An entry whose key of pages is not one.
    unkeyed = {**data, b"acme": frame({"b2b": orjson.dumps([*model_entry(data[b"acme"])[:6], "not hex"])})}
    fresh, outbox = stage_over(unkeyed)
    roll(fresh, [update(9, 50, 50)])
    [letter] = [orjson.loads(v) for topic, _, v in outbox.sent if topic == SETTINGS.topic_deadletter and v]
    assert "account 'acme' in model 'b2b': a key of pages that is not 32 hex digits" in letter["detail"]


def test_an_account_with_a_member_that_is_not_a_score_and_a_time_is_unreadable_inline_or_in_a_page() -> None:
    stage, _ = stage_over({})
    roll(stage, [update(n, 30, n) for n in range(8)])
    page = page_holding(stage.store.table.data, "L0")
    foreign_page = {**stage.store.table.data, page: orjson.dumps([1, {"L0": "thirty"}, {}])}
    foreign_inline = {b"acme": frame({"b2b": b'[1,{"L0":[1e300,5]},"unaware",0]'})}  # beyond any lead's points
    for data in (foreign_page, foreign_inline):
        fresh, outbox = stage_over(data)
        roll(fresh, [update(9, 50, 50)])
        [letter] = [orjson.loads(v) for topic, _, v in outbox.sent if topic == SETTINGS.topic_deadletter and v]
        assert letter["reason"] == "unreadable_state" and "a member that is not [score, time] or [score, time, revision]" in letter["detail"]


def test_pages_written_ahead_of_their_account_are_read_as_before_their_batch_and_old_pages_as_they_were() -> None:
    stage, outbox = stage_over({})
    roll(stage, [update(n, 30, n) for n in range(8)])
    before_batch = dict(stage.store.table.data)
    start = len(outbox.sent)
    roll(stage, [update(0, 90, 20), update(1, 0, 21, left=True)])
    records = changelog(outbox, start)
    ahead = written(before_batch, records[:[key for key, _ in records].index(b"acme")])
    assert ahead != before_batch  # pages written, the value not
    assert read_back(ahead).members == read_back(before_batch).members  # the batch's pages, without its value
    assert read_back(stage.store.table.data).members == {**{f"L{n}": [30, T0 + n] for n in range(2, 8)}, "L0": [90, T0 + 20]}
    # Pages placed by crc32, of the object layout (an entry without its count of writes) or not.
    members = read_back(before_batch).members
    assert all(read_back(written_by_crc32(members, 4, writes)).members == members for writes in (None, 1))
    page = page_holding(before_batch, "L1")
    stranger = next(lead_id for lead_id in map("L{}".format, itertools.count(9)) if page_holding(before_batch, lead_id) != page)
    for wrong, says in ((b'[1,{}]', "is not [writes, members, members before]"),
                        (b'[1,{"%b":[1,1]},{}]' % stranger.encode(), "not an object of the members")):
        broken, outbox = stage_over({**before_batch, page: wrong})
        roll(broken, [update(9, 50, 50)])
        [letter] = [orjson.loads(v) for topic, _, v in outbox.sent if topic == SETTINGS.topic_deadletter and v]
        assert letter["reason"] == "unreadable_state" and says in letter["detail"]


def test_an_account_written_before_pages_existed_is_read_as_it_was() -> None:
    members = {f"L{n}": [20, T0 + n] for n in range(6)}  # more than the split: paged at its next write
    value = frame({"b2b": b'[1,' + orjson.dumps(members) + b',"engaged",1]'})
    stage, outbox = stage_over({b"acme": value})
    assert stage.store.stored("acme")["b2b"].members == members
    roll(stage, [update(0, 25, 10)])
    assert [key for key, _ in changelog(outbox)][-1] == b"acme"
    state = read_back(stage.store.table.data)
    assert state.members == {**members, "L0": [25, T0 + 10]} and (state.level, state.crossings) == ("engaged", 1)


def test_an_account_paged_by_crc32_is_paged_anew_under_a_key_by_its_next_batch_and_a_batch_cut_anywhere_rolls_up_alike() -> None:
    members = {f"L{n}": [30, T0 + n] for n in range(8)}
    data = written_by_crc32(members, 4, 3)
    updates = [update(0, 90, 20), update(8, 40, 21)]
    stage, outbox = stage_over(data)
    roll(stage, updates)
    records = changelog(outbox)
    key, count = secret(stage.store.table.data), model_entry(stage.store.table.data[b"acme"])[1]
    assert [name for name, _ in records] == (
        [page_key("acme", "b2b", count, n, key) for n in range(count)] + [b"acme"] + [b"acme\xffb2b\xff4.%d" % n for n in range(4)])
    assert [value for _, value in records[-4:]] == [None] * 4  # the crc32 set deleted last
    expected = stage.store.states("acme")["b2b"]
    assert read_back(stage.store.table.data).members == {**members, "L0": [90, T0 + 20], "L8": [40, T0 + 21]}
    for cut in range(len(records) + 1):
        again, _ = stage_over(written(data, records[:cut]))
        roll(again, updates)
        assert same(read_back(again.store.table.data), expected)


def crc32_colliding_ids(count: int, modulo: int) -> list[str]:
    """`count` lead ids of 256 characters, mostly emoji (4 bytes each in UTF-8), whose crc32 is
    0 modulo `modulo` (a power of two, at most 4,096): what anyone who chooses lead ids makes by
    trying suffixes of two characters."""
    suffixes = [(a + b).encode() for a, b in itertools.product(map(chr, range(0x21, 0x7F)), repeat=2)]  # 8,836
    ids = []
    for n in range(count):
        prefix = f"{n:05d}" + "\U0001F600" * 249
        crc = zlib.crc32(prefix.encode())
        suffix = next(suffix for suffix in suffixes if zlib.crc32(suffix, crc) % modulo == 0)
        ids.append(prefix + suffix.decode())
    return ids


def test_members_whose_ids_collide_under_crc32_spread_over_the_pages_so_no_record_nears_the_changelog_limit() -> None:
    """6,000 members of ids of 1 KB whose crc32 is 0 modulo 256 (page 0 of any count up to 256)
    made one page of 6.2 MB, and 12.3 MB once a batch updated them all (its `before`), which grows
    past the changelog's 16 MB with a few thousand more: the worker stopped at every restart."""
    ids = crc32_colliding_ids(6000, 256)
    table = AccountTable(MemoryData(), CHANGELOG, 4, 100)  # paged as the worker pages
    outbox = Kept()
    stage = Rollup(ENGINE, SETTINGS, table, outbox)
    for score in (30, 40):  # all join, then all are updated
        roll(stage, [MemberScore("b2b", "acme", lead_id, score, T0 + score) for lead_id in ids])
    assert len(table.stored("acme")["b2b"].members) == 6000
    pages = [value for key, value in changelog(outbox) if b"\xff" in key and value]
    assert max(len(orjson.loads(value)[1]) for value in pages) <= 2 * 2 * PAGE_MEMBERS
    assert max(len(value) for _, value in changelog(outbox) if value) < 2_000_000


Batches = list[list[tuple[int, int, bool, bool]]]  # (lead, score, leaves, at a later time) per update, batches in order


@hypothesis_settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.tuples(st.integers(0, 9), st.integers(0, 120), st.integers(0, 4).map(lambda n: n == 0),
                                   st.integers(0, 3).map(lambda n: n == 0)),
                         min_size=1, max_size=12), min_size=1, max_size=8),
       st.data())
def test_the_table_reads_back_the_roll_up_and_a_batch_cut_anywhere_is_rolled_up_again_to_the_same_account(
    batches: Batches, data: st.DataObject
) -> None:
    """Updates of one time come in runs (a late event's, a decay step's): each lead's revision
    orders them, as the scorer numbers them. The account is new, or paged by crc32 (so that its
    first batch pages it anew and deletes the old pages)."""
    start = data.draw(st.sampled_from([{}, written_by_crc32({f"L{n}": [30, T0 + n] for n in range(8)}, 4, 3)]), label="start")
    stage, outbox = stage_over(start)
    reference: AccountState | None = read_back(start) if start else None
    at = 0
    revisions: dict[int, int] = {}
    for number, batch in enumerate(batches):
        updates = []
        for lead, score, leaves, later in batch:
            at += later
            revisions[lead] = revisions.get(lead, 0) + 1
            updates.append(update(lead, score, at, leaves, revisions[lead]))
        before = dict(stage.store.table.data)
        sent = len(outbox.sent)
        roll(stage, updates, number)
        records = changelog(outbox, sent)
        ids = set(crossing_ids(outbox, sent))
        reference, _ = ENGINE.apply_account_updates("b2b", "acme", reference, updates)  # a message's together
        assert reference is not None
        assert same_or_removed(stage.store.table.data, reference)
        # The worker killed after `cut` of the batch's records were written: a new one reads
        # what they left and rolls up the batch again, to the same account.
        cut = data.draw(st.integers(0, len(records)), label=f"cut of batch {number}")
        partial = written(before, records[:cut])
        again, again_outbox = stage_over(partial)
        roll(again, updates, number)
        assert same_or_removed(again.store.table.data, reference)
        assert not unnamed_pages(again.store.table.data) and not unnamed_pages(stage.store.table.data)  # none left behind
        for table in (stage.store.table.data, again.store.table.data):  # no page names a lead that left
            assert named_leads(table) <= set(reference.members)
        assert set(crossing_ids(again_outbox)) <= ids  # a crossing again is the same crossing: no new one


def records_of(data: dict[bytes, bytes], updates: list[MemberScore]) -> list[tuple[bytes, bytes | None]]:
    """The changelog records of a batch of `updates` over `data`, in order."""
    stage, outbox = stage_over(data)
    roll(stage, updates)
    return changelog(outbox)


def cleaned_up_whatever_the_cut(data: dict[bytes, bytes], updates: list[MemberScore], last: MemberScore,
                                expected: dict[str, list[int]]) -> None:
    """The batch rolling `updates` up again over `data` (pages no value names) deletes them, however
    many of its records it wrote before it stopped: that batch read anew, then `last`, leave no
    unnamed page and the `expected` members."""
    again = records_of(data, updates)
    for cut in range(len(again) + 1):
        later, _ = stage_over(written(data, again[:cut]))
        roll(later, updates)
        roll(later, [last])
        assert not unnamed_pages(later.store.table.data)
        assert read_back(later.store.table.data).members == expected


def test_pages_a_batch_cut_short_left_are_deleted_by_the_next_batch_that_writes_the_account_even_if_cut_in_turn() -> None:
    """A worker stopped after a batch wrote the account's value but before it deleted the old
    pages (pages doubled, or placed by crc32 paged anew) left them in the changelog and in
    memory for good: nothing named them, and the batch rolled up again did not delete them. So
    did one stopped before the value naming a new set, when the batch rolled up again (its
    messages read anew, in other batches) paged otherwise."""
    stage, _ = stage_over({})
    roll(stage, [update(n, 30, n) for n in range(8)])
    paged = dict(stage.store.table.data)
    crc32 = written_by_crc32({f"L{n}": [30, T0 + n] for n in range(8)}, 4, 3)
    doubling = [update(n, 10, 200 + n) for n in range(8, 17)]  # 17 members: 16 pages
    left: list[tuple[dict[bytes, bytes], list[MemberScore]]] = []  # what a cut batch left, the batch rolled up next
    for data in (crc32, paged):
        records = records_of(data, doubling)
        assert [value for _, value in records[17:]] == [None] * 4  # the 4 old pages, after the 16 new ones and the value
        left += [(written(data, records[:cut]), doubling) for cut in range(17, 21)]  # the value written, not all of them deleted
    left += [(written(paged, records[:cut]), doubling[:2]) for cut in range(1, 16)]  # 10 members: the 4 pages still
    assert all(unnamed_pages(data) for data, _ in left)
    last = update(0, 50, 300)
    for data, updates in left:
        expected = {**{f"L{n}": [30, T0 + n] for n in range(8)}, **{u.lead_id: [u.score, u.time_ms] for u in [*updates, last]}}
        cleaned_up_whatever_the_cut(data, updates, last, expected)


def test_pages_a_batch_cut_short_left_as_it_paged_an_account_are_deleted_when_the_batch_rolled_up_again_leaves_it_inline() -> None:
    """A batch that takes an account past the split writes its pages, then the value naming
    them. Stopped between them, and rolled up again in other batches (its messages read anew)
    that did not take the account past the split yet, it left pages no value named: never read
    (a set is named only once its batch wrote every page of it, so a later paging at any count
    reads its own members), but looked for only when the account was paged, so they stayed in
    the changelog and in every worker's memory while the account stayed inline (in the worker:
    a set of 8 pages or more, 1,025 members and up). The account read from the table now looks
    for them by the first page of each count, and its next batch deletes them after its value,
    last page first, so a cut anywhere leaves a set still found by its first."""
    stage, _ = stage_over({})
    roll(stage, [update(n, 30, n) for n in range(3)])
    inline = dict(stage.store.table.data)
    paging = [update(n, 30, n) for n in range(3, 8)]  # 8 members: 4 pages
    records = records_of(inline, paging)
    assert [key for key, _ in records][-1] == b"acme" and len(records) == 5
    retried, last = paging[:1], update(0, 50, 300)  # 4 members: inline still
    expected = {**{f"L{n}": [30, T0 + n] for n in range(4)}, "L0": [50, T0 + 300]}
    for cut in range(1, 5):  # some or all of the pages written, not the value
        data = written(inline, records[:cut])
        assert len(unnamed_pages(data)) == cut
        cleaned_up_whatever_the_cut(data, retried, last, expected)
        again = records_of(data, retried)
        for more in (4, 13):  # paged later, at the same count (4 pages) or another (16): its own members only
            later, _ = stage_over(written(data, again))
            roll(later, [update(n, 20, 400 + n) for n in range(4, 4 + more)])
            assert read_back(later.store.table.data).members == {
                **{f"L{n}": [30, T0 + n] for n in range(4)}, **{f"L{n}": [20, T0 + 400 + n] for n in range(4, 4 + more)}}
