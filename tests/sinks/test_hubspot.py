"""The HubSpot connector through the real runner, Kafka and Redis, against the HubSpot stand-in."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

import pytest

from sinks.hubspot import DEAL_TO_COMPANY, DEAL_TO_CONTACT, TASK_TO_COMPANY, TASK_TO_CONTACT, TASK_TO_DEAL, HubSpotSink
from sinks.errors import CredentialsError
from sinks.mapping import load_mapping
from sinks.runner import SinkRunner
from streams.errors import ConfigError
from streams.processes import free_port
from streams.settings import Settings
from tests.infra import read_topic, wait_for
from tests.sinks.conftest import account_climb, account_crossing, crossing, drain, produce, running
from tests.sinks.fake_hubspot import FakeHubSpot


def hubspot_settings(settings: Settings, server: FakeHubSpot) -> Settings:
    return settings.with_overrides(hubspot_base_url=server.url)


def test_up_to_sql_updates_the_contact_and_creates_one_deal_and_one_task_for_the_owner(
    sink_settings: Settings, hubspot: FakeHubSpot
) -> None:
    settings = hubspot_settings(sink_settings, hubspot)
    contact = hubspot.add_contact("lead-1@acme.io", owner_id="4242")
    produce(settings, [crossing(1, "sql")])

    stats = drain(HubSpotSink(settings), settings)

    assert stats.delivered == 1 and stats.dead_lettered == 0
    props = hubspot.objects["contacts"][contact]["properties"]
    assert props["leadstream_score"] == "61" and props["leadstream_grade"] == "A"
    assert props["leadstream_temperature"] == "Warm" and props["lifecyclestage"] == "salesqualifiedlead"
    assert props["leadstream_reasons"] == "pricing_page +30, webinar +10"
    [deal] = hubspot.objects["deals"].values()
    assert deal["properties"]["dealstage"] == "appointmentscheduled" and deal["properties"]["hubspot_owner_id"] == "4242"
    assert deal["properties"]["leadstream_crossing_id"] == "lead-1/b2b/up/sql/1"
    assert deal["associations"][0]["to"]["id"] == contact
    assert deal["associations"][0]["types"][0]["associationTypeId"] == DEAL_TO_CONTACT
    [task] = hubspot.objects["tasks"].values()
    assert task["properties"]["hubspot_owner_id"] == "4242" and task["properties"]["hs_task_status"] == "NOT_STARTED"
    assert task["properties"]["hs_timestamp"] == "2025-11-24T08:00:00.000Z"  # crossing time + 24 h
    assert "pricing_page +30" in task["properties"]["hs_task_body"]
    assert {(a["to"]["id"], a["types"][0]["associationTypeId"]) for a in task["associations"]} == {
        (contact, TASK_TO_CONTACT), (deal["id"], TASK_TO_DEAL)}


def test_down_crossing_moves_the_lifecycle_stage_back_and_creates_nothing(
    sink_settings: Settings, hubspot: FakeHubSpot
) -> None:
    settings = hubspot_settings(sink_settings, hubspot)
    contact = hubspot.add_contact("lead-2@acme.io")
    produce(settings, [crossing(2, "mql"), crossing(2, "nurture", "down", from_level="mql")])

    stats = drain(HubSpotSink(settings), settings)

    assert stats.delivered == 2
    assert hubspot.objects["contacts"][contact]["properties"]["lifecyclestage"] == "lead"
    assert hubspot.objects["deals"] == {}  # mql makes a task only; the down-crossing makes nothing
    assert len(hubspot.objects["tasks"]) == 1


@pytest.mark.parametrize("stage", ["customer", "opportunity", "other"])
def test_a_stage_sales_set_is_kept_by_every_crossing_and_the_other_properties_are_updated(
    sink_settings: Settings, hubspot: FakeHubSpot, stage: str
) -> None:
    # A down-crossing cleared the stage and set `lead`: a customer who went quiet was demoted.
    settings = hubspot_settings(sink_settings, hubspot)
    contact = hubspot.add_contact("lead-2@acme.io")
    hubspot.objects["contacts"][contact]["properties"]["lifecyclestage"] = stage  # sales moved it on
    produce(settings, [crossing(2, "nurture", "down", from_level="mql", temperature="cold"), crossing(2, "mql", seq=2)])

    stats = drain(HubSpotSink(settings), settings)

    assert (stats.delivered, stats.dead_lettered) == (2, 0)
    properties = hubspot.objects["contacts"][contact]["properties"]
    assert (properties["lifecyclestage"], properties["leadstream_level"]) == (stage, "mql")
    patches = [r.json()["properties"] for r in hubspot.requests_to("PATCH", "/contacts/")]
    assert all("lifecyclestage" not in p for p in patches), patches  # not cleared either
    assert [p["leadstream_temperature"] for p in patches] == ["Cold", "Warm"]


def test_a_stage_the_mapping_replaces_or_none_is_moved_up_and_down(sink_settings: Settings, hubspot: FakeHubSpot) -> None:
    settings = hubspot_settings(sink_settings, hubspot)
    subscriber, blank = hubspot.add_contact("lead-2@acme.io"), hubspot.add_contact("lead-3@acme.io")
    hubspot.objects["contacts"][subscriber]["properties"]["lifecyclestage"] = "subscriber"  # hubspot.toml's [replaces]
    produce(settings, [crossing(2, "mql"), crossing(3, "sql"), crossing(3, "nurture", "down", from_level="sql")])

    drain(HubSpotSink(settings), settings)

    assert hubspot.objects["contacts"][subscriber]["properties"]["lifecyclestage"] == "marketingqualifiedlead"
    assert hubspot.objects["contacts"][blank]["properties"]["lifecyclestage"] == "lead"


def test_429_with_retry_after_5xx_timeouts_and_malformed_answers_end_in_exactly_one_deal_and_task(
    sink_settings: Settings, hubspot: FakeHubSpot
) -> None:
    # Retry-After is honoured up to the longest backoff. Tries to spare: the retry budget
    # (RetryPolicy.budget_s, test_machinery's subject) counts each failed try's own time, which a
    # loaded machine stretches, and at 5 tries these four failures (one a 1 s timeout) filled it
    # whenever the jitter drew long waits: dead-lettered "after 4 attempts in 1.5 s". The
    # retries counted below still say that no try was wasted.
    settings = hubspot_settings(sink_settings, hubspot).with_overrides(sink_max_attempts=8, sink_backoff_max_ms=2000)
    contact = hubspot.add_contact("lead-3@acme.io")
    hubspot.inject("status", method="PATCH", path="/contacts/", status=429, headers={"Retry-After": "1"},
                   body={"status": "error", "message": "You have reached your ten_secondly_rolling limit.",
                         "errorType": "RATE_LIMIT", "policyName": "TEN_SECONDLY_ROLLING"})
    hubspot.inject("status", method="POST", path="/deals$", status=502)
    # The deal is created but its answer is garbage: the retry must find it, not make another.
    hubspot.inject("malformed", method="POST", path="/deals$")
    hubspot.inject("timeout", method="POST", path="/tasks$", delay_s=1.5)
    produce(settings, [crossing(3, "sql")])

    stats = drain(HubSpotSink(settings), settings)

    assert (stats.delivered, stats.dead_lettered, stats.retries) == (1, 0, 4)
    assert len(hubspot.objects["deals"]) == 1 and len(hubspot.objects["tasks"]) == 1
    # Each retry of a step that may have reached HubSpot looks for its record first.
    assert len(hubspot.requests_to("POST", "/deals/search$")) == 2
    # The task's call timed out (HubSpot might still make it): looked for until HubSpot has had
    # the timeout again, then made.
    assert len(hubspot.requests_to("POST", "/tasks/search$")) >= 2
    patches = hubspot.requests_to("PATCH", "/contacts/lead-3@acme.io$")
    assert patches[1].at - patches[0].at >= 1.0, "the retry came before the server's Retry-After"
    assert hubspot.objects["contacts"][contact]["properties"]["lifecyclestage"] == "salesqualifiedlead"


@pytest.mark.parametrize("what", ["deals", "tasks"])
def test_a_record_the_crm_creates_after_the_call_timed_out_is_found_not_created_again(
    sink_settings: Settings, hubspot: FakeHubSpot, what: str
) -> None:
    """HubSpot took 3 s to create it, the connector gave up after 2 and retried at once: its
    search found nothing yet, so it created a second deal or task, and HubSpot then the first."""
    settings = hubspot_settings(sink_settings, hubspot).with_overrides(sink_timeout_s=2, sink_backoff_max_ms=500)
    hubspot.add_contact("lead-5@acme.io")
    hubspot.inject("slow", method="POST", path=f"/{what}$", delay_s=3)
    produce(settings, [crossing(5, "sql")])

    started = time.monotonic()
    stats = drain(HubSpotSink(settings), settings)
    time.sleep(max(0.0, started + 4 - time.monotonic()))  # the slow call has made its record by then

    assert (stats.delivered, stats.dead_lettered) == (1, 0)
    assert len(hubspot.objects[what]) == 1, hubspot.objects[what]
    searches = hubspot.requests_to("POST", f"/{what}/search$")
    assert len(searches) >= 2  # looked for while HubSpot was still at it, then found


@pytest.mark.parametrize("what", ["deals", "tasks"])
def test_a_malformed_answer_to_the_search_for_a_half_created_record_is_retried_not_taken_for_none(
    sink_settings: Settings, hubspot: FakeHubSpot, what: str
) -> None:
    # Tries to spare, as in the test above: the 1 s timeout and the malformed answer took more than
    # the 1.35 s budget of sink_settings' 4 tries on a loaded machine (the timed-out try is
    # counted as long as it took): dead-lettered, "(0, 1) == (1, 0)". The searches counted below
    # still say that no try was wasted.
    settings = hubspot_settings(sink_settings, hubspot).with_overrides(sink_max_attempts=8)
    hubspot.add_contact("lead-3@acme.io")
    # The record is created, its answer comes after the timeout: the retry must look for it, and
    # the first look gets a body that is not JSON (a proxy's error page with a 200).
    hubspot.inject("hold", method="POST", path=f"/{what}$", delay_s=1.5)
    hubspot.inject("malformed", method="POST", path=f"/{what}/search$")
    produce(settings, [crossing(3, "sql")])

    stats = drain(HubSpotSink(settings), settings)

    assert (stats.delivered, stats.dead_lettered) == (1, 0)
    assert len(hubspot.objects["deals"]) == 1 and len(hubspot.objects["tasks"]) == 1
    assert len(hubspot.requests_to("POST", f"/{what}/search$")) == 2


def test_a_malformed_answer_to_the_owner_lookup_is_retried_not_taken_for_no_owner(
    sink_settings: Settings, hubspot: FakeHubSpot
) -> None:
    settings = hubspot_settings(sink_settings, hubspot)
    hubspot.add_contact("lead-3@acme.io", owner_id="4242")
    hubspot.inject("malformed", method="GET", path="/contacts/")
    produce(settings, [crossing(3, "sql")])

    stats = drain(HubSpotSink(settings), settings)

    assert (stats.delivered, stats.dead_lettered, stats.retries) == (1, 0, 1)
    [deal] = hubspot.objects["deals"].values()
    [task] = hubspot.objects["tasks"].values()
    assert deal["properties"]["hubspot_owner_id"] == task["properties"]["hubspot_owner_id"] == "4242"


def test_a_crm_outage_delays_deliveries_and_loses_none(sink_settings: Settings, hubspot: FakeHubSpot) -> None:
    settings = hubspot_settings(sink_settings, hubspot).with_overrides(
        sink_max_attempts=10, sink_backoff_base_ms=200, sink_backoff_max_ms=1500)
    contacts = [hubspot.add_contact(f"lead-{n}@acme.io") for n in range(30)]
    produce(settings, [crossing(n, "nurture", "down") for n in range(30)])
    hubspot.outage(3.0)

    stats = drain(HubSpotSink(settings), settings)

    assert stats.delivered == 30 and stats.dead_lettered == 0 and stats.retries >= 4
    assert all(hubspot.objects["contacts"][c]["properties"].get("leadstream_level") == "nurture" for c in contacts)
    assert read_topic(settings, f"{settings.topic_crossings}-dlq-hubspot", idle_s=1.0) == []


def test_rate_limit_holds_under_a_burst_of_1000_crossings(sink_settings: Settings, hubspot: FakeHubSpot) -> None:
    settings = hubspot_settings(sink_settings, hubspot).with_overrides(hubspot_rate_limit="200/1s", sink_concurrency=8)
    for n in range(1000):
        hubspot.add_contact(f"lead-{n}@acme.io")
    # A level the mapping sets nothing for: one PATCH per crossing.
    produce(settings, [crossing(n, "engaged", "down") for n in range(1000)])

    stats = drain(HubSpotSink(settings), settings)

    assert stats.delivered == 1000
    times = sorted(r.at for r in hubspot.requests_to("PATCH", "/contacts/"))
    assert len(times) == 1000
    busiest = max(sum(1 for t in times[i:i + 201] if t - start < 1.0) for i, start in enumerate(times))
    assert busiest <= 200, f"{busiest} requests in one second against a quota of 200/1s"
    assert times[-1] - times[0] >= (1000 - 200) / 200, "finished faster than the quota allows"


def test_account_crossings_update_the_company_and_buying_creates_a_deal_and_task_on_it(
    sink_settings: Settings, hubspot: FakeHubSpot
) -> None:
    settings = hubspot_settings(sink_settings, hubspot)
    company = hubspot.add_company("acme", owner_id="5151")
    produce(settings, [
        *account_climb(),
        account_crossing(to_level="engaged", from_level="buying", direction="down", id="acme/b2b/down/engaged/3"),
    ])

    stats = drain(HubSpotSink(settings), settings)

    assert (stats.delivered, stats.ignored, stats.dead_lettered) == (3, 0, 0)
    props = hubspot.objects["companies"][company]["properties"]
    assert (props["leadstream_account_level"], props["leadstream_account_score"]) == ("engaged", "62")
    assert props["leadstream_account_members"] == "lead-7 +61, lead-2 +40"
    # Only the up-crossing to buying makes a deal and a task, both on the company, for its owner.
    [deal] = hubspot.objects["deals"].values()
    assert deal["properties"]["dealname"] == "acme: account is buying (b2b model)"
    assert deal["properties"]["hubspot_owner_id"] == "5151"
    assert [(a["to"]["id"], a["types"][0]["associationTypeId"]) for a in deal["associations"]] == [(company, DEAL_TO_COMPANY)]
    [task] = hubspot.objects["tasks"].values()
    assert task["properties"]["hs_task_subject"] == "Account acme is now buying"
    assert "lead-7 +61" in task["properties"]["hs_task_body"] and task["properties"]["hubspot_owner_id"] == "5151"
    assert {(a["to"]["id"], a["types"][0]["associationTypeId"]) for a in task["associations"]} == {
        (company, TASK_TO_COMPANY), (deal["id"], TASK_TO_DEAL)}
    assert hubspot.requests_to("PATCH", "/companies/acme$")[0].query["idProperty"] == ["leadstream_account_id"]
    assert hubspot.objects["contacts"] == {}


def test_an_account_without_a_company_is_dead_lettered_with_the_reason(sink_settings: Settings, hubspot: FakeHubSpot) -> None:
    settings = hubspot_settings(sink_settings, hubspot)
    produce(settings, [account_crossing(account_id="globex", id="globex/b2b/up/buying/1")])

    stats = drain(HubSpotSink(settings), settings)

    assert (stats.delivered, stats.dead_lettered) == (0, 1)
    [(_, letter)] = read_topic(settings, f"{settings.topic_crossings}-dlq-hubspot", expect=1, idle_s=0.5)
    assert "company leadstream_account_id=globex: not found (404)" in letter["detail"]
    assert hubspot.objects["deals"] == {} and hubspot.objects["tasks"] == {}


@pytest.mark.parametrize(("location", "shown"), [
    ("https://api.hubapi.com/crm/v3/objects/contacts/lead-3@acme.io?idProperty=email", "https://api.hubapi.com/..."),
    ("", "nowhere (no Location)"),
])
def test_a_redirect_is_dead_lettered_naming_where_to_and_the_base_url_setting_not_the_path(
    sink_settings: Settings, hubspot: FakeHubSpot, location: str, shown: str
) -> None:
    # LEADSTREAM_HUBSPOT_BASE_URL=http://api.hubapi.com, answered with a 301 to https: each crossing
    # was dead-lettered as "HTTP 301: " and the body, naming neither the setting nor where to.
    settings = hubspot_settings(sink_settings, hubspot)
    hubspot.add_contact("lead-3@acme.io")
    hubspot.inject("status", method="GET", path="/contacts/", status=301, headers={"Location": location} if location else {})
    produce(settings, [crossing(3, "sql")])

    stats = drain(HubSpotSink(settings), settings)

    assert (stats.delivered, stats.dead_lettered, stats.retries) == (0, 1, 0)
    [(_, letter)] = read_topic(settings, f"{settings.topic_crossings}-dlq-hubspot", expect=1, idle_s=0.5)
    assert (f"HubSpot contact by the email trait of lead lead-3: redirected (HTTP 301) to {shown}: set "
            "LEADSTREAM_HUBSPOT_BASE_URL to the API's own URL") in letter["detail"], letter["detail"]
    assert "lead-3@acme.io" not in letter["detail"]
    assert hubspot.objects["deals"] == {} and hubspot.objects["tasks"] == {}


def test_a_refused_token_dead_letters_nothing_for_it_and_holds_the_connector_not_ready_until_it_is_replaced(
    sink_settings: Settings, hubspot: FakeHubSpot, sink_process: Any
) -> None:
    # A revoked token sent every crossing to the dead-letter topic, each one a replay to do,
    # while /readyz answered 200: nothing told the operator.
    port = free_port()
    settings = hubspot_settings(sink_settings, hubspot).with_overrides(metrics_port=port, sink_backoff_max_ms=200)
    contact = hubspot.add_contact("lead-1@acme.io")
    produce(settings, [crossing(1, "mql"), crossing(2, "mql", traits={})])  # lead-2's: no credentials could deliver it

    revoked = sink_process(settings.with_overrides(hubspot_access_token="pat-revoked"), "hubspot")
    wait_for(lambda: len(hubspot.requests_to("GET", "/contacts/")) >= 3, what="three tries under the refused token")
    assert readyz(port) == 503
    revoked.stop()
    log = revoked.log.read_text()
    assert "refuses the connector's credentials" in log and "(check LEADSTREAM_HUBSPOT_ACCESS_TOKEN" in log, revoked.tail()
    # The log said nothing was dead-lettered, and lead-2's crossing was.
    assert ("nothing is dead-lettered for the refusal: only what no credentials could deliver is, failing before any "
            "request") in log, revoked.tail()
    [(key, _)] = read_topic(settings, f"{settings.topic_crossings}-dlq-hubspot", expect=1, idle_s=0.5)
    assert key == b"lead-2"
    assert "leadstream_score" not in hubspot.objects["contacts"][contact]["properties"]

    sink_process(settings, "hubspot")  # restarted with a token HubSpot accepts: the held crossing is delivered
    wait_for(lambda: "leadstream_score" in hubspot.objects["contacts"][contact]["properties"], what="the crossing delivered")
    wait_for(lambda: readyz(port) == 200, what="/readyz 200")


def test_a_replay_under_a_refused_token_stops_and_leaves_the_dead_letters_for_the_next(
    sink_settings: Settings, hubspot: FakeHubSpot
) -> None:
    settings = hubspot_settings(sink_settings, hubspot)
    produce(settings, [crossing(1, "mql")])
    assert drain(HubSpotSink(settings), settings).dead_lettered == 1  # no such contact yet
    contact = hubspot.add_contact("lead-1@acme.io")

    refused = settings.with_overrides(hubspot_access_token="pat-revoked")
    with pytest.raises(CredentialsError, match=r"HTTP 401.*check LEADSTREAM_HUBSPOT_ACCESS_TOKEN"):
        SinkRunner(HubSpotSink(refused), refused).replay_dead_letters()

    assert SinkRunner(HubSpotSink(settings), settings).replay_dead_letters().delivered == 1
    assert "leadstream_score" in hubspot.objects["contacts"][contact]["properties"]


def _take_a_scope(hubspot: FakeHubSpot) -> tuple[str, Callable[[], None]]:
    """An admin takes a scope from the private app (403 MISSING_SCOPES to the update), then grants it again."""
    hubspot.scopes.discard("crm.objects.contacts.write")
    return "PATCH", lambda: hubspot.scopes.add("crm.objects.contacts.write")


def _use_up_the_daily_limit(hubspot: FakeHubSpot) -> tuple[str, Callable[[], None]]:
    """The account's calls of the day are used up (429 DAILY to the read, HubSpot's body), until midnight."""
    daily = hubspot.inject("status", method="GET", path="/contacts/", status=429, count=10**6, body={
        "status": "error", "message": "You have reached your daily limit.", "errorType": "RATE_LIMIT",
        "correlationId": "c033cdaa-2c40-4a64-ae48-b4cec88dad24", "policyName": "DAILY",
        "requestId": "3d3e35b7-0dae-4b9f-a6e3-9c230cbcf8dd"})
    return "GET", lambda: setattr(daily, "count", 0)


@pytest.mark.parametrize(("refuse", "said"), [
    (_take_a_scope, "lacks one of the scopes crm.objects.contacts.write: grant it"),
    (_use_up_the_daily_limit, "the HubSpot account's daily API limit is used up"),
])
def test_a_refusal_of_every_call_dead_letters_nothing_and_holds_the_connector_until_it_ends(
    sink_settings: Settings, hubspot: FakeHubSpot, refuse: Callable[[FakeHubSpot], tuple[str, Callable[[], None]]], said: str
) -> None:
    # HubSpot refuses every call so, whatever the crossing: taken for the crossing's fault (a 403)
    # or retried for the usual budget (a 429), each crossing was dead-lettered, the whole stream to
    # replay by hand, while /readyz answered 200.
    settings = hubspot_settings(sink_settings, hubspot).with_overrides(sink_backoff_max_ms=200)
    contacts = [hubspot.add_contact(f"lead-{n}@acme.io") for n in range(3)]
    refused_method, end_refusal = refuse(hubspot)
    produce(settings, [crossing(n, "mql") for n in range(3)])
    runner = SinkRunner(HubSpotSink(settings), settings)
    with running(runner) as ran:
        # More tries than LEADSTREAM_SINK_MAX_ATTEMPTS (4) for each crossing.
        wait_for(lambda: len(hubspot.requests_to(refused_method, "/contacts/")) >= 15, what="tries refused")
        assert runner.refused is not None and not runner.ready()
        assert said in str(runner.refused)
        end_refusal()  # no restart needed
        wait_for(lambda: ran, 60, "the held crossings delivered")

    [stats] = ran
    assert (stats.delivered, stats.dead_lettered) == (3, 0)
    assert all("leadstream_score" in hubspot.objects["contacts"][c]["properties"] for c in contacts)
    assert runner.refused is None

def readyz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, ConnectionError):
        return 0


def test_account_ids_may_be_hubspot_company_ids(sink_settings: Settings, hubspot: FakeHubSpot, tmp_path: Path) -> None:
    settings = hubspot_settings(sink_settings, hubspot)
    company = hubspot.add_company("initech")
    mapping = tmp_path / "hubspot.toml"
    mapping.write_text('[fields]\nscore = "leadstream_score"\n[account]\nid_property = "hs_object_id"\n'
                       '[account.fields]\nlevel = "leadstream_account_level"\n')
    produce(settings, [account_crossing(account_id=company, id=f"{company}/b2b/up/buying/1")])

    stats = drain(HubSpotSink(settings, load_mapping(mapping, with_deals=True)), settings)

    assert stats.delivered == 1
    assert hubspot.objects["companies"][company]["properties"]["leadstream_account_level"] == "buying"
    assert "idProperty" not in hubspot.requests_to("PATCH", f"/companies/{company}$")[0].query


def test_a_replayed_crossing_that_a_newer_one_overtook_is_skipped_as_stale(sink_settings: Settings, hubspot: FakeHubSpot) -> None:
    # An up-crossing to sql fails through an outage; the lead then cools down to mql, delivered.
    settings = hubspot_settings(sink_settings, hubspot)
    contact = hubspot.add_contact("lead-9@acme.io")
    hubspot.inject("status", count=settings.sink_max_attempts, method="PATCH", status=503)
    produce(settings, [crossing(9, "sql")])
    assert drain(HubSpotSink(settings), settings).dead_lettered == 1
    produce(settings, [crossing(9, "mql", "down", from_level="sql")])
    assert drain(HubSpotSink(settings), settings).delivered == 1

    replayed = SinkRunner(HubSpotSink(settings), settings).replay_dead_letters()

    assert (replayed.delivered, replayed.stale, replayed.dead_lettered) == (0, 1, 0)
    assert hubspot.objects["contacts"][contact]["properties"]["lifecyclestage"] == "marketingqualifiedlead"
    assert hubspot.objects["deals"] == {} and hubspot.objects["tasks"] == {}


def test_a_replayed_crossing_that_a_newer_dead_letter_overtakes_is_skipped_as_stale(
    sink_settings: Settings, hubspot: FakeHubSpot
) -> None:
    """An outage dead-letters a lead's up-crossing to sql and then its way back down: the replay
    made the deal and task for a lead that had cooled down (the ledger had delivered neither)."""
    settings = hubspot_settings(sink_settings, hubspot)
    contact = hubspot.add_contact("lead-9@acme.io")
    hubspot.inject("status", count=2 * settings.sink_max_attempts, method="PATCH", status=503)
    produce(settings, [crossing(9, "sql"), crossing(9, "mql", "down", from_level="sql")])
    assert drain(HubSpotSink(settings), settings).dead_lettered == 2

    replayed = SinkRunner(HubSpotSink(settings), settings).replay_dead_letters()

    assert (replayed.delivered, replayed.stale, replayed.dead_lettered) == (1, 1, 0)
    assert hubspot.objects["contacts"][contact]["properties"]["lifecyclestage"] == "marketingqualifiedlead"
    assert hubspot.objects["deals"] == {} and hubspot.objects["tasks"] == {}


def test_a_replayed_crossing_nothing_overtook_is_delivered(sink_settings: Settings, hubspot: FakeHubSpot) -> None:
    settings = hubspot_settings(sink_settings, hubspot)
    hubspot.add_contact("lead-9@acme.io")
    hubspot.add_contact("lead-8@acme.io")
    hubspot.inject("status", count=settings.sink_max_attempts, method="PATCH", path="/contacts/lead-9", status=503)
    produce(settings, [crossing(9, "sql"), crossing(8, "sql")])
    assert drain(HubSpotSink(settings), settings).dead_lettered == 1
    # Another model's crossing of the same lead does not overtake the b2b one.
    produce(settings, [crossing(9, "mql", "down", from_level="sql", model="trial", id="lead-9/trial/down/mql/1")])
    assert drain(HubSpotSink(settings), settings).delivered == 1

    replayed = SinkRunner(HubSpotSink(settings), settings).replay_dead_letters()

    assert (replayed.delivered, replayed.stale) == (1, 0)
    assert len(hubspot.objects["deals"]) == 2


def test_a_crossing_without_an_id_or_email_trait_is_dead_lettered_naming_the_model_s_keep_traits(
    sink_settings: Settings, hubspot: FakeHubSpot
) -> None:
    # It said the lead "has neither a hubspot_id nor an email trait", where the lead had sent it
    # and its model had not kept it.
    settings = hubspot_settings(sink_settings, hubspot)
    produce(settings, [crossing(1, "sql", traits={"first_name": "Ada"})])

    assert drain(HubSpotSink(settings), settings).dead_lettered == 1

    [(_, letter)] = read_topic(settings, f"{settings.topic_crossings}-dlq-hubspot", expect=1, idle_s=0.5)
    assert letter["reason"] == "permanent" and ("lead lead-1: the crossing carries neither a hubspot_id nor an email "
                                                "trait (a crossing carries only the traits its model kept when the lead's events were "
                                                "scored") in letter["detail"]
    assert hubspot.requests == []


def test_a_crossing_with_an_impossible_time_is_dead_lettered_as_malformed_before_any_request(
    sink_settings: Settings, hubspot: FakeHubSpot
) -> None:
    settings = hubspot_settings(sink_settings, hubspot)
    hubspot.add_contact("lead-1@acme.io")
    produce(settings, [crossing(1, "sql", time=10**18)])

    stats = drain(HubSpotSink(settings), settings)

    assert (stats.delivered, stats.retries, stats.dead_lettered) == (0, 0, 1)
    assert hubspot.requests == []
    [(_, letter)] = read_topic(settings, f"{settings.topic_crossings}-dlq-hubspot", expect=1, idle_s=0.5)
    assert letter["reason"] == "malformed" and "field 'time' is 1000000000000000000, outside years 2000-2099" in letter["detail"]


def test_a_record_reference_that_would_leave_its_path_segment_is_dead_lettered_and_never_requested(
    sink_settings: Settings, hubspot: FakeHubSpot, tmp_path: Path
) -> None:
    # The client percent-encodes '/', but urllib3 resolves '.' and '..': PATCH /crm/v3/objects/.
    settings = hubspot_settings(sink_settings, hubspot)
    company = hubspot.add_company("initech")
    mapping = tmp_path / "hubspot.toml"
    mapping.write_text('[fields]\nscore = "leadstream_score"\n[account]\nid_property = "hs_object_id"\n'
                       '[account.fields]\nlevel = "leadstream_account_level"\n')
    produce(settings, [
        crossing(1, "nurture", "down", traits={"hubspot_id": ".."}),
        crossing(2, "nurture", "down", traits={"hubspot_id": f"../companies/{company}"}),
        crossing(3, "nurture", "down", traits={"email": ".."}),
        account_crossing(account_id="..", id="dots/b2b/up/buying/1"),
    ])

    stats = drain(HubSpotSink(settings, load_mapping(mapping, with_deals=True)), settings)

    assert (stats.delivered, stats.dead_lettered) == (0, 4)
    assert hubspot.requests == []
    letters = read_topic(settings, f"{settings.topic_crossings}-dlq-hubspot", expect=4, idle_s=0.5)
    assert sorted(letter["detail"] for _, letter in letters) == sorted([
        "hubspot: lead lead-1's hubspot_id trait is '..', not a HubSpot record id (a number)",
        f"hubspot: lead lead-2's hubspot_id trait is '../companies/{company}', not a HubSpot record id (a number)",
        "hubspot: lead lead-3's email trait is '..': not a value HubSpot can look a record up by",
        "hubspot: account crossing dots/b2b/up/buying/1's account_id (id_property = \"hs_object_id\") is '..', "
        "not a HubSpot record id (a number)",
    ])


@pytest.mark.parametrize("fault", ["trickle_headers", "trickle"])
def test_an_answer_that_never_ends_fails_the_attempt_at_the_timeout(
    sink_settings: Settings, hubspot: FakeHubSpot, fault: str
) -> None:
    # HubSpot's answer to the contact's update, its headers or its body, comes a byte at a time,
    # each within the 1 s timeout (which the client bounds each read by), until the next request
    # or 20 s: the delivery waited for all of it.
    settings = hubspot_settings(sink_settings, hubspot).with_overrides(sink_max_attempts=1)
    hubspot.add_contact("lead-1@acme.io")
    hubspot.inject(fault, method="PATCH", path="/contacts/", status=200, delay_s=20)
    produce(settings, [crossing(1, "engaged", "down")])

    started = time.monotonic()
    stats = drain(HubSpotSink(settings), settings)

    assert stats.dead_lettered == 1 and time.monotonic() - started < 8
    [(_, letter)] = read_topic(settings, f"{settings.topic_crossings}-dlq-hubspot", expect=1, idle_s=0.5)
    assert "no whole answer within 1 s" in letter["detail"], letter["detail"]


def test_without_a_token_it_names_every_scope_the_token_needs() -> None:
    """The connector reads records' owners and searches deals and tasks by crossing id: a token
    made with the write scopes only, which the message named, got 403 on those calls."""
    with pytest.raises(ConfigError) as refused:
        HubSpotSink(Settings.from_env({}))
    scopes = [f"crm.objects.{kind}.{access}" for kind in ("contacts", "companies", "deals") for access in ("read", "write")]
    assert [scope for scope in scopes if scope not in str(refused.value)] == []


def test_a_404_page_of_a_proxy_is_kept_to_its_first_characters_in_the_dead_letter(sink_settings: Settings, hubspot: FakeHubSpot) -> None:
    # A gateway between the connector and HubSpot answering its own 404 page: the page went whole
    # into the log line and the dead letter's detail, 100 KB a crossing.
    settings = hubspot_settings(sink_settings, hubspot)
    page = b"<html><body>" + b"Not Found. " * 10_000 + b"</body></html>"
    hubspot.inject("status", path="/companies/acme", status=404, body=page)
    produce(settings, [account_crossing()])

    stats = drain(HubSpotSink(settings), settings)

    assert (stats.delivered, stats.dead_lettered) == (0, 1)
    [(_, letter)] = read_topic(settings, f"{settings.topic_crossings}-dlq-hubspot", expect=1, idle_s=0.5)
    assert "not found (404): <html><body>Not Found. " in letter["detail"]
    assert len(letter["detail"]) < 1000
    assert f"({len(page) - 500} more characters)" in letter["detail"]
