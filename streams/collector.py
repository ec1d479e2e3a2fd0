"""`leadstream collector`: a Segment-compatible HTTP collector in front of Kafka.

Apps point their Segment or RudderStack library at it (a host change): `POST /v1/track`,
`/v1/page`, `/v1/screen`, `/v1/identify`, `/v1/group`, `/v1/alias` and `/v1/batch` (also as
`/v1/import`; analytics.js's short names `/v1/t`, `/v1/p`, `/v1/s`, `/v1/i`, `/v1/g`, `/v1/a` and
`/v1/b`; and RudderStack's `/beacon/v1/batch`), authenticated by a write key (the HTTP Basic
user name, or `writeKey` in the body, which is how the browser snippet it serves at
`/v1/leadstream.js` sends it, or in the query string, as RudderStack's beacons send it).
streams/segment.py maps the calls.

Contract:
- 200 only once Kafka has acknowledged every accepted event (acks=all, idempotent producer), so
  a collector killed mid-request loses nothing it answered 200 for; the client retries the rest,
  and its messageIds make the retries the same events.
- 400 with a reason code and a sentence for a bad request: too large (32 KB a call, 4 MB a
  batch as RudderStack takes, after gzip), bad gzip, malformed JSON, wrong content type. A bad call in a batch is
  reported in the 200 response (the first REJECTIONS_LISTED listed, all counted) and dead-lettered
  while the good ones are accepted; a bad single call is dead-lettered and answered 400. 401 for
  an unknown key, with nothing written, and for Segment's OAuth mode (a Bearer token, which only
  Segment can verify). 408 when
  the body takes longer than LEADSTREAM_COLLECTOR_BODY_TIMEOUT_MS to arrive; a connection without
  a whole request's headers for LEADSTREAM_COLLECTOR_IDLE_TIMEOUT_MS is closed.
- 503 with Retry-After when Kafka is unreachable (at once, the body unread, while it is known not
  to answer, or while a producer Kafka refuses for good is replaced: KafkaWriter._replace), slow to acknowledge, or already holds LEADSTREAM_COLLECTOR_MAX_IN_FLIGHT_BYTES
  unacknowledged, or when other bodies being read and parsed hold LEADSTREAM_COLLECTOR_MAX_PARSING_BYTES
  longer than the request may wait (it reads its body only once its turn came): the collector never
  buffers without bound, the client keeps the events and retries.

Events are grouped by the partition of their lead and packed into envelopes (streams/envelope.py),
because the worker pays per Kafka message, not per event (../shared/PERF.md).

Operations: /healthz and /readyz on the public port for load balancers; /metrics
(streams/collector_metrics.py) with /healthz and /readyz on LEADSTREAM_COLLECTOR_METRICS_PORT only.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import codecs
import contextlib
import json
import logging
import re
import signal
import time
import tomllib
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Final, Iterable, Sequence, TypeVar, cast

import orjson
from aiohttp import web
from aiohttp.client_exceptions import ClientPayloadError
from aiohttp.typedefs import Handler

from scoring.config import did_you_mean, not_utf8, toml_problem
from scoring.events import MAX_ID_CHARS, fits_64_bits, holds_lone_surrogate, lone_surrogates_replaced, read_json
from streams import collector_metrics as metrics
from streams import probes
from streams.addresses import authority
from streams.byte_budget import ByteBudget
from streams.deadletter import DeadLetter
from streams.envelope import pack
from streams.errors import ConfigError, RefusalCode, RequestRejected, ServiceError, Unavailable, cannot_listen
from streams.http_guard import aiohttp_limits, bound_connections, quiet_bad_clients
from streams.log_throttle import Throttle, throttle_kafka_retries
from streams.outbox import encode_json_or_none
from streams.partitioning import partition_for
from streams.segment import CALL_TYPES, IDENTIFIERS, Mapped, Mapper, Source, rejected, with_batch_context
from streams.settings import Settings
from streams.topics import keyed_partitions, missing_topic

log = logging.getLogger("leadstream.collector")

CALL_LIMIT_BYTES = 32 * 1024  # Segment's and RudderStack's limit for one call, and for each call of a batch
# RudderStack's limit for a batch request: its libraries fill batches up to it (100 calls of
# 6 KB are 600 KB), and a batch refused whole is dropped by them. Segment's keep to its 500 KB.
BATCH_LIMIT_BYTES = 4 * 1024 * 1024
# A gzip stream of incompressible bytes is a little larger than its content (5 bytes a 16 KB
# block, and its header): allow for that before decompressing, then apply the limit to what
# the body really holds.
GZIP_OVERHEAD_BYTES = 1024
GZIP_MAGIC = b"\x1f\x8b"  # RFC 1952's first two bytes of a gzip stream
EVENTS_PER_MESSAGE = 500  # amortises the worker's per-message cost (envelopes are also bounded in bytes)
# Calls (or messages) handled between two returns to the event loop, a few ms of work: a 4 MB
# batch holds up to 2M tiny calls, 10-20 s of mapping, during which no other request, health
# checks included, would be answered.
ITEMS_PER_SLICE = 256
RETRY_AFTER_S = 2
CONNECT_RETRY_S = 1.0
#: The keys of a sources file's `[sources.NAME]` table.
SOURCE_KEYS = ("write_keys", "product")
#: How often the collector repeats that it cannot connect to Kafka, while it retries every second.
CONNECT_SAID_S = 60.0
#: How often the collector asks Kafka for metadata, for its readiness (KafkaWriter.watch).
WATCH_S = 5.0
#: Pause after a metadata request no broker answered, before the producer may ask again. aiokafka
#: (0.14) asks again at once while a partition has no leader, as after a broker's graceful stop:
#: ~1,200 failed connects a second, a fifth of a core, where its retry_backoff_ms is 100.
METADATA_RETRY_S = 0.1
# /v1/import is the batch endpoint under the name Segment's Ruby library posts to.
BATCH_CALLS = ("batch", "import")
# analytics.js (Segment's browser library) posts each call to /v1/ and its type's first letter,
# and its batches to /v1/b: the same calls under short names, answered and counted as them.
CALL_ALIASES = {"t": "track", "p": "page", "s": "screen", "i": "identify", "g": "group", "a": "alias", "b": "batch"}
# Headers the browser libraries set on a cross-origin call: RudderStack's adds AnonymousId. A
# preflight that names others (SentAt, Segment's X-Retry-Count, RudderStack's Rsa-Retry-*, and
# whatever their next versions add) is answered with the ones it names: an unlisted header made
# the browser drop the call, and with it every retry. No credentials ride on them (the origin is
# `*`), so allowing what a page asks for opens nothing.
CORS_HEADERS = "Authorization, Content-Type, Content-Encoding, AnonymousId"
CORS_REQUESTED_HEADERS = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+(?:\s*,\s*[A-Za-z0-9!#$%&'*+.^_`|~-]+)*")
CORS_REQUESTED_HEADERS_MAX = 1024
# Retry-After on a 503 tells a browser library how long to wait, if it may read it.
CORS_RESPONSE_HEADERS = {"Access-Control-Allow-Origin": "*", "Access-Control-Expose-Headers": "Retry-After"}
CONTENT_TYPES = ("application/json", "text/plain")  # text/plain: what navigator.sendBeacon sends
UTF8_CHARSETS = ("utf-8", "utf8", "us-ascii")  # ASCII is UTF-8; any other text read as UTF-8 would be garbled
# The reason of a call whose mapping raised something else than RequestRejected: a bug of ours,
# logged; the call is refused and dead-lettered like a bad one, so the request's others are kept.
MAPPING_FAILED: Final = "mapping_failed"
# The refused calls a batch's answer lists (it counts them all): a 4 MB batch of 250k bad calls
# was answered with 24 MB naming each. The dead letters keep every one of them.
REJECTIONS_LISTED = 100
SNIPPET = Path(__file__).with_name("leadstream.js")
# What the decoding of a body that is not UTF-8 puts for each sequence "replace" reads as one
# U+FFFD: a lone surrogate, as json.loads reads a lone surrogate escape, so that after parsing
# every lone surrogate is a place the repair changes, and a U+FFFD sent as such is not one.
_REPAIR_SITE = "\udcfd"


def _repair_site(error: UnicodeError) -> tuple[str, int]:
    assert isinstance(error, UnicodeDecodeError)  # registered for decoding only
    return _REPAIR_SITE, error.end


codecs.register_error("leadstream.repair_site", _repair_site)

Clock = Callable[[], float]
T = TypeVar("T")


async def in_slices(items: Iterable[T]) -> AsyncIterator[T]:
    """The items, the event loop serving other requests after each ITEMS_PER_SLICE of them."""
    for index, item in enumerate(items):
        if index and index % ITEMS_PER_SLICE == 0:
            await asyncio.sleep(0)
        yield item


def load_sources(spec: str) -> dict[str, Source]:
    """Write key -> source, from LEADSTREAM_COLLECTOR_WRITE_KEYS (a *.toml path, or inline pairs).

    The file holds one table per source: `[sources.website]` with `write_keys = ["..."]` and an
    optional `product = "..."`, and no other key. Inline: `key=source,key2=source2`, a source with its product as
    `key=source:product`; a key holding `=` or `,` goes in a file. No key may hold `:`, which
    HTTP Basic authentication cannot carry. Messages name a key by its place, never show it.
    """
    spec = spec.strip()
    if not spec:
        raise ConfigError(
            "the collector has no write keys: set LEADSTREAM_COLLECTOR_WRITE_KEYS to a sources file "
            "(*.toml) or to inline pairs such as `wk_site=website`"
        )
    if spec.endswith(".toml"):
        return _sources_from_file(Path(spec).expanduser())
    keys: dict[str, Source] = {}
    for position, pair in enumerate(spec.split(","), 1):
        where = f"LEADSTREAM_COLLECTOR_WRITE_KEYS, pair {position}"
        key, _, named = (part.strip() for part in pair.partition("="))
        if "=" in named:
            # Split at the first `=`, a base64 key's padding made its source `=website` and the
            # key one no client sends; at the last, a typo (`k=web=b2b`) would make a key.
            raise ConfigError(f"{where}: holds more than one '=', so the key cannot be told from its source (a key "
                              "holding '=', as base64 padding does, can be listed in a sources file, *.toml)")
        name, colon, product = (part.strip() for part in named.partition(":"))
        if not key or not name or (colon and not product):
            shown = f" (`...={named}`)" if named else ""  # never the key: this is logged
            raise ConfigError(f"{where}{shown} is not `key=source` nor `key=source:product`")
        _add_key(keys, key, Source(name, product or None), where)
    return keys


def _sources_from_file(path: Path) -> dict[str, Source]:
    try:
        text = path.read_text(encoding="utf-8-sig")  # as model files (scoring/model.py)
        document = tomllib.loads(text)
    except OSError as exc:
        raise ConfigError(f"cannot read the collector's sources file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is {not_utf8(exc)}") from None
    except tomllib.TOMLDecodeError as exc:
        # Its line not quoted: it holds write keys, and this message is logged.
        raise ConfigError(f"{path} is not valid TOML: {toml_problem(exc, text, quote=False)}") from None
    except RecursionError:  # tomllib reads nested arrays and tables recursively
        raise ConfigError(f"{path} is not valid TOML: arrays or tables nested deeper than can be read") from None
    sources = document.get("sources")
    if not isinstance(sources, dict) or not sources:
        raise ConfigError(f"{path} has no [sources.NAME] tables")
    _known_keys_only(document, ("sources",), str(path))
    keys: dict[str, Source] = {}
    for name, table in sources.items():
        where = f"{path} [sources.{name}]"
        if isinstance(table, dict):
            _known_keys_only(table, SOURCE_KEYS, where)
        write_keys = table.get("write_keys") if isinstance(table, dict) else None
        product = table.get("product") if isinstance(table, dict) else None
        if not isinstance(write_keys, list) or not write_keys or not all(isinstance(k, str) and k for k in write_keys):
            raise ConfigError(f"{where}: `write_keys` must be a non-empty list of strings")
        if product is not None and not isinstance(product, str):
            raise ConfigError(f"{where}: `product` must be a string")
        for position, key in enumerate(write_keys, 1):
            _add_key(keys, key, Source(name, product), f"{where} write key {position}")
    return keys


def _known_keys_only(table: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    """Refuses a key the sources file does not define, as model and mapping files do: a misspelt
    `prodcut` left its source without a product, the collector answered 200 and the worker
    counted the source's events unrouted."""
    for key in table:
        if key not in allowed:
            # Shown only when it is a misspelling of an allowed one: else it may be a write key
            # written as the inline pairs are (`wk_site = "website"`), and this message is logged.
            hint = did_you_mean(key, allowed)
            named = f"`{key}`{hint}" if hint else "(not shown: it may be a write key)"
            raise ConfigError(f"{where}: unknown key {named} (allowed: {', '.join(allowed)})")


