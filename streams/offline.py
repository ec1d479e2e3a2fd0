"""`leadstream score`: the engine alone over a JSON-lines file, no services at all.

It is how users try a model and how tests pin the semantics end to end. Events are applied in
file order (event time decides scoring, as in the stream), anonymous visitors are stitched to
the leads they become as the worker stitches them (see OfflineRun), and account members' decay
is swept as it falls due, before the events after it (`OfflineRun.sweep`); a bad line is reported on
stderr with its line number and skipped. At the end, decay is evaluated at the newest event time seen
in the file (the file's "now": the output does not depend on when it is run), or at the later
time `--at` gives (the scores as they will stand then, if nothing else happens), then the output
is, as JSON lines (or a table with --table):

1. every transition, in order: {"record": "transition", ...Transition.to_dict()}
2. every lead's summary, by model then lead id: {"record": "lead", ...Engine.summary()}
3. every account's summary, by model then account id: {"record": "account", ...Engine.account_summary()}
"""

from __future__ import annotations

import heapq
import math
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, TextIO

import msgspec
import orjson

from scoring import AccountState, Engine, Event, LeadState, MemberScore, Rejection, Transition
from scoring.accounts import by_account
from scoring.events import loads
from scoring.identity import merge
from streams.errors import InputError
from streams.settings import FutureLimit
from streams.stitching import MAX_HOPS, links_of, may_link, publishable
from streams.tables import columns, points
from streams.jsonlines import numbered_lines

BATCH_EVENTS = 1000
#: With a model that rolls leads up into accounts: an account takes a batch's member changes in
#: the order of their times, so in batches of one line its members' changes come in the order of
#: the lines, as the worker takes events that come as they happen (MODELS.md, `[accounts]`).
ACCOUNT_BATCH_EVENTS = 1


#: A line's event: its line number, the event, and the (old id, new id) links it asks to stitch.
Line = tuple[int, Event, list[tuple[str, str]]]


#: Warnings printed per reason; the rest are counted.
WARNINGS_SHOWN = 20


