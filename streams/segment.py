"""Segment-spec calls (track, page, screen, identify, group, alias) mapped onto leadstream's events.

Pure functions of the call, its source and the arrival time: no I/O, no clock. A call that cannot
be mapped raises `RequestRejected` (status 400) with a reason code and a sentence saying what to
fix; the collector reports it to the client and dead-letters it.

Every call becomes one leadstream event:
- `event_id` is the call's `messageId`, so a client's retry of the same call is the same event
  and never scores twice (a call without one gets a hash of its type and content instead, and
  of its arrival time when it has no time of its own);
- `lead_id` is the `userId`, else `anon:` + the `anonymousId` (a `userId` with that prefix is
  refused: it would be a visitor's profile);
- `time` is the call's `timestamp`, else its `originalTimestamp`, corrected for the client's
  clock skew by `sentAt` when there is one (as Segment does); without either, the arrival time,
  which is kept beside it as `received_at`. A time further ahead of the arrival than the worker
  accepts (LEADSTREAM_MAX_FUTURE_MS) is refused;
- track -> the event name, normalised (`Pricing Viewed` -> `pricing_viewed`), with its
  properties; page -> `page_view` with url, path, title, referrer, search and `time_on_page_s`
  (from the properties, or from `context.page` when it is the page of the properties' url;
  path and search read from the url when not given); screen -> `screen_view`; the three take the
  browser's `context.userAgent` as `properties.user_agent` where they have none;
- identify -> `identify` with the traits (the call's, over `context.traits` where RudderStack
  puts them), group -> `group` with the account id, alias -> `alias` with `previous_id`: these
  three go to the profiles topic. The traits fit scoring reads get one flat name each
  (`company_size`, `industry`, `country`) beside Segment's nested ones, a size sent as a whole
  number's text ("329") as its number; of a group's traits, which describe the account (its
  name, e-mail, phone), the lead gets only these.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Any, Callable
from urllib.parse import urlsplit

import msgspec
import orjson

from scoring.events import (
    MAX_ID_CHARS, MAX_NESTING, MAX_TIME_MS, MIN_TIME_MS, PROFILE_TYPES, Rejection, beyond_64_bits, fits_64_bits, is_id, leap_second_hint,
    nesting,
    parse_event,
)
from scoring.identity import ANONYMOUS_PREFIX
from streams.errors import ConfigError, RefusalCode, RequestRejected
from streams.settings import FutureLimit

CALL_TYPES = ("track", "page", "screen", "identify", "group", "alias")
EVENT_NAME_STYLES = ("snake_case", "verbatim")
PAGE_FIELDS = ("url", "path", "title", "referrer", "search")
# Fields a client sets anew on every attempt: left out of the content hash of a call without
# messageId, so that a retry still hashes to the same event id.
_PER_ATTEMPT_FIELDS = frozenset({"sentAt", "writeKey"})
# orjson writes at most 254 levels of objects and arrays, the hashed call's own object being one:
# a call without messageId with a field nested deeper cannot be hashed into an event id.
_HASHABLE_NESTING = 253
#: Writes what orjson does not (integers beyond 64 bits), keys sorted as for orjson.OPT_SORT_KEYS.
_SORTED_JSON = msgspec.json.Encoder(order="sorted").encode
# Stands in for the content hash of a call without messageId while the scoring engine checks
# the event (same shape, so the same checks): the hash is taken only of a call that passed.
_PENDING_ID = "sha256:" + "0" * 32
# Where Segment's reserved traits hold what fit rules read (scoring/models/*.toml:
# `traits.company_size`, `traits.industry`, `traits.country`), the flat name first: a person's
# nest their company's, a group's are the account's own (`employees`, Segment's name for a
# group's size).
_PERSON_FIT: dict[str, tuple[tuple[str, ...], ...]] = {
    "company_size": (("company_size",), ("employees",), ("company", "employee_count")),
    "industry": (("industry",), ("company", "industry")),
    "country": (("country",), ("address", "country")),
}
_ACCOUNT_FIT: dict[str, tuple[tuple[str, ...], ...]] = {
    "company_size": (("company_size",), ("employees",), ("employee_count",)),
    "industry": (("industry",),),
    "country": (("country",), ("address", "country")),
}
# Fit rules compare a size with numbers only (`company_size = { gte = 200 }`), and Segment's
# Group spec types `employees` as a String, as clients then send it ("329"): such text is read
# as its number. Only the digits of a whole number, which nothing else could mean: "1,200" and
# "1.200" are 1200 or 1.2 by locale, "10-50" a range. At most 18 digits, within the 64 bits a
# lead's state keeps.
_WHOLE_NUMBER = re.compile(r"\s*([0-9]{1,18})\s*")
_NUMERIC_FIT = frozenset({"company_size"})
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_MS = timedelta(milliseconds=1)
_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_SEPARATORS = re.compile(r"[\W_]+")


@dataclass(frozen=True, slots=True)
class Source:
    """What a write key stands for: the source's name and, optionally, the product it tracks."""

    name: str
    product: str | None = None


