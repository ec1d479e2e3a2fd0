"""The worker's web views (streams/app.py), served in-process from the Faust app's own web
application: what they answer before the worker is ready."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
from aiohttp.test_utils import TestClient, TestServer

from streams.app import create_app
from streams.model_reload import ModelDirectory
from streams.settings import Settings


def answers(settings: Settings, paths: list[str]) -> list[tuple[int, dict[str, object], str | None]]:
    """(status, JSON body, Retry-After) of each path, from an app that has not started: its tables
    are not recovered, it has no partitions and no producer, as a worker before recovery ends."""
    app = create_app(settings, ModelDirectory(settings.models_dir))

    async def get_all() -> list[tuple[int, dict[str, object], str | None]]:
        async with TestClient(TestServer(app.web.web_app)) as client:  # type: ignore[attr-defined]  # aiohttp driver's
            found = []
            for path in paths:
                response = await client.get(path)
                found.append((response.status, orjson.loads(await response.read()), response.headers.get("Retry-After")))
            return found

    return asyncio.run(get_all())


def test_lead_and_account_views_say_not_ready_until_the_tables_are_recovered(tmp_path: Path) -> None:
    # Before, the views read the tables while they were being restored: a lead answered with an
    # older state's points (or 404, as if unknown), and that older state was kept live, so the
    # lead's next events were scored on it and the points recovered after it were lost. While
    # the producer had no metadata yet, Faust's routing raised instead (500).
    settings = Settings.from_env().namespaced("views-not-ready", state_dir=tmp_path)
    found = answers(settings, ["/leads/ada/", "/accounts/acme/", "/readyz", "/leads/ada"])
    for status, body, retry_after in found[:2]:
        assert status == 503 and body["ready"] is False and retry_after == "5", (status, body)
        assert "recovering its tables" in str(body["error"])
    # /readyz said so without a Retry-After, which the views' 503s had.
    assert found[2] == (503, {"ready": False}, "5")
    # A path without its trailing slash is sent on to the view (it was aiohttp's plain-text 404).
    assert found[3] == found[0]
