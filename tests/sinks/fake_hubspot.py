"""A local stand-in for the HubSpot CRM v3 objects API, as far as the HubSpot sink uses it.

Endpoints (paths, status codes and bodies as HubSpot documents them):
- GET   /crm/v3/objects/{contacts,companies}/{id}[?idProperty=...&properties=...]  200 | 400 | 404
- PATCH /crm/v3/objects/{contacts,companies}/{id}[?idProperty=...]  {"properties"}  200 | 400 | 404
- POST  /crm/v3/objects/{deals,tasks}  {"properties", "associations"}    201 | 400
- POST  /crm/v3/objects/{deals,tasks}/search  {"filterGroups", ...}      200
Every call needs `Authorization: Bearer <token>` (401 otherwise), and the token the scope of its
object and method, `scopes` (403 MISSING_SCOPES otherwise; tasks need none here). Properties must exist
(`PROPERTY_DOESNT_EXIST` otherwise); a lifecycle stage does not move backwards unless cleared;
an idProperty must be a unique-value property (400 otherwise).
"""

from __future__ import annotations

import itertools
import re
import uuid
from datetime import datetime, timezone
from typing import Any

from tests.sinks.fake_http import FakeServer, Request, Response

TOKEN = "pat-test-token"
LIFECYCLE = ["subscriber", "lead", "marketingqualifiedlead", "salesqualifiedlead", "opportunity", "customer", "evangelist"]
ASSOCIATION_TYPES = {"deals": {3, 5}, "tasks": {192, 204, 216}}
_OBJECT = re.compile(r"^/crm/v3/objects/(contacts|companies|deals|tasks)(?:/([^/]+))?$")
_SEARCH = re.compile(r"^/crm/v3/objects/(deals|tasks)/search$")
_SCOPED = re.compile(r"^/crm/v3/objects/(contacts|companies|deals)\b")
#: What a private app with every scope the connector needs is granted.
SCOPES = {f"crm.objects.{kind}.{access}" for kind in ("contacts", "companies", "deals") for access in ("read", "write")}


