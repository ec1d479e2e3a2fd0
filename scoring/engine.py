"""The engine: events in, lead states, transitions and account updates out. Pure: no I/O, no
clock (every time is passed in), no Kafka.

`Engine.apply_batch` takes the events of many leads and models (a Kafka batch) and a function
to read stored states; it returns only the states it changed, so the worker writes each changed
state once per batch. Results do not depend on how events are cut into batches, and an event
applied twice (same event id, within the bounds documented in scoring/state.py) changes nothing:
the worker relies on both for at-least-once redelivery.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from scoring import explain as explaining
from scoring.accounts import MAX_MEMBER_POINTS, TOP_MEMBERS, AccountState, MemberScore, roll_up_all
from scoring.accounts import summary as account_summary
from scoring.decay import HalfLifeDecay, StepDecay
from scoring.errors import ModelError
from scoring.events import PROFILE_TYPES, Event, Rejection, parse_event, parse_message
from scoring.fit import FitRule
from scoring.model import Model, check_names, load_directory
from scoring.compiler import CHANGED as _CHANGED
from scoring.compiler import COUNTED as _COUNTED
from scoring.compiler import DUPLICATE as _DUPLICATE
from scoring.compiler import LATE as _LATE
from scoring.compiler import compile_appliers
from scoring.renames import adopt_renamed
from scoring.repeat import Window, adopt_seen, drop_closed, window_position
from scoring.rules import Matcher, compile_matcher
from scoring.state import LeadState
from scoring.thresholds import Transition

GetState = Callable[[str, str], "LeadState | None"]
#: See `Engine.apply_batch`: (model, lead id), the changed state, whether its summary changed.
Settled = Callable[[tuple[str, str], LeadState, bool], None]

_NO_PROPERTIES: dict[str, Any] = {}

#: Sets of trait values whose fit rules a model remembers (then it starts over).
_FIT_MEMO = 16384

#: The history's label of decay points an event that arrived late gave back.
GIVEN_BACK = "decay given back (an event before it arrived late)"

#: Half-life: a lead in an account is due again when decay has taken this share of the
#: behaviour points it was last valued at (and its account last told), so that its account's
#: roll-up follows its decay, not only its crossings; while that share is at least
#: _MEMBER_DECAY_POINTS. So an account overstates a member's points by less than a tenth, or
#: 1 point, and a lead sends about 22 updates per tenfold of decay after its last event.
_MEMBER_DECAY_SHARE = 0.1
_MEMBER_DECAY_POINTS = 0.1


@dataclass(frozen=True, slots=True)
class Late:
    """An event beyond the allowed lateness of `models`, which counted it and did not score it.
    Models with a longer lateness may have scored it: `scored` says whether any did."""

    event: Event
    models: tuple[str, ...]
    scored: bool


@dataclass(slots=True)
class BatchResult:
    """What one batch changed. `states` holds only changed states, keyed (model, lead id)."""

    states: dict[tuple[str, str], LeadState] = field(default_factory=dict)
    #: Threshold crossings in the order they happened within each lead's event sequence.
    transitions: list[Transition] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    #: Events beyond the allowed lateness of one or more models they were routed to.
    late: list[Late] = field(default_factory=list)
    #: The score of every changed state that belongs to an account, whether or not the batch
    #: changed it; before it, a `left` update for each event of the batch that moved the lead out
    #: of an account, dated and numbered as that event left the state (so an account it moved
    #: back to in the batch loses it in between), an update for decay an event brought forward
    #: that was due before it (`ModelRuntime._decayed`), dated at its due time, and, in a model
    #: with `[accounts]`, the member's score after each of its events of the batch that changed
    #: it but its last (the score it had before the next one, in the account it was in then), so
    #: that each account passes through each score it had there, and loses it when it moved, as
    #: when the events come in batches of one (`leadstream score`).
    #: A worker killed after sending a batch's updates, before its states were durable, told the
    #: accounts of scores and moves its successor does not know of, as it scores the same events
    #: again in other batches: these updates are what puts each account right again.
    account_updates: list[MemberScore] = field(default_factory=list)
    #: Events no model's filter took (their product matches no model): read, not scored.
    unrouted: list[Event] = field(default_factory=list)
    #: Events of a type the models they are routed to do not know (no rule scores it, and
    #: their `unscored_types` do not list it): refused, `Engine.unknown_type` says why.
    unknown_type: list[Event] = field(default_factory=list)
    #: The keys of `states` whose summary (`Engine.summary`: score and scales, level, top
    #: reasons, last activity, account) the batch's events changed, and leads new to the
    #: table (their first summary); the other changed states
    #: differ only in what a summary does not show (remembered event ids, window counters,
    #: occurrence counts), so a caller publishing summaries can skip them. Decay between
    #: events is not a change here: `Engine.next_due_ms` says when to evaluate it.
    score_changed: set[tuple[str, str]] = field(default_factory=set)


class ModelRuntime:
    """One model built for scoring: rules compiled per event type, limits precomputed.

    Methods update the `LeadState` they are given in place and append the transitions they
    cause to `out`.
    """

    __slots__ = (
        "model", "name", "appliers", "apply_other", "fit_match", "ladder", "lateness_ms", "floor", "ceiling",
        "remember", "history", "keep_traits", "steps", "half_life", "windows", "level_index", "up", "down",
        "empty_fit", "empty_found", "first_level", "first_idle_ms", "history_keep", "history_trim", "level_names", "fit_keys", "fit_domain_keys", "classify", "_fit_memo", "labels_memo",
        "known_types", "limits", "seen_keys", "renames", "member_decay_ms", "score_lines", "decayed", "told", "rolls_up",
    )  # fmt: skip

    def __init__(self, model: Model) -> None:
        self.model = model
        self.name = model.name
        classify = model.domains.classify
        self.fit_match: Matcher | None = (
            compile_matcher(((r, r.conditions) for r in model.fit_rules), classify) if model.fit_rules else None
        )
        # Which fit rules hold depends only on the traits they read: on the value (and type)
        # of most, on the domain class alone of those only tested with `domain` (an e-mail
        # address is unique per lead, its class is one of four).
        read = {c.key for rule in model.fit_rules for c in rule.conditions}
        by_domain = {c.key for rule in model.fit_rules for c in rule.conditions if c.op == "domain"}
        by_domain -= {c.key for rule in model.fit_rules for c in rule.conditions if c.op != "domain"}
        self.fit_keys = tuple(sorted(read - by_domain))
        self.fit_domain_keys = tuple(sorted(by_domain))
        self.classify = classify
        self._fit_memo: dict[tuple[Any, ...], tuple[tuple[FitRule, ...], float, list[tuple[float, str, float]]]] = {}
        #: (fit, behaviour, their types) -> labels, see scoring.explain
        self.labels_memo: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        self.ladder = model.ladder
        #: lines no score is shown rounded across, see scoring.explain
        self.score_lines = explaining.score_lines(self)
        self.level_index = model.ladder.index
        self.level_names = model.ladder.names
        self.up = model.ladder.up
        self.down = model.ladder.down
        self.lateness_ms = model.lateness_ms
        self.floor = model.floor
        #: What a lead without traits meets (a new state's, until traits arrive).
        self.empty_found = self._fit({})
        self.empty_fit = self.empty_found[1]
        self.first_level = self.ladder.names[self.ladder.level_after(0, max(self.empty_fit, self.floor))]
        if self.first_level != self.ladder.names[0]:  # parse_ladder saw to the rest: fit points lift it
            raise ModelError(f"{model.file}: [thresholds], field 'ladder[1].at': expected a score above the "
                             f"{self.empty_fit:g} fit points a lead without traits has (from the [[fit]] rules it meets), else "
                             f"every lead is '{self.first_level}' from the start and no crossing into it reaches the CRM, "
                             f"got {self.ladder.at[1]:g}")
        self.ceiling = float("inf") if model.max_points is None else model.max_points
        #: rule name -> its max_points, for the rules that have one
        self.limits = {rule.name: rule.max_points for rule in model.rules if rule.max_points is not None}
        #: rule name (and earlier names) -> its seen_key, and seen_key -> itself, for the rules with `once_per`: where
        #: a state keeps the values they de-duplicate, and where one of an earlier version kept them (scoring.repeat.adopt_seen)
        self.seen_keys = {
            name: rule.seen_key
            for rule in model.rules if rule.seen_key is not None for name in (rule.name, *rule.renamed_from, rule.seen_key)
        }
        #: earlier rule name -> the rule's name now (see scoring.renames)
        self.renames = {old: rule.name for rule in model.rules for old in rule.renamed_from}
        self.remember = model.remember_events
        self.history = model.history
        # The flat history list (LeadState.history) is trimmed to its last `history` changes
        # once it holds twice as many.
        self.history_keep = 3 * model.history
        self.history_trim = 6 * model.history
        self.keep_traits = model.keep_traits
        self.steps = model.decay if isinstance(model.decay, StepDecay) else None
        self.first_idle_ms = self.steps.steps[0].idle_ms if self.steps is not None else 0
        self.half_life = model.decay if isinstance(model.decay, HalfLifeDecay) else None
        #: Half-life: the time in which decay takes _MEMBER_DECAY_SHARE of the behaviour points.
        self.member_decay_ms = (
            0 if self.half_life is None else math.ceil(self.half_life.half_life_ms * -math.log2(1 - _MEMBER_DECAY_SHARE))
        )
        #: Account updates of decay the batch's events brought forward (`_decayed`), which
        #: `Engine.apply_batch` takes into its result: the generated code cannot return them.
        self.decayed: list[MemberScore] = []
        #: lead id -> the update its account was last told within the batch (`tell_account`), or
        #: of decay its event brought forward (`_decayed`): a score between two of its events
        #: that equals the one before still has to be told after such a one.
        self.told: dict[str, MemberScore] = {}
        #: Whether member scores roll up into account levels (`[accounts]`): only then does an
        #: account need a member's scores within a batch, not only its last.
        self.rolls_up = model.accounts is not None
        windows: dict[str, Window] = {}
        for rule in model.rules:
            if rule.cap is not None:
                windows[rule.cap_key] = rule.cap.window
            if rule.bonus is not None:
                windows[rule.bonus_key] = rule.bonus.window
        self.windows = windows
        #: event type -> its compiled apply function, and the one for types no rule scores
        self.appliers, self.apply_other = compile_appliers(self)
        #: The event types the model reads (None: every type); see BatchResult.unknown_type.
        self.known_types = None if model.unscored_types is None else PROFILE_TYPES | model.unscored_types | self.appliers.keys()

    # -- one lead --------------------------------------------------------------------------

    def new_state(self) -> LeadState:
        state = LeadState.new(self.first_level, self.empty_fit)
        state.fit_found = self.empty_found
        return state

    def score(self, state: LeadState) -> float:
        score = state.behaviour + state.fit
        return score if score > self.floor else self.floor

    def fit_of(self, state: LeadState, time_ms: int | None = None,
               refit: bool = False) -> tuple[tuple[FitRule, ...], float, list[tuple[float, str, float]]]:
        """The fit rules the lead's traits meet (in model order), their points, and the
        (-|points|, name, points) sort items of those with points (for reasons); remembered in
        the state until its traits change.

        Worked out again, they also bring the state's fit points to theirs, recording the change
        in its history at `time_ms` (None: the caller records it, or a read does not). Traits
        change them, and so does an edit of the model's [[fit]] rules: a state written before
        the edit is read back with `fit_found` unset, and its first use under the new model
        revises it. That first use also adopts what the state keeps under earlier names
        (`adopt`). `refit`: the state's traits changed (`_merge_traits`), so they are matched again."""
        found = state.fit_found
        if found is None or refit:
            if found is None:
                self.adopt(state)
            found = state.fit_found = self._fit(state.traits)
            if found[1] != state.fit:
                if time_ms is not None:
                    state.record(time_ms, found[1] - state.fit, "fit", self.history)
                state.fit = found[1]
        return found

    def adopt(self, state: LeadState) -> None:
        """Moves what a state read back keeps under names the model no longer uses for it: the
        entries of rules renamed since (`renamed_from`, scoring.renames), its level's earlier
        name (no crossing: scoring.thresholds), and the `once_per` values an earlier version
        kept under rule names, dropping those no rule de-duplicates now (scoring.repeat.adopt_seen)."""
        if self.renames:
            adopt_renamed(state, self.renames)
        if self.ladder.renamed:
            state.level = self.ladder.renamed.get(state.level, state.level)
        if state.seen:
            adopt_seen(state, self.seen_keys)

    def revises(self, state: LeadState) -> bool:
        """Whether the state's first use under this model changes what it shows: fit points the
        [[fit]] rules give otherwise now, ledger entries of rules renamed since, or its level's
        earlier name."""
        return state.fit_found is None and (
            self._fit(state.traits)[1] != state.fit or any(old in state.ledger for old in self.renames)
            or state.level in self.ladder.renamed
        )

    def current_fit(self, state: LeadState) -> float:
        """The fit points the model's [[fit]] rules give the state now, without changing it: its
        own, unless it was written before the rules were edited and not used since."""
        return state.fit if state.fit_found is not None else self._fit(state.traits)[1]

    def _fit(self, traits: dict[str, Any]) -> tuple[tuple[FitRule, ...], float, list[tuple[float, str, float]]]:
        """Fit rules met and their points, remembered by what they read of the traits: values
        with their types (True, 1 and 1.0 are told apart), and domain classes of the traits
        only `domain` tests; at most _FIT_MEMO such keys."""
        if self.fit_match is None:
            return (), 0, []
        values = tuple(map(traits.get, self.fit_keys))
        key: tuple[Any, ...] | None = (
            values + tuple(map(type, values)) + tuple(map(self.classify, map(traits.get, self.fit_domain_keys)))
        )
        try:
            found = self._fit_memo.get(key)  # type: ignore[arg-type]
        except TypeError:  # a list or map trait value: not hashable
            key, found = None, None
        if found is None:
            matched: tuple[FitRule, ...] = tuple(self.fit_match(_NO_PROPERTIES, traits))
            fit = sum(rule.points for rule in matched)
            # The reasons' points as the explanation's fit rows show them, adding up to the fit points shown.
            items = [(-abs(points), name, points) for name, points in explaining.fit_parts(self, matched, fit) if points]
            found = (matched, fit, items)
            if key is not None:
                if len(self._fit_memo) >= _FIT_MEMO:
                    self._fit_memo.clear()
                self._fit_memo[key] = found
        return found

    def _step_decay(self, state: LeadState, time_ms: int, activity: bool, moves: bool, level: int, lead_id: str,
                    out: list[Transition], watermark_ms: int | None = None) -> int:
        """Brings step decay to `time_ms` before an event at that time (`activity`: it matched a
        rule with positive points; `moves`: one with points of either sign); returns the level.
        Steps it takes are told to the lead's account (`_decayed`) when `watermark_ms` is given,
        the lead's newest event before this one (a merge tells its account once, after).

        The steps taken already that were due after the event are given back: for good after
        an activity later than the last (the lead was not idle that long); otherwise, with no
        crossing, to be taken again after the event's points (`_retake`)."""
        steps = self.steps
        assert steps is not None
        if state.steps_taken and moves:
            if activity and time_ms > state.last_activity_ms:
                level = self._give_back(state, time_ms, level, lead_id, out)
            else:
                given = steps.give_back(state, time_ms)
                if given:
                    state.record(time_ms, given, GIVEN_BACK, self.history)
        due = steps.due_ms(state)
        if due is not None and due <= time_ms:
            for due_ms, points in steps.take(state, time_ms, self.floor):
                self._took(state, due_ms, points)
                level = self._settle(state, level, lead_id, due_ms, out)
            if watermark_ms is not None:
                self._decayed(state, lead_id, watermark_ms, due_ms)
        return level

    def _took(self, state: LeadState, due_ms: int, points: float) -> None:
        """A decay step in the lead's history, unless the floor let it take nothing (or less than
        the hundredth the history keeps, which reads 0): those filled the history's few places
        with `decay 0` rows, pushing out the changes that explain a score. A rule's occurrence
        that a ceiling or floor leaves nothing is left out alike (scoring.compiler)."""
        if round(points, 2):
            state.record(due_ms, points, "decay", self.history)

    def _retake(self, state: LeadState, until_ms: int) -> None:
        """Takes again, at the floor as it is now, the steps due by `until_ms` (a sweep took them
        then) that an event or a merge gave back before its points. The caller settles the level,
        once: no crossing up and down again."""
        steps = self.steps
        assert steps is not None
        for due_ms, points in steps.take(state, until_ms, self.floor):
            self._took(state, due_ms, points)

    def _before_last(self, state: LeadState, time_ms: int, activity: bool) -> int:
        """An event with points timed before the last activity (it arrived late): the steps taken
        since the last activity are due after it, so they are given back before its points, to
        be taken again after them (`_retake`); an activity also gives back for good the steps of
        the idle period before the last activity that it shows were not due. Returns the steps
        taken since the last activity. The event settles the level."""
        steps = self.steps
        assert steps is not None
        taken = len(state.steps_taken)
        given = steps.give_back(state, time_ms) if taken else 0
        if activity and state.earlier_steps and time_ms > state.earlier_activity_ms:
            given += steps.give_back(state, time_ms, earlier=True)
        if given:
            state.record(time_ms, given, GIVEN_BACK, self.history)
        return taken

    def _give_back(self, state: LeadState, time_ms: int, level: int, lead_id: str, out: list[Transition]) -> int:
        """Gives back for good the steps due after an activity at `time_ms` that arrived late, as
        the lead was not idle that long; returns the level."""
        assert self.steps is not None
        given = self.steps.give_back(state, time_ms)
        if given:
            state.record(time_ms, given, GIVEN_BACK, self.history)
            level = self._settle(state, level, lead_id, time_ms, out)
        return level

    def decay(self, state: LeadState, lead_id: str, now_ms: int, out: list[Transition], swept: bool = False) -> int | None:
        """Brings decay to `now_ms` (never backwards); idempotent for the same `now_ms`. Returns
        the time of the last change it made (the last step's due time; for half-life decay,
        `now_ms`), None when it made none.

        `swept`, the worker's decay sweep: a member's half-life decay is taken due time after
        due time (`next_due_ms`) as sweeps on time take it, and the state is left valued at the
        last one by `now_ms`, the time returned. Its account's update then carries its score at
        that time with that time, which stamps the account crossing it causes: after downtime or
        a clock jump, valued at `now_ms` but dated at the first due time, it joined a score of
        the restart day to a date weeks before it. A due time, not the sweep's own time, so that
        a successor sweeping again after a crash says the same time (a crossing's id holds it).
        A lead in no account, which sends no update, is left valued at `now_ms`, as without
        `swept` (its crossings are the same): the time the worker publishes its score at, which
        a merge values it at (scoring.identity). Left at the due time of the line it last
        crossed, a visitor of a demo request 20 days old (30 points, half-life 10 days) was
        merged by a late identify at the 15 points it had at day 10, where the sweep had
        published 7.5, and lifted its lead over MQL for the next sweep to take back.

        A state written before an edit of the [[fit]] rules is revised first, so that the score
        settled below is the current model's, and the revision is recorded at the sweep's time
        (never before the lead's newest event), after the steps it took: dated at the lead's
        newest event, it was listed above a later step, out of order."""
        fit = state.fit
        level = self.ladder.level_of(state.level, self.score(state))  # placed by the score it held, before the revision
        self.fit_of(state)
        changed_ms = None
        if self.steps is not None:
            for due_ms, points in self.steps.take(state, now_ms, self.floor):
                self._took(state, due_ms, points)
                level = self._settle(state, level, lead_id, due_ms, out)
                changed_ms = due_ms
        elif self.half_life is not None:
            behaviour = state.behaviour
            if swept and state.account_id is not None:
                level, changed_ms = self._half_life_due(state, level, lead_id, now_ms, out)
            else:
                level, changed_ms = self._half_life_to(state, state.as_of_ms, behaviour, now_ms, level, lead_id, out), now_ms
            if state.behaviour != behaviour:
                state.revision += 1
            else:
                changed_ms = None
            self._settle(state, level, lead_id, now_ms, out)
        if state.fit != fit:
            state.record(max(now_ms, state.watermark_ms), state.fit - fit, "fit", self.history)
        return changed_ms

    def _half_life_due(self, state: LeadState, level: int, lead_id: str, until_ms: int, out: list[Transition]) -> tuple[int, int | None]:
        """Half-life decay taken as sweeps on time take it: to each due time by `until_ms`
        (`next_due_ms`, with the state's fit points), one after another, settling the lines it
        passes. Returns the level and the last due time, where the state is left valued (None:
        none was due, and the state is as it was)."""
        half_life = self.half_life
        assert half_life is not None
        as_of_ms, behaviour = state.as_of_ms, state.behaviour
        last_ms = None
        while (due := self._half_life_next_ms(state, level, state.fit)) is not None and due <= until_ms:
            level = self._half_life_to(state, state.as_of_ms, state.behaviour, due, level, lead_id, out)
            last_ms = due
        if last_ms is not None:  # in one step from where it was, as any valuation is (scoring.decay)
            state.as_of_ms, state.behaviour = as_of_ms, behaviour
            half_life.bring_to(state, last_ms)
        return level, last_ms

    def _decay_before(self, state: LeadState, as_of_ms: int, behaviour: float, watermark_ms: int, time_ms: int, level: int,
                      lead_id: str, out: list[Transition]) -> int:
        """Half-life decay from `behaviour` points at `as_of_ms` to an event at `time_ms` that
        passed a due time no sweep took yet (`leadstream score` sweeps before each event, a
        worker after downtime reads queued events before its first sweep): a lead in an account
        first takes it as a sweep would (`_half_life_due`) and tells its account (`_decayed`),
        the rest of the way after; returns the level."""
        state.as_of_ms, state.behaviour = as_of_ms, behaviour
        if state.account_id is not None:
            level, last_ms = self._half_life_due(state, level, lead_id, time_ms, out)
            if last_ms is not None:
                self._decayed(state, lead_id, watermark_ms, last_ms)
        return self._half_life_to(state, as_of_ms, behaviour, time_ms, level, lead_id, out)

    def _decayed(self, state: LeadState, lead_id: str, watermark_ms: int, due_ms: int) -> None:
        """An event brought forward decay that was due at `due_ms` and before: its account is
        told the score it decayed to, dated then, as a sweep would have told it, ahead of the
        event's own update (at `watermark_ms`, the lead's newest event before this one, so that
        the event's comes after it). Sent with the event's, the decay crossed the account at the
        event's time: a later unrelated event moved an earlier account crossing."""
        member = self.member_score(lead_id, state, watermark_ms, due_ms)
        if member is not None:
            self.decayed.append(member)
            self.told[lead_id] = member

    def _half_life_to(self, state: LeadState, as_of_ms: int, behaviour: float, time_ms: int, level: int, lead_id: str,
                      out: list[Transition]) -> int:
        """Brings half-life decay from `behaviour` points at `as_of_ms` to `time_ms`, settling
        each line the score passes on the way at the time it does, as sweeps at each
        `next_due_ms` would; returns the level. So the crossings do not depend on when decay is
        evaluated: a sweep late by a day, and events scored before the sweep (a replay, a
        lagging worker), give the same ones as a sweep on time, as steps do. The fit points are
        the state's: an event's traits count from its time, after the lines decay passed."""
        half_life = self.half_life
        assert half_life is not None
        state.as_of_ms, state.behaviour = as_of_ms, behaviour
        while (due := self._line_passed_ms(state, level, state.fit)) is not None and due <= time_ms:
            half_life.bring_to(state, due)
            level = self._settle(state, level, lead_id, due, out)
        # The points at `time_ms` in one step from `as_of_ms`, as they are when no line is passed.
        state.as_of_ms, state.behaviour = as_of_ms, behaviour
        half_life.bring_to(state, time_ms)
        return level

    def next_due_ms(self, state: LeadState) -> int | None:
        """When decay next changes what the worker must publish: the next step, or (half-life)
        the time the score falls through the current level's lower line, or, while behaviour
        points are negative (a floor below zero), rises to the next line: they decay towards
        zero from below too. A half-life lead in an account is also due when decay has taken a
        tenth of its behaviour points since they were last valued (_MEMBER_DECAY_SHARE): the
        account holds the score its members last sent, and would otherwise keep a member's
        undecayed points until the member crossed a line."""
        if self.steps is not None:
            return self.steps.due_ms(state)
        if self.half_life is None:
            return None
        return self._half_life_next_ms(state, self.ladder.level_of(state.level, self.score(state)), self.current_fit(state))

    def _half_life_next_ms(self, state: LeadState, level: int, fit: float) -> int | None:
        """`next_due_ms` of a half-life lead at `level` with `fit` points."""
        due = self._line_passed_ms(state, level, fit)
        if state.account_id is not None and abs(state.behaviour) * _MEMBER_DECAY_SHARE >= _MEMBER_DECAY_POINTS:
            member_due = state.as_of_ms + self.member_decay_ms
            if due is None or member_due < due:
                return member_due
        return due

    def _line_passed_ms(self, state: LeadState, level: int, fit: float) -> int | None:
        """Half-life: when decay takes the score of a lead at `level` with `fit` points through
        one of the level's lines (None: never)."""
        assert self.half_life is not None
        if state.behaviour < 0:
            return self.half_life.crossing_ms(state, self.ladder.up[level] - fit)
        down = self.ladder.down[level]
        if down <= self.floor:
            return None
        crossing = self.half_life.crossing_ms(state, down - fit)
        return None if crossing is None else crossing + 1

    def _settle(self, state: LeadState, level: int, lead_id: str, time_ms: int, out: list[Transition]) -> int:
        """Moves the level to where the score now is, recording a transition if it changed, or
        if the state held a level the ladder no longer has (`level` is where it was placed)."""
        after = self.ladder.level_after(level, self.score(state))
        if after != level or self.ladder.names[level] != state.level:
            self._cross(state, level, after, lead_id, time_ms, out)
        return after

    def _cross(self, state: LeadState, before: int, after: int, lead_id: str, time_ms: int, out: list[Transition]) -> None:
        """Moves the state from level `before` (`Ladder.level_of` its level) to `after`, recording
        the transition if it is a crossing (`Ladder.crossing`)."""
        names = self.ladder.names
        crossing = self.ladder.crossing(state.level, before, after)
        state.level = names[after]
        if crossing is None:
            return
        state.crossings += 1
        labels = explaining.labels(self, state)  # its score never rounded onto a line it is below
        score = labels["score"]
        out.append(
            Transition(
                kind="lead",
                model=self.name,
                lead_id=lead_id,
                account_id=state.account_id,
                sequence=state.crossings,
                from_level=crossing[0],
                to_level=names[after],
                direction=crossing[1],
                score=score,
                normalized=labels["normalized"],
                grade=labels["grade"],
                engagement=labels["engagement"],
                cell=labels["cell"],
                temperature=labels["temperature"],
                time_ms=time_ms,
                reasons=tuple(explaining.reasons(self, state)),
                traits=dict(state.traits),
            )
        )

    def _merge_traits(self, state: LeadState, traits: dict[str, Any], time_ms: int) -> bool:
        """Keeps the traits the model uses; a null value forgets a trait. A value older than the
        one the state has (by event time) is not taken. True if any changed: the state then
        holds a new dict, so a caller holding the one before has the traits as they were (the
        compiled code takes decay due before the event with them)."""
        kept = dict(state.traits)
        keep = self.keep_traits
        times = state.trait_times
        changed = False
        for key, value in traits.items():
            if key in keep:
                if time_ms < times.get(key, time_ms):
                    continue  # the state's value (or its forgetting) is newer
                times[key] = time_ms
                if value is None:
                    if key in kept:
                        changed = changed or self._found_before(state, time_ms)
                        del kept[key]
                elif (old := kept.get(key)) != value or old.__class__ is not value.__class__:  # true is not 1
                    changed = changed or self._found_before(state, time_ms)
                    kept[key] = value
        if changed:
            state.traits = kept
        # The fit points the traits give are revised by the caller (`fit_of(refit=True)`), once
        # decay due before the event is taken: until then the state's fit rules are those of its
        # fit points. Unset here, a crossing that decay made before the event (its reasons, read
        # by `fit_of`) revised them at the crossing's time without a history row, and listed the
        # new fit rules beside a score without their points (visit 25, big 5.5, decay -5 of 19.99).
        return changed

    def _found_before(self, state: LeadState, time_ms: int) -> bool:
        """Before an event's traits change a state read back (its fit rules not found yet), the
        fit rules its traits meet so far, under the model as it is (`fit_of`): those of its fit
        points, which a crossing that decay makes before the event reads. Returns True."""
        if state.fit_found is None:
            self.fit_of(state, time_ms)
        return True

    def take_late_facts(self, state: LeadState, event: Event, lead_id: str, out: list[Transition]) -> int:
        """What an event beyond the lateness still tells of the lead: its traits (each where no
        newer update set it, by event time) and its account when the lead has none. They are
        facts, not points: a worker catching up reads the events topic ahead of the profiles
        topic, and an identify a day behind its lead's page views lost its traits for good.
        The fit points they change, and a line that moves the score over, are recorded at the
        lead's newest event time. CHANGED if anything the lead shows changed; COUNTED if only the
        time of a trait it already had moved (the state must be written: dropped, it came back
        in the next batch that wrote the state, so a trait's time, which decides whether an older
        update is taken, depended on batch boundaries); LATE if nothing did."""
        changed = False
        level = self.ladder.level_of(state.level, self.score(state))  # before the facts move the score
        if event.account_id is not None and state.account_id is None:
            state.account_id = event.account_id
            changed = True
        traits = event.traits
        dated = False
        if traits:
            times, keep, time_ms = state.trait_times, self.keep_traits, event.time_ms
            dated = any(time_ms > times.get(key, -1) for key in traits if key in keep)
            if self._merge_traits(state, traits, time_ms):
                changed = True
        if changed:
            state.revision += 1
            self.fit_of(state, state.watermark_ms, refit=True)
            self._settle(state, level, lead_id, state.watermark_ms, out)
            return _CHANGED
        return _COUNTED if dated else _LATE

    def compact(self, state: LeadState) -> None:
        """Forgets what no future event can need: ids and windows beyond the lateness."""
        cutoff = state.watermark_ms - self.lateness_ms
        if cutoff > state.forgotten_before_ms:
            state.forgotten_before_ms = cutoff
        if (state.ids and state.ids_max_ms < cutoff) or (state.old_ids and state.old_ids_max_ms < cutoff):
            state.forget_events_before(cutoff)
        if state.earlier_steps and (self.steps is None or self.steps.earlier_settled(state, cutoff)):
            state.earlier_activity_ms, state.earlier_steps = 0, ()
        drop_ms = state.windows_drop_ms
        if drop_ms:
            if cutoff < drop_ms:  # no counter's window has closed yet
                return
        elif not state.windows:
            return
        windows = state.windows
        drop_ms = 0
        for key, counts in list(windows.items()):
            window = self.windows.get(key)
            if window is None:  # the rule left the model
                del windows[key]
                continue
            first_open = window.index(cutoff)
            # No event is newer than the newest: a counter of a later window was counted in
            # windows of another length (an edit lengthened them), and would stay forever.
            last_open = window.index(state.watermark_ms)
            # Newest first (scoring.repeat): closed windows are cut off the end, later ones off
            # the front, found by bisection.
            if counts[0] > last_open:
                del counts[: window_position(counts, last_open)]
            if counts:
                drop_closed(counts, first_open)
            if not counts:
                del windows[key]
                continue
            oldest = counts[-2]
            end_ms = window.end_ms(oldest)
            if not drop_ms or end_ms < drop_ms:
                drop_ms = end_ms
        state.windows_drop_ms = drop_ms

    def tell_account(self, lead_id: str, state: LeadState, updates: list[MemberScore]) -> None:
        """Adds to `updates` the member's score as it stands between two of its events of a
        batch, unless the update its account was last told in the batch (`told`) said it: a
        duplicate, or an event of no points, between."""
        update = self.member_score(lead_id, state, state.watermark_ms)
        if update is None:
            return
        told = self.told.get(lead_id)
        if told is None or told.score != update.score or told.account_id != update.account_id:
            updates.append(update)
            self.told[lead_id] = update

    def member_score(self, lead_id: str, state: LeadState, time_ms: int, changed_ms: int = 0) -> MemberScore | None:
        """The lead's update for its account; `changed_ms`, a decay's (`MemberScore.changed_ms`).
        Its score is the lead's as its summary and explanation show it (`scoring.explain`): its
        behaviour and fit points each to the hundredth, held off its lines. Its exact score
        rounded once, a lead shown at 2.34 (2 behaviour points and a fit rule's 0.335, shown
        0.34) was a member at 2.33, and one shown at 19.99, held below its MQL line at 20, at 20."""
        if state.account_id is None:
            return None
        score = min(max(explaining.score_shown(self, state), -MAX_MEMBER_POINTS), MAX_MEMBER_POINTS)
        return MemberScore(self.name, state.account_id, lead_id, score, time_ms, revision=state.revision, changed_ms=changed_ms)


