"""Per-connector API quotas as token buckets, shared by all of a connector's concurrent deliveries.

CRMs state quotas as "N requests per W seconds" (HubSpot private apps: 100 per 10 s on
Free/Starter; Salesforce Enterprise: 100,000 per 24 h). A token bucket of capacity `b` refilled
at `r` per second lets through at most `b + r*W` requests in any window of `W` seconds, so the
bucket holds a tenth of the quota and refills at 85% of it: that stays 5% under the quota, which
absorbs the jitter between when a request is allowed and when it reaches the server.

A server's 429 with Retry-After pauses every delivery of the connector, with a quota or without
one (`Limiter`, which the token bucket extends with the quota's own waits).
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from typing import Callable

from sinks.errors import Stopping
from sinks.metrics import RATE_LIMIT_WAIT_SECONDS
from streams.errors import ConfigError

_QUOTA = re.compile(r"^\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)\s*s\s*$")
#: The longest window a quota may have. A wait for a slot is the window's over the requests, and
#: a thread cannot sleep beyond threading.TIMEOUT_MAX (292 years): `1/10000000000s` failed each
#: delivery after the first with an OverflowError traceback, and dead-lettered it as retries_exhausted.
MAX_WINDOW_S = 366 * 86_400


@dataclass(frozen=True)
class Quota:
    requests: int
    window_s: float

    @classmethod
    def parse(cls, env: str, text: str) -> Quota | None:
        """'100/10s' is a quota; 'unlimited' is none."""
        if text.strip().lower() == "unlimited":
            return None
        match = _QUOTA.match(text)
        if not match or int(match[1]) < 1 or not 0 < float(match[2]) <= MAX_WINDOW_S:
            raise ConfigError(f"{env}={text!r} is not a rate limit: write REQUESTS/SECONDSs (e.g. 100/10s), a window of "
                              f"more than 0 and at most {MAX_WINDOW_S} s (366 days), or unlimited")
        return cls(int(match[1]), float(match[2]))


class Limiter:
    """Blocks each caller until it may send; thread-safe. Without a quota (a webhook you run
    yourself) that is only while paused: `pause_until` makes everyone wait for a server's
    Retry-After, since a 429 means the whole connector, not one delivery, is over quota, whatever
    quota the connector was given (an unlimited webhook's lanes each retried alone, 72 POSTs within
    2 s of a Retry-After of 30 s). Callers already asleep when the pause begins wait for its end as
    well. Such a wait can last a minute: once the event given to `stop_on` is set, waits end at
    once with `Stopping`, so a stopping connector does not first wait for a slot it will not use.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] | None = None,
        connector: str = "",
    ) -> None:
        self.connector = connector
        self._clock = clock
        self._stop = threading.Event()  # never set until `stop_on` shares the runner's
        # A fake clock's sleep in tests; else a wait that the stop event ends.
        self._sleep = sleep or (lambda seconds: self._stop.wait(seconds))
        self._lock = threading.Lock()
        self._paused_until = 0.0

    def acquire(self) -> None:
        while True:
            with self._lock:
                now = self._clock()
                wait_s = max(0.0, self._paused_until - now) + self._reserve(now)
            if wait_s > 0:
                RATE_LIMIT_WAIT_SECONDS.labels(self.connector).inc(wait_s)
                self._sleep(wait_s)
                if self._stop.is_set():
                    raise Stopping(f"{self.connector}: stopped while waiting {wait_s:.1f} s for the rate limit")
            with self._lock:
                if self._clock() >= self._paused_until:
                    return
                # A 429 paused the connector while this caller slept: its slot, reserved before the
                # pause, is given back and reserved anew behind the pause, like a newcomer's.
                self._give_back()

    def stop_on(self, stop: threading.Event) -> None:
        """End every wait, and fail every acquire that would wait, once `stop` is set."""
        self._stop = stop

    def pause_until(self, deadline: float) -> None:
        with self._lock:
            self._paused_until = max(self._paused_until, deadline)

    def _reserve(self, now: float) -> float:
        """Take a slot of the quota (under the lock): the seconds it waits past the pause."""
        return 0.0

    def _give_back(self) -> None:
        """Return the slot `_reserve` took (under the lock)."""


class TokenBucket(Limiter):
    """A quota: callers reserve a slot under the lock and sleep outside it, so concurrent callers
    queue up in order without holding each other."""

    def __init__(
        self,
        quota: Quota,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] | None = None,
        connector: str = "",
    ) -> None:
        super().__init__(clock, sleep, connector)
        self.capacity = max(1.0, quota.requests / 10)
        self.rate_per_s = quota.requests * 0.85 / quota.window_s
        self._tokens = self.capacity
        self._updated = clock()

    def _reserve(self, now: float) -> float:
        # Time spent paused earns no tokens: after a 429 the quota is spent, not saved.
        earning_since = max(self._updated, min(now, self._paused_until))
        self._tokens = min(self.capacity, self._tokens + (now - earning_since) * self.rate_per_s)
        self._updated = now
        self._tokens -= 1
        # A slot reserved during a pause starts earning only when the pause ends.
        return max(0.0, -self._tokens) / self.rate_per_s

    def _give_back(self) -> None:
        self._tokens += 1


def limiter_for(env: str, text: str, connector: str) -> Limiter:
    """The connector's quota; with none, a limiter that only a server's Retry-After pauses."""
    quota = Quota.parse(env, text)
    return Limiter(connector=connector) if quota is None else TokenBucket(quota, connector=connector)
