"""The worker's web views (streams/app.py), served in-process from the Faust app's own web
application: what they answer before the worker is ready."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from typing import Any, Callable, TypeVar

import faust
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from scoring import AccountState, Engine, MemberScore
from streams.app import _shown_accounts, create_app
from streams.model_reload import ModelDirectory
from streams.settings import Settings
from tests.scoring.support import shipped


T = TypeVar("T")
Served = tuple[faust.App, Callable[[Coroutine[Any, Any, T]], T]]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served[Any]]:
    """An app that has not started: its tables are not recovered, it has no partitions and no
    producer, as a worker before recovery ends; and the one event loop to serve it on. One app
    a process: its metrics are registered once, and its web application takes one loop."""
    settings = Settings.from_env().namespaced("views-not-ready", state_dir=tmp_path_factory.mktemp("views"))
    loop = asyncio.new_event_loop()
    yield create_app(settings, ModelDirectory(settings.models_dir)), loop.run_until_complete
    loop.close()


def answers(served: Served[Any], paths: list[str]) -> list[tuple[int, dict[str, object], str | None]]:
    """(status, JSON body, Retry-After) of each path."""
    app, run = served

    async def get_all() -> list[tuple[int, dict[str, object], str | None]]:
        async with TestClient(TestServer(app.web.web_app)) as client:  # type: ignore[attr-defined]  # aiohttp driver's
            found = []
            for path in paths:
                response = await client.get(path)
                found.append((response.status, orjson.loads(await response.read()), response.headers.get("Retry-After")))
            return found

    return run(get_all())  # type: ignore[no-any-return]


def test_lead_and_account_views_say_not_ready_until_the_tables_are_recovered(served: Served[Any]) -> None:
    # Before, the views read the tables while they were being restored: a lead answered with an
    # older state's points (or 404, as if unknown), and that older state was kept live, so the
    # lead's next events were scored on it and the points recovered after it were lost. While
    # the producer had no metadata yet, Faust's routing raised instead (500).
    found = answers(served, ["/leads/ada/", "/accounts/acme/", "/readyz", "/leads/ada"])
    for status, body, retry_after in found[:2]:
        assert status == 503 and body["ready"] is False and retry_after == "5", (status, body)
        assert "recovering its tables" in str(body["error"])
    # /readyz said so without a Retry-After, which the views' 503s had.
    assert found[2] == (503, {"ready": False}, "5")
    # A path without its trailing slash is sent on to the view (it was aiohttp's plain-text 404).
    assert found[3] == found[0]


RETENTION_MS = 30 * 86_400_000


def test_the_account_view_shows_models_with_accounts_and_members_and_says_why_it_shows_none() -> None:
    """It listed a model without [accounts] (score and level null), which read models and
    `leadstream score` have no record of; and an account whose last member left was "no state",
    as if never seen, though it keeps its level and crossing count."""
    eng = Engine([shipped("b2b"), shipped("saas_start_small")])
    joined = {model: eng.apply_account(model, "acme", None, MemberScore(model, "acme", "u-42", 30, 1_000))[0]
              for model in ("b2b", "saas_start_small")}
    assert _shown_accounts(eng, "acme", joined, "W", RETENTION_MS) == ({"b2b": joined["b2b"]}, None)
    shown, why = _shown_accounts(eng, "acme", {"saas_start_small": joined["saas_start_small"]}, "W", RETENTION_MS)
    assert shown == {} and why == ("no model that rolls up accounts ([accounts]) has account 'acme' on W: it has members only in "
                                   "models without [accounts] or not in LEADSTREAM_MODELS_DIR: saas_start_small")
    emptied, _ = eng.apply_account("b2b", "ga", None, MemberScore("b2b", "ga", "u-1", 30, 1_000))
    emptied, _ = eng.apply_account("b2b", "ga", emptied, MemberScore("b2b", "ga", "u-1", 0, 1_762_128_000_000, True))
    shown, why = _shown_accounts(eng, "ga", {"b2b": emptied}, "W", RETENTION_MS)
    assert shown == {} and why is not None and why.startswith(
        "account 'ga' has no members now since 2025-11-03T00:00:00+00:00 (its last member left) in b2b on W")
    # Until it is removed (streams/rollup.py `_emptied`): the view says when.
    assert why.endswith("joins again until 30 days after its last member left (LEADSTREAM_EMPTY_ACCOUNT_RETENTION_MS), when it is removed")
    assert "no members now (its last member left)" in str(_shown_accounts(eng, "ga", {"b2b": AccountState({}, "unaware", 1)}, "W",
                                                                          RETENTION_MS)[1])


def test_a_path_without_its_trailing_slash_is_sent_on_as_written(served: Served[Any]) -> None:
    """Lead `..` asked for as /leads/%2E%2E was sent on to /leads/../, which clients resolve to /
    (the worker's {"status": "OK"}), and lead `.` to /leads/./, resolved to /leads/ (a 404)."""
    app, run = served

    async def locations(paths: list[str]) -> list[tuple[int, str | None]]:
        async with TestServer(app.web.web_app) as server:  # type: ignore[attr-defined]  # aiohttp driver's
            found = []
            for path in paths:  # as sent: aiohttp's client, as yarl, would resolve the dot segments
                reader, writer = await asyncio.open_connection(server.host, server.port)
                writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                head = (await reader.read()).split(b"\r\n\r\n")[0].decode().split("\r\n")
                writer.close()
                fields = dict(line.split(": ", 1) for line in head[1:])
                found.append((int(head[0].split()[1]), fields.get("Location")))
            return found

    assert run(locations(["/leads/%2E%2E", "/leads/%2E", "/leads/a%2Fb?detail=1", "/accounts/%2e%2E", "/nosuch", "//leads/x"])) == [
        (308, "/leads/%2E%2E/"), (308, "/leads/%2E/"), (308, "/leads/a%2Fb/?detail=1"), (308, "/accounts/%2e%2E/"),
        (404, None), (404, None)]
