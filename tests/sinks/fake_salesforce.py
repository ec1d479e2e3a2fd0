"""A local stand-in for the Salesforce REST API (over TLS), as far as the Salesforce sink uses it.

Endpoints (paths, status codes and error bodies as Salesforce documents them):
- GET   /services/data/vXX.X/query/?q=SOQL          200 {"totalSize","done","records"} | 400 MALFORMED_QUERY
- GET   /services/data/vXX.X/sobjects/{Lead,Account}/{id}     200 | 404 NOT_FOUND
- PATCH /services/data/vXX.X/sobjects/{Lead,Account}/{id}     204 | 400 INVALID_FIELD | 404 NOT_FOUND |
  400 CANNOT_UPDATE_CONVERTED_LEAD (a converted Lead, unless `edit_converted`)
- POST  /services/data/vXX.X/sobjects/Task/         201 {"id","success","errors"} | 400 INVALID_FIELD,
  INVALID_CROSS_REFERENCE_KEY, FIELD_INTEGRITY_EXCEPTION (an OwnerId that is a queue's)
- POST  .../services/Soap/u/XX.X  (the SOAP login of a password login: any path ending so)
  200 loginResponse {sessionId, serverUrl} | 500 LoginFault INVALID_LOGIN
Errors are JSON lists of {"message", "errorCode"}; every call needs `Authorization: Bearer
<session id>` of a session alive (401 INVALID_SESSION_ID otherwise; `expire_sessions` ends them all). The SOQL understood is the sink's: one
equality filter, optionally `AND IsConverted = false`, ORDER BY and LIMIT.
"""

from __future__ import annotations

import itertools
import re
import ssl
from typing import Any

from tests.sinks.fake_http import FakeServer, Request, Response

SESSION_ID = "00Dxx0000000001!test-session"
_SOBJECT = re.compile(r"^/services/data/v[\d.]+/sobjects/(Lead|Account|Task)/([^/]*)$")
_QUERY = re.compile(r"^/services/data/v[\d.]+/query/?$")
_LOGIN = re.compile(r"/services/Soap/u/[\d.]+$")
#: The password login the stand-in accepts (LEADSTREAM_SALESFORCE_USERNAME, _PASSWORD, _SECURITY_TOKEN).
USERNAME, PASSWORD, SECURITY_TOKEN = "api@acme.example", "s3cret", "tok"
_SOQL = re.compile(
    r"^SELECT\s+([\w, ]+)\s+FROM\s+(Lead|Account|Task)\s+WHERE\s+(\w+)\s*=\s*'((?:[^'\\]|\\.)*)'"
    r"(\s+AND\s+IsConverted\s*=\s*false)?(?:\s+ORDER\s+BY\s+\w+(?:\s+(?:ASC|DESC))?)?(?:\s+LIMIT\s+(\d+))?$",
    re.IGNORECASE,
)


#: The user the connector's session belongs to: the owner of what it creates without one.
API_USER_ID = "005000000000099AAA"


