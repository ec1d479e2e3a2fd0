"""The local services leadstream runs on: one Apache Kafka broker (KRaft) and one redis-server.

`up` is idempotent: it fetches the broker's jars from Maven Central once (streams/kafka.pom.xml),
formats the KRaft storage on first start, starts both processes in the background and waits
until they really answer (a Kafka metadata request, a Redis PING). `down` stops exactly the
processes `up` started (their pid files), `status` reports each. Everything lives under
LEADSTREAM_SERVICES_DIR, which is git-ignored.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import urlparse

from streams.errors import ServiceError, redis_trouble
from streams.kafka_clients import open_client
from streams.processes import alive, status_all, stop_all, working_dir
from streams.settings import KAFKA_VERSION, MIN_KAFKA_HEAP_MB, Settings, heap_bytes, make_setting_dir
from streams.topics import EVENTS_RETENTION_MS

# In the package, not the repository's infra/: an installed leadstream ran Maven on a pom it did not have.
POM = Path(__file__).with_name("kafka.pom.xml")
READY_TIMEOUT_S = 90.0
# Below this much free disk Kafka fails in confusing ways; say so up front.
MIN_FREE_DISK_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


class Service:
    """One background process with a pid file and a log file."""

    name: str

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = settings.services_dir / self.name
        self.pid_file = self.home / f"{self.name}.pid"
        self.log_file = self.home / "logs" / f"{self.name}.out"
        # Where each log ended when the last start began: its failure is in what it wrote after.
        self.log_ends: dict[Path, int] = {}

    @property
    def logs(self) -> list[Path]:
        """The files the process writes, the one that tells most first."""
        return [self.log_file]

    #: The variable that chooses the service's address.
    setting: str

    @property
    def endpoint(self) -> Endpoint:
        raise NotImplementedError

    def listens(self) -> list[tuple[Endpoint, str]]:
        """Every address the process listens on, each with what it is when not the endpoint."""
        return [(self.endpoint, "")]

    def pid(self) -> int | None:
        """The pid `up` recorded, if that process is still alive and still ours: a pid file
        outlives its process (a reboot, kill -9), and its number may be another program's by
        now, which `up` must not wait for nor `down` signal. Ours work in the service's folder
        (started there; redis-server moves to its data folder below it)."""
        try:
            pid = int(self.pid_file.read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None
        cwd = working_dir(pid) if alive(pid) else None
        return pid if cwd is not None and cwd.is_relative_to(self.home.resolve()) else None

    def started_on(self) -> str | None:
        """The address `up` started the process on, as its pid file records it (None in an earlier
        release's): `status` and `up` are asked with the settings of the day, which may name
        another, and the process listens where it was started."""
        try:
            recorded = self.pid_file.read_text().split()[1:2]
        except FileNotFoundError:
            return None
        return recorded[0] if recorded else None

    def answers(self) -> bool:
        raise NotImplementedError

    def refusal(self) -> str | None:
        """Why a server on the endpoint that does not answer our requests refuses them (its
        credentials), or None: one of the user's own, not a stranger on the port."""
        return None

    def prepare(self) -> None:
        """Everything before the first start (install, fetch, format); idempotent."""

    def command(self) -> list[str]:
        raise NotImplementedError

    def up(self) -> str:
        if self.pid() is not None:
            if (where := self.started_on()) not in (None, str(self.endpoint)):  # waiting for the endpoint would be in vain
                raise ServiceError(f"{self.name}: already running (pid {self.pid()}) on {where}, where `services up` started it, not on "
                                   f"{self.endpoint} ({self.setting}): run `leadstream services down`, then `up`, to start it there")
            self.wait_ready()
            return f"{self.name}: already running (pid {self.pid()}) on {self.endpoint}"
        if _port_in_use(self.endpoint) and self.answers():
            # One of the user's own, docker compose's, or another services directory's: the
            # demo and the tests work against it as against ours (`down` leaves it alone).
            return f"{self.name}: not started from {self.settings.services_dir} (LEADSTREAM_SERVICES_DIR), but {self.endpoint} answers: using it"
        if _port_in_use(self.endpoint) and (refused := self.refusal()) is not None:
            raise ServiceError(f"{self.name}: {self.endpoint} answers, but {refused}")
        for endpoint, role in self.listens():
            if _port_in_use(endpoint):
                raise ServiceError(
                    f"{self.name}: port {endpoint}{role} is taken by another process (not one `leadstream services up` "
                    f"started); stop it or set {self.setting} to another port"
                )
        self.prepare()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_ends = {path: _size(path) for path in self.logs}
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.home,
                start_new_session=True,  # survives the CLI and is not hit by its Ctrl-C
            )
        self.pid_file.write_text(f"{proc.pid}\n{self.endpoint}\n")  # see started_on
        self.wait_ready(proc)
        return f"{self.name}: started (pid {proc.pid}) on {self.endpoint}; log: {self.logs[0]}"

    def wait_ready(self, proc: subprocess.Popen[bytes] | None = None) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                line, log = self.last_log_line()
                raise ServiceError(f"{self.name}: exited with code {proc.returncode} while starting: {line} (log: {log})")
            if self.answers():
                return
            time.sleep(0.25)
        raise ServiceError(f"{self.name}: did not answer on {self.endpoint} within {READY_TIMEOUT_S:.0f} s (log: {self.logs[0]})")

    def down(self) -> str:
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return f"{self.name}: not running"
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.pid() is not None:
            time.sleep(0.2)
        if self.pid() is not None:
            os.killpg(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return f"{self.name}: stopped (pid {pid})"

    def status(self) -> str:
        pid = self.pid()
        if pid is None:
            if self.answers():  # another services directory's, or one of the user's own
                return f"{self.name}: not started from {self.settings.services_dir} (LEADSTREAM_SERVICES_DIR), but {self.endpoint} answers"
            if (refused := self.refusal()) is not None:
                return f"{self.name}: not started from {self.settings.services_dir} (LEADSTREAM_SERVICES_DIR); {self.endpoint} answers, but {refused}"
            return f"{self.name}: not running"
        where, answers = self.started_on(), self.answers()
        if where == str(self.endpoint) or (where is None and answers):
            return f"{self.name}: running (pid {pid}) on {self.endpoint}, {'ready' if answers else 'NOT answering'}; log: {self.logs[0]}"
        place = f"on {where}, where `services up` started it" if where else "on an address its pid file (an earlier release's) does not record"
        return (f"{self.name}: running (pid {pid}) {place}; {self.setting} names {self.endpoint}, which "
                f"{'answers' if answers else 'does not answer'}; log: {self.logs[0]}")

    def last_log_line(self) -> tuple[str, Path]:
        """The line of what the last start wrote that best says why it failed, and its log."""
        written = {path: self.written(path) for path in self.logs}
        for path, lines in written.items():
            errors = [ln for ln in lines if "ERROR" in ln or "Exception" in ln or "FATAL" in ln or "#" in ln[:2]]
            if errors:
                return errors[-1].strip()[:300], path
        for path, lines in written.items():
            if lines:
                return lines[-1].strip()[:300], path
        return "nothing in its logs", self.logs[0]

    def written(self, path: Path) -> list[str]:
        """The non-blank lines written to `path` since the last start began."""
        try:
            with open(path, "rb") as log:
                log.seek(self.log_ends.get(path, 0))
                text = log.read().decode(errors="replace")
        except FileNotFoundError:
            return []
        return [ln for ln in text.splitlines() if ln.strip()]


class Kafka(Service):
    name = "kafka"
    setting = "LEADSTREAM_KAFKA_BOOTSTRAP"

    @property
    def endpoint(self) -> Endpoint:
        host, _, port = self.settings.kafka_bootstrap.split(",")[0].rpartition(":")
        return Endpoint(host or "127.0.0.1", int(port))

    @property
    def controller(self) -> Endpoint:
        """The KRaft controller's listener: the broker's port + 1."""
        return Endpoint(self.endpoint.host, self.endpoint.port + 1)

    def listens(self) -> list[tuple[Endpoint, str]]:
        # The controller's port too: taken, the broker would exit after starting, its cause
        # deep in server.log.
        return [(self.endpoint, ""), (self.controller, " (the KRaft controller's, the broker's port + 1)")]

    @property
    def libs(self) -> Path:
        return self.home / "libs"

    @property
    def config_file(self) -> Path:
        return self.home / "config" / "server.properties"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    def prepare(self) -> None:
        if shutil.which("java") is None:
            raise ServiceError("kafka: Java is missing; install a JDK 17 (Debian: apt-get install openjdk-17-jre-headless)")
        self.check_heap()
        _check_disk(self.settings.services_dir)
        self.fetch_jars()
        self.write_config()
        if not (self.data_dir / "meta.properties").exists():
            self.format_storage()

    @property
    def fetched(self) -> Path:
        """Written once Maven has copied every jar: a copy it did not finish (interrupted, disk
        full) has none, and is fetched again instead of failing at every start."""
        return self.libs / f".fetched-{KAFKA_VERSION}"

    def fetch_jars(self) -> None:
        if self.fetched.exists():
            return
        if shutil.which("mvn") is None:
            raise ServiceError("kafka: Maven (mvn) is missing; it fetches the broker's jars (Debian: apt-get install maven)")
        # From an empty folder: Maven keeps a jar already there (a truncated one too), and every
        # jar there is on the broker's classpath (another Kafka version's too).
        shutil.rmtree(self.libs, ignore_errors=True)
        self.libs.mkdir(parents=True)
        log = self.home / "logs" / "maven.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as out:
            result = subprocess.run(
                ["mvn", "-B", "-q", "-f", str(POM), "dependency:copy-dependencies",
                 f"-DoutputDirectory={self.libs}", "-DincludeScope=runtime"],
                stdout=out, stderr=subprocess.STDOUT, check=False,
            )
        if result.returncode != 0 or not (self.libs / f"kafka_2.13-{KAFKA_VERSION}.jar").exists():
            text = log.read_text(errors="replace")
            cause = "Maven Central unreachable" if ("resolve" in text or "transfer" in text.lower()) else "Maven failed"
            raise ServiceError(f"kafka: could not fetch the broker's jars ({cause}); log: {log}")
        self.fetched.write_text(f"{POM}\n")

    def write_config(self) -> None:
        ep, controller = self.endpoint, self.controller
        self.config_file.parent.mkdir(parents=True, exist_ok=True)
        (self.home / "logs").mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(
            "\n".join([
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@{controller}",
                f"listeners=PLAINTEXT://{ep},CONTROLLER://{controller}",
                f"advertised.listeners=PLAINTEXT://{ep}",
                "controller.listener.names=CONTROLLER",
                "inter.broker.listener.name=PLAINTEXT",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                f"log.dirs={self.data_dir}",
                f"num.partitions={self.settings.partitions}",
                # One broker: every internal topic has one replica, and transactions work.
                "offsets.topic.replication.factor=1",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "default.replication.factor=1",
                "min.insync.replicas=1",
                # Consumers join at once instead of waiting 3 s for more members.
                "group.initial.rebalance.delay.ms=0",
                # Topics come from `leadstream topics` (and Faust for its changelogs), never by accident.
                "auto.create.topics.enable=false",
                # The events topic's retention, which the profiles topic's compaction lag follows.
                f"log.retention.ms={EVENTS_RETENTION_MS}",
                "log.segment.bytes=67108864",
                "log.cleaner.dedupe.buffer.size=33554432",
                "",
            ])
        )
        (self.home / "config" / "log4j.properties").write_text(
            "\n".join([
                "log4j.rootLogger=INFO, file",
                "log4j.appender.file=org.apache.log4j.RollingFileAppender",
                f"log4j.appender.file.File={self.home / 'logs' / 'server.log'}",
                "log4j.appender.file.MaxFileSize=20MB",
                "log4j.appender.file.MaxBackupIndex=3",
                "log4j.appender.file.layout=org.apache.log4j.PatternLayout",
                "log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n",
                "log4j.logger.kafka=INFO",
                "log4j.logger.org.apache.kafka=INFO",
                "",
            ])
        )

    def check_heap(self) -> None:
        """Refuses a heap beyond this machine's memory: java took -Xmx200g on a machine of 23 GiB,
        the broker free to grow until the system killed it, and refused -Xmx1000000g with a line
        ("Could not reserve enough space") that named no setting."""
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        if heap_bytes(self.settings.kafka_heap) > memory:
            raise ServiceError(f"kafka: LEADSTREAM_KAFKA_HEAP={self.settings.kafka_heap} is more than this machine's "
                               f"{memory / 2**30:.1f} GiB of memory: give the broker less (1g by default)")

    def java(self, main_class: str, *args: str) -> list[str]:
        return [
            "java",
            f"-Xmx{self.settings.kafka_heap}",
            f"-Xms{MIN_KAFKA_HEAP_MB}m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{self.home / 'config' / 'log4j.properties'}",
            "-cp",
            str(self.libs / "*"),
            main_class,
            *args,
        ]

    def format_storage(self) -> None:
        result = subprocess.run(
            self.java("kafka.tools.StorageTool", "format", "-t", new_cluster_id(), "-c", str(self.config_file)),
            capture_output=True, text=True, check=False,
        )
        if result.returncode != 0:
            lines = (result.stderr or result.stdout).strip().splitlines() or ["no output"]
            raise ServiceError(f"kafka: formatting the storage in {self.data_dir} failed: {lines[-1]}")

    def command(self) -> list[str]:
        return self.java("kafka.Kafka", str(self.config_file))

    def answers(self) -> bool:
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        if not _port_in_use(self.endpoint):
            return False
        try:
            # Within LEADSTREAM_KAFKA_CONNECT_TIMEOUT_S: a port that accepts connections but does not
            # answer (a hung broker, another program) held `status` and `up` for kafka-python's 30 s.
            admin = open_client(self.settings.with_overrides(kafka_bootstrap=str(self.endpoint)), KafkaAdminClient,
                                request_timeout_ms=3000, client_id="leadstream-services")
        except (ServiceError, OSError, ValueError):
            return False
        try:
            return bool(admin.describe_cluster().get("brokers"))
        except (KafkaError, OSError, ValueError):
            return False
        finally:
            admin.close()

    @property
    def logs(self) -> list[Path]:
        # The broker logs through log4j into server.log; its output (kafka.out) only has what
        # the JVM says before that (a bad -Xmx, a missing class).
        return [self.home / "logs" / "server.log", self.log_file]

    def last_log_line(self) -> tuple[str, Path]:
        line, log = super().last_log_line()
        if "Address already in use" in line:
            return f"port taken ({line})", log
        return line, log


def apt_get(args: list[str], out: IO[bytes], cwd: Path | None = None) -> int:
    """`apt-get ARGS`'s exit status, its output to `out`, never asking a question (what the
    project installs or fetches with it: redis-server, and promtool for the tests)."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(["apt-get", *args], cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env, check=False).returncode


#: How leadstream's Redis keeps what it is given (docker-compose.yml runs it with the same): the
#: erasure records (streams/forgotten.py) and the connectors' delivered ids must survive a crash
#: and never be evicted, or a connector delivers a forgotten lead's crossing, or one delivered
#: already. Every write reaches the append-only file within a second; snapshots ("60 1000") left
#: a quiet Redis's writes in memory alone until a clean shutdown. README: What Redis leadstream needs.
REDIS_DURABILITY_ARGS = ("--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--maxmemory-policy", "noeviction")


class Redis(Service):
    name = "redis"
    setting = "LEADSTREAM_REDIS_URL"

    @property
    def endpoint(self) -> Endpoint:
        url = urlparse(self.settings.redis_url)
        return Endpoint(url.hostname or "127.0.0.1", url.port or 6379)

    def prepare(self) -> None:
        _check_disk(self.settings.services_dir)
        (self.home / "data").mkdir(parents=True, exist_ok=True)
        if shutil.which("redis-server"):
            return
        if os.geteuid() != 0:
            raise ServiceError("redis: redis-server is missing; install it (Debian: sudo apt-get install redis-server)")
        log = self.home / "logs" / "apt.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as out:
            for cmd in (["update", "-q"], ["install", "-y", "-q", "redis-server"]):
                if apt_get(cmd, out) != 0:
                    raise ServiceError(f"redis: `apt-get {' '.join(cmd)}` failed; log: {log}")
        if shutil.which("redis-server") is None:
            raise ServiceError(f"redis: apt-get installed no redis-server binary; log: {log}")

    def command(self) -> list[str]:
        ep = self.endpoint
        return [
            "redis-server",
            "--bind", ep.host,
            "--port", str(ep.port),
            "--dir", str(self.home / "data"),
            "--daemonize", "no",
            *REDIS_DURABILITY_ARGS,
            "--protected-mode", "yes",
        ]

    def answers(self) -> bool:
        return self._ping() is None

    def refusal(self) -> str | None:
        import redis

        failed = self._ping()
        if isinstance(failed, (redis.AuthenticationError, redis.exceptions.NoPermissionError)):
            # `status` called such a Redis "not running", `up` a stranger holding the port.
            return redis_trouble(failed, self.settings.redis_url)
        return None

    def _ping(self) -> Exception | None:
        """Why a PING of LEADSTREAM_REDIS_URL failed, or None when it was answered."""
        import redis

        try:
            # With the URL's password (and TLS, rediss://): a Redis that asks for one refused a bare
            # PING, so `up` called one of the user's own "taken by another process" and `status` said
            # it did not answer.
            client = redis.Redis.from_url(self.settings.redis_url, socket_timeout=1, socket_connect_timeout=1)
            try:
                client.ping()
            finally:
                client.close()
        except (redis.RedisError, OSError) as exc:
            return exc
        return None


def new_cluster_id() -> str:
    """A random KRaft cluster id (base64 of a UUID) that does not start with '-': the storage
    tool would read such an id as an option and refuse to format (Kafka's own
    Uuid.randomUuid() draws again for the same reason); one id in 64 did that here."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def all_services(settings: Settings) -> list[Service]:
    return [Kafka(settings), Redis(settings)]


def up(settings: Settings) -> list[str]:
    return [service.up() for service in all_services(settings)]


def down(settings: Settings) -> list[str]:
    lines = stop_all(settings)
    return lines + [service.down() for service in reversed(all_services(settings))]


def status(settings: Settings) -> list[str]:
    return [service.status() for service in all_services(settings)] + status_all(settings)


def main(action: str, settings: Settings) -> int:
    if action == "up":
        started = time.monotonic()
        for line in up(settings):
            print(line)
        from streams.topics import ensure_topics

        for line in ensure_topics(settings):
            print(line)
        print(f"services ready in {time.monotonic() - started:.1f} s")
    elif action == "down":
        for line in down(settings):
            print(line)
    else:
        for line in status(settings):
            print(line)
        # As `systemctl is-active`: a script can tell whether the services answer.
        return 0 if all(service.answers() for service in all_services(settings)) else 1
    return 0


def _port_in_use(ep: Endpoint) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((ep.host, ep.port)) == 0


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _check_disk(path: Path) -> None:
    # The services directory, made by the first service prepared: its owner's alone. Kafka's log
    # segments (every event, trait and crossing), Redis's append-only file and the processes' logs
    # were readable by every user of the machine (directories 755, files 644).
    make_setting_dir(path, "LEADSTREAM_SERVICES_DIR", mode=0o700)
    free = shutil.disk_usage(path).free
    if free < MIN_FREE_DISK_BYTES:
        raise ServiceError(f"disk full: only {free // (1024 * 1024)} MiB free under {path}; free some space")
