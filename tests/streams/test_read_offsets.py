"""The offsets a lead's states have read (streams/read_offsets.py), without a broker: records read
again after a restart change nothing, however many events of the lead they hold."""

from __future__ import annotations

import asyncio
import dataclasses

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from scoring import Engine, LeadState
from scoring.errors import StateError
from streams import lead_states, read_offsets, stitching
from streams.partitioning import partition_for
from streams.scorer import Scorer
from streams.settings import Settings
from streams.stage import Consumed, LiveTable, MemoryData, frame
from tests.scoring.support import T0, shipped
from tests.streams.stage_support import Kept

SETTINGS = Settings()
ENGINE = Engine([shipped("b2b")])
LEAD = "ada"


def envelope(offset: int, first: int, count: int, ids: str = "v") -> Consumed:
    """Page views `first` to `first + count - 1` of the lead, a minute apart, in one message."""
    events = [{"event_id": f"{ids}{n}", "lead_id": LEAD, "type": "page_view", "time": T0 + n * 60_000, "product": "b2b",
               "properties": {"url": "https://acme.io/blog/post", "time_on_page_s": 150}} for n in range(first, first + count)]
    return Consumed(SETTINGS.topic_events, partition_for(LEAD, 4), offset, None, orjson.dumps(events))


def scored(data: dict[bytes, bytes], batch: list[Consumed], log_end: read_offsets.LogEnd | None = None) -> tuple[Kept, LiveTable[LeadState | str]]:
    """A worker started on the table `data` (as recovered from the changelog) that scores `batch`."""
    store = LiveTable(MemoryData(), "leads-changelog", 4, 1_000, lead_states.decode)
    store.table.data.update(data)
    outbox = Kept()
    asyncio.run(Scorer(ENGINE, SETTINGS, store, outbox, 4, log_end=log_end).process(batch))
    return outbox, store


def test_records_read_again_after_a_restart_change_nothing_though_the_lead_has_more_events_than_it_remembers_ids() -> None:
    # 200 events, more than the 128 ids at most that the b2b model's state remembers
    # (remember_events = 64, two generations): before, a replay scored the oldest again.
    batch = [envelope(offset, offset * 20, 20) for offset in range(10)]
    first, store = scored({}, batch)
    data = dict(store.table.data)
    state = lead_states.decode(data[LEAD.encode()])
    assert read_offsets.read(state) == {SETTINGS.topic_events: 9}
    occurrences = state["b2b"].ledger["read a page carefully"][1]  # type: ignore[union-attr]
    assert occurrences == 200

    # The worker stopped after writing the states, before committing the offsets: its successor
    # reads the batch again, and then one new event.
    counted = REGISTRY.get_sample_value("leadstream_events_read_again_total") or 0.0
    again, store = scored(data, batch)
    assert again.sent == [] and store.table.data == data
    assert REGISTRY.get_sample_value("leadstream_events_read_again_total") == counted + 200
    later, store = scored(data, batch + [envelope(10, 200, 1)])
    assert lead_states.decode(store.table.data[LEAD.encode()])["b2b"].ledger["read a page carefully"][1] == 201  # type: ignore[union-attr]
    assert [key for topic, key, _ in later.sent if topic == SETTINGS.topic_scores] == [f"b2b/{LEAD}".encode()]


def test_offsets_beyond_the_end_of_a_topic_created_again_hold_none_of_its_records(caplog: pytest.LogCaptureFixture) -> None:
    """The events topic deleted and created again under its name, the workers' state kept:
    its offsets start again, and its records at or before the states' offsets are new ones."""
    _, store = scored({}, [envelope(offset, offset * 20, 20) for offset in range(10)])
    data = dict(store.table.data)
    anew = [envelope(offset, 200 + offset * 5, 5, ids="w") for offset in range(3)]

    _, store = scored(data, anew, log_end=lambda topic, partition: 100)  # offsets 0 to 2 of the log the states read
    assert store.table.data == data
    _, store = scored(data, anew, log_end=lambda topic, partition: 3)  # the log ends before the states' offset 9
    state = lead_states.decode(store.table.data[LEAD.encode()])
    assert state["b2b"].ledger["read a page carefully"][1] == 215  # type: ignore[union-attr]
    assert read_offsets.read(state) == {SETTINGS.topic_events: 2}
    assert [r.getMessage() for r in caplog.records if "beyond the end" in r.getMessage()] == [
        f"lead states hold offsets beyond the end of a partition, as after its topic was created again: its records are scored "
        f"and the states' offsets start again: topic={SETTINGS.topic_events} partition={partition_for(LEAD, 4)} end=3"]


