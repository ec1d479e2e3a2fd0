"""Reviewing a model against real outcomes: did its scores, levels and grades pick the leads that
went on to convert, and which rules give points that conversions do not bear out?

The input is one `Reviewed` per lead whose outcome is known, as the model saw that lead just
before the outcome (the caller scores only the events before it, so a lead is never judged on
what it did after it was won or lost). Everything here is counting:

- `auc`: the chance that a lead picked at random from those that converted scored higher than
  one picked at random from those that did not (ties count half): 0.5 is a coin toss, 1.0 a
  perfect ranking. It is one figure to compare two versions of a model on the same history.
- per level of the ladder, per tenth of the 0-100 scale, per fit grade, engagement level, grid
  cell and temperature: leads, conversions and the conversion rate; per level and per tenth also
  the precision and recall of treating every lead at or above it as sales-ready (so the tenths
  show where a threshold would best sit).
- per rule: the leads whose events it matched (or, for a fit rule, whose traits meet it), their conversion
  rate against that of the other leads, its lift (rate over the overall rate) and `z`, the
  two-proportion z statistic of the difference.

Findings are drawn only from differences that are unlikely to be chance (|z| >= 1.96, 95%) and
backed by at least `min_leads` leads on each side: a rule whose leads convert less than the
others though it gives points (or more though it takes points), and a level of the ladder that
converts less than the level below it. A rule no reviewed lead triggered is named too: its event
type or conditions may not match what the events carry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from scoring.model import GRADES, Model


@dataclass(frozen=True, slots=True)
class Reviewed:
    """One lead with a known outcome, labelled by the model at the time of that outcome."""

    lead_id: str
    converted: bool
    score: float
    #: The score on the model's 0-100 scale, exact (not the tenth a summary shows): its tenth
    #: of the scale is that of the exact points, as its labels are.
    normalized: float
    level: str
    grade: str | None
    engagement: int | None
    cell: str | None
    temperature: str | None
    #: Names of the behaviour rules that matched its events (whatever the floor and ceilings
    #: let them earn; one scoring by its bonus alone once the bonus was won) and of the fit
    #: rules its traits meet.
    rules: frozenset[str]


def review(model: Model, leads: Sequence[Reviewed], min_leads: int = 20) -> dict[str, Any]:
    """The review of `model` on these leads: figures, then findings (sentences) to act on."""
    converted = sum(lead.converted for lead in leads)
    levels = _levels(model, leads, converted)
    rules = _rules(model, leads, converted)
    return {
        "model": model.name,
        "leads": len(leads),
        "converted": converted,
        "conversion_rate": _rate(converted, len(leads)),
        "auc": auc([lead.score for lead in leads], [lead.converted for lead in leads]),
        "levels": levels,
        "bands": _bands(leads, converted),
        "grades": _groups(((lead.grade, lead.converted) for lead in leads), GRADES if model.grades else ()),
        "engagement": _groups(((lead.engagement, lead.converted) for lead in leads), range(1, 5) if model.engagement else ()),
        "cells": _groups(((lead.cell, lead.converted) for lead in leads), _cells(model)),
        "temperature": _groups(((lead.temperature, lead.converted) for lead in leads), model.temperature.labels if model.temperature else ()),
        "rules": rules,
        "findings": _findings(levels, rules, len(leads), converted, min_leads),
    }


def auc(scores: Sequence[float], converted: Sequence[bool]) -> float | None:
    """Area under the ROC curve of `scores` as a predictor of `converted`; None unless there are
    leads of both kinds. Computed from ranks (Mann-Whitney U), ties sharing their mean rank."""
    positives = sum(converted)
    negatives = len(converted) - positives
    if positives == 0 or negatives == 0:
        return None
    order = sorted(range(len(scores)), key=scores.__getitem__)
    rank_sum = 0.0
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and scores[order[end + 1]] == scores[order[start]]:
            end += 1
        mean_rank = (start + end) / 2 + 1  # ranks are 1-based
        rank_sum += mean_rank * sum(converted[i] for i in order[start : end + 1])
        start = end + 1
    u = rank_sum - positives * (positives + 1) / 2
    return round(u / (positives * negatives), 4)


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _tally(outcomes: Iterable[tuple[Any, bool]], keys: Iterable[Any]) -> dict[Any, list[int]]:
    """key -> [leads, conversions] from (key, converted) pairs, for the given keys only, in
    their order (a pair of another key, such as a rule an earlier model version had, is left out)."""
    counts = {key: [0, 0] for key in keys}
    for key, converted in outcomes:
        entry = counts.get(key)
        if entry is not None:
            entry[0] += 1
            entry[1] += converted
    return counts


def _levels(model: Model, leads: Sequence[Reviewed], converted: int) -> list[dict[str, Any]]:
    ladder = model.ladder
    counts = _tally(((ladder.level_of(lead.level, lead.score), lead.converted) for lead in leads), range(len(ladder.names)))
    heads = [{"level": name, "at": ladder.at[index] if index else None} for index, name in enumerate(ladder.names)]
    return _lines(heads, list(counts.values()), converted)


def _bands(leads: Sequence[Reviewed], converted: int) -> list[dict[str, Any]]:
    """Ten bands of the 0-100 scale: where to put a threshold so that what is handed over
    converts well enough."""
    counts = _tally(((min(int(lead.normalized // 10), 9), lead.converted) for lead in leads), range(10))
    return _lines([{"from": band * 10} for band in range(10)], list(counts.values()), converted)


def _lines(heads: list[dict[str, Any]], counts: list[list[int]], converted: int) -> list[dict[str, Any]]:
    """One row per step from the bottom up (a level, a band): its fields, leads, conversions
    and rate, and the precision and recall of a line at its lower edge (everything at or above
    it handed over)."""
    rows = []
    above_leads = above_converted = 0
    for head, (n, c) in reversed(list(zip(heads, counts))):  # top down, to sum what is above
        above_leads += n
        above_converted += c
        rows.append(
            {
                **head,
                "leads": n,
                "converted": c,
                "rate": _rate(c, n),
                "precision_at_or_above": _rate(above_converted, above_leads),
                "recall_at_or_above": _rate(above_converted, converted),
            }
        )
    rows.reverse()
    return rows


def _groups(outcomes: Iterable[tuple[Any, bool]], labels: Iterable[Any]) -> list[dict[str, Any]]:
    """Leads, conversions and rate per label (best first for grades, engagement and cells);
    empty for a model without that scale."""
    counts = _tally(outcomes, labels)
    return [{"label": label, "leads": n, "converted": c, "rate": _rate(c, n)} for label, (n, c) in counts.items()]


def _cells(model: Model) -> tuple[str, ...]:
    if model.grades is None or model.engagement is None:
        return ()
    return tuple(f"{grade}{engagement}" for grade in GRADES for engagement in range(1, 5))


#: |z| beyond which a difference in conversion rates is taken as real (two-sided 95%).
SIGNIFICANT_Z = 1.96


def z_statistic(leads_a: int, converted_a: int, leads_b: int, converted_b: int, exact: bool = False) -> float | None:
    """Two-proportion z statistic of rate a minus rate b (pooled), to two decimals as shown
    unless `exact` (what SIGNIFICANT_Z is compared with: -1.9596 is shown -1.96 but is short of
    it); None when either side is empty or every lead converted alike (no spread to measure
    against)."""
    if leads_a == 0 or leads_b == 0:
        return None
    pooled = (converted_a + converted_b) / (leads_a + leads_b)
    spread = pooled * (1 - pooled) * (1 / leads_a + 1 / leads_b)
    if spread <= 0:
        return None
    z = (converted_a / leads_a - converted_b / leads_b) / math.sqrt(spread)
    return z if exact else round(z, 2)


def _rules(model: Model, leads: Sequence[Reviewed], converted: int) -> list[dict[str, Any]]:
    rules = [(rule.name, "behaviour", rule.points, rule.bonus.points if rule.bonus else None) for rule in model.rules]
    rules += [(rule.name, "fit", rule.points, None) for rule in model.fit_rules]
    counts = _tally(((name, lead.converted) for lead in leads for name in lead.rules), (rule[0] for rule in rules))
    rows = []
    for name, kind, points, bonus in rules:
        n, c = counts[name]
        rate = _rate(c, n)
        rows.append(
            {
                "rule": name,
                "kind": kind,
                "points": points,
                "bonus": bonus,
                "leads": n,
                "converted": c,
                "rate": rate,
                "rate_without": _rate(converted - c, len(leads) - n),
                "lift": _lift(n, c, len(leads), converted),
                "z": z_statistic(n, c, len(leads) - n, converted - c),
            }
        )
    return rows


def _lift(leads: int, converted: int, all_leads: int, all_converted: int) -> float | None:
    """The rule's leads' conversion rate over the overall rate, from the counts: of the rates
    as shown, rounded to 4 decimals, 3 conversions in 1,218 leads against 3 in 4,003 made 3.57
    of a lift of 3.29."""
    if not leads or not all_converted:
        return None
    return round(converted * all_leads / (leads * all_converted), 2)


def _findings(levels: list[dict[str, Any]], rules: list[dict[str, Any]], leads: int, converted: int, min_leads: int) -> list[str]:
    if leads == 0:
        return ["no lead with an outcome has events this model scores: nothing to review"]
    findings = []
    for row in rules:
        name, n, z = row["rule"], row["leads"], row["z"]
        points = row["points"] or row["bonus"] or 0  # a rule that scores by its bonus alone
        if n == 0:
            check = ("its trait conditions against your leads' traits (identify events)" if row["kind"] == "fit"
                     else "its event type and conditions against your events")
            findings.append(f"{'fit ' if row['kind'] == 'fit' else ''}rule '{name}' matched none of the reviewed leads: check {check}")
            continue
        exact = z_statistic(n, row["converted"], leads - n, converted - row["converted"], exact=True)
        if exact is None or abs(exact) < SIGNIFICANT_Z or min(n, leads - n) < min_leads:
            continue
        compared = f"its {n} leads converted at {row['rate']:.1%}, the others at {row['rate_without']:.1%} (z {z:g})"
        if points > 0 and z < 0:
            findings.append(f"rule '{name}' gives {points:+g} points, but {compared}: lower its points or narrow its conditions")
        elif points < 0 and z > 0:
            findings.append(f"rule '{name}' takes {points:g} points, but {compared}: reconsider the penalty")
    for lower, higher in zip(levels, levels[1:]):
        if min(lower["leads"], higher["leads"]) < min_leads:
            continue
        z = z_statistic(higher["leads"], higher["converted"], lower["leads"], lower["converted"], exact=True)
        if z is not None and z <= -SIGNIFICANT_Z:
            findings.append(
                f"level '{higher['level']}' converted at {higher['rate']:.1%}, less than '{lower['level']}' at "
                f"{lower['rate']:.1%} (z {round(z, 2):g}): the points that lift leads to '{higher['level']}' do not predict conversion"
            )
    return findings