@dataclass(frozen=True, slots=True)
class Mapped:
    """One call as a leadstream event, serialized, with where it goes."""

    lead_id: str
    profile: bool  # True: the profiles topic (identify, group, alias); False: the events topic
    value: bytes


def rejected(code: RefusalCode, message: str) -> RequestRejected:
    return RequestRejected(400, code, message)


@lru_cache(maxsize=4096)  # a site has few distinct event names; the regexes cost ~2 us each
def snake_case(name: str) -> str:
    """`Pricing Viewed`, `PricingViewed` and `pricing-viewed` all become `pricing_viewed`."""
    return _SEPARATORS.sub("_", _CAMEL_BOUNDARY.sub("_", name)).strip("_").lower()


def _verbatim(name: str) -> str:
    return name


class Mapper:
    def __init__(self, event_names: str, max_future_ms: int, clock_offset_ms: int = 0) -> None:
        """`max_future_ms`: the worker's LEADSTREAM_MAX_FUTURE_MS, so that a call it would refuse
        is refused here, where the client hears why; `clock_offset_ms`: LEADSTREAM_CLOCK_OFFSET_MS,
        which the arrival times given to `map` include, for that message."""
        if event_names not in EVENT_NAME_STYLES:
            raise ConfigError(
                f"LEADSTREAM_COLLECTOR_EVENT_NAMES={event_names!r} is not one of {', '.join(EVENT_NAME_STYLES)}"
            )
        self._max_future_ms = max_future_ms
        self._clock_offset_ms = clock_offset_ms
        self._name: Callable[[str], str] = snake_case if event_names == "snake_case" else _verbatim
        self._by_type: dict[str, Callable[[dict[str, Any], dict[str, Any], dict[str, Any]], None]] = {
            "track": self._track,
            "page": _page,
            "screen": _screen,
            "identify": _identify,
            "group": _group,
            "alias": _alias,
        }

    def map(self, call: object, call_type: str | None, source: Source, received_at_ms: int, sent_at: object = None) -> Mapped:
        """The leadstream event of one call.

        `call_type` is given by a single-call endpoint (/v1/track...); for batch items it is None
        and the call's own `type` decides. `sent_at` is the batch's `sentAt`, used when the call
        has none of its own.
        """
        if not isinstance(call, dict):
            raise rejected("bad_call", "each call must be a JSON object")
        kind = call_type or call.get("type")
        if kind not in CALL_TYPES:
            raise rejected("bad_type", f"`type` is {_shown(kind)}; it must be one of {', '.join(CALL_TYPES)}")
        user_id = _identifier(call, "userId")
        anonymous_id = _identifier(call, "anonymousId")
        if user_id is None and anonymous_id is None:
            raise rejected("missing_identity", f"a {kind} call needs a `userId` or an `anonymousId`")
        if user_id is not None and user_id.startswith(ANONYMOUS_PREFIX):
            # It would name the profile of the visitor whose anonymousId follows the prefix.
            raise rejected("bad_field", f"`userId` must not start with {ANONYMOUS_PREFIX!r}, the prefix reserved for anonymous "
                           f"visitors' profiles ({ANONYMOUS_PREFIX!r} + their anonymousId), not {_shown(user_id)}: send the "
                           "user's own id, or the visitor's id as `anonymousId`")
        if anonymous_id is not None and not is_id(ANONYMOUS_PREFIX + anonymous_id):
            # It names the visitor's lead, which the worker would refuse to stitch (streams/stitching.py).
            raise rejected("bad_field", f"`anonymousId` must be 1 to {MAX_ID_CHARS - len(ANONYMOUS_PREFIX)} characters with no control "
                           f"character (the visitor's lead id is {ANONYMOUS_PREFIX!r} + it), not {_shown(anonymous_id)}")
        message_id = _identifier(call, "messageId")
        context = _object(call, "context")
        event: dict[str, Any] = {
            "event_id": message_id if message_id is not None else _PENDING_ID,
            "lead_id": user_id if user_id is not None else ANONYMOUS_PREFIX + str(anonymous_id),
            "type": kind,
            "time": event_time_ms(call, received_at_ms, sent_at, max_future_ms=self._max_future_ms, clock_offset_ms=self._clock_offset_ms),
            "received_at": received_at_ms,
            "properties": {},
        }
        context_traits = _object(context, "traits", "context.")
        if context_traits:
            event["traits"] = canonical_traits(context_traits)
        group_id = _identifier(context, "groupId", "context.")
        if group_id is not None:
            event["account_id"] = group_id
        self._by_type[kind](call, context, event)
        agent = context.get("userAgent")
        if isinstance(agent, str) and kind not in PROFILE_TYPES and "user_agent" not in event["properties"]:
            # Where a rule reads it (the b2b model's spam bot rule): the browser libraries and
            # the page snippet send it in the context only.
            event["properties"] = {**event["properties"], "user_agent": agent}
        app = context.get("app")
        product = source.product or (app.get("name") if isinstance(app, dict) else None)
        if isinstance(product, str) and product:
            event["product"] = product
        if anonymous_id is not None:
            event["anonymous_id"] = anonymous_id
        event["source"] = source.name
        # Refuse here, where the client hears why, what the worker would only dead-letter
        # (an id over 256 characters, a time outside 2000-2099, too many properties).
        checked = parse_event(event)
        if isinstance(checked, Rejection):
            raise rejected("bad_field", f"the scoring engine would refuse this call's event: {checked.detail}")
        if message_id is None:
            # After the engine's checks: a property or trait nested too deep to hash is then
            # refused for the reason it is in a call with a messageId.
            event["event_id"] = _content_id(call, kind, received_at_ms)
        return Mapped(event["lead_id"], kind in PROFILE_TYPES, orjson.dumps(event))

    def _track(self, call: dict[str, Any], context: dict[str, Any], event: dict[str, Any]) -> None:
        name = call.get("event")
        if name is not None and not isinstance(name, str):
            raise rejected("bad_field", f"`event` must be a string, the name of the action (e.g. \"Pricing Viewed\"), not {_shown(name)}")
        if name is None or not name.strip():
            raise rejected("missing_event", "a track call needs `event`, the name of the action (e.g. \"Pricing Viewed\")")
        normalised = self._name(name)
        if not normalised:
            raise rejected("bad_event", f"event name {_shown(name)} has no letters or digits to name an event type by")
        event["type"] = normalised
        event["properties"] = _object(call, "properties")


