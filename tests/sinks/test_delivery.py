"""The runner's guarantees with real `leadstream sink` processes: no duplicates under redelivery, dead
letters with their reason, and replay."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from dataclasses import replace
from typing import Any

import orjson
import pytest
import requests
from kafka import KafkaAdminClient, KafkaProducer
from redis import Redis

from sinks.base import Crossing, CrossingSink, Position, Steps
from sinks.errors import PermanentError
from sinks.hubspot import HubSpotSink
from sinks.mapping import load_mapping
from sinks.salesforce import SalesforceSink
from sinks.runner import SinkRunner, group_id, replay
from sinks.webhook import WebhookSink
from streams import services
from streams.history import read_to_end
from streams.processes import free_port
from streams.settings import Settings
from streams.topics import ensure_topics, partition_count
from tests.infra import add_partitions, leadstream, read_topic, wait_for
from tests.sinks.conftest import REFUSING_WRITES, RedisServer, account_crossing, crossing, drain, produce
from tests.sinks.fake_http import WebhookReceiver
from tests.sinks.fake_hubspot import FakeHubSpot
from tests.sinks.fake_salesforce import FakeSalesforce
from tests.streams.test_worker_stop import own_kafka  # noqa: F401 - the fixture


def committed_everything(settings: Settings, connector: str) -> bool:
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition

    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    try:
        committed = admin.list_group_offsets({group_id(settings, connector): None})[group_id(settings, connector)]
        parts = [TopicPartition(settings.topic_crossings, p) for p in range(settings.partitions)]
        ends = consumer.end_offsets(parts)
        return all((committed[tp].offset if tp in committed else 0) == ends[tp] for tp in parts)
    finally:
        admin.close()
        consumer.close()


def test_hubspot_killed_between_the_crm_action_and_the_commit_makes_no_duplicate(
    sink_settings: Settings, hubspot: FakeHubSpot, sink_process: Any
) -> None:
    # The held answer must outlast the kill: a request timeout shorter than the hold would let
    # the connector retry, find the deal and commit before the kill lands.
    settings = sink_settings.with_overrides(hubspot_base_url=hubspot.url, sink_timeout_s=60)
    for n in range(6):
        hubspot.add_contact(f"lead-{n}@acme.io")
    # HubSpot creates the first deal, then the answer is held back: the kill lands after the
    # CRM acted and before the connector knew (the hardest spot), while other lanes finish
    # deliveries whose offsets are not committed yet.
    hubspot.inject("hold", method="POST", path="/deals$", delay_s=30)
    produce(settings, [crossing(n, "sql") for n in range(6)])

    first = sink_process(settings, "hubspot")
    wait_for(lambda: len(hubspot.objects["deals"]) >= 1, 60, "the first deal")
    time.sleep(1.0)  # the other lanes deliver meanwhile
    first.kill()
    assert not committed_everything(settings, "hubspot")

    second = sink_process(settings, "hubspot")
    wait_for(lambda: committed_everything(settings, "hubspot"), 60, "the restarted connector to catch up")
    second.stop()

    deals = [d["properties"]["leadstream_crossing_id"] for d in hubspot.objects["deals"].values()]
    tasks = [t["properties"]["leadstream_crossing_id"] for t in hubspot.objects["tasks"].values()]
    expected = sorted(crossing(n, "sql")["id"] for n in range(6))
    assert sorted(deals) == expected, f"deals: {sorted(deals)}\n{second.tail()}"
    assert sorted(tasks) == expected
    assert hubspot.requests_to("POST", "/deals/search$"), "the held deal was not looked up after the restart"


def test_salesforce_killed_between_the_crm_action_and_the_commit_makes_no_duplicate(
    sink_settings: Settings, salesforce: FakeSalesforce, sink_process: Any, tls_ca: Any
) -> None:
    settings = sink_settings.with_overrides(salesforce_instance_url=salesforce.url, sink_timeout_s=60)
    for n in range(4):
        salesforce.add_lead(f"lead-{n}@acme.io")
    salesforce.inject("hold", method="POST", path="/sobjects/Task/$", delay_s=30)
    produce(settings, [crossing(n, "mql") for n in range(4)])

    first = sink_process(settings, "salesforce")
    wait_for(lambda: len(salesforce.records["Task"]) >= 1, 60, "the first Task")
    first.kill()

    second = sink_process(settings, "salesforce")
    wait_for(lambda: committed_everything(settings, "salesforce"), 60, "the restarted connector to catch up")
    second.stop()

    tasks = sorted(t["Leadstream_Crossing_Id__c"] for t in salesforce.records["Task"].values())
    assert tasks == sorted(crossing(n, "mql")["id"] for n in range(4)), second.tail()


def test_redelivery_of_delivered_crossings_is_skipped(sink_settings: Settings, hubspot: FakeHubSpot) -> None:
    settings = sink_settings.with_overrides(hubspot_base_url=hubspot.url)
    for n in range(5):
        hubspot.add_contact(f"lead-{n}@acme.io")
    produce(settings, [crossing(n, "sql") for n in range(5)])
    assert drain(HubSpotSink(settings), settings).delivered == 5
    requests_before = len(hubspot.requests)

    # Forget the group's offsets: Kafka hands every crossing out again, as after a lost commit.
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    admin.delete_groups([group_id(settings, "hubspot")])
    admin.close()
    again = drain(HubSpotSink(settings), settings)

    assert (again.delivered, again.skipped) == (0, 5)
    assert len(hubspot.requests) == requests_before
    assert len(hubspot.objects["deals"]) == 5


def test_crm_connectors_without_an_account_mapping_ignore_account_crossings_and_count_them(
    sink_settings: Settings, hubspot: FakeHubSpot, salesforce: FakeSalesforce, tls_ca: Any
) -> None:
    settings = sink_settings.with_overrides(hubspot_base_url=hubspot.url, salesforce_instance_url=salesforce.url)
    hubspot.add_contact("lead-1@acme.io")
    hubspot.add_company("acme")
    salesforce.add_lead("lead-1@acme.io")
    salesforce.add_account("acme")
    produce(settings, [account_crossing(), crossing(1, "sql")])
    mappings = settings.sink_mapping_dir

    without = replace(load_mapping(mappings / "hubspot.toml", with_deals=True), account=None)
    stats = drain(HubSpotSink(settings, without), settings)
    assert (stats.delivered, stats.ignored, stats.dead_lettered) == (1, 1, 0)
    assert len(hubspot.objects["deals"]) == 1  # the lead's; nothing was asked about the account
    assert not [r for r in hubspot.requests if "/companies/" in r.path]
    without = replace(load_mapping(mappings / "salesforce.toml", with_deals=False), account=None)
    stats = drain(SalesforceSink(settings, without), settings)
    assert (stats.delivered, stats.ignored, stats.dead_lettered) == (1, 1, 0)
    assert not [r for r in salesforce.requests if "Account" in r.path or "Account" in str(r.query)]


def test_permanent_errors_are_dead_lettered_with_the_reason_and_replay_redrives_them(
    sink_settings: Settings, hubspot: FakeHubSpot
) -> None:
    settings = sink_settings.with_overrides(hubspot_base_url=hubspot.url)
    hubspot.add_contact("lead-1@acme.io")
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    producer.send(settings.topic_crossings, key=b"lead-x", value=b"{not json")
    producer.flush()
    producer.close()
    produce(settings, [crossing(1, "sql"), crossing(2, "sql")])  # lead-2 has no HubSpot contact yet

    stats = drain(HubSpotSink(settings), settings)

    assert (stats.delivered, stats.dead_lettered) == (1, 2)
    dlq = f"{settings.topic_crossings}-dlq-hubspot"
    letters = {key: value for key, value in read_topic(settings, dlq, expect=2, idle_s=0.5)}
    assert letters[b"lead-x"]["reason"] == "malformed" and "not JSON" in letters[b"lead-x"]["detail"]
    missing = letters[b"lead-2"]
    assert missing["reason"] == "permanent"
    assert "contact by the email trait of lead lead-2: not found (404)" in missing["detail"]
    assert missing["source"]["topic"] == settings.topic_crossings and orjson.loads(missing["original"])["lead_id"] == "lead-2"

    hubspot.add_contact("lead-2@acme.io")  # the cause is fixed
    result = leadstream(settings, "sink", "replay-dlq", "hubspot", check=False)

    assert "1 delivered, 0 already delivered, 0 overtaken by newer records, 0 dead-lettered again, 1 not replayable" in result.stdout, \
        result.stderr
    assert result.returncode == 1  # the malformed record cannot be fixed by replaying
    assert [d["properties"]["leadstream_crossing_id"] for d in hubspot.objects["deals"].values()] == [
        crossing(1, "sql")["id"], crossing(2, "sql")["id"]]
    # Replay consumed the letters it had, and wrote none: a second one has nothing to do.
    again = leadstream(settings, "sink", "replay-dlq", "hubspot", check=False)
    assert "0 delivered, 0 already delivered, 0 overtaken by newer records, 0 dead-lettered again, 0 not replayable" in again.stdout, \
        again.stderr
    assert again.returncode == 0 and len(hubspot.objects["deals"]) == 2


@pytest.mark.parametrize("connector", ["hubspot", "salesforce"])
def test_a_lead_looked_up_by_e_mail_is_named_by_its_id_in_the_log_and_its_letter_s_detail_not_by_the_address(
    sink_settings: Settings, hubspot: FakeHubSpot, salesforce: FakeSalesforce, caplog: pytest.LogCaptureFixture, connector: str
) -> None:
    # Both named the address ("HubSpot contact email=pat.doe@...: not found", "no unconverted
    # Salesforce Lead has the email pat.doe@..."), at WARNING at every retry and dead letter: a log
    # kept for months held the customers' e-mail addresses, which `leadstream forget` cannot erase.
    address = "pat.doe@private.example"
    if connector == "hubspot":
        settings = sink_settings.with_overrides(hubspot_base_url=hubspot.url)
        hubspot.inject("status", status=500, path="/contacts/", count=1)  # a retry is logged too
        sink: CrossingSink = HubSpotSink(settings)
    else:
        settings = sink_settings.with_overrides(salesforce_instance_url=salesforce.url)
        salesforce.inject("status", status=503, path="/query", count=1)
        sink = SalesforceSink(settings)
    produce(settings, [crossing(2, "sql", email=address)])  # no CRM record has it

    with caplog.at_level(logging.DEBUG, logger="leadstream"):
        stats = drain(sink, settings)

    assert (stats.retries, stats.dead_lettered) == (1, 1)
    [(_, letter)] = read_topic(settings, f"{settings.topic_crossings}-dlq-{connector}", expect=1, idle_s=0.5)
    assert "email trait of lead lead-2" in letter["detail"] and address not in letter["detail"]
    assert address in letter["original"]  # the crossing, for whoever must look the record up
    logged = [record.getMessage() for record in caplog.records]
    assert any("retrying" in line for line in logged) and any("dead-lettered" in line for line in logged), logged
    assert not [line for line in logged if address in line]


def test_a_connector_at_debug_logs_neither_the_records_it_reads_nor_the_dead_letters_it_writes(
    sink_settings: Settings, hubspot: FakeHubSpot
) -> None:
    # kafka-python wrote each fetch answer and each message sent at DEBUG, bytes and all: with
    # LEADSTREAM_LOG_LEVEL=debug, every crossing read and every dead letter written put the lead's
    # traits (e-mail, phone, name) in the connector's log.
    address, phone = "pat.doe@private.example", "+15550001111"
    settings = sink_settings.with_overrides(hubspot_base_url=hubspot.url, log_level="debug")
    produce(settings, [crossing(2, "sql", traits={"email": address, "phone": phone})])  # no contact has it
    assert drain(HubSpotSink(settings), settings).dead_lettered == 1

    result = leadstream(settings, "sink", "replay-dlq", "hubspot", check=False)  # reads the letter, writes it again

    assert "1 dead-lettered again" in result.stdout, result.stderr[-2000:]
    assert " DEBUG kafka.consumer.fetcher: " in result.stderr  # the clients' other debug lines are kept
    assert address not in result.stderr and phone not in result.stderr


def test_replay_with_drop_permanent_drops_the_letters_that_fail_for_good_and_the_depth_falls_to_0(
    sink_settings: Settings, hubspot: FakeHubSpot
) -> None:
    # A contact HubSpot lacks (the connectors never create one) was dead-lettered again at every
    # replay: leadstream_sink_dlq_depth stayed above 0, and its alert fired, for 30 days.
    from streams.lag import LagProbe

    settings = sink_settings.with_overrides(hubspot_base_url=hubspot.url)
    produce(settings, [crossing(2, "sql"), crossing(3, "sql")])  # neither has a contact yet
    assert drain(HubSpotSink(settings), settings).dead_lettered == 2
    hubspot.add_contact("lead-3@acme.io")
    probe = LagProbe(settings)

    def depth() -> int:  # as the connector's watch measures it
        return sum(probe.lag(group_id(settings, "hubspot") + "-replay", f"{settings.topic_crossings}-dlq-hubspot").values())

    try:
        kept = leadstream(settings, "sink", "replay-dlq", "hubspot", check=False)
        assert kept.returncode == 1 and "1 delivered" in kept.stdout and "1 dead-lettered again" in kept.stdout, kept.stderr
        assert depth() == 1

        dropped = leadstream(settings, "sink", "replay-dlq", "hubspot", "--drop-permanent", check=False)

        assert dropped.returncode == 0, dropped.stderr
        assert "0 delivered" in dropped.stdout and "0 dead-lettered again" in dropped.stdout
        assert "1 failing for good dropped (--drop-permanent)" in dropped.stdout
        assert "is dropped (--drop-permanent), not dead-lettered again: HubSpot contact by the email trait of lead lead-2: " \
            "not found (404)" \
            in dropped.stderr
        assert depth() == 0
    finally:
        probe.close()


def test_replay_goes_past_letters_kept_in_part_and_records_that_are_not_dead_letters(
    sink_settings: Settings, webhook: WebhookReceiver
) -> None:
    settings = sink_settings.with_overrides(webhook_url=webhook.url)
    dlq = f"{settings.topic_crossings}-dlq-webhook"
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    # Not a crossing, and so large once escaped that its letter keeps only its size and head.
    producer.send(settings.topic_crossings, key=b"lead-1", value=b'"' * 600_000)
    producer.flush()
    assert drain(WebhookSink(settings), settings).dead_lettered == 1
    producer.send(dlq, key=b"lead-x", value=None)  # a tombstone: not a dead letter
    producer.send(dlq, key=b"lead-y", value=b"stray")
    producer.flush()
    producer.close()
    # A genuine letter after them: a crossing refused while the receiver was gone.
    webhook.inject("status", status=410)
    produce(settings, [crossing(2, "mql")])
    assert drain(WebhookSink(settings), settings).dead_lettered == 1

    replayed = SinkRunner(WebhookSink(settings), settings).replay_dead_letters()

    assert (replayed.delivered, replayed.dead_lettered, replayed.unreplayable) == (1, 0, 3)
    assert [p.json()["id"] for p in webhook.requests_to("POST", "/")] == [crossing(2, "mql")["id"]] * 2
    assert sum(1 for _ in read_to_end(settings, dlq)) == 4  # nothing dead-lettered again
    # The replay committed past all of them.
    again = SinkRunner(WebhookSink(settings), settings).replay_dead_letters()
    assert (again.delivered, again.dead_lettered, again.unreplayable) == (0, 0, 0)


def test_a_dead_letter_written_twice_is_replayed_and_counted_once(
    sink_settings: Settings, webhook: WebhookReceiver, capsys: pytest.CaptureFixture[str]
) -> None:
    # A crash before the offset commit writes a letter again. Both copies were replayed and, still
    # failing, dead-lettered again: the doubles never collapsed, and each replay counted them twice.
    settings = sink_settings.with_overrides(webhook_url=webhook.url)
    dlq = f"{settings.topic_crossings}-dlq-webhook"
    webhook.inject("status", status=400, count=100, body={"error": "unknown lead"})
    produce(settings, [crossing(1, "sql"), crossing(2, "sql"), crossing(2, "mql", "down", from_level="sql")])
    assert drain(WebhookSink(settings), settings).dead_lettered == 3
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    for message in list(read_to_end(settings, dlq)):
        producer.send(dlq, key=message.key, value=message.value)
    producer.flush()
    producer.close()
    posted = len(webhook.requests_to("POST", "/"))

    replayed = SinkRunner(WebhookSink(settings), settings).replay_dead_letters()

    # lead-2's up-crossing is overtaken by its own way down; each is counted once.
    assert (replayed.delivered, replayed.stale, replayed.dead_lettered, replayed.repeated) == (0, 1, 2, 3)
    assert len(webhook.requests_to("POST", "/")) == posted + 2
    assert sum(1 for _ in read_to_end(settings, dlq)) == 6 + 2
    exit_status = replay(WebhookSink(settings), settings)  # what the next replay finds: one letter each
    assert exit_status == 1
    assert ("0 delivered, 0 already delivered, 0 overtaken by newer records, 2 dead-lettered again, 0 not replayable "
            "(see the log), 0 of leads forgotten since (not delivered), 0 copies of letters replayed already") \
        in capsys.readouterr().out


def test_a_letter_whose_message_is_still_not_a_crossing_is_replayed_once_and_not_dead_lettered_again(
    sink_settings: Settings, webhook: WebhookReceiver
) -> None:
    # Dead-lettered again, each replay read the copies the last one wrote: the topic grew by them,
    # and `replay-dlq` never exited 0.
    settings = sink_settings.with_overrides(webhook_url=webhook.url)
    dlq = f"{settings.topic_crossings}-dlq-webhook"
    produce(settings, [{**crossing(1, "mql"), "direction": "sideways"}, crossing(2, "mql")])
    assert drain(WebhookSink(settings), settings).dead_lettered == 1

    replayed = SinkRunner(WebhookSink(settings), settings).replay_dead_letters()

    assert (replayed.delivered, replayed.dead_lettered, replayed.unreplayable) == (0, 0, 1)
    assert sum(1 for _ in read_to_end(settings, dlq)) == 1  # the letter stays, alone
    again = SinkRunner(WebhookSink(settings), settings).replay_dead_letters()
    assert (again.delivered, again.dead_lettered, again.unreplayable) == (0, 0, 0)


def test_a_connector_with_a_broken_mapping_refuses_to_start_and_names_file_and_field(
    sink_settings: Settings, tmp_path: Any
) -> None:
    (tmp_path / "hubspot.toml").write_text('[fields]\nscore = "leadstream_score"\n[task]\nlevels = "mql"\n')
    settings = sink_settings.with_overrides(sink_mapping_dir=tmp_path)

    result = leadstream(settings, "sink", "hubspot", check=False, timeout=60)

    assert result.returncode == 1
    assert f"{tmp_path / 'hubspot.toml'}: [task].levels: must be a non-empty list of level names" in result.stderr


def test_a_record_no_parser_foresaw_is_dead_lettered_and_the_connector_goes_on(sink_settings: Settings, hubspot: FakeHubSpot) -> None:
    settings = sink_settings.with_overrides(hubspot_base_url=hubspot.url)
    hubspot.add_contact("lead-1@acme.io")

    class Surprised(HubSpotSink):
        """A parser with a bug, as a record nested too deep once met in every connector (RecursionError)."""

        def parse(self, key: bytes | None, value: bytes | None, position: Position) -> Any:
            if key == b"odd":
                raise RecursionError("maximum recursion depth exceeded")
            return super().parse(key, value, position)

    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    producer.send(settings.topic_crossings, key=b"odd", value=b"{}")
    producer.flush()
    producer.close()
    produce(settings, [crossing(1, "sql")])

    stats = drain(Surprised(settings), settings)

    assert (stats.delivered, stats.dead_lettered) == (1, 1)
    [(key, letter)] = read_topic(settings, f"{settings.topic_crossings}-dlq-hubspot", expect=1, idle_s=0.5)
    assert key == b"odd" and letter["reason"] == "malformed" and "RecursionError" in letter["detail"]


def test_sigterm_stops_a_connector_waiting_for_its_rate_limit_at_once_and_commits_nothing_undelivered(
    sink_settings: Settings, webhook: WebhookReceiver, sink_process: Any
) -> None:
    # One request a minute: the second crossing waits about 70 s for its slot, as long as a
    # CRM's Retry-After can make every lane wait. SIGTERM was seen only once that wait ended,
    # after the 20 s that `stop` gives before it kills.
    settings = sink_settings.with_overrides(webhook_url=webhook.url, webhook_rate_limit="1/60s")
    produce(settings, [crossing(1, "mql"), crossing(2, "mql")])
    first = sink_process(settings, "webhook")
    wait_for(lambda: webhook.requests_to("POST", "/"), 60, "the first crossing")
    time.sleep(0.5)  # the second one is waiting for its slot

    asked = time.monotonic()
    first.stop()

    assert first.proc.returncode == 0 and time.monotonic() - asked < 5, first.tail()
    assert len(webhook.requests_to("POST", "/")) == 1
    assert not committed_everything(settings, "webhook")
    # What was not delivered is delivered on the next start, what was is not again.
    second = sink_process(settings.with_overrides(webhook_rate_limit="unlimited"), "webhook")
    wait_for(lambda: committed_everything(settings, "webhook"), 60, "the restarted connector to catch up")
    second.stop()
    assert sorted(p.json()["id"] for p in webhook.requests_to("POST", "/")) == sorted(
        crossing(n, "mql")["id"] for n in (1, 2)), second.tail()


def test_a_stop_that_comes_once_the_batch_is_delivered_commits_it(sink_settings: Settings) -> None:
    # SIGTERM while the last message of a batch was being delivered: every lane finished, yet
    # the batch was left uncommitted, and the next start read it all again.
    settings = sink_settings
    stop = threading.Event()
    batch = [crossing(1, "mql"), crossing(1, "sql", from_level="mql")]

    class StoppedDuringTheLast(CrossingSink):
        name = "stopped"

        def __init__(self) -> None:
            self.delivered: list[str] = []

        def deliver(self, item: Crossing, steps: Steps) -> None:
            self.delivered.append(item.id)
            if item.id == batch[-1]["id"]:
                stop.set()

    produce(settings, batch)
    sink = StoppedDuringTheLast()
    SinkRunner(sink, settings, stop=stop).run()

    assert sink.delivered == [c["id"] for c in batch]
    assert committed_everything(settings, "stopped")
    again = drain(StoppedDuringTheLast(), settings)
    assert (again.delivered, again.skipped) == (0, 0)


def retried_slowly(settings: Settings, hubspot: FakeHubSpot) -> Settings:
    """lead-1's contact answers 500 to every PATCH, retried 8 times over 11.5 s at the least;
    lead-2's calls succeed."""
    for n in (1, 2):
        hubspot.add_contact(f"lead-{n}@acme.io")
    hubspot.inject("status", count=1000, method="PATCH", path="/contacts/lead-1@", status=500)
    return settings.with_overrides(hubspot_base_url=hubspot.url, sink_max_attempts=8, sink_backoff_base_ms=1000,
                                   sink_backoff_max_ms=4000)


