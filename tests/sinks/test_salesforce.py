"""The Salesforce connector with simple-salesforce, over TLS, against the Salesforce stand-in."""

from __future__ import annotations

import re
import time
from dataclasses import replace

import pytest

from sinks.mapping import load_mapping
from sinks.runner import SinkRunner
from sinks.salesforce import SalesforceSink
from streams.errors import ConfigError
from streams.settings import Settings
from tests.infra import read_topic, wait_for
from tests.sinks.conftest import account_climb, account_crossing, crossing, drain, produce, running
from tests.sinks.fake_http import WebhookReceiver
from tests.sinks.fake_salesforce import API_USER_ID, PASSWORD, SECURITY_TOKEN, USERNAME, FakeSalesforce


def salesforce_settings(settings: Settings, server: FakeSalesforce) -> Settings:
    return settings.with_overrides(salesforce_instance_url=server.url)


def test_up_to_mql_updates_the_lead_and_creates_a_task_for_its_owner_and_down_updates_only(
    sink_settings: Settings, salesforce: FakeSalesforce
) -> None:
    settings = salesforce_settings(sink_settings, salesforce)
    by_email = salesforce.add_lead("lead-1@acme.io", owner_id="005000000000042AAA")
    by_id = salesforce.add_lead("someone-else@acme.io")
    produce(settings, [
        crossing(1, "mql"),
        crossing(1, "nurture", "down", from_level="mql", temperature="cold", normalized=33.5),
        crossing(2, "sql", traits={"salesforce_id": by_id}),  # found by its id, no e-mail
    ])

    stats = drain(SalesforceSink(settings), settings)

    assert (stats.delivered, stats.dead_lettered) == (3, 0)
    lead = salesforce.records["Lead"][by_email]
    assert (lead["Status"], lead["Rating"], lead["Leadstream_Score__c"]) == ("Open - Not Contacted", "Cold", 33.5)
    assert lead["Leadstream_Reasons__c"] == "pricing_page +30, webinar +10"
    assert salesforce.records["Lead"][by_id]["Status"] == "Working - Contacted"
    tasks = {t["WhoId"]: (t["OwnerId"], t["Subject"], t["ActivityDate"], t["Priority"]) for t in salesforce.records["Task"].values()}
    assert tasks == {
        by_email: ("005000000000042AAA", "Follow up: lead-1@acme.io is now mql", "2025-11-24", "High"),
        by_id: ("005000000000001AAA", "Follow up: lead-2 is now sql", "2025-11-24", "High"),  # {contact}: its id
    }


def test_a_status_sales_set_and_a_converted_lead_s_are_kept_and_the_other_fields_updated(
    sink_settings: Settings, salesforce: FakeSalesforce
) -> None:
    # `[levels.nurture] Status = "Open - Not Contacted"` was written whatever the Lead's Status.
    settings = salesforce_settings(sink_settings, salesforce)
    salesforce.edit_converted = True  # the connector's user may edit converted Leads (see the next test)
    closed, converted = salesforce.add_lead("lead-1@acme.io"), salesforce.add_lead("lead-2@acme.io")
    salesforce.records["Lead"][closed]["Status"] = "Closed - Not Converted"
    salesforce.records["Lead"][converted].update(Status="Working - Contacted", IsConverted=True)
    produce(settings, [crossing(1, "nurture", "down", temperature="cold"),
                       crossing(2, "nurture", "down", temperature="cold", traits={"salesforce_id": converted})])

    stats = drain(SalesforceSink(settings), settings)

    assert (stats.delivered, stats.dead_lettered) == (2, 0)
    assert [(lead["Status"], lead["Rating"]) for lead in salesforce.records["Lead"].values()] == [
        ("Closed - Not Converted", "Cold"), ("Working - Contacted", "Cold")]


