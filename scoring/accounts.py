"""Account roll-up: member (lead) scores combined into an account score with its own ladder.

The stream worker re-keys member score updates by account id, so one account's updates meet in
one place; `AccountState` keeps each member's latest score (by the member's event time, so a
stale update arriving late is ignored) and the account's level.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Iterable, Sequence

import msgspec
from sortedcontainers import SortedList

from scoring.config import Table
from scoring.errors import StateError
from scoring.events import MAX_TIME_MS, Id
from scoring.state import decode, encode, kept_key
from scoring.scales import Scale, parse_scale
from scoring.thresholds import Ladder, Transition, parse_ladder

if TYPE_CHECKING:
    from scoring.engine import ModelRuntime

COMBINE = ("sum", "max", "top_k")
#: Values in account state bytes: version, members, level, crossings (and gone, since it is kept).
LAYOUT_LENGTHS = (5, 4)


@dataclass(frozen=True, slots=True)
class AccountRollup:
    """How member scores combine (`sum`, `max`, or the sum of the `top_k` best) and the
    account's ladder and 0-100 scale."""

    combine: str
    top_k: int
    ladder: Ladder
    scale: Scale

    def score(self, state: AccountState) -> float:
        """The combined score of the account's members: their exact sum (of the `top_k` best),
        rounded once, so it does not depend on the order the updates came in; whole numbers
        as integers."""
        ranked = state.ranked()
        if not ranked:
            return 0
        if self.combine == "max":
            return _whole(ranked[-1])
        if self.combine == "top_k":
            return _rounded(sum(map(_exact, ranked[-self.top_k :])))
        return _rounded(state.exact_sum())

    def level_at(self, state: AccountState, score: float) -> int:
        """Where the ladder puts the account at `score`, from the level it last crossed to. The
        same as that level but after an edit of the roll-up or the ladder, which leaves it out of
        place until its next change that moves its score that way crosses it there (`_cross`);
        from a level the ladder no longer has, where the score reaches from the base, as a lead's
        (`Ladder.level_of`)."""
        return self.ladder.level_after(self.ladder.level_of(state.level, score), score)

    def reasons(self, state: AccountState) -> list[tuple[str, float]]:
        """The members whose scores make the account's (at most TOP_MEMBERS, the best first):
        under `max` and `top_k`, the others' points do not count, so they explain nothing."""
        counted = {"max": 1, "top_k": self.top_k}.get(self.combine, TOP_MEMBERS)
        return state.best(min(counted, TOP_MEMBERS))


#: Every float is a whole multiple of 2**-1074 (the smallest subnormal): scaled by this, member
#: scores add up exactly as integers.
_EXACT = 2**1074


def _exact(score: float) -> int:
    numerator, denominator = score.as_integer_ratio()  # the denominator is a power of 2
    return numerator * (_EXACT // denominator)


def _whole(score: float) -> float:
    """A member's score as an update writes it: an integer when whole (a state written before
    updates were read so keeps it as a float)."""
    return int(score) if score.__class__ is float and score.is_integer() else score


def _rounded(exact: int) -> float:
    whole, rest = divmod(exact, _EXACT)
    return whole if not rest else exact / _EXACT  # int / int is correctly rounded


#: Points beyond this are no lead's: a decoded update must carry a finite score, since an
#: infinite or NaN one would leave its account without a level. A lead's score beyond it (model
#: values are at most 10^9 points each, scoring/config.py) counts as this much.
MAX_MEMBER_POINTS = _MAX_POINTS = 1e12
#: A whole number of points is read back as an integer, as the lead's summary writes it: read as
#: a float, it would show as `67.0` in the account's summary and crossings (README "Topics").
_Points = Annotated[int, msgspec.Meta(ge=-int(_MAX_POINTS), le=int(_MAX_POINTS))] | Annotated[float, msgspec.Meta(ge=-_MAX_POINTS, le=_MAX_POINTS)]


class MemberScore(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """A lead's score in a model as of its newest event, for its account's roll-up. One is made
    per changed lead of an account per batch, and, in a model with `[accounts]`, one more for
    each of its events of the batch that changed its score before its last (the score then, so
    that the account passes through it: `Engine.apply_batch`); it crosses Kafka as a JSON object
    `{"model", "account_id", "lead_id", "score", "time"}`: a struct, built and (de)coded in C.

    `left` (`"left": true`): the lead is no longer a member of this account (it moved to another
    one, was merged into a known lead, or was forgotten); its score stops counting there.

    `revision`: the lead state's (`LeadState.revision`), which orders a lead's updates of one
    event time (a late event's, a decay step's: the time is the lead's newest event's); absent
    (0) from updates written before it was kept.

    `changed_ms` (`"changed"`): when the change it reports happened, where that is later than its
    `time`: a decay step's due time (or, for half-life decay, the due time the score was valued
    at: see `ModelRuntime.decay`), the last of those taken together. It stamps the account crossing the update causes (never
    before the newest member score that crossing counts: `_cross`), which else said that an account went
    cold at the moment of its member's last event; `time` keeps ordering the lead's updates, as a
    late event arriving after the step is still newer news of the lead. Absent (0) otherwise.

    Decoding checks the fields' types and bounds, so an update not written by leadstream is
    refused with the field named (the account stage dead-letters it)."""

    model: Id
    account_id: Id
    lead_id: Id
    score: _Points
    time_ms: Annotated[int, msgspec.Meta(ge=0, lt=MAX_TIME_MS)] = msgspec.field(name="time")
    left: bool = False
    revision: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)] = 0  # as orjson writes it in account states
    changed_ms: Annotated[int, msgspec.Meta(ge=0, lt=MAX_TIME_MS)] = msgspec.field(default=0, name="changed")
    #: A leaving's: the lead it was merged into, whose update takes its points in (`roll_up_all`
    #: takes the two together). Absent otherwise.
    into: Id | None = None

    @property
    def order(self) -> tuple[int, int]:
        """Where the update stands among the lead's: by event time, then revision."""
        return self.time_ms, self.revision

    @property
    def at_ms(self) -> int:
        """When the change it reports happened: its decay's time, else its lead's newest event's."""
        return max(self.time_ms, self.changed_ms)


