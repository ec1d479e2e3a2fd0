"""The webhook connector: signed POSTs a receiver can verify with the documented recipe."""

from __future__ import annotations

import hashlib
import hmac
import logging
import socket
import threading
import time

import orjson
import pytest

from sinks.ratelimit import Quota, TokenBucket
from sinks.runner import RetryPolicy, SinkRunner
from sinks.webhook import WebhookSink, sign, verify_signature
from streams.errors import ConfigError
from streams.settings import Settings
from tests.infra import leadstream, read_topic, wait_for
from tests.sinks.conftest import WEBHOOK_SECRET, crossing, drain, produce
from tests.sinks.fake_clock import FakeClock
from tests.sinks.fake_http import WebhookReceiver


def recipe_accepts(secret: str, headers: dict[str, str], body: bytes, now_s: float) -> bool:
    """The README's verification recipe, written from its text alone (not from sinks.webhook)."""
    timestamp = headers["X-Leadstream-Timestamp"]
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    given = headers["X-Leadstream-Signature"].removeprefix("v1=")
    return hmac.compare_digest(expected, given) and abs(now_s - int(timestamp)) <= 300


def test_each_crossing_is_posted_once_as_sent_and_signed_verifiably(
    sink_settings: Settings, webhook: WebhookReceiver
) -> None:
    settings = sink_settings.with_overrides(webhook_url=f"{webhook.url}/hooks/leads")
    records = [crossing(n, "mql") for n in range(3)]
    produce(settings, records)

    stats = drain(WebhookSink(settings), settings)

    assert stats.delivered == 3
    posts = webhook.requests_to("POST", "^/hooks/leads$")
    assert sorted(orjson.loads(p.body)["id"] for p in posts) == sorted(r["id"] for r in records)
    for post in posts:
        assert post.body == orjson.dumps(next(r for r in records if r["id"] == post.json()["id"]))
        assert post.headers["X-Leadstream-Id"] == post.json()["id"]
        assert recipe_accepts(WEBHOOK_SECRET, post.headers, post.body, time.time())
        assert not recipe_accepts("another-secret", post.headers, post.body, time.time())
        assert not recipe_accepts(WEBHOOK_SECRET, post.headers, post.body + b" ", time.time())


@pytest.mark.parametrize(
    ("signed_at_offset_s", "tampered", "accepted"),
    [(0, False, True), (-299, False, True), (-301, False, False), (301, False, False), (0, True, False)],
)
def test_verify_signature_checks_the_mac_and_the_age(signed_at_offset_s: int, tampered: bool, accepted: bool) -> None:
    body = b'{"id":"x"}'
    now = 1_763_884_800
    signature = sign("s3cret", now + signed_at_offset_s, body)
    assert verify_signature("s3cret", str(now + signed_at_offset_s), body + (b"!" if tampered else b""),
                            signature, now_s=now) is accepted


def test_verify_signature_checks_the_age_against_the_current_time_when_not_given_one() -> None:
    # The README's call, (secret, timestamp, body, signature), raised TypeError: now_s was required.
    body, now = b'{"id":"x"}', int(time.time())
    assert verify_signature("s3cret", str(now), body, sign("s3cret", now, body)) is True
    assert verify_signature("s3cret", str(now - 400), body, sign("s3cret", now - 400, body)) is False


@pytest.mark.parametrize(
    ("timestamp", "signature"),
    [("{now}", "v1=é" + "0" * 63), ("{now}", "v1=\udcff"), ("1" * 4000, "v1=" + "0" * 64),
     ("-" + "9" * 400, "v1=" + "0" * 64), ("soon", "v1=" + "0" * 64)],
)
def test_verify_signature_refuses_garbled_headers_without_raising(timestamp: str, signature: str) -> None:
    now = 1_763_884_800
    assert verify_signature("s3cret", timestamp.format(now=now), b'{"id":"x"}', signature, now_s=now + 0.5) is False