def send_to_partition_0(settings: Settings, record: dict[str, Any]) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    producer.send(settings.topic_crossings, key=record["lead_id"].encode(), value=orjson.dumps(record), partition=0)
    producer.flush()
    producer.close()


# One delivery at once: as many leads retried as LEADSTREAM_SINK_CONCURRENCY held every pool
# thread through their backoffs, and the others waited as before.
@pytest.mark.parametrize("concurrency", [8, 1])
def test_a_lead_whose_delivery_is_retried_does_not_hold_back_the_crossings_of_others_that_come_after_it(
    sink_settings: Settings, hubspot: FakeHubSpot, concurrency: int
) -> None:
    # The connector polled again only once every lead of its batch was done: lead-2's crossing,
    # produced while lead-1's was retried, waited until lead-1's was dead-lettered (26 s with
    # the default 8 tries).
    settings = retried_slowly(sink_settings, hubspot).with_overrides(sink_concurrency=concurrency)
    stop = threading.Event()
    running = threading.Thread(target=SinkRunner(HubSpotSink(settings), settings, stop=stop).run)
    produce(settings, [crossing(1, "mql")])
    running.start()
    try:
        wait_for(lambda: hubspot.requests_to("PATCH", "/contacts/lead-1@"), 60, "lead-1's first try")
        produce(settings, [crossing(2, "mql")])
        wait_for(lambda: hubspot.requests_to("PATCH", "/contacts/lead-2@"), 60, "lead-2's crossing")
        tries = len(hubspot.requests_to("PATCH", "/contacts/lead-1@"))
    finally:
        stop.set()
        running.join(60)
    assert tries < settings.sink_max_attempts, "lead-2's crossing waited for lead-1's to be dead-lettered"
    assert not running.is_alive()


