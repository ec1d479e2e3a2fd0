"""What every HTTP port of ours does with clients that misbehave: the worker's web views and the
collector's public port (aiohttp), the connectors' and the collector's probes (streams/probes.py).

- A connection that has not sent a whole request's headers within its idle timeout, from its
  opening or its latest answer, is closed: aiohttp's default held one for an hour, http.server's
  for ever, and a few clients that open connections, send half a request and wait took a worker
  to its limit of open files, where it accepted nothing more (its probes and views timed out).
- The worker's port serves at most WORKER_MAX_CONNECTIONS connections at once, the collector's
  LEADSTREAM_COLLECTOR_MAX_CONNECTIONS; one more is closed as soon as accepted (bound_connections),
  as the probes do beyond theirs. A request's headers are at most MAX_HEADER_LINES lines (then 400).
- A request that is not valid HTTP is said on one INFO line, not at ERROR with a traceback.
- A listening socket that cannot accept (out of file descriptors) is said at most once every
  LOG_INTERVAL_S: asyncio logged it with a traceback each time it tried again, 2 MB of log a second;
  and its retries pending when the server stops, which raise on the closed socket, not at all.
- Such a socket is tried again once a second, not `backlog` times a second and more: asyncio (3.11)
  went on calling accept() after the first failure, scheduling a retry for each.
"""

from __future__ import annotations

import asyncio.selector_events
import errno
import logging
import socket
import time
from typing import Any, Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from streams.log_throttle import Throttle, on_one_line

log = logging.getLogger("leadstream.http")

#: asyncio's message (selector_events) when accept() fails for want of a resource; it then stops
#: accepting on that socket for a second and tries again.
ACCEPT_FAILED = "socket.accept() out of system resource"
#: How asyncio says such a retry (`_start_serving`) that raised: at the stop, on the closed socket.
ACCEPT_RETRY_FAILED = "Exception in callback BaseSelectorEventLoop._start_serving("


#: Connections the worker's port (its views) serves at once. Its clients are the operator's: other
#: workers routing a view to the key's owner, Prometheus, the probes.
#: Without a bound, clients that open connections and wait took it to its limit of open files, its
#: Kafka connections and state stores' files with it.
WORKER_MAX_CONNECTIONS = 512
#: Header lines a request may have (aiohttp's default: 128; then 400), each of at most
#: MAX_HEADER_LINE_BYTES (aiohttp's own bound, 8190): what one connection may hold before its
#: request is whole, some twice their size once parsed. 1000 connections each sending 127 such
#: lines took the collector from 48 MB to 1.9 GB; the collector also bounds its connections
#: (LEADSTREAM_COLLECTOR_MAX_CONNECTIONS). A browser's call through a CDN and a load balancer
#: has some 30 lines.
MAX_HEADER_LINES = 64
MAX_HEADER_LINE_BYTES = 8190
#: accept()'s failures for want of a resource, which asyncio meets by trying again a second later.
OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def aiohttp_limits(idle_timeout_ms: int) -> dict[str, Any]:
    """The keyword arguments of aiohttp's request handler (an AppRunner's, or an Application's
    `handler_args`) that bound a connection's idle time to `idle_timeout_ms`, and its headers to
    MAX_HEADER_LINES lines (then 400, and closed)."""
    # aiohttp has no timeout for a request's headers, only this one: from the connection (or its
    # latest answer) to a whole request's headers, so a client that stops mid-headers, or trickles
    # them, is closed then (by default an hour later).
    return {"keepalive_timeout": idle_timeout_ms / 1000, "max_headers": MAX_HEADER_LINES,
            "max_field_size": MAX_HEADER_LINE_BYTES}


def bound_connections(server: web.Server, most: int, bound: str) -> None:
    """Has `server` close a connection as soon as it is made while `most` others are open, saying
    so at most once every LOG_INTERVAL_S, naming the `bound` (its setting or constant): clients
    refused without a word in the log left the operator nothing to tell why they fail."""
    made = server.connection_made
    throttle = Throttle()

    def connection_made(handler: web.RequestHandler, transport: asyncio.Transport) -> None:
        made(handler, transport)  # counted, so that its close is too
        if len(server.connections) > most:
            left_out = throttle.due()
            if left_out is not None:
                log.warning("closed a new connection: %d are open, %s; more clients than that, or clients that "
                            "hold connections open? (%d more closed since the last such line)", most, bound, left_out)
            # Nothing read or sent yet: no answer is owed. Closed once the handler's task, created
            # after this call, has begun: a connection lost before it failed the task with an
            # AssertionError (aiohttp asserts its server), a traceback a connection refused.
            asyncio.get_running_loop().call_soon(transport.close)

    server.connection_made = connection_made  # type: ignore[method-assign]  # each handler tells its server