def test_a_converted_lead_salesforce_refuses_to_change_is_dead_lettered_naming_the_permission_then_replayed_once_granted(
    sink_settings: Settings, salesforce: FakeSalesforce
) -> None:
    # A new org refuses any change to a converted Lead: its letter said only Salesforce's "cannot
    # reference converted lead", and the README that a converted Lead's other fields were updated.
    settings = salesforce_settings(sink_settings, salesforce)
    converted = salesforce.add_lead("lead-2@acme.io")
    salesforce.records["Lead"][converted].update(Status="Closed - Converted", IsConverted=True)
    produce(settings, [crossing(2, "sql", traits={"salesforce_id": converted})])

    stats = drain(SalesforceSink(settings), settings)

    assert (stats.delivered, stats.dead_lettered, stats.retries) == (0, 1, 0)
    [(_, letter)] = read_topic(settings, f"{settings.topic_crossings}-dlq-salesforce", expect=1, idle_s=0.5)
    assert letter["reason"] == "permanent" and "CANNOT_UPDATE_CONVERTED_LEAD" in letter["detail"]
    assert ('the Lead was converted, and Salesforce refuses changes to a converted Lead unless the connector\'s user has '
            'the permission "View and Edit Converted Leads": grant it and replay') in letter["detail"]
    assert "Leadstream_Score__c" not in salesforce.records["Lead"][converted]

    salesforce.edit_converted = True  # the admin grants the permission
    replayed = SinkRunner(SalesforceSink(settings), settings).replay_dead_letters()

    assert (replayed.delivered, replayed.dead_lettered) == (1, 0)
    lead = salesforce.records["Lead"][converted]
    assert (lead["Status"], lead["Leadstream_Score__c"]) == ("Closed - Converted", 61)  # normalized, as mapped

def password_login(settings: Settings, server: FakeSalesforce, password: str = PASSWORD) -> Settings:
    """A password login at the stand-in (its SOAP login answers under any path ending as Salesforce's)."""
    return settings.with_overrides(salesforce_access_token="", salesforce_username=USERNAME, salesforce_password=password,
                                   salesforce_security_token=SECURITY_TOKEN,
                                   salesforce_domain=f"{server.url.removeprefix('https://')}/login")


def test_a_session_that_expires_mid_run_is_renewed_by_a_new_password_login_and_nothing_is_lost_or_made_twice(
    sink_settings: Settings, salesforce: FakeSalesforce
) -> None:
    settings = password_login(sink_settings, salesforce)
    leads = [salesforce.add_lead(f"lead-{n}@acme.io") for n in range(4)]
    sink = SalesforceSink(settings)
    produce(settings, [crossing(0, "sql")])
    assert drain(sink, settings).delivered == 1

    salesforce.expire_sessions()  # Salesforce's session timeout, or an admin ending the sessions
    produce(settings, [crossing(n, "sql") for n in range(1, 4)])
    stats = drain(sink, settings)

    assert (stats.delivered, stats.dead_lettered) == (3, 0)
    assert sorted(task["WhoId"] for task in salesforce.records["Task"].values()) == sorted(leads)
    assert salesforce.logins >= 2


def test_a_password_salesforce_refuses_at_a_new_login_is_not_tried_again_and_holds_the_connector_until_restarted(
    sink_settings: Settings, salesforce: FakeSalesforce
) -> None:
    # Each lane held under the refusal logged in again with the old password at every try: 79
    # failed logins in 10 s with 10 leads waiting, where Salesforce locks the user out after 3 to 10.
    settings = password_login(sink_settings, salesforce).with_overrides(sink_backoff_max_ms=200)  # held tries 1 s apart
    leads = [salesforce.add_lead(f"lead-{n}@acme.io") for n in range(5)]
    sink = SalesforceSink(settings)
    salesforce.expire_sessions()
    salesforce.password = "rotated-by-an-admin"
    produce(settings, [crossing(n, "mql") for n in range(5)])
    runner = SinkRunner(sink, settings)
    with running(runner):
        wait_for(lambda: runner.refused is not None, what="the refused login held")
        # Watched for three held tries of each lane. The tries under way when the first login was
        # refused (one a call slot) log in once each; none after them.
        time.sleep(3.5)
        assert salesforce.logins <= 1 + settings.sink_concurrency, "the refused password was tried again"
        assert not runner.ready()
        assert "does not try that password again" in str(runner.refused) and "INVALID_LOGIN" in str(runner.refused)

    # Restarted with the new password: the held crossings are delivered, none was dead-lettered.
    renewed = password_login(sink_settings, salesforce, password="rotated-by-an-admin")
    stats = drain(SalesforceSink(renewed), renewed)
    assert (stats.delivered, stats.dead_lettered) == (5, 0)
    assert sorted(task["WhoId"] for task in salesforce.records["Task"].values()) == sorted(leads)

