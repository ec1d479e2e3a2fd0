"""The Segment-spec mapping (streams/segment.py) and the collector's configuration, without a broker."""

from __future__ import annotations

import codecs
import json
import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from scoring.engine import Engine
from scoring.events import parse_message, read_json
from streams.collector import _rejection, load_sources
from streams.errors import ConfigError, RequestRejected
from streams.segment import Mapper, Source, canonical_traits, event_time_ms, snake_case, with_batch_context

RECEIVED = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MAX_FUTURE_MS = 3_600_000  # LEADSTREAM_MAX_FUTURE_MS's default
MODELS = Path(__file__).parents[2] / "scoring" / "models"
SITE = Source("website")


def mapped(call: dict[str, Any], call_type: str | None = None, source: Source = SITE, sent_at: object = None) -> tuple[bool, dict[str, Any]]:
    result = Mapper("snake_case", MAX_FUTURE_MS).map(call, call_type, source, RECEIVED, sent_at)
    event = orjson.loads(result.value)
    assert result.lead_id == event["lead_id"]
    return result.profile, event


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Pricing Viewed", "pricing_viewed"),
        ("PricingViewed", "pricing_viewed"),
        ("pricing-viewed", "pricing_viewed"),
        ("  Signed Up!  ", "signed_up"),
        ("URLClicked", "url_clicked"),
        ("Demo Requested (v2)", "demo_requested_v2"),
        ("Präsentation Angesehen", "präsentation_angesehen"),
        ("already_snake", "already_snake"),
    ],
)
def test_event_names_are_normalised_to_snake_case(name: str, expected: str) -> None:
    assert snake_case(name) == expected


def test_verbatim_event_names_are_kept_as_sent() -> None:
    call = {"userId": "u1", "event": "Pricing Viewed", "messageId": "m"}
    assert orjson.loads(Mapper("verbatim", MAX_FUTURE_MS).map(call, "track", SITE, RECEIVED).value)["type"] == "Pricing Viewed"


def test_an_unknown_naming_style_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="LEADSTREAM_COLLECTOR_EVENT_NAMES"):
        Mapper("camelCase", MAX_FUTURE_MS)


def test_track_maps_to_the_normalised_event_with_its_properties() -> None:
    profile, event = mapped(
        {
            "type": "track",
            "userId": "u-1",
            "anonymousId": "a-1",
            "event": "Pricing Viewed",
            "properties": {"plan": "pro"},
            "timestamp": "2026-01-01T00:00:00.500+01:00",
            "messageId": "m-1",
            "context": {"groupId": "acme", "traits": {"email": "ada@example.com"}, "app": {"name": "console"}},
        }
    )
    assert not profile
    assert event == {
        "event_id": "m-1",
        "lead_id": "u-1",
        "type": "pricing_viewed",
        "time": RECEIVED - 3600_000 + 500,
        "received_at": RECEIVED,
        "properties": {"plan": "pro"},
        "traits": {"email": "ada@example.com"},
        "account_id": "acme",
        "product": "console",
        "anonymous_id": "a-1",
        "source": "website",
    }


def test_page_maps_to_a_page_view_with_fields_from_context_and_time_on_page() -> None:
    profile, event = mapped(
        {
            "anonymousId": "a-2",
            "name": "Pricing",
            "properties": {"title": "Pricing - Acme", "time_on_page_s": 4.2},
            "context": {"page": {"url": "https://acme.test/pricing?x=1", "referrer": "https://google.com/", "title": "ignored"}},
            "messageId": "m-2",
        },
        "page",
        source=Source("website", product="marketing"),
    )
    assert not profile
    assert event["lead_id"] == "anon:a-2"
    assert event["type"] == "page_view"
    assert event["time"] == RECEIVED  # no timestamp at all: the arrival time
    assert event["product"] == "marketing"
    assert event["properties"] == {
        "title": "Pricing - Acme",
        "time_on_page_s": 4.2,
        "url": "https://acme.test/pricing?x=1",
        "referrer": "https://google.com/",
        "path": "/pricing",
        "search": "?x=1",
        "name": "Pricing",
    }


OPEN_PAGE = {"url": "https://acme.io/pricing", "path": "/pricing", "title": "Pricing", "referrer": "https://google.com/", "search": ""}


