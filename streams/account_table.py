"""The account table: each account's states by model, a large account's members in pages.

Why pages: an account's state holds every member's latest score, and members stay (a lead gone
cold still belongs to its company), so a large customer's account only grows. Written whole, an
account of 20,000 members sent 800 KB to the changelog at every batch that moved one of them,
and one of about 400,000 made a record larger than the changelog takes (16 MB): the worker
stopped, and stopped again at every restart.

Layout. The account's value, under its id, frames each model's state as the engine encodes it
(`AccountState.to_bytes`: `[1, members, level, crossings, gone]`) while the model has at most
`split_members` members. Beyond, the model's entry is `[1, count, level, crossings, gone]` and its
members are in `count` pages: records of their own, on the account's partition, under
`<account id> 0xFF <model> 0xFF <count>.<n>` (0xFF never occurs in UTF-8, so no account's key is
a page's), each a JSON object of the members whose `page_of` is n, lead id -> [score, time].
A batch writes the account's value, then the pages of the members it updated. When the members
outgrow `2 * page_members` a page on average, the pages double: a new set of keys is written
first, the value naming it next, and the old set is deleted last.

Why that order survives a crash anywhere between the records (the batch's input is read and
rolled up again, since offsets are committed after its records are acknowledged, in order on
the one partition): a value written before its pages holds the level the updates led to, and
the updates read again bring the pages up to date without crossing twice; a new set of pages is
never read before the value naming it is written, and then it is complete.
"""

from __future__ import annotations

import zlib
from typing import Any, Iterable, Iterator

import orjson

from scoring import AccountState, MemberScore
from scoring.accounts import LAYOUT_LENGTHS
from scoring.errors import StateError
from scoring.state import decode as decode_values, encode as encode_values, right_sized
from streams.stage import LiveTable, Record, TableData, frame, unframe

#: Members a model's entry holds itself (about 40 bytes each in JSON); beyond, pages.
SPLIT_MEMBERS = 1024
#: Members a page holds on average right after the pages are made or doubled; at most twice.
PAGE_MEMBERS = 256


class PagedAccount(AccountState):
    """An account state whose members the table keeps in pages: `pages[n]` holds the ids of
    the members in page n (those whose `page_of` is n), and `updated` the ids of the members
    whose updates it took since it was last encoded, so a batch rewrites only their pages,
    without a pass over all the members."""

    __slots__ = ("pages", "updated")

    def __init__(self, members: dict[str, list[float]], level: str, crossings: int, gone: dict[str, int],
                 pages: list[set[str]]) -> None:
        super().__init__(members, level, crossings, gone)
        self.pages = pages
        self.updated: set[str] = set()

    def update(self, member: MemberScore) -> bool:
        self.updated.add(member.lead_id)
        return super().update(member)


def page_of(lead_id: str, count: int) -> int:
    """The page of `count` that holds this member: the same in every process (unlike `hash`)."""
    return zlib.crc32(lead_id.encode("utf-8", "surrogatepass")) % count


def page_key(account_id: str, model: str, count: int, page: int) -> bytes:
    return b"%b\xff%b\xff%d.%d" % (account_id.encode(), model.encode(), count, page)


