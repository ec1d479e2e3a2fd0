"""Lead state: compact bytes that round-trip, and the bounds that keep a state small."""

from __future__ import annotations

import msgspec
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scoring import Engine, LeadState, StateError
from scoring.state import newest_first
from tests.scoring.support import DAY, HOUR, MINUTE, T0, Run, engine, ev, shipped

RULE = '[[rules]]\nname = "v"\nevent = "v"\npoints = 1\n'


def test_round_trip_and_size_of_a_b2b_lead() -> None:
    run = Run(Engine([shipped("b2b")])).apply(
        ev("identify", product="b2b", traits={"email": "jane@globex.com", "title": "VP Sales", "company_size": 300}),
        *(ev("page_view", at=i, product="b2b", properties={"url": "https://acme.io/pricing"}) for i in range(3)),
        ev("email_open", at=9, product="b2b", properties={"email_id": "m-1"}),
    )
    raw = run.store[("b2b", "L1")]
    assert LeadState.from_bytes(raw) == run.state("L1", "b2b")
    assert len(raw) < 500


def _not_utf8(layout: int, dropped: int) -> bytes:
    """A state of `layout` (8: the current one; 6: without the last field) whose level is a text
    that is not UTF-8 (msgspec raises UnicodeDecodeError for it, not a DecodeError)."""
    fields = list(msgspec.msgpack.decode(LeadState.new("nurture", 0).to_bytes()))
    fields[0] = layout
    raw = msgspec.msgpack.encode(fields[: len(fields) - dropped])
    return raw.replace(b"\xa7nurture", b"\xa7nurtur\xe9")


@pytest.mark.parametrize("raw", [b"not json", b"{}", b"[2]", b"[1, 2, 3]", b"\x93\x03\x01\x02", b"\xdc\x00\x14" + b"\x01" * 20, b"\xc1",
                                 _not_utf8(8, 0), _not_utf8(6, 1)])
def test_unreadable_state_bytes_raise_state_error(raw: bytes) -> None:
    with pytest.raises(StateError):
        LeadState.from_bytes(raw)


def _foreign(change: str) -> bytes:
    """A b2b lead's state bytes with one field replaced by what no engine writes."""
    fields = list(msgspec.msgpack.decode(Run(Engine([shipped("b2b")])).apply(
        ev("page_view", product="b2b", properties={"url": "https://acme.io/pricing"})).store[("b2b", "L1")]))
    index, value = {
        "ledger entry of 3": (11, {"pricing page": [10, 1, 0]}),
        "odd window counters": (12, {"bonus:pricing page": [2913, 1, 2914]}),
        "no window counters": (12, {"bonus:pricing page": []}),
        "history not in triples": (18, [T0, 10]),
        "history time as text": (18, ["noon", 10, "pricing page"]),
        "history label as number": (18, [T0, 10, 7]),
        "behaviour not a number": (1, float("nan")),
        "fit infinite": (2, float("-inf")),
        "step taken not finite": (5, [float("inf")]),
    }[change]
    fields[index] = value
    return msgspec.msgpack.encode(fields)


@pytest.mark.parametrize("change", ["ledger entry of 3", "odd window counters", "no window counters", "history not in triples",
                                    "history time as text", "history label as number", "behaviour not a number",
                                    "fit infinite", "step taken not finite"])
def test_a_state_the_engine_could_not_use_is_refused_when_read(change: str) -> None:
    """A foreign or corrupt changelog record in the layout, but with values the engine indexes
    or compares: refused as unreadable, not an exception while the lead's next event is scored
    (a ledger entry of three raised IndexError in the worker's scoring agent)."""
    with pytest.raises(StateError):
        LeadState.from_bytes(_foreign(change))


def test_event_ids_are_bounded_by_count() -> None:
    run = Run(engine(RULE, settings="remember_events = 4"))
    first = ev("v", event_id="first")
    run.apply(first, *(ev("v", at=i) for i in range(1, 8)))
    assert len(run.state().ids) + len(run.state().old_ids) <= 8
    run.apply(first)  # within the last 4 to 8 ids: still known
    assert run.score() == 8
    run.apply(*(ev("v", at=i) for i in range(8, 16)))
    run.apply(first)  # forgotten by count, and within the lateness: scores again (the documented bound)
    assert run.score() == 17


def test_long_or_non_ascii_event_ids_are_kept_as_digests_and_still_known() -> None:
    run = Run(engine(RULE, settings="remember_events = 1024"))
    ids = [f"{n:04d}-" + "\u00e9\u4e2d\U0001f600" * 83 for n in range(2100)]  # 254 characters, 752 bytes each
    run.apply(*(ev("v", event_id=event_id, at=n) for n, event_id in enumerate(ids)), batch=500)
    raw = run.store[("m", "L1")]
    assert len(raw) < 200_000  # kept whole: 2 x 1024 x 752 bytes, 1.5 MB, more than Kafka takes in a record
    assert run.score() == 2100
    run.apply(ev("v", event_id=ids[-1], at=3000), ev("v", event_id="plain-id", at=3001))
    assert run.score() == 2101 and "plain-id" in run.state().ids  # a redelivery is known; a short ASCII id kept as it is