def test_an_offset_is_committed_only_once_the_messages_before_it_in_its_partition_are_done(
    sink_settings: Settings, hubspot: FakeHubSpot
) -> None:
    # Two leads of one partition: lead-2's crossing, after lead-1's, is delivered while lead-1's
    # is retried. Committing past it would lose lead-1's at a restart.
    from kafka.structs import TopicPartition

    settings = retried_slowly(sink_settings, hubspot)
    stop = threading.Event()
    runner = SinkRunner(HubSpotSink(settings), settings, stop=stop)
    running = threading.Thread(target=runner.run)
    send_to_partition_0(settings, crossing(1, "mql"))
    running.start()
    try:
        wait_for(lambda: hubspot.requests_to("PATCH", "/contacts/lead-1@"), 60, "lead-1's first try")
        send_to_partition_0(settings, crossing(2, "mql"))
        wait_for(lambda: runner.stats.delivered == 1, 60, "lead-2's crossing to be delivered")
        tries = len(hubspot.requests_to("PATCH", "/contacts/lead-1@"))
    finally:
        stop.set()  # lead-1's is cut short in its backoff: not finished
        running.join(60)
    assert tries < settings.sink_max_attempts and runner.stats.dead_lettered == 0

    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    committed = admin.list_group_offsets({group_id(settings, "hubspot"): None})[group_id(settings, "hubspot")]
    admin.close()
    assert TopicPartition(settings.topic_crossings, 0) not in committed, committed
    hubspot.faults.clear()  # lead-1's contact is fixed
    again = drain(HubSpotSink(settings), settings)
    assert (again.delivered, again.skipped, again.dead_lettered) == (1, 1, 0)
    contacts = {c["properties"]["email"]: c["properties"] for c in hubspot.objects["contacts"].values()}
    assert contacts["lead-1@acme.io"].get("leadstream_level") == contacts["lead-2@acme.io"].get("leadstream_level") == "mql"


