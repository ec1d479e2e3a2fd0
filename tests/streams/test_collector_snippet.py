"""The page-tracking snippet (/v1/leadstream.js) and browser libraries' requests in a real headless Chromium, over CDP."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest
from websockets.sync.client import ClientConnection, connect

from streams.settings import Settings
from tests.streams.collector_support import SOURCES, WRITE_KEY, ThreadedCollector, all_events, read_messages

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--remote-debugging-port=0",
]


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, installed with apt-get when missing (the suite runs as root on CI)."""
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() != 0:
        pytest.fail("chromium is missing and only root can install it: run `apt-get install -y chromium`")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True, timeout=300)
    subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, env=env, capture_output=True, timeout=600)
    found = shutil.which("chromium")
    assert found, "apt-get installed chromium but it is not on PATH"
    return found


class Browser:
    """One headless Chromium page, spoken to over the Chrome DevTools Protocol."""

    def __init__(self, executable: str, profile: Path) -> None:
        self.proc = subprocess.Popen(
            [executable, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            assert time.monotonic() < deadline and self.proc.poll() is None, "chromium did not open its DevTools port"
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
            page = next(t for t in json.load(response) if t["type"] == "page")
        self.ws: ClientConnection = connect(page["webSocketDebuggerUrl"], max_size=None)
        self._ids = itertools.count(1)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        message_id = next(self._ids)
        self.ws.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:  # events arrive in between; only the answer matters here
            reply = json.loads(self.ws.recv(timeout=30))
            if reply.get("id") == message_id:
                assert "error" not in reply, reply
                return reply["result"]

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 15.0) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                value = self.evaluate(expression)
            except AssertionError:  # the page is between documents
                value = None
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"{expression} stayed false for {timeout_s} s")

    def close(self) -> None:
        self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


PAGE = """<!doctype html><html><head><title>{title}</title>
<script async src="{collector}/v1/leadstream.js" data-write-key="{key}"></script></head>
<body><h1>{title}</h1><a id="next" href="/pricing.html">Pricing</a></body></html>"""


@pytest.fixture
def site(collector: ThreadedCollector) -> Iterator[str]:
    """A marketing site on another origin than the collector, whose pages embed the snippet."""
    pages = {path: PAGE.format(title=title, collector=collector.url, key=WRITE_KEY).encode()
             for path, title in (("/index.html", "Home"), ("/pricing.html", "Pricing"))}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = pages.get(self.path)
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def collector(isolated: Settings) -> Iterator[ThreadedCollector]:
    with ThreadedCollector(isolated.with_overrides(collector_write_keys=SOURCES)) as running:
        yield running


@pytest.fixture
def browser(chromium: str, tmp_path: Path) -> Iterator[Browser]:
    running = Browser(chromium, tmp_path / "chromium-profile")
    yield running
    running.close()


def test_a_visitor_browses_anonymously_then_identifies_and_every_call_reaches_kafka(
    browser: Browser, site: str, collector: ThreadedCollector
) -> None:
    settings = collector.settings
    browser.call("Page.navigate", url=f"{site}/index.html")
    anonymous_id = browser.wait_for("window.leadstream && window.leadstream.version && leadstream.anonymousId()")
    assert f"ls_aid={anonymous_id}" in browser.evaluate("document.cookie")
    time.sleep(0.5)  # time on the home page
    browser.evaluate("document.getElementById('next').click()")
    browser.wait_for("location.pathname === '/pricing.html' && window.leadstream && window.leadstream.version")
    assert browser.evaluate("leadstream.anonymousId()") == anonymous_id  # kept in the cookie across pages
    browser.evaluate("leadstream.identify('user-7', {email: 'ada@acme.test', title: 'CTO'});"
                     "leadstream.track('Pricing Viewed', {plan: 'pro'})")
    time.sleep(0.2)
    browser.call("Page.navigate", url="about:blank")  # leaving the pricing page sends its page view

    events = {(e["type"], e["properties"].get("path")): e
              for e in all_events(read_messages(settings, settings.topic_events, events=3))}
    assert sorted(events) == [("page_view", "/index.html"), ("page_view", "/pricing.html"), ("pricing_viewed", None)]
    home = events[("page_view", "/index.html")]
    assert (home["lead_id"], home["anonymous_id"], home["source"]) == (f"anon:{anonymous_id}", anonymous_id, "website")
    assert (home["properties"]["title"], home["properties"]["url"]) == ("Home", f"{site}/index.html")
    spent_s = home["properties"]["time_on_page_s"]
    assert 0.5 <= spent_s < 15
    # The event time is when the page was viewed, not when the beacon left: the arrival minus the time on page.
    assert abs(home["received_at"] - spent_s * 1000 - home["time"]) < 1000
    pricing = events[("page_view", "/pricing.html")]
    assert (pricing["lead_id"], pricing["anonymous_id"]) == ("user-7", anonymous_id)
    assert pricing["properties"]["referrer"] == f"{site}/index.html"
    assert pricing["properties"]["time_on_page_s"] >= 0.2
    track = events[("pricing_viewed", None)]
    agent = browser.evaluate("navigator.userAgent")  # sent in the context, kept for rules on bots
    assert (track["lead_id"], track["properties"], track["anonymous_id"]) == ("user-7", {"plan": "pro", "user_agent": agent}, anonymous_id)

    [identify] = all_events(read_messages(settings, settings.topic_profiles, events=1))
    assert (identify["type"], identify["lead_id"], identify["anonymous_id"]) == ("identify", "user-7", anonymous_id)
    assert identify["traits"] == {"email": "ada@acme.test", "title": "CTO"}
    assert len({e["event_id"] for e in [*events.values(), identify]}) == 4


