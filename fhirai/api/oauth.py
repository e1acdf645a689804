"""fhirai as an OAuth2 authorization server for machine clients: the client_credentials grant
(RFC 6749 4.4) with SMART Backend Services client authentication (a JWT signed by the client's
private key, RFC 7523 2.2 and 3; SMART App Launch 2 "Backend Services") or with a client secret
(client_secret_basic / client_secret_post, RFC 6749 2.3.1).

An access token is 256 random bits; only its SHA-256 is stored, with the client, the granted
scopes and the expiry, so a database dump gives no usable token away, and revoking the client
ends its tokens at once. Every issuance and every refusal is an access record (never the
assertion, the secret or the token), and failed client authentications are throttled per client
id and per address, as console logins are."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from fhirai.api.access import access_record
from fhirai.api.auth import Principal
from fhirai.api.clients import SIGNING_ALGORITHMS, client_keys, client_live, client_secret_matches
from fhirai.api.models import ClientAuthFailure, OAuthAssertion, OAuthClient, OAuthToken
from fhirai.api.scopes import Scope, scopes_grant, scopes_parse, scopes_text
from fhirai.api.throttle import Lockout
from fhirai.api.tokens import ACCESS_TOKEN_PREFIX, digest
from fhirai.errors import InvalidInput, Unavailable

TOKEN_PATH = "/auth/token"  # nosec B105  # a URL path, not a password
GRANT_TYPE = "client_credentials"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_MAX_LIFETIME = 300  # SMART: exp no more than five minutes in the future
AUTH_METHODS = ("private_key_jwt", "client_secret_basic", "client_secret_post")

# RFC 6749 5.2: the error codes of a token response and their HTTP status.
INVALID_REQUEST = ("invalid_request", 400)
INVALID_CLIENT = ("invalid_client", 401)
INVALID_GRANT = ("invalid_grant", 400)  # client_credentials carries no grant: never answered here
UNAUTHORIZED_CLIENT = ("unauthorized_client", 400)
UNSUPPORTED_GRANT_TYPE = ("unsupported_grant_type", 400)
INVALID_SCOPE = ("invalid_scope", 400)
THROTTLED = ("invalid_client", 429)  # RFC 6585; Retry-After says when to try again
# The client's keys could not be fetched: retry later (the code RFC 6749 4.1.2.1 defines).
UNAVAILABLE = ("temporarily_unavailable", 503)


def printable(text: str) -> str:
    """Text for an error_description or a record: RFC 6749 5.2 allows printable ASCII but '"' and
    '\\'; it may echo what a client sent (a kid), so anything else becomes '?'."""
    return "".join(c if " " <= c <= "~" and c not in '"\\' else "?" for c in text)


class OAuthError(Exception):
    """A refused token request: the RFC 6749 5.2 error, a description safe to show the client, the
    client id it named (for the record), and whether the client used HTTP Basic (the 401 then
    carries WWW-Authenticate: Basic)."""

    def __init__(
        self, kind: tuple[str, int], description: str, *, client_id: str = "", basic: bool = False
    ) -> None:
        super().__init__(f"{kind[0]}: {description}")
        self.error, self.status = kind
        self.description = printable(description)
        self.client_id = client_id
        self.basic = basic
        self.retry_after: int | None = None


Refuse = Callable[[str], OAuthError]  # a reason -> the invalid_client refusal to raise


@dataclass(frozen=True)
class TokenRequest:
    """The parts of a token request that matter: the form (each parameter once) and the
    credentials of HTTP Basic, if any."""

    form: dict[str, str]
    basic: tuple[str, str] | None
    address: str


@dataclass(frozen=True)
class Issued:
    token: str
    expires_in: int
    scope: str


def token_endpoint_url() -> str:
    """The token endpoint's public URL: a client assertion's `aud` must be exactly this."""
    return f"{settings.FHIRAI_BASE_URL}{TOKEN_PATH}"


def smart_configuration() -> dict[str, Any]:
    """The SMART configuration (SMART App Launch 2, "Conformance"): what a backend service needs to
    find and use the token endpoint."""
    return {
        "token_endpoint": token_endpoint_url(),
        "grant_types_supported": [GRANT_TYPE],
        "token_endpoint_auth_methods_supported": list(AUTH_METHODS),
        "token_endpoint_auth_signing_alg_values_supported": list(SIGNING_ALGORITHMS),
        "scopes_supported": ["system/*.cruds", "system/*.rs", "system/*.read", "system/*.write"],
        "capabilities": [
            "client-confidential-asymmetric",
            "client-confidential-symmetric",
            "permission-v1",
            "permission-v2",
        ],
    }


# --- the token request ---------------------------------------------------------------------------


def token_request_handle(request: TokenRequest) -> Issued:
    """Authenticate the client, narrow its scopes, issue a token; each outcome is recorded.
    Raises OAuthError with the RFC 6749 5.2 answer."""
    client: OAuthClient | None = None
    client_id = ""
    try:
        _grant_type_check(request.form)
        client_id = _client_id_presented(request)
        _throttle_check(client_id, request)
        try:
            client, method = _client_authenticate(request, client_id)
        except OAuthError:
            _failure_count(client_id, request.address)
            raise
        granted = _scope_grant(request.form, client)
    except OAuthError as refused:
        refusal_record(refused, client, request.address)
        raise
    except Unavailable as exc:  # the client's jwks_uri did not answer: the client may retry
        refusal_record(OAuthError(UNAVAILABLE, str(exc), client_id=client_id), None, request.address)
        raise
    issued = _token_issue(client, granted)
    access_record(
        client_principal(client),
        "oauth.token",
        kind="oauth",
        detail=f"{method}; scope {issued.scope}; {issued.expires_in} s; from {request.address}",
    )
    return issued


def _grant_type_check(form: dict[str, str]) -> None:
    grant_type = form.get("grant_type")
    if not grant_type:
        raise OAuthError(INVALID_REQUEST, "grant_type is required")
    if grant_type != GRANT_TYPE:
        raise OAuthError(UNSUPPORTED_GRANT_TYPE, f"only {GRANT_TYPE} is supported")


def _client_id_presented(request: TokenRequest) -> str:
    """The client id the request claims (not yet proven), for the throttle and the record. Exactly
    one authentication method may be used (RFC 6749 2.3)."""
    form = request.form
    methods = [
        name
        for name, used in (
            ("client_secret_basic", request.basic is not None),
            ("private_key_jwt", "client_assertion" in form or "client_assertion_type" in form),
            ("client_secret_post", "client_secret" in form),
        )
        if used
    ]
    if len(methods) > 1:
        raise OAuthError(
            INVALID_REQUEST, f"use one client authentication method, not {' and '.join(methods)}"
        )
    if not methods:
        raise OAuthError(INVALID_CLIENT, "no client authentication (a client assertion or a client secret)")
    if request.basic is not None:
        return _client_id_clean(request.basic[0], basic=True)
    if methods[0] == "private_key_jwt":
        try:
            claims = jwt.decode(form.get("client_assertion", ""), options={"verify_signature": False})
        except jwt.InvalidTokenError:
            claims = {}
        issuer = claims.get("iss") if isinstance(claims, dict) else None
        return _client_id_clean(issuer if isinstance(issuer, str) else form.get("client_id", ""))
    return _client_id_clean(form.get("client_id", ""))


def _client_id_clean(raw: str, *, basic: bool = False) -> str:
    """A presented client id, refused unless it could be one (printable, at most 64 characters):
    the throttle, the lookup and the record then never meet a NUL or an unbounded string."""
    if len(raw) <= 64 and raw.isprintable():
        return raw
    shown = "".join(c for c in raw if c.isprintable())[:64]
    raise OAuthError(INVALID_CLIENT, "not a client id", client_id=shown, basic=basic)


def _client_authenticate(request: TokenRequest, client_id: str) -> tuple[OAuthClient, str]:
    """The live client the request proves to be, and how it proved it."""
    form = request.form
    if request.basic is not None:
        client = client_live(client_id)
        if not client_secret_matches(client, request.basic[1]) or client is None:
            raise OAuthError(
                INVALID_CLIENT, "unknown client or wrong secret", client_id=client_id, basic=True
            )
        return client, "client_secret_basic"
    if "client_secret" in form:
        client = client_live(client_id)
        if not client_secret_matches(client, form["client_secret"]) or client is None:
            raise OAuthError(INVALID_CLIENT, "unknown client or wrong secret", client_id=client_id)
        return client, "client_secret_post"
    return _assertion_verify(form, client_id), "private_key_jwt"


def _assertion_verify(form: dict[str, str], client_id: str) -> OAuthClient:
    """RFC 7523 3 and SMART Backend Services: a JWS (RS384 or ES384) by a key of the client's JWKS
    named by kid; iss = sub = client id; aud = this endpoint; exp in the future and at most five
    minutes away; a jti used once."""

    def refuse(reason: str) -> OAuthError:
        return OAuthError(INVALID_CLIENT, reason, client_id=client_id)

    if form.get("client_assertion_type") != ASSERTION_TYPE:
        raise OAuthError(
            INVALID_REQUEST, f"client_assertion_type must be {ASSERTION_TYPE}", client_id=client_id
        )
    assertion = form.get("client_assertion", "")
    if form.get("client_id") not in (None, client_id):
        raise refuse("client_id does not match the assertion's iss")
    try:
        header = jwt.get_unverified_header(assertion)
    except jwt.InvalidTokenError:
        raise refuse("client_assertion is not a JWS") from None
    alg = header.get("alg")
    if alg not in SIGNING_ALGORITHMS:  # never none, HS* (a public key as the HMAC secret) or others
        raise refuse(f"alg must be one of {', '.join(SIGNING_ALGORITHMS)}")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise refuse("the assertion's header has no kid")
    client = client_live(client_id)
    if client is None:
        raise refuse("unknown or revoked client")
    if header.get("jku") not in (None, client.jwks_uri or None):
        raise refuse("jku is not the client's registered jwks_uri")
    key = _client_key(client, kid, refuse)
    if key.algorithm_name != alg:
        raise refuse(f"key {kid} signs with {key.algorithm_name}, not {alg}")
    claims = _claims_verify(assertion, key, alg, client_id, refuse)
    _jti_spend(client, claims)
    return client


def _client_key(client: OAuthClient, kid: str, refuse: Refuse) -> jwt.PyJWK:
    """The client's key `kid`; an unknown kid refetches a jwks_uri once (keys are rotated)."""
    try:
        keys = client_keys(client)
        if kid not in keys and client.jwks_uri:
            keys = client_keys(client, refresh=True)
    except InvalidInput:
        raise refuse("the client's JWKS has no usable key") from None
    if kid not in keys:
        raise refuse(f"no key {kid!r} in the client's JWKS")
    return keys[kid]


