"""A chaos run: workers of one app id killed, stopped and joined at random while events arrive,
then what they published compared with the offline scorer (`leadstream score`) on the same events.

Not part of the suite (it runs for minutes, and each seed is another run). Run it by hand
against the local services, as `.venv/bin/python -m tests.chaos --seed 41`. It prints one JSON
object: the actions taken, the workers that stopped themselves (and the line saying why), the
offset holes (and seeks back to the offset sought) the workers logged, and every difference
from the offline scorer. Exit status 1 when there is a difference.

What a worker that stops itself does is what its supervisor would see: it is started again, as
a supervisor (systemd, Kubernetes) would restart it.

`--visitors N` adds N anonymous visitors, each stitched to a lead of its own by an identify
between its events: the events before it reach the lead in a merge, those after it re-keyed
(streams/stitching.py). Which of the two carries an event depends on when the link reaches the
visitor's partition, so the visitors' events are ones whose points add up whatever the order
(webinars, below the model's ceiling), and only those leads' scores are compared, not their
crossings (a crossing's time is a merge's or an event's). `--remember-events K` runs the b2b
model with states that remember K event ids: every copy must then be dropped by its offset or
its origin (streams/read_offsets.py), not by its id.

`--forgets N` asks, halfway through the feed, to forget N leads that had events by then
(`leadstream forget`'s tombstones on the profiles topic, streams/forget.py), visitors' leads
among them: the feed waits until the group has committed the first half (and the links,
merges and re-keyed events it made), sends the requests, waits until they are committed too,
and goes on. A forgotten lead's later events start a new profile, and so do its visitor's,
which reach it re-keyed. So the offline scorer is given the events without the forgotten leads'
(and their visitors') first half, and the visitors' later events keyed by their lead; their
scores (or their absence) are compared, not their crossings (those of the first half were published).

`--profiles` sends the identify events (traits, accounts and visitors' links) to the profiles
topic, as the collector does, so the workers read two topics whose relative order is Kafka's
choice: which is why the workload's trait-conditioned rule never matches (no demo request), and
why crossings are not compared (a lead's fit may count before or after its events).

`--decay-in-s L` sets the workers' clock ahead, so that the b2b model's first decay step falls
due at once for leads idle since before the workload's last L seconds (as their events arrive:
a later event gives the step back, and it is taken again), and for the others in the run's
first L seconds, by the workers' decay sweeps. A sweep takes a partition's leads to the
workers' clock once it has had nothing to read for QUIET_MS (30 s), until then no further than
its events were read, run on by the time since they were sent (streams/sweep_clock.py): between
the feed's chunks with `--feed-pause-s` over 30, otherwise once the feed is done. The comparison waits until every lead's step is
due, then compares every score with the offline scorer's at a time when all those steps and
no second one are due (`leadstream score --at`). Crossings are not compared: a step a sweep
took before an activity timed ahead of it arrived is given back, a crossing down and up again
that the offline scorer, which decays once at the end, does not make.

`--half-life D` runs the b2b model with half-life decay (`half_life = D`) in place of its steps.
A worker publishes a lead's score valued at the time of the batch that last changed it (the
record's `time`), so each is compared with the offline scorer's final state of the lead valued
at that time (by `leadstream score`'s own code, in this process), to the cent. A lead's
crossings are compared unless a worker's sweep valued its points on the real clock, in the
middle of the feed, where a later event of the lead settles once (scoring/MODELS.md): a crossing
of its, published or offline, timed at none of its events (decay's), or a score published at a
time after every event (a sweep's, `--ahead`); those leads are counted (`swept`).
An account is compared, to a cent a member, with the roll-up of its members' offline states,
each valued at the time its own points were (a member update carries them so: the roll-up
values its members at no common time), unless a swept lead is a member.
`--ahead A` sets the workers' clock A ahead, so that their sweeps take leads down the ladder
(while the feed goes on with `--feed-pause-s` over 30 s, as above): those leads are swept, and
their scores still compared.
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

from scoring import Engine
from scoring.accounts import AccountState
from scoring.config import parse_duration_ms
from scoring.decay import StepDecay
from streams import services
from streams.bench import workload
from streams.errors import ServiceError
from streams.forget import request as ask_to_forget
from streams.history import read_to_end
from streams.lag import LagProbe
from streams.offline import OfflineRun, apply_file
from streams.processes import WorkerProcess, free_port
from streams.send import open_producer, produce
from streams.settings import Settings
from streams.sweep_clock import QUIET_MS
from streams.topics import delete_topics, ensure_topics
from tests.infra import leadstream, read_model_scores, write_jsonl
from tests.scoring.support import MODELS_DIR

#: Lines of a worker's log that tell of input it was handed out of sequence (streams/offset_sequence.py).
HOLE_MARKERS = ("offsets skipped", "were never handed to this worker", "sought back to it")


@dataclass
class Slot:
    """One worker's place: its port and state directory stay when it is started again."""

    settings: Settings
    process: WorkerProcess | None = None
    logs: list[Path] = field(default_factory=list)

    def start(self) -> None:
        self.process = WorkerProcess(self.settings)
        self.logs.append(self.process.log)
        self.process.spawn()

    def running(self) -> bool:
        return self.process is not None and self.process.proc is not None and self.process.proc.poll() is None

    def ready(self) -> bool:
        """Whether its worker runs and answers /readyz with 200."""
        try:
            return self.process is not None and self.running() and self.process.ready()
        except ServiceError:  # it exited meanwhile
            return False


