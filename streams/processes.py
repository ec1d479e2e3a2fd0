"""leadstream's own background processes (the demo's worker and sinks), tracked by pid files.

`leadstream services down` stops these before the broker, so nothing is left running.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from streams.settings import Settings


def _dir(settings: Settings) -> Path:
    return settings.services_dir / "procs"


def start_background(name: str, args: list[str], settings: Settings) -> tuple[int, Path]:
    """Start `leadstream ARGS...` detached; returns its pid and log file."""
    directory = _dir(settings)
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / f"{name}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **settings.as_env()},
            start_new_session=True,
        )
    (directory / f"{name}.pid").write_text(str(proc.pid))
    return proc.pid, log


def alive(pid: int) -> bool:
    """Whether a process runs; a zombie child of ours (exited, not yet reaped) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return True


def _tracked(settings: Settings) -> list[tuple[str, int, Path]]:
    found = []
    for pid_file in sorted(_dir(settings).glob("*.pid")):
        try:
            found.append((pid_file.stem, int(pid_file.read_text().strip()), pid_file))
        except ValueError:
            pid_file.unlink(missing_ok=True)
    return found


def running(name: str, settings: Settings) -> int | None:
    for proc_name, pid, _ in _tracked(settings):
        if proc_name == name and alive(pid):
            return pid
    return None


def stop_all(settings: Settings) -> list[str]:
    lines = []
    for name, pid, pid_file in _tracked(settings):
        if alive(pid):
            os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and alive(pid):
                time.sleep(0.2)
            if alive(pid):
                os.killpg(pid, signal.SIGKILL)
            lines.append(f"{name}: stopped (pid {pid})")
        pid_file.unlink(missing_ok=True)
    return lines


def status_all(settings: Settings) -> list[str]:
    return [
        f"{name}: {'running' if alive(pid) else 'not running'} (pid {pid}); log: {_dir(settings) / (name + '.log')}"
        for name, pid, _ in _tracked(settings)
    ]