def _add_key(keys: dict[str, Source], key: str, source: Source, where: str) -> None:
    if ":" in key:
        # HTTP Basic credentials are `user:password`: the collector reads the user name up to
        # the first ':' (`_source_from_header`), so such a key would be configured but never matched.
        raise ConfigError(f"{where}: the write key holds ':', which HTTP Basic authentication cannot carry (its user "
                          "name ends at the first ':'), so no client could send it: choose a key without ':'")
    if key in keys:
        raise ConfigError(f"{where}: a write key is given twice (sources {keys[key].name} and {source.name})")
    keys[key] = source


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One Kafka message to produce."""

    topic: str
    partition: int | None
    key: bytes | None
    value: bytes


class KafkaWriter:
    """The collector's producer: writes a request's messages and waits for Kafka's acknowledgement.

    It connects in the background, so the collector answers (503) while Kafka is down rather
    than failing to start, and bounds the bytes awaiting acknowledgement.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.partitions: dict[str, int] = {}
        self._producer: Any = None
        self._in_flight_bytes = 0
        self._ack_timeout_s = settings.collector_ack_timeout_ms / 1000
        #: Whether Kafka answered the last ask (a metadata request of `watch`, or a write)
        self._answering = False
        #: Whether it ever did: the first answer is news of a start, not of a return
        self._answered_once = False
        #: Set when a write found Kafka not answering, for `watch` to ask at once rather than at its next turn
        self._ask_now = asyncio.Event()
        #: While a producer that cannot write again is being replaced (`_replace`): why, and the task
        self._replacing: tuple[str, asyncio.Task[None]] | None = None
        #: Why there is no producer yet, as the last attempt to connect found
        self._connecting_why = f"not connected to Kafka at {settings.kafka_bootstrap} yet"
        #: What is wrong with a topic's partition count, as the last metadata found (keyed_partitions)
        self._count_wrong: str | None = None

    @property
    def ready(self) -> bool:
        """Connected, and Kafka answered the last ask: "connected once" kept a collector cut off
        from Kafka ready, every call of its waiting out the ack timeout for a 503."""
        return self.why_not_ready is None

    @property
    def why_not_ready(self) -> str | None:
        """What a call is answered with its 503, and /readyz with its own, while not ready."""
        if self._count_wrong is not None:
            return self._count_wrong
        if self._replacing is not None:
            return f"the Kafka producer is being replaced: {self._replacing[0]}"
        if self._producer is None:
            return self._connecting_why
        if not self._answering:
            return f"Kafka at {self.settings.kafka_bootstrap} does not answer (asked again every {WATCH_S:g} s)"
        return None

    def _answered(self, answering: bool) -> None:
        if answering != self._answering:
            if answering:
                log.info("Kafka at %s answers%s: ready", self.settings.kafka_bootstrap, " again" if self._answered_once else "")
                self._answered_once = True
            else:
                log.warning("Kafka at %s does not answer: not ready (/readyz 503) and calls answered 503 at once until it "
                            "does", self.settings.kafka_bootstrap)
        self._answering = answering
        metrics.KAFKA_CONNECTED.set(1 if answering else 0)

    async def watch(self, interval_s: float = WATCH_S) -> None:
        """Asks Kafka for its metadata every `interval_s`, and at once when a write timed out: while
        Kafka does not answer, calls are refused without being tried, so only `watch` sees it return."""
        from aiokafka.errors import KafkaError

        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval_s):
                    await self._ask_now.wait()
            self._ask_now.clear()
            producer = self._producer
            if producer is None:
                continue
            try:
                async with asyncio.timeout(interval_s):
                    answered = bool(await producer.client.force_metadata_update())
            except (TimeoutError, KafkaError):
                answered = False
            self._answered(answered)
            if answered:  # a topic the metadata lacks (deleted under us) is the writes' to tell
                known = {topic: producer.client.cluster.partitions_for_topic(topic) for topic in self.partitions}
                self._counted({**self.partitions, **{topic: len(numbers) for topic, numbers in known.items() if numbers}})

    def _counted(self, partitions: dict[str, int]) -> None:
        """Takes the topics' partition counts from the broker's metadata: one of another count
        than LEADSTREAM_PARTITIONS (partitions added under a running collector) makes it unready,
        said once, rather than write the leads of the new count's layout where their states are
        not (it logged the new count at INFO and stayed ready)."""
        wrong = _count_wrong(self.settings, partitions)
        if wrong is not None and wrong != self._count_wrong:
            log.error("%s; not ready (/readyz 503), and calls answered 503, until the counts agree", wrong)
        self._count_wrong = wrong
        self.partitions = partitions

    def producer(self) -> Any:
        """The started producer; Unavailable until the first connection succeeded, and while Kafka
        does not answer: each call tried then waited out the ack timeout for its 503."""
        why = self.why_not_ready
        if why is not None:
            raise Unavailable(why, RETRY_AFTER_S)
        return self._producer

    def partition_count(self, topic: str) -> int:
        self.producer()  # known once connected, and Unavailable while a topic has another count
        return keyed_partitions(self.settings, topic, self.partitions[topic])

    async def connect(self) -> None:
        """Start the producer, retrying until Kafka answers and the topics exist."""
        from aiokafka import AIOKafkaProducer
        from aiokafka.errors import UnknownTopicOrPartitionError

        topics = (self.settings.topic_events, self.settings.topic_profiles, self.settings.topic_deadletter)
        attempts, said = 0, 0.0
        while True:
            producer = AIOKafkaProducer(
                bootstrap_servers=self.settings.kafka_bootstrap,
                client_id="leadstream-collector",
                acks="all",
                enable_idempotence=True,
                linger_ms=2,
                max_batch_size=1024 * 1024,
                request_timeout_ms=max(self.settings.collector_ack_timeout_ms, 5000),
            )
            _pace_metadata_requests(producer.client)
            asked: str | None = None  # the topic being asked for when it failed; None: the metadata
            try:
                await producer.start()
                partitions = {}
                for topic in topics:
                    asked = topic
                    partitions[topic] = len(await producer.partitions_for(topic))
            except asyncio.CancelledError:  # stopping: a producer left unstopped is logged "Unclosed AIOKafkaProducer"
                await producer.stop()
                raise
            except Exception as exc:  # noqa: BLE001 - any failure to connect means: retry later
                await producer.stop()
                attempts += 1
                # Kafka answered, without the topic: "not connected to Kafka" sent operators to a broker that runs.
                absent = asked if isinstance(exc, UnknownTopicOrPartitionError) else None
                self._connecting_why = (f"Kafka at {self.settings.kafka_bootstrap} answers, but {missing_topic(self.settings, absent)}"
                                        if absent is not None else f"not connected to Kafka at {self.settings.kafka_bootstrap} yet")
                if attempts == 1 or time.monotonic() - said >= CONNECT_SAID_S:  # not a line a second while Kafka is down
                    said = time.monotonic()
                    if absent is not None:
                        log.warning("%s; answering 503 and asking again every %g s (%d attempts)", self._connecting_why,
                                    CONNECT_RETRY_S, attempts)
                    else:
                        log.warning(
                            "cannot use Kafka at %s (%s: %r; %d attempts); answering 503 and retrying every %g s. Is it running "
                            "(`leadstream services up`) and do the topics exist (`leadstream topics`, LEADSTREAM_TOPIC_*)?",
                            self.settings.kafka_bootstrap, "its metadata" if asked is None else f"topic {asked!r}", exc,
                            attempts, CONNECT_RETRY_S,
                        )
                await asyncio.sleep(CONNECT_RETRY_S)
                continue
            wrong = _count_wrong(self.settings, partitions)
            if wrong is not None and not self._answered_once:  # at start: refused, as `send` refuses
                await producer.stop()
                raise ConfigError(wrong)
            self._counted(partitions)
            self._producer = producer
            self._answered(True)
            log.info("connected to Kafka at %s; partitions %s", self.settings.kafka_bootstrap, partitions)
            return

    def check_alone_within_bound(self, size: int) -> None:
        """RequestRejected when a request's `size` bytes alone exceed the bound on bytes awaiting
        acknowledgement: no retry can pass it (a batch of many tiny bad calls becomes many dead
        letters), and a 503 would have the client send it again and again, each time mapped in vain."""
        bound = self.settings.collector_max_in_flight_bytes
        if size > bound:
            raise rejected(
                "too_large", f"the request's events and dead letters exceed {bound} bytes, the most the collector holds "
                "awaiting Kafka's acknowledgement (LEADSTREAM_COLLECTOR_MAX_IN_FLIGHT_BYTES); send smaller batches"
            )

    async def write(self, messages: Sequence[Outgoing]) -> None:
        """Produce the messages; return once Kafka acknowledged all of them, else raise Unavailable
        (RequestRejected when they alone exceed the bound on bytes awaiting acknowledgement)."""
        from aiokafka.errors import KafkaError

        producer = self.producer()
        size = sum(len(m.value) for m in messages)
        self.check_alone_within_bound(size)
        if self._in_flight_bytes + size > self.settings.collector_max_in_flight_bytes:
            raise Unavailable(
                f"{self._in_flight_bytes} bytes already await Kafka's acknowledgement "
                "(LEADSTREAM_COLLECTOR_MAX_IN_FLIGHT_BYTES)",
                RETRY_AFTER_S,
            )
        self._in_flight_bytes += size
        metrics.IN_FLIGHT_BYTES.set(self._in_flight_bytes)
        try:
            async with asyncio.timeout(self._ack_timeout_s):
                acks = [await producer.send(m.topic, m.value, key=m.key, partition=m.partition) async for m in in_slices(messages)]
                await _all_done(acks)
        except TimeoutError:
            self._answered(False)
            self._ask_now.set()  # slow to acknowledge, or gone: a metadata request tells which
            raise Unavailable(
                f"Kafka did not acknowledge within {self.settings.collector_ack_timeout_ms} ms "
                "(LEADSTREAM_COLLECTOR_ACK_TIMEOUT_MS)",
                RETRY_AFTER_S,
            ) from None
        except KafkaError as exc:  # not always Kafka gone (a record too large): `watch` tells
            if _leaves_producer_stuck(exc):
                self._replace(producer, exc)
            raise Unavailable(f"Kafka did not take the events: {exc!r}", RETRY_AFTER_S) from exc
        else:
            self._answered(True)
        finally:
            self._in_flight_bytes -= size
            metrics.IN_FLIGHT_BYTES.set(self._in_flight_bytes)

    def _replace(self, producer: Any, failure: BaseException) -> None:
        """Start a new producer in place of `producer`, which failed a write with `failure`, one it
        never leaves (`_leaves_producer_stuck`): kept, it refused one partition's calls with 503 until
        the collector was restarted (41 minutes in an audit) while /readyz said ready. Calls are
        answered 503 and the collector is not ready until the new one is connected; the writes
        under way on the old one get their 503 too, and are sent again by their clients (their
        messageIds make any that Kafka took anyway the same events)."""
        if producer is not self._producer:  # another write's failure had it replaced already
            return
        why = f"{failure!r} (Kafka refuses its writes to a partition until a new producer is started)"
        log.error("the Kafka producer cannot write again: %s; starting a new one, calls answered 503 and not ready "
                  "(/readyz 503) meanwhile", why)
        metrics.PRODUCERS_REPLACED.labels(type(failure).__name__).inc()
        self._producer = None
        self._answering = False
        metrics.KAFKA_CONNECTED.set(0)

        async def replace() -> None:
            try:
                with contextlib.suppress(Exception):  # it cannot write anyway; what it holds is answered 503
                    async with asyncio.timeout(self._ack_timeout_s):
                        await producer.stop()
                await self.connect()
            finally:
                self._replacing = None

        self._replacing = (why, asyncio.create_task(replace()))

    async def close(self) -> None:
        if self._replacing is not None:
            await _stopped(self._replacing[1])
            self._replacing = None
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
            self._answering = False
            metrics.KAFKA_CONNECTED.set(0)


