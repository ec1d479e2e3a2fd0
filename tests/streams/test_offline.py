"""`leadstream score`: the engine alone over a JSON-lines file, pinned end to end."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import orjson
import pytest

from scoring import Engine
from streams.cli import main
from streams.errors import InputError
from streams.offline import apply_file, score_file
from streams.settings import FutureLimit
from streams.segment import Mapper, Source
from tests.scoring.support import DAY, T0, MODELS_DIR

SAAS_EVENTS = [
    {"event_id": "1", "lead_id": "ana", "type": "signup", "time": T0, "product": "saas", "traits": {"email": "ana@globex.com"}},
    {"event_id": "2", "lead_id": "ana", "type": "created_task", "time": T0 + 60_000, "product": "saas"},
    {"event_id": "3", "lead_id": "ana", "type": "created_project", "time": "2025-11-03T00:02:00Z", "product": "saas"},
    {"event_id": "4", "lead_id": "ben", "type": "signup", "time": T0 + DAY, "product": "saas"},
    {"event_id": "5", "lead_id": "ana", "type": "created_task", "time": T0 + 3 * 60_000, "product": "saas"},
    {"event_id": "5", "lead_id": "ana", "type": "created_task", "time": T0 + 3 * 60_000, "product": "saas"},
]


def write(path: Path, lines: list[object]) -> Path:
    path.write_bytes(b"".join((line if isinstance(line, bytes) else orjson.dumps(line)) + b"\n" for line in lines))
    return path


def test_json_lines_output_is_exact(tmp_path: Path) -> None:
    events = write(tmp_path / "events.jsonl", [*SAAS_EVENTS[:3], b"{broken", b"", *SAAS_EVENTS[3:], {"lead_id": "x"}])
    out, err = io.StringIO(), io.StringIO()
    assert score_file(MODELS_DIR, events, table=False, out=out, err=err) == 0
    records = [orjson.loads(line) for line in out.getvalue().splitlines()]
    transition, ana, ben = records
    assert {k: transition[k] for k in ("record", "kind", "model", "lead_id", "from_level", "to_level", "direction", "score", "time")} == {
        "record": "transition", "kind": "lead", "model": "saas_start_small", "lead_id": "ana",
        "from_level": "lead", "to_level": "mql", "direction": "up", "score": 20, "time": T0 + 3 * 60_000,
    }  # fmt: skip
    assert transition["reasons"] == [
        {"rule": "created a task", "points": 10},
        {"rule": "created a project", "points": 5},
        {"rule": "signed up", "points": 5},
    ]
    assert transition["traits"] == {"email": "ana@globex.com"}
    assert ana == {
        "record": "lead", "lead_id": "ana", "model": "saas_start_small", "time": T0 + DAY, "score": 20,
        "normalized": 100.0, "grade": None, "engagement": None, "cell": None, "temperature": None, "level": "mql",
        "last_activity_ms": T0 + 3 * 60_000, "account_id": None, "top_reasons": transition["reasons"],
    }  # fmt: skip
    assert (ben["lead_id"], ben["score"], ben["level"]) == ("ben", 5, "lead")
    assert err.getvalue().splitlines() == [
        "events.jsonl line 4: bad_json: not valid JSON: unexpected character, expected a string key: line 1 column 2 (char 1)",
        "events.jsonl line 9: missing_field: field 'type' is missing",
    ]


def test_a_line_that_is_not_utf8_is_reported_and_the_others_scored(tmp_path: Path) -> None:
    """A Latin-1 export: the line raised UnicodeDecodeError out of the engine, a traceback."""
    latin1 = orjson.dumps({**SAAS_EVENTS[0], "event_id": "latin-1", "traits": {"name": "Ren\u00e9"}}).replace("\u00e9".encode(), b"\xe9")
    expected, out, err = io.StringIO(), io.StringIO(), io.StringIO()
    score_file(MODELS_DIR, write(tmp_path / "good.jsonl", SAAS_EVENTS), table=False, out=expected, err=io.StringIO())
    assert score_file(MODELS_DIR, write(tmp_path / "events.jsonl", [latin1, *SAAS_EVENTS]), table=False, out=out, err=err) == 0
    assert out.getvalue() == expected.getvalue()
    assert err.getvalue().splitlines() == [
        f"events.jsonl line 1: bad_json: not valid JSON: it is not UTF-8 text (byte 0xe9 at offset {latin1.index(0xE9)}); "
        "JSON must be UTF-8: send or save it as UTF-8"]


@pytest.mark.parametrize("between", [0, 1100])
def test_a_visitor_event_sent_again_under_its_lead_after_the_identify_counts_once(tmp_path: Path, between: int) -> None:
    """Links take effect right after their line: a batch holding the identify and the lead's
    copy of v1 scored the copy on the lead before the merge brought v1 in too (39 points, not
    29), and so the score depended on where the file's batches of 1,000 lines were cut."""
    def view(event_id: str, lead_id: str, at: int, page: str) -> dict[str, object]:
        return {"event_id": event_id, "lead_id": lead_id, "type": "page_view", "time": T0 + at, "product": "b2b",
                "properties": {"url": f"https://acme.io/{page}"}}

    filler = [{"event_id": f"f{n}", "lead_id": f"other-{n}", "type": "login", "time": T0 + 2000, "product": "b2b"} for n in range(between)]
    identify = {"event_id": "i1", "lead_id": "u-42", "type": "identify", "time": T0 + 2000, "anonymous_id": "a-1",
                "traits": {"email": "ada@acme.io"}}
    lines = [view("v1", "anon:a-1", 0, "pricing"), view("v2", "anon:a-1", 1000, "demo"), identify, *filler,
             view("v3", "anon:a-1", 3000, "pricing"), view("v1", "u-42", 0, "pricing")]
    run = apply_file(Engine.from_directory(MODELS_DIR), write(tmp_path / "events.jsonl", lines), io.StringIO())
    state = run.leads[("b2b", "u-42")]
    assert state.ledger["pricing page"][:2] == [20, 2]  # v1 and v3
    assert (state.behaviour + state.fit, ("b2b", "anon:a-1") in run.leads) == (29, False)


