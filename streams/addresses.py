"""Hosts as the settings give them (LEADSTREAM_BIND_HOST, LEADSTREAM_COLLECTOR_HOST): an IPv4 or
IPv6 address, or a name.

An IPv6 address takes a socket of its own family to listen on, and brackets in a URL (RFC 3986):
`http://::1:6066` is no URL, `http://[::1]:6066` is.
"""

from __future__ import annotations

import ipaddress
import socket


def is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:  # a name
        return False


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
