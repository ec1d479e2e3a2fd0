"""Every knob of leadstream, read from environment variables, with defaults that work locally.

Each setting is declared once here: its type, its environment variable, its default and what it
does. The README's configuration table lists the same variables (a test keeps the two in step).
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import Field, dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping
from urllib.parse import urlsplit

from scoring.config import did_you_mean
from scoring.events import MAX_TIME_MS, MIN_TIME_MS
from streams.addresses import is_address
from streams.errors import ConfigError

if TYPE_CHECKING:
    from scoring import Event

PROJECT_ROOT = Path(__file__).resolve().parent.parent
#: Whether leadstream runs from a source tree (a clone, an sdist), not from a wheel installed by
#: pip, whose PROJECT_ROOT is site-packages: pip's files, replaced by the next install.
SOURCE_TREE = (PROJECT_ROOT / "pyproject.toml").is_file()


def _local_home() -> Path:
    """Where `leadstream services` and the worker keep their files by default: a source tree's
    git-ignored .services/ (`make demo`, the tests); else the user's data directory. Installed
    from a wheel, PROJECT_ROOT is site-packages, where the broker's jars, Kafka's and Redis's data
    and the worker's state went among pip's files (not writable at all for a user of a system-wide
    install)."""
    if SOURCE_TREE:
        return PROJECT_ROOT / ".services"
    data_home = os.environ.get("XDG_DATA_HOME", "")  # the XDG spec: a relative value is ignored
    return (Path(data_home) if os.path.isabs(data_home) else Path.home() / ".local" / "share") / "leadstream"


LOCAL_HOME = _local_home()


def make_setting_dir(path: Path, variable: str, mode: int = 0o777) -> None:
    """Make the directory a setting names, its parents too, or say in one line which setting to
    change: the system's refusal alone ("Permission denied: .../.services") named neither."""
    try:
        path.mkdir(mode=mode, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {variable}={path} ({exc.strerror or exc}): "
                          "set it to a directory this user can create and write") from None
    if not os.access(path, os.W_OK | os.X_OK):  # one that exists, another user's
        raise ConfigError(f"cannot write {variable}={path} (Permission denied): set it to a directory this user can create and write")

#: The Apache Kafka version `leadstream services up` runs (streams/kafka.pom.xml pins the same one,
#: and docker-compose.yml uses the apache/kafka image of this version).
KAFKA_VERSION = "3.9.1"


#: What a setting's value must be: None when it is fine, else what is expected instead
#: ("an integer of at least 1"), for the message naming the variable.
Check = Callable[[Any], "str | None"]


def _setting(env: str, default: Any, doc: str, check: Check | None = None, secret: bool = False) -> Any:
    """`secret`: a value a message refusing it must not repeat (it may hold a credential)."""
    return field(default=default, metadata={"env": env, "doc": doc, "check": check, "secret": secret})


#: The largest integer setting, unless one says otherwise: Kafka's clients send timeouts, waits
#: and partition counts as 32-bit integers, and C (the collector's gc threshold) takes no more;
#: a larger one failed far from its variable, or stalled a process that still said it was ready.
INT32_MAX = 2**31 - 1
#: The most deliveries a connector runs at once: each is a thread, and its HTTP pool is made with
#: a slot for each (urllib3 fills it at the first request): 20,000,000 took 12 s and 220 MB
#: before the first delivery, 2,147,483,647 would take some 20 GB.
MAX_SINK_CONCURRENCY = 1000
#: The longest LEADSTREAM_FETCH_MAX_WAIT_MS: Faust's consumer gives up on a request after 90 s
#: (broker_request_timeout), and a fetch the broker held 120 s timed out each time ("Failed fetch
#: messages ... RequestTimedOutError"): the worker never got ready, nor scored an event sent.
MAX_FETCH_WAIT_MS = 60_000
#: The most partitions LEADSTREAM_PARTITIONS gives a topic: Kafka 3.9's controller creates a topic
#: in one operation of at most 10,000 metadata records (one for the topic, one a partition, one a
#: setting) and refuses a larger one ("Excessively large number of partitions per request",
#: ReplicationControlManager); a round figure below that, with room for the topics' settings.
MAX_PARTITIONS = 9_000
#: The local broker's heap starts at this size (-Xms; streams/services.py): java refused a smaller
#: maximum heap ("Initial heap size set to a larger value than the maximum heap size").
MIN_KAFKA_HEAP_MB = 256
#: Bounds of the settings that are spans of time in milliseconds beyond 24 days (a clock offset).
YEARS_100_MS = 100 * 366 * 86_400_000


def whole_number(text: str) -> int | None:
    """`text` as an integer if it is written as the rest of a deployment writes one (the digits
    0-9, a minus before them for a negative one), else None. Python's int() also takes 1_000, +5,
    " 5 " and the digits of other scripts ("\u0665"): a value a shell test, Kafka or a YAML
    file reads otherwise or refuses, taken here as a number the user may not have meant."""
    return int(text) if re.fullmatch(r"-?[0-9]+", text) else None


