"""Accounts left without members on the real broker: removed from the account table, with a
tombstone on its changelog, at once when they never crossed a line, else once
LEADSTREAM_EMPTY_ACCOUNT_RETENTION_MS of the members' event time have passed since the last
leaving; a member joining one removed finds a new account."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Callable

import orjson

from streams.history import read_to_end
from streams.processes import WorkerProcess
from streams.settings import Settings
from tests.infra import leadstream, wait_for, write_jsonl

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS


def event(lead: str, n: int, kind: str, at_ms: int, **fields: object) -> dict[str, object]:
    return {"event_id": f"{lead}-{n}", "lead_id": lead, "type": kind, "product": "b2b", "time": at_ms, **fields}


def demo_requests(lead: str, account: str, at_ms: int) -> list[dict[str, object]]:
    """Enough for an account of this lead alone to cross a line."""
    return [event(lead, n, "form_submit", at_ms + n, account_id=account, properties={"form": "demo_request"}) for n in range(5)]


def latest(settings: Settings, topic: str) -> dict[bytes | None, bytes | None]:
    return {record.key: record.value for record in read_to_end(settings, topic)}


def crossings_of(settings: Settings, account: str) -> list[dict[str, object]]:
    return [crossing for record in read_to_end(settings, settings.topic_crossings) if record.key == account.encode()
            and (crossing := orjson.loads(record.value or b"null")) is not None]


def test_emptied_accounts_are_tombstoned_at_once_or_after_the_retention_and_a_member_joining_again_starts_anew(
    own_redis: Settings, worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    """A lead (a bot) naming a new account at each of its events left each one behind with no
    members, kept in the table and its changelog for good (80,000 live records for 80,000
    page views, restored at every start)."""
    settings = own_redis.with_overrides(empty_account_retention_ms=HOUR_MS)
    changelog = f"{settings.app_id}-accounts-changelog"
    start = int(time.time() * 1000) - 3 * HOUR_MS
    rounds = 60
    bot = [event("acc-bot", n, "page_view", start + n * 1000, account_id=f"rnd-{n}") for n in range(rounds)]
    crossed = demo_requests("cx-1", "crossed", start)
    crossed.append(event("cx-1", 9, "page_view", start + MINUTE_MS, account_id="elsewhere"))  # leaves it without members
    leadstream(settings, "send", str(write_jsonl(tmp_path / "first.jsonl", bot + crossed)))
    proc = worker(settings)

    def account_records() -> dict[bytes | None, bytes | None]:
        return latest(settings, changelog)

    last = f"rnd-{rounds - 1}".encode()
    wait_for(lambda: account_records().get(last) is not None and account_records().get(b"crossed") is not None
             and [c["direction"] for c in crossings_of(settings, "crossed")] == ["up", "up", "down"], 120,
             "the bot's last account, and cx-1's crossings up and down", 1)
    # Never crossed: removed as the bot left them, a tombstone the latest record of each.
    records = account_records()
    assert [n for n in range(rounds - 1) if records.get(f"rnd-{n}".encode(), b"") is not None] == []
    status, body = proc.get("/accounts/rnd-5/")
    assert status == 404 and b"no state for account 'rnd-5'" in body
    # Crossed (up, then down as cx-1 left): kept, for a member that joins again within the retention.
    status, body = proc.get("/accounts/crossed/")
    assert status == 404 and b"has no members now" in body and b"LEADSTREAM_EMPTY_ACCOUNT_RETENTION_MS" in body

    # A worker that recovers the table finds it (the emptied accounts' index is in memory), and
    # at members' events past the retention after the leaving, whoever's, it goes.
    proc.stop()
    proc = worker(settings)
    later = start + MINUTE_MS + HOUR_MS
    ticks = [event("tick", n, "page_view", later + n, account_id="ticks") for n in range(2)]
    leadstream(settings, "send", str(write_jsonl(tmp_path / "later.jsonl", ticks)))
    wait_for(lambda: account_records().get(b"crossed", b"") is None, 60, "the crossed account tombstoned", 1)
    assert proc.get("/accounts/crossed/")[0] == 404
    assert b"no state for account 'crossed'" in proc.get("/accounts/crossed/")[1]

    # A member joining it again finds a new account: its crossings are numbered from 1 again.
    rejoin = later + MINUTE_MS
    leadstream(settings, "send", str(write_jsonl(tmp_path / "rejoin.jsonl", demo_requests("cx-2", "crossed", rejoin))))
    wait_for(lambda: len(crossings_of(settings, "crossed")) == 5, 60, "the account crossing up again", 1)
    crossings = crossings_of(settings, "crossed")
    assert [(c["from_level"], c["to_level"]) for c in crossings] == [("unaware", "engaged"), ("engaged", "buying"),
                                                                       ("buying", "unaware")] + [("unaware", "engaged"), ("engaged", "buying")]
    numbered = [hashlib.sha1(f"account|b2b|crossed|{n}|{c['time']}".encode()).hexdigest() for n, c in zip((1, 2, 3, 1, 2), crossings)]
    assert [c["id"] for c in crossings] == numbered and len(set(numbered)) == 5  # told apart by their times
    status, body = proc.get("/accounts/crossed/")
    assert status == 200 and orjson.loads(body)["models"]["b2b"]["members"] == 1