@pytest.mark.parametrize(
    ("own", "page", "expected"),
    [
        # The call names another page than the open one: nothing of the open one is its.
        ({"url": "https://acme.io/demo"}, OPEN_PAGE, {"url": "https://acme.io/demo", "path": "/demo"}),
        ({"url": "https://acme.io/demo?utm_source=ad"}, OPEN_PAGE,
         {"url": "https://acme.io/demo?utm_source=ad", "path": "/demo", "search": "?utm_source=ad"}),
        ({"url": "https://acme.io/demo", "title": "Demo"}, OPEN_PAGE, {"url": "https://acme.io/demo", "title": "Demo", "path": "/demo"}),
        # A context.page without a url is not known to be the call's page.
        ({"url": "https://acme.io/demo"}, {"path": "/pricing", "title": "Pricing"}, {"url": "https://acme.io/demo", "path": "/demo"}),
        # The same page: its fields fill the call's gaps.
        ({"url": "https://acme.io/pricing", "title": "Plans"}, OPEN_PAGE, {**OPEN_PAGE, "title": "Plans"}),
        ({}, OPEN_PAGE, OPEN_PAGE),
        ({"url": None}, OPEN_PAGE, {**OPEN_PAGE, "url": None}),
        ({}, {"url": "https://acme.io/pricing?plan=pro"}, {"url": "https://acme.io/pricing?plan=pro", "path": "/pricing", "search": "?plan=pro"}),
    ],
)  # fmt: skip
def test_a_page_views_fields_come_from_context_page_only_when_it_is_the_calls_page(
    own: dict[str, Any], page: dict[str, Any], expected: dict[str, Any]
) -> None:
    """analytics.js's page(properties={"url": ".../demo"}) from the pricing page sent context.page
    with the pricing page's url, path and title: the view was written with path "/pricing" and
    title "Pricing", and a rule on the path scored the demo page as a pricing view."""
    _, event = mapped({"userId": "u-1", "properties": own, "context": {"page": page}}, "page")
    assert event["properties"] == expected


def test_the_browsers_user_agent_is_a_property_the_b2b_spam_bot_rule_reads() -> None:
    """analytics.js and the page snippet send the user agent as context.userAgent only: the
    shipped b2b model's spam bot rule (-50) reads properties.user_agent, so no web page view
    through the collector could ever meet it. A user_agent the call sends itself is kept."""
    bot = "Mozilla/5.0 (X11; Linux x86_64) HeadlessChrome/120.0 Safari/537.36"
    call = {"anonymousId": "a-9", "properties": {"url": "https://acme.test/pricing"}, "context": {"userAgent": bot}}
    _, event = mapped(call, "page", source=Source("website", product="b2b"))
    assert event["properties"]["user_agent"] == bot
    engine = Engine.from_directory(MODELS)
    result = engine.apply_batch(parse_message(orjson.dumps(event)), lambda model, lead: None)
    assert [rule for rule in result.states[("b2b", "anon:a-9")].ledger] == ["pricing page", "spam bot"]
    _, own = mapped({**call, "properties": {"url": "https://acme.test/", "user_agent": "curl/8"}}, "page")
    assert own["properties"]["user_agent"] == "curl/8"
    profile, identify = mapped({"userId": "u-1", "traits": {}, "context": {"userAgent": bot}}, "identify")
    assert profile and "user_agent" not in identify["properties"]


def test_identify_is_a_profile_update_with_the_fit_traits_flattened() -> None:
    profile, event = mapped(
        {
            "type": "identify",
            "userId": 42,
            "traits": {"email": "ada@acme.test", "title": "CTO", "company": {"name": "Acme", "employee_count": 250, "industry": "Software"},
                       "address": {"country": "DE"}},
            "messageId": "m-3",
            "timestamp": "2026-01-01T00:00:00Z",
        }
    )
    assert profile
    assert event["lead_id"] == "42"
    assert event["type"] == "identify"
    assert event["traits"]["email"] == "ada@acme.test"
    assert (event["traits"]["company_size"], event["traits"]["industry"], event["traits"]["country"]) == (250, "Software", "DE")


def test_group_gives_the_account_id_and_only_the_account_fit_traits() -> None:
    account = {"name": "Acme", "email": "billing@acme.io", "phone": "+1 555 0100", "website": "acme.io",
               "employees": 80, "industry": "Retail", "address": {"country": "US"}}  # fmt: skip
    profile, event = mapped({"type": "group", "userId": "u-1", "groupId": "acme", "traits": account, "messageId": "m"})
    assert profile
    assert (event["type"], event["account_id"]) == ("group", "acme")
    assert event["traits"] == {"company_size": 80, "industry": "Retail", "country": "US"}