def _count_wrong(settings: Settings, partitions: dict[str, int]) -> str | None:
    """What is wrong with the partition count of a topic the collector puts leads on, if anything."""
    try:
        for topic in (settings.topic_events, settings.topic_profiles):  # the dead letters' are not keyed
            keyed_partitions(settings, topic, partitions[topic])
    except ConfigError as exc:
        return str(exc)
    return None


async def _stopped(task: asyncio.Task[None]) -> None:
    """Cancel `task` and wait until it has finished: a connection attempt cancelled and left stops
    its producer no more ("Unclosed AIOKafkaProducer" at the collector's stop). A task ended
    already has nothing to stop, and what it raised was its waiter's."""
    if task.done():
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _leaves_producer_stuck(failure: BaseException) -> bool:
    """Whether aiokafka failed a write with `failure` because its idempotent producer's id or
    sequence numbers no longer match the broker's (a batch it gave up on, its partition without a
    leader during a broker's graceful stop, left a gap in that partition's sequence): every later
    write to that partition fails alike for as long as the producer lives, and only a new one (a
    new producer id, sequences from 0) writes there again."""
    from aiokafka import errors

    return isinstance(failure, (errors.OutOfOrderSequenceNumber, errors.UnknownProducerId, errors.InvalidProducerEpoch,
                                errors.ProducerFenced, errors.InvalidProducerIdMapping))


