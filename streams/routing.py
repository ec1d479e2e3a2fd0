"""A view of a table answered by the worker that owns the key: any other worker forwards the
request to the owner, as it came, and answers with the owner's answer.

In place of Faust's `app.table_route`, whose forwarding (faust/app/router.py) asked the owner
for `request.url`, which yarl builds by resolving the path's dot segments: the worker that did
not own lead `.` asked its owner for /leads/ and `..` for / (404 both); and which answered with
the owner's status and body only: a 503 of an owner recovering its tables lost its Retry-After.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import faust
from aiohttp import ClientSession, ClientTimeout
from aiohttp.typedefs import Handler as WebHandler
from aiohttp.web import HTTPPermanentRedirect, StreamResponse, middleware
from aiohttp.web import Request as WebRequest
from faust.web import Request, Response, View, Web
from faust.web.exceptions import ServiceUnavailable
from yarl import URL

Handler = Callable[..., Awaitable[Response]]
#: Dot segments of a path, percent-encoded: a segment `%2E` is no dot segment to resolve, and
#: the owner's router decodes it to the same `.` the route's key holds.
_DOT_SEGMENTS = {".": "%2E", "..": "%2E%2E"}
#: The owner's headers its forwarded answer keeps: what the body is, and when to ask again.
KEPT_HEADERS = ("Content-Type", "Retry-After")
#: Longest wait for the owner's answer. It answers from memory, in milliseconds unless it is
#: stalled; an owner that accepts connections and never answers (stopped, cut off) would
#: otherwise hold the request for aiohttp's default, 5 minutes.
FORWARD_TIMEOUT_S = 5.0


def table_route(app: faust.App, table: faust.types.CollectionT, match_info: str) -> Callable[[Handler], Handler]:
    """Decorates a view's method: it runs on the worker owning the key the route's `match_info`
    names in `table`, and other workers forward the request to that one."""

    def decorator(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def get(view: View, request: Request, **kwargs: Any) -> Response:
            try:
                owner = app.router.key_store(table.name, request.match_info[match_info])
            except KeyError:  # no worker has the key's partition (between assignments): as Faust's routing
                raise ServiceUnavailable() from None
            here = app.conf.canonical_url
            if (owner.host, owner.port) == (here.host, here.port):
                return await handler(view, request, **kwargs)
            return await forward(app.http_client, owner_url(owner, request), view.web)

        return get

    return decorator


def owner_url(owner: URL, request: Request) -> URL:
    """The request's path and query on the owner's host and port, as the client wrote them."""
    return URL.build(scheme=owner.scheme, authority=owner.raw_authority, path=written_path(request.rel_url),
                     query_string=request.rel_url.raw_query_string, encoded=True)


def written_path(url: URL) -> str:
    """The path of a request's URL as the client wrote it, its dot segments percent-encoded (a
    client sending one as is would have resolved it): given a path with a segment `..`, as yarl
    may decode `%2E%2E`, a client, or yarl, resolves it to the segment above."""
    return "/".join(_DOT_SEGMENTS.get(segment, segment) for segment in url.raw_path.split("/"))


@middleware
async def append_slash(request: WebRequest, handler: WebHandler) -> StreamResponse:
    """Sends a path that names a view but for its trailing slash (/leads/ID) on to the view's,
    as written (308). aiohttp's normalize_path_middleware gave the path decoded: lead `..`,
    asked for as /leads/%2E%2E, was sent to /leads/../, which clients resolve to / (the wrong page)."""
    if request.match_info.http_exception is not None:
        path = written_path(request.rel_url)
        # Not `//host`: a Location there would be another host's (aiohttp's GHSA-v6wp-4m6f-gcjg).
        if not path.endswith("/") and not path.startswith("//"):
            slashed = URL(path + "/", encoded=True)
            if (await request.app.router.resolve(request.clone(rel_url=slashed))).http_exception is None:
                raise HTTPPermanentRedirect(URL.build(path=slashed.raw_path, query_string=request.rel_url.raw_query_string, encoded=True))
    return await handler(request)


async def forward(client: ClientSession, url: URL, web: Web) -> Response:
    async with client.get(url, timeout=ClientTimeout(total=FORWARD_TIMEOUT_S)) as answer:
        body = await answer.read()
    return web.bytes(body, status=answer.status, headers={name: answer.headers[name] for name in KEPT_HEADERS
                                                          if name in answer.headers})
