"""Hosts of the settings in URLs and sockets (streams/addresses.py)."""

from __future__ import annotations

import socket

import pytest

from streams.addresses import authority, family, loopback


@pytest.mark.parametrize(
    ("host", "written", "listening", "local"),
    [
        ("127.0.0.1", "127.0.0.1:6066", socket.AF_INET, "127.0.0.1"),
        ("0.0.0.0", "0.0.0.0:6066", socket.AF_INET, "127.0.0.1"),
        ("localhost", "localhost:6066", socket.AF_INET, "127.0.0.1"),
        ("::1", "[::1]:6066", socket.AF_INET6, "::1"),
        ("::", "[::]:6066", socket.AF_INET6, "::1"),
        ("2001:db8::7", "[2001:db8::7]:6066", socket.AF_INET6, "::1"),
    ],
)
def test_an_ipv6_address_is_bracketed_in_urls_and_listened_on_over_ipv6(
    host: str, written: str, listening: socket.AddressFamily, local: str
) -> None:
    # Before, the worker's URL was http://::1:6066, which no URL parser reads as host and port.
    assert (authority(host, 6066), family(host), loopback(host)) == (written, listening, local)
