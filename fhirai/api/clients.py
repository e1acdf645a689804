"""The registry of OAuth2 machine clients: registering and revoking them, their secrets (only a
SHA-256 kept, compared in constant time) and their public keys (a JWKS held in the row, or a
jwks_uri fetched with a timeout and cached per process).

A jwks_uri must be https, or http on a loopback address (a key service on the same host): keys
fetched over plain HTTP from elsewhere could be swapped on the way, and with them the client's
identity."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import secrets
import uuid
from typing import Any
from urllib.parse import urlsplit

import jwt
import requests
from django.conf import settings
from django.core.cache import cache
from django.db.models import Q
from django.utils import timezone

from fhirai.api.models import OAuthClient, Role
from fhirai.api.scopes import ROLE_CEILING, scope_parse, scopes_grant, scopes_text
from fhirai.errors import InvalidInput, Unavailable

SIGNING_ALGORITHMS = ("RS384", "ES384")  # SMART Backend Services: the two a server must accept
JWKS_MAX_BYTES = 65536


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def client_register(
    name: str,
    *,
    role: str,
    scope: str = "",
    jwks: dict[str, Any] | None = None,
    jwks_uri: str = "",
    with_secret: bool = False,
) -> tuple[OAuthClient, str]:
    """A new client; returns the row and its secret ('' unless `with_secret`), shown once only.
    `scope` empty: the role's ceiling. Refuses scopes the role could never be granted, and a
    client with no way, or more than one way, to authenticate."""
    if role not in Role.values:
        raise InvalidInput("invalid", f"role must be one of {', '.join(Role.values)}")
    scope = scope.strip() or ROLE_CEILING[Role(role)]
    unknown = [t for t in scope.split() if scope_parse(t) is None]
    if unknown:
        raise InvalidInput("invalid", f"not system scopes this server grants: {' '.join(unknown)}")
    if not scopes_grant(scope, allowed=scope, role=role):
        # A viewer is never granted a FHIR scope (every type is identified data), so it could
        # never get a token: for /api/ it takes an API token (issue_token --role viewer).
        hint = "; for /api/ use an API token (issue_token --role viewer)" if role == Role.VIEWER else ""
        raise InvalidInput(
            "invalid", f"a {role} client can be granted none of: {scope or '(no scope)'}{hint}"
        )
    if jwks is not None:
        jwks_keys(jwks)  # refuse a JWKS with no usable key now, not at the first token request
    if jwks_uri:
        jwks_uri_check(jwks_uri)
    kinds = sum((jwks is not None, bool(jwks_uri), with_secret))
    if kinds != 1:
        # One way to authenticate per client: a key-based client must not also be open to the
        # weaker shared secret, and the registry says plainly which one a client uses.
        raise InvalidInput("invalid", "a client has exactly one of: a JWKS, a jwks_uri, a secret")
    secret = secrets.token_urlsafe(32) if with_secret else ""
    row = OAuthClient.objects.create(
        client_id=uuid.uuid4().hex,
        name=name[:64],
        role=role,
        scope=scopes_text(scopes_grant(scope, allowed=scope, role=role)),
        jwks=jwks,
        jwks_uri=jwks_uri,
        secret_sha256=_digest(secret) if secret else "",
        created_at=timezone.now(),
    )
    return row, secret


def client_revoke(name_or_client_id: str) -> int:
    """Revoke the live clients with this name or client id (their tokens stop working at once)."""
    return OAuthClient.objects.filter(
        Q(name=name_or_client_id) | Q(client_id=name_or_client_id), revoked_at__isnull=True
    ).update(revoked_at=timezone.now())


def client_live(client_id: str) -> OAuthClient | None:
    """The client with this id, unless it is unknown or revoked."""
    return OAuthClient.objects.filter(client_id=client_id[:64], revoked_at__isnull=True).first()


def client_secret_matches(client: OAuthClient | None, secret: str) -> bool:
    """Constant time, and as long for an unknown client or one without a secret as for a wrong one."""
    expected = client.secret_sha256 if client is not None and client.secret_sha256 else _digest("")
    matches = hmac.compare_digest(expected, _digest(secret))
    return matches and client is not None and bool(client.secret_sha256)


def jwks_uri_check(uri: str) -> None:
    """https, or http to a loopback address; refuses anything else."""
    parts = urlsplit(uri)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname:
        try:
            if parts.hostname == "localhost" or ipaddress.ip_address(parts.hostname).is_loopback:
                return
        except ValueError:
            pass
    raise InvalidInput("invalid", "jwks_uri must be https (or http on a loopback address)")


def jwks_keys(jwks: Any) -> dict[str, jwt.PyJWK]:
    """The signing keys of a JWKS by kid: RSA of 2048 bits or more (RS384), EC on P-384 (ES384).
    Keys without a kid, for other uses or algorithms, or that do not parse are left out; a JWKS
    with none left is refused."""
    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    if not isinstance(keys, list):
        raise InvalidInput("invalid", 'a JWKS is a JSON object with a "keys" list')
    found: dict[str, jwt.PyJWK] = {}
    for raw in keys:
        key = _signing_key(raw)
        if key is not None:
            found[raw["kid"]] = key
    if not found:
        raise InvalidInput("invalid", "the JWKS has no RSA (2048 bits or more) or P-384 EC key with a kid")
    return found


def _signing_key(raw: Any) -> jwt.PyJWK | None:
    if not isinstance(raw, dict) or not isinstance(raw.get("kid"), str) or raw.get("use", "sig") != "sig":
        return None
    if "d" in raw:  # a private key published by mistake: never use it
        return None
    kty, alg = raw.get("kty"), raw.get("alg")
    wanted = {"RSA": "RS384", "EC": "ES384"}.get(kty)  # type: ignore[arg-type]
    if wanted is None or alg not in (None, wanted) or (kty == "EC" and raw.get("crv") != "P-384"):
        return None
    try:
        key = jwt.PyJWK(raw, algorithm=wanted)
    except (jwt.PyJWKError, ValueError, TypeError):
        return None
    if kty == "RSA" and key.key.key_size < 2048:
        return None
    return key


def client_keys(client: OAuthClient, *, refresh: bool = False) -> dict[str, jwt.PyJWK]:
    """The client's signing keys by kid: its JWKS, or its jwks_uri's (cached; `refresh` refetches,
    for a kid the cached set does not have: the client may have rotated its keys)."""
    if client.jwks is not None:
        return jwks_keys(client.jwks)
    if not client.jwks_uri:
        return {}
    key = f"fhirai:jwks:{_digest(client.jwks_uri)}"
    document = None if refresh else cache.get(key)
    if document is None:
        document = _jwks_fetch(client.jwks_uri)
        cache.set(key, document, settings.FHIRAI_OAUTH_JWKS_CACHE_SECONDS)
    return jwks_keys(document)


def _jwks_fetch(uri: str) -> Any:
    """GET the JWKS: bounded in time and size, no redirects (they could leave https)."""
    jwks_uri_check(uri)
    try:
        with requests.get(
            uri,
            timeout=settings.FHIRAI_OAUTH_JWKS_TIMEOUT,
            allow_redirects=False,
            stream=True,
            headers={"Accept": "application/json"},
        ) as response:
            body = response.raw.read(JWKS_MAX_BYTES + 1, decode_content=True)
            status = response.status_code
    except requests.RequestException as exc:
        raise Unavailable(f"jwks_uri unreachable: {type(exc).__name__}") from exc
    if status != 200 or len(body) > JWKS_MAX_BYTES:
        raise Unavailable(f"jwks_uri answered HTTP {status}" if status != 200 else "jwks_uri: JWKS too large")
    try:
        return json.loads(body)
    except ValueError:
        raise Unavailable("jwks_uri: not JSON") from None
