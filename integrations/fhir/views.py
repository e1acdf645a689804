"""The FHIR R4 facade at /fhir/: CapabilityStatement, read, vread, search, history for the resources
fhirai owns or receives, in JSON or XML; writes are in write.py. Every error is an
OperationOutcome. Search parameters come from one table (fhirai.results.searchparams), which the
CapabilityStatement declares as it is."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from functools import wraps
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.db import DatabaseError, transaction
from django.db.models import Q
from django.http import HttpRequest, HttpResponse, QueryDict
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from fhirai import errors
from fhirai.api.access import access_record
from fhirai.api.auth import Principal, db_error_code, fhir_roles, principal_of
from fhirai.api.oauth import token_endpoint_url
from fhirai.api.scopes import scopes_allow
from fhirai.audit.fhir import audit_lookup, audit_page
from fhirai.results.models import FhirResource, FhirVersion
from fhirai.results.searchparams import BY_NAME, PARAMS, Param, reference_normalize, values
from fhirai.results.store import (
    DateParam,
    StringParam,
    TokenParam,
    resource_history,
    resource_read,
    resource_search,
    resource_vread,
)
from integrations.fhir import outcome, write
from integrations.fhir.formats import negotiated
from integrations.fhir.outcome import FHIR_JSON

log = logging.getLogger(__name__)

VERSION = "0.2.0"
READ_ONLY = {"AuditEvent"}
TYPES = [*PARAMS, *READ_ONLY]
CONTROL = {"_count", "_offset", "_format", "_include", "_pretty", "_summary", "_sort", "_total", "_elements"}
MAX_OFFSET = 2**62  # the database's OFFSET is a bigint
MODIFIERS = {"reference": {"", "identifier"}, "string": {"", "contains"}}


def _refuse(kind: tuple[str, int], message: str, expression: str | None = None) -> outcome.Refusal:
    return outcome.Refusal(outcome.outcome(kind, message, expression=expression))


def fhir_view(
    methods: tuple[str, ...],
) -> Callable[[Callable[..., HttpResponse]], Callable[..., HttpResponse]]:
    """Allowed methods (405 otherwise), content negotiation, refusals as OperationOutcomes."""

    def decorate(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @csrf_exempt
        @negotiated
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            rtype = kwargs.get("rtype")
            if rtype is not None and rtype not in TYPES:
                return outcome.outcome(outcome.UNKNOWN_TYPE, f"resource type {rtype} is not supported here")
            if _has_nul(request, kwargs):
                return outcome.outcome(outcome.INVALID, "the URL carries a NUL character")
            if request.method not in methods and not (request.method == "HEAD" and "GET" in methods):
                response = outcome.outcome(
                    outcome.METHOD_NOT_ALLOWED, f"{request.method} is not supported here"
                )
                response["Allow"] = ", ".join(methods)
                return response
            try:
                return view(request, *args, **kwargs)
            except outcome.Refusal as refused:
                return refused.response
            except errors.NotFound as exc:
                return outcome.outcome(outcome.NOT_FOUND, str(exc))

        return wrapper

    return decorate


def _has_nul(request: HttpRequest, kwargs: dict[str, Any]) -> bool:
    """A NUL in the path or the query: no FHIR id, parameter or value has one, and PostgreSQL
    cannot compare text with one (it would be a 500)."""
    values = [*kwargs.values(), *request.GET.keys(), *(v for _, vs in request.GET.lists() for v in vs)]
    return any("\x00" in str(v) for v in values)


def _json(body: dict[str, Any], status: int = 200) -> HttpResponse:
    return HttpResponse(json.dumps(body), status=status, content_type=FHIR_JSON)


def _http_date(at: Any) -> str:
    return at.strftime("%a, %d %b %Y %H:%M:%S GMT")


def _resource_response(content: dict[str, Any], version: int, at: Any) -> HttpResponse:
    response = _json(content)
    response["ETag"] = f'W/"{version}"'
    response["Last-Modified"] = _http_date(at)
    return response


def _base() -> str:
    return f"{settings.FHIRAI_BASE_URL}/fhir"


# --- CapabilityStatement -----------------------------------------------------------------------


def _search_param(param: Param) -> dict[str, Any]:
    kind = {"special": "date" if param.name == "_lastUpdated" else "token"}.get(param.kind, param.kind)
    out: dict[str, Any] = {"name": param.name, "type": kind}
    if param.definition:
        out["definition"] = param.definition
    docs = {
        "reference": "Type/id, id, or an absolute URL on this server; :identifier matches the referenced "
        "resource's identifier (system|value)",
        "date": "prefixes eq ne gt lt ge le sa eb; ap is not supported",
        "string": "case-insensitive starts-with; :contains",
    }
    if param.documentation or param.kind in docs:
        out["documentation"] = param.documentation or docs[param.kind]
    return out


def _capability_resource(rtype: str) -> dict[str, Any]:
    params = BY_NAME[rtype].values()
    if rtype in READ_ONLY:
        return {
            "type": rtype,
            "documentation": "read-only: fhirai's audit trail, one AuditEvent per timeline event",
            "interaction": [{"code": "read"}, {"code": "search-type"}],
            "versioning": "no-version",
            "readHistory": False,
            "searchParam": [_search_param(p) for p in params],
        }
    return {
        "type": rtype,
        "interaction": [
            {"code": c}
            for c in ("read", "vread", "update", "history-instance", "history-type", "create", "search-type")
        ],
        "versioning": "versioned-update",
        "readHistory": True,
        "updateCreate": True,
        "conditionalCreate": True,
        "conditionalRead": "not-supported",
        "conditionalUpdate": False,
        "conditionalDelete": "not-supported",
        "referencePolicy": ["literal", "logical", "local"],
        "searchInclude": [f"{rtype}:{p.name}" for p in params if p.kind == "reference"],
        "searchParam": [_search_param(p) for p in params],
    }


def _security() -> dict[str, Any]:
    """rest.security: SMART on FHIR (SMART App Launch 2, "Conformance": the oauth-uris extension
    names the token endpoint; the smart-configuration document has the rest)."""
    return {
        "cors": False,
        "service": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                        "code": "SMART-on-FHIR",
                        "display": "SMART-on-FHIR",
                    }
                ],
                "text": "OAuth2 client credentials (SMART Backend Services), or an API token",
            }
        ],
        "extension": [
            {
                "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                "extension": [{"url": "token", "valueUri": token_endpoint_url()}],
            }
        ],
        "description": "Authorization: Bearer with an access token from the token endpoint "
        "(client_credentials; private_key_jwt or a client secret; SMART system scopes) or an API "
        "token (python manage.py issue_token). Without FHIRAI_REQUIRE_TOKENS, calls without a token "
        "are still answered: expose the facade only on the trusted network then.",
    }


@fhir_view(("GET",))
def metadata(request: HttpRequest) -> HttpResponse:
    """The CapabilityStatement: exactly what this server does (R4 4.0.1, JSON and XML)."""
    body = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": timezone.now().date().isoformat(),
        "publisher": "fhirai",
        "kind": "instance",
        "software": {"name": "fhirai", "version": VERSION},
        "implementation": {"description": "fhirai FHIR facade", "url": _base()},
        "fhirVersion": "4.0.1",
        "format": ["json", "xml", "application/fhir+json", "application/fhir+xml"],
        "rest": [
            {
                "mode": "server",
                "documentation": "Paging with _count (at most FHIRAI_FHIR_PAGE_MAX) and next/previous "
                "links; _sort by _lastUpdated only; unknown parameters are ignored unless "
                "Prefer: handling=strict. No delete, patch or operations.",
                "security": _security(),
                "resource": [_capability_resource(t) for t in TYPES],
                "interaction": [{"code": "transaction"}, {"code": "batch"}, {"code": "history-system"}],
            }
        ],
    }
    return _json(body)


# --- read, vread ---------------------------------------------------------------------------------


@fhir_view(("GET",))
def read(request: HttpRequest, rtype: str, rid: str) -> HttpResponse:
    """GET /fhir/{type}/{id}."""
    if rtype == "AuditEvent":
        found = audit_lookup(rid)
        if found is None:
            raise errors.NotFound(f"AuditEvent/{rid} is not known")
        return _resource_response(found[0], 1, found[1])
    row = resource_read(rtype, rid)
    return _resource_response(row.content, row.version_id, row.last_updated)


@fhir_view(("GET",))
def vread(request: HttpRequest, rtype: str, rid: str, vid: str) -> HttpResponse:
    """GET /fhir/{type}/{id}/_history/{vid}."""
    if rtype in READ_ONLY:
        raise _refuse(outcome.NOT_SUPPORTED, f"{rtype} has no versions")
    row = resource_vread(rtype, rid, vid)
    return _resource_response(row.content, row.version_id, row.last_updated)


# --- search --------------------------------------------------------------------------------------


def _criterion(rtype: str, param: Param, modifier: str, raw: str, name: str) -> Any:
    try:
        if param.name == "_id":
            return TokenParam("_id", None, raw)
        if param.name == "_lastUpdated" or param.kind == "date":
            return DateParam.parse(param.name, raw)
        if param.kind == "reference":
            if modifier == "identifier":
                return TokenParam.parse(f"{param.name}:identifier", raw)
            return TokenParam(param.name, None, reference_normalize(raw, modifier or param.target))
        if param.kind == "string":
            return StringParam(param.name, raw, contains=modifier == "contains")
        return TokenParam.parse(param.name, raw)
    except errors.InvalidInput as exc:
        raise _refuse(outcome.INVALID, exc.detail, expression=name) from None


def _criteria(rtype: str, query: QueryDict, strict: bool) -> tuple[list[list[Any]], list[tuple[str, str]]]:
    """The query's search parameters as store criteria, and the (name, value) pairs that were used."""
    criteria, used = [], []
    for name in query:
        if name in CONTROL:
            continue
        base, _, modifier = name.partition(":")
        param = BY_NAME[rtype].get(base)
        known_modifier = param is not None and (
            modifier in MODIFIERS.get(param.kind, {""})
            or (param.kind == "reference" and modifier[:1].isupper())
        )
        if param is None or not known_modifier:
            if strict:
                raise _refuse(
                    outcome.NOT_SUPPORTED, f"search parameter {name} is not supported for {rtype}", name
                )
            continue  # R4 3.1.1.5.3: unknown parameters are ignored unless handling=strict
        for raw in query.getlist(name):
            if not raw:
                raise _refuse(outcome.INVALID, f"search parameter {name} has no value", name)
            criteria.append([_criterion(rtype, param, modifier, v, name) for v in raw.split(",")])
            used.append((name, raw))
    return criteria, used


