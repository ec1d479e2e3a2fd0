"""A local HTTP(S) server for the CRM stand-ins: records every request and injects faults.

Faults are rules matched in order against each request (method and a path regex), each for a
number of requests:
- `status`: answer with this status, body and headers instead of doing the action (429 with
  Retry-After, 5xx, 4xx);
- `timeout`: sleep past the client's timeout, then drop the connection, action not done;
- `malformed`: do the action, then answer its status with a body that is not JSON;
- `hold`: do the action, then wait `delay_s` before answering (a crash lands in between);
- `slow`: wait `delay_s`, then do the action and answer (a client that gave up meanwhile, and
  retried, finds no record at first);
- `trickle`: do the action, answer its status at once, then send the body a byte at a time
  (chunked) until the server gets another request, or for `delay_s` at most;
- `trickle_headers`: the same with the answer's headers, its status line sent at once, then a
  header's value a byte at a time, then an empty body.
`latency_s` delays every answer; `outage(seconds)` answers 503 to everything meanwhile.
"""

from __future__ import annotations

import re
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import orjson


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return orjson.loads(self.body) if self.body else None


@dataclass
class Response:
    status: int
    body: Any = None  # JSON-encoded unless bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Fault:
    kind: str
    count: int = 1
    method: str | None = None
    path: str = ""
    status: int = 503
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0

    def matches(self, request: Request) -> bool:
        return (self.method is None or self.method == request.method) and re.search(self.path, request.path) is not None


class FakeServer:
    """Subclasses implement `handle(request) -> Response`; the state they keep is theirs."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.requests: list[Request] = []
        self.faults: list[Fault] = []
        self.latency_s = 0.0
        self._outage_until = 0.0
        #: When the last `trickle` answer ended (monotonic).
        self.trickle_ended_at = 0.0
        self.lock = threading.RLock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        if tls is not None:
            self._httpd.socket = tls.wrap_socket(self._httpd.socket, server_side=True)
        self.scheme = "https" if tls is not None else "http"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> FakeServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def inject(self, kind: str, **kwargs: Any) -> Fault:
        fault = Fault(kind, **kwargs)
        with self.lock:
            self.faults.append(fault)
        return fault

    def outage(self, seconds: float) -> None:
        self._outage_until = time.monotonic() + seconds

    def requests_to(self, method: str, path_regex: str) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.method == method and re.search(path_regex, r.path)]

    def handle(self, request: Request) -> Response:
        raise NotImplementedError

    def error(self, status: int, **detail: Any) -> Response:
        """The CRM's error body for a status (subclasses give their documented shapes)."""
        return Response(status, {"status": "error", **detail})

    # -- request path ----------------------------------------------------------------------

    def _serve(self, request: Request) -> tuple[Response, Fault | None]:
        with self.lock:
            self.requests.append(request)
            fault = next((f for f in self.faults if f.count > 0 and f.matches(request)), None)
            if fault is not None:
                fault.count -= 1
        if self.latency_s:
            time.sleep(self.latency_s)
        if time.monotonic() < self._outage_until:
            return self.error(503, message="Service Unavailable", category="SERVICE_UNAVAILABLE"), None
        if fault is not None and fault.kind == "status":
            return Response(fault.status, fault.body if fault.body is not None else self.error(fault.status).body,
                            fault.headers), None
        if fault is not None and fault.kind == "timeout":
            time.sleep(fault.delay_s)
            raise ConnectionAbortedError("injected timeout")
        if fault is not None and fault.kind == "slow":
            time.sleep(fault.delay_s)
        with self.lock:
            response = self.handle(request)
        if fault is not None and fault.kind == "malformed":
            return Response(response.status, b"<html>upstream proxy error</html>"), None
        return response, fault


def _handler_for(server: FakeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes: with Nagle on, the body waits for the client's
        # delayed ACK (40 ms), which would be the stand-in's latency, not the CRM's.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
            pass

        def _any(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            request = Request(self.command, unquote(parts.path), parse_qs(parts.query), dict(self.headers.items()),
                              self.rfile.read(length), time.monotonic())
            try:
                response, fault = server._serve(request)
            except ConnectionAbortedError:
                self.close_connection = True
                return
            if fault is not None and fault.kind == "hold":
                time.sleep(fault.delay_s)
            if fault is not None and fault.kind in ("trickle", "trickle_headers"):
                self._trickle(response.status, fault.delay_s, fault.kind == "trickle_headers")
                return
            if fault is not None and fault.kind == "bad_header":  # a header line without a colon
                self.wfile.write(f"HTTP/1.1 {response.status} OK\r\nX-Weird header without colon\r\nContent-Length: 2\r\n\r\nok".encode())
                return
            body = response.body if isinstance(response.body, bytes) else (
                b"" if response.body is None else orjson.dumps(response.body))
            self.send_response(response.status)
            for name, value in response.headers.items():
                self.send_header(name, value)
            if body:
                self.send_header("Content-Type", "application/json;charset=UTF-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _trickle(self, status: int, longest_s: float, in_headers: bool) -> None:
            if in_headers:
                self.wfile.write(f"HTTP/1.1 {status} OK\r\nX-Trickle: ".encode())
                byte, last = b".", b"\r\nContent-Length: 0\r\n\r\n"
            else:
                self.send_response(status)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                byte, last = b"1\r\n.\r\n", b"0\r\n\r\n"
            with server.lock:
                seen = len(server.requests)
            end = time.monotonic() + longest_s
            try:
                while time.monotonic() < end and len(server.requests) == seen:
                    self.wfile.write(byte)
                    time.sleep(0.05)
                self.wfile.write(last)
            except OSError:  # the client hung up
                pass
            server.trickle_ended_at = time.monotonic()
            self.close_connection = True

        do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _any

    return Handler


class WebhookReceiver(FakeServer):
    """Any POST is accepted with 200; the test checks what was received."""

    def handle(self, request: Request) -> Response:
        return Response(200, {"ok": True})
