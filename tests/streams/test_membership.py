"""A worker that lost its group membership writes nothing (streams/membership.py): the check against
a stand-in for aiokafka's coordinator, and the real case, a worker paused past the consumer session
timeout while its partitions' new owner scores on."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from kafka import KafkaAdminClient

from prometheus_client import REGISTRY

from scoring import Engine
from streams import lead_states
from streams.account_table import AccountTable
from streams.app import canonical_url
from streams.bench import workload
from streams.errors import MembershipLost
from streams.lag import LagProbe
from streams.membership import Lease, Membership
from streams.outbox import Outbox
from streams.partitioning import partition_for
from streams.processes import WorkerProcess, free_port
from streams.rollup import Rollup
from streams.scorer import Scorer
from streams.settings import Settings
from streams.stage import Consumed, LiveTable, MemoryData
from tests.infra import leadstream, read_model_scores, read_to_end, send_batched, wait_for, write_jsonl
from tests.scoring.support import shipped
from tests.streams.stage_support import Kept
from tests.streams.test_worker_state import wait_caught_up

SETTINGS = Settings()

class Coordinator:
    """aiokafka's group coordinator as the check sees it: a membership, heartbeats, rejoin requests."""

    def __init__(self, answers: list[bool]) -> None:
        self.generation, self.member_id = 3, "member-a"
        self.answers = answers  # what the broker answers each heartbeat; False: the member is gone
        self.heartbeats = 0
        self.rejoins = 0

    async def _do_heartbeat(self) -> bool:
        self.heartbeats += 1
        if self.answers.pop(0):
            return True
        self.generation, self.member_id = -1, ""  # as aiokafka's reset_generation, on UnknownMemberId
        return False

    def request_rejoin(self) -> None:
        self.rejoins += 1


def assigned(membership: Membership, coordinator: Coordinator) -> None:
    thread = SimpleNamespace(_consumer=SimpleNamespace(_coordinator=coordinator), thread_loop=asyncio.get_running_loop())
    membership.assigned(SimpleNamespace(_thread=thread, app=SimpleNamespace(consumer_generation_id=coordinator.generation)))


def test_a_worker_writes_while_the_broker_answered_lately_and_asks_it_when_not() -> None:
    async def scenario() -> tuple[list[bool], list[str], int, int, int]:
        lost: list[str] = []
        membership = Membership(10.0, lambda: lost.append("lost"))
        coordinator = Coordinator([True, False])
        assigned(membership, coordinator)
        assert membership.lease == Lease(3, "member-a")
        # No heartbeat answered yet (a pause, or the first write of an assignment): it asks the broker.
        held = [await membership.holds()]
        asked = coordinator.heartbeats
        held.append(await membership.holds())  # answered just now: no need to ask
        membership.heard_s -= 6.0  # the worker stood still for longer than half the session timeout
        held.append(await membership.holds())  # the broker says the member is gone
        held.append(await membership.holds())  # and it stays lost until the next assignment
        await asyncio.sleep(0)  # the rejoin is asked for on the consumer's loop
        return held, lost, asked, coordinator.heartbeats, coordinator.rejoins

    assert asyncio.run(scenario()) == ([True, True, False, False], ["lost"], 1, 2, 1)


def test_an_outbox_whose_worker_lost_its_membership_sends_nothing_and_keeps_nothing() -> None:
    async def may_write() -> bool:
        return False

    outbox = Outbox("127.0.0.1:1", 4, may_write=may_write)  # a send would fail: there is no broker there
    outbox.add("scores", b"ada", b"{}")
    with pytest.raises(MembershipLost):
        asyncio.run(outbox.flush())
    assert len(outbox) == 0


