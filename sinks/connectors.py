"""The connectors `leadstream sink NAME` can run, built from settings (imports stay lazy)."""

from __future__ import annotations

from typing import Any

from sinks.base import Sink
from streams.errors import ConfigError
from streams.settings import Settings

NAMES = ("hubspot", "salesforce", "webhook", "redis")


def build(name: str, settings: Settings) -> Sink[Any]:
    """The connector, its settings and mapping validated: errors surface before anything is read."""
    if name == "hubspot":
        from sinks.hubspot import HubSpotSink

        return HubSpotSink(settings)
    if name == "salesforce":
        from sinks.salesforce import SalesforceSink

        return SalesforceSink(settings)
    if name == "webhook":
        from sinks.webhook import WebhookSink

        return WebhookSink(settings)
    if name == "redis":
        from sinks.redis_model import RedisModelSink

        return RedisModelSink(settings)
    raise ConfigError(f"unknown connector {name!r}: one of {', '.join(NAMES)}")