@pytest.mark.parametrize(
    ("traits", "expected"),
    [
        ({"employee_count": 12}, {"company_size": 12}),
        ({"company_size": 30, "employees": 12, "country": "FR", "address": {"country": "US"}}, {"company_size": 30, "country": "FR"}),
        ({"name": "Acme", "email": "billing@acme.io"}, None),
    ],
)
def test_group_fit_traits_are_read_where_segment_puts_them(traits: dict[str, Any], expected: dict[str, Any] | None) -> None:
    assert mapped({"userId": "u-1", "groupId": "acme", "traits": traits}, "group")[1].get("traits") == expected


def test_a_group_call_leaves_the_persons_traits_to_the_person() -> None:
    engine = Engine.from_directory(MODELS)
    identify = {"userId": "u-1", "traits": {"email": "ada@acme.io", "name": "Ada Lovelace"}, "messageId": "m1"}
    group = {"userId": "u-1", "groupId": "acme", "traits": {"name": "Acme Inc", "email": "billing@acme.io", "employees": 250},
             "context": {"traits": {"title": "VP Marketing"}}, "messageId": "m2"}  # fmt: skip
    states: dict[tuple[str, str], Any] = {}
    for call, kind in ((identify, "identify"), (group, "group")):
        value = Mapper("snake_case", MAX_FUTURE_MS).map(call, kind, Source("website", "b2b"), RECEIVED).value
        states.update(engine.apply_batch(parse_message(value), lambda model, lead: states.get((model, lead))).states)
    traits = states[("b2b", "u-1")].traits
    assert (traits["email"], traits["title"], traits["company_size"]) == ("ada@acme.io", "VP Marketing", 250)


@pytest.mark.parametrize(
    ("sent", "size"),
    [
        ("329", 329),  # Segment's Group spec types `employees` as a String
        (" 329 ", 329),
        ("0042", 42),
        (329, 329),
        (329.5, 329.5),
        # Only an unambiguous whole number: the rest stays as sent, for a rule on the text to read.
        ("1,200", "1,200"),  # 1200, or 1.2 where the comma is the decimal mark
        ("1.200", "1.200"),
        ("329.0", "329.0"),
        ("10-50", "10-50"),
        ("-5", "-5"),
        ("+5", "+5"),
        ("", ""),
        ("\u0663\u0662\u0669", "\u0663\u0662\u0669"),  # Arabic-Indic digits, which int() would read
        ("9" * 19, "9" * 19),  # beyond the 64 bits a lead's state keeps
    ],
)
def test_a_size_sent_as_a_whole_numbers_text_is_that_number(sent: object, size: object) -> None:
    _, group = mapped({"userId": "u-1", "groupId": "acme", "traits": {"employees": sent}}, "group")
    _, identify = mapped({"userId": "u-1", "traits": {"company": {"employee_count": sent}}}, "identify")
    _, flat = mapped({"userId": "u-1", "traits": {"company_size": sent}}, "identify")
    for traits in (group["traits"], identify["traits"], flat["traits"]):
        assert (traits["company_size"], type(traits["company_size"])) == (size, type(size))
    assert identify["traits"]["company"] == {"employee_count": sent}  # Segment's own trait as sent


def test_a_size_sent_as_text_earns_the_b2b_models_fit_points() -> None:
    """The b2b model's size rules compare numbers only (`gte = 200, lt = 5000`): a group's
    `employees: "329"`, as Segment's spec types it, earned nothing."""
    engine = Engine.from_directory(MODELS)
    for call, kind in (({"userId": "u-1", "groupId": "acme", "traits": {"employees": "329"}}, "group"),
                       ({"userId": "u-2", "traits": {"company": {"employee_count": "329"}}}, "identify")):  # fmt: skip
        value = Mapper("snake_case", MAX_FUTURE_MS).map(call, kind, Source("website", "b2b"), RECEIVED).value
        (state,) = engine.apply_batch(parse_message(value), lambda model, lead: None).states.values()
        assert state.fit == 5, call  # target company size


