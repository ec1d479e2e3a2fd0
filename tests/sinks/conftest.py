"""Fixtures of the sinks suite: CRM stand-ins, fast retry settings, crossings on the real broker."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import orjson
import pytest
import trustme
from redis import Redis, RedisError

from sinks.base import Sink
from sinks.runner import SinkRunner, Stats
from streams.processes import free_port
from streams.settings import PROJECT_ROOT, Settings
from tests.infra import wait_for
from tests.sinks.fake_http import WebhookReceiver
from tests.sinks.fake_hubspot import TOKEN, FakeHubSpot
from tests.sinks.fake_salesforce import SESSION_ID, FakeSalesforce

WEBHOOK_SECRET = "whsec-test-0123456789"


@pytest.fixture(scope="session")
def tls_ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[trustme.CA, Path]:
    """A throwaway CA; the Salesforce stand-in's certificate is signed by it (requests trusts it via
    REQUESTS_CA_BUNDLE, the variable operators use for a corporate CA too)."""
    ca = trustme.CA()
    bundle = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    return ca, bundle


@pytest.fixture
def hubspot() -> Iterator[FakeHubSpot]:
    server = FakeHubSpot().start()
    yield server
    server.stop()


@pytest.fixture
def salesforce(tls_ca: tuple[trustme.CA, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSalesforce]:
    ca, bundle = tls_ca
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    server = FakeSalesforce(context).start()
    yield server
    server.stop()


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver().start()
    yield server
    server.stop()


class RedisServer:
    """A redis-server of a test's own (never the shared one), which the test may stall."""

    def __init__(self, directory: Path, *args: str, password: str | None = None) -> None:
        """`args`: more redis-server options."""
        port = free_port()
        self.port = port
        self.url = f"redis://{f':{password}@' if password else ''}127.0.0.1:{port}/0"
        self.proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(directory), *args,
                                      *(["--requirepass", password] if password else [])], stdout=subprocess.DEVNULL)
        client = Redis.from_url(self.url, socket_timeout=1)
        wait_for(lambda: _answers(client), 10, f"redis-server on port {port}")
        client.close()

    def stall(self) -> None:
        """SIGSTOP, as a stopped host or a network partition leaves it: connections stay open and
        nothing answers."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT: it answers again, the commands sent meanwhile first."""
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGCONT)
        self.proc.terminate()
        self.proc.wait()


class SilentRedis:
    """A port that takes connections and never answers, as a stalled Redis does, and notes how
    long each client waited there before it hung up: the client's own wait, which a loaded
    machine's slow process start does not stretch."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"redis://127.0.0.1:{self._listener.getsockname()[1]}/0"
        #: Seconds from each connection's accept to its client's hang-up.
        self.waits: list[float] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self._hold, args=(conn,), daemon=True).start()

    def _hold(self, conn: socket.socket) -> None:
        accepted = time.monotonic()
        with conn:
            while conn.recv(65536):  # its commands, never answered
                pass
        self.waits.append(time.monotonic() - accepted)

    def close(self) -> None:
        self._listener.close()


@pytest.fixture
def silent_redis() -> Iterator[SilentRedis]:
    server = SilentRedis()
    yield server
    server.close()


def _answers(client: Redis) -> bool:
    try:
        return bool(client.ping())
    except RedisError:
        return False


#: How a Redis that answers reads comes to refuse writes, and how it takes them again.
REFUSING_WRITES = {
    "out of memory": (("CONFIG", "SET", "maxmemory", "1"), ("CONFIG", "SET", "maxmemory", "0")),
    "read-only replica": (("REPLICAOF", "127.0.0.1", "1"), ("REPLICAOF", "NO", "ONE")),
}


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def sink_settings(own_redis: Settings) -> Settings:
    """This test's topics and Redis prefix, with retries fast enough for a test and a 1 s timeout."""
    return own_redis.with_overrides(
        sink_concurrency=4,
        sink_max_attempts=4,
        sink_backoff_base_ms=50,
        sink_backoff_max_ms=400,
        sink_timeout_s=1,
        hubspot_access_token=TOKEN,
        hubspot_rate_limit="unlimited",
        salesforce_access_token=SESSION_ID,
        salesforce_rate_limit="unlimited",
        webhook_secret=WEBHOOK_SECRET,
    )