def test_a_merge_read_again_or_sent_again_after_a_restart_adds_the_visitors_points_once_however_many_events_came_since() -> None:
    """Before, only the merge's marker among the lead's event ids told a merge read again, or
    one sent again by a worker that read its link again: gone once the lead had more events than
    its state remembers ids (here 1), and the visitor's points were added twice."""
    engine = Engine([dataclasses.replace(shipped("b2b"), remember_events=1)])
    store = LiveTable(MemoryData(), "leads-changelog", 4, 1_000, lead_states.decode)
    outbox = Kept()
    offsets = iter(range(100))

    def event(lead: str, n: int, kind: str, **fields: object) -> Consumed:
        value = {"event_id": f"{lead}-{n}", "lead_id": lead, "type": kind, "time": T0 + n * 60_000, "product": "b2b", **fields}
        return Consumed(SETTINGS.topic_events, partition_for(lead, 4), next(offsets), lead.encode(), orjson.dumps(value))

    def score(scorer: Scorer, batch: list[Consumed]) -> list[Consumed]:
        """Scores the batch; returns the identity records it sent, as the worker reads them back."""
        start = len(outbox.placed)
        asyncio.run(scorer.process(batch))
        return [Consumed(topic, partition, next(offsets), key, value, origin=stitching.origin(headers))
                for (topic, partition, key, value), headers in zip(outbox.placed[start:], outbox.headers[start:])
                if topic == SETTINGS.topic_identity and value is not None]

    scorer = Scorer(engine, SETTINGS, store, outbox, 4)
    [link] = score(scorer, [event("anon:v1", 1, "pricing_page_view"), event("anon:v1", 2, "webinar_attended"),
                            event(LEAD, 3, "identify", anonymous_id="v1")])
    unlinked = dict(store.table.data)
    [merge] = score(scorer, [link])
    # A worker that stopped before it wrote the visitor's marker reads the link again: it sends
    # the merge again, as a new record from the same origin.
    restarted = LiveTable(MemoryData(), "leads-changelog", 4, 1_000, lead_states.decode)
    restarted.table.data.update(unlinked)
    [merge_again] = score(Scorer(engine, SETTINGS, restarted, outbox, 4), [link])
    assert merge_again.value == merge.value and merge_again.origin == merge.origin == (SETTINGS.topic_identity, link.partition, link.offset, 0)
    assert score(scorer, [merge]) == []
    merged = engine.runtime("b2b").score(store.states(LEAD)["b2b"])  # type: ignore[arg-type]
    score(scorer, [event(LEAD, n, "email_open", properties={"email_id": f"c{n}"}) for n in range(4, 7)])
    data = dict(store.table.data)
    expected = engine.runtime("b2b").score(lead_states.decode(data[LEAD.encode()])["b2b"])  # type: ignore[arg-type]
    assert expected > merged > 0

    # The copy changes nothing: without the origin, only the merge's id among the lead's event
    # ids (gone since) told it, and the visitor's points were added twice.
    score(scorer, [merge_again])
    assert store.table.data == data

    # A worker started on the table reads the merge again (its offset was not committed).
    store = LiveTable(MemoryData(), "leads-changelog", 4, 1_000, lead_states.decode)
    store.table.data.update(data)
    score(Scorer(engine, SETTINGS, store, outbox, 4), [merge])
    assert store.table.data == data


def test_a_copy_of_an_event_re_keyed_to_a_lead_forgotten_since_does_not_make_it_up_again() -> None:
    """A visitor's event re-keyed to the lead carries where it was read; the lead is forgotten; a
    worker that read the visitor's event again (its offset not committed) re-keys it again, as a
    new record after the request. Before, the marker held only the forgetting batch's offsets,
    and the copy started the lead anew with an event of its erased profile."""
    partition = partition_for(LEAD, 4)

    def webinar(offset: int, event_id: str, origin: stitching.Origin | None = None) -> Consumed:
        value = {"event_id": event_id, "lead_id": LEAD, "type": "webinar_attended", "time": T0, "product": "b2b"}
        return Consumed(SETTINGS.topic_events, partition, offset, LEAD.encode(), orjson.dumps(value), origin=origin)

    rekeyed = webinar(0, "v1-1", stitching.Origin(SETTINGS.topic_events, partition_for("anon:v1", 4), 7, 0))
    _, store = scored({}, [rekeyed])
    assert set(lead_states.scored(store.states(LEAD))) == {"b2b"}
    _, store = scored(dict(store.table.data), [Consumed(SETTINGS.topic_profiles, partition, 0, LEAD.encode(), b"", tombstone=True)])
    forgotten = dict(store.table.data)
    assert lead_states.scored(store.states(LEAD)) == {}

    copy = dataclasses.replace(rekeyed, offset=1)
    outbox, store = scored(forgotten, [copy])
    assert store.table.data == forgotten and outbox.sent == []
    # The lead's next event starts a new profile, of it alone; the copy, read after it, still changes nothing.
    _, store = scored(forgotten, [webinar(2, "ada-2"), dataclasses.replace(rekeyed, offset=3)])
    assert store.states(LEAD)["b2b"].ledger["webinar attended"][1] == 1  # type: ignore[union-attr]


