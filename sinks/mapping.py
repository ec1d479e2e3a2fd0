"""Field mappings: what a CRM connector writes where, read from one TOML file per connector.

The file says which crossing field goes into which CRM field (and how values translate), what
each level sets (a lifecycle stage, a lead status) and over which of the record's current values
(`replaces`), which levels create a deal or a follow-up task and with what owner, pipeline,
stage and texts. It is validated when the connector starts:
an error names the file and the field, so nothing half-configured reaches a CRM. The shipped
examples (sinks/mappings/*.toml) document every key.
"""

from __future__ import annotations

import re
import string
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Container, Iterable

from scoring.config import not_utf8, toml_problem
from scoring.model import Model
from sinks.base import Crossing, Reason
from sinks.errors import MappingError

_FIELD_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")

#: Crossing fields a mapping can send to the CRM (`level` is the level reached).
SOURCE_FIELDS = ("score", "normalized", "grade", "engagement", "cell", "temperature", "level", "model", "reasons")

_SAMPLE = Crossing(
    id="sample", kind="lead", lead_id="lead-1", account_id="acme", model="b2b", from_level="nurture",
    to_level="mql", direction="up", score=47.0, normalized=61.0, grade="A", engagement=2, cell="A2",
    temperature="warm", time_ms=0, reasons=(Reason("pricing_page", 30),), traits={"email": "jane@acme.io"},
)
# Templates are filled in with these on start: a format spec or conversion that no crossing can fill
# (`{grade:d}`, `{level!x}`) fails there, not at every crossing after the record was updated. Scores
# are whole numbers or fractions (`{score:d}` fits only the first).
_SAMPLE_FIELDS = (_SAMPLE.template_fields(), replace(_SAMPLE, score=47.25, normalized=61.5).template_fields())


@dataclass(frozen=True)
class _Kind:
    """What a mapping of one kind of record may use, and its default texts."""

    #: "a crossing field", for errors
    field_label: str
    fields: tuple[str, ...]
    template_names: tuple[str, ...]
    deal_name: str
    task_subject: str
    task_body: str


_LEAD = _Kind(
    "a crossing field", SOURCE_FIELDS, tuple(_SAMPLE.template_fields()),
    deal_name="{contact} reached {level}",
    task_subject="Follow up: {contact} reached {level}",
    task_body="Score {score} (grade {grade}, {temperature}). Why: {reasons}",
)
# An account has no e-mail, grade, engagement or cell of its own; its `reasons` are its members
# with the most points, and `lead_id` the member whose score moved it.
_ACCOUNT = _Kind(
    "a field of account crossings",
    tuple(name for name in SOURCE_FIELDS if name not in ("grade", "engagement", "cell")),
    tuple(name for name in _SAMPLE.template_fields() if name not in ("email", "contact", "grade", "engagement", "cell")),
    deal_name="{account_id} reached {level}",
    task_subject="Account {account_id} is now {level}",
    task_body="Account score {score} ({temperature}). Members: {reasons}",
)


@dataclass(frozen=True)
class DealMapping:
    levels: frozenset[str]
    pipeline: str
    stage: str
    name: str
    crossing_id_property: str


@dataclass(frozen=True)
class TaskMapping:
    levels: frozenset[str]
    owner: str
    subject: str
    body: str
    due_in_hours: int
    priority: str
    crossing_id_property: str


@dataclass(frozen=True)
class RecordMapping:
    """What a connector writes on one kind of CRM record when a crossing reaches it: the lead's
    (a HubSpot contact, a Salesforce Lead) or the account's (a company, an Account)."""

    fields: dict[str, str]
    values: dict[str, dict[str, str]]
    levels: dict[str, dict[str, str]]
    deal: DealMapping | None
    task: TaskMapping | None
    #: Per field a level sets, the record's values a level may replace: those the levels set, and
    #: those the `[replaces]` table adds (an empty value always). Any other (a HubSpot `customer`
    #: or `opportunity`, a Status sales gave the Lead) is sales', and a lead-scoring signal keeps it.
    replaces: dict[str, frozenset[str]]

    def record_values(self, crossing: Crossing, kept: Container[str] = ()) -> dict[str, Any]:
        """CRM field -> value for a crossing: the mapped fields, then what its level sets but for
        the fields `kept` on the record as they are (see `kept_fields`)."""
        source = crossing.template_fields()
        out: dict[str, Any] = {}
        for name, target in self.fields.items():
            value = source[name]
            out[target] = self.values.get(name, {}).get(str(value), value)
        out.update((name, value) for name, value in self.levels.get(crossing.to_level, {}).items() if name not in kept)
        return out

    def level_fields(self, crossing: Crossing) -> list[str]:
        """The fields the crossing's level sets: the connector reads their current values on the
        record first, for `kept_fields`."""
        return list(self.levels.get(crossing.to_level, {}))

    def kept_fields(self, crossing: Crossing, current: dict[str, str]) -> dict[str, str]:
        """Field -> the record's current value, for the fields the crossing's level sets whose
        value is not one a level may replace: they are left as they are."""
        return {name: current[name] for name in self.level_fields(crossing)
                if current.get(name) and current[name] not in self.replaces.get(name, ())}


