"""Decay of behaviour points: inactivity steps, or a half-life.

Decay is a function of timestamps, never of when it is evaluated:

- Steps (`30d idle: -15, 60d: -30, 90d: -50`): step k is due at last activity + its idle time
  and takes its points once per idle period (the floor may let it take less). Bringing a lead
  to a time applies the steps due by then that are not taken yet; an activity that turns out
  to precede a step already taken (it arrived late) gives that step's points back, since the
  lead was not idle that long. Any other event with points that does (a negative one, or one
  timed before the last activity) gives it back too, and takes it again right after its points:
  at the floor a step takes less, so it must come after every event before it. So evaluating
  at day 31, 45 and 95 or only at day 95 is the same.
  That holds across a later activity too: the idle period before the last activity keeps its
  steps (`LeadState.earlier_steps`) while an activity within the lateness may still fall in it.
- Half-life: behaviour points are valued at `as_of_ms` and multiplied by 2^(-elapsed/half-life)
  when brought forward; a late event's points are discounted by the time they are behind, so
  the value at any time is the exact sum of each event's decayed points (up to float rounding).
  The floor and ceiling that clip them are discounted as much: in time order they clipped the
  points at the event's time, and the clipped value decayed since.

"Activity" is an event that matched at least one rule with positive points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

from scoring.config import Table
from scoring.state import LeadState


@dataclass(frozen=True, slots=True)
class Step:
    idle_ms: int
    points: float


@dataclass(frozen=True, slots=True)
class StepDecay:
    steps: tuple[Step, ...]

    def due_ms(self, state: LeadState) -> int | None:
        """When the next step not yet taken is due; None without activity or steps left."""
        taken = len(state.steps_taken)
        if state.last_activity_ms == 0 or taken >= len(self.steps):
            return None
        return state.last_activity_ms + self.steps[taken].idle_ms

    def taken_due_ms(self, since_ms: int, taken: int) -> int:
        """When the last of `taken` steps of an idle period from `since_ms` fell due. A lead may
        have taken more steps than an edited schedule has: those count as due when the
        schedule's last step is, the latest time it knows."""
        return since_ms + self.steps[min(taken, len(self.steps)) - 1].idle_ms

    def take(self, state: LeadState, until_ms: int, floor: float) -> Iterator[tuple[int, float]]:
        """Takes each step due by `until_ms`; yields (due time, points taken) after each."""
        while True:
            due = self.due_ms(state)
            if due is None or due > until_ms:
                return
            step = self.steps[len(state.steps_taken)]
            points = max(step.points, floor - state.behaviour) if state.behaviour > floor else 0
            points = min(points, 0)
            state.behaviour += points
            state.steps_taken += (points,)
            state.revision += 1  # a step is a change of its own, whether a sweep or an event took it
            yield due, points

    def give_back(self, state: LeadState, activity_ms: int, earlier: bool = False) -> float:
        """Gives back the steps taken since the last activity (`earlier`: in the idle period
        before it) that were due after `activity_ms`, an activity that arrived late; returns
        their points."""
        since, taken = (state.earlier_activity_ms, state.earlier_steps) if earlier else (state.last_activity_ms, state.steps_taken)
        kept = len(taken)
        while kept and self.taken_due_ms(since, kept) > activity_ms:
            kept -= 1
        if kept == len(taken):
            return 0
        given = -sum(taken[kept:])
        state.behaviour += given
        if earlier:
            state.earlier_steps = taken[:kept]
        else:
            state.steps_taken = taken[:kept]
        return given

    def earlier_settled(self, state: LeadState, cutoff_ms: int) -> bool:
        """Whether no activity from `cutoff_ms` on can give back a step of the earlier idle
        period: each was due by then."""
        return self.taken_due_ms(state.earlier_activity_ms, len(state.earlier_steps)) <= cutoff_ms


@dataclass(frozen=True, slots=True)
class HalfLifeDecay:
    half_life_ms: int

    def factor(self, elapsed_ms: int) -> float:
        return float(2.0 ** (-elapsed_ms / self.half_life_ms))

    def bring_to(self, state: LeadState, time_ms: int) -> float:
        """Values behaviour points at `time_ms` if later than now; returns the points lost."""
        if time_ms <= state.as_of_ms:
            return 0
        before = state.behaviour
        if before:
            state.behaviour = before * self.factor(time_ms - state.as_of_ms)
        state.as_of_ms = time_ms
        return state.behaviour - before

    def crossing_ms(self, state: LeadState, points: float) -> int | None:
        """When behaviour points will have decayed to `points`, falling to it when positive and
        rising to it when negative (None if never: they only approach zero)."""
        behaviour = state.behaviour
        if not (0 < points < behaviour or behaviour < points < 0):
            return None
        return state.as_of_ms + math.ceil(self.half_life_ms * math.log2(behaviour / points))


Decay = StepDecay | HalfLifeDecay


def parse_decay(table: Table | None) -> Decay | None:
    if table is None:
        return None
    table.check_keys(("steps", "half_life"))
    if table.has("steps") and table.has("half_life"):
        raise table.error("half_life", "either 'steps' or 'half_life', not both")
    if table.has("half_life"):
        return HalfLifeDecay(table.duration_ms("half_life"))
    raw = table.raw("steps")
    if not isinstance(raw, list) or not raw or not all(isinstance(s, dict) for s in raw):
        raise table.error("steps", "a list such as [{ idle = \"30d\", points = -15 }, ...]", raw)
    steps: list[Step] = []
    for number, spec in enumerate(raw, 1):
        step = Table(table.file, table.where, spec, f"steps[{number}].")
        step.check_keys(("idle", "points"))
        idle_ms, points = step.duration_ms("idle"), step.number("points")
        if points > 0:
            raise step.error("points", "a negative number, or 0 (decay takes points away)", points)
        if steps and idle_ms <= steps[-1].idle_ms:
            raise step.error("idle", "a longer idle time than the step before (steps in order)", spec["idle"])
        steps.append(Step(idle_ms, points))
    return StepDecay(tuple(steps))
