"""Model files edited while the worker runs.

The worker looks at its models directory every LEADSTREAM_MODELS_RELOAD_S seconds, and takes an
edit up once the files are as they were at its look before: files being written (a copy, a save
in place, several files copied one after another) are not loaded half-way. An edit that loads is
applied between two batches, with the same effect on leads that already have a
score as a restart would have (scoring/MODELS.md, "Editing a model that is in use"). An edit
that does not load is reported (log, metrics, the worker's /models/ view). The worker keeps
scoring with the models it has until the files load again, so a half-saved file or a typo
never stops scoring. An edit whose rules test a trait the models before it neither kept nor
tested is applied with a warning (log, /models/): leads scored before it have no value of that
trait in their states (scoring.model.unkept_traits).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from scoring import Engine, ModelError
from scoring.model import describe, model_bytes, model_files, unkept_traits
from streams import metrics
from streams.log_throttle import OutOfFiles, out_of_files

log = logging.getLogger("leadstream.worker")

#: Looks in a row that find the files changed again after which they are loaded as they are,
#: if they stay so while they load: files rewritten more often than the interval (a generator
#: that stamps the time in a comment) were never taken up while that went on.
UNSETTLED_LOOKS = 10


def fingerprint(directory: Path) -> str:
    """A digest of the model files' names and bytes (what `Engine.from_directory` reads): an
    edit changes it, a save that changes nothing does not."""
    digest = hashlib.sha256()
    try:
        for file in model_files(directory):
            digest.update(file.name.encode() + b"\0" + model_bytes(file) + b"\0")
    except (OSError, ModelError) as exc:  # unreadable now: loading will say why, and a fix changes the digest
        if isinstance(exc, OSError) and out_of_files(exc):  # the files are not known: `poll` tries again at its next round
            raise
        digest.update(f"unreadable: {exc}".encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Loaded:
    """The models a worker scores with, and the files they came from."""

    engine: Engine
    fingerprint: str
    loaded_at_ms: int
    #: What the edit that brought these models in warned of (`unkept_traits`); none at start,
    #: where the models before are not known.
    warnings: tuple[str, ...] = ()


class ModelDirectory:
    """The models directory as the worker last loaded it, and the edit it could not load. The
    fingerprint of the models in use is exported with `app_id` (the worker's group), so that
    workers of one group scoring with different files are told apart (metrics.MODELS_FINGERPRINT)."""

    current: Loaded

    def __init__(self, path: Path, app_id: str = "") -> None:
        self.path = path
        self.app_id = app_id
        #: The files' fingerprint at the last poll that found them changed: loaded once the
        #: next poll finds them so again (`poll`), and the polls in a row that found them changed again.
        self._changing: str | None = None
        self._unsettled = 0
        #: Why the files on disk do not load, while they do not (None once they do).
        self.error: str | None = None
        self._out_of_files = OutOfFiles(log, "looking for edits of the model files")
        # Taken before loading, and looked at again after: an edit saved while the files load
        # is loaded by the next poll, as one found by a poll is. Without the second look it
        # was found by the next poll and loaded by the one after, and the models in use,
        # perhaps read from the edited files, carried the fingerprint before it meanwhile.
        seen = fingerprint(path)
        self._use(Loaded(Engine.from_directory(path), seen, _now_ms()))
        self._seen = seen
        self._written_meanwhile(seen)

    def poll(self) -> Engine | None:
        """The newly loaded models when the files changed and have stayed so since the last
        poll, and load; None when they did not change, are still changing (or changed while they
        loaded), or do not load (then
        `error` says why), or could not be read for want of file descriptors: no fault of the
        files, so said as the process's (on one throttled line), and read again at the next poll."""
        seen = self._look()
        if seen is None:
            return None
        if seen == self._seen:
            self._changing, self._unsettled = None, 0  # an edit undone before it settled
            return None
        if seen == self.current.fingerprint:
            self._undone(seen)
            return None
        if seen != self._changing:
            # Written a moment ago, perhaps not to the end: a file saved in place was loaded
            # cut before its [accounts] (valid TOML), and the account it rolled up crossed to
            # its level a second time, under a new id, once the rest was written.
            self._changing = seen
            self._unsettled += 1
            if self._unsettled < UNSETTLED_LOOKS:
                return None
        self._unsettled = 0
        try:
            engine = Engine.from_directory(self.path)
        except Exception as exc:  # noqa: BLE001 - a loader bug must not stop the worker either
            if self._out_of_files.said(exc) or self._written_meanwhile(seen):
                return None  # not seen: the next poll reads the files again
            self._seen = seen
            # A ModelError names the file, rule and field; anything else is leadstream's bug.
            self.error = str(exc) if isinstance(exc, ModelError) else f"{exc!r} while loading the models (a bug: please report it)"
            metrics.model_reloaded("rejected")
            metrics.MODELS_BROKEN.set(1)
            log.error("model edit not applied, still scoring with the models of fingerprint %s: %s",
                      self.current.fingerprint, self.error, exc_info=not isinstance(exc, ModelError))
            return None
        if self._written_meanwhile(seen):
            return None
        self._seen = seen
        warnings = tuple(map(str, unkept_traits(self.current.engine.models, engine.models)))
        self._use(Loaded(engine, seen, _now_ms(), warnings))
        self.error = None
        metrics.model_reloaded("applied")
        metrics.MODELS_BROKEN.set(0)
        log.info("model edit applied: models=%s fingerprint=%s", [m.name for m in engine.models], seen)
        for warning in warnings:
            log.warning("model edit applied: %s", warning)
        return engine

    def _undone(self, seen: str) -> None:
        """The files are as the models in use were loaded from again: a broken edit put back (a
        file restored, a typo undone). Loading them again counted an edit applied and made the
        stages drop their live states (`Scorer.use`) for the models they have."""
        self._seen, self._changing, self._unsettled = seen, None, 0
        if self.error is not None:
            self.error = None
            metrics.MODELS_BROKEN.set(0)
            log.info("model files back as the models in use were loaded from (fingerprint %s): the edit that did not load is gone", seen)

    def _written_meanwhile(self, seen: str) -> bool:
        """Whether the files changed while they loaded: a write begun between the poll's look
        and the load was loaded part-way, past the wait for the files to settle, and labelled
        with the fingerprint of the files before it. Then what was loaded is dropped, and the
        files are taken up once they stay as they are now, as for any edit."""
        now = self._look()
        if now == seen:
            return False
        if now is not None:  # else not known: the next poll reads them again
            self._changing = now
        return True

    def _look(self) -> str | None:
        """The files' fingerprint; None when they could not be read for want of file
        descriptors (said on one throttled line)."""
        try:
            return fingerprint(self.path)
        except OSError as exc:
            if self._out_of_files.said(exc):
                return None
            raise

    def _use(self, loaded: Loaded) -> None:
        self.current = loaded
        metrics.MODELS_FINGERPRINT.clear()  # the previous models' series goes: one per worker
        metrics.MODELS_FINGERPRINT.labels(self.app_id, loaded.fingerprint).set(1)

    async def catch_up(self, interval_s: float) -> Engine | None:
        """`reload` at once, then every `interval_s` while an edit found is still settling: what
        the account stage does when a worker of the group that has an edit already sends it
        updates for a model added by it (streams/rollup.py), which it dead-lettered until its
        own timer got there. Bounded as a poll's wait for the files to settle is; None when the
        files hold no edit, or one that does not load."""
        for _ in range(UNSETTLED_LOOKS + 1):
            engine = await self.reload()
            if engine is not None or self._changing is None:
                return engine
            await asyncio.sleep(interval_s)
        return None

    async def reload(self) -> Engine | None:
        """`poll` in a thread: the files of a large model (thousands of rules) take seconds to
        load and compile, during which the worker's loop, on the same thread, answered nothing,
        not even its health checks, and the group could drop it. Python threads take turns
        every few milliseconds, so the loop keeps answering meanwhile."""
        return await asyncio.to_thread(self.poll)

    def describe(self) -> dict[str, object]:
        """What the worker's /models/ view shows: the models in use, what the edit that brought
        them in warned of, and a pending broken edit."""
        current = self.current
        return {
            "directory": str(self.path),
            "fingerprint": current.fingerprint,
            "loaded_at_ms": current.loaded_at_ms,
            "models": [describe(model) for model in current.engine.models],
            "warnings": list(current.warnings),
            "error": self.error,
        }


def _now_ms() -> int:
    return int(time.time() * 1000)
