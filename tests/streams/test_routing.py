"""A view's request for a key another worker owns, forwarded to that worker (streams/routing.py):
on two real workers, and against a stand-in owner for the answers a live one gives only briefly."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
import urllib.error
import urllib.request
from dataclasses import replace
from typing import Callable
from urllib.parse import quote

import aiohttp
import faust
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from yarl import URL

from streams.addresses import authority
from streams.app import canonical_url
from streams.partitioning import partition_for
from streams.processes import WorkerProcess, free_port
from streams.routing import FORWARD_TIMEOUT_S, forward, owner_url
from streams.send import open_producer, produce
from streams.settings import Settings
from tests.infra import wait_for

MINUTE_MS = 60_000
#: Ids that are, or hold, dot segments of a path.
DOTTED = [".", "..", "a/../b", "a/./b", "../x", "x/.."]


def get(port: int, path: str) -> tuple[int, str, bytes]:
    """(status, Content-Type, body) of a GET of `path` sent as it is written (urllib resolves no dot segment)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def two_workers_sharing(settings: Settings, worker: Callable[..., WorkerProcess],
                        leads: list[str]) -> tuple[list[WorkerProcess], list[str]]:
    """Two workers that have scored `leads` and a lead on each partition, so that each owns some;
    and the leads scored."""
    now = int(time.time() * 1000) - 10 * MINUTE_MS
    fillers = {partition_for(f"lead-{n}", settings.partitions): f"lead-{n}" for n in range(200)}
    assert len(fillers) == settings.partitions
    scored = [*leads, *fillers.values()]
    events = [{"event_id": f"{lead}-{n}", "lead_id": lead, "type": "form_submit", "product": "b2b", "time": now + n,
               "properties": {"form": "demo_request"}} for k, lead in enumerate(scored) for n in range(1 + k % 3)]
    producer = open_producer(settings)
    try:
        produce(producer, settings.topic_events, ((e["lead_id"], orjson.dumps(e)) for e in events), 1, partitions=settings.partitions)
    finally:
        producer.close()
    workers = [worker(settings), worker(replace(settings, worker_port=free_port(), state_dir=settings.state_dir / "second"))]
    wait_for(lambda: all(w.ready() and sum(w.metric("leadstream_leads_in_state")) for w in workers), 120,
             "the two workers sharing the leads", 0.3)
    wait_for(lambda: sum(sum(w.metric("leadstream_leads_in_state")) for w in workers) == len(scored), 120,
             "every lead scored", 0.3)
    return workers, scored


def test_ids_of_dot_segments_are_answered_by_their_owner_through_either_worker(
    isolated: Settings, worker: Callable[..., WorkerProcess]
) -> None:
    # Before, Faust's routing asked the owner for the request's URL as resolved by yarl: the
    # worker that did not own `.` asked its owner for /leads/ and `..` for / (404 both).
    workers, _ = two_workers_sharing(isolated, worker, DOTTED)

    # Written as a client percent-encodes an id (`/` always, so a `/` in an id is no segment), and
    # `.` and `..` also as they are: either way the id is the route's one segment.
    paths = {f"/leads/{quote(lead, safe='')}/": lead for lead in DOTTED} | {"/leads/%2E/": ".", "/leads/%2E%2E/": ".."}
    for path, lead in paths.items():
        answers = [get(w.port, path) for w in workers]  # one of the two forwards it to the other
        assert [(status, content_type) for status, content_type, _ in answers] == [(200, "application/json")] * 2, (path, answers)
        bodies = [orjson.loads(body) for _, _, body in answers]
        assert [body["lead_id"] for body in bodies] == [lead, lead], (path, bodies)
        assert bodies[0]["models"]["b2b"]["score"] == bodies[1]["models"]["b2b"]["score"] > 0, (path, bodies)


def test_workers_listening_on_an_ipv6_address_forward_to_each_other(
    isolated: Settings, worker: Callable[..., WorkerProcess]
) -> None:
    # Before, with LEADSTREAM_BIND_HOST=::1 the worker did not start: its port check opened an
    # IPv4 socket ("Unknown error -9"), and Faust's URL of the worker, http://::1:6066, failed to parse.
    workers, leads = two_workers_sharing(replace(isolated, bind_host="::1"), worker, [])
    for lead in leads:
        answers = [w.get(f"/leads/{lead}/") for w in workers]  # one of the two forwards it to the other
        assert [status for status, _ in answers] == [200, 200], (lead, answers)
        bodies = [orjson.loads(body) for _, body in answers]
        assert [body["lead_id"] for body in bodies] == [lead, lead], bodies
        assert bodies[0]["models"]["b2b"]["score"] == bodies[1]["models"]["b2b"]["score"] > 0, bodies


def test_workers_listening_on_every_address_forward_to_the_address_they_advertise(
    isolated: Settings, worker: Callable[..., WorkerProcess]
) -> None:
    # Before, a worker bound to 0.0.0.0 gave the others http://0.0.0.0:PORT as its URL: on several
    # machines, each asked its own machine for the leads another one owned.
    workers, leads = two_workers_sharing(replace(isolated, bind_host="0.0.0.0", advertised_host="127.0.0.1"), worker, [])
    named = set()  # the URL each worker advertised, as a 404 names the owner of a lead without a state
    for n in range(40):
        status, body = workers[n % 2].get(f"/leads/nosuch-{n}/")
        assert status == 404, body
        named.add(orjson.loads(body)["error"].rsplit("(", 1)[1].rstrip(")"))
    assert named == {f"http://127.0.0.1:{each.port}" for each in workers}, named
    for lead in leads:
        answers = [w.get(f"/leads/{lead}/") for w in workers]  # one of the two forwards it to the other
        assert [status for status, _ in answers] == [200, 200], (lead, answers)
        assert [orjson.loads(body)["lead_id"] for _, body in answers] == [lead, lead], answers