class FakeHubSpot(FakeServer):
    def __init__(self) -> None:
        super().__init__()
        self.objects: dict[str, dict[str, dict[str, Any]]] = {"contacts": {}, "companies": {}, "deals": {}, "tasks": {}}
        self.properties: dict[str, set[str]] = {
            "contacts": {"email", "firstname", "lifecyclestage", "hubspot_owner_id", "leadstream_score",
                         "leadstream_grade", "leadstream_temperature", "leadstream_level", "leadstream_reasons"},
            "companies": {"name", "domain", "lifecyclestage", "hubspot_owner_id", "leadstream_account_id",
                          "leadstream_account_score", "leadstream_account_level", "leadstream_account_temperature",
                          "leadstream_account_members"},
            "deals": {"dealname", "pipeline", "dealstage", "hubspot_owner_id", "amount", "leadstream_crossing_id"},
            "tasks": {"hs_timestamp", "hs_task_subject", "hs_task_body", "hs_task_status", "hs_task_priority",
                      "hubspot_owner_id", "leadstream_crossing_id"},
        }
        #: Properties whose values are unique: the only ones an idProperty may name.
        self.unique = {"contacts": {"email"}, "companies": {"leadstream_account_id"}}
        self._ids = itertools.count(1001)
        #: The scopes the token is granted (an admin may take one away while the connector runs).
        self.scopes = set(SCOPES)

    def add_contact(self, email: str, owner_id: str = "77") -> str:
        contact_id = str(next(self._ids))
        self.objects["contacts"][contact_id] = self._record(contact_id, {"email": email, "hubspot_owner_id": owner_id})
        return contact_id

    def add_company(self, account_id: str, owner_id: str = "88") -> str:
        company_id = str(next(self._ids))
        self.objects["companies"][company_id] = self._record(
            company_id, {"name": account_id.title(), "leadstream_account_id": account_id, "hubspot_owner_id": owner_id})
        return company_id

    def error(self, status: int, **detail: Any) -> Response:
        category = {400: "VALIDATION_ERROR", 401: "INVALID_AUTHENTICATION", 404: "OBJECT_NOT_FOUND",
                    429: "RATE_LIMITS"}.get(status, "INTERNAL_ERROR")
        body = {"status": "error", "message": detail.get("message", "error"), "correlationId": str(uuid.uuid4()),
                "category": detail.get("category", category)}
        return Response(status, body)

    def handle(self, request: Request) -> Response:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self.error(401, message="Authentication credentials not found.")
        if (scoped := _SCOPED.match(request.path)) is not None:
            write = request.method in ("PATCH", "POST") and not request.path.endswith("/search")
            needed = f"crm.objects.{scoped[1]}.{'write' if write else 'read'}"
            if needed not in self.scopes:
                return self._missing_scope(needed)
        if (m := _SEARCH.match(request.path)) and request.method == "POST":
            return self._search(m[1], request.json())
        m = _OBJECT.match(request.path)
        if m is None:
            return self.error(404, message=f"no route {request.method} {request.path}")
        kind, ref = m[1], m[2]
        if request.method == "POST" and ref is None:
            return self._create(kind, request.json())
        id_property = request.query.get("idProperty", [""])[0]
        if id_property and id_property not in self.unique.get(kind, ()):
            return self.error(400, message=f"{id_property} is not a unique property of {kind}: it cannot be an idProperty")
        record = self._find(kind, ref or "", id_property)
        if record is None:
            return self.error(404, message="Object not found.  objectId are usually numeric.")
        if request.method == "GET":
            wanted = set(",".join(request.query.get("properties", [])).split(",")) | {"email"}
            props = {k: v for k, v in record["properties"].items() if k in wanted}
            return Response(200, {**record, "properties": props})
        if request.method == "PATCH":
            return self._update(kind, record, request.json()["properties"])
        return self.error(405, message="method not allowed")

    def _missing_scope(self, scope: str) -> Response:
        """HubSpot's 403 for a call the token has no scope for (its documented body)."""
        return Response(403, {
            "status": "error",
            "message": "This app hasn't been granted all required scopes to make this call. Read more about required "
                       "scopes here: https://developers.hubspot.com/scopes.",
            "correlationId": str(uuid.uuid4()),
            "errors": [{"message": "One or more of the following scopes are required.",
                        "context": {"requiredGranularScopes": [scope]}}],
            "links": {"scopes": "https://developers.hubspot.com/scopes"},
            "category": "MISSING_SCOPES",
        })

    def _find(self, kind: str, ref: str, id_property: str) -> dict[str, Any] | None:
        if not id_property:
            return self.objects[kind].get(ref)
        return next((r for r in self.objects[kind].values() if r["properties"].get(id_property) == ref), None)

    def _invalid(self, kind: str, properties: dict[str, Any]) -> Response | None:
        missing = sorted(set(properties) - self.properties[kind])
        if not missing:
            return None
        errors = [{"isValid": False, "message": f'Property "{p}" does not exist', "error": "PROPERTY_DOESNT_EXIST",
                   "name": p} for p in missing]
        return self.error(400, message=f"Property values were not valid: {errors}")

    def _update(self, kind: str, record: dict[str, Any], properties: dict[str, Any]) -> Response:
        if (invalid := self._invalid(kind, properties)) is not None:
            return invalid
        current = record["properties"].get("lifecyclestage") or ""
        new = properties.get("lifecyclestage")
        if new and current in LIFECYCLE and new in LIFECYCLE and LIFECYCLE.index(new) < LIFECYCLE.index(current):
            properties = {k: v for k, v in properties.items() if k != "lifecyclestage"}  # HubSpot keeps the later stage
        record["properties"].update(properties)
        record["updatedAt"] = _now()
        return Response(200, record)

    def _create(self, kind: str, body: dict[str, Any]) -> Response:
        properties = body.get("properties") or {}
        if (invalid := self._invalid(kind, properties)) is not None:
            return invalid
        required = {"deals": ("dealname", "dealstage"), "tasks": ("hs_timestamp",)}.get(kind, ())
        if missing := [p for p in required if not properties.get(p)]:
            return self.error(400, message=f"missing required properties: {missing}")
        for association in body.get("associations") or []:
            target = association["to"]["id"]
            types = {t["associationTypeId"] for t in association["types"]}
            if not types <= ASSOCIATION_TYPES[kind] or not any(target in objs for objs in self.objects.values()):
                return self.error(400, message=f"invalid association {association}")
        record_id = str(next(self._ids))
        record = self._record(record_id, properties)
        record["associations"] = body.get("associations") or []
        self.objects[kind][record_id] = record
        return Response(201, record)

    def _search(self, kind: str, body: dict[str, Any]) -> Response:
        filters = [f for group in body.get("filterGroups", []) for f in group["filters"]]
        found = [r for r in self.objects[kind].values()
                 if all(f["operator"] == "EQ" and r["properties"].get(f["propertyName"]) == f["value"] for f in filters)]
        found = found[: int(body.get("limit") or 10)]
        return Response(200, {"total": len(found), "results": [{k: v for k, v in r.items() if k != "associations"}
                                                              for r in found]})

    @staticmethod
    def _record(record_id: str, properties: dict[str, Any]) -> dict[str, Any]:
        now = _now()
        return {"id": record_id, "properties": dict(properties), "createdAt": now, "updatedAt": now, "archived": False}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