def test_sigterm_while_the_connector_waits_for_an_unreachable_kafka_is_a_clean_stop(
    sink_settings: Settings, webhook: WebhookReceiver, sink_process: Any
) -> None:
    # A connector stopped (a rollout, `services down`) while its start waited for a broker that did
    # not answer exited with 1 and "cannot reach Kafka ...; run `leadstream services up`".
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        bootstrap = f"127.0.0.1:{closed.getsockname()[1]}"
    settings = sink_settings.with_overrides(webhook_url=webhook.url, kafka_bootstrap=bootstrap, kafka_connect_timeout_s=3)
    sink = sink_process(settings, "webhook")
    wait_for(lambda: "sink webhook: starting" in sink.log.read_text(), 30, "the connector to start")

    asked = time.monotonic()
    sink.stop()

    assert sink.proc.returncode == 0 and time.monotonic() - asked < 6, sink.tail()
    assert "stopped before Kafka and Redis answered" in sink.tail() and "cannot reach Kafka" not in sink.tail()


def test_a_connector_whose_topic_does_not_exist_stops_naming_the_setting(sink_settings: Settings) -> None:
    # It waited for the topic for ever, logging its absence ten times a second, and made a
    # dead-letter topic named after the typo.
    settings = sink_settings.with_overrides(topic_crossings=sink_settings.topic_crossings + "-typo")
    for command in (["sink", "webhook"], ["sink", "replay-dlq", "webhook"]):
        result = leadstream(settings.with_overrides(webhook_url="http://127.0.0.1:9/hook"), *command, check=False, timeout=60)
        assert result.returncode == 1
        assert result.stderr.strip().endswith(f"topic {settings.topic_crossings!r} does not exist: run `leadstream topics`, or check "
                                              "LEADSTREAM_TOPIC_CROSSINGS"), result.stderr
    assert partition_count(settings, f"{settings.topic_crossings}-dlq-webhook") == 0


