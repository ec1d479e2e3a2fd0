"""Segment's and RudderStack's official Python libraries, pointed at the collector (a host change only)."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator

import pytest
import rudderstack.analytics.client as rudder
import segment.analytics as segment

from streams.partitioning import partition_for
from streams.settings import Settings
from streams.processes import free_port
from tests.streams.collector_support import SOURCES, WRITE_KEY, Message, ThreadedCollector, all_events, read_messages

T0 = datetime(2026, 3, 1, 9, 30, tzinfo=timezone.utc)
Errors = list[tuple[Exception, Any]]


def segment_client(host: str, errors: Errors) -> Any:
    # gzip on, as Segment documents for production; small batches so that several are sent.
    return segment.Client(WRITE_KEY, host=host, gzip=True, upload_size=40, max_retries=10,
                          on_error=lambda exc, batch: errors.append((exc, batch)))


def rudder_client(host: str, errors: Errors) -> Any:
    return rudder.Client(WRITE_KEY, host=host, gzip=True, upload_size=40, max_retries=10,
                         on_error=lambda exc, batch: errors.append((exc, batch)))


CLIENTS: dict[str, Callable[[str, Errors], Any]] = {"segment": segment_client, "rudderstack": rudder_client}


@pytest.fixture
def settings(isolated: Settings) -> Settings:
    return isolated.with_overrides(collector_write_keys=SOURCES)


def at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def in_transit(time_ms: int, sent: datetime) -> bool:
    """Whether an event time is the call's `timestamp` corrected by its request's `sentAt`, which
    the library sets from the same clock: later by the request's time in transit."""
    return 0 <= time_ms - ms(sent) < 5000


def send_every_call_kind(client: Any, tag: str) -> list[str]:
    """One call of each kind plus 120 tracks over 30 leads; returns the tracks' message ids."""
    client.track(user_id=f"{tag}-u", event="Pricing Viewed", properties={"plan": "pro"}, timestamp=at(0), message_id=f"{tag}-track")
    client.page(anonymous_id=f"{tag}-a", name="Pricing", timestamp=at(1), message_id=f"{tag}-page",
                properties={"url": "https://acme.test/pricing?ref=ad", "title": "Pricing", "referrer": "https://search.test/"})
    client.screen(user_id=f"{tag}-u", name="Billing", timestamp=at(2), message_id=f"{tag}-screen")
    client.identify(user_id=f"{tag}-u", timestamp=at(3), message_id=f"{tag}-identify",
                    traits={"email": "ada@acme.test", "title": "CTO", "company": {"employee_count": 200}, "address": {"country": "DE"}})
    client.group(user_id=f"{tag}-u", group_id="acme", traits={"name": "Acme", "employees": 200, "industry": "Software"},
                 timestamp=at(4), message_id=f"{tag}-group")
    client.alias(previous_id=f"{tag}-a", user_id=f"{tag}-u", timestamp=at(5), message_id=f"{tag}-alias")
    bulk = [f"{tag}-bulk-{i}" for i in range(120)]
    for i, message_id in enumerate(bulk):
        client.track(user_id=f"{tag}-lead-{i % 30}", event="Docs Read", timestamp=at(10 + i), message_id=message_id)
    client.flush()
    return bulk


def check_arrivals(settings: Settings, tag: str, bulk: list[str]) -> None:
    events = read_messages(settings, settings.topic_events, events=len(bulk) + 3)
    profiles = read_messages(settings, settings.topic_profiles, events=3)
    for message in events + profiles:
        leads = {e["lead_id"] for e in message.events}
        assert {partition_for(lead, settings.partitions) for lead in leads} == {message.partition}
        assert message.key == (leads.pop().encode() if len(leads) == 1 else None)
    by_id = {e["event_id"]: e for e in all_events(events + profiles)}
    assert sorted(by_id) == sorted([*bulk, *(f"{tag}-{kind}" for kind in ("track", "page", "screen", "identify", "group", "alias"))])
    assert len(all_events(events + profiles)) == len(by_id)  # no duplicates either

    def check(kind: str, seconds: int, **expected: Any) -> None:
        event = by_id[f"{tag}-{kind}"]
        assert in_transit(event["time"], at(seconds)), kind
        assert event["source"] == "website"
        assert {k: event.get(k) for k in expected} == expected, kind

    check("track", 0, lead_id=f"{tag}-u", type="pricing_viewed", properties={"plan": "pro"})
    page = by_id[f"{tag}-page"]["properties"]
    assert (page["path"], page["title"], page["referrer"], page["name"]) == ("/pricing", "Pricing", "https://search.test/", "Pricing")
    check("page", 1, lead_id=f"anon:{tag}-a", type="page_view", anonymous_id=f"{tag}-a")
    check("screen", 2, lead_id=f"{tag}-u", type="screen_view")
    traits = by_id[f"{tag}-identify"]["traits"]
    assert (traits["email"], traits["title"], traits["company_size"], traits["country"]) == ("ada@acme.test", "CTO", 200, "DE")
    check("identify", 3, lead_id=f"{tag}-u", type="identify")
    check("group", 4, lead_id=f"{tag}-u", type="group", account_id="acme")
    assert by_id[f"{tag}-group"]["traits"]["company_size"] == 200
    check("alias", 5, lead_id=f"{tag}-u", type="alias", previous_id=f"{tag}-a")
    for i, message_id in enumerate(bulk):
        assert by_id[message_id]["lead_id"] == f"{tag}-lead-{i % 30}"
        assert in_transit(by_id[message_id]["time"], at(10 + i))