#: Leavings an account remembers (the most recent), so that a replayed update from before a
#: member left does not bring it back (see `AccountState.update`).
GONE_MEMORY = 256
#: Members from which an account keeps them in order of score to name its best (`best`).
BEST_KEPT_FROM = 256


class AccountState:
    """Members' latest scores (lead id -> [score, time_ms, revision], or [score, time_ms] for
    revision 0), the level and crossing count, and where the latest leavings stood (`gone`:
    digest of the lead id -> [time_ms, revision], or time_ms for revision 0).

    Derived, not stored: the member scores in order and their exact sum, in a large account
    the members in order of score, and the newest member time, built on first use and kept
    current by `update`, so taking an update, naming the best members and dating a crossing cost
    the same however many members the account has (recomputed per update, they cost 330 us an
    update at 20,000 members)."""

    __slots__ = ("members", "level", "crossings", "gone", "_ranked", "_total", "_best", "_newest")

    def __init__(self, members: dict[str, list[float]], level: str, crossings: int, gone: dict[str, Any] | None = None) -> None:
        self.members = members
        self.level = level
        self.crossings = crossings
        self.gone = {} if gone is None else gone
        self._ranked: SortedList[float] | None = None
        self._total = 0  # exact (see `_exact`) once `_ranked` is built
        self._best: SortedList[tuple[float, str]] | None = None
        self._newest: int | None = None

    def ranked(self) -> SortedList[float]:
        """The member scores, lowest first."""
        if self._ranked is None:
            scores = [member[0] for member in self.members.values()]
            self._ranked = SortedList(scores)
            self._total = sum(map(_exact, scores))
        return self._ranked

    def best(self, count: int) -> list[tuple[str, float]]:
        """The `count` best members' (lead id, score), the best first, those of equal scores by
        lead id. A pass over the members while they are few (keeping them in order costs each
        update more than the pass); kept in order, (-score, lead id), from BEST_KEPT_FROM on."""
        if self._best is None:
            if len(self.members) < BEST_KEPT_FROM:
                best = heapq.nsmallest(count, self.members.items(), key=lambda item: (-item[1][0], item[0]))
                return [(lead_id, _whole(member[0])) for lead_id, member in best]
            self._best = SortedList((-member[0], lead_id) for lead_id, member in self.members.items())
        return [(lead_id, _whole(-negated)) for negated, lead_id in self._best[:count]]

    def newest_ms(self) -> int:
        """The latest time of the member scores it holds (their leads' newest events; 0: none)."""
        newest = self._newest
        if newest is None:
            newest = self._newest = int(max((member[1] for member in self.members.values()), default=0))
        return newest

    def exact_sum(self) -> int:
        """The member scores summed exactly, scaled as `_exact` scales one."""
        self.ranked()
        return self._total

    def update(self, member: MemberScore) -> bool:
        """Takes a member's score, or its leaving, unless a later update of the lead is already
        known: of a later time, or of the same time and a later revision (`MemberScore.order`).

        After a worker stopped between writing an account and committing the updates it took,
        they are taken again: each must then find itself known, or the account moved back and
        forth and crossed again, with new crossing ids. So a leaving is remembered too (the last
        GONE_MEMORY, by a digest of the lead id, so a forgotten lead's id is not kept), and the
        revision tells apart two updates of one time (a late event's, a decay step's). An update
        of the same time and revision as the known one (from a state written before revisions
        were kept, or a half-life decay evaluated again later) is taken if its score differs."""
        known = self.members.get(member.lead_id)
        order = member.order
        if member.left:
            self._went(member)
            if known is None or _member_order(known) > order:
                return False
            del self.members[member.lead_id]
            self._unrank(member.lead_id, known[0])
            if known[1] == self._newest:
                self._newest = None  # worked out again when next asked
            return True
        if known is None and self.gone:
            went = self.gone.get(kept_key(member.lead_id))
            if went is not None and _gone_order(went) > order:
                return False  # from before its leaving (one of its very order is the lead back, returned by a merge)
        if known is not None:
            known_order = _member_order(known)
            if known_order > order or (known_order == order and known[0] == member.score):
                return False
            self._unrank(member.lead_id, known[0])
        self.members[member.lead_id] = [member.score, member.time_ms, member.revision] if member.revision else [member.score, member.time_ms]
        if self._ranked is not None:
            self._ranked.add(member.score)
            self._total += _exact(member.score)
        if self._best is not None:
            self._best.add((-member.score, member.lead_id))
        if self._newest is not None and member.time_ms > self._newest:  # a lead's time only grows
            self._newest = member.time_ms
        return True

    def blank(self, base: str) -> bool:
        """No members, no crossing ever made and at `base`: a new account but for the leavings
        it remembers, so one removed finds a member that joins it again as it would have."""
        return not self.members and not self.crossings and self.level == base

    def last_left_ms(self) -> int | None:
        """The time of the latest leaving it remembers (None: none): an account without members
        has had none since."""
        return max((_gone_order(went)[0] for went in self.gone.values()), default=None)

    def _went(self, member: MemberScore) -> None:
        gone, digest = self.gone, kept_key(member.lead_id)
        went = gone.pop(digest, None)
        time_ms, revision = member.order if went is None else max(_gone_order(went), member.order)
        gone[digest] = [time_ms, revision] if revision else time_ms  # the newest last
        if len(gone) > GONE_MEMORY:
            del gone[next(iter(gone))]

    def _unrank(self, lead_id: str, score: float) -> None:
        if self._best is not None:
            self._best.remove((-score, lead_id))
        if self._ranked is not None:
            self._ranked.remove(score)
            self._total -= _exact(score)

    def to_bytes(self) -> bytes:
        return encode((self.members, self.level, self.crossings, self.gone))

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> AccountState:
        return cls.checked(*decode(data, "account", LAYOUT_LENGTHS)[1:])

    @classmethod
    def checked(cls, members: object, level: object, crossings: object, gone: object = None) -> AccountState:
        """The state of these decoded fields (`gone` absent from states written before it was
        kept); StateError when one is of the wrong type."""
        gone = {} if gone is None else gone
        if (members.__class__ is not dict or level.__class__ is not str or crossings.__class__ is not int
                or gone.__class__ is not dict or not all(map(_is_order, gone.values()))):
            raise StateError("account state with a field of the wrong type (members: an object, level: a text, crossings: an "
                             "integer, gone: an object of integer times or [time, revision] pairs)")
        for member in members.values():  # what the roll-up indexes and sorts: a bad one would raise at each update
            if (member.__class__ is not list or len(member) not in (2, 3) or member[0].__class__ not in (int, float)
                    or not -_MAX_POINTS <= member[0] <= _MAX_POINTS or member[1].__class__ is not int
                    or (len(member) == 3 and member[2].__class__ is not int)):
                raise StateError(f"account state with a member that is not [score, time] or [score, time, revision] (a finite "
                                 f"score, integers): {str(member)[:100]}")
        return cls(members, level, crossings, gone)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AccountState) and self.to_bytes() == other.to_bytes()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"AccountState({self.to_bytes().decode()})"