def test_alias_keeps_the_previous_id_for_stitching() -> None:
    profile, event = mapped({"type": "alias", "userId": "u-9", "previousId": "a-9", "messageId": "m"})
    assert profile
    assert (event["lead_id"], event["type"], event["previous_id"]) == ("u-9", "alias", "a-9")


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        ({"userId": "u"}, {"userId": "u", "context": {"app": {"name": "b2b"}, "page": {"url": "https://acme.io/", "title": "Home"}}}),
        ({"userId": "u", "context": {"page": {"title": "Pricing"}, "groupId": "acme"}},
         {"userId": "u", "context": {"app": {"name": "b2b"}, "page": {"url": "https://acme.io/", "title": "Pricing"}, "groupId": "acme"}}),
        ({"userId": "u", "context": {"app": "console", "page": None}}, {"userId": "u", "context": {"app": "console", "page": None}}),
        ({"userId": "u", "context": "web"}, {"userId": "u", "context": "web"}),  # refused by the mapper as it is
        ("not a call", "not a call"),
    ],
)  # fmt: skip
def test_a_batchs_context_goes_under_each_calls_own(call: object, expected: object) -> None:
    batch = {"app": {"name": "b2b"}, "page": {"url": "https://acme.io/", "title": "Home"}}
    assert with_batch_context(call, batch) == expected
    assert batch == {"app": {"name": "b2b"}, "page": {"url": "https://acme.io/", "title": "Home"}}  # shared by every call, untouched


def test_merging_a_batchs_context_stops_at_the_nesting_events_may_have() -> None:
    deep_batch: dict[str, Any] = {"x": "batch"}
    deep_call: dict[str, Any] = {"y": "call"}
    for _ in range(5000):  # far deeper than Python's recursion limit
        deep_batch, deep_call = {"k": deep_batch}, {"k": deep_call}
    merged = with_batch_context({"userId": "u", "context": deep_call}, deep_batch)
    assert isinstance(merged, dict) and merged["context"]["k"]["k"] is not None


def test_flat_traits_already_sent_win_over_nested_ones() -> None:
    assert canonical_traits({"industry": "Banking", "company": {"industry": "Software"}})["industry"] == "Banking"


@pytest.mark.parametrize(
    ("call", "sent_at", "expected"),
    [
        ({"timestamp": "2026-01-01T00:00:01Z", "originalTimestamp": "2020-01-01T00:00:00Z"}, None, RECEIVED + 1000),
        # The client's clock runs 1 h ahead; it sent the call 5 s after it happened.
        ({"originalTimestamp": "2026-01-01T00:59:55Z", "sentAt": "2026-01-01T01:00:00Z"}, None, RECEIVED - 5000),
        ({"originalTimestamp": "2026-01-01T00:59:55Z"}, "2026-01-01T01:00:00Z", RECEIVED - 5000),
        ({"originalTimestamp": "2026-01-01T00:00:02"}, None, RECEIVED + 2000),  # no offset: UTC
        ({}, "2026-01-01T01:00:00Z", RECEIVED),
        # A server library's `timestamp` from a host clock 2 h fast, sent with `sentAt` by the same clock.
        ({"timestamp": "2026-01-01T01:59:55Z", "sentAt": "2026-01-01T02:00:00Z"}, None, RECEIVED - 5000),
        ({"timestamp": "2026-01-01T01:59:55Z"}, "2026-01-01T02:00:00Z", RECEIVED - 5000),
        # Without `sentAt` a time is taken as sent: up to LEADSTREAM_MAX_FUTURE_MS ahead.
        ({"timestamp": "2026-01-01T01:00:00Z"}, None, RECEIVED + MAX_FUTURE_MS),
        # RFC 3339 allows "t" and "z", as events' own times do: the collector refused them.
        ({"originalTimestamp": "2026-01-01t00:00:02.000z"}, None, RECEIVED + 2000),
        # A call's own `sentAt: null` is none of its own: it turned the batch's off.
        ({"originalTimestamp": "2026-01-01T00:59:55Z", "sentAt": None}, "2026-01-01T01:00:00Z", RECEIVED - 5000),
    ],
)
def test_event_time_follows_segments_rules(call: dict[str, Any], sent_at: object, expected: int) -> None:
    assert event_time_ms(call, RECEIVED, sent_at, max_future_ms=MAX_FUTURE_MS) == expected


