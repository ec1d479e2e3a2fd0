"""A worker whose broker is gone stops at once on SIGTERM, not after a minute.

With the broker gone, aiokafka's fetch tasks fail and sleep their retry backoff. On stop, its
fetcher (aiokafka 0.14, consumer/fetcher.py `Fetcher.close`) cancels each such task and awaits
it without catching the CancelledError a task cancelled in that sleep ends with: the error goes
up through `AIOKafkaConsumer.stop` and out of Faust's consumer thread (faust-streaming 0.15,
drivers/aiokafka.py `on_thread_stop`) before the thread says it has shut down, and mode's
`ServiceThread.stop` waits for that signal for its `shutdown_timeout`, 60 s. A stop budget
(`docker compose down`'s 10 s, the demo's, a supervisor's) ran out first and the worker was
killed. The wrapped `close` ends those cancelled fetches itself, so the consumer goes on to close
its connections and the thread says it has stopped.

A worker that stops itself (app.crash, streams/app.py stop_worker; seen with a split assignment) crashes its
consumer thread too, which ends and closes its event loop before the worker stops it: mode's
`ServiceThread._stopped_set` then raised "Event loop is closed", logged at ERROR with a traceback
("Error while stopping child <AIOKafkaConsumerThread: crashed >") under the worker's own
CRITICAL line. That thread is told nothing: it has stopped.
"""

from __future__ import annotations

import asyncio
from typing import Any

from streams.fetcher import fetcher_of


def install(consumer: Any) -> bool:
    """Wrap the `close` of this Faust consumer's aiokafka fetcher (once; started: the fetcher
    exists once the consumer thread has started). False, with a warning, when the consumer is not
    built as faust-streaming 0.15 and aiokafka 0.14 build it: the worker then stops as they do."""
    _stop_an_ended_thread_quietly(consumer._thread)
    fetcher = fetcher_of(consumer, "with its broker gone, the worker may take 60 s to stop (streams/consumer_stop.py)", "close")
    if fetcher is None:
        return False
    close = fetcher.close
    if getattr(fetcher, "_leadstream_consumer_stop", False):
        return True
    fetcher._leadstream_consumer_stop = True

    async def close_ending_cancelled_fetches() -> None:
        try:
            await close()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # the stop itself is cancelled: so be it
                raise
            # A fetch cancelled in its retry backoff: the others are cancelled and awaited here,
            # as `close` would have done after it.
            rest = [fetch for fetch in getattr(fetcher, "_pending_tasks", ()) if not fetch.done()]
            for fetch in rest:
                fetch.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

    fetcher.close = close_ending_cancelled_fetches
    return True


def _stop_an_ended_thread_quietly(thread: Any) -> None:
    """The consumer thread, once ended, is not told to stop on its closed loop (once)."""
    if getattr(thread, "_leadstream_stop_ended", False):
        return
    thread._leadstream_stop_ended = True
    stopped_set = thread._stopped_set

    def stopped_set_unless_ended() -> None:
        if not thread.thread_loop.is_closed():  # closed: the thread has ended, nothing waits on it there
            stopped_set()

    thread._stopped_set = stopped_set_unless_ended