def _member_order(member: list[float]) -> tuple[Any, ...]:
    """A known member's `MemberScore.order` (its revision 0 if it has none)."""
    return (member[1], member[2]) if len(member) == 3 else (member[1], 0)


def _gone_order(went: Any) -> tuple[int, int]:
    """A remembered leaving's `MemberScore.order`: [time, revision], or a time (revision 0)."""
    return (went, 0) if went.__class__ is int else (went[0], went[1])


def _is_order(went: Any) -> bool:
    """Whether a stored leaving is an integer time or [time, revision] (`_gone_order`)."""
    return went.__class__ is int or (went.__class__ is list and len(went) == 2 and all(part.__class__ is int for part in went))


def parse_accounts(table: Table | None, default_scale: Scale, floor: float) -> AccountRollup | None:
    """The [accounts] table; `floor`, the model's, bounds member scores and so (when it is not
    negative) an account's: from 0, which a new account starts at."""
    if table is None:
        return None
    table.check_keys(("combine", "top_k", "base", "base_renamed_from", "hysteresis", "ladder", "zero_at", "hundred_at"))
    combine = table.string("combine", "sum")
    if combine not in COMBINE:
        raise table.error("combine", f"one of {', '.join(COMBINE)}", combine)
    if combine == "top_k":
        top_k = table.integer("top_k", minimum=1)
    elif table.has("top_k"):
        raise table.error("top_k", "no top_k unless combine = \"top_k\"", table.raw("top_k"))
    else:
        top_k = 0
    ladder = parse_ladder(table, 0 if floor >= 0 else None)  # a negative floor's sums have no lowest
    if table.has("zero_at") or table.has("hundred_at"):
        bounds: dict[str, Any] = {k: table.data[k] for k in ("zero_at", "hundred_at") if k in table.data}
        scale = parse_scale(Table(table.file, table.where, bounds), default_scale.hundred_at, default_scale.zero_at)
    else:
        scale = default_scale
    return AccountRollup(combine, top_k, ladder, scale)


