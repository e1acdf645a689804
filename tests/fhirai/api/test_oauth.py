"""fhirai as an OAuth2 authorization server for machine clients, over a real socket (pytest-django's
live_server, PostgreSQL): fhirai's own SMART Backend Services client (integrations/fhir/smart.py)
and fhirpy as real clients with RS384 and ES384 keys made here; requests + PyJWT for every way an
assertion can be wrong; then the tokens on /fhir/ and /api/, scope by scope."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from http.server import ThreadingHTTPServer
from io import StringIO
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from django.core.management import call_command
from django.utils import timezone
from fhirpy import SyncFHIRClient

from fhirai.api.clients import client_register
from fhirai.api.models import AccessEvent, OAuthClient, OAuthToken
from fhirai.api.tokens import token_issue
from fhirai.errors import InvalidInput
from integrations.fhir.smart import BackendServicesAuth, TokenRefused
from tests.support.json_http import JsonHandler

pytestmark = pytest.mark.django_db(transaction=True)

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
KID_RSA = "rsa-2026-1"
KID_EC = "ec-2026-1"
PATIENT = {"resourceType": "Patient", "identifier": [{"system": "urn:oauth-test", "value": "P-1"}]}
OBSERVATION = {"resourceType": "Observation", "status": "final", "code": {"text": "oauth test"}}


# --- keys and clients -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def pem(key: Any) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def public_jwk(key: Any, kid: str) -> dict[str, Any]:
    algorithm = (
        jwt.algorithms.RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else jwt.algorithms.ECAlgorithm
    )
    return {**algorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid, "use": "sig"}


@pytest.fixture
def server(live_server, settings) -> str:
    """The product's base URL; tokens required, as a site that registers clients would run it."""
    settings.FHIRAI_BASE_URL = live_server.url
    settings.FHIRAI_REQUIRE_TOKENS = True
    settings.FHIRAI_OAUTH_MAX_FAILURES = 50
    return live_server.url


@pytest.fixture
def client(rsa_key, ec_key) -> OAuthClient:
    """An operator client with both keys, allowed everything its role allows."""
    jwks = {"keys": [public_jwk(rsa_key, KID_RSA), public_jwk(ec_key, KID_EC)]}
    return client_register("lab-system", role="operator", jwks=jwks)[0]


def assertion(
    key: Any, client_id: str, aud: str, *, alg: str = "RS384", kid: str = KID_RSA, **claims: Any
) -> str:
    now = int(time.time())
    body = {
        "iss": client_id,
        "sub": client_id,
        "aud": aud,
        "exp": now + 240,
        "jti": uuid.uuid4().hex,
        **claims,
    }
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid, "typ": "JWT"})


def token_post(server: str, form: dict[str, str], **kwargs: Any) -> requests.Response:
    return requests.post(f"{server}/auth/token", data=form, timeout=10, **kwargs)


def jwt_form(signed: str, scope: str = "system/*.cruds") -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "scope": scope,
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": signed,
    }


def token_for(server: str, client: OAuthClient, key: Any, scope: str, **kwargs: Any) -> str:
    signed = assertion(key, client.client_id, f"{server}/auth/token", **kwargs)
    response = token_post(server, jwt_form(signed, scope))
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"}


def fhir_post(server: str, token: str, path: str, body: dict[str, Any]) -> requests.Response:
    headers = {**bearer(token), "Content-Type": "application/fhir+json"}
    return requests.post(f"{server}/fhir/{path}", data=json.dumps(body), headers=headers, timeout=10)


def fhir_get(server: str, token: str, path: str) -> requests.Response:
    return requests.get(f"{server}/fhir/{path}", headers=bearer(token), timeout=10)


# --- discovery ---------------------------------------------------------------------------------------


def test_smart_configuration_is_open_and_names_the_token_endpoint(server):
    for path in ("/.well-known/smart-configuration", "/fhir/.well-known/smart-configuration"):
        response = requests.get(f"{server}{path}", timeout=10)
        assert response.status_code == 200, path
        config = response.json()
        assert config["token_endpoint"] == f"{server}/auth/token"
        assert config["grant_types_supported"] == ["client_credentials"]
        assert {"private_key_jwt", "client_secret_basic"} <= set(
            config["token_endpoint_auth_methods_supported"]
        )
        assert {"RS384", "ES384"} <= set(config["token_endpoint_auth_signing_alg_values_supported"])
        assert "none" not in config["token_endpoint_auth_signing_alg_values_supported"]
        assert "client-confidential-asymmetric" in config["capabilities"]
        assert "permission-v2" in config["capabilities"]
        assert "system/*.rs" in config["scopes_supported"]


