/* leadstream.js: page views (with time on page), identify and track for a leadstream collector.
 *
 * Served by the collector at /v1/leadstream.js; embed it on every page of the site:
 *   <script async src="https://COLLECTOR/v1/leadstream.js" data-write-key="WRITE_KEY"></script>
 * Calls can be queued, before it loads as after (an async script loads when it will, so a page
 * cannot know which): window.leadstream = window.leadstream || [];
 *   leadstream.push(["identify", "user-42", {email: "ada@example.com"}]);
 *
 * It sends the same calls as Segment's libraries, to the collector that served it, with the
 * write key in the body (navigator.sendBeacon cannot set an Authorization header). The visitor's
 * anonymousId lives in the first-party cookie ls_aid, the userId given to identify in ls_uid.
 * A page view is sent when the visitor leaves the page (or hides it: mobile browsers may never
 * fire pagehide), with time_on_page_s; leadstream.page() ends the current page view and starts
 * the next one, for single-page apps, once the URL changed (on the same URL it does nothing).
 * leadstream.reset() is for logging out: it forgets the user id and starts a new anonymous id.
 */
(function (window, document) {
  "use strict";
  var script = document.currentScript;
  if (!script || (window.leadstream && window.leadstream.version)) return;
  var VERSION = "1";
  var YEAR_S = 31536000;
  var collector = new URL(script.src).origin;
  var writeKey = script.getAttribute("data-write-key");
  var queued = Array.isArray(window.leadstream) ? window.leadstream : [];

  function readCookie(name) {
    var found = document.cookie.match(new RegExp("(?:^|; )" + name + "=([^;]*)"));
    return found ? decodeURIComponent(found[1]) : null;
  }

  function writeCookie(name, value, maxAgeS) {
    document.cookie = name + "=" + encodeURIComponent(value) + "; Max-Age=" + maxAgeS + "; Path=/; SameSite=Lax" +
      (location.protocol === "https:" ? "; Secure" : "");
  }

  function uuid() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    // randomUUID needs a secure context: build a version-4 UUID from random bytes elsewhere.
    var bytes = crypto.getRandomValues(new Uint8Array(16));
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    var hex = Array.prototype.map.call(bytes, function (b) { return (b + 256).toString(16).slice(1); }).join("");
    return [hex.slice(0, 8), hex.slice(8, 12), hex.slice(12, 16), hex.slice(16, 20), hex.slice(20)].join("-");
  }

  var anonymousId = readCookie("ls_aid") || uuid();
  writeCookie("ls_aid", anonymousId, YEAR_S);  // renews the cookie's year on every visit
  var userId = readCookie("ls_uid");
  // Where the browser keeps the cookies, they are read again before each call: identify() or
  // reset() in another tab of the site changes who this one's calls are for (a log out in one
  // tab, then the next person using another). Where it refuses them, the page keeps its own.
  var cookiesKept = readCookie("ls_aid") === anonymousId;

  function readIds() {
    if (!cookiesKept) return;
    var current = readCookie("ls_aid") || anonymousId;
    // Another tab's reset(): a new visitor, to whom the URLs read before are not a referrer.
    if (current !== anonymousId) lastUrl = "";
    anonymousId = current;
    userId = readCookie("ls_uid");
  }

  // `ids`: those to send the call with, if not the cookies' now.
  function send(kind, call, happenedAt, ids) {
    if (!ids) {
      readIds();
      ids = { anonymousId: anonymousId, userId: userId };
    }
    call.messageId = uuid();
    call.anonymousId = ids.anonymousId;
    if (ids.userId) call.userId = ids.userId;
    // The collector corrects the visitor's clock skew with sentAt (Segment's rule).
    call.originalTimestamp = new Date(happenedAt || Date.now()).toISOString();
    call.sentAt = new Date().toISOString();
    call.writeKey = writeKey;
    call.context = {
      library: { name: "leadstream.js", version: VERSION },
      userAgent: navigator.userAgent,
      locale: navigator.language
    };
    var url = collector + "/v1/" + kind;
    var body = JSON.stringify(call);
    // A string body goes as text/plain: no CORS preflight, and the beacon outlives the page.
    if (!(navigator.sendBeacon && navigator.sendBeacon(url, body))) {
      fetch(url, { method: "POST", body: body, keepalive: true, headers: { "Content-Type": "text/plain" } })
        .catch(function () {});
    }
  }

  var page = null;
  // The URL of the latest page view: the referrer of the next one page() starts, also once a
  // hide has ended it (document.referrer is the page before the first one, not the route left).
  var lastUrl = "";

  // Time on page counts while the page is visible: a tab opened in the background and never
  // looked at has not been read. It ends at the first hide (the last moment a mobile browser
  // surely runs the page), so reading after a return to the tab is not counted.
  function visibleNow() { return document.visibilityState === "visible" ? Date.now() : null; }

  // `route`: started by page() in a single-page app, whose referrer is the route left.
  function startPage(route) {
    readIds();
    var referrer = route ? lastUrl : document.referrer;
    lastUrl = location.href;
    page = {
      ids: { anonymousId: anonymousId, userId: userId },
      startedAt: Date.now(),
      visibleSince: visibleNow(),
      properties: {
        url: location.href, path: location.pathname, search: location.search,
        title: document.title, referrer: referrer
      }
    };
  }

  function endPage() {
    if (!page) return;
    var ended = page;
    page = null;
    var visibleMs = ended.visibleSince === null ? 0 : Date.now() - ended.visibleSince;
    ended.properties.time_on_page_s = Math.round(visibleMs / 100) / 10;
    // Sent as whoever is signed in now (one who logs in on the page read it), unless a reset()
    // in another tab gave the browser to a new visitor since: then as whom it started for.
    readIds();
    send("page", { properties: ended.properties }, ended.startedAt,
      ended.ids.anonymousId === anonymousId ? null : ended.ids);
  }

  var api = {
    version: VERSION,
    identify: function (id, traits) {
      if (id) {
        userId = String(id);
        writeCookie("ls_uid", userId, YEAR_S);
      }
      send("identify", { traits: traits || {} });
    },
    track: function (name, properties) {
      send("track", { event: name, properties: properties || {} });
    },
    page: function () {
      // Called on the page being viewed (on load, as Segment's snippet does, or twice for one
      // route), it continues that view: ending it would send the page again, a few ms long.
      if (page && page.properties.url === location.href) return;
      endPage();
      startPage(true);
    },
    // Log out on a shared browser: the view under way is sent as the signed-in visitor's, then
    // the user id is forgotten and the next visitor gets a new anonymous id, so nothing they do
    // is scored on the previous one (traits are never kept in the browser). No page view runs
    // until the next page() or page load; one page() starts has no referrer: the URLs before were theirs.
    reset: function () {
      endPage();
      userId = null;
      writeCookie("ls_uid", "", 0);
      anonymousId = uuid();
      writeCookie("ls_aid", anonymousId, YEAR_S);
      lastUrl = "";
    },
    anonymousId: function () { readIds(); return anonymousId; },
    // The queued-call form, kept once loaded (as Segment's analytics.js keeps it): the page's
    // `leadstream.push([...])` after load found no push on this object and threw, its call lost.
    push: function (args) { api[args[0]].apply(api, args.slice(1)); }
  };

  window.leadstream = api;
  startPage(false);
  window.addEventListener("pagehide", endPage);
  window.addEventListener("pageshow", function (event) {
    if (event.persisted) startPage(false);  // back in view from the back-forward cache
  });
  document.addEventListener("visibilitychange", function () {
    if (!page) return;
    if (document.visibilityState !== "visible") {
      if (page.visibleSince !== null) endPage();  // one never seen waits to be seen, or pagehide
    } else if (page.visibleSince === null) {
      page.visibleSince = Date.now();
    }
  });
  queued.forEach(api.push);
})(window, document);
