"""The operations face of a connector or collector process: /metrics, /healthz (alive) and
/readyz (working), on a port of its own (LEADSTREAM_METRICS_PORT, LEADSTREAM_COLLECTOR_METRICS_PORT)
bound to LEADSTREAM_BIND_HOST.

A plain threaded HTTP server: connectors are synchronous (kafka-python), so a thread serves
probes without touching the delivery loop; the collector's own port faces the internet, and its
metrics (sources, volumes) are for the operator only. A connection has LEADSTREAM_IDLE_TIMEOUT_MS
to send its request (it is answered and closed: HTTP/1.0), and at most MAX_CONNECTIONS are served
at once (streams/http_guard.py says why).
"""

from __future__ import annotations

import io
import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from streams.addresses import family
from streams.errors import cannot_listen

#: Seconds a client told "not ready" (a 503 of /readyz, or of a worker's view) waits before asking
#: again: readiness comes back with a connection, a rebalance or a recovery, in seconds.
NOT_READY_RETRY_AFTER_S = 5
#: Connections served at once, a thread each; one more is closed as soon as accepted. Prometheus
#: and an orchestrator's probes need a few: without a bound, clients that open connections and wait
#: would take the process to its limit of threads or open files, its Kafka and CRM connections with it.
MAX_CONNECTIONS = 128


class _ReadsByDeadline(io.RawIOBase):
    """A connection's reads, which give up once its request is due: a socket's own timeout bounds
    each read only, which a client trickling its request a byte at a time would never reach."""

    def __init__(self, connection: socket.socket, due_s: float) -> None:
        super().__init__()
        self._connection = connection
        self._due_s = due_s

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left_s = self._due_s - time.monotonic()
        if left_s <= 0:
            raise TimeoutError("no whole request within LEADSTREAM_IDLE_TIMEOUT_MS")
        self._connection.settimeout(left_s)
        return self._connection.recv_into(buffer)


class OwnMetrics(CollectorRegistry):
    """The process's registry as its /metrics shows it: Python's and the process's families, and
    of leadstream's only those named `prefix...` (`leadstream_sink_`, `leadstream_collector_`)
    and not `others...` (the worker's: `leadstream_`, not the connectors' nor the collector's).

    A module imports the metrics of every module it imports, and a connector imports modules the
    worker shares with it (streams.history, streams.log_start...): its /metrics showed the worker's
    metrics beside its own, at 0, `leadstream_worker_ready 0` among them, so that with connectors
    scraped min(leadstream_worker_ready) was 0 for good, LeadstreamWorkerNotReady fired however
    ready the workers were, and the dashboard's "Worker ready" showed 0. The worker, which imports
    the connectors' metrics through the CLI, showed their families alike, with no values."""

    def __init__(self, prefix: str, others: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.prefix = prefix
        self.others = others

    def register(self, collector: Collector) -> None:
        """Into the process's registry: Faust's sensors (LEADSTREAM_FAUST_SENSORS) register theirs
        in the registry their /metrics page shows, this."""
        REGISTRY.register(collector)

    def collect(self) -> Iterable[Metric]:
        for metric in REGISTRY.collect():
            name = metric.name
            if not name.startswith("leadstream_") or (name.startswith(self.prefix) and not name.startswith(self.others)):
                yield metric


def serve(port: int, ready: Callable[[], bool], host: str, setting: str, idle_timeout_ms: int,
          retry_after_s: int = NOT_READY_RETRY_AFTER_S, why_not_ready: Callable[[], str | None] = lambda: None, *,
          metrics: OwnMetrics) -> ThreadingHTTPServer:
    """Start serving in a daemon thread; /metrics shows `metrics`, and `ready()` answers /readyz,
    whose 503 has a Retry-After of `retry_after_s` and the reason `why_not_ready()` gives, if any. A
    connection is closed unanswered `idle_timeout_ms` after it opened if its request is not whole by
    then. A port that cannot be had is a ServiceError naming `setting`, the variable that chose it."""

    class Handler(BaseHTTPRequestHandler):
        timeout = idle_timeout_ms / 1000  # of each write of the answer too: a client that does not read it

        def setup(self) -> None:
            super().setup()
            self.rfile.close()  # for one that stops at the request's deadline
            self.rfile = io.BufferedReader(_ReadsByDeadline(self.connection, time.monotonic() + self.timeout))

        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            if self.path == "/metrics":
                self._answer(200, generate_latest(metrics), CONTENT_TYPE_LATEST)
            elif self.path == "/healthz":
                self._answer(200, b'{"status":"alive"}', "application/json")
            elif self.path == "/readyz":
                if ready():
                    self._answer(200, b'{"ready":true}', "application/json")
                else:
                    why = why_not_ready()
                    body = {"ready": False} if why is None else {"ready": False, "reason": why}
                    self._answer(503, json.dumps(body).encode(), "application/json", (("Retry-After", str(retry_after_s)),))
            else:
                self._answer(404, b'{"error":"not found"}', "application/json")

        def _answer(self, status: int, body: bytes, content_type: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
            self.connection.settimeout(self.timeout)  # the reads left it at what remained of their deadline
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # scrapes every few seconds: no log line each
            pass

    class Server(ThreadingHTTPServer):
        address_family = family(host)  # http.server listens on IPv4 only unless told
        connections = threading.BoundedSemaphore(MAX_CONNECTIONS)

        def process_request(self, request: Any, client_address: Any) -> None:
            if not self.connections.acquire(blocking=False):
                self.shutdown_request(request)
                return
            try:
                super().process_request(request, client_address)
            except BaseException:  # no thread started: its slot is free
                self.connections.release()
                raise

        def process_request_thread(self, request: Any, client_address: Any) -> None:
            try:
                super().process_request_thread(request, client_address)
            finally:
                self.connections.release()

        def handle_error(self, request: Any, client_address: Any) -> None:
            # A client that hung up before its answer (a probe with a short timeout, `curl -m 2`) is
            # no error of ours: http.server logged 20 lines of BrokenPipeError traceback for each.
            if not isinstance(sys.exc_info()[1], ConnectionError):
                super().handle_error(request, client_address)

    try:
        server = Server((host, port), Handler)
    except OSError as exc:
        raise cannot_listen(host, port, setting, exc) from None
    threading.Thread(target=server.serve_forever, name="probes", daemon=True).start()
    return server
