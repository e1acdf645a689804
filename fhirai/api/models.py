"""API clients and the access audit. A token's secret is never stored: only its SHA-256 (the
secret is 256 random bits, so a plain hash is enough; no slow KDF needed), found by a short
public prefix. AccessEvent records every view or search of identified data, by whom."""

from __future__ import annotations

from django.db import models


class Role(models.TextChoices):
    ADMIN = "admin"
    OPERATOR = "operator"
    VIEWER = "viewer"
    AUDITOR = "auditor"


class ApiToken(models.Model):
    """One client's bearer token, scoped to one role, revocable."""

    name = models.CharField(max_length=64)
    role = models.CharField(max_length=16, choices=Role.choices)
    prefix = models.CharField(max_length=16, unique=True)
    secret_sha256 = models.CharField(max_length=64)
    created_at = models.DateTimeField()
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"token {self.name} ({self.prefix}, {self.role})"


class AccessEvent(models.Model):
    """One view or search of identified data (or a change) through the API: who, what, which items.
    `detail` names fields searched, never the searched values."""

    at = models.DateTimeField()
    actor = models.CharField(max_length=160)
    role = models.CharField(max_length=16)
    action = models.CharField(max_length=32)
    item_kind = models.CharField(max_length=16, blank=True, default="")
    item_ids = models.JSONField(default=list)
    detail = models.CharField(max_length=255, blank=True, default="")
    # Tamper evidence: each row's SHA-256 over its own fields and the previous row's hash, a chain
    # in `seq` order. Rows are inserted unsealed (seq null, hash empty); fhirai.api.access.audit_seal
    # links them in, and `python manage.py audit_verify` recomputes the chain. On PostgreSQL a
    # trigger refuses every UPDATE but that sealing, and every DELETE (append-only).
    prev_hash = models.CharField(max_length=64, blank=True, default="", db_default="")
    hash = models.CharField(max_length=64, blank=True, default="", db_default="")
    seq = models.BigIntegerField(null=True, blank=True, unique=True)

    class Meta:
        indexes = [
            models.Index(fields=["at"]),
            models.Index(fields=["item_kind", "at"]),
            # The sealer's work list: only unsealed rows (a handful at any moment).
            models.Index(fields=["id"], condition=models.Q(hash=""), name="access_unsealed"),
        ]


class LoginFailure(models.Model):
    """One failed console login, kept for the throttle's window (fhirai.api.throttle). In the
    database, not in memory, so that every web process counts the same failures. `username` is
    casefolded; a successful login clears `counts_for_user` on that user's rows (the address's
    count stays)."""

    at = models.DateTimeField()
    username = models.CharField(max_length=150)
    address = models.CharField(max_length=64)
    counts_for_user = models.BooleanField(default=True)

    class Meta:
        indexes = [models.Index(fields=["username", "at"]), models.Index(fields=["address", "at"])]


class OAuthClient(models.Model):
    """A machine client of the OAuth2 token endpoint (fhirai.api.oauth): SMART Backend Services with
    its public keys (a JWKS, or a jwks_uri fhirai fetches), or client credentials with a secret (only
    its SHA-256: the secret is 256 random bits fhirai made). `role` is the ceiling of what its tokens
    may do; `scope` the SMART scopes it may be granted."""

    client_id = models.CharField(max_length=64, unique=True)
    name = models.CharField(max_length=64)
    role = models.CharField(max_length=16, choices=Role.choices)
    scope = models.TextField(blank=True, default="")
    jwks = models.JSONField(null=True, blank=True)
    jwks_uri = models.URLField(max_length=500, blank=True, default="")
    secret_sha256 = models.CharField(max_length=64, blank=True, default="")
    created_at = models.DateTimeField()
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"OAuth client {self.name} ({self.client_id}, {self.role})"


class OAuthToken(models.Model):
    """An access token issued to a client: only its SHA-256 is kept. It works until `expires_at`
    and only while its client is not revoked."""

    client = models.ForeignKey(OAuthClient, on_delete=models.CASCADE, related_name="tokens")
    token_sha256 = models.CharField(max_length=64, unique=True)
    scope = models.TextField()
    issued_at = models.DateTimeField()
    expires_at = models.DateTimeField(db_index=True)


class OAuthAssertion(models.Model):
    """A client assertion's jti, kept until the assertion expires, so it is accepted once only
    (RFC 7523 3, SMART Backend Services). The unique constraint refuses the replay."""

    client = models.ForeignKey(OAuthClient, on_delete=models.CASCADE)
    jti_sha256 = models.CharField(max_length=64)
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["client", "jti_sha256"], name="oauth_jti_once")]


class ClientAuthFailure(models.Model):
    """One failed client authentication at the token endpoint, kept for the throttle's window
    (fhirai.api.oauth). `client_id` is as presented (it may name no client)."""

    at = models.DateTimeField()
    client_id = models.CharField(max_length=64)
    address = models.CharField(max_length=64)

    class Meta:
        indexes = [models.Index(fields=["client_id", "at"]), models.Index(fields=["address", "at"])]