def crossing(n: int, to_level: str = "sql", direction: str = "up", *, email: str | None = None,
             from_level: str | None = None, **extra: Any) -> dict[str, Any]:
    """A crossing record as the worker writes it; the id is deterministic in (lead, level, direction, n)."""
    lead = f"lead-{n}"
    record = {
        "id": f"{lead}/b2b/{direction}/{to_level}/{extra.pop('seq', 1)}",
        "kind": "lead", "lead_id": lead, "account_id": "acme", "model": "b2b",
        "from_level": from_level or ("mql" if direction == "up" else "sql"), "to_level": to_level,
        "direction": direction, "score": 47.0, "normalized": 61, "grade": "A", "engagement": 2, "cell": "A2",
        "temperature": "warm", "time": 1763884800000,
        "reasons": [{"rule": "pricing_page", "points": 30}, {"rule": "webinar", "points": 10}],
        "traits": {"email": email or f"{lead}@acme.io"},
    }
    record.update(extra)
    return record


def account_crossing(**extra: Any) -> dict[str, Any]:
    """An account crossing as the worker writes it (scoring.accounts.roll_up_all)."""
    return {**crossing(7, "buying", kind="account", id="acme/b2b/up/buying/1", from_level="engaged", score=124.0,
                       normalized=62, grade=None, engagement=None, cell=None, temperature="hot", traits={},
                       reasons=[{"rule": "member", "lead_id": "lead-7", "points": 61},
                                {"rule": "member", "lead_id": "lead-2", "points": 40}]), **extra}


def account_climb() -> list[dict[str, Any]]:
    """acme's account crossings up to engaged, then on to buying."""
    return [account_crossing(to_level="engaged", from_level="unaware", id="acme/b2b/up/engaged/1", temperature="warm"),
            account_crossing()]


def produce(settings: Settings, records: list[dict[str, Any]], topic: str | None = None) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=5)
    for record in records:
        key = record["account_id"] if record.get("kind") == "account" else record["lead_id"]  # as the worker keys them
        producer.send(topic or settings.topic_crossings, key=str(key).encode(), value=orjson.dumps(record))
    producer.flush()
    producer.close()


@contextmanager
def running(runner: SinkRunner) -> Iterator[list[Stats]]:
    """`runner` delivering its source topic on a thread until it is caught up: its Stats are in the
    list once it is. Stopped on leaving, so a test that fails meanwhile leaves no thread behind."""
    ran: list[Stats] = []
    thread = threading.Thread(target=lambda: ran.append(runner.run(stop_at_end=True)))
    thread.start()
    try:
        yield ran
    finally:
        runner.stop.set()
        thread.join()


def drain(sink: Sink[Any], settings: Settings) -> Stats:
    """Run a connector in-process until it has handled everything in its source topic."""
    return SinkRunner(sink, settings).run(stop_at_end=True)


class SinkProcess:
    """A real `leadstream sink NAME` subprocess."""

    def __init__(self, settings: Settings, *args: str, log: Path) -> None:
        self.settings, self.args, self.log = settings, args, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> SinkProcess:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "sink", *self.args],
                env={**os.environ, **self.settings.as_env()}, cwd=PROJECT_ROOT,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown, no offset commit."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])


@pytest.fixture
def sink_process(tmp_path: Path) -> Iterator[Any]:
    started: list[SinkProcess] = []

    def start(settings: Settings, *args: str) -> SinkProcess:
        proc = SinkProcess(settings, *args, log=tmp_path / f"sink-{len(started)}.log").start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()