def test_429_is_retried_after_its_retry_after_and_4xx_or_redirects_are_dead_lettered(
    sink_settings: Settings, webhook: WebhookReceiver
) -> None:
    # Retry-After is honoured up to the longest backoff.
    settings = sink_settings.with_overrides(webhook_url=webhook.url + "/hook", sink_backoff_max_ms=2000)
    webhook.inject("status", status=429, headers={"Retry-After": "1"}, body={"error": "slow down"})
    produce(settings, [crossing(1, "mql")])
    first = drain(WebhookSink(settings), settings)
    webhook.inject("status", status=410, body={"error": "hook deleted"})
    webhook.inject("status", status=301, headers={"Location": "https://hooks.example/new"})
    produce(settings, [crossing(2, "mql"), crossing(3, "mql")])
    second = drain(WebhookSink(settings), settings)

    assert (first.delivered, first.retries) == (1, 1)
    posts = webhook.requests_to("POST", "/hook")
    assert posts[1].at - posts[0].at >= 1.0
    assert posts[1].headers["X-Leadstream-Timestamp"] >= posts[0].headers["X-Leadstream-Timestamp"]
    assert (second.delivered, second.dead_lettered) == (0, 2)
    letters = [v for _, v in read_topic(settings, f"{settings.topic_crossings}-dlq-webhook", expect=2, idle_s=0.5)]
    details = sorted(letter["detail"] for letter in letters)
    assert "HTTP 410" in details[0] or "HTTP 410" in details[1]
    assert any("redirected (HTTP 301) to https://hooks.example/...: set LEADSTREAM_WEBHOOK_URL" in d for d in details)


@pytest.mark.parametrize(("headers", "backoff_base_ms"), [
    # LEADSTREAM_WEBHOOK_RATE_LIMIT=unlimited (the default) paused nothing: each lane retried
    # alone while the others went on posting into the Retry-After, 72 POSTs within 2 s of it.
    ({"Retry-After": "2"}, 50),
    # Without a Retry-After the 429 backed off its own lane only: the other lanes went on
    # posting into the limit, each for a 429 of its own (26 POSTs within 2 s). Every delivery
    # waits the longest backoff of the first try: 2 s.
    ({}, 2000),
])
def test_a_429_pauses_every_delivery_of_a_webhook_without_a_rate_limit(
    sink_settings: Settings, webhook: WebhookReceiver, headers: dict[str, str], backoff_base_ms: int
) -> None:
    settings = sink_settings.with_overrides(webhook_url=webhook.url + "/hook", sink_backoff_base_ms=backoff_base_ms,
                                            sink_backoff_max_ms=3000)
    assert settings.webhook_rate_limit == "unlimited"
    webhook.latency_s = 0.05  # the first tries are all under way before the first answer
    webhook.inject("status", status=429, count=settings.sink_concurrency, headers=headers)
    produce(settings, [crossing(n, "mql") for n in range(40)])

    stats = drain(WebhookSink(settings), settings)

    assert (stats.delivered, stats.retries, stats.dead_lettered) == (40, settings.sink_concurrency, 0)
    posts = sorted(webhook.requests_to("POST", "/hook"), key=lambda p: p.at)
    first_answer = posts[0].at + webhook.latency_s
    assert [p for p in posts if first_answer + 0.2 < p.at < first_answer + 1.8] == []
    assert len(posts) == 40 + settings.sink_concurrency


def test_a_redirect_to_a_url_with_a_port_out_of_range_is_dead_lettered_at_once_without_its_credentials(
    sink_settings: Settings, webhook: WebhookReceiver
) -> None:
    # Naming the redirect's target parsed its port, and raised ValueError out of the delivery:
    # retried as an unexpected error, with a traceback, before it was dead-lettered.
    settings = sink_settings.with_overrides(webhook_url=webhook.url + "/hook", sink_backoff_max_ms=100)
    webhook.inject("status", status=302, headers={"Location": "https://ops:pa55@hooks.example:99999/new/s3cr3t"})
    produce(settings, [crossing(1, "mql")])
    stats = drain(WebhookSink(settings), settings)

    assert (stats.delivered, stats.retries, stats.dead_lettered) == (0, 0, 1)
    [letter] = [v for _, v in read_topic(settings, f"{settings.topic_crossings}-dlq-webhook", expect=1, idle_s=0.5)]
    assert "redirected (HTTP 302) to https://hooks.example:99999/...: set LEADSTREAM_WEBHOOK_URL" in letter["detail"]
    assert "pa55" not in letter["detail"] and "s3cr3t" not in letter["detail"]