def scripted_visibility(browser: Browser, initial: str) -> str:
    """Makes the pages' visibility a script's to set (headless Chromium has no background
    tabs), `initial` at first; returns the script that sets it (`.format(state)`) and tells the page."""
    browser.call("Page.enable")  # scripts for new documents run only with the Page domain on
    browser.call("Page.addScriptToEvaluateOnNewDocument", source=(
        f"window.__visibility = '{initial}';"
        "Object.defineProperty(Document.prototype, 'visibilityState', {get() { return window.__visibility; }, configurable: true});"
    ))
    return "window.__visibility = '{}'; document.dispatchEvent(new Event('visibilitychange'))"


def test_time_on_page_counts_only_while_the_page_is_visible(browser: Browser, site: str, collector: ThreadedCollector) -> None:
    """A page opened in a background tab: its hidden time was counted as reading, so a tab
    never looked at could earn a rule on time_on_page_s. The page's visibility is driven by a
    script run before the page's own (headless Chromium has no background tabs)."""
    settings = collector.settings
    shown = scripted_visibility(browser, "hidden")
    browser.call("Page.navigate", url=f"{site}/pricing.html")
    browser.wait_for("window.leadstream && window.leadstream.version")
    time.sleep(1.0)  # in the background
    browser.evaluate(shown.format("visible"))
    time.sleep(0.3)  # read
    browser.evaluate(shown.format("hidden"))  # the first hide after being seen sends the page view
    [page] = all_events(read_messages(settings, settings.topic_events, events=1))
    assert page["type"] == "page_view" and 0.3 <= page["properties"]["time_on_page_s"] < 1.0


def test_page_called_on_the_page_being_viewed_continues_its_view(browser: Browser, site: str, collector: ThreadedCollector) -> None:
    """An app calls page() on load and on every route change, as Segment's snippet teaches: the
    call on load ended the landing page's view after a few milliseconds and started it again,
    its own referrer, so the landing page was sent twice and a rule on it scored twice. A route
    change (pushState, then page()) is a new page view, with the route it left as referrer."""
    settings = collector.settings
    browser.call("Page.navigate", url=f"{site}/index.html")
    browser.wait_for("window.leadstream && window.leadstream.version")
    browser.evaluate("leadstream.page(); leadstream.page()")  # on load, twice
    browser.evaluate("history.pushState({}, '', '/pricing.html'); document.title = 'Pricing'; leadstream.page(); leadstream.page()")
    browser.call("Page.navigate", url="about:blank")

    views = all_events(read_messages(settings, settings.topic_events, events=2))
    assert sorted((e["properties"]["path"], e["properties"]["referrer"]) for e in views) == [
        ("/index.html", ""), ("/pricing.html", f"{site}/index.html")]


def test_the_browser_libraries_requests_pass_cors_from_another_origin(browser: Browser, site: str, collector: ThreadedCollector) -> None:
    """RudderStack's browser SDK posts each call with Authorization and an AnonymousId header: the
    preflight did not allow AnonymousId, so the browser never sent the call. analytics.js posts
    text/plain to /v1/t (no preflight). Both are made here as those libraries make them, from a
    page of another origin than the collector."""
    settings = collector.settings
    browser.call("Page.navigate", url=f"{site}/index.html")
    browser.wait_for("document.readyState === 'complete'")
    rudderstack = browser.evaluate(f"""fetch("{collector.url}/v1/track", {{method: "POST", headers: {{
        "Content-Type": "application/json;charset=UTF-8", "Authorization": "Basic " + btoa("{WRITE_KEY}:"), "AnonymousId": btoa("a-1")}},
        body: JSON.stringify({{type: "track", event: "Demo Requested", anonymousId: "a-1", messageId: "m-rudder"}})
    }}).then(r => r.status, e => String(e))""")
    analytics_js = browser.evaluate(f"""fetch("{collector.url}/v1/t", {{method: "POST", headers: {{"Content-Type": "text/plain"}},
        body: JSON.stringify({{type: "track", event: "Demo Requested", anonymousId: "a-2", messageId: "m-ajs", writeKey: "{WRITE_KEY}"}})
    }}).then(r => r.status, e => String(e))""")
    assert (rudderstack, analytics_js) == (200, 200)
    events = all_events(read_messages(settings, settings.topic_events, events=2))
    assert sorted(e["event_id"] for e in events) == ["m-ajs", "m-rudder"]


