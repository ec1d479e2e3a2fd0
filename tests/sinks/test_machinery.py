"""The delivery machinery's pure parts, table-driven, with a fake clock."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sinks.base import Crossing
from sinks.errors import CredentialsError, MappingError, PermanentError, RetryableError, Stopping, for_status
from scoring.model import load_directory
from sinks.mapping import levels_no_model_has, load_mapping
from sinks.ratelimit import MAX_WINDOW_S, Quota, TokenBucket, limiter_for
from sinks.runner import MAX_UNCOMMITTED, Envelope, RetryPolicy, _InFlight, _Job
from streams.errors import ConfigError
from streams.settings import INT32_MAX, PROJECT_ROOT
from tests.sinks.conftest import account_crossing, crossing
from tests.sinks.fake_clock import FakeClock


@pytest.mark.parametrize(
    ("attempt", "jitter", "retry_after_s", "expected_s"),
    [
        (1, 0.0, None, 0.125),  # half the 250 ms cap
        (1, 1.0, None, 0.25),
        (3, 0.5, None, 0.75),  # cap 1 s: 0.5 + 0.25
        (10, 1.0, None, 60.0),  # capped by max_ms
        (1, 0.0, 5.0, 5.0),  # never earlier than Retry-After
        (9, 1.0, 5.0, 60.0),  # backoff longer than Retry-After wins
        (1, 0.0, 86_400.0, 60.0),  # a Retry-After longer than max_ms waits max_ms
        (1, 0.0, 1e300, 60.0),
    ],
)
def test_backoff_is_exponential_with_equal_jitter_and_honours_retry_after(
    attempt: int, jitter: float, retry_after_s: float | None, expected_s: float
) -> None:
    assert RetryPolicy(max_attempts=8, base_ms=250, max_ms=60_000).delay_s(attempt, jitter, retry_after_s) == expected_s


def test_offsets_are_committed_up_to_the_first_message_not_done_and_never_for_a_revoked_partition() -> None:
    flight = _InFlight()

    def take(partition: str, offset: int, key: bytes) -> _Job | None:
        return flight.take(partition, offset, Envelope(key, b"{}", "crossings", 0, offset))

    bob = take("p0", 0, b"bob")
    assert take("p0", 1, b"bob") is None  # queued behind bob's first, in the same lane
    jane = take("p0", 2, b"jane")
    assert bob is not None and jane is not None  # each opens a lane
    assert flight.finish([jane]) is None  # jane's done, bob's first still retried
    assert flight.committable() == {}
    bobs_second = flight.finish([bob])
    assert bobs_second is not None and flight.committable() == {"p0": 1}
    assert take("p1", 0, b"ann") is not None
    assert take("p0", 3, b"bob") is None
    # Bob's second, under way, finishes after the rebalance; his third is dropped, and both are read
    # again from the second's offset if p0 comes back (jane's, done, is not).
    assert flight.revoke(["p0"]) == {"p0": 1}
    assert flight.finish([bobs_second]) is None
    assert flight.committable() == {} and not flight.idle()  # p1's message is not done
    assert flight.full() == set()
    for offset in range(1, MAX_UNCOMMITTED):
        take("p1", offset, b"ann")
    assert flight.full() == {"p1"}


def test_a_batched_sinks_lane_is_its_partitions_and_a_batch_under_way_outlives_a_revoke() -> None:
    flight = _InFlight(by_partition=True)

    def take(partition: str, offset: int, key: bytes) -> _Job | None:
        return flight.take(partition, offset, Envelope(key, b"{}", "scores", int(partition[1:]), offset))

    head = take("p0", 0, b"b2b/bob")
    assert head is not None
    assert take("p0", 1, b"b2b/jane") is None and take("p0", 2, b"b2b/bob") is None  # one lane: the partition's
    ann = take("p1", 0, b"b2b/ann")
    assert ann is not None
    batch = flight.batch(head, 500)
    assert [job.offset for job in batch] == [0, 1, 2]
    assert take("p0", 3, b"b2b/jane") is None
    # The batch under way finishes after the rebalance; what is queued behind it is dropped.
    assert flight.revoke(["p0"]) == {"p0": 0}
    assert flight.finish(batch) is None
    assert flight.committable() == {}
    assert flight.finish(flight.batch(ann, 500)) is None  # p1 all done: nothing to read again
    assert flight.revoke(["p1", "p2"]) == {}


@pytest.mark.parametrize(("max_ms", "expected_s"), [(60_000, 60.0), (2_500, 2.5), (1_000, 1.0), (200, 1.0), (0, 1.0)])
def test_a_delivery_under_refused_credentials_is_tried_again_after_the_longest_backoff_and_at_least_1_s(
    max_ms: int, expected_s: float
) -> None:
    # LEADSTREAM_SINK_BACKOFF_MAX_MS=0 held it for no time: thousands of POSTs a second to a receiver answering 401.
    assert RetryPolicy(max_attempts=8, base_ms=250, max_ms=max_ms).hold_s() == expected_s


def test_a_message_is_dead_lettered_when_its_tries_run_out_or_its_failed_tries_and_waits_outlast_the_budget() -> None:
    # The defaults: the 7 waits between 8 tries add up to 32 s at most, and a try waits 10 s.
    policy = RetryPolicy(max_attempts=8, base_ms=250, max_ms=60_000, timeout_s=10)
    assert policy.budget_s() == 31.75 + 10
    assert not policy.spent(7, 15.75, policy.backoff_s(7))  # a receiver answering 500: all 8 tries
    assert policy.spent(8, 0.0, 0.0)
    assert not policy.spent(1, 10.0, policy.backoff_s(1))  # one timed out: tried again
    assert policy.spent(4, 40.9, policy.backoff_s(4, jitter=0.0))  # 4 timed out: 10 s each, and the waits


@given(st.integers(1, 40), st.integers(0, INT32_MAX), st.integers(0, INT32_MAX))
def test_the_retry_budget_is_the_waits_between_the_tries_and_one_timeout(max_attempts: int, base_ms: int, max_ms: int) -> None:
    policy = RetryPolicy(max_attempts, base_ms, max_ms, timeout_s=10)
    waits = sum(policy.backoff_s(attempt) for attempt in range(1, max_attempts))
    assert policy.budget_s() == pytest.approx(waits + 10)


@pytest.mark.timeout(30)
def test_a_connector_told_to_retry_for_good_reckons_its_waits_at_once() -> None:
    # LEADSTREAM_SINK_MAX_ATTEMPTS=2147483647: the connector was still summing its budget 10 minutes
    # after the first failure, delivering nothing and deaf to SIGTERM.
    policy = RetryPolicy(max_attempts=INT32_MAX, base_ms=250, max_ms=60_000, timeout_s=10)
    assert policy.backoff_s(INT32_MAX) == 60.0
    # 0.25 s doubling to 32 s over the first 8 waits, then 60 s each
    assert policy.budget_s() == pytest.approx(63.75 + 60 * (INT32_MAX - 9) + 10)
    assert not policy.spent(1_000, 60_000.0, policy.backoff_s(1_000))


def test_token_bucket_keeps_every_window_under_the_quota_and_pauses_for_retry_after() -> None:
    clock = FakeClock()
    bucket = TokenBucket(Quota(100, 10.0), clock=clock, sleep=clock.sleep)
    times = []
    for _ in range(500):
        bucket.acquire()
        times.append(clock.now)
    busiest = max(sum(1 for t in times if start <= t < start + 10.0) for start in times)
    assert busiest <= 100
    assert times[9] == 100.0 and times[10] > 100.0  # a burst of a tenth of the quota, then the refill rate
    assert times[-1] - times[0] == pytest.approx(490 / 8.5)

    bucket.pause_until(clock.now + 30)
    before = clock.now
    bucket.acquire()
    assert clock.now >= before + 30


def test_a_connector_without_a_quota_pauses_for_retry_after_too() -> None:
    # An unlimited connector's pause did nothing: its other deliveries went on into the Retry-After.
    limiter = limiter_for("LEADSTREAM_WEBHOOK_RATE_LIMIT", "unlimited", "webhook")
    started = time.monotonic()
    limiter.acquire()
    assert time.monotonic() - started < 0.1
    limiter.pause_until(time.monotonic() + 0.3)
    limiter.acquire()
    assert time.monotonic() - started >= 0.3


def test_a_pause_that_begins_while_a_caller_waits_for_its_slot_holds_it_too() -> None:
    clock = FakeClock()
    paused_at: list[float] = []

    def sleep(seconds: float) -> None:
        # Half a second into the first wait, another delivery gets a 429 with Retry-After: 30.
        if not paused_at:
            clock.sleep(0.5)
            paused_at.append(clock.now)
            bucket.pause_until(clock.now + 30)
            seconds -= 0.5
        clock.sleep(seconds)

    bucket = TokenBucket(Quota(10, 10.0), clock=clock, sleep=sleep)
    bucket.acquire()  # the burst's one slot
    bucket.acquire()  # waits 1.2 s for the next one, and the pause begins meanwhile
    sent = clock.now
    assert sent >= paused_at[0] + 30
    bucket.acquire()  # the slot after it: paced by the refill rate, as after any pause
    assert clock.now - sent == pytest.approx(1 / 0.85)


def test_a_stop_ends_a_wait_for_the_quota_at_once() -> None:
    # The clock stands still, so that the wait the message names is the quota's alone: on the
    # real one, a loaded machine's pause between the two acquires earned tokens (70.3 s, 70.5 s).
    # The wait itself is real: the stop event's.
    bucket = TokenBucket(Quota(1, 60.0), clock=FakeClock())
    stop = threading.Event()
    bucket.stop_on(stop)
    bucket.acquire()  # the burst's one slot
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    with pytest.raises(Stopping, match="stopped while waiting 70.6 s for the rate limit"):
        bucket.acquire()
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("text", ["100", "100/0s", "0/10s", "lots/10s", "100/10m", "1/10000000000s", f"1/{MAX_WINDOW_S + 1}s"])
def test_quota_errors_name_the_variable(text: str) -> None:
    with pytest.raises(ConfigError, match=r"LEADSTREAM_HUBSPOT_RATE_LIMIT=.* is not a rate limit"):
        Quota.parse("LEADSTREAM_HUBSPOT_RATE_LIMIT", text)


def test_a_connector_under_the_longest_quota_waits_for_its_slot_and_stops_when_told() -> None:
    # The longest window, and 72 deliveries queued for one slot each (the pool's deliveries and
    # waiting lanes): each waits (a thread's sleep has a bound: 1/10000000000s raised OverflowError).
    bucket = limiter_for("LEADSTREAM_WEBHOOK_RATE_LIMIT", f"1/{MAX_WINDOW_S}s", "webhook")
    bucket.acquire()
    stop = threading.Event()
    bucket.stop_on(stop)
    stop.set()
    for _ in range(72):
        with pytest.raises(Stopping):
            bucket.acquire()


def test_quota_parses_requests_per_window_and_unlimited() -> None:
    assert Quota.parse("X", "100000/86400s") == Quota(100_000, 86_400.0)
    assert Quota.parse("X", " unlimited ") is None


@pytest.mark.parametrize(
    ("status", "kind"),
    [(400, PermanentError), (401, CredentialsError), (403, PermanentError), (404, PermanentError), (408, RetryableError),
     (409, PermanentError), (423, RetryableError), (429, RetryableError), (500, RetryableError), (503, RetryableError)],
)
def test_http_statuses_split_into_retryable_and_permanent(status: int, kind: type) -> None:
    assert type(for_status(status, "thing", "body")) is kind


def test_retry_after_comes_from_the_header_in_seconds() -> None:
    error = for_status(429, "thing", "slow down", {"retry-after": "7"})
    assert isinstance(error, RetryableError) and error.retry_after_s == 7.0
    assert for_status(503, "thing", "", {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}).retry_after_s is None  # type: ignore[attr-defined]


@pytest.mark.parametrize("value", ["inf", "Infinity", "-inf", "nan"])
def test_a_retry_after_that_is_not_a_finite_number_is_ignored(value: str) -> None:
    assert for_status(429, "thing", "", {"Retry-After": value}).retry_after_s is None  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b"{", "the value is not JSON"),
        (b"[1]", "not a JSON object"),
        (orjson.dumps({**crossing(1), "direction": "sideways"}), "direction must be 'up' or 'down'"),
        (orjson.dumps({k: v for k, v in crossing(1).items() if k != "to_level"}), "field 'to_level' is missing"),
        (orjson.dumps({**crossing(1), "score": "high"}), "field 'score' must be a number, got a text"),
        (orjson.dumps({**crossing(1), "score": "nan"}), "field 'score' must be a number, got a text"),
        (orjson.dumps({**crossing(1), "normalized": "inf"}), "field 'normalized' must be a number, got a text"),
        (orjson.dumps({**crossing(1), "score": True}), "field 'score' must be a number, got a boolean"),
        (orjson.dumps({**crossing(1), "reasons": [{"rule": "x", "points": "NaN"}]}), "field 'reasons.points' must be a number, got a text"),
        (orjson.dumps({**crossing(1), "lead_id": None}), "field 'lead_id': expected a non-empty string"),
        (orjson.dumps({**crossing(1), "account_id": ["acme", "globex"]}), "field 'account_id' must be a string or null, got an array"),
        (orjson.dumps({**crossing(1), "kind": "account", "lead_id": {"id": 1}}), "field 'lead_id' must be a string or null, got an object"),
        (orjson.dumps({**crossing(1), "from_level": 3}), "field 'from_level' must be a string or null, got a number"),
        (orjson.dumps({**crossing(1), "grade": ["A"]}), "field 'grade' must be a string or null, got an array"),
        (orjson.dumps({**crossing(1), "temperature": True}), "field 'temperature' must be a string or null, got a boolean"),
        (orjson.dumps({**crossing(1), "reasons": [{"rule": ["x"], "points": 1}]}), "field 'reasons.rule': expected a non-empty"),
        (orjson.dumps({**crossing(1), "traits": ["vip"]}), "field 'traits' must be an object, got an array"),
        (orjson.dumps({**crossing(1), "time": 10**18}), "field 'time' is 1000000000000000000, outside years 2000-2099"),
        (orjson.dumps({**crossing(1), "time": 1763884800}), "outside years 2000-2099"),  # seconds, not ms
        (orjson.dumps({**crossing(1), "time": -1}), "outside years 2000-2099"),
        # Named, in JSON's terms (they were Python's: "string indices must be integers, not 'str'").
        (None, "a tombstone"),
        (orjson.dumps({**crossing(1), "reasons": "x"}), "field 'reasons' must be an array of objects, got a text"),
        (orjson.dumps({**crossing(1), "reasons": ["x"]}), "field 'reasons' must be an array of objects, got an array holding others"),
        (orjson.dumps({**crossing(1), "engagement": "two"}), "field 'engagement' must be a whole number, got a text"),
        (orjson.dumps({**crossing(1), "time": "yesterday"}), "field 'time' must be a whole number, got a text"),
        # JSON orjson still reads (it allows 1,024 levels), deeper than Python turns into text.
        (orjson.dumps({**crossing(1), "traits": {"title": "deep"}}).replace(b'"deep"', b"[" * 1000 + b"]" * 1000), "nests"),
        (orjson.dumps({**crossing(1), "reasons": [{"rule": "deep", "points": 1}]}).replace(b'"deep"', b"[" * 1000 + b"]" * 1000), "nests"),
    ],
)
def test_a_message_that_is_not_a_crossing_is_a_permanent_error(value: bytes | None, message: str) -> None:
    with pytest.raises(PermanentError, match=message):
        Crossing.from_json(value)


def test_an_account_crossing_needs_no_lead() -> None:
    parsed = Crossing.from_json(orjson.dumps({**crossing(1), "kind": "account", "lead_id": None}))
    assert (parsed.kind, parsed.lead_id, parsed.account_id) == ("account", "", "acme")


def test_the_shipped_mappings_are_valid() -> None:
    hubspot = load_mapping(PROJECT_ROOT / "sinks" / "mappings" / "hubspot.toml", with_deals=True)
    salesforce = load_mapping(PROJECT_ROOT / "sinks" / "mappings" / "salesforce.toml", with_deals=False)
    assert hubspot.deal is not None and hubspot.task is not None and salesforce.task is not None
    values = salesforce.record_values(Crossing.from_json(orjson.dumps(crossing(1, "mql", temperature="hot"))))
    assert values == {"Leadstream_Score__c": 61, "Leadstream_Grade__c": "A", "Rating": "Hot",
                      "Leadstream_Reasons__c": "pricing_page +30, webinar +10", "Status": "Working - Contacted"}
    assert hubspot.account is not None and salesforce.account is not None
    assert hubspot.account.deal is not None and hubspot.account.task is not None and salesforce.account.deal is None
    account = Crossing.from_json(orjson.dumps(account_crossing()))
    assert salesforce.account.record_values(account) == {
        "Leadstream_Account_Score__c": 62, "Leadstream_Account_Level__c": "buying", "Rating": "Hot",
        "Leadstream_Account_Members__c": "lead-7 +61, lead-2 +40"}
    assert hubspot.account.task.subject.format(**account.template_fields()) == "Account acme is now buying"


@pytest.mark.parametrize(
    ("toml", "with_deals", "error"),
    [
        ("fields = 3", False, "[fields]: must be a table"),
        ("[fields]\n", False, ": fields: is required"),
        ('[fields]\nscroe = "x"', False, "[fields].scroe: is not a crossing field"),
        ('[fields]\nscore = 1', False, "[fields].score: must be a string"),
        # A label instead of the API name: the CRM would refuse every crossing's update.
        ('[fields]\nscore = "Lead Score"', False, "[fields].score: must be a CRM field name"),
        ('[fields]\nscore = ""', False, "[fields].score: must be a CRM field name"),
        ('[fields]\nscore = "x"\n[levels.mql]\n"Lead Status" = "Working"', False,
         '[levels.mql].Lead Status: is not a CRM field name'),
        ('[fields]\nscore = "x"\n[account]\nid_property = "Id"\n[account.fields]\nlevel = "Account level"', False,
         "[account.fields].level: must be a CRM field name"),
        ('[fields]\nscore = "x"\n[values.grade]\nA = "a"', False, "[values].grade: translates a field that [fields] does not map"),
        ('[fields]\nscore = "x"\n[levels.mql]\nStatus = 3', False, "[levels.mql].Status: must be a string"),
        ('[fields]\nscore = "x"\n[deal]\nlevels = ["sql"]', False, ": deal: unknown key"),
        ('[fields]\nscore = "x"\n[deal]\nlevels = ["sql"]\ncrossing_id_property = "c"', True, "[deal].stage: is required"),
        ('[fields]\nscore = "x"\n[task]\nlevels = []\npriority = "HIGH"\ncrossing_id_property = "c"', False,
         "[task].levels: must be a non-empty list"),
        ('[fields]\nscore = "x"\n[task]\nlevels = ["mql"]\npriority = "HIGH"\ncrossing_id_property = "c"\n'
         'subject = "hi {firstname}"', False, "[task].subject: uses {firstname}"),
        # Names it may use, in a form no crossing fills in: refused on start, not at each crossing after its update.
        ('[fields]\nscore = "x"\n[task]\nlevels = ["mql"]\npriority = "HIGH"\ncrossing_id_property = "c"\n'
         'subject = "{email} is {level!u}"', False, "[task].subject: cannot be filled in"),
        ('[fields]\nscore = "x"\n[deal]\nlevels = ["sql"]\nstage = "s"\ncrossing_id_property = "c"\n'
         'name = "{email} ({score:d} points)"', True, "[deal].name: cannot be filled in"),
        ('[fields]\nscore = "x"\n[account]\nid_property = "Id"\nfields = {score = "y"}\n[account.task]\nlevels = ["b"]\n'
         'priority = "High"\ncrossing_id_property = "c"\nbody = "{account_id:>{width}}"', False,
         "[account.task].body: cannot be filled in"),
        ('[fields]\nscore = "x"\n[task]\nlevels = ["mql"]\npriority = "HIGH"\ncrossing_id_property = "c"\n'
         "due_in_hours = 0", False, "[task].due_in_hours: must be a whole number from 1 to 8784"),
        # Accepted, it made every task's delivery fail (a due date past the year 9999), 8 times, then dead-lettered.
        ('[fields]\nscore = "x"\n[task]\nlevels = ["mql"]\npriority = "HIGH"\ncrossing_id_property = "c"\n'
         "due_in_hours = 100000000", False, "[task].due_in_hours: must be a whole number from 1 to 8784, not 100000000"),
        ('[fields]\nscore = "x"\n[task]\nlevels = ["mql"]\npriority = "HIGH"', False,
         "[task].crossing_id_property: is required"),
        ("[fields\n", False, "not valid TOML"),
        ('[fields]\nscore = "x"\n[account]\n[account.fields]\nscore = "y"', False, "[account].id_property: is required"),
        ('[fields]\nscore = "x"\n[account]\nid_property = "Id"', False, "[account].fields: is required"),
        ('[fields]\nscore = "x"\n[account]\nid_property = "Id"\n[account.fields]\ngrade = "y"', False,
         "[account.fields].grade: is not a field of account crossings"),
        ('[fields]\nscore = "x"\n[account]\nid_property = "Id"\n[account.fields]\nscore = "y"\n[account.values.level]\n'
         'buying = "B"', False, "[account.values].level: translates a field that [account.fields] does not map"),
        ('[fields]\nscore = "x"\n[account]\nid_property = "Id"\nfields = {score = "y"}\n[account.deal]\nlevels = ["b"]',
         False, "[account].deal: unknown key"),
        ('[fields]\nscore = "x"\n[account]\nid_property = "Id"\nfields = {score = "y"}\n[account.task]\nlevels = ["b"]\n'
         'priority = "High"\ncrossing_id_property = "c"\nsubject = "{email} is hot"', False,
         "[account.task].subject: uses {email}"),
        ('[fields]\nscore = "x"\n[account]\nid_property = "Id"\nfields = {score = "y"}\n[account.levels.buying]\nStatus = 1',
         False, "[account.levels.buying].Status: must be a string"),
        ('[fields]\nscore = "x"\n[account]\nid_property = "Id = \'x\' OR Name"\nfields = {score = "y"}', False,
         "[account].id_property: must be a CRM field name"),
        ('[fields]\nscore = "x"\n[task]\nlevels = ["mql"]\npriority = "HIGH"\ncrossing_id_property = "c d"', False,
         "[task].crossing_id_property: must be a CRM field name"),
        ('[fields]\nscore = "x"\n[levels.mql]\nStatus = "Working"\n[replaces]\nRating = ["Hot"]', False,
         "[replaces].Rating: is not a field a [levels.*] table sets"),
        ('[fields]\nscore = "x"\n[levels.mql]\nStatus = "Working"\n[replaces]\nStatus = "Open"', False,
         '[replaces].Status: must be a list of values'),
    ],
)
def test_mapping_errors_name_the_file_and_the_field(tmp_path: Path, toml: str, with_deals: bool, error: str) -> None:
    path = tmp_path / "crm.toml"
    path.write_text(toml)
    with pytest.raises(MappingError) as raised:
        load_mapping(path, with_deals=with_deals)
    assert str(raised.value).startswith(f"{path}: ") and error in str(raised.value)


def test_a_missing_mapping_file_says_where_the_examples_are(tmp_path: Path) -> None:
    with pytest.raises(MappingError, match="no such mapping file; copy the example from sinks/mappings/"):
        load_mapping(tmp_path / "hubspot.toml", with_deals=True)


def test_the_workers_crossing_records_parse() -> None:
    """Contract with the producer: what scoring.thresholds.Transition writes is a Crossing."""
    from scoring.thresholds import Transition

    written = Transition(
        kind="lead", model="b2b", lead_id="lead-42", account_id=None, sequence=3, from_level="nurture",
        to_level="mql", direction="up", score=47.0, normalized=61.5, grade=None, engagement=None, cell=None,
        temperature="warm", time_ms=1763884800000, reasons=({"rule": "pricing_page", "points": 30},),
        traits={"email": "jane@acme.io", "employees": 250},
    )
    parsed = Crossing.from_json(orjson.dumps(written.to_dict()))
    assert (parsed.id, parsed.lead_id, parsed.to_level, parsed.grade) == (written.id, "lead-42", "mql", "")
    assert parsed.template_fields()["normalized"] == 61.5 and parsed.template_fields()["score"] == 47
    assert parsed.traits == {"email": "jane@acme.io", "employees": "250"} and parsed.reasons_text() == "pricing_page +30"


def test_the_workers_account_crossings_parse_and_name_their_members() -> None:
    """An account crossing made by the roll-up itself: its reasons are members, named by lead id."""
    from scoring import Engine, MemberScore
    from scoring.accounts import roll_up_all

    engine = Engine.from_directory(PROJECT_ROOT / "scoring" / "models")
    runtime = engine.runtime("b2b")
    # Member scores carry their lead's newest event time: a time events may have.
    state, transitions = roll_up_all(runtime, "acme", None, [MemberScore("b2b", "acme", "lead-7", 70.0, 1763884800000)])
    _, transitions = roll_up_all(runtime, "acme", state, [MemberScore("b2b", "acme", "lead-2", 90.0, 1763884801000)])
    [written] = [t for t in transitions if t.to_level == "buying"]
    parsed = Crossing.from_json(orjson.dumps(written.to_dict()))
    assert (parsed.kind, parsed.account_id, parsed.lead_id, parsed.grade) == ("account", "acme", "lead-2", "")
    assert parsed.reasons_text() == "lead-2 +90, lead-7 +70"


#: SIGTERM twice while the main thread holds the stop event's lock (as inside `stop.wait`).
_SIGNALLED_HOLDING_THE_LOCK = """
import os, signal, sys, threading
from sinks.runner import stop_on_signals
stop = threading.Event()
stop_on_signals(stop)
with stop._cond:
    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGTERM)
    sum(range(100_000))  # bytecodes: the handlers run here