def _page(call: dict[str, Any], context: dict[str, Any], event: dict[str, Any]) -> None:
    own = _object(call, "properties")
    properties = dict(own)
    # analytics.js sends the page's fields in context.page as well; the call's own ones win.
    # They are taken only when they describe the call's page: a call naming another url than
    # the open page's would get that page's path and title, and path rules would score it.
    page = _object(context, "page", "context.")
    own_url = own.get("url")
    if page and (own_url is None or own_url == page.get("url")):
        for name in PAGE_FIELDS:
            if name not in properties and name in page:
                properties[name] = page[name]
    url = properties.get("url")
    if "path" not in properties and isinstance(url, str):
        # Every page view gets the path its rules compare (`path == "/pricing"`): a URL with no
        # path to read is the client's to fix, not a page view to keep that no path rule sees.
        try:
            parts = urlsplit(url)
        except ValueError as exc:  # an unclosed `[` (an IPv6 host), a host that NFKC changes
            field = "properties.url" if "url" in own else "context.page.url"
            reason = _cut(str(exc), 120)  # the NFKC one quotes the host, which may be most of 32 KB
            raise rejected("bad_field", f"`{field}` is not a URL ({reason}): {_shown(url)}; send the page's address") from None
        properties["path"] = parts.path or "/"
        if "search" not in properties and parts.query:
            properties["search"] = f"?{parts.query}"  # as location.search, which the libraries send
    for name in ("name", "category"):
        value = call.get(name)
        if isinstance(value, str) and name not in properties:
            properties[name] = value
    spent = properties.get("time_on_page_s")  # what scoring rules compare (`time_on_page_s >= 120`)
    if spent is not None and (isinstance(spent, bool) or not isinstance(spent, (int, float)) or not 0 <= spent < 2**53):
        raise rejected("bad_field", f"`properties.time_on_page_s` must be a number of seconds >= 0 and < 2**53, not {_shown(spent)}")
    event["type"] = "page_view"
    event["properties"] = properties