def test_an_endless_or_huge_retry_after_waits_at_most_the_longest_backoff(
    sink_settings: Settings, webhook: WebhookReceiver
) -> None:
    # Event.wait(1e10) raised OverflowError out of the runner; 86400 would have held the batch a day.
    settings = sink_settings.with_overrides(webhook_url=webhook.url + "/hook", sink_backoff_max_ms=400)
    for retry_after in ("1e10", "inf", "86400"):
        webhook.inject("status", status=429, headers={"Retry-After": retry_after})
    produce(settings, [crossing(1, "mql"), crossing(2, "mql")])

    started = time.monotonic()
    stats = drain(WebhookSink(settings), settings)

    assert (stats.delivered, stats.retries, stats.dead_lettered) == (2, 3, 0)
    posts = sorted(webhook.requests_to("POST", "/hook"), key=lambda p: p.at)
    assert len(posts) == 5 and posts[-1].at - started < 10


def test_a_crossing_is_signed_after_its_wait_for_the_rate_limit(sink_settings: Settings, webhook: WebhookReceiver) -> None:
    # One request per 1000 s: the second crossing waits about 1176 s (on the fake clock) for its
    # slot, far beyond the receiver's 300 s tolerance, and must still be accepted on arrival.
    settings = sink_settings.with_overrides(webhook_url=webhook.url)
    clock = FakeClock(1_763_884_800.0)
    sink = WebhookSink(settings, clock=clock)
    sink.limiter = TokenBucket(Quota(1, 1000.0), clock=clock, sleep=clock.sleep)
    produce(settings, [crossing(1, "mql"), crossing(1, "sql", seq=2)])  # one lead: delivered in order

    stats = drain(sink, settings)

    assert stats.delivered == 2 and clock.now > 1_763_884_800 + 1000
    first, second = sorted(webhook.requests_to("POST", "/"), key=lambda p: p.at)
    assert (first.headers["X-Leadstream-Timestamp"], second.headers["X-Leadstream-Timestamp"]) == (
        "1763884800", str(int(clock.now)))
    assert verify_signature(WEBHOOK_SECRET, second.headers["X-Leadstream-Timestamp"], second.body,
                            second.headers["X-Leadstream-Signature"], now_s=clock.now)


def test_a_leads_crossings_arrive_in_order_while_leads_are_delivered_concurrently(
    sink_settings: Settings, webhook: WebhookReceiver
) -> None:
    settings = sink_settings.with_overrides(webhook_url=webhook.url, sink_concurrency=4)
    webhook.latency_s = 0.01
    levels = [("mql", "up"), ("nurture", "down")] * 3
    produce(settings, [crossing(n, level, direction, seq=i) for i, (level, direction) in enumerate(levels)
                       for n in range(8)])

    drain(WebhookSink(settings), settings)

    posts = sorted(webhook.requests_to("POST", "/"), key=lambda p: p.at)
    received = [orjson.loads(p.body) for p in posts]
    assert len(received) == 48
    for n in range(8):
        assert [r["id"].rsplit("/", 1)[1] for r in received if r["lead_id"] == f"lead-{n}"] == [str(i) for i in range(6)]
    # One lane at a time would space requests by the 10 ms the receiver takes to answer.
    assert min(b.at - a.at for a, b in zip(posts, posts[1:])) < 0.005, "leads were not delivered concurrently"


def test_an_answer_whose_body_never_ends_holds_the_delivery_no_longer_than_the_timeout(
    sink_settings: Settings, webhook: WebhookReceiver
) -> None:
    # The receiver answers 200 at once, then keeps sending its body (a stream, a stalled proxy)
    # until the next request reaches it, or 20 s. Reading the whole body, each byte within the
    # 1 s timeout, held lead-1's delivery, and lead-2's behind it, until the body ended.
    settings = sink_settings.with_overrides(webhook_url=webhook.url, sink_concurrency=1)
    webhook.inject("trickle", status=200, delay_s=20)
    produce(settings, [crossing(1, "mql"), crossing(1, "sql", seq=2)])

    stats = drain(WebhookSink(settings), settings)

    assert (stats.delivered, stats.dead_lettered) == (2, 0)
    wait_for(lambda: webhook.trickle_ended_at, what="the endless answer to end")
    first, second = sorted(webhook.requests_to("POST", "/"), key=lambda p: p.at)
    assert second.at < webhook.trickle_ended_at, "the first answer's endless body held the next delivery"


