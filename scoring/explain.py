"""Reading a lead's state: its labels on every scale, the reasons for its score, and the full
explanation a salesperson sees ("why does this lead have 47 points?").

Decay is evaluated at the time asked for, and fit points are revised after an edit of the
model's [[fit]] rules (and a renamed rule's entry found under its earlier name), on a copy:
reading never changes a state, nor writes its history (the edit's revision is recorded when the
worker next scores the lead). The history names a renamed rule by its name now, also in the
changes recorded under an earlier one.

Numbers are shown to two decimals (the 0-100 value to one) and add up as shown: behaviour and
fit points, plus what the model's floor adds when negative fit points take their sum below it
(`floor_points`, and a "floor" reason), make the score; the rule rows' points and decay make
the behaviour points, the fit rows' the fit points (`fit_parts`), and so do the top reasons'
(`reasons`). Each label is that of the exact
points, and no number shown beside one is rounded across a line of it (`scoring.scales.held`):
a lead at 29.997 points, under a line at 30 of its ladder, [engagement] or [temperature], shows
29.99, and its reasons +40 and decay -10.01.

The decayed amount is exact in total (behaviour points now minus the points rules earned); per
rule it is apportioned (`_decay_shares`): a half-life takes every rule's points towards zero,
negative ones too, so each rule bears the same share of its own points where one share
accounts for the total, while steps take from the rules with positive points.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from scoring.scales import held
from scoring.state import LeadState

if TYPE_CHECKING:
    from scoring.engine import ModelRuntime
    from scoring.fit import FitRule

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
    out["score"], out["normalized"], out["grade"], out["engagement"], out["cell"], out["temperature"] = _figures(runtime, state)[:6]
    out["level"] = state.level


def score_shown(runtime: ModelRuntime, state: LeadState) -> float:
    """The score as summaries, explanations and crossings show it."""
    score: float = _figures(runtime, state)[0]
    return score


def _figures(runtime: ModelRuntime, state: LeadState) -> tuple[Any, ...]:
    """`_labels_of` the state's points: its labels, then the points shown in explanations."""
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
    return found


def _labels_of(runtime: ModelRuntime, fit: float, behaviour: float) -> tuple[Any, ...]:
    """Score, 0-100, grade, engagement, cell and temperature of these points, then behaviour,
    fit and floor points as shown, adding up to the score shown."""
    model = runtime.model
    grades, engagement_bands = model.grades, model.engagement
    fit_shown = _fit_shown(runtime, fit)
    score = behaviour + fit
    lifted = score < runtime.floor
    # The score shown is behaviour plus fit points shown, so the behaviour points are held off
    # the score's lines (less the fit points) as well as their own.
    lines = engagement_bands.lows[1:] if engagement_bands is not None else ()
    if not lifted:
        lines = (*lines, *(line - fit_shown for line in runtime.score_lines))
    behaviour_shown = shown(held(behaviour, round(behaviour, 2), lines, 100))
    score_shown = shown(behaviour_shown + fit_shown)
    floor_shown: float = 0
    if lifted or score_shown < runtime.floor:
        score = runtime.floor
        score_shown = shown(runtime.floor)
        floor_shown = shown(score_shown - behaviour_shown - fit_shown)
    normalized, temperature = model.scale.placed(score, model.temperature)
    grade = grades.label(fit) if grades is not None else None
    engagement = int(engagement_bands.label(behaviour)) if engagement_bands is not None else None
    cell = f"{grade}{engagement}" if grade is not None and engagement is not None else None
    return score_shown, normalized, grade, engagement, cell, temperature, behaviour_shown, fit_shown, floor_shown


def score_lines(runtime: ModelRuntime) -> tuple[float, ...]:
    """The lines no score is shown rounded across (`scales.held`): its ladder's, as the
    crossings compare them (the ways up and down), and its [temperature] bands' on its scale."""
    ladder, model = runtime.ladder, runtime.model
    lines = (*ladder.up[:-1], *ladder.down[1:])
    if model.temperature is not None:
        scale = model.scale
        lines += tuple(scale.zero_at + low / 100 * (scale.hundred_at - scale.zero_at) for low in model.temperature.lows[1:])
    return lines


