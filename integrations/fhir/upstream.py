"""The HTTP client for the upstream FHIR server (write-back). Transient failures (network errors,
timeouts, 429, 5xx) raise Unavailable so the outbox retries with backoff; any other status is a
reply for the domain to record.

Authorization is a bearer token per request: a static one, or one from SMART Backend Services
(integrations.fhir.smart). A SMART token endpoint that refuses fhirai is a refusal of the write, so
the delivery fails visibly instead of retrying a broken registration for a day."""

from __future__ import annotations

import json
from typing import Any, Protocol

import requests

from fhirai.errors import Unavailable
from fhirai.results.writeback import UpstreamReply
from integrations.fhir.smart import DEFAULT_SCOPE, TokenRefused, shared_auth

FHIR_JSON = "application/fhir+json"


class TokenSource(Protocol):
    def token(self) -> str:
        """The bearer token to send. Raises Unavailable (transient) or TokenRefused."""

    def invalidate(self, token: str) -> bool:
        """The server answered 401 to `token`: drop it. True when a fresh one can be had."""


class StaticToken:
    """A token configured by hand: it cannot be renewed, so a 401 is final."""

    def __init__(self, token: str) -> None:
        self._token = token

    def token(self) -> str:
        return self._token

    def invalidate(self, token: str) -> bool:
        return False


class HttpUpstream:
    """A FHIR R4 server at `base_url`, with a static bearer token, SMART Backend Services (client
    id and private key), an explicit `auth`, or no authorization at all."""

    def __init__(
        self,
        *,
        base_url: str,
        token: str = "",
        timeout: float = 30.0,
        client_id: str = "",
        private_key: str = "",
        key_id: str = "",
        token_url: str = "",
        scope: str = DEFAULT_SCOPE,
        auth: TokenSource | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers.update({"Accept": FHIR_JSON, "Content-Type": FHIR_JSON})
        if token and client_id:
            raise ValueError("use a static token or SMART Backend Services, not both")
        if auth is None and client_id:
            auth = shared_auth(
                fhir_base_url=self.base_url,
                client_id=client_id,
                private_key=private_key,
                key_id=key_id,
                token_url=token_url,
                scope=scope,
                timeout=timeout,
            )
        self.auth: TokenSource | None = auth or (StaticToken(token) if token else None)

    def transaction(self, bundle: dict[str, Any]) -> UpstreamReply:
        """POST the transaction Bundle to the server's base (FHIR R4 3.1.0.11 transaction). A
        refused token request is answered as a reply with the token endpoint's status."""
        try:
            response = self._request("POST", self.base_url, json.dumps(bundle))
        except TokenRefused as exc:
            return UpstreamReply(status=exc.status, body=str(exc), summary=exc.summary)
        return UpstreamReply(status=response.status_code, body=response.text)

    def read(self, reference: str) -> dict[str, Any] | None:
        """GET one resource: `Type/id` relative to the base, or an absolute URL on this server.
        None when the server answers 404/410 (gone); Unavailable on transient failures."""
        url = reference if "://" in reference else f"{self.base_url}/{reference.lstrip('/')}"
        try:
            response = self._request("GET", url)
        except TokenRefused as exc:
            raise Unavailable(str(exc)) from exc
        if response.status_code in (404, 410):
            return None
        if response.status_code != 200:
            raise Unavailable(f"upstream refused the read with HTTP {response.status_code}")
        try:
            body = response.json()
        except ValueError as exc:
            raise Unavailable("upstream answered with something that is not JSON") from exc
        return body if isinstance(body, dict) else None

    def _request(self, method: str, url: str, body: str | None = None) -> requests.Response:
        """One request with the current token. A 401 may mean the token was revoked or expired
        early: drop it and try once more with a fresh one (once: a second 401 is the answer)."""
        token = self.auth.token() if self.auth else ""
        response = self._send(method, url, body, token)
        if response.status_code == 401 and self.auth is not None and self.auth.invalidate(token):
            response = self._send(method, url, body, self.auth.token())
        return response

    def _send(self, method: str, url: str, body: str | None, token: str) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            response = self.session.request(method, url, data=body, headers=headers, timeout=self.timeout)
        except requests.RequestException as exc:
            raise Unavailable(f"upstream unreachable: {type(exc).__name__}") from exc
        if response.status_code == 429 or response.status_code >= 500:
            raise Unavailable(f"upstream answered HTTP {response.status_code}")
        return response