def test_capability_statement_declares_smart_security(server):
    body = requests.get(
        f"{server}/fhir/metadata", headers={"Accept": "application/fhir+json"}, timeout=10
    ).json()
    security = body["rest"][0]["security"]
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    uris = security["extension"][0]
    assert uris["url"] == "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
    assert uris["extension"] == [{"url": "token", "valueUri": f"{server}/auth/token"}]


# --- real clients ------------------------------------------------------------------------------------


def test_fhirais_own_smart_client_discovers_gets_a_token_and_uses_the_facade_rs384(server, client, rsa_key):
    auth = BackendServicesAuth(
        fhir_base_url=f"{server}/fhir",
        client_id=client.client_id,
        private_key=pem(rsa_key),
        key_id=KID_RSA,
        scope="system/Observation.cruds system/Patient.rs",
    )
    token = auth.token()
    assert auth.token_endpoint() == f"{server}/auth/token"  # found through the smart-configuration
    created = fhir_post(server, token, "Observation", OBSERVATION)
    assert created.status_code == 201, created.text
    oid = created.json()["id"]
    assert fhir_get(server, token, f"Observation/{oid}").json()["id"] == oid
    found = fhir_get(server, token, "Observation?_count=5").json()
    assert oid in {e["resource"]["id"] for e in found["entry"]}
    assert fhir_post(server, token, "Patient", PATIENT).status_code == 403  # Patient: rs only


def test_es384_token_works_for_fhirpy(server, client, ec_key):
    auth = BackendServicesAuth(
        fhir_base_url=f"{server}/fhir",
        client_id=client.client_id,
        private_key=pem(ec_key),
        key_id=KID_EC,
        scope="system/Patient.cruds",
    )
    assert auth.algorithm == "ES384"
    fhir = SyncFHIRClient(
        f"{server}/fhir",
        authorization=f"Bearer {auth.token()}",
        extra_headers={"Accept": "application/fhir+json"},
    )
    patient = fhir.resource("Patient", **{k: v for k, v in PATIENT.items() if k != "resourceType"})
    patient.save()
    assert fhir.reference("Patient", patient.id).to_resource()["id"] == patient.id
    assert fhir.resources("Patient").search(identifier="urn:oauth-test|P-1").get().id == patient.id


def test_token_response_is_rfc6749_shaped(server, client, rsa_key, settings):
    settings.FHIRAI_OAUTH_TOKEN_LIFETIME = 120
    signed = assertion(rsa_key, client.client_id, f"{server}/auth/token")
    response = token_post(server, jwt_form(signed, "system/Observation.rs system/*.read patient/*.rs"))
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 120
    assert body["scope"] == "system/Observation.rs system/*.read"  # patient/ is never granted
    stored = OAuthToken.objects.get()
    assert body["access_token"] not in stored.token_sha256 and len(stored.token_sha256) == 64


def test_client_secret_basic_and_post(server):
    client, secret = client_register(
        "scanner-bridge", role="operator", scope="system/Observation.rs", with_secret=True
    )
    form = {"grant_type": "client_credentials", "scope": "system/Observation.rs"}
    basic = token_post(server, form, auth=(client.client_id, secret))
    assert basic.status_code == 200 and basic.json()["scope"] == "system/Observation.rs"
    posted = token_post(server, {**form, "client_id": client.client_id, "client_secret": secret})
    assert posted.status_code == 200
    assert fhir_get(server, basic.json()["access_token"], "Observation").status_code == 200
    wrong = token_post(server, form, auth=(client.client_id, secret + "x"))
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
    assert wrong.headers["WWW-Authenticate"].startswith("Basic")
    both = token_post(
        server,
        {**form, "client_id": client.client_id, "client_secret": secret},
        auth=(client.client_id, secret),
    )
    assert both.status_code == 400 and both.json()["error"] == "invalid_request"


# --- refused assertions ------------------------------------------------------------------------------


def _refused(response: requests.Response, error: str = "invalid_client", status: int = 401) -> str:
    assert response.status_code == status, response.text
    assert response.headers["Cache-Control"] == "no-store"
    assert response.json()["error"] == error
    return response.json()["error_description"]