def test_retries_with_the_libraries_own_headers_pass_cors_and_errors_are_readable(
    browser: Browser, site: str, collector: ThreadedCollector
) -> None:
    """RudderStack's SDK (XHR, its default) sends SentAt on every call and Rsa-Retry-* on its
    retries, analytics.js X-Retry-Count on its retries: the preflight did not allow them, so the
    browser dropped those calls (RudderStack's all, analytics.js's every retry after a 503). A
    404 of a mistyped path carried no CORS header: the page saw a network error, not the 404."""
    settings = collector.settings
    browser.call("Page.navigate", url=f"{site}/index.html")
    browser.wait_for("document.readyState === 'complete'")
    statuses = browser.evaluate(f"""Promise.all([
        fetch("{collector.url}/v1/track", {{method: "POST", headers: {{"Content-Type": "application/json;charset=UTF-8",
            "Authorization": "Basic " + btoa("{WRITE_KEY}:"), "AnonymousId": btoa("a-1"), "SentAt": new Date().toISOString(),
            "Rsa-Retry-Attempt": "1", "Rsa-Since-Last-Attempt": "1000", "Rsa-Retry-Reason": "server-error"}},
            body: JSON.stringify({{type: "track", event: "Demo Requested", anonymousId: "a-1", messageId: "m-rudder"}})}}),
        fetch("{collector.url}/v1/t", {{method: "POST", headers: {{"Content-Type": "text/plain", "X-Retry-Count": "1"}},
            body: JSON.stringify({{type: "track", event: "Demo Requested", anonymousId: "a-2", messageId: "m-ajs", writeKey: "{WRITE_KEY}"}})}}),
        fetch("{collector.url}/v1/trak", {{method: "POST", headers: {{"Content-Type": "application/json"}}, body: "{{}}"}}),
    ].map(call => call.then(r => r.status, e => String(e))))""")
    assert statuses == [200, 200, 404]
    events = all_events(read_messages(settings, settings.topic_events, events=2))
    assert sorted(e["event_id"] for e in events) == ["m-ajs", "m-rudder"]


def test_a_route_change_after_the_tab_was_hidden_has_the_route_left_as_referrer(
    browser: Browser, site: str, collector: ThreadedCollector
) -> None:
    """A hide ends the page view under way; page() after a route change then took
    document.referrer (here none: the home page was opened directly) as the next view's referrer
    instead of the route the visitor had been reading."""
    settings = collector.settings
    shown = scripted_visibility(browser, "visible")
    browser.call("Page.navigate", url=f"{site}/index.html")
    browser.wait_for("window.leadstream && window.leadstream.version")
    browser.evaluate(shown.format("hidden"))  # to another tab: the home page's view is sent
    browser.evaluate(shown.format("visible"))  # back
    browser.evaluate("history.pushState({}, '', '/pricing.html'); leadstream.page()")
    browser.call("Page.navigate", url="about:blank")

    views = all_events(read_messages(settings, settings.topic_events, events=2))
    assert sorted((e["properties"]["path"], e["properties"]["referrer"]) for e in views) == [
        ("/index.html", ""), ("/pricing.html", f"{site}/index.html")]


