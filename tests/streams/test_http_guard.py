"""Clients that misbehave on our HTTP ports (streams/http_guard.py, streams/probes.py): connections
that send no whole request are closed, malformed requests said on one line, accept failures throttled."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import socket
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator

import orjson
import pytest

from streams import probes
from streams.http_guard import ACCEPT_FAILED, WORKER_MAX_CONNECTIONS, AcceptFailures, quiet_bad_clients
from streams.processes import WorkerProcess, free_port
from streams.settings import Settings
from tests.infra import wait_for

HALF_A_REQUEST = b"GET /readyz HTTP/1.1\r\nHost: x\r\n"


def closed_within(connection: socket.socket, bound_s: float) -> float:
    """Seconds until the server closed `connection` (it sends nothing meanwhile); fails past `bound_s`."""
    started = time.monotonic()
    connection.settimeout(bound_s)
    try:
        assert connection.recv(1024) == b"", "answered, not closed"
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"still open after {bound_s} s") from None
    return time.monotonic() - started


@pytest.fixture
def quick_worker(isolated: Settings, worker: Callable[..., WorkerProcess]) -> WorkerProcess:
    return worker(isolated.with_overrides(idle_timeout_ms=1500))


def test_a_worker_closes_a_connection_that_sends_half_a_request_or_stays_idle(quick_worker: WorkerProcess) -> None:
    """aiohttp's default keeps such a connection an hour: 20,000 of them took a worker to its limit
    of open files, where its probes and views went unanswered."""
    address = ("127.0.0.1", quick_worker.port)
    with socket.create_connection(address) as stalled, socket.create_connection(address) as idle:
        stalled.sendall(HALF_A_REQUEST)
        idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert idle.recv(65536).startswith(b"HTTP/1.1 200")  # then kept alive, and left idle
        assert 1.0 <= closed_within(stalled, 10) < 10
        closed_within(idle, 10)
    assert quick_worker.get("/healthz")[0] == 200


def test_a_worker_says_a_request_that_is_not_valid_http_on_one_line(quick_worker: WorkerProcess) -> None:
    # aiohttp logged each at ERROR with a 10-line traceback; the collector said one INFO line.
    heads = [b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
             b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
             b"GET /\xff HTTP/1.1\r\nHost: x\r\n\r\n"]
    for head in heads:
        with socket.create_connection(("127.0.0.1", quick_worker.port), timeout=10) as connection:
            connection.sendall(head)
            assert connection.recv(65536).split(b" ", 2)[1] == b"400"
    said = lambda: [line for line in quick_worker.log.read_text().splitlines() if "not valid HTTP" in line]  # noqa: E731
    wait_for(lambda: len(said()) == len(heads), timeout_s=10, what="each refusal logged")
    assert all("INFO" in line and "refused a request that is not valid HTTP from 127.0.0.1: " in line for line in said())
    log = quick_worker.log.read_text()
    assert "Traceback" not in log and "Error handling request" not in log


def test_fausts_own_router_and_table_views_are_not_served(quick_worker: WorkerProcess) -> None:
    """Faust's /router views listed every worker's URL and answered a table they did not know
    with a 500, its KeyError's traceback logged at ERROR; its /table views read the tables by key.
    The lead and account views route themselves (streams/routing.py)."""
    paths = ["/router/", "/router/topics", "/router/nosuch/", "/router/leads/ada/", "/table/", "/table/leads/",
             "/table/leads/ada/"]
    assert [quick_worker.get(path)[0] for path in paths] == [404] * len(paths)
    assert quick_worker.get("/leads/ada/")[0] == 404  # no state: the worker's own view answers
    assert "Traceback" not in quick_worker.log.read_text()


def test_a_worker_out_of_open_files_says_so_once_and_serves_again_once_idle_connections_close(
    isolated: Settings, worker: Callable[..., WorkerProcess]
) -> None:
    """At its limit of open files the worker's accept failed each second with an ERROR and a
    traceback (and at 20,000 connections, 2 MB of log a second); the connections holding them
    were never closed, so it never recovered while they stayed."""
    quick_worker = worker(isolated.with_overrides(idle_timeout_ms=1500))
    assert quick_worker.proc is not None
    pid = quick_worker.proc.pid
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (len(os.listdir(f"/proc/{pid}/fd")) + 10, hard))
    try:
        holders = [socket.create_connection(("127.0.0.1", quick_worker.port), timeout=10) for _ in range(15)]
        for holder in holders:
            holder.sendall(HALF_A_REQUEST)
        time.sleep(1.2)  # the worker has tried to accept again at least once
        failures = lambda: [line for line in quick_worker.log.read_text().splitlines() if "cannot accept connections" in line]  # noqa: E731
        wait_for(failures, timeout_s=10, what="the accept failure said")
        # Its held connections closed after LEADSTREAM_IDLE_TIMEOUT_MS, those waiting are served.
        wait_for(lambda: all(_closed(holder) for holder in holders), timeout_s=20, what="every holder closed or answered")
        wait_for(lambda: quick_worker.get("/healthz")[0] == 200, timeout_s=20, what="the worker answering again")
        for holder in holders:
            holder.close()
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
    log = quick_worker.log.read_text()
    assert len(failures()) == 1, failures()  # within LOG_INTERVAL_S
    assert "Too many open files" in failures()[0]
    assert ACCEPT_FAILED not in log and "selector_events" not in log  # asyncio's, whose traceback passes there


def test_a_worker_serves_a_bounded_number_of_connections_at_once(isolated: Settings, worker: Callable[..., WorkerProcess]) -> None:
    """Its port accepted any number: clients that open connections and wait took it to its limit
    of open files (its Kafka connections and state stores' files with it)."""
    bounded = worker(isolated.with_overrides(idle_timeout_ms=60_000))
    port = bounded.port
    holders = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(WORKER_MAX_CONNECTIONS)]
    try:
        holders[-1].sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # answered: each before it is accepted
        assert holders[-1].recv(65536).startswith(b"HTTP/1.1 200")
        with socket.create_connection(("127.0.0.1", port)) as one_more:
            one_more.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert closed_within(one_more, 5) < 1  # closed at once, unanswered
    finally:
        for holder in holders:
            holder.close()
    wait_for(lambda: _serves(port), timeout_s=10, what="the worker serving once they closed")
    assert "Traceback" not in bounded.log.read_text()