def _pace_metadata_requests(client: Any) -> None:
    """Have aiokafka's `client` wait METADATA_RETRY_S after a metadata request no broker answered
    before it asks again. Its sender asks again at once while a partition it holds a batch for has
    no leader, and nothing of aiokafka's waits between (neither retry_backoff_ms nor
    reconnect_backoff_ms): after a broker's graceful stop, a connect refused ~1,200 times a second."""
    update = client._metadata_update

    async def paced(cluster: Any, topics: Any) -> bool:
        updated = bool(await update(cluster, topics))
        if not updated:
            await asyncio.sleep(METADATA_RETRY_S)
        return updated

    client._metadata_update = paced


async def _all_done(acks: list[asyncio.Future[Any]]) -> None:
    """Wait for every acknowledgement, then raise the first failure. In slices: gathering a
    request's 250k dead letters at once holds up the event loop for half a second. Every slice
    is awaited even after a failure, so that no failure goes unretrieved (and logged as such)."""
    failure: BaseException | None = None
    try:
        for start in range(0, len(acks), ITEMS_PER_SLICE):
            for result in await asyncio.gather(*acks[start : start + ITEMS_PER_SLICE], return_exceptions=True):
                if failure is None and isinstance(result, BaseException):
                    failure = result
    except asyncio.CancelledError:  # the ack timeout: as one gather would, give up every acknowledgement
        for ack in acks:
            ack.cancel()
        raise
    if failure is not None:
        raise failure