def _paging(query: QueryDict) -> tuple[int, int]:
    try:
        count = min(int(query.get("_count", 20)), settings.FHIRAI_FHIR_PAGE_MAX)
        offset = int(query.get("_offset", 0))
        if count < 0 or offset < 0 or offset > MAX_OFFSET:
            raise ValueError
    except ValueError:
        raise _refuse(
            outcome.INVALID, f"_count and _offset must be non-negative integers, _offset at most {MAX_OFFSET}"
        ) from None
    return count, offset


def _links(path: str, used: list[tuple[str, str]], count: int, offset: int, total: int) -> list[dict]:
    def url(at: int) -> str:
        return f"{_base()}/{path}?{urlencode([*used, ('_count', count), ('_offset', at)])}"

    links = [{"relation": "self", "url": url(offset)}]
    if count and offset + count < total:
        links.append({"relation": "next", "url": url(offset + count)})
    if offset > 0 and count:
        links.append({"relation": "previous", "url": url(max(0, offset - count))})
    return links


@fhir_view(("GET",))
def search(request: HttpRequest, rtype: str) -> HttpResponse:
    """GET /fhir/{type}?...: a searchset Bundle, paged with _count and next links."""
    query = request.GET
    strict = "handling=strict" in request.headers.get("Prefer", "")
    criteria, used = _criteria(rtype, query, strict)
    count, offset = _paging(query)
    for control in ("_sort", "_summary"):
        if control in query:
            used.append((control, query[control]))
    if rtype == "AuditEvent":
        total, entries = _audit_page(criteria, count, offset)
    else:
        qs = resource_search(rtype, criteria)
        sort = query.get("_sort", "-_lastUpdated")
        if sort not in ("_lastUpdated", "-_lastUpdated"):
            if strict:
                raise _refuse(outcome.NOT_SUPPORTED, "_sort supports _lastUpdated only", "_sort")
        elif sort == "_lastUpdated":
            qs = qs.order_by("last_updated", "id")
        if query.get("_summary") == "count":
            page: list[FhirResource] = []
            total = qs.count()
        else:
            page = list(qs[offset : offset + count])
            # A first page that is not full is the whole result: no COUNT query needed.
            total = len(page) if offset == 0 and len(page) < count else qs.count()
        entries = [
            {"fullUrl": f"{_base()}/{rtype}/{r.rid}", "resource": r.content, "search": {"mode": "match"}}
            for r in page
        ]
        includes = query.getlist("_include")
        for include in includes:
            used.append(("_include", include))
        entries += _includes(rtype, page, includes, strict)
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": _links(rtype, used, count, offset, total),
        "entry": entries,
    }
    return _json(bundle)