@pytest.mark.parametrize(
    ("call", "sent_at", "given"),
    [
        ({"timestamp": "2026-01-01T02:00:00Z"}, None, "`timestamp` '2026-01-01T02:00:00Z' puts the call 7,200 s ahead"),
        ({"originalTimestamp": "2026-01-01T01:00:01Z"}, None, "`originalTimestamp` '2026-01-01T01:00:01Z' puts the call 3,601 s ahead"),
        # Sent 2 h before it happened, by the client's own clock.
        ({"timestamp": "2026-01-01T12:00:00Z", "sentAt": "2026-01-01T10:00:00Z"}, None,
         "`timestamp` '2026-01-01T12:00:00Z', corrected for the client's clock by `sentAt` '2026-01-01T10:00:00Z', puts"),
        ({"originalTimestamp": "2026-01-01T12:00:00Z"}, "2026-01-01T10:00:00Z", "`originalTimestamp` '2026-01-01T12:00:00Z', corrected"),
    ],
)  # fmt: skip
def test_a_call_timed_further_ahead_than_the_worker_accepts_is_refused_naming_the_field(
    call: dict[str, Any], sent_at: object, given: str
) -> None:
    with pytest.raises(RequestRejected) as caught:
        Mapper("snake_case", MAX_FUTURE_MS).map({"userId": "u", "event": "A", **call}, "track", SITE, RECEIVED, sent_at)
    assert caught.value.code == "future_time"
    assert str(caught.value).startswith(given)
    assert "LEADSTREAM_MAX_FUTURE_MS" in str(caught.value)


@pytest.mark.parametrize(
    ("call", "sent_at", "given"),
    [
        ({"timestamp": "1999-12-31T23:59:59Z"}, None, "`timestamp` '1999-12-31T23:59:59Z' gives"),
        ({"originalTimestamp": "1970-01-21T06:00:00Z"}, None, "`originalTimestamp` '1970-01-21T06:00:00Z' gives"),
        ({"originalTimestamp": "2026-01-01T00:00:00Z"}, "2070-01-01T00:00:00Z",
         "`originalTimestamp` '2026-01-01T00:00:00Z', corrected for the client's clock by `sentAt` '2070-01-01T00:00:00Z', gives"),
        ({"timestamp": "2150-01-01T00:00:00Z"}, None, "`timestamp` '2150-01-01T00:00:00Z' gives"),
    ],
)  # fmt: skip
def test_a_time_outside_the_engines_years_is_refused_naming_the_field_the_client_sent(
    call: dict[str, Any], sent_at: object, given: str
) -> None:
    with pytest.raises(RequestRejected) as caught:
        Mapper("snake_case", 0).map({"userId": "u", "event": "A", **call}, "track", SITE, RECEIVED, sent_at)
    assert caught.value.code == "bad_field"
    assert str(caught.value) == f"{given} a time outside the years 2000-2099 the scoring engine accepts: send when the call happened"


def test_a_call_refused_as_ahead_of_a_clock_moved_back_names_the_offset() -> None:
    # The worker's clock, which the collector's arrival times follow, was named without its offset.
    with pytest.raises(RequestRejected) as caught:
        Mapper("snake_case", MAX_FUTURE_MS, clock_offset_ms=-86_400_000).map(
            {"userId": "u", "event": "A", "timestamp": "2026-01-01T02:00:00Z"}, "track", SITE, RECEIVED)
    assert str(caught.value) == (
        "`timestamp` '2026-01-01T02:00:00Z' puts the call 7,200 s ahead of the collector's clock (the wall clock moved by "
        "LEADSTREAM_CLOCK_OFFSET_MS=-86400000, reading 2026-01-01T00:00:00+00:00), more than the 3,600 s LEADSTREAM_MAX_FUTURE_MS "
        "allows (the worker would refuse it too): send when the call happened, with its UTC offset")


def test_a_leap_second_is_refused_saying_so() -> None:
    with pytest.raises(RequestRejected) as caught:
        mapped({"userId": "u", "event": "A", "timestamp": "2016-12-31T23:59:60Z"}, "track")
    assert caught.value.code == "bad_field"
    assert str(caught.value) == ("`timestamp` is not an ISO-8601 date-time: '2016-12-31T23:59:60Z' (leap seconds, second 60, "
                                 "are not accepted: send :59.999 or the second after it, :00)")


def test_no_future_limit_when_the_worker_has_none() -> None:
    call = {"userId": "u", "event": "A", "timestamp": "2027-01-01T00:00:00Z"}
    assert orjson.loads(Mapper("snake_case", 0).map(call, "track", SITE, RECEIVED).value)["time"] == 1_798_761_600_000


