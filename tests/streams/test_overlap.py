"""A batch's flushes run while the next batch is scored (streams/overlap.py, Scorer.process
with `done`): what is sent, in which order, and what a changelog record holds."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import orjson
import pytest

from scoring import Engine
from streams import lead_states
from streams.account_table import AccountTable
from streams.outbox import Outbox
from streams.overlap import InFlight, WriteFailed
from streams.partitioning import partition_for
from streams.rollup import Rollup
from streams.scorer import Scorer
from streams.settings import Settings
from streams.stage import Consumed, LiveTable, MemoryData
from tests.scoring.support import T0, shipped


class Gated(Outbox):
    """An outbox whose every flush waits until the test opens it, logging what it sent."""

    def __init__(self) -> None:
        super().__init__("", 4)
        self.log: list[tuple[str, object]] = []
        self.gate = asyncio.Semaphore(0)

    async def flush(self) -> None:
        pending, self._pending = self._pending, defaultdict(list)
        await self.gate.acquire()
        self.log += [("sent", (topic, key, value)) for (topic, _), records in pending.items() for key, value, _ in records]


def pricing_view(event_id: str, lead: str, offset: int) -> Consumed:
    event = {"event_id": event_id, "lead_id": lead, "type": "page_view", "time": T0 + offset, "product": "b2b",
             "properties": {"url": "https://acme.io/pricing"}}
    return Consumed(Settings().topic_events, partition_for(lead, 4), offset, lead.encode(), orjson.dumps(event))


def test_the_next_batch_is_scored_while_the_last_ones_flushes_run_and_each_is_acknowledged_after_its_states() -> None:
    async def scenario() -> None:
        settings = Settings()
        outbox = Gated()
        store = LiveTable(MemoryData(), "changelog", 4, 100, lead_states.decode)
        scorer = Scorer(Engine([shipped("b2b")]), settings, store, outbox, 4)

        def done(name: str):  # type: ignore[no-untyped-def]
            async def acknowledge(written: bool) -> None:
                outbox.log.append(("acknowledged", name))
            return acknowledge

        await scorer.process([pricing_view("e1", "ada", 0)], done("first"))  # returns with both flushes waiting
        assert not any(kind == "acknowledged" for kind, _ in outbox.log)
        second = asyncio.ensure_future(scorer.process([pricing_view("e2", "ada", 1)], done("second")))
        await asyncio.sleep(0.05)
        assert not second.done()  # scored, waiting for the first batch before starting its flushes
        for _ in range(4):
            outbox.gate.release()
        await second
        await scorer.settle()
        steps = [item if kind == "acknowledged" else item[0] for kind, item in outbox.log]  # type: ignore[index]
        changelog = [item[2] for kind, item in outbox.log if kind == "sent" and item[0] == "changelog"]  # type: ignore[index]
        # The first batch's outputs, then its state, then its acknowledgement, then the second
        # batch's state and acknowledgement (its outputs go out with the first's state, or before).
        first_state = steps.index("changelog")
        second_state = steps.index("changelog", first_state + 1)
        assert settings.topic_scores in steps[:first_state]
        assert first_state < steps.index("first") < second_state < steps.index("second") == len(steps) - 1
        assert steps.count(settings.topic_scores) == 2 and steps[second_state:].count(settings.topic_scores) == 0
        # The first batch's record holds the first batch's state, though the second changed the
        # live state before that record was sent.
        first, last = (lead_states.decode(value)["b2b"] for value in changelog)  # type: ignore[arg-type]
        assert first.ledger["pricing page"][1] == 1 and last.ledger["pricing page"][1] == 2

    asyncio.run(scenario())


def test_an_error_in_the_flushes_reaches_the_next_batch_once() -> None:
    async def scenario() -> None:
        in_flight = InFlight()

        async def failing() -> None:
            raise RuntimeError("broker gone")

        in_flight.start(failing())
        # Named as the batch's, whoever waits (the worker's log blamed a decay sweep for it).
        with pytest.raises(WriteFailed, match="writing a scored batch's outputs and states to Kafka failed: RuntimeError.'broker gone'"):
            await in_flight.wait()
        await in_flight.wait()  # reported once; nothing in flight now

    asyncio.run(scenario())


def test_one_batch_in_flight_at_most() -> None:
    async def scenario() -> None:
        in_flight = InFlight()
        gate = asyncio.Event()
        in_flight.start(gate.wait())
        pending = gate.wait()
        with pytest.raises(RuntimeError, match="still in flight"):
            in_flight.start(pending)
        pending.close()
        gate.set()
        await in_flight.wait()

    asyncio.run(scenario())


def test_a_waiter_cancelled_leaves_the_flushes_running() -> None:
    async def scenario() -> None:
        in_flight = InFlight()
        gate = asyncio.Event()
        finished: list[bool] = []

        async def flushes() -> None:
            await gate.wait()
            finished.append(True)

        in_flight.start(flushes())
        waiter = asyncio.ensure_future(in_flight.wait())
        await asyncio.sleep(0.01)
        waiter.cancel()
        gate.set()
        await in_flight.wait()
        assert finished == [True]

    asyncio.run(scenario())


def test_the_account_stage_rolls_up_the_next_batch_while_the_last_ones_flushes_run() -> None:
    async def scenario() -> None:
        settings = Settings()
        outbox = Gated()
        stage = Rollup(Engine([shipped("b2b")]), settings, AccountTable(MemoryData(), "accounts-changelog", 4, 10), outbox)
        acknowledged: list[str] = []

        def update(lead: str, score: float) -> list[Consumed]:
            value = orjson.dumps([{"model": "b2b", "account_id": "acme", "lead_id": lead, "score": score, "time": T0}])
            return [Consumed(settings.topic_accounts, 0, len(acknowledged), None, value)]

        def done(name: str):  # type: ignore[no-untyped-def]
            async def acknowledge(written: bool) -> None:
                acknowledged.append(name)
            return acknowledge

        await stage.process(update("L1", 20), done("first"))  # returns with both flushes waiting
        second = asyncio.ensure_future(stage.process(update("L2", 35), done("second")))
        await asyncio.sleep(0.05)
        assert not second.done() and acknowledged == []
        for _ in range(4):
            outbox.gate.release()
        await second
        await stage.settle()
        assert acknowledged == ["first", "second"]
        first, last = (stage.store.decoded(item[1].decode(), item[2])["b2b"] for kind, item in outbox.log  # type: ignore[index]
                       if item[0] == "accounts-changelog")  # type: ignore[index]
        assert set(first.members) == {"L1"} and set(last.members) == {"L1", "L2"}

    asyncio.run(scenario())
