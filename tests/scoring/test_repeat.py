"""Semantics 2 and 3: repeats score by default; frequency bonuses; per-window caps;
once-per-key de-duplication; ceilings per rule and per model; duplicate events never rescore."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from scoring import Engine, Event, LeadState
from tests.scoring.support import DAY, HOUR, MINUTE, T0, Run, engine, ev, shipped

PRICING = '[[rules]]\nname = "pricing"\nevent = "page_view"\npoints = 10\n'


def test_every_occurrence_scores_by_default() -> None:
    run = Run(engine(PRICING)).apply(*(ev(at=i * MINUTE) for i in range(4)))
    assert run.score() == 40


@pytest.mark.parametrize(
    ("visits_at", "bonuses"),
    [
        ([0, 1, 2, 3], 0),  # four visits: no bonus
        ([0, 1, 2, 3, 4], 1),  # five in one week: one bonus
        ([0, 1, 2, 3, 4, 5, 6], 1),  # more in the same week: still one
        ([0, 1, 2, 3, 4, 7, 8, 9, 10, 11], 2),  # five in each of two weeks (Monday to Sunday)
        ([3, 4, 5, 6, 7], 0),  # Thursday to Monday: split across two calendar weeks
    ],
)
def test_frequency_bonus_once_per_window(visits_at: list[int], bonuses: int) -> None:
    run = Run(engine(PRICING + 'bonus = { count = 5, window = "1w", points = 25 }\n'))
    run.apply(*(ev(at=day * DAY) for day in visits_at))
    assert run.score() == min(10 * len(visits_at) + 25 * bonuses, 1000)
    assert run.state().ledger["pricing"][3] == bonuses


BONUS = PRICING.replace("points = 10", "points = 1") + 'bonus = {{ count = {count}, window = "1d", points = 100 }}\n'


@pytest.mark.parametrize(
    ("before", "after", "visits", "bonuses"),
    [
        (3, 5, 6, 1),  # raised in a window that paid at 3: it does not pay again at 5
        (5, 3, 6, 1),  # lowered to 3 after 4 visits: the 5th pays (before, nothing more paid)
        (5, 3, 4, 0),  # ... and nothing before it
        (3, 3, 6, 1),
        (5, 6, 5, 0),  # raised before the window reached it: it pays at the new count
        (5, 6, 6, 1),
    ],
)
def test_a_bonus_count_edited_within_a_window_pays_once_there(before: int, after: int, visits: int, bonuses: int) -> None:
    """A bonus paid when a window's count was exactly `count`: edited within the window, raised,
    it paid a second time; lowered below the count so far, it never paid there."""
    run = Run(engine(BONUS.format(count=before))).apply(*(ev(at=i * MINUTE) for i in range(4)))
    run.engine = engine(BONUS.format(count=after))
    run.apply(*(ev(at=i * MINUTE) for i in range(4, visits)), batch=1)
    assert run.state().ledger["pricing"][3] == bonuses
    run.apply(*(ev(at=DAY + i * MINUTE) for i in range(after)))  # the next day counts under the edit
    assert run.state().ledger["pricing"][3] == bonuses + 1


def test_a_bonus_paid_in_an_earlier_window_is_not_paid_again_by_a_late_occurrence_after_an_edit() -> None:
    run = Run(engine(BONUS.format(count=3))).apply(*(ev(at=i * MINUTE) for i in range(3)), ev(at=DAY))
    run.engine = engine(BONUS.format(count=4))
    run.apply(ev(at=10 * MINUTE), ev(at=DAY + MINUTE), ev(at=DAY + 2 * MINUTE), ev(at=DAY + 3 * MINUTE))
    assert run.state().ledger["pricing"][3] == 2  # day 0 at 3 (not again at 4, late), day 1 at 4


def test_bonus_counters_of_states_of_earlier_layouts_pay_as_they_would_have() -> None:
    """Layout 7 and those before stopped counting a window at `count`, paying there."""
    run = Run(engine(BONUS.format(count=3))).apply(ev(at=0), ev(at=DAY))
    state = run.state()
    day = T0 // DAY
    state.windows["bonus:pricing"] = [day, 3, day + 1, 2]  # day 0 paid, day 1 at 2
    run.store[("m", "L1")] = msgspec.msgpack.encode((7, *msgspec.msgpack.decode(state.to_bytes())[1:]))
    run.apply(ev(at=MINUTE), ev(at=DAY + MINUTE), ev(at=DAY + 2 * MINUTE))
    assert run.state().ledger["pricing"][3] == 1  # day 1 at its third visit, day 0 not again
    assert run.state().windows["bonus:pricing"] == [day + 1, -1, day, -1]


@pytest.mark.parametrize(
    ("opens", "scored"),
    [
        ([(0, "m1")], 1),
        ([(0, "m1"), (1, "m2")], 1),  # second open the same day: capped
        ([(0, "m1"), (DAY, "m2")], 2),  # next day: scores
        ([(0, "m1"), (DAY, "m1")], 1),  # same e-mail again next day: once per e-mail id
        ([(0, "m1"), (HOUR, "m2"), (DAY, "m2")], 1),  # m2 was seen (capped) on day one
        ([(23 * HOUR, "m1"), (25 * HOUR, "m2")], 2),  # calendar days in UTC, not 24 h spans
    ],
)
def test_email_open_cap_one_per_day_and_once_per_email(opens: list[tuple[int, str]], scored: int) -> None:
    rule = (
        '[[rules]]\nname = "open"\nevent = "email_open"\npoints = 1\n'
        'cap = { max = 1, window = "1d" }\nonce_per = "properties.email_id"\n'
    )
    run = Run(engine(rule)).apply(*(ev("email_open", at=at, properties={"email_id": mail}) for at, mail in opens))
    assert run.score() == scored
    points, occurrences, capped, _ = run.state().ledger["open"]
    assert (points, occurrences, capped) == (scored, len(opens), len(opens) - scored)


def test_long_once_per_values_are_kept_as_digests_so_the_state_stays_small() -> None:
    """Two hundred e-mail ids of 60,000 characters each, kept whole, made a state of 12 MB,
    which Kafka refuses to take: the worker could not write it."""
    rule = '[[rules]]\nname = "open"\nevent = "email_open"\npoints = 1\nonce_per = "properties.email_id"\n'
    mails = [f"{i}-" + "x" * 60_000 for i in range(200)]
    run = Run(engine(rule)).apply(*(ev("email_open", at=i, properties={"email_id": mail}) for i, mail in enumerate(mails)))
    run.apply(ev("email_open", at=DAY, properties={"email_id": mails[-1]}), ev("email_open", at=DAY, properties={"email_id": "m"}))
    assert run.score() == 201  # the repeat of a long id is still a repeat
    assert len(run.state().to_bytes()) < 20_000


def test_once_per_values_are_told_apart_as_json_values() -> None:
    # Keyed by str(value), the number 7 and the text "7" were one value, and 1 and 1.0 two. The
    # events are handed in as such: parsing refuses an integer beyond 64 bits, which keying must
    # not raise on all the same.
    rule = '[[rules]]\nname = "open"\nevent = "email_open"\npoints = 1\nonce_per = "properties.email_id"\n'
    values = [7, "7", 1, 1.0, True, "True", [1, {"b": 1, "a": 2}], [1, {"a": 2, "b": 1}], 10**5000, 10**5000, [10**5000]]
    run = Run(engine(rule)).apply(*(Event(f"e-{i}", "L1", "email_open", T0 + i, {"email_id": v}) for i, v in enumerate(values)))
    assert run.score() == 8  # 7, "7", 1, true, "True", the array (keys in any order), 10**5000 and [10**5000]
    assert all(key == "7" or key == "True" or (key.startswith("#") and len(key) == 33) for key in run.state().seen["email_open properties.email_id"])


def test_once_per_values_beyond_ascii_are_kept_as_digests_and_whole_ones_of_earlier_states_still_found() -> None:
    rule = '[[rules]]\nname = "open"\nevent = "email_open"\npoints = 1\nonce_per = "properties.email_id"\n'
    mail = "\U0001f4e7" * 64  # 64 characters, 256 bytes in UTF-8
    run = Run(engine(rule)).apply(ev("email_open", at=0, properties={"email_id": mail}))
    assert mail not in run.state().seen["email_open properties.email_id"] and len(run.state().to_bytes()) < 300
    run.apply(ev("email_open", at=1, properties={"email_id": mail}))
    assert run.score() == 1  # its repeat is a repeat
    # A state written when such values were kept whole.
    old = Run(engine(rule))
    old.apply(ev("email_open", at=0, properties={"email_id": "x"}))
    state = old.state()
    state.seen["open"] = {mail: None}
    old.store[("m", "L1")] = state.to_bytes()
    old.apply(ev("email_open", at=1, properties={"email_id": mail}))
    assert old.score() == 1


OPEN = '[[rules]]\nname = "{name}"\nevent = "email_open"\npoints = {points}\nonce_per = "properties.email_id"\n'


def test_a_renamed_once_per_rule_still_knows_the_values_it_has_seen() -> None:
    """Kept under the rule's name, the e-mail ids were forgotten when an edit renamed the rule:
    e-mails opened before scored again."""
    run = Run(engine(OPEN.format(name="email open", points=5)))
    run.apply(ev("email_open", properties={"email_id": "m-1"}), ev("email_open", at=1, properties={"email_id": "m-2"}))
    run.engine = engine(OPEN.format(name="E-mail opened (any campaign)", points=5))
    run.apply(ev("email_open", at=2, properties={"email_id": "m-1"}), ev("email_open", at=3, properties={"email_id": "m-3"}))
    assert run.score() == 15  # m-1, m-2, then m-3: m-1's second open is a repeat


def test_rules_that_de_duplicate_the_same_field_each_score_a_values_first_occurrence() -> None:
    body = OPEN.format(name="open", points=5) + OPEN.format(name="newsletter open", points=2)
    body += 'properties.campaign = "newsletter"\n'
    run = Run(engine(body))
    run.apply(*(ev("email_open", at=i, properties={"email_id": "m-1", "campaign": "newsletter"}) for i in range(3)))
    run.apply(ev("email_open", at=3, properties={"email_id": "m-2"}))
    assert run.score() == 5 + 2 + 5  # m-1 in both rules once (the first did not make it a repeat for the second)
    assert run.state().ledger["newsletter open"][:3] == [2, 3, 2]


def test_once_per_values_a_state_of_an_earlier_version_keeps_under_the_rules_name_stay_seen() -> None:
    run = Run(engine(OPEN.format(name="open", points=5))).apply(ev("email_open", properties={"email_id": "m-1"}))
    state = run.state()
    state.seen = {"open": state.seen.pop("email_open properties.email_id"), "removed rule": {"x": None}}
    run.store[("m", "L1")] = state.to_bytes()
    run.apply(ev("email_open", at=1, properties={"email_id": "m-1"}), ev("email_open", at=2, properties={"email_id": "m-2"}))
    assert run.score() == 10
    assert run.state().seen == {"email_open properties.email_id": {"m-1": None, "m-2": None}}  # no rule is "removed rule"


def test_once_per_values_no_rule_de_duplicates_any_more_leave_the_state_at_its_next_write() -> None:
    """Values of a rule since removed, or that de-duplicates another field or event type now,
    stayed in every state that had them for good (100 to 200 values each, up to 13 KB as
    digests): nothing read them, and nothing dropped them. A state loses them the first time
    the model uses it, as it is read back; a rule's name, earlier or now, is no matter."""
    body = OPEN.format(name="open", points=5) + '[[rules]]\nname = "download"\nevent = "download"\npoints = 1\nonce_per = "properties.file"\n'
    run = Run(engine(body)).apply(*(ev("email_open", at=i, properties={"email_id": f"m-{i}"}) for i in range(3)),
                                  ev("download", at=3, properties={"file": "a.pdf"}))
    assert run.state().seen.keys() == {"email_open properties.email_id", "download properties.file"}
    edited = OPEN.format(name="E-mail opened", points=5) + 'renamed_from = "open"\n'  # download removed
    edited += '[[rules]]\nname = "click"\nevent = "email_click"\npoints = 1\nonce_per = "properties.link"\n'
    run.engine = engine(edited)
    run.apply(ev("email_click", at=4, properties={"link": "x"}))
    assert run.state().seen == {"email_open properties.email_id": {f"m-{i}": None for i in range(3)},
                                "email_click properties.link": {"x": None}}
    run.apply(ev("email_open", at=5, properties={"email_id": "m-0"}))
    assert run.score() == 15 + 1 + 1  # m-0 still a repeat
    run.engine = engine(OPEN.format(name="open", points=5).replace("properties.email_id", "properties.campaign"))
    run.apply(ev("email_open", at=6, properties={"email_id": "m-0"}))  # no campaign: nothing to de-duplicate
    assert run.state().seen == {} and run.score() == 17 + 5


