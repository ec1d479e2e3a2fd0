"""The scoring stage's guarantee, without a broker: a batch whose changelog records were written
only in part (the worker stopped between them, before committing its offsets) is scored again
by a new worker from what they left, and everything ends as if it had not stopped, identity
merges and requests to forget a lead included; no crossing is published that the uninterrupted run did not publish (by id),
and the accounts, rolling up what both attempts sent, cross as in the uninterrupted run. The
same for a decay sweep stopped between its records."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import given, settings as hypothesis_settings, strategies as st

from scoring import AccountState, Engine, LeadState, MemberScore
from streams import lead_states, stitching
from streams.bench import workload
from streams.partitioning import partition_for
from streams.scorer import Scorer
from streams.settings import Settings
from streams.stage import Consumed, LiveTable, MemoryData
from tests.scoring.support import shipped
from tests.streams.stage_support import Kept, written

SETTINGS = Settings()
ENGINE = Engine([shipped("b2b")])
CHANGELOG = "leads-changelog"


class World:
    """A worker over a table, and what its batches send itself for the next: identity records,
    and events re-keyed from an id merged into a lead."""

    def __init__(self, data: dict[bytes, bytes], identity: list[Consumed], offset: int, engine: Engine = ENGINE) -> None:
        store = LiveTable(MemoryData(), CHANGELOG, 4, 1_000, lead_states.decode)
        store.table.data.update(data)
        self.outbox = Kept()
        self.scorer = Scorer(engine, SETTINGS, store, self.outbox, 4)
        self.identity = identity  # records not yet consumed
        self.offset = offset  # the next offset of a record sent back (one sequence for all partitions, beyond the input's)

    def score(self, batch: list[Consumed]) -> list[tuple[bytes, bytes | None]]:
        """Scores the batch and the identity records sent before it; returns its changelog records."""
        start = len(self.outbox.placed)
        asyncio.run(self.scorer.process(self.identity + batch))
        self.identity = []
        self.take_identity(start)
        return [(key or b"", value) for topic, _, key, value in self.outbox.placed[start:] if topic == CHANGELOG]

    def take_identity(self, start: int) -> None:
        """Takes the records sent from `start` on that the worker reads back."""
        for (topic, partition, key, value), headers in zip(self.outbox.placed[start:], self.outbox.headers[start:]):
            if topic in (SETTINGS.topic_identity, SETTINGS.topic_events) and value is not None:
                self.identity.append(Consumed(topic, partition, self.offset, key, value, origin=stitching.origin(headers)))
                self.offset += 1

    def crossing_ids(self) -> set[str]:
        return {orjson.loads(value)["id"] for topic, _, _, value in self.outbox.placed if topic == SETTINGS.topic_crossings and value}


def accounts(*worlds: World) -> tuple[dict[str, dict[str, float]], list[str]]:
    """The account updates the worlds sent, rolled up in order: each account's members' scores,
    and the ids of the account crossings, in order."""
    states: dict[str, AccountState] = {}
    ids = []
    for world in worlds:
        for topic, _, _, value in world.outbox.placed:
            if topic == SETTINGS.topic_accounts and value is not None:
                for update in msgspec.json.decode(value, type=list[MemberScore]):
                    states[update.account_id], crossed = ENGINE.apply_account(update.model, update.account_id,
                                                                              states.get(update.account_id), update)
                    ids += [transition.to_dict()["id"] for transition in crossed]
    return {account: {lead: member[0] for lead, member in state.members.items()} for account, state in states.items()}, ids


def scores(data: dict[bytes, bytes]) -> dict[tuple[str, str], float]:
    """Each lead's score per model, as a worker that recovered `data` reads them."""
    out = {}
    for key, value in data.items():
        for model, state in lead_states.decode(value).items():
            if not isinstance(state, str):
                out[(key.decode(), model)] = ENGINE.runtime(model).score(state)
    return out


def members(data: dict[bytes, bytes], leaving_out: set[str]) -> dict[str, dict[str, float]]:
    """Each account's members and their scores, as the lead states in `data` have them."""
    out: dict[str, dict[str, float]] = {}
    for key, value in data.items():
        state = lead_states.decode(value).get("b2b")
        if isinstance(state, LeadState) and state.account_id is not None and key.decode() not in leaving_out:
            out.setdefault(state.account_id, {})[key.decode()] = ENGINE.runtime("b2b").score(state)
    return out


