"""`leadstream worker`: load the models, make sure the topics exist, run the Faust worker."""

from __future__ import annotations

import gc
import logging

from scoring import Engine
from streams.settings import Settings
from streams.topics import ensure_topics


def run_worker(settings: Settings) -> int:
    import faust

    from streams.app import create_app

    # Fail before joining the group: a broken model file must not take partitions and stall them.
    engine = Engine.from_directory(settings.models_dir)
    ensure_topics(settings)
    app = create_app(settings, engine)
    tune_collector(settings.gc_young_threshold)
    worker = faust.Worker(app, loglevel=settings.log_level.upper(), quiet=True)
    # Faust's own debug records cost ~17% of the hot path when built and discarded (PERF.md).
    logging.getLogger("faust").setLevel(max(logging.INFO, logging.getLevelName(settings.log_level.upper())))
    logging.getLogger("leadstream.worker").info(
        "worker starting app_id=%s models=%s events_topic=%s web=%s:%d",
        settings.app_id, [m.name for m in engine.models], settings.topic_events,
        settings.bind_host, settings.worker_port,
    )
    worker.execute_from_commandline()
    return 0


def tune_collector(young_threshold: int) -> None:
    """Scoring allocates many short-lived objects per batch (events, decoded states); with
    Python's default of a young collection every 700 allocations, a batch's live objects are
    scanned and promoted over and over, a quarter to a third of the engine's time
    (`leadstream bench engine`, engine_gc_tuned_events_per_s). What exists at start-up (modules, models,
    Faust) is frozen out of collections, and the older generations are collected less often
    in step."""
    if young_threshold <= 0:
        return
    gc.collect()
    gc.freeze()
    gc.set_threshold(young_threshold, 20, 100)