def test_a_connector_whose_redis_cannot_be_reached_stops_at_start_naming_the_setting(sink_settings: Settings) -> None:
    # It started, read each crossing, tried it until its retries ran out and dead-lettered it:
    # a typo in LEADSTREAM_REDIS_URL cost every crossing a trip to the dead-letter topic.
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        url = f"redis://user:secret@127.0.0.1:{closed.getsockname()[1]}/0"
    produce(sink_settings, [crossing("lead-1", "mql")])
    settings = sink_settings.with_overrides(redis_url=url, webhook_url="http://127.0.0.1:9/hook")
    result = leadstream(settings, "sink", "webhook", check=False, timeout=60)
    assert result.returncode == 1
    assert "Redis could not be reached" in result.stderr and "check LEADSTREAM_REDIS_URL" in result.stderr, result.stderr
    assert "secret" not in result.stderr, result.stderr
    assert partition_count(settings, f"{settings.topic_crossings}-dlq-webhook") == 0  # nothing read, nothing set aside


def test_a_rebalance_that_gives_a_member_back_its_partitions_loses_none_of_their_queued_messages(
    sink_settings: Settings, webhook: WebhookReceiver
) -> None:
    # A second member joining revokes every partition of the first (eager rebalancing), which
    # dropped the messages it had queued, and gives some back: kafka-python went on from where it
    # had fetched in those, and their dropped messages were never delivered, nor dead-lettered
    # (80 crossings to a receiver taking 2 s each: 28 lost, their offsets committed with the next).
    settings = sink_settings.with_overrides(webhook_url=webhook.url + "/hook", sink_timeout_s=10)
    webhook.latency_s = 1.0  # the first member has most of its poll still queued when the second joins
    records = [crossing(n, "mql", seq=seq) for seq in range(3) for n in range(16)]
    produce(settings, records)
    ids = {r["id"] for r in records}

    def missing() -> set[str]:
        return ids - {post.json()["id"] for post in webhook.requests_to("POST", "/hook")}

    def quiet_s() -> float:  # since the last POST came in
        return time.monotonic() - max(post.at for post in webhook.requests_to("POST", "/hook"))

    stops = [threading.Event(), threading.Event()]
    members = [threading.Thread(target=SinkRunner(WebhookSink(settings), settings, stop=stop).run) for stop in stops]
    members[0].start()
    try:
        wait_for(lambda: webhook.requests_to("POST", "/hook"), 60, "the first member's first delivery")
        members[1].start()
        wait_for(lambda: not missing() or quiet_s() > 10, 120, "every crossing delivered, or none for 10 s")
        assert not missing(), sorted(missing())
        wait_for(lambda: committed_everything(settings, "webhook"), 30, "every offset committed")
    finally:
        for stop in stops:
            stop.set()
        for member in members:
            member.join(60)