def test_a_long_event_id_a_state_kept_whole_is_still_known() -> None:
    """States written before ids were digested hold long ids whole."""
    run = Run(engine(RULE))
    long_id = "x" * 200
    state = run.engine.new_state("m")
    state.remember_event(long_id, T0, 64)
    run.store[("m", "L1")] = state.to_bytes()
    run.apply(ev("v", event_id=long_id))
    assert run.score() == 0


def test_event_ids_are_forgotten_once_beyond_the_lateness() -> None:
    run = Run(engine(RULE, lateness="1h", settings="remember_events = 1"))  # one id a generation
    old = ev("v", event_id="old")
    run.apply(old, ev("v", at=2 * HOUR))
    assert not run.state().knows_event("old")
    run.apply(old)  # a replay of it is late, not a second score
    assert run.score() == 2 and len(run.late) == 1


def test_window_counters_are_dropped_when_no_event_can_reach_them() -> None:
    rule = '[[rules]]\nname = "o"\nevent = "o"\npoints = 1\ncap = { max = 1, window = "1d" }\n'
    run = Run(engine(rule, lateness="1h")).apply(ev("o"), ev("o", at=DAY + 2 * HOUR))
    assert run.state().windows == {"cap:o": [(T0 + DAY) // DAY, 1]}


def test_window_counters_an_earlier_version_kept_in_arrival_order_are_read_newest_first() -> None:
    """Counters are kept newest first, which finding a window by bisection relies on; earlier
    versions kept them in the order their windows came, a late event's last."""
    run = Run(engine(RULE + 'cap = { max = 1, window = "1h" }\n')).apply(ev("v", at=HOUR), ev("v", at=3 * HOUR))
    state, hour = run.state(), (T0 + HOUR) // HOUR
    state.windows["cap:v"] = [hour, 1, hour + 2, 1, hour + 1, 1]  # hour 2 arrived late
    run.store[("m", "L1")] = msgspec.msgpack.encode((7, *msgspec.msgpack.decode(state.to_bytes())[1:]))  # layout 7, as they wrote
    assert run.state().windows["cap:v"] == [hour + 2, 1, hour + 1, 1, hour, 1]
    run.apply(ev("v", at=2 * HOUR + MINUTE), ev("v", at=HOUR + MINUTE), ev("v", at=4 * HOUR))  # capped, capped, scored
    assert run.state().ledger["v"] == [3, 5, 2, 0]


def test_copy_is_independent() -> None:
    run = Run(engine(RULE)).apply(ev("v"))
    state = run.state()
    copy = state.copy()
    copy.ledger["v"][0] = 99
    assert state.ledger["v"][0] == 1 and copy != state


# -- the codec: exact round trips, the first layout still read -------------------------------

_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
_NUMBER = st.one_of(st.integers(-(10**9), 10**9), st.floats(allow_nan=False, allow_infinity=False, width=64))
_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), _NUMBER, _TEXT),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_TEXT, inner, max_size=3)),
    max_leaves=8,
)
_ID = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=12)
_MS = st.integers(0, 4_102_444_800_000)


@st.composite
def lead_states(draw: st.DrawFn) -> LeadState:
    state = LeadState.new(draw(_TEXT), draw(_NUMBER))
    state.behaviour, state.as_of_ms, state.last_activity_ms = draw(_NUMBER), draw(_MS), draw(_MS)
    state.steps_taken = draw(st.lists(_NUMBER, max_size=3))
    state.watermark_ms, state.crossings = draw(_MS), draw(st.integers(0, 10**6))
    state.as_of_ms = state.as_of_ms or state.watermark_ms  # 0 only before any event (see the test below)
    state.traits = draw(st.dictionaries(_TEXT, _JSON, max_size=4))
    state.account_id = draw(st.none() | _ID)
    state.ledger = draw(st.dictionaries(_TEXT, st.lists(_NUMBER, min_size=4, max_size=4), max_size=4))
    counts = st.dictionaries(st.integers(0, 10**6), st.integers(0, 10**6), min_size=1, max_size=3).map(newest_first)
    state.windows = draw(st.dictionaries(_TEXT, counts, max_size=3))
    state.seen = draw(st.dictionaries(_TEXT, st.dictionaries(_ID, st.none(), max_size=3), max_size=2))
    for event_id in draw(st.lists(_ID, max_size=6)):
        state.remember_event(event_id, draw(_MS), 3)
    for label in draw(st.lists(_ID, max_size=4)):
        state.record(draw(_MS), draw(_NUMBER), label, 3)
    state.windows_drop_ms = draw(_MS)
    state.trait_times = draw(st.dictionaries(_TEXT, _MS, max_size=4))
    state.revision = draw(st.integers(0, 2**40))
    state.earlier_activity_ms, state.earlier_steps = draw(_MS), tuple(draw(st.lists(_NUMBER, max_size=3)))
    state.forgotten_before_ms = draw(_MS)
    return state


