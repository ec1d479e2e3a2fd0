"""Scoring models: the files marketing-ops edit, loaded into validated, immutable config.

One TOML file is one model; a directory holds one model per product or business line. Loading
validates everything and raises `ModelError` naming the file, the rule and the field and saying
what is expected (an event type no event carries yet is allowed: it simply never matches).
The file format is documented in scoring/MODELS.md and in the header of every example model.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable
from scoring.accounts import AccountRollup, parse_accounts
from scoring.config import MAX_DESCRIPTION_CHARS, Table, format_duration_ms, not_utf8, toml_problem
from scoring.decay import Decay, HalfLifeDecay, StepDecay, parse_decay
from scoring.errors import ModelError
from scoring.fit import DomainLists, FitRule, parse_domains, parse_fit_rule
from scoring.renames import check_renames
from scoring.repeat import check_windows
from scoring.rules import Rule, parse_rule
from scoring.scales import Bands, Scale, parse_bands, parse_scale
from scoring.thresholds import Ladder, parse_ladder

_SECTIONS = (
    "model", "filter", "rules", "fit", "domains", "decay", "thresholds",
    "grades", "engagement", "scale", "temperature", "accounts",
)  # fmt: skip

GRADES = ("A", "B", "C", "D")
ENGAGEMENT_LEVELS = ("1", "2", "3", "4")
_MODEL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# The CRM connectors find a lead's record by hubspot_id or salesforce_id before e-mail: a crossing
# carries only the traits kept.
DEFAULT_KEEP_TRAITS = ("email", "first_name", "last_name", "name", "company", "title", "hubspot_id", "salesforce_id")
#: Most traits a model keeps (`keep_traits` and those its rules test). Every crossing carries
#: them, each up to MAX_TRAIT_SIZE bytes of JSON: 128 make at most about 530 KB, within the 1 MB
#: Kafka takes; a model keeping 300 made crossings of 1.2 MB, which stopped the worker.
MAX_KEPT_TRAITS = 128


@dataclass(frozen=True, slots=True)
class Model:
    """One validated scoring model. Times are in ms, points in the model's own units."""

    name: str
    file: str
    description: str
    #: Events whose `product` is one of these are routed here; None routes every event.
    products: frozenset[str] | None
    lateness_ms: int
    floor: float
    #: Ceiling on behaviour points (None: no ceiling).
    max_points: float | None
    remember_events: int
    history: int
    #: Traits kept in the state: these plus every trait a condition tests.
    keep_traits: frozenset[str]
    #: Event types read without points besides those no rule needs to name (PROFILE_TYPES);
    #: None reads every type. Others no rule scores are refused as `unknown_type`.
    unscored_types: frozenset[str] | None
    rules: tuple[Rule, ...]
    fit_rules: tuple[FitRule, ...]
    domains: DomainLists
    decay: Decay | None
    ladder: Ladder
    grades: Bands | None
    engagement: Bands | None
    scale: Scale
    temperature: Bands | None
    accounts: AccountRollup | None


def load_model(path: Path | str) -> Model:
    """One model file, validated; ModelError naming the file (and the rule and field) on any problem."""
    path = Path(path)  # as Engine.from_directory takes a text: a str was an AttributeError here
    try:
        text = model_bytes(path).decode("utf-8-sig")  # -sig: Windows editors begin UTF-8 files with a byte order mark
    except UnicodeDecodeError as exc:
        raise ModelError(f"{path.name}: {not_utf8(exc)}") from None
    except OSError as exc:
        raise ModelError(f"{path.name}: cannot read the model file: {exc}") from None
    return parse_model(text, path.name)


