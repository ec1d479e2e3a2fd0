"""`leadstream review`: a model scored against what really happened to its leads.

Marketing-ops export outcomes from the CRM (won, lost, disqualified...) and review each model on
the event history: `leadstream review --events EVENTS.jsonl --outcomes OUTCOMES.csv`. A lead is
judged as the model saw it at the time of its outcome: its events from that time on are left
out (those of a visitor merged into it too), and decay is brought to that time (a lead whose outcome has no time is judged at the newest
event of the file). The figures and findings are scoring.review's; this module reads the files
and prints them, one JSON object per model (or tables with --table). With --baseline, the
models of another directory (the version in use) are reviewed on the same files, and each
model's report carries its namesake's headline figures and levels for comparison.

Outcomes come as JSON lines ({"lead_id": "lead-42", "outcome": "won", "time": ...}) or as CSV
with a header row naming the columns lead_id, outcome and optionally time: a file whose first
non-blank character is '{' (or '[') is read as JSON lines, any other as CSV, whatever its name. `time` is epoch milliseconds or ISO-8601 with a time zone, as in events, or a date alone
(its midnight, UTC: a CRM's close date). A bad line is
reported on stderr with its number and skipped; a lead listed twice keeps its first outcome.
"""

from __future__ import annotations

import csv
import io
import shutil
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TextIO

import orjson

from scoring import Engine, Event
from scoring.errors import ModelError
from scoring.events import parse_moment_ms, parse_time_ms
from scoring.review import Reviewed, review
from streams.errors import InputError
from streams.jsonlines import numbered_lines
from streams.offline import apply_file, check_read
from streams.tables import columns, points
from streams.stitching import MAX_HOPS, links_of, may_link


@dataclass(frozen=True, slots=True)
class Outcome:
    converted: bool
    #: When it happened (epoch ms); None: judge the lead at the end of the events file.
    time_ms: int | None


def review_files(
    models_dir: Path, events_path: Path, outcomes_path: Path, converted_values: frozenset[str], min_leads: int,
    table: bool, out: TextIO, err: TextIO = sys.stderr, baseline_dir: Path | None = None,
) -> int:  # fmt: skip
    """Reviews every model of `models_dir` (each against the model of the same name in
    `baseline_dir`, when given); returns the exit status (0 even with bad lines, which are
    reported on `err`)."""
    engine = Engine.from_directory(models_dir)
    baseline = _baseline_engine(baseline_dir) if baseline_dir is not None else None
    outcomes = read_outcomes(outcomes_path, converted_values, err)
    if not outcomes:
        raise InputError(f"{outcomes_path}: no usable outcome lines (each needs a lead_id and an outcome)")
    if not any(outcome.converted for outcome in outcomes.values()):
        print(f"{outcomes_path.name}: no outcome is one of {', '.join(sorted(converted_values))} "
              f"(--converted): every lead counts as not converted", file=err)  # fmt: skip
    with _rereadable(events_path) as events:
        links = _links_ahead(events)
        outcomes = _merged_outcomes(outcomes, links, outcomes_path.name, err)
        reports, scored, present = _reviews(engine, events, outcomes, links, min_leads, err)
        if baseline is not None:
            # The same file again: its bad lines were reported above.
            before = {report["model"]: report for report in _reviews(baseline, events, outcomes, links, min_leads, io.StringIO())[0]}
            for report in reports:
                report["baseline"] = _baseline_figures(before.get(report["model"]))
    absent = [lead_id for lead_id in outcomes if lead_id not in present]
    if absent:
        # Told apart from leads won before their events: ids the two files do not share (a case,
        # spaces, another id system) or files given the wrong way round are fixed on the files.
        print(f"{outcomes_path.name}: {len(absent)} of {len(outcomes)} leads with an outcome have no event in {events_path.name} "
              f"(such as {_examples(absent)}; its leads are such as {_examples(present)}): check that both files name leads "
              f"by the same ids, in the same case and spacing; not reviewed", file=err)  # fmt: skip
    unscored = len(outcomes.keys() - scored - set(absent))
    if unscored:
        print(f"{outcomes_path.name}: {unscored} of {len(outcomes)} leads with an outcome have no scored event "
              f"before it: not reviewed", file=err)  # fmt: skip
    if len(absent) + unscored == len(outcomes):
        # Empty reviews, exit 0: a monthly check in a script passed on nothing reviewed.
        raise InputError(f"no lead of {outcomes_path.name} could be reviewed (see above)")
    if table:
        out.write("\n".join(_table(report) for report in reports))
    else:
        for report in reports:
            out.write(orjson.dumps(report).decode() + "\n")
    return 0