def test_a_visitors_pricing_visits_count_towards_the_leads_weekly_bonus(tmp_path: Path) -> None:
    """The audit's case: 4 pricing visits as a visitor, 1 as the lead, its identify, 2 more, in
    one week, scored 70 (the visitor's 4 left out of the bonus's count), where 7 visits of one
    lead score 90 with the bonus for 5."""
    def view(n: int, lead: str) -> dict[str, object]:
        return {"event_id": f"{lead}{n}", "lead_id": lead, "type": "page_view", "time": T0 + n * 3_600_000,
                "product": "b2b", "properties": {"url": "https://acme.io/pricing"}}

    identify = {"event_id": "i", "lead_id": "N9", "type": "identify", "time": T0 + 6 * 3_600_000, "product": "b2b",
                "anonymous_id": "v9"}
    lines = [*(view(n, "anon:v9") for n in range(4)), view(5, "N9"), identify, view(7, "N9"), view(8, "N9"),
             *(view(n, "C9") for n in (0, 1, 2, 3, 5, 7, 8))]
    out = io.StringIO()
    assert score_file(MODELS_DIR, write(tmp_path / "events.jsonl", lines), table=False, out=out, err=io.StringIO()) == 0
    leads = {r["lead_id"]: r["score"] for r in map(orjson.loads, out.getvalue().splitlines()) if r["record"] == "lead"}
    assert leads == {"N9": 90, "C9": 90}


def test_decay_is_evaluated_at_the_newest_event_time(tmp_path: Path) -> None:
    b2b = [
        {"event_id": "a", "lead_id": "old", "type": "form_submit", "time": T0, "product": "b2b", "properties": {"form": "demo_request"}, "account_id": "acme"},
        {"event_id": "b", "lead_id": "new", "type": "webinar_attended", "time": T0 + 65 * DAY, "product": "b2b", "account_id": "acme"},
    ]
    out = io.StringIO()
    score_file(MODELS_DIR, write(tmp_path / "b2b.jsonl", b2b), table=False, out=out, err=io.StringIO())
    records = [orjson.loads(line) for line in out.getvalue().splitlines()]
    crossings = [(r["lead_id"], r["to_level"], r["time"]) for r in records if r["record"] == "transition"]
    assert crossings == [("old", "mql", T0), ("old", "nurture", T0 + 60 * DAY)]  # 30 - 15 at day 30, - 30 at 60
    leads = {r["lead_id"]: (r["score"], r["level"]) for r in records if r["record"] == "lead"}
    assert leads == {"new": (10, "nurture"), "old": (0, "nurture")}
    assert [r for r in records if r["record"] == "account"] == [
        {"record": "account", "model": "b2b", "account_id": "acme", "score": 10, "normalized": 5.0, "level": "unaware",
         "temperature": "cold", "members": 2, "top_members": [{"lead_id": "new", "score": 10}, {"lead_id": "old", "score": 0}]}
    ]  # what the worker publishes for read models, as `record: account`


def test_decay_is_evaluated_at_the_time_asked_for_and_never_before_the_newest_event(tmp_path: Path, capsys) -> None:
    b2b = [
        {"event_id": "a", "lead_id": "ada", "type": "form_submit", "time": T0, "product": "b2b", "properties": {"form": "demo_request"}},
        {"event_id": "b", "lead_id": "bo", "type": "webinar_attended", "time": T0 + 2 * DAY, "product": "b2b"},
    ]
    events = write(tmp_path / "b2b.jsonl", b2b)
    at = datetime.fromtimestamp((T0 + 31 * DAY) / 1000, tz=timezone.utc).isoformat()
    assert main(["score", "--models", str(MODELS_DIR), "--events", str(events), "--at", at]) == 0
    records = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    # Ada idle 31 days has taken the 30-day step (30 - 15, back to nurture below 15 only); Bo, 29 days, not yet.
    assert [(r["lead_id"], r["score"], r["level"], r["time"]) for r in records if r["record"] == "lead"] == [
        ("ada", 15, "mql", T0 + 31 * DAY), ("bo", 10, "nurture", T0 + 31 * DAY)]
    assert main(["score", "--models", str(MODELS_DIR), "--events", str(events), "--at", "2025-11-01"]) == 1
    assert "--at 2025-11-01T00:00:00Z is before event 'a' of lead 'ada' (b2b.jsonl line 1, timed 2025-11-03T00:00:00Z)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["score", "--models", str(MODELS_DIR), "--events", str(events), "--at", "2025-11-01T09:00:00"])
    assert "argument --at: expected an ISO-8601 time with its zone" in capsys.readouterr().err


