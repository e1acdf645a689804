"""FHIR writes: create (POST, If-None-Exist), update (PUT, If-Match, update-as-create) and
transaction/batch Bundles at the base. Each error is an OperationOutcome: 400 for a body that is
not a conformant resource (one issue per problem, with its FHIRPath location), 412 for a
conditional that fails, 415 for a body that is neither FHIR JSON nor FHIR XML, 503 when storage is unavailable."""

from __future__ import annotations

import json
import re
from typing import Any

from django.conf import settings
from django.db import DatabaseError, DataError
from django.http import HttpRequest, HttpResponse

from fhirai import errors
from fhirai.api.auth import fhir_roles, principal_of
from fhirai.api.scopes import scopes_allow
from fhirai.ingest.fhir import EntryError, Permits, bundle_process, conditions, fhir_create, fhir_update
from fhirai.results.models import FhirResource
from fhirai.results.store import ResourceInvalid, VersionConflict
from integrations.fhir import outcome
from integrations.fhir.formats import body_read
from integrations.fhir.outcome import FHIR_JSON

PRECONDITION_FAILED = ("conflict", 412)
UNSUPPORTED_MEDIA = ("not-supported", 415)


def _body(request: HttpRequest) -> Any:
    try:
        return body_read(request)
    except ValueError as exc:
        raise outcome.Refusal(outcome.outcome(UNSUPPORTED_MEDIA, str(exc))) from None


def _guarded(work: Any) -> HttpResponse:
    try:
        return work()
    except outcome.Refusal as refusal:
        return refusal.response
    except errors.Forbidden as exc:
        return outcome.insufficient_scope(str(exc))
    except EntryError as exc:
        return _invalid(
            exc.cause, prefix=f"Bundle.entry[{exc.index}].resource.", entry=f"Bundle.entry[{exc.index}]"
        )
    except VersionConflict as exc:
        return outcome.outcome(PRECONDITION_FAILED, exc.detail)
    except errors.InvalidInput as exc:
        return _invalid(exc)
    except errors.NotFound as exc:
        return outcome.outcome(outcome.NOT_FOUND, str(exc))
    except DataError as exc:  # a value the database cannot hold (too long for its column): the client's
        return outcome.outcome(outcome.INVALID, _data_error(exc))
    except (errors.Unavailable, DatabaseError):
        return outcome.outcome(outcome.TRANSIENT, "storage is unavailable; retry later")


def _data_error(exc: DataError) -> str:
    """The database's reason (it names the column type, never the value)."""
    return "a value cannot be stored: " + (str(exc).strip().splitlines() or ["?"])[0]


def _invalid(exc: Any, prefix: str = "", entry: str | None = None) -> HttpResponse:
    if isinstance(exc, VersionConflict):
        return outcome.outcome(PRECONDITION_FAILED, exc.detail)
    if isinstance(exc, ResourceInvalid):
        issues = [
            {
                "severity": "error",
                "code": "invalid",
                "diagnostics": message,
                "expression": [prefix + expression if prefix else expression],
            }
            for expression, message in exc.issues
        ]
        body = {"resourceType": "OperationOutcome", "issue": issues}
        return HttpResponse(json.dumps(body), status=400, content_type=FHIR_JSON)
    if isinstance(exc, errors.NotFound):
        return outcome.outcome(outcome.NOT_FOUND, str(exc))
    kind = outcome.NOT_SUPPORTED if getattr(exc, "code", "") == "not-supported" else outcome.INVALID
    return outcome.outcome(kind, getattr(exc, "detail", str(exc)), expression=entry)


def _written(row: FhirResource, created: bool, request: HttpRequest) -> HttpResponse:
    minimal = "return=minimal" in request.headers.get("Prefer", "")
    response = HttpResponse(
        "" if minimal else json.dumps(row.content), status=201 if created else 200, content_type=FHIR_JSON
    )
    response["Location"] = (
        f"{settings.FHIRAI_BASE_URL}/fhir/{row.resource_type}/{row.rid}/_history/{row.version_id}"
    )
    response["ETag"] = f'W/"{row.version_id}"'
    response["Last-Modified"] = row.last_updated.strftime("%a, %d %b %Y %H:%M:%S GMT")
    return response


def create(request: HttpRequest, rtype: str) -> HttpResponse:
    """POST /fhir/{type} (R4 3.1.0.8): 201 with Location, or 200 with the match of If-None-Exist."""

    def work() -> HttpResponse:
        body = _body(request)
        if isinstance(body, dict) and body.get("resourceType") != rtype:
            raise ResourceInvalid([("resourceType", f"the body must be a {rtype}")])
        row, created = fhir_create(body, if_none_exist=conditions(request.headers.get("If-None-Exist", "")))
        return _written(row, created, request)

    return _guarded(work)


def update(request: HttpRequest, rtype: str, rid: str) -> HttpResponse:
    """PUT /fhir/{type}/{id} (R4 3.1.0.4): 200, or 201 when it creates; If-Match W/"n" else 412."""

    def work() -> HttpResponse:
        body = _body(request)
        match = re.fullmatch(r'(?:W/)?"(\d+)"', request.headers.get("If-Match", "").strip())
        if request.headers.get("If-Match") and not match:
            raise outcome.Refusal(outcome.outcome(outcome.INVALID, 'If-Match must be W/"<versionId>"'))
        row, created = fhir_update(rtype, rid, body, if_match=int(match.group(1)) if match else None)
        return _written(row, created, request)

    return _guarded(work)


def _permits(request: HttpRequest) -> Permits | None:
    """For an OAuth token, what each Bundle entry may do: the role's types and the granted scopes.
    None for API tokens and sessions (their role was checked at the base, as before)."""
    principal = principal_of(request)
    if principal is None or principal.scopes is None:
        return None
    role, scopes = principal.role, principal.scopes
    return lambda rtype, interaction: role in fhir_roles(rtype) and scopes_allow(scopes, rtype, interaction)


def bundle(request: HttpRequest) -> HttpResponse:
    """POST /fhir/ with a transaction or batch Bundle; an OAuth token's scopes are checked per entry."""

    def work() -> HttpResponse:
        result = bundle_process(_body(request), permits=_permits(request))
        return HttpResponse(json.dumps(result), status=200, content_type=FHIR_JSON)

    return _guarded(work)
