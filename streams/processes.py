"""leadstream's own background processes (the demo's worker and sinks), tracked by pid files.

`leadstream services down` stops these before the broker, so nothing is left running.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from streams.addresses import authority, family, loopback
from streams.errors import ServiceError, cannot_listen
from streams.settings import Settings


#: Where `free_port` looks: below Linux's default range of ephemeral ports (32768-60999), from
#: which the kernel also takes the local port of every outgoing connection. A port drawn from that
#: range (bind to port 0) could be taken by any process's next Kafka or HTTP connection in the
#: seconds before the server that was given it binds it.
_PORTS = range(20000, 32768)
#: Ports `free_port` gave this process: it hands each out once, as a caller may ask for several
#: before any of them is listened on (a chaos run's three worker slots once shared one).
_handed: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing uses right now, outside the ephemeral range, and
    that this process was not given before."""
    for port in random.sample(_PORTS, 200):
        if port in _handed:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            _handed.add(port)
            return port
    raise ServiceError(f"no free TCP port on 127.0.0.1 between {_PORTS.start} and {_PORTS.stop - 1}")


def check_port(host: str, port: int, setting: str) -> None:
    """A ServiceError naming `setting` unless a server can listen on host:port now."""
    with socket.socket(family(host)) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp and http.server bind it
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise cannot_listen(host, port, setting, exc) from None


def _dir(settings: Settings) -> Path:
    return settings.services_dir / "procs"


def log_file(name: str, settings: Settings) -> Path:
    """Where the background process `name` writes its output (kept after it stops)."""
    return _dir(settings) / f"{name}.log"


def start_background(name: str, args: list[str], settings: Settings) -> tuple[int, Path]:
    """Start `leadstream ARGS...` detached; returns its pid and log file."""
    directory = _dir(settings)
    directory.mkdir(parents=True, exist_ok=True)
    log = log_file(name, settings)
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


def command_line(pid: int) -> str | None:
    """A live process's command line (arguments joined by spaces); None once it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None


def working_dir(pid: int) -> Path | None:
    """A live process's working directory; None once it is gone (or not ours to read)."""
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def _ours(pid: int) -> bool:
    # A pid file outlives its process (a reboot, kill -9), and its number may be another
    # program's by now: that one is neither "running" nor ours to signal.
    return alive(pid) and "streams.cli" in (command_line(pid) or "")


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
        if proc_name == name and _ours(pid):
            return pid
    return None


def stop_all(settings: Settings) -> list[str]:
    return [line for name, pid, pid_file in _tracked(settings) if (line := _stop(name, pid, pid_file))]


def stop(name: str, settings: Settings) -> str | None:
    """Stops the background process `name` (see `start_background`), if it runs."""
    for proc_name, pid, pid_file in _tracked(settings):
        if proc_name == name:
            return _stop(name, pid, pid_file)
    return None


def _stop(name: str, pid: int, pid_file: Path) -> str | None:
    line = None
    if _ours(pid):
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and alive(pid):
            time.sleep(0.2)
        if alive(pid):
            os.killpg(pid, signal.SIGKILL)
        line = f"{name}: stopped (pid {pid})"
    pid_file.unlink(missing_ok=True)
    return line


def status_all(settings: Settings) -> list[str]:
    return [
        f"{name}: {'running' if _ours(pid) else 'not running'} (pid {pid}); log: {log_file(name, settings)}"
        for name, pid, _ in _tracked(settings)
    ]


class WorkerProcess:
    """A `leadstream worker` child process (tests, benchmarks): started, probed over HTTP, stopped or killed."""

    command = "worker"
    args: tuple[str, ...] = ()  # after the command

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.log = settings.state_dir.parent / f"{self.command}-{self.port}-{time.monotonic_ns()}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        """Where its /readyz answers."""
        return self.settings.worker_port

    @property
    def host(self) -> str:
        """The address it listens on."""
        return self.settings.bind_host

    def start(self, ready_timeout_s: float = 90.0, poll_s: float = 0.3) -> None:
        self.spawn()
        self.wait_ready(ready_timeout_s, poll_s)

    def spawn(self) -> None:
        """Start the process without waiting for it (see `wait_ready`)."""
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streams.cli", self.command, *self.args],
                env={**os.environ, **self.settings.as_env()},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, ready_timeout_s: float = 90.0, poll_s: float = 0.3) -> None:
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            if self.ready():
                return
            time.sleep(poll_s)
        raise ServiceError(f"{self.command} not ready within {ready_timeout_s} s:\n{self.tail()}")

    def ready(self) -> bool:
        """Whether /readyz answers 200; ServiceError when the process has exited."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise ServiceError(f"{self.command} exited with {self.proc.returncode}:\n{self.tail()}")
        return self.get("/readyz")[0] == 200

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://{authority(loopback(self.host), self.port)}{path}", timeout=5) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return 0, b""

    def metric(self, name: str) -> list[float]:
        """The values of a metric's samples (one per label set) on its /metrics."""
        from prometheus_client.parser import text_string_to_metric_families

        text = self.get("/metrics")[1].decode()
        return [sample.value for family in text_string_to_metric_families(text) for sample in family.samples if sample.name == name]

    def kill(self) -> None:
        """SIGKILL: no shutdown, no LeaveGroup, no final commit."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def peak_rss_mb(self) -> float:
        """The child's peak resident memory so far (VmHWM)."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def cpu_s(self) -> float:
        """CPU time the child has used so far, user and system, all threads."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


class CollectorProcess(WorkerProcess):
    """A `leadstream collector` child process; ready once it is connected to Kafka."""

    command = "collector"

    @property
    def port(self) -> int:
        return self.settings.collector_port

    @property
    def host(self) -> str:
        return self.settings.collector_host
