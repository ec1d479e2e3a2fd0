"""The collector under heavy or hostile clients: other requests are still answered, and a client
that stalls is disconnected.

In the tests of huge requests, the collector runs as its own process: in a thread of the test, its CPU work would hold
up the test's client through the GIL, whatever the collector's event loop did."""

from __future__ import annotations

import base64
import http.client
import logging
import select
import socket
import time
from collections.abc import Iterator

import orjson
import pytest
import requests

from streams.collector import BATCH_LIMIT_BYTES
from streams.processes import CollectorProcess
from streams.settings import Settings
from tests.infra import wait_for
from tests.streams.collector_support import WRITE_KEY, ThreadedCollector, settings  # noqa: F401 - settings: a fixture


@pytest.fixture
def collector_process(settings: Settings) -> Iterator[CollectorProcess]:
    # Kafka may take longer than the default 5 s to acknowledge a batch's 250k dead letters on a
    # busy machine: the tests are about the collector's answers meanwhile, not about Kafka.
    process = CollectorProcess(settings.with_overrides(collector_ack_timeout_ms=60_000))
    process.start(ready_timeout_s=30)
    yield process
    process.stop()


def post(port: int, path: str, body: bytes) -> http.client.HTTPConnection:
    """A connection that has sent a request with its whole body; its answer is left to be read."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    auth = base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    connection.request("POST", path, body, {"Authorization": f"Basic {auth}", "Content-Type": "application/json"})
    return connection


def answered(connection: http.client.HTTPConnection) -> bool:
    return bool(select.select([connection.sock], [], [], 0)[0])


@pytest.mark.parametrize("good", [True, False], ids=["good-calls", "bad-calls"])
def test_a_huge_batch_does_not_hold_up_other_requests(collector_process: CollectorProcess, settings: Settings, good: bool) -> None:
    """A batch was mapped and produced in one go: a 4 MB batch of 80k calls held the collector's
    event loop for 1-2 s, one of 2M tiny bad calls for 10-18 s, and no other request was
    answered meanwhile (health checks timed out). Health checks sent while a huge batch is under
    way are now answered within a small part of the time the batch takes."""
    # Good: 80k calls of 80k leads, to map and hash to partitions. Bad: 250k dead letters
    # (40 MB) to produce, and refusals to report and count.
    calls = [{"type": "track", "userId": f"u-{i}", "event": "e"} for i in range(80_000)] if good else [1] * 250_000
    body = orjson.dumps({"batch": calls})
    assert len(body) <= BATCH_LIMIT_BYTES
    url = f"http://127.0.0.1:{settings.collector_port}"
    with requests.Session() as session:
        assert session.get(f"{url}/healthz", timeout=5).status_code == 200  # connected before the batch
        started = time.perf_counter()
        connection = post(settings.collector_port, "/v1/batch", body)
        waits: list[float] = []
        while not answered(connection):
            asked = time.perf_counter()
            assert session.get(f"{url}/healthz", timeout=120).status_code == 200
            waits.append(time.perf_counter() - asked)
        took_s = time.perf_counter() - started
        response = connection.getresponse()
        status, answer = response.status, orjson.loads(response.read())
    assert (status, answer["accepted"], answer.get("rejected_count", 0)) == (200, len(calls), 0) if good else (200, 0, len(calls))
    assert len(waits) >= 2, f"the batch took {took_s:.2f} s"
    # Measured on 2 loaded cores: at most 0.09 of the batch's time with slices (a collection of
    # the batch's millions of objects is the longest), 0.36-0.92 without: a quarter tells them apart.
    assert max(waits) < took_s / 4, f"a health check waited {max(waits):.2f} s of the batch's {took_s:.2f} s"


def test_concurrent_huge_batches_take_the_memory_of_those_the_bound_lets_in(settings: Settings) -> None:
    """A 4 MB batch of empty calls is ~1.4M dicts once parsed, ~300 MB of the collector's memory
    with their refusals; since batches are mapped in slices, the event loop took ten such batches
    side by side, ~2.8 GB. LEADSTREAM_COLLECTOR_MAX_PARSING_BYTES lets two in at once here; the
    others wait their turn (and are answered, not refused with 503)."""
    bound = 2 * BATCH_LIMIT_BYTES
    process = CollectorProcess(settings.with_overrides(collector_ack_timeout_ms=60_000, collector_max_parsing_bytes=bound))
    process.start(ready_timeout_s=30)
    try:
        body = orjson.dumps({"batch": [{}] * 1_390_000})
        assert len(body) <= BATCH_LIMIT_BYTES
        started_mb = process.peak_rss_mb()
        assert _answers(settings.collector_port, body, 1) == [(400, "too_large")]
        one_mb = process.peak_rss_mb() - started_mb
        assert _answers(settings.collector_port, body, 10) == [(400, "too_large")] * 10
        ten_mb = process.peak_rss_mb() - started_mb
    finally:
        process.stop()
    # Measured: one batch 280 MB; ten at once 2,800 MB without the bound, 630 MB with it.
    assert ten_mb < 3 * one_mb, f"ten batches at once took {ten_mb:.0f} MB, one alone {one_mb:.0f} MB"


def _answers(port: int, body: bytes, count: int) -> list[tuple[int, str]]:
    """The status and code of each of `count` batches posted at once."""
    connections = [post(port, "/v1/batch", body) for _ in range(count)]
    answers = []
    for connection in connections:
        response = connection.getresponse()
        answers.append((response.status, orjson.loads(response.read()).get("code")))
        connection.close()
    return answers


def test_a_client_that_stops_or_trickles_its_headers_is_disconnected(settings: Settings) -> None:
    """aiohttp has no timeout for a request's headers: a client that sent `POST /v1/track
    HTTP/1.1` and a header, then nothing (or a byte now and then), kept its connection for the
    hour of aiohttp's default keep-alive timeout. LEADSTREAM_COLLECTOR_IDLE_TIMEOUT_MS bounds it."""
    with ThreadedCollector(settings.with_overrides(collector_idle_timeout_ms=1000)) as collector:
        stalled = socket.create_connection(("127.0.0.1", settings.collector_port), timeout=15)
        trickling = socket.create_connection(("127.0.0.1", settings.collector_port), timeout=15)
        started = time.monotonic()
        stalled.sendall(b"POST /v1/track HTTP/1.1\r\nHost: x\r\n")
        trickling.sendall(b"POST /v1/track HTTP/1.1\r\n")
        for byte in b"Host: x\r\nContent-Type: application/json\r\n":
            try:
                trickling.sendall(bytes([byte]))
            except ConnectionError:
                break  # closed: what is awaited
            time.sleep(0.1)
        # Meanwhile, and afterwards on a kept-alive connection, other clients are served.
        with requests.Session() as session:
            for _ in range(2):
                assert session.get(f"{collector.url}/healthz", timeout=5).status_code == 200
        assert stalled.recv(1024) == b""  # closed by the collector, not answered
        assert time.monotonic() - started >= 0.9
        assert _closed(trickling)


def _closed(connection: socket.socket) -> bool:
    try:
        return connection.recv(1024) == b""
    except ConnectionResetError:
        return True


def test_the_collector_serves_at_most_its_max_connections_and_closes_one_more_at_once(
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    """The collector bounded neither its connections nor what each held while its headers
    arrived: 1000 connections each sending 127 header lines of 8 KB took it from 48 MB to 1.9 GB.
    Beyond LEADSTREAM_COLLECTOR_MAX_CONNECTIONS, a connection is closed as soon as accepted, and
    the log says so, naming the setting."""
    caplog.set_level(logging.WARNING, "leadstream.http")
    with ThreadedCollector(settings.with_overrides(collector_max_connections=3)) as collector:
        held = [socket.create_connection(("127.0.0.1", settings.collector_port), timeout=15) for _ in range(3)]
        for connection in held:
            connection.sendall(b"POST /v1/track HTTP/1.1\r\nHost: x\r\n")  # headers under way
        one_more = socket.create_connection(("127.0.0.1", settings.collector_port), timeout=15)
        assert _closed(one_more)
        assert any(record.getMessage().startswith("closed a new connection: 3 are open, the most "
                                                  "LEADSTREAM_COLLECTOR_MAX_CONNECTIONS allows")
                   for record in caplog.records), caplog.text
        held.pop().close()
        # One let go, another is served: a whole request on a new connection is answered.
        wait_for(lambda: _served(f"{collector.url}/healthz"), 15, "a connection served once one of the three was closed")
        for connection in held:
            connection.close()


def test_a_request_of_more_header_lines_than_the_bound_is_refused_with_400(settings: Settings) -> None:
    """aiohttp's default let a request hold 128 lines of 8 KB; the collector takes MAX_HEADER_LINES."""
    from streams.http_guard import MAX_HEADER_LINES

    with ThreadedCollector(settings):
        # Host and MAX_HEADER_LINES - 1 more: the most taken.
        assert _answer_to_header_lines(settings.collector_port, MAX_HEADER_LINES).startswith(b"HTTP/1.1 200 ")
        assert _answer_to_header_lines(settings.collector_port, MAX_HEADER_LINES + 1).startswith(b"HTTP/1.0 400 ")


def _answer_to_header_lines(port: int, lines: int) -> bytes:
    """The start of the answer to a GET /healthz of `lines` header lines, Host the first."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as client:
        client.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
                       + b"".join(b"X-Pad-%d: %s\r\n" % (n, b"a" * 100) for n in range(lines - 1)) + b"\r\n")
        return client.recv(64)


def _served(url: str) -> bool:
    try:
        return requests.get(url, timeout=5).status_code == 200
    except requests.ConnectionError:  # closed at once: still too many
        return False


def test_the_collector_serves_a_page_facing_crowd_of_kept_alive_connections_by_default(settings: Settings) -> None:
    """Browsers keep a connection open between a page's calls: a bound of 256 (c8bb28c's first
    default) closed the 257th visitor's connection at once, and its events were lost or delayed."""
    with ThreadedCollector(settings):
        visitors = []
        try:
            for _ in range(400):
                visitor = socket.create_connection(("127.0.0.1", settings.collector_port), timeout=15)
                visitors.append(visitor)
                visitor.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                assert visitor.recv(64).startswith(b"HTTP/1.1 200 "), f"visitor {len(visitors)} not served"
        finally:
            for visitor in visitors:
                visitor.close()