def test_an_answer_whose_headers_never_end_fails_the_attempt_at_the_timeout(
    sink_settings: Settings, webhook: WebhookReceiver
) -> None:
    # The receiver sends its status line, then a header a byte at a time (each within the 1 s
    # timeout, which bounds each read, not the answer) until the next request or 20 s: the
    # delivery waited for all of it.
    settings = sink_settings.with_overrides(webhook_url=webhook.url, sink_max_attempts=1)
    webhook.inject("trickle_headers", status=200, delay_s=20)
    produce(settings, [crossing(1, "mql")])

    started = time.monotonic()
    stats = drain(WebhookSink(settings), settings)

    assert stats.dead_lettered == 1 and time.monotonic() - started < 8
    [(_, letter)] = read_topic(settings, f"{settings.topic_crossings}-dlq-webhook", expect=1, idle_s=0.5)
    assert f"webhook {webhook.url}: no answer (Timeout: no whole answer within 1 s)" in letter["detail"], letter["detail"]


def test_a_receiver_that_accepts_and_never_answers_has_the_crossing_dead_lettered_within_the_backoffs_and_a_timeout(
    sink_settings: Settings, webhook: WebhookReceiver
) -> None:
    # Each try waited out the timeout (10 s by default) before its backoff, and tries alone were
    # counted: the first dead letter came 3 min 48 s after the receiver hung, where the README
    # says 16 to 32 s (the backoffs' sum, what a receiver answering 500 costs).
    settings = sink_settings.with_overrides(webhook_url=webhook.url, sink_max_attempts=8, sink_backoff_base_ms=500,
                                            sink_backoff_max_ms=500)
    policy = RetryPolicy.from_settings(settings)
    assert policy.budget_s() == 7 * 0.5 + settings.sink_timeout_s
    webhook.inject("slow", delay_s=30, count=100)
    produce(settings, [crossing(1, "mql")])

    stats = drain(WebhookSink(settings), settings)

    posts = webhook.requests_to("POST", "/")
    # Within the budget and the last try's timeout of the first try (8 tries took 10 to 12 s).
    assert stats.dead_lettered == 1 and time.monotonic() - posts[0].at < policy.budget_s() + settings.sink_timeout_s + 0.5
    assert 2 <= len(posts) < settings.sink_max_attempts
    [(_, letter)] = read_topic(settings, f"{settings.topic_crossings}-dlq-webhook", expect=1, idle_s=0.5)
    # Two timers of the same length end such a try, the call's Deadline ("Timeout: no whole answer
    # within 1 s") and requests' own read timeout ("ReadTimeout: ... Read timed out"): which one
    # fires first is the machine's doing (the read timeout, at times, on a loaded one).
    assert any(f"no answer ({timeout}: " in letter["detail"] for timeout in ("Timeout", "ReadTimeout")), letter["detail"]


def test_messages_name_the_receiver_without_the_secret_part_of_its_url(sink_settings: Settings, webhook: WebhookReceiver) -> None:
    """A Slack- or Zapier-style hook's URL is its credential; failures went to logs and dead
    letters with it whole."""
    secret_path = "/hooks/T0001/B0002/s3cr3tT0k3n?key=abc"
    answering = sink_settings.with_overrides(webhook_url=webhook.url + secret_path, sink_max_attempts=1)
    webhook.inject("status", status=410, body={"error": "hook deleted"})
    # Moved to HTTPS: the new address carries the same secret path.
    webhook.inject("status", status=308, headers={"Location": "https://hooks.example" + secret_path})
    produce(answering, [crossing(1, "mql"), crossing(3, "mql")])
    drain(WebhookSink(answering), answering)
    with socket.socket() as closed:  # a port nothing listens on: no answer at all
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    silent = answering.with_overrides(webhook_url=f"http://127.0.0.1:{port}{secret_path}")
    produce(silent, [crossing(2, "mql")])
    drain(WebhookSink(silent), silent)

    details = [letter["detail"] for _, letter in read_topic(answering, f"{answering.topic_crossings}-dlq-webhook", expect=3, idle_s=0.5)]
    assert len(details) == 3 and not [d for d in details if "s3cr3t" in d or "T0001" in d], details
    assert [d for d in details if f"webhook {webhook.url}/...: HTTP 410" in d]
    assert [d for d in details if f"webhook http://127.0.0.1:{port}/...: no answer (ConnectionError: " in d]
    assert [d for d in details if f"webhook {webhook.url}/...: redirected (HTTP 308) to https://hooks.example/...: set " in d]