def test_table_output(tmp_path: Path, capsys) -> None:
    events = write(tmp_path / "events.jsonl", SAAS_EVENTS)
    assert main(["score", "--models", str(MODELS_DIR), "--events", str(events), "--table"]) == 0
    assert capsys.readouterr().out == (
        "TIME                  MODEL             KIND  WHO  FROM  TO   SCORE\n"
        "2025-11-03T00:03:00Z  saas_start_small  lead  ana  lead  mql  20\n"
        "\n"
        "MODEL             LEAD  SCORE  0-100  LEVEL  CELL  TEMP  TOP REASON\n"
        "saas_start_small  ana   20     100    mql    -     -     created a task (+10)\n"
        "saas_start_small  ben   5      25     lead   -     -     signed up (+5)\n"
    )


def test_the_table_shows_large_scores_in_full(tmp_path: Path, capsys) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "big.toml").write_text(
        '[model]\nname = "big"\n[[rules]]\nname = "deal"\nevent = "deal"\npoints = 1250000.5\n'
        '[thresholds]\nbase = "lead"\nladder = [{ level = "whale", at = 2000000 }]\n'
        '[accounts]\nbase = "small"\nladder = [{ level = "huge", at = 3000000 }]\n'
    )
    deals = [{"event_id": f"{n}", "lead_id": lead, "type": "deal", "time": T0 + n, "account_id": "acme"} for n, lead in enumerate("aab")]
    assert main(["score", "--models", str(models), "--events", str(write(tmp_path / "events.jsonl", deals)), "--table"]) == 0
    assert capsys.readouterr().out == (  # as in the JSON lines: 2500001, not 2.5e+06; times of 1 and 2 ms past a second
        "TIME                      MODEL  KIND     WHO   FROM   TO     SCORE\n"
        "2025-11-03T00:00:00.001Z  big    lead     a     lead   whale  2500001\n"
        "2025-11-03T00:00:00.002Z  big    account  acme  small  huge   3750001.5\n"
        "\n"
        "MODEL  LEAD  SCORE      0-100  LEVEL  CELL  TEMP  TOP REASON\n"
        "big    a     2500001    100    whale  -     -     deal (+2500001)\n"
        "big    b     1250000.5  62.5   lead   -     -     deal (+1250000.5)\n"
        "\n"
        "MODEL  ACCOUNT  SCORE      LEVEL  MEMBERS\n"
        "big    acme     3750001.5  huge   2\n"
    )
    assert main(["models", "--models", str(models)]) == 0
    assert "  levels     lead < whale at 2000000\n" in capsys.readouterr().out
    (tmp_path / "outcomes.csv").write_text("lead_id,outcome\na,won\nb,lost\n")
    argv = ["review", "--models", str(models), "--events", str(tmp_path / "events.jsonl"), "--outcomes", str(tmp_path / "outcomes.csv"), "--table"]
    assert main(argv) == 0
    review = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in review if line.startswith(("whale", "deal"))] == [["whale", "2000000"], ["deal", "behaviour"]]
    assert [line.split()[2] for line in review if line.startswith("deal")] == ["+1250000.5"]


def test_an_account_crosses_as_each_event_moves_it_as_the_worker_publishes_it(tmp_path: Path) -> None:
    # Accounts took each 1,000 lines' final member scores: an account that two members took up
    # and one took back down within them never crossed, where the worker published both.
    models = tmp_path / "models"
    models.mkdir()
    (models / "m.toml").write_text(
        '[model]\nname = "m"\n[[rules]]\nname = "demo"\nevent = "demo"\npoints = 30\n'
        '[[rules]]\nname = "unsubscribe"\nevent = "unsubscribe"\npoints = -30\n'
        '[thresholds]\nbase = "lead"\nladder = [{ level = "mql", at = 100 }]\n'
        '[accounts]\nbase = "quiet"\nladder = [{ level = "engaged", at = 50 }]\n')
    events = [{"event_id": f"{n}", "lead_id": lead, "type": kind, "time": T0 + n, "account_id": "acme"}
              for n, (lead, kind) in enumerate([("a", "demo"), ("b", "demo"), ("b", "unsubscribe")])]
    out = io.StringIO()
    score_file(models, write(tmp_path / "events.jsonl", events), table=False, out=out, err=io.StringIO())
    crossings = [r for r in map(orjson.loads, out.getvalue().splitlines()) if r["record"] == "transition"]
    assert [(r["lead_id"], r["direction"], r["score"], r["time"]) for r in crossings] == [("b", "up", 60, T0 + 1), ("b", "down", 30, T0 + 2)]


def test_at_a_later_time_accounts_stand_with_their_members_decayed_scores(tmp_path: Path, capsys) -> None:
    # A half-life member with no sweep due by --at kept its account at its undecayed score.
    events = [{"event_id": "t1", "lead_id": "ana", "type": "trial_started", "time": T0, "product": "analytics", "account_id": "acme"}]
    at = datetime.fromtimestamp((T0 + DAY) / 1000, tz=timezone.utc).isoformat()
    assert main(["score", "--models", str(MODELS_DIR), "--events", str(write(tmp_path / "e.jsonl", events)), "--at", at]) == 0
    records = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    [lead] = [r for r in records if r["record"] == "lead" and r["model"] == "analytics_addon"]
    [account] = [r for r in records if r["record"] == "account" and r["model"] == "analytics_addon"]
    assert lead["score"] < 20 and account["score"] == lead["score"]


