"""HTTP plumbing shared by the connectors: `requests` sessions (Salesforce, webhook), and the
deadline of every call (HubSpot's client too).

requests' timeout bounds each wait for the server (to connect, for each read), not a call: a
server sending its headers or its body a byte now and then would hold a delivery lane for as
long as it kept on. So each call also has a `Deadline`, at the same timeout from its start, when
its connection is shut down under it. One thread watches every Deadline: starting a thread per
call (a `threading.Timer`) cost 0.1 to 0.25 ms of CPU per call.
"""

from __future__ import annotations

import heapq
import itertools
import math
import socket
import threading
import time
from contextlib import nullcontext
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import MaxRetryError
from urllib3.poolmanager import PoolManager
from urllib3.response import HTTPResponse

from sinks.errors import OutcomeUnknown, RetryableError, excerpt

_calls = threading.local()  # `deadline`: the Deadline of the call this thread is making, if any


class Deadline:
    """The end of one HTTP call, `timeout_s` after it starts, whatever the server sends meanwhile.

    Entered around the call (TimeoutSession.request does it; the webhook around its request and
    the read of the answer's body): the connections it uses are shut down when the time is up, so
    the read in progress fails at once, and `expired` says why.
    """

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._over = False
        self._lock = threading.Lock()

    def __enter__(self) -> Deadline:
        _calls.deadline = self
        _watcher.add(self, time.monotonic() + self.timeout_s)
        return self

    def __exit__(self, *_: object) -> None:
        with self._lock:
            self._over = True  # its connections may serve other calls now: never cut them
        _watcher.forget(self)
        _calls.deadline = None

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            if self.expired:
                _cut(sock)
            else:
                self._sockets.append(sock)

    def _expire(self) -> None:
        with self._lock:
            if self._over:
                return
            self.expired = True
            for sock in self._sockets:
                _cut(sock)


class _Watcher:
    """The thread that expires every Deadline when its time is up, started by the first one.

    Its heap keeps (due time, order of arrival, deadline); a deadline that exits leaves its entry
    there (taking it out would cost a search of the heap) and only leaves the set of live ones.
    Such dead entries are dropped when they come due, and all at once when they outnumber the
    live ones: the heap stays within about twice the calls in progress (plus PRUNE_SLACK), however many
    short calls end before their deadline.
    """

    PRUNE_SLACK = 64

    def __init__(self) -> None:
        self._changed = threading.Condition(threading.Lock())
        self._due: list[tuple[float, int, Deadline]] = []
        self._live: set[Deadline] = set()
        self._order = itertools.count()  # entries due at the same time never compare deadlines
        self._wake_at = math.inf  # when the thread, waiting, next looks at the heap
        self._thread: threading.Thread | None = None

    def add(self, deadline: Deadline, due: float) -> None:
        with self._changed:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="http-deadlines", daemon=True)
                self._thread.start()
            heapq.heappush(self._due, (due, next(self._order), deadline))
            self._live.add(deadline)
            if due < self._wake_at:  # else the thread wakes first anyway: spare the switch
                self._changed.notify()

    def forget(self, deadline: Deadline) -> None:
        with self._changed:
            self._live.discard(deadline)
            if len(self._due) > 2 * len(self._live) + self.PRUNE_SLACK:
                self._due = [entry for entry in self._due if entry[2] in self._live]
                heapq.heapify(self._due)

    def _run(self) -> None:
        while True:
            with self._changed:
                now = time.monotonic()
                expiring: list[Deadline] = []
                while self._due and self._due[0][0] <= now:
                    deadline = heapq.heappop(self._due)[2]
                    if deadline in self._live:
                        self._live.remove(deadline)
                        expiring.append(deadline)
                if not expiring:
                    self._wake_at = self._due[0][0] if self._due else math.inf
                    # At most TIMEOUT_MAX (centuries): a longer wait raises, and would end the thread.
                    self._changed.wait(min(self._wake_at - now, threading.TIMEOUT_MAX))
                    continue
            for deadline in expiring:  # outside the lock: calls start and end meanwhile
                deadline._expire()


_watcher = _Watcher()


def _cut(sock: socket.socket) -> None:
    # The plain socket's shutdown, a TLS one's too: SSLSocket.shutdown drops its TLS state under
    # the thread reading from it. The blocked read then ends as if the server had hung up.
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:  # closed already
        pass