def test_the_secret_part_of_the_hook_s_url_is_in_no_line_of_a_connector_at_debug(
    sink_settings: Settings, webhook: WebhookReceiver
) -> None:
    # urllib3 logs each request's path and query at DEBUG: with LEADSTREAM_LOG_LEVEL=debug, every
    # delivery wrote `"POST /hooks/T0001/B0002/s3cr3tT0k3n?key=abc HTTP/1.1" 200` to the log.
    settings = sink_settings.with_overrides(webhook_url=webhook.url + "/hooks/T0001/B0002/s3cr3tT0k3n?key=abc",
                                            log_level="debug")
    webhook.inject("status", status=500, count=100)  # dead-lettered in-process, retries and all
    produce(settings, [crossing(1, "mql")])
    assert drain(WebhookSink(settings), settings).dead_lettered == 1
    webhook.faults.clear()

    result = leadstream(settings, "sink", "replay-dlq", "webhook", check=False)  # delivers it, at debug

    assert "1 delivered" in result.stdout, result.stderr[-2000:]
    assert len(webhook.requests_to("POST", "/hooks/")) > 1
    assert " DEBUG kafka.consumer.fetcher: " in result.stderr  # debug lines are there
    assert "s3cr3t" not in result.stderr and "T0001" not in result.stderr


