"""A SMART Backend Services token endpoint for the tests, on a real socket.

It checks what an authorization server must check of a client assertion (SMART App Launch,
backend-services, "Authorization server obligations"): the form (client_credentials grant, the
jwt-bearer assertion type, a scope), the JWS header (alg fixed by the registered key, typ JWT, the
registered kid), the signature with the registered public key, iss == sub == client id, aud == this
endpoint's URL, an exp at most five minutes away, and a jti never seen before. A bad assertion is
answered 401 invalid_client and its reason kept in `state.rejections`, so a test can assert there
were none. It can be told to fail (503), or to refuse a valid assertion (400 invalid_client)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.support.json_http import JsonHandler

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


@dataclass
class TokenEndpointState:
    expires_in: int | None = 300  # None: the answer has no expires_in
    fail_with: int | None = None  # answer this status (e.g. 503) to every request
    refuse_with: tuple[int, str, str] | None = None  # (status, error, error_description)
    requests: int = 0
    issued: list[str] = field(default_factory=list)
    scopes: list[str] = field(default_factory=list)
    assertions: list[str] = field(default_factory=list)
    rejections: list[str] = field(default_factory=list)
    jtis: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


class AssertionRejected(Exception):
    pass


def _algorithm(key: PublicKey) -> str:
    return "RS384" if isinstance(key, rsa.RSAPublicKey) else "ES384"


def _handler(endpoint: TokenEndpoint) -> type[BaseHTTPRequestHandler]:
    state = endpoint.state

    class Handler(JsonHandler):
        content_type = "application/json"
        extra_headers = (("Cache-Control", "no-store"),)

        def do_POST(self) -> None:  # noqa: N802
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
            with state.lock:
                state.requests += 1
                if state.fail_with:
                    self._send(state.fail_with, {"error": "temporarily_unavailable"})
                    return
                try:
                    scope = endpoint.verify(self.headers.get("Content-Type", ""), raw)
                except AssertionRejected as exc:
                    state.rejections.append(str(exc))
                    self._send(401, {"error": "invalid_client", "error_description": str(exc)})
                    return
                if state.refuse_with:  # e.g. a valid assertion from a client since disabled
                    status, error, description = state.refuse_with
                    self._send(status, {"error": error, "error_description": description})
                    return
                token = f"tok-{len(state.issued) + 1}"
                state.issued.append(token)
                state.scopes.append(scope)
                answer: dict[str, Any] = {"access_token": token, "token_type": "bearer", "scope": scope}
                if state.expires_in is not None:
                    answer["expires_in"] = state.expires_in
            self._send(200, answer)

    return Handler


class TokenEndpoint:
    """Start with `with TokenEndpoint(public_key=..., client_id=...) as te:`; `te.url` is the token
    endpoint, `te.state` what it saw and issued."""

    def __init__(self, *, public_key: PublicKey, client_id: str, kid: str = "") -> None:
        self.public_key = public_key
        self.algorithm = _algorithm(public_key)
        self.client_id = client_id
        self.kid = kid
        self.state = TokenEndpointState()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/auth/token"

    def verify(self, content_type: str, raw: str) -> str:
        """The requested scope, if the form and its client assertion are valid; else why not."""
        if not content_type.startswith("application/x-www-form-urlencoded"):
            raise AssertionRejected(f"form expected, got {content_type}")
        form = {k: v[0] for k, v in parse_qs(raw).items()}
        if form.get("grant_type") != "client_credentials":
            raise AssertionRejected("grant_type must be client_credentials")
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise AssertionRejected("wrong client_assertion_type")
        if not form.get("scope"):
            raise AssertionRejected("no scope")
        assertion = form.get("client_assertion", "")
        self.state.assertions.append(assertion)
        self._check_assertion(assertion)
        return form["scope"]

    def _check_assertion(self, assertion: str) -> None:
        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.InvalidTokenError as exc:
            raise AssertionRejected(f"not a JWS: {exc}") from None
        if header.get("alg") != self.algorithm:
            raise AssertionRejected(f"alg {header.get('alg')} for a key that wants {self.algorithm}")
        if header.get("typ") != "JWT":
            raise AssertionRejected("typ must be JWT")
        if header.get("kid", "") != self.kid:
            raise AssertionRejected(f"unknown kid {header.get('kid')!r}")
        try:
            claims = jwt.decode(
                assertion,
                self.public_key,
                algorithms=[self.algorithm],
                audience=self.url,
                issuer=self.client_id,
                options={"require": ["iss", "sub", "aud", "exp", "jti"]},
            )
        except jwt.InvalidTokenError as exc:
            raise AssertionRejected(f"{type(exc).__name__}: {exc}") from None
        if claims["sub"] != self.client_id:
            raise AssertionRejected("sub must be the client id")
        if claims["exp"] - time.time() > 300:
            raise AssertionRejected("exp more than five minutes away")
        if claims["jti"] in self.state.jtis:
            raise AssertionRejected("jti replayed")
        self.state.jtis.add(claims["jti"])

    def __enter__(self) -> TokenEndpoint:
        # a short poll: shutdown() waits up to one poll interval, at every test's teardown
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