#: Members an account summary names, the highest scored first.
TOP_MEMBERS = 5


def summary(runtime: ModelRuntime, account_id: str, state: AccountState, top: int = TOP_MEMBERS) -> dict[str, Any]:
    """What read models show of an account: its score on its 0-100 scale, level, temperature
    and member count, and its `top` best members (`{"lead_id", "score"}`); score fields and
    level are null for a model without `[accounts]`.

    The level is where the score puts it (`AccountRollup.level_at`): the one it crossed to, but
    after an edit of `[accounts]` that the account has not crossed for yet (it does at its next
    change), the stored level beside the score of the new roll-up showed an account at 120
    points `engaged`, below a `buying` line at 80."""
    rollup = runtime.model.accounts
    out: dict[str, Any] = {"account_id": account_id, "model": runtime.name, "score": None, "normalized": None,
                           "level": None, "temperature": None, "members": len(state.members)}
    if rollup is not None:
        score = rollup.score(state)
        out["score"] = round(score, 2)
        out["level"] = rollup.ladder.names[rollup.level_at(state, score)]
        out["normalized"], out["temperature"] = rollup.scale.placed(score, runtime.model.temperature)
    out["top_members"] = [{"lead_id": lead_id, "score": score} for lead_id, score in state.best(top)]
    return out


def by_account(updates: Iterable[MemberScore]) -> dict[tuple[str, str], list[MemberScore]]:
    """Updates grouped by (model, account id), each group in the order given: what an account
    takes together (`roll_up_all`), as the account stage takes one message's."""
    grouped: dict[tuple[str, str], list[MemberScore]] = {}
    for update in updates:
        grouped.setdefault((update.model, update.account_id), []).append(update)
    return grouped