@contextmanager
def _rereadable(events_path: Path) -> Iterator[Path]:
    """The events file as a path that can be read more than once, as a review with --baseline
    reads it: standard input ('-', such as `leadstream history --out -` piped in) is copied to
    a temporary file first. The copy is named '-' so that warnings still name the input as '-'."""
    if str(events_path) != "-":
        yield events_path
        return
    with tempfile.TemporaryDirectory(prefix="leadstream-review-") as directory:
        copy = Path(directory) / "-"
        with copy.open("wb") as handle:
            shutil.copyfileobj(sys.stdin.buffer, handle)
        yield copy


def _baseline_engine(path: Path) -> Engine:
    """The baseline's models. Its errors name --baseline: a model file's name alone (b2b.toml)
    would send the user to the edited directory, and a missing one to --models."""
    if not path.is_dir():
        raise ModelError(f"--baseline {path}: not a directory of model files")
    try:
        return Engine.from_directory(path)
    except ModelError as exc:
        raise ModelError(f"--baseline {path}: {exc}") from None


#: old id -> (the id a link merges it into, the time of the event asking for the link)
Links = dict[str, tuple[str, int]]


def _links_ahead(events_path: Path) -> Links:
    """The stitching links the events file asks for (the first of each old id, as the offline
    run makes only that one), read before it is scored: a visitor's events come before the link
    that merges them into a lead, as the visitor browsed before it signed up."""
    links: Links = {}
    try:
        handle = events_path.open("rb")
    except OSError as exc:
        raise InputError(f"cannot read events file {events_path}: {exc.strerror}") from None
    with handle:
        for _, line in numbered_lines(handle):
            if not may_link(line):
                continue
            try:
                value = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # reported when the file is scored
            for item in value if isinstance(value, list) else [value]:
                found = links_of(item) if isinstance(item, dict) else []
                if not isinstance(found, list):
                    continue  # no link, or one refused with its event
                time_ms = parse_time_ms(item.get("time"))
                if isinstance(time_ms, int):
                    for source, target in found:
                        links.setdefault(source, (target, time_ms))
    return links


def _before_outcomes(lead_id: str, time_ms: int, outcomes: dict[str, Outcome], links: Links, hops: int = 0) -> bool:
    """Whether an event of `lead_id` at `time_ms` comes before the outcome of each lead it counts
    for: its own and, through a link that is made, the lead's it is merged into. A visitor's
    events after the lead was won must not reach the lead, whether they come before the link in
    the file (merged with the visitor's state) or after it (re-keyed)."""
    outcome = outcomes.get(lead_id)
    if outcome is not None and outcome.time_ms is not None and time_ms >= outcome.time_ms:
        return False
    link = links.get(lead_id)
    if link is None or hops == MAX_HOPS:
        return True
    target, link_ms = link
    # A link asked for after its lead's outcome is left out with its event: it is never made.
    linked = _before_outcomes(target, link_ms, outcomes, links, hops + 1)
    return not linked or _before_outcomes(target, time_ms, outcomes, links, hops + 1)


def _merged_outcomes(outcomes: dict[str, Outcome], links: Links, name: str, err: TextIO) -> dict[str, Outcome]:
    """The outcomes by the lead each one's id is part of when it came: a visitor (or an old id)
    merged into a lead before its outcome has no state of its own then, so its outcome is the
    lead's, which was counted as a lead with no event. A lead's own outcome comes first, then
    those of ids merged into it in the file's order (a lead listed twice keeps its first); the
    others are said on `err`."""
    targets = {lead_id: _merged_into(lead_id, outcome, links) for lead_id, outcome in outcomes.items()}
    kept = {lead_id: outcome for lead_id, outcome in outcomes.items() if targets[lead_id] == lead_id}
    for lead_id, target in targets.items():
        if target == lead_id:
            continue
        if target in kept:
            print(f"{name}: the outcome of {lead_id!r} is not used: that id was merged into {target!r} before it, and "
                  f"{target!r} has an outcome already", file=err)  # fmt: skip
        else:
            kept[target] = outcomes[lead_id]
    return kept