@dataclass(frozen=True)
class AccountMapping(RecordMapping):
    #: The CRM field holding leadstream's account id: a unique-value company property (HubSpot)
    #: or an Account field (Salesforce); HubSpot's `hs_object_id` or Salesforce's `Id` when
    #: account ids are the CRM's own record ids.
    id_property: str


@dataclass(frozen=True)
class Mapping(RecordMapping):
    """A connector's mapping: its own fields for lead crossings, `account` for account crossings
    (None: the connector leaves account crossings alone)."""

    path: Path
    account: AccountMapping | None

    def covers(self, crossing: Crossing) -> bool:
        """Whether the connector has anything to write for the crossing: an account crossing
        names no lead record, so it needs the `[account]` table."""
        return crossing.kind == "lead" or self.account is not None

    def record_for(self, crossing: Crossing) -> RecordMapping:
        """The mapping of the record the crossing reaches (the account's, for an account
        crossing, which `covers` let through)."""
        if crossing.kind == "account":
            assert self.account is not None, "an account crossing the mapping does not cover"
            return self.account
        return self


class _Table:
    """One TOML table being validated; errors say `file: [table].key: problem`."""

    def __init__(self, path: Path, where: str, data: object) -> None:
        self.path, self.where = path, where
        if not isinstance(data, dict):
            raise self.error("", "must be a table")
        self.data: dict[str, Any] = data

    def error(self, key: str, problem: str) -> MappingError:
        if not self.where:
            return MappingError(f"{self.path}: {key or 'top level'}: {problem}")
        return MappingError(f"{self.path}: [{self.where}]{'.' + key if key else ''}: {problem}")

    def only(self, *allowed: str) -> None:
        unknown = sorted(set(self.data) - set(allowed))
        if unknown:
            raise self.error(unknown[0], f"unknown key (allowed: {', '.join(allowed)})")

    def text(self, key: str, default: str | None = None) -> str:
        value = self.data.get(key, default)
        if value is None:
            raise self.error(key, "is required")
        if not isinstance(value, str):
            raise self.error(key, f"must be a string, not {value!r}")
        return value

    def template(self, key: str, default: str, allowed: tuple[str, ...]) -> str:
        text = self.text(key, default)
        try:
            names = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
        except ValueError as exc:
            raise self.error(key, f"is not a valid template ({exc})") from None
        unknown = sorted(names - set(allowed))
        if unknown:
            raise self.error(key, f"uses {{{unknown[0]}}}; templates may use {', '.join('{%s}' % n for n in allowed)}")
        for sample in _SAMPLE_FIELDS:
            try:
                text.format(**sample)
            except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
                raise self.error(key, f"cannot be filled in ({type(exc).__name__}: {exc}); a name may take a format "
                                      "spec its values fit, e.g. {score:.1f}") from None
        return text

    def field_name(self, key: str) -> str:
        """The name of a CRM field (its API name, not its label): some go into API paths and SOQL
        as they are; any other is refused by the CRM, at every crossing."""
        value = self.text(key)
        if not _FIELD_NAME.fullmatch(value):
            raise self.error(key, f"must be a CRM field name (a letter, then letters, digits or '_'), not {value!r}")
        return value

    def positive_int(self, key: str, default: int, maximum: int) -> int:
        value = self.data.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= maximum:
            raise self.error(key, f"must be a whole number from 1 to {maximum}, not {value!r}")
        return value

    def levels(self, key: str = "levels") -> frozenset[str]:
        value = self.data.get(key)
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            raise self.error(key, 'must be a non-empty list of level names, e.g. ["mql", "sql"]')
        return frozenset(value)

    def strings(self, key: str) -> dict[str, str]:
        table = self.table(key)
        for name, value in table.data.items():
            if not isinstance(value, str):
                raise table.error(name, f"must be a string, not {value!r}")
        return dict(table.data)

    def lists_of_strings(self, key: str) -> dict[str, list[str]]:
        table = self.table(key)
        for name, value in table.data.items():
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise table.error(name, f'must be a list of values, e.g. ["subscriber", "lead"], not {value!r}')
        return dict(table.data)

    def tables_of_strings(self, key: str) -> dict[str, dict[str, str]]:
        table = self.table(key)
        return {name: table.strings(name) for name in table.data}

    def table(self, key: str) -> _Table:
        return _Table(self.path, f"{self.where}.{key}" if self.where else key, self.data.get(key, {}))


