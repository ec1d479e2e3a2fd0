"""HubSpot connector, with the official `hubspot-api-client` (CRM v3 objects API).

Per crossing, on the lead's contact (found by the `hubspot_id` trait, else by `email` with
idProperty=email) or, for an account crossing when the mapping has an `[account]` table, on the
account's company (found by the mapping's `id_property`, a unique-value company property holding
the account id):
1. Read the record's values of what the level sets (e.g. lifecyclestage) and, when a deal or task
   is made for its owner, its `hubspot_owner_id`. Then update the record with the mapped
   properties and what the level sets, but for a value the record holds that the mapping's levels
   neither set nor `replaces` (a stage leadstream does not manage, such as `opportunity` or
   `customer`: sales', kept and logged). HubSpot refuses to move a lifecycle stage backwards
   unless it is cleared first, so a down-crossing that sets one clears it in a first update.
2. On an up-crossing to a `[deal]` level: create a deal in the configured pipeline and stage,
   owned by the task owner and associated with the record.
3. On an up-crossing to a `[task]` level: create a follow-up task for the owner (the mapping's,
   else the record's `hubspot_owner_id`), associated with the record and the new deal.
Down-crossings only update the record: deals are sales' to close, not ours to churn.

Deals and tasks carry the crossing id in a custom property, so a creation interrupted by a
crash is found with the search API instead of being made twice. Without an `[account]` table,
account crossings are acknowledged without a HubSpot action.

A record reference taken from a crossing goes into the URL path. The client percent-encodes
'/', but urllib3 still resolves a '.' or '..' segment, which would send the update to another
endpoint: such a reference, or a record id (the `hubspot_id` trait, an account id with
`id_property = "hs_object_id"`) that is not a number, dead-letters the crossing.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, TypeVar
from urllib.parse import urljoin

import orjson
import urllib3
from hubspot import Client
from hubspot.crm.companies import ApiException as CompaniesApiException
from hubspot.crm.contacts import ApiException as ContactsApiException
from hubspot.crm.deals import ApiException as DealsApiException
from hubspot.crm.objects.tasks import ApiException as TasksApiException

from sinks.base import UNKEPT_TRAITS, Crossing, CrossingSink, Steps
from sinks.errors import CredentialsError, OutcomeUnknown, PermanentError, QuotaExhausted, RetryableError, excerpt, for_status
from sinks.http import Deadline, shown_url, watched
from sinks.mapping import AccountMapping, Mapping, load_mapping
from sinks.ratelimit import limiter_for
from streams.errors import ConfigError
from streams.settings import Settings

R = TypeVar("R")
log = logging.getLogger("leadstream.sinks")

# HubSpot-defined association type ids (CRM associations v4 reference).
DEAL_TO_CONTACT = 3
DEAL_TO_COMPANY = 5  # the deal's primary company
TASK_TO_CONTACT = 204
TASK_TO_COMPANY = 192
TASK_TO_DEAL = 216
_API_ERRORS = (ContactsApiException, CompaniesApiException, DealsApiException, TasksApiException)
_RECORD_ID = re.compile(r"[0-9]+")  # hs_object_id


@dataclass(frozen=True)
class _Target:
    """The HubSpot object a crossing updates, and how deals and tasks are associated with it."""

    name: str  # "contact" or "company", for errors
    api: Any  # its basic API
    deal_association: int
    task_association: int


class HubSpotSink(CrossingSink):
    name = "hubspot"
    lookup_traits = ("hubspot_id", "email")  # _contact_ref's

    def __init__(self, settings: Settings, mapping: Mapping | None = None) -> None:
        if not settings.hubspot_access_token:
            raise ConfigError(
                "LEADSTREAM_HUBSPOT_ACCESS_TOKEN is empty: create a HubSpot private app with the "
                "scopes crm.objects.contacts.read, crm.objects.contacts.write, crm.objects.companies.read, "
                "crm.objects.companies.write, crm.objects.deals.read and crm.objects.deals.write (the connector "
                "reads records' owners and searches deals and tasks by crossing id) and set its access token"
            )
        self.mapping = mapping or load_mapping(settings.sink_mapping_dir / "hubspot.toml", with_deals=True)
        self.limiter = limiter_for("LEADSTREAM_HUBSPOT_RATE_LIMIT", settings.hubspot_rate_limit, "hubspot")
        self.timeout_s = settings.sink_timeout_s
        self.base_url = settings.hubspot_base_url.rstrip("/")
        client = Client.create(
            access_token=settings.hubspot_access_token,
            host=self.base_url,
            retry=False,  # retries are the runner's: with backoff, Retry-After and the shared rate limit
            connection_pool_maxsize=settings.sink_concurrency,
        )
        # Each attribute access builds a new API client (and connection pool): keep one of each.
        self.contacts = _Target("contact", client.crm.contacts.basic_api, DEAL_TO_CONTACT, TASK_TO_CONTACT)
        self.companies = _Target("company", client.crm.companies.basic_api, DEAL_TO_COMPANY, TASK_TO_COMPANY)
        self.deals = client.crm.deals.basic_api
        self.deal_search = client.crm.deals.search_api
        self.tasks = client.crm.objects.tasks.basic_api
        self.task_search = client.crm.objects.tasks.search_api
        for api in (self.contacts.api, self.companies.api, self.deals, self.deal_search, self.tasks, self.task_search):
            watched(api.api_client.rest_client.pool_manager)  # so that _call's Deadline can end a call

    def handles(self, item: Crossing) -> bool:
        return self.mapping.covers(item)

    def deliver(self, item: Crossing, steps: Steps) -> None:
        mapping = self.mapping.record_for(item)
        if isinstance(mapping, AccountMapping):  # an account crossing goes to the account's company
            target = self.companies
            ref, id_property = self._company_ref(item, mapping.id_property)
        else:
            target = self.contacts
            ref, id_property = self._contact_ref(item)
        deal, task = mapping.deal, mapping.task
        wants_deal = item.direction == "up" and deal is not None and item.to_level in deal.levels
        wants_task = item.direction == "up" and task is not None and item.to_level in task.levels
        wants_owner = (wants_deal or wants_task) and not (task and task.owner)
        # One read, before the update, of what it depends on: the stage sales may have moved the
        # record to (kept), and the owner of the deal and task.
        wanted = mapping.level_fields(item) + (["hubspot_owner_id"] if wants_owner else [])
        what = _what(target, ref, id_property, item)
        current = self._read(target, ref, id_property, what, wanted) if wanted else {}
        kept = mapping.kept_fields(item, current)
        for name, value in kept.items():
            log.info("HubSpot %s: %s %r kept, not a value the mapping's levels set or replace (sales moved it there; "
                     "list it in the mapping's [replaces] for crossings to move it); "
                     "the other properties are updated", what, name, value)
        properties = {name: _text(value) for name, value in mapping.record_values(item, kept).items()}
        record_id = self._update(target, item, ref, id_property, what, properties)
        if not (wants_deal or wants_task):
            return
        owner = (task.owner if task else "") or current.get("hubspot_owner_id", "")
        deal_id = None
        if deal is not None and wants_deal:
            deal_id = steps.once(
                "deal",
                lambda: self._create("deals", self.deals.create, {
                    "properties": {
                        "dealname": deal.name.format(**item.template_fields()),
                        "pipeline": deal.pipeline,
                        "dealstage": deal.stage,
                        "hubspot_owner_id": owner,
                        deal.crossing_id_property: item.id,
                    },
                    "associations": [_association(record_id, target.deal_association)],
                }),
                lambda: self._find("deals", self.deal_search.do_search, deal.crossing_id_property, item.id),
            )
        if task is not None and wants_task:
            due = datetime.fromtimestamp(item.time_ms / 1000, timezone.utc) + timedelta(hours=task.due_in_hours)
            associations = [_association(record_id, target.task_association)]
            if deal_id is not None:
                associations.append(_association(deal_id, TASK_TO_DEAL))
            steps.once(
                "task",
                lambda: self._create("tasks", self.tasks.create, {
                    "properties": {
                        "hs_timestamp": due.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                        "hs_task_subject": task.subject.format(**item.template_fields()),
                        "hs_task_body": task.body.format(**item.template_fields()),
                        "hs_task_status": "NOT_STARTED",
                        "hs_task_priority": task.priority,
                        "hubspot_owner_id": owner,
                        task.crossing_id_property: item.id,
                    },
                    "associations": associations,
                }),
                lambda: self._find("tasks", self.task_search.do_search, task.crossing_id_property, item.id),
            )

    @staticmethod
    def _contact_ref(crossing: Crossing) -> tuple[str, str | None]:
        if hubspot_id := crossing.traits.get(HubSpotSink.lookup_traits[0]):
            return _record_id(hubspot_id, f"lead {crossing.lead_id}'s hubspot_id trait"), None
        if crossing.email:
            return _unique_value(crossing.email, f"lead {crossing.lead_id}'s email trait"), "email"
        raise PermanentError(f"lead {crossing.lead_id}: the crossing carries neither a hubspot_id nor an email trait "
                             f"({UNKEPT_TRAITS}): no way to find its HubSpot contact")

    @staticmethod
    def _company_ref(crossing: Crossing, id_property: str) -> tuple[str, str | None]:
        if not crossing.account_id:
            raise PermanentError(f"account crossing {crossing.id} names no account_id: no way to find its HubSpot company")
        source = f"account crossing {crossing.id}'s account_id"
        if id_property == "hs_object_id":  # the account ids are HubSpot's own company ids, the path's default
            return _record_id(str(crossing.account_id), f"{source} (id_property = \"hs_object_id\")"), None
        return _unique_value(str(crossing.account_id), source), id_property

    def _update(self, target: _Target, crossing: Crossing, ref: str, id_property: str | None, what: str,
                properties: dict[str, str]) -> str:
        if crossing.direction == "down" and properties.get("lifecyclestage"):
            # HubSpot refuses to move a lifecycle stage backwards unless it is cleared first
            # (record_values let through only a stage that the mapping's levels may replace).
            self._call(what, target.api.update, ref, {"properties": {"lifecyclestage": ""}}, id_property=id_property)
        return _id(what, self._call(what, target.api.update, ref, {"properties": properties}, id_property=id_property))

    def _read(self, target: _Target, ref: str, id_property: str | None, what: str, names: list[str]) -> dict[str, str]:
        """The record's values of its properties `names` (absent when it has none)."""
        record = self._call(what, target.api.get_by_id, ref, properties=names, id_property=id_property)
        if record.properties is None:
            # A body that is not JSON, read as an empty model: not a record without these properties.
            raise RetryableError(f"HubSpot {what}: malformed answer (no properties)")
        return {name: str(record.properties[name]) for name in names if record.properties.get(name)}

    def _create(self, what: str, create: Callable[..., Any], body: dict[str, Any]) -> str:
        return _id(f"create {what}", self._call(f"create {what}", create, body))

    def _find(self, what: str, search: Callable[..., Any], prop: str, crossing_id: str) -> str | None:
        body = {
            "filterGroups": [{"filters": [{"propertyName": prop, "operator": "EQ", "value": crossing_id}]}],
            "properties": [prop],
            "limit": 1,
        }
        results = self._call(f"search {what}", search, body).results
        if results is None:
            # The generated client reads a body that is not JSON as an empty model: taken for "no
            # such record", it made the record a second time.
            raise RetryableError(f"HubSpot search {what}: malformed answer (no results)")
        return _id(f"search {what}", results[0]) if results else None

    def _call(self, what: str, fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        """One API request: within the rate limit, and the timeout of each read and of the whole
        call (the client's bounds each read only); its failures as sink errors."""
        self.limiter.acquire()
        with Deadline(self.timeout_s) as deadline:
            try:
                result = self._request(what, fn, *args, **kwargs)
            except RetryableError:
                if not deadline.expired:
                    raise
            else:
                if not deadline.expired:
                    return result
        # Whatever the cut connection left (an error, a truncated answer), it is not the answer.
        raise OutcomeUnknown(f"HubSpot {what}: no whole answer within {self.timeout_s:g} s")

    def _request(self, what: str, fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        try:
            return fn(*args, _request_timeout=self.timeout_s, **{k: v for k, v in kwargs.items() if v is not None})
        except _API_ERRORS as exc:
            status = int(exc.status or 0)
            if status == 404:
                raise PermanentError(f"HubSpot {what}: not found (404): {excerpt(_body(exc))}") from None
            if status == 0:  # the client's wrapper of a TLS or protocol failure
                raise RetryableError(f"HubSpot {what}: {exc.reason}") from None
            if 300 <= status < 400:
                raise _redirected(what, status, self.base_url, dict(exc.headers or {})) from None
            if status == 429 and _policy(_body(exc)) == "DAILY":
                raise QuotaExhausted(
                    f"HubSpot {what}: HTTP 429 DAILY: the HubSpot account's daily API limit is used up (shared by every app "
                    "of the account); it is renewed at midnight in the account's time zone") from None
            if status == 403 and (scopes := _missing_scopes(_body(exc))) is not None:
                raise CredentialsError(
                    f"HubSpot {what}: HTTP 403 MISSING_SCOPES: the private app of LEADSTREAM_HUBSPOT_ACCESS_TOKEN lacks "
                    f"{'one of the scopes ' + ', '.join(scopes) if scopes else 'a scope this call needs'}: grant it in "
                    "HubSpot (the private app's Scopes); the connector goes on once HubSpot takes its calls") from None
            raise for_status(status, f"HubSpot {what}", _body(exc), dict(exc.headers or {}),
                             "LEADSTREAM_HUBSPOT_ACCESS_TOKEN") from None
        except urllib3.exceptions.HTTPError as exc:
            # Timed out reading the answer: the request was sent, and HubSpot may still act on it.
            error = OutcomeUnknown if isinstance(exc, urllib3.exceptions.ReadTimeoutError) else RetryableError
            raise error(f"HubSpot {what}: no answer ({type(exc).__name__}: {exc})") from None
        except ValueError as exc:
            # The generated client rejects an answer that is not the documented JSON this way.
            raise RetryableError(f"HubSpot {what}: malformed answer ({exc})") from None


def _redirected(what: str, status: int, base_url: str, headers: dict[str, str]) -> PermanentError:
    """A 3xx, which the client does not follow (the retries it would follow them with are off):
    every call gets it alike, from a LEADSTREAM_HUBSPOT_BASE_URL that is not the API's own (http://
    where HTTPS is served, a proxy or an old host), so the setting is named. It was dead-lettered
    as "HTTP 301: " and the body, which said nothing of where or why."""
    location = next((value for name, value in headers.items() if name.lower() == "location"), "")
    target, _ = shown_url(urljoin(base_url + "/", location)) if location else ("nowhere (no Location)", "")
    return PermanentError(f"HubSpot {what}: redirected (HTTP {status}) to {target}: set LEADSTREAM_HUBSPOT_BASE_URL "
                          "to the API's own URL (https://api.hubapi.com); redirects are not followed")


def _what(target: _Target, ref: str, id_property: str | None, crossing: Crossing) -> str:
    """The record, as errors and the log name it. A contact found by e-mail is named by its
    lead's id: the address is personal data, and these messages reach the log (at every retry
    and dead letter) and dead letters' `detail`, which `leadstream forget` cannot erase; the
    letter's `original` holds it for whoever must look the contact up."""
    if id_property is None:
        return f"{target.name} {ref}"
    if id_property == "email":
        return f"{target.name} by the email trait of lead {crossing.lead_id}"
    return f"{target.name} {id_property}={ref}"


def _record_id(value: str, source: str) -> str:
    """`value` if it is a HubSpot record id (a number)."""
    if _RECORD_ID.fullmatch(value) is None:
        raise PermanentError(f"{source} is {value[:200]!r}, not a HubSpot record id (a number)")
    return value


def _unique_value(value: str, source: str) -> str:
    """`value`, looked up by a unique property, unless urllib3 would read it as a dot segment of the path."""
    if value in (".", ".."):
        raise PermanentError(f"{source} is {value!r}: not a value HubSpot can look a record up by")
    return value


def _association(to_id: str, type_id: int) -> dict[str, Any]:
    return {"to": {"id": to_id}, "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": type_id}]}


