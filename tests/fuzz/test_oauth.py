"""The OAuth2 token endpoint (POST /auth/token) driven through Django's test client: arbitrary form
bodies, headers and client assertions (garbage, truncated and re-signed JWTs, claims of any type,
real signatures over wrong claims). Whatever arrives, the answer is an RFC 6749 error as JSON
(4xx, or 503 when a jwks_uri cannot be reached) and never a token, unless the assertion is the one
valid shape; never a 500 or an exception."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import strategies as st

from fhirai.api.clients import client_register
from tests.fuzz.budget import fuzz_target

pytestmark = pytest.mark.django_db
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
KID = "fuzz-rsa"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
texts = st.text(max_size=60) | st.sampled_from(["", "\x00", "a" * 300, "system/*.cruds", ASSERTION_TYPE])


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.fixture
def registered(settings):
    settings.FHIRAI_BASE_URL = "http://testserver"
    settings.FHIRAI_OAUTH_MAX_FAILURES = 10**9  # the throttle is tested elsewhere; here it would hide paths
    settings.FHIRAI_OAUTH_MAX_FAILURES_PER_ADDRESS = 10**9
    public = jwt.algorithms.RSAAlgorithm.to_jwk(KEY.public_key(), as_dict=True)
    row, _ = client_register(
        f"fuzz-{uuid.uuid4().hex[:8]}",
        role="operator",
        jwks={"keys": [{**public, "kid": KID, "alg": "RS384"}]},
    )
    return row.client_id


def _assertion(client_id: str, claims: dict[str, Any], header: dict[str, Any], alg: str) -> str:
    base = {
        "iss": client_id,
        "sub": client_id,
        "aud": "http://testserver/auth/token",
        "exp": int(time.time()) + 120,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode({**base, **claims}, KEY, algorithm=alg, headers={"kid": KID, **header})


def _check(response) -> None:
    assert response.status_code < 500 or response.status_code == 503, response.content[:300]
    body = json.loads(response.content)
    if response.status_code == 200:
        assert body["token_type"].lower() == "bearer" and body["access_token"]
    else:
        assert isinstance(body.get("error"), str), body
    assert response["Cache-Control"] == "no-store"


@fuzz_target(
    "oauth_form",
    ci=120,
    form=st.dictionaries(
        st.sampled_from(
            ["grant_type", "client_assertion_type", "client_assertion", "scope", "client_id", "x"]
        )
        | st.text(max_size=12),
        texts,
        max_size=6,
    ),
    authorization=st.none() | st.text(max_size=60) | st.builds(lambda s: "Basic " + _b64(s.encode()), texts),
    raw_assertion=st.none() | st.text(max_size=200) | st.builds(lambda a, b: f"{a}.{b}.", texts, texts),
)
def test_any_form_gets_an_oauth_error_or_a_token(client, registered, form, authorization, raw_assertion):
    body = dict(form)
    if raw_assertion is not None:
        body.update(
            grant_type="client_credentials",
            client_assertion_type=ASSERTION_TYPE,
            client_assertion=raw_assertion,
        )
    headers = {"HTTP_AUTHORIZATION": authorization} if authorization is not None else {}
    _check(client.post("/auth/token", body, **headers))


@fuzz_target(
    "oauth_signed_claims",
    ci=80,
    claims=st.dictionaries(
        st.sampled_from(["iss", "sub", "aud", "exp", "jti", "iat", "nbf", "extra"]), json_values
    ),
    header=st.dictionaries(st.sampled_from(["kid", "jku", "typ", "x5u", "crit"]), json_values, max_size=2),
    alg=st.sampled_from(["RS384", "RS256", "RS512", "PS384"]),
    scope=texts,
)
def test_signed_assertions_with_any_claims_get_an_error_or_a_valid_token(
    client, registered, claims, header, alg, scope
):
    try:
        signed = _assertion(registered, claims, header, alg)
    except (TypeError, ValueError, jwt.PyJWTError):
        return  # PyJWT cannot even encode it: nothing to send
    response = client.post(
        "/auth/token",
        {
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": signed,
            "scope": scope,
        },
    )
    _check(response)
    if response.status_code == 200:
        # Only the one valid shape gets a token: RS384, this client, this endpoint.
        assert alg == "RS384"
        assert all(claims.get(k, registered) == registered for k in ("iss", "sub"))
