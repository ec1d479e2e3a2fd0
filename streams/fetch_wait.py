"""How long the broker may hold the worker's fetch: Faust fixes it at 1.5 s, which stalls the worker.

aiokafka keeps one fetch in flight per broker, and leaves out of it the partitions whose
fetched records still wait to be consumed. faust-streaming (0.15, drivers/aiokafka.py) creates
its consumer with `fetch_max_wait_ms=1500` and no setting to change it. So a fetch that went out
covering only partitions with nothing new (the profile and identity topics, an idle account
partition) is held by the broker for 1.5 s, while the events of the partitions it left out wait
in Kafka until it returns; then it can happen again. In `leadstream bench pipeline`'s latency
phase that showed as a worker idle for 1.2-1.5 s at a time, then scoring messages 1.3-1.7 s old,
for the whole phase (p50 latency 1.3 s instead of 50 ms). LEADSTREAM_FETCH_MAX_WAIT_MS bounds it.
"""

from __future__ import annotations

import logging
from typing import Any

from streams.fetcher import fetcher_of

log = logging.getLogger("leadstream.worker")


def install(consumer: Any, max_wait_ms: int) -> bool:
    """Set the longest wait of the fetches of this Faust consumer's aiokafka consumer (started:
    its fetcher reads the value for each request it sends). False, with a warning, when the
    consumer is not built as faust-streaming 0.15 and aiokafka 0.14 build it: the worker then
    runs with Faust's wait."""
    fetcher = fetcher_of(consumer, "fetch wait not set: the worker may idle up to Faust's 1.5 s at a time "
                                   "(streams/fetch_wait.py)", "_fetch_max_wait_ms")
    if fetcher is None:
        return False
    before = fetcher._fetch_max_wait_ms
    if before != max_wait_ms:
        fetcher._fetch_max_wait_ms = max_wait_ms
        log.info("fetch wait set: max_wait_ms=%d (was %d)", max_wait_ms, before)
    return True
