"""`leadstream worker`: load the models, make sure the topics exist, run the Faust worker."""

from __future__ import annotations

import logging

from streams.collection import PauseClock, tune_collector
from streams.model_reload import ModelDirectory
from streams.processes import check_port
from streams.settings import Settings
from streams.topics import ensure_topics


def run_worker(settings: Settings) -> int:
    import faust

    from streams.app import create_app

    # Fail before joining the group: a broken model file or a taken port must not take
    # partitions and stall them.
    models = ModelDirectory(settings.models_dir)
    check_port(settings.bind_host, settings.worker_port, "LEADSTREAM_WORKER_PORT")
    ensure_topics(settings)
    app = create_app(settings, models)
    tune_collector(settings.gc_young_threshold)
    PauseClock().install()
    worker = faust.Worker(app, loglevel=settings.log_level.upper(), quiet=True)
    # Faust's own debug records cost ~17% of the hot path when built and discarded (PERF.md).
    logging.getLogger("faust").setLevel(max(logging.INFO, logging.getLevelName(settings.log_level.upper())))
    logging.getLogger("leadstream.worker").info(
        "worker starting app_id=%s models=%s events_topic=%s web=%s:%d",
        settings.app_id, [m.name for m in models.current.engine.models], settings.topic_events,
        settings.bind_host, settings.worker_port,
    )
    worker.execute_from_commandline()
    return 0

