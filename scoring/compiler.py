"""A model compiled into one apply function per event type: the engine's per-event hot path.

`ModelRuntime` would otherwise interpret the model for every event: loop over the matched
rules, ask each whether it has limits, look up its window, call a function per limit. A
function generated for one event type of one model does only what that type's rules need,
with every condition and limit written inline and every number of the model file a constant,
which roughly halves the cost of an event (dataclasses generates `__init__` the same way). The
rare paths (decay steps, crossings, fit, trimming) stay methods of the runtime, called from
the generated code.

A generated function is `apply(state, event, out) -> outcome`: it applies one event to the
state in place, appends the transitions it causes to `out`, and returns CHANGED (what a summary
shows may have changed: points, level, activity, traits or account), COUNTED (only what a
summary does not show: remembered ids, occurrence counts, window counters), DUPLICATE or LATE
(the last two change nothing). `function.source` holds the code for reading and debugging.
Values from model files reach it only as named constants (`ConditionCode`), never as source text.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable

from scoring.repeat import bonus_due, bump, seen_before
from scoring.rules import ConditionCode, Rule
from scoring.state import BONUS_PAID, KEY_CHARS, kept_key

if TYPE_CHECKING:
    from scoring.engine import ModelRuntime

Apply = Callable[..., int]

# Outcomes of applying one event to one state (see the module doc).
DUPLICATE, LATE, COUNTED, CHANGED = 0, 1, 2, 3


def compile_appliers(runtime: ModelRuntime) -> tuple[dict[str, Apply], Apply]:
    """The apply function of each event type the model's rules score, and the one for every
    other type (no rule matches it, but it counts as seen and may carry traits)."""
    by_type: dict[str, list[Rule]] = {}
    for rule in runtime.model.rules:
        by_type.setdefault(rule.event, []).append(rule)
    appliers = {kind: _Function(runtime, kind, rules).build() for kind, rules in by_type.items()}
    return appliers, _Function(runtime, "other", []).build()


class _Function:
    """The source of one generated apply function, built statement by statement."""

    def __init__(self, runtime: ModelRuntime, kind: str, rules: list[Rule]) -> None:
        self.runtime = runtime
        self.kind = kind
        self.rules = rules
        self.namespace: dict[str, Any] = {
            "rt": runtime, "bump": bump, "bonus_due": bonus_due, "seen_before": seen_before, "kept_key": kept_key,
            "DUPLICATE": DUPLICATE, "LATE": LATE, "COUNTED": COUNTED, "CHANGED": CHANGED,
        }  # fmt: skip
        self.code = ConditionCode(self.namespace, runtime.classify)
        self.lines: list[str] = []
        self.capped = "entry[2] += 1"  # how the rule being compiled counts a clipped occurrence
        self.half_life = runtime.half_life is not None
        #: `seen_key` -> the local that says whether the event's value is a repeat (see _repeats)
        self.repeat_vars: dict[str, str] = {}

    def const(self, value: Any) -> str:
        return self.code.constant(value)

    def emit(self, depth: int, *lines: str) -> None:
        self.lines.extend("    " * depth + line for line in lines)

    def build(self) -> Apply:
        rt = self.runtime
        self._prologue()
        # Conditions are tested once, before decay, as the rules' order of effects needs.
        tests = [self.code.test(rule.conditions) for rule in self.rules]
        matching = ["p = event.properties"]
        if any(c.source == "traits" for rule in self.rules for c in rule.conditions):
            matching.append("t = state.traits")
        matching += self.code.fetch
        matching += [f"m{i} = {test}" for i, test in enumerate(tests) if test != "True"]
        self.emit(1, *(matching if self.rules else []))
        matched = [f"m{i}" if test != "True" else "True" for i, test in enumerate(tests)]
        positive = [m for m, rule in zip(matched, self.rules) if rule.points > 0]
        # Points of either sign: a step is smaller at the floor, so one taken before an event
        # that precedes it is given back (and taken again after it), whatever the event's points.
        moving = [m for m, rule in zip(matched, self.rules) if rule.points]
        decays = rt.steps is not None or self.half_life
        if decays:
            # Decay due before the event is taken with the traits the lead had then: a crossing
            # it makes is of that time, and carries them (the conditions above read the event's).
            self.emit(1, "if traits_changed:", "    traits_after = state.traits", "    state.traits = traits_before")
        if rt.steps is not None:
            self.emit(
                1,
                "last_activity_ms = state.last_activity_ms",
                "taken = 0",
                "if time_ms >= last_activity_ms and (state.steps_taken or (last_activity_ms and "
                f"time_ms >= last_activity_ms + {self.const(rt.first_idle_ms)})):",
                "    taken = len(state.steps_taken)",
                f"    level = rt._step_decay(state, time_ms, {' or '.join(positive) or 'False'}, {' or '.join(moving) or 'False'}, "
                "level, event.lead_id, out, watermark_ms)",
                "    outcome = CHANGED",
            )
            if moving:  # an event before the last activity, arrived late
                self.emit(
                    1,
                    f"elif (state.steps_taken or state.earlier_steps) and ({' or '.join(moving)}):",
                    f"    taken = rt._before_last(state, time_ms, {' or '.join(positive) or 'False'})",
                    "    outcome = CHANGED",
                )
        elif self.half_life:
            finite = math.isfinite(rt.ceiling)
            self.emit(
                1,
                "weight = 1.0",
                f"bottom = {self.const(rt.floor)}",
                *([f"top = {self.const(rt.ceiling)}"] if finite else []),
                "if time_ms < state.as_of_ms:",
                f"    weight = {self.const(rt.half_life)}.factor(state.as_of_ms - time_ms)",
                # In time order the floor and ceiling clipped these points at their time, and
                # the clipped sum decayed since: bounds decayed as much clip them the same now.
                "    bottom *= weight",
                *(["    top *= weight"] if finite else []),
                "else:",
                "    as_of_ms, behaviour = state.as_of_ms, state.behaviour",
                f"    {self.const(rt.half_life)}.bring_to(state, time_ms)",
                # Decay took the score through a line before this event: settled at the time it
                # did, as a sweep on time would have (a line the event's points take it back over
                # is crossed back below).
                "    score = state.behaviour + state.fit",
                f"    if score < {self.const(rt.down)}[level] or score >= {self.const(rt.up)}[level]:",
                "        level = rt._decay_before(state, as_of_ms, behaviour, watermark_ms, time_ms, level, event.lead_id, out)",
                "        outcome = CHANGED",
                # A member is due each tenth of its points decayed (ModelRuntime.next_due_ms): its
                # account is told of those passed, as of the last, before this event's update.
                f"    elif time_ms >= as_of_ms + {self.const(rt.member_decay_ms)} and state.account_id is not None:",
                "        level = rt._decay_before(state, as_of_ms, behaviour, watermark_ms, time_ms, level, event.lead_id, out)",
            )
        if decays:
            self.emit(1, "if traits_changed:", "    state.traits = traits_after")
        self.emit(
            1,
            # After decay: what decay brought forward before the event is its account's before.
            "account_id = event.account_id",
            "if account_id is not None and account_id != state.account_id:",
            "    state.account_id = account_id",
            "    outcome = CHANGED",
            # Traits changed, or the state was read back from bytes (the model may have changed).
            "if traits_changed or state.fit_found is None:",
            "    fit, held = state.fit, state.level",
            "    rt.fit_of(state, time_ms, traits_changed)",  # may rename the level (ModelRuntime.adopt)
            "    if traits_changed or fit != state.fit or held is not state.level:",
            "        outcome = CHANGED",
        )
        if self.rules:
            self._rules(matched)
        self._epilogue()
        source = "def apply(state, event, out):\n" + "\n".join(self.lines) + "\n"
        exec(compile(source, f"<model {rt.name!r}, event type {self.kind!r}>", "exec"), self.namespace)  # noqa: S102 - constants only
        function: Apply = self.namespace["apply"]
        function.source = source  # type: ignore[attr-defined]
        return function

    def _prologue(self) -> None:
        """Lateness, duplicates, the newest time, the account, the traits."""
        rt = self.runtime
        remember = self.const(rt.remember)
        self.emit(
            1,
            "event_id = event.event_id",
            "ids = state.ids",
            # A long or non-ASCII id is kept as its digest (scoring/state.py); states written
            # before that keep it whole, so it is looked up both ways.
            f"if len(event_id) > {KEY_CHARS} or not event_id.isascii():",
            "    if event_id in ids or event_id in state.old_ids:",
            "        return DUPLICATE",
            "    event_id = kept_key(event_id)",
            # Before lateness: a redelivered event the lead has moved on from is a duplicate,
            # not late, whose traits (facts taken even from late events) were applied again.
            "if event_id in ids or event_id in state.old_ids:",
            "    return DUPLICATE",
            "time_ms = event.time_ms",
            "watermark_ms = state.watermark_ms",
            # Older than compaction forgot: late too, when an edit lengthened the lateness since.
            f"if time_ms < watermark_ms - {self.const(rt.lateness_ms)} or time_ms < state.forgotten_before_ms:",
            "    return LATE",
            f"if len(ids) < {remember}:",
            "    ids[event_id] = None",
            "    if time_ms > state.ids_max_ms:",
            "        state.ids_max_ms = time_ms",
            "else:",
            f"    state.remember_event(event_id, time_ms, {remember})",
            "if time_ms > watermark_ms:",
            "    state.watermark_ms = time_ms",
            # Without a half-life the points are valued at the newest event (LeadState.as_of_ms).
            *([] if self.half_life else ["    if time_ms > state.as_of_ms:", "        state.as_of_ms = time_ms"]),
            "state.revision += 1",
            "outcome = COUNTED",
            # A level the ladder no longer has raises: no test costs the leads at one it has.
            "try:",
            f"    level = {self.const(rt.level_index)}[state.level]",
            "except KeyError:",
            f"    level = {self.const(rt.ladder)}.level_of(state.level, rt.score(state))",
            "traits_before = state.traits",  # _merge_traits replaces the dict it changes
            "traits_changed = rt._merge_traits(state, event.traits, time_ms) if event.traits else False",
        )

    def _rules(self, matched: list[str]) -> None:
        """Each matched rule's points, occurrences and limits, in model order."""
        depth = 1
        if "True" not in matched:  # a rule without conditions matches every event of the type
            self.emit(depth, f"if {' or '.join(matched)}:")
            depth += 1
        self.emit(depth, "ledger = state.ledger", "behaviour = state.behaviour", "active = False")
        if any(rule.cap is not None or rule.bonus is not None for rule in self.rules):
            self.emit(depth, "windows = state.windows")
        self._repeats(depth, matched)
        for m, rule in zip(matched, self.rules):
            self._rule(depth, m, rule)
        self.emit(
            depth,
            "state.behaviour = behaviour",
            "if active and time_ms > state.last_activity_ms:",
            "    if state.steps_taken:  # the idle period ends; an activity arriving late may still fall in it",
            "        state.earlier_activity_ms, state.earlier_steps = state.last_activity_ms, state.steps_taken",
            "        state.steps_taken = ()",
            "    state.last_activity_ms = time_ms",
            "    outcome = CHANGED",
        )
        if self.runtime.steps is not None:
            # Steps given back before the event's points that are due still (its idle period
            # goes on) are taken again after them, in this event: no crossing up and down again.
            self.emit(
                1,
                "if taken and taken > len(state.steps_taken) and state.last_activity_ms == last_activity_ms:",
                f"    rt._retake(state, {self.const(self.runtime.steps)}.taken_due_ms(last_activity_ms, taken))",
            )

    def _repeats(self, depth: int, matched: list[str]) -> None:
        """`repeat<n>`: whether the event's value of a `once_per` field is a repeat, tested and
        recorded once for all the matched rules that share the field (their `seen_key`), so
        that the first of them does not make the event a repeat for the others."""
        sharing: dict[str, list[str]] = {}
        for m, rule in zip(matched, self.rules):
            if rule.seen_key is not None:
                sharing.setdefault(rule.seen_key, []).append(m)
        self.repeat_vars = {}
        for n, (key, ms) in enumerate(sharing.items()):
            once_per = next(rule.once_per for rule in self.rules if rule.seen_key == key)
            assert once_per is not None
            source = "p" if once_per.source == "properties" else "state.traits"
            any_matched = "" if "True" in ms else f"({' or '.join(ms)}) and "
            self.repeat_vars[key] = f"repeat{n}"
            self.emit(
                depth,
                f"value = {source}.get({self.const(once_per.key)})",
                f"repeat{n} = {any_matched}value is not None and seen_before(state, {self.const(key)}, value)",
            )

    def _rule(self, depth: int, m: str, rule: Rule) -> None:
        name = self.const(rule.name)
        if m != "True":
            self.emit(depth, f"if {m}:")
            depth += 1
        self.emit(
            depth,
            f"entry = ledger.get({name})",
            "if entry is None:",
            f"    entry = ledger[{name}] = [0, 0, 0, 0]",
            "entry[1] += 1",
            f"points = {self.const(rule.points)}",
        )
        # One occurrence counts as capped once, however many of its limits clip it (its cap,
        # ceiling and the model's floor, say): a plain rule has one, the floor or the ceiling.
        self.capped = "entry[2] += 1" if rule.plain else "capped = 1"
        if not rule.plain:
            self.emit(depth, "capped = 0")
        if rule.positive:
            self.emit(depth, "active = True")
        self._limits(depth, rule)
        if rule.plain and rule.points:
            self._score(depth, name)
        else:
            self.emit(depth, "if points:")
            self._score(depth + 1, name)
        if not rule.plain:
            self.emit(depth, "entry[2] += capped")

    def _limits(self, depth: int, rule: Rule) -> None:
        """A rule's limits, in the order scoring/repeat.py documents."""
        if rule.seen_key is not None:
            self.emit(
                depth,
                f"if {self.repeat_vars[rule.seen_key]}:",
                f"    {self.capped}",
                "    points = 0",
                "else:",
            )
            depth += 1
            if rule.cap is None and rule.bonus is None and rule.max_points is None:
                self.emit(depth, "pass")
        if rule.cap is not None:
            self._bump(depth, rule.cap_key, rule.cap.window, rule.cap.max_scored)
            self.emit(depth, f"if before >= {self.const(rule.cap.max_scored)}:", f"    {self.capped}", "    points = 0")
        if rule.bonus is not None:
            self._bonus(depth, rule.bonus_key, rule.bonus.window, rule.bonus.count)
            self.emit(depth, "if due:", "    entry[3] += 1", f"    points += {self.const(rule.bonus.points)}")
        if rule.max_points is not None:
            self.emit(
                depth,
                f"room = {self.const(rule.max_points)} - abs(entry[0])",
                "if abs(points) > room:",
                "    points = max(room, 0) * (1 if points > 0 else -1)",
                f"    {self.capped}",
            )

    def _bump(self, depth: int, key: str, window: Any, limit: int) -> None:
        """`before` = the window's count before this occurrence (scoring.repeat.bump, with
        the common case inline: the newest window, which counters keep first)."""
        key_c, limit_c = self.const(key), self.const(limit)
        self.emit(
            depth,
            f"counts = windows.get({key_c})",
            f"if counts is not None and counts[0] == (time_ms + {self.const(window.shift_ms)}) // {self.const(window.length_ms)}:",
            "    before = counts[1]",
            f"    if before < {limit_c}:",
            "        counts[1] = before + 1",
            "else:",
            f"    before = bump(state, {key_c}, {self.const(window)}, time_ms, {limit_c}, {self.const(self.runtime.lateness_ms)})",
        )

    def _bonus(self, depth: int, key: str, window: Any, count: int) -> None:
        """`due` = whether this occurrence makes the bonus due (scoring.repeat.bonus_due, with
        the common case inline: the newest window, which counters keep first, not paid yet)."""
        key_c, count_c, paid_c = self.const(key), self.const(count), self.const(BONUS_PAID)
        due = f"bonus_due(state, {key_c}, {self.const(window)}, time_ms, {count_c}, {self.const(self.runtime.lateness_ms)})"
        self.emit(
            depth,
            f"counts = windows.get({key_c})",
            f"if counts is not None and counts[0] == (time_ms + {self.const(window.shift_ms)}) // {self.const(window.length_ms)}:",
            "    before = counts[1]",
            "    if before >= 0:",
            "        before += 1",
            f"        due = before >= {count_c}",
            f"        counts[1] = {paid_c} if due else before",
            "    else:  # paid, or counted by a state of an earlier layout",
            f"        due = before != {paid_c} and {due}",
            "else:",
            f"    due = {due}",
        )

    def _score(self, depth: int, name: str) -> None:
        """Adds `points` to behaviour within the model's floor and ceiling, and records it."""
        rt = self.runtime
        if self.half_life:  # a late event's points, and the bounds that clip them, are discounted by the time they are behind
            floor = "bottom"
            self.emit(depth, "after = wanted = behaviour + points if weight == 1.0 else behaviour + points * weight")
        else:
            floor = self.const(rt.floor)
            self.emit(depth, "after = wanted = behaviour + points")
        # Points are clipped only in the direction they move: a lead left above the ceiling or
        # below the floor by an edit of them still takes points that move it back.
        if math.isfinite(rt.ceiling):
            ceiling = "top" if self.half_life else self.const(rt.ceiling)
            self.emit(
                depth,
                f"if after > {ceiling} and after > behaviour:",
                f"    after = {ceiling} if behaviour < {ceiling} else behaviour",
                f"elif after < {floor} and after < behaviour:",
            )
        else:
            self.emit(depth, f"if after < {floor} and after < behaviour:")
        self.emit(
            depth,
            f"    after = {floor} if behaviour > {floor} else behaviour",
            "if after != wanted:  # the model's ceiling or floor clipped the points",
            "    points = after - behaviour" + (" if weight == 1.0 else (after - behaviour) / weight" if self.half_life else ""),
            f"    {self.capped}",
            "behaviour = after",
            "entry[0] += points",
            # LeadState.record, inline. An occurrence the ceiling or floor left nothing (or, under
            # a half-life, less than the hundredth a row keeps) is no change, as a decay step that
            # takes nothing is not (ModelRuntime._took): written, a lead at its ceiling filled the
            # history's few places with 0-point rows, pushing out the changes that earned its points.
            "kept = round(points, 2) if points.__class__ is float else points",
            "if kept:",
            "    history = state.history",
            f"    history += (time_ms, kept, {name})",
            f"    if len(history) > {rt.history_trim}:",
            f"        del history[:-{rt.history_keep}]",
            "outcome = CHANGED",
        )

    def _epilogue(self) -> None:
        """The threshold ladder: a crossing, or a level the model no longer has (crossed from at
        once, to where `level` placed it: scoring.thresholds)."""
        rt = self.runtime
        floor = self.const(rt.floor)
        self.emit(
            1,
            "score = state.behaviour + state.fit",
            f"if score < {floor}:",
            f"    score = {floor}",
            f"if score >= {self.const(rt.up)}[level] or score < {self.const(rt.down)}[level]:",
            f"    rt._cross(state, level, {self.const(rt.ladder)}.level_after(level, score), event.lead_id, time_ms, out)",
            "    return CHANGED",
            f"if {self.const(rt.level_names)}[level] != state.level:  # a level the model no longer has",
            "    rt._cross(state, level, level, event.lead_id, time_ms, out)",
            "    return CHANGED",
            "return outcome",
        )