def _claims_verify(
    assertion: str, key: jwt.PyJWK, alg: str, client_id: str, refuse: Refuse
) -> dict[str, Any]:
    """The claims, once PyJWT has checked signature, aud, iss and exp; then SMART's own limits."""
    try:
        claims = jwt.decode(
            assertion,
            key.key,
            algorithms=[alg],
            audience=token_endpoint_url(),
            issuer=client_id,
            options={"require": ["iss", "sub", "aud", "exp", "jti"]},
        )
    except jwt.InvalidTokenError as exc:
        raise refuse(f"client_assertion refused: {type(exc).__name__}: {exc}") from None
    if claims["sub"] != client_id:
        raise refuse("sub must equal iss (the client id)")
    if (
        not isinstance(claims["exp"], int | float)
        or claims["exp"] - timezone.now().timestamp() > ASSERTION_MAX_LIFETIME
    ):
        raise refuse(f"exp is more than {ASSERTION_MAX_LIFETIME} s away")
    if not isinstance(claims["jti"], str) or not claims["jti"]:
        raise refuse("jti must be a non-empty string")
    return claims


def _jti_spend(client: OAuthClient, claims: dict[str, Any]) -> None:
    """Accept the assertion's jti once: the unique constraint refuses a replay, in any process.
    Rows leave once their assertion has expired (it could not be replayed then anyway)."""
    now = timezone.now()
    OAuthAssertion.objects.filter(expires_at__lt=now).delete()
    try:
        with transaction.atomic():
            OAuthAssertion.objects.create(
                client=client,
                jti_sha256=hashlib.sha256(claims["jti"].encode()).hexdigest(),
                expires_at=datetime.fromtimestamp(claims["exp"], tz=UTC),
            )
    except IntegrityError:
        raise OAuthError(
            INVALID_CLIENT, "jti already used (a replayed assertion)", client_id=client.client_id
        ) from None