sys.exit(0 if stop.wait(10) else 3)
"""


def test_a_connector_told_to_stop_while_it_holds_the_stop_event_s_lock_stops() -> None:
    # The handler set the event itself, in the main thread: it waited for the lock its own
    # thread held, and the connector hung for good (seen under `timeout`, which signals twice).
    done = subprocess.run([sys.executable, "-c", _SIGNALLED_HOLDING_THE_LOCK], cwd=PROJECT_ROOT, timeout=30, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_a_mapping_s_levels_that_no_model_has_are_named(tmp_path: Path) -> None:
    # A typo validated: SQL crossings then set no lifecycle stage and created no deal.
    models = load_directory(PROJECT_ROOT / "scoring" / "models")
    for name, with_deals in (("hubspot.toml", True), ("salesforce.toml", False)):
        assert levels_no_model_has(load_mapping(PROJECT_ROOT / "sinks" / "mappings" / name, with_deals=with_deals), models) == []
    text = (PROJECT_ROOT / "sinks" / "mappings" / "hubspot.toml").read_text()
    (tmp_path / "hubspot.toml").write_text(text.replace("[levels.sql]", "[levels.sqll]").replace('levels = ["sql"]', 'levels = ["sqll"]', 1)
                                            .replace('[account.deal]\nlevels = ["buying"]', '[account.deal]\nlevels = ["engaged", "buyin"]'))
    assert levels_no_model_has(load_mapping(tmp_path / "hubspot.toml", with_deals=True), models) == [
        "hubspot.toml [levels.sqll]: 'sqll'", "hubspot.toml [deal] levels: 'sqll'", "hubspot.toml [account.deal] levels: 'buyin'"]


def test_the_shipped_models_keep_the_traits_the_crm_connectors_find_records_by_and_a_connector_warns_of_one_none_keeps(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # b2b kept neither hubspot_id nor salesforce_id: a lead identified by them alone had its
    # crossings dead-lettered as having neither trait.
    from sinks.connectors import warn_of_what_no_model_has
    from sinks.hubspot import HubSpotSink
    from streams.settings import Settings

    for model in load_directory(PROJECT_ROOT / "scoring" / "models"):
        assert {*HubSpotSink.lookup_traits, "salesforce_id"} <= model.keep_traits, model.name
    (tmp_path / "b2b.toml").write_text((PROJECT_ROOT / "scoring" / "models" / "b2b.toml").read_text()
                                       .replace('"hubspot_id", ', ""))
    mapping = load_mapping(PROJECT_ROOT / "sinks" / "mappings" / "hubspot.toml", with_deals=True)
    settings = Settings.from_env().with_overrides(models_dir=tmp_path)

    warn_of_what_no_model_has(mapping, HubSpotSink.lookup_traits, settings)

    assert (f"no model in LEADSTREAM_MODELS_DIR={tmp_path} keeps the trait hubspot_id, by which the connector finds a "
            "lead's record (it tries hubspot_id, then email): crossings carry only the traits their model's keep_traits "
            "lists, so no record is found by it; add hubspot_id to keep_traits") in caplog.text
