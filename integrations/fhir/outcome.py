"""OperationOutcome responses. issue.code values from the R4 IssueType value set
(http://hl7.org/fhir/R4/valueset-issue-type.html), with the HTTP status the R4 RESTful API
(http://hl7.org/fhir/R4/http.html) gives each failure."""

from __future__ import annotations

import json

from django.http import HttpResponse

FHIR_JSON = "application/fhir+json; charset=utf-8"

NOT_FOUND = ("not-found", 404)
INVALID = ("invalid", 400)
NOT_SUPPORTED = ("not-supported", 400)
UNKNOWN_TYPE = ("not-supported", 404)  # R4 http.html: 404 for a resource type not supported
NOT_ACCEPTABLE = ("not-supported", 406)
METHOD_NOT_ALLOWED = ("not-supported", 405)
FORBIDDEN = ("forbidden", 403)
TRANSIENT = ("transient", 503)
EXCEPTION = ("exception", 500)


def outcome(kind: tuple[str, int], diagnostics: str, *, expression: str | None = None) -> HttpResponse:
    """An OperationOutcome with one error issue and its HTTP status."""
    code, http_status = kind
    issue: dict[str, object] = {"severity": "error", "code": code, "diagnostics": diagnostics}
    if expression:
        issue["expression"] = [expression]
    body = {"resourceType": "OperationOutcome", "issue": [issue]}
    response = HttpResponse(json.dumps(body), status=http_status, content_type=FHIR_JSON)
    if http_status == 503:
        response["Retry-After"] = "30"
    return response


def insufficient_scope(diagnostics: str, *, scope: str = "") -> HttpResponse:
    """403 for an OAuth token whose SMART scopes do not cover the request: an OperationOutcome
    (forbidden), and RFC 6750 3.1's error="insufficient_scope" (with the scope that would do)."""
    response = outcome(FORBIDDEN, f"insufficient_scope: {diagnostics}")
    needed = f', scope="{scope}"' if scope else ""
    response["WWW-Authenticate"] = f'Bearer realm="fhirai", error="insufficient_scope"{needed}'
    return response


class Refusal(Exception):  # noqa: N818 - carries the answer, not a failure of fhirai's
    """Raised by a FHIR endpoint's helpers to answer with this OperationOutcome response."""

    def __init__(self, response: HttpResponse) -> None:
        self.response = response