def shown(points: float) -> float:
    """Points to two decimals, an integer when whole (a half-life model's 41.0 is 41, as a step
    model's), never -0.0: negative points a half-life decayed to nearly nothing (or clipped to
    nearly nothing) showed as `-0.0`."""
    rounded = round(points, 2)
    return int(rounded) if rounded.__class__ is float and rounded.is_integer() else rounded


def rule_rows(runtime: ModelRuntime, state: LeadState) -> tuple[list[dict[str, Any]], float]:
    """One row per rule that ever matched, most points first, and the points decay took in all
    as shown (behaviour points shown less the rows' points shown), which the rows' `decayed`
    add up to exactly: each row's share is rounded down to the hundredth and the hundredths
    left go to the largest remainders."""
    ledger = state.ledger
    points = [entry[0] for entry in ledger.values()]
    decayed = _decayed_shown(_figures(runtime, state)[6], points)
    parts = _apportioned([share * 100 for share in _decay_shares(runtime, points, state.behaviour - sum(points))], decayed)
    known = {rule.name for rule in runtime.model.rules}
    rows: list[dict[str, Any]] = [
        {
            "rule": name,
            "points": shown(entry[0]),
            "occurrences": entry[1],
            "capped": entry[2],
            "bonuses": entry[3],
            "decayed": shown(part / 100),
            "in_model": name in known,
        }
        for (name, entry), part in zip(ledger.items(), parts)
    ]
    rows.sort(key=lambda row: (-abs(row["points"]), row["rule"]))
    return rows, shown(decayed / 100)


def _apportioned(exact: list[float], total: int) -> list[int]:
    """The `exact` hundredths as whole ones adding up to `total`: each rounded down, and the
    hundredths left given to the largest remainders (a row's order as a tie-break)."""
    parts = [math.floor(share) for share in exact]
    if parts:
        order = sorted(range(len(parts)), key=lambda i: (parts[i] - exact[i], i))
        each, extra = divmod(total - sum(parts), len(parts))
        for rank, i in enumerate(order):
            parts[i] += each + (rank < extra)
    return parts


def _fit_shown(runtime: ModelRuntime, fit: float) -> float:
    """The fit points as shown: to the hundredth, never across a line of the model's [grades]."""
    grades = runtime.model.grades
    return shown(held(fit, round(fit, 2), grades.lows[1:] if grades is not None else (), 100))


def fit_parts(runtime: ModelRuntime, matched: tuple[FitRule, ...], fit: float) -> list[tuple[str, float]]:
    """The fit rules met (`matched`, whose points make `fit`) and their points as shown: to the
    hundredth, and adding up to the fit points shown (`_apportioned`). Shown as the model gives
    them, two rules of 0.335 points made 0.67 fit points in rows of three decimals, and the top
    reasons, each rounded alone, 0.34 and 0.34: with a rule's 1 point, 1.68 of a score of 1.67."""
    parts = _apportioned([rule.points * 100 for rule in matched], round(_fit_shown(runtime, fit) * 100))
    return [(rule.name, shown(part / 100)) for rule, part in zip(matched, parts)]


def _decayed_shown(behaviour: float, earned: list[float]) -> int:
    """The decay shown, in hundredths: the `behaviour` points shown less the rules' points
    (`earned`) shown, so that rules and decay add up to the behaviour points shown. Those are
    held off lines (`_labels_of`), which each rule's points rounded alone are not: a rule's
    34.999 points under a line at 35 are shown 35 beside 34.99 behaviour points, decay -0.01."""
    total = sum(earned)
    if total.__class__ is int:  # whole points only, the most common (made for every summary): none to round
        return round(behaviour * 100) - total * 100
    return round(behaviour * 100) - sum(round(shown(points) * 100) for points in earned)


def _decay_shares(runtime: ModelRuntime, points: list[float], decayed: float) -> list[float]:
    """Each rule's part of the `decayed` points, by the points it earned (`points`).

    A half-life takes each rule's points towards zero, the negative ones too (below a floor
    under zero): where one share of every rule's points accounts for the total, it is each
    one's (two days of a one-day half-life took 10 points of a rule to 2.5 and gave a -50 one
    back 37.5). Else (the rules' events were of different ages) and under steps, decay is put
    on the rules on one side, in proportion to their points: what it took from those with
    positive points, or gave back to those with negative ones. Without such rules (a model
    edited since the rules earned their points), it is every rule's, by the size of its points."""
    taken = sum(earned for earned in points if earned > 0)
    owed = sum(earned for earned in points if earned < 0)
    if runtime.half_life is not None and taken + owed:
        share = -decayed / (taken + owed)
        if 0 <= share <= 1:
            return [-share * earned for earned in points]
    bearing = taken if decayed < 0 else owed
    if bearing:
        return [decayed * earned / bearing if (earned > 0) == (bearing > 0) else 0 for earned in points]
    size = taken - owed
    return [decayed * abs(earned) / size if size else 0 for earned in points]