def _screen(call: dict[str, Any], context: dict[str, Any], event: dict[str, Any]) -> None:
    properties = dict(_object(call, "properties"))
    name = call.get("name")
    if isinstance(name, str) and "name" not in properties:
        properties["name"] = name
    event["type"] = "screen_view"
    event["properties"] = properties


def _identify(call: dict[str, Any], context: dict[str, Any], event: dict[str, Any]) -> None:
    # RudderStack's libraries send an identify's traits in context.traits only.
    event["traits"] = canonical_traits({**_object(context, "traits"), **_object(call, "traits")})


def _group(call: dict[str, Any], context: dict[str, Any], event: dict[str, Any]) -> None:
    group_id = _identifier(call, "groupId")
    if group_id is None:
        raise rejected("missing_group_id", "a group call needs `groupId`, the id of the lead's account")
    event["account_id"] = group_id
    # A group's traits are its account's own (its name, e-mail, phone...): set as the lead's,
    # they would replace the person's, and CRM sinks would then update the company's contact.
    # Only the account's fit fields are the lead's too.
    account = _lifted(_object(call, "traits"), _ACCOUNT_FIT)
    if account:
        event["traits"] = {**event.get("traits", {}), **account}


def _alias(call: dict[str, Any], context: dict[str, Any], event: dict[str, Any]) -> None:
    previous_id = _identifier(call, "previousId")
    if previous_id is None:
        raise rejected("missing_previous_id", "an alias call needs `previousId`, the id the lead had before")
    if _identifier(call, "userId") is None:
        raise rejected("missing_user_id", "an alias call needs `userId`, the lead's new id")
    if not is_id(previous_id):
        raise rejected("bad_field", f"`previousId` must be 1 to {MAX_ID_CHARS} characters with no control character, not {_shown(previous_id)}")
    event["previous_id"] = previous_id


def with_batch_context(call: object, context: dict[str, Any]) -> object:
    """A batch's call with the `context` the batch gives all its calls under its own: the call's
    values win, objects in both merged key by key (`app` from the batch, `page.title` its own)."""
    if not context or not isinstance(call, dict):
        return call
    own = call.get("context")
    if own is None:
        return {**call, "context": context}
    if not isinstance(own, dict):
        return call  # refused as it is: its `context` must be an object
    return {**call, "context": _merged(context, own, MAX_NESTING)}


