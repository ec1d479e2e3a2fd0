"""The account table: each account's states by model, a large account's members in pages.

Why pages: an account's state holds every member's latest score, and members stay (a lead gone
cold still belongs to its company), so a large customer's account only grows. Written whole, an
account of 20,000 members sent 800 KB to the changelog at every batch that moved one of them,
and one of about 400,000 made a record larger than the changelog takes (16 MB): the worker
stopped, and stopped again at every restart.

Layout. The account's value, under its id, frames each model's state as the engine encodes it
(`AccountState.to_bytes`: `[1, members, level, crossings, gone]`) while the model has at most
`split_members` members. Beyond, the model's entry is `[1, count, level, crossings, gone, writes,
key]` (`writes`: how many batches wrote it; `key`: the pages' secret, below) and its members are
in `count` pages: records of their own, on the account's partition, under `<account id> 0xFF
<model> 0xFF <count>/<n>` (0xFF never occurs in UTF-8, so no account's key is a page's), each
`[writes, members, before]`: the entry's `writes` once the batch that wrote the page is written,
the members whose `page_of` is n (lead id -> [score, time, revision]), and what those of them the
batch updated were before it (null: not members). A batch writes the pages of the members it
updated, then the account's value, then again, with an empty `before`, those of its pages whose
`before` names a lead that is no member of them (below). When the members outgrow
`2 * page_members` a page on average, the pages double: a new set of keys is written first, the
value naming it next, and the old set is deleted last.

Why a secret key. Whoever sends events chooses lead and account ids (the collector's `group`
calls take them from any caller), and pages placed by a public hash are easy to fill one at a
time: 17,000 ids of 250 emoji, each with a suffix picked so that its crc32 was 0 modulo 256, all
went to one page of 12.9 MB, and the next write of it went past the changelog's 16 MB, which
stopped the worker at every restart (any public hash gives way to the same search, 2^k tries an
id for 2^k pages). A page is now chosen by a keyed BLAKE2b of the lead id, under a random key
drawn whenever a model's members are (re)paged and kept in its entry, so every worker that
recovers the account places them alike and no sender can aim at a page. Pages hold at most
`2 * page_members` (512) members on average, placed at random whatever the ids: one holds more
than 1,024 with a chance under 10^-85, and 1,024 members of ids of 256 four-byte characters are
1.1 MB, so a page's record, `before` included, at most 3.3 MB: well under the changelog's 16 MB.
Pages placed by crc32, under `<count>.<n>` in an entry without a key, are still read, and the
next batch that writes the account pages its members anew.

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

Why a page is written again. `before` is needed only until the value is written; a page's
record is its latest, which compaction keeps, until a later batch updates a member on it, which
for a quiet account, or one all of whose members left, is never. So a lead that left the account
(moved to another, merged, forgotten: `leadstream forget`) stayed in that record, by its id, its
score and its time, for good, where the account's value keeps only a digest of it (`gone`). Such
a page is written again after the value, with the value's `writes` and no `before` (written then
it is read as it is, so a cut before it changes nothing; the batch rolled up again takes the
leaving again, which names the page again). Members that are updated stay on their page, so a
`before` naming only them is left: writing every page twice would double the stage's writes.
An account all of whose members left is written inline again, its pages deleted after the value
from the last on (empty, they stayed for good, the value naming them); one that has pages no
value names to delete too (`stale`, below) is left paged until its next batch. The account stage
then removes it (streams/rollup.py `_emptied`), by a tombstone of its value, only once it is
inline without stale pages: a tombstone is never read, so pages it left behind would be found by
no one. `remove_at` and `take_due` index the removals due later by their time; `emptied` finds
them again in a recovered table.

Stale pages. A batch cut short can leave pages that no value names, read by no one: an old set
not all deleted, or a new set whose value was not written, when the batch's messages rolled up
again page otherwise (read anew, in other batches), or not at all (the account still inline).
Kept, they stayed in the changelog and in every worker's memory for good. An account read from
the table (after a recovery, or once it is no longer live) looks for them, by the first and
last page of each count of each naming (a few dozen look-ups, no pass over the table), and its
next batch deletes them after its value (and the old set): a cut anywhere in them leaves the
rest to be found and deleted again. An inline account can only have new sets, written from
their first page on and deleted from their last, so it looks for first pages alone.
"""

