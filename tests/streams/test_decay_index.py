"""The worker's decay index: a sweep takes only what is due, in due order, a chunk at a time,\nof the partitions the worker owns."""

from __future__ import annotations

import asyncio

import msgspec
import orjson
import pytest

from scoring import Engine, MemberScore, parse_model
from streams import lead_states
from streams.partitioning import partition_for
from streams.scorer import DecayIndex, Scorer
from streams.settings import Settings
from streams.stage import Consumed, LiveTable, MemoryData
from tests.scoring.support import T0, shipped
from tests.streams.stage_support import Kept

DAY = 86_400_000


def test_pop_due_takes_only_due_entries_earliest_first_up_to_the_limit() -> None:
    index = DecayIndex()
    for due, lead in ((30, "c"), (10, "a"), (20, "b"), (99, "late")):
        index.schedule(0, due, lead, "b2b")
    index.schedule(1, 15, "other-partition", "b2b")
    assert index.pop_due(25, limit=2) == [(0, "a", "b2b"), (0, "b", "b2b")]
    assert index.pop_due(25, limit=10) == [(1, "other-partition", "b2b")]
    assert index.pop_due(25, limit=10) == []
    assert len(index) == 2
    assert index.pop_due(100, limit=10) == [(0, "c", "b2b"), (0, "late", "b2b")]


def test_a_lead_rescheduled_later_keeps_one_entry_and_an_earlier_time_is_honoured() -> None:
    index = DecayIndex()
    for due in (50, 60, 70, 80):  # activity moves the step later with every batch
        index.schedule(0, due, "a", "b2b")
    assert len(index) == 1
    index.schedule(0, 40, "a", "b2b")  # a late activity gave a step back: due earlier
    assert index.pop_due(45, limit=10) == [(0, "a", "b2b")]
    index.schedule(0, 90, "a", "b2b")  # the sweep found it not due, and schedules it again
    assert index.pop_due(85, limit=10) == [(0, "a", "b2b")]  # the entry of 50 (stale: the sweep checks)
    assert index.pop_due(95, limit=10) == [(0, "a", "b2b")]
    assert len(index) == 0


def test_forget_drops_a_partitions_entries_and_a_lead_scheduled_again_there_is_indexed_anew() -> None:
    index = DecayIndex()
    index.schedule(0, 10, "a", "b2b")
    index.schedule(1, 10, "b", "b2b")
    index.forget({0, 3})
    assert len(index) == 1
    index.schedule(0, 20, "a", "b2b")  # the partition came back: its lead is indexed again
    assert sorted(index.pop_due(30, limit=10)) == [(0, "a", "b2b"), (1, "b", "b2b")]


def test_a_sweep_under_way_when_partitions_are_revoked_leaves_their_leads_alone() -> None:
    """The decay timer sweeps a chunk at a time, and a rebalance may come between two chunks:
    the leads of the partitions taken away are the new owner's to decay, not this worker's."""

    async def scenario() -> None:
        settings = Settings()
        outbox = Kept()
        store = LiveTable(MemoryData(), "changelog", 4, 100, lead_states.decode)
        scorer = Scorer(Engine([shipped("b2b")]), settings, store, outbox, 4)
        leads = [f"lead-{n}" for n in range(40)]
        assert {partition_for(lead, 4) for lead in leads} == {0, 1, 2, 3}
        batch = [Consumed(settings.topic_events, partition_for(lead, 4), n, lead.encode(), orjson.dumps(
            {"event_id": f"{lead}-0", "lead_id": lead, "type": "form_submit", "time": T0, "product": "b2b",
             "properties": {"form": "demo_request"}})) for n, lead in enumerate(leads)]
        await scorer.process(batch)
        outbox.sent.clear()
        now = T0 + 100 * DAY
        assert await scorer.decay_due(now, limit=5) == 5  # the first chunk of the sweep
        revoked = {0, 1}
        await scorer.revoke(revoked)
        while await scorer.decay_due(now, limit=5) == 5:  # the sweep goes on after the rebalance
            pass
        written = [key.decode() for topic, key, _ in outbox.sent if topic == "changelog"]
        first_chunk, rest = written[:5], written[5:]
        assert not [lead for lead in rest if partition_for(lead, 4) in revoked], "a lead of a revoked partition decayed"
        assert sorted(first_chunk + rest) == sorted(
            set(first_chunk) | {lead for lead in leads if partition_for(lead, 4) not in revoked})
        assert len(scorer.decay_index) == 0 and not [lead for lead in store.live if partition_for(lead, 4) in revoked]

    asyncio.run(scenario())