def roll_up_all(runtime: ModelRuntime, account_id: str, state: AccountState | None,
                updates: Sequence[MemberScore]) -> tuple[AccountState, list[Transition]]:
    """Takes the updates into the account in the order the changes happened (whatever order a
    batch put them in), crossing to where the score is after each one, as updates taken one by
    one would: three members climbing in one batch take the account through each line they
    pass, and a line left within its hysteresis band keeps the level reached. A crossing is an
    account transition naming the last member whose update changed the account's score, stamped
    with that update's time, or the newest of the member scores it counts if later (its reasons
    are the members with the most points); it never goes against the way the updates since the
    last crossing moved their members' scores (`_cross`).

    Except a merge's pair: a visitor merged into a lead of the same account leaves it (its
    leaving names the lead, `MemberScore.into`) as the lead's score takes in its points. The
    updates from the one to the other are taken together, then crossed once: crossed after
    each, the account fell without the points (or rose with them counted twice, by the pair's
    times) and crossed back, and both crossings went to the CRM."""
    rollup = runtime.model.accounts
    base = rollup.ladder.names[0] if rollup is not None else ""
    state = AccountState({}, base, 0) if state is None else state
    ordered = sorted(updates, key=_when)
    if rollup is None:
        # A level left from an `[accounts]` removed is no level of the model's: the account is
        # taken out of read models (streams/rollup.py), and one added again starts at its base.
        state.level = ""
        for update in ordered:
            state.update(update)
        return state, []
    if not state.level:  # an `[accounts]` added again: at its base, as a new account
        state.level = base
    held = _merge_pairs(ordered)
    # `crossed`: the score the level was last settled at, by which a level the ladder no longer
    # has is placed (`Ladder.level_of`) before the change that moves it.
    score = crossed = rollup.score(state)
    # The last update that changed the score, else the last that changed the account (a level
    # an edit of the roll-up or the ladder left out of place moves at the account's next change
    # its way).
    moved: MemberScore | None = None
    touched: MemberScore | None = None
    # How much the updates since the last crossing moved their members' scores: which way they
    # moved the account, where its own score did not show it (`_cross`).
    change = 0.0
    out: list[Transition] = []
    for i, update in enumerate(ordered):
        known = state.members.get(update.lead_id)
        if state.update(update):
            touched = update
            change += (0 if update.left else update.score) - (0 if known is None else known[0])
            if (now := rollup.score(state)) != score:
                score, moved = now, update
        if touched is not None and i not in held:
            _cross(runtime, rollup, account_id, state, crossed, score, (score - crossed) or change, moved or touched, out)
            crossed, moved, touched, change = score, None, None, 0.0
    return state, out


def _merge_pairs(ordered: Sequence[MemberScore]) -> set[int]:
    """The places in `ordered` at which the account does not cross: within a merge's pair, from
    the visitor's leaving to its lead's update, whichever comes first, up to the other."""
    if not any(update.into is not None for update in ordered):
        return set()
    last_of = {update.lead_id: i for i, update in enumerate(ordered) if not update.left}
    held: set[int] = set()
    for i, update in enumerate(ordered):
        j = last_of.get(update.into) if update.into is not None else None
        if j is not None:
            held.update(range(min(i, j), max(i, j)))
    return held


def _cross(runtime: ModelRuntime, rollup: AccountRollup, account_id: str, state: AccountState, crossed: float,
           score: float, change: float, mover: MemberScore, out: list[Transition]) -> None:
    """Moves the account's level, settled last at score `crossed`, to where `score` puts it,
    recording the transition if it is a crossing (`Ladder.crossing`), unless that is against the
    way the updates taken moved it (`change`: up if positive, down if negative; the account's
    score, or, where that did not move, under `max` or `top_k`, its members' scores).

    An account in its place is never moved so (a lower score passes no line up); one an edit
    left out of place waits for a change its way. Its place is where the scores it kept put it,
    and an edit that values members anew (a half-life added or shortened) leaves those stale
    until each member's decay reaches it: the first sweep after `half_life` and `[accounts]`
    were added together crossed an account up at one member's decay, at 60.9 with two others' 30
    points each as no decay had touched them, and down again at their decay (34.62), though
    under the new model it never was at 50."""
    ladder = rollup.ladder
    before = ladder.level_of(state.level, crossed)
    after = ladder.level_after(before, score)
    if (after > before and change < 0) or (after < before and change > 0):
        after = before
    crossing = ladder.crossing(state.level, before, after)
    state.level = ladder.names[after]
    if crossing is None:
        return
    state.crossings += 1
    normalized, temperature = rollup.scale.placed(score, runtime.model.temperature)
    out.append(Transition(
        kind="account",
        model=runtime.name,
        # A leaving names no one: it may be an erasure's (`leadstream forget`), whose id must not
        # go out to the CRMs after the lead was forgotten; the reasons name the members left.
        lead_id=None if mover.left else mover.lead_id,
        account_id=account_id,
        sequence=state.crossings,
        from_level=crossing[0],
        to_level=ladder.names[after],
        direction=crossing[1],
        score=round(score, 2),
        normalized=normalized,
        grade=None,
        engagement=None,
        cell=None,
        temperature=temperature,
        # Not before the newest of the scores it counts: a change that reaches the account after
        # a later event of another member (a sweep after downtime or an edit, a late event) was
        # dated when the account had no such score, as at 60.9 a week before 30 of it existed.
        time_ms=max(mover.at_ms, state.newest_ms()),
        reasons=tuple({"rule": "member", "lead_id": lead_id, "points": score} for lead_id, score in rollup.reasons(state)),
        traits={},
    ))


def _when(update: MemberScore) -> tuple[int, bool, str, int]:
    # A leaving before a score of the same time: a visitor merged into a lead leaves as the lead
    # takes its points in, and the crossing names the lead.
    return update.at_ms, not update.left, update.lead_id, update.revision
