"""Threshold ladders with hysteresis, and the transition record a crossing produces.

A ladder is a base level and ordered lines, e.g. nurture < MQL at 20 < SQL at 60. A lead moves
up a line when its score reaches `at`, and back down only when the score falls below
`at - hysteresis`, so a score wobbling around a line does not flap. Each change of level (one
or several lines at once) is one `Transition`.

Scores are compared with the lines within TOLERANCE, so that a sum of fractional points that
reaches a line in decimal (0.3 - 0.1 = 0.2) reaches it in binary too (0.19999999999999998).

States keep their level by name, so an edit of the ladder can leave one at a name it no longer
has. A level renamed with `renamed_from` (the base: `base_renamed_from`) is the same level under
its new name: no crossing. Any other name is a level removed (or renamed without saying so):
the lead is placed where its score reaches from the base, and its next change crosses from the
name it held (`Ladder.crossing`), so that the crossings a CRM receives still chain.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from scoring.config import Table

#: How far below a line a score may be and still count as on it.
TOLERANCE = 1e-9


@dataclass(frozen=True, slots=True)
class Ladder:
    """`names[0]` is the base level; level i >= 1 is reached at `at[i]` and left below `down[i]`."""

    names: tuple[str, ...]
    at: tuple[float, ...]
    hysteresis: tuple[float, ...]
    #: Earlier level name -> the level's name now (`renamed_from`).
    renamed: dict[str, str] = field(default_factory=dict)
    #: Score at which level i moves up (infinite for the top level), less TOLERANCE.
    up: tuple[float, ...] = field(init=False)
    #: Score below which level i moves down (minus infinity for the base level), less TOLERANCE.
    down: tuple[float, ...] = field(init=False)
    #: Level name, and earlier name of a renamed level, -> its level.
    index: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "up", tuple(a - TOLERANCE for a in self.at[1:]) + (float("inf"),))
        object.__setattr__(self, "down", (float("-inf"),) + tuple(a - h - TOLERANCE for a, h in zip(self.at[1:], self.hysteresis[1:])))
        index = {name: i for i, name in enumerate(self.names)}
        object.__setattr__(self, "index", index | {old: index[new] for old, new in self.renamed.items()})

    def level_after(self, level: int, score: float) -> int:
        """The level a lead at `level` is at once its score is `score`."""
        while score >= self.up[level]:
            level += 1
        while score < self.down[level]:
            level -= 1
        return level

    def level_of(self, name: str, score: float) -> int:
        """The level of a state that holds level `name` at `score`: the one of that name, or
        that was renamed from it; for a name the ladder no longer has (a level removed), where
        the score reaches from the base, as a new lead's would. Removed from between two
        lines that stay, a level's scores fall to the level below it, so the lead lands there,
        not above: its next crossing is down unless that change takes it over a line."""
        level = self.index.get(name)
        return self.level_after(0, score) if level is None else level

    def crossing(self, held: str, before: int, after: int) -> tuple[str, str] | None:
        """The from_level and direction of the move of a state holding level `held` (at
        `level_of(held, ...)` = `before`) to `after`; None when it is no crossing: the same
        level, or one renamed. From a level the ladder no longer has it is always a crossing,
        even to the level it was placed at, so that the CRM, which has the held level, hears of
        the new one; down when nothing lifted it over a line: a removed level's lead lands at
        or below where it stood (`level_of`), and an up crossing opens a hand-over (a deal, a
        task) that the lead had already had."""
        if held in self.index:
            if after == before:
                return None
            held = self.names[before]
        return held, "up" if after > before else "down"


def parse_ladder(table: Table, floor: float | None = None) -> Ladder:
    """`base`, `hysteresis` (default 0) and `ladder = [{ level = "mql", at = 20 }, ...]`; with
    the lowest score there can be (`floor`), the first line and its way back down above it, and
    the line above where a new lead or account starts too. A level's `renamed_from` (the
    base's: `base_renamed_from`) lists its earlier names (`_check_renames`)."""
    base = table.string("base")
    claims = [(table, "base_renamed_from", base, _earlier_names(table, "base_renamed_from"))]
    default_hysteresis = table.number("hysteresis", 0, minimum=0)
    raw = table.raw("ladder")
    if not isinstance(raw, list) or not raw or not all(isinstance(line, dict) for line in raw):
        raise table.error("ladder", "a list such as [{ level = \"mql\", at = 20 }, ...]", raw)
    names, at, hysteresis = [base], [float("-inf")], [0.0]
    for number, spec in enumerate(raw, 1):
        line = Table(table.file, table.where, spec, f"ladder[{number}].")
        line.check_keys(("level", "at", "hysteresis", "renamed_from"))
        name, line_at = line.string("level"), line.number("at")
        line_hysteresis = line.number("hysteresis", default_hysteresis, minimum=0)
        if name in names:
            raise line.error("level", "a level name used once in the ladder", name)
        if line_at <= at[-1]:
            raise line.error("at", f"a score above the level below ({at[-1]:g}): the ladder goes from low to high", line_at)
        if number == 1 and floor is not None:
            start = max(floor, 0)
            if line_at <= start:
                raise line.error("at", f"a score above {start:g}, the score of a new lead or account (no points, or the floor if "
                                       "higher): it starts at the base level and reaches a line by crossing it", line_at)
            if line_at - line_hysteresis <= floor:
                where = line if line.has("hysteresis") else table
                raise where.error("hysteresis", f"less than {line_at - floor:g}, the gap from the first line to the floor (else "
                                                f"one above the line could never fall back below it)", line_hysteresis)
        if number > 1 and line_at - line_hysteresis < at[-1]:
            # The field the file has: a default hysteresis too wide for one gap is the table's.
            where, line_name = (line, "") if line.has("hysteresis") else (table, f" from {name!r} (ladder[{number}])")
            raise where.error(
                "hysteresis",
                f"at most {line_at - at[-1]:g}, the gap{line_name} to the line below (else a lead could skip it going down)",
                line_hysteresis,
            )
        names.append(name)
        at.append(line_at)
        hysteresis.append(line_hysteresis)
        claims.append((line, "renamed_from", name, _earlier_names(line, "renamed_from")))
    return Ladder(tuple(names), tuple(at), tuple(hysteresis), _check_renames(claims, set(names)))