def _audit_page(criteria: list[list[Any]], count: int, offset: int) -> tuple[int, list[dict]]:
    ids = subtypes = outcomes = None
    recorded = Q()
    for alternatives in criteria:
        first = alternatives[0]
        if isinstance(first, DateParam):
            either = Q(pk__in=[])
            for c in alternatives:
                either |= c.instant_q("at")
            recorded &= Q(either)
        elif first.param == "_id":
            ids = [c.value for c in alternatives]
        elif first.param == "subtype":
            subtypes = [c.value for c in alternatives]
        elif first.param == "outcome":
            outcomes = [c.value for c in alternatives]
    total, resources = audit_page(
        ids=ids, subtypes=subtypes, outcomes=outcomes, recorded=recorded, count=count, offset=offset
    )
    entries = [
        {"fullUrl": f"{_base()}/AuditEvent/{r['id']}", "resource": r, "search": {"mode": "match"}}
        for r in resources
    ]
    return total, entries


def _includes(rtype: str, page: list[FhirResource], wanted: list[str], strict: bool) -> list[dict[str, Any]]:
    """_include=Type:param for the type's reference parameters (the referenced resources once)."""
    entries, seen = [], set()
    for include in wanted:
        source, _, name = include.partition(":")
        param = BY_NAME.get(rtype, {}).get(name.split(":")[0])
        if source != rtype or param is None or param.kind != "reference":
            if strict:
                raise _refuse(outcome.NOT_SUPPORTED, f"_include={include} is not supported", "_include")
            continue
        for row in page:
            for ref in values(row.content, param):
                target = (
                    reference_normalize(ref.get("reference", ""), param.target)
                    if isinstance(ref, dict)
                    else ""
                )
                if target.count("/") != 1 or target in seen:
                    continue
                seen.add(target)
                try:
                    inc = resource_read(*target.split("/", 1))
                except errors.NotFound:
                    continue
                entries.append(
                    {"fullUrl": f"{_base()}/{target}", "resource": inc.content, "search": {"mode": "include"}}
                )
    return entries