def messages(seed: int) -> list[Consumed]:
    """300 workload events over 30 leads, 40 of them by 6 anonymous visitors whom an identify
    later stitches to a lead; single events keyed by lead, and envelopes of a partition's
    events, as producers send them; and 3 requests to forget a lead (whose later events start
    it again)."""
    now = int(time.time() * 1000)
    events = list(workload.generate(300, 30, seed, start_ms=now - 86_400_000, span_ms=80_000_000))
    rng = random.Random(seed)
    for n in rng.sample(range(len(events)), 40):
        events[n] = {**events[n], "lead_id": f"anon:v{n % 6}"}
    for visitor in range(6):
        n = rng.randrange(len(events))
        known = events[n]["lead_id"] if not events[n]["lead_id"].startswith("anon:") else "lead-0000001"
        events.insert(n + 1, {"event_id": f"id-{seed}-{visitor}", "lead_id": known, "type": "identify", "time": events[n]["time"],
                              "product": "b2b", "anonymous_id": f"v{visitor}"})
    offsets = [0, 0, 0, 0]
    out = []
    for start in range(0, len(events), 3):
        by_partition: dict[int, list[dict[str, Any]]] = {}
        for event in events[start : start + 3]:
            by_partition.setdefault(partition_for(event["lead_id"], 4), []).append(event)
        for partition, items in by_partition.items():
            sent = [(item["lead_id"].encode(), orjson.dumps(item)) for item in items] if start % 2 else [(None, orjson.dumps(items))]
            for key, value in sent:
                out.append(Consumed(SETTINGS.topic_events, partition, offsets[partition], key, value))
                offsets[partition] += 1
    for n, position in enumerate(sorted(rng.sample(range(len(out)), 3), reverse=True)):
        lead = f"lead-{rng.randrange(1, 31):07d}"
        out.insert(position, Consumed(SETTINGS.topic_profiles, partition_for(lead, 4), n, lead.encode(), b"", True))
    return out


#: A model whose states remember only the last 2 event ids (64 in b2b): no copy of an event read
#: again, or re-keyed again to its visitor's lead, may rely on its id to be dropped.
FORGETFUL = Engine([dataclasses.replace(shipped("b2b"), remember_events=2)])


@pytest.mark.parametrize("engine", [ENGINE, FORGETFUL], ids=["b2b", "remember_2_ids"])
@hypothesis_settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.lists(st.integers(1, 12), min_size=1, max_size=8), st.data())
def test_a_batch_cut_after_any_of_its_records_and_scored_again_ends_as_the_uninterrupted_run(
    engine: Engine, seed: int, sizes: list[int], data: st.DataObject
) -> None:
    stream = messages(seed)
    batches, position = [], 0
    for size in sizes:
        batches.append(stream[position : position + size * 8])
        position += size * 8
    batches += [stream[position:], [], [], []]  # and rounds for the identity records to settle

    whole = World({}, [], 1_000_000, engine)
    for batch in batches:
        whole.score(batch)

    # The same, with the worker stopped after `cut` of one batch's changelog records were
    # written; what the batch sent before them (crossings, identity records) is out.
    stopped_at = data.draw(st.integers(0, len(batches) - 1), label="batch cut")
    run = World({}, [], 1_000_000, engine)
    for batch in batches[:stopped_at]:
        run.score(batch)
    before, consumed = dict(run.scorer.store.table.data), list(run.identity)
    records = run.score(batches[stopped_at])
    cut = data.draw(st.integers(0, len(records)), label="records written")
    partial = written(before, records[:cut])
    # A new worker scores the batch again (with the records sent back to it that the batch
    # had), then goes on with those the first attempt sent too. (Had they come first, a
    # visitor's events would reach its lead after the link, as events, instead of inside the
    # merge: caps, ceilings and the floor may then count them otherwise, as whenever a visitor's
    # events and its link arrive in that order, crash or not.)
    again = World(partial, consumed, run.offset, engine)
    again.score(batches[stopped_at])
    again.identity = run.identity + again.identity
    for batch in batches[stopped_at + 1 :]:
        again.score(batch)
    assert scores(again.scorer.store.table.data) == scores(whole.scorer.store.table.data)
    assert run.crossing_ids() | again.crossing_ids() == whole.crossing_ids()
    # The updates the batch sends again are those it sent: its accounts take the same members
    # and cross as in the uninterrupted run, with the same ids.
    assert accounts(run, again) == accounts(whole)
    # And the accounts end with their members' scores (but those of leads made anew after they
    # were forgotten, whose updates from before their erasure's time the accounts refuse).
    forgotten = {message.key.decode() for message in stream if message.tombstone and message.key}
    rolled_up = {account: {lead: score for lead, score in scores.items() if lead not in forgotten}
                 for account, scores in accounts(whole)[0].items()}
    assert rolled_up == members(whole.scorer.store.table.data, forgotten)


def test_a_forgotten_lead_leaves_its_account_right_after_its_last_update_whatever_the_worker_s_clock() -> None:
    """A worker scoring a request to forget again after a crash sends the same leaving as the
    first did (it once took the worker's clock, so a crossing down of the account came again
    under another id). The accounts remember it at the lead's newest event, as its state's next
    revision, not at the request's Kafka timestamp: a new profile of the lead, from events
    timed before the request, would not have counted in them."""
    now = int(time.time() * 1000)
    events = [{"event_id": f"e-{n}", "lead_id": "lead-1", "type": kind, "product": "b2b", "time": now - 3_600_000 + n, "account_id": "acme"}
              for n, kind in enumerate(("identify", "webinar_attended", "webinar_attended"))]
    home = partition_for("lead-1", 4)
    batch = [Consumed(SETTINGS.topic_events, home, n, b"lead-1", orjson.dumps(event)) for n, event in enumerate(events)]
    forget = Consumed(SETTINGS.topic_profiles, home, 0, b"lead-1", b"", True, timestamp_ms=now - 60_000)
    leavings = []
    for clock_offset_ms in (0, 3_600_000):
        world = World({}, [], 1_000_000)
        world.scorer.settings = dataclasses.replace(SETTINGS, clock_offset_ms=clock_offset_ms)
        world.score(batch + [forget])
        updates = [update for topic, _, _, value in world.outbox.placed if topic == SETTINGS.topic_accounts and value
                   for update in msgspec.json.decode(value, type=list[MemberScore])]
        leavings.append([update for update in updates if update.left])
    assert leavings[0] == leavings[1] and [update.order for update in leavings[0]] == [(now - 3_600_000 + 2, 4)]


