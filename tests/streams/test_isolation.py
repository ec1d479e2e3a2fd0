"""A batch that raises while scored: the input that fails is found and dead-lettered as
internal_error, the rest is scored as it would have been (streams/isolation.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Sequence

import orjson
import pytest

from scoring import Engine, Event, LeadState, MemberScore, Transition
from scoring.engine import ModelRuntime
from streams import lead_states, metrics
from streams.deadletter import DeadLetter
from streams import isolation
from streams.account_table import AccountTable
from streams.isolation import isolate
from streams.partitioning import partition_for
from streams.rollup import Rollup
from streams.scorer import Scorer
from streams.settings import Settings
from streams.stage import Consumed, LiveTable, MemoryData
from tests.scoring.support import T0, shipped
from tests.streams.stage_support import Kept

Item = int | tuple[int, ...]


def test_isolate_finds_each_failing_item_and_keeps_the_others_results_in_order() -> None:
    attempts: list[list[Item]] = []

    def attempt(items: Sequence[Item]) -> list[Item]:
        attempts.append(list(items))
        if any(item == 3 or item == 11 or (isinstance(item, tuple) and 11 in item) for item in items):
            raise ValueError("poison")
        return list(items)

    refused: list[tuple[Item, str]] = []
    # An envelope (a tuple) is split into its events once it fails alone.
    items: list[Item] = [0, 1, 2, 3, (10, 11, 12), 4]
    results = isolate(items, attempt, lambda item: list(item) if isinstance(item, tuple) else [item],
                      lambda item, exc: refused.append((item, str(exc))))
    assert [item for part in results for item in part] == [0, 1, 2, 10, 12, 4]
    assert refused == [(3, "poison"), (11, "poison")]
    assert attempts[0] == items and len(attempts) < 4 * len(items)


def test_isolate_tries_once_when_nothing_fails() -> None:
    attempts: list[list[int]] = []

    def attempt(items: Sequence[int]) -> int:
        attempts.append(list(items))
        return sum(items)

    assert isolate([1, 2], attempt, lambda item: [item], lambda item, exc: None) == [3]
    assert attempts == [[1, 2]]


LEAD, OTHER, POISON = "ada", "zed", "poison"  # ada and poison share partition 1; zed is on 2


def view(lead: str, event_id: str) -> dict[str, Any]:
    return {"event_id": event_id, "lead_id": lead, "type": "page_view", "time": T0, "product": "b2b",
            "properties": {"url": "https://acme.io/pricing"}}


def message(offset: int, *events: dict[str, Any]) -> Consumed:
    partition = partition_for(events[0]["lead_id"], 4)
    assert all(partition_for(event["lead_id"], 4) == partition for event in events)
    value = orjson.dumps(events[0] if len(events) == 1 else list(events))
    return Consumed(Settings().topic_events, partition, offset, None, value)


def test_an_event_that_makes_scoring_raise_is_dead_lettered_and_the_rest_of_its_batch_and_envelope_is_scored(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(isolation, "_logged", {})
    engine = Engine([shipped("b2b")])
    runtime = engine.runtime("b2b")
    scored = runtime.appliers["page_view"]

    def buggy(state: LeadState, event: Event, out: list[Transition]) -> int:
        """The page-view rules, with a bug that only the poison lead's events meet."""
        outcome = scored(state, event, out)
        if event.lead_id == POISON:
            raise ZeroDivisionError("a bug")
        return outcome

    runtime.appliers["page_view"] = buggy
    outbox = Kept()
    store = LiveTable(MemoryData(), "changelog", 4, 100, lead_states.decode)
    scorer = Scorer(engine, Settings(), store, outbox, 4)
    asyncio.run(scorer.process([message(5, view(OTHER, "z0"))]))
    outbox.sent.clear()
    batch = [
        message(10, view(LEAD, "a1"), view(POISON, "p1"), view(LEAD, "a2")),
        message(20, view(OTHER, "z1")),  # its lead's last event: settled (summary queued) before the attempt fails
        message(11, view(POISON, "p2")),
    ]
    stats = asyncio.run(scorer.process(batch))
    asyncio.run(outbox.flush())
    settings = Settings()
    dead = [DeadLetter.from_bytes(value) for topic, _, value in outbox.sent if topic == settings.topic_deadletter]
    assert [(d.reason, orjson.loads(d.original)["event_id"], d.offset) for d in dead] == [
        ("internal_error", "p1", 10), ("internal_error", "p2", 11)]
    assert "ZeroDivisionError: a bug" in dead[0].detail and "replay-dlq --reason internal_error" in dead[0].detail
    assert (stats.events, stats.scored, stats.rejected) == (5, 3, {"internal_error": 2})
    # The failed attempts left nothing: zed's summary once, and its state written, though the
    # failed attempts had counted its event in its live state (a retry would see a duplicate).
    summaries = [key for topic, key, _ in outbox.sent if topic == settings.topic_scores]
    assert summaries.count(f"b2b/{OTHER}".encode()) == 1
    changelog = {key: value for topic, key, value in outbox.sent if topic == "changelog"}
    assert lead_states.decode(changelog[OTHER.encode()])["b2b"].ledger["pricing page"][1] == 2  # type: ignore[union-attr]
    assert store.states(LEAD)["b2b"].ledger["pricing page"][1] == 2  # type: ignore[union-attr]
    assert POISON.encode() not in store.recovered
    # Both raised at the same place: its traceback is logged once, without the lead's id.
    [logged] = [r for r in caplog.records if "dead-lettered as internal_error" in r.getMessage()]
    assert "ZeroDivisionError" in logged.getMessage() and "buggy" in logged.getMessage() and POISON not in logged.getMessage()