class Run:
    """One chaos run: its topics, its three worker slots, and what happened."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.workdir = Path(tempfile.mkdtemp(prefix="leadstream-chaos-"))
        tag = f"chaos-{args.seed}-{uuid.uuid4().hex[:6]}"
        self.settings = Settings.from_env().namespaced(tag, state_dir=self.workdir / "state")
        if args.remember_events is not None or args.half_life:
            models = edited_models(self.workdir / "models", args.remember_events, args.half_life)
            self.settings = replace(self.settings, models_dir=models)
        self.slots = [Slot(replace(self.settings, worker_port=free_port(), state_dir=self.workdir / f"worker-{n}" / "state"))
                      for n in range(3)]
        self.actions: list[str] = []
        self.stopped_themselves: list[dict[str, Any]] = []
        #: Seconds the actions waited for a ready worker (`chaos`).
        self.waited_s = 0.0

    def supervise(self) -> None:
        """Starts again, as a supervisor would, a worker that exited on its own."""
        for n, slot in enumerate(self.slots):
            # A slot whose worker this run stopped has no process until it is started again.
            if slot.process is not None and slot.process.proc is not None and not slot.running():
                self.stopped_themselves.append({"worker": n, "exit": slot.process.proc.returncode, "why": self.why(slot.logs[-1])})
                slot.start()

    @staticmethod
    def why(log: Path) -> str:
        lines = log.read_text(errors="replace").splitlines()
        said = [line for line in lines if "CRITICAL" in line or "Error" in line]
        return (said or lines or ["(no log)"])[-1][-600:]

    def act(self) -> None:
        """One random action on the workers: kill one, stop one, or have the third join or leave."""
        running = [n for n, slot in enumerate(self.slots[:2]) if slot.running()]
        kind = self.rng.choice(("kill", "kill", "stop", "third"))
        if kind in ("kill", "stop") and running:
            n = self.rng.choice(running)
            process = self.slots[n].process
            assert process is not None
            self.slots[n].process = None  # not a worker that stopped itself
            if kind == "kill":
                process.kill()
            else:
                process.stop()
            self.slots[n].start()
            self.actions.append(f"{kind} worker {n} and start it again")
        elif self.slots[2].running():
            process = self.slots[2].process
            assert process is not None
            self.slots[2].process = None
            process.stop()
            self.actions.append("worker 2 leaves")
        else:
            self.slots[2].start()
            self.actions.append("worker 2 joins")

    def chaos(self) -> None:
        """The run's actions, each after a random pause and once a running worker is ready: on
        a loaded machine a worker takes tens of seconds to join the group and recover, and actions
        taken before any was ready stopped only workers that had read nothing (seed 304, `--chaos-s 1
        --actions 60` with seven other runs on two cores: 54 worker starts, the first ready 43 s
        after the first start, once the actions were over; two workers then scored the 100,000
        events undisturbed, and the report listed 60 actions). The other worker may still be
        starting: an action may stop one in its recovery, as before."""
        for _ in range(self.args.actions):
            time.sleep(self.rng.uniform(0.3, self.args.chaos_s))
            self.supervise()
            self.until_one_ready(self.args.settle_timeout_s)
            self.act()

    def until_one_ready(self, timeout_s: float) -> None:
        """Until a worker answers ready, starting again workers that stop themselves; counts the
        seconds it waited in `waited_s`."""
        began = time.monotonic()
        while not any(slot.ready() for slot in self.slots):
            if time.monotonic() - began >= timeout_s:
                raise TimeoutError(f"no worker was ready within {timeout_s:.0f} s")
            time.sleep(0.2)
            self.supervise()
        self.waited_s += time.monotonic() - began

    def feed(self, events: list[dict[str, Any]], forget_at: int = 0, forgotten: frozenset[str] = frozenset()) -> None:
        """Produces `events` in chunks, asking to forget the `forgotten` leads before the chunk
        at `forget_at` (a multiple of the chunk size)."""
        producer = open_producer(self.settings)
        try:
            for start in range(0, len(events), self.args.chunk):
                if forgotten and start == forget_at:
                    producer.flush()
                    self.forget(forgotten)
                chunk = events[start: start + self.args.chunk]
                if self.args.profiles:
                    produce(producer, self.settings.topic_profiles,
                            ((e["lead_id"], orjson.dumps(e)) for e in chunk if e["type"] == "identify"), self.args.events_per_message,
                            partitions=self.settings.partitions, compacted=True)
                    chunk = [e for e in chunk if e["type"] != "identify"]
                produce(producer, self.settings.topic_events, ((e["lead_id"], orjson.dumps(e)) for e in chunk),
                        self.args.events_per_message, partitions=self.settings.partitions)
                time.sleep(self.args.feed_pause_s)
        finally:
            producer.close()

    def forget(self, leads: frozenset[str]) -> None:
        """Once the group has committed every event sent so far, the requests to forget `leads`;
        returns when it has committed them too, so no later event is read before them."""
        probe = LagProbe(self.settings)
        try:
            probe.wait_caught_up(self.settings.app_id, self.inputs(), self.args.settle_timeout_s)
            topic = ask_to_forget(self.settings, sorted(leads))
            self.actions.append(f"asked to forget {len(leads)} leads")
            probe.wait_caught_up(self.settings.app_id, [topic], self.args.settle_timeout_s)
        finally:
            probe.close()

    def inputs(self) -> list[str]:
        """The topics the feed writes to, and the identity topic the workers write links to."""
        return [self.settings.topic_events, self.settings.topic_identity] + ([self.settings.topic_profiles] if self.args.profiles else [])

    def wait_caught_up(self, timeout_s: float, not_before: float = 0.0, quiet_s: float = 0.0) -> None:
        """Until the group has committed every message, the monotonic clock is at `not_before`,
        and for the last `quiet_s` every running worker was ready and the scores topic took no
        record (a decay sweep publishes with no input for the group to lag behind), starting
        again workers that stop themselves."""
        probe = LagProbe(self.settings)
        try:
            deadline = time.monotonic() + timeout_s
            topics = [self.settings.topic_events, self.settings.topic_accounts, *self.inputs()[1:]]
            scores: dict[Any, int] = {}
            quiet_since = time.monotonic()
            while time.monotonic() < deadline:
                self.supervise()
                lags = [probe.lag(self.settings.app_id, topic) for topic in topics]
                ends = probe.ends(self.settings.topic_scores)
                if ends != scores or not all(slot.ready() for slot in self.slots if slot.running()):
                    scores, quiet_since = ends, time.monotonic()
                # The identity topic has no records without visitors: no lag to read is none left.
                caught_up = all(lag and not any(lag.values()) for lag in lags[:2]) and not any(any((lag or {}).values()) for lag in lags[2:])
                if caught_up and time.monotonic() >= max(not_before, quiet_since + quiet_s):
                    return
                time.sleep(1.0)
            raise TimeoutError(f"the workers did not catch up within {timeout_s:.0f} s")
        finally:
            probe.close()

    def run(self) -> dict[str, Any]:
        args = self.args
        now = int(time.time() * 1000)
        events = list(workload.generate(args.events, args.leads, args.seed, start_ms=now - 6 * 3_600_000, span_ms=6 * 3_600_000))
        stitched = with_visitors(events, args.visitors, self.rng)
        forget_at = len(events) // 2 // args.chunk * args.chunk
        forgotten = to_forget(events[:forget_at], args.forgets, self.rng)
        kept = as_forgotten(events, forget_at, forgotten)
        path = write_jsonl(self.workdir / "events.jsonl", kept)
        newest_ms = max(event["time"] for event in events)
        first_step_ms = first_decay_step_ms(self.settings) if args.decay_in_s else 0
        at = ["--at", iso(newest_ms + first_step_ms)] if args.decay_in_s else []
        offline = [orjson.loads(line) for line in leadstream(self.settings, "score", "--events", str(path), *at, timeout=600).stdout.splitlines()]
        ensure_topics(self.settings)
        decayed_by = 0.0
        if args.ahead:
            for slot in self.slots:
                slot.settings = replace(slot.settings, clock_offset_ms=args.ahead)
            decayed_by = time.monotonic() + 2 * self.settings.decay_interval_s
        if args.decay_in_s:
            # The newest event's step falls due at the workers' clock's newest + first step, L seconds from now.
            offset_ms = newest_ms + first_step_ms - int(time.time() * 1000) - args.decay_in_s * 1000
            for slot in self.slots:
                slot.settings = replace(slot.settings, clock_offset_ms=offset_ms)
            decayed_by = time.monotonic() + args.decay_in_s + 2 * self.settings.decay_interval_s
        try:
            for slot in self.slots[:2]:
                slot.start()
            feeder = threading.Thread(target=self.feed, args=(events, forget_at, forgotten), daemon=True)
            feeder.start()
            self.chaos()
            feeder.join()
            if self.slots[2].running():
                process = self.slots[2].process
                assert process is not None
                self.slots[2].process = None
                process.stop()
            # Quiet for QUIET_MS and two sweeps after: a partition is swept to the workers' clock
            # once it has had nothing to read for that long since it was read or assigned (a
            # worker killed last: once the group noticed it was gone), readiness coming back then.
            quiet_s = QUIET_MS / 1000 + 2 * self.settings.decay_interval_s if args.decay_in_s or args.ahead else 0.0
            self.wait_caught_up(args.settle_timeout_s, not_before=decayed_by, quiet_s=quiet_s)
            every_lead = args.decay_in_s or args.profiles  # whose crossings differ from the offline scorer's (module doc)
            # Forgotten leads too, of which the offline scorer lists none without later events.
            scores_only = stitched | forgotten | ({r["lead_id"] for r in offline if r["record"] == "lead"} if every_lead else set())
            return {"seed": args.seed, "app_id": self.settings.app_id, "events": len(events), "actions": self.actions,
                    "actions_waited_for_a_ready_worker_s": round(self.waited_s, 1),
                    "stopped_themselves": self.stopped_themselves, "holes_logged": self.holes(),
                    "visitors": args.visitors, "forgotten": len(forgotten), "decay_in_s": args.decay_in_s, "profiles": args.profiles,
                    "half_life": args.half_life, "ahead_ms": args.ahead,
                    **compare(self.settings, offline, scores_only, HalfLifeRun.of(self.settings, path, kept) if args.half_life else None)}
        finally:
            for slot in self.slots:
                if slot.process is not None:
                    slot.process.stop()
            if not args.keep:
                delete_topics(self.settings, self.settings.app_id)

    def holes(self) -> list[str]:
        return [line[-400:] for slot in self.slots for log in slot.logs if log.exists()
                for line in log.read_text(errors="replace").splitlines() if any(marker in line for marker in HOLE_MARKERS)]


def edited_models(directory: Path, remember: int | None, half_life: str | None) -> Path:
    """A copy of the shipped models whose b2b model remembers `remember` event ids, or decays
    with a half-life of `half_life` (None: as shipped)."""
    shutil.copytree(MODELS_DIR, directory)
    model = directory / "b2b.toml"
    text = model.read_text()
    if remember is not None:
        text, count = re.subn(r"(?m)^remember_events = \d+", f"remember_events = {remember}", text)
        assert count == 1, "the b2b model no longer sets remember_events"
    if half_life is not None:
        text, count = re.subn(r"(?ms)^\[decay\]\nsteps = \[.*?^\]\n", f'[decay]\nhalf_life = "{half_life}"\n', text)
        assert count == 1, "the b2b model no longer decays in steps written as a list over lines"
    model.write_text(text)
    return directory


def first_decay_step_ms(settings: Settings) -> int:
    """The idle time of the b2b model's first decay step."""
    model = next(model for model in Engine.from_directory(settings.models_dir).models if model.name == "b2b")
    assert isinstance(model.decay, StepDecay), "the b2b model no longer decays in steps"
    return model.decay.steps[0].idle_ms