@dataclass(slots=True)
class Outcome:
    """What became of a request's calls."""

    accepted: int = 0
    rejected: list[dict[str, object]] = field(default_factory=list)  # the first REJECTIONS_LISTED refusals
    rejected_codes: Counter[RefusalCode] = field(default_factory=Counter)  # every refusal, by reason code

    def refuse(self, index: int, item: object, exc: RequestRejected) -> None:
        if len(self.rejected) < REJECTIONS_LISTED:
            self.rejected.append(_rejection(index, item, exc))
        self.rejected_codes[exc.code] += 1

    def answer(self) -> dict[str, object]:
        """The 200 answer's body: the refusals listed, with how many there were and were left out."""
        payload: dict[str, object] = {"success": True, "accepted": self.accepted}
        if self.rejected:
            count = self.rejected_codes.total()
            payload.update(rejected=self.rejected, rejected_count=count, rejected_omitted=count - len(self.rejected))
        return payload


class Collector:
    """The requests' logic: authenticate, read and check the body, map the calls, write, report."""

    def __init__(self, settings: Settings, sources: dict[str, Source], writer: KafkaWriter, clock: Clock = time.time) -> None:
        self.settings = settings
        self.sources = sources
        self.mapper = Mapper(settings.collector_event_names, settings.max_future_ms, settings.clock_offset_ms)
        self.writer = writer
        self.clock = clock
        self._body_timeout_s = settings.collector_body_timeout_ms / 1000
        self._ack_timeout_s = settings.collector_ack_timeout_ms / 1000
        self._parsing = ByteBudget(settings.collector_max_parsing_bytes)
        # murmur2 in Python costs ~4 us a key, and the same leads come back request after request.
        self._partition = lru_cache(maxsize=1 << 16)(partition_for)
        self._unavailable = Throttle()
        metrics.collector_started({source.name for source in sources.values()}, (*CALL_TYPES, *BATCH_CALLS))

    def note_unavailable(self, exc: Unavailable) -> None:
        """Log refusals at most every LOG_INTERVAL_S: an outage must not flood the log."""
        left_out = self._unavailable.due()
        if left_out is not None:
            log.warning("answered 503 to %d requests since the last report; latest reason: %s", left_out + 1, exc)

    async def ingest(self, request: web.Request, call: str) -> Outcome:
        """Take one request to /v1/CALL; RequestRejected or Unavailable when it cannot be taken whole."""
        source = self._source_from_header(request)
        limit = BATCH_LIMIT_BYTES if call in BATCH_CALLS else CALL_LIMIT_BYTES
        encoding = _encoding(request, limit)
        # Unavailable before the body is read while Kafka is known not to answer: each client's
        # retries of a huge batch would cost its reading and parsing, in vain, through an outage.
        self.writer.producer()
        # Read, parsed and mapped, a body takes up to ~70 times its bytes: concurrent huge batches
        # would take the collector's memory past any container's limit. So a body is read only
        # once its bytes are held, and a request waiting its turn holds no body: reading it first
        # had 300 gzip batches waiting with 4 MB each inflated, 1.3 GB. How much a body will hold
        # is known before reading it only from its Content-Length, uncompressed: else the limit,
        # and the rest is given back once it is read.
        size = request.content_length if encoding == "identity" and request.content_length is not None else limit
        held = await self._turn(size)
        try:
            raw = await self._read_body(request, encoding, limit)
            held = self._parsing.trim(held, len(raw))
            # Held until Kafka acknowledged: the body, parsed and mapped, is still referenced meanwhile.
            return await self._take(request, call, source, raw)
        finally:
            self._parsing.release(held)

    async def _turn(self, size: int) -> int:
        """Hold `size` bytes of LEADSTREAM_COLLECTOR_MAX_PARSING_BYTES, waiting for them up to
        LEADSTREAM_COLLECTOR_ACK_TIMEOUT_MS, then Unavailable; the bytes held, to release."""
        try:
            async with asyncio.timeout(self._ack_timeout_s):
                return await self._parsing.acquire(size)
        except TimeoutError:
            raise Unavailable(
                f"{self._parsing.held_bytes} bytes of other requests are being read, parsed and written, the most the "
                "collector takes at once (LEADSTREAM_COLLECTOR_MAX_PARSING_BYTES), and no turn came within "
                f"{self.settings.collector_ack_timeout_ms} ms (LEADSTREAM_COLLECTOR_ACK_TIMEOUT_MS)",
                RETRY_AFTER_S,
            ) from None

    async def _take(self, request: web.Request, call: str, source: Source | None, raw: bytes) -> Outcome:
        """The calls of a request's body, mapped and written."""
        body, marked = _parse(raw)
        if source is None:
            source = self._source_from_key(request.query.get("writeKey", body.get("writeKey")))
        # The worker's clock, LEADSTREAM_CLOCK_OFFSET_MS included: a call it would dead-letter as
        # ahead of it is refused here, and one without a time of its own is timed as it would be.
        received_at_ms = int(self.clock() * 1000) + self.settings.clock_offset_ms
        items, context = _calls(body, call)
        call_type = None if call in BATCH_CALLS else call
        repaired_ids = {} if marked is None else _repaired_identifiers(*_calls(marked, call))
        # Unavailable before mapping if Kafka stopped answering while the body waited or was read:
        # calls that cannot be written cost a huge batch's second of CPU.
        self.writer.producer()
        # No call of a batch, even with the batch's context, can exceed the limit of one when the
        # whole batch does not.
        measure_calls = call_type is None and len(raw) > CALL_LIMIT_BYTES
        mapped: list[Mapped] = []
        dead: list[bytes] = []
        size = 0  # of the events and dead letters so far
        outcome = Outcome()
        async for index, item in in_slices(enumerate(items)):
            # A request that cannot be written stops here rather than after mapping all its calls.
            self.writer.check_alone_within_bound(size)
            item = with_batch_context(item, context)
            try:
                if measure_calls and len(encode_json_or_none(item) or b"") > CALL_LIMIT_BYTES:
                    raise rejected("too_large", f"a call may hold at most {CALL_LIMIT_BYTES} bytes of JSON")
                if index in repaired_ids:
                    raise rejected("bad_field", f"`{repaired_ids[index]}` holds bytes that are not UTF-8 (or a lone surrogate "
                                   "escape such as \\ud83d), read as U+FFFD: two ids differing there would become one; "
                                   "send the id as UTF-8")  # fmt: skip
                mapped.append(self.mapper.map(item, call_type, source, received_at_ms, body.get("sentAt")))
                size += len(mapped[-1].value)
            except RequestRejected as exc:
                outcome.refuse(index, item, exc)
                dead.append(_dead_letter(source, call, index, item, exc).to_bytes())
                size += len(dead[-1])
            except Exception as exc:  # noqa: BLE001 - a bug met by one call must not fail the request's others
                log.error("cannot map call %d of a /v1/%s request of source %s; it is dead-lettered as %s", index, call,
                          source.name, MAPPING_FAILED, exc_info=True)  # fmt: skip
                failure = rejected(MAPPING_FAILED, f"the collector failed to map this call ({type(exc).__name__}); "
                                   "it is kept in the dead letters")  # fmt: skip
                outcome.refuse(index, item, failure)
                dead.append(_dead_letter(source, call, index, item, failure).to_bytes())
                size += len(dead[-1])
        await self.writer.write(await self._messages(mapped, dead))
        outcome.accepted = len(mapped)
        metrics.ACCEPTED.labels(source.name).inc(len(mapped))
        if outcome.rejected:  # a bad single call too: it was dead-lettered like one of a batch
            metrics.CALLS_REFUSED.labels(source.name).inc(outcome.rejected_codes.total())
        if call_type is None:  # a refused single call is counted with the request's refusal
            for code, count in outcome.rejected_codes.items():
                metrics.REJECTED.labels(code).inc(count)
        if call_type is not None and outcome.rejected:
            only = outcome.rejected[0]
            raise RequestRejected(400, cast(RefusalCode, only["code"]), str(only["message"]))
        return outcome

    def _source_from_header(self, request: web.Request) -> Source | None:
        header = request.headers.get("Authorization")
        if header is None:
            return None
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() == "bearer":
            # Segment's OAuth mode: a token from Segment's authorization server, which the
            # collector cannot verify. Falling back to the body's write key would let a leaked
            # key in where the sender's operator asked for a token: refused, saying why.
            raise RequestRejected(
                401, "oauth_unsupported", "the collector does not take OAuth access tokens (Authorization: Bearer), "
                "which only Segment can verify: turn OAuth off in the library (no OAuth client id) so that it sends "
                "the write key as the HTTP Basic user name"
            )
        if scheme.lower() != "basic":
            raise RequestRejected(401, "unauthorized", "use HTTP Basic authentication with the write key as user name")
        try:
            key = base64.b64decode(credentials.strip(), validate=True).decode("utf-8").partition(":")[0]
        except (binascii.Error, UnicodeDecodeError):
            raise RequestRejected(401, "unauthorized", "the Authorization header is not valid HTTP Basic credentials") from None
        return self._source(key)

    def _source_from_key(self, key: object) -> Source:
        """The source of a key given without the Authorization header: `writeKey` in the query or the body."""
        if not isinstance(key, str) or not key:
            raise RequestRejected(
                401, "unauthorized",
                "no write key: send it as the HTTP Basic user name, or as `writeKey` in the body or the query",
            )
        return self._source(key)

    def _source(self, key: str) -> Source:
        source = self.sources.get(key)
        if source is None:
            raise RequestRejected(401, "unauthorized", "unknown write key: use a key listed in LEADSTREAM_COLLECTOR_WRITE_KEYS")
        return source

    async def _read_body(self, request: web.Request, encoding: str, limit: int) -> bytes:
        """The body, decompressed (`encoding` as `_encoding` read it), of at most `limit` bytes."""
        raw_limit = _raw_limit(encoding, limit)
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self._body_timeout_s):
                while chunk := await request.content.readany():
                    size += len(chunk)
                    if size > raw_limit:
                        raise _too_large(limit)
                    chunks.append(chunk)
        except TimeoutError:
            raise RequestRejected(
                408, "body_timeout", f"the body did not arrive within {self.settings.collector_body_timeout_ms} ms"
            ) from None
        except (ClientPayloadError, ConnectionError):
            raise rejected("truncated_body", "the connection ended before the whole body arrived") from None
        raw = b"".join(chunks)
        if encoding != "identity":
            return _inflate(raw, encoding, limit)
        if raw.startswith(GZIP_MAGIC):  # read as JSON, it was "not valid UTF-8: surrogates not allowed"
            raise rejected("bad_encoding", "the body looks gzip-compressed (it starts with gzip's bytes 1f 8b) but the request "
                           "has no Content-Encoding: send `Content-Encoding: gzip` with it")  # fmt: skip
        return raw

    async def _messages(self, mapped: list[Mapped], dead: list[bytes]) -> list[Outgoing]:
        """Envelopes of the events by partition; profile updates by lead; one message per dead letter.

        An envelope is keyed by its lead when it holds one lead's events (so a single call's
        message is keyed like any producer's); a several-lead envelope has no key, and its
        partition says where it belongs. The profiles topic is compacted, so each of its
        messages holds one lead's updates and is keyed by that lead.
        """
        settings = self.settings
        event_partitions = self.writer.partition_count(settings.topic_events)
        profile_partitions = self.writer.partition_count(settings.topic_profiles)
        events: dict[int, list[Mapped]] = defaultdict(list)
        profiles: dict[str, list[bytes]] = defaultdict(list)
        async for m in in_slices(mapped):  # a lead's partition costs ~4 us to hash
            if m.profile:
                profiles[m.lead_id].append(m.value)
            else:
                events[self._partition(m.lead_id, event_partitions)].append(m)
        out: list[Outgoing] = []
        for partition, group in events.items():
            leads = {m.lead_id for m in group}
            key = next(iter(leads)).encode() if len(leads) == 1 else None
            for value in pack((m.value for m in group), EVENTS_PER_MESSAGE):
                out.append(Outgoing(settings.topic_events, partition, key, value))
        async for lead_id, values in in_slices(profiles.items()):
            partition = self._partition(lead_id, profile_partitions)
            for value in pack(values, EVENTS_PER_MESSAGE):
                out.append(Outgoing(settings.topic_profiles, partition, lead_id.encode(), value))
        async for letter in in_slices(dead):
            out.append(Outgoing(settings.topic_deadletter, None, None, letter))
        return out


