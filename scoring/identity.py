"""Identity stitching: an anonymous visitor's state merged into the known lead it turned out to be.

A merge is an event of its own, with the id `merge:<source lead id>` (kept as its digest when
long or not ASCII, as an event id is), so the target's event-id memory drops a redelivered merge
like any duplicate (within the same bound, see scoring/state.py).
The source's remembered event ids join the target's, so an event already scored on the
anonymous profile and delivered again under the known lead never scores twice; as for one
profile, within the bound of two generations of ids, which keep the newest of both.

What is combined: behaviour points (for half-life models valued at the link's time, or at the
later time either profile was valued at) and per-rule ledgers, each rule within its max_points
and the sum within the model's floor and ceiling (what these clip is taken off the visitor's
rules and counted as capped, so explanations still add up), `once_per` logs (within their
bound), event ids, traits (the known lead's win, even one it forgot, the visitor's fill gaps;
fit is recomputed from them), the account, the latest activity and watermark.

Window counters (caps and bonuses) count as one profile with both profiles' events would have
(scoring.repeat.join_caps, join_bonuses): the counts of a window both have add up. What the two
scored past a cap there together is taken off the visitor's rule and counted as capped; a
bonus both paid in one window is paid once (the visitor's taken off); a bonus the joined count
reaches that neither paid is paid at the merge, within the rule's max_points and the model's
bounds, counted in the rule's bonuses and recorded in the history under the rule's name at the
link's time, as the occurrence completing it would have been. Under a half-life, what the merge
takes off or pays is valued as what the bounds clip (at the link, or the newest event of either,
were it later). So for events of the two that are distinct, a merge gives each rule the
occurrences, bonuses, capped occurrences and points of one lead with all of them, but for:
- what a rule's max_points clips of the merged sum counts as one capped occurrence, however many
  the points were (its points and bonuses are one lead's);
- a `once_per` value both saw (one e-mail opened by each, on different days) scored in each: the
  values keep no time, so which occurrence was the repeat, and which window it counted in, is
  not known (in one window, the cap may take it off);
- the model's floor and ceiling clip the sum at the merge, not each occurrence in time order,
  and decay takes from behaviour points as the merge values them: the rules' counts and points
  stay one lead's, the behaviour points may not.
An event both profiles counted (a visitor's event sent again under the lead before its merge
reached it) still counts in the points, occurrences and caps of both (where the two pass a cap
together, the cap takes the extra off); it never completes a bonus: a window's joined count is
the sum less the events both counted, as many as their remembered event ids tell.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from scoring.decay import StepDecay
from scoring.repeat import Bonus, Cap, join_bonuses, join_caps, join_seen
from scoring.state import KEY_CHARS, NO_IDS, LeadState, kept_key
from scoring.thresholds import Transition

#: An anonymous visitor's lead id is this + its `anonymous_id` (the collector keys its events so).
ANONYMOUS_PREFIX = "anon:"

if TYPE_CHECKING:
    from scoring.engine import Engine, ModelRuntime
    from scoring.rules import Rule


def merge_id(source_lead_id: str) -> str:
    return f"merge:{source_lead_id}"


def merge(
    engine: Engine, model_name: str, lead_id: str, target: LeadState | None, source: LeadState, source_lead_id: str, time_ms: int
) -> tuple[LeadState, list[Transition]]:
    """The target lead's state with `source` merged in (once), and the crossings it caused."""
    runtime = engine.runtime(model_name)
    state = runtime.new_state() if target is None else target
    out: list[Transition] = []
    marker = merge_id(source_lead_id)
    if state.knows_event(marker):  # kept whole by states written before markers were digested
        return state, out
    if len(marker) > KEY_CHARS or not marker.isascii():  # kept as an event id of its size is (scoring/state.py)
        marker = kept_key(marker)
        if state.knows_event(marker):
            return state, out
    level = runtime.ladder.level_of(state.level, runtime.score(state))
    weight: float = 1  # half-life: the share of the sum decay left since the bounds clipped it
    swept_ms = 0  # steps: the time the sweeps that took either profile's steps had reached
    # Both as the model keeps them now (a copy of the source: the caller's stays as it is), so
    # that a renamed rule's entries under its earlier name join its own, within its limits.
    source = source.copy()
    runtime.adopt(source)
    runtime.adopt(state)
    both_counted = _both_counted(state, source)
    _join_ids(state, source, runtime.remember)
    state.remember_event(marker, time_ms, runtime.remember)

    if runtime.half_life is not None:
        # Both valued at one time, so that their points add up: the link's, or the later time a
        # sweep or an event valued either at (a worker's clock is ahead of a late identify; a
        # sweep leaves a lead of no account valued at its own time, a member at the last due
        # time it took, as its account's update says: ModelRuntime.decay). A
        # line decay took the lead through before the link is crossed at the time it did, as a
        # sweep on time would have crossed it (ModelRuntime._half_life_to); after it, the merged
        # lead's level is settled once, below: the lead alone crossed down lines that the
        # visitor's points may keep it above.
        valued_ms = max(time_ms, state.as_of_ms, source.as_of_ms)
        level = runtime._half_life_to(state, state.as_of_ms, state.behaviour, time_ms, level, lead_id, out)
        runtime.half_life.bring_to(state, valued_ms)
        runtime.half_life.bring_to(source, valued_ms)
        # The bounds clipped the sum at the link or at the newest event of either, were they
        # later: a sweep since only decayed it.
        clipped_ms = min(valued_ms, max(time_ms, state.watermark_ms, source.watermark_ms))
        weight = runtime.half_life.factor(valued_ms - clipped_ms)
    elif runtime.steps is not None:
        # Both as a sweep at the link's time leaves them: the steps due by then taken, and those
        # a sweep took early, due after it, given back (the merged lead's are taken again below),
        # so that the sum does not depend on when sweeps ran; the visitor's crossings are not
        # published.
        swept_ms = max(_swept_ms(runtime.steps, state), _swept_ms(runtime.steps, source))
        level = runtime._step_decay(state, time_ms, activity=False, moves=True, level=level, lead_id=lead_id, out=out)
        runtime._step_decay(source, time_ms, activity=False, moves=True, level=runtime.ladder.level_of(source.level, runtime.score(source)),
                            lead_id=source_lead_id, out=[])
    # Windows first: what the two scored past a cap together, or a bonus both paid, is taken off
    # the visitor's points before its ledger joins the lead's (within max_points, below).
    due = _join_windows(runtime, state, source, both_counted, weight) if source.windows else []
    before = state.behaviour
    _add(runtime, state, source.ledger, source.behaviour, weight)
    merged = "anonymous visitor" if source_lead_id.startswith(ANONYMOUS_PREFIX) else "lead"  # an alias merges known leads too
    state.record(time_ms, state.behaviour - before, f"merged from {merged} {source_lead_id}", runtime.history)
    for rule, bonuses in due:
        # Paid as the occurrence completing them would have been, under the rule's name.
        assert rule.bonus is not None
        had = state.ledger[rule.name][0] if rule.name in state.ledger else 0
        points = rule.bonus.points * bonuses
        _add(runtime, state, {rule.name: [points, 0, 0, bonuses]}, points * weight, weight)
        if state.ledger[rule.name][0] != had:
            state.record(time_ms, state.ledger[rule.name][0] - had, rule.name, runtime.history)

    for key, values in source.seen.items():  # the lead's are kept first, as its traits win
        state.seen[key] = join_seen(values, state.seen.get(key, {}))

    for name, value in source.traits.items():
        if name not in state.trait_times:  # the known lead's traits (and their forgetting) win
            state.traits[name] = value
            state.trait_times[name] = source.trait_times.get(name, 0)
    state.fit_found = None
    runtime.fit_of(state, time_ms)
    if state.account_id is None:
        state.account_id = source.account_id
    if source.last_activity_ms > state.last_activity_ms:
        state.last_activity_ms = source.last_activity_ms
        state.steps_taken = source.steps_taken
        state.earlier_activity_ms, state.earlier_steps = source.earlier_activity_ms, source.earlier_steps
    if runtime.steps is not None:
        # A worker's clock had passed the steps its sweeps took: the merged lead's steps due by
        # then are taken now, and the level settled once below, as a half-life merge settles the
        # points valued now. Left to the next sweep, they made the merge cross up a line the
        # sweep crossed down a moment later, or again one a sweep had crossed down already.
        runtime._retake(state, swept_ms)
    # The link's time too: the merge is a change of the lead at its identify's time, and the
    # accounts order a lead's updates by its watermark, then revision. A lead without its own
    # events up to the link (one made anew after it was forgotten) sent its merged score at an
    # earlier time than an update it had sent before, which its account refused.
    state.watermark_ms = max(state.watermark_ms, source.watermark_ms, time_ms)
    if runtime.half_life is None:
        state.as_of_ms = max(state.as_of_ms, source.as_of_ms, state.watermark_ms)
    state.forgotten_before_ms = max(state.forgotten_before_ms, source.forgotten_before_ms)
    state.revision = max(state.revision, source.revision) + 1
    # The visitor's windows and ids beyond the lateness go now, as the lead's went at its events.
    runtime.compact(state)

    runtime._settle(state, level, lead_id, time_ms, out)
    return state, out