def test_a_lead_no_worker_has_is_a_404_naming_the_worker_that_owns_it_through_either_worker(
    isolated: Settings, worker: Callable[..., WorkerProcess]
) -> None:
    # Both answered "no state for lead 'nosuch' on this worker": the owner's words, which the
    # other worker forwarded as they were, about itself.
    workers, _ = two_workers_sharing(isolated, worker, [])
    answers = [w.get("/leads/nosuch/") for w in workers]  # one of the two forwards it to the other
    assert [status for status, _ in answers] == [404, 404], answers
    partition = partition_for("nosuch", isolated.partitions)
    owners = {f"no state for lead 'nosuch' on the worker owning its partition {partition} (http://127.0.0.1:{w.port})"
              for w in workers}
    errors = [orjson.loads(body)["error"] for _, body in answers]
    assert errors[0] == errors[1] and errors[0] in owners, errors


@pytest.mark.parametrize(
    ("bind_host", "advertised_host", "url"),
    [
        ("127.0.0.1", "", "http://127.0.0.1:6066"),
        ("10.0.3.7", "", "http://10.0.3.7:6066"),
        ("::1", "", "http://[::1]:6066"),
        ("0.0.0.0", "", f"http://{socket.gethostname()}:6066"),
        ("::", "", f"http://{socket.gethostname()}:6066"),
        ("0.0.0.0", "worker-2.leadstream", "http://worker-2.leadstream:6066"),
        ("0.0.0.0", "10.0.3.7", "http://10.0.3.7:6066"),
        ("::", "fd00::7", "http://[fd00::7]:6066"),
    ],
)
def test_a_worker_advertises_an_address_other_machines_reach_it_at(bind_host: str, advertised_host: str, url: str) -> None:
    # Before, a worker listening on every address (0.0.0.0, ::) advertised that wildcard, which
    # names no machine, and LEADSTREAM_ADVERTISED_HOST did not exist.
    settings = Settings(bind_host=bind_host, advertised_host=advertised_host, worker_port=6066)
    assert canonical_url(settings) == url


def test_a_request_is_forwarded_to_an_owner_at_an_ipv6_address() -> None:
    here = URL(f"http://{authority('::1', 6066)}")  # a worker's canonical_url (streams/app.py)
    assert (here.host, here.port) == ("::1", 6066)  # as routing compares it with an owner's
    request = make_mocked_request("GET", "/leads/a%2Fb/?detail=1")
    assert str(owner_url(here, request)) == "http://[::1]:6066/leads/a%2Fb/?detail=1"


def test_a_lead_whose_owner_does_not_answer_is_a_503_to_retry_within_seconds(
    isolated: Settings, worker: Callable[..., WorkerProcess]
) -> None:
    # An owner that is alive but does not answer (stopped here; stalled or cut off by the network
    # elsewhere): its connections are still accepted. Before, the worker asked waited as long as
    # aiohttp's default, 5 minutes, and its client timed out first.
    (first, second), leads = two_workers_sharing(isolated, worker, [])
    assert second.proc is not None
    os.killpg(second.proc.pid, signal.SIGSTOP)
    try:
        answers = []
        for lead in leads:
            started = time.monotonic()
            try:
                status, _, body = get(first.port, f"/leads/{lead}/")
            except (TimeoutError, urllib.error.URLError) as exc:
                status, body = 0, repr(exc).encode()
            answers.append((status, body, time.monotonic() - started))
    finally:
        os.killpg(second.proc.pid, signal.SIGCONT)
    assert all(status in (200, 503) and elapsed_s < FORWARD_TIMEOUT_S + 2 for status, _, elapsed_s in answers), answers
    # Until the group's session timeout moves the stopped worker's partitions, its leads are a 503
    # (then the first rebalances: not ready, a 503 too).
    assert any(b"does not answer" in body for _, body, _ in answers), answers


def test_an_owners_503_keeps_its_retry_after_and_content_type_when_forwarded() -> None:
    # An owner recovering its tables answers 503 with Retry-After while the worker asked is ready
    # (a few seconds after a rebalance): a stand-in owner gives that answer for as long as needed.
    # Before, the forwarded answer kept the status and body only.
    refusal = {"error": "this worker is not ready", "ready": False}

    async def not_ready(request: web.Request) -> web.Response:
        return web.json_response(refusal, status=503, headers={"Retry-After": "5"})

    async def forwarded() -> tuple[int, str, str | None, bytes]:
        owner = web.Application()
        owner.router.add_get("/leads/{lead_id}/", not_ready)
        runner = web.AppRunner(owner)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            async with aiohttp.ClientSession() as client:
                response = await forward(client, URL(f"http://127.0.0.1:{port}/leads/ada/"), faust.App("routing-test").web)
        finally:
            await runner.cleanup()
        assert isinstance(response, web.Response) and isinstance(response.body, bytes)
        return response.status, response.content_type, response.headers.get("Retry-After"), response.body

    status, content_type, retry_after, body = asyncio.run(forwarded())
    assert (status, content_type, retry_after) == (503, "application/json", "5")
    assert orjson.loads(body) == refusal