def _encoding(request: web.Request, limit: int) -> str:
    """The body's Content-Encoding, its headers checked (RequestRejected) before it is read."""
    sent = request.headers.get("Content-Type")
    if sent is None or not sent.strip():
        raise rejected("bad_content_type", "the request has no Content-Type; send application/json")
    if request.content_type not in CONTENT_TYPES:
        # As sent: aiohttp reads a header it cannot parse (`application/json, text/plain`) as application/octet-stream.
        raise rejected("bad_content_type", f"Content-Type is {sent.strip()!r}; send application/json")
    charset = (request.charset or "utf-8").lower()
    if charset not in UTF8_CHARSETS:
        raise rejected("bad_content_type", f"Content-Type declares charset={charset}; send JSON in UTF-8 (RFC 8259)")
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip", "x-gzip", "deflate"):
        raise rejected("bad_encoding", f"Content-Encoding {encoding!r} is not supported; send gzip, deflate or no encoding")
    if request.content_length is not None and request.content_length > _raw_limit(encoding, limit):
        raise _too_large(limit)
    return encoding


def _raw_limit(encoding: str, limit: int) -> int:
    """The most bytes a body of at most `limit` bytes may take as sent, compressed or not."""
    return limit if encoding == "identity" else limit + limit // 1024 + GZIP_OVERHEAD_BYTES