class OfflineRun:
    """States held in memory (as objects: no changelog to write) and everything produced.

    Identity stitching happens as in the worker (streams/stitching.py), in file order: the links
    an identify or alias event asks for are made right after it, before the next line (the
    worker makes them a moment later, through Kafka), the old id's states are merged into the
    lead's (scoring.identity.merge), and the old id's later events are scored on the lead.
    Anonymous profiles' crossings are not reported, as the worker does not publish them.
    """

    def __init__(self, engine: Engine, err: TextIO, source: str, keep: Callable[[Event], bool] | None = None,
                 sweep_members: bool = True, at_ms: int | None = None, future: FutureLimit | None = None) -> None:
        self.engine = engine
        #: Whether members' due decay is swept before each batch (`sweep`), as a worker whose
        #: clock follows the events does; else only at `finish`, as one whose clock has not
        #: reached their due times yet (tests/chaos.py compares with such a worker).
        self.sweep_members = sweep_members
        self.err = err
        self.source = source
        #: Which events to apply (after re-keying a merged id's events to its lead); None: all.
        self.keep = keep
        self.leads: dict[tuple[str, str], LeadState] = {}
        self.accounts: dict[tuple[str, str], AccountState] = {}
        self.transitions: list[Transition] = []
        #: old id -> the id it was merged into
        self.merged: dict[str, str] = {}
        self.newest_ms = 0
        #: When decay is evaluated (`finish`) instead of `newest_ms`: `apply_file` refuses an
        #: event after it as it reads it
        self.at_ms = at_ms
        #: LEADSTREAM_MAX_FUTURE_MS at the start: events beyond it are refused as the worker refuses them
        self.future = future
        #: The earliest time of the events refused so
        self.earliest_future_ms: int | None = None
        #: Members' due times (due, lead id, model), as the worker's decay index (`sweep`).
        self._due: list[tuple[int, str, str]] = []
        #: reason -> lines warned about
        self.warnings: dict[str, int] = {}
        #: (line, warning) to show, said in line order once a batch is applied
        self._unsaid: list[tuple[int, str]] = []
        #: Events read from the file that were well formed (scored or not: late, unrouted...)
        self.accepted = 0
        self.products = ", ".join(sorted({product for model in engine.models for product in model.products or ()}))

    def apply(self, lines: list[Line]) -> None:
        """Applies the lines in batches, cut after each line that asks for links: then what
        follows it does not depend on where the batches of the file are cut."""
        start = 0
        for end, (_, _, links) in enumerate(lines, 1):
            if links:
                self._apply(lines[start:end])
                start = end
        if start < len(lines):
            self._apply(lines[start:])
        self._say_warnings()

    def _apply(self, lines: list[Line]) -> None:
        batch: list[Line] = []
        for number, event, links in lines:
            lead_id = self._merged_into(event.lead_id)
            if lead_id is None:
                self.warn(number, "alias_loop", f"lead {event.lead_id!r} was re-keyed {MAX_HOPS} times: an alias loop")
                continue
            if lead_id != event.lead_id:
                event = msgspec.structs.replace(event, lead_id=lead_id)
            if self.keep is None or self.keep(event):
                batch.append((number, event, links))
        line_of = {id(event): number for number, event, _ in batch}
        if batch and self.sweep_members:  # the worker's clock had passed the newest event and reached these before they came
            self.sweep(max(self.newest_ms, min(event.time_ms for _, event, _ in batch)))
        result = self.engine.apply_batch((event for _, event, _ in batch), lambda model, lead: self.leads.get((model, lead)))
        self.leads.update(result.states)
        for (model, lead_id), state in result.states.items():
            self._schedule(model, lead_id, state)
        self.transitions.extend(result.transitions)
        for late in result.late:
            event = late.event
            self.warn(
                line_of[id(event)], "late",
                f"event {event.event_id!r} of lead {event.lead_id!r} is beyond the allowed lateness of "
                + ", ".join(late.models) + ": counted there, not scored" + ("; its other models scored it" if late.scored else ""),
            )  # fmt: skip
        for event in result.unrouted:
            self.warn(
                line_of[id(event)], "unrouted",
                f"event {event.event_id!r} of lead {event.lead_id!r} has "
                + (f"product {event.product!r}" if event.product is not None else "no product")
                + f", which no model's [filter] takes (they take: {self.products}): not scored",
            )  # fmt: skip
        for event in result.unknown_type:
            self.warn(line_of[id(event)], "unknown_type", f"event {event.event_id!r} of lead {event.lead_id!r}: {self.engine.unknown_type(event)}")
        self.roll_up(*result.account_updates)  # one batch's, as the worker sends them in one message
        # Every event of the file counts for its "now", those `keep` leaves out too: review judges
        # a lead without an outcome time at the newest event of the file, whoever it belongs to.
        self.newest_ms = max([self.newest_ms] + [event.time_ms for _, event, _ in lines])
        for _, event, links in batch:
            for source, target in links:
                self.stitch(source, target, event.time_ms)

    def stitch(self, source: str, target: str, time_ms: int) -> None:
        """Merges `source`'s states into the lead it now is (once; a loop is refused)."""
        lead_id = self._merged_into(target)
        if source in self.merged or lead_id is None or lead_id == source:
            return
        self.merged[source] = lead_id
        for model in self.engine.models:
            state = self.leads.pop((model.name, source), None)
            if state is not None:
                # The visitor's points move to the lead: its own membership ends as the lead's
                # score takes them in, one update to the accounts as in the worker.
                leaving = self.engine.leaving(model.name, source, state, time_ms, into=lead_id)
                merged, transitions = merge(self.engine, model.name, lead_id, self.leads.get((model.name, lead_id)), state, source, time_ms)
                self.leads[(model.name, lead_id)] = merged
                self._schedule(model.name, lead_id, merged)
                self.transitions.extend(transitions)
                member = self.engine.member_score(model.name, lead_id, merged, merged.watermark_ms)
                self.roll_up(*(update for update in (leaving, member) if update is not None))

    def _merged_into(self, lead_id: str) -> str | None:
        """The id a lead's events are scored under now (itself unless merged); None past MAX_HOPS."""
        for _ in range(MAX_HOPS + 1):
            target = self.merged.get(lead_id)
            if target is None:
                return lead_id
            lead_id = target
        return None

    def roll_up(self, *updates: MemberScore) -> None:
        """Takes updates into their accounts, each account those of its own together (as the
        worker's account stage takes one message's: `Engine.apply_account_updates`)."""
        for key, taken in by_account(updates).items():
            state, transitions = self.engine.apply_account_updates(key[0], key[1], self.accounts.get(key), taken)
            self.accounts[key] = state
            self.transitions.extend(transitions)

    @property
    def now_ms(self) -> int:
        """The time the output is at: the newest event's, or `--at`'s."""
        return self.newest_ms if self.at_ms is None else self.at_ms

    def finish(self) -> None:
        """Evaluates decay for every lead at `now_ms`: the members' due by then taken as `sweep`
        takes them, then each lead brought to the time (their own crossings are the same either way)."""
        members: list[tuple[str, str]] = []
        for (model, lead_id), state in sorted(self.leads.items()):
            if self._member(model, state):
                members.append((model, lead_id))
            else:
                self.leads[(model, lead_id)], transitions = self.engine.decay(model, lead_id, state, self.now_ms)
                self.transitions.extend(transitions)
        self.sweep(self.now_ms)
        # The rest of the way, every member's: half-life points decayed since the last due time (or,
        # with none due, since the last event), so that accounts stand at the time asked, as leads do.
        for model, lead_id in members:
            self._decay_member(model, lead_id, self.now_ms)

    def sweep(self, until_ms: int) -> None:
        """Takes the decay of account members due by `until_ms`, one due time after another, all
        leads' in time order, as the worker's sweeps take it while it runs, and moves their
        accounts with each: an account crossing is stamped with the due time that made it. Run
        before each batch (to its time) and at the end: swept only at the end, decay an event
        brought forward was told to the account at the event's time, so an unscored event days
        after a step moved the account's crossing there."""
        due = self._due
        while due and due[0][0] <= until_ms:
            due_ms, lead_id, model = heapq.heappop(due)
            state = self.leads.get((model, lead_id))
            if state is None or self.engine.next_due_ms(model, state) != due_ms:  # merged away, or moved since (and scheduled)
                continue
            self._schedule(model, lead_id, self._decay_member(model, lead_id, due_ms), due_ms)

    def _member(self, model: str, state: LeadState) -> bool:
        """Whether the lead counts in an account (of a model that rolls its leads up)."""
        return state.account_id is not None and self.engine.runtime(model).model.accounts is not None

    def _schedule(self, model: str, lead_id: str, state: LeadState, after_ms: int = -1) -> None:
        if self._member(model, state):
            due_ms = self.engine.next_due_ms(model, state)
            if due_ms is not None and due_ms > after_ms:
                heapq.heappush(self._due, (due_ms, lead_id, model))

    def _decay_member(self, model: str, lead_id: str, time_ms: int) -> LeadState:
        """Brings a member's decay to `time_ms`, and its account along when its score moved."""
        runtime = self.engine.runtime(model)
        state = self.leads[(model, lead_id)]
        before = runtime.score(state)
        changed_ms = runtime.decay(state, lead_id, time_ms, self.transitions)
        if changed_ms is not None and runtime.score(state) != before:
            member = runtime.member_score(lead_id, state, state.watermark_ms, changed_ms)
            if member is not None:
                self.roll_up(member)
        return state

    def warn(self, line: int, reason: str, detail: str) -> None:
        # A history of real traffic may hold thousands of lines of one kind (a type no model
        # knows yet): the first ones say what is wrong, a count says how often.
        seen = self.warnings[reason] = self.warnings.get(reason, 0) + 1
        if seen <= WARNINGS_SHOWN:
            self._unsaid.append((line, f"{self.source} line {line}: {reason}: {detail}"))

    def _say_warnings(self) -> None:
        """The warnings so far, in line order: a line is refused as it is read, its event found
        late or unrouted once its batch is applied."""
        for _, text in sorted(self._unsaid, key=lambda warning: warning[0]):
            print(text, file=self.err)
        self._unsaid.clear()

    def report_warnings(self) -> None:
        """The warnings not said yet, then one line per reason with more than were shown."""
        self._say_warnings()
        for reason, count in sorted(self.warnings.items()):
            if count > WARNINGS_SHOWN:
                print(f"{self.source}: {count} lines {reason} in all; the first {WARNINGS_SHOWN} are shown above", file=self.err)

    def records(self) -> list[dict[str, Any]]:
        out = [{"record": "transition", **t.to_dict()} for t in self.transitions if publishable(t)]
        for (model, lead_id), state in sorted(self.leads.items()):
            out.append({"record": "lead", **self.engine.summary(model, lead_id, state, self.now_ms)})
        # The worker publishes the summaries of models with [accounts] only (streams/rollup.py).
        for (model, account_id), account in sorted(self.accounts.items()):
            if model not in self.engine.rolling or not account.members:  # its last member left: the worker takes it out of read models
                continue
            # As the worker publishes it for read models.
            out.append({"record": "account", **self.engine.account_summary(model, account_id, account)})
        return out