def _swept_ms(steps: StepDecay, state: LeadState) -> int:
    """The time a sweep that took a profile's steps had reached at least (0: it took none)."""
    return steps.taken_due_ms(state.last_activity_ms, len(state.steps_taken)) if state.steps_taken else 0


def _join_ids(state: LeadState, source: LeadState, per_generation: int) -> None:
    """The event ids of both in the state's generations, the newest kept: the four generations
    are remembered again oldest first (by their newest event). The visitor's ids added after
    the lead's pushed the lead's newest out as generations filled up, and an event the lead had
    just scored, delivered again after the merge, scored a second time."""
    generations = sorted(
        ((state.old_ids_max_ms, 0, state.old_ids), (state.ids_max_ms, 1, state.ids),
         (source.old_ids_max_ms, 2, source.old_ids), (source.ids_max_ms, 3, source.ids)),
        key=lambda generation: generation[:2],
    )  # fmt: skip
    state.ids, state.ids_max_ms, state.old_ids, state.old_ids_max_ms = {}, 0, NO_IDS, 0
    for max_ms, _, ids in generations:
        for event_id in ids:
            if not state.knows_event(event_id):
                state.remember_event(event_id, max_ms, per_generation)


def _both_counted(state: LeadState, source: LeadState) -> int:
    """How many events both profiles counted, as far as their remembered ids tell: a visitor's
    event delivered again under the lead before the merge reached it."""
    mine = state.ids.keys() | state.old_ids
    return sum(1 for event_id in (*source.ids, *source.old_ids) if event_id in mine)