def _parse(body: bytes) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The body's JSON object, and when it needed `_repaired` the body as read before the repair.
    JSON is UTF-8 (RFC 8259): a leading byte order mark, which the RFC lets a parser ignore, is
    ignored; a body in UTF-16 or UTF-32 is refused, naming its encoding."""
    encoding = json.detect_encoding(body)  # by the BOM, or the NUL bytes of the first characters
    if encoding == "utf-8-sig":
        body = body[len(codecs.BOM_UTF8):]
    elif encoding != "utf-8":
        raise rejected("bad_json", f"the body is in {encoding.upper()} (by its first bytes); send JSON in UTF-8 (RFC 8259)")
    marked = None
    try:
        parsed = read_json(body)  # integers beyond 64 bits whole: the mapping refuses them, naming the field
    except orjson.JSONDecodeError:
        parsed, marked = _repaired(body)
    if not isinstance(parsed, dict):
        raise rejected("bad_json", "the body must be a JSON object")
    return parsed, marked


def _repaired(body: bytes) -> tuple[Any, Any]:
    """A body orjson refused, parsed with each byte sequence that is not UTF-8 and each lone
    surrogate escape (`"\\ud83d"`: what JSON.stringify writes for a text cut between the halves
    of an emoji) replaced by U+FFFD; and parsed with a lone surrogate in each of these places,
    for `_repaired_identifiers`. bad_json when it is no JSON even so.

    orjson refuses the whole body for either; a page title cut short must not lose a batch's
    calls, nor its own. U+FFFD is what browsers' decoders and Go's encoding/json put there, and
    the repair is the same on every retry, so the call keeps its event id.
    """
    text = body.decode("utf-8", "leadstream.repair_site")
    try:
        marked = json.loads(text)  # the stdlib reads lone surrogate escapes
        return lone_surrogates_replaced(marked), marked
    except RecursionError:  # the stdlib reads about 1,000 levels, orjson 1,024: either way far past a call's 32
        raise rejected("too_large", "the body nests objects and arrays about 1,000 levels deep or more, where no call may "
                       "nest more than 32: the request is refused whole, its calls unread") from None  # fmt: skip
    except ValueError as exc:  # json's and orjson's errors (NaN and huge numbers get this far)
        error: ValueError = exc
    # orjson's first error in the body was its bytes (or a surrogate): the client is told the
    # error a UTF-8 body would get, such as where a NaN is, found in the text as repaired.
    try:
        orjson.loads(text.replace(_REPAIR_SITE, "\ufffd"))
    except orjson.JSONDecodeError as exc:
        error = exc
    raise rejected("bad_json", f"the body is not JSON: {error}")


def _calls(body: dict[str, Any], call: str) -> tuple[list[Any], dict[str, Any]]:
    """A request's calls, and the `context` a batch gives each of them under its own."""
    if call not in BATCH_CALLS:
        return [body], {}
    items = body.get("batch")
    if not isinstance(items, list):
        raise rejected("bad_batch", "a batch request needs `batch`, a JSON array of calls")
    context = body.get("context")
    if context is not None and not isinstance(context, dict):
        raise rejected("bad_batch", "a batch's `context`, given to all its calls, must be a JSON object")
    return items, context or {}


def _repaired_identifiers(calls: list[Any], context: dict[str, Any]) -> dict[int, str]:
    """By the index of its call, the first of the IDENTIFIERS the repair of its body changes, of
    `calls` as `_repaired` read them before the repair."""
    found: dict[int, str] = {}
    for index, call in enumerate(calls):
        call = with_batch_context(call, context)
        for name in IDENTIFIERS:  # text the repair reads as U+FFFD keeps its meaning; ids do not
            value = call
            for part in name.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            if isinstance(value, str) and holds_lone_surrogate(value):
                found[index] = name
                break
    return found


def _inflate(raw: bytes, encoding: str, limit: int) -> bytes:
    """A gzip or deflate body, decompressed; never more than `limit` bytes of it (no zip bombs).

    gzip: every member (RFC 1952: a gzip file is a series of members, as `cat a.gz b.gz` makes)
    and nothing after them. deflate: zlib-wrapped as HTTP means it, or raw as many clients send it.
    """
    name = "deflate" if encoding == "deflate" else "gzip"
    parts: list[bytes] = []
    size = 0
    rest = raw
    while rest:
        if parts and name == "deflate":
            raise rejected("bad_gzip", f"the deflate body has {len(rest)} bytes after its end")
        inflater = zlib.decompressobj(_wbits(name, rest))
        try:
            part = inflater.decompress(rest, limit + 1 - size)
        except zlib.error as exc:
            if parts:
                raise rejected("bad_gzip", f"the gzip body has {len(rest)} bytes after its end that are not another gzip "
                               f"member ({exc})") from None  # fmt: skip
            raise rejected("bad_gzip", f"the body is not valid {name}: {exc}") from None
        size += len(part)
        if size > limit:
            raise _too_large(limit)
        if not inflater.eof:
            raise rejected("bad_gzip", f"the {name} body is truncated")
        parts.append(part)
        rest = inflater.unused_data
    if not parts:
        raise rejected("bad_gzip", f"the {name} body is empty")
    return b"".join(parts)


def _wbits(name: str, data: bytes) -> int:
    """zlib's window bits for a body's (next) stream: gzip (or zlib), zlib, or raw deflate."""
    if name == "gzip":
        return 32 + zlib.MAX_WBITS  # 32: accept a gzip or a zlib header, as before
    # RFC 1950's header: method 8 in the low nibble, the first two bytes a multiple of 31. A raw
    # stream cannot start so: its first block would be a stored one, whose first byte is 0 or 1.
    zlib_wrapped = len(data) >= 2 and data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0
    return zlib.MAX_WBITS if zlib_wrapped else -zlib.MAX_WBITS


def _too_large(limit: int) -> RequestRejected:
    advice = "send smaller batches" if limit > CALL_LIMIT_BYTES else "a single call may hold no more (Segment's limit too)"
    return rejected("too_large", f"the body exceeds {limit} bytes (after decompression); {advice}")


def _rejection(index: int, item: object, exc: RequestRejected) -> dict[str, object]:
    message_id = item.get("messageId") if isinstance(item, dict) else None
    # Echoed only when it is an id: the events are written before the response, which must then
    # be writable whatever the call held (orjson writes 254 levels at most); `index` says which.
    if not (isinstance(message_id, str) and len(message_id) <= MAX_ID_CHARS
            or isinstance(message_id, int) and not isinstance(message_id, bool) and fits_64_bits(message_id)):  # fmt: skip
        message_id = None
    return {"index": index, "messageId": message_id, "code": exc.code, "message": str(exc)}


def _dead_letter(source: Source, call: str, index: int, item: object, exc: RequestRejected) -> DeadLetter:
    if isinstance(item, dict):
        item = {k: v for k, v in item.items() if k != "writeKey"}
    original = encode_json_or_none(item)
    if original is None:
        return DeadLetter(exc.code, f"source {source.name}, /v1/{call} call {index}: {exc} (the call is not kept: it is nested "
                          "too deep to be written out)", b"")
    return DeadLetter(exc.code, f"source {source.name}, /v1/{call} call {index}: {exc}", original)


def _json(status: int, payload: dict[str, object], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, content_type="application/json", headers=headers)


