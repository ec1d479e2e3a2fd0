"""Webhook connector: POST each crossing as JSON, signed, to any other CRM or automation hook.

The body is the crossing exactly as the sink topic holds it. Headers:

- `X-Leadstream-Id`: the crossing id; the same on every retry and replay, so a receiver that
  keeps the ids it has handled (for a day or more) never acts twice.
- `X-Leadstream-Timestamp`: Unix seconds when this attempt was signed, just before it is sent
  (after any wait for the rate limit).
- `X-Leadstream-Signature`: `v1=` + hex HMAC-SHA256, keyed with LEADSTREAM_WEBHOOK_SECRET, of
  the timestamp, a dot and the raw body (`f"{timestamp}.".encode() + body`).

Verifying, in any language (`verify_signature` below does it in Python):
1. Read the raw body bytes before parsing them.
2. Compute `hex(HMAC_SHA256(secret, timestamp + "." + body))` and compare it with the part of
   the signature header after `v1=`, in constant time.
3. Reject a timestamp more than 5 minutes from your clock: a captured request cannot be replayed.

Any 2xx acknowledges; 408, 423, 425, 429 (with Retry-After honoured) and 5xx are retried; a redirect
or another 4xx dead-letters the crossing. Of an answer's body, at most 64 KiB read within
LEADSTREAM_SINK_TIMEOUT_S of the request's start is kept (for an error's reason): the status
decides, and a body that keeps coming (a stream, a stalled proxy) must not hold the delivery, each
byte within the timeout. An answer whose headers are not all in by then fails the attempt.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urljoin

import requests
import urllib3

from sinks.base import Crossing, Position, Sink, Steps, lead_of, order_key_of
from sinks.errors import PermanentError, for_status
from sinks.http import Deadline, TimeoutSession, shown_url, transport_error
from sinks.ratelimit import limiter_for
from streams.errors import ConfigError
from streams.settings import Settings

SIGNATURE_VERSION = "v1"
TOLERANCE_S = 300
#: The most of an answer's body read: an error's reason is cut to 500 characters anyway.
BODY_LIMIT_BYTES = 64 * 1024


def sign(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"{SIGNATURE_VERSION}={digest}"


def verify_signature(secret: str, timestamp: str, body: bytes, signature: str, now_s: float | None = None,
                     tolerance_s: int = TOLERANCE_S) -> bool:
    """The receiver's check: signature matches and the timestamp is within `tolerance_s` of
    `now_s` (the receiver's clock when not given; a test gives its own).

    False, never an exception, for any header a sender (or a forger) can write.
    """
    try:
        signed_at = int(timestamp)
        recent = abs((time.time() if now_s is None else now_s) - signed_at) <= tolerance_s
    except (ValueError, OverflowError):  # not a number, or one too large to compare with a clock
        return False
    # Ours is ASCII hex; compare_digest raises TypeError on text that is not ASCII.
    if not recent or not signature.isascii():
        return False
    return hmac.compare_digest(sign(secret, signed_at, body), signature)


@dataclass(frozen=True)
class Post:
    crossing_id: str
    body: bytes
    time_ms: int  # the crossing's time, for the delivery-latency metric
    record: str  # the level it moves (sinks.base.order_key_of): a replay skips one newer posts overtook
    lead: str | None  # its lead (sinks.base.lead_of): not posted once the lead is forgotten


class WebhookSink(Sink[Post]):
    name = "webhook"

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        if not settings.webhook_url:
            raise ConfigError("LEADSTREAM_WEBHOOK_URL is empty: set the URL to POST crossings to")
        # Checked as from_env checks it, for settings made in code: a URL requests cannot send to
        # would fail each delivery as if the receiver had not answered.
        settings.check("webhook_url")
        if not settings.webhook_secret:
            raise ConfigError("LEADSTREAM_WEBHOOK_SECRET is empty: set a long random secret (e.g. `openssl rand "
                              "-hex 32`) and give the same one to the receiver to verify signatures")
        self.url = settings.webhook_url
        shown, self.hidden = shown_url(self.url)
        self.where = f"webhook {shown}"
        self.secret = settings.webhook_secret
        self.clock = clock
        self.limiter = limiter_for("LEADSTREAM_WEBHOOK_RATE_LIMIT", settings.webhook_rate_limit, "webhook")
        self.session = TimeoutSession(settings.sink_timeout_s, settings.sink_concurrency)
        logging.getLogger("urllib3.connection").addFilter(_HEADER_WARNINGS)  # once: it is one object

    def parse(self, key: bytes | None, value: bytes | None, position: Position) -> Post:
        crossing = Crossing.from_json(value)  # only valid crossings leave; the body stays as it came
        return Post(crossing.id, value or b"", crossing.time_ms, order_key_of(crossing), lead_of(crossing))

    def delivery_id(self, item: Post) -> str:
        return item.crossing_id

    def order_key(self, item: Post) -> str:
        # None, as it was, let a replay post an old crossing after newer ones of the lead: the
        # receiver was last told a level the lead had left.
        return item.record

    def lead_of(self, item: Post) -> str | None:
        return item.lead

    def deliver(self, item: Post, steps: Steps) -> None:
        # Signed after the rate limiter's wait (quota, or another lane's Retry-After), which can
        # last longer than the receiver's tolerance for the timestamp.
        self.limiter.acquire()
        timestamp = int(self.clock())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "leadstream-webhook/1",
            "X-Leadstream-Id": item.crossing_id,
            "X-Leadstream-Timestamp": str(timestamp),
            "X-Leadstream-Signature": sign(self.secret, timestamp, item.body),
            # The body is read raw (see _body): not compressed, so its bytes are its text.
            "Accept-Encoding": "identity",
        }
        try:
            # stream: the body is ours to read, within the call's deadline, not to the end (see _body).
            with self.session.deadline() as deadline, self.session.post(
                    self.url, data=item.body, headers=headers, allow_redirects=False, stream=True) as response:
                body = _body(response, deadline)
        except requests.RequestException as exc:
            raise transport_error(self.where, exc, hide=self.hidden) from None
        if 300 <= response.status_code < 400:
            # Shown as the receiver is: a hook moved to HTTPS keeps its secret path in the new URL.
            target, _ = shown_url(urljoin(self.url, response.headers.get("Location") or ""))
            raise PermanentError(f"{self.where}: redirected (HTTP {response.status_code}) to {target}: "
                                 "set LEADSTREAM_WEBHOOK_URL to the final URL")
        if response.status_code >= 400:
            raise for_status(response.status_code, self.where, body, response.headers,
                             "LEADSTREAM_WEBHOOK_SECRET and what the receiver expects")

    def close(self) -> None:
        self.session.close()


class _HeaderWarnings(logging.Filter):
    """urllib3 warns of an answer's headers it cannot parse (a line without a colon) naming the
    whole URL, with a traceback, for every call: the hook's path in the log. The answer is read
    all the same, so one line naming the URL as messages do (`shown_url`) says enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("Failed to parse headers") and isinstance(record.args, tuple) and len(record.args) == 2:
            url, error = record.args
            record.args = (shown_url(str(url))[0], error)
            record.exc_info = record.exc_text = None
        return True


_HEADER_WARNINGS = _HeaderWarnings()


def _body(response: requests.Response, deadline: Deadline) -> str:
    """The first BODY_LIMIT_BYTES of the answer's body that arrive before the call's deadline.

    The session's timeout bounds each read, not the body: a receiver sending a byte now and then
    would hold the delivery (and its lead's next ones) for as long as it kept on. A body read to
    its end leaves the connection for the next request; one cut short closes it.
    """
    chunks: list[bytes] = []
    size = 0
    ended = False
    try:
        while size < BODY_LIMIT_BYTES and not deadline.expired:
            chunk = response.raw.read1(BODY_LIMIT_BYTES - size)
            if not chunk:
                ended = not deadline.expired  # else the deadline cut the connection
                break
            chunks.append(chunk)
            size += len(chunk)
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        if not deadline.expired:  # the status decides; what came before the deadline is kept
            raise requests.ConnectionError(exc) from None
    if ended:
        response.raw.release_conn()
    else:
        response.raw.close()
    return b"".join(chunks).decode(errors="replace")