def _serves(port: int) -> bool:
    """Whether a request on a new connection is answered 200; one closed at once (the worker has
    not yet seen all the closed connections go) is not, yet."""
    try:
        return get(port, "/healthz").startswith(b"HTTP/1.1 200")
    except (ConnectionResetError, BrokenPipeError):
        return False


def _closed(connection: socket.socket) -> bool:
    """Whether the server closed it; a connection accepted late may be answered instead, then left idle."""
    connection.settimeout(0.05)
    try:
        while data := connection.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@pytest.fixture
def probe_port(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """Probes answering on a port of their own, closing a connection without its request after 0.5 s,
    serving 4 connections at most."""
    monkeypatch.setattr(probes, "MAX_CONNECTIONS", 4)
    port = free_port()
    server = probes.serve(port, lambda: True, "127.0.0.1", "LEADSTREAM_METRICS_PORT", 500, metrics=probes.OwnMetrics("leadstream_sink_"))
    yield port
    server.shutdown()
    server.server_close()


def get(port: int, path: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        return connection.recv(65536)


def test_probes_close_a_connection_that_sends_half_a_request_sends_nothing_or_trickles(probe_port: int) -> None:
    # http.server held each for ever, a thread each: 100 stayed open on a connector's port.
    address = ("127.0.0.1", probe_port)
    with (socket.create_connection(address) as stalled, socket.create_connection(address) as silent,
          socket.create_connection(address) as trickling):
        stalled.sendall(HALF_A_REQUEST)
        for byte in HALF_A_REQUEST:  # a byte in less than the timeout, each
            try:
                trickling.sendall(bytes([byte]))
            except ConnectionError:
                break
            time.sleep(0.05)
        assert closed_within(stalled, 5) < 5
        assert closed_within(silent, 5) < 5
        assert closed_within(trickling, 5) < 5
    assert get(probe_port, "/healthz").startswith(b"HTTP/1.0 200")


def test_probes_serve_a_bounded_number_of_connections_at_once(probe_port: int) -> None:
    holders = [socket.create_connection(("127.0.0.1", probe_port)) for _ in range(probes.MAX_CONNECTIONS)]
    try:
        time.sleep(0.1)
        assert get(probe_port, "/healthz") == b""  # one more is closed at once
        for holder in holders:
            closed_within(holder, 5)
        assert get(probe_port, "/healthz").startswith(b"HTTP/1.0 200")  # their slots free again
    finally:
        for holder in holders:
            holder.close()


def test_a_server_out_of_open_files_tries_to_accept_once_a_second_and_accepts_once_it_can() -> None:
    """asyncio went on calling accept() after its first failure, scheduling a retry for each of
    the `backlog` tries, and each retry a round of its own: a collector out of open files said
    70,000 failures in 10 s (a fifth of a core) while its connections stayed."""
    quiet_bad_clients()
    failures: list[float] = []
    accepted: list[asyncio.BaseTransport] = []

    class Accepted(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            accepted.append(transport)

    async def serve_out_of_open_files() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _, context: failures.append(loop.time()) if context["message"] == ACCEPT_FAILED else None)
        server = await loop.create_server(Accepted, "127.0.0.1", 0, backlog=100)
        port = server.sockets[0].getsockname()[1]
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]  # queued: the loop has not run
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) - 1, hard))  # less the listing's own
        try:
            await asyncio.sleep(2.5)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for _ in range(100):  # the retry after the latest failure accepts them
            if len(accepted) == len(clients):
                break
            await asyncio.sleep(0.05)
        for transport in accepted:
            transport.close()
        for client in clients:
            client.close()
        server.close()
        await server.wait_closed()

    asyncio.run(serve_out_of_open_files())
    assert 2 <= len(failures) <= 4, f"{len(failures)} failed accepts in 2.5 s"  # at 0 s, 1 s and 2 s
    assert len(accepted) == 5


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def test_accept_failures_are_said_once_an_interval_without_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    logger = logging.getLogger("asyncio")
    installed = [f for f in logger.filters if isinstance(f, AcceptFailures)]  # by a collector or worker run here before
    for existing in installed:
        logger.removeFilter(existing)
    failures = AcceptFailures(clock)
    logger.addFilter(failures)
    try:
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            for step_s in (0, 1, 1, 10):
                clock.now_s += step_s
                try:
                    raise OSError(24, "Too many open files")
                except OSError:
                    # as asyncio's default exception handler says it
                    logger.error(f"{ACCEPT_FAILED}\nsocket: <asyncio.TransportSocket fd=7>", exc_info=True)
            logger.error("Task was destroyed but it is pending!")
    finally:
        logger.removeFilter(failures)
        for existing in installed:
            logger.addFilter(existing)
    said = [(r.getMessage(), r.exc_info) for r in caplog.records]
    said_first = ("cannot accept connections, out of open files? (those that send no whole request are closed after their "
                  "idle timeout); trying again every second: OSError(24, 'Too many open files')")
    assert said == [(said_first, None), (f"{said_first} (2 more such lines left out since the last)", None),
                    ("Task was destroyed but it is pending!", None)]


