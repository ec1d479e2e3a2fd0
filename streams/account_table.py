"""The account table: each account's states by model, a large account's members in pages.

Why pages: an account's state holds every member's latest score, and members stay (a lead gone
cold still belongs to its company), so a large customer's account only grows. Written whole, an
account of 20,000 members sent 800 KB to the changelog at every batch that moved one of them,
and one of about 400,000 made a record larger than the changelog takes (16 MB): the worker
stopped, and stopped again at every restart.

Layout. The account's value, under its id, frames each model's state as the engine encodes it
(`AccountState.to_bytes`: `[1, members, level, crossings, gone]`) while the model has at most
`split_members` members. Beyond, the model's entry is `[1, count, level, crossings, gone, writes]`
(`writes`: how many batches wrote it) and its members are in `count` pages: records of their own,
on the account's partition, under `<account id> 0xFF <model> 0xFF <count>.<n>` (0xFF never occurs
in UTF-8, so no account's key is a page's), each `[writes, members, before]`: the entry's
`writes` once the batch that wrote the page is written, the members whose `page_of` is n (lead id
-> [score, time, revision]), and what those of them the batch updated were before it (null: not
members). A batch writes the pages of the members it updated, then the account's value. When the
members outgrow `2 * page_members` a page on average, the pages double: a new set of keys is
written first, the value naming it next, and the old set is deleted last.

Why that order survives a crash anywhere between the records (the batch's input is read and
rolled up again, since offsets are committed after its records are acknowledged, in order on
the one partition, and a batch's records are sent only once the batch before's are): a page
written before its value has a `writes` beyond the value's, and is read as it was before the
batch (`before`), so the batch is rolled up again from the state it was first rolled up from,
crossing as it did, with the same crossing ids; a new set of pages is never read before the
value naming it is written, and then it is complete. (Written the other way round, a value
already at the batch's level over pages still before it made the updates taken again cross
back and forth, with new crossing ids.) Pages of the object layout, `{lead id: member}`, are
read as written before `writes` was kept.
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
#: Values in a model's entry: the engine's layouts, or pages with their count of writes.
PAGED_LENGTHS = (6, *LAYOUT_LENGTHS)


class PagedAccount(AccountState):
    """An account state whose members the table keeps in pages: `pages[n]` holds the ids of
    the members in page n (those whose `page_of` is n), `writes` counts the batches that wrote
    it, and `updated` maps each member whose updates it took since it was last encoded to what
    it was before them (None: not a member), so a batch rewrites only their pages, without a
    pass over all the members."""

    __slots__ = ("pages", "writes", "updated")

    def __init__(self, members: dict[str, list[float]], level: str, crossings: int, gone: dict[str, Any],
                 pages: list[set[str]], writes: int) -> None:
        super().__init__(members, level, crossings, gone)
        self.pages = pages
        self.writes = writes
        self.updated: dict[str, list[float] | None] = {}

    def update(self, member: MemberScore) -> bool:
        if member.lead_id not in self.updated:
            self.updated[member.lead_id] = self.members.get(member.lead_id)  # replaced, never changed in place
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
            _, members, *rest = decode_values(raw, "account", PAGED_LENGTHS)
            if members.__class__ is not int or members < 1:  # the members themselves, not a number of pages
                if len(rest) == 4:
                    raise StateError(f"account {key!r} in model {model!r}: an entry of members with a count of writes, "
                                     "which only an entry of pages has")
                states[model] = AccountState.checked(members, *rest)
                continue
            writes = rest.pop() if len(rest) == 4 else 0  # written before `writes` was kept: none
            if writes.__class__ is not int:
                raise StateError(f"account {key!r} in model {model!r}: a count of writes that is not an integer")
            members, pages = self._read_pages(key, model, members, writes)
            state = AccountState.checked(members, *rest)
            states[model] = PagedAccount(state.members, state.level, state.crossings, state.gone, pages, writes)
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
        pages_first: list[Record] = []  # a new set, read only once the value names it; pages ahead of the value
        deleted: list[Record] = []
        for model, state in states.items():
            if not isinstance(state, PagedAccount) and len(state.members) <= self.split_members:
                kept[model], entries[model] = state, state.to_bytes()
                continue
            count = len(state.pages) if isinstance(state, PagedAccount) else 0
            writes = (state.writes if isinstance(state, PagedAccount) else 0) + 1
            if len(state.members) > 2 * self.page_members * count:  # (more) pages
                paged = PagedAccount(state.members, state.level, state.crossings, state.gone,
                                     _index(state.members, self._count(len(state.members))), writes)
                pages_first += self._pages(account_id, partition, model, paged, {page: {} for page in range(len(paged.pages))})
                deleted += [(self.changelog, page_key(account_id, model, count, page), None, partition) for page in range(count)]
            else:
                assert isinstance(state, PagedAccount)
                paged = state
                before: dict[int, dict[str, list[float] | None]] = {}
                paged.writes = writes
                for lead_id, was in paged.updated.items():
                    page = page_of(lead_id, count)
                    before.setdefault(page, {})[lead_id] = was
                    if lead_id in paged.members:
                        paged.pages[page].add(lead_id)
                    else:
                        paged.pages[page].discard(lead_id)
                paged.updated.clear()
                pages_first += self._pages(account_id, partition, model, paged, dict(sorted(before.items())))
            kept[model], entries[model] = paged, encode_values((len(paged.pages), paged.level, paged.crossings, paged.gone, paged.writes))
        value: Record = (self.changelog, account_id.encode(), frame(entries), partition)
        return kept, [*pages_first, value, *deleted]

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

    def _read_pages(self, account_id: str, model: str, count: int, writes: int) -> tuple[dict[str, Any], list[set[str]]]:
        """The members in the account's `count` pages as of the entry's `writes`, and each
        page's member ids."""
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
            if part.__class__ is list:  # [writes, members, before]
                if len(part) != 3 or part[0].__class__ is not int or part[1].__class__ is not dict or part[2].__class__ is not dict:
                    raise StateError(f"{where} is not [writes, members, members before]")
                page_writes, part, before = part
                if page_writes > writes:  # written ahead of the value, which the batch did not reach: as before it
                    for lead_id, was in before.items():
                        if was is None:
                            part.pop(lead_id, None)
                        else:
                            part[lead_id] = was
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

    def _pages(self, account_id: str, partition: int, model: str, state: PagedAccount,
               before: dict[int, dict[str, list[float] | None]]) -> list[Record]:
        """The records of the pages `before` names, each with what its updated members were."""
        count, members, writes = len(state.pages), state.members, state.writes
        return [(self.changelog, page_key(account_id, model, count, page),
                 right_sized(orjson.dumps((writes, {lead_id: members[lead_id] for lead_id in state.pages[page]}, was))), partition)
                for page, was in before.items()]


def _index(members: Iterable[str], count: int) -> list[set[str]]:
    """The ids of the members in each of `count` pages."""
    pages: list[set[str]] = [set() for _ in range(count)]
    for lead_id in members:
        pages[page_of(lead_id, count)].add(lead_id)
    return pages
