"""`leadstream worker`: load the models, make sure the topics exist, run the Faust worker."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from streams.addresses import authority
from streams.collection import PauseClock, tune_collector
from streams.errors import cannot_listen
from streams.http_guard import WORKER_MAX_CONNECTIONS, bound_connections, quiet_bad_clients
from streams.log_throttle import throttle_kafka_retries
from streams.model_reload import ModelDirectory
from streams.processes import check_port
from streams.settings import Settings, make_setting_dir
from streams.topics import Review, ensure_topics, weak_settings

if TYPE_CHECKING:
    import faust

log = logging.getLogger("leadstream.worker")
#: Longest a worker takes to stop once told to (SIGTERM, Ctrl-C), within `docker compose down`'s
#: 10 s. It stops in about a second, waiting for the batch in flight; but Faust's stop commits the
#: offsets of the messages being processed, and a commit waits for the group's coordinator for as
#: long as the broker is gone: the worker ignored SIGTERM until it was killed. (A worker told to
#: stop while its group rebalances, as in its start-up, also waits for the rebalance: chaos runs on
#: a loaded machine saw it go past this.) Past this, it exits
#: with what it has not committed read again by its successor, as after a crash.
STOP_TIMEOUT_S = 8.0
#: The exit status of a worker that did not stop within STOP_TIMEOUT_S.
EXIT_STOP_TIMEOUT = 1


def run_worker(settings: Settings) -> int:
    import faust

    from streams.app import create_app

    # Fail before joining the group: a broken model file or a taken port must not take
    # partitions and stall them.
    models = ModelDirectory(settings.models_dir, settings.app_id)
    check_port(settings.bind_host, settings.worker_port, "LEADSTREAM_WORKER_PORT")
    make_state_dir(settings)
    # Settings of existing topics are the operator's to change (`leadstream topics`, a step of an
    # upgrade): the worker says what they lack, once logging is set up.
    ensure_topics(settings, alter=False)
    weak = weak_settings(settings)
    app = create_app(settings, models)
    guard_the_web_port(app, settings)
    tune_collector(settings.gc_young_threshold)
    PauseClock().install()

    class Worker(faust.Worker):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            if not self.stdout.isatty():
                # Faust draws its progress spinner (cursor hiding, backspaces) into whatever
                # stdout is, and a log file or a log collector kept the control codes.
                self.spinner = None

        def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
            super().on_setup_root_logger(logger, level)
            say_no_missing_traceback(logger)
            for line in weak_topics_warnings(weak):
                log.warning("%s", line)

        async def on_stop(self) -> None:
            # A thread: the event loop may be the one waiting.
            threading.Thread(target=_exit_unless_stopped, name="stop-deadline", daemon=True).start()
            await super().on_stop()

    worker = Worker(app, loglevel=settings.log_level.upper(), quiet=True)
    # Faust's own debug records cost ~17% of the hot path when built and discarded (PERF.md).
    logging.getLogger("faust").setLevel(max(logging.INFO, logging.getLevelName(settings.log_level.upper())))
    throttle_kafka_retries()  # aiokafka's, ~30 lines a second at ERROR while Kafka is down
    quiet_bad_clients()  # of its web port
    log.info(
        "worker starting app_id=%s models=%s events_topic=%s web=%s advertised=%s",
        settings.app_id, [m.name for m in models.current.engine.models], settings.topic_events,
        authority(settings.bind_host, settings.worker_port), app.conf.canonical_url,
    )
    try:
        worker.execute_from_commandline()
    except SystemExit as stopped:
        _exit_at_once(stopped.code)
    return 0


class _NoMissingTraceback(logging.Filter):
    """mode logs a service's crash with `log.exception` ("Crashed reason=...") wherever the crash
    is asked for: asked outside an `except` (the worker stopping itself, streams/app.py
    stop_worker, streams/bulk_store.py), the record's exc_info is (None, None, None), which
    logging wrote as a bare "NoneType: None" line under it. The reason is in the message."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info == (None, None, None):
            record.exc_info = None
        return True


_NO_MISSING_TRACEBACK = _NoMissingTraceback()


def say_no_missing_traceback(logger: logging.Logger) -> None:
    """Has each handler of `logger` (the root logger, which every record reaches) leave out a
    traceback that is not there (_NoMissingTraceback). Idempotent."""
    for handler in logger.handlers:
        if _NO_MISSING_TRACEBACK not in handler.filters:
            handler.addFilter(_NO_MISSING_TRACEBACK)


def weak_topics_warnings(reviews: list[Review]) -> list[str]:
    """What the worker says of topics lacking settings this release requires (streams/topics.py,
    weak_settings): one line for those `leadstream topics` sets, and what it cannot set."""
    weak = [f"{shortfall.topic} {shortfall.name}={shortfall.before} (needs {shortfall.value})"
            for review in reviews for shortfall in review.shortfalls]
    lines = [warning for review in reviews for warning in review.warnings]
    if weak:
        lines.insert(0, f"topics with settings weaker than this release requires: {', '.join(weak)}: run `leadstream topics`, "
                        "which sets them (a profiles topic compacted before its records are as old as the events loses "
                        "the identifies and aliases that merged visitors, which `leadstream history` and rescores need; one "
                        "compacted later keeps a forgotten lead's profile records past the events' retention)")
    return lines


def _exit_at_once(code: object) -> None:
    """Ends the process without the interpreter's teardown, once the worker has stopped (what it
    scored committed, or left to the next worker): freeing a million lead states object by object
    took 15 s and more of a full core after the worker had stopped, past the 10 s `docker compose
    down` waits before it kills."""
    if isinstance(code, str):  # as the interpreter would have said it
        print(code, file=sys.stderr)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code if isinstance(code, int) else 0 if code is None else 1)


def guard_the_web_port(app: faust.App, settings: Settings) -> None:
    """`check_port` tells a port taken before start-up; one taken since (a second copy started
    at the same moment) failed Faust's web server with a bare OSError: it is said alike. Once
    listening, the port serves at most WORKER_MAX_CONNECTIONS connections at once."""
    web: Any = app.web  # the aiohttp driver's, which has start_server
    start = web.start_server

    async def start_server() -> None:
        try:
            await start()
        except OSError as exc:
            raise cannot_listen(settings.bind_host, settings.worker_port, "LEADSTREAM_WORKER_PORT", exc) from None
        bound_connections(web._runner.server, WORKER_MAX_CONNECTIONS,  # made by start()
                          "the most the worker's port serves (streams/http_guard.py WORKER_MAX_CONNECTIONS)")

    web.start_server = start_server  # Faust's web services call it on the instance


def make_state_dir(settings: Settings) -> None:
    """Faust creates only the last directory of LEADSTREAM_STATE_DIR, and fails with a traceback
    on anything else (another user's directory too)."""
    make_setting_dir(settings.state_dir, "LEADSTREAM_STATE_DIR")


def _exit_unless_stopped() -> None:
    time.sleep(STOP_TIMEOUT_S)
    log.critical("not stopped within %.0f s of being told to (its last commit, or its Kafka consumer leaving a group "
                 "that is rebalancing, waits for the broker; is Kafka reachable?): exiting; "
                 "the messages it did not commit are scored again by the next worker", STOP_TIMEOUT_S)
    os._exit(EXIT_STOP_TIMEOUT)
