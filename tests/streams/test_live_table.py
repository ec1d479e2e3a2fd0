"""The worker's tables (streams/stage.py LiveTable), with lead states: live states for the
leads used lately, every lead's latest bytes kept, live states preferred over what a recovery
restores, revoked partitions forgotten."""

from __future__ import annotations

import pytest

from scoring import Engine
from scoring.errors import StateError
from streams.lead_states import decode, encode
from streams.outbox import Outbox
from streams.partitioning import partition_for
from streams.stage import LiveTable
from tests.scoring.support import ev, shipped

ENGINE = Engine([shipped("b2b")])


class Table:
    """A table's store as LiveTable uses it (streams/bulk_store.py on the real broker)."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.partition_of: dict[bytes, int] = {}

    def write(self, key: bytes, value: bytes, partition: int) -> None:
        self.data[key] = value
        self.partition_of[key] = partition

    def delete(self, key: bytes) -> None:
        del self.data[key], self.partition_of[key]


def scored(lead: str, points_events: int) -> dict:
    """A lead's states after some pricing page views."""
    events = [ENGINE.parse(ev("page_view", at=i, lead=lead, product="b2b", properties={"url": "https://acme.io/pricing"}))
              for i in range(points_events)]
    result = ENGINE.apply_batch(events, lambda model, lead_id: None)
    return {"b2b": result.states[("b2b", lead)]}


def test_keeps_the_most_recently_used_leads_live_and_every_leads_bytes() -> None:
    table = Table()
    recovered = table.data
    outbox = Outbox("127.0.0.1:1", 4)  # never flushed: records only queue
    store = LiveTable(table, "changelog", 4, 2, decode)
    for lead, views in (("a", 1), ("b", 2), ("c", 3)):
        states = scored(lead, views)
        store.put(lead, partition_for(lead, 4), states, encode(states), outbox)
    assert list(store.live) == ["b", "c"]
    assert set(recovered) == {b"a", b"b", b"c"} and len(outbox) == 3
    assert table.partition_of == {lead.encode(): partition_for(lead, 4) for lead in "abc"}
    again = store.states("a")  # read back from its bytes, and live again
    assert again == decode(recovered[b"a"]) and again["b2b"].behaviour == 10
    assert list(store.live) == ["c", "a"]
    assert store.states("nobody") == {} and "nobody" not in store.live


def test_live_states_win_over_restored_bytes_and_revoked_partitions_are_forgotten() -> None:
    table = Table()
    recovered = table.data
    store = LiveTable(table, "changelog", 4, 10, decode)
    newer = scored("a", 3)
    store.put("a", partition_for("a", 4), newer, encode(newer), Outbox("127.0.0.1:1", 4))
    recovered[b"a"] = encode(scored("a", 1))  # a recovery that stopped at an older offset
    assert store.states("a")["b2b"].behaviour == 30
    store.forget({partition_for("a", 4)})
    assert store.states("a")["b2b"].behaviour == 10  # from the table, as the changelog says
    assert [lead for lead, _ in store.items({partition_for("a", 4)})] == ["a"]
    assert list(store.items({p for p in range(4) if p != partition_for("a", 4)})) == []


def test_a_deleted_key_is_gone_live_and_stored_and_its_changelog_gets_a_tombstone() -> None:
    table = Table()
    outbox = Outbox("127.0.0.1:1", 4)  # never flushed: records only queue
    store = LiveTable(table, "changelog", 4, 10, decode)
    for lead in "ab":
        states = scored(lead, 1)
        store.put(lead, partition_for(lead, 4), states, encode(states), outbox)
    store.delete("a", partition_for("a", 4), outbox)
    assert store.states("a") == {} and "a" not in store.live and set(table.data) == {b"b"}
    assert outbox._pending[("changelog", partition_for("a", 4))][-1] == (b"a", None, ())


def test_a_value_that_is_not_a_table_value_is_a_state_error_and_passed_over_by_items() -> None:
    store = Table()
    table = LiveTable(store, "changelog", 4, 10, decode)
    good = scored("ada", 1)
    store.write(b"ada", encode(good), partition_for("ada", 4))
    spoilt = {
        "bob": b"\x03b2b\x00\x00\x00\x09not state",  # framed, but not a state
        "cy": b"\x03b2b\x00\x00\x00\x40short",  # a frame longer than the value
        "di": b"\x05ab",  # cut short in the frame's header
        "ed": b"\x0c\x00merged_into\x00\x00\x00\x01\xff",  # a merge marker that is not UTF-8
    }
    for key, value in spoilt.items():
        store.write(key.encode(), value, partition_for(key, 4))
        with pytest.raises(StateError):
            table.states(key)
        assert store.data[key.encode()] == value  # left as it is
    unreadable: list[str] = []
    assert [key for key, _ in table.items({0, 1, 2, 3}, unreadable)] == ["ada"]
    assert sorted(unreadable) == sorted(spoilt)


def test_a_peek_reads_the_states_without_keeping_them_live() -> None:
    # The web views peek: a state they decode must not become the stages' live state (read while
    # a recovery restored an older record of the lead, it would have replaced the newer one).
    table = Table()
    store = LiveTable(table, "changelog", 4, 10, decode)
    older, newer = scored("ada", 1), scored("ada", 2)
    table.write(b"ada", encode(older), partition_for("ada", 4))
    assert store.peek("ada")["b2b"].behaviour == 10 and "ada" not in store.live
    table.write(b"ada", encode(newer), partition_for("ada", 4))  # the rest of the recovery
    assert store.states("ada")["b2b"].behaviour == 20
    assert store.peek("ada") is store.live["ada"]  # a live state is the one read
