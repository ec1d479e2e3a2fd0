"""The lag probes of the worker and the connectors (streams/lag.py), on the real broker."""

from __future__ import annotations

import pytest

from streams.lag import LagProbe
from streams.settings import INT32_MAX, Settings


@pytest.mark.parametrize("connect_timeout_s", [540, INT32_MAX])
def test_a_connect_timeout_of_9_minutes_or_more_still_opens_the_probe(isolated: Settings, connect_timeout_s: int) -> None:
    # kafka-python's consumer refused a request timeout not under its connections' idle time
    # (540 s): the probe never opened, and the worker and connectors were never ready.
    probe = LagProbe(isolated.with_overrides(kafka_connect_timeout_s=connect_timeout_s))
    try:
        assert probe.lag(isolated.app_id, isolated.topic_events) == dict.fromkeys(range(isolated.partitions), 0)
    finally:
        probe.close()
