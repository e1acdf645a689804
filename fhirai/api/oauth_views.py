"""HTTP of the OAuth2 authorization server: the token endpoint (POST /auth/token, RFC 6749 4.4 and
5) and the SMART configuration (GET /.well-known/smart-configuration, also under /fhir/). Both are
open: the token endpoint authenticates the client itself, discovery must work before a client has
a token. fhirai.api.oauth decides; this module parses the wire and answers in OAuth's terms."""

from __future__ import annotations

import base64
import binascii
import json
from urllib.parse import unquote_plus

from django.http import HttpRequest, HttpResponse, JsonResponse, QueryDict
from django.views.decorators.csrf import csrf_exempt

from fhirai.api.oauth import (
    INVALID_CLIENT,
    INVALID_REQUEST,
    UNAVAILABLE,
    OAuthError,
    TokenRequest,
    refusal_record,
    smart_configuration,
    token_request_handle,
)
from fhirai.api.throttle import client_address
from fhirai.errors import Unavailable

FORM = "application/x-www-form-urlencoded"


def _answer(body: dict[str, object], status: int) -> HttpResponse:
    """JSON with the no-store / no-cache headers RFC 6749 5.1 requires of every token response."""
    response = HttpResponse(json.dumps(body), status=status, content_type="application/json")
    response["Cache-Control"] = "no-store"
    response["Pragma"] = "no-cache"
    return response


def _error(refused: OAuthError) -> HttpResponse:
    response = _answer({"error": refused.error, "error_description": refused.description}, refused.status)
    if refused.status == 401 and refused.basic:
        response["WWW-Authenticate"] = 'Basic realm="fhirai", charset="UTF-8"'  # RFC 6749 5.2
    if refused.retry_after is not None:
        response["Retry-After"] = str(refused.retry_after)
    return response


def _basic(request: HttpRequest) -> tuple[str, str] | None:
    """HTTP Basic credentials, each part form-decoded (RFC 6749 2.3.1); None without the header."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise OAuthError(INVALID_CLIENT, "malformed Basic credentials", basic=True) from None
    client_id, colon, secret = decoded.partition(":")
    if not colon:
        raise OAuthError(INVALID_CLIENT, "malformed Basic credentials", basic=True)
    return unquote_plus(client_id), unquote_plus(secret)


def _form(request: HttpRequest) -> dict[str, str]:
    """The form's parameters; each may appear once only (RFC 6749 3.2)."""
    if request.content_type != FORM:
        raise OAuthError(INVALID_REQUEST, f"the body must be {FORM}")
    if request.GET:
        raise OAuthError(INVALID_REQUEST, "parameters go in the body, not the query")
    form: dict[str, str] = {}
    for name, values in QueryDict(request.body).lists():
        if len(values) != 1:
            raise OAuthError(INVALID_REQUEST, f"parameter {name} appears more than once")
        form[name] = values[0]
    return form


@csrf_exempt  # a machine endpoint: the client authenticates in the request itself, no cookie
def token(request: HttpRequest) -> HttpResponse:
    """POST /auth/token: client_credentials; the access token, or an RFC 6749 5.2 error."""
    if request.method != "POST":
        response = _answer({"error": INVALID_REQUEST[0], "error_description": "POST a form here"}, 405)
        response["Allow"] = "POST"
        return response
    address = client_address(request)
    try:
        parsed = TokenRequest(form=_form(request), basic=_basic(request), address=address)
    except OAuthError as refused:
        refusal_record(refused, None, address)
        return _error(refused)
    try:
        issued = token_request_handle(parsed)
    except OAuthError as refused:  # recorded by the handler
        return _error(refused)
    except Unavailable as exc:  # a client's jwks_uri did not answer (recorded by the handler)
        unavailable = OAuthError(UNAVAILABLE, str(exc))
        unavailable.retry_after = 30
        return _error(unavailable)
    body = {
        "access_token": issued.token,
        "token_type": "bearer",  # nosec B105  # RFC 6750 token type, not a password
        "expires_in": issued.expires_in,
        "scope": issued.scope,
    }
    return _answer(body, 200)


def smart_configuration_view(request: HttpRequest) -> HttpResponse:
    """GET the SMART configuration (open: discovery comes before a token)."""
    if request.method not in ("GET", "HEAD"):
        response = JsonResponse({"detail": f"{request.method} is not supported here"}, status=405)
        response["Allow"] = "GET"
        return response
    return JsonResponse(smart_configuration())
