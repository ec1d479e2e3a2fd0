"""Salesforce connector, with `simple-salesforce` (REST API).

Per lead crossing: update the Lead (found by the `salesforce_id` trait, else the newest
unconverted Lead with the `email` trait) with the mapped fields and what the level sets (e.g.
Status); on an up-crossing to a `[task]` level, also create a Task on the Lead (WhoId) for its
owner (or the mapping's). Down-crossings only update the Lead. What a level sets is read first:
a value the mapping's levels neither set nor `replaces` (a Status sales gave the Lead), or any
of a converted Lead, is kept as it is and logged; the other fields are updated (a converted Lead
only when the connector's user may edit converted Leads: else Salesforce refuses, and the
crossing is dead-lettered naming the permission).

Per account crossing, when the mapping has an `[account]` table: the same on the Account whose
`id_property` field holds the account id (`Id`: the account ids are Salesforce Account ids),
with the Task related to it (WhatId). Without the table they are acknowledged without a
Salesforce action.

The Task carries the crossing id in a custom field, so a creation interrupted by a crash is
found with a SOQL query instead of being made twice.

A record id that comes from a crossing (the `salesforce_id` trait, an account id with
`id_property = "Id"`) must be a Salesforce id, 15 or 18 letters and digits: simple-salesforce
joins it onto the instance URL, so an absolute URL would send the request, session included, to
another host, and `../Account/...` would write another object. Any other value dead-letters the
crossing.
"""

from __future__ import annotations

import logging
import re
import threading
from datetime import datetime, timedelta, timezone
from functools import partial
from typing import Any, Callable, TypeVar, cast

import requests
from simple_salesforce.api import Salesforce, SFType
from simple_salesforce.format import format_soql
from simple_salesforce.exceptions import SalesforceAuthenticationFailed, SalesforceError

from sinks.base import UNKEPT_TRAITS, Crossing, CrossingSink, Steps
from sinks.errors import CredentialsError, PermanentError, QuotaExhausted, RetryableError, excerpt, for_status
from sinks.http import TimeoutSession, transport_error
from sinks.mapping import AccountMapping, Mapping, load_mapping
from sinks.ratelimit import limiter_for
from streams.errors import ConfigError
from streams.settings import Settings

R = TypeVar("R")
log = logging.getLogger("leadstream.sinks")

# Salesforce's documented answers for "over the org's API allocation / too busy": worth waiting.
_RETRYABLE_CODES = {"REQUEST_LIMIT_EXCEEDED", "SERVER_UNAVAILABLE", "UNABLE_TO_LOCK_ROW"}
#: How REQUEST_LIMIT_EXCEEDED says the org's API requests of the last 24 hours are used up: they come
#: back only as those calls age out, hours later, where its other case (too many long calls at once,
#: ConcurrentPerOrgLongTxn) passes within the retries.
_ORG_QUOTA_USED_UP = "TotalRequests Limit exceeded"
#: A Lead sales converted is read-only to a user without this permission (off in a new org): every
#: crossing of its lead is refused so, and Salesforce's own words ("cannot reference converted
#: lead") say neither why nor what to do.
CONVERTED_LEAD_ADVICE = ("the Lead was converted, and Salesforce refuses changes to a converted Lead unless the "
                         "connector's user has the permission \"View and Edit Converted Leads\": grant it and replay the "
                         "dead letters (leadstream sink replay-dlq salesforce), or drop them (--drop-permanent) to leave "
                         "converted Leads to sales")
#: The login faults that refuse the username, password or security token themselves: the same ones
#: given again can only fail again.
_REFUSED_LOGIN_CODES = {"INVALID_LOGIN", "LOGIN_MUST_USE_SECURITY_TOKEN", "PASSWORD_LOCKOUT"}
# A Salesforce record id: 15 case-sensitive letters and digits, or 18 with the checksum suffix.
_RECORD_ID = re.compile(r"[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?")
#: The key prefix of a queue's (a group's) id; a user's is 005.
QUEUE_ID_PREFIX = "00G"