@settings(max_examples=300, deadline=None)
@given(lead_states())
def test_state_bytes_round_trip_exactly(state: LeadState) -> None:
    raw = state.to_bytes()
    again = LeadState.from_bytes(raw)
    assert again == state and again.as_dict() == state.as_dict()
    assert again.windows_drop_ms == state.windows_drop_ms and again.revision == state.revision
    assert LeadState.from_bytes(again.to_bytes()) == state
    assert LeadState.from_bytes(bytearray(raw)) == state and LeadState.from_bytes(memoryview(raw)) == state


@pytest.mark.parametrize(
    ("version", "missing"),
    [
        (6, ("forgotten_before_ms",)),  # before the time compaction forgot before
        (5, ("earlier_activity_ms", "earlier_steps", "forgotten_before_ms")),  # before the earlier idle period
        (4, ("revision", "earlier_activity_ms", "earlier_steps", "forgotten_before_ms")),  # before the revision
        (3, ("trait_times", "revision", "earlier_activity_ms", "earlier_steps", "forgotten_before_ms")),  # before trait times
    ],
)
@settings(max_examples=50, deadline=None)
@given(state=lead_states())
def test_states_of_earlier_layouts_are_still_read_without_the_fields_they_lacked(version: int, missing: tuple[str, ...], state: LeadState) -> None:
    """An earlier layout is the same MessagePack array without its last fields; each is read as
    a new state has it."""
    raw = msgspec.msgpack.encode((version, *msgspec.msgpack.decode(state.to_bytes())[1 : -len(missing)]))
    read, new = LeadState.from_bytes(raw), LeadState.new("", 0)
    for name in missing:
        assert getattr(read, name) == getattr(new, name)
        setattr(read, name, getattr(state, name))
    assert read == state and read.revision == state.revision


def test_a_state_written_before_as_of_was_kept_without_a_half_life_is_valued_at_its_newest_event() -> None:
    state = LeadState.new("cold", 0)
    state.behaviour, state.watermark_ms = 40, 1_762_128_000_000
    assert LeadState.from_bytes(state.to_bytes()).as_of_ms == 1_762_128_000_000
    assert LeadState.from_bytes(LeadState.new("cold", 0).to_bytes()).as_of_ms == 0


def _json_log(items: list[str]) -> str:
    return "".join(f"\x7f{item}" for item in items) + "\x7f" if items else ""


@settings(max_examples=100, deadline=None)
@given(lead_states(), st.booleans())
def test_states_of_the_json_layouts_are_still_read(state: LeadState, first: bool) -> None:
    """Versions before MessagePack wrote JSON arrays with the logs as U+007F-separated texts."""
    history = "".join(f"\x7f{t} {p} {label}" for t, p, label in state.changes(len(state.history))) + "\x7f" if state.history else ""
    values = [
        1 if first else 2, state.behaviour, state.fit, state.as_of_ms, state.last_activity_ms, list(state.steps_taken),
        state.watermark_ms, state.level, state.crossings, state.traits, state.account_id, state.ledger,
        state.windows, {rule: _json_log(list(keys)) for rule, keys in state.seen.items()}, _json_log(sorted(state.ids)),
        len(state.ids), state.ids_max_ms, _json_log(sorted(state.old_ids)), state.old_ids_max_ms, history,
    ]  # fmt: skip
    if not first:
        values.append(state.windows_drop_ms)
    read = LeadState.from_bytes(orjson.dumps(values))
    assert read.trait_times == {} and read.earlier_steps == () and read.forgotten_before_ms == 0  # not in those layouts
    read.trait_times, read.earlier_activity_ms, read.earlier_steps = state.trait_times, state.earlier_activity_ms, state.earlier_steps
    read.forgotten_before_ms = state.forgotten_before_ms
    assert read == state
    assert read.windows_drop_ms == (0 if first else state.windows_drop_ms)  # 0: not known, the next compaction looks


def test_b2b_states_stay_small() -> None:
    """The benchmark reports bytes per state on its workload; a typical active lead stays well
    under a kilobyte (recent ids are most of it)."""
    run = Run(Engine([shipped("b2b")])).apply(
        ev("identify", product="b2b", traits={"email": "jane@globex.com", "title": "VP Sales", "company_size": 300}),
        *(ev("page_view", at=i * HOUR, product="b2b", properties={"url": "https://acme.io/pricing"}) for i in range(20)),
        *(ev("email_open", at=i * HOUR, product="b2b", properties={"email_id": f"m-{i}"}) for i in range(20)),
    )
    assert len(run.store[("b2b", "L1")]) < 1200