def test_a_batch_the_fence_drops_moves_no_counter_and_one_written_does() -> None:
    """`leadstream_crossings_total` says crossings published, yet counted a batch's as it was
    scored: a worker paused past the session timeout counted those of the batches it then
    dropped, which their new owner published and counted again (95,572 against 90,543)."""
    now = int(time.time() * 1000)
    events = [{"event_id": f"d{i}", "lead_id": "ada", "type": "form_submit", "time": now - 1_000 + i, "product": "b2b",
               "properties": {"form": "demo_request"}, "traits": {"title": "VP Marketing", "email": "ada@initech.io"}}
              for i in range(3)]
    batch = [Consumed(SETTINGS.topic_events, partition_for("ada", 4), offset, b"ada", orjson.dumps(event))
             for offset, event in enumerate(events)]

    def counters() -> tuple[float, ...]:
        crossings = sum(REGISTRY.get_sample_value("leadstream_crossings_total", {"model": "b2b", "level": level, "direction": "up",
                                                                                 "kind": "lead"}) or 0 for level in ("mql", "sql"))
        return (crossings, *(REGISTRY.get_sample_value(name) or 0 for name in
                             ("leadstream_events_consumed_total", "leadstream_events_scored_total")))

    async def fenced() -> bool:
        return False

    def score(outbox: Outbox) -> list[bool]:
        outcome: list[bool] = []

        async def done(written: bool) -> None:
            outcome.append(written)

        scorer = Scorer(Engine([shipped("b2b")]), SETTINGS, LiveTable(MemoryData(), "leads-changelog", 4, 1_000, lead_states.decode),
                        outbox, 4)
        assert len(asyncio.run(scorer.process(batch, done)).crossings) == 2  # scored: ada goes up to mql, then sql
        return outcome

    before = counters()
    assert score(Outbox("127.0.0.1:1", 4, may_write=fenced)) == [False]  # no broker there: the fence refuses before any send
    assert counters() == before
    assert score(Kept()) == [True]
    assert counters() == (before[0] + 2, before[1] + 3, before[2] + 3)


def test_a_decay_sweep_the_fence_drops_counts_no_crossing() -> None:
    now = int(time.time() * 1000)
    event = {"event_id": "d", "lead_id": "ada", "type": "form_submit", "time": now, "product": "b2b", "properties": {"form": "demo_request"}}
    store = LiveTable(MemoryData(), "leads-changelog", 4, 1_000, lead_states.decode)
    asyncio.run(Scorer(Engine([shipped("b2b")]), SETTINGS, store, Kept(), 4).process(
        [Consumed(SETTINGS.topic_events, partition_for("ada", 4), 0, b"ada", orjson.dumps(event))]))

    def down() -> float:
        return sum(sample.value for metric in REGISTRY.collect() if metric.name == "leadstream_crossings"
                   for sample in metric.samples if sample.name == "leadstream_crossings_total" and sample.labels["direction"] == "down")

    async def fenced() -> bool:
        return False

    async def sweep() -> None:
        scorer = Scorer(Engine([shipped("b2b")]), SETTINGS, store, Outbox("127.0.0.1:1", 4, may_write=fenced), 4)
        await scorer.rebuild_indexes({0, 1, 2, 3})
        await scorer.decay_due(now + 365 * 86_400_000)  # the demo request's points decayed away: ada crosses down

    before = down()
    with pytest.raises(MembershipLost):
        asyncio.run(sweep())
    assert down() == before


def test_a_batch_of_the_account_stage_the_fence_drops_counts_no_crossing() -> None:
    updates = [{"model": "b2b", "account_id": "acme", "lead_id": f"L{n}", "score": 90, "time": 1_762_128_000_000 + n} for n in range(3)]

    def crossings() -> float:
        return sum(REGISTRY.get_sample_value("leadstream_crossings_total", {"model": "b2b", "level": level, "direction": "up",
                                                                            "kind": "account"}) or 0 for level in ("engaged", "buying"))

    async def fenced() -> bool:
        return False

    def roll_up(outbox: Outbox) -> None:
        stage = Rollup(Engine([shipped("b2b")]), SETTINGS, AccountTable(MemoryData(), "accounts-changelog", 4, 10), outbox)
        asyncio.run(stage.process([Consumed(SETTINGS.topic_accounts, 0, 0, None, orjson.dumps(updates))]))

    before = crossings()
    roll_up(Outbox("127.0.0.1:1", 4, may_write=fenced))
    assert crossings() == before
    roll_up(Kept())  # acme goes up to engaged, then buying
    assert crossings() == before + 2


#: Longer than the consumer session timeout (10 s, streams/app.py), so the group moves on without it.
PAUSE_S = 13


#: Events of its partitions past the second worker's committed offsets when it is paused: more
#: than it scores between two commits (a second apart, streams/app.py), so a batch is in flight.
BACKLOG = 1_000


