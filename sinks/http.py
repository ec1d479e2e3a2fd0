"""HTTP plumbing shared by the connectors that speak through `requests` (Salesforce, webhook)."""

from __future__ import annotations

from typing import Any

import requests
from requests.adapters import HTTPAdapter

from sinks.errors import RetryableError


class TimeoutSession(requests.Session):
    """A session whose every request has a timeout, and a pool as wide as the sink's concurrency.

    simple-salesforce's create/update take no timeout argument; without one a stalled CRM would
    hold a delivery lane forever.
    """

    def __init__(self, timeout_s: float, pool_size: int) -> None:
        super().__init__()
        self.timeout_s = timeout_s
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
        self.mount("https://", adapter)
        self.mount("http://", adapter)

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        kwargs.setdefault("timeout", self.timeout_s)
        return super().request(method, url, *args, **kwargs)


def transport_error(what: str, exc: requests.RequestException, hide: str = "") -> RetryableError:
    """No usable answer (timeout, refused or reset connection, TLS failure): try again later.
    `hide`, a secret part of the URL that requests' message names, is left out of it."""
    message = str(exc).replace(hide, "/...") if hide else str(exc)
    return RetryableError(f"{what}: no answer ({type(exc).__name__}: {message})")
