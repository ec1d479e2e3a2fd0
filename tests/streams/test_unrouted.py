"""Events no model's [filter] takes: counted, not scored, and their products named in the log once."""

from __future__ import annotations

import asyncio
import logging

import orjson
import pytest

from scoring import Engine
from streams import lead_states
from streams.partitioning import partition_for
from streams.scorer import Scorer
from streams.settings import Settings
from streams.stage import Consumed, LiveTable, MemoryData
from tests.scoring.support import T0, shipped
from tests.streams.stage_support import Kept


def test_each_product_no_model_takes_is_named_in_the_log_once_per_model_edit(caplog: pytest.LogCaptureFixture) -> None:
    """A collector's write key set up without its product (as the README's example was) had its
    events counted in a metric and dropped, with not a word in the worker's log."""
    settings = Settings()
    scorer = Scorer(Engine([shipped("b2b"), shipped("saas_start_small")]), settings,
                    LiveTable(MemoryData(), "changelog", 4, 100, lead_states.decode), Kept(), 4)

    def send(offset: int, *products: str | None) -> None:
        events = [{"event_id": f"e{offset}-{n}", "lead_id": "ana", "type": "page_view", "time": T0 + n,
                   **({} if product is None else {"product": product})} for n, product in enumerate(products)]
        asyncio.run(scorer.process([Consumed(settings.topic_events, partition_for("ana", 4), offset, None, orjson.dumps(events))]))

    with caplog.at_level(logging.WARNING, logger="leadstream.worker"):
        send(0, None, "console", "console", "b2b")
        send(1, None, "console")  # told already
        told = [record.getMessage() for record in caplog.records if "[filter]" in record.getMessage()]
        assert len(told) == 1
        assert told[0].startswith("events no model's [filter] takes are counted (leadstream_events_unrouted_total), not "
                                  "scored: no product, product 'console'; the models take the products b2b, saas")
        asyncio.run(scorer.use(Engine([shipped("b2b")]), set()))  # an edit may route them now, or others not
        send(2, "console")
    assert sum("[filter]" in record.getMessage() for record in caplog.records) == 2