def _join_windows(
    runtime: ModelRuntime, state: LeadState, source: LeadState, both_counted: int, weight: float
) -> list[tuple[Rule, int]]:
    """Joins the source's window counters to the state's, as one profile would have counted
    their occurrences (scoring.repeat.join_caps, join_bonuses); takes what the two scored past
    a cap, or a bonus both paid in one window, off the source's rule (valued as the merge values
    what the bounds clip, `weight`); returns the rules whose bonuses the joined counts make due
    now, and how many. Of a window both had, the target's counts stood: the visitor's
    occurrences did not count towards the bonus (5 visits of a week, 4 of them the visitor's,
    paid none), nor against the cap."""
    limits: dict[str, tuple[Rule, Cap | Bonus | None]] = {}
    for rule in runtime.model.rules:
        limits[rule.cap_key], limits[rule.bonus_key] = (rule, rule.cap), (rule, rule.bonus)
    windows = state.windows
    due: list[tuple[Rule, int]] = []
    for key, counts in source.windows.items():
        mine = windows.get(key)
        if mine is None:
            windows[key] = list(counts)
            continue
        found = limits.get(key)
        if found is None:
            continue  # the rule left the model: compaction drops the counters
        rule, limit = found
        if isinstance(limit, Cap):
            windows[key], over = join_caps(mine, counts, limit)
            _take_back(source, rule, over * rule.points, over, 0, weight)
        elif isinstance(limit, Bonus):
            windows[key], paid, twice = join_bonuses(mine, counts, limit, both_counted)
            _take_back(source, rule, twice * limit.points, 0, twice, weight)
            if paid:
                due.append((rule, paid))
    state.windows_drop_ms = 0  # windows that close earlier may have come: compaction works it out again
    return due