def _at_least(minimum: int, maximum: int = INT32_MAX) -> Check:
    return lambda value: None if minimum <= value <= maximum else f"an integer from {minimum} to {maximum}"


def _port(value: int) -> str | None:
    return None if 1 <= value <= 65535 else "a TCP port (1 to 65535)"


def _flag(value: int) -> str | None:
    return None if value in (0, 1) else "0 or 1"


def _log_level(value: str) -> str | None:
    # Any case: the processes give it upper-cased to logging.
    return None if value.lower() in LOG_LEVELS else f"one of {', '.join(LOG_LEVELS)}"


def _host_ports(value: str) -> str | None:
    # Kafka clients and `services up` read a port from every server; a missing one fails later
    # with a traceback far from the variable.
    for server in value.split(","):
        host, _, port = server.strip().rpartition(":")
        # A scheme (PLAINTEXT://kafka:9092, as the broker's `listeners` write it) kafka-python drops,
        # so `topics` and `send` ran, while the worker failed with a traceback, its host "PLAINTEXT".
        if _host(host.removeprefix("[").removesuffix("]")) is not None or not port.isdigit() or _port(int(port)) is not None:
            return "host:port servers, comma separated (e.g. 127.0.0.1:9092)"
    return None


def _redis_url(value: str) -> str | None:
    try:
        url = urlsplit(value)  # raises on brackets that hold no IPv6 address
        url.port  # noqa: B018 - raises on a port out of range
    except ValueError:
        return "a Redis URL with a host and a port from 1 to 65535 (e.g. redis://127.0.0.1:6379/0)"
    if url.scheme == "unix":
        return _redis_options(value) if url.path else "a Redis URL (e.g. unix:///run/redis.sock)"
    # redis-py takes a database that is no number, and a URL without a host, for database 0 on localhost.
    if url.scheme not in ("redis", "rediss") or not url.hostname or not re.fullmatch(r"(/[0-9]*)?", url.path):
        return "a Redis URL with a host and, after it, a database number (e.g. redis://127.0.0.1:6379/0)"
    return _redis_options(value)


def _redis_options(value: str) -> str | None:
    # redis-py gives a URL's query (?socket_timeout=5) to its connections as arguments: a name it
    # has no argument for (?sockettimeout=5) or a value it cannot read (?socket_timeout=abc) failed
    # with a TypeError or ValueError traceback at the first command. Making a connection object,
    # which does not connect, checks them. Imported here: the command line imports settings cheaply.
    from redis import ConnectionPool, RedisError

    try:
        pool = ConnectionPool.from_url(value)
        pool.make_connection()
    except (TypeError, ValueError, RedisError) as exc:
        return f"a Redis URL whose query holds options redis-py takes, with values it reads ({exc})"
    pool.disconnect()
    return None


def _topic(value: str) -> str | None:
    # Kafka's own rule; a name it refuses failed with a traceback from the admin client or Faust.
    if re.fullmatch(r"[A-Za-z0-9._-]{1,249}", value) and value not in (".", ".."):
        return None
    return "a Kafka topic name: 1 to 249 letters, digits, '.', '_' or '-', other than '.' and '..'"


def _topic_with_dead_letters(suffix: str) -> Check:
    """A topic the connectors read: each dead-letters to its name and `suffix` (sinks/runner.py
    dlq_topic), which Kafka refused beyond 249 characters with a traceback as the connector started."""
    longest = 249 - len(suffix)

    def check(value: str) -> str | None:
        expected = _topic(value)
        if expected is None and len(value) > longest:
            return f"a Kafka topic name of at most {longest} characters (the connectors' dead-letter topics add {suffix!r})"
        return expected

    return check


def _colliding_topics(settings: Settings) -> None:
    """Refuses two settings naming one topic. The same name mixes two kinds of record in it
    (a dead-letter topic that is the events topic had the worker reject its own letters, each
    wrapping the last, filling the broker's disk); names that differ only by '.' and '_' Kafka
    takes for the same topic, and it refused to create the second with a traceback."""
    seen: dict[str, Field[Any]] = {}
    for f in fields(settings):
        if not f.name.startswith("topic_"):
            continue
        name = getattr(settings, f.name)
        first = seen.setdefault(name.replace(".", "_"), f)
        if first is f:
            continue
        first_name = getattr(settings, first.name)
        clash = "both name" if first_name == name else "differ only by '.' and '_', which Kafka takes for"
        raise ConfigError(f"{first.metadata['env']}={first_name!r} and {f.metadata['env']}={name!r} {clash} the same topic: "
                          "each needs a topic of its own")


