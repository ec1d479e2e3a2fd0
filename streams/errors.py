"""Errors of the stream side of leadstream (services, worker, CLI).

Every error leadstream raises on purpose derives from `scoring.errors.LeadstreamError`; each
family has one class here, and its message says what to do about it.
"""

from __future__ import annotations

import errno
import os
import socket

from scoring.errors import LeadstreamError
from streams.addresses import authority


class ConfigError(LeadstreamError):
    """A setting (environment variable) has a value leadstream cannot use."""


class ServiceError(LeadstreamError):
    """A local service (Kafka, Redis) or tool (the tests' promtool) could not be installed, fetched, started, reached or stopped."""


def kafka_unreachable(bootstrap: str, cause: Exception, waited_s: int) -> ServiceError:
    """What a command says when the broker does not answer within `waited_s` (streams.kafka_clients)."""
    return ServiceError(f"cannot reach Kafka at {bootstrap} within {waited_s} s (LEADSTREAM_KAFKA_CONNECT_TIMEOUT_S) "
                        f"({cause}); run `leadstream services up`")


def cannot_listen(host: str, port: int, setting: str, cause: OSError, host_setting: str = "LEADSTREAM_BIND_HOST") -> ServiceError:
    """What a process says when it cannot listen on host:port, naming the setting at fault: the
    port's (`setting`) when it is taken or not this user's to have, the host's when this machine
    has no such address (it blamed the port for a host name that does not resolve)."""
    # aiohttp's OSError puts the whole of its own message in strerror: the system's words for the errno.
    reason = os.strerror(cause.errno) if cause.errno and cause.errno > 0 else cause.strerror or str(cause)
    where = f"cannot listen on {authority(host, port)} ({reason})"
    if isinstance(cause, socket.gaierror) or cause.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
        return ServiceError(f"{where}: this machine has no such address; set {host_setting} to one of its addresses "
                            "(127.0.0.1, or 0.0.0.0 for every one)")
    if cause.errno == errno.EACCES:
        return ServiceError(f"{where}: this user may not listen on port {port} (one below 1024 needs root); "
                            f"set {setting} to a port from 1024")
    return ServiceError(f"{where}: another process holds the port (a second copy of this process?); stop it or set "
                        f"{setting} to a free port")


class SkippedOffsets(LeadstreamError):
    """A partition's messages were handed to the worker with a hole before them: the messages in
    the hole were never scored, and committing past them would lose them for good."""


class SplitAssignment(LeadstreamError):
    """The worker was given partitions of an input topic without its table's partitions of the
    same numbers (streams/assignor.py): it would score their keys against no state."""


class MembershipLost(LeadstreamError):
    """The worker is no longer, or cannot confirm it is, a member of its consumer group: what it
    was about to write is dropped, for the partitions' owner to score again (streams/membership.py)."""


class InputError(LeadstreamError):
    """A file or message given to a command is not what it expects."""


class RequestRejected(LeadstreamError):
    """The collector refuses a request (bad body, unknown write key): the client must change it.

    `code` is the machine-readable reason sent back in the response; the message says what to fix.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class Unavailable(ServiceError):
    """Kafka did not take the collector's events in time, or the collector is at one of its bounds: the
    client should retry after `retry_after_s`."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
