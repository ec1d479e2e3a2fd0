"""streams/fetch_wait.py on a consumer that is not built as Faust builds it."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from streams import fetch_wait


def test_a_consumer_built_otherwise_is_left_alone_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    consumer = SimpleNamespace(_thread=SimpleNamespace(_consumer=SimpleNamespace()))
    with caplog.at_level(logging.WARNING, logger="leadstream.worker"):
        assert fetch_wait.install(consumer, 50) is False
    assert "fetch wait not set" in caplog.text and "_fetcher" in caplog.text