def test_an_answer_with_a_header_line_urllib3_cannot_parse_is_logged_without_the_secret_path(
    sink_settings: Settings, webhook: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    # urllib3 warned with the whole URL and a traceback for every delivery.
    settings = sink_settings.with_overrides(webhook_url=webhook.url + "/hooks/T0KEN-SECRET")
    webhook.inject("bad_header", status=200)
    produce(settings, [crossing(1, "mql")])
    with caplog.at_level(logging.WARNING, logger="urllib3.connection"):
        stats = drain(WebhookSink(settings), settings)
    assert stats.delivered == 1
    warnings = [r for r in caplog.records if r.name == "urllib3.connection"]
    assert [r.getMessage().split(": ")[0] for r in warnings] == [f"Failed to parse headers (url={webhook.url}/...)"]
    assert not [r for r in warnings if "T0KEN" in r.getMessage() or r.exc_info]


@pytest.mark.parametrize("failure", ["refused", "hung_up"])
def test_a_hook_url_requests_encodes_shows_in_no_form_when_the_receiver_does_not_answer(
    sink_settings: Settings, webhook: WebhookReceiver, caplog: pytest.LogCaptureFixture, failure: str
) -> None:
    """A space, a non-ASCII letter or a lower-case escape in the hook's path or query is sent
    encoded (`%20`, `%C3%A9`, `%2F`), and a refused connection's error named the URL so encoded:
    the text replacement of the path as given missed it, and the secret went to logs and dead letters."""
    secret_path = "/hooks/T0001 B0002/clé%2fs3cr3t|x?sig=Q9q9 déf"
    if failure == "refused":
        with socket.socket() as closed:  # a port nothing listens on
            closed.bind(("127.0.0.1", 0))
            origin, reason = f"http://127.0.0.1:{closed.getsockname()[1]}", "Connection refused"
    else:  # the receiver reads the request and closes the connection without an answer
        webhook.inject("timeout")
        origin, reason = webhook.url, "Connection aborted"
    settings = sink_settings.with_overrides(webhook_url=origin + secret_path, sink_max_attempts=1)
    produce(settings, [crossing(1, "mql")])
    with caplog.at_level("DEBUG"):
        drain(WebhookSink(settings), settings)

    [(_, letter)] = read_topic(settings, f"{settings.topic_crossings}-dlq-webhook", expect=1, idle_s=0.5)
    assert f"webhook {origin}/...: no answer (ConnectionError: " in letter["detail"], letter
    assert reason in letter["detail"], letter
    shown = [letter["detail"], *(record.getMessage() for record in caplog.records)]
    # The path's ASCII parts are the same in every encoding of it.
    leaks = [text for text in shown if "s3cr3t" in text or "T0001" in text or "Q9q9" in text]
    assert not leaks, leaks


#: Hook URLs requests cannot send to, each with a secret path, and what the refusal says it expects.
UNUSABLE_URLS = [
    ("http://hooks.example:99999/s3cr3t", "an http(s) URL with a valid host and a port from 1 to 65535"),
    ("http://hooks.example:8o8o/s3cr3t", "an http(s) URL with a valid host and a port from 1 to 65535"),
    ("http://[::1/s3cr3t", "an http(s) URL with a valid host and a port from 1 to 65535"),
    ("hooks.example/s3cr3t", "an http(s) URL with a host, such as https://host.example.com/path"),
    ("ftp://hooks.example/s3cr3t", "an http(s) URL with a host, such as https://host.example.com/path"),
    ("https:///s3cr3t", "an http(s) URL with a host, such as https://host.example.com/path"),
    ("http://hooks example/s3cr3t", "an http(s) URL whose host is a name or an IP address"),
    ("http://hooks..example/s3cr3t", "an http(s) URL whose host is a name or an IP address"),
    ("http://hooks.example\t/s3cr3t", "an http(s) URL without control characters (a tab or a line break)"),
]


def refusal(expected: str) -> str:
    return f"LEADSTREAM_WEBHOOK_URL is not {expected} (its value is not shown: it may hold a credential)"


@pytest.mark.parametrize(("url", "expected"), UNUSABLE_URLS)
def test_a_url_requests_cannot_send_to_stops_the_connector_in_one_line_without_its_secret(url: str, expected: str) -> None:
    # Before, a port out of range stopped it with a traceback (ValueError: Port out of range from
    # the URL's shown form), a blank or an empty label in the host started it to fail every
    # delivery as if the receiver had not answered, and the refusals it had quoted the secret path.
    settings = Settings.from_env().with_overrides(webhook_url=url, webhook_secret="x")
    with pytest.raises(ConfigError) as refused:
        WebhookSink(settings)
    assert str(refused.value) == refusal(expected)

    done = leadstream(settings, "sink", "webhook", check=False, timeout=30)
    assert (done.returncode, done.stderr.splitlines()) == (1, [f"leadstream sink: {refusal(expected)}"])


def test_a_replayed_crossing_that_a_newer_one_overtook_is_skipped_as_stale(sink_settings: Settings, webhook: WebhookReceiver) -> None:
    # The receiver refused the lead's crossing up to sql, then took its crossing down to mql: the
    # replay posted the crossing up after it, and the receiver was last told sql.
    settings = sink_settings.with_overrides(webhook_url=webhook.url + "/hook")
    webhook.inject("status", status=400, body={"error": "not now"})
    produce(settings, [crossing(9, "sql")])
    assert drain(WebhookSink(settings), settings).dead_lettered == 1
    produce(settings, [crossing(9, "mql", "down", from_level="sql"), crossing(8, "sql")])
    assert drain(WebhookSink(settings), settings).delivered == 2
    webhook.inject("status", status=400, body={"error": "not now"})
    produce(settings, [crossing(8, "mql", "down", from_level="sql")])
    assert drain(WebhookSink(settings), settings).dead_lettered == 1

    replayed = SinkRunner(WebhookSink(settings), settings).replay_dead_letters()

    assert (replayed.delivered, replayed.stale, replayed.dead_lettered) == (1, 1, 0)  # lead 8's: nothing overtook it
    posted = [orjson.loads(request.body) for request in webhook.requests_to("POST", "/hook")]
    assert [(p["lead_id"], p["to_level"]) for p in posted if p["lead_id"] == "lead-9"][-1] == ("lead-9", "mql")


def test_a_receiver_answering_a_huge_line_that_is_no_http_is_shown_by_its_first_characters(
    sink_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    # http.client quotes the line it could not read (BadStatusLine, up to 64 KB) and requests
    # quotes that: each try's WARNING and the dead letter held the receiver's 60,000 bytes.
    line = b"X" * 60_000
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(10)

        def answer() -> None:
            for _ in range(sink_settings.sink_max_attempts):
                connection, _ = server.accept()
                with connection:
                    connection.recv(65536)
                    connection.sendall(line + b"\r\n\r\n")

        receiver = threading.Thread(target=answer, daemon=True)
        receiver.start()
        settings = sink_settings.with_overrides(webhook_url=f"http://127.0.0.1:{server.getsockname()[1]}/hook")
        produce(settings, [crossing(1, "mql")])
        with caplog.at_level(logging.WARNING, logger="leadstream.sinks"):
            stats = drain(WebhookSink(settings), settings)
        receiver.join(timeout=10)

    assert (stats.delivered, stats.dead_lettered) == (0, 1)
    [(_, letter)] = read_topic(settings, f"{settings.topic_crossings}-dlq-webhook", expect=1, idle_s=0.5)
    assert "BadStatusLine('XXXX" in letter["detail"] and "more characters)" in letter["detail"]
    lines = [r.getMessage() for r in caplog.records if r.name == "leadstream.sinks"]
    assert len(lines) == sink_settings.sink_max_attempts  # the retries' and the dead letter's
    assert max(len(line) for line in lines) < 1500