def score_file(models_dir: Path, events_path: Path, table: bool, out: TextIO, err: TextIO = sys.stderr,
               at_ms: int | None = None, future: FutureLimit | None = None) -> int:
    """Scores a JSON-lines file of events, decay evaluated at `at_ms` (default: the newest event
    time; an event after it is an InputError); returns the exit status (0: scored, even with bad
    lines, which are reported on `err`). A file of lines none of which is an event is an
    InputError: a check that scores a file (as scoring/MODELS.md suggests, in CI) must not pass on
    a file of the wrong format. Events timed beyond `future` are refused (`future_time`), as the
    worker refuses them."""
    run = apply_file(Engine.from_directory(models_dir), events_path, err, future=future, at_ms=at_ms)
    check_read(run, events_path, empty_ok=True)
    run.finish()
    records = run.records()
    if table:
        out.write(_table(records))
    else:
        for record in records:
            out.write(orjson.dumps(record).decode() + "\n")
    return 0


def check_read(run: OfflineRun, events_path: Path, empty_ok: bool = False) -> None:
    """Raises InputError when no line of the file was an event (a file of another format, such
    as the outcomes CSV given as events, or events all timed beyond `run.future`), or, unless
    `empty_ok`, when it has no line at all."""
    if run.accepted or (empty_ok and not run.warnings):
        return
    refused = sum(run.warnings.values())
    future, earliest_ms = run.future, run.earliest_future_ms
    if refused and set(run.warnings) == {"future_time"} and future is not None and earliest_ms is not None:
        # Well-formed events, refused for their time alone: the format's hint would mislead.
        raise InputError(f"no event of {events_path.name} could be read, all {refused} refused (reported above): every one is "
                         f"timed too far ahead, the earliest {future.ahead(earliest_ms)}")
    raise InputError(f"no event of {events_path.name} could be read, " + (f"all {refused} refused (reported above)" if refused else "it is empty")
                     + ": a file holds one JSON event, or an array of events, a line")  # fmt: skip


