"""SMART Backend Services authorization (SMART App Launch 2, "Backend Services") for the upstream
FHIR client. fhirai is a system client with no user: it proves who it is with a short JWT signed by
its own private key (asymmetric client authentication, RFC 7523), so no shared secret crosses the
network, and trades it for a short-lived access token with the client_credentials grant.

Failures are split the way the write-back outbox needs them: a token endpoint that cannot be
reached, is busy (429) or broken (5xx) raises Unavailable, so the delivery is retried with backoff;
one that refuses fhirai (invalid_client, invalid_scope ...) raises TokenRefused, which retrying
cannot cure: a person has to fix the client registration or the settings."""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jwt
import requests
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from fhirai.errors import Unavailable

log = logging.getLogger(__name__)

DEFAULT_SCOPE = (
    "system/DiagnosticReport.write system/Observation.write system/Device.write "
    "system/Provenance.write system/*.read"
)
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
DISCOVERY_PATH = "/.well-known/smart-configuration"
# The spec allows an assertion to live at most 5 minutes; a shorter life leaves room for our clock
# running ahead of the authorization server's.
ASSERTION_LIFETIME = 240
DEFAULT_TOKEN_LIFETIME = 300.0  # when the token response has no expires_in
RENEW_MARGIN = 60.0  # renew this long (or 10% of the lifetime, if smaller) before expiry

SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class TokenRefused(Exception):
    """The authorization server refused fhirai, or publishes no SMART configuration. `status` is
    its HTTP status; the message carries the OAuth `error` and `error_description`, never the
    assertion or a token; `summary` leaves the server's free text out, for the timeline."""

    def __init__(self, status: int, summary: str, detail: str = "") -> None:
        super().__init__(f"{summary}: {detail}" if detail else summary)
        self.status = status
        self.summary = summary


def signing_key(pem: str) -> tuple[SigningKey, str]:
    """Load the PEM private key and pick its JWS algorithm. SMART servers must support RS384 and
    ES384, so those are the two offered: RSA (2048 bits or more) or EC on P-384. The errors never
    quote the key."""
    try:
        key = load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValueError("the private key is not an unencrypted PEM private key") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise ValueError("an RSA private key must have at least 2048 bits")
        return key, "RS384"
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP384R1):
        return key, "ES384"
    raise ValueError("the private key must be RSA (RS384) or EC on P-384 (ES384)")


@dataclass(frozen=True)
class _Token:
    value: str
    renew_at: float  # on the provider's monotonic clock


