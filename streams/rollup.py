"""The account stage: member score updates, re-keyed by account through Kafka, rolled up.

The scorer publishes each changed member score of a batch to the account-updates topic on the
account's partition, packed per partition like event envelopes (a JSON array), so this stage
pays Faust's per-message cost once per scorer batch and partition. Same guarantee as the
scorer: crossings acknowledged before the account states that record them, offsets last;
a replayed update sets the member's score to the same value again, so replays are harmless.
"""

from __future__ import annotations

from typing import Sequence

import orjson

from scoring import AccountState, Engine, MemberScore, Transition
from streams import metrics
from streams.deadletter import DeadLetter
from streams.envelope import unpack
from streams.outbox import Outbox
from streams.partitioning import partition_for
from streams.settings import Settings
from streams.stage import Consumed, StateStore, frame, unframe


def publish_updates(outbox: Outbox, settings: Settings, updates: Sequence[MemberScore], partitions: int) -> None:
    """Queue member updates on their accounts' partitions, one envelope per partition."""
    by_partition: dict[int, list[bytes]] = {}
    for u in updates:
        record = {"model": u.model, "account_id": u.account_id, "lead_id": u.lead_id, "score": u.score, "time": u.time_ms}
        by_partition.setdefault(partition_for(u.account_id, partitions), []).append(orjson.dumps(record))
    for partition, records in by_partition.items():
        outbox.add(settings.topic_accounts, None, b"[" + b",".join(records) + b"]", partition)


class Rollup:
    def __init__(self, engine: Engine, settings: Settings, store: StateStore, outbox: Outbox) -> None:
        self.engine = engine
        self.settings = settings
        self.store = store
        self.outbox = outbox

    async def process(self, batch: Sequence[Consumed]) -> None:
        states: dict[tuple[str, str], AccountState] = {}
        partition_of: dict[str, int] = {}
        transitions: list[Transition] = []
        for message in batch:
            for update in self._decode(message):
                key = (update.model, update.account_id)
                state = states.get(key)
                if state is None:
                    raw = unframe(self.store.get(update.account_id) or b"").get(update.model)
                    state = None if raw is None else AccountState.from_bytes(raw)
                state, crossed = self.engine.apply_account(update.model, update.account_id, state, update)
                states[key] = state
                partition_of[update.account_id] = message.partition
                transitions.extend(crossed)
        for transition in transitions:
            self.outbox.add(self.settings.topic_crossings, str(transition.account_id).encode(), orjson.dumps(transition.to_dict()))
        await self.outbox.flush()  # crossings before the states that record them
        metrics.count_crossings(transitions)
        by_account: dict[str, dict[str, bytes]] = {}
        for (model, account_id), state in states.items():
            if account_id not in by_account:
                by_account[account_id] = unframe(self.store.get(account_id) or b"")
            by_account[account_id][model] = state.to_bytes()
        for account_id, encoded in by_account.items():
            self.store.put(account_id, partition_of[account_id], frame(encoded), self.outbox)
        await self.outbox.flush()

    def _decode(self, message: Consumed) -> list[MemberScore]:
        updates = []
        try:
            records = unpack(message.value)
        except orjson.JSONDecodeError as exc:
            records, error = [], f"message is not JSON: {exc}"
            self._dead(message, "bad_json", error, message.value)
        for record in records:
            try:
                updates.append(MemberScore(record["model"], record["account_id"], record["lead_id"], float(record["score"]), int(record["time"])))
            except (KeyError, TypeError, ValueError) as exc:
                self._dead(message, "bad_account_update", f"account update lacks or mistypes a field: {exc!r}", orjson.dumps(record))
        return updates

    def _dead(self, message: Consumed, reason: str, detail: str, original: bytes) -> None:
        letter = DeadLetter(reason, detail, original, message.topic, message.partition, message.offset, message.key)
        metrics.EVENTS_REJECTED.labels(reason).inc()
        self.outbox.add(self.settings.topic_deadletter, message.key, letter.to_bytes(), message.partition)