def duration_ms(text: str) -> int:
    duration = parse_duration_ms(text)
    if duration is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 12h or 2d")
    return duration


def iso(time_ms: int) -> str:
    return datetime.fromtimestamp(time_ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds")


def with_visitors(events: list[dict[str, Any]], visitors: int, rng: random.Random) -> set[str]:
    """Puts into `events` the visitors' (see the module doc), each event timed as the one it is
    put before; returns the ids of the leads they are stitched to."""
    inserted: list[tuple[int, dict[str, Any]]] = []
    for n in range(visitors):
        visitor, lead = f"cv{n}", f"vlead-{n}"
        before, after = rng.randint(1, 6), rng.randint(1, 6)  # at most 12 webinars: 120 points, below the ceiling of 150
        kinds = ["webinar_attended"] * before + ["identify"] + ["webinar_attended"] * after
        for k, (kind, position) in enumerate(zip(kinds, sorted(rng.sample(range(len(events)), len(kinds))))):
            event = {"event_id": f"{visitor}-{k}", "lead_id": f"anon:{visitor}", "type": kind, "product": "b2b"}
            if kind == "identify":
                event.update(lead_id=lead, anonymous_id=visitor)
            inserted.append((position, event))
    for position, event in sorted(inserted, key=lambda pair: pair[0], reverse=True):
        events.insert(position, {**event, "time": events[position]["time"]})
    return {f"vlead-{n}" for n in range(visitors)}


def to_forget(events: list[dict[str, Any]], count: int, rng: random.Random) -> frozenset[str]:
    """`count` leads that have events among `events`: a tenth of them visitors' leads (whose
    visitor was stitched to them among `events`), the rest the workload's."""
    leads = sorted({event["lead_id"] for event in events if event["lead_id"].startswith("lead-")})
    stitched = sorted({event["lead_id"] for event in events if event["lead_id"].startswith("vlead-")})
    visitors = rng.sample(stitched, min(count // 10, len(stitched)))
    return frozenset(rng.sample(leads, min(count - len(visitors), len(leads))) + visitors)


def as_forgotten(events: list[dict[str, Any]], forget_at: int, forgotten: frozenset[str]) -> list[dict[str, Any]]:
    """The events as the `forgotten` leads' new profiles see them, forgotten before the event at
    `forget_at`: their events before it gone, and their visitors' too (a visitor "cvN" is
    stitched to "vlead-N" before then); their visitors' later events keyed by their lead, as
    the worker re-keys them."""
    kept = []
    for n, event in enumerate(events):
        lead_id = event["lead_id"]
        visitor_of = lead_id.replace("anon:cv", "vlead-", 1) if lead_id.startswith("anon:cv") else None
        if n < forget_at and (lead_id in forgotten or visitor_of in forgotten):
            continue
        kept.append({**event, "lead_id": visitor_of} if visitor_of in forgotten else event)
    return kept


@dataclass
class HalfLifeRun:
    """The offline scorer's lead states of a half-life run, not decayed to any time, and the
    lead and time of each event, at which its crossings are timed (decay's at others)."""

    offline: OfflineRun
    event_times: set[tuple[str, int]]

    @classmethod
    def of(cls, settings: Settings, path: Path, events: list[dict[str, Any]]) -> HalfLifeRun:
        # The worker sweeps on its own clock, not the events' times: members unswept between events.
        offline = apply_file(Engine.from_directory(settings.models_dir), path, sys.stderr, sweep_members=False)
        return cls(offline, {(event["lead_id"], event["time"]) for event in events})

    def score_at(self, key: str, time_ms: int) -> float:
        """The score of `model/lead` valued at `time_ms`, as a worker publishes it then."""
        model, lead_id = key.split("/", 1)
        engine, state = self.offline.engine, self.offline.leads[(model, lead_id)]
        decay = engine.runtime(model).half_life
        if decay is not None and time_ms < state.as_of_ms:
            # Its last events changed nothing but the time its points are valued at (e-mail
            # opens past their cap, logins), so the worker published none: valued back then.
            state = state.copy()
            state.behaviour /= decay.factor(state.as_of_ms - time_ms)
            state.as_of_ms = time_ms
        return float(engine.summary(model, lead_id, state, time_ms)["score"])

    def account_scores(self, swept: set[str]) -> dict[str, tuple[float, int]]:
        """The score (and member count) of each account no lead of `swept` is in, as the roll-up
        makes it: of its members' scores each valued at the time its own points were (a member
        update's, `Engine.member_score`), not at the time of any summary."""
        engine, out = self.offline.engine, {}
        for (model, account_id), account in self.offline.accounts.items():
            if engine.runtime(model).model.accounts is None or not account.members or not swept.isdisjoint(account.members):
                continue
            members = {}
            for lead_id, member in account.members.items():
                update = engine.member_score(model, lead_id, self.offline.leads[(model, lead_id)], 0)
                assert update is not None, f"{model}/{lead_id} is a member of {account_id} without an account"
                members[lead_id] = [update.score, *member[1:]]
            summary = engine.account_summary(model, account_id, AccountState(members, account.level, account.crossings))
            out[f"{model}:account/{account_id}"] = (float(summary["score"]), len(members))
        return out


def compare(settings: Settings, offline: list[dict[str, Any]], scores_only: set[str] | frozenset[str] = frozenset(),
            half_life: HalfLifeRun | None = None) -> dict[str, Any]:
    """What the topics hold against what the offline scorer says they should (of the leads
    `scores_only`, visitors' and forgotten ones, the scores only: see the module doc). Given
    `half_life`, the offline run of a half-life model's events, scores are compared at the time
    each was published, crossings of leads a sweep valued not, accounts of such leads not
    (module doc)."""
    crossings = [orjson.loads(record.value) for record in read_to_end(settings, settings.topic_crossings) if record.value]
    published: dict[str, dict[str, Any] | None] = {}
    for record in read_to_end(settings, settings.topic_scores):
        published[record.key.decode() if record.key else ""] = None if record.value is None else orjson.loads(record.value)
    scores = {key: None if value is None else value["score"] for key, value in published.items()}
    expected_scores = read_model_scores(offline)
    swept: set[str] = set()
    cents: dict[str, float] = {}
    if half_life is not None:
        expected_scores = {key: half_life.score_at(key, record["time"]) if (record := published.get(key)) else value
                           for key, value in expected_scores.items() if ":account/" not in key}
        newest_ms = max(time_ms for _, time_ms in half_life.event_times)
        swept = {c["lead_id"] for c in [*crossings, *(r for r in offline if r["record"] == "transition")]
                 if c["kind"] == "lead" and (c["lead_id"], c["time"]) not in half_life.event_times}
        # A sweep also values a lead in an account as decay takes a tenth of its points, crossing
        # nothing: its points stay valued then, at a time after every event (`--ahead`).
        swept |= {record["lead_id"] for key, record in published.items() if record and ":account/" not in key and record["time"] > newest_ms}
        # Half-life points summed in other batches differ in their last bits, which may round a
        # cent apart: each lead's, and so an account's by a cent a member. A swept member's
        # points are valued later than the offline scorer's, whatever its crossings.
        cents = dict.fromkeys(expected_scores, 0.01)
        accounts = half_life.account_scores(swept)
        swept -= scores_only
        expected_scores.update({key: score for key, (score, _) in accounts.items()})
        cents.update({key: 0.01 * members for key, (_, members) in accounts.items()})
        scores = {key: value for key, value in scores.items() if ":account/" not in key or key in accounts}
    wrong = {key: {"expected": value, "published": scores.get(key)} for key, value in expected_scores.items()
             if not (value == scores.get(key) or value is not None and scores.get(key) is not None
                     and abs(value - scores[key]) <= cents.get(key, 0.0) + 1e-9)}
    unexpected = sorted(key for key, value in scores.items() if key not in expected_scores and value is not None)
    expected_crossings = {r["id"]: r for r in offline if r["record"] == "transition" and r["kind"] == "lead"
                          and r["lead_id"] not in scores_only and r["lead_id"] not in swept}
    of_leads = [c for c in crossings if c["kind"] == "lead" and c["lead_id"] not in scores_only]  # swept ones' copies count too
    lead_crossings = [c for c in of_leads if c["lead_id"] not in swept]
    published_ids = {c["id"] for c in lead_crossings}
    unlike = [c["id"] for c in lead_crossings if c["id"] in expected_crossings
              and (c["lead_id"], c["to_level"], c["score"]) != tuple(expected_crossings[c["id"]][k] for k in ("lead_id", "to_level", "score"))]
    leads_wrong = {k: v for k, v in wrong.items() if ":account/" not in k}
    accounts_wrong = {k: v for k, v in wrong.items() if ":account/" in k}
    return {
        "leads_expected": sum(":account/" not in key for key in expected_scores),
        "accounts_expected": sum(":account/" in key for key in expected_scores),
        "swept_leads": len(swept),
        "leads_wrong": len(leads_wrong), "accounts_wrong": len(accounts_wrong), "unexpected_keys": len(unexpected),
        "unexpected_examples": {key: scores[key] for key in unexpected[:10]},
        "wrong_examples": dict(list(leads_wrong.items())[:5] + list(accounts_wrong.items())[:5]),
        "lead_crossings_expected": len(expected_crossings),
        "lead_crossings_missing": sorted(set(expected_crossings) - published_ids)[:20],
        "lead_crossings_unexpected": sorted(published_ids - set(expected_crossings))[:20],
        "lead_crossings_unlike": unlike[:20],
        "lead_crossing_copies": len(of_leads) - len({c["id"] for c in of_leads}),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=41)
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--leads", type=int, default=3_000)
    parser.add_argument("--events-per-message", type=int, default=20)
    parser.add_argument("--chunk", type=int, default=500, help="events produced between two pauses")
    parser.add_argument("--feed-pause-s", type=float, default=0.05)
    parser.add_argument("--actions", type=int, default=20)
    parser.add_argument("--chaos-s", type=float, default=2.0, help="longest pause between two actions")
    parser.add_argument("--settle-timeout-s", type=float, default=300.0)
    parser.add_argument("--visitors", type=int, default=0, help="anonymous visitors, each stitched to a lead of its own")
    parser.add_argument("--forgets", type=int, default=0, help="leads to forget halfway through the feed")
    parser.add_argument("--remember-events", type=int, help="event ids the b2b model's states remember (default: the model's)")
    parser.add_argument("--profiles", action="store_true", help="send identify events to the profiles topic, as the collector does")
    parser.add_argument("--decay-in-s", type=int, default=0,
                        help="set the workers' clock so that the leads' first decay steps fall due at once or within this many seconds (0: none)")
    parser.add_argument("--half-life", help="run the b2b model with this half-life (e.g. 30d) in place of its decay steps")
    parser.add_argument("--ahead", type=duration_ms, default=0, help="with --half-life: set the workers' clock this far ahead (e.g. 2d)")
    parser.add_argument("--keep", action="store_true", help="keep the run's topics")
    args = parser.parse_args(argv)
    if args.half_life and args.decay_in_s:
        parser.error("--decay-in-s moves the clock to the b2b model's first decay step, which --half-life takes away: use --ahead")
    if args.ahead and not args.half_life:
        parser.error("--ahead needs --half-life (steps: --decay-in-s)")
    services.up(Settings.from_env())
    report = Run(args).run()
    sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    differs = report["leads_wrong"] or report["accounts_wrong"] or report["unexpected_keys"] or report["lead_crossings_missing"] \
        or report["lead_crossings_unexpected"] or report["lead_crossings_unlike"]
    return 1 if differs else 0


if __name__ == "__main__":
    sys.exit(main())