def _merged_into(lead_id: str, outcome: Outcome, links: Links) -> str:
    """The lead `lead_id` is part of when `outcome` came: the end of its chain of links asked
    for before then (an outcome without a time: at the end of the file)."""
    for _ in range(MAX_HOPS):
        link = links.get(lead_id)
        if link is None or (outcome.time_ms is not None and link[1] >= outcome.time_ms):
            break
        lead_id = link[0]
    return lead_id


def _judged_ids(outcomes: dict[str, Outcome], links: Links) -> set[str]:
    """The ids whose events can count for a lead with an outcome: those leads, and every id a
    chain of links joins to one (a visitor merged into it, or the lead a visitor with an outcome
    is merged into, whose identify makes the merge). Only those are scored: a history holds
    many more leads than an export of outcomes, and each scored lead's states are held to the
    end (1.16 GB for 2,000 outcomes on 1.5M events of 353,000 leads, 45 MB scoring these)."""
    parent: dict[str, str] = {}

    def root(lead_id: str) -> str:
        while (up := parent.get(lead_id, lead_id)) != lead_id:
            parent[lead_id] = lead_id = parent.get(up, up)  # halving the path: a long alias chain is walked once
        return lead_id

    for source, (target, _) in links.items():
        parent[root(source)] = root(target)
    joined = {root(lead_id) for lead_id in outcomes}
    linked = links.keys() | {target for target, _ in links.values()}
    return outcomes.keys() | {lead_id for lead_id in linked if root(lead_id) in joined}


def _reviews(
    engine: Engine, events_path: Path, outcomes: dict[str, Outcome], links: Links, min_leads: int, err: TextIO
) -> tuple[list[dict[str, Any]], set[str], dict[str, None]]:
    """The review of each model of `engine`, each lead judged at its outcome's time, the ids of
    every lead some model scored, and, in the file's order, the file's first two ids (examples of how
    it writes them) and those of its leads that are scored: with an outcome, or joined to one by
    links (a merged visitor's events under its lead's id)."""
    present: dict[str, None] = {}
    judged = _judged_ids(outcomes, links)

    def before_outcome(event: Event) -> bool:
        if event.lead_id not in judged:
            if len(present) < 2:
                present[event.lead_id] = None
            return False
        present[event.lead_id] = None
        return _before_outcomes(event.lead_id, event.time_ms, outcomes, links)

    # No sweeps of members' decay as the file's events come: they take it to the newest event's
    # time, past a member's outcome, and decay is not undone; `explain` brings each lead to its
    # own time (accounts, which sweeps move, are not reviewed).
    run = apply_file(engine, events_path, err, keep=before_outcome, sweep_members=False)
    check_read(run, events_path)
    reviewed: dict[str, list[Reviewed]] = {model.name: [] for model in engine.models}
    # A rule of 0 points with a bonus pays by its bonus alone; one without is a rule set to 0
    # (neutralised while its worth is in doubt), whose matches are what its review is about.
    bonus_only = {model.name: {rule.name for rule in model.rules if not rule.points and rule.bonus} for model in engine.models}
    for (model, lead_id), state in sorted(run.leads.items()):
        outcome = outcomes.get(lead_id)
        if outcome is None:
            continue
        judged_ms = run.newest_ms if outcome.time_ms is None else outcome.time_ms
        seen = engine.explain(model, lead_id, state, judged_ms)
        # A rule counts for a lead once it matched the lead's events, even where the floor or a
        # ceiling let it earn nothing (a penalty on a lead at the floor of 0: an edit of its points
        # would still move that lead); a rule that scores by its bonus alone, once it won it.
        rules = {row["rule"] for row in seen["rules"] if row["points"] or (row["occurrences"] and row["rule"] not in bonus_only[model])}
        rules |= {row["rule"] for row in seen["fit"]}
        reviewed[model].append(
            Reviewed(
                lead_id, outcome.converted, seen["score"], engine.percent(model, lead_id, state, judged_ms), seen["level"], seen["grade"], seen["engagement"],
                seen["cell"], seen["temperature"], frozenset(rules),
            )
        )  # fmt: skip
    return [review(model, reviewed[model.name], min_leads) for model in engine.models], {lead_id for _, lead_id in run.leads}, present


def _examples(lead_ids: Iterable[str], shown: int = 2) -> str:
    """A few ids, quoted, so that a difference of case or spacing between two files shows."""
    return ", ".join(repr(lead_id) for lead_id in islice(lead_ids, shown))