@pytest.mark.parametrize("library", sorted(CLIENTS))
def test_every_call_kind_arrives_mapped_through_the_librarys_batching_and_gzip(settings: Settings, library: str) -> None:
    errors: Errors = []
    with ThreadedCollector(settings) as collector:
        client = CLIENTS[library](collector.url, errors)
        bulk = send_every_call_kind(client, library)
        client.shutdown() if library == "segment" else client.join()
    assert errors == []
    check_arrivals(settings, library, bulk)


class LateBootstrap:
    """A port for Kafka's bootstrap that refuses connections until `open()`, then forwards to the broker.

    The collector behind it answers 503 until then, as it does while Kafka is down.
    """

    def __init__(self, broker: str) -> None:
        host, _, port = broker.rpartition(":")
        self.broker = (host, int(port))
        self.port = free_port()
        self._server: socket.socket | None = None

    def open(self) -> None:
        self._server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        assert self._server is not None
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.broker)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            target.close()

    def close(self) -> None:
        if self._server is not None:
            self._server.close()


@pytest.fixture
def late_bootstrap(settings: Settings) -> Iterator[LateBootstrap]:
    bootstrap = LateBootstrap(settings.kafka_bootstrap)
    yield bootstrap
    bootstrap.close()


@pytest.mark.parametrize("library", sorted(CLIENTS))
def test_the_librarys_retries_deliver_everything_once_kafka_comes_back(
    settings: Settings, late_bootstrap: LateBootstrap, library: str
) -> None:
    errors: Errors = []
    with ThreadedCollector(settings.with_overrides(kafka_bootstrap=f"127.0.0.1:{late_bootstrap.port}"), wait_ready=False) as collector:
        client = CLIENTS[library](collector.url, errors)
        ids = [uuid.uuid4().hex for _ in range(60)]
        for i, message_id in enumerate(ids):
            client.track(user_id=f"lead-{i % 6}", event="Trial Started", timestamp=at(i), message_id=message_id)
        time.sleep(1.0)  # the library has met 503s by now
        assert collector.post("/v1/track", {"userId": "probe", "event": "A"}).status_code == 503
        late_bootstrap.open()
        client.flush()
        client.shutdown() if library == "segment" else client.join()
    assert errors == []
    delivered: list[Message] = read_messages(settings, settings.topic_events, events=len(ids))
    assert sorted(e["event_id"] for e in all_events(delivered)) == sorted(ids)


def test_rudderstacks_library_with_its_default_batches_of_calls_of_6_kb_delivers_them(settings: Settings) -> None:
    """RudderStack's libraries fill a batch up to its server's 4 MB: 100 calls of 6 KB make one
    of 600 KB, which the collector refused whole (400 too_large over Segment's 500 KB), and the
    library, which retries no 400, dropped all 100."""
    errors: Errors = []
    with ThreadedCollector(settings) as collector:
        client = rudder.Client(WRITE_KEY, host=collector.url, gzip=True, max_retries=2,
                               on_error=lambda exc, batch: errors.append((exc, batch)))
        ids = [f"m-{i}" for i in range(100)]
        for i, message_id in enumerate(ids):
            client.track(user_id=f"lead-{i}", event="Docs Read", properties={"page": "x" * 6000}, message_id=message_id)
        client.flush()
        client.join()
    assert errors == []
    delivered = all_events(read_messages(settings, settings.topic_events, events=len(ids)))
    assert sorted(e["event_id"] for e in delivered) == sorted(ids)