class _MalformedRequests(logging.Filter):
    """aiohttp logs each request it cannot parse as HTTP (a duplicate Content-Type, a bad chunk
    size, a 9 KB header line) at ERROR with a traceback, though it answers 400 and goes on: any
    scanner would fill the log. One line at INFO says it, naming the error's kind only: aiohttp's
    message quotes the offending line over several, an Authorization header's credentials or a
    request line's `?writeKey=` with it."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError) and str(record.msg).startswith("Error handling request"):
            record.msg, record.args = "refused a request that is not valid HTTP from %s: %s", (*record.args, type(error).__name__)  # type: ignore[misc]
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info = record.exc_text = None
        return True


class AcceptFailures(logging.Filter):
    """asyncio's ACCEPT_FAILED, at most once every LOG_INTERVAL_S, on one line saying how many
    were left out; the connections already open go on being served."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._throttle = Throttle(clock=clock)

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith(ACCEPT_RETRY_FAILED) and record.exc_info and isinstance(record.exc_info[1], ValueError):
            # asyncio (3.11) schedules a retry for each of the `backlog` accepts it tries at a
            # time, and those pending when the server stops raise on its closed socket ("Invalid
            # file descriptor: -1"): 512 tracebacks at a worker's stop. Nothing was lost.
            return False
        if not str(record.msg).startswith(ACCEPT_FAILED):
            return True
        left_out = self._throttle.due()
        if left_out is None:
            return False
        record.msg, record.args = ("cannot accept connections, out of open files? (those that send no whole request are "
                                   "closed after their idle timeout); trying again every second"), ()
        on_one_line(record, left_out)
        return True


class _UntilOutOfResources:
    """A listening socket as asyncio's accept loop sees it: once accept() failed for want of a
    resource, its queue looks empty, so the loop stops there, with the one retry it scheduled.

    asyncio 3.11 (BaseSelectorEventLoop._accept_connection) tried all `backlog` accepts of a round
    and scheduled a retry for each failure, and each retry a round of its own: a collector out of
    open files (backlog 1024) failed 70,000 accepts in 10 s, a fifth of a core, for as long as its
    connections stayed. CPython's own fix (gh-151615, a `return` after the failure)
    came in a later release."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._out_of_resources = False

    def accept(self) -> tuple[socket.socket, Any]:
        if self._out_of_resources:
            raise BlockingIOError(errno.EAGAIN, "accepting again after a second")
        try:
            return self._sock.accept()
        except OSError as exc:
            self._out_of_resources = exc.errno in OUT_OF_RESOURCES
            raise

    def __getattr__(self, name: str) -> Any:  # fileno() and the rest, as the socket has them
        return getattr(self._sock, name)


def _accept_until_out_of_resources() -> None:
    """Has every selector event loop's accept rounds stop at their first failure for want of a
    resource (_UntilOutOfResources)."""
    loop_class: Any = asyncio.selector_events.BaseSelectorEventLoop
    accept_round = loop_class._accept_connection
    if getattr(accept_round, "stops_out_of_resources", False):
        return

    def accept_connection(loop: Any, protocol_factory: Any, sock: Any, *args: Any, **kwargs: Any) -> None:
        # The retry asyncio schedules carries the wrapper it was given: each round gets a new one.
        listening = sock._sock if isinstance(sock, _UntilOutOfResources) else sock
        accept_round(loop, protocol_factory, _UntilOutOfResources(listening), *args, **kwargs)

    accept_connection.stops_out_of_resources = True  # type: ignore[attr-defined]
    loop_class._accept_connection = accept_connection


_MALFORMED_REQUESTS = _MalformedRequests()
_ACCEPT_FAILURES = AcceptFailures()


def quiet_bad_clients() -> None:
    """Said by each process serving HTTP on asyncio (the worker, the collector) before it listens."""
    logging.getLogger("aiohttp.server").addFilter(_MALFORMED_REQUESTS)  # once: it is one object
    logging.getLogger("asyncio").addFilter(_ACCEPT_FAILURES)
    _accept_until_out_of_resources()
