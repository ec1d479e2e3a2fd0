"""Records of the identity topic as the scoring stage reads them: what leadstream writes is
read back; anything else is dead-lettered alone, naming the problem, and never stops the stage
(before, a link with a list for an id, or a merge whose states were not state bytes, raised out
of the batch and stopped the worker on every restart)."""

from __future__ import annotations

import asyncio
import base64
import itertools

import msgspec
import orjson
import pytest

from scoring import Engine, LeadState, Rejection
from streams import lead_states, stitching
from streams.account_table import AccountTable
from streams.partitioning import partition_for
from streams.rollup import Rollup
from streams.scorer import Scorer
from streams.settings import Settings
from streams.stage import Consumed, LiveTable, MemoryData
from tests.scoring.support import T0, shipped
from tests.streams.stage_support import Kept


def test_records_leadstream_writes_are_read_back() -> None:
    state = LeadState.new("nurture", 0)
    record, states = stitching.read_record(stitching.merge_record("anon:v1", "ada", T0, {"b2b": state}))
    assert (record.kind, record.source, record.target, record.time_ms) == ("merge", "anon:v1", "ada", T0)
    assert states == {"b2b": state}
    assert orjson.loads(stitching.link_record("anon:v1", "ada", T0)) == {"kind": "link", "source": "anon:v1", "target": "ada", "time": T0}


LINK = {"kind": "link", "source": "anon:v1", "target": "ada", "time": T0}


@pytest.mark.parametrize(
    ("value", "named"),
    [
        (b"{not json", "identity record unreadable"),
        (orjson.dumps({**LINK, "source": "anon:v\u00e9"}).replace("\u00e9".encode(), b"\xe9"), "identity record unreadable"),
        (b"[1, 2]", "Expected `object`, got `array`"),
        (orjson.dumps({**LINK, "kind": "zap"}), "at `$.kind`"),
        (orjson.dumps({**LINK, "source": ["anon:v1"]}), "at `$.source`"),
        (orjson.dumps({**LINK, "target": {"id": "ada"}}), "at `$.target`"),
        (orjson.dumps({**LINK, "source": ""}), "at `$.source`"),
        (orjson.dumps({**LINK, "time": "soon"}), "at `$.time`"),
        (orjson.dumps({k: v for k, v in LINK.items() if k != "target"}), "missing required field `target`"),
        (orjson.dumps({**LINK, "kind": "merge", "states": [1]}), "at `$.states`"),
        (orjson.dumps({**LINK, "kind": "merge", "states": {"b2b": "%%%"}}), "state of model 'b2b' unreadable"),
        (orjson.dumps({**LINK, "kind": "merge", "states": {"b2b": base64.b64encode(b"\x05").decode()}}), "state of model 'b2b' unreadable"),
    ],
)
def test_anything_else_is_dead_lettered_naming_the_problem_and_the_batch_goes_on(value: bytes, named: str) -> None:
    settings = Settings()
    outbox = Kept()
    scorer = Scorer(Engine([shipped("b2b")]), settings, LiveTable(MemoryData(), "changelog", 4, 100, lead_states.decode), outbox, 4)
    home = partition_for("anon:v1", 4)
    good = orjson.dumps({"event_id": "e1", "lead_id": "carol", "type": "page_view", "time": T0, "product": "b2b",
                         "properties": {"url": "https://acme.io/pricing"}})
    batch = [Consumed(settings.topic_identity, home, 3, b"anon:v1", value),
             Consumed(settings.topic_events, partition_for("carol", 4), 0, b"carol", good)]
    stats = asyncio.run(scorer.process(batch))
    assert stats.scored == 1
    [letter] = [orjson.loads(v) for topic, _, v in outbox.sent if topic == settings.topic_deadletter and v]
    assert letter["reason"] == "bad_identity_record" and named in letter["detail"]
    assert letter["source"] == {"topic": settings.topic_identity, "partition": home, "offset": 3}


