"""Errors of the sinks: one family, split by what the runner does next.

A connector raises `RetryableError` when trying again later can succeed (429, 5xx, timeouts,
connection errors, malformed answers) and `PermanentError` when it cannot (4xx other than 429, a
contact that does not exist, a record that is not a crossing): the runner retries the first with
backoff and dead-letters the second; `OutcomeUnknown`, a retryable timeout, tells a step that
creates a record to look for it a while before creating it again. `CredentialsError` (401; HubSpot's 403 for a scope the token lacks) is about the connector, not the
message: every delivery would fail the same way, so the runner dead-letters nothing for it and
holds its place until the credentials work (a message that fails before any request, for good, is
dead-lettered as ever); so is `QuotaExhausted`, a quota of a day used up, the family `Refused`. `StaleError` sets aside a replayed item that newer ones
overtook. `MappingError` is raised on start, before anything is read. `Stopping` cuts a delivery's
wait short when the connector is asked to stop.
"""

from __future__ import annotations

import math
from typing import ClassVar, Mapping

from scoring.errors import LeadstreamError


class SinkError(LeadstreamError):
    """Root of the sinks' errors."""


class RetryableError(SinkError):
    """The action failed for now; `retry_after_s` is the server's own wait (Retry-After), if it gave one;
    `throttled`: the service asks for fewer calls (429), which every delivery of the connector shares."""

    def __init__(self, message: str, retry_after_s: float | None = None, *, throttled: bool = False) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.throttled = throttled


class OutcomeUnknown(RetryableError):
    """The request got no answer in time: the service may have it still, and act on it after the
    connector gave up (a record it creates then would be created twice by a retry at once)."""


class Unsettled(SinkError):
    """A step's earlier call timed out and the record it asked for is not found yet: the runner
    looks again after `wait_s`, without counting a try (the CRM may still be creating it)."""

    def __init__(self, message: str, wait_s: float) -> None:
        super().__init__(message)
        self.wait_s = wait_s


class PermanentError(SinkError):
    """The action cannot succeed as it is: the message goes to the connector's dead-letter topic."""


class Refused(SinkError):
    """The service refuses every delivery of the connector for now, whatever the message: none is
    dead-lettered for it; the runner holds the delivery, not ready, and tries it again every
    LEADSTREAM_SINK_BACKOFF_MAX_MS. `refusal` and `until` say what and until when, for the log."""

    refusal: ClassVar[str] = "the service refuses the connector's deliveries"
    until: ClassVar[str] = "it takes them again"


class CredentialsError(Refused):
    """The service refused the connector's credentials (HTTP 401, or HubSpot's 403 for a scope the
    token lacks): no message can be delivered until an operator fixes them, so none is dead-lettered
    for it meanwhile."""

    refusal = "the service refuses the connector's credentials"
    until = "it accepts them (restart the connector with new ones)"


class QuotaExhausted(Refused):
    """The account's API quota of a day is used up (HubSpot's daily limit, Salesforce's requests of
    24 hours): every call is refused until it is renewed, hours later, far beyond the retries'
    budget, so each message would be dead-lettered, the whole stream to replay."""

    refusal = "the service's API quota is used up"
    until = "the quota is renewed"


class StaleError(SinkError):
    """The item is older than what the connector already applied for the same record (a replayed
    dead letter that newer messages overtook): the runner counts it as `stale` and goes past it."""


class Stopping(SinkError):
    """The connector was asked to stop while a delivery waited (for the rate limit, or before a
    retry): nothing more was sent, and the runner leaves the batch uncommitted, for the next start."""


class MappingError(SinkError):
    """A connector's field-mapping file is invalid: the message names the file and the field."""


def retry_after_s(headers: Mapping[str, str] | None) -> float | None:
    """Seconds from a Retry-After header given as delta-seconds (what HubSpot and most hooks send).

    None when there is none or it is not a finite number (`inf`, `nan`: no wait can honour it);
    how long a server may make us wait is the runner's bound (RetryPolicy.server_wait_s).
    """
    if not headers:
        return None
    for name, value in headers.items():
        if name.lower() == "retry-after":
            try:
                seconds = float(value)
            except ValueError:
                return None  # an HTTP date: rare for APIs; our own backoff applies instead
            return max(0.0, seconds) if math.isfinite(seconds) else None
    return None


#: Characters of a service's answer that an error message keeps: messages go to the log and into dead letters.
SHOWN_CHARS = 500


def excerpt(answer: str) -> str:
    """The start of a service's answer as an error message shows it, saying how much was left out:
    a proxy's or gateway's HTML page of 100 KB went whole into each line and dead letter."""
    left_out = len(answer) - SHOWN_CHARS
    return answer if left_out <= 0 else f"{answer[:SHOWN_CHARS]}... ({left_out} more characters)"


def for_status(status: int, what: str, detail: str, headers: Mapping[str, str] | None = None,
               credentials: str = "the connector's credentials") -> SinkError:
    """The error for an HTTP answer that is not a success, by the usual API conventions.

    408, 423, 425, 429 and 5xx are worth retrying; other 4xx are not (the request itself is wrong:
    retrying only burns the API quota). 423 Locked: another operation holds the record for now, so
    a later try can succeed. 401 is the credentials, whatever the request. A 403 stays the
    request's: Salesforce answers it for one record the connector's user may not edit.
    `credentials` names the settings a 401 or 403 is about.
    """
    message = f"{what}: HTTP {status}: {excerpt(detail)}"
    if status in (408, 423, 425, 429) or status >= 500:
        return RetryableError(message, retry_after_s(headers), throttled=status == 429)
    if status == 401:
        return CredentialsError(f"{message} (check {credentials})")
    if status == 403:
        return PermanentError(f"{message} (check {credentials} and the scopes granted)")
    return PermanentError(message)