class SalesforceSink(CrossingSink):
    name = "salesforce"
    lookup_traits = ("salesforce_id", "email")  # deliver's, then _find_lead's

    def __init__(self, settings: Settings, mapping: Mapping | None = None) -> None:
        self.mapping = mapping or load_mapping(settings.sink_mapping_dir / "salesforce.toml", with_deals=False)
        self.limiter = limiter_for("LEADSTREAM_SALESFORCE_RATE_LIMIT", settings.salesforce_rate_limit, "salesforce")
        self.session = TimeoutSession(settings.sink_timeout_s, settings.sink_concurrency)
        self.username = settings.salesforce_username
        self._logins = threading.local()  # `made`: whether the call this thread makes logged in again
        sf = self._connect(settings)
        # SFType handles built once (each attribute access builds a new one).
        self.leads, self.accounts, self.tasks = cast(SFType, sf.Lead), cast(SFType, sf.Account), cast(SFType, sf.Task)
        self.sf = sf
        #: Set once Salesforce refused the password at a new login (see _call): never tried again.
        self.login_refused: CredentialsError | None = None

    def _connect(self, settings: Settings) -> Salesforce:
        version = settings.salesforce_api_version
        if settings.salesforce_instance_url and settings.salesforce_access_token:
            if not settings.salesforce_instance_url.lower().startswith("https://"):
                # simple-salesforce puts https:// before the host whatever the URL says.
                raise ConfigError(f"LEADSTREAM_SALESFORCE_INSTANCE_URL={settings.salesforce_instance_url}: Salesforce is "
                                  "reached over HTTPS only; give the instance's https:// URL")
            return Salesforce(instance_url=settings.salesforce_instance_url, session_id=settings.salesforce_access_token,
                              version=version, session=self.session)
        if settings.salesforce_username:
            if not settings.salesforce_password:
                raise ConfigError("LEADSTREAM_SALESFORCE_PASSWORD is empty: a password login as LEADSTREAM_SALESFORCE_USERNAME "
                                  "needs it (and LEADSTREAM_SALESFORCE_SECURITY_TOKEN, unless the org trusts this IP address)")
            # Password login: simple-salesforce logs in again by itself when the session expires.
            try:
                sf = Salesforce(username=settings.salesforce_username, password=settings.salesforce_password,
                                security_token=settings.salesforce_security_token, domain=settings.salesforce_domain,
                                version=version, session=self.session)
                if (login := sf._salesforce_login_partial) is not None:
                    sf._salesforce_login_partial = partial(self._login_once_a_call, login)
                return sf
            except SalesforceError as exc:
                raise ConfigError(f"Salesforce login as {settings.salesforce_username} failed: {exc}; check "
                                  "LEADSTREAM_SALESFORCE_PASSWORD, _SECURITY_TOKEN and _DOMAIN") from None
            except requests.RequestException as exc:
                raise ConfigError(f"{transport_error(f'Salesforce login at {settings.salesforce_domain}.salesforce.com', exc)}; "
                                  "check LEADSTREAM_SALESFORCE_DOMAIN ('login', 'test' or your My Domain) and the network") from None
        raise ConfigError(
            "Salesforce credentials are missing: set LEADSTREAM_SALESFORCE_INSTANCE_URL and "
            "LEADSTREAM_SALESFORCE_ACCESS_TOKEN, or LEADSTREAM_SALESFORCE_USERNAME, _PASSWORD and _SECURITY_TOKEN"
        )

    def _login_once_a_call(self, login: Callable[[], tuple[str, str]]) -> tuple[str, str]:
        """simple-salesforce's login again, at most once a call (_call): a record's call logs in again
        at each 401 INVALID_SESSION_ID, and without a bound (SFType passes on no count of its tries),
        so an org refusing each new session at once (sessions locked to the IP address they were made
        from, the connector's calls leaving by another) had one try log in 960 times in 17 s."""
        if getattr(self._logins, "made", False):
            raise CredentialsError(
                f"Salesforce refuses the session of a new login as {self.username} at once (401 INVALID_SESSION_ID "
                "again): check the org's session settings (sessions locked to the IP address they were made from, "
                "with the connector's calls leaving by several) and that the user's profile has API Enabled")
        self._logins.made = True
        return login()

    def handles(self, item: Crossing) -> bool:
        return self.mapping.covers(item)

    def deliver(self, item: Crossing, steps: Steps) -> None:
        mapping = self.mapping.record_for(item)
        if isinstance(mapping, AccountMapping):  # an account crossing goes to the account's Account
            sobject, relation = self.accounts, "WhatId"  # a Task's WhatId: what it is about; WhoId: whom
            record_id = self._find_account(item, mapping.id_property)
        else:
            sobject, relation = self.leads, "WhoId"
            trait = item.traits.get(self.lookup_traits[0])
            record_id = _record_id(trait, f"lead {item.lead_id}'s salesforce_id trait") if trait else self._find_lead(item)
        what = f"{sobject.name} {record_id}"
        task = mapping.task
        wants_task = item.direction == "up" and task is not None and item.to_level in task.levels
        level_fields = mapping.level_fields(item)
        # One read, before the update, of what it depends on: the Status sales may have given the
        # record (kept), and the owner of the Task.
        wanted = level_fields + (["IsConverted"] if level_fields and sobject is self.leads else [])
        wanted += ["OwnerId"] if wants_task and task is not None and not task.owner else []
        record = self._call(what, lambda: _values(sobject.get(record_id), wanted)) if wanted else {}
        if record.get("IsConverted"):  # sales' now, its Status (Closed - Converted) too
            kept = {name: str(record[name]) for name in level_fields}
        else:
            kept = mapping.kept_fields(item, {name: str(record[name]) for name in level_fields if record[name]})
        for name, value in kept.items():
            log.info("Salesforce %s: %s %r kept, not a value the mapping's levels set or replace (sales set it, or "
                     "converted the Lead; list it in the mapping's [replaces] for crossings to move it); the other "
                     "fields are updated", what, name, value)
        values = mapping.record_values(item, kept)
        self._call(what, lambda: sobject.update(record_id, values))
        if not wants_task or task is None:
            return
        due = datetime.fromtimestamp(item.time_ms / 1000, timezone.utc) + timedelta(hours=task.due_in_hours)
        fields = item.template_fields()

        def create() -> str:
            owner = task.owner or str(record["OwnerId"])
            body = {
                relation: record_id,
                "Subject": task.subject.format(**fields),
                "Description": task.body.format(**fields),
                "ActivityDate": due.date().isoformat(),
                "Status": "Not Started",
                "Priority": task.priority,
                task.crossing_id_property: item.id,
            }
            # A record owned by a queue (an id starting 00G) has no user to give the Task to, and
            # Salesforce refuses a queue as a Task's owner: the Task is then the connector's user's,
            # as a Task created without an owner is, instead of dead-lettered for good.
            if not owner.startswith(QUEUE_ID_PREFIX):
                body["OwnerId"] = owner
            return self._call("create Task", lambda: str(self.tasks.create(body)["id"]))

        def find() -> str | None:
            soql = format_soql("SELECT Id FROM Task WHERE {:literal} = {} LIMIT 1", task.crossing_id_property, item.id)
            return self._call("find Task", lambda: _first_id(self.sf.query(soql)))

        steps.once("task", create, find)

    def _find_account(self, crossing: Crossing, id_property: str) -> str:
        if not crossing.account_id:
            raise PermanentError(f"account crossing {crossing.id} names no account_id: no way to find its Salesforce Account")
        if id_property == "Id":
            return _record_id(str(crossing.account_id), f"account crossing {crossing.id}'s account_id (id_property = \"Id\")")
        soql = format_soql("SELECT Id FROM Account WHERE {:literal} = {} LIMIT 1", id_property, crossing.account_id)
        account_id = self._call("find Account", lambda: _first_id(self.sf.query(soql)))
        if account_id is None:
            raise PermanentError(f"no Salesforce Account has {id_property} = {crossing.account_id!r} "
                                 f"(account crossing {crossing.id}): set it on the Account")
        return account_id

    def _find_lead(self, crossing: Crossing) -> str:
        if not crossing.email:
            raise PermanentError(f"lead {crossing.lead_id}: the crossing carries neither a salesforce_id nor an email trait "
                                 f"({UNKEPT_TRAITS}): no way to find its Salesforce Lead")
        soql = format_soql("SELECT Id FROM Lead WHERE Email = {} AND IsConverted = false "
                           "ORDER BY CreatedDate DESC LIMIT 1", crossing.email)
        lead_id = self._call("find Lead", lambda: _first_id(self.sf.query(soql)))
        if lead_id is None:
            # Not the address: personal data, and this reaches the log and the letter's `detail`,
            # which `leadstream forget` cannot erase (the letter's `original` holds it).
            raise PermanentError(f"no unconverted Salesforce Lead has the email trait of lead {crossing.lead_id}: "
                                 "create it, or add its salesforce_id trait")
        return lead_id

    def _call(self, what: str, request: Callable[[], R]) -> R:
        """One API request (and reading its answer): within the rate limit, failures as sink errors."""
        if self.login_refused is not None:
            raise self.login_refused
        self.limiter.acquire()
        self._logins.made = False  # see _login_once_a_call
        try:
            return request()
        except (ValueError, KeyError, TypeError) as exc:  # before RequestException: requests' JSON error is both
            raise RetryableError(f"Salesforce {what}: malformed answer ({type(exc).__name__}: {exc})") from None
        except SalesforceAuthenticationFailed as exc:
            if exc.code not in _REFUSED_LOGIN_CODES:  # a login that failed otherwise (an outage): tried again
                raise CredentialsError(f"Salesforce {what}: the session expired and logging in again failed: {exc}") from None
            # simple-salesforce logs in again whenever the session expired: each lane held under the
            # refusal (the runner's hold) tried the same password every LEADSTREAM_SINK_BACKOFF_MAX_MS,
            # 79 failed logins in 10 s with 10 leads waiting and a 1 s hold, and Salesforce locks the
            # user out after 3 to 10 of them (the org's password policy), the new password too.
            self.login_refused = CredentialsError(
                f"Salesforce {what}: the session expired and Salesforce refused the new login as {self.username} ({exc}); "
                "the connector does not try that password again, as each failed login counts toward Salesforce's "
                "lockout of the user: set LEADSTREAM_SALESFORCE_PASSWORD (and _SECURITY_TOKEN) and restart it")
            raise self.login_refused from None
        except SalesforceError as exc:
            content = exc.content
            codes: set[str] = {str(e.get("errorCode")) for e in content if isinstance(e, dict)} if isinstance(content, list) else set()
            if "REQUEST_LIMIT_EXCEEDED" in codes and _ORG_QUOTA_USED_UP in str(content):
                raise QuotaExhausted(f"Salesforce {what}: REQUEST_LIMIT_EXCEEDED: the org's API requests of the last 24 hours "
                                     f"are used up ({excerpt(str(content))}); they come back as the calls of 24 hours ago age out "
                                     "(Setup > Company Information shows the allocation)") from None
            if codes & _RETRYABLE_CODES:
                raise RetryableError(f"Salesforce {what}: {', '.join(sorted(codes))}: {excerpt(str(content))}") from None
            if "CANNOT_UPDATE_CONVERTED_LEAD" in codes:
                raise PermanentError(f"Salesforce {what}: HTTP {exc.status}: {excerpt(str(content))}: {CONVERTED_LEAD_ADVICE}") from None
            raise for_status(int(exc.status), f"Salesforce {what}", str(content),
                             credentials="LEADSTREAM_SALESFORCE_* credentials") from None
        except requests.RequestException as exc:
            raise transport_error(f"Salesforce {what}", exc) from None

    def close(self) -> None:
        self.session.close()


def _record_id(value: str, source: str) -> str:
    """`value` if it is a Salesforce record id: anything else would be joined onto the instance URL as a path."""
    if _RECORD_ID.fullmatch(value) is None:
        raise PermanentError(f"{source} is {value[:200]!r}, not a Salesforce record id (15 or 18 letters and digits)")
    return value


def _values(record: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """The record's fields `names` (null when empty); a KeyError when the answer lacks one."""
    return {name: record[name] for name in names}


def _first_id(result: dict[str, Any]) -> str | None:
    records = result["records"]
    return str(records[0]["Id"]) if records else None
