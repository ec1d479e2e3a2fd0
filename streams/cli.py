"""The `leadstream` command: one entry point, one subcommand per job.

Each subcommand's work lives in the module named after it; this file only parses arguments,
so importing it stays cheap (heavy imports such as Faust happen inside the handlers).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Callable, Sequence

from scoring.errors import LeadstreamError
from sinks.connectors import NAMES as SINK_NAMES
from streams.log_redaction import leave_out_what_must_not_be_logged
from streams.settings import PROJECT_ROOT, Settings, describe, unknown_variables, whole_number

Handler = Callable[[argparse.Namespace, Settings], int]


def _services(args: argparse.Namespace, settings: Settings) -> int:
    from streams import services

    return services.main(args.action, settings)


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    from streams.worker import run_worker

    return run_worker(settings)


def _stop_on_sigterm_as_on_ctrl_c() -> None:
    """A SIGTERM ends the command as Ctrl-C does (KeyboardInterrupt, 130), through its `finally`s:
    Python's default SIGTERM ended it at once, with nothing of them run."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def _send(args: argparse.Namespace, settings: Settings) -> int:
    from streams.send import send_file

    # Its `finally` closes the producer, which sends what it was handed: killed by the default
    # SIGTERM (`send -` from a pipe that never ends, stopped by a service manager), that was lost.
    _stop_on_sigterm_as_on_ctrl_c()
    return send_file(args.file, settings, topic=args.topic, events_per_message=args.events_per_message, failed=args.failed)


def _collector(args: argparse.Namespace, settings: Settings) -> int:
    from streams.collector import run_collector

    return run_collector(settings)


def _topics(args: argparse.Namespace, settings: Settings) -> int:
    from streams.topics import ensure_topics

    for line in ensure_topics(settings):
        print(line)
    return 0


def _score(args: argparse.Namespace, settings: Settings) -> int:
    from streams.collection import tune_collector
    from streams.offline import score_file

    tune_collector(settings.gc_young_threshold)
    return score_file(args.models or settings.models_dir, args.events, table=args.table, out=sys.stdout, err=sys.stderr, at_ms=args.at,
                      future=settings.future_limit(settings.now_ms(), "this machine's clock"))


def _history(args: argparse.Namespace, settings: Settings) -> int:
    from streams.history import history_file

    _stop_on_sigterm_as_on_ctrl_c()  # through the `finally` that removes a history not written whole
    return history_file(settings, args.out, topics=args.topic)


def _forget(args: argparse.Namespace, settings: Settings) -> int:
    from streams.forget import forget, lead_ids
    from streams.forgotten import warn_if_not_durable

    ids = lead_ids(args.lead_ids, args.from_file)
    warn_if_not_durable(settings, "forget")
    return forget(settings, ids)


def _models(args: argparse.Namespace, settings: Settings) -> int:
    from streams.models_report import copy_models, report

    if args.copy_to is not None:
        return copy_models(args.models or settings.models_dir, args.copy_to, sys.stdout)
    return report(args.models or settings.models_dir, args.json, sys.stdout, args.baseline, sys.stderr)


def _replay_dlq(args: argparse.Namespace, settings: Settings) -> int:
    from streams.replay import replay_dead_letters

    replay_dead_letters(settings, set(args.reason), args.since or 0, dry_run=args.dry_run)
    return 0


def _review(args: argparse.Namespace, settings: Settings) -> int:
    from streams.collection import tune_collector
    from streams.review import review_files

    tune_collector(settings.gc_young_threshold)
    return review_files(
        args.models or settings.models_dir, args.events, args.outcomes, args.converted, args.min_leads, table=args.table, out=sys.stdout,
        baseline_dir=args.baseline,
    )


#: benchmark name -> module whose `main(args, settings)` runs it
BENCHMARKS = {
    "engine": "streams.bench.engine",
    "pipeline": "streams.bench.pipeline",
    "stages": "streams.bench.stages",
    "collector": "streams.bench.collector",
    "sinks": "sinks.bench",
}