def test_a_call_without_message_id_gets_a_content_hash_that_ignores_sent_at() -> None:
    call = {"userId": "u", "event": "A", "timestamp": "2026-01-01T00:00:00Z"}
    first = mapped({**call, "sentAt": "2026-01-01T00:00:01Z"}, "track")[1]
    retry = mapped({**call, "sentAt": "2026-01-01T00:00:09Z"}, "track")[1]
    other = mapped({**call, "event": "B"}, "track")[1]
    assert first["event_id"] == retry["event_id"] != other["event_id"]
    assert first["event_id"].startswith("sha256:")


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (({"userId": "u", "name": "Home"}, "page", RECEIVED), ({"userId": "u", "name": "Home"}, "screen", RECEIVED)),
        (({"userId": "u"}, "identify", RECEIVED), ({"userId": "u"}, "page", RECEIVED)),
        (({"type": "identify", "userId": "u"}, "page", RECEIVED), ({"type": "identify", "userId": "u"}, None, RECEIVED)),
        # No time of its own: the same call a day later happened again.
        (({"userId": "u", "event": "Login"}, "track", RECEIVED), ({"userId": "u", "event": "Login"}, "track", RECEIVED + 86_400_000)),
    ],
)
def test_distinct_calls_without_message_id_get_distinct_event_ids(
    first: tuple[dict[str, Any], str | None, int], second: tuple[dict[str, Any], str | None, int]
) -> None:
    ids = [orjson.loads(Mapper("snake_case", MAX_FUTURE_MS).map(call, kind, SITE, at).value)["event_id"] for call, kind, at in (first, second)]
    assert ids[0] != ids[1]


def test_a_timed_call_without_message_id_retried_later_keeps_its_event_id() -> None:
    call = {"userId": "u", "event": "Login", "originalTimestamp": "2025-12-31T23:59:00Z"}
    ids = {orjson.loads(Mapper("snake_case", MAX_FUTURE_MS).map(call, "track", SITE, at).value)["event_id"] for at in (RECEIVED, RECEIVED + 60_000)}
    assert len(ids) == 1


@pytest.mark.parametrize(
    ("call", "call_type", "code"),
    [
        ([1, 2], None, "bad_call"),
        ({"userId": "u"}, None, "bad_type"),
        ({"type": "purchase", "userId": "u"}, None, "bad_type"),
        ({"type": "track", "event": "A"}, None, "missing_identity"),
        ({"userId": "", "anonymousId": "", "event": "A"}, "track", "missing_identity"),
        ({"userId": "u"}, "track", "missing_event"),
        ({"userId": "u", "event": "  "}, "track", "missing_event"),
        ({"userId": "u", "event": 5}, "track", "bad_field"),  # it was missing_event, as if not sent
        ({"userId": "u", "event": "!!!"}, "track", "bad_event"),
        ({"userId": "u", "groupId": ""}, "group", "missing_group_id"),
        ({"userId": "u"}, "alias", "missing_previous_id"),
        ({"anonymousId": "a", "previousId": "p"}, "alias", "missing_user_id"),
        ({"userId": True, "event": "A"}, "track", "bad_field"),
        ({"userId": "u", "event": "A", "properties": [1]}, "track", "bad_field"),
        ({"userId": "u", "event": "A", "context": "web"}, "track", "bad_field"),
        ({"userId": "u", "event": "A", "timestamp": "yesterday"}, "track", "bad_field"),
        ({"userId": "u", "event": "A", "timestamp": 1767225600000}, "track", "bad_field"),
        ({"userId": "u", "traits": "x"}, "identify", "bad_field"),
        ({"userId": "u", "properties": {"time_on_page_s": -1}}, "page", "bad_field"),
        ({"userId": "u", "properties": {"time_on_page_s": "10s"}}, "page", "bad_field"),
        ({"userId": "u", "event": "A", "messageId": {"id": 1}}, "track", "bad_field"),
        # What the scoring engine would refuse is refused at the door.
        ({"userId": "u" * 257, "event": "A"}, "track", "bad_field"),
        ({"userId": "u", "event": "A", "timestamp": "1999-12-31T23:59:59Z"}, "track", "bad_field"),
        ({"userId": "u", "event": "A", "properties": {str(i): i for i in range(300)}}, "track", "bad_field"),
        # ids the worker could not stitch: the visitor's lead id would be too long, or hold a control character
        ({"userId": "u", "anonymousId": "a" * 252}, "identify", "bad_field"),
        ({"userId": "u", "anonymousId": "a\x07"}, "identify", "bad_field"),
        ({"userId": "u", "previousId": "p" * 257}, "alias", "bad_field"),
        ({"userId": "u", "previousId": "p\n"}, "alias", "bad_field"),
        # A user id the visitor with anonymousId `v` would share a profile with.
        ({"userId": "anon:v", "event": "A"}, "track", "bad_field"),
        ({"userId": "anon:v", "anonymousId": "v"}, "identify", "bad_field"),
        ({"userId": "anon:v", "previousId": "u"}, "alias", "bad_field"),
    ],
)
def test_calls_that_cannot_be_mapped_are_rejected_with_a_reason(call: Any, call_type: str | None, code: str) -> None:
    with pytest.raises(RequestRejected) as caught:
        Mapper("snake_case", MAX_FUTURE_MS).map(call, call_type, SITE, RECEIVED)
    assert (caught.value.status, caught.value.code) == (400, code)
    assert str(caught.value)