def test_an_account_update_that_makes_the_roll_up_raise_is_dead_lettered_and_the_others_rolled_up() -> None:
    engine = Engine([shipped("b2b")])
    apply_account_updates = engine.apply_account_updates

    def buggy(model: str, account_id: str, state: Any, updates: Sequence[MemberScore]) -> Any:
        """The roll-up, with a bug that only the updates of one member meet."""
        if any(update.lead_id == POISON for update in updates):
            raise KeyError("a bug")
        return apply_account_updates(model, account_id, state, updates)

    engine.apply_account_updates = buggy  # type: ignore[method-assign]
    outbox = Kept()
    settings = Settings()
    stage = Rollup(engine, settings, AccountTable(MemoryData(), "accounts-changelog", 4, 100), outbox)
    update: dict[str, Any] = {"model": "b2b", "account_id": "acme", "time": T0}
    envelope = [{**update, "lead_id": LEAD, "score": 20}, {**update, "lead_id": POISON, "score": 99}, {**update, "lead_id": OTHER, "score": 30}]
    asyncio.run(stage.process([Consumed(settings.topic_accounts, 1, 3, None, orjson.dumps(envelope))]))
    asyncio.run(outbox.flush())
    [letter] = [DeadLetter.from_bytes(value) for topic, _, value in outbox.sent if topic == settings.topic_deadletter]
    assert (letter.reason, orjson.loads(letter.original)["lead_id"], letter.offset) == ("internal_error", POISON, 3)
    assert "rolling up this account update raised KeyError" in letter.detail
    members = stage.store.stored("acme")["b2b"].members
    assert sorted(members) == [LEAD, OTHER]


def test_a_decay_step_that_raises_leaves_its_lead_as_it_was_and_the_sweep_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    decay = ModelRuntime.decay

    def buggy(self: ModelRuntime, state: LeadState, lead_id: str, now_ms: int, out: list[Transition], swept: bool = False) -> None:
        """Decay, with a bug that one lead meets after its state changed and its crossing was found."""
        decay(self, state, lead_id, now_ms, out, swept)
        if lead_id == LEAD:
            raise ZeroDivisionError("a bug")

    outbox = Kept()
    settings = Settings()
    store = LiveTable(MemoryData(), "changelog", 4, 100, lead_states.decode)
    scorer = Scorer(Engine([shipped("b2b")]), settings, store, outbox, 4)
    asyncio.run(scorer.process([message(offset, *(view(lead, f"{lead}-{n}") for n in range(3)))
                                for offset, lead in enumerate((LEAD, OTHER))]))
    stored = store.recovered[LEAD.encode()]
    monkeypatch.setattr(ModelRuntime, "decay", buggy)
    outbox.sent.clear()
    failures = metrics.DECAY_FAILURES._value.get()
    asyncio.run(scorer.decay_due(T0 + 200 * 86_400_000))
    assert metrics.DECAY_FAILURES._value.get() == failures + 1
    crossed = [orjson.loads(value)["lead_id"] for topic, _, value in outbox.sent if topic == settings.topic_crossings]
    assert crossed and set(crossed) == {OTHER}
    assert lead_states.encode(store.states(LEAD)) == stored  # type: ignore[arg-type]
    assert LEAD.encode() not in {key for topic, key, _ in outbox.sent if topic == "changelog"}
