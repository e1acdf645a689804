"""The FHIR R4 facade at /fhir/: CapabilityStatement, read and search for the resources fhirai
owns. JSON only (XML is issue 5's); every error is an OperationOutcome."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import wraps
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from fhirai import errors
from fhirai.results.models import FhirResource
from fhirai.results.store import TokenParam, resource_read, resource_search
from integrations.fhir import outcome, write
from integrations.fhir.outcome import FHIR_JSON

VERSION = "0.1.0"
# Search parameters per type: FHIR name (with modifier) -> index name. `study` is fhirai's own
# (DiagnosticReport.imagingStudy by StudyInstanceUID, urn:oid:UID or ImagingStudy/id).
SEARCH: dict[str, dict[str, str]] = {
    "DiagnosticReport": {
        "_id": "_id",
        "identifier": "identifier",
        "subject:identifier": "patient-identifier",
        "patient:identifier": "patient-identifier",
        "subject": "subject",
        "study": "study",
        "status": "status",
        "based-on:identifier": "based-on",
    },
    "Observation": {
        "_id": "_id",
        "identifier": "identifier",
        "subject:identifier": "patient-identifier",
        "patient:identifier": "patient-identifier",
        "subject": "subject",
        "code": "code",
        "device": "device",
    },
    "ImagingStudy": {
        "_id": "_id",
        "identifier": "identifier",
        "subject:identifier": "patient-identifier",
        "patient:identifier": "patient-identifier",
    },
    "Device": {"_id": "_id", "identifier": "identifier"},
    "Patient": {"_id": "_id", "identifier": "identifier"},
    "ServiceRequest": {
        "_id": "_id",
        "identifier": "identifier",
        "subject": "subject",
        "subject:identifier": "patient-identifier",
        "patient:identifier": "patient-identifier",
    },
    "Provenance": {"_id": "_id", "target": "target"},
}
INCLUDES = {"DiagnosticReport": {"DiagnosticReport:result": "result"}}
CONTROL = {"_count", "_offset", "_format", "_include", "_pretty", "_summary"}


def fhir_get(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """GET only (create/update arrive with issue 5): anything else is a 405 OperationOutcome."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if request.method not in ("GET", "HEAD"):
            response = outcome.outcome(outcome.METHOD_NOT_ALLOWED, f"{request.method} is not supported here")
            response["Allow"] = "GET, HEAD, POST, PUT"
            return response
        return view(request, *args, **kwargs)

    return wrapper


def _json(body: dict[str, Any], status: int = 200) -> HttpResponse:
    return HttpResponse(json.dumps(body), status=status, content_type=FHIR_JSON)


def _format_refused(request: HttpRequest) -> HttpResponse | None:
    fmt = request.GET.get("_format", "")
    accept = request.headers.get("Accept", "")
    wants_xml = "xml" in fmt or ("xml" in accept and "json" not in accept and "*/*" not in accept)
    if wants_xml:
        return outcome.outcome(outcome.NOT_ACCEPTABLE, "only JSON is supported (application/fhir+json)")
    if fmt and fmt not in ("json", "application/json", "application/fhir+json"):
        return outcome.outcome(outcome.NOT_ACCEPTABLE, f"unknown _format {fmt}")
    return None


def _search_param(rtype: str, name: str) -> dict[str, str]:
    base, _, modifier = name.partition(":")
    param = {"name": base, "type": "reference" if modifier else "token"}
    if name == "study":
        param["documentation"] = (
            "fhirai's own: the ImagingStudy by StudyInstanceUID, urn:oid:UID or ImagingStudy/id"
        )
    elif modifier:
        param["documentation"] = "by the referenced Patient's identifier only (the :identifier modifier)"
    if not base.startswith("_") and name != "study":
        param["definition"] = f"http://hl7.org/fhir/SearchParameter/{rtype}-{base}"
    return param


@fhir_get
def metadata(request: HttpRequest) -> HttpResponse:
    """The CapabilityStatement: exactly what this server supports (R4 4.0.1, JSON, read + search)."""
    refused = _format_refused(request)
    if refused:
        return refused
    resources = []
    for rtype, params in SEARCH.items():
        resources.append(
            {
                "type": rtype,
                "interaction": [
                    {"code": "read"},
                    {"code": "search-type"},
                    {"code": "create"},
                    {"code": "update"},
                ],
                "conditionalCreate": True,
                "updateCreate": True,
                "versioning": "versioned",
                "readHistory": False,
                "searchInclude": list(INCLUDES.get(rtype, {})),
                "searchParam": [_search_param(rtype, name) for name in params],
            }
        )
    body = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": timezone.now().date().isoformat(),
        "publisher": "fhirai",
        "kind": "instance",
        "software": {"name": "fhirai", "version": VERSION},
        "implementation": {"description": "fhirai FHIR facade", "url": f"{settings.FHIRAI_BASE_URL}/fhir"},
        "fhirVersion": "4.0.1",
        "format": ["json", "application/fhir+json"],
        "rest": [
            {
                "mode": "server",
                "resource": resources,
                "interaction": [{"code": "transaction"}, {"code": "batch"}],
            }
        ],
    }
    return _json(body)