class FakeSalesforce(FakeServer):
    def __init__(self, tls: ssl.SSLContext) -> None:
        super().__init__(tls)
        self.records: dict[str, dict[str, dict[str, Any]]] = {"Lead": {}, "Account": {}, "Task": {}}
        self.fields: dict[str, set[str]] = {
            "Lead": {"Id", "Email", "LastName", "Company", "Status", "Rating", "OwnerId", "IsConverted", "CreatedDate",
                     "Leadstream_Score__c", "Leadstream_Grade__c", "Leadstream_Reasons__c"},
            "Account": {"Id", "Name", "OwnerId", "Rating", "Leadstream_Account_Id__c", "Leadstream_Account_Score__c",
                        "Leadstream_Account_Level__c", "Leadstream_Account_Members__c"},
            "Task": {"Id", "WhoId", "WhatId", "OwnerId", "Subject", "Description", "ActivityDate", "Status", "Priority",
                     "Leadstream_Crossing_Id__c"},
        }
        self._ids = itertools.count(1)
        #: Sessions alive: the access token's, and those password logins were given.
        self.sessions = {SESSION_ID}
        #: The password the user has now (an admin may reset it).
        self.password = PASSWORD
        self.logins = 0
        #: Whether the sessions logins make are refused at once (sessions locked to the IP address
        #: they were made from, the calls leaving by another).
        self.refuse_new_sessions = False
        #: Whether the connector's user has the permission "View and Edit Converted Leads" (off in a
        #: new org): without it Salesforce refuses any change to a converted Lead.
        self.edit_converted = False

    def add_lead(self, email: str, owner_id: str = "005000000000001AAA") -> str:
        lead_id = self._new_id("00Q")
        self.records["Lead"][lead_id] = {"Id": lead_id, "Email": email, "LastName": "Doe", "Company": "Acme",
                                         "Status": "Open - Not Contacted", "OwnerId": owner_id, "IsConverted": False,
                                         "CreatedDate": f"2025-01-01T00:00:{len(self.records['Lead']):02d}.000+0000"}
        return lead_id

    def add_account(self, account_id: str, owner_id: str = "005000000000002AAA") -> str:
        record_id = self._new_id("001")
        self.records["Account"][record_id] = {"Id": record_id, "Name": account_id.title(), "OwnerId": owner_id,
                                              "Leadstream_Account_Id__c": account_id}
        return record_id

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):012d}AAA"

    def error(self, status: int, **detail: Any) -> Response:
        code = detail.get("code") or {400: "MALFORMED_QUERY", 401: "INVALID_SESSION_ID", 404: "NOT_FOUND",
                                      503: "SERVER_UNAVAILABLE"}.get(status, "UNKNOWN_EXCEPTION")
        return Response(status, [{"message": detail.get("message", code), "errorCode": code}])

    def expire_sessions(self) -> None:
        """Every session ends (its timeout, or an admin's): the next calls answer 401 INVALID_SESSION_ID."""
        self.sessions.clear()

    def handle(self, request: Request) -> Response:
        if _LOGIN.search(request.path) and request.method == "POST":
            return self._login(request.body.decode())
        if request.headers.get("Authorization", "").removeprefix("Bearer ") not in self.sessions:
            return self.error(401, message="Session expired or invalid")
        if _QUERY.match(request.path) and request.method == "GET":
            return self._query(request.query.get("q", [""])[0])
        m = _SOBJECT.match(request.path)
        if m is None:
            return self.error(404, message=f"The requested resource does not exist: {request.path}")
        sobject, record_id = m[1], m[2]
        if request.method == "POST" and not record_id:
            return self._create(sobject, request.json())
        record = self.records[sobject].get(record_id)
        if record is None:
            return self.error(404, message="The requested resource does not exist")
        if request.method == "GET":
            return Response(200, {"attributes": {"type": sobject, "url": request.path}, **record})
        if request.method == "PATCH":
            fields = request.json()
            if (invalid := self._invalid(sobject, fields)) is not None:
                return invalid
            if record.get("IsConverted") and not self.edit_converted:
                return self.error(400, code="CANNOT_UPDATE_CONVERTED_LEAD", message="cannot reference converted lead")
            record.update(fields)
            return Response(204)
        return self.error(405, code="METHOD_NOT_ALLOWED")

    def _login(self, envelope: str) -> Response:
        """The SOAP API's login, as Salesforce answers it (the partner WSDL's loginResponse or LoginFault)."""
        self.logins += 1
        given = {m[1]: m[2] for m in re.finditer(r"<(?:\w+:)?(username|password)>([^<]*)<", envelope)}
        if given != {"username": USERNAME, "password": self.password + SECURITY_TOKEN}:
            return Response(500, (
                '<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
                'xmlns:sf="urn:fault.partner.soap.sforce.com" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>'
                '<soapenv:Fault><faultcode>sf:INVALID_LOGIN</faultcode><faultstring>INVALID_LOGIN: Invalid username, password, '
                'security token; or user locked out.</faultstring><detail><sf:LoginFault xsi:type="sf:LoginFault">'
                '<sf:exceptionCode>INVALID_LOGIN</sf:exceptionCode><sf:exceptionMessage>Invalid username, password, security '
                'token; or user locked out.</sf:exceptionMessage></sf:LoginFault></detail></soapenv:Fault></soapenv:Body>'
                '</soapenv:Envelope>').encode())
        session = f"00Dxx0000000001!login-{self.logins}"
        if not self.refuse_new_sessions:
            self.sessions.add(session)
        return Response(200, (
            '<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
            'xmlns="urn:partner.soap.sforce.com"><soapenv:Body><loginResponse><result><passwordExpired>false</passwordExpired>'
            f'<serverUrl>{self.url}/services/Soap/u/59.0/00Dxx0000000001</serverUrl><sessionId>{session}</sessionId>'
            f'<userId>{API_USER_ID}</userId></result></loginResponse></soapenv:Body></soapenv:Envelope>').encode())

    def _invalid(self, sobject: str, fields: dict[str, Any]) -> Response | None:
        unknown = sorted(set(fields) - self.fields[sobject])
        if not unknown:
            return None
        return self.error(400, code="INVALID_FIELD", message=f"No such column '{unknown[0]}' on sobject of type {sobject}")

    def _create(self, sobject: str, fields: dict[str, Any]) -> Response:
        if (invalid := self._invalid(sobject, fields)) is not None:
            return invalid
        if sobject == "Task" and not (fields.get("WhoId") in self.records["Lead"] or fields.get("WhatId") in self.records["Account"]):
            return self.error(400, code="INVALID_CROSS_REFERENCE_KEY", message="invalid cross reference id")
        # A Lead or Account may be owned by a queue (00G...), a Task only by a user (005...).
        if sobject == "Task" and str(fields.get("OwnerId", "005")).startswith("00G"):
            return self.error(400, code="FIELD_INTEGRITY_EXCEPTION", message=f"Assigned To ID: id value of incorrect type: {fields['OwnerId']}")
        record_id = self._new_id("00T" if sobject == "Task" else "00Q")
        # Created without an owner, a record is the API user's (the connector's).
        self.records[sobject][record_id] = {"Id": record_id, **({"OwnerId": API_USER_ID} if sobject == "Task" else {}), **fields}
        return Response(201, {"id": record_id, "success": True, "errors": []})

    def _query(self, soql: str) -> Response:
        m = _SOQL.match(soql.strip())
        if m is None or m[3] not in self.fields[m[2]]:
            return self.error(400, message=f"unexpected SOQL for this stand-in: {soql}")
        columns = [c.strip() for c in m[1].split(",")]
        value = m[4].replace("\\'", "'").replace("\\\\", "\\")
        found = [r for r in self.records[m[2]].values()
                 if r.get(m[3]) == value and not (m[5] and r.get("IsConverted"))]
        if m[2] == "Lead":
            found.sort(key=lambda r: r["CreatedDate"], reverse=True)
        found = found[: int(m[6])] if m[6] else found
        records = [{"attributes": {"type": m[2]}, **{c: r.get(c) for c in columns}} for r in found]
        return Response(200, {"totalSize": len(records), "done": True, "records": records})
