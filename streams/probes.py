"""The operations face of a connector or collector process: /metrics, /healthz (alive) and
/readyz (working), on a port of its own (LEADSTREAM_METRICS_PORT, LEADSTREAM_COLLECTOR_METRICS_PORT)
bound to LEADSTREAM_BIND_HOST.

A plain threaded HTTP server: connectors are synchronous (kafka-python), so a thread serves
probes without touching the delivery loop; the collector's own port faces the internet, and its
metrics (sources, volumes) are for the operator only.
"""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from streams.addresses import family
from streams.errors import cannot_listen

#: Seconds a client told "not ready" (a 503 of /readyz, or of a worker's view) waits before asking
#: again: readiness comes back with a connection, a rebalance or a recovery, in seconds.
NOT_READY_RETRY_AFTER_S = 5


def serve(port: int, ready: Callable[[], bool], host: str, setting: str,
          retry_after_s: int = NOT_READY_RETRY_AFTER_S, why_not_ready: Callable[[], str | None] = lambda: None) -> ThreadingHTTPServer:
    """Start serving in a daemon thread; `ready()` answers /readyz, whose 503 has a Retry-After of
    `retry_after_s` and the reason `why_not_ready()` gives, if any. A port that cannot be had is a
    ServiceError naming `setting`, the variable that chose it."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            if self.path == "/metrics":
                self._answer(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
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