# --- history -------------------------------------------------------------------------------------


@fhir_view(("GET",))
def history(request: HttpRequest, rtype: str | None = None, rid: str | None = None) -> HttpResponse:
    """GET [base]/_history, /{type}/_history, /{type}/{id}/_history: a history Bundle, newest first."""
    if rtype in READ_ONLY:
        raise _refuse(outcome.NOT_SUPPORTED, f"{rtype} has no history")
    query = request.GET
    since = None
    used: list[tuple[str, str]] = []
    if query.get("_since"):
        try:
            since = DateParam.parse("_since", query["_since"]).low
        except errors.InvalidInput as exc:
            raise _refuse(outcome.INVALID, exc.detail, "_since") from None
        used.append(("_since", query["_since"]))
    count, offset = _paging(query)
    qs = resource_history(rtype, rid, since=since)
    total = qs.count()
    entries = [_history_entry(v) for v in qs[offset : offset + count]]
    path = "/".join(p for p in (rtype, rid, "_history") if p)
    bundle = {
        "resourceType": "Bundle",
        "type": "history",
        "total": total,
        "link": _links(path, used, count, offset, total),
        "entry": entries,
    }
    return _json(bundle)


def _history_entry(version: FhirVersion) -> dict[str, Any]:
    rtype, rid = version.resource.resource_type, version.resource.rid
    created = version.method == "POST"
    return {
        "fullUrl": f"{_base()}/{rtype}/{rid}",
        "resource": version.content,
        "request": {"method": version.method, "url": rtype if created else f"{rtype}/{rid}"},
        "response": {
            "status": "201 Created" if created or version.version_id == 1 else "200 OK",
            "etag": f'W/"{version.version_id}"',
            "lastModified": version.last_updated.isoformat(),
        },
    }