def create_app(collector: Collector) -> web.Application:
    snippet = SNIPPET.read_bytes()

    async def ingest(request: web.Request) -> web.Response:
        name = request.match_info["call"]
        call = CALL_ALIASES.get(name, name)
        started = time.perf_counter()
        try:
            response = await answer(request, call)
        except Exception:
            # aiohttp logs it and answers 500: counted, so that a bug shows on the dashboards too.
            metrics.REQUESTS.labels(call, "500").inc()
            raise
        metrics.REQUESTS.labels(call, str(response.status)).inc()
        metrics.REQUEST_SECONDS.labels(call).observe(time.perf_counter() - started)
        return response

    async def answer(request: web.Request, call: str) -> web.Response:
        try:
            outcome = await collector.ingest(request, call)
        except RequestRejected as exc:
            metrics.REJECTED.labels(exc.code).inc()
            return _json(exc.status, {"success": False, "code": exc.code, "message": str(exc)})
        except Unavailable as exc:
            collector.note_unavailable(exc)
            headers = {"Retry-After": str(exc.retry_after_s)}
            return _json(503, {"success": False, "code": "unavailable", "message": str(exc)}, headers)
        return _json(200, outcome.answer())

    async def preflight(request: web.Request) -> web.Response:
        asked = request.headers.get("Access-Control-Request-Headers", "").strip()
        allowed = CORS_HEADERS
        if len(asked) <= CORS_REQUESTED_HEADERS_MAX and CORS_REQUESTED_HEADERS.fullmatch(asked):
            allowed = f"{CORS_HEADERS}, {asked}"
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Methods": "POST, OPTIONS",
                "Access-Control-Allow-Headers": allowed,
                "Access-Control-Max-Age": "86400",
            },
        )

    async def javascript(request: web.Request) -> web.Response:
        return web.Response(
            body=snippet, content_type="application/javascript", charset="utf-8", headers={"Cache-Control": "public, max-age=300"}
        )

    async def healthz(request: web.Request) -> web.Response:
        return _json(200, {"status": "alive"})

    async def readyz(request: web.Request) -> web.Response:
        why = collector.writer.why_not_ready
        if why is None:
            return _json(200, {"ready": True})
        # Not connected to Kafka: what the calls answer meanwhile (Collector.ingest).
        return _json(503, {"ready": False, "reason": why}, {"Retry-After": str(RETRY_AFTER_S)})

    @web.middleware
    async def cross_origin(request: web.Request, handler: Handler) -> web.StreamResponse:
        # Browsers on the sites that embed the snippet post from another origin. aiohttp raises
        # its 404 and 405 (a mistyped path, a GET): without the header a page could not read them.
        try:
            # A preflight of any path: a page that mistyped one then reads the 404 of its call.
            response = await (preflight(request) if request.method == "OPTIONS" else handler(request))
        except web.HTTPNotFound:
            # In the calls' own shape, so a client that reads `code` and `message` reads these too.
            response = _json(404, {"success": False, "code": "unknown_path",
                                   "message": f"no call at {request.path}: the collector takes POST /v1/CALL "
                                              f"(CALL one of {', '.join((*CALL_TYPES, *BATCH_CALLS))}, "
                                              f"or the short forms {', '.join(CALL_ALIASES)}), "
                                              "POST /beacon/v1/batch and GET /v1/leadstream.js"})
        except web.HTTPMethodNotAllowed as exc:
            response = _json(405, {"success": False, "code": "method_not_allowed",
                                   "message": f"{request.method} {request.path}: the path takes "
                                              f"{', '.join(sorted(exc.allowed_methods))}"}, {"Allow": ",".join(sorted(exc.allowed_methods))})
        except web.HTTPException as exc:
            exc.headers.update(CORS_RESPONSE_HEADERS)
            raise
        response.headers.update(CORS_RESPONSE_HEADERS)
        return response

    app = web.Application(middlewares=[cross_origin])
    calls = "|".join((*CALL_TYPES, *BATCH_CALLS, *CALL_ALIASES))
    # RudderStack's browser SDK in beacon mode posts its batches to /beacon/v1/batch, the write key
    # in the query string (navigator.sendBeacon cannot set an Authorization header).
    for path in (f"/v1/{{call:{calls}}}", "/beacon/v1/{call:batch}"):
        app.router.add_post(path, ingest)
    app.router.add_get("/v1/leadstream.js", javascript)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def serve(settings: Settings, sources: dict[str, Source], stop: asyncio.Event) -> None:
    """Serve until `stop` is set, then finish the requests under way and flush the producer."""
    quiet_bad_clients()
    writer = KafkaWriter(settings)
    collector = Collector(settings, sources, writer)
    # Our own decompression applies the size limit to the decompressed body and tells a
    # truncated gzip stream apart; access logs would cost more than the request itself.
    runner = web.AppRunner(create_app(collector), auto_decompress=False, access_log=None, handle_signals=False,
                           shutdown_timeout=10.0, **aiohttp_limits(settings.collector_idle_timeout_ms))
    await runner.setup()
    assert runner.server is not None  # made by setup()
    bound_connections(runner.server, settings.collector_max_connections, "the most LEADSTREAM_COLLECTOR_MAX_CONNECTIONS allows")
    # Both ports first: a port that cannot be had stops the collector before it connects to Kafka.
    try:
        await web.TCPSite(runner, settings.collector_host, settings.collector_port, backlog=1024).start()
        operations = probes.serve(settings.collector_metrics_port, lambda: writer.ready, settings.bind_host,
                                  "LEADSTREAM_COLLECTOR_METRICS_PORT", settings.idle_timeout_ms, RETRY_AFTER_S,
                                  lambda: writer.why_not_ready, metrics=probes.OwnMetrics("leadstream_collector_"))  # fmt: skip
    except OSError as exc:
        await runner.cleanup()
        raise cannot_listen(settings.collector_host, settings.collector_port, "LEADSTREAM_COLLECTOR_PORT", exc,
                            "LEADSTREAM_COLLECTOR_HOST") from None
    except ServiceError:
        await runner.cleanup()
        raise
    connecting = asyncio.create_task(writer.connect())
    watching = asyncio.create_task(writer.watch())
    log.info("collector listening on http://%s; /metrics, /healthz and /readyz on %s",
             authority(settings.collector_host, settings.collector_port),
             authority(settings.bind_host, settings.collector_metrics_port))
    try:
        await _until_stopped(stop, connecting)
    finally:
        operations.shutdown()
        operations.server_close()
        await runner.cleanup()
        await _stopped(connecting)  # its attempt under way stops its producer
        await _stopped(watching)
        await writer.close()


async def _until_stopped(stop: asyncio.Event, connecting: asyncio.Task[None]) -> None:
    """Waits for `stop`; raises what `connecting` fails with (the topics' partition counts are
    not LEADSTREAM_PARTITIONS: the collector refuses to start)."""
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([stopping, connecting], return_when=asyncio.FIRST_COMPLETED)
        if connecting.done() and not connecting.cancelled() and (failure := connecting.exception()) is not None:
            raise failure
        await stopping
    finally:
        stopping.cancel()


def run_collector(settings: Settings) -> int:
    sources = load_sources(settings.collector_write_keys)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.ERROR)  # its connection retries are reported by ours
    throttle_kafka_retries()  # which it logs at ERROR

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, sources, stop)

    asyncio.run(main())
    log.info("collector stopped")
    return 0