def test_assertions_that_must_be_refused(server, client, rsa_key, ec_key):
    aud = f"{server}/auth/token"
    cid = client.client_id
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    public_pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    cases = {
        "wrong aud": assertion(rsa_key, cid, f"{server}/fhir"),
        "expired": assertion(rsa_key, cid, aud, exp=now - 10),
        "exp too far ahead": assertion(rsa_key, cid, aud, exp=now + 600),
        "no exp": assertion(rsa_key, cid, aud, exp=None),
        "no jti": assertion(rsa_key, cid, aud, jti=None),
        "sub is not iss": assertion(rsa_key, cid, aud, sub="someone-else"),
        "unknown kid": assertion(rsa_key, cid, aud, kid="nobody"),
        "wrong key": assertion(other, cid, aud),
        "key of the other kid": assertion(ec_key, cid, aud, alg="ES384", kid=KID_RSA),
        "RS256": assertion(rsa_key, cid, aud, alg="RS256"),
        "alg none": jwt.encode(
            {"iss": cid, "sub": cid, "aud": aud, "exp": now + 60, "jti": "n"}, None, algorithm="none"
        ),
        "unknown client": assertion(rsa_key, "no-such-client", aud),
        "not a JWT": "not.a.jwt",
    }
    wrong = {}
    for name, signed in cases.items():
        response = token_post(server, jwt_form(signed))
        if response.status_code != 401 or response.json().get("error") != "invalid_client":
            wrong[name] = (response.status_code, response.text)
    # HS256 keyed with the public key (the classic algorithm confusion): PyJWT will not sign with a
    # PEM as an HMAC secret, so the JWS is put together here.
    header = base64.urlsafe_b64encode(json.dumps({"alg": "HS256", "kid": KID_RSA, "typ": "JWT"}).encode())
    claims = base64.urlsafe_b64encode(
        json.dumps({"iss": cid, "sub": cid, "aud": aud, "exp": now + 60, "jti": "h"}).encode()
    )

    signing_input = header.rstrip(b"=") + b"." + claims.rstrip(b"=")
    signature = base64.urlsafe_b64encode(hmac.new(public_pem, signing_input, hashlib.sha256).digest()).rstrip(
        b"="
    )
    response = token_post(server, jwt_form((signing_input + b"." + signature).decode()))
    if response.status_code != 401:
        wrong["HS256 with the public key"] = (response.status_code, response.text)
    assert not wrong
    assert OAuthToken.objects.count() == 0


def test_a_replayed_assertion_is_refused(server, client, rsa_key):
    signed = assertion(rsa_key, client.client_id, f"{server}/auth/token")
    assert token_post(server, jwt_form(signed)).status_code == 200
    assert "jti" in _refused(token_post(server, jwt_form(signed)))


def test_revoked_client_gets_no_token_and_its_tokens_stop_working(server, client, rsa_key):
    token = token_for(server, client, rsa_key, "system/Observation.rs")
    assert fhir_get(server, token, "Observation").status_code == 200
    out = StringIO()
    call_command("oauth_client_revoke", client.client_id, stdout=out)
    assert "revoked 1" in out.getvalue()
    gone = fhir_get(server, token, "Observation")
    assert gone.status_code == 401 and 'error="invalid_token"' in gone.headers["WWW-Authenticate"]
    _refused(token_post(server, jwt_form(assertion(rsa_key, client.client_id, f"{server}/auth/token"))))


def test_an_expired_token_is_refused(server, client, rsa_key):
    token = token_for(server, client, rsa_key, "system/Observation.rs")
    OAuthToken.objects.update(expires_at=timezone.now() - timedelta(seconds=1))  # its lifetime passed
    response = fhir_get(server, token, "Observation")
    assert response.status_code == 401 and 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    unknown = fhir_get(server, "fhirai-at-" + "A" * 43, "Observation")
    assert unknown.status_code == 401