@pytest.mark.parametrize("origin", [stitching.Origin("orders-cdc", 0, 5, 0), stitching.Origin(SETTINGS.topic_events, 4, 5, 0)])
def test_an_origin_header_no_worker_of_ours_wrote_is_not_taken_for_a_copy(origin: stitching.Origin) -> None:
    """Another producer's header of our name, or a record copied with its headers (MirrorMaker),
    made its events look like copies of records read before: the second was dropped unseen."""
    def pricing(offset: int) -> Consumed:
        value = {"event_id": f"o{offset}", "lead_id": LEAD, "type": "page_view", "time": T0 + offset, "product": "b2b",
                 "properties": {"url": "https://acme.io/pricing"}}
        return Consumed(SETTINGS.topic_events, partition_for(LEAD, 4), offset, LEAD.encode(), orjson.dumps(value), origin=origin)

    _, store = scored({}, [pricing(0), pricing(1)])
    assert store.states(LEAD)["b2b"].ledger["pricing page"][1] == 2  # type: ignore[union-attr]


def test_an_item_of_an_envelope_scored_alone_does_not_stand_for_its_envelope() -> None:
    """An item split off its envelope to isolate one that makes scoring raise shares the
    envelope's offset: taken for the whole envelope, it would drop the items after it."""
    part = Consumed(SETTINGS.topic_events, partition_for(LEAD, 4), 3, None, envelope(3, 0, 1).value, part=True)
    _, store = scored({}, [part])
    state = lead_states.decode(store.table.data[LEAD.encode()])
    assert read_offsets.READ not in state and set(state) == {"b2b"}


@pytest.mark.parametrize("text", [b"[1]", b'{"events": 5.5}', b"{not json", b"\xff", b'{"events": [3, 0]}',
                                  b'{"events/events/2": 3}', b'{"events/events/2": [3]}', b'{"events/events/2": [3, "0"]}'])
def test_offsets_that_are_not_ones_make_the_lead_unreadable_naming_them(text: bytes) -> None:
    with pytest.raises(StateError, match="read offsets"):
        lead_states.decode(frame({"b2b": ENGINE.new_state("b2b").to_bytes(), read_offsets.READ: text}))


@pytest.mark.parametrize("later, kept, behind", [
    ({"events": 9}, {"events": 12}, ["events"]),
    ({"events": 12}, {"events": 12}, []),  # read alike: a decay sweep, a profile's new traits
    ({"events": 12, "identity": 3}, {"events": 12}, []),
    ({"events": 9}, {"events": 12, "identity": 3}, ["events", "identity"]),
    ({"events": 13, "identity": 2}, {"events": 12, "identity": 3}, []),  # each ahead on one input
    ({"identity": 0}, {"events": 12}, []),
    ({"i/e/1": [7, 1]}, {"i/e/1": [7, 2]}, ["i/e/1"]),
    ({"i/e/1": [8, 0]}, {"i/e/1": [7, 2]}, []),
])
def test_a_later_entry_is_behind_where_it_read_less_and_nowhere_more(later: dict[str, object], kept: dict[str, object],
                                                                    behind: list[str]) -> None:
    assert read_offsets.lagging(later, kept) == behind


offsets_maps = st.dictionaries(st.sampled_from(["events", "identity", "profiles"]), st.integers(-1, 20))


@given(offsets_maps, offsets_maps)
def test_of_two_entries_at_most_one_is_behind_and_never_one_that_read_as_far(a: dict[str, int], b: dict[str, int]) -> None:
    """A restore keeps out a later entry only when it is behind (streams/bulk_store.py): two entries
    are never each behind the other, and an entry that read at least as far on every input never is."""
    assert not (read_offsets.lagging(a, b) and read_offsets.lagging(b, a))
    further = {key: max(offset, b.get(key, -1)) for key, offset in a.items()} | {k: v for k, v in b.items() if k not in a}
    assert read_offsets.lagging(further, b) == []
    assert read_offsets.lagging(a, a) == []