@fhir_get
def read(request: HttpRequest, rtype: str, rid: str) -> HttpResponse:
    """GET /fhir/{type}/{id}."""
    refused = _format_refused(request)
    if refused:
        return refused
    if rtype not in SEARCH:
        return outcome.outcome(outcome.NOT_SUPPORTED, f"resource type {rtype} is not supported here")
    try:
        row = resource_read(rtype, rid)
    except errors.NotFound as exc:
        return outcome.outcome(outcome.NOT_FOUND, str(exc))
    response = _json(row.content)
    response["ETag"] = f'W/"{row.version_id}"'
    response["Last-Modified"] = row.last_updated.strftime("%a, %d %b %Y %H:%M:%S GMT")
    return response


@fhir_get
def search(request: HttpRequest, rtype: str) -> HttpResponse:
    """GET /fhir/{type}?...: a searchset Bundle, paged with _count and next links."""
    refused = _format_refused(request)
    if refused:
        return refused
    if rtype not in SEARCH:
        return outcome.outcome(outcome.NOT_SUPPORTED, f"resource type {rtype} is not supported here")
    strict = "handling=strict" in request.headers.get("Prefer", "")
    criteria, used = [], []
    for name in request.GET:
        if name in CONTROL:
            continue
        index = SEARCH[rtype].get(name)
        if index is None:
            if strict:
                return outcome.outcome(
                    outcome.NOT_SUPPORTED,
                    f"search parameter {name} is not supported for {rtype}",
                    expression=name,
                )
            continue  # R4 3.1.1.5.3: unknown parameters are ignored unless handling=strict
        for raw in request.GET.getlist(name):
            try:
                criteria.append([TokenParam.parse(index, v) for v in raw.split(",")])
            except errors.InvalidInput as exc:
                return outcome.outcome(outcome.INVALID, exc.detail, expression=name)
            used.append((name, raw))
    try:
        count = min(int(request.GET.get("_count", 20)), settings.FHIRAI_FHIR_PAGE_MAX)
        offset = int(request.GET.get("_offset", 0))
        if count < 0 or offset < 0:
            raise ValueError
    except ValueError:
        return outcome.outcome(outcome.INVALID, "_count and _offset must be non-negative integers")
    qs = _id_filter(resource_search(rtype, [c for c in criteria if c[0].param != "_id"]), criteria)
    total = qs.count()
    page = list(qs[offset : offset + count])
    base = f"{settings.FHIRAI_BASE_URL}/fhir"
    entries = [
        {"fullUrl": f"{base}/{rtype}/{r.rid}", "resource": r.content, "search": {"mode": "match"}}
        for r in page
    ]
    entries += _includes(rtype, page, request.GET.getlist("_include"), base)
    links = [{"relation": "self", "url": _page_url(base, rtype, used, count, offset)}]
    if offset + count < total:
        links.append({"relation": "next", "url": _page_url(base, rtype, used, count, offset + count)})
    bundle = {"resourceType": "Bundle", "type": "searchset", "total": total, "link": links, "entry": entries}
    return _json(bundle)


def _id_filter(qs: Any, criteria: list[list[TokenParam]]) -> Any:
    for alternatives in criteria:
        if alternatives[0].param == "_id":
            qs = qs.filter(rid__in=[t.value for t in alternatives])
    return qs


def _includes(rtype: str, page: list[FhirResource], wanted: list[str], base: str) -> list[dict[str, Any]]:
    entries, seen = [], set()
    for include in wanted:
        element = INCLUDES.get(rtype, {}).get(include)
        if element is None:
            continue
        for row in page:
            for ref in row.content.get(element, []):
                target = ref.get("reference", "")
                if "/" not in target or target in seen:
                    continue
                seen.add(target)
                try:
                    inc = resource_read(*target.split("/", 1))
                except errors.NotFound:
                    continue
                entries.append(
                    {"fullUrl": f"{base}/{target}", "resource": inc.content, "search": {"mode": "include"}}
                )
    return entries


def _page_url(base: str, rtype: str, used: list[tuple[str, str]], count: int, offset: int) -> str:
    return f"{base}/{rtype}?{urlencode([*used, ('_count', count), ('_offset', offset)])}"


@csrf_exempt
def type_endpoint(request: HttpRequest, rtype: str) -> HttpResponse:
    """/fhir/{type}: GET search, POST create."""
    if request.method == "POST":
        if rtype not in SEARCH:
            return outcome.outcome(outcome.NOT_SUPPORTED, f"resource type {rtype} is not supported here")
        return write.create(request, rtype)
    return search(request, rtype)


@csrf_exempt
def instance_endpoint(request: HttpRequest, rtype: str, rid: str) -> HttpResponse:
    """/fhir/{type}/{id}: GET read, PUT update."""
    if request.method == "PUT":
        if rtype not in SEARCH:
            return outcome.outcome(outcome.NOT_SUPPORTED, f"resource type {rtype} is not supported here")
        return write.update(request, rtype, rid)
    return read(request, rtype, rid)


@csrf_exempt
def base_endpoint(request: HttpRequest) -> HttpResponse:
    """/fhir/: POST a transaction or batch Bundle."""
    if request.method != "POST":
        response = outcome.outcome(outcome.METHOD_NOT_ALLOWED, "POST a transaction or batch Bundle here")
        response["Allow"] = "POST"
        return response
    return write.bundle(request)
