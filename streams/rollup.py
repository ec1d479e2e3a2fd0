"""The account stage: member score updates, re-keyed by account through Kafka, rolled up.

The scorer publishes each changed member score of a batch (and, with `[accounts]`, the scores a
member passed through within it: `Engine.apply_batch`) to the account-updates topic on the
account's partition, packed per partition like event envelopes (a JSON array), so this stage
pays Faust's per-message cost once per scorer batch and partition (more often only when a
batch's updates for a partition exceed what one Kafka message holds). Same guarantee as the
scorer: crossings acknowledged before the account states that record them, offsets last;
a replayed update finds itself, or a later update of its lead, known to the account (by event
time and the lead state's revision, `AccountState.update`), and changes nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from operator import attrgetter
from typing import Sequence

import msgspec
import orjson

from scoring import AccountState, Engine, MemberScore, Transition
from scoring.accounts import by_account
from scoring.events import UNDECODABLE, unreadable
from scoring.errors import StateError
from streams import metrics
from streams.account_table import AccountTable, leaves_no_page
from streams.deadletter import DeadLetter
from streams.envelope import MAX_MESSAGE_BYTES, unpack
from streams.isolation import internal_error, isolate, split_envelope, undone_if_it_raises
from streams.offset_sequence import LogStart, LookUp, OffsetSequence
from streams.outbox import Outbox, encode_json, encode_json_or_none
from streams.overlap import Done, InFlight, make_durable
from streams.partitioning import partition_for
from streams.settings import Settings
from streams.stage import Consumed, Record, read_from


_decode_updates = msgspec.json.Decoder(list[MemberScore]).decode


class _Model(msgspec.Struct):
    """An update's model, all `_misses_models` reads of it."""

    model: str


_decode_models = msgspec.json.Decoder(list[_Model]).decode


def publish_updates(outbox: Outbox, settings: Settings, updates: Sequence[MemberScore], partitions: int) -> None:
    """Queue member updates on their accounts' partitions, in envelopes of at most
    MAX_MESSAGE_BYTES (one per partition, unless a batch has more updates than that holds)."""
    by_partition: dict[int, list[MemberScore]] = {}
    for update in updates:
        by_partition.setdefault(partition_for(update.account_id, partitions), []).append(update)
    for partition, members in by_partition.items():
        for envelope in _envelopes(members):
            outbox.add(settings.topic_accounts, None, envelope, partition)


def _envelopes(members: Sequence[MemberScore]) -> Iterator[bytes]:
    """The updates as JSON arrays small enough for Kafka: a catch-up batch of 100,000 events
    whose leads all have accounts makes 19,000 updates a partition (1.9 MB as one array, or
    up to 40 MB with ids of 256 multi-byte characters), which the broker refuses."""
    value = encode_json(members)
    if len(value) <= MAX_MESSAGE_BYTES or len(members) == 1:
        yield value
        return
    middle = len(members) // 2
    yield from _envelopes(members[:middle])
    yield from _envelopes(members[middle:])


def lead_score_key(model: str, lead_id: str) -> bytes:
    """A lead summary's key on the score-changes topic: `<model>/<lead id>` (a tombstone under it
    takes the lead out of the read models)."""
    return f"{model}/{lead_id}".encode()


def account_score_key(model: str, account_id: str) -> bytes:
    """An account summary's key on the score-changes topic: `<model>:account/<account id>` (a
    tombstone under it, once the account has no members, takes it out of the read models). A
    model name has no ':', so no lead's key (`<model>/<lead id>`) is ever the same."""
    return f"{model}:account/{account_id}".encode()


_TIME = attrgetter("time_ms")


def _member_score(state: AccountState | None, lead_id: str) -> float | None:
    """The lead's score in the account (None: not a member); its time is not in summaries."""
    member = None if state is None else state.members.get(lead_id)
    return None if member is None else member[0]