from __future__ import annotations

import heapq
import zlib
from functools import partial
from hashlib import blake2b
from secrets import token_bytes
from typing import Any, Callable, Iterable, Iterator

import orjson

from scoring import AccountState, MemberScore
from scoring.accounts import LAYOUT_LENGTHS
from scoring.errors import StateError
from scoring.state import decode as decode_values, encode as encode_values, right_sized
from streams.partitioning import partition_for
from streams.stage import LiveTable, Record, TableData, frame, unframe

#: Members a model's entry holds itself (about 40 bytes each in JSON); beyond, pages.
SPLIT_MEMBERS = 1024
#: Members a page holds on average right after the pages are made or doubled; at most twice.
PAGE_MEMBERS = 256
#: Values in a model's entry: the engine's layouts, or pages with their count of writes (and key).
PAGED_LENGTHS = (7, 6, *LAYOUT_LENGTHS)
#: Bytes of a key that places members in pages: as BLAKE2b recommends, at least its output's 8.
KEY_BYTES = 16
#: The largest count of pages looked for among an account's stale sets (2^24 pages of 256
#: members: more than any account holds).
MOST_PAGES = 1 << 24
#: How the entry of a model with no members in its value begins (`AccountState.to_bytes`): what
#: a recovery looks for to index the accounts emptied, without decoding every account.
EMPTY_ENTRY = b"[1,{},"
#: How a keyed set's first page's key ends, at each count (`page_key`).
_FIRST_PAGES = tuple(b"%d/0" % (1 << n) for n in range(1, MOST_PAGES.bit_length()))


class StaleAccount(AccountState):
    """An account state read from the table with `stale`: the keys of pages of the model its
    entry does not name, found as it was read, for its next batch to delete (an inline entry
    without any is read as an AccountState)."""

    __slots__ = ("stale",)

    def __init__(self, members: dict[str, list[float]], level: str, crossings: int, gone: dict[str, Any],
                 stale: list[bytes] | None = None) -> None:
        super().__init__(members, level, crossings, gone)
        self.stale = [] if stale is None else stale


class PagedAccount(StaleAccount):
    """An account state whose members the table keeps in pages: `pages[n]` holds the ids of
    the members in page n (those whose `page_of` is n under `key`; None: pages placed by crc32,
    as written before pages were keyed), `writes` counts the batches that wrote it, and
    `updated` maps each member whose updates it took since it was last encoded to what it was
    before them (None: not a member), so a batch rewrites only their pages, without a pass over
    all the members."""

    __slots__ = ("pages", "writes", "key", "updated")

    def __init__(self, members: dict[str, list[float]], level: str, crossings: int, gone: dict[str, Any],
                 pages: list[set[str]], writes: int, key: bytes | None, stale: list[bytes] | None = None) -> None:
        super().__init__(members, level, crossings, gone, stale)
        self.pages = pages
        self.writes = writes
        self.key = key
        self.updated: dict[str, list[float] | None] = {}

    def update(self, member: MemberScore) -> bool:
        if member.lead_id not in self.updated:
            self.updated[member.lead_id] = self.members.get(member.lead_id)  # replaced, never changed in place
        return super().update(member)


def leaves_no_page(state: AccountState) -> bool:
    """Whether the state's entry, taken out of the table with a tombstone, leaves no page behind:
    it names none, and none that no value names was found (`stale`), since a tombstone is never
    read to find them."""
    return not isinstance(state, PagedAccount) and not (isinstance(state, StaleAccount) and state.stale)


def page_of(lead_id: str, count: int, key: bytes | None) -> int:
    """The page of `count` (a power of two) that holds this member: by a BLAKE2b of its id under
    `key`, which no one without the key can aim (crc32 when None, for pages written before);
    the same in every process, unlike `hash`."""
    data = lead_id.encode("utf-8", "surrogatepass")
    if key is None:
        return zlib.crc32(data) % count
    return int.from_bytes(blake2b(data, digest_size=8, key=key).digest(), "little") % count


def page_key(account_id: str, model: str, count: int, page: int, key: bytes | None) -> bytes:
    """A page's record key; pages placed by crc32 (`key` None) were named `<count>.<n>`, so a
    keyed set of as many pages never writes over them."""
    return b"%b\xff%b\xff%d%b%d" % (account_id.encode(), model.encode(), count, b"." if key is None else b"/", page)


