"""Model files are validated on load; every error names the file, the rule (or section) and
the field, and says what is expected."""

from __future__ import annotations

import codecs
import json
from pathlib import Path

import pytest

from scoring import Engine, ModelError
from scoring.config import MAX_DESCRIPTION_CHARS, MAX_TEXT_CHARS
from scoring.events import MAX_TRAIT_SIZE
from scoring.model import MAX_KEPT_TRAITS, load_directory, load_model, parse_model
from streams.envelope import MAX_MESSAGE_BYTES
from streams.outbox import encode_json
from tests.scoring.support import MINUTE, MODELS_DIR, Run, beside_a_named_pipe, ev, model

BASE = '[model]\nname = "b2b"\n[thresholds]\nbase = "cold"\nladder = [{ level = "mql", at = 20 }]\n'
RULE = '[[rules]]\nname = "pricing"\nevent = "page_view"\npoints = 10\n'
GRADES = '[grades]\nA = { min = 30 }\nB = { min = 10, below = 30 }\nC = { min = 0, below = 10 }\nD = { below = 0 }\n'


def load(text: str) -> None:
    Engine([model(text, name="b2b", header=False)])


CASES = [
    # (model text, fragments the message must contain)
    (BASE + RULE + "pointz = 3\n", ["b2b.toml", "rule 'pricing'", "field 'pointz'", "unknown field", "points"]),
    (BASE + RULE.replace("points = 10", 'points = "ten"'), ["b2b.toml", "rule 'pricing'", "field 'points'", "expected a finite number", "'ten'"]),
    (BASE + RULE.replace("points = 10", "points = inf"), ["rule 'pricing'", "field 'points'", "a finite number", "inf"]),
    (BASE + RULE.replace("points = 10", "points = 1e400"), ["rule 'pricing'", "field 'points'", "a finite number", "inf"]),
    (BASE + RULE + "properties.seconds = { gte = nan }\n", ["rule 'pricing'", "field 'properties.seconds.gte'", "a finite number", "nan"]),
    (BASE.replace("at = 20", "at = -inf"), ["[thresholds]", "field 'ladder[1].at'", "a finite number"]),
    (BASE + RULE.replace("points = 10", "points = true"), ["rule 'pricing'", "field 'points'", "a finite number", "got true"]),
    # Values as the file writes them, not as Python does (True, datetime.datetime(1979, ...)).
    (BASE + RULE + "properties.n = 1979-05-27T07:32:00Z\n", ["field 'properties.n'", "got 1979-05-27T07:32:00+00:00"]),
    (BASE + '[temperature]\ncold = { below = 35 }\nwarm = { below = 70 }\nhot = { min = 70 }\n',
     ["[temperature]", "field 'warm.min'", "a min (only the lowest band leaves it out, and cold is lower), such as min = 35"]),
    # Finite but beyond what scores, states and member updates can carry (they crashed scoring or encoding).
    (BASE + RULE.replace("points = 10", "points = 1e308"), ["rule 'pricing'", "field 'points'", "from -1,000,000,000 to 1,000,000,000", "1e+308"]),
    (BASE + RULE.replace("points = 10", "points = 4611686018427387904"), ["rule 'pricing'", "field 'points'", "to 1,000,000,000"]),
    (BASE.replace("at = 20", "at = -1e10"), ["[thresholds]", "field 'ladder[1].at'", "from -1,000,000,000"]),
    (BASE + RULE + 'cap = { max = 1, window = "100000000000000000000d" }\n', ["rule 'pricing'", "field 'cap.window'", "at most 36500d"]),
    # A counter per window the lateness reaches: 43,200 of them made each event of a lead slower and its state 260 KB.
    (BASE.replace("[thresholds]", 'lateness = "30d"\n[thresholds]') + RULE + 'cap = { max = 1, window = "1m" }\n',
     ["b2b.toml", "rule 'pricing'", "field 'cap.window'", "at least 30m", "lateness of 30d", "at most 1,440", "got '1m' (30d / 1m = 43,200)"]),
    (BASE + RULE + 'bonus = { count = 2, window = "1s", points = 5 }\n',
     ["rule 'pricing'", "field 'bonus.window'", "at least 1m", "lateness of 1d", "got '1s' (1d / 1s = 86,400)"]),
    (BASE + RULE + 'cap = { max = 1, window = "\u0663\u0660d" }\n', ["rule 'pricing'", "field 'cap.window'", "positive duration"]),
    (BASE + RULE + "properties.url = {}\n", ["rule 'pricing'", "field 'properties.url'", "at least one operator (eq, ne"]),
    (BASE + "[temperature]\n", ["b2b.toml", "[temperature]", "at least one band"]),
    (BASE + '[temperature]\ncold = { below = 35 }\nwarm = { min = 35, below = 35 }\nhot = { min = 35 }\n',
     ["[temperature]", "field 'warm.below'", "a number above min (35)", "got 35"]),
    (BASE + RULE + 'cap = { max = 1, window = "-1d" }\n', ["b2b.toml", "rule 'pricing'", "field 'cap.window'", "positive duration", "'-1d'"]),
    (BASE + RULE + 'cap = { max = 1, window = "0d" }\n', ["rule 'pricing'", "field 'cap.window'", "positive duration"]),
    (BASE + RULE + "cap = { max = 0, window = \"1d\" }\n", ["rule 'pricing'", "field 'cap.max'", "at least 1"]),
    (BASE + RULE + 'bonus = { count = 5, window = "7 days", points = 20 }\n', ["rule 'pricing'", "field 'bonus.window'", "'7 days'"]),
    (BASE + RULE + 'bonus = { count = 5, window = "7d", points = -20 }\n', ["rule 'pricing'", "field 'bonus.points'", "same sign"]),
    (BASE + RULE + "max_points = -5\n", ["rule 'pricing'", "field 'max_points'", "positive"]),
    (BASE + RULE + 'once_per = "email_id"\n', ["rule 'pricing'", "field 'once_per'", "properties.email_id"]),
    # Read as a property named "plan.name", where a nested plan's name was meant: every occurrence scored.
    (BASE + RULE + 'once_per = "properties.plan.name"\n', ["rule 'pricing'", "field 'once_per'", "a field at the top of the properties",
                                                            "(plan.name) cannot be de-duplicated on", "(plan_name), got 'properties.plan.name'"]),
    (BASE + RULE + 'once_per = "traits.company.domain.tld"\n', ["field 'once_per'", "at the top of the traits", "(company.domain.tld)",
                                                                "(company_domain_tld)"]),
    (BASE + RULE + 'properties.url = { like = "x" }\n', ["rule 'pricing'", "field 'properties.url.like'", "unknown field", "glob"]),
    (BASE + RULE + 'properties.url = { glob = 3 }\n', ["rule 'pricing'", "field 'properties.url.glob'", "a text"]),
    # A range from high to low is no character: loaded, the condition held for no URL.
    (BASE + RULE + 'properties.url = { glob = ["*/pricing*", "/docs/[z-a]*"] }\n',
     ["rule 'pricing'", "field 'properties.url.glob'", "patterns some text can match", "such as [a-z]", "got '/docs/[z-a]*'"]),
    (BASE + RULE + 'traits.zip = { glob = "[9-0]*" }\n', ["field 'traits.zip.glob'", "got '[9-0]*'"]),
    (BASE + RULE + "properties.seats = { gte = \"5\" }\n", ["rule 'pricing'", "field 'properties.seats.gte'", "a finite number"]),
    # Bounds no number meets: loaded, the condition held for no value.
    (BASE + RULE + "properties.seats = { gte = 10, lte = 5 }\n",
     ["rule 'pricing'", "field 'properties.seats.lte'", "a number at least gte (10): no number meets both", "got 5"]),
    (BASE + RULE + "traits.size = { gt = 50, lt = 50 }\n", ["field 'traits.size.lt'", "a number above gt (50)", "got 50"]),
    (BASE + RULE + "traits.size = { gte = 50, lt = 50 }\n", ["field 'traits.size.lt'", "a number above gte (50)", "got 50"]),
    # A missing field meets none of these: loaded, the condition held for no lead.
    (BASE + RULE + 'traits.title = { exists = false, words = "vp" }\n',
     ["rule 'pricing'", "field 'traits.title.exists'", "expected true, or no words beside it: a missing field meets no words", "got false"]),
    (BASE + '[[fit]]\nname = "f"\npoints = 5\ntraits.size = { gt = 3, exists = false }\n', ["fit rule 'f'", "field 'traits.size.exists'", "no gt beside it"]),
    # No JSON value is nan or inf (1e400 is inf): loaded, `eq = nan` matched no event and `ne = nan` every one.
    (BASE + RULE + "properties.seconds = nan\n", ["rule 'pricing'", "field 'properties.seconds'", "a text, finite number or boolean", "got nan"]),
    (BASE + RULE + "properties.seconds = { ne = -inf }\n", ["rule 'pricing'", "field 'properties.seconds.ne'", "finite number", "got -inf"]),
    (BASE + RULE + "traits.size = [1, 1e400]\n", ["rule 'pricing'", "field 'traits.size'", "list of texts, finite numbers or booleans", "got [1, inf]"]),
    (BASE + RULE + "traits.size = { not_in = [nan] }\n", ["rule 'pricing'", "field 'traits.size.not_in'", "finite numbers", "got [nan]"]),
    (BASE + RULE + "properties.form = []\n", ["rule 'pricing'", "field 'properties.form'", "non-empty list"]),
    (BASE + RULE + 'traits.email = { domain = "gmail" }\n', ["rule 'pricing'", "field 'traits.email.domain'", "free, disposable, competitor, business"]),
    (BASE + RULE + RULE, ["rule 'pricing'", "field 'name'", "no other rule", "in both [[rules]] #1 and [[rules]] #2"]),
    # It said only "no other rule": which blocks clash, a fit rule among them, was left to find.
    (BASE + RULE + '[[fit]]\nname = "pricing"\npoints = 1\ntraits.title = "cto"\n', ["rule 'pricing'", "in both [[rules]] #1 and [[fit]] #1"]),
    # It said "field 'properties.plan.name': unknown field (expected one of: eq, ...)", as if name were an operator.
    (BASE + RULE + 'properties.plan.name = "pro"\n', ["rule 'pricing'", "field 'properties.plan.name'", "unknown field", "(plan.name) cannot be tested", "(plan_name)"]),
    # A misspelt operator had that advice too: "a field inside another (title.word) cannot be tested".
    (BASE + RULE + 'traits.title = { word = ["vp"] }\n', ["field 'traits.title.word'", "unknown field (did you mean words?)"]),
    (BASE + RULE + 'traits.title = { gob = "*vp*" }\n', ["field 'traits.title.gob'", "unknown field (did you mean glob?)"]),
    (BASE + RULE + 'traits.title = { words = ["vp"], gob = "*vp*" }\n', ["field 'traits.title.gob'", "(did you mean glob?)"]),
    # Loaded, it matched no event ("*" is every type in unscored_types, not in a rule).
    (BASE + RULE.replace('"page_view"', '"*"'), ["rule 'pricing'", "field 'event'", "one event type", "no pattern", "'*'"]),
    # Accepted, the type went on scoring, and `leadstream models` listed it as scored and unscored.
    (BASE.replace('name = "b2b"', 'name = "b2b"\nunscored_types = ["page_view", "login"]') + RULE,
     ["[model]", "field 'unscored_types'", "no rule scores", "'page_view' (rule 'pricing')"]),
    (BASE + '[[rules]]\nevent = "x"\npoints = 1\n', ["b2b.toml", "rule #1", "field 'name'", "required"]),
    (BASE + '[[fit]]\nname = "vp"\npoints = 5\nproperties.url = "x"\n', ["fit rule 'vp'", "field 'properties'", "unknown field"]),
    (BASE + '[[fit]]\nname = "vp"\npoints = 5\n', ["fit rule 'vp'", "field 'traits'", "at least one trait condition"]),
    (BASE + "[decay]\nsteps = [{ idle = \"60d\", points = -30 }, { idle = \"30d\", points = -15 }]\n", ["[decay]", "field 'steps[2].idle'", "longer idle time"]),
    (BASE + "[decay]\nsteps = [{ idle = \"30d\", points = 15 }]\n", ["[decay]", "field 'steps[1].points'", "expected a negative number, or 0 (decay takes points away), got 15"]),
    (BASE + "[decay]\nsteps = [{ idle = \"-30d\", points = -15 }]\n", ["[decay]", "field 'steps[1].idle'", "positive duration"]),
    (BASE + '[decay]\nhalf_life = "14d"\nsteps = []\n', ["[decay]", "field 'half_life'", "not both"]),
    (BASE + GRADES.replace("B = { min = 10, below = 30 }", "B = { min = 10, below = 35 }"), ["[grades]", "field 'B.below'", "overlap"]),
    (BASE + GRADES.replace("C = { min = 0, below = 10 }", "C = { min = 0, below = 5 }"), ["[grades]", "field 'C.below'", "gap"]),
    (BASE + GRADES.replace("D = { below = 0 }\n", ""), ["[grades]", "field 'D'", "A, B, C, D"]),
    (BASE + GRADES + "E = { below = -10 }\n", ["[grades]", "field 'E'", "unknown field"]),
    (BASE + GRADES.replace("A = { min = 30 }", "A = { min = 30, below = 100 }"), ["[grades]", "field 'A.below'", "highest band"]),
    (BASE.replace("ladder = [{ level = \"mql\", at = 20 }]", "ladder = [{ level = \"sql\", at = 60 }, { level = \"mql\", at = 20 }]"),
     ["[thresholds]", "field 'ladder[2].at'", "low to high"]),
    (BASE.replace("ladder = [{ level = \"mql\", at = 20 }]", "ladder = [{ level = \"mql\", at = 20 }, { level = \"sql\", at = 30, hysteresis = 15 }]"),
     ["[thresholds]", "field 'ladder[2].hysteresis'", "at most 10"]),
    (BASE.replace('ladder = [{ level = "mql", at = 20 }]', 'hysteresis = 11\nladder = [{ level = "mql", at = 20 }, { level = "sql", at = 30 }]'),
     ["[thresholds]", "field 'hysteresis'", "at most 10, the gap from 'sql' (ladder[2]) to the line below"]),
    (BASE.replace("ladder = [{ level = \"mql\", at = 20 }]", "ladder = [{ level = \"mql\", at = 20 }, { level = \"mql\", at = 30 }]"),
     ["[thresholds]", "field 'ladder[2].level'", "used once"]),
    (BASE.replace('base = "cold"\n', 'base = "cold"\nhysteresis = -1\n'), ["[thresholds]", "field 'hysteresis'", "at least 0"]),
    # Lines a new lead starts above, or a lead above could never fall back below: a level no
    # crossing reaches the CRM for, or one it never leaves.
    (BASE.replace('name = "b2b"', 'name = "b2b"\nfloor = 50'), ["[thresholds]", "field 'ladder[1].at'", "above 50", "got 20"]),
    (BASE.replace("at = 20", "at = -20"), ["[thresholds]", "field 'ladder[1].at'", "above 0", "got -20"]),
    (BASE.replace('name = "b2b"', 'name = "b2b"\nfloor = -50').replace("at = 20", "at = -20"), ["field 'ladder[1].at'", "above 0"]),
    (BASE.replace('base = "cold"\n', 'base = "cold"\nhysteresis = 20\n'), ["[thresholds]", "field 'hysteresis'", "less than 20", "floor"]),
    (BASE.replace("at = 20 }", "at = 20, hysteresis = 1e9 }"), ["[thresholds]", "field 'ladder[1].hysteresis'", "less than 20"]),
    (BASE + '[accounts]\nbase = "q"\nhysteresis = 10\nladder = [{ level = "hot", at = 10 }]\n',
     ["[accounts]", "field 'hysteresis'", "less than 10"]),
    (BASE + '[accounts]\nbase = "q"\nladder = [{ level = "hot", at = 0 }]\n', ["[accounts]", "field 'ladder[1].at'", "above 0"]),
    (BASE + '[[fit]]\nname = "no title"\npoints = 25\ntraits.title = { exists = false }\n',
     ["[thresholds]", "field 'ladder[1].at'", "above the 25 fit points a lead without traits has", "'mql' from the start"]),
    ('[model]\nname = "b2b"\n', ["b2b.toml", "top level", "field 'thresholds'"]),
    (BASE.replace('name = "b2b"', 'name = "b2b/eu"'), ["b2b.toml", "[model]", "field 'name'", "letters, digits", "'b2b/eu'"]),
    (BASE.replace('name = "b2b"', 'name = "B2B Europe"'), ["[model]", "field 'name'", "'B2B Europe'"]),
    (BASE.replace('name = "b2b"', 'name = "b2b"\nremember_events = 100000'), ["[model]", "field 'remember_events'", "from 1 to 1024", "100000"]),
    (BASE.replace('name = "b2b"', 'name = "b2b"\nhistory = 101'), ["[model]", "field 'history'", "from 1 to 100", "101"]),
    (BASE.replace('name = "b2b"', 'name = "b2b"\nlateness = 3600'), ["[model]", "field 'lateness'", "duration"]),
    (BASE.replace('name = "b2b"', 'name = "b2b"\nmax_points = 0'), ["[model]", "field 'max_points'", "above"]),
    (BASE + "[scoring]\n", ["b2b.toml", "top level", "field 'scoring'", "unknown field"]),
    (BASE + '[filter]\nproducts = "b2b"\n', ["[filter]", "field 'products'", "unknown field", "product"]),
    (BASE + '[accounts]\ncombine = "avg"\nbase = "q"\nladder = [{ level = "hot", at = 10 }]\n', ["[accounts]", "field 'combine'", "sum, max, top_k"]),
    (BASE + '[accounts]\ncombine = "top_k"\nbase = "q"\nladder = [{ level = "hot", at = 10 }]\n', ["[accounts]", "field 'top_k'", "required"]),
    (BASE + "[scale]\nzero_at = 50\nhundred_at = 10\n", ["[scale]", "field 'hundred_at'", "above zero_at"]),
    (BASE + "[scale]\nzero_at = 50\n", ["[scale]", "field 'zero_at'", "below hundred_at, which is 20 when not given", "50"]),
    (BASE + "[[rules]\n", ["b2b.toml", "not valid TOML"]),
    (BASE + "x = " + "[" * 5000 + "]" * 5000 + "\n", ["b2b.toml", "not valid TOML", "nested deeper"]),  # a RecursionError
    # tomllib's own words name a line and column only: the line is quoted, and the usual mistake said.
    (BASE.replace('name = "b2b"', 'name = "b2b"\nlateness = 1d'), ["not valid TOML", "'lateness = 1d'", "straight double quotes"]),
    # A line separator in a comment before it: the line quoted was the one above the line named.
    (BASE.replace('name = "b2b"', '# Caf\u00e9 \u2028 menu\nname = "b2b"\nlateness = 1d'), ["(at line 4, column 13): 'lateness = 1d'"]),
    (BASE.replace('name = "b2b"', 'name = \u201cb2b\u201d'), ["not valid TOML", "name = \u201cb2b\u201d", "not \u201ccurly\u201d ones"]),
    (BASE + '[[rules]]\nname = "p"\nevent = "page_view"\npoints = 1\nproperties.url = { glob = "*/a*", }\n',
     ["not valid TOML", "properties.url", "on one line, without a comma after its last entry"]),
    (BASE + "[model]\n", ["not valid TOML", "once a file; [[rules]] and [[fit]] are the blocks that repeat"]),
    (BASE.replace('name = "b2b"', 'name = "b2b"\nname = "b2c"'), ["not valid TOML", "a key is given twice in one table"]),
    # Entries no address could match (they were taken, and never matched).
    (BASE + '[domains]\ncompetitor = { add = ["@rival.io"] }\n', ["[domains]", "field 'competitor.add'", "'@rival.io' among them"]),
    (BASE + '[domains]\nfree = { replace = ["gmail.com", "not a domain!"] }\n', ["[domains]", "field 'free.replace'", "'not a domain!'"]),
]