def test_a_record_on_another_partition_than_its_ids_is_dead_lettered() -> None:
    settings = Settings()
    outbox = Kept()
    scorer = Scorer(Engine([shipped("b2b")]), settings, LiveTable(MemoryData(), "changelog", 4, 100, lead_states.decode), outbox, 4)
    elsewhere = (partition_for("anon:v1", 4) + 1) % 4
    asyncio.run(scorer.process([Consumed(settings.topic_identity, elsewhere, 0, b"x", orjson.dumps(LINK))]))
    [letter] = [orjson.loads(v) for topic, _, v in outbox.sent if topic == settings.topic_deadletter and v]
    assert letter["reason"] == "wrong_partition" and "'anon:v1'" in letter["detail"]
    assert not [key for topic, key, _ in outbox.sent if topic == "changelog"]  # no marker stored for it


def test_a_ring_of_links_sent_at_once_ends_with_every_lead_keeping_its_own_points() -> None:
    # A -> B, B -> C, C -> A in one batch: each id becomes a marker before any merge arrives.
    # Each merge is sent on along the ring until its target turns out merged into its own
    # source, and goes back there: nothing bounces for ever, and no point is lost or doubled.
    settings = Settings()
    outbox = Kept()
    scorer = Scorer(Engine([shipped("b2b")]), settings, LiveTable(MemoryData(), "changelog", 4, 100, lead_states.decode), outbox, 4)
    ring = ["ring-a", "ring-b", "ring-c"]
    visits = [Consumed(settings.topic_events, partition_for(lead, 4), n, lead.encode(), orjson.dumps(
        {"event_id": f"v-{n}", "lead_id": lead, "type": "page_view", "time": T0, "product": "b2b",
         "properties": {"url": "https://acme.io/pricing"}})) for n, lead in enumerate(ring)]
    links = [(source, stitching.link_record(source, target, T0 + 1000)) for source, target in zip(ring, ring[1:] + ring[:1])]

    offsets = itertools.count()  # of the identity topic (one sequence for its partitions)

    async def run() -> list[int]:
        await scorer.process(visits)
        records, sent_on = links, []
        while records:
            assert len(sent_on) < 2 * stitching.MAX_HOPS, f"merges still in flight: {records}"
            outbox.sent.clear()
            await scorer.process([Consumed(settings.topic_identity, partition_for(key, 4), next(offsets), key.encode(), value)
                                  for key, value in records])
            records = [(key.decode(), value) for topic, key, value in outbox.sent if topic == settings.topic_identity and key and value]
            sent_on.append(len(records))
        return sent_on

    # 3 merges; sent on one hop each; back to their sources; then quiet.
    assert asyncio.run(run()) == [3, 3, 3, 0]
    assert {lead: scorer.store.states(lead)["b2b"].behaviour for lead in ring} == {lead: 10 for lead in ring}  # type: ignore[union-attr]
    assert not [v for topic, _, v in outbox.sent if topic == settings.topic_deadletter]


def test_a_merge_sent_on_max_hops_times_goes_back_to_its_source_and_a_redelivered_return_is_dropped() -> None:
    settings = Settings()
    outbox = Kept()
    scorer = Scorer(Engine([shipped("b2b")]), settings, LiveTable(MemoryData(), "changelog", 4, 100, lead_states.decode), outbox, 4)
    for lead, target in (("src", "far"), ("far", "farther")):  # src was merged into far, which was merged on since
        scorer.store.put(lead, partition_for(lead, 4), stitching.marker(target), lead_states.encode(stitching.marker(target)), outbox)
    state = LeadState.new("nurture", 0)
    state.behaviour = 7.0
    offsets = itertools.count()

    def arriving(record: stitching.IdentityRecord) -> list[stitching.IdentityRecord]:
        """What the scorer sends on the identity topic for `record` (arriving as a new record)."""
        outbox.sent.clear()
        value = orjson.dumps({**orjson.loads(stitching.merge_record("src", record.target, T0, {"b2b": state})), "hops": record.hops})
        asyncio.run(scorer.process([Consumed(settings.topic_identity, partition_for(record.target, 4), next(offsets),
                                             record.target.encode(), value)]))
        return [stitching.read_record(v)[0] for topic, _, v in outbox.sent if topic == settings.topic_identity and v]

    merge = stitching.IdentityRecord("merge", "src", "far", T0)
    [onward] = arriving(msgspec.structs.replace(merge, hops=3))
    assert (onward.target, onward.hops) == ("farther", 4)
    [back] = arriving(msgspec.structs.replace(merge, hops=stitching.MAX_HOPS))
    assert (back.source, back.target) == ("src", "src")
    # Back at its source, the states replace the marker; delivered again, they add nothing.
    assert arriving(back) == [] and lead_states.scored(scorer.store.states("src")) == {"b2b": state}
    assert arriving(back) == [] and scorer.store.states("src")["b2b"].behaviour == 7.0  # type: ignore[union-attr]
    assert stitching.merged_into(scorer.store.states("far")) == "farther"  # the ids the merge passed stay merged