def test_cap_of_several_per_window() -> None:
    run = Run(engine('[[rules]]\nname = "click"\nevent = "click"\npoints = 3\ncap = { max = 2, window = "1h" }\n'))
    run.apply(*(ev("click", at=i * MINUTE) for i in range(5)), ev("click", at=HOUR))
    assert run.score() == 3 * 3


class _CountedReads(list):  # type: ignore[type-arg]
    """Window counters that count the slots read from them: the work of finding a window."""

    reads = 0

    def __getitem__(self, key: Any) -> Any:
        self.reads += len(range(*key.indices(len(self)))) if isinstance(key, slice) else 1
        return super().__getitem__(key)


def test_an_event_finds_its_window_among_many_open_ones_without_reading_them_all() -> None:
    """A counter keeps a count per window the lateness can still reach, and an event looked for
    its window among them one by one: a 1-minute cap under a 30-day lateness kept 43,200
    windows, and 43,200 events of one lead took 23 s of CPU. Kept newest first, a window is
    found by bisection, and compaction cuts closed windows off the end."""
    capped = engine(PRICING + 'cap = { max = 1, window = "1m" }\n', lateness="1d")
    states: dict[tuple[str, str], LeadState] = {}

    def apply(*at: int) -> None:
        states.update(capped.apply_batch([capped.parse(ev(at=a)) for a in at], lambda m, lead: states.get((m, lead))).states)

    apply(*range(0, DAY + 1, 2 * MINUTE))  # a visit every other minute for a day: 721 windows open
    state = states[("m", "L1")]
    counts = state.windows["cap:pricing"] = _CountedReads(state.windows["cap:pricing"])
    assert len(counts) == 2 * 721 and state.behaviour == 10 * 721
    apply(DAY // 2)  # late, in a window that has scored: capped
    apply(DAY // 2 + MINUTE)  # late, in a window with no count yet: it goes between
    apply(DAY + 2 * MINUTE)  # the next window: the oldest closes
    assert state.behaviour == 10 * 723 and state.ledger["pricing"][2] == 1
    assert counts.reads <= 3 * 2 * 10  # about log2(721) each; one by one, hundreds each
    indices = [(T0 + at) // MINUTE for at in (*range(2 * MINUTE, DAY + 1, 2 * MINUTE), DAY // 2 + MINUTE, DAY + 2 * MINUTE)]
    assert counts == [value for index in sorted(indices, reverse=True) for value in (index, 1)]


def test_a_leads_counters_stay_within_the_lateness_at_every_event_of_a_long_batch() -> None:
    """Compaction cuts closed windows off after a lead's last event of a batch: until then, a
    batch of a lead's events over many windows kept a window for each (a visit a minute for
    3 days in one batch: 4,320 windows of a 1-minute cap under a day, where the lateness
    reaches 1,441; 100,000 such events took 1.5 s, 0.23 s in batches of 1,000). A new newest
    window cuts them off, as a batch boundary there would: the scores are those of batches."""
    body = PRICING + 'cap = { max = 1, window = "1m" }\nbonus = { count = 2, window = "1h", points = 5 }\n'
    limited = engine(body, lateness="1d")
    visits = [ev(at=minute * MINUTE, event_id=f"v{minute}") for minute in range(3 * 24 * 60)]
    state = limited.new_state("m")
    most: dict[str, int] = {}

    def watched() -> Any:
        for visit in visits:
            yield limited.parse(visit)
            for key, counts in state.windows.items():
                most[key] = max(most.get(key, 0), len(counts) // 2)

    limited.apply_batch(watched(), lambda m, lead: state)
    assert most == {"cap:pricing": 1441, "bonus:pricing": 25}  # lateness / window + 1
    batched = Run(limited).apply(*visits, batch=500)
    assert (state.behaviour, state.ledger, state.windows) == (batched.state().behaviour, batched.state().ledger, batched.state().windows)


def test_a_new_leads_first_counter_knows_when_it_closes_as_compaction_would_work_it_out() -> None:
    """A lead's first window counter left `windows_drop_ms` at 0 (unknown) until compaction,
    which then walked the counters after each new lead's first batch (30% of the compactions
    of the engine benchmark's workload) to learn what the counter's window already said."""
    capped = engine(PRICING + 'cap = { max = 1, window = "1h" }\n', lateness="1d")
    state = capped.new_state("m")
    during: list[int] = []

    def watched() -> Any:
        yield capped.parse(ev(at=10 * MINUTE))
        during.append(state.windows_drop_ms)  # the event applied, its lead not compacted yet

    capped.apply_batch(watched(), lambda m, lead: state)
    window = capped.runtime("m").windows["cap:pricing"]
    assert during == [window.end_ms(window.index(T0 + 10 * MINUTE))] == [state.windows_drop_ms]


def test_rule_ceiling() -> None:
    run = Run(engine('[[rules]]\nname = "click"\nevent = "click"\npoints = 4\nmax_points = 10\n'))
    run.apply(*(ev("click", at=i) for i in range(5)))
    assert run.score() == 10
    assert run.state().ledger["click"] == [10, 5, 3, 0]


def test_an_occurrence_that_several_limits_clip_counts_as_capped_once() -> None:
    """Each limit that clipped an occurrence counted it: one complaint, clipped by its rule's
    ceiling and then by the model's floor, showed `capped: 2` beside `occurrences: 1`."""
    complaint = '[[rules]]\nname = "complaint"\nevent = "c"\npoints = -30\nmax_points = 25\n'
    run = Run(engine(complaint, settings="floor = -20")).apply(ev("c"))
    assert run.state().ledger["complaint"] == [-20, 1, 1, 0]
    visits = '[[rules]]\nname = "visit"\nevent = "v"\npoints = 4\nmax_points = 12\ncap = { max = 1, window = "1d" }\n' \
             'bonus = { count = 3, window = "1d", points = 10 }\n'
    run = Run(engine(visits)).apply(*(ev("v", at=i * MINUTE) for i in range(3)))
    # The first scores 4; the second is capped; the third is capped, and its bonus clipped to 8.
    assert run.state().ledger["visit"] == [12, 3, 2, 1]


def test_negative_rule_ceiling_limits_the_penalty() -> None:
    body = '[[rules]]\nname = "visit"\nevent = "v"\npoints = 50\n[[rules]]\nname = "careers"\nevent = "c"\npoints = -8\nmax_points = 20\n'
    run = Run(engine(body)).apply(ev("v"), *(ev("c", at=i + 1) for i in range(5)))
    assert run.score() == 30


def test_model_ceiling_on_behaviour_points() -> None:
    run = Run(engine(PRICING, settings="max_points = 25"))
    run.apply(*(ev(at=i) for i in range(4)))
    assert run.score() == 25
    assert run.state().ledger["pricing"] == [25, 4, 2, 0]  # the third visit clipped, the fourth refused


def test_duplicate_event_ids_never_score_twice() -> None:
    run = Run(engine(PRICING))
    first = ev(event_id="same")
    run.apply(first, first)
    run.apply(first)
    run.apply(ev(event_id="same", at=5 * MINUTE))  # same id, other content: still the same event
    assert run.score() == 10


def test_an_event_redelivered_after_its_lead_moved_beyond_the_lateness_is_a_duplicate_not_late_facts() -> None:
    """Found by the duplicates property: the lateness was checked before the remembered ids, so
    a redelivered identify the lead had moved on from was late, and its traits (facts taken even
    from late events) were applied again, over a later identify of the same time."""
    b2b = Engine([shipped("b2b")])
    vp = ev("identify", event_id="vp", product="b2b", traits={"title": "VP Sales", "email": "a@gmail.com"})
    student = ev("identify", event_id="student", product="b2b", traits={"title": "Student", "email": "a@gmail.com"})
    run = Run(b2b).apply(vp, student, ev(at=20 * DAY, product="b2b", properties={"url": "https://acme.io/pricing"}))
    run.apply(vp)
    assert run.state(model_name="b2b").traits["title"] == "Student"
    assert run.late == []


def test_a_lateness_an_edit_lengthened_does_not_reach_ids_and_counters_compaction_forgot() -> None:
    """Compaction forgets event ids and window counters beyond the lateness. Lengthened by an
    edit, the lateness reached events older than that: a replay of one scored again, and a new
    open on a day whose cap was used scored past it."""
    body = '[[rules]]\nname = "o"\nevent = "o"\npoints = 1\ncap = { max = 1, window = "1d" }\n'
    run = Run(engine(body, lateness="1d", settings="remember_events = 2"))
    run.apply(ev("o", at=HOUR, event_id="a"), ev("o", at=2 * HOUR, event_id="b"), ev("o", at=3 * DAY, event_id="c"))
    assert run.score() == 2 and "a" not in run.state().old_ids  # day 0 and day 3; a's id and day 0's counter forgotten
    run.engine = engine(body, lateness="7d", settings="remember_events = 2")
    run.apply(ev("o", at=HOUR, event_id="a"), ev("o", at=5 * HOUR, event_id="d"))  # a replayed; another open of day 0
    assert run.score() == 2
    assert [late.event.event_id for late in run.late] == ["a", "d"]
    run.apply(ev("o", at=2 * DAY + HOUR, event_id="e"))  # after what was forgotten, the new lateness holds
    assert run.score() == 3 and len(run.late) == 2


def test_a_cap_window_an_edit_lengthened_leaves_no_counter_behind() -> None:
    """A day's counter read as a week's (the key is the rule's) is a week centuries ahead:
    compaction, which dropped only windows before the lateness, kept it in the state forever."""
    body = '[[rules]]\nname = "o"\nevent = "o"\npoints = 1\ncap = {{ max = 1, window = "{window}" }}\n'
    run = Run(engine(body.format(window="1d"))).apply(ev("o"))
    run.engine = engine(body.format(window="1w"))
    run.apply(*(ev("o", at=day * DAY) for day in range(1, 16)), batch=1)
    assert run.score() == 1 + 3  # the day, then one of each week (Monday T0): the first counted anew
    assert run.state().windows == {"cap:o": [(T0 + 15 * DAY + 3 * DAY) // (7 * DAY), 1]}


def test_once_per_without_the_field_scores_each_time_and_a_value_is_seen_only_where_the_conditions_held() -> None:
    rule = (
        '[[rules]]\nname = "open"\nevent = "email_open"\npoints = 1\nonce_per = "properties.email_id"\n'
        'traits.country = "DE"\n'
    )
    run = Run(engine(rule)).apply(
        ev("identify", traits={"country": "DE"}),
        ev("email_open", at=1), ev("email_open", at=2, properties={"email_id": None}),  # no value: each scores
        ev("identify", at=3, traits={"country": "FR"}),
        ev("email_open", at=4, properties={"email_id": "m1"}),  # the condition does not hold: not seen
        ev("identify", at=5, traits={"country": "DE"}),
        ev("email_open", at=6, properties={"email_id": "m1"}),  # its first occurrence that matches
        ev("email_open", at=7, properties={"email_id": "m1"}),  # a repeat
    )
    assert run.score() == 3
    assert run.state().ledger["open"][:3] == [3, 4, 1]