class AccountTable(LiveTable[AccountState]):
    """The account stage's `LiveTable`: a large account's members are read from and written to
    pages (records of their own), and a batch writes an account with `encode` and `keep`.
    `draw_key` draws the key of a new set of pages (tests draw theirs from a seed, so that a
    batch writes the same records at every run)."""

    def __init__(self, table: TableData, changelog: str, partitions: int, max_live: int,
                 split_members: int = SPLIT_MEMBERS, page_members: int = PAGE_MEMBERS,
                 draw_key: Callable[[], bytes] = partial(token_bytes, KEY_BYTES)) -> None:
        super().__init__(table, changelog, partitions, max_live, None)
        self.split_members = split_members
        self.page_members = page_members
        self.draw_key = draw_key
        #: The accounts emptied that wait for their removal: (due time, account id), the soonest
        #: first, and when each is due (one entry an account, the soonest asked for).
        self._removals: list[tuple[int, str]] = []
        self._due: dict[str, int] = {}

    def decoded(self, key: str, value: bytes) -> dict[str, AccountState]:
        states: dict[str, AccountState] = {}
        for model, raw in unframe(value).items():
            _, members, *rest = decode_values(raw, "account", PAGED_LENGTHS)
            if members.__class__ is not int or members < 1:  # the members themselves, not a number of pages
                if len(rest) > 3:
                    raise StateError(f"account {key!r} in model {model!r}: an entry of members with a count of writes, "
                                     "which only an entry of pages has")
                state = AccountState.checked(members, *rest)
                stale = self._unnamed_sets(key, model)
                states[model] = StaleAccount(state.members, state.level, state.crossings, state.gone, stale) if stale else state
                continue
            secret = _key(rest.pop(), key, model) if len(rest) == 5 else None  # written before pages were keyed: by crc32
            writes = rest.pop() if len(rest) == 4 else 0  # written before `writes` was kept: none
            if writes.__class__ is not int:
                raise StateError(f"account {key!r} in model {model!r}: a count of writes that is not an integer")
            count = members
            members, pages = self._read_pages(key, model, count, writes, secret)
            state = AccountState.checked(members, *rest)
            states[model] = PagedAccount(state.members, state.level, state.crossings, state.gone, pages, writes, secret,
                                         self._stale_pages(key, model, count, secret))
        return states

    def state_keys(self) -> Iterator[bytes]:
        return (raw_key for raw_key in list(self.recovered) if b"\xff" not in raw_key)

    def __len__(self) -> int:
        return sum(1 for _ in self.state_keys())

    def remove_at(self, account_id: str, due_ms: int) -> None:
        """Asks for the account to be looked at again for its removal once the time is `due_ms`
        (`take_due`): it may have members again by then, or have been emptied later."""
        if self._due.get(account_id, due_ms + 1) > due_ms:
            self._due[account_id] = due_ms
            heapq.heappush(self._removals, (due_ms, account_id))

    def take_due(self, now_ms: int) -> list[str]:
        """The accounts whose removal is due at `now_ms`, taken from the index: a look at its
        soonest entry when none is, so every batch may ask."""
        removals, due = self._removals, []
        while removals and removals[0][0] <= now_ms:
            due_ms, account_id = heapq.heappop(removals)
            if self._due.get(account_id) == due_ms:  # else asked again sooner, and taken then
                del self._due[account_id]
                due.append(account_id)
        return due

    def emptied(self, partitions: set[int]) -> Iterator[tuple[str, str, AccountState]]:
        """The accounts on these partitions with a model whose value holds no members (those
        paged are made inline when emptied: `encode`), as (account id, model, its state), for a
        recovery to index their removal. The values holding `EMPTY_ENTRY` are listed in one
        pass (0.5 s for a million accounts here), then only their entries that begin with it are
        decoded, one at a time (not kept live, nor looked at for stale pages, which their next
        batch does), so the caller may let other work run between them."""
        found = [raw_key for raw_key, value in self.recovered.items() if EMPTY_ENTRY in value and b"\xff" not in raw_key]
        for raw_key in found:
            value = self.recovered.get(raw_key)
            account_id = raw_key.decode()
            if value is None or partition_for(account_id, self.partitions) not in partitions:
                continue  # gone meanwhile (a rebalance), or not owned
            try:
                for model, raw in unframe(value).items():
                    if raw.startswith(EMPTY_ENTRY):
                        yield account_id, model, AccountState.from_bytes(raw)
            except StateError:
                continue  # its updates are dead-lettered until it is repaired

    def encode(self, account_id: str, partition: int, states: dict[str, AccountState]) -> tuple[dict[str, AccountState], list[Record]]:
        """The records that store these states, in the order they must be sent, and the states
        to keep (a model's that passes `split_members` becomes a `PagedAccount`; none: the
        account is removed, a tombstone). Nothing is kept yet, so an encoding that raises leaves
        the table as it was (but for the pages' `updated`, whose states are dropped then)."""
        if not states:  # only states that leave no page are taken out (`leaves_no_page`): none to delete
            return states, [(self.changelog, account_id.encode(), None, partition)]
        if all(state.__class__ is AccountState and len(state.members) <= self.split_members for state in states.values()):
            return states, [(self.changelog, account_id.encode(), frame({model: state.to_bytes() for model, state in states.items()}), partition)]
        kept: dict[str, AccountState] = {}
        entries: dict[str, bytes] = {}
        pages_first: list[Record] = []  # a new set, read only once the value names it; pages ahead of the value
        cleared: list[Record] = []  # pages whose `before` names a lead that left, again without it, after the value
        deleted: list[Record] = []
        for model, state in states.items():
            stale = state.stale if isinstance(state, StaleAccount) else []
            if isinstance(state, PagedAccount) and not state.members and state.key is not None and not stale:
                # Every member left: its pages would stay in the changelog for good, for nothing. Inline
                # again, and they go after the value, from the last on: an inline account's stale set is
                # found by its first page.
                deleted += [(self.changelog, page_key(account_id, model, len(state.pages), page, state.key), None, partition)
                            for page in reversed(range(len(state.pages)))]
                state = AccountState(state.members, state.level, state.crossings, state.gone)
            if not isinstance(state, PagedAccount) and len(state.members) <= self.split_members:
                kept[model], entries[model] = state, state.to_bytes()
                if isinstance(state, StaleAccount):  # the entry names no set: all are stale
                    deleted += [(self.changelog, raw_key, None, partition) for raw_key in stale]
                    state.stale = []
                continue
            count = len(state.pages) if isinstance(state, PagedAccount) else 0
            writes = (state.writes if isinstance(state, PagedAccount) else 0) + 1
            key = state.key if isinstance(state, PagedAccount) else None
            if key is None or len(state.members) > 2 * self.page_members * count:  # pages (keyed, if placed by crc32), more pages
                old_key, key = key, self.draw_key()
                paged = PagedAccount(state.members, state.level, state.crossings, state.gone,
                                     _index(state.members, self._count(len(state.members)), key), writes, key)
                pages_first += self._pages(account_id, partition, model, paged, {page: {} for page in range(len(paged.pages))})
                deleted += [(self.changelog, page_key(account_id, model, count, page, old_key), None, partition) for page in range(count)]
            else:
                assert isinstance(state, PagedAccount)
                paged = state
                before: dict[int, dict[str, list[float] | None]] = {}
                left: set[int] = set()  # pages whose `before` names a lead that is no member of them
                paged.writes = writes
                for lead_id, was in paged.updated.items():
                    page = page_of(lead_id, count, key)
                    before.setdefault(page, {})[lead_id] = was
                    if lead_id in paged.members:
                        paged.pages[page].add(lead_id)
                    else:
                        paged.pages[page].discard(lead_id)
                        left.add(page)
                paged.updated.clear()
                pages_first += self._pages(account_id, partition, model, paged, dict(sorted(before.items())))
                cleared += self._pages(account_id, partition, model, paged, {page: {} for page in sorted(left)})
            if stale:  # after the old set: pages no value names are never read, so deleted in any cut alike
                named = page_key(account_id, model, len(paged.pages), 0, key)[:-1]  # "<count>/": the set the value names
                deleted += [(self.changelog, raw_key, None, partition) for raw_key in stale if not raw_key.startswith(named)]
                paged.stale = []
            kept[model], entries[model] = paged, encode_values((len(paged.pages), paged.level, paged.crossings, paged.gone, paged.writes,
                                                                key.hex()))
        value: Record = (self.changelog, account_id.encode(), frame(entries), partition)
        return kept, [*pages_first, value, *cleared, *deleted]

    def keep(self, account_id: str, states: dict[str, AccountState], records: list[Record]) -> list[Record]:
        """Keeps `states` as the account's and `records` (from `encode`) in the table; returns the
        records, for the caller to send once what the change caused is durable."""
        for _, raw_key, value, partition in records:
            if value is None:
                self.table.delete(raw_key)
            else:
                self.table.write(raw_key, value, partition)
        if states:
            self._keep(account_id, states)
        else:
            self.live.pop(account_id, None)
        return records

    def _read_pages(self, account_id: str, model: str, count: int, writes: int,
                    key: bytes | None) -> tuple[dict[str, Any], list[set[str]]]:
        """The members in the account's `count` pages (placed under `key`) as of the entry's
        `writes`, and each page's member ids."""
        members: dict[str, Any] = {}
        pages: list[set[str]] = []
        for page in range(count):
            where = f"account {account_id!r} in model {model!r}: page {page} of {count}"
            raw = self.recovered.get(page_key(account_id, model, count, page, key))
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
            if part.__class__ is not dict or any(page_of(lead_id, count, key) != page for lead_id in part):
                raise StateError(f"{where} is not an object of the members that belong in it")
            members.update(part)
            pages.append(set(part))
        return members, pages

    def _unnamed_sets(self, account_id: str, model: str) -> list[bytes]:
        """`_stale_pages` of a model whose entry holds its members (names no pages): only new
        sets a batch cut short left as it paged them, which keep their first page until the
        last is deleted, so first pages are looked for (24 look-ups, ~2 us; the full search
        takes ~25 us, and most accounts are inline) before the full search."""
        prefix = b"%b\xff%b\xff" % (account_id.encode(), model.encode())
        recovered = self.recovered
        if not any(prefix + first in recovered for first in _FIRST_PAGES):
            return []
        return self._stale_pages(account_id, model, 0, None)

    def _stale_pages(self, account_id: str, model: str, count: int, key: bytes | None) -> list[bytes]:
        """The keys of the model's pages in the table that its entry (`count` pages placed under
        `key`; 0: none) does not name, in the order to delete them: sets a batch cut short left
        (the old set of a doubling or of pages placed by crc32, not yet all deleted; a new set
        whose value was not written, when the batch rolled up again paged otherwise or not at
        all). Any page of such a set comes with its first or its last: a new set is written
        from its first page on, an old one deleted from its first on, a set with its first page
        deleted from its last on and any other from its first, so a set is found by those two
        at each count (and a set of an inline account, always new, by its first)."""
        stale: list[bytes] = []
        size = 2
        while size <= MOST_PAGES:
            for placed in (b"", None):  # keyed, `<size>/<n>` under any key, or by crc32, `<size>.<n>`
                if size == count and (placed is None) == (key is None):
                    continue  # the set the entry names
                first, last = (page_key(account_id, model, size, page, placed) for page in (0, size - 1))
                if first in self.recovered or last in self.recovered:
                    found = [name for name in (page_key(account_id, model, size, page, placed) for page in range(size))
                             if name in self.recovered]
                    stale += found[::-1] if found[0] == first else found
            size *= 2
        return stale

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
        return [(self.changelog, page_key(account_id, model, count, page, state.key),
                 right_sized(orjson.dumps((writes, {lead_id: members[lead_id] for lead_id in state.pages[page]}, was))), partition)
                for page, was in before.items()]


def _index(members: Iterable[str], count: int, key: bytes) -> list[set[str]]:
    """The ids of the members in each of `count` pages placed under `key`."""
    pages: list[set[str]] = [set() for _ in range(count)]
    for lead_id in members:
        pages[page_of(lead_id, count, key)].add(lead_id)
    return pages


def _key(raw: object, account_id: str, model: str) -> bytes:
    """The key that placed a model's pages, from its entry's hex text."""
    if isinstance(raw, str) and len(raw) == 2 * KEY_BYTES:
        try:
            return bytes.fromhex(raw)
        except ValueError:
            pass
    raise StateError(f"account {account_id!r} in model {model!r}: a key of pages that is not {2 * KEY_BYTES} hex digits")