class BackendServicesAuth:
    """Access tokens for one client registration, cached (thread-safe) until shortly before they
    expire. `token_url` empty: discovered once from the FHIR server's smart-configuration."""

    def __init__(
        self,
        *,
        fhir_base_url: str,
        client_id: str,
        private_key: str,
        key_id: str = "",
        token_url: str = "",
        scope: str = DEFAULT_SCOPE,
        timeout: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._key, self.algorithm = signing_key(private_key)
        self.fhir_base_url = fhir_base_url.rstrip("/")
        self.client_id = client_id
        self.key_id = key_id
        self.scope = scope or DEFAULT_SCOPE
        self.timeout = timeout
        self._clock = clock
        self._token_url = token_url
        self._token: _Token | None = None
        self._lock = threading.Lock()

    def token(self) -> str:
        """A valid access token; the lock makes concurrent callers share one token request."""
        with self._lock:
            if self._token is None or self._clock() >= self._token.renew_at:
                self._token = self._token_request()
            return self._token.value

    def invalidate(self, token: str) -> bool:
        """The FHIR server rejected `token` (revoked, or expired early): forget it, unless another
        thread already replaced it. True: a fresh one can be had."""
        with self._lock:
            if self._token is not None and self._token.value == token:
                self._token = None
        return True

    def token_endpoint(self) -> str:
        """The configured token endpoint, else the one the FHIR server advertises (looked up once)."""
        if not self._token_url:
            self._token_url = self._discover()
        return self._token_url

    def _discover(self) -> str:
        url = f"{self.fhir_base_url}{DISCOVERY_PATH}"
        response = _http(
            "GET", url, "SMART configuration", self.timeout, headers={"Accept": "application/json"}
        )
        if response.status_code != 200:
            raise TokenRefused(
                response.status_code,
                f"SMART configuration not found: HTTP {response.status_code}",
                "configure the token endpoint URL",
            )
        endpoint = _json_object(response).get("token_endpoint")
        if not isinstance(endpoint, str) or not endpoint.startswith(("https://", "http://")):
            raise Unavailable("the SMART configuration names no token_endpoint")
        return endpoint

    def _token_request(self) -> _Token:
        """client_credentials with a signed client assertion (SMART Backend Services)."""
        url = self.token_endpoint()
        started = self._clock()
        form = {
            "grant_type": "client_credentials",
            "scope": self.scope,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": self.assertion(url),
        }
        response = _http(
            "POST", url, "token endpoint", self.timeout, data=form, headers={"Accept": "application/json"}
        )
        if not 200 <= response.status_code < 300:
            raise _refusal(response)
        body = _json_object(response)
        value = body.get("access_token")
        if not isinstance(value, str) or not value:
            raise Unavailable("the token endpoint answered without an access_token")
        lifetime = _lifetime(body.get("expires_in"))
        log.info("SMART access token obtained from %s, valid %.0f s", url, lifetime)
        return _Token(value, started + lifetime - min(RENEW_MARGIN, lifetime / 10))

    def assertion(self, audience: str) -> str:
        """The client assertion JWT: iss = sub = client id, aud = the token endpoint, a few
        minutes of life and a unique jti, so a captured assertion cannot be replayed."""
        now = int(time.time())
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": audience,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME,
            "jti": uuid.uuid4().hex,
        }
        headers = {"typ": "JWT", **({"kid": self.key_id} if self.key_id else {})}
        return jwt.encode(claims, self._key, algorithm=self.algorithm, headers=headers)


@lru_cache(maxsize=16)
def shared_auth(
    *,
    fhir_base_url: str,
    client_id: str,
    private_key: str,
    key_id: str,
    token_url: str,
    scope: str,
    timeout: float,
) -> BackendServicesAuth:
    """One provider per configuration and process: write-back builds a new upstream client for
    every delivery, and the token (and the discovered endpoint) must outlive it."""
    return BackendServicesAuth(
        fhir_base_url=fhir_base_url,
        client_id=client_id,
        private_key=private_key,
        key_id=key_id,
        token_url=token_url,
        scope=scope,
        timeout=timeout,
    )


def _http(method: str, url: str, what: str, timeout: float, **kwargs: Any) -> requests.Response:
    """One request to the authorization side; transient failures become Unavailable. Redirects are
    not followed: a redirected POST would lose its form, and with it the assertion."""
    try:
        response = requests.request(method, url, timeout=timeout, allow_redirects=False, **kwargs)
    except requests.RequestException as exc:
        raise Unavailable(f"{what} unreachable: {type(exc).__name__}") from exc
    if response.status_code == 429 or response.status_code >= 500:
        raise Unavailable(f"{what} answered HTTP {response.status_code}")
    return response


def _refusal(response: requests.Response) -> TokenRefused:
    """The OAuth error (RFC 6749 5.2) of a refused token request, cleaned for the record."""
    body = _json_object(response)
    error = _printable(body.get("error"), 60) or "no OAuth error code"
    description = _printable(body.get("error_description"), 300)
    return TokenRefused(
        response.status_code, f"token endpoint refused: HTTP {response.status_code} {error}", description
    )


def _json_object(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _printable(value: object, limit: int) -> str:
    """Text from another server, safe for one line of a record: no control characters, bounded."""
    if not isinstance(value, str):
        return ""
    return "".join(c if c.isprintable() else " " for c in value)[:limit].strip()


def _lifetime(expires_in: object) -> float:
    """Seconds the token lives: expires_in when it is a positive number, else the default."""
    try:
        seconds = float(expires_in)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return DEFAULT_TOKEN_LIFETIME
    return seconds if math.isfinite(seconds) and seconds > 0 else DEFAULT_TOKEN_LIFETIME