def _id(what: str, result: Any) -> str:
    """The record id of an answer; the generated client turns a non-JSON body into an empty model."""
    record_id = getattr(result, "id", None)
    if not isinstance(record_id, str) or not record_id:
        raise RetryableError(f"HubSpot {what}: malformed answer (no record id in {str(result)[:200]!r})")
    return record_id


def _text(value: Any) -> str:
    """HubSpot property values are strings; whole numbers without a trailing .0."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _policy(body: str) -> str | None:
    """The limit a 429 names (`policyName`: TEN_SECONDLY_ROLLING, DAILY), if its body is HubSpot's.

    The daily one refuses every call until midnight: retried for the usual budget (42 s), each
    crossing was dead-lettered, a day's stream to replay. So it is held (QuotaExhausted); the
    ten-secondly one passes within the retries, and stays a RetryableError.
    """
    policy = (_answer(body) or {}).get("policyName")
    return policy if isinstance(policy, str) else None


def _missing_scopes(body: str) -> list[str] | None:
    """The scopes a 403 says the token lacks (its `requiredGranularScopes`, maybe none named), or
    None when the 403 is not HubSpot's MISSING_SCOPES.

    A scope taken from the private app (or never granted) refuses every call that needs it, whatever
    the crossing: dead-lettered as the message's fault, the whole stream went to the dead-letter
    topic while the connector answered ready. So it is held as a refused token is (CredentialsError).
    """
    answer = _answer(body)
    if answer is None or answer.get("category") != "MISSING_SCOPES":
        return None
    errors = answer.get("errors")
    contexts = [e.get("context") for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []
    named = [context.get("requiredGranularScopes") for context in contexts if isinstance(context, dict)]
    return [scope for scopes in named if isinstance(scopes, list) for scope in scopes if isinstance(scope, str)]


def _answer(body: str) -> dict[str, Any] | None:
    """An error answer's JSON object; None when the body is not one (a proxy's page)."""
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return answer if isinstance(answer, dict) else None


def _body(exc: Exception) -> str:
    body = getattr(exc, "body", None) or getattr(exc, "reason", "") or ""
    return body.decode(errors="replace") if isinstance(body, bytes) else str(body)