class _WatchedConnection(HTTPConnection):
    """A connection whose socket the current call's Deadline may cut while the answer comes in."""

    def getresponse(self) -> HTTPResponse:  # type: ignore[override]
        deadline: Deadline | None = getattr(_calls, "deadline", None)
        if deadline is not None and isinstance(self.sock, socket.socket):
            deadline.watch(self.sock)
        return super().getresponse()


class _WatchedTLSConnection(_WatchedConnection, HTTPSConnection):
    pass


class _Pool(HTTPConnectionPool):
    ConnectionCls = _WatchedConnection


class _TLSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedTLSConnection


def watched(manager: PoolManager) -> PoolManager:
    """`manager` (or proxy manager), its connections made watched: the Deadline of the call
    using one can cut it. Not a SOCKS proxy's, whose pools make connections of their own."""
    manager.pool_classes_by_scheme = {"http": _Pool, "https": _TLSPool}
    return manager


class _Adapter(HTTPAdapter):
    """requests' adapter with pools of watched connections, through an HTTP(S) proxy too."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        watched(self.poolmanager)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        return manager if proxy.lower().startswith("socks") else watched(manager)


class TimeoutSession(requests.Session):
    """A session whose every request has a timeout and a Deadline, and a pool as wide as the
    sink's concurrency.

    simple-salesforce's create/update take no timeout argument; without one a stalled CRM would
    hold a delivery lane forever.
    """

    def __init__(self, timeout_s: float, pool_size: int) -> None:
        super().__init__()
        self.timeout_s = timeout_s
        adapter = _Adapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
        self.mount("https://", adapter)
        self.mount("http://", adapter)

    def deadline(self) -> Deadline:
        """A Deadline for a call that goes on after `request` returns (a streamed body's read)."""
        return Deadline(self.timeout_s)

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        kwargs.setdefault("timeout", self.timeout_s)
        current: Deadline | None = getattr(_calls, "deadline", None)
        with nullcontext(current) if current is not None else self.deadline() as deadline:
            try:
                response = super().request(method, url, *args, **kwargs)
            except requests.RequestException:
                if not deadline.expired:
                    raise
            else:
                if not deadline.expired:
                    return response
                # An answer read to a cut (a body without a length ends there) is not whole.
                response.close()
            raise requests.Timeout(f"no whole answer within {deadline.timeout_s:g} s") from None


def transport_error(what: str, exc: requests.RequestException, hide: str = "") -> RetryableError:
    """No usable answer (timeout, refused or reset connection, TLS failure): try again later.

    `hide`, a secret part of the URL (a hook's path and query), is left out of the message.
    urllib3's MaxRetryError names the URL as it sent it, encoded (`/a b/é` as `/a%20b/%C3%A9`, and
    escapes upper-cased): no text replacement finds every form, so its reason is shown instead,
    which names the host only. Other errors quoting the URL (an invalid one) quote it as given.
    """
    cause = exc.args[0] if exc.args else None
    text = str(cause.reason) if isinstance(cause, MaxRetryError) else str(exc)
    # Cut: a receiver's line that is no HTTP is quoted whole (http.client's BadStatusLine, up to 64 KB).
    message = excerpt(text.replace(hide, "/...") if hide else text)
    # A timeout once connected: the request was sent, and the service may still act on it.
    sent = isinstance(exc, requests.Timeout) and not isinstance(exc, requests.ConnectTimeout)
    return (OutcomeUnknown if sent else RetryableError)(f"{what}: no answer ({type(exc).__name__}: {message})")


def shown_url(url: str) -> tuple[str, str]:
    """How messages name a URL (its scheme and host), and the rest of it, which they must not show:
    messages reach logs and dead letters, and a hook's path and query are often its credential
    (Zapier, Slack: whoever has the URL may post to it), a CRM record's path its e-mail address."""
    parts = urlsplit(url)
    # Host and port as written, without parsing the port (a redirect's may be out of range) and
    # without the user and password.
    origin = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
    rest = url[len(f"{parts.scheme}://{parts.netloc}"):]
    return (origin + "/...", rest) if rest.strip("/") else (origin, "")