def model_bytes(path: Path) -> bytes:
    """The bytes of a model file; ModelError when it is no regular file. Opened without waiting:
    a named pipe (FIFO) called b2b.toml held `leadstream score` and `models`, and the worker at
    its start or in its reload loop, waiting for a writer that never came."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a directory" if stat.S_ISDIR(mode) else "a named pipe" if stat.S_ISFIFO(mode) else "a device or socket"
        raise ModelError(f"{path.name}: not a model file but {kind}: rename it (model files are the directory's *.toml files) "
                         "or remove it")
    with os.fdopen(fd, "rb") as file:
        return file.read()


def model_files(path: Path) -> list[Path]:
    """The model files of a directory, in name order: its `*.toml` files, but for hidden ones.
    Editors keep their own files beside the one being edited, under its name with a leading
    dot: Emacs's lock `.#b2b.toml` is a link to nowhere while b2b.toml has unsaved changes,
    and taken for a model it made every edit, even a good one, a broken one."""
    return sorted(file for file in path.glob("*.toml") if not file.name.startswith("."))


def load_directory(path: Path | str) -> tuple[Model, ...]:
    """Every model file of a directory (`model_files`), in file name order; names must be unique."""
    path = Path(path)
    if not path.is_dir():
        raise ModelError(f"{path}: not a directory of model files (set LEADSTREAM_MODELS_DIR, or --models where a command takes it)")
    if not os.access(path, os.R_OK | os.X_OK):  # else its files were not listed, and it said there were none
        raise ModelError(f"{path}: cannot read this directory (Permission denied): let this user read it, or set "
                         "LEADSTREAM_MODELS_DIR, or --models where a command takes it")
    models = tuple(load_model(file) for file in model_files(path))
    if not models:
        raise ModelError(f"{path}: no model files (*.toml) in this directory")
    check_names(models)
    return models


def check_names(models: Iterable[Model]) -> None:
    """ModelError naming the second file of two models of one name (a name keys each model's
    states, crossings and Redis keys)."""
    seen: dict[str, str] = {}
    for model in models:
        if model.name in seen:
            raise ModelError(f"{model.file}: [model], field 'name': expected a name no other model uses, got {model.name!r} (also in {seen[model.name]})")
        seen[model.name] = model.file


def parse_model(text: str, file: str) -> Model:
    """A model from the text of a model file; `file` names it in every ModelError (the file name
    alone, as `load_model` gives it: "b2b.toml")."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ModelError(f"{file}: not valid TOML: {toml_problem(exc, text)}") from None
    except RecursionError:  # tomllib reads nested arrays and tables recursively
        raise ModelError(f"{file}: not valid TOML for a model: arrays or tables nested deeper than can be read") from None
    top = Table(file, "top level", data)
    top.check_keys(_SECTIONS)

    head = top.table("model", "[model]")
    if head is None:
        raise top.error("model", "a [model] table with at least a name")
    head.check_keys(("name", "description", "lateness", "floor", "max_points", "remember_events", "history", "keep_traits",
                     "unscored_types"))
    model_name = head.string("name")
    if not _MODEL_NAME.fullmatch(model_name):
        # It keys score changes (`model/lead`), table records, metric labels and Redis keys.
        raise head.error("name", "ASCII letters, digits, '_', '-' or '.' only (at most 64), such as \"b2b_eu\"", model_name)
    floor = head.number("floor", 0)
    max_points = head.number("max_points", None)
    if max_points is not None and max_points <= max(floor, 0):
        raise head.error("max_points", f"a number above the floor ({floor}) and zero", max_points)

    rules = tuple(parse_rule(file, spec, number) for number, spec in enumerate(top.tables("rules"), 1))
    fit_rules = tuple(parse_fit_rule(file, spec, number) for number, spec in enumerate(top.tables("fit"), 1))
    blocks: dict[str, str] = {}
    for block, name in [(f"[[rules]] #{n}", r.name) for n, r in enumerate(rules, 1)] + [
            (f"[[fit]] #{n}", r.name) for n, r in enumerate(fit_rules, 1)]:
        if name in blocks:
            raise ModelError(f"{file}: rule '{name}', field 'name': expected a name no other rule of this model uses "
                             f"(explanations name rules by it), got it in both {blocks[name]} and {block}")
        blocks[name] = block
    names = set(blocks)
    check_renames(file, rules, names)
    lateness_ms = head.duration_ms("lateness", 86_400_000)
    check_windows(file, rules, lateness_ms)

    thresholds = top.table("thresholds", "[thresholds]")
    if thresholds is None:
        raise top.error("thresholds", "a [thresholds] table: base level and ladder, e.g. ladder = [{ level = \"mql\", at = 20 }]")
    thresholds.check_keys(("base", "base_renamed_from", "hysteresis", "ladder"))
    ladder = parse_ladder(thresholds, floor)
    scale = parse_scale(top.table("scale", "[scale]"), ladder.at[-1] if ladder.at[-1] > 0 else 100)

    tested = frozenset[str]().union(*map(traits_tested, rules), *map(traits_tested, fit_rules))
    keep_traits = frozenset(head.strings("keep_traits", DEFAULT_KEEP_TRAITS)) | tested
    if len(keep_traits) > MAX_KEPT_TRAITS:
        raise head.error("keep_traits", f"at most {MAX_KEPT_TRAITS} traits kept, counting those the rules test (every crossing "
                                        "carries them, and must fit in a Kafka message)", len(keep_traits))
    return Model(
        name=model_name,
        file=file,
        description=head.string("description", "", MAX_DESCRIPTION_CHARS),
        products=_products(top.table("filter", "[filter]")),
        lateness_ms=lateness_ms,
        floor=floor,
        max_points=max_points,
        # Both bound every state the worker writes to its changelog (a Kafka record, 1 MB at most).
        remember_events=head.integer("remember_events", 64, minimum=1, maximum=1024),
        history=head.integer("history", 10, minimum=1, maximum=100),
        keep_traits=keep_traits,
        unscored_types=_unscored_types(head, rules),
        rules=rules,
        fit_rules=fit_rules,
        domains=parse_domains(top.table("domains", "[domains]")),
        decay=parse_decay(top.table("decay", "[decay]")),
        ladder=ladder,
        grades=parse_bands(top.table("grades", "[grades]"), GRADES),
        engagement=parse_bands(top.table("engagement", "[engagement]"), ENGAGEMENT_LEVELS),
        scale=scale,
        temperature=parse_bands(top.table("temperature", "[temperature]")),
        accounts=parse_accounts(top.table("accounts", "[accounts]"), scale, floor),
    )