def test_a_link_that_makes_stitching_raise_is_dead_lettered_leaving_nothing_and_the_others_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings()
    outbox = Kept()
    scorer = Scorer(Engine([shipped("b2b")]), settings, LiveTable(MemoryData(), "changelog", 4, 100, lead_states.decode), outbox, 4)
    visitors = ["anon:bug", "anon:ok"]
    asyncio.run(scorer.process([Consumed(settings.topic_events, partition_for(v, 4), n, v.encode(), orjson.dumps(
        {"event_id": f"v-{n}", "lead_id": v, "type": "page_view", "time": T0, "product": "b2b",
         "properties": {"url": "https://acme.io/pricing"}})) for n, v in enumerate(visitors)]))
    marker = stitching.marker

    def buggy(target: str) -> dict[str, object]:
        """Marking a merged id, with a bug that only links to bob meet (after the link queued its
        merge record and took the visitor out of the read models)."""
        if target == "bob":
            raise RuntimeError("a bug")
        return marker(target)

    monkeypatch.setattr(stitching, "marker", buggy)
    outbox.sent.clear()
    links = [("anon:bug", "bob"), ("anon:ok", "ada")]
    asyncio.run(scorer.process([Consumed(settings.topic_identity, partition_for(source, 4), 7, source.encode(),
                                         stitching.link_record(source, target, T0 + 1000)) for source, target in links]))
    [letter] = [orjson.loads(v) for topic, _, v in outbox.sent if topic == settings.topic_deadletter]
    assert letter["reason"] == "internal_error" and "RuntimeError: a bug" in letter["detail"]
    assert orjson.loads(letter["original"])["source"] == "anon:bug"
    merges = [key for topic, key, _ in outbox.sent if topic == settings.topic_identity]
    assert merges == [b"ada"]  # the failed link's merge record was taken back
    tombstones = [key for topic, key, value in outbox.sent if topic == settings.topic_scores and value is None]
    assert tombstones == [b"b2b/anon:ok"]
    assert stitching.merged_into(scorer.store.states("anon:ok")) == "ada"
    assert stitching.merged_into(scorer.store.states("anon:bug")) is None
    assert scorer.store.states("anon:bug")["b2b"].behaviour == 10  # type: ignore[union-attr]