def test_a_new_session_salesforce_refuses_at_once_is_held_with_one_login_a_try(
    sink_settings: Settings, salesforce: FakeSalesforce
) -> None:
    # simple-salesforce logs in again at each 401 of a record's call, without a bound: one try
    # logged in 960 times in 17 s, then was dead-lettered as "no answer (Timeout...)".
    settings = password_login(sink_settings, salesforce).with_overrides(sink_backoff_max_ms=200)
    leads = [salesforce.add_lead(f"lead-{n}@acme.io") for n in range(3)]
    sink = SalesforceSink(settings)
    salesforce.expire_sessions()
    salesforce.refuse_new_sessions = True
    produce(settings, [crossing(n, "mql", traits={"salesforce_id": lead}) for n, lead in enumerate(leads)])
    runner = SinkRunner(sink, settings)
    with running(runner) as ran:
        wait_for(lambda: len(salesforce.requests_to("GET", "/sobjects/Lead/")) >= 15, what="held tries")
        assert runner.refused is not None and not runner.ready()
        assert "refuses the session of a new login as api@acme.example at once" in str(runner.refused)
        # Each try: its call refused, one login, the call refused again; the start's login aside.
        # Counted between tries (the lanes wait a second after each): a try caught between its
        # login and its second call is a login ahead, which on a loaded machine made 8 to 15 calls.
        def one_login_a_try() -> bool:
            with salesforce.lock:  # the logins and the calls of one moment
                return salesforce.logins - 1 <= len(salesforce.requests_to("GET", "/sobjects/Lead/")) / 2

        wait_for(one_login_a_try, 10, "no more than one login a try")
        salesforce.refuse_new_sessions = False
        wait_for(lambda: ran, 60, "the held crossings delivered")

    [stats] = ran
    assert (stats.delivered, stats.dead_lettered) == (3, 0)