@pytest.mark.parametrize(("call", "call_type", "said"), [
    ({"type": None, "userId": "u"}, None, "`type` is null; it must be one of"),
    ({"userId": True, "event": "A"}, "track", "must be a string or an integer, not true"),
    # orjson reads such an integer as a float (1.2345678901234569e+32): the message said that, not a float.
    ({"userId": 123456789012345678901234567890123, "event": "A"}, "track", "`userId` holds an integer beyond 64 bits"),
    ({"userId": "u", "event": "A", "properties": [1]}, "track", "`properties` must be a JSON object, not an array"),
    ({"userId": "anon:g7-v", "event": "A"}, "track", "`userId` must not start with 'anon:', the prefix reserved for anonymous visitors'"),
    # It said ">= 0, not 9007199254740992", which is: the bound it broke was unsaid.
    ({"userId": "u", "properties": {"time_on_page_s": 2**53}}, "page", "seconds >= 0 and < 2**53, not 9007199254740992"),
])
def test_rejections_show_the_value_as_the_call_wrote_it(call: Any, call_type: str | None, said: str) -> None:
    # In Python's spelling, they said None, True and list. Read as the collector reads a body.
    with pytest.raises(RequestRejected, match=re.escape(said)):
        Mapper("snake_case", MAX_FUTURE_MS).map(read_json(json.dumps(call)), call_type, SITE, RECEIVED)


BIG = "12345678901234567890123"


@pytest.mark.parametrize(("body", "call_type", "field"), [
    (f'{{"userId":"u-1","traits":{{"hubspot_id":{BIG}}}}}', "identify", "traits.hubspot_id"),
    (f'{{"userId":"u-1","context":{{"traits":{{"email":[{BIG}]}}}}}}', "identify", "traits.email"),
    (f'{{"userId":"u-1","event":"Paid","properties":{{"order":{BIG}}}}}', "track", "properties.order"),
    (f'{{"userId":"u-1","properties":{{"title":-{BIG}}}}}', "page", "properties.title"),
    (f'{{"userId":"u-1","context":{{"page":{{"title":{BIG}}}}}}}', "page", "properties.title"),
])
def test_an_integer_beyond_64_bits_in_traits_or_properties_is_refused_naming_the_field(body: str, call_type: str, field: str) -> None:
    """Read as a float (orjson), an identify's hubspot_id of 12345678901234567890123 was written on
    as 1.2345678901234568e+22, where `userId` of such an integer was refused: the digits were gone."""
    with pytest.raises(RequestRejected, match=re.escape(f"the scoring engine would refuse this call's event: {field} holds an "
                                                        "integer beyond 64 bits, which loses digits as a JSON number")):
        Mapper("snake_case", MAX_FUTURE_MS).map(read_json(body), call_type, SITE, RECEIVED)


def test_a_call_without_message_id_holding_an_integer_beyond_64_bits_where_no_event_field_reads_it_is_mapped() -> None:
    # orjson, which writes the content hashed into the event id, writes 64 bits at most.
    call = read_json(f'{{"userId":"u-1","event":"A","context":{{"campaign":{{"id":{BIG}}}}}}}')
    first, again = (Mapper("snake_case", MAX_FUTURE_MS).map(call, "track", SITE, RECEIVED) for _ in range(2))
    assert first == again and orjson.loads(first.value)["event_id"].startswith("sha256:")


def test_a_refusal_echoes_a_message_id_only_when_the_answer_can_carry_it() -> None:
    refused = RequestRejected(400, "bad_field", "x")
    assert _rejection(0, {"messageId": 2**64 - 1}, refused)["messageId"] == 2**64 - 1
    assert _rejection(0, {"messageId": 2**64}, refused)["messageId"] is None  # orjson, writing the answer, would raise