@pytest.mark.parametrize(("text", "fragments"), CASES)
def test_errors_name_file_rule_and_field(text: str, fragments: list[str]) -> None:
    with pytest.raises(ModelError) as caught:
        load(text)
    for fragment in fragments:
        assert fragment in str(caught.value)


def test_an_operator_misspelt_is_not_taken_for_a_field_inside_another() -> None:
    with pytest.raises(ModelError) as caught:
        load(BASE + RULE + 'traits.title = { word = ["vp"] }\n')
    assert "cannot be tested" not in str(caught.value)


def test_an_unknown_event_type_is_allowed_and_scores_once_such_events_come() -> None:
    loaded = model(BASE + RULE.replace("page_view", "an_event_nobody_sends_yet"), name="b2b", header=False)
    run = Run(Engine([loaded])).apply(ev("an_event_nobody_sends_yet"))
    assert run.score("L1", "b2b") == 10


def test_every_shipped_model_loads() -> None:
    names = {m.name for m in Engine.from_directory(MODELS_DIR).models}
    assert names == {"saas_start_small", "b2b", "analytics_addon"}


def test_a_model_file_may_begin_with_a_byte_order_mark(tmp_path: Path) -> None:
    """As Windows editors write UTF-8 (it was 'not valid TOML: Invalid statement' at line 1)."""
    (tmp_path / "b2b.toml").write_bytes(codecs.BOM_UTF8 + (BASE + RULE).encode())
    loaded = load_model(tmp_path / "b2b.toml")
    assert (loaded.name, loaded.rules, loaded.ladder) == ("b2b", model(BASE + RULE, header=False).rules, model(BASE, header=False).ladder)