def _colliding_ports(settings: Settings) -> None:
    """Refuses the collector's public port as its probes' too (the one process listening on two
    ports; the worker and each connector listen on one): its second listen failed, saying another
    process held the port, a second copy of the collector perhaps, though the port was free."""
    if settings.collector_port == settings.collector_metrics_port:
        raise ConfigError(f"LEADSTREAM_COLLECTOR_PORT and LEADSTREAM_COLLECTOR_METRICS_PORT are both {settings.collector_port}: "
                          "the collector listens on both, its calls and its probes apart, so each needs a port of its own")


def _clock_outside_event_times(settings: Settings) -> None:
    """Refuses a LEADSTREAM_CLOCK_OFFSET_MS that moves the clock out of the years event times are
    taken in: the collector timed each call without a timestamp by it and answered every one 400
    bad_field "outside years 2000-2099", which no client could mend."""
    now_ms = settings.now_ms()
    if not MIN_TIME_MS <= now_ms < MAX_TIME_MS:
        moved = datetime.fromtimestamp(now_ms / 1000, timezone.utc).isoformat(timespec="seconds")
        raise ConfigError(f"LEADSTREAM_CLOCK_OFFSET_MS={settings.clock_offset_ms} moves the clock to {moved}, outside the "
                          "years 2000-2099 that event times are taken in: give an offset that keeps it inside them")


def _app_id(value: str) -> str | None:
    # It begins the names of the changelog topics and of the consumer groups.
    return None if re.fullmatch(r"[A-Za-z0-9._-]{1,200}", value) else "1 to 200 letters, digits, '.', '_' or '-' (it begins topic names)"


def _http_url(value: str) -> str | None:
    # requests refuses a URL it cannot send to only when it sends: each crossing would be
    # retried as if the receiver had not answered, then dead-lettered, and the connector would
    # not say why on start.
    if re.search(r"[\x00-\x1f\x7f]", value):  # urlsplit drops tabs and line breaks; requests sends them
        return "an http(s) URL without control characters (a tab or a line break)"
    try:
        url = urlsplit(value)  # raises on brackets that hold no IPv6 address
        port = url.port  # raises on a port that is no number or out of range; 0 it takes
    except ValueError:
        port = 0
    if port == 0:
        return "an http(s) URL with a valid host and a port from 1 to 65535"
    if url.scheme.lower() not in ("http", "https") or not url.hostname:
        return "an http(s) URL with a host, such as https://host.example.com/path"
    if not _host_name(url.hostname):
        return "an http(s) URL whose host is a name or an IP address"
    return None


def _host_name(host: str) -> bool:
    """Whether a URL's host (brackets taken off) is one urllib3 connects to: no blank, and labels
    of 1 to 63 characters once IDNA-encoded (which urllib3 checks only as it connects)."""
    if is_address(host):
        return True
    if " " in host or host.startswith("*"):
        return False
    try:
        host.encode("idna")
    except UnicodeError:
        return False
    return True


def _host(value: str) -> str | None:
    # Written into a URL (the worker's canonical_url): a scheme, a port or brackets would make it no host.
    return None if is_address(value) or re.fullmatch(r"[A-Za-z0-9_.-]+", value) else "a host name or an IP address"


def _token(value: str) -> str | None:
    # Sent in an HTTP header (Authorization: Bearer): one with a character beyond Latin-1 (a dash
    # pasted as '–') failed every request as it was sent, each crossing retried and dead-lettered
    # as a "malformed answer" while the connector said it was ready; a space or line break alike.
    return None if re.fullmatch(r"[!-~]+", value) else "a token of printable ASCII characters, without spaces, as the CRM issues it"


def heap_bytes(value: str) -> int:
    """A Java heap size as java's -Xmx reads it (a number of bytes with an optional k, m or g), in bytes."""
    unit = value[-1].lower() if value[-1] in "kKmMgG" else ""
    return int(value.removesuffix(value[-1]) if unit else value) * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}[unit]


def _heap(value: str) -> str | None:
    if not re.fullmatch(r"[1-9][0-9]*[kKmMgG]?", value):
        return "a Java heap size (e.g. 1g or 512m)"
    if heap_bytes(value) < MIN_KAFKA_HEAP_MB * 2**20:
        return f"a Java heap size of {MIN_KAFKA_HEAP_MB}m or more, the heap the broker starts with"
    return None


def _salesforce_version(value: str) -> str | None:
    # simple-salesforce puts a v before it: Salesforce's own spelling, v59.0, made every request
    # go to /services/data/vv59.0/, a 404 each crossing was dead-lettered for as permanent.
    return None if re.fullmatch(r"[0-9]+\.[0-9]+", value) else "a Salesforce API version: digits.digits without a v (e.g. 59.0)"


LOG_LEVELS = ("debug", "info", "warning", "error")
NON_NEGATIVE = _at_least(0)
POSITIVE = _at_least(1)


