"""Hosts as the settings give them (LEADSTREAM_BIND_HOST, LEADSTREAM_ADVERTISED_HOST,
LEADSTREAM_COLLECTOR_HOST): an IPv4 or IPv6 address, or a name.

An IPv6 address takes a socket of its own family to listen on, and brackets in a URL (RFC 3986):
`http://::1:6066` is no URL, `http://[::1]:6066` is.
"""

from __future__ import annotations

import ipaddress
import socket


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:  # a name
        return None


def is_address(host: str) -> bool:
    return _address(host) is not None


def is_ipv6(host: str) -> bool:
    address = _address(host)
    return address is not None and address.version == 6


def is_wildcard(host: str) -> bool:
    """Whether a socket listening on `host` listens on every address of the machine (0.0.0.0, ::)."""
    address = _address(host)
    return address is not None and address.is_unspecified


def advertised(bind_host: str, advertised_host: str) -> str:
    """The host other machines reach a server listening on `bind_host` at: `advertised_host` when
    it is set; else `bind_host`, unless that is a wildcard, which names every address of the
    machine and none another machine can connect to; then the machine's host name, as Faust's
    own default (`web_host`, socket.gethostname())."""
    if advertised_host:
        return advertised_host
    return socket.gethostname() if is_wildcard(bind_host) else bind_host


def family(host: str) -> socket.AddressFamily:
    """The family of a socket listening on `host` (a name listens on IPv4, as it always did)."""
    return socket.AF_INET6 if is_ipv6(host) else socket.AF_INET


def authority(host: str, port: int) -> str:
    """`host:port` as a URL writes it, an IPv6 address in brackets."""
    return f"[{host}]:{port}" if is_ipv6(host) else f"{host}:{port}"


def loopback(host: str) -> str:
    """Where a process on this machine reaches a server listening on `host` (on loopback or on
    every address): the loopback address of the host's family."""
    return "::1" if is_ipv6(host) else "127.0.0.1"