def test_a_model_file_that_is_not_utf8_names_the_line_to_fix(tmp_path: Path) -> None:
    # It said "'utf-8' codec can't decode byte 0xfc in position 42": an offset no editor shows.
    (tmp_path / "b2b.toml").write_bytes((BASE + '[[rules]]\nname = "M\u00fcnchen"\n').encode("latin-1"))
    with pytest.raises(ModelError, match=r"b2b\.toml: not UTF-8 text \(byte 0xfc on line \d+\): save the file as UTF-8"):
        load_model(tmp_path / "b2b.toml")


def test_a_named_pipe_called_like_a_model_is_refused_at_once(tmp_path: Path) -> None:
    """Reading a FIFO waits for a writer: one named b2b.toml held `leadstream score` and
    `models`, and the worker at its start, for good."""
    (tmp_path / "a.toml").write_text(BASE.replace('"b2b"', '"a"'))
    with pytest.raises(ModelError) as caught:
        beside_a_named_pipe(tmp_path / "b2b.toml", lambda: load_directory(tmp_path))
    assert str(caught.value) == ("b2b.toml: not a model file but a named pipe: rename it (model files are the directory's "
                                 "*.toml files) or remove it")


def test_a_directory_called_like_a_model_is_named_as_one(tmp_path: Path) -> None:
    # It said "cannot read the model file: [Errno 21] Is a directory: '/full/path/b2b.toml'".
    (tmp_path / "b2b.toml").mkdir()
    with pytest.raises(ModelError, match=r"^b2b\.toml: not a model file but a directory: rename it"):
        load_model(tmp_path / "b2b.toml")


