"""Who is calling and in which role: a Bearer API token, or a logged-in console user (Django
groups admin/operator/viewer/auditor; a superuser is admin). The middleware guards the machine
endpoints: with FHIRAI_REQUIRE_TOKENS on, /fhir/, /hl7/, /dicomweb/ and /api/ (but /api/health) need a valid
token (the CapabilityStatement at /fhir/metadata stays open: clients discover the server with it); with
it off they stay open as before, but a Bearer token that is sent must be valid.

A Bearer token is an API token (`fhirai_...`, role only) or an OAuth2 access token a machine client
got from /auth/token (`fhirai-at-...`: its client's role, and the SMART scopes it was granted,
which the FHIR facade checks as well)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse, JsonResponse

from fhirai.api.models import Role
from fhirai.api.scopes import Scope
from fhirai.api.tokens import access_token_check, token_check

log = logging.getLogger(__name__)
GUARDED = ("/fhir/", "/hl7/", "/api/", "/dicomweb/")
# health for load balancers; the CapabilityStatement and the SMART configuration for discovery
OPEN = ("/api/health", "/fhir/metadata", "/fhir/.well-known/smart-configuration")
PHI_ROLES = (Role.ADMIN, Role.OPERATOR)
ROLE_ORDER = (Role.ADMIN, Role.OPERATOR, Role.AUDITOR, Role.VIEWER)


@dataclass(frozen=True)
class Principal:
    """The caller: a name for the audit trail and one role; for an OAuth access token also the
    SMART scopes granted (None: an API token or a session, bounded by the role alone)."""

    name: str
    role: str
    via: str  # "token", "oauth" or "session"
    scopes: tuple[Scope, ...] | None = None

    @property
    def sees_phi(self) -> bool:
        return self.role in PHI_ROLES


def fhir_roles(rtype: str | None) -> tuple[str, ...]:
    """The roles that may use the FHIR facade for a resource type (None: the base endpoint and
    system-wide history): the audit trail for admin and auditor; every other type holds identified
    data, for admin and operator (a viewer's console shows de-identified data only)."""
    return (Role.ADMIN, Role.AUDITOR) if rtype == "AuditEvent" else PHI_ROLES


def bearer(request: HttpRequest) -> str | None:
    """The Bearer token of the request, '' for a malformed Authorization header, None for none."""
    header = request.headers.get("Authorization", "")
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def user_role(user: object) -> str | None:
    """The strongest role of a console user, from the superuser flag and Django groups."""
    if not getattr(user, "is_authenticated", False) or not getattr(user, "is_active", False):
        return None
    if getattr(user, "is_superuser", False):
        return Role.ADMIN
    names = set(user.groups.values_list("name", flat=True))  # type: ignore[attr-defined]
    return next((r.value for r in ROLE_ORDER if r.value in names), None)


def principal_of(request: HttpRequest) -> Principal | None:
    """The authenticated caller (token first, then session), cached on the request."""
    if hasattr(request, "_fhirai_principal"):
        return request._fhirai_principal  # type: ignore[attr-defined]
    principal = None
    token = bearer(request)
    if token:
        row = token_check(token)
        if row is not None:
            principal = Principal(name=f"token:{row.name}", role=row.role, via="token")
        elif (grant := access_token_check(token)) is not None:
            client = grant.client
            principal = Principal(
                name=f"client:{client.name}", role=client.role, via="oauth", scopes=grant.scopes
            )
    elif token is None:
        user = getattr(request, "user", None)
        role = user_role(user)
        if role is not None:
            principal = Principal(name=f"user:{user.get_username()}", role=role, via="session")  # type: ignore[union-attr]
    request._fhirai_principal = principal  # type: ignore[attr-defined]
    return principal


def _unauthorized(message: str, *, invalid: bool = False) -> JsonResponse:
    """401; for a token that was sent but is not valid, RFC 6750 3.1's error="invalid_token"."""
    response = JsonResponse({"detail": message}, status=401)
    error = ', error="invalid_token"' if invalid else ""
    response["WWW-Authenticate"] = f'Bearer realm="fhirai"{error}'
    return response


class TokenMiddleware:
    """Guards /fhir/, /hl7/ and /api/ as FHIRAI_REQUIRE_TOKENS says (place after authentication)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        path = request.path
        if path.startswith(GUARDED) and not path.startswith(OPEN):
            try:
                refusal = self._refusal(request, path)
            except DatabaseError as exc:
                # Tokens live in the database: while it is away the caller is told to come back
                # (as the endpoints themselves say then), never let in unchecked.
                log.warning("credentials not checked: the database is unavailable (%s)", db_error_code(exc))
                return _unavailable(path)
            if refusal is not None:
                return refusal
        return self.get_response(request)

    def _refusal(self, request: HttpRequest, path: str) -> HttpResponse | None:
        token = bearer(request)
        if token is not None:
            if principal_of(request) is None:
                return _unauthorized(
                    "the Bearer token is not valid (unknown, malformed, expired or revoked)", invalid=True
                )
        elif settings.FHIRAI_REQUIRE_TOKENS:
            # The console's own pages call /api/ with their session; the machine endpoints
            # (/fhir/, /hl7/) take tokens only.
            if not path.startswith("/api/") or principal_of(request) is None:
                return _unauthorized("a Bearer token is required (Authorization: Bearer fhirai_...)")
        return None


def db_error_code(exc: BaseException) -> str:
    """The class and SQLSTATE of a database error, for the log (its message can quote values)."""
    cause = exc.__cause__ or exc
    return f"{type(cause).__name__} {getattr(cause, 'sqlstate', None) or getattr(cause, 'pgcode', None) or ''}".strip()


def _unavailable(path: str) -> HttpResponse:
    detail = "the database is unavailable: credentials cannot be checked now; retry later"
    if path.startswith("/fhir/"):
        body = {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "transient", "diagnostics": detail}],
        }
        response = HttpResponse(json.dumps(body), status=503, content_type="application/fhir+json")
    else:
        response = JsonResponse({"detail": detail}, status=503)
    response["Retry-After"] = "30"
    return response