def _scope_grant(form: dict[str, str], client: OAuthClient) -> tuple[Scope, ...]:
    requested = form.get("scope", "").strip()
    if not requested:
        raise OAuthError(
            INVALID_REQUEST, "scope is required (e.g. system/Observation.rs)", client_id=client.client_id
        )
    if not scopes_parse(client.scope):
        raise OAuthError(
            UNAUTHORIZED_CLIENT, "no scopes are registered for this client", client_id=client.client_id
        )
    granted = scopes_grant(requested, allowed=client.scope, role=client.role)
    if not granted:
        raise OAuthError(
            INVALID_SCOPE,
            "none of the requested scopes may be granted to this client",
            client_id=client.client_id,
        )
    return granted


def _token_issue(client: OAuthClient, granted: tuple[Scope, ...]) -> Issued:
    now = timezone.now()
    lifetime = settings.FHIRAI_OAUTH_TOKEN_LIFETIME
    token = f"{ACCESS_TOKEN_PREFIX}{secrets.token_urlsafe(32)}"
    OAuthToken.objects.filter(expires_at__lt=now).delete()  # expired tokens are of no use to anyone
    OAuthToken.objects.create(
        client=client,
        token_sha256=digest(token),
        scope=scopes_text(granted),
        issued_at=now,
        expires_at=now + timedelta(seconds=lifetime),
    )
    OAuthClient.objects.filter(pk=client.pk).update(last_used_at=now)
    return Issued(token=token, expires_in=lifetime, scope=scopes_text(granted))