@pytest.mark.parametrize("refusal", sorted(REFUSING_WRITES))
def test_a_delivery_whose_ledger_write_redis_refuses_is_not_sent_again_and_recorded_once_redis_takes_it(
    refusal: str, sink_settings: Settings, webhook: WebhookReceiver, redis_server: RedisServer
) -> None:
    # The failed write failed the attempt, which was tried again whole: the receiver got the
    # POST LEADSTREAM_SINK_MAX_ATTEMPTS times, then the crossing was dead-lettered (a replay
    # POSTed it once more), counted delivered 0 while /readyz said ready.
    settings = sink_settings.with_overrides(redis_url=redis_server.url, webhook_url=f"{webhook.url}/hook")
    refuse, take = REFUSING_WRITES[refusal]
    redis = Redis.from_url(redis_server.url)
    redis.execute_command(*refuse)
    produce(settings, [crossing(1, "mql")])
    runner = SinkRunner(WebhookSink(settings), settings)
    running = threading.Thread(target=lambda: runner.run(stop_at_end=True), daemon=True)
    running.start()
    try:
        wait_for(lambda: len(webhook.requests_to("POST", "^/hook$")) == 1, what="the POST")
        time.sleep(2)  # the 4 tries of sink_settings would be over within 1 s
        assert len(webhook.requests_to("POST", "^/hook$")) == 1
        assert not runner.ready()
        assert not committed_everything(settings, "webhook")  # the offset waits for the record
        redis.execute_command(*take)
        running.join(timeout=10)
        assert not running.is_alive()
    finally:
        runner.stop.set()
        running.join(timeout=10)
        redis.close()
    assert len(webhook.requests_to("POST", "^/hook$")) == 1
    assert (runner.stats.delivered, runner.stats.dead_lettered) == (1, 0)
    assert runner.ledger.delivered(crossing(1, "mql")["id"]) and runner.ready()
    assert committed_everything(settings, "webhook")