def test_a_visitor_merged_into_a_lead_of_its_account_does_not_make_the_account_cross_down_and_up_again() -> None:
    """The visitor leaves its account in the same update as the lead takes in its points. Before,
    it left at the link and the lead's new score came with the merge, a batch (or a partition)
    later: acme fell from engaged to 1 point in between and rose again, and both crossings went
    to the CRM's company record."""
    settings = Settings()
    scorer_out, rollup_out = Kept(), Kept()
    scorer = Scorer(Engine([shipped("b2b")]), settings, LiveTable(MemoryData(), "changelog", 4, 100, lead_states.decode), scorer_out, 4)
    rollup = Rollup(Engine([shipped("b2b")]), settings, AccountTable(MemoryData(), "accounts-changelog", 4, 100), rollup_out)

    def event(n: int, lead: str, kind: str, **fields: object) -> Consumed:
        return Consumed(settings.topic_events, partition_for(lead, 4), n, lead.encode(), orjson.dumps(
            {"event_id": f"e-{n}", "lead_id": lead, "type": kind, "time": T0 + n, "product": "b2b", "account_id": "acme", **fields}))

    def step(messages: list[Consumed]) -> tuple[list[tuple[str, bytes]], list[dict[str, object]]]:
        """The scorer's identity records and the account stage's crossings for `messages`."""
        scorer_out.placed.clear()
        rollup_out.sent.clear()
        asyncio.run(scorer.process(messages))
        identity = [(key.decode(), value) for topic, _, key, value in scorer_out.placed if topic == settings.topic_identity and key and value]
        updates = [Consumed(topic, partition, 0, None, value) for topic, partition, _, value in scorer_out.placed
                   if topic == settings.topic_accounts and value]
        asyncio.run(rollup.process(updates))
        return identity, [orjson.loads(v) for topic, _, v in rollup_out.sent if topic == settings.topic_crossings and v]

    _, crossed = step([event(1, "anon:v1", "form_submit", properties={"form": "demo_request"}),
                       event(2, "anon:v1", "meeting_booked"), event(3, "anon:v1", "page_view", properties={"url": "https://acme.io/pricing"}),
                       event(4, "u-1", "page_view", properties={"url": "https://acme.io/about"})])
    assert [(c["from_level"], c["to_level"]) for c in crossed] == [("unaware", "engaged")]
    merges, crossed = step([Consumed(settings.topic_identity, partition_for("anon:v1", 4), 0, b"anon:v1",
                                     stitching.link_record("anon:v1", "u-1", T0 + 10))])
    [(target, merge)] = merges
    assert crossed == []
    _, crossed = step([Consumed(settings.topic_identity, partition_for(target, 4), 0, target.encode(), merge)])
    assert crossed == []
    assert set(rollup.store.states("acme")["b2b"].members) == {"u-1"}


@pytest.mark.parametrize("headers", [None, [], [("other", b"x")], [(stitching.ORIGIN, b"events 1 2")], [(stitching.ORIGIN, b"events 1 2 x")],
                                     [(stitching.ORIGIN, b"events 1 -2 0")], [(stitching.ORIGIN, b"\xff 1 2 0")], [(stitching.ORIGIN, None)]])
def test_an_origin_header_this_worker_did_not_write_is_none(headers: object) -> None:
    """Only the event ids then drop a copy of the record: a header is no reason to refuse an event."""
    assert stitching.origin(headers) is None


def test_an_origin_reads_back_as_written() -> None:
    origin = stitching.Origin("leadstream-events", 3, 12_345_678_901, 7)
    assert stitching.origin(list(stitching.origin_headers(origin))) == origin


def test_a_link_of_an_id_without_states_takes_it_out_of_the_read_models_all_the_same() -> None:
    """A worker scored a visitor's event and published its score, then was killed before it wrote
    the visitor's states; its successor read the link first, with no states to move. Before, no
    tombstone was sent, and the read models listed the visitor beside the lead that got its
    events (a chaos run left two so)."""
    settings = Settings()
    outbox = Kept()
    scorer = Scorer(Engine([shipped("b2b")]), settings, LiveTable(MemoryData(), "changelog", 4, 100, lead_states.decode), outbox, 4)
    asyncio.run(scorer.process([Consumed(settings.topic_identity, partition_for("anon:gone", 4), 3, b"anon:gone",
                                         stitching.link_record("anon:gone", "ada", T0 + 1000))]))
    assert [key for topic, key, value in outbox.sent if topic == settings.topic_scores and value is None] == [b"b2b/anon:gone"]
    assert [topic for topic, _, _ in outbox.sent if topic == settings.topic_identity] == []  # nothing to merge
    assert stitching.merged_into(scorer.store.states("anon:gone")) == "ada"


@pytest.mark.parametrize(("fields", "said"), [({}, "missing"), ({"previous_id": None}, "null"), ({"previous_id": ""}, "empty")])
def test_an_alias_naming_no_old_id_says_how(fields: dict[str, object], said: str) -> None:
    # An empty previous_id was said to be missing: the sender looked for a field it had sent.
    refused = stitching.links_of({"type": "alias", "lead_id": "u-5", **fields})
    assert isinstance(refused, Rejection) and refused.detail.startswith(f"field 'previous_id' is {said}: ")