def _take_back(source: LeadState, rule: Rule, points: float, capped: int, bonuses: int, weight: float) -> None:
    """Takes `points` off the source's entry of `rule` (at most what it holds: its max_points
    may have clipped them), counting `capped` more occurrences capped and `bonuses` fewer
    bonuses, and off its behaviour."""
    entry = source.ledger.get(rule.name)
    if entry is None or not (capped or bonuses):
        return
    taken: float = 0
    if points * entry[0] > 0:
        taken = points if abs(points) <= abs(entry[0]) else entry[0]
    entry[0] -= taken
    entry[2] += capped
    entry[3] -= bonuses
    source.behaviour -= taken * weight


def _add(runtime: ModelRuntime, state: LeadState, ledger: dict[str, list[float]], points: float, weight: float) -> None:
    """Adds a ledger's entries to the state's (each rule within its max_points) and `points`
    to its behaviour (what the entries earned, and their decay); the model's ceiling and floor
    then clip what this adds, taken off the rules that added it so that an explanation's rows
    still add up to the behaviour. Valued later than the link, what the limits clip is decayed
    as much (`weight`): in time order they clipped at the link."""
    before = state.behaviour
    added = _merge_ledgers(runtime.limits, state, ledger)
    held_back = sum(entry[0] for entry in ledger.values()) - sum(added.values())
    wanted = before + points - held_back * weight
    state.behaviour = _bounded(before, wanted, runtime.floor * weight, runtime.ceiling * weight)
    _take_off(state, added, wanted - state.behaviour)


def _bounded(before: float, after: float, low: float, high: float) -> float:
    """`after` within `low` and `high`, clipped only in the direction it moved from `before`
    (a value an edit of the bounds left beyond them may move back), as rule points are."""
    if after > high and after > before:
        return max(high, before)
    if after < low and after < before:
        return min(low, before)
    return after


def _merge_ledgers(limits: dict[str, float], state: LeadState, ledger: dict[str, list[float]]) -> dict[str, float]:
    """Adds a ledger's entries to the state's, each rule's points kept within its max_points
    (`limits`); returns the points each rule added."""
    added: dict[str, float] = {}
    for rule, entry in ledger.items():
        mine = state.ledger.get(rule)
        merged = list(entry) if mine is None else [a + b for a, b in zip(mine, entry)]
        had = 0 if mine is None else mine[0]
        limit = limits.get(rule)
        if limit is not None and (bounded := _bounded(had, merged[0], -limit, limit)) != merged[0]:
            merged[0] = bounded
            merged[2] += 1  # capped
        state.ledger[rule] = merged
        added[rule] = merged[0] - had
    return added


def _take_off(state: LeadState, added: dict[str, float], clipped: float) -> None:
    """Takes `clipped` points (what the model's bounds did not let the merge add) off the rules
    that added points of its sign, in name order, each counted as capped."""
    for rule in sorted(added):
        if not clipped:
            return
        points = added[rule]
        if points * clipped > 0:
            taken = points if abs(points) <= abs(clipped) else clipped
            entry = state.ledger[rule]
            entry[0] -= taken
            entry[2] += 1
            clipped -= taken