@dataclass(frozen=True)
class FutureLimit:
    """LEADSTREAM_MAX_FUTURE_MS at one reading of a clock: events timed after `horizon_ms` are
    refused, and `ahead` says by how much, alike in the worker, the collector and `score`."""

    #: The clock's reading, LEADSTREAM_CLOCK_OFFSET_MS included
    now_ms: int
    #: Whose clock it is, for messages ("the worker's clock")
    whose: str
    max_future_ms: int
    clock_offset_ms: int

    @property
    def horizon_ms(self) -> float:
        """The latest event time taken (no bound when LEADSTREAM_MAX_FUTURE_MS is 0)."""
        return self.now_ms + self.max_future_ms if self.max_future_ms > 0 else float("inf")

    def ahead(self, time_ms: int) -> str:
        """How far a time beyond the horizon is ahead of the clock. An offset clock is named with
        its offset and reading: an event behind the wall clock is ahead of one moved back, and a
        message naming the clock alone sends the reader to compare with the wrong one."""
        clock = self.whose
        if self.clock_offset_ms:
            reading = datetime.fromtimestamp(self.now_ms / 1000, timezone.utc).isoformat(timespec="seconds")
            clock += f" (the wall clock moved by LEADSTREAM_CLOCK_OFFSET_MS={self.clock_offset_ms}, reading {reading})"
        return (f"{(time_ms - self.now_ms) / 1000:,.0f} s ahead of {clock}, more than the "
                f"{self.max_future_ms / 1000:,.0f} s LEADSTREAM_MAX_FUTURE_MS allows")

    def refusal(self, event: Event) -> str:
        """Why an event beyond the horizon is refused: its time, and `ahead`."""
        at = datetime.fromtimestamp(event.time_ms / 1000, timezone.utc).isoformat(timespec="seconds")
        return f"event {event.event_id!r} of lead {event.lead_id!r} is timed {at}, {self.ahead(event.time_ms)}"


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap: str = _setting(
        "LEADSTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:9092", "Kafka bootstrap servers (host:port, comma separated).", _host_ports,
    )
    kafka_connect_timeout_s: int = _setting(
        "LEADSTREAM_KAFKA_CONNECT_TIMEOUT_S", 5,
        "How long the commands that talk to Kafka (`topics`, `send`, `forget`, `history`, `replay-dlq`, `services up` and `status`), the worker and the connectors as they start, and their lag metrics, wait for the broker's first answer before saying it cannot be reached; and how long a connector asks its Redis again as it starts before saying so.",
        POSITIVE,
    )
    redis_url: str = _setting("LEADSTREAM_REDIS_URL", "redis://127.0.0.1:6379/0", "Redis used by the sinks and the read model.", _redis_url,
                              secret=True)  # redis://user:password@host
    app_id: str = _setting(
        "LEADSTREAM_APP_ID", "leadstream", "Faust application id: names the consumer group and the changelog topics.", _app_id,
    )
    topic_events: str = _setting("LEADSTREAM_TOPIC_EVENTS", "leadstream-events", "Raw behavioural events, keyed by lead id.", _topic)
    topic_profiles: str = _setting(
        "LEADSTREAM_TOPIC_PROFILES", "leadstream-profiles", "Lead trait (profile) updates, keyed by lead id.", _topic)
    topic_crossings: str = _setting(
        "LEADSTREAM_TOPIC_CROSSINGS", "leadstream-crossings", "Sink topic: threshold crossings, keyed by lead id.",
        _topic_with_dead_letters("-dlq-salesforce"))  # the longest of the CRM connectors'
    topic_scores: str = _setting(
        "LEADSTREAM_TOPIC_SCORES", "leadstream-scores", "Score changes for read models (compacted), keyed by model and lead.",
        _topic_with_dead_letters("-dlq-redis"))
    topic_accounts: str = _setting(
        "LEADSTREAM_TOPIC_ACCOUNTS", "leadstream-accounts", "Member score updates re-keyed by account for roll-ups.", _topic)
    topic_identity: str = _setting(
        "LEADSTREAM_TOPIC_IDENTITY", "leadstream-identity", "Identity links and merges (stitching), keyed by the id re-keyed from or into.", _topic)
    topic_deadletter: str = _setting(
        "LEADSTREAM_TOPIC_DEADLETTER", "leadstream-deadletter", "Rejected input: original bytes, reason, source offset.", _topic)
    partitions: int = _setting(
        "LEADSTREAM_PARTITIONS", 4, "Partitions of every topic leadstream creates, and those a lead's partition is found by "
        "(murmur2 of its id, modulo this): topics of another count are refused (Changing the partition count). "
        f"{MAX_PARTITIONS:,} at most: Kafka refuses to create a topic of many more.", _at_least(1, MAX_PARTITIONS))
    models_dir: Path = _setting(
        "LEADSTREAM_MODELS_DIR", PROJECT_ROOT / "scoring" / "models", "Directory of scoring model files (*.toml; hidden files, such as an editor's `.#b2b.toml`, are not models)."
    )
    state_dir: Path = _setting(
        "LEADSTREAM_STATE_DIR",
        LOCAL_HOME / "worker",
        "Faust's data directory (its own metadata; the lead and account tables are held in memory and rebuilt from their "
        "changelogs at start).",
    )
    services_dir: Path = _setting(
        "LEADSTREAM_SERVICES_DIR",
        LOCAL_HOME,
        "Where `leadstream services` keeps the broker jars, data, logs and pid files (and the tests their promtool). "
        "`<project>` is a source checkout; a leadstream installed with pip uses `$XDG_DATA_HOME/leadstream` "
        "(`~/.local/share/leadstream`) instead, and its `worker/` for LEADSTREAM_STATE_DIR.",
    )
    kafka_heap: str = _setting(
        "LEADSTREAM_KAFKA_HEAP", "1g", f"Maximum Java heap of the local Kafka broker: from {MIN_KAFKA_HEAP_MB}m, the heap it starts "
        "with, to this machine's memory (`services up` refuses more).", _heap)
    bind_host: str = _setting(
        "LEADSTREAM_BIND_HOST", "127.0.0.1", "Address the worker's web views and the sinks' and collector's probes listen on, IPv4 or IPv6 (0.0.0.0 in containers).",
        _host,
    )
    advertised_host: str = _setting(
        "LEADSTREAM_ADVERTISED_HOST",
        "",
        "Host other workers reach this worker's web views at, to forward it requests for the leads and accounts it owns: a "
        "name or address of this machine, container or pod. Empty: LEADSTREAM_BIND_HOST, or this machine's host name "
        "when that is every address (0.0.0.0, ::).",
        _host,
    )
    worker_port: int = _setting("LEADSTREAM_WORKER_PORT", 6066, "HTTP port of the worker's web views (scores, health).", _port)
    idle_timeout_ms: int = _setting(
        "LEADSTREAM_IDLE_TIMEOUT_MS", 75000,
        "Longest a connection to a port on LEADSTREAM_BIND_HOST (the worker's web views, the sinks' and collector's probes) "
        "may stay without a whole request's headers (idle between requests, or sending its headers) before it is closed; "
        "keep it above the idle timeout of a proxy or load balancer in front (60 s on AWS).",
        POSITIVE,
    )
    collector_port: int = _setting("LEADSTREAM_COLLECTOR_PORT", 8088, "HTTP port of the Segment-compatible collector.", _port)
    collector_host: str = _setting(
        "LEADSTREAM_COLLECTOR_HOST", "127.0.0.1", "Address the collector listens on (0.0.0.0 to serve other machines).", _host,
    )
    collector_write_keys: str = _setting(
        "LEADSTREAM_COLLECTOR_WRITE_KEYS",
        "",
        "The collector's write keys: a path to a *.toml file of sources, or inline `key=source,key2=source2` (`key=source:product` gives the source's events a product; a key holding `=` or `,` goes in a file, and no key may hold `:`, which HTTP Basic cannot carry).",
    )
    collector_event_names: str = _setting(
        "LEADSTREAM_COLLECTOR_EVENT_NAMES",
        "snake_case",
        "How the collector names track events: snake_case (\"Pricing Viewed\" -> pricing_viewed) or verbatim.",
    )
    collector_ack_timeout_ms: int = _setting(
        "LEADSTREAM_COLLECTOR_ACK_TIMEOUT_MS", 5000, "Longest the collector waits for Kafka's ack before answering 503.",
        POSITIVE,
    )
    collector_max_in_flight_bytes: int = _setting(
        "LEADSTREAM_COLLECTOR_MAX_IN_FLIGHT_BYTES",
        64 * 1024 * 1024,
        "Bytes of events awaiting Kafka's ack beyond which the collector answers 503 instead of buffering (400 too_large to a request over it alone).",
        POSITIVE,
    )
    collector_max_parsing_bytes: int = _setting(
        "LEADSTREAM_COLLECTOR_MAX_PARSING_BYTES",
        8 * 1024 * 1024,
        "Bytes of request bodies the collector reads, parses, maps and writes at once (a body takes up to ~70 times its size "
        "in memory meanwhile); later requests wait their turn, their bodies unread, up to LEADSTREAM_COLLECTOR_ACK_TIMEOUT_MS, "
        "then get 503.",
        POSITIVE,
    )
    collector_body_timeout_ms: int = _setting(
        "LEADSTREAM_COLLECTOR_BODY_TIMEOUT_MS", 10000, "Longest a client may take to send a request body (then 408).",
        POSITIVE,
    )
    collector_idle_timeout_ms: int = _setting(
        "LEADSTREAM_COLLECTOR_IDLE_TIMEOUT_MS", 75000,
        "Longest a connection to the collector may stay without a whole request's headers (idle between requests, or "
        "sending its headers) before it is closed; keep it above the idle timeout of a load balancer in front (60 s on AWS).",
        POSITIVE,
    )
    collector_max_connections: int = _setting(
        "LEADSTREAM_COLLECTOR_MAX_CONNECTIONS", 1024,
        "Connections the collector serves at once; one more is closed as soon as it is accepted. Browsers keep a "
        "connection open between calls, so a page-facing collector needs one per visitor active lately. Each may hold up "
        "to ~1.2 MB while its headers arrive (64 lines of 8 KB, parsed), so this bounds that memory (1000 such clients "
        "took the collector to 1.2 GB; 256 of them, to 470 MB).",
        POSITIVE,
    )
    collector_metrics_port: int = _setting(
        "LEADSTREAM_COLLECTOR_METRICS_PORT",
        9465,
        "Port of the collector's /metrics, /healthz and /readyz on LEADSTREAM_BIND_HOST (apart from its public port).",
        _port,
    )
    metrics_port: int = _setting("LEADSTREAM_METRICS_PORT", 9464, "Port of /metrics, /healthz and /readyz on sink processes.", _port)
    batch_max_messages: int = _setting(
        "LEADSTREAM_BATCH_MAX_MESSAGES", 500, "Most Kafka messages the worker scores in one batch.",
        POSITIVE,
    )
    batch_max_bytes: int = _setting(
        "LEADSTREAM_BATCH_MAX_BYTES", 8 * 1024 * 1024,
        "Most bytes of Kafka message values the worker scores in one batch (a larger message is a batch alone). Scoring a "
        "batch holds the worker's event loop, 1-5 s here for 8 MiB (48k events of the benchmark's); 500 envelopes of ~1 MB "
        "held it long enough for the last batch's writes to time out, and the worker stopped (streams/batching.py).",
        POSITIVE,
    )
    batch_within_ms: int = _setting(
        "LEADSTREAM_BATCH_WITHIN_MS", 20, "Longest the worker waits to fill a batch before scoring it.",
        NON_NEGATIVE,
    )
    fetch_max_wait_ms: int = _setting(
        "LEADSTREAM_FETCH_MAX_WAIT_MS", 50,
        "Longest the broker holds the worker's fetch when it has nothing new (Faust's fixed 1,500 ms stalled the worker; streams/fetch_wait.py). "
        f"{MAX_FETCH_WAIT_MS:,} at most: the worker waits 90 s for a fetch's answer.",
        _at_least(0, MAX_FETCH_WAIT_MS),
    )
    live_leads: int = _setting(
        "LEADSTREAM_LIVE_LEADS", 200000,
        "Most leads whose states the worker keeps as objects between batches, the most recently used (a few KB each); the others stay as bytes, decoded when read.",
        POSITIVE,
    )
    gc_young_threshold: int = _setting(
        "LEADSTREAM_GC_YOUNG_THRESHOLD", 50000,
        "Allocations between young garbage collections of the worker (none during a batch) and of `score` and `review` (0: Python's default, 700).",
        NON_NEGATIVE,
    )
    models_reload_s: int = _setting(
        "LEADSTREAM_MODELS_RELOAD_S", 5,
        "How often the worker looks for edits of the model files; an edit is taken up at the look after the one that found it, if the files "
        "have not changed since (none is loaded half-written), or at the tenth look in a row that finds them changed, if "
        "they do not change while they load, and applied between two batches when it loads (0: only at start).",
        NON_NEGATIVE,
    )
    decay_interval_s: int = _setting(
        "LEADSTREAM_DECAY_INTERVAL_S", 5, "How often the worker applies the decay steps that are due.",
        POSITIVE,
    )
    empty_account_retention_ms: int = _setting(
        "LEADSTREAM_EMPTY_ACCOUNT_RETENTION_MS", 30 * 86_400_000,
        "How long (30 days by default) an account whose last member left is kept when it has crossed a line: its level and "
        "crossing count, for a member that joins again. Counted in its members' event time (the newest the worker's account "
        "stage took); then it is removed from the account table, with a tombstone on its changelog, and a member joining it "
        "later starts a new account. One that never crossed is removed at once; 0 removes every one at once.",
        _at_least(0, YEARS_100_MS),
    )
    clock_offset_ms: int = _setting(
        "LEADSTREAM_CLOCK_OFFSET_MS", 0, "Added to the wall clock of the worker (decay, the future limit) and the collector (arrival times) and to `score`'s future limit: tests and replays of old data.",
        _at_least(-YEARS_100_MS, YEARS_100_MS),
    )
    max_future_ms: int = _setting(
        "LEADSTREAM_MAX_FUTURE_MS", 3_600_000,
        "Events timed further ahead of the worker's clock go to the dead-letter topic (`future_time`): a client clock years "
        "ahead would otherwise make every later event of the lead late. The collector refuses calls timed further ahead "
        "of their arrival. 0 turns the check off.",
        _at_least(0, YEARS_100_MS),
    )
    redis_prefix: str = _setting(
        "LEADSTREAM_REDIS_PREFIX", "leadstream", "Prefix of every Redis key leadstream writes (read model, delivered ids)."
    )
    sink_mapping_dir: Path = _setting(
        "LEADSTREAM_SINK_MAPPING_DIR",
        PROJECT_ROOT / "sinks" / "mappings",
        "Directory of the CRM field-mapping files (hubspot.toml, salesforce.toml).",
    )
    sink_concurrency: int = _setting(
        "LEADSTREAM_SINK_CONCURRENCY", 8, "Deliveries a sink runs at once (per-lead order is kept); hides API latency. "
        f"Each runs on a thread of its own: {MAX_SINK_CONCURRENCY} at most.",
        _at_least(1, MAX_SINK_CONCURRENCY),
    )
    sink_max_attempts: int = _setting(
        "LEADSTREAM_SINK_MAX_ATTEMPTS", 8, "Tries per message before a retryable failure is dead-lettered; sooner when its failed tries and waits would outlast the longest waits between these tries and one LEADSTREAM_SINK_TIMEOUT_S (42 s by default), as tries that wait out the timeout do.",
        POSITIVE,
    )
    sink_backoff_base_ms: int = _setting(
        "LEADSTREAM_SINK_BACKOFF_BASE_MS", 250, "First retry delay of a sink; doubles per attempt, with jitter.",
        NON_NEGATIVE,
    )
    sink_backoff_max_ms: int = _setting(
        "LEADSTREAM_SINK_BACKOFF_MAX_MS", 60_000,
        "Longest retry delay of a sink, a server's Retry-After included; also its wait between tries under refused "
        "credentials (a 401), 1 s at the least.",
        NON_NEGATIVE,
    )
    sink_timeout_s: int = _setting("LEADSTREAM_SINK_TIMEOUT_S", 10, "Timeout of one HTTP request to a CRM or webhook, from its start to the end of its answer; and of each Redis command of the connectors (their readiness ping: 1 s at most) and `leadstream top`.", POSITIVE)
    sink_delivered_ttl_s: int = _setting(
        "LEADSTREAM_SINK_DELIVERED_TTL_S",
        14 * 24 * 3600,
        "How long a sink remembers a delivered crossing id (must exceed any redelivery or replay delay).",
        POSITIVE,
    )
    hubspot_access_token: str = _setting(
        "LEADSTREAM_HUBSPOT_ACCESS_TOKEN", "", "HubSpot private-app access token (scopes: crm.objects.contacts/companies/deals .read and .write: the connector reads owners and searches deals and tasks by crossing id).",
        _token, secret=True,
    )
    hubspot_base_url: str = _setting("LEADSTREAM_HUBSPOT_BASE_URL", "https://api.hubapi.com", "HubSpot API base URL.", _http_url)
    hubspot_rate_limit: str = _setting(
        "LEADSTREAM_HUBSPOT_RATE_LIMIT", "100/10s", "HubSpot requests per window (private app, Free/Starter quota)."
    )
    salesforce_instance_url: str = _setting(
        "LEADSTREAM_SALESFORCE_INSTANCE_URL", "", "Salesforce instance URL (https://MyDomain.my.salesforce.com).", _http_url
    )
    salesforce_access_token: str = _setting(
        "LEADSTREAM_SALESFORCE_ACCESS_TOKEN", "", "Salesforce OAuth access token (with the instance URL), or use a username.",
        _token, secret=True,
    )
    salesforce_username: str = _setting("LEADSTREAM_SALESFORCE_USERNAME", "", "Salesforce API user (password login).")
    salesforce_password: str = _setting("LEADSTREAM_SALESFORCE_PASSWORD", "", "Password of the Salesforce API user.")
    salesforce_security_token: str = _setting(
        "LEADSTREAM_SALESFORCE_SECURITY_TOKEN", "", "Security token of the Salesforce API user."
    )
    salesforce_domain: str = _setting(
        "LEADSTREAM_SALESFORCE_DOMAIN", "login", "Salesforce login domain: login, test (sandbox) or a My Domain."
    )
    salesforce_api_version: str = _setting(
        "LEADSTREAM_SALESFORCE_API_VERSION", "59.0",
        "Salesforce REST API version, without the v Salesforce's docs write (59.0, not v59.0).", _salesforce_version,
    )
    salesforce_rate_limit: str = _setting(
        "LEADSTREAM_SALESFORCE_RATE_LIMIT", "100000/86400s", "Salesforce requests per window (Enterprise daily allocation)."
    )
    # Secret: a hook's path and query are often its credential (whoever has the URL may post to it).
    webhook_url: str = _setting("LEADSTREAM_WEBHOOK_URL", "", "URL the webhook sink POSTs each crossing to.", _http_url,
                                secret=True)
    webhook_secret: str = _setting("LEADSTREAM_WEBHOOK_SECRET", "", "Shared secret of the webhook's HMAC-SHA256 signature.")
    webhook_rate_limit: str = _setting(
        "LEADSTREAM_WEBHOOK_RATE_LIMIT", "unlimited", "Webhook requests per window (e.g. 20000/300s), or unlimited (a 429's `Retry-After` pauses it all the same)."
    )
    faust_sensors: int = _setting(
        "LEADSTREAM_FAUST_SENSORS", 1, "1: export Faust's own Prometheus sensors beside leadstream's metrics; 0: ours only.",
        _flag,
    )
    log_level: str = _setting("LEADSTREAM_LOG_LEVEL", "info", "Log level: debug, info, warning or error.", _log_level)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(f.metadata["env"])
            if raw is None or raw == "":
                continue
            values[f.name] = _checked(f, _parse(f.metadata["env"], raw, type(f.default)), raw)
        settings = cls(**values)
        _colliding_topics(settings)
        _colliding_ports(settings)
        _clock_outside_event_times(settings)
        return settings

    def check(self, name: str) -> None:
        """Refuses setting `name`'s value as from_env does, for settings made in code
        (with_overrides, replace), which from_env did not read."""
        f = next(f for f in fields(self) if f.name == name)
        value = getattr(self, name)
        _checked(f, value, str(value))

    def now_ms(self) -> int:
        """The worker's clock: the wall clock plus LEADSTREAM_CLOCK_OFFSET_MS."""
        return int(time.time() * 1000) + self.clock_offset_ms

    def future_limit(self, now_ms: int, whose: str) -> FutureLimit:
        """LEADSTREAM_MAX_FUTURE_MS at `now_ms`, a reading of `whose` clock (`now_ms`, offset
        included): `score` refuses what lies beyond, as the worker does."""
        return FutureLimit(now_ms, whose, self.max_future_ms, self.clock_offset_ms)

    def with_overrides(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    def namespaced(self, tag: str, **changes: Any) -> Settings:
        """These settings with app id `tag` and every topic named `<tag>-<what>`: a pipeline of
        its own on the same broker (tests, benchmarks)."""
        topics: dict[str, Any] = {f.name: f"{tag}-{f.name.removeprefix('topic_')}" for f in fields(self) if f.name.startswith("topic_")}
        return replace(self, app_id=tag, **topics, **changes)

    def as_env(self) -> dict[str, str]:
        """The environment variables that reproduce these settings in a child process."""
        return {f.metadata["env"]: str(getattr(self, f.name)) for f in fields(self)}


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """A warning for each LEADSTREAM_* variable that is no setting: misspelt, it left its setting
    at the default without a word (LEADSTREAM_KAFKA_BOOTSTRAP_SERVERS ran against 127.0.0.1)."""
    known = [f.metadata["env"] for f in fields(Settings)]
    warnings = []
    for name in sorted(environ):
        if name.startswith("LEADSTREAM_") and name not in known:
            warnings.append(f"{name} is not a setting{did_you_mean(name, known)}, so it changes nothing; "
                            "`leadstream settings` lists them")
    return warnings


def describe() -> list[tuple[str, str, str]]:
    """(variable, default, description) for every setting, in declaration order."""
    return [(f.metadata["env"], str(f.default), f.metadata["doc"]) for f in fields(Settings)]


def _parse(env: str, raw: str, kind: type) -> Any:
    value: Any = raw
    if kind is int:
        value = whole_number(raw)
        if value is None:
            raise ConfigError(f"{env}={raw!r} is not an integer: write it with the digits 0-9 alone "
                              "(a minus before them for a negative one), such as 1000")
    elif issubclass(kind, Path):
        # Absolute from where the command runs: the services run their processes from folders
        # of their own (a relative path would be read from there) and pass paths to children.
        value = Path(raw).expanduser().absolute()
    return value


def _checked(f: Field[Any], value: Any, raw: str) -> Any:
    """`value`, unless its setting's check refuses it: refused here, naming the variable, as a
    value out of range would otherwise fail far from it (a traceback from bind() or java, or a
    worker that never scores)."""
    check = f.metadata["check"]
    expected = check(value) if check is not None else None
    if expected is None:
        return value
    env = f.metadata["env"]
    if f.metadata["secret"]:
        raise ConfigError(f"{env} is not {expected} (its value is not shown: it may hold a credential)")
    raise ConfigError(f"{env}={raw!r} is not {expected}")