def test_reset_on_log_out_forgets_the_user_and_gives_the_next_visitor_a_new_anonymous_id(
    browser: Browser, site: str, collector: ThreadedCollector
) -> None:
    """On a shared browser the snippet had no reset(): after a log out, the next person's page
    views and calls were still sent with the previous user's id (kept in the ls_uid cookie) and
    anonymous id, and scored on that lead. reset() sends the view under way as the signed-in
    user's, then forgets the user id and starts a new anonymous id, which later pages keep."""
    settings = collector.settings
    browser.call("Page.navigate", url=f"{site}/index.html")
    first = browser.wait_for("window.leadstream && window.leadstream.version && leadstream.anonymousId()")
    browser.evaluate("leadstream.identify('user-7', {email: 'ada@acme.test'}); leadstream.reset()")
    second = browser.evaluate("leadstream.anonymousId()")
    assert second != first
    cookies = browser.evaluate("document.cookie")
    assert f"ls_aid={second}" in cookies and "ls_uid" not in cookies
    browser.evaluate("history.pushState({}, '', '/pricing.html'); leadstream.page(); leadstream.track('Pricing Viewed', {})")
    browser.call("Page.navigate", url=f"{site}/index.html")  # a new page load keeps the new visitor
    assert browser.wait_for("window.leadstream && window.leadstream.version && leadstream.anonymousId()") == second
    browser.call("Page.navigate", url="about:blank")

    events = all_events(read_messages(settings, settings.topic_events, events=4))
    seen = sorted((e["type"], e["properties"].get("path"), e["lead_id"], e["anonymous_id"]) for e in events)
    assert seen == [
        ("page_view", "/index.html", "anon:" + second, second),  # the second load
        ("page_view", "/index.html", "user-7", first),  # sent by reset(), the signed-in user's
        ("page_view", "/pricing.html", "anon:" + second, second),
        ("pricing_viewed", None, "anon:" + second, second),
    ]
    pricing = next(e for e in events if e["properties"].get("path") == "/pricing.html")
    assert pricing["properties"]["referrer"] == ""  # not a URL the previous user read


def test_identify_and_reset_in_another_tab_change_who_this_tabs_calls_are_for(
    browser: Browser, site: str, collector: ThreadedCollector
) -> None:
    """The snippet read the ids from its cookies once, at load: after a log out (reset()) in one
    tab, the next person's calls in a tab opened before it went on as the previous user's, and
    were scored on that lead. Another tab of the site changes the shared cookies; here a script
    does what that tab's snippet does to them. A page view under way at that log out is the
    previous user's, and the next visitor's first has no referrer: the URLs before were not theirs."""
    settings = collector.settings
    browser.call("Page.navigate", url=f"{site}/index.html")
    first = browser.wait_for("window.leadstream && window.leadstream.version && leadstream.anonymousId()")
    cookie = "document.cookie = '{}=' + {} + '; Max-Age={}; Path=/; SameSite=Lax'"
    browser.evaluate(cookie.format("ls_uid", "'user-7'", 31536000))  # identify('user-7') in the other tab
    browser.evaluate("history.pushState({}, '', '/pricing.html'); leadstream.page(); leadstream.track('Pricing Viewed', {})")
    browser.evaluate(cookie.format("ls_uid", "''", 0) + ";" + cookie.format("ls_aid", "'next-visitor'", 31536000))  # its reset()
    assert browser.evaluate("leadstream.anonymousId()") == "next-visitor"
    browser.evaluate("leadstream.track('Demo Requested', {}); history.pushState({}, '', '/careers'); leadstream.page()")
    browser.call("Page.navigate", url="about:blank")
    events = all_events(read_messages(settings, settings.topic_events, events=5))
    seen = sorted((e["type"], e["properties"].get("path"), e["properties"].get("referrer"), e["lead_id"], e["anonymous_id"])
                  for e in events)
    assert seen == [
        ("demo_requested", None, None, "anon:next-visitor", "next-visitor"),
        ("page_view", "/careers", "", "anon:next-visitor", "next-visitor"),
        ("page_view", "/index.html", "", "user-7", first),  # signed in on it: theirs
        ("page_view", "/pricing.html", f"{site}/index.html", "user-7", first),  # under way at the log out: theirs
        ("pricing_viewed", None, None, "user-7", first),
    ]


def test_the_documented_queued_call_works_before_and_after_the_snippet_loaded(
    browser: Browser, site: str, collector: ThreadedCollector
) -> None:
    """The snippet's header documents `window.leadstream = window.leadstream || [];
    leadstream.push([...])`: once the async script had loaded, it had replaced the queue with an
    object without push, so the same two lines threw `leadstream.push is not a function` and
    the call was lost; with an async tag the page cannot know which case it is in."""
    settings = collector.settings
    queue = 'window.leadstream = window.leadstream || []; leadstream.push(["track", "{}", {{step: 1}}])'
    browser.call("Page.enable")  # scripts for new documents run only with the Page domain on
    browser.call("Page.addScriptToEvaluateOnNewDocument", source=queue.format("Queued Before Load"))
    browser.call("Page.navigate", url=f"{site}/index.html")
    browser.wait_for("window.leadstream && window.leadstream.version")
    browser.evaluate(queue.format("Queued After Load"))
    events = all_events(read_messages(settings, settings.topic_events, events=2))
    assert sorted((e["type"], e["properties"]["step"]) for e in events) == [("queued_after_load", 1), ("queued_before_load", 1)]