def traits_tested(rule: Rule | FitRule) -> frozenset[str]:
    """The traits of the lead's state a rule reads: those its conditions test, and the one its
    `once_per` de-duplicates by."""
    tested = {c.key for c in rule.conditions if c.source == "traits"}
    if isinstance(rule, Rule) and rule.once_per is not None and rule.once_per.source == "traits":
        tested.add(rule.once_per.key)
    return frozenset(tested)


@dataclass(frozen=True, slots=True)
class UnkeptTrait:
    """A trait that a rule of an edited model tests and the model before the edit neither kept
    nor tested (`unkept_traits`)."""

    model: str
    file: str
    #: "rule" or "fit rule", as load errors name them
    kind: str
    rule: str
    trait: str

    def __str__(self) -> str:
        return (f"{self.file}: {self.kind} '{self.rule}' tests trait '{self.trait}', which model '{self.model}' neither kept "
                "nor tested before this edit: the states of leads scored so far hold no value of it, so the rule sees it "
                "only from each lead's next event carrying it. To apply it to them, score them again: a worker under a new "
                "LEADSTREAM_APP_ID scores the topics from the beginning (`leadstream score` of a `leadstream history` file "
                "shows the outcome first). Next time, list the traits you may test later in keep_traits beforehand "
                "(scoring/MODELS.md, \"Editing a model that is in use\")")


def unkept_traits(before: Iterable[Model], after: Iterable[Model]) -> list[UnkeptTrait]:
    """The traits the rules of each model of `after` test that its namesake in `before` neither
    kept nor tested. A state keeps only the traits its model kept when its events were scored
    (`keep_traits`, with those tested): a condition on another trait finds no value in the
    states of leads scored before the edit, though they sent one, until they send it again. A
    model `before` lacks has no states to miss anything."""
    kept = {model.name: model.keep_traits for model in before}
    found = []
    for model in after:
        had = kept.get(model.name)
        if had is None:
            continue
        for kind, rules in (("rule", model.rules), ("fit rule", model.fit_rules)):
            for rule in rules:
                found += [UnkeptTrait(model.name, model.file, kind, rule.name, trait) for trait in sorted(traits_tested(rule) - had)]
    return found


def _unscored_types(head: Table, rules: tuple[Rule, ...]) -> frozenset[str] | None:
    types = head.strings("unscored_types", ())
    if "*" in types and len(types) > 1:
        raise head.error("unscored_types", 'either "*" alone (every event type) or a list of event types', list(types))
    # One moved here to stop scoring it went on scoring, and `leadstream models` listed it as both.
    scored = [f"{rule.event!r} (rule {rule.name!r})" for rule in rules if rule.event in types]
    if scored:
        raise head.error("unscored_types", "event types no rule scores: remove the rules of a type to stop scoring it",
                         f"{', '.join(scored)} among them")
    return None if types == ("*",) else frozenset(types)


def _products(table: Table | None) -> frozenset[str] | None:
    if table is None:
        return None
    table.check_keys(("product",))
    return frozenset(table.strings("product"))


def describe(model: Model) -> dict[str, Any]:
    """What a model reads and how it levels leads, in plain values (`leadstream models`, the
    worker's /models/ view)."""
    return {
        "name": model.name,
        "file": model.file,
        "description": model.description,
        "products": None if model.products is None else sorted(model.products),
        "scores": sorted({rule.event for rule in model.rules}),
        "unscored_types": ["*"] if model.unscored_types is None else sorted(model.unscored_types),
        "rules": len(model.rules),
        "fit_rules": len(model.fit_rules),
        "levels": _levels(model.ladder),
        "decay": _decay(model.decay),
        "account_levels": None if model.accounts is None else _levels(model.accounts.ladder),
    }


def _levels(ladder: Ladder) -> list[dict[str, Any]]:
    """The base level, then each level with the score that reaches it and the one it is left below."""
    return [{"level": ladder.names[0]}] + [
        {"level": name, "at": at, "below": at - hysteresis}
        for name, at, hysteresis in zip(ladder.names[1:], ladder.at[1:], ladder.hysteresis[1:])
    ]


def _decay(decay: Decay | None) -> str | None:
    if isinstance(decay, StepDecay):
        return ", ".join(f"{format_duration_ms(step.idle_ms)} idle: {step.points:g}" for step in decay.steps)
    if isinstance(decay, HalfLifeDecay):
        return f"half-life {format_duration_ms(decay.half_life_ms)}"
    return None