def _merged(base: dict[str, Any], own: dict[str, Any], depth: int) -> dict[str, Any]:
    """`own` over `base`, objects in both merged key by key down to `depth` levels; deeper, own's
    object wins whole (no context nests that far, and a request may nest 1,000 levels)."""
    out = dict(base)
    for key, value in own.items():
        under = out.get(key)
        out[key] = _merged(under, value, depth - 1) if depth and isinstance(under, dict) and isinstance(value, dict) else value
    return out


def canonical_traits(traits: dict[str, Any]) -> dict[str, Any]:
    """A person's traits as sent, plus those fit scoring reads under one flat name each.

    Segment's reserved traits nest some of them (`company.employee_count`, `address.country`);
    a flat name already sent wins. A size sent as a whole number's text is its number.
    """
    return {**traits, **_lifted(traits, _PERSON_FIT)}


def _lifted(traits: dict[str, Any], paths: dict[str, tuple[tuple[str, ...], ...]]) -> dict[str, Any]:
    """Each flat name of `paths` with the value of its first path the traits hold (not null),
    a size given as a whole number's text ("329", Segment's type for it) as that number."""
    out: dict[str, Any] = {}
    for name, candidates in paths.items():
        for path in candidates:
            value: Any = traits
            for key in path:
                value = value.get(key) if isinstance(value, dict) else None
            if value is not None:
                out[name] = _as_number(value) if name in _NUMERIC_FIT else value
                break
    return out


def _as_number(value: Any) -> Any:
    """A whole number sent as text as that number; anything else as sent."""
    digits = _WHOLE_NUMBER.fullmatch(value) if isinstance(value, str) else None
    return value if digits is None else int(digits[1])


def event_time_ms(call: dict[str, Any], received_at_ms: int, sent_at: object = None, *, max_future_ms: int,
                  clock_offset_ms: int = 0) -> int:
    """When the call happened, in epoch ms, by Segment's rules.

    Its `timestamp`, else its `originalTimestamp`, read from the client's clock: Segment's
    server libraries set `timestamp` from the host's clock as browsers set `originalTimestamp`.
    With `sentAt`, when the client sent it by the same clock, Segment corrects either for that
    clock's skew: receivedAt - (sentAt - time). Without either time, the arrival time.

    A time the worker would dead-letter after the client heard 200 is refused, naming the field
    the client sent: outside the years 2000-2099, or more than `max_future_ms` after the arrival
    (0: no limit), which is read from the wall clock moved by `clock_offset_ms` (said so).
    """
    field = "timestamp" if call.get("timestamp") is not None else "originalTimestamp"
    happened = iso_ms(call.get(field), field)
    if happened is None:
        return received_at_ms
    # A call's own null is no sentAt of its own: the batch's applies, as for `timestamp`.
    sent_value = call.get("sentAt")
    if sent_value is None:
        sent_value = sent_at
    sent = iso_ms(sent_value, "sentAt")
    # The client's clock may be off: shift by how far ahead it was when it sent the call.
    time_ms = happened if sent is None else received_at_ms - (sent - happened)
    # Refused here, naming what the client sent: the engine's refusal would name our `time`.
    if not MIN_TIME_MS <= time_ms < MAX_TIME_MS:
        raise rejected(
            "bad_field",
            f"{_time_given(call[field], field, sent_value)} gives a time outside the years 2000-2099 the scoring engine "
            "accepts: send when the call happened",
        )
    ahead_ms = time_ms - received_at_ms
    if max_future_ms and ahead_ms > max_future_ms:
        raise rejected(
            "future_time",
            f"{_time_given(call[field], field, sent_value)} puts the call "
            + FutureLimit(received_at_ms, "the collector's clock", max_future_ms, clock_offset_ms).ahead(time_ms)
            + " (the worker would refuse it too): send when the call happened, with its UTC offset",
        )
    return time_ms


