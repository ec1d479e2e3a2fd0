"""Errors of the stream side of leadstream (services, worker, CLI).

Every error leadstream raises on purpose derives from `scoring.errors.LeadstreamError`; each
family has one class here, and its message says what to do about it.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Literal, get_args
from urllib.parse import urlsplit

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


def refuses_writes(cause: Exception) -> bool:
    """Whether a failed Redis command was refused by a Redis that answers but takes no write (out
    of memory, a read-only replica): every write fails alike until an operator acts, where a
    command's own error (WRONGTYPE) is about its keys alone."""
    from redis import exceptions as failed

    return isinstance(cause, (failed.OutOfMemoryError, failed.ReadOnlyError))


def unreachable(cause: Exception) -> bool:
    """Whether a failed Redis command found no Redis to answer it (stopped, killed, stalled, cut
    off): every command fails alike until it is back. A refused password is a ConnectionError to
    redis-py too, but one Redis answered."""
    from redis import exceptions as failed

    return isinstance(cause, (failed.ConnectionError, failed.TimeoutError)) and not isinstance(cause, failed.AuthenticationError)


def redis_trouble(cause: Exception, url: str) -> str:
    """What went wrong with the Redis of LEADSTREAM_REDIS_URL (`url`), and what to do, for every
    message about a failed Redis command. Every failure said "could not be reached; run
    `leadstream services up`", which cures none of these: a password missing or refused (redis-py
    says only "HELLO must be called with the client already authenticated"), a TLS handshake a
    plain Redis never answers (a connect timeout), a write refused by a Redis that was reached
    (out of memory, a read-only replica after a failover). Never the URL: it may hold a password."""
    from redis import exceptions as failed

    parts = urlsplit(url)
    if isinstance(cause, failed.AuthenticationError):
        if parts.password is None:
            return (f"Redis requires a password, and LEADSTREAM_REDIS_URL gives none ({cause}); set it as "
                    "redis://:PASSWORD@host:port/db (or redis://USER:PASSWORD@... for an ACL user)")
        return f"Redis refused the password (or user) of LEADSTREAM_REDIS_URL ({cause}); check it"
    if isinstance(cause, failed.NoPermissionError):
        return f"the Redis user of LEADSTREAM_REDIS_URL may not run leadstream's commands ({cause}); check its ACL"
    if isinstance(cause, failed.OutOfMemoryError):
        return (f"Redis refused the write: it is out of memory, its used memory over its maxmemory ({cause}); free "
                "memory or raise its maxmemory")
    if isinstance(cause, failed.ReadOnlyError):
        return (f"Redis refused the write: it is a read-only replica, as after a failover ({cause}); point "
                "LEADSTREAM_REDIS_URL at the primary")
    if isinstance(cause, (failed.ConnectionError, failed.TimeoutError)):
        if parts.scheme == "rediss":
            return (f"Redis could not be reached over TLS ({cause}): LEADSTREAM_REDIS_URL asks for TLS (rediss://), "
                    "whose handshake a server that does not speak TLS never answers; use redis:// for such a one, "
                    "else check that it is up and its certificate")
        return f"Redis could not be reached ({cause}); run `leadstream services up`, or check LEADSTREAM_REDIS_URL"
    return f"Redis (LEADSTREAM_REDIS_URL) answered with an error ({cause})"


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


#: The codes the collector refuses a request or a call with, the one list of them: its metrics
#: export each from its start (streams.collector_metrics), and mypy holds every refusal to it.
RefusalCode = Literal[
    "unauthorized", "oauth_unsupported", "body_timeout", "truncated_body", "bad_content_type", "bad_encoding", "bad_gzip",
    "bad_json", "bad_batch", "too_large", "bad_call", "bad_type", "missing_identity", "missing_event", "bad_event",
    "missing_group_id", "missing_previous_id", "missing_user_id", "bad_field", "future_time", "mapping_failed",
]
REFUSAL_CODES: tuple[RefusalCode, ...] = get_args(RefusalCode)
#: The statuses a refusal is answered with (what the collector answers otherwise: 200, 500, 503).
RefusalStatus = Literal[400, 401, 408]
REFUSAL_STATUSES: tuple[RefusalStatus, ...] = get_args(RefusalStatus)


class RequestRejected(LeadstreamError):
    """The collector refuses a request (bad body, unknown write key): the client must change it.

    `code` is the machine-readable reason sent back in the response; the message says what to fix.
    """

    def __init__(self, status: RefusalStatus, code: RefusalCode, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class Unavailable(ServiceError):
    """Kafka did not take the collector's events in time, or the collector is at one of its bounds: the
    client should retry after `retry_after_s`."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