def test_a_connector_stopped_while_its_ledger_write_is_refused_commits_nothing_and_delivers_again_at_restart(
    sink_settings: Settings, webhook: WebhookReceiver, redis_server: RedisServer
) -> None:
    settings = sink_settings.with_overrides(redis_url=redis_server.url, webhook_url=f"{webhook.url}/hook")
    refuse, take = REFUSING_WRITES["out of memory"]
    redis = Redis.from_url(redis_server.url)
    redis.execute_command(*refuse)
    produce(settings, [crossing(1, "mql")])
    runner = SinkRunner(WebhookSink(settings), settings)
    running = threading.Thread(target=runner.run, daemon=True)
    running.start()
    try:
        wait_for(lambda: len(webhook.requests_to("POST", "^/hook$")) == 1, what="the POST")
    finally:
        runner.stop.set()
        running.join(timeout=10)
    assert not running.is_alive()
    assert (runner.stats.delivered, runner.stats.dead_lettered) == (0, 0)
    assert not committed_everything(settings, "webhook")
    redis.execute_command(*take)
    redis.close()
    again = drain(WebhookSink(settings), settings)  # as after a crash: at least once
    assert (again.delivered, again.dead_lettered) == (1, 0)
    assert len(webhook.requests_to("POST", "^/hook$")) == 2