class Rollup:
    def __init__(self, engine: Engine, settings: Settings, store: AccountTable, outbox: Outbox,
                 look_up: LookUp | None = None, log_start: LogStart | None = None) -> None:
        """`look_up` and `log_start` tell holes in the account updates' offsets apart as the
        scorer's do (streams/offset_sequence.py): without them every hole is a gap."""
        self.settings = settings
        self.store = store
        self.outbox = outbox
        #: The last batch's flushes, running while the next batch is rolled up (streams/overlap.py).
        self.in_flight = InFlight()
        self.sequence = OffsetSequence({settings.topic_accounts}, look_up, log_start)
        #: The newest member time rolled up (its lead's newest event's): the time an emptied
        #: account's retention is counted in, that of the events, so that reading a backlog or
        #: a past history removes what scoring them as they came would have, whatever the
        #: worker's clock says meanwhile.
        self.clock_ms = 0
        #: Takes up an edit of the model files at once, if there is one (the worker's; None:
        #: reloads are off). An `[accounts]` model added is loaded by each worker of a group at
        #: its own poll: a worker that has it sends its leads' updates to accounts owned by
        #: workers that may not have it yet, which dead-lettered them (`unknown_model`) until
        #: `leadstream replay-dlq` was run.
        self.catch_up: Callable[[], Awaitable[None]] | None = None
        self._take(engine)

    def use(self, engine: Engine) -> None:
        """Rolls up with `engine` from the next batch on (see `Scorer.use`); a batch in flight
        is past its last use of the engine once it awaits, so the switch never splits one."""
        self._take(engine)
        self.store.drop_live()

    def _take(self, engine: Engine) -> None:
        self.engine = engine
        self.models = {model.name for model in engine.models}

    async def settle(self) -> None:
        """Returns once the batch in flight (if any) has written its states."""
        await self.in_flight.wait()

    async def process(self, batch: Sequence[Consumed], done: Done | None = None) -> None:
        """Rolls up a batch and returns once it is durable; or, given `done`, as soon as it is
        rolled up, as `Scorer.process` does. An update that makes the roll-up raise is found and
        dead-lettered (streams/isolation.py)."""
        self.sequence.observe(batch)
        if self.catch_up is not None and self._misses_models(batch):
            await self.catch_up()  # those still unknown after it are dead-lettered (`_decode`)
        if self.sequence.at_head:
            await self.sequence.check_head()
        records: list[Record] = []
        crossings: list[Transition] = []
        for part_records, part_crossings in isolate(batch, self._attempt, split_envelope, self._refuse):
            records += part_records
            crossings += part_crossings
        await self.in_flight.wait()
        self.in_flight.start(make_durable(self.outbox, records, done, "rollup", read_from(batch),
                                          lambda: metrics.count_crossings(crossings)))
        if done is None:
            await self.in_flight.wait()

    def _attempt(self, messages: Sequence[Consumed]) -> tuple[list[Record], list[Transition]]:
        """`_roll_up`, or nothing at all when it raises."""
        return undone_if_it_raises(self.outbox, self.store, lambda changed: self._roll_up(messages, changed))

    def _roll_up(self, messages: Sequence[Consumed],
                 changed: dict[str, tuple[int, dict[str, AccountState]]]) -> tuple[list[Record], list[Transition]]:
        """Queues the messages' crossings, summaries and dead letters; returns the changelog
        records of the account states they changed (`changed`: each one's partition and states),
        and the crossings, counted once written."""
        transitions: list[Transition] = []
        dead: list[DeadLetter] = []
        # (account id, model) whose members changed: read models get their summaries.
        moved: set[tuple[str, str]] = set()
        for message in messages:
            # A message is one scorer batch's updates for the partition: an account takes those
            # of one message in the order they happened, and those with a leaving together, so
            # a pair that belongs together (a merged visitor's leaving and its lead's new score)
            # does not make it cross down and up again (`Engine.apply_account_updates`).
            for (model, account_id), updates in by_account(self._decode(message, dead)).items():
                try:
                    states = changed[account_id][1] if account_id in changed else self.store.states(account_id)
                except StateError as exc:
                    dead += [message.dead_letter("unreadable_state", f"the stored state of account {account_id!r} cannot be "
                                                 f"read ({exc}): its updates go to the dead-letter topic until it is repaired or "
                                                 "its entry deleted", encode_json(update)) for update in updates]
                    continue
                changed[account_id] = (message.partition, states)  # before it changes: an attempt that raises drops it
                state = states.get(model)
                before = [_member_score(state, update.lead_id) for update in updates]
                leveled = state is not None and state.level != ""
                state, crossed = self.engine.apply_account_updates(model, account_id, state, updates)
                if model in self.engine.rolling:
                    if before != [_member_score(state, update.lead_id) for update in updates]:
                        moved.add((account_id, model))  # a score or a membership changed
                elif leveled:  # rolled up before its [accounts] was removed: read models drop it now
                    moved.add((account_id, model))
                states[model] = state
                transitions.extend(crossed)
                self.clock_ms = max(self.clock_ms, *map(_TIME, updates))
                if not state.members:
                    self._emptied(account_id, model, states)
        self._remove_due(changed)
        for transition in transitions:
            self.outbox.add(self.settings.topic_crossings, str(transition.account_id).encode(), encode_json(transition.to_dict()))
        for account_id, model in moved:
            kept = changed[account_id][1].get(model)  # None: removed (`_emptied`)
            # An account whose last member left (moved, merged, forgotten) has nothing left to
            # show: its summary, `"members": 0` at score 0, would stay on the hot-accounts
            # leaderboard for good. A tombstone takes it out of read models, as a forgotten
            # lead's does; its state stays (level, crossings, leavings), so a member that
            # comes back rolls up where it left off, unless it was removed meanwhile
            # (`_emptied`). An account of a model whose [accounts] was removed is taken out
            # too, at its first change since.
            summary = (encode_json(self.engine.account_summary(model, account_id, kept))
                       if kept is not None and kept.members and model in self.engine.rolling else None)
            self.outbox.add(self.settings.topic_scores, account_score_key(model, account_id), summary)
        # Encoded before any is kept, so an encoding that raises changes nothing; sent after
        # the crossings, once the batch before is durable.
        encoded = [(account_id, *self.store.encode(account_id, partition, states)) for account_id, (partition, states) in changed.items()]
        self._queue_dead(dead)
        return [record for account_id, states, records in encoded for record in self.store.keep(account_id, states, records)], transitions

    def _emptied(self, account_id: str, model: str, states: dict[str, AccountState]) -> None:
        """An account whose last member in `model` left (`states`: its states, live) is taken
        out of the table: else ids that anyone can send as a lead's account (`group` calls)
        each kept an account for good. At once when it holds nothing a new account would not
        (no crossing made: one made anew treats a member that joins it alike); else once
        `empty_account_retention_ms` have passed since its last leaving, as it keeps its level
        and crossing count for a member that joins it meanwhile, and so the numbers of its
        crossings, which their ids hold. Only a state that leaves no page behind goes: a paged
        one is made inline, and stale pages deleted, by this batch (`AccountTable.encode`), and
        it goes at the next."""
        state = states[model]
        due_ms = self._removal_ms(model, state)
        if due_ms is None:
            return  # a model no longer in the directory: its states rest, as the scorer's do
        if due_ms <= self.clock_ms and leaves_no_page(state):
            del states[model]  # none left: a tombstone (`AccountTable.encode`)
        else:
            self.store.remove_at(account_id, due_ms)

    def _removal_ms(self, model: str, state: AccountState) -> int | None:
        """When an account emptied in `model` is removed, in `clock_ms`'s time (`_emptied`)."""
        if model not in self.models:
            return None
        if self.engine.account_blank(model, state):
            return 0
        return (state.last_left_ms() or 0) + self.settings.empty_account_retention_ms

    def _remove_due(self, changed: dict[str, tuple[int, dict[str, AccountState]]]) -> None:
        """Removes the emptied accounts whose retention is over (`_emptied`), as the index finds
        them; those with members again are left, those emptied since are asked for later. (An
        attempt that raises loses those it took: a recovery indexes them again.)"""
        for account_id in self.store.take_due(self.clock_ms):
            try:
                states = changed[account_id][1] if account_id in changed else self.store.states(account_id)
            except StateError:
                continue  # its updates are dead-lettered until it is repaired or deleted
            emptied = [model for model, state in states.items() if not state.members]
            if emptied:
                changed[account_id] = (partition_for(account_id, self.store.partitions), states)  # before it changes
                for model in emptied:
                    self._emptied(account_id, model, states)

    async def index_emptied(self, partitions: set[int], slice_s: float) -> int:
        """Indexes the removal of the emptied accounts on these partitions, once recovered (see
        `AccountTable.emptied`), letting the event loop run every `slice_s`: 100,000 of them
        take a few seconds, in which the worker would answer no probe. Returns how many."""
        count, paused_s = 0, time.monotonic()
        for account_id, model, state in self.store.emptied(partitions):
            if (due_ms := self._removal_ms(model, state)) is not None:
                self.store.remove_at(account_id, due_ms)
                count += 1
            if time.monotonic() - paused_s >= slice_s:
                await asyncio.sleep(0)
                paused_s = time.monotonic()
        return count

    def _misses_models(self, batch: Sequence[Consumed]) -> bool:
        """Whether the batch has an update for a model this worker does not have (reading only
        the updates' models; a message that does not decode so is left to `_updates`)."""
        for message in batch:
            try:
                if not message.tombstone and any(update.model not in self.models for update in _decode_models(message.value)):
                    return True
            except UNDECODABLE:
                continue
        return False

    def _refuse(self, message: Consumed, exc: Exception) -> None:
        self._queue_dead([internal_error(exc, message, "rolling up this account update")])

    def _decode(self, message: Consumed, dead: list[DeadLetter]) -> list[MemberScore]:
        """The message's updates for the models this worker has; the others are dead-lettered."""
        updates = self._updates(message, dead)
        unknown = [update for update in updates if update.model not in self.models]
        for update in unknown:
            dead.append(message.dead_letter("unknown_model", f"account update for model {update.model!r}, which this worker does not have "
                       f"(models: {', '.join(sorted(self.models))}): added to LEADSTREAM_MODELS_DIR and not loaded here yet (this worker's "
                       "files did not have it when the update came, or LEADSTREAM_MODELS_RELOAD_S is 0: "
                       "`leadstream replay-dlq --reason unknown_model` once every "
                       "worker's GET /models/ shows it), removed from it while updates were in flight, or not written by leadstream",
                       encode_json(update)))
        return [update for update in updates if update.model in self.models] if unknown else updates

    def _updates(self, message: Consumed, dead: list[DeadLetter]) -> list[MemberScore]:
        if message.tombstone:
            dead.append(message.dead_letter("tombstone", f"a message without a value (a tombstone) on {message.topic}, which takes "
                                            "member updates", None))
            return []
        try:  # an envelope of well-formed updates, decoded and checked in one pass
            return _decode_updates(message.value)
        except UNDECODABLE:
            pass  # the careful path finds which record is bad, and why
        updates = []
        try:
            records = unpack(message.value)
        except orjson.JSONDecodeError as exc:
            records = []
            dead.append(message.dead_letter(*unreadable(exc, "message is not JSON", message.value), message.value))
        for record in records:
            try:
                updates.append(msgspec.convert(record, MemberScore))
            except msgspec.ValidationError as exc:  # names the field: "Expected `str`, got `array` - at `$.account_id`"
                dead.append(message.dead_letter("bad_account_update", f"account update lacks or mistypes a field: {exc}",
                                                encode_json_or_none(record) or message.value))
        return updates

    def _queue_dead(self, dead: list[DeadLetter]) -> None:
        for letter in dead:
            metrics.EVENTS_REJECTED.labels(letter.reason).inc()
            self.outbox.add(self.settings.topic_deadletter, letter.message_key, letter.to_bytes(), letter.partition)