def test_grant_type_scope_and_form_errors(server, client, rsa_key):
    aud = f"{server}/auth/token"

    def signed() -> str:
        return assertion(rsa_key, client.client_id, aud)

    _refused(
        token_post(server, {**jwt_form(signed()), "grant_type": "password"}), "unsupported_grant_type", 400
    )
    _refused(
        token_post(server, {k: v for k, v in jwt_form(signed()).items() if k != "grant_type"}),
        "invalid_request",
        400,
    )
    _refused(token_post(server, jwt_form(signed(), "patient/*.rs launch")), "invalid_scope", 400)
    _refused(token_post(server, jwt_form(signed(), "")), "invalid_request", 400)
    as_json = requests.post(aud, json=jwt_form(signed()), timeout=10)
    _refused(as_json, "invalid_request", 400)
    _refused(token_post(server, {"grant_type": "client_credentials", "scope": "system/*.rs"}))
    assert requests.get(aud, timeout=10).status_code == 405


def test_scope_outside_the_registration_is_not_granted(server, rsa_key):
    jwks = {"keys": [public_jwk(rsa_key, KID_RSA)]}
    client = client_register("reader", role="admin", scope="system/Observation.rs", jwks=jwks)[0]
    signed = assertion(rsa_key, client.client_id, f"{server}/auth/token")
    _refused(token_post(server, jwt_form(signed, "system/Patient.rs")), "invalid_scope", 400)
    signed = assertion(rsa_key, client.client_id, f"{server}/auth/token")
    narrowed = token_post(server, jwt_form(signed, "system/*.cruds"))
    assert narrowed.json()["scope"] == "system/Observation.rs"


def test_role_is_the_ceiling_auditor_reads_the_audit_trail_only_viewer_gets_nothing(server, rsa_key):
    jwks = {"keys": [public_jwk(rsa_key, KID_RSA)]}
    auditor = client_register("siem", role="auditor", jwks=jwks)[0]
    token = token_for(server, auditor, rsa_key, "system/*.read")
    assert fhir_get(server, token, "AuditEvent").status_code == 200
    assert fhir_get(server, token, "Patient").status_code == 403
    viewer = OAuthClient.objects.create(
        client_id="viewer-client",
        name="dash",
        role="viewer",
        scope="system/*.rs",
        jwks=jwks,
        created_at=timezone.now(),
    )  # made directly: registration refuses a viewer FHIR scopes; the token endpoint must too
    signed = assertion(rsa_key, viewer.client_id, f"{server}/auth/token")
    _refused(token_post(server, jwt_form(signed, "system/*.rs")), "invalid_scope", 400)


def test_api_needs_the_clients_role_as_before(server, rsa_key):
    jwks = {"keys": [public_jwk(rsa_key, KID_RSA)]}
    auditor = client_register("siem", role="auditor", jwks=jwks)[0]
    token = token_for(server, auditor, rsa_key, "system/AuditEvent.rs")
    assert requests.get(f"{server}/api/audit", headers=bearer(token), timeout=10).status_code == 200
    assert requests.get(f"{server}/api/sources", headers=bearer(token), timeout=10).status_code == 403


# --- scopes on the facade ----------------------------------------------------------------------------


def test_scopes_are_enforced_per_type_and_interaction(server, client, rsa_key):
    admin = token_for(server, client, rsa_key, "system/*.cruds")
    pid = fhir_post(server, admin, "Patient", PATIENT).json()["id"]
    token = token_for(server, client, rsa_key, "system/Observation.rs system/Patient.r")
    assert fhir_get(server, token, f"Patient/{pid}").status_code == 200
    assert fhir_get(server, token, f"Patient/{pid}/_history/1").status_code == 200  # vread is r
    refused = {
        "search Patient": fhir_get(server, token, "Patient"),
        "Patient history": fhir_get(server, token, f"Patient/{pid}/_history"),
        "system history": fhir_get(server, token, "_history"),
        "create Observation": fhir_post(server, token, "Observation", OBSERVATION),
        "update Patient": requests.put(
            f"{server}/fhir/Patient/{pid}",
            data=json.dumps({**PATIENT, "id": pid}),
            headers={**bearer(token), "Content-Type": "application/fhir+json"},
            timeout=10,
        ),
    }
    for name, response in refused.items():
        assert response.status_code == 403, name
        issue = response.json()["issue"][0]
        assert issue["code"] == "forbidden" and "insufficient_scope" in issue["diagnostics"], name
        assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"], name
    assert fhir_get(server, token, "Observation").status_code == 200