class Engine:
    """All models of a directory, routing each event to the models whose filter takes it."""

    def __init__(self, models: Iterable[Model]) -> None:
        self.models: tuple[Model, ...] = tuple(models)
        if not self.models:  # it routed every event to no model, silently (a generator read twice gives none)
            raise ModelError("an Engine needs at least one model (load_model, load_directory, or Engine.from_directory)")
        check_names(self.models)  # it said "two models share a name", naming neither the name nor the files
        self._runtimes = {model.name: ModelRuntime(model) for model in self.models}
        #: The models with `[accounts]`: only their accounts have a score and level, and are shown
        #: (the others keep their accounts' members, so that an `[accounts]` added starts with them).
        self.rolling = frozenset(model.name for model in self.models if model.accounts is not None)
        self._everywhere = tuple(self._runtimes.values())
        self._routes: dict[str | None, tuple[ModelRuntime, ...]] = {}
        #: product -> the event types its models read together (None: every type)
        self._known: dict[str | None, frozenset[str] | None] = {}

    @classmethod
    def from_directory(cls, path: Path | str) -> Engine:
        """Loads and validates every *.toml of the directory; ModelError on any problem."""
        return cls(load_directory(path))

    def runtime(self, model_name: str) -> ModelRuntime:
        try:
            return self._runtimes[model_name]
        except KeyError:
            raise ModelError(f"no model named {model_name!r} (models: {', '.join(self._runtimes)})") from None

    # -- input -----------------------------------------------------------------------------

    @staticmethod
    def parse(raw: bytes | bytearray | memoryview | str | dict[str, Any] | Any) -> Event | Rejection:
        """One event from JSON bytes or a parsed JSON value; never raises for bad input."""
        return parse_event(raw)

    @staticmethod
    def parse_message(raw: bytes | bytearray | memoryview | str) -> list[Event | Rejection]:
        """The events of one wire message: one JSON object or an array of them."""
        return parse_message(raw)

    def route(self, event: Event) -> tuple[ModelRuntime, ...]:
        """The models an event goes to: those whose product filter takes the event's product,
        and those without a filter. An identify, group or alias without product goes to every
        model (traits, accounts and identities describe the person, whatever the product)."""
        if event.product is None and event.type in PROFILE_TYPES:
            return self._everywhere
        routes = self._routes.get(event.product)
        if routes is None:
            routes = self._routes[event.product] = tuple(
                rt for rt in self._everywhere if rt.model.products is None or event.product in rt.model.products
            )
            # A profile update without product goes everywhere under this key: without routes, nothing to check.
            known = [rt.known_types for rt in routes]
            self._known[event.product] = None if None in known or not routes else frozenset().union(*known)  # type: ignore[arg-type]
        return routes

    def unknown_type(self, event: Event) -> str:
        """Why an event of `BatchResult.unknown_type` was refused, naming what its models read."""
        read = "; ".join(f"{rt.name} scores {', '.join(sorted(rt.appliers)) or 'none'}"
                         + (f" and reads {', '.join(sorted(rt.model.unscored_types))} unscored" if rt.model.unscored_types else "")
                         for rt in self.route(event))
        return (f"event type {event.type!r} is one no model it is routed to knows ({read}): a misspelt type, or one to "
                "score with a rule or to list in the model's [model] unscored_types")

    # -- scoring ---------------------------------------------------------------------------

    def apply_batch(self, events: Iterable[Event | Rejection], get_state: GetState, settled: Settled | None = None) -> BatchResult:
        """Applies a batch of events of any leads and models.

        `get_state(model, lead_id)` is asked once per (model, lead) of the batch, in first-event
        order; None means a new lead, anything else but a LeadState is a TypeError (`lead_state`).
        States it returns are updated in place and the changed
        ones are returned in `states`. Rejections passed in (from `parse`) are collected in
        `rejected`, so parse results can be handed over as they are. Never raises for an event.

        `settled(key, state, score_changed)`, if given, is called once for each changed state
        as soon as it is final: right after the batch's last event of its lead, in most cases.
        A caller encodes the state there, or summarises it, while it is still in the CPU's
        caches: done after the batch, the same work on a state last touched hundreds of events
        before costs several times as much (measured: 1.2 us against 3.6-7 us to encode one).
        """
        result = BatchResult()
        for runtime in self._everywhere:  # what a batch that raised part way told its accounts is not told now
            if runtime.told:
                runtime.told.clear()
        # (model, lead id) -> [state, runtime, outcome so far, settled yet]
        touched: dict[tuple[str, str], list[Any]] = {}
        transitions = result.transitions
        routes = self._routes
        known_types = self._known
        # Each lead's last event of the batch (by identity: a redelivered copy is another object).
        last_of: dict[str, Event] = {}
        if settled is not None:
            events = events if isinstance(events, list) else list(events)
            for event in events:
                if event.__class__ is Event:
                    last_of[event.lead_id] = event
        for event in events:
            if event.__class__ is not Event:
                result.rejected.append(
                    event if isinstance(event, Rejection) else Rejection("wrong_type", "not a parsed event", event)
                )
                continue
            product = event.product
            targets = routes.get(product)
            if targets is None or (product is None and event.type in PROFILE_TYPES):
                targets = self.route(event)
            if not targets:
                result.unrouted.append(event)
                continue
            known = known_types.get(product)
            if known is not None and event.type not in known:
                result.unknown_type.append(event)
                continue
            lead_id = event.lead_id
            moving = event.account_id is not None  # it may move its lead to another account (never to none)
            late: list[str] | None = None
            for runtime in targets:
                key = (runtime.name, lead_id)
                slot = touched.get(key)
                if slot is None:
                    state = get_state(runtime.name, lead_id)
                    if state is None:  # a new lead: its first summary is news
                        slot = touched[key] = [runtime.new_state(), runtime, _CHANGED, False]
                    else:  # a wrong one (a state's bytes, not read back) raised AttributeError deep in the scoring
                        slot = touched[key] = [lead_state(state, runtime.name), runtime, _DUPLICATE, False]
                elif runtime.rolls_up and slot[2] >= _COUNTED and slot[0].account_id is not None:
                    # The member's score after its previous event of the batch, before this one
                    # changes it: with only its last, an account that its events took over two
                    # lines crossed both at once. Taken here, not after each event, so a lead's
                    # one event in a batch (the most common) costs nothing more; and not before
                    # the batch counted one of its events (the account knows the state as read).
                    runtime.tell_account(lead_id, slot[0], result.account_updates)
                state = slot[0]
                account_before = state.account_id
                outcome = (runtime.appliers.get(event.type) or runtime.apply_other)(state, event, transitions)
                if outcome == _LATE:
                    if event.traits or event.account_id is not None:
                        facts = runtime.take_late_facts(state, event, lead_id, transitions)
                        if facts > slot[2]:
                            slot[2] = facts
                    if late is None:
                        late = [runtime.name]
                    else:
                        late.append(runtime.name)
                elif outcome > slot[2]:
                    slot[2] = outcome
                if moving and state.account_id != account_before and account_before is not None:
                    # Moved: the account it was in loses it now, of the revision the move made, as
                    # batches of one tell it. Told at the batch's end, the account kept it until its
                    # lead's last event (and one it came back to never lost it), so the order of
                    # its members' changes, and its crossings, depended on where the batches cut.
                    result.account_updates.append(
                        MemberScore(runtime.name, account_before, lead_id, 0, state.watermark_ms, True, state.revision)
                    )
            if late is not None:
                result.late.append(Late(event, tuple(late), len(late) < len(targets)))
            if last_of and last_of.get(lead_id) is event:
                for runtime in targets:
                    key = (runtime.name, lead_id)
                    slot = touched[key]
                    if slot[2] >= _COUNTED:
                        runtime.compact(slot[0])
                        slot[3] = True
                        settled(key, slot[0], slot[2] == _CHANGED)  # type: ignore[misc]
        changed_states = result.states
        score_changed = result.score_changed
        account_updates = result.account_updates
        for runtime in self._everywhere:  # a handful of models: no per-event cost
            if runtime.decayed:
                account_updates += runtime.decayed
                runtime.decayed = []
        for key, (state, runtime, outcome, done) in touched.items():
            if outcome < _COUNTED:  # duplicates and late events only
                continue
            if not done:  # its lead's last event was unrouted, of an unknown type, or for other models
                runtime.compact(state)
                if settled is not None:
                    settled(key, state, outcome == _CHANGED)
            changed_states[key] = state
            if outcome == _CHANGED:
                score_changed.add(key)
            if state.account_id is not None:
                account_updates.append(runtime.member_score(key[1], state, state.watermark_ms))  # not None: it has an account
        return result

    def new_state(self, model_name: str) -> LeadState:
        return self.runtime(model_name).new_state()

    def decay(self, model_name: str, lead_id: str, state: LeadState, now_ms: int) -> tuple[LeadState, list[Transition]]:
        """The state with decay brought to `now_ms` (a new object; the argument is unchanged)
        and the crossings that decay caused. Evaluating twice at the same time changes nothing."""
        runtime = self.runtime(model_name)
        decayed = lead_state(state, model_name).copy()
        out: list[Transition] = []
        runtime.decay(decayed, lead_id, whole_ms(now_ms), out)
        return decayed, out

    def next_due_ms(self, model_name: str, state: LeadState) -> int | None:
        """When to call `decay` next for this lead (None: nothing is due without new events)."""
        return self.runtime(model_name).next_due_ms(lead_state(state, model_name))

    def member_score(self, model_name: str, lead_id: str, state: LeadState, time_ms: int) -> MemberScore | None:
        """The lead's score for its account's roll-up (None when it has no account)."""
        return self.runtime(model_name).member_score(lead_id, lead_state(state, model_name), time_ms)

    @staticmethod
    def leaving(model_name: str, lead_id: str, state: LeadState, time_ms: int, into: str | None = None) -> MemberScore | None:
        """The update that takes the lead out of its account's roll-up (None when it has no
        account): for a lead whose state is going away, merged into another (`into`) or
        forgotten. It is the state's next revision, as the leaving is a change after its last update."""
        if state.account_id is None:
            return None
        return MemberScore(model_name, state.account_id, lead_id, 0, max(time_ms, state.watermark_ms), True, state.revision + 1,
                           into=into)

    def returning(self, model_name: str, lead_id: str, state: LeadState, time_ms: int) -> MemberScore | None:
        """A state back as it was when its `leaving` at `time_ms` took it out (sent back by a
        merge loop): it counts that leaving as a change of its own, and the update returned puts
        it back in its account, standing where the leaving did, which the account takes."""
        state.revision += 1
        return self.member_score(model_name, lead_id, state, max(time_ms, state.watermark_ms))

    def account_summary(self, model_name: str, account_id: str, state: AccountState, top: int = TOP_MEMBERS) -> dict[str, Any]:
        """The account's score, scales, level and `top` best members, for read models."""
        return account_summary(self.runtime(model_name), account_id, state, top)

    def account_blank(self, model_name: str, state: AccountState) -> bool:
        """Whether an account holds nothing a new one would not (`AccountState.blank`, at the
        base of the model's ladder; a model without `[accounts]` has none, its level "")."""
        rollup = self.runtime(model_name).model.accounts
        return state.blank(rollup.ladder.names[0] if rollup is not None else "")

    def apply_account(
        self, model_name: str, account_id: str, state: AccountState | None, update: MemberScore
    ) -> tuple[AccountState, list[Transition]]:
        """`apply_account_updates` with one update."""
        return roll_up_all(self.runtime(model_name), account_id, state, (update,))

    def apply_account_updates(
        self, model_name: str, account_id: str, state: AccountState | None, updates: Sequence[MemberScore]
    ) -> tuple[AccountState, list[Transition]]:
        """The account state with the updates taken in, in the order they happened, and the
        crossings they make it take; a pair such as a merged visitor's leaving and its lead's
        new score does not cross down and up again (`scoring.accounts.roll_up_all`). A model
        without `[accounts]` keeps member scores but has no levels to cross (nor a level left
        from an `[accounts]` removed)."""
        return roll_up_all(self.runtime(model_name), account_id, state, updates)

    # -- reading ---------------------------------------------------------------------------

    def explain(self, model_name: str, lead_id: str, state: LeadState, now_ms: int) -> dict[str, Any]:
        """Why the lead has its score at `now_ms`: points by rule, fit, decay, recent history.
        `state` is the lead's under this model (`BatchResult.states[model_name, lead_id]`): a
        state does not record its model, so another model's gives figures of no meaning."""
        return explaining.explain(self.runtime(model_name), lead_id, lead_state(state, model_name), whole_ms(now_ms))

    def summary(self, model_name: str, lead_id: str, state: LeadState, now_ms: int) -> dict[str, Any]:
        """The lead's score on every scale at `now_ms`, with its top reasons."""
        return explaining.summary(self.runtime(model_name), lead_id, lead_state(state, model_name), whole_ms(now_ms))

    def percent(self, model_name: str, lead_id: str, state: LeadState, now_ms: int) -> float:
        """The lead's score on the model's 0-100 scale at `now_ms`, exact: the value a summary
        shows is rounded to a tenth (19.96 shows 20.0), which may lie across a line drawn on
        the scale that the exact value has not reached."""
        runtime = self.runtime(model_name)
        return runtime.model.scale.percent(runtime.score(explaining.at_time(runtime, lead_id, lead_state(state, model_name), whole_ms(now_ms))))


def whole_ms(now_ms: int) -> int:
    """`now_ms` as an int, or TypeError: a float (time.time() * 1000) was taken in, and a state
    decayed to it kept a float time that LeadState.from_bytes then refused as "of an unknown
    layout"; a nan took a half-life lead's points to nan. Any integer type (numpy's) is one."""
    try:
        if now_ms.__class__ is not bool:
            return operator.index(now_ms)
    except TypeError:
        pass
    raise TypeError(f"now_ms: expected whole milliseconds since the epoch, an int such as int(time.time() * 1000), got {now_ms!r}")


def lead_state(state: LeadState, model_name: str) -> LeadState:
    """`state`, or TypeError naming what was given: a lead with no state yet, `states.get(...)`
    giving None, failed deep inside as AttributeError: 'NoneType' object has no attribute
    'fit_found'."""
    if isinstance(state, LeadState):
        return state
    raise TypeError(f"state: expected the lead's LeadState under model {model_name!r} (BatchResult.states, or "
                    f"LeadState.from_bytes), got {type(state).__name__}: a lead no event was scored for has none "
                    "(Engine.new_state gives a new lead's)")