def test_directory_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no model files"):
        load_directory(tmp_path)
    with pytest.raises(ModelError, match="not a directory"):
        load_directory(tmp_path / "missing")
    (tmp_path / "a.toml").write_text(BASE)
    (tmp_path / "b.toml").write_text(BASE)
    with pytest.raises(ModelError, match=r"b\.toml: \[model\], field 'name'.*also in a\.toml"):
        load_directory(tmp_path)


def test_a_model_keeps_no_more_traits_than_a_crossing_carries_within_kafkas_limit() -> None:
    """A model keeping 300 traits of 4 KB each made a lead's crossing 1.2 MB, which the broker
    refused: the worker stopped, at every restart. Traits the rules test count too."""
    tested = [f'[[rules]]\nname = "r{n}"\nevent = "signup"\npoints = 1\ntraits.tested{n} = {{ exists = true }}\n' for n in range(28)]
    def keeping(count: int) -> str:
        names = [f"trait{n:03}" for n in range(count - len(tested))]
        return BASE.replace('name = "b2b"', f'name = "b2b"\nkeep_traits = {json.dumps(names)}') + "".join(tested)

    with pytest.raises(ModelError) as caught:
        load(keeping(MAX_KEPT_TRAITS + 1))
    assert "field 'keep_traits': expected at most 128 traits kept, counting those the rules test" in str(caught.value)
    assert str(caught.value).endswith(f"got {MAX_KEPT_TRAITS + 1}")

    widest = model(keeping(MAX_KEPT_TRAITS), name="b2b", header=False)
    largest = "x" * MAX_TRAIT_SIZE
    names = sorted(widest.keep_traits)
    identifies = [ev("identify", at=n, event_id=f"i{n}", traits={name: largest for name in names[n : n + 15]}) for n in range(0, len(names), 15)]
    run = Run(Engine([widest])).apply(*identifies, *[ev("signup", at=200 + n, event_id=f"s{n}") for n in range(20)])
    assert run.rejected == [] and len(run.state("L1", "b2b").traits) == MAX_KEPT_TRAITS
    crossing = encode_json(run.transitions[0].to_dict())
    assert 500_000 < len(crossing) < MAX_MESSAGE_BYTES