def test_a_transaction_with_an_entry_outside_the_scopes_is_refused_whole(server, client, rsa_key):
    token = token_for(server, client, rsa_key, "system/Observation.c")
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": OBSERVATION, "request": {"method": "POST", "url": "Observation"}},
            {"resource": PATIENT, "request": {"method": "POST", "url": "Patient"}},
        ],
    }
    response = fhir_post(server, token, "", bundle)
    assert response.status_code == 403, response.text
    assert "Bundle.entry[1]" in response.json()["issue"][0]["diagnostics"]
    # a Patient dressed as an Observation entry is refused too: it would be stored as a Patient
    disguised = {
        **bundle,
        "entry": [{"resource": PATIENT, "request": {"method": "POST", "url": "Observation"}}],
    }
    assert fhir_post(server, token, "", disguised).status_code == 403
    admin = token_for(server, client, rsa_key, "system/*.rs")
    assert fhir_get(server, admin, "Observation").json()["total"] == 0  # nothing written
    allowed = {**bundle, "entry": bundle["entry"][:1]}
    assert fhir_post(server, token, "", allowed).status_code == 200


def test_a_batch_refuses_only_the_entries_outside_the_scopes(server, client, rsa_key):
    token = token_for(server, client, rsa_key, "system/Observation.c")
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": OBSERVATION, "request": {"method": "POST", "url": "Observation"}},
            {"resource": PATIENT, "request": {"method": "POST", "url": "Patient"}},
        ],
    }
    response = fhir_post(server, token, "", bundle)
    assert response.status_code == 200, response.text
    statuses = [e["response"]["status"] for e in response.json()["entry"]]
    assert statuses == ["201 Created", "403 Forbidden"]


# --- throttle, records, registration ---------------------------------------------------------------


def test_failed_client_authentication_is_throttled(server, client, rsa_key, settings):
    settings.FHIRAI_OAUTH_MAX_FAILURES = 3
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    aud = f"{server}/auth/token"
    for _ in range(3):
        _refused(token_post(server, jwt_form(assertion(other, client.client_id, aud))))
    locked = token_post(server, jwt_form(assertion(rsa_key, client.client_id, aud)))
    assert locked.status_code == 429 and int(locked.headers["Retry-After"]) > 0


def test_issuance_and_refusal_are_access_records_without_secrets(server, client, rsa_key):
    signed = assertion(rsa_key, client.client_id, f"{server}/auth/token")
    token = token_post(server, jwt_form(signed, "system/Observation.rs")).json()["access_token"]
    token_post(server, jwt_form(signed, "system/Observation.rs"))  # the replay
    fhir_get(server, token, "Observation")
    records = list(AccessEvent.objects.order_by("id").values_list("actor", "action", "detail"))
    actions = [(actor, action) for actor, action, _ in records]
    assert ("client:lab-system", "oauth.token") in actions
    assert ("client-id:" + client.client_id, "oauth.refused") in actions
    assert ("client:lab-system", "fhir.search") in actions
    text = json.dumps(records)
    assert token not in text and signed not in text and signed.split(".")[2] not in text


def test_register_command_prints_the_client_id_and_a_secret_once(tmp_path, rsa_key, db):
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [public_jwk(rsa_key, KID_RSA)]}))
    out = StringIO()
    call_command(
        "oauth_client_register",
        "ehr",
        "--role",
        "operator",
        "--jwks",
        str(path),
        stdout=out,
        stderr=StringIO(),
    )
    client_id = out.getvalue().split()[-1]
    assert OAuthClient.objects.get(client_id=client_id).jwks["keys"][0]["kid"] == KID_RSA
    out = StringIO()
    call_command(
        "oauth_client_register",
        "bridge",
        "--role",
        "admin",
        "--secret",
        "--scope",
        "system/Observation.rs",
        stdout=out,
        stderr=StringIO(),
    )
    client_id, secret = out.getvalue().split()
    row = OAuthClient.objects.get(client_id=client_id)
    assert row.scope == "system/Observation.rs" and secret not in row.secret_sha256
    with pytest.raises(Exception, match="auditor"):
        call_command(
            "oauth_client_register", "x", "--role", "auditor", "--secret", "--scope", "system/Patient.rs"
        )
    with pytest.raises(Exception, match="jwks_uri"):
        call_command("oauth_client_register", "x", "--role", "admin", "--jwks-uri", "http://example.org/jwks")


# --- jwks_uri ----------------------------------------------------------------------------------------


