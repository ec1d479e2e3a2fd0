"""The marker a forgotten lead leaves until its request is committed (streams/erasure.py), without
a broker: found again in a recovered table, and gone once the consumer committed past it."""

from __future__ import annotations

import asyncio

import pytest

from scoring import Engine
from scoring.errors import StateError
from streams import erasure, lead_states
from streams.partitioning import partition_for
from streams.scorer import Scorer
from streams.settings import Settings
from streams.stage import LiveTable, MemoryData, frame
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
    scorer.rebuild_indexes({0, 1, 2, 3})  # as after a recovery
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
    scorer.rebuild_indexes({0, 1, 2, 3})
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