class AccountTable(LiveTable[AccountState]):
    """The account stage's `LiveTable`: a large account's members are read from and written to
    pages (records of their own), and a batch writes an account with `encode` and `keep`."""

    def __init__(self, table: TableData, changelog: str, partitions: int, max_live: int,
                 split_members: int = SPLIT_MEMBERS, page_members: int = PAGE_MEMBERS) -> None:
        super().__init__(table, changelog, partitions, max_live, None)
        self.split_members = split_members
        self.page_members = page_members

    def decoded(self, key: str, value: bytes) -> dict[str, AccountState]:
        states: dict[str, AccountState] = {}
        for model, raw in unframe(value).items():
            _, members, *rest = decode_values(raw, "account", LAYOUT_LENGTHS)
            if members.__class__ is not int or members < 1:  # the members themselves, not a number of pages
                states[model] = AccountState.checked(members, *rest)
                continue
            members, pages = self._read_pages(key, model, members)
            state = AccountState.checked(members, *rest)
            states[model] = PagedAccount(state.members, state.level, state.crossings, state.gone, pages)
        return states

    def state_keys(self) -> Iterator[bytes]:
        return (raw_key for raw_key in list(self.recovered) if b"\xff" not in raw_key)

    def __len__(self) -> int:
        return sum(1 for _ in self.state_keys())

    def encode(self, account_id: str, partition: int, states: dict[str, AccountState]) -> tuple[dict[str, AccountState], list[Record]]:
        """The records that store these states, in the order they must be sent, and the states
        to keep (a model's that passes `split_members` becomes a `PagedAccount`). Nothing is
        kept yet, so an encoding that raises leaves the table as it was (but for the pages'
        `updated`, whose states are dropped then)."""
        if all(state.__class__ is AccountState and len(state.members) <= self.split_members for state in states.values()):
            return states, [(self.changelog, account_id.encode(), frame({model: state.to_bytes() for model, state in states.items()}), partition)]
        kept: dict[str, AccountState] = {}
        entries: dict[str, bytes] = {}
        new_sets: list[Record] = []  # read only once the value names them
        rewritten: list[Record] = []
        deleted: list[Record] = []
        for model, state in states.items():
            if not isinstance(state, PagedAccount) and len(state.members) <= self.split_members:
                kept[model], entries[model] = state, state.to_bytes()
                continue
            count = len(state.pages) if isinstance(state, PagedAccount) else 0
            if len(state.members) > 2 * self.page_members * count:  # (more) pages
                paged = PagedAccount(state.members, state.level, state.crossings, state.gone, _index(state.members, self._count(len(state.members))))
                new_sets += self._pages(account_id, partition, model, paged, range(len(paged.pages)))
                deleted += [(self.changelog, page_key(account_id, model, count, page), None, partition) for page in range(count)]
            else:
                assert isinstance(state, PagedAccount)
                paged, pages = state, set()
                for lead_id in paged.updated:
                    page = page_of(lead_id, count)
                    pages.add(page)
                    if lead_id in paged.members:
                        paged.pages[page].add(lead_id)
                    else:
                        paged.pages[page].discard(lead_id)
                paged.updated.clear()
                rewritten += self._pages(account_id, partition, model, paged, sorted(pages))
            kept[model], entries[model] = paged, encode_values((len(paged.pages), paged.level, paged.crossings, paged.gone))
        value: Record = (self.changelog, account_id.encode(), frame(entries), partition)
        return kept, [*new_sets, value, *rewritten, *deleted]

    def keep(self, account_id: str, states: dict[str, AccountState], records: list[Record]) -> list[Record]:
        """Keeps `states` as the account's and `records` (from `encode`) in the table; returns the
        records, for the caller to send once what the change caused is durable."""
        for _, raw_key, value, partition in records:
            if value is None:
                self.table.delete(raw_key)
            else:
                self.table.write(raw_key, value, partition)
        self._keep(account_id, states)
        return records

    def _read_pages(self, account_id: str, model: str, count: int) -> tuple[dict[str, Any], list[set[str]]]:
        """The members in the account's `count` pages, and each page's member ids."""
        members: dict[str, Any] = {}
        pages: list[set[str]] = []
        for page in range(count):
            where = f"account {account_id!r} in model {model!r}: page {page} of {count}"
            raw = self.recovered.get(page_key(account_id, model, count, page))
            if raw is None:
                raise StateError(f"{where} is missing from the table")
            try:
                part = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise StateError(f"{where} is not JSON: {exc}") from None
            if part.__class__ is not dict or any(page_of(lead_id, count) != page for lead_id in part):
                raise StateError(f"{where} is not an object of the members that belong in it")
            members.update(part)
            pages.append(set(part))
        return members, pages

    def _count(self, members: int) -> int:
        """Pages that hold `page_members` of `members` on average: a power of two, at least 2."""
        count = 2
        while count * self.page_members < members:
            count *= 2
        return count

    def _pages(self, account_id: str, partition: int, model: str, state: PagedAccount, pages: Iterable[int]) -> list[Record]:
        count, members = len(state.pages), state.members
        return [(self.changelog, page_key(account_id, model, count, page),
                 right_sized(orjson.dumps({lead_id: members[lead_id] for lead_id in state.pages[page]})), partition) for page in pages]


def _index(members: Iterable[str], count: int) -> list[set[str]]:
    """The ids of the members in each of `count` pages."""
    pages: list[set[str]] = [set() for _ in range(count)]
    for lead_id in members:
        pages[page_of(lead_id, count)].add(lead_id)
    return pages