@pytest.fixture
def jwks_server() -> Iterator[tuple[str, dict[str, Any]]]:
    """A client's key service on loopback: it serves whatever `published` holds, and counts GETs."""
    published: dict[str, Any] = {"jwks": {"keys": []}, "gets": 0}

    class Handler(JsonHandler):
        content_type = "application/json"

        def do_GET(self) -> None:  # noqa: N802
            published["gets"] += 1
            self._send(200, published["jwks"])

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/jwks.json", published
    httpd.shutdown()
    httpd.server_close()


def test_jwks_uri_keys_are_fetched_cached_and_refetched_for_a_new_kid(server, rsa_key, ec_key, jwks_server):
    url, published = jwks_server
    published["jwks"] = {"keys": [public_jwk(rsa_key, KID_RSA)]}
    client = client_register("remote-keys", role="operator", jwks_uri=url)[0]
    token_for(server, client, rsa_key, "system/Observation.rs")
    token_for(server, client, rsa_key, "system/Observation.rs")
    assert published["gets"] == 1  # cached
    published["jwks"] = {"keys": [public_jwk(rsa_key, KID_RSA), public_jwk(ec_key, KID_EC)]}  # rotated in
    token_for(server, client, ec_key, "system/Observation.rs", alg="ES384", kid=KID_EC)
    assert published["gets"] == 2


def test_fhirais_client_reports_a_refusal_as_token_refused(server, client, rsa_key):
    auth = BackendServicesAuth(
        fhir_base_url=f"{server}/fhir",
        client_id=client.client_id,
        private_key=pem(rsa_key),
        key_id="not-registered",
        token_url=f"{server}/auth/token",
        scope="system/Observation.rs",
    )
    with pytest.raises(TokenRefused, match="invalid_client"):
        auth.token()


def test_a_client_id_with_control_characters_is_refused_not_a_server_error(server, rsa_key):
    form = {"grant_type": "client_credentials", "scope": "system/*.rs"}
    _refused(token_post(server, form, auth=("abc\x00def", "secret")))
    signed = assertion(rsa_key, "abc\x00def", f"{server}/auth/token")
    _refused(token_post(server, jwt_form(signed)))
    _refused(token_post(server, jwt_form(assertion(rsa_key, "x" * 65, f"{server}/auth/token"))))
    assert "\x00" not in "".join(AccessEvent.objects.values_list("actor", flat=True))


def test_token_endpoint_events_are_user_authentication_audit_events(server, client, rsa_key):
    token_for(server, client, rsa_key, "system/Observation.rs")
    token_post(server, jwt_form(assertion(rsa_key, client.client_id, f"{server}/fhir")))  # wrong aud
    auditor = token_issue("audit-reader", role="auditor")[1]
    found = requests.get(
        f"{server}/fhir/AuditEvent?subtype=110122", headers=bearer(auditor), timeout=10
    ).json()
    events = {e["resource"]["subtype"][1]["code"]: e["resource"] for e in found["entry"]}
    assert {"oauth.token", "oauth.refused"} <= set(events)
    assert events["oauth.token"]["type"]["code"] == "110114" and events["oauth.token"]["outcome"] == "0"
    assert events["oauth.refused"]["outcome"] == "4"


def test_a_viewer_client_cannot_be_registered(db):
    with pytest.raises(InvalidInput, match="API token"):
        client_register("dashboard", role="viewer", with_secret=True)


def test_a_jwks_uri_that_does_not_answer_is_503_to_retry_and_recorded(server, rsa_key):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/jwks.json"
    client = client_register("keys-down", role="operator", jwks_uri=url)[0]
    response = token_post(server, jwt_form(assertion(rsa_key, client.client_id, f"{server}/auth/token")))
    assert _refused(response, "temporarily_unavailable", 503) and response.headers["Retry-After"] == "30"
    assert AccessEvent.objects.filter(
        action="oauth.refused", detail__contains="temporarily_unavailable"
    ).exists()


def test_a_client_has_exactly_one_way_to_authenticate(rsa_key, db):
    jwks = {"keys": [public_jwk(rsa_key, KID_RSA)]}
    with pytest.raises(InvalidInput, match="exactly one"):
        client_register("both", role="operator", jwks=jwks, with_secret=True)
    with pytest.raises(InvalidInput, match="exactly one"):
        client_register("none", role="operator")