def test_a_worker_out_of_open_files_says_its_model_reload_failed_once_and_applies_the_edit_once_it_can_read(
    isolated: Settings, worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    """At its limit of open files, the worker's first model reload ended it (asyncio.to_thread
    imports its executor at first use); later ones reported the files as a broken edit, with a
    traceback, and the lag probe blamed Kafka at each round."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "edits.toml").write_text(_model(30))
    running = worker(replace(isolated, models_dir=models, models_reload_s=1))
    fingerprint = orjson.loads(running.get("/models/")[1])["fingerprint"]
    with _out_of_open_files(running):
        (models / "edits.toml.tmp").write_text(_model(5))
        os.replace(models / "edits.toml.tmp", models / "edits.toml")
        said = lambda: [line for line in running.log.read_text().splitlines() if "looking for edits of the model files not done" in line]  # noqa: E731
        wait_for(said, timeout_s=10, what="the failed reload said")
        # Meanwhile polls a second apart fail alike: said once within LOG_INTERVAL_S.
        lag = lambda: [line for line in running.log.read_text().splitlines() if "consumer lag" in line]  # noqa: E731
        wait_for(lag, timeout_s=10, what="the lag probe's round (every 5 s) failed")
        assert running.proc is not None and running.proc.poll() is None, running.tail()
    wait_for(lambda: running.get("/models/")[0] == 200, timeout_s=30, what="the worker answering again")
    wait_for(lambda: orjson.loads(running.get("/models/")[1])["fingerprint"] != fingerprint, what="the edit applied")
    assert len(said()) == 1, said()
    assert "Too many open files" in said()[0] and "LimitNOFILE" in said()[0], said()
    assert len(lag()) == 1 and "measuring the consumer lag not done, out of open files" in lag()[0], lag()  # not "until Kafka answers"
    assert running.metric("leadstream_models_broken") == [0.0]  # the files were never broken
    assert "Traceback" not in running.log.read_text(), running.tail()


def _model(vp_points: int) -> str:
    return ('[model]\nname = "edits"\n[filter]\nproduct = "edits"\n'
            f'[[fit]]\nname = "vp"\npoints = {vp_points}\ntraits.title = {{ glob = "*VP*" }}\n'
            '[thresholds]\nbase = "lead"\nladder = [{ level = "mql", at = 20 }]\n')


@contextlib.contextmanager
def _out_of_open_files(running: WorkerProcess) -> Iterator[None]:
    """The worker at its limit of open files, held by connections that send half a request,
    until they are closed on leaving."""
    assert running.proc is not None
    pid = running.proc.pid
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (len(os.listdir(f"/proc/{pid}/fd")) + 10, hard))
    holders = [socket.create_connection(("127.0.0.1", running.port), timeout=10) for _ in range(15)]
    try:
        for holder in holders:
            holder.sendall(HALF_A_REQUEST)
        wait_for(lambda: "cannot accept connections" in running.log.read_text(), timeout_s=10, what="the worker out of files")
        yield
    finally:
        for holder in holders:
            holder.close()
        if running.proc.poll() is None:
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))


def test_a_worker_stopped_out_of_open_files_stops_without_a_traceback(isolated: Settings, worker: Callable[..., WorkerProcess]) -> None:
    """asyncio (3.11) tries a failed accept again a second later once for each of the 128
    connections it may accept at a time: each retry still pending at the stop raised on the
    closed socket, 512 tracebacks (11,430 lines of log) from a worker stopped 3 s into it."""
    running = worker(isolated)
    with _out_of_open_files(running):
        running.stop()
    assert running.proc is not None and running.proc.returncode == 0, running.tail()
    assert "Traceback" not in running.log.read_text(), running.tail()