def _bench(args: argparse.Namespace, settings: Settings) -> int:
    # Through the `finally`s that stop a benchmark's child processes and delete its topics: its
    # workers run in sessions of their own, so no signal to the benchmark reaches them, and
    # Python's default SIGTERM ended it at once, leaving them running for ever and the topics on the broker.
    _stop_on_sigterm_as_on_ctrl_c()
    return int(importlib.import_module(BENCHMARKS[args.what]).main(args, settings))


def _sink(args: argparse.Namespace, settings: Settings) -> int:
    from sinks import connectors, runner
    from streams.forgotten import warn_if_not_durable

    if args.connector == "replay-dlq":
        if args.target is None:
            raise LeadstreamError(f"replay-dlq needs the connector whose dead letters to replay: {', '.join(connectors.NAMES)}")
    elif args.target is not None:
        raise LeadstreamError(f"a second connector name ({args.target}) only follows replay-dlq; run one connector per process")
    if args.drop_permanent and args.target is None:
        raise LeadstreamError("--drop-permanent is replay-dlq's (`leadstream sink replay-dlq CONNECTOR --drop-permanent`)")
    if args.rebuild and args.connector != "redis":
        raise LeadstreamError("--rebuild is the Redis read model's (`leadstream sink redis --rebuild`): a CRM is not rebuilt")
    # Before the connector is built: building it may warn (sinks/connectors.py).
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    warn_if_not_durable(settings, "sink")
    if args.target is not None:  # replay-dlq's
        return runner.replay(connectors.build(args.target, settings), settings, drop_permanent=args.drop_permanent)
    sink = connectors.build(args.connector, settings)
    if args.rebuild:
        from sinks.redis_model import start_over

        start_over(settings)
    return runner.run_sink(sink, settings)


def _top(args: argparse.Namespace, settings: Settings) -> int:
    from sinks.redis_model import print_top

    return print_top(settings, args.model, args.limit, accounts=args.accounts)


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from streams.demo import run_demo

    return run_demo(settings)


def _settings(args: argparse.Namespace, settings: Settings) -> int:
    if args.markdown:
        print("| variable | default | what it does |\n|---|---|---|")
    for env, default, doc in describe():
        if args.markdown:
            print(f"| `{env}` | `{default.replace(str(PROJECT_ROOT) + '/', '<project>/')}` | {doc} |")
        else:
            print(f"{env}={default}\n    {doc}")
    return 0


def _whole(text: str) -> int:
    # As the integer settings are read: int() also took 1_000, +5 and other scripts' digits.
    value = whole_number(text)
    if value is None:
        raise argparse.ArgumentTypeError(f"expected a whole number written with the digits 0-9, got {text!r}")
    return value


def _positive(text: str) -> int:
    value = _whole(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 1 or more, got {value}")
    return value


#: The most events, and leads, a benchmark generates: it holds them all in memory (some 225 bytes
#: an event in `bench engine`, 128 MB at 300,000; a lead's state some 3-10 KB): `--events
#: 1000000000` was still generating after a minute, at 1.2 GB and growing, towards some 225 GB.
#: Ten times the default.
MAX_BENCH_COUNT = 10_000_000


def _bench_count(text: str) -> int:
    value = _positive(text)
    if value > MAX_BENCH_COUNT:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_BENCH_COUNT:,} (a benchmark holds what it generates in memory), "
                                         f"got {value:,}")
    return value


#: `bench collector` generates 60,000 events for each second of --seconds and holds them all
#: (streams.bench.collector.GENERATED_EVENTS_PER_S): --seconds 1000 was 60M events, some 13 GB, so
#: it is bounded as --events is. Under a second its latency phase made no call at all, and the
#: benchmark ended in a traceback ("no median for empty data") after its throughput phase.
BENCH_SECONDS = (1.0, 150.0)