def test_missing_file_and_bad_models_are_clear_errors(tmp_path: Path, capsys) -> None:
    assert main(["score", "--models", str(MODELS_DIR), "--events", str(tmp_path / "none.jsonl")]) == 1
    assert "cannot read events file" in capsys.readouterr().err
    (tmp_path / "bad.toml").write_text('[model]\nname = "x"\n')
    assert main(["score", "--models", str(tmp_path), "--events", str(tmp_path / "none.jsonl")]) == 1
    assert "bad.toml: top level, field 'thresholds'" in capsys.readouterr().err


def test_an_event_no_model_takes_is_reported_not_scored(tmp_path: Path) -> None:
    typo = {"event_id": "t", "lead_id": "cy", "type": "signup", "time": T0, "product": "sass"}
    none = {"event_id": "n", "lead_id": "cy", "type": "signup", "time": T0}
    out, err = io.StringIO(), io.StringIO()
    assert score_file(MODELS_DIR, write(tmp_path / "events.jsonl", [SAAS_EVENTS[0], typo, none]), table=False, out=out, err=err) == 0
    assert [(r["record"], r["lead_id"]) for r in map(orjson.loads, out.getvalue().splitlines())] == [("lead", "ana")]
    assert err.getvalue().splitlines() == [
        "events.jsonl line 2: unrouted: event 't' of lead 'cy' has product 'sass', which no model's [filter] takes "
        "(they take: analytics, analytics_addon, b2b, saas): not scored",
        "events.jsonl line 3: unrouted: event 'n' of lead 'cy' has no product, which no model's [filter] takes "
        "(they take: analytics, analytics_addon, b2b, saas): not scored",
    ]