def test_write_keys_from_inline_pairs() -> None:
    assert load_sources(" k1=website , k2=backend") == {"k1": Source("website"), "k2": Source("backend")}
    # A product could only be given in a file: the README's inline keys fed no shipped model.
    assert load_sources("k1=website:b2b, k2 = app : saas") == {"k1": Source("website", "b2b"), "k2": Source("app", "saas")}


def test_write_keys_from_a_sources_file(tmp_path: Path) -> None:
    path = tmp_path / "sources.toml"
    path.write_text('[sources.website]\nwrite_keys = ["k1", "k2"]\n\n[sources.app]\nwrite_keys = ["k3"]\nproduct = "console"\n')
    assert load_sources(str(path)) == {"k1": Source("website"), "k2": Source("website"), "k3": Source("app", "console")}
    path.write_bytes(codecs.BOM_UTF8 + path.read_bytes())  # as Windows editors write UTF-8
    assert load_sources(str(path)) == {"k1": Source("website"), "k2": Source("website"), "k3": Source("app", "console")}


@pytest.mark.parametrize(
    ("spec", "file_text", "message"),
    [
        ("", None, "no write keys"),
        ("k1", None, "is not `key=source`"),
        ("k1=web:", None, "nor `key=source:product`"),
        ("k1=a,k1=b", None, "given twice"),
        # A base64 key's padding: split at the first '=', the key was `Zm9vYmFy+/x` and the source `=website`.
        ("wk_a=app,Zm9vYmFy+/x==website:b2b", None, "^LEADSTREAM_COLLECTOR_WRITE_KEYS, pair 2: holds more than one '='"),
        # HTTP Basic's user name ends at the first ':': `curl -u 'wk:colon:'` sent the key `wk`.
        ("wk:colon=web", None, "^LEADSTREAM_COLLECTOR_WRITE_KEYS, pair 1: the write key holds ':'"),
        ("sources.toml", '[sources.web]\nwrite_keys = ["k", "wk:colon"]\n', r"\[sources.web\] write key 2: the write key holds ':'"),
        ("missing.toml", None, "cannot read"),
        ("sources.toml", "[sources", "not valid TOML"),
        ("sources.toml", "x = " + "[" * 5000 + "]" * 5000, "not valid TOML: arrays or tables nested deeper"),
        ("sources.toml", '[sources.caf\xe9]\nwrite_keys = ["k"]\n', "not UTF-8 text \\(byte 0xe9 on line 1\\): save the file as UTF-8"),
        ("sources.toml", "[other]\n", "no \\[sources.NAME\\] tables"),
        ("sources.toml", "[sources.web]\nwrite_keys = []\n", "non-empty list of strings"),
        ("sources.toml", '[sources.web]\nwrite_keys = ["k"]\nproduct = 3\n', "`product` must be a string"),
        # Misspelt, it was ignored: the source had no product, its calls were answered 200 and never scored.
        ("sources.toml", '[sources.a]\nwrite_keys = ["k1"]\nprodcut = "b2b"\n',
         r"sources.toml \[sources.a\]: unknown key `prodcut` \(did you mean product\?\) \(allowed: write_keys, product\)"),
        ("sources.toml", '[sources.a]\nwrite_keys = ["k1"]\n[source.b]\nwrite_keys = ["k2"]\n', r"sources.toml: unknown key `source` \(did you mean sources\?\)"),
        # The file's line was quoted, keys and all; and a key written as an inline pair was named.
        ("sources.toml", '[sources.web]\nwrite_keys = ["Zm9vYmFy1", Zm9vYmFy2"]\n',
         r"not valid TOML: Invalid value \(at line 2, column \d+\) \(texts"),
        ("sources.toml", '[sources.web]\nwrite_keys = ["k"]\nZm9vYmFy3 = "web"\n',
         r"\[sources.web\]: unknown key \(not shown: it may be a write key\) \(allowed: write_keys, product\)"),
        ("sources.toml", 'Zm9vYmFy4 = "web"\n[sources.web]\nwrite_keys = ["k"]\n', r"sources.toml: unknown key \(not shown"),
    ],
)
def test_bad_write_key_configuration_says_what_to_fix(tmp_path: Path, spec: str, file_text: str | None, message: str) -> None:
    if file_text is not None:
        (tmp_path / spec).write_bytes(file_text.encode("latin-1"))
    if spec.endswith(".toml"):
        spec = str(tmp_path / spec)
    with pytest.raises(ConfigError, match=message) as refused:
        load_sources(spec)
    assert "Zm9vYmFy" not in str(refused.value) and "colon" not in str(refused.value)  # a key is named by its place
