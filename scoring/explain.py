"""Reading a lead's state: its labels on every scale, the reasons for its score, and the full
explanation a salesperson sees ("why does this lead have 47 points?").

Decay is evaluated at the time asked for, and fit points are revised after an edit of the
model's [[fit]] rules (and a renamed rule's entry found under its earlier name), on a copy:
reading never changes a state, nor writes its history (the edit's revision is recorded when the
worker next scores the lead). The decayed amount is exact in
total (behaviour points now minus the points rules earned); shown per rule it is attributed to
the rules with positive points in proportion to their points, so that the rows add up to the
score. Points regained (a half-life brings negative points back towards zero, below a floor
under zero) are attributed to the rules with negative points, when there are no positive ones.
What the model's floor adds, when negative fit points take the score below it, is shown as such
(`floor_points`, and a "floor" reason): behaviour and fit points plus it make the score.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from scoring.state import LeadState

if TYPE_CHECKING:
    from scoring.engine import ModelRuntime

#: Reasons carried by transitions and summaries.
TOP_REASONS = 5


def labels(runtime: ModelRuntime, state: LeadState) -> dict[str, Any]:
    """Score, 0-100, fit grade, engagement level, grid cell, temperature and level."""
    out: dict[str, Any] = {}
    _put_labels(out, runtime, state)
    return out


#: (fit, behaviour) pairs whose labels a model remembers (then it starts over).
_LABELS_MEMO = 16384


def _put_labels(out: dict[str, Any], runtime: ModelRuntime, state: LeadState) -> None:
    # A summary is made for every changed lead of every batch, and a lead's labels depend on
    # its fit and behaviour points alone, which take few distinct values: they are remembered.
    fit, behaviour = state.fit, state.behaviour
    memo = runtime.labels_memo
    key = (fit, behaviour, fit.__class__, behaviour.__class__)  # 1 and 1.0 print differently
    found = memo.get(key)
    if found is None:
        if len(memo) >= _LABELS_MEMO:
            memo.clear()
        found = memo[key] = _labels_of(runtime, fit, behaviour)
    out["score"], out["normalized"], out["grade"], out["engagement"], out["cell"], out["temperature"] = found
    out["level"] = state.level


def _labels_of(runtime: ModelRuntime, fit: float, behaviour: float) -> tuple[Any, ...]:
    """Score, 0-100, grade, engagement, cell and temperature of these points."""
    model = runtime.model
    score = behaviour + fit
    if score < runtime.floor:
        score = runtime.floor
    normalized = model.scale.normalize(score)
    grade = model.grades.label(fit) if model.grades is not None else None
    engagement = int(model.engagement.label(behaviour)) if model.engagement is not None else None
    cell = f"{grade}{engagement}" if grade is not None and engagement is not None else None
    temperature = model.temperature.label(normalized) if model.temperature is not None else None
    return shown_below_lines(runtime, score), normalized, grade, engagement, cell, temperature


def shown_below_lines(runtime: ModelRuntime, score: float) -> float:
    """The score to two decimals, rounded down where rounding would put it on a line it has
    not reached: a half-life lead at 29.99998 showed 30.0 beside the level under a line at 30."""
    rounded = shown(score)
    if rounded > score:
        ladder = runtime.ladder  # its lines as the crossings compare them: the ways up and down
        if any(score < line <= rounded for line in (*ladder.up[:-1], *ladder.down[1:])):
            return shown(math.floor(score * 100) / 100)
    return rounded


def shown(points: float) -> float:
    """Points to two decimals, an integer when whole (a half-life model's 41.0 is 41, as a step
    model's), never -0.0: negative points a half-life decayed to nearly nothing (or clipped to
    nearly nothing) showed as `-0.0`."""
    rounded = round(points, 2)
    return int(rounded) if rounded.__class__ is float and rounded.is_integer() else rounded


def decayed_points(state: LeadState) -> float:
    """Points decay has taken in all (behaviour points now minus what the rules earned)."""
    return state.behaviour - sum(entry[0] for entry in state.ledger.values())


def floor_points(runtime: ModelRuntime, state: LeadState) -> float:
    """Points the model's floor adds to the score: behaviour points never go below it, but
    negative fit points (a competitor's domain) can take their sum below it."""
    below = runtime.floor - state.behaviour - state.fit
    return below if below > 0 else 0


def rule_rows(runtime: ModelRuntime, state: LeadState) -> list[dict[str, Any]]:
    """One row per rule that ever matched, most points first."""
    decayed = decayed_points(state)
    positive = sum(entry[0] for entry in state.ledger.values() if entry[0] > 0)
    # Decay takes from positive points; a half-life also gives back to negative ones, which
    # are all that can bear the decay of a lead without positive points.
    bearing = positive or sum(entry[0] for entry in state.ledger.values() if entry[0] < 0)
    known = {rule.name for rule in runtime.model.rules}
    rows: list[dict[str, Any]] = []
    for name, (points, occurrences, capped, bonuses) in state.ledger.items():
        share = decayed * points / bearing if bearing and (points > 0) == (positive > 0) and points else 0
        rows.append(
            {
                "rule": name,
                "points": shown(points),
                "occurrences": occurrences,
                "capped": capped,
                "bonuses": bonuses,
                "decayed": round(share, 2) or 0,  # not -0.0: a share of nothing
                "in_model": name in known,
            }
        )
    rows.sort(key=lambda row: (-abs(row["points"]), row["rule"]))
    return rows


def fit_rows(runtime: ModelRuntime, state: LeadState) -> list[dict[str, Any]]:
    return [{"rule": rule.name, "points": rule.points} for rule in runtime.fit_of(state)[0]]


def reasons(runtime: ModelRuntime, state: LeadState, limit: int = TOP_REASONS) -> list[dict[str, Any]]:
    """The largest contributions, either sign: behaviour rules, fit rules and decay."""
    # (-|points|, name, points): sorted as tuples, largest first, then by name.
    items = []
    earned: float = 0
    for name, entry in state.ledger.items():
        points = entry[0]
        if points:
            earned += points
            items.append((-abs(points), name, points))
    items += runtime.fit_of(state)[2]
    decayed = state.behaviour - earned
    if round(decayed, 2):  # not what shows as -0.0 (seconds of a half-life)
        items.append((-abs(decayed), "decay", decayed))
    lifted = floor_points(runtime, state)
    if lifted:
        items.append((-lifted, "floor", lifted))
    items.sort()
    top = []
    for _, name, points in items[:limit]:
        top.append({"rule": name, "points": shown(points)})
    return top


def at_time(runtime: ModelRuntime, lead_id: str, state: LeadState, now_ms: int) -> LeadState:
    """The state as the model sees it at `now_ms`: decay brought to then, and fit points as the
    model's [[fit]] rules give them (a state written before they were edited has others, see
    `ModelRuntime.fit_of`), and entries of renamed rules under their names now
    (`ModelRuntime.adopt`). The state itself when that changes nothing, else a copy.

    A revision of the fit points is not written in the copy's history: the model's edit takes
    effect in the lead's state when the worker next scores it (an event, a sweep), which records
    it at that time; a read has no time of its own to date it at (each read would date it anew)."""
    current = state
    if runtime.revises(state):
        current = state.copy()
        runtime.fit_of(current)  # no time: no history entry
    if runtime.steps is not None:
        due = runtime.steps.due_ms(current)
        if due is None or due > now_ms:
            return current
    elif runtime.half_life is None or now_ms <= current.as_of_ms:
        return current
    if current is state:
        current = state.copy()
    runtime.decay(current, lead_id, now_ms, [])
    return current


def summary(runtime: ModelRuntime, lead_id: str, state: LeadState, now_ms: int) -> dict[str, Any]:
    current = at_time(runtime, lead_id, state, now_ms)
    # Half-life points a sweep, a merge or a later event valued at a later time than asked are
    # at that time (decay is not undone): the summary says so.
    valued_ms = max(now_ms, current.as_of_ms) if runtime.half_life is not None else now_ms
    out: dict[str, Any] = {"lead_id": lead_id, "model": runtime.name, "time": valued_ms}
    _put_labels(out, runtime, current)
    out["last_activity_ms"] = current.last_activity_ms or None
    out["account_id"] = current.account_id
    out["top_reasons"] = reasons(runtime, current)
    return out


def explain(runtime: ModelRuntime, lead_id: str, state: LeadState, now_ms: int) -> dict[str, Any]:
    current = at_time(runtime, lead_id, state, now_ms)
    out = summary(runtime, lead_id, current, now_ms)
    del out["top_reasons"]
    out.update(
        {
            "behaviour_points": shown(current.behaviour),
            "fit_points": shown(current.fit),
            "floor_points": shown(floor_points(runtime, current)),
            "decayed": round(decayed_points(current), 2) or 0,
            "rules": rule_rows(runtime, current),
            "fit": fit_rows(runtime, current),
            "history": [
                {"time": time_ms, "rule": label, "points": shown(points)}
                for time_ms, points, label in reversed(current.changes(runtime.history))
            ],
            "next_decay_ms": runtime.next_due_ms(current),
            "traits": dict(current.traits),
        }
    )
    return out
