"""streams/livelock.py on Faust's own consumer and the real broker: the livelock detector's round
over a partition that aiokafka is resetting to its log's start does not crash the consumer."""

from __future__ import annotations

import asyncio
import concurrent.futures
from pathlib import Path
from time import monotonic

from aiokafka import TopicPartition
from aiokafka.consumer.fetcher import OffsetResetStrategy
from faust.types import TP

from streams import livelock
from streams.settings import Settings
from tests.streams.test_seek_first import PARTITION, produce, running, worker_app


def test_a_detector_round_over_a_partition_awaiting_its_reset_passes_it_by(isolated: Settings, tmp_path: Path) -> None:
    # As when a fetch asked for offsets retention had deleted (a seek_first test saw the consumer
    # crash so): aiokafka drops the partition's position until the broker says where the log starts.
    topic = isolated.topic_events
    tp = TP(topic, PARTITION)
    produce(isolated, topic, [b"0", b"1"])

    async def scenario() -> None:
        seen: dict[str, list[bytes]] = {}
        app = worker_app(isolated, tmp_path / "state", seen)
        async with running(app, tp):
            while len(seen.get(topic, [])) < 2:
                await asyncio.sleep(0.05)
            assert livelock.install(app.consumer)
            thread = app.consumer._thread
            state = thread._consumer._fetcher._subscriptions.subscription.assignment.state_value(TopicPartition(topic, PARTITION))
            assert state.highwater == 2  # Faust's check reads the position of a partition fetched from

            def resetting_then_verified() -> None:  # on the consumer's own loop: nothing resets it in between
                state.await_reset(OffsetResetStrategy.EARLIEST)
                app.consumer.verify_event_path(monotonic(), tp)

            done: concurrent.futures.Future[None] = concurrent.futures.Future()

            def run() -> None:
                try:
                    resetting_then_verified()
                    done.set_result(None)
                except BaseException as exc:  # noqa: BLE001 - handed to the test
                    done.set_exception(exc)

            thread.thread_loop.call_soon_threadsafe(run)
            await asyncio.wrap_future(done)
            # And the partition is read on from where the reset puts it.
            produce(isolated, topic, [b"after"])
            while b"after" not in seen[topic]:
                await asyncio.sleep(0.05)

    asyncio.run(scenario())
