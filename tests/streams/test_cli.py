"""The command line refuses arguments no command could use, before doing anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from streams.cli import build_parser, main
from streams.settings import PROJECT_ROOT


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["review", "--events", "e", "--outcomes", "o", "--min-leads", "0"], "argument --min-leads: expected 1 or more, got 0"),
        (["review", "--events", "e", "--outcomes", "o", "--converted", " , "], "argument --converted: expected outcome values separated by commas"),
        # Redis reads a range of 0 as "everything" and a negative one from the end.
        (["top", "--model", "b2b", "--limit", "0"], "argument --limit: expected 1 or more, got 0"),
        (["top", "--model", "b2b", "--limit", "-5"], "argument --limit: expected 1 or more, got -5"),
        (["top", "--model", "b2b", "--limit", "ten"], "argument --limit: expected a whole number written with the digits 0-9, got 'ten'"),
        # Read as the integer settings are: int() took these too.
        (["bench", "engine", "--events", "1_000"], "argument --events: expected a whole number written with the digits 0-9, got '1_000'"),
        (["bench", "engine", "--seed", "\u0663"], "argument --seed: expected a whole number written with the digits 0-9, got '\u0663'"),
        (["review", "--events", "e", "--outcomes", "o", "--min-leads", "+5"],
         "argument --min-leads: expected a whole number written with the digits 0-9, got '+5'"),
        (["send", "f.jsonl", "--events-per-message", "0"], "argument --events-per-message: expected 1 or more, got 0"),
        (["bench", "engine", "--events", "0"], "argument --events: expected 1 or more, got 0"),
        (["bench", "engine", "--leads", "0"], "argument --leads: expected 1 or more, got 0"),
        (["bench", "pipeline", "--workers", "0"], "argument --workers: expected 1 or more, got 0"),
        (["bench", "collector", "--seconds", "0"], "argument --seconds: expected a finite number of seconds above 0, got 0"),
        (["bench", "collector", "--seconds", "nan"], "argument --seconds: expected a finite number of seconds above 0, got nan"),
        # `--topic "$T"` with T unset: send wrote to the live events topic.
        (["send", "f.jsonl", "--topic", ""], "argument --topic: expected a topic name, got nothing"),
        (["history", "--out", "h.jsonl", "--topic", ""], "argument --topic: expected a topic name, got nothing"),
    ],
)
def test_counts_and_durations_must_be_positive(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bench", "engine", "--events", "10000001"], "argument --events: expected at most 10,000,000 (a benchmark holds what it "
                                                      "generates in memory), got 10,000,001"),
        (["bench", "stages", "--leads", "1000000000"], "argument --leads: expected at most 10,000,000"),
        # 60,000 events generated, and held, a second: 60M, some 13 GB, for this one.
        (["bench", "collector", "--seconds", "1000"], "argument --seconds: expected 1 to 150 seconds (a benchmark holds "
                                                      "the events of its phases in memory), got 1000"),
        # Its latency phase made no call: a traceback, no median of no latencies.
        (["bench", "collector", "--seconds", "0.01"], "argument --seconds: expected 1 to 150 seconds"),
    ],
)
def test_a_benchmark_s_counts_are_bounded_as_it_holds_what_it_generates(argv: list[str], message: str,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    # Held in memory: --events 1000000000 grew to 1.2 GB in a minute, still generating, towards
    # some 225 GB. Parsed only: a count taken would run the benchmark.
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_the_longest_collector_benchmark_generates_no_more_events_than_the_bound_on_counts() -> None:
    from streams.bench.collector import GENERATED_EVENTS_PER_S
    from streams.cli import BENCH_SECONDS, MAX_BENCH_COUNT

    assert BENCH_SECONDS[1] * GENERATED_EVENTS_PER_S <= MAX_BENCH_COUNT


def test_version_prints_the_installed_release_s_number_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    import tomllib

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    release = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert capsys.readouterr().out == f"leadstream {release}\n"


def test_models_copy_to_copies_the_models_to_edit_and_overwrites_none(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from scoring.engine import Engine

    shipped = PROJECT_ROOT / "scoring" / "models"
    copy = tmp_path / "mine" / "models"
    assert main(["models", "--models", str(shipped), "--copy-to", str(copy)]) == 0
    names = sorted(p.name for p in shipped.glob("*.toml"))
    assert sorted(p.name for p in copy.iterdir()) == names
    assert capsys.readouterr().out.startswith(f"copied {len(names)} model files ({', '.join(names)}) to {copy}: edit them there, "
                                              f"and run the worker with LEADSTREAM_MODELS_DIR={copy}")
    assert [m.name for m in Engine.from_directory(copy).models] == [m.name for m in Engine.from_directory(shipped).models]
    (copy / names[0]).write_text("# my edit\n")
    assert main(["models", "--models", str(shipped), "--copy-to", str(copy)]) == 1
    assert "exist already: nothing was copied" in capsys.readouterr().err
    assert (copy / names[0]).read_text() == "# my edit\n"


def test_a_second_connector_name_only_follows_replay_dlq(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sink", "webhook", "redis"]) == 1
    assert capsys.readouterr().err == "leadstream sink: a second connector name (redis) only follows replay-dlq; run one connector per process\n"


def test_forget_takes_ids_from_arguments_and_a_file_once_each_and_refuses_what_is_no_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from streams.errors import InputError
    from streams.forget import lead_ids

    listed = tmp_path / "ids.txt"
    listed.write_text("u-2\n\n \nlead t \nu-1\r\n")
    # An id as written: "lead t " was asked for as "lead t", another lead or none, and stayed.
    assert lead_ids(["u-1", "u-2"], listed) == ["u-1", "u-2", "lead t "]
    assert capsys.readouterr().err == f"leadstream forget: 1 id of {listed} begin or end with spaces, kept as written (an id is exact)\n"
    assert lead_ids(["\U0001f469\u200d\U0001f4bb", "Zoë"], None) == ["\U0001f469\u200d\U0001f4bb", "Zoë"]  # ids as events take them
    for bad, message in (([], "no lead ids given"), (["x" * 257], "is not a lead id"), (["a\nb"], "is not a lead id")):
        with pytest.raises(InputError, match=message):
            lead_ids(bad, None)
    with pytest.raises(InputError) as missing:
        lead_ids([], tmp_path / "missing.txt")
    # Its reason alone: it said "[Errno 2] No such file or directory: '<the name again>'".
    assert str(missing.value) == f"cannot read lead ids from {tmp_path / 'missing.txt'}: No such file or directory"
    with pytest.raises(InputError) as long:  # it echoed all 5,000 characters
        lead_ids(["x" * 5000], None)
    assert str(long.value) == f"{'x' * 60!r}... (5000 characters) is not a lead id (1-256 characters, no control character): nothing was sent"


def test_forget_reads_a_file_of_ids_saved_with_a_byte_order_mark(tmp_path: Path) -> None:
    from streams.forget import lead_ids

    listed = tmp_path / "ids.txt"
    listed.write_bytes(b"\xef\xbb\xbfu-1\r\nu-2\r\n")  # as Windows Notepad saves it
    assert lead_ids([], listed) == ["u-1", "u-2"]


def test_models_describes_each_shipped_model_and_names_a_broken_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--json"]) == 0
    described = {d["name"]: d for d in map(orjson.loads, capsys.readouterr().out.splitlines())}
    assert sorted(described) == ["analytics_addon", "b2b", "saas_start_small"]
    b2b = described["b2b"]
    assert (b2b["unscored_types"], b2b["decay"]) == (["feature_used", "login"], "30d idle: -15, 60d idle: -30, 90d idle: -50")
    assert b2b["levels"] == [{"level": "nurture"}, {"level": "mql", "at": 20, "below": 15}, {"level": "sql", "at": 60, "below": 50}]
    assert described["analytics_addon"]["decay"] == "half-life 14d"

    assert main(["models"]) == 0
    text = capsys.readouterr().out
    assert "  levels     nurture < mql at 20 (left below 15) < sql at 60 (left below 50)\n" in text
    assert "  unscored   invited_teammate, login  (always read: alias, group, identify;" in text

    (tmp_path / "typo.toml").write_text('[model]\nname = "typo"\nlateness = "soon"\n[thresholds]\nbase = "lead"\nladder = [{ level = "mql", at = 20 }]\n')
    assert main(["models", "--models", str(tmp_path)]) == 1
    assert "leadstream models: typo.toml: [model], field 'lateness'" in capsys.readouterr().err


def test_models_with_a_baseline_warns_of_rules_testing_a_trait_the_models_in_use_did_not_keep(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = '[model]\nname = "m"\n[thresholds]\nbase = "b"\nladder = [{ level = "m", at = 50 }]\n[[rules]]\nname = "x"\nevent = "x"\npoints = 1\n'
    for version, extra in (("in_use", ""), ("edited", '[[fit]]\nname = "big"\npoints = 7\ntraits.company_size = { gte = 50 }\n')):
        (tmp_path / version).mkdir()
        (tmp_path / version / "m.toml").write_text(text + extra)
    assert main(["models", "--models", str(tmp_path / "edited"), "--baseline", str(tmp_path / "in_use")]) == 0
    err = capsys.readouterr().err
    assert err.startswith("warning: m.toml: fit rule 'big' tests trait 'company_size'") and err.count("warning:") == 1, err
    assert main(["models", "--models", str(tmp_path / "edited")]) == 0 and capsys.readouterr().err == ""


def test_models_with_a_baseline_it_cannot_load_says_so_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The whole report came first, then the refusal: a check that seemed to pass, and an exit of 1.
    assert main(["models", "--json", "--baseline", str(tmp_path / "missing")]) == 1
    printed = capsys.readouterr()
    assert printed.out == ""
    assert printed.err.startswith(f"leadstream models: {tmp_path / 'missing'}: not a directory of model files")


def test_models_refuses_what_the_worker_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A fit rule that a lead without traits meets lifts it past a line at 5: `score` and the
    # worker refused the file, while `models`, the check before it goes live, passed it.
    (tmp_path / "lifted.toml").write_text(
        '[model]\nname = "lifted"\n[thresholds]\nbase = "b"\nladder = [{ level = "m", at = 5 }]\n'
        '[[rules]]\nname = "x"\nevent = "x"\npoints = 1\n'
        '[[fit]]\nname = "no_email"\ntraits = { email = { exists = false } }\npoints = 5\n')
    assert main(["models", "--models", str(tmp_path)]) == 1
    assert "leadstream models: lifted.toml: [thresholds], field 'ladder[1].at': expected a score above the 5 fit points" \
        in capsys.readouterr().err


def test_a_reader_that_goes_away_ends_the_output_quietly(tmp_path: Path) -> None:
    # `leadstream score ... | head -1`: more output than a pipe holds, and its reader gone.
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(orjson.dumps({"event_id": f"e{n}", "lead_id": f"lead-{n}", "type": "signup", "product": "saas",
                                                "time": 1_764_892_800_000}) for n in range(3000)))
    proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "score", "--events", str(events)], cwd=PROJECT_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline().startswith(b"{")
    proc.stdout.close()
    _, err = proc.communicate(timeout=60)
    assert (proc.returncode, err) == (141, b"")


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["models"], "leadstream models: No space left on device\n"),
        # argparse's own output: it ended in a traceback.
        (["--help"], "leadstream: No space left on device\n"),
        (["bench", "--help"], "leadstream: No space left on device\n"),
    ],
)
def test_output_the_system_refuses_is_said_in_one_line_not_a_traceback(argv: list[str], said: str) -> None:
    with open("/dev/full", "wb") as full:  # every write: no space left on device
        proc = subprocess.run([sys.executable, "-m", "streams.cli", *argv], cwd=PROJECT_ROOT, stdout=full,
                              stderr=subprocess.PIPE, timeout=60)
    assert (proc.returncode, proc.stderr.decode()) == (1, said)
