"""Issuing, checking and revoking API tokens. The token is `fhirai_<prefix>_<secret>`: the
prefix finds the row, the secret's SHA-256 is compared in constant time (hmac.compare_digest),
so neither a timing difference nor a database dump gives a usable token away.

OAuth2 access tokens (issued by fhirai.api.oauth to machine clients) are checked here too: they
are `fhirai-at-<secret>`, found by the SHA-256 of the whole token, live until their expiry and
only while their client is not revoked."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from django.db.models import Q
from django.utils import timezone

from fhirai.api.models import ApiToken, OAuthClient, OAuthToken, Role
from fhirai.api.scopes import Scope, scopes_parse

TOKEN_PREFIX = "fhirai"  # nosec B105  # the public marker every token starts with, not a secret
ACCESS_TOKEN_PREFIX = "fhirai-at-"  # nosec B105  # the public marker of OAuth access tokens


def digest(secret: str) -> str:
    """SHA-256 (hex) of a secret of 256 random bits: enough, no slow KDF needed."""
    return hashlib.sha256(secret.encode()).hexdigest()


def token_issue(name: str, *, role: str = Role.VIEWER) -> tuple[ApiToken, str]:
    """A new token for `name`; returns the row and the full token, which is shown once only."""
    if role not in Role.values:
        raise ValueError(f"role must be one of {', '.join(Role.values)}")
    secret = secrets.token_urlsafe(32)
    while True:
        prefix = secrets.token_hex(4)
        if not ApiToken.objects.filter(prefix=prefix).exists():
            break
    row = ApiToken.objects.create(
        name=name, role=role, prefix=prefix, secret_sha256=digest(secret), created_at=timezone.now()
    )
    return row, f"{TOKEN_PREFIX}_{prefix}_{secret}"


def token_check(token: str) -> ApiToken | None:
    """The live token row for a presented token, or None (unknown, malformed, wrong, revoked)."""
    head, _, rest = token.partition("_")
    prefix, _, secret = rest.partition("_")
    if head != TOKEN_PREFIX or not prefix or not secret:
        return None
    row = ApiToken.objects.filter(prefix=prefix, revoked_at__isnull=True).first()
    # Compare even when there is no row, so an unknown prefix takes as long as a wrong secret.
    expected = row.secret_sha256 if row is not None else digest("")
    if not hmac.compare_digest(expected, digest(secret)) or row is None:
        return None
    now = timezone.now()
    if row.last_used_at is None or (now - row.last_used_at).total_seconds() > 60:
        ApiToken.objects.filter(pk=row.pk).update(last_used_at=now)  # at most one write a minute
    return row


def token_revoke(name_or_prefix: str) -> int:
    """Revoke the live tokens with this name or prefix; returns how many."""
    return ApiToken.objects.filter(
        Q(name=name_or_prefix) | Q(prefix=name_or_prefix), revoked_at__isnull=True
    ).update(revoked_at=timezone.now())


@dataclass(frozen=True)
class Grant:
    """A live OAuth access token's client and granted scopes."""

    client: OAuthClient
    scopes: tuple[Scope, ...]


def access_token_check(token: str) -> Grant | None:
    """The client and scopes of a live OAuth access token, or None (unknown, expired, client
    revoked). Found by its SHA-256: 256 random bits cannot be guessed, so the lookup leaks nothing."""
    if not token.startswith(ACCESS_TOKEN_PREFIX):
        return None
    row = (
        OAuthToken.objects.select_related("client")
        .filter(token_sha256=digest(token), expires_at__gt=timezone.now(), client__revoked_at__isnull=True)
        .first()
    )
    if row is None:
        return None
    return Grant(client=row.client, scopes=scopes_parse(row.scope))