def test_the_windows_a_models_caps_and_bonuses_count_in_are_bounded_and_so_is_the_state() -> None:
    """Caps and bonuses keep a count per window the lateness reaches, in every lead's state:
    at most 1,440 windows each (a 1-minute window under a day of lateness) and 14,400 in all,
    about 100 KB of a state. Without a bound, a 1-minute cap under 30 days of lateness kept
    43,200 windows of each active lead, 260 KB."""
    capped = [f'[[rules]]\nname = "r{n}"\nevent = "visit"\npoints = 1\ncap = {{ max = 1, window = "1m" }}\n' for n in range(10)]
    with pytest.raises(ModelError) as caught:
        load(BASE + "".join(capped) + 'bonus = { count = 2, window = "1m", points = 5 }\n')
    assert str(caught.value) == (
        "b2b.toml: [model], field 'lateness': expected a lateness under which the caps and bonuses count in at most "
        "14,400 windows per lead in all (lateness / window, summed: each lead's state keeps them), or longer windows, "
        "got '1d' (15,840 windows; most: rule 'r0' cap 1m: 1,440, rule 'r1' cap 1m: 1,440, rule 'r2' cap 1m: 1,440)"
    )
    widest = model(BASE + "".join(capped), name="b2b", header=False)
    run = Run(Engine([widest])).apply(*(ev("visit", at=n * MINUTE) for n in range(2 * 1440)), batch=500)
    state = run.state("L1", "b2b")
    assert [len(counts) // 2 for counts in state.windows.values()] == [1441] * 10  # the day's, and the newest
    assert len(state.to_bytes()) < 100_000


def test_the_loaders_take_a_path_as_text_as_engine_from_directory_does(tmp_path: Path) -> None:
    # Engine.from_directory("scoring/models") worked; load_directory and load_model raised
    # AttributeError: 'str' object has no attribute 'is_dir' (and 'read_text').
    (tmp_path / "b2b.toml").write_text(BASE + RULE)
    loaded = [load_model(str(tmp_path / "b2b.toml")), *load_directory(str(tmp_path))]
    expected = load_model(tmp_path / "b2b.toml")
    assert [(m.name, m.file, m.rules, m.ladder) for m in loaded] == [(expected.name, expected.file, expected.rules, expected.ladder)] * 2
    with pytest.raises(ModelError, match="not a directory of model files"):
        load_directory(str(tmp_path / "missing"))


def test_an_engine_of_two_models_of_one_name_names_it_and_both_files() -> None:
    # It said "two models share a name: each model needs its own [model] name", naming neither.
    first, second = parse_model(BASE, "b2b.toml"), parse_model(BASE, "b2b_copy.toml")
    with pytest.raises(ModelError) as caught:
        Engine([first, second])
    assert str(caught.value) == "b2b_copy.toml: [model], field 'name': expected a name no other model uses, got 'b2b' (also in b2b.toml)"


@pytest.mark.parametrize(("field", "wrong", "fragments"), [
    ("[filter]\nproduct", "1", ["[filter], field 'product': expected a text or a non-empty list of texts", "(item 20,001 of 20,001 is 1)"]),
    ('[[rules]]\nname = "r"\nevent = "page_view"\npoints = 1\nproperties.url', "{ a = 1 }",
     ["rule 'r', field 'properties.url': expected a non-empty list of texts, finite numbers", "(item 20,001 of 20,001 is {a = 1})"]),
])
def test_a_long_list_is_quoted_in_part_with_the_item_that_is_wrong(field: str, wrong: str, fragments: list[str]) -> None:
    # The whole list was quoted: 189 KB (product) and 289 KB (url) in one message, one log line.
    items = ", ".join(f'"/page/{n}"' for n in range(20_000))
    with pytest.raises(ModelError) as caught:
        load(f"{BASE}{field} = [{items}, {wrong}]\n")
    message = str(caught.value)
    assert len(message) < 1_000 and "['/page/0', '/page/1'," in message and " characters)" in message
    for fragment in fragments:
        assert fragment in message


def test_bounds_one_number_meets_are_a_condition_on_that_number() -> None:
    run = Run(Engine([model(BASE + RULE + "properties.seats = { gte = 5, lte = 5 }\n", name="b2b", header=False)]))
    run.apply(ev(properties={"seats": 5}), ev(properties={"seats": 6}), ev(properties={"seats": 4.999}))
    assert run.score("L1", "b2b") == 10


@pytest.mark.parametrize("other", ["ne = 3", "not_in = [3, 4]"])
def test_exists_false_beside_an_operator_a_missing_field_meets_holds_for_a_missing_field(other: str) -> None:
    run = Run(Engine([model(BASE + RULE + f"properties.n = {{ exists = false, {other} }}\n", name="b2b", header=False)]))
    run.apply(ev(), ev(properties={"n": 3}), ev(properties={"n": None}))
    assert run.score("L1", "b2b") == 20


@pytest.mark.parametrize(("old", "where"), [
    ('name = "pricing"', "rule #1, field 'name'"),
    ('event = "page_view"', "rule 'pricing', field 'event'"),
    ('level = "mql"', "[thresholds], field 'ladder[1].level'"),
    ('base = "cold"', "[thresholds], field 'base'"),
])
def test_a_text_of_a_model_is_at_most_as_long_as_an_event_type_may_be(old: str, where: str) -> None:
    """A rule named with 2,000,000 characters was taken: its name went into every lead's history
    and into each crossing's reasons, and `leadstream score` wrote a crossing of 4 MB, beyond
    what Kafka takes in a message."""
    key = old.split(" = ")[0]
    def naming(chars: int) -> str:
        return (BASE + RULE).replace(old, f'{key} = "{"x" * chars}"')
    load(naming(MAX_TEXT_CHARS))
    with pytest.raises(ModelError) as caught:
        load(naming(MAX_TEXT_CHARS + 1))
    assert str(caught.value) == f"b2b.toml: {where}: expected a non-empty text on one line of at most 256 characters, got '{'x' * 257}'"


def test_the_longest_rule_names_make_a_crossing_well_within_kafkas_limit() -> None:
    rules = [RULE.replace('name = "pricing"', f'name = "{n}{"x" * (MAX_TEXT_CHARS - 1)}"') for n in range(10)]
    run = Run(Engine([model(BASE + "".join(rules), name="b2b", header=False)])).apply(ev("page_view", at=1))
    assert len(run.transitions) == 1 and len(run.transitions[0].to_dict()["reasons"]) == 5
    assert len(encode_json(run.transitions[0].to_dict())) < 10_000


def test_a_description_is_at_most_4096_characters() -> None:
    """A description of 10,000,000 characters was taken, and shown whole by `leadstream models`
    and every worker's GET /models/."""
    def describing(chars: int) -> str:
        return BASE.replace('name = "b2b"', f'name = "b2b"\ndescription = "{"d" * chars}"')
    assert len(model(describing(MAX_DESCRIPTION_CHARS), name="b2b", header=False).description) == MAX_DESCRIPTION_CHARS
    with pytest.raises(ModelError, match=r"^b2b\.toml: \[model\], field 'description': expected a non-empty text on one line of "
                                         r"at most 4,096 characters, got 'ddd.* \(4,099 characters\)$"):
        load(describing(MAX_DESCRIPTION_CHARS + 1))