def _earlier_names(table: Table, key: str) -> tuple[str, ...]:
    earlier: tuple[str, ...] = table.strings(key, ())
    if not all(old.isprintable() for old in earlier):
        raise table.error(key, "the level's earlier name, or a list of them, each a text on one line", table.raw(key))
    return earlier


def _check_renames(claims: list[tuple[Table, str, str, tuple[str, ...]]], names: set[str]) -> dict[str, str]:
    """Earlier name -> the level's name now, from (table, field, level, its earlier names);
    ModelError when an earlier name is a level's name now (the level itself, or two levels
    renamed into each other's names), or is claimed twice: a state at that name could be at
    one level only. As rules' `renamed_from` (scoring.renames.check_renames)."""
    renamed: dict[str, str] = {}
    for table, key, name, earlier in claims:
        for old in earlier:
            if old in names:
                raise table.error(key, f"an earlier name no level of this ladder has now (level {name!r})", old)
            if old in renamed:
                also = "" if renamed[old] == name else f"; level {renamed[old]!r} claims it too"
                raise table.error(key, f"an earlier name one level claims once (level {name!r}{also})", old)
            renamed[old] = name
    return renamed


@dataclass(slots=True)
class Transition:
    """One threshold crossing of a lead (kind "lead") or of an account (kind "account").

    Not frozen, though nothing changes one once made: a frozen dataclass sets each of the 17
    fields through object.__setattr__, which made building one 4x slower (about 5.7 us here),
    and a crossing is made on the scoring hot path.
    """

    kind: str
    model: str
    lead_id: str | None
    account_id: str | None
    sequence: int
    from_level: str
    to_level: str
    direction: str
    score: float
    normalized: float
    grade: str | None
    engagement: int | None
    cell: str | None
    temperature: str | None
    time_ms: int
    reasons: tuple[dict[str, Any], ...]
    traits: dict[str, Any]

    @property
    def id(self) -> str:
        """Deterministic: replaying the same events yields the same id, so consumers can drop
        a transition produced again after a crash. Its time is part of it (an event's, or the
        time decay took the score through the line): a lead forgotten, or merged into another,
        that comes back starts counting its crossings again from 1, and they must not take the
        ids of its earlier life's, which every connector would drop as delivered."""
        subject = self.lead_id if self.kind == "lead" else self.account_id
        return hashlib.sha1(f"{self.kind}|{self.model}|{subject}|{self.sequence}|{self.time_ms}".encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "model": self.model,
            "lead_id": self.lead_id,
            "account_id": self.account_id,
            "from_level": self.from_level,
            "to_level": self.to_level,
            "direction": self.direction,
            "score": self.score,
            "normalized": self.normalized,
            "grade": self.grade,
            "engagement": self.engagement,
            "cell": self.cell,
            "temperature": self.temperature,
            "time": self.time_ms,
            "reasons": list(self.reasons),
            "traits": self.traits,
        }
