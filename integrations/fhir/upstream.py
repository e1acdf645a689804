"""The HTTP client for the upstream FHIR server (write-back). Transient failures (network errors,
timeouts, 429, 5xx) raise Unavailable so the outbox retries with backoff; any other status is a
reply for the domain to record."""

from __future__ import annotations

import json
from typing import Any

import requests

from fhirai.errors import Unavailable
from fhirai.results.writeback import UpstreamReply

FHIR_JSON = "application/fhir+json"


class HttpUpstream:
    """A FHIR R4 server at `base_url`, with an optional static bearer token."""

    def __init__(self, *, base_url: str, token: str = "", timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers.update({"Accept": FHIR_JSON, "Content-Type": FHIR_JSON})
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def transaction(self, bundle: dict[str, Any]) -> UpstreamReply:
        """POST the transaction Bundle to the server's base (FHIR R4 3.1.0.11 transaction)."""
        try:
            response = self.session.post(self.base_url, data=json.dumps(bundle), timeout=self.timeout)
        except requests.RequestException as exc:
            raise Unavailable(f"upstream unreachable: {type(exc).__name__}") from exc
        if response.status_code == 429 or response.status_code >= 500:
            raise Unavailable(f"upstream answered HTTP {response.status_code}")
        return UpstreamReply(status=response.status_code, body=response.text)

    def read(self, reference: str) -> dict[str, Any] | None:
        """GET one resource: `Type/id` relative to the base, or an absolute URL on this server.
        None when the server answers 404/410 (gone); Unavailable on transient failures."""
        url = reference if "://" in reference else f"{self.base_url}/{reference.lstrip('/')}"
        try:
            response = self.session.get(url, timeout=self.timeout)
        except requests.RequestException as exc:
            raise Unavailable(f"upstream unreachable: {type(exc).__name__}") from exc
        if response.status_code in (404, 410):
            return None
        if response.status_code == 429 or response.status_code >= 500:
            raise Unavailable(f"upstream answered HTTP {response.status_code}")
        if response.status_code != 200:
            raise Unavailable(f"upstream refused the read with HTTP {response.status_code}")
        try:
            body = response.json()
        except ValueError as exc:
            raise Unavailable("upstream answered with something that is not JSON") from exc
        return body if isinstance(body, dict) else None
