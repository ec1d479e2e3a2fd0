"""Where a Faust consumer keeps its aiokafka fetcher, which the worker tunes (streams/fetch_wait.py,
streams/consumer_stop.py, streams/transactions.py): neither library has an interface for what
they change, so each reaches it here, and says what the worker does without it."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("leadstream.worker")


def fetcher_of(consumer: Any, without: str, *needed: str) -> Any | None:
    """The aiokafka fetcher of this (started) Faust consumer, with the attributes `needed`; None,
    with a warning saying `without` (what the worker does without it), when the consumer is not
    built as faust-streaming 0.15 and aiokafka 0.14 build it."""
    try:
        fetcher = consumer._thread._consumer._fetcher
        for name in needed:
            getattr(fetcher, name)
    except AttributeError as exc:
        log.warning("the Kafka consumer has no fetcher, or none as faust-streaming 0.15 and aiokafka 0.14 build it (%s): %s",
                    exc, without)
        return None
    return fetcher
