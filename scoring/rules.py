"""Rules and their conditions, compiled into one fast matching function per event type.

A condition tests one field of the event's `properties` or of the lead's `traits`:

    properties.url = { glob = "*/pricing*" }        properties.form = "demo"   (equals)
    properties.time_on_page_s = { gte = 120 }       traits.country = ["DE", "AT"]   (in)

Matching is the per-event hot path, so the conditions of all rules of one event type are
compiled into a single generated Python function (the technique `dataclasses` uses for
`__init__`): each field is fetched and lower-cased once, each condition is an inline expression,
and no per-rule call is made. Every value from the model file reaches the generated code as a
named constant in its namespace, never as source text.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from scoring.config import Table, did_you_mean, first_wrong, is_number
from scoring.errors import ModelError
from scoring.repeat import Bonus, Cap, OncePer, parse_bonus, parse_cap, parse_once_per, seen_key

#: Classes of e-mail domains the `domain` operator tests (see scoring.fit).
DOMAIN_CLASSES = ("free", "disposable", "competitor", "business")

OPERATORS = (
    "eq", "ne", "in", "not_in", "prefix", "glob", "contains", "words",
    "gt", "gte", "lt", "lte", "exists", "domain",
)  # fmt: skip

_SCALAR_TYPES = frozenset({str, int, float, bool})
_NUMBER_TYPES = frozenset({int, float})

Matcher = Callable[[dict[str, Any], dict[str, Any]], Sequence[Any]]


@dataclass(frozen=True, slots=True)
class Condition:
    """`source`.`key` `op` `operand`; operands are normalised (texts lower-cased where the
    operator ignores case, lists turned into frozensets or tuples)."""

    source: str
    key: str
    op: str
    operand: Any


@dataclass(frozen=True, slots=True)
class Rule:
    """A behavioural rule: `points` for each occurrence of `event` meeting every condition."""

    name: str
    event: str
    points: float
    conditions: tuple[Condition, ...] = ()
    cap: Cap | None = None
    once_per: OncePer | None = None
    max_points: float | None = None
    bonus: Bonus | None = None
    #: The rule's earlier names (scoring.renames): what lead states keep under them is its own.
    renamed_from: tuple[str, ...] = ()
    #: No limit applies: the engine adds `points` without looking further.
    plain: bool = field(init=False)
    #: Positive points: an occurrence is activity (it restarts the decay clock).
    positive: bool = field(init=False)
    cap_key: str = field(init=False)
    bonus_key: str = field(init=False)
    #: Under what the lead's state remembers the `once_per` values seen: what the rule
    #: de-duplicates (its event type and field), not its name, so a renamed rule still knows
    #: them (scoring.repeat.seen_key); None without `once_per`.
    seen_key: str | None = field(init=False)

    def __post_init__(self) -> None:
        plain = self.cap is None and self.once_per is None and self.max_points is None and self.bonus is None
        object.__setattr__(self, "plain", plain)
        object.__setattr__(self, "positive", self.points > 0)
        cap_key, bonus_key = window_keys(self.name)
        object.__setattr__(self, "cap_key", cap_key)
        object.__setattr__(self, "bonus_key", bonus_key)
        object.__setattr__(self, "seen_key", None if self.once_per is None else seen_key(self.event, self.once_per))


def window_keys(name: str) -> tuple[str, str]:
    """Under what a lead's state keeps the window counters of the rule named `name`: its
    cap's and its bonus's (scoring.repeat)."""
    return "cap:" + name, "bonus:" + name


_RULE_KEYS = ("name", "event", "points", "properties", "traits", "cap", "once_per", "max_points", "bonus", "renamed_from")


def parse_rule(file: str, data: dict[str, Any], number: int) -> Rule:
    """One `[[rules]]` table; `number` (1-based) names it in errors until its name is known."""
    table = Table(file, f"rule #{number}", data)
    name = table.string("name")
    table.where = f"rule '{name}'"
    table.check_keys(_RULE_KEYS)
    points = table.number("points")
    max_points = table.number("max_points", None)
    if max_points is not None and max_points <= 0:
        raise table.error("max_points", "a positive number (a ceiling on the rule's points, either sign)", max_points)
    bonus = parse_bonus(table)
    if bonus is not None and points * bonus.points < 0:
        raise table.error("bonus.points", "points of the same sign as the rule's points", bonus.points)
    renamed_from = table.strings("renamed_from", ())
    if not all(old.isprintable() for old in renamed_from):
        raise table.error("renamed_from", "the rule's earlier name, or a list of them, each a text on one line", table.raw("renamed_from"))
    event = table.string("event")
    if "*" in event:  # as in unscored_types, where "*" is every type: here it matched none
        raise table.error("event", "one event type such as \"page_view\" (a rule scores one type; '*' is no pattern here)", event)
    return Rule(
        name=name,
        event=event,
        points=points,
        conditions=parse_conditions(table, ("properties", "traits")),
        cap=parse_cap(table),
        once_per=parse_once_per(table),
        max_points=max_points,
        bonus=bonus,
        renamed_from=renamed_from,
    )


def parse_conditions(table: Table, sources: tuple[str, ...]) -> tuple[Condition, ...]:
    conditions = []
    for source in sources:
        fields = table.table(source)
        if fields is None:
            continue
        for key, spec in fields.data.items():
            conditions.extend(_parse_field(fields, source, key, spec))
    return tuple(conditions)


def _parse_field(table: Table, source: str, key: str, spec: Any) -> list[Condition]:
    if isinstance(spec, dict):
        ops = Table(table.file, table.where, spec, f"{table.prefix}{key}.")
        if spec and not any(op in OPERATORS for op in spec):  # `properties.plan.name = "pro"`, or a misspelt operator
            unknown = next(iter(spec))
            if not did_you_mean(unknown, OPERATORS):  # one close to an operator (`word`) is one: check_keys names it
                raise ModelError(f"{table.file}: {table.where}, field '{ops.prefix}{unknown}': unknown field (expected one of: "
                                 f"{', '.join(OPERATORS)}); a field inside another ({key}.{unknown}) cannot be tested: send "
                                 f"it as a field of its own ({key}_{unknown})")
        ops.check_keys(OPERATORS)
        if not spec:  # no test at all would match every event
            raise table.error(key, f"at least one operator ({', '.join(OPERATORS)})", spec)
        conditions = [Condition(source, key, op, _operand(ops, op, value)) for op, value in spec.items()]
        _check_range(ops, spec)
        _check_absence(ops, spec)
        return conditions
    shorthand = "in" if isinstance(spec, list) else "eq"
    return [Condition(source, key, shorthand, _operand(Table(table.file, table.where, {key: spec}, table.prefix), shorthand, spec, key))]


def _check_range(ops: Table, spec: dict[str, Any]) -> None:
    """ModelError for bounds no number meets (`gte = 10, lte = 5`): the condition loaded and held
    for no value, silently. The operands are known to be finite numbers."""
    for low_op in ("gt", "gte"):
        for high_op in ("lt", "lte"):
            if low_op in spec and high_op in spec:
                low, high = spec[low_op], spec[high_op]
                inclusive = (low_op, high_op) == ("gte", "lte")  # 5 alone meets gte = 5, lte = 5
                if low > high or (low == high and not inclusive):
                    bound = "at least" if inclusive else "above"
                    raise ops.error(high_op, f"a number {bound} {low_op} ({low:g}): no number meets both", high)


#: Operators no missing field meets (ne, not_in and exists may hold for one).
_PRESENT_ONLY = tuple(op for op in OPERATORS if op not in ("ne", "not_in", "exists"))


def _check_absence(ops: Table, spec: dict[str, Any]) -> None:
    """ModelError for `exists = false` beside an operator only a present field meets
    (`{ exists = false, eq = 3 }`): the condition loaded and held for no value, silently."""
    if spec.get("exists") is False:
        present = next((op for op in spec if op in _PRESENT_ONLY), None)
        if present is not None:
            raise ops.error("exists", f"true, or no {present} beside it: a missing field meets no {present}", False)


def _comparable(value: Any) -> bool:
    """A value an event's field can equal: JSON has no nan nor inf, which TOML reads (and 1e400
    is inf), so `eq = nan` held for no event and `ne = nan` for every one, silently."""
    return type(value) in _SCALAR_TYPES and (type(value) is not float or is_number(value))


def _operand(table: Table, op: str, value: Any, key: str | None = None) -> Any:
    """The normalised operand of `op`; `key` is the field name the errors use (op by default)."""
    key = op if key is None else key
    if op in ("eq", "ne"):
        if not _comparable(value):
            raise table.error(key, "a text, finite number or boolean", value)
        return value
    if op in ("in", "not_in"):
        wrong = first_wrong(value, _comparable) if isinstance(value, list) else None
        if not isinstance(value, list) or not value or wrong is not None:
            raise table.error(key, "a non-empty list of texts, finite numbers or booleans", value, wrong)
        # Not a set: {True, 1} is {True} in Python, and a model's [true, 1] means both.
        return tuple({(v.__class__ is bool, v): v for v in value}.values())
    if op in ("gt", "gte", "lt", "lte"):
        if not is_number(value):
            raise table.error(key, "a finite number", value)
        return value
    if op == "exists":
        if not isinstance(value, bool):
            raise table.error(key, "true or false", value)
        return value
    texts = table.strings(key)
    if op == "domain":
        unknown = [t for t in texts if t not in DOMAIN_CLASSES]
        if unknown:
            raise table.error(key, f"domain classes among {', '.join(DOMAIN_CLASSES)}", value)
        return frozenset(texts)
    lowered = tuple(t.lower() for t in texts)
    if op == "glob":
        # fnmatch writes a set of no character, a range from high to low ([z-a], [9-0]), as
        # (?!): the condition loaded and held for no value, silently.
        wrong = first_wrong(list(lowered), lambda pattern: "(?!)" not in fnmatch.translate(pattern))
        if wrong is not None:
            raise table.error(key, "patterns some text can match: a range in [ ] goes from low to high, such as [a-z] or [0-9]",
                              texts[wrong])
    if op == "words":
        # Not \b: a term that starts or ends with a non-word character ("c++", ".net") would
        # then need a word character beside it, and never match a word on its own. A phrase's
        # words are apart by any run of whitespace in the value: CRM titles come with doubled
        # spaces and tabs ("Head  of Sales"). Written into the pattern, that costs a match
        # nothing, where normalising the value would cost every event a pass over its text.
        phrases = (r"\s+".join(map(re.escape, w.split())) for w in lowered)
        return re.compile(r"(?<!\w)(?:" + "|".join(phrases) + r")(?!\w)")
    return lowered  # prefix, glob, contains


class ConditionCode:
    """Conditions as inline Python expressions, for generated functions whose locals `p` and
    `t` are the event's properties and the lead's traits: each field is fetched (and
    lower-cased, or classed as an e-mail domain) once however many conditions read it, and
    every value from the model file is a named constant of `namespace`, never source text."""

    def __init__(self, namespace: dict[str, Any], classify_domain: Callable[[Any], str | None]) -> None:
        self.namespace = namespace
        namespace.update({"_SCALARS": _SCALAR_TYPES, "_NUMBERS": _NUMBER_TYPES, "_domain": classify_domain})
        #: Statements that fetch the fields the expressions so far read.
        self.fetch: list[str] = []
        self._fields: dict[tuple[str, str], str] = {}
        self._derived: set[str] = set()

    def constant(self, value: Any) -> str:
        name = f"C{len(self.namespace)}"
        self.namespace[name] = value
        return name

    def test(self, conditions: Sequence[Condition]) -> str:
        """One expression true when every condition holds ("True" for none)."""
        return " and ".join(self._expression(cond) for cond in conditions) or "True"

    def _expression(self, cond: Condition) -> str:
        var = self._fields.get((cond.source, cond.key))
        if var is None:
            var = self._fields[(cond.source, cond.key)] = f"v{len(self._fields)}"
            self.fetch.append(f"{var} = {'p' if cond.source == 'properties' else 't'}.get({self.constant(cond.key)})")
        if cond.op in ("prefix", "glob", "contains", "words") and f"l{var}" not in self._derived:
            self._derived.add(f"l{var}")
            self.fetch.append(f"l{var} = {var}.lower() if {var}.__class__ is str else None")
        if cond.op == "domain" and f"d{var}" not in self._derived:
            self._derived.add(f"d{var}")
            self.fetch.append(f"d{var} = _domain({var})")
        return _expression(cond, var, self.constant)


def compile_matcher(pairs: Iterable[tuple[Any, Sequence[Condition]]], classify_domain: Callable[[Any], str | None]) -> Matcher:
    """One function `match(properties, traits) -> [payload, ...]` for (payload, conditions) pairs.

    The payloads of the pairs whose conditions all hold are returned in the given order.
    """
    items = list(pairs)
    if all(not conditions for _, conditions in items):
        everything = tuple(payload for payload, _ in items)
        return lambda properties, traits: everything
    namespace: dict[str, Any] = {}
    code = ConditionCode(namespace, classify_domain)
    body = [f"    if {code.test(conditions)}:\n        m.append({code.constant(payload)})" for payload, conditions in items]
    source = "def match(p, t):\n" + "".join(f"    {line}\n" for line in code.fetch) + "    m = []\n" + "\n".join(body) + "\n    return m\n"
    exec(compile(source, "<scoring rules>", "exec"), namespace)  # noqa: S102 - constants only, see module doc
    match: Matcher = namespace["match"]
    match.source = source  # type: ignore[attr-defined]  # for debugging: the generated code
    return match


# Conditions as Python expressions: {v} is the field's value, {low} its lower-cased text (None
# when not a text), {dom} its e-mail domain class, {c} the operand constant.
_TEMPLATES = {
    "gt": "({v}.__class__ in _NUMBERS and {v} > {c})",
    "gte": "({v}.__class__ in _NUMBERS and {v} >= {c})",
    "lt": "({v}.__class__ in _NUMBERS and {v} < {c})",
    "lte": "({v}.__class__ in _NUMBERS and {v} <= {c})",
    "domain": "{dom} in {c}",
    "prefix": "({low} is not None and {low}.startswith({c}))",
    "words": "({low} is not None and {c}.search({low}) is not None)",
}


def _expression(cond: Condition, var: str, constant: Callable[[Any], str]) -> str:
    op, operand, low = cond.op, cond.operand, f"l{var}"
    if op in ("eq", "ne", "in", "not_in"):
        test = _equality(var, operand if op in ("in", "not_in") else (operand,), constant)
        return test if op in ("eq", "in") else f"not {test}"
    if op == "exists":
        return f"{var} is {'not ' if operand else ''}None"
    if op == "contains":
        return f"({low} is not None and ({' or '.join(f'{constant(t)} in {low}' for t in operand)}))"
    if op == "glob":
        return f"({low} is not None and ({' or '.join(_glob(pattern, low, constant) for pattern in operand)}))"
    return _TEMPLATES[op].format(v=var, low=low, dom=f"d{var}", c=constant(operand))


def _equality(var: str, values: tuple[Any, ...], constant: Callable[[Any], str]) -> str:
    """`var` equals one of `values` (no two equal as JSON values) as JSON values do: true is
    not 1, nor false 0, although Python's True == 1 (and a set holding 1 holds True); 1 and 1.0
    are the same number."""
    flags = frozenset(v for v in values if v.__class__ is bool)
    others = frozenset(v for v in values if v.__class__ is not bool)  # without booleans, which 1 and 0 would find
    numbers = any(v.__class__ is not str for v in others)
    if len(values) == 1:
        (value,) = values
        if flags:
            return f"{var} is {value!r}"  # True or False: singletons
        return f"({var} == {constant(value)}{f' and {var}.__class__ is not bool' if numbers else ''})"
    not_a_flag = f"{var}.__class__ is not bool and " if numbers else ""
    test = f"({var}.__class__ in _SCALARS and {not_a_flag}{var} in {constant(others)})"
    if flags:
        test = f"({var} in {constant(flags)} if {var}.__class__ is bool else {test})"
    return test


def _glob(pattern: str, low: str, constant: Callable[[Any], str]) -> str:
    """A glob as the cheapest test that means the same: equality, substring, prefix or suffix
    when the only wildcards are leading or trailing `*`, a compiled regex otherwise."""
    core = pattern.strip("*")
    if not any(c in core for c in "*?["):
        starts, ends = pattern.startswith("*"), pattern.endswith("*")
        if starts and ends:
            return f"{constant(core)} in {low}"
        if ends:
            return f"{low}.startswith({constant(core)})"
        if starts:
            return f"{low}.endswith({constant(core)})"
        return f"{low} == {constant(core)}"
    return f"{constant(re.compile(fnmatch.translate(pattern)))}.match({low}) is not None"