def apply_file(engine: Engine, events_path: Path, err: TextIO, keep: Callable[[Event], bool] | None = None,
               future: FutureLimit | None = None, sweep_members: bool = True, at_ms: int | None = None) -> OfflineRun:
    """A run that has applied every event of the file (those `keep` accepts, when given), in
    batches (of one event where accounts are rolled up); bad lines, and events timed beyond
    `future`, are reported on `err` and skipped. Decay is not brought to any time yet: `at_ms`
    is the time `finish` brings it to, and an event after it stops the reading at once with an
    InputError (decay cannot be evaluated before an event it would follow)."""
    try:
        handle = sys.stdin.buffer if str(events_path) == "-" else events_path.open("rb")
    except OSError as exc:
        raise InputError(f"cannot read events file {events_path}: {exc.strerror}") from None
    run = OfflineRun(engine, err, events_path.name, keep, sweep_members, at_ms, future)
    horizon_ms = math.inf if future is None else future.horizon_ms
    # One comparison an event for both bounds; which one it passed is told apart only then.
    bound_ms = min(horizon_ms, math.inf if at_ms is None else at_ms)
    batch_events = ACCOUNT_BATCH_EVENTS if any(model.accounts is not None for model in engine.models) else BATCH_EVENTS
    batch: list[Line] = []
    with handle:
        for number, line in numbered_lines(handle):
            parsed = engine.parse_message(line)
            for item, links in zip(parsed, _links(line, len(parsed))):
                if isinstance(item, Rejection):
                    run.warn(number, item.reason, item.detail)
                elif isinstance(links, Rejection):  # refused as the worker refuses it: an old id no lead can have
                    run.warn(number, links.reason, links.detail)
                elif item.time_ms > bound_ms:
                    if item.time_ms > horizon_ms and future is not None:
                        # Scored, it would bring every lead's decay to its time (the newest event's).
                        run.warn(number, "future_time", future.refusal(item) + ": the worker refuses it too")
                        earliest_ms = run.earliest_future_ms
                        run.earliest_future_ms = item.time_ms if earliest_ms is None else min(earliest_ms, item.time_ms)
                    elif at_ms is not None:
                        raise InputError(f"--at {_iso(at_ms)} is before event {item.event_id!r} of lead {item.lead_id!r} "
                                         f"({events_path.name} line {number}, timed {_iso(item.time_ms)}): decay is evaluated "
                                         "after every event is scored, so give a time at or after the file's newest event")
                else:
                    batch.append((number, item, links))
                    run.accepted += 1
            if len(batch) >= batch_events:
                run.apply(batch)
                batch = []
    if batch:
        run.apply(batch)
    run.report_warnings()
    return run