def test_a_batch_with_a_request_to_forget_scored_again_after_a_crash_publishes_nothing_and_later_events_start_the_lead_anew() -> None:
    """The batch left a marker in place of the lead's states: scored again (a crash before its
    offsets were committed), its records of the lead change nothing. Its entry was deleted
    once, and the lead was made up again from the batch's events alone: it crossed to MQL
    again, at another time, under a new id, after it was forgotten."""
    now = int(time.time() * 1000) - 3_600_000
    home = partition_for("lead-1", 4)

    def webinar(offset: int) -> Consumed:
        event = {"event_id": f"w-{offset}", "lead_id": "lead-1", "type": "webinar_attended", "product": "b2b", "time": now + offset}
        return Consumed(SETTINGS.topic_events, home, offset, b"lead-1", orjson.dumps(event))

    forget = Consumed(SETTINGS.topic_profiles, home, 7, b"lead-1", b"", True, timestamp_ms=now + 10)
    run = World({}, [], 1_000_000)
    run.score([webinar(0)])
    run.score([webinar(1), forget, webinar(2)])  # 30 points, MQL crossed, then all of it forgotten
    assert len(run.crossing_ids()) == 1 and ("lead-1", "b2b") not in scores(run.scorer.store.table.data)

    again = World(dict(run.scorer.store.table.data), [], run.offset)  # every record of the batch written
    again.score([webinar(1), forget, webinar(2)])
    assert [topic for topic, _, _, _ in again.outbox.placed if topic != CHANGELOG] == []
    assert ("lead-1", "b2b") not in scores(again.scorer.store.table.data)
    again.score([webinar(3)])  # after the batch: a new profile
    assert scores(again.scorer.store.table.data)[("lead-1", "b2b")] == 10 and not again.crossing_ids()


DAY_MS = 86_400_000


def sweep(world: World, now_ms: int) -> list[tuple[bytes, bytes | None]]:
    """A decay sweep at `now_ms` of every step due; returns its changelog records."""
    start = len(world.outbox.placed)
    asyncio.run(world.scorer.decay_due(now_ms, limit=1_000_000))
    return [(key or b"", value) for topic, _, key, value in world.outbox.placed[start:] if topic == CHANGELOG]


def recovered(data: dict[bytes, bytes], offset: int) -> World:
    """A worker over `data`, its decay index rebuilt as after a recovery."""
    world = World(data, [], offset)
    asyncio.run(world.scorer.rebuild_indexes({0, 1, 2, 3}))
    return world


@hypothesis_settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.lists(st.sampled_from([31, 45, 61, 95, 120]), min_size=1, max_size=4, unique=True), st.data())
def test_a_decay_sweep_cut_after_any_of_its_records_and_swept_again_ends_as_the_uninterrupted_run(
    seed: int, days: list[int], data: st.DataObject
) -> None:
    """A sweep writes the states it decayed after the crossings and account updates they caused:
    stopped between, its successor sweeps again from what the written states left (at the same
    time, or later), and leads, crossings and accounts end as in the uninterrupted run."""
    stream = messages(seed)
    scored = World({}, [], 1_000_000)
    for start in range(0, len(stream), 40):
        scored.score(stream[start : start + 40])
    for _ in range(3):
        scored.score([])  # the identity records settle
    table, now = dict(scored.scorer.store.table.data), int(time.time() * 1000)
    times = [now + day * DAY_MS for day in sorted(days)]

    whole = recovered(table, scored.offset)
    for at in times:
        sweep(whole, at)

    stopped_at = data.draw(st.integers(0, len(times) - 1), label="sweep cut")
    run = recovered(table, scored.offset)
    for at in times[:stopped_at]:
        sweep(run, at)
    before = dict(run.scorer.store.table.data)
    records = sweep(run, times[stopped_at])
    partial = written(before, records[: data.draw(st.integers(0, len(records)), label="records written")])
    again = recovered(partial, run.offset)
    # The successor may start when the next sweep is due: it takes the steps of both at once.
    later = stopped_at + 1 < len(times) and data.draw(st.booleans(), label="swept again only at the next sweep")
    for at in times[stopped_at + later :]:
        sweep(again, at)
    assert scores(again.scorer.store.table.data) == scores(whole.scorer.store.table.data)
    assert run.crossing_ids() | again.crossing_ids() == whole.crossing_ids()
    assert accounts(scored, run, again) == accounts(scored, whole)