def test_a_connector_whose_broker_goes_away_carries_on_and_delivers_each_crossing_once_it_is_back(
    sink_settings: Settings, webhook: WebhookReceiver, sink_process: Any, own_kafka: services.Kafka  # noqa: F811
) -> None:
    """Both connectors exited 1 within a second of their broker's stop or kill, with a traceback: the
    offset commit that follows each delivery raised KafkaConnectionError, which only CommitFailedError
    was caught of. The commit is now tried again until Kafka takes it (the connector not ready
    meanwhile), and the deliveries that finished during the outage are not made again."""
    port = free_port()
    settings = sink_settings.with_overrides(kafka_bootstrap=own_kafka.settings.kafka_bootstrap, webhook_url=f"{webhook.url}/hook",
                                            metrics_port=port, kafka_connect_timeout_s=3)
    ensure_topics(settings)
    produce(settings, [crossing(n, "mql") for n in range(12)])
    webhook.latency_s = 0.6  # under sink_timeout_s (1 s): deliveries under way when the broker goes: they finish, and are committed, during the outage
    sink = sink_process(settings, "webhook")
    wait_for(lambda: webhook.requests_to("POST", "/hook"), 60, "a first delivery")
    broker = own_kafka.pid()
    assert broker is not None
    os.killpg(broker, signal.SIGKILL)
    time.sleep(8)
    assert sink.proc.poll() is None, sink.tail()
    assert requests.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 503
    own_kafka.up()
    wait_for(lambda: len(webhook.requests_to("POST", "/hook")) >= 12, 90, "every crossing delivered", 0.5)
    wait_for(lambda: requests.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200, 60, "the connector ready again", 0.5)
    delivered = [orjson.loads(post.body)["id"] for post in webhook.requests_to("POST", "/hook")]
    assert sorted(delivered) == sorted({c["id"] for c in (crossing(n, "mql") for n in range(12))}), delivered
    assert "Traceback" not in sink.log.read_text()


def test_crossings_in_partitions_added_to_the_topic_under_a_running_connector_are_delivered_within_seconds(
    sink_settings: Settings,
) -> None:
    # kafka-python refreshes a consumer's view of its topics every 5 minutes: partitions added
    # meanwhile (or a join that raced its first metadata answer and took the topic for partitionless,
    # as one CI run met) held their crossings undelivered that long.
    settings = sink_settings
    stop = threading.Event()
    delivered: list[str] = []

    class Recording(CrossingSink):
        name = "recording"

        def deliver(self, item: Crossing, steps: Steps) -> None:
            delivered.append(item.id)

    runner = SinkRunner(Recording(), settings, stop=stop)
    thread = threading.Thread(target=runner.run)
    thread.start()
    try:
        wait_for(runner.assigned.is_set, 30, "the connector to hold its partitions")
        add_partitions(settings, [settings.topic_crossings], settings.partitions + 2)
        record = crossing(1, "mql")
        producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
        producer.send(settings.topic_crossings, key=b"lead-1", value=orjson.dumps(record), partition=settings.partitions + 1)
        producer.flush()
        producer.close()
        wait_for(lambda: delivered == [record["id"]], 30, "the crossing in the added partition to be delivered")
    finally:
        stop.set()
        thread.join()


def test_a_starting_connector_is_given_its_partitions_at_its_first_join_and_handles_each_message_once(
    sink_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    # kafka-python joined before its first metadata answer named the topic: the assignor warned
    # "No partition metadata for topic ..." and gave nothing until a rejoin. Asked for the
    # partitions before the subscription (5f676ac, reverted), the first join gave them, and the
    # metadata answer that followed, newer than the snapshot the assignment was made on, asked
    # for a second join while the first messages were under way: each taken again, and those
    # dead-lettered, dead-lettered twice.
    settings = sink_settings
    crossings = [crossing(n, "mql") for n in range(8)]
    produce(settings, crossings)
    tries: list[str] = []

    class Refusing(CrossingSink):
        name = "refusing"

        def deliver(self, item: Crossing, steps: Steps) -> None:
            tries.append(item.id)
            time.sleep(0.2)  # under way long enough for a rebalance to come meanwhile
            raise PermanentError(f"{item.id} is refused")

    with caplog.at_level(logging.INFO):
        stats = drain(Refusing(), settings)

    assert sorted(tries) == sorted(c["id"] for c in crossings)
    assert stats.dead_lettered == len(crossings)
    kafka_said = [r.getMessage() for r in caplog.records if r.name.startswith("kafka.")]
    assert [m for m in kafka_said if settings.topic_crossings in m and "No partition metadata" in m] == []
    assignments = [m for m in kafka_said if m.startswith("Setting newly assigned partitions")]
    assert len(assignments) == 1, assignments