def test_a_sweep_writes_every_models_step_of_a_lead_whose_live_states_were_evicted_in_between() -> None:
    """With fewer live leads (LEADSTREAM_LIVE_LEADS) than a chunk touches, a lead of two models
    is evicted between its two steps of one chunk: the second step must build on the first."""

    async def scenario() -> None:
        settings = Settings()
        outbox = Kept()
        table = MemoryData()
        store = LiveTable(table, "changelog", 4, 1, lead_states.decode)
        engine = Engine([shipped("b2b"), shipped("analytics_addon")])
        scorer = Scorer(engine, settings, store, outbox, 4)
        leads = [f"lead-{n}" for n in range(12)]
        kinds = ({"type": "form_submit", "product": "b2b", "properties": {"form": "demo_request"}},
                 {"type": "trial_started", "product": "analytics"}, {"type": "data_source_connected", "product": "analytics"})
        await scorer.process([
            Consumed(settings.topic_events, partition_for(lead, 4), 10 * n + k, lead.encode(),
                     orjson.dumps({"event_id": f"{lead}-{k}", "lead_id": lead, "time": T0 + k, **kind}))
            for n, lead in enumerate(leads) for k, kind in enumerate(kinds)])
        before = {lead: lead_states.decode(table.data[lead.encode()]) for lead in leads}
        now = T0 + 100 * DAY
        assert await scorer.decay_due(now) < 250  # one chunk
        for lead in leads:
            stored = lead_states.decode(table.data[lead.encode()])
            for model in ("b2b", "analytics_addon"):
                expected, _ = engine.decay(model, lead, before[lead][model], now)  # type: ignore[arg-type]
                assert stored[model].to_bytes() == expected.to_bytes(), (lead, model)  # type: ignore[union-attr]

    asyncio.run(scenario())


def test_a_sweep_sends_its_account_updates_in_the_order_of_the_steps_they_carry_not_of_the_index() -> None:
    """The index hands a sweep its leads partition by partition. A successor that sweeps after a
    crash, with some of the sweep's states written and others not, finds their steps due at
    other times, so in the index's order its account updates came in another order, and an
    account crossed at another member's update than in the uninterrupted run, under another id
    (the decay replay property test found it, for 4 to 5 seeds in 30)."""

    async def scenario() -> None:
        settings = Settings()
        outbox = Kept()
        store = LiveTable(MemoryData(), "changelog", 4, 100, lead_states.decode)
        scorer = Scorer(Engine([shipped("b2b")]), settings, store, outbox, 4)
        early = next(f"lead-{n}" for n in range(100) if partition_for(f"lead-{n}", 4) == 3)  # idle since T0
        late = next(f"lead-{n}" for n in range(100) if partition_for(f"lead-{n}", 4) == 0)  # idle since a day later
        await scorer.process([Consumed(settings.topic_events, partition_for(lead, 4), 0, lead.encode(), orjson.dumps(
            {"event_id": f"{lead}-0", "lead_id": lead, "type": "form_submit", "time": at, "product": "b2b", "account_id": "acme",
             "properties": {"form": "demo_request"}})) for lead, at in ((late, T0 + DAY), (early, T0))])
        outbox.sent.clear()
        await scorer.decay_due(T0 + 40 * DAY)  # one step each: the early lead's is due first
        updates = [update.lead_id for topic, _, value in outbox.sent if topic == settings.topic_accounts and value
                   for update in msgspec.json.decode(value, type=list[MemberScore])]
        assert updates == [early, late]

    asyncio.run(scenario())


_HALF_LIFE_ACCOUNTS = """
[model]
name = "usage"

[[rules]]
name = "trial"
event = "trial_started"
points = 40

[decay]
half_life = "10d"

[thresholds]
base = "cold"
ladder = [{ level = "mql", at = 20 }, { level = "sql", at = 60 }]

[accounts]
base = "unaware"
hysteresis = 10
ladder = [{ level = "engaged", at = 60 }]
"""


def test_sweeps_send_a_half_life_members_decayed_score_to_its_account_between_its_crossings() -> None:
    """A half-life lead was swept only when decay took it through a line, so its account kept
    the score of its last event until then: two members at 40 points each, nine days on (about
    21 each), left the account engaged at 80 points instead of crossing down below 50."""

    async def scenario() -> None:
        settings = Settings()
        outbox = Kept()
        store = LiveTable(MemoryData(), "changelog", 4, 100, lead_states.decode)
        engine = Engine([parse_model(_HALF_LIFE_ACCOUNTS, "usage.toml")])
        scorer = Scorer(engine, settings, store, outbox, 4)
        await scorer.process([
            Consumed(settings.topic_events, partition_for(lead, 4), n, lead.encode(), orjson.dumps(
                {"event_id": f"{lead}-0", "lead_id": lead, "type": "trial_started", "time": T0, "account_id": "acme"}))
            for n, lead in enumerate(("L1", "L2"))])

        def sent_updates() -> list[MemberScore]:
            updates = [update for topic, _, value in outbox.sent if topic == settings.topic_accounts
                       for update in msgspec.json.decode(value, type=list[MemberScore])]
            outbox.sent.clear()
            return updates

        account, crossings = engine.apply_account_updates("usage", "acme", None, sent_updates())
        assert account.level == "engaged"
        swept: list[MemberScore] = []
        for day in range(1, 10):  # the decay timer, once a day
            while await scorer.decay_due(T0 + day * DAY, limit=5) == 5:
                pass
            swept += sent_updates()
        account, crossings = engine.apply_account_updates("usage", "acme", account, swept)
        assert engine.account_summary("usage", "acme", account)["score"] == pytest.approx(80 * 2**-0.9, rel=0.1)
        assert [(t.from_level, t.to_level) for t in crossings] == [("engaged", "unaware")]
        assert len(swept) <= 2 * 9  # at most one update per lead per sweep (a tenth of its points each)

    asyncio.run(scenario())