async def feed(settings: Settings, events: list[dict]) -> None:
    """The events as single-event messages on their leads' partitions, all sent when it returns."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        await send_batched(producer, settings.topic_events, ((partition_for(str(e["lead_id"]), settings.partitions),
                                                              str(e["lead_id"]).encode(), orjson.dumps(e)) for e in events))
    finally:
        await producer.stop()


def backlog(settings: Settings, proc: WorkerProcess) -> int:
    """The events topic's offsets past the group's committed ones on the partitions the group
    gave `proc` (the member whose metadata carries its URL, streams/app.py canonical_url)."""
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    probe = LagProbe(settings)
    try:
        members = admin.describe_groups([settings.app_id])[settings.app_id]["members"]
        url = f'"url":"{canonical_url(proc.settings)}"'
        owned = {partition for member in members if url in str(member["member_metadata"])
                 for assigned in member["member_assignment"]["assigned_partitions"] if assigned["topic"] == settings.topic_events
                 for partition in assigned["partitions"]}
        assert owned, f"no member of the group {settings.app_id} with {url}: {members}"
        return sum(lag for partition, lag in probe.lag(settings.app_id, settings.topic_events).items() if partition in owned)
    finally:
        probe.close()
        admin.close()


def lead_scores(proc: WorkerProcess, keys: list[str]) -> dict[str, float | None]:
    """Each `model/lead` key's score as GET /leads/ID/ answers it (routed to the lead's owner)."""

    def score(key: str) -> tuple[str, float | None]:
        model, lead_id = key.split("/", 1)
        # A partition still moving as the view is asked (the paused worker back in its group) is
        # answered for a moment without its state: asked again, up to 30 s, before it counts.
        deadline = time.monotonic() + 30
        while (answer := proc.get(f"/leads/{lead_id}/"))[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.5)
        status, body = answer
        return key, orjson.loads(body)["models"][model]["score"] if status == 200 else None

    with ThreadPoolExecutor(8) as pool:
        return dict(pool.map(score, keys))


def test_a_worker_paused_past_the_session_timeout_writes_no_old_state_over_its_successors(
    isolated: Settings, worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    now = int(time.time() * 1000)
    events = list(workload.generate(12_000, 3_000, seed=17, start_ms=now - 6 * 3_600_000, span_ms=6 * 3_600_000))
    offline = [orjson.loads(line) for line in
               leadstream(isolated, "score", "--events", str(write_jsonl(tmp_path / "events.jsonl", events))).stdout.splitlines()]
    expected = {key: score for key, score in read_model_scores(offline).items() if ":account/" not in key}

    first = worker()
    second = worker(replace(isolated, worker_port=free_port(), state_dir=isolated.state_dir / "second"))
    wait_for(lambda: first.ready() and second.ready(), 60, "both workers sharing the partitions")

    # Every event in the topic within seconds: both workers are behind, and the pause below
    # checks that the second is. Sent as the workers scored them (kafka-python, a message at a
    # time, 2 ms each on a loaded machine), the feed's pace decided it: the fresh clone's run
    # once paused a second worker with no batch in flight, and none was fenced.
    asyncio.run(feed(isolated, events))
    wait_for(lambda: sum(second.metric("leadstream_events_scored_total")) >= 1_000, 60, "the second worker scoring")
    assert second.proc is not None
    os.killpg(second.proc.pid, signal.SIGSTOP)
    resume_s = time.monotonic() + PAUSE_S
    try:
        behind = backlog(isolated, second)
        assert behind >= BACKLOG, f"the second worker was paused with {behind} events to score: it may have had no batch in flight"
        time.sleep(max(0.0, resume_s - time.monotonic()))  # the first takes every partition and scores what the second had not committed
    finally:
        os.killpg(second.proc.pid, signal.SIGCONT)
    wait_caught_up(isolated)
    wait_for(lambda: first.ready() and second.ready(), 60, "both workers ready again")

    # The read models end with the offline scores: no stale score change came after the new owner's.
    scores = {key.decode(): value["score"] for key, value in read_to_end(isolated, isolated.topic_scores)}
    wrong = {key: (scores.get(key), score) for key, score in expected.items() if scores.get(key) != score}
    assert not wrong, f"{len(wrong)} leads' last score changes are not the offline scores (got, expected): {list(wrong.items())[:5]}"
    live = lead_scores(first, list(expected))
    wrong = {key: (live[key], score) for key, score in expected.items() if live[key] != score}
    assert not wrong, f"{len(wrong)} leads' live states are not the offline scores (got, expected): {list(wrong.items())[:5]}"
    assert sum(second.metric("leadstream_batches_fenced_total")), "the pause caught the second worker with nothing to write"
    # The changelogs' newest records are those states: a worker recovering from them alone scores the same.
    first.stop()
    second.stop()
    third = worker(replace(isolated, worker_port=free_port(), state_dir=isolated.state_dir / "third"))
    recovered = lead_scores(third, list(expected))
    wrong = {key: (recovered[key], score) for key, score in expected.items() if recovered[key] != score}
    assert not wrong, f"{len(wrong)} leads recovered from the changelog are not the offline scores (got, expected): {list(wrong.items())[:5]}"