def _links(line: bytes, events: int) -> list[list[tuple[str, str]] | Rejection]:
    """The stitching links of each event of a line, or why the event is refused
    (`stitching.links_of`; the parsed events keep no anonymous_id or previous_id, so lines that
    may hold one are read again, as the worker does)."""
    none: list[list[tuple[str, str]] | Rejection] = [[] for _ in range(events)]
    if not may_link(line):
        return none
    try:
        value = loads(line)  # as the engine read the line, and the worker reads the links
    except orjson.JSONDecodeError:
        return none
    items = value if isinstance(value, list) else [value]
    if len(items) != events:
        return none
    return [links_of(item) if isinstance(item, dict) else [] for item in items]


def _table(records: list[dict[str, Any]]) -> str:
    sections = []
    crossings = [r for r in records if r["record"] == "transition"]
    if crossings:
        sections.append(
            columns(
                ("TIME", "MODEL", "KIND", "WHO", "FROM", "TO", "SCORE"),
                [
                    (_iso(r["time"]), r["model"], r["kind"], r["lead_id"] if r["kind"] == "lead" else r["account_id"],
                     r["from_level"], r["to_level"], points(r["score"]))
                    for r in crossings
                ],  # fmt: skip
            )
        )
    leads = [r for r in records if r["record"] == "lead"]
    sections.append(
        columns(
            ("MODEL", "LEAD", "SCORE", "0-100", "LEVEL", "CELL", "TEMP", "TOP REASON"),
            [
                (r["model"], r["lead_id"], points(r["score"]), f"{r['normalized']:g}", r["level"], r["cell"] or "-",
                 r["temperature"] or "-", _reason(r["top_reasons"]))
                for r in leads
            ],  # fmt: skip
        )
    )
    accounts = [r for r in records if r["record"] == "account"]
    if accounts:
        sections.append(
            columns(
                ("MODEL", "ACCOUNT", "SCORE", "LEVEL", "MEMBERS"),
                [(r["model"], r["account_id"], points(r["score"]), r["level"] or "-", str(r["members"])) for r in accounts],
            )
        )
    return "\n".join(sections)


def _reason(reasons: list[dict[str, Any]]) -> str:
    return f"{reasons[0]['rule']} ({points(reasons[0]['points'], signed=True)})" if reasons else "-"


def _iso(time_ms: int) -> str:
    """UTC, with milliseconds when there are any: two times within a second must not read alike."""
    seconds, ms = divmod(time_ms, 1000)
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + (f".{ms:03d}Z" if ms else "Z")