def levels_no_model_has(mapping: Mapping, models: Iterable[Model]) -> list[str]:
    """Where `mapping` names a level that none of `models` has, as `file [table]: 'level'`: a
    typo there validated, and the crossings it meant never matched it."""
    models = list(models)
    known = {"": {name for model in models for name in model.ladder.names},
             "account.": {name for model in models if model.accounts for name in model.accounts.ladder.names}}
    found = []
    for prefix, record in (("", mapping), ("account.", mapping.account)):
        if record is None:
            continue
        named = [(f"[{prefix}levels.{level}]", level) for level in record.levels]
        named += [(f"[{prefix}values.level]", level) for level in record.values.get("level", {})]
        for table, part in (("deal", record.deal), ("task", record.task)):
            named += [(f"[{prefix}{table}] levels", level) for level in sorted(part.levels)] if part else []
        found += [f"{mapping.path.name} {place}: {level!r}" for place, level in named if level not in known[prefix]]
    return found


def load_mapping(path: Path, *, with_deals: bool) -> Mapping:
    """Read and validate a mapping file; `with_deals` for CRMs that have deals (HubSpot)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
        raw = tomllib.loads(text)
    except FileNotFoundError:
        raise MappingError(f"{path}: no such mapping file; copy the example from sinks/mappings/ "
                           "or set LEADSTREAM_SINK_MAPPING_DIR") from None
    except UnicodeDecodeError as exc:
        raise MappingError(f"{path}: {not_utf8(exc)}") from None
    except tomllib.TOMLDecodeError as exc:
        raise MappingError(f"{path}: not valid TOML ({toml_problem(exc, text)})") from None
    top = _Table(path, "", raw)
    deal = ("deal",) if with_deals else ()
    top.only("fields", "values", "levels", "replaces", "task", "account", *deal)
    lead = _record_parts(top, _LEAD)
    account = None
    if "account" in raw:
        table = top.table("account")
        table.only("id_property", "fields", "values", "levels", "replaces", "task", *deal)
        account = AccountMapping(id_property=table.field_name("id_property"), **_record_parts(table, _ACCOUNT))
    return Mapping(path=path, account=account, **lead)


def _record_parts(table: _Table, kind: _Kind) -> dict[str, Any]:
    """The `RecordMapping` fields of one kind of record from `table` (whose keys the caller checked)."""
    fields = table.strings("fields")
    if not fields:
        raise table.error("fields", "is required: map at least one crossing field to a CRM field")
    for name in fields:
        if name not in kind.fields:
            raise table.table("fields").error(name, f"is not {kind.field_label} (one of {', '.join(kind.fields)})")
        table.table("fields").field_name(name)
    values = table.tables_of_strings("values")
    for name in values:
        if name not in fields:
            raise table.table("values").error(name, f"translates a field that [{table.table('fields').where}] does not map")
    levels = table.tables_of_strings("levels")
    for level, sets in levels.items():
        for name in sets:
            if not _FIELD_NAME.fullmatch(name):
                raise table.table("levels").table(level).error(name, "is not a CRM field name (a letter, then letters, digits or '_')")
    replaces: dict[str, set[str]] = {}
    for sets in levels.values():
        for name, value in sets.items():
            replaces.setdefault(name, set()).add(value)
    for name, extra in table.lists_of_strings("replaces").items():
        if name not in replaces:
            raise table.table("replaces").error(name, f"is not a field a [{table.table('levels').where}.*] table sets")
        replaces[name] |= set(extra)
    return {
        "fields": fields,
        "values": values,
        "levels": levels,
        "replaces": {name: frozenset(known) for name, known in replaces.items()},
        "deal": _deal(table.table("deal"), kind) if "deal" in table.data else None,
        "task": _task(table.table("task"), kind) if "task" in table.data else None,
    }


def _deal(table: _Table, kind: _Kind) -> DealMapping:
    table.only("levels", "pipeline", "stage", "name", "crossing_id_property")
    return DealMapping(
        levels=table.levels(),
        pipeline=table.text("pipeline", "default"),
        stage=table.text("stage"),
        name=table.template("name", kind.deal_name, kind.template_names),
        crossing_id_property=table.field_name("crossing_id_property"),
    )


def _task(table: _Table, kind: _Kind) -> TaskMapping:
    table.only("levels", "owner", "subject", "body", "due_in_hours", "priority", "crossing_id_property")
    return TaskMapping(
        levels=table.levels(),
        owner=table.text("owner", ""),
        subject=table.template("subject", kind.task_subject, kind.template_names),
        body=table.template("body", kind.task_body, kind.template_names),
        # A year at most: a due date beyond Python's (year 9999) failed every task's delivery.
        due_in_hours=table.positive_int("due_in_hours", 24, maximum=24 * 366),
        priority=table.text("priority"),
        crossing_id_property=table.field_name("crossing_id_property"),
    )