def fit_rows(runtime: ModelRuntime, state: LeadState) -> list[dict[str, Any]]:
    matched, fit, _ = runtime.fit_of(state)
    return [{"rule": name, "points": points} for name, points in fit_parts(runtime, matched, fit)]


#: The fewest points shown as other than 0 (the float 0.005 is above 0.005, and rounds to 0.01):
#: a rule's points below are no reason. A floor or ceiling leaves an occurrence such crumbs under
#: a half-life (the 0.0015 points a -7 took from a lead decayed nearly to a floor of 0), and
#: summaries and crossings listed `{"rule": "unsubscribe", "points": 0}` among the reasons.
_SHOWN_FROM = 0.005


def reasons(runtime: ModelRuntime, state: LeadState, limit: int = TOP_REASONS) -> list[dict[str, Any]]:
    """The largest contributions, either sign: behaviour rules, fit rules, decay and what the
    floor adds, as the explanation shows them: when they are `limit` or fewer, they add up to
    the score shown as its parts do (29.997 points shown 29.99 are +40 and decay -10.01)."""
    # (-|points|, name, points): sorted as tuples, largest first, then by name.
    items = []
    earned = []
    for name, entry in state.ledger.items():
        points = entry[0]
        if points:
            earned.append(points)
            if points >= _SHOWN_FROM or points <= -_SHOWN_FROM:
                items.append((-abs(points), name, points))
    items += runtime.fit_of(state)[2]
    figures = _figures(runtime, state)
    decayed = _decayed_shown(figures[6], earned) / 100  # none where seconds of a half-life show as -0.0
    if decayed:
        items.append((-abs(decayed), "decay", decayed))
    lifted = figures[8]
    if lifted:
        items.append((-lifted, "floor", lifted))
    items.sort()
    top = []
    for _, name, points in items[:limit]:
        top.append({"rule": name, "points": shown(points)})
    return top


def history_rows(runtime: ModelRuntime, state: LeadState) -> list[dict[str, Any]]:
    """The last `history` changes, newest first, rules named as they are now. A rule's row of
    0 points is no change: earlier versions wrote one for each occurrence a ceiling or floor
    left nothing, and a state they wrote may still hold them (a lead at its ceiling, nothing
    but). A merge's row says the merge even when it moved no points (README)."""
    rows: list[dict[str, Any]] = []
    for time_ms, points, label in reversed(state.changes(2 * runtime.history)):  # all a state keeps (see LeadState.record)
        rule = runtime.renames.get(label, label)
        if points or rule not in state.ledger:
            rows.append({"time": time_ms, "rule": rule, "points": shown(points)})
            if len(rows) == runtime.history:
                break
    return rows


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


def next_sweep_ms(runtime: ModelRuntime, lead_id: str, state: LeadState, now_ms: int) -> int | None:
    """When the worker's decay sweep next takes the lead after `now_ms` (None: never without
    new events): its state's due time, or, once that has passed, the first after those a sweep
    at `now_ms` takes (`ModelRuntime.decay`, `swept`). Not the due time of the state valued at
    `now_ms`: a half-life member's is a tenth of its points' decay after it, so it moved with
    every read and said nothing of the sweep."""
    due = runtime.next_due_ms(state)
    if due is None or due > now_ms:
        return due
    swept = state.copy()
    runtime.decay(swept, lead_id, now_ms, [], swept=True)
    return runtime.next_due_ms(swept)


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
    rows, decayed = rule_rows(runtime, current)
    out["behaviour_points"], out["fit_points"], out["floor_points"] = _figures(runtime, current)[6:]
    out.update(
        {
            "decayed": decayed,
            "rules": rows,
            "fit": fit_rows(runtime, current),
            "history": history_rows(runtime, current),
            "next_decay_ms": next_sweep_ms(runtime, lead_id, state, now_ms),
            "traits": dict(current.traits),
        }
    )
    return out