def _baseline_figures(report: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a comparison needs of the baseline's review of a model: its headline figures and
    levels (the full baseline review is one `leadstream review --models BASELINE` away)."""
    if report is None:
        return None
    return {key: report[key] for key in ("leads", "converted", "conversion_rate", "auc", "levels")}


def read_outcomes(path: Path, converted_values: frozenset[str], err: TextIO) -> dict[str, Outcome]:
    """lead id -> outcome, from JSON lines or CSV with a header row, told apart by the file's
    first non-blank character. An outcome is a conversion when it is one of `converted_values`,
    whatever its case and spacing."""
    converted_values = frozenset(" ".join(value.split()).casefold() for value in converted_values)
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise InputError(f"cannot read outcomes file {path}: {exc.strerror}") from None
    outcomes: dict[str, Outcome] = {}
    first_line: dict[str, int] = {}
    with handle:
        rows = _json_rows(handle) if _starts_as_json(handle) else _csv_rows(handle, path)
        for number, row in rows:
            found = _outcome(row, converted_values)
            if isinstance(found, str):
                print(f"{path.name} line {number}: {found}", file=err)
                continue
            lead_id, outcome = found
            if lead_id in outcomes:
                print(f"{path.name} line {number}: lead {lead_id!r} already has an outcome (line "
                      f"{first_line[lead_id]}): the first one is used", file=err)  # fmt: skip
                continue
            outcomes[lead_id] = outcome
            first_line[lead_id] = number
    return outcomes


@dataclass(frozen=True, slots=True)
class _Unreadable:
    """A line that is not JSON, and why."""

    problem: str


def _starts_as_json(handle: Any) -> bool:
    """Whether the file's first non-blank line starts as JSON does ('{', or '[' of a line that
    is not an object), then back to the file's start. The content decides, not the name: CRMs
    and shell redirections name a CSV export .txt, or nothing. An empty file reads as JSON lines
    (none), to be reported as having no usable outcome lines."""
    first = next(numbered_lines(handle), None)
    handle.seek(0)
    return first is None or first[1][:1] in (b"{", b"[")


def _json_rows(handle: Any) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value, or _Unreadable for a line that is not JSON)."""
    for number, line in numbered_lines(handle):
        try:
            yield number, orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            yield number, _Unreadable(f"not valid JSON: {exc}")


def _utf8_lines(handle: Any, path: Path) -> Iterator[str]:
    """The file's lines as text, each decoded on its own: a byte that is not UTF-8 (Excel saves
    "CSV" in the Windows code page unless told "CSV UTF-8") is reported on its own line, where a
    decoder of whole chunks names a position in a chunk and the last line the CSV reader took.
    A line ends at a carriage return alone too, as Excel for Mac's "CSV (Macintosh)" ends them."""
    number = 0
    for chunk in handle:
        for raw in chunk.splitlines(keepends=True):
            number += 1
            try:
                yield raw.decode("utf-8-sig" if number == 1 else "utf-8")  # -sig: a BOM Excel writes
            except UnicodeDecodeError as exc:
                raise InputError(f"{path} line {number}: not UTF-8 text: byte {raw[exc.start]:#04x} at column {exc.start + 1}; "
                                 "save the file as CSV UTF-8") from None  # fmt: skip


def _csv_rows(handle: Any, path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, the row's non-empty cells by column) of each row with a cell, after the
    header row: the first with a cell (blank lines before it, as some exports start, are
    passed over as those after it are). Cells beyond the header's columns are left out."""
    reader = csv.reader(_utf8_lines(handle, path))
    try:
        header = next((row for row in reader if any(row)), [])
        missing = [column for column in ("lead_id", "outcome") if column not in header]
        if missing:
            raise InputError(f"{path}: read as CSV, as it does not start with '{{' as JSON lines do, but its header row must name "
                             f"the columns lead_id and outcome (and optionally time); {' and '.join(missing)} not found in {header}")  # fmt: skip
        for row in reader:
            if any(row):
                yield reader.line_num, {key: value for key, value in zip(header, row) if value != ""}
    except csv.Error as exc:
        raise InputError(f"{path} line {reader.line_num}: cannot read it as CSV: {exc}") from None


def _outcome(row: Any, converted_values: frozenset[str]) -> tuple[str, Outcome] | str:
    """(lead id, outcome) of a row, or what is wrong with it."""
    if isinstance(row, _Unreadable):
        return row.problem
    if not isinstance(row, dict):
        return "expected an object with lead_id and outcome"
    lead_id, value, time = row.get("lead_id"), row.get("outcome"), row.get("time")
    if isinstance(lead_id, int) and not isinstance(lead_id, bool):
        lead_id = str(lead_id)  # as events' whole-number lead ids are read
    if not isinstance(lead_id, str) or not lead_id:
        return "field 'lead_id' must be a non-empty text"
    if not isinstance(value, str) or not value:
        return "field 'outcome' must be a non-empty text, such as \"won\" or \"lost\""
    time_ms = None
    if time is not None:
        if isinstance(time, str) and time.isdigit():
            time = int(time)  # CSV cells are text
        found = parse_moment_ms(time)
        if isinstance(found, str):
            return found
        time_ms = found
    # CRMs differ in case and spacing ("Closed Won", "closed won "): compared without either.
    return lead_id, Outcome(" ".join(value.split()).casefold() in converted_values, time_ms)


def _table(report: dict[str, Any]) -> str:
    parts = [
        f"model {report['model']}: {report['leads']} leads with an outcome, {report['converted']} converted "
        f"({_percent(report['conversion_rate'])}), AUC {_number(report['auc'])}\n"
    ]
    if "baseline" in report:
        parts.append(_against_baseline(report))
    if not report["leads"]:
        return "\n".join(parts) + "".join(f"- {finding}\n" for finding in report["findings"])
    parts.append(
        columns(
            ("LEVEL", "AT", "LEADS", "CONVERTED", "RATE", "PRECISION AT OR ABOVE", "RECALL AT OR ABOVE"),
            [
                (r["level"], "-" if r["at"] is None else points(r["at"]), str(r["leads"]), str(r["converted"]), _percent(r["rate"]),
                 _percent(r["precision_at_or_above"]), _percent(r["recall_at_or_above"]))
                for r in report["levels"]
            ],  # fmt: skip
        )
    )
    parts.append(
        columns(
            ("0-100 FROM", "LEADS", "CONVERTED", "RATE", "PRECISION AT OR ABOVE", "RECALL AT OR ABOVE"),
            [
                (str(r["from"]), str(r["leads"]), str(r["converted"]), _percent(r["rate"]), _percent(r["precision_at_or_above"]),
                 _percent(r["recall_at_or_above"]))
                for r in report["bands"]
            ],  # fmt: skip
        )
    )
    for scale in ("grades", "engagement", "cells", "temperature"):
        if report[scale]:
            parts.append(
                columns(
                    (scale.upper(), "LEADS", "CONVERTED", "RATE"),
                    [(str(r["label"]), str(r["leads"]), str(r["converted"]), _percent(r["rate"])) for r in report[scale]],
                )
            )
    parts.append(
        columns(
            ("RULE", "KIND", "POINTS", "LEADS", "CONVERTED", "RATE", "OTHERS' RATE", "LIFT", "Z"),
            [
                (r["rule"], r["kind"], points(r["points"], signed=True) + ("" if r["bonus"] is None else f", bonus {points(r['bonus'], signed=True)}"), str(r["leads"]), str(r["converted"]), _percent(r["rate"]),
                 _percent(r["rate_without"]), _number(r["lift"]), _number(r["z"]))
                for r in report["rules"]
            ],  # fmt: skip
        )
    )
    parts.append("".join(f"- {finding}\n" for finding in report["findings"]) or "no findings\n")
    return "\n".join(parts)


def _against_baseline(report: dict[str, Any]) -> str:
    """The headline figures and each level's precision and recall, baseline -> this version."""
    before = report["baseline"]
    if before is None:
        return "the baseline has no model of this name\n"
    old_levels = {row["level"]: row for row in before["levels"]}
    new_levels = {row["level"]: row for row in report["levels"]}
    names = [row["level"] for row in report["levels"]] + [name for name in old_levels if name not in new_levels]

    def change(name: str, key: str, shown: Callable[[Any], str]) -> str:
        old, new = old_levels.get(name), new_levels.get(name)
        return f"{shown(old[key]) if old else '-'} -> {shown(new[key]) if new else '-'}"

    return f"against the baseline: AUC {_number(before['auc'])} -> {_number(report['auc'])}\n" + columns(
        ("LEVEL", "LEADS", "PRECISION AT OR ABOVE", "RECALL AT OR ABOVE"),
        [(name, change(name, "leads", str), change(name, "precision_at_or_above", _percent), change(name, "recall_at_or_above", _percent)) for name in names],
    )


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"