def test_request_limit_exceeded_is_retried_and_an_unknown_field_is_dead_lettered_then_replayed(
    sink_settings: Settings, salesforce: FakeSalesforce
) -> None:
    settings = salesforce_settings(sink_settings, salesforce)
    salesforce.add_lead("lead-1@acme.io")
    salesforce.inject("status", method="GET", path="/query", status=403,
                      body=[{"message": "ConcurrentPerOrgLongTxn Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}])
    salesforce.fields["Lead"].discard("Leadstream_Grade__c")  # the org lacks a mapped field
    produce(settings, [crossing(1, "engaged", "down")])

    stats = drain(SalesforceSink(settings), settings)

    assert (stats.retries, stats.dead_lettered) == (1, 1)
    [(_, letter)] = read_topic(settings, f"{settings.topic_crossings}-dlq-salesforce", expect=1, idle_s=0.5)
    assert letter["reason"] == "permanent"
    assert "HTTP 400" in letter["detail"] and "INVALID_FIELD" in letter["detail"] and "Leadstream_Grade__c" in letter["detail"]

    salesforce.fields["Lead"].add("Leadstream_Grade__c")  # the admin creates the field
    replayed = SinkRunner(SalesforceSink(settings), settings).replay_dead_letters()

    assert (replayed.delivered, replayed.dead_lettered) == (1, 0)
    assert [lead["Leadstream_Grade__c"] for lead in salesforce.records["Lead"].values()] == ["A"]


def test_the_orgs_requests_of_24_hours_used_up_dead_letter_nothing_and_hold_the_connector_until_they_come_back(
    sink_settings: Settings, salesforce: FakeSalesforce
) -> None:
    # Retried as the passing REQUEST_LIMIT_EXCEEDED (too many long calls at once) is, for the
    # retries' budget, each crossing was dead-lettered for hours, while /readyz answered 200.
    settings = salesforce_settings(sink_settings, salesforce).with_overrides(sink_backoff_max_ms=200)
    leads = [salesforce.add_lead(f"lead-{n}@acme.io") for n in range(3)]
    used_up = salesforce.inject("status", method="GET", path="/query", status=403, count=10**6,
                                body=[{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}])
    produce(settings, [crossing(n, "engaged", "down") for n in range(3)])
    runner = SinkRunner(SalesforceSink(settings), settings)
    with running(runner) as ran:
        # More tries than LEADSTREAM_SINK_MAX_ATTEMPTS (4) for each crossing.
        wait_for(lambda: len(salesforce.requests_to("GET", "/query")) >= 15, what="tries refused")
        assert runner.refused is not None and not runner.ready()
        assert "the org's API requests of the last 24 hours are used up" in str(runner.refused)
        used_up.count = 0  # the calls of 24 hours ago aged out
        wait_for(lambda: ran, 60, "the held crossings delivered")

    [stats] = ran
    assert (stats.delivered, stats.dead_lettered) == (3, 0)
    assert [salesforce.records["Lead"][lead]["Leadstream_Grade__c"] for lead in leads] == ["A"] * 3

def test_account_crossings_update_the_account_and_buying_creates_a_task_related_to_it(
    sink_settings: Settings, salesforce: FakeSalesforce
) -> None:
    settings = salesforce_settings(sink_settings, salesforce)
    account = salesforce.add_account("acme", owner_id="005000000000051AAA")
    produce(settings, [
        *account_climb(),
        account_crossing(account_id="globex", id="globex/b2b/up/buying/1"),  # no such Account
    ])

    stats = drain(SalesforceSink(settings), settings)

    assert (stats.delivered, stats.ignored, stats.dead_lettered) == (2, 0, 1)
    record = salesforce.records["Account"][account]
    assert (record["Leadstream_Account_Level__c"], record["Rating"], record["Leadstream_Account_Score__c"]) == ("buying", "Hot", 62)
    assert record["Leadstream_Account_Members__c"] == "lead-7 +61, lead-2 +40"
    [task] = salesforce.records["Task"].values()  # buying only: engaged makes none
    assert (task["WhatId"], task["OwnerId"], task["Subject"]) == (account, "005000000000051AAA", "Account acme is now buying")
    assert "WhoId" not in task and task["Leadstream_Crossing_Id__c"] == "acme/b2b/up/buying/1"
    [(_, letter)] = read_topic(settings, f"{settings.topic_crossings}-dlq-salesforce", expect=1, idle_s=0.5)
    assert "no Salesforce Account has Leadstream_Account_Id__c = 'globex'" in letter["detail"]


def test_a_record_id_that_is_not_a_salesforce_id_is_dead_lettered_and_never_requested(
    sink_settings: Settings, salesforce: FakeSalesforce, webhook: WebhookReceiver
) -> None:
    # simple-salesforce joins the id onto the instance URL: an absolute URL would carry the
    # session to another host, `../Account/<id>` would update an Account through the Lead path.
    settings = salesforce_settings(sink_settings, salesforce)
    victim = salesforce.add_account("victim-co")
    produce(settings, [
        crossing(1, "nurture", "down", traits={"email": "lead-1@acme.io", "salesforce_id": f"{webhook.url}/steal"}),
        crossing(2, "nurture", "down", traits={"email": "lead-2@acme.io", "salesforce_id": f"../Account/{victim}"}),
        account_crossing(account_id=f"{webhook.url}/steal-account"),
    ])
    mapping = load_mapping(settings.sink_mapping_dir / "salesforce.toml", with_deals=False)
    assert mapping.account is not None
    by_salesforce_id = replace(mapping, account=replace(mapping.account, id_property="Id"))

    stats = drain(SalesforceSink(settings, by_salesforce_id), settings)

    assert (stats.delivered, stats.dead_lettered) == (0, 3)
    assert webhook.requests == [] and salesforce.requests == []
    letters = read_topic(settings, f"{settings.topic_crossings}-dlq-salesforce", expect=3, idle_s=0.5)
    details = sorted(letter["detail"] for _, letter in letters)
    assert [letter["reason"] for _, letter in letters] == ["permanent"] * 3
    assert details == sorted([
        f"salesforce: lead lead-1's salesforce_id trait is '{webhook.url}/steal', not a Salesforce record id (15 or 18 letters and digits)",
        f"salesforce: lead lead-2's salesforce_id trait is '../Account/{victim}', not a Salesforce record id (15 or 18 letters and digits)",
        f"salesforce: account crossing acme/b2b/up/buying/1's account_id (id_property = \"Id\") is '{webhook.url}/steal-account', "
        "not a Salesforce record id (15 or 18 letters and digits)",
    ])


def test_an_account_id_that_is_not_a_string_is_dead_lettered_as_malformed_at_once(
    sink_settings: Settings, salesforce: FakeSalesforce
) -> None:
    # A list made the Account look-up an IN-list (the first of several Accounts got the update);
    # an object failed in the SOQL formatting after the crossing was read, and was retried.
    settings = salesforce_settings(sink_settings, salesforce)
    salesforce.add_account("acme")
    salesforce.add_account("globex")
    produce(settings, [account_crossing(account_id=["globex", "acme"]), account_crossing(account_id={"id": "acme"})])

    stats = drain(SalesforceSink(settings), settings)

    assert (stats.delivered, stats.dead_lettered, stats.retries) == (0, 2, 0)
    assert salesforce.requests == []
    letters = read_topic(settings, f"{settings.topic_crossings}-dlq-salesforce", expect=2, idle_s=0.5)
    assert [letter["reason"] for _, letter in letters] == ["malformed"] * 2
    assert sorted(letter["detail"] for _, letter in letters) == [
        "salesforce: not a crossing: field 'account_id' must be a string or null, got an array",
        "salesforce: not a crossing: field 'account_id' must be a string or null, got an object",
    ]


def test_a_15_character_salesforce_id_is_accepted(sink_settings: Settings, salesforce: FakeSalesforce) -> None:
    settings = salesforce_settings(sink_settings, salesforce)
    lead_id = salesforce.add_lead("someone@acme.io")[:15]
    salesforce.records["Lead"][lead_id] = salesforce.records["Lead"].pop(lead_id + "AAA")
    produce(settings, [crossing(1, "nurture", "down", traits={"salesforce_id": lead_id})])

    stats = drain(SalesforceSink(settings), settings)

    assert stats.delivered == 1 and salesforce.records["Lead"][lead_id]["Rating"] == "Warm"


def test_a_lead_owned_by_a_queue_gets_its_task_without_an_owner(sink_settings: Settings, salesforce: FakeSalesforce) -> None:
    """Salesforce refuses a queue as a Task's owner: given the Lead's queue, every crossing to a
    task level of a queue-owned Lead was dead-lettered, for good."""
    settings = salesforce_settings(sink_settings, salesforce)
    queued = salesforce.add_lead("lead-1@acme.io", owner_id="00G000000000007AAA")
    produce(settings, [crossing(1, "mql")])

    stats = drain(SalesforceSink(settings), settings)

    assert (stats.delivered, stats.dead_lettered) == (1, 0)
    [task] = salesforce.records["Task"].values()
    assert (task["WhoId"], task["OwnerId"]) == (queued, API_USER_ID)


def test_a_task_salesforce_creates_after_the_call_timed_out_is_found_not_created_again(
    sink_settings: Settings, salesforce: FakeSalesforce
) -> None:
    # Salesforce took 3 s to create it, the connector gave up after 2 and retried at once: its
    # query found nothing yet, so it created a second Task, and Salesforce then the first.
    settings = salesforce_settings(sink_settings, salesforce).with_overrides(sink_timeout_s=2)
    salesforce.add_lead("lead-1@acme.io")
    salesforce.inject("slow", method="POST", path="/sobjects/Task/", delay_s=3)
    produce(settings, [crossing(1, "mql")])

    started = time.monotonic()
    stats = drain(SalesforceSink(settings), settings)
    time.sleep(max(0.0, started + 4 - time.monotonic()))  # the slow call has made its record by then

    assert (stats.delivered, stats.dead_lettered) == (1, 0)
    assert len(salesforce.records["Task"]) == 1, salesforce.records["Task"]


@pytest.mark.parametrize("fault", ["trickle_headers", "trickle"])
def test_an_answer_that_never_ends_fails_the_attempt_at_the_timeout(
    sink_settings: Settings, salesforce: FakeSalesforce, fault: str
) -> None:
    # Salesforce's answer to the Lead's update, its headers or its body, comes a byte at a time,
    # each within the 1 s timeout, until the next request or 20 s: the delivery waited for it.
    settings = salesforce_settings(sink_settings, salesforce)
    salesforce.add_lead("lead-1@acme.io")
    salesforce.inject(fault, method="PATCH", path="/sobjects/Lead/", status=200, delay_s=20)
    produce(settings, [crossing(1, "engaged", "down")])

    started = time.monotonic()
    stats = drain(SalesforceSink(settings), settings)

    assert (stats.delivered, stats.retries) == (1, 1) and time.monotonic() - started < 8
    first, second = salesforce.requests_to("PATCH", "/sobjects/Lead/")
    assert second.at - first.at < 3


@pytest.mark.parametrize(("overrides", "named"), [
    # It went on to log in without a password, and failed on the network with urllib3's words.
    ({"salesforce_username": "api@acme.example"}, "LEADSTREAM_SALESFORCE_PASSWORD is empty: a password login"),
    # simple-salesforce reaches an instance over HTTPS whatever its URL says: every delivery to
    # an http:// one failed with an SSL error.
    ({"salesforce_instance_url": "http://127.0.0.1:9", "salesforce_access_token": "t"},
     "LEADSTREAM_SALESFORCE_INSTANCE_URL=http://127.0.0.1:9: Salesforce is reached over HTTPS only"),
    # No Salesforce here: a login that cannot reach its host says which setting names it.
    ({"salesforce_username": "api@acme.example", "salesforce_password": "pw", "salesforce_domain": "127.0.0.1:9/no"},
     "Salesforce login at 127.0.0.1:9/no.salesforce.com: no answer"),
])
def test_a_password_login_that_cannot_be_made_stops_the_connector_naming_the_setting(
    sink_settings: Settings, overrides: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(named)) as caught:
        SalesforceSink(sink_settings.with_overrides(sink_timeout_s=2, **overrides))
    assert "LEADSTREAM_SALESFORCE_" in str(caught.value)