def _time_given(value: object, field: str, sent_value: object) -> str:
    """The time a call gave, for a message: the field and value, and the `sentAt` correcting it."""
    skew = "" if sent_value is None else f", corrected for the client's clock by `sentAt` {_shown(sent_value)},"
    return f"`{field}` {_shown(value)}{skew}"


def iso_ms(value: object, name: str) -> int | None:
    """An ISO-8601 date-time as epoch ms (UTC when it has no offset); None when absent."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise rejected("bad_field", f"`{name}` must be an ISO-8601 date-time string, not {_shown(value)}")
    try:
        parsed = datetime.fromisoformat(value.upper())  # RFC 3339 allows "t" and "z" too, as events do
    except ValueError:
        raise rejected("bad_field", f"`{name}` is not an ISO-8601 date-time: {value[:64]!r}" + leap_second_hint(value)) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return (parsed - _EPOCH) // _ONE_MS


#: The fields a call's ids are read from (`_identifier`), a batch's `context.groupId` included: the
#: collector refuses a call whose id its repair of bytes that are not UTF-8 changed (`jos\xe9` and
#: `jos\xfc` would be one lead, `order-\xe9` and `order-\xfc` one event, the second dropped as a repeat).
IDENTIFIERS = ("userId", "anonymousId", "previousId", "groupId", "messageId", "context.groupId")


def _identifier(call: dict[str, Any], name: str, parent: str = "") -> str | None:
    """An id field as a string (Segment allows numbers); None when absent or empty. `parent`
    names the object holding it in messages (`context.`)."""
    value = call.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        if fits_64_bits(value):
            return str(value)
        raise rejected("bad_field", beyond_64_bits(f"`{parent}{name}`"))
    raise rejected("bad_field", f"`{parent}{name}` must be a string or an integer, not {_shown(value)}")


def _object(call: dict[str, Any], name: str, parent: str = "") -> dict[str, Any]:
    value = call.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise rejected("bad_field", f"`{parent}{name}` must be a JSON object, not {_shown(value)}")
    return value


def _shown(value: object) -> str:
    """A value of the call for a message, which the client hears and the dead letters keep: an
    object or array by its kind only (it may be nested deeper than repr() can recurse, and
    holds up to a call's 32 KB), a string cut short."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str) and len(value) > 64:
        return f"{value[:64]!r}... ({len(value)} characters)"
    if value is None:  # as the call wrote it (JSON), not as Python prints it
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and not fits_64_bits(value):
        return f"an integer of {value.bit_length()} bits"  # up to 4,300 digits (the most str() writes)
    return repr(value)



def _cut(text: str, limit: int) -> str:
    """A text for a message, cut after `limit` characters."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _content_id(call: dict[str, Any], kind: str, received_at_ms: int) -> str:
    """The event id of a call without messageId: a hash of what a retry of it sends alike.

    The call's type counts, whether the body or the endpoint gave it: the same body sent to
    /v1/page and to /v1/screen is two calls. So does the arrival time of a call with no time of
    its own: the same call sent on another day is another event, and a retry of it could not
    be told from a repeat anyway.
    """
    untimed = call.get("timestamp") is None and call.get("originalTimestamp") is None
    content = {k: v for k, v in call.items() if k not in _PER_ATTEMPT_FIELDS}
    for name, value in content.items():
        if (value.__class__ is dict or value.__class__ is list) and nesting(value, _HASHABLE_NESTING) > _HASHABLE_NESTING:
            raise rejected(
                "bad_field",
                f"`{name}` nests objects and arrays more than {_HASHABLE_NESTING} levels deep, too deep to derive "
                "the call's event id from its content: send a `messageId`, or nest less",
            )
    digest = hashlib.sha256(f"{kind} {received_at_ms if untimed else ''}\n".encode())
    try:
        said = orjson.dumps(content, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:  # an integer beyond 64 bits where the event takes nothing from (`context.x`)
        said = _SORTED_JSON(content)
    digest.update(said)
    return "sha256:" + digest.hexdigest()[:32]