def test_an_event_late_for_one_of_its_models_is_reported_for_that_model(tmp_path: Path) -> None:
    query = {"event_id": "q", "lead_id": "ada", "type": "query_run", "product": "analytics", "time": T0 + DAY}
    # An identify goes to every model: 12 hours behind ada's query is beyond the analytics
    # model's 6 hours of lateness, and the first event of ada the b2b model sees.
    identify = {"event_id": "who", "lead_id": "ada", "type": "identify", "time": T0 + DAY // 2, "traits": {"title": "CTO"}}
    out, err = io.StringIO(), io.StringIO()
    assert score_file(MODELS_DIR, write(tmp_path / "events.jsonl", [query, identify]), table=False, out=out, err=err) == 0
    assert err.getvalue().splitlines() == [
        "events.jsonl line 2: late: event 'who' of lead 'ada' is beyond the allowed lateness of analytics_addon: "
        "counted there, not scored; its other models scored it",
    ]
    assert sorted(record["model"] for record in map(orjson.loads, out.getvalue().splitlines())) == ["analytics_addon", "b2b", "saas_start_small"]


def test_an_event_of_a_type_its_models_do_not_know_is_reported_not_scored(tmp_path: Path) -> None:
    typo = {"event_id": "t", "lead_id": "ana", "type": "sign_up", "time": T0 + 1, "product": "saas"}
    out, err = io.StringIO(), io.StringIO()
    assert score_file(MODELS_DIR, write(tmp_path / "events.jsonl", [SAAS_EVENTS[0], typo]), table=False, out=out, err=err) == 0
    assert [(r["lead_id"], r["score"]) for r in map(orjson.loads, out.getvalue().splitlines())] == [("ana", 5)]
    assert err.getvalue().splitlines() == [
        "events.jsonl line 2: unknown_type: event 't' of lead 'ana': event type 'sign_up' is one no model it is routed to "
        "knows (saas_start_small scores created_project, created_task, signup and reads invited_teammate, login unscored): "
        "a misspelt type, or one to score with a rule or to list in the model's [model] unscored_types"
    ]


def test_an_identify_whose_old_id_no_lead_can_have_is_refused_as_the_worker_refuses_it(tmp_path: Path) -> None:
    long_visitor = {"event_id": "i", "lead_id": "ana", "type": "identify", "time": T0 + 1, "product": "saas", "anonymous_id": "v" * 252}
    out, err = io.StringIO(), io.StringIO()
    assert score_file(MODELS_DIR, write(tmp_path / "events.jsonl", [SAAS_EVENTS[0], long_visitor]), table=False, out=out, err=err) == 0
    assert [(r["lead_id"], r["score"]) for r in map(orjson.loads, out.getvalue().splitlines())] == [("ana", 5)]
    assert err.getvalue().startswith("events.jsonl line 2: bad_value: field 'anonymous_id' must be 1 to 251 characters")


def test_old_ids_are_read_as_the_engine_reads_ids_and_one_of_another_type_is_refused(tmp_path: Path) -> None:
    # Before, an identify of lead 43 (a number, scored as lead "43") and an alias naming its old
    # id as a number linked nothing, and an alias whose old id was an array was passed over.
    visit = {"event_id": "v", "lead_id": "anon:7", "type": "page_view", "time": T0, "product": "b2b",
             "properties": {"url": "https://acme.io/pricing"}}
    identify = {"event_id": "i", "lead_id": 43, "type": "identify", "time": T0 + 1, "product": "b2b", "anonymous_id": 7}
    alias = {"event_id": "a", "lead_id": "u-1", "type": "alias", "time": T0 + 2, "product": "b2b", "previous_id": ["p"]}
    out, err = io.StringIO(), io.StringIO()
    assert score_file(MODELS_DIR, write(tmp_path / "events.jsonl", [visit, identify, alias]), table=False, out=out, err=err) == 0
    leads = {r["lead_id"]: r["score"] for r in map(orjson.loads, out.getvalue().splitlines()) if r["record"] == "lead"}
    assert "anon:7" not in leads and leads["43"] == 10  # the visitor's pricing page merged into lead 43, once
    assert err.getvalue().splitlines() == [
        "events.jsonl line 3: wrong_type: field 'previous_id' must be a text or an integer, got an array"]


def test_an_integer_beyond_64_bits_in_a_trait_or_property_is_refused_as_the_worker_refuses_it(tmp_path: Path) -> None:
    # Before, read as the float 1e+26, the trait was kept and shown so in the lead's crossing.
    big = b"99999999999999999999999999"
    identify = orjson.dumps({**SAAS_EVENTS[0], "type": "identify", "anonymous_id": "v-1"})[:-1] + b',"traits":{"hubspot_id":%s}}' % big
    task = orjson.dumps(SAAS_EVENTS[1])[:-1] + b',"properties":{"n":[%s]}}' % big
    out, err = io.StringIO(), io.StringIO()
    assert score_file(MODELS_DIR, write(tmp_path / "events.jsonl", [SAAS_EVENTS[0], identify, task]), table=False, out=out, err=err) == 0
    assert [(r["lead_id"], r["score"]) for r in map(orjson.loads, out.getvalue().splitlines())] == [("ana", 5)]
    said = "holds an integer beyond 64 bits, which loses digits as a JSON number: send such a number as a text"
    assert err.getvalue().splitlines() == [f"events.jsonl line 2: too_large: traits.hubspot_id {said}",
                                           f"events.jsonl line 3: too_large: properties.n {said}"]


def test_a_file_saved_with_a_byte_order_mark_is_scored(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\xef\xbb\xbf" + b"\r\n".join(orjson.dumps(e) for e in SAAS_EVENTS[:3]) + b"\r\n")
    out, err = io.StringIO(), io.StringIO()
    assert score_file(MODELS_DIR, events, table=False, out=out, err=err) == 0
    assert err.getvalue() == ""
    assert [(r["record"], r.get("score")) for r in map(orjson.loads, out.getvalue().splitlines())][-1] == ("lead", 15)


def test_identity_stitching_scores_as_the_worker_does(tmp_path: Path) -> None:
    # The calls of tests/streams/test_stitching.py, mapped by the collector's own mapper: the
    # worker ends there with u-ada at 44 and one crossing, hers; offline must agree.
    mapper, source = Mapper("snake_case", max_future_ms=3_600_000), Source("website")
    at, app = "2025-11-03T00:00:00Z", {"app": {"name": "b2b"}}

    def page(n: int, url: str) -> dict[str, object]:
        return {"type": "page", "anonymousId": "a-123", "messageId": f"a-123-p{n}", "timestamp": at,
                "properties": {"url": url, "time_on_page_s": 30}, "context": app}  # fmt: skip

    calls: list[tuple[str, dict[str, object]]] = [
        ("page", page(1, "https://acme.io/pricing")),
        ("page", page(2, "https://acme.io/pricing")),
        ("page", page(3, "https://acme.io/case-studies/globex")),
        ("identify", {"userId": "u-ada", "anonymousId": "a-123", "messageId": "id-1", "timestamp": at,
                      "traits": {"email": "ada@initech.io"}, "context": app}),
        ("track", {"userId": "u-ada", "event": "Webinar Attended", "messageId": "t-1", "timestamp": at, "context": app}),
        ("page", page(4, "https://acme.io/about")),
        ("page", page(1, "https://acme.io/pricing")),  # sent again: scored once, before the merge
        ("identify", {"userId": "u-ada", "anonymousId": "a-123", "messageId": "id-2", "timestamp": at, "context": app}),
        ("alias", {"userId": "u-ada", "previousId": "a-123", "messageId": "al-1", "timestamp": at}),
    ]  # fmt: skip
    lines = [orjson.loads(mapper.map(call, kind, source, T0).value) for kind, call in calls]
    lines.append({"event_id": "k-1", "lead_id": "anon:a-123", "type": "page_view", "time": T0, "product": "b2b",
                  "properties": {"url": "https://acme.io/demo"}})  # fmt: skip
    # The anonymous pages in one envelope, the rest one per line (both forms carry links).
    events = write(tmp_path / "events.jsonl", [lines[:3], *lines[3:]])
    out, err = io.StringIO(), io.StringIO()
    assert score_file(MODELS_DIR, events, table=False, out=out, err=err) == 0
    # The alias names no product (no app context): it goes to every model, as profile updates do.
    assert err.getvalue() == ""
    records = [orjson.loads(line) for line in out.getvalue().splitlines()]
    transitions = [r for r in records if r["record"] == "transition"]
    assert [(t["lead_id"], t["from_level"], t["to_level"]) for t in transitions] == [("u-ada", "nurture", "mql")]
    leads = {(r["model"], r["lead_id"]): r for r in records if r["record"] == "lead"}
    assert ("b2b", "anon:a-123") not in leads  # merged into the lead, as the worker leaves only a marker
    assert leads[("b2b", "u-ada")]["score"] == 44
    engine = Engine.from_directory(MODELS_DIR)
    run = apply_file(engine, events, io.StringIO())
    explained = engine.explain("b2b", "u-ada", run.leads[("b2b", "u-ada")], T0)
    assert "merged from anonymous visitor anon:a-123" in orjson.dumps(explained).decode()


def test_a_merged_visitor_leaves_its_account_and_a_moved_lead_its_old_one(tmp_path: Path) -> None:
    """Account members offline as in the worker: the visitor's points count once, under the lead."""
    def event(n: int, lead: str, account: str, **fields: object) -> dict[str, object]:
        return {"event_id": f"e{n}", "lead_id": lead, "type": "form_submit", "time": T0 + n, "product": "b2b",
                "account_id": account, "properties": {"form": "demo_request"}, **fields}

    events = write(tmp_path / "events.jsonl", [
        event(1, "anon:v-1", "acme"),
        event(2, "u-1", "acme"),
        {"event_id": "e3", "lead_id": "u-1", "type": "identify", "time": T0 + 3, "product": "b2b", "anonymous_id": "v-1"},
        event(4, "u-2", "acme"),
        event(5, "u-2", "globex", type="meeting_booked"),
    ])
    out = io.StringIO()
    assert score_file(MODELS_DIR, events, table=False, out=out, err=io.StringIO()) == 0
    accounts = {r["account_id"]: r for r in map(orjson.loads, out.getvalue().splitlines()) if r["record"] == "account"}
    leads = {r["lead_id"]: r for r in map(orjson.loads, out.getvalue().splitlines()) if r["record"] == "lead"}
    assert accounts["acme"]["members"] == 1 and accounts["acme"]["score"] == leads["u-1"]["score"]
    assert accounts["globex"]["members"] == 1 and accounts["globex"]["score"] == leads["u-2"]["score"]




def test_an_account_left_without_members_is_not_listed_as_the_worker_takes_it_out_of_read_models(tmp_path: Path) -> None:
    events = write(tmp_path / "events.jsonl", [
        {"event_id": "e1", "lead_id": "u-1", "type": "form_submit", "time": T0, "product": "b2b", "account_id": "acme",
         "properties": {"form": "demo_request"}},
        {"event_id": "e2", "lead_id": "u-1", "type": "identify", "time": T0 + 1, "product": "b2b", "account_id": "globex"},
    ])
    out = io.StringIO()
    assert score_file(MODELS_DIR, events, table=False, out=out, err=io.StringIO()) == 0
    assert [r["account_id"] for r in map(orjson.loads, out.getvalue().splitlines()) if r["record"] == "account"] == ["globex"]


def test_a_visitor_merged_into_a_lead_of_its_account_leaves_the_account_at_its_level(tmp_path: Path) -> None:
    """As in the worker: the visitor's leaving and the lead's new score are taken together, so
    the account does not cross down (without either's points) and up again."""
    def event(n: int, lead: str, kind: str, **fields: object) -> dict[str, object]:
        return {"event_id": f"e{n}", "lead_id": lead, "type": kind, "time": T0 + n, "product": "b2b", **fields}

    visits = [event(n, "anon:v-1", "page_view", properties={"url": "https://acme.io/pricing"}) for n in range(2, 6)]
    out = io.StringIO()
    assert score_file(MODELS_DIR, write(tmp_path / "events.jsonl", [
        event(1, "anon:v-1", "form_submit", account_id="acme", properties={"form": "demo_request"}), *visits,
        event(6, "u-1", "page_view", account_id="acme", properties={"url": "https://acme.io/about"}),
        event(7, "u-1", "identify", anonymous_id="v-1"),
    ]), table=False, out=out, err=io.StringIO()) == 0
    records = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert [(r["from_level"], r["to_level"]) for r in records if r["record"] == "transition" and r["kind"] == "account"] == [
        ("unaware", "engaged")]
    assert [(r["account_id"], r["members"], r["level"]) for r in records if r["record"] == "account"] == [("acme", 1, "engaged")]


def test_many_lines_of_one_kind_are_counted_after_the_first_twenty(tmp_path: Path) -> None:
    typos = [{"event_id": f"t{n}", "lead_id": "ana", "type": "sign_up", "time": T0 + n, "product": "saas"} for n in range(25)]
    unrouted = {"event_id": "u", "lead_id": "cy", "type": "signup", "time": T0, "product": "sass"}
    out, err = io.StringIO(), io.StringIO()
    assert score_file(MODELS_DIR, write(tmp_path / "events.jsonl", [*typos, unrouted]), table=False, out=out, err=err) == 0
    lines = err.getvalue().splitlines()
    # In line order (the unrouted line, the last, was said first, its batch's warnings grouped by reason).
    assert [line.split(": ")[1] for line in lines[:-1]] == ["unknown_type"] * 20 + ["unrouted"]
    assert lines[-1] == "events.jsonl: 25 lines unknown_type in all; the first 20 are shown above"


@pytest.mark.parametrize(("setting", "threshold"), [("12345", 12345), ("0", 700)])
def test_score_and_review_tune_the_collector_as_the_worker_does(tmp_path: Path, setting: str, threshold: int) -> None:
    # In a child process: tuning freezes what exists, which this test process must not do.
    events = write(tmp_path / "events.jsonl", SAAS_EVENTS)
    (tmp_path / "outcomes.csv").write_text("lead_id,outcome\nana,won\nben,lost\n", encoding="utf-8")
    script = (
        "import gc, sys\nfrom streams.cli import main\n"
        "status = main(sys.argv[1:])\nprint(status, gc.get_threshold()[0], gc.get_freeze_count() > 0)\n"
    )
    env = {**os.environ, "LEADSTREAM_GC_YOUNG_THRESHOLD": setting}
    for command in (["score", "--events", str(events)], ["review", "--events", str(events), "--outcomes", str(tmp_path / "outcomes.csv")]):
        done = subprocess.run([sys.executable, "-c", script, *command, "--models", str(MODELS_DIR)], env=env,
                              capture_output=True, text=True, check=True, timeout=120)
        assert done.stdout.splitlines()[-1] == f"0 {threshold} {threshold != 700}", done.stderr


def test_accounts_are_listed_only_for_models_that_roll_up_as_the_worker_publishes_them(tmp_path: Path) -> None:
    """The worker publishes account summaries only for models with [accounts]; a lead of a model
    without (saas_start_small) with an account_id made `score` list an account of null score."""
    events = write(tmp_path / "events.jsonl", [
        {"event_id": "s1", "lead_id": "ana", "type": "signup", "time": T0, "product": "saas", "account_id": "acme"},
        {"event_id": "b1", "lead_id": "ben", "type": "webinar_attended", "time": T0, "product": "b2b", "account_id": "acme"},
    ])  # fmt: skip
    out = io.StringIO()
    assert score_file(MODELS_DIR, events, table=False, out=out, err=io.StringIO()) == 0
    accounts = [(r["model"], r["account_id"], r["score"]) for r in map(orjson.loads, out.getvalue().splitlines()) if r["record"] == "account"]
    assert accounts == [("b2b", "acme", 10)]
    table = io.StringIO()
    assert score_file(MODELS_DIR, events, table=True, out=table, err=io.StringIO()) == 0
    assert "saas_start_small  acme" not in table.getvalue()


def test_a_file_none_of_whose_lines_is_an_event_fails_naming_why(tmp_path: Path) -> None:
    # A check in CI that scores a file of the wrong format must not pass.
    err = io.StringIO()
    with pytest.raises(InputError, match=r"no event of wrong.jsonl could be read, all 2 refused \(reported above\)"):
        score_file(MODELS_DIR, write(tmp_path / "wrong.jsonl", [{"userId": "u", "event": "Signed Up"}, b"lead,type,time"]),
                   table=False, out=io.StringIO(), err=err)
    assert len(err.getvalue().splitlines()) == 2
    # One good line is enough: the rest is reported, and the status is 0.
    assert score_file(MODELS_DIR, write(tmp_path / "some.jsonl", [b"lead,type,time", SAAS_EVENTS[0]]), table=False,
                      out=io.StringIO(), err=io.StringIO()) == 0


def test_a_file_of_events_all_timed_ahead_of_the_clock_fails_naming_their_time_not_the_format(tmp_path: Path) -> None:
    # Well-formed events refused for their time alone were told "a file holds one JSON event ... a
    # line", sending the user to look for a fault in the file's format.
    ahead = [{**event, "time": T0 + 2 * DAY} for event in SAAS_EVENTS[:2]]
    with pytest.raises(InputError) as raised:
        score_file(MODELS_DIR, write(tmp_path / "ahead.jsonl", ahead), table=False, out=io.StringIO(), err=io.StringIO(),
                   future=FutureLimit(T0, "this machine's clock", DAY, 0))
    assert str(raised.value) == ("no event of ahead.jsonl could be read, all 2 refused (reported above): every one is timed too far "
                                 "ahead, the earliest 172,800 s ahead of this machine's clock, more than the 86,400 s "
                                 "LEADSTREAM_MAX_FUTURE_MS allows")


def test_an_event_refused_as_ahead_of_a_clock_moved_back_names_the_offset_and_how_far_ahead_it_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An event 4 h behind the wall clock, with the clock moved back a day, was said to be "further
    ahead of this machine's clock than LEADSTREAM_MAX_FUTURE_MS allows": it is behind that clock."""
    monkeypatch.delenv("LEADSTREAM_MAX_FUTURE_MS", raising=False)
    monkeypatch.setenv("LEADSTREAM_CLOCK_OFFSET_MS", str(-DAY))
    now = int(datetime.now(timezone.utc).timestamp() * 1000)
    event = {"event_id": "e1", "lead_id": "ana", "type": "signup", "product": "saas", "time": now - 4 * 3_600_000}
    assert main(["score", "--models", str(MODELS_DIR), "--events", str(write(tmp_path / "y.jsonl", [event]))]) == 1
    err = capsys.readouterr().err
    clock = rf"this machine's clock \(the wall clock moved by LEADSTREAM_CLOCK_OFFSET_MS={-DAY}, reading [-0-9T:]+\+00:00\)"
    ahead = rf"7[12],[0-9]{{3}} s ahead of {clock}, more than the 3,600 s LEADSTREAM_MAX_FUTURE_MS allows"  # 20 h
    assert re.search(rf"y.jsonl line 1: future_time: event 'e1' of lead 'ana' is timed [^,]+, {ahead}: the worker refuses it too", err)
    assert re.search(rf"no event of y.jsonl could be read, all 1 refused \(reported above\): every one is timed too far ahead, "
                     rf"the earliest {ahead}\n", err)


def test_at_before_an_event_of_the_same_second_tells_the_two_times_apart_and_stops_at_that_event(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Both were printed as 2026-12-06T23:59:59Z, and the check ran once the whole file was scored."""
    event = {"event_id": "e1", "lead_id": "ana", "type": "signup", "product": "saas", "time": "2026-12-06T23:59:59.900Z"}
    events = write(tmp_path / "x.jsonl", [event, b"{broken"])
    assert main(["score", "--models", str(MODELS_DIR), "--events", str(events), "--at", "2026-12-06T23:59:59.500Z"]) == 1
    err = capsys.readouterr().err
    assert err == ("leadstream score: --at 2026-12-06T23:59:59.500Z is before event 'e1' of lead 'ana' (x.jsonl line 1, timed "
                   "2026-12-06T23:59:59.900Z): decay is evaluated after every event is scored, so give a time at or after the "
                   "file's newest event\n")  # the broken line after it was not read


def test_warnings_come_in_line_order_whether_a_line_is_refused_or_its_event_found_late(tmp_path: Path) -> None:
    late = {"event_id": "old", "lead_id": "ana", "type": "signup", "time": T0 - 3 * DAY, "product": "saas"}
    err = io.StringIO()
    score_file(MODELS_DIR, write(tmp_path / "events.jsonl", [*SAAS_EVENTS, late, b"{broken"]), table=False, out=io.StringIO(), err=err)
    assert [line.split(": ")[0] for line in err.getvalue().splitlines()] == ["events.jsonl line 7", "events.jsonl line 8"]


def test_an_event_timed_beyond_the_workers_future_limit_is_refused_as_the_worker_refuses_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker dead-letters it (`future_time`); scored here, it brought every other lead's
    decay to 2099, and a lead of 10 points read 0."""
    monkeypatch.delenv("LEADSTREAM_MAX_FUTURE_MS", raising=False)
    now = int(datetime.now(timezone.utc).timestamp() * 1000)
    lines = [{"event_id": "e1", "lead_id": "ana", "type": "signup", "product": "saas", "time": now - DAY},
             {"event_id": "e2", "lead_id": "ana", "type": "created_task", "product": "saas", "time": now - DAY + 1},
             {"event_id": "e3", "lead_id": "cy", "type": "signup", "product": "saas", "time": 4070908800000}]  # 2099-01-01
    events = write(tmp_path / "events.jsonl", lines)
    assert main(["score", "--models", str(MODELS_DIR), "--events", str(events)]) == 0
    out, err = capsys.readouterr()
    scores = {r["lead_id"]: r["score"] for r in map(orjson.loads, out.splitlines()) if r["record"] == "lead"}
    assert scores == {"ana": 10}
    assert "events.jsonl line 3: future_time: event 'e3' of lead 'cy' is timed 2099-01-01T00:00:00+00:00" in err


@pytest.mark.parametrize(("product", "events"), [
    ("b2b", [("form_submit", {"form": "demo_request"}), ("meeting_booked", {}), ("form_submit", {"form": "contact"})]),
    ("analytics", [("trial_started", {}), *[("data_source_connected", {"source": s}) for s in "abc"]]),
])
def test_an_unscored_event_after_decay_leaves_the_accounts_crossings_where_decay_made_them(
        tmp_path: Path, product: str, events: list[tuple[str, dict[str, str]]]) -> None:
    """Members were swept only at the end: an event brought their decay forward and their
    account took it with the event's update, so a login 100 days on moved the account's crossing
    down from its decay step (day 60, at 25) to the login (at 0)."""
    lines = [{"event_id": f"e{n}", "lead_id": "S1", "type": kind, "time": T0 + n, "product": product, "account_id": "sco",
              "properties": properties, "traits": {"company_size": 100}} for n, (kind, properties) in enumerate(events)]
    unscored = {"event_id": "later", "lead_id": "S1", "type": "login" if product == "b2b" else "query_run",
                "time": T0 + 100 * DAY, "product": product, "account_id": "sco"}

    def account_crossings(path: Path) -> list[tuple[int, str, float]]:
        out = io.StringIO()
        score_file(MODELS_DIR, path, table=False, out=out, err=io.StringIO(), at_ms=T0 + 100 * DAY)
        return [(r["time"], r["to_level"], r["score"]) for r in map(orjson.loads, out.getvalue().splitlines())
                if r["record"] == "transition" and r["kind"] == "account"]

    without = account_crossings(write(tmp_path / "a.jsonl", lines))
    assert len(without) == 2 and without[-1][0] < T0 + 90 * DAY
    assert account_crossings(write(tmp_path / "b.jsonl", [*lines, unscored])) == without