# --- endpoints -----------------------------------------------------------------------------------


@csrf_exempt
def type_endpoint(request: HttpRequest, rtype: str) -> HttpResponse:
    """/fhir/{type}: GET search, POST create (or POST _search with a form body)."""
    if request.method == "POST" and rtype in PARAMS:
        return _write(write.create, request, rtype)
    return search(request, rtype=rtype)


@csrf_exempt
def search_post(request: HttpRequest, rtype: str) -> HttpResponse:
    """POST /fhir/{type}/_search with application/x-www-form-urlencoded parameters (R4 3.1.1.2)."""
    if request.method == "POST":
        merged = request.GET.copy()
        for name, items in QueryDict(request.body).lists():
            merged.setlist(name, merged.getlist(name) + items)
        request.GET = merged  # type: ignore[assignment]
        request.method = "GET"
    return search(request, rtype=rtype)


@csrf_exempt
def instance_endpoint(request: HttpRequest, rtype: str, rid: str) -> HttpResponse:
    """/fhir/{type}/{id}: GET read, PUT update."""
    if request.method == "PUT" and rtype in PARAMS:
        return _write(write.update, request, rtype, rid)
    return read(request, rtype=rtype, rid=rid)


@csrf_exempt
def base_endpoint(request: HttpRequest) -> HttpResponse:
    """/fhir/: POST a transaction or batch Bundle."""
    if request.method != "POST":
        return _not_allowed(request, "POST a transaction or batch Bundle here")
    return _write(write.bundle, request)


@negotiated
def _not_allowed(request: HttpRequest, message: str) -> HttpResponse:
    response = outcome.outcome(outcome.METHOD_NOT_ALLOWED, message)
    response["Allow"] = "POST"
    return response


def _write(view: Callable[..., HttpResponse], request: HttpRequest, *args: Any) -> HttpResponse:
    return negotiated(view)(request, *args)


# --- who may use the facade ------------------------------------------------------------------------