def _bench_seconds(text: str) -> float:
    value = _positive_seconds(text)
    least, most = BENCH_SECONDS
    if not least <= value <= most:
        raise argparse.ArgumentTypeError(f"expected {least:g} to {most:g} seconds (a benchmark holds the events of its "
                                         f"phases in memory), got {text}")
    return value


def _outcome_values(text: str) -> frozenset[str]:
    values = frozenset(value.strip() for value in text.split(",") if value.strip())
    if not values:  # every lead would count as not converted, and the review would say nothing
        raise argparse.ArgumentTypeError(f"expected outcome values separated by commas, such as won or 'closed won,won', got {text!r}")
    return values


def _reason(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a dead-letter reason, such as unknown_type, got nothing")
    return text.strip()


def _topic(text: str) -> str:
    # `--topic "$T"` with T unset: a `send` fell back to the live events topic without a word.
    if not text:
        raise argparse.ArgumentTypeError("expected a topic name, got nothing")
    return text


def _moment(text: str) -> int:
    """An ISO-8601 time with its zone, or a date (UTC midnight), in epoch ms, read as event
    times are (scoring.events.parse_time_ms)."""
    from scoring.events import parse_moment_ms

    parsed = parse_moment_ms(text)
    if isinstance(parsed, str):
        raise argparse.ArgumentTypeError(f"expected an ISO-8601 time with its zone such as 2026-12-01T09:00:00Z, or a date, "
                                         f"got {text!r}: " + parsed.replace("field 'time' ", "it ", 1))
    return parsed


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds above 0, got {text}")
    return value


def _version() -> str:
    """The version pip recorded as it installed leadstream (pyproject.toml's)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("leadstream")
    except PackageNotFoundError:  # a source tree run without being installed
        return "of a source tree not installed (pip install . records its version)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="leadstream",
        description="Real-time lead scoring on Kafka. Settings come from LEADSTREAM_* environment "
        "variables (`leadstream settings` lists them).",
    )
    # Which release runs, for a bug report or an upgrade: there was no way to ask but pip.
    parser.add_argument("--version", action="version", version=f"leadstream {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        return p

    p = add("services", _services, "Start, stop or inspect the local Kafka broker and Redis server.")
    p.add_argument("action", choices=["up", "down", "status"], help="up: start (idempotent); down: stop what up started; status: report each")

    add("worker", _worker, "Run the Faust scoring worker: raw events in, scores and threshold crossings out.")

    p = add("send", _send, "Produce a JSON-lines file of events to the raw events topic, keyed by lead id.")
    p.add_argument("file", type=Path, help="JSON-lines file: one event object per line, or a JSON array of events (an envelope, as `history` writes them) ('-' for stdin)")
    p.add_argument("--topic", type=_topic, help="topic to write to (default: LEADSTREAM_TOPIC_EVENTS)")
    p.add_argument(
        "--events-per-message",
        type=_positive,
        default=1,
        help="pack up to N events of the same partition into one Kafka message (JSON array envelope), sent once full; "
             "the file is then sent in its order within each partition only (README: Commands); default 1",
    )
    p.add_argument("--failed", type=Path, metavar="FAILED",
                   help="write the messages Kafka did not write, or may not have, to FAILED (emptied first), one a line, "
                        "to send them alone once the cause is fixed")

    add(
        "collector",
        _collector,
        "Run the Segment-compatible HTTP collector: track, page, identify, group, alias and batch calls into Kafka.",
    )

    add("topics", _topics, "Create leadstream's topics (idempotent) with their partitions, cleanup policies and settings, and give "
        "existing ones the settings of this release they lack.")

    p = add("score", _score, "Score a JSON-lines file of events offline with the engine alone (no services).")
    p.add_argument("--models", type=Path, help="directory of model files (default: LEADSTREAM_MODELS_DIR)")
    p.add_argument("--events", type=Path, required=True, help="JSON-lines file of events")
    p.add_argument("--table", action="store_true", help="print a table instead of JSON lines")
    p.add_argument("--at", type=_moment, help="evaluate decay at this ISO-8601 time or date, at or after the newest event "
                                              "(default: the newest event's time), to see scores as they will stand then")

    p = add("models", _models, "Check the model files and show what each model scores, reads and how it levels leads.")
    p.add_argument("--models", type=Path, help="directory of model files (default: LEADSTREAM_MODELS_DIR)")
    p.add_argument("--json", action="store_true", help="one JSON object per model")
    p.add_argument("--baseline", type=Path, help="directory of the models in use: warn of rules testing a trait they neither keep nor test")
    p.add_argument("--copy-to", type=Path, metavar="DIR", help="copy the model files to DIR (made if missing; none there "
                   "overwritten) to edit them there, with LEADSTREAM_MODELS_DIR=DIR: installed with pip, the shipped ones are pip's")

    p = add("history", _history, "Write the raw events and profiles topics, as they are now, to a JSON-lines file (for score and review).")
    p.add_argument("--out", type=Path, required=True, help="file to write ('-' for stdout)")
    p.add_argument("--topic", action="append", type=_topic,
                   help="topic to read, repeatable, each once (default: LEADSTREAM_TOPIC_EVENTS and LEADSTREAM_TOPIC_PROFILES)")

    p = add("review", _review, "Review each model against real outcomes: how well its scores, levels and rules predicted conversions.")
    p.add_argument("--models", type=Path, help="directory of model files (default: LEADSTREAM_MODELS_DIR)")
    p.add_argument("--events", type=Path, required=True, help="JSON-lines file of events (the history to score)")
    p.add_argument("--outcomes", type=Path, required=True, help="JSON lines (the file starts with '{'), or else CSV with a header row: lead_id, outcome, time (optional); whatever the file's name")
    p.add_argument("--converted", type=_outcome_values, default=frozenset({"won"}), help="comma-separated outcome values that count as converted (default: won)")
    p.add_argument("--min-leads", type=_positive, default=20, help="leads a figure needs before a finding is drawn from it (default 20)")
    p.add_argument("--baseline", type=Path, help="directory of another version of the models, to compare each model with its namesake")
    p.add_argument("--table", action="store_true", help="print tables instead of one JSON object per model")

    p = add("bench", _bench, "Run a benchmark and print its figures.")
    p.add_argument(
        "what",
        choices=list(BENCHMARKS),
        help="engine: the pure scoring engine against an orjson parse loop; "
        "pipeline: one worker on the real broker against a raw aiokafka loop; "
        "stages: the worker's scoring and account stages without a broker, CPU per event; "
        "collector: batch calls through a collector against `leadstream send`; "
        "sinks: deliveries/s per connector against local CRM stand-ins, with 0 and 50 ms latency",
    )
    p.add_argument("--events", type=_bench_count, default=1_000_000, help=f"number of generated events (default 1,000,000; "
                   f"{MAX_BENCH_COUNT:,} at most: they are held in memory)")
    p.add_argument("--leads", type=_bench_count, default=100_000, help=f"number of distinct leads (default 100,000; "
                   f"{MAX_BENCH_COUNT:,} at most)")
    p.add_argument("--seed", type=_whole, default=7, help="seed of the generated workload (default 7)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--seconds", type=_bench_seconds, default=8.0, help=f"collector: how long each load phase runs (default 8 s; "
                   f"{BENCH_SECONDS[0]:g} to {BENCH_SECONDS[1]:g})")
    p.add_argument("--events-per-message", type=_positive, default=200, help="pipeline, stages: events per Kafka message (envelope; default 200)")
    p.add_argument("--no-metrics", action="store_true", help="pipeline: run the worker without Faust's sensors")
    p.add_argument("--workers", type=_positive, default=1, help="pipeline: worker processes sharing the partitions, one consumer group (default 1)")

    p = add("sink", _sink, "Run a connector: threshold crossings to a CRM or webhook, score changes to Redis.")
    p.add_argument("connector", choices=[*SINK_NAMES, "replay-dlq"], help="the connector, or replay-dlq CONNECTOR "
                   "to re-drive that connector's dead letters once their cause is fixed")
    p.add_argument("target", nargs="?", choices=SINK_NAMES, help="replay-dlq: the connector")
    p.add_argument("--drop-permanent", action="store_true", help="replay-dlq: drop the letters that fail for good again "
                   "(a record the CRM lacks) instead of dead-lettering them anew; the others are replayed as ever")
    p.add_argument("--rebuild", action="store_true", help="redis: read the score-changes topic from its beginning "
                   "and write the read model again (after Redis lost its data); no other `sink redis` may run")

    p = add("forget", _forget, "Erase leads from leadstream: their scores, states and account memberships (an erasure request).")
    p.add_argument("lead_ids", nargs="*", metavar="LEAD_ID", help="ids of the leads to forget")
    p.add_argument("--from", dest="from_file", type=Path, help="a file of lead ids, one per line ('-' for stdin)")

    p = add("replay-dlq", _replay_dlq, "Send the worker's dead letters of the given reasons back to their source topic, "
            "once their cause is fixed (an event type now known, a sender's clock fixed...).")
    p.add_argument("--reason", action="append", required=True, type=_reason,
                   help="a dead-letter reason to replay (repeatable), e.g. unknown_type")
    p.add_argument("--since", type=_moment, help="only letters written at or after this ISO-8601 time (or date)")
    p.add_argument("--dry-run", action="store_true", help="count what would be replayed, send nothing")

    p = add("top", _top, "Print the hottest leads (or accounts) of a model from the Redis read model.")
    p.add_argument("--model", required=True, help="scoring model name")
    p.add_argument("--limit", type=_positive, default=20, help="how many leads (default 20)")
    p.add_argument("--accounts", action="store_true", help="the hottest accounts (models with [accounts]) instead of leads")

    add("demo", _demo, "Start everything, stream sample events and show the hottest leads.")
    p = add("settings", _settings, "List every LEADSTREAM_* environment variable with its default.")
    p.add_argument("--markdown", action="store_true", help="as the README's table")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except OSError as exc:  # `--help > /dev/full`: argparse's own writes, a traceback
        return _output_refused("leadstream", exc)
    leave_out_what_must_not_be_logged()  # before any command logs: records and URLs hold personal data and secrets
    for warning in unknown_variables(os.environ):
        print(f"leadstream {args.command}: warning: {warning}", file=sys.stderr)
    try:
        settings = Settings.from_env()
        return int(args.handler(args, settings))
    except LeadstreamError as exc:
        print(f"leadstream {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        if exc.args:  # what a stopped command had done (streams.send.SendStopped)
            print(f"leadstream {args.command}: {exc}", file=sys.stderr)
        return 130
    except OSError as exc:
        return _output_refused(f"leadstream {args.command}", exc)


def _output_refused(command: str, exc: OSError) -> int:
    """The exit status, said on stderr, of a command whose file or output the system refused."""
    # No last flush of the output at exit either: it would fail again, with a traceback.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if isinstance(exc, BrokenPipeError):  # the reader went away (`leadstream score ... | head`): nothing more to say to it
        return 141  # as a shell reports a command SIGPIPE ended
    # The system refused a file or the output (`> /dev/full`: no space left): not leadstream's
    # bug, so its reason, not a traceback.
    where = f": {exc.filename}" if exc.filename else ""
    print(f"{command}: {exc.strerror or exc}{where}", file=sys.stderr)
    return 1

if __name__ == "__main__":
    sys.exit(main())