# --- the caller a token stands for ------------------------------------------------------------------


def client_principal(client: OAuthClient, scopes: tuple[Scope, ...] | None = None) -> Principal:
    """The caller a client's token stands for: the client's name and role, with its scopes."""
    return Principal(name=f"client:{client.name}", role=client.role, via="oauth", scopes=scopes)


# --- throttle and record ---------------------------------------------------------------------------


def _window() -> timedelta:
    return timedelta(seconds=settings.FHIRAI_OAUTH_FAILURE_WINDOW_SECONDS)


def _lockout_of(reason: str, rows: list[datetime], limit: int, now: datetime) -> Lockout | None:
    """Locked while `limit` or more failures fall in the window (fhirai.api.throttle's rule)."""
    if len(rows) < limit:
        return None
    ends = sorted(rows)[-limit] + _window()
    return Lockout(reason, max(1, int((ends - now).total_seconds()) + 1))


def _throttle_check(client_id: str, request: TokenRequest) -> None:
    """Refuse without checking credentials while this client id or address has failed too often."""
    now = timezone.now()
    recent = ClientAuthFailure.objects.filter(at__gt=now - _window())
    by_client = list(recent.filter(client_id=client_id).values_list("at", flat=True))
    by_address = list(recent.filter(address=request.address).values_list("at", flat=True))
    lockout = _lockout_of("client", by_client, settings.FHIRAI_OAUTH_MAX_FAILURES, now) or _lockout_of(
        "address", by_address, settings.FHIRAI_OAUTH_MAX_FAILURES_PER_ADDRESS, now
    )
    if lockout is not None:
        refused = OAuthError(
            THROTTLED,
            f"too many failed client authentications (by {lockout.reason}); retry in {lockout.retry_after} s",
            client_id=client_id,
            basic=request.basic is not None,
        )
        refused.retry_after = lockout.retry_after
        raise refused


def _failure_count(client_id: str, address: str) -> None:
    now = timezone.now()
    ClientAuthFailure.objects.filter(at__lte=now - _window()).delete()  # keep the table to the window
    ClientAuthFailure.objects.create(at=now, client_id=client_id, address=address[:64])


def refusal_record(refused: OAuthError, client: OAuthClient | None, address: str) -> None:
    """An access record of the refusal: the client as named (printable, bounded), the error and why."""
    if client is not None:
        principal = client_principal(client)
    else:
        named = "".join(c for c in refused.client_id if c.isprintable())[:64] or "?"
        principal = Principal(name=f"client-id:{named}", role="", via="oauth")
    detail = f"{refused.error} ({refused.status}): {refused.description}; from {address}"
    access_record(principal, "oauth.refused", kind="oauth", detail=printable(detail))