def guarded(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Roles (fhirai.api.auth.fhir_roles) on every FHIR interaction but the CapabilityStatement:
    a caller without the role gets 403 with an OperationOutcome; an OAuth token must also carry a
    SMART scope for the type and interaction (a Bundle's entries are checked one by one, in
    write.bundle), else 403 insufficient_scope; every interaction that answers
    2xx leaves an access record (who, role, interaction, type; never the search values, which can
    be identifiers). Without credentials the facade is open only when FHIRAI_REQUIRE_TOKENS is off
    (the middleware answers 401 otherwise); such calls are recorded as anonymous."""

    @csrf_exempt
    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        rtype = kwargs.get("rtype")
        principal = principal_of(request)
        if principal is not None and principal.role not in fhir_roles(rtype):
            return negotiated(_forbidden)(request, principal.role, rtype)
        bundle = request.resolver_match is not None and request.resolver_match.url_name == "fhir-base"
        if principal is not None and principal.scopes is not None and not bundle:
            interaction = _interaction(request)
            if not scopes_allow(principal.scopes, rtype or "*", interaction):
                return negotiated(_insufficient_scope)(request, rtype, interaction)
        try:
            # One transaction: a write and its access record commit together, or neither does.
            with transaction.atomic():
                return _answered_and_recorded(view, request, principal, rtype, args, kwargs)
        except DatabaseError as exc:
            # PostgreSQL away (restarting, failing over, out of connections): a read cannot be
            # answered, nor recorded, now. 503 with Retry-After, as writes say then; never a 500 page.
            log.warning(
                "FHIR %s %s: the database is unavailable (%s)",
                request.method,
                rtype or "/",
                db_error_code(exc),
            )
            return negotiated(_unavailable)(request)

    return wrapper


def _unavailable(request: HttpRequest) -> HttpResponse:
    return outcome.outcome(outcome.TRANSIENT, "storage is unavailable; retry later")


def _answered_and_recorded(
    view: Callable[..., HttpResponse],
    request: HttpRequest,
    principal: Principal | None,
    rtype: str | None,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> HttpResponse:
    """The view's answer; a 2xx one only once its access record is written (identified data is
    never served unrecorded)."""
    response = view(request, *args, **kwargs)
    if 200 <= response.status_code < 300:
        caller = principal or Principal(
            name=f"anonymous@{request.META.get('REMOTE_ADDR', '?')}", role="anonymous", via="none"
        )
        searched = request.method == "POST" and request.path.endswith("/_search")
        if "_history" in request.path:
            action = "history"
        elif request.method in ("POST", "PUT") and not searched:
            action = "write"
        elif searched or "rid" not in kwargs:
            action = "search"
        else:
            action = "read"
        where = "/".join(str(p) for p in (rtype or "", kwargs.get("rid") or "") if p)
        params = ",".join(sorted({k for k in request.GET if not k.startswith("_")}))
        access_record(
            caller,
            f"fhir.{action}",
            kind="fhir",
            detail=f"{request.method} /fhir/{where}" + (f" by {params}" if params else ""),
        )
    return response


# SMART v2 permissions by route (integrations/fhir/urls.py); the type and instance routes go by method.
ROUTE_INTERACTIONS = {
    "fhir-vread": "r",
    "fhir-search-post": "s",
    "fhir-history-system": "s",
    "fhir-history-type": "s",
    "fhir-history-instance": "s",
}
METHOD_INTERACTIONS = {"POST": "c", "PUT": "u", "DELETE": "d"}


def _interaction(request: HttpRequest) -> str:
    """The request's SMART v2 permission: c create, r read and vread, u update, d delete, s search
    and history (SMART App Launch 2, "Scopes for requesting FHIR resources")."""
    route = request.resolver_match.url_name if request.resolver_match else ""
    if route in ROUTE_INTERACTIONS:
        return ROUTE_INTERACTIONS[route]
    if request.method in METHOD_INTERACTIONS:
        return METHOD_INTERACTIONS[request.method]
    return "r" if route == "fhir-instance" else "s"


def _insufficient_scope(request: HttpRequest, rtype: str | None, interaction: str) -> HttpResponse:
    what = rtype or "every type (system-wide history)"
    return outcome.insufficient_scope(
        f"the token's scopes do not allow {interaction} on {what}",
        scope=f"system/{rtype or '*'}.{interaction}",
    )


def _forbidden(request: HttpRequest, role: str, rtype: str | None) -> HttpResponse:
    allowed = " or ".join(fhir_roles(rtype))
    what = f"{rtype} resources" if rtype else "this endpoint"
    return outcome.outcome(outcome.FORBIDDEN, f"the {role} role may not use {what} (needs {allowed})")
