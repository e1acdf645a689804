"""SMART Backend Services for the upstream FHIR client, against a real token endpoint that verifies
every client assertion (tests/support/token_endpoint.py) and the test FHIR server."""

from __future__ import annotations

import importlib.util
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from django.core.exceptions import ImproperlyConfigured

from fhirai.errors import Unavailable
from fhirai.ingest.models import Study, StudyState
from fhirai.results.models import Delivery, DeliveryState
from fhirai.results.writeback import delivery_attempt
from integrations.fhir.smart import DEFAULT_SCOPE, BackendServicesAuth, shared_auth, signing_key
from integrations.fhir.upstream import HttpUpstream
from tests.support import pipeline
from tests.support.fhir_upstream import FhirUpstream
from tests.support.token_endpoint import TokenEndpoint

CLIENT_ID = "fhirai-test-client"
KID = "fhirai-2026-1"
BUNDLE: dict[str, Any] = {"resourceType": "Bundle", "type": "transaction", "entry": []}
SETTINGS_PY = Path(__file__).resolve().parents[3] / "fhirai" / "settings.py"


def _pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture(autouse=True)
def fresh_providers() -> Iterator[None]:
    """Token providers live per process; a test must not find one a previous test left."""
    shared_auth.cache_clear()
    yield
    shared_auth.cache_clear()


@pytest.fixture
def fhir() -> Iterator[FhirUpstream]:
    with FhirUpstream() as up:
        yield up


@pytest.fixture
def tokens(ec_key: ec.EllipticCurvePrivateKey) -> Iterator[TokenEndpoint]:
    with TokenEndpoint(public_key=ec_key.public_key(), client_id=CLIENT_ID, kid=KID) as endpoint:
        yield endpoint


def _client(fhir: FhirUpstream, tokens: TokenEndpoint, key: Any, **extra: Any) -> HttpUpstream:
    """Built the way write-back builds it: a new client per delivery, same settings."""
    options = {"client_id": CLIENT_ID, "private_key": _pem(key), "key_id": KID, "token_url": tokens.url}
    return HttpUpstream(base_url=fhir.url, timeout=5.0, **{**options, **extra})


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_a_signed_assertion_is_accepted_and_the_bearer_token_reaches_the_fhir_server(
    kind: str, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey, fhir: FhirUpstream
) -> None:
    key = rsa_key if kind == "rsa" else ec_key
    with TokenEndpoint(public_key=key.public_key(), client_id=CLIENT_ID, kid=KID) as tokens:
        reply = _client(fhir, tokens, key).transaction(BUNDLE)
    assert reply.status == 200
    assert tokens.state.rejections == [] and tokens.state.issued == ["tok-1"]
    assert tokens.state.scopes == [DEFAULT_SCOPE]
    assert fhir.state.auth_headers == ["Bearer tok-1"]


def test_an_assertion_for_another_key_id_is_rejected_by_the_endpoint(
    ec_key: ec.EllipticCurvePrivateKey, fhir: FhirUpstream, tokens: TokenEndpoint
) -> None:
    """The endpoint really checks: an unregistered kid is invalid_client, a refusal."""
    reply = _client(fhir, tokens, ec_key, key_id="some-other-key").transaction(BUNDLE)
    assert reply.status == 401 and "invalid_client" in reply.body
    assert tokens.state.rejections == ["unknown kid 'some-other-key'"]
    assert fhir.state.requests == 0


def test_the_token_is_cached_across_transactions_and_clients(
    ec_key: ec.EllipticCurvePrivateKey, fhir: FhirUpstream, tokens: TokenEndpoint
) -> None:
    assert _client(fhir, tokens, ec_key).transaction(BUNDLE).status == 200
    assert _client(fhir, tokens, ec_key).transaction(BUNDLE).status == 200
    assert tokens.state.requests == 1
    assert fhir.state.auth_headers == ["Bearer tok-1", "Bearer tok-1"]


@pytest.mark.parametrize(("expires_in", "renew_after"), [(120, 108.0), (None, 270.0)])
def test_a_token_is_renewed_shortly_before_it_expires(
    expires_in: int | None,
    renew_after: float,
    ec_key: ec.EllipticCurvePrivateKey,
    fhir: FhirUpstream,
    tokens: TokenEndpoint,
) -> None:
    """Renewed 10% (at most 60 s) before expires_in; 300 s assumed when the answer has none."""
    tokens.state.expires_in = expires_in
    clock = FakeClock()
    auth = BackendServicesAuth(
        fhir_base_url=fhir.url,
        client_id=CLIENT_ID,
        private_key=_pem(ec_key),
        key_id=KID,
        token_url=tokens.url,
        clock=clock,
    )
    client = HttpUpstream(base_url=fhir.url, auth=auth)
    client.transaction(BUNDLE)
    clock.now += renew_after - 1
    client.transaction(BUNDLE)
    clock.now += 1
    client.transaction(BUNDLE)
    assert fhir.state.auth_headers == ["Bearer tok-1", "Bearer tok-1", "Bearer tok-2"]
    assert tokens.state.rejections == [] and len(tokens.state.jtis) == 2


def test_a_401_from_the_fhir_server_gets_one_fresh_token_and_one_retry(
    ec_key: ec.EllipticCurvePrivateKey, fhir: FhirUpstream, tokens: TokenEndpoint
) -> None:
    client = _client(fhir, tokens, ec_key)
    client.transaction(BUNDLE)
    fhir.state.revoked.add("tok-1")
    assert client.transaction(BUNDLE).status == 200
    assert fhir.state.auth_headers == ["Bearer tok-1", "Bearer tok-1", "Bearer tok-2"]
    fhir.state.revoked.add("tok-2")
    fhir.state.revoked.add("tok-3")
    assert client.transaction(BUNDLE).status == 401  # a second 401 is the answer, not a loop
    assert fhir.state.auth_headers[3:] == ["Bearer tok-2", "Bearer tok-3"]
    assert tokens.state.requests == 3


def test_a_read_is_authorized_and_retried_on_401_too(
    ec_key: ec.EllipticCurvePrivateKey, fhir: FhirUpstream, tokens: TokenEndpoint
) -> None:
    client = _client(fhir, tokens, ec_key)
    assert client.read("DiagnosticReport") is not None
    fhir.state.revoked.add("tok-1")
    found = client.read("DiagnosticReport")
    assert found is not None and found["type"] == "searchset"
    assert tokens.state.issued == ["tok-1", "tok-2"] and tokens.state.rejections == []


def test_a_static_token_is_not_retried_on_401(fhir: FhirUpstream) -> None:
    fhir.state.revoked.add("s3cret")
    reply = HttpUpstream(base_url=fhir.url, token="s3cret").transaction(BUNDLE)
    assert reply.status == 401 and fhir.state.auth_headers == ["Bearer s3cret"]


def test_a_token_endpoint_that_is_down_or_unreachable_is_unavailable(
    ec_key: ec.EllipticCurvePrivateKey, fhir: FhirUpstream, tokens: TokenEndpoint
) -> None:
    tokens.state.fail_with = 503
    with pytest.raises(Unavailable, match="token endpoint answered HTTP 503"):
        _client(fhir, tokens, ec_key).transaction(BUNDLE)
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}/token"
    with pytest.raises(Unavailable, match="token endpoint unreachable"):
        _client(fhir, tokens, ec_key, token_url=closed).transaction(BUNDLE)
    assert fhir.state.requests == 0


def test_a_refused_token_request_is_a_refusal_that_names_the_oauth_error(
    ec_key: ec.EllipticCurvePrivateKey, fhir: FhirUpstream, tokens: TokenEndpoint
) -> None:
    tokens.state.refuse_with = (400, "invalid_client", "client not registered")
    client = _client(fhir, tokens, ec_key)
    reply = client.transaction(BUNDLE)
    assert reply.status == 400
    assert reply.body == "token endpoint refused: HTTP 400 invalid_client: client not registered"
    assert reply.summary == "token endpoint refused: HTTP 400 invalid_client"
    with pytest.raises(Unavailable, match="invalid_client: client not registered"):
        client.read("DiagnosticReport/1")
    assert fhir.state.requests == 0


def test_the_token_endpoint_is_discovered_once_from_the_smart_configuration(
    ec_key: ec.EllipticCurvePrivateKey, fhir: FhirUpstream, tokens: TokenEndpoint
) -> None:
    fhir.state.smart_configuration = {
        "token_endpoint": tokens.url,
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
    }
    assert _client(fhir, tokens, ec_key, token_url="").transaction(BUNDLE).status == 200
    fhir.state.revoked.add("tok-1")  # a second token is needed: the endpoint is not looked up again
    assert _client(fhir, tokens, ec_key, token_url="").transaction(BUNDLE).status == 200
    assert fhir.state.discoveries == 1 and tokens.state.requests == 2
    assert tokens.state.rejections == []


def test_no_smart_configuration_is_a_refusal(
    ec_key: ec.EllipticCurvePrivateKey, fhir: FhirUpstream, tokens: TokenEndpoint
) -> None:
    reply = _client(fhir, tokens, ec_key, token_url="").transaction(BUNDLE)
    assert reply.status == 404 and "configure the token endpoint URL" in reply.body


def test_only_rsa_and_p384_keys_can_sign() -> None:
    small = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(ValueError, match="RSA .* or EC on P-384") as caught:
        signing_key(_pem(small))
    assert "PRIVATE KEY" not in str(caught.value)
    with pytest.raises(ValueError, match="not an unencrypted PEM"):
        signing_key("not a key")


# --- settings ------------------------------------------------------------------------------------
SMART_ENV = [
    "FHIRAI_FHIR_UPSTREAM_TOKEN",
    "FHIRAI_FHIR_UPSTREAM_TOKEN_FILE",
    "FHIRAI_FHIR_UPSTREAM_CLIENT_ID",
    "FHIRAI_FHIR_UPSTREAM_PRIVATE_KEY",
    "FHIRAI_FHIR_UPSTREAM_PRIVATE_KEY_FILE",
    "FHIRAI_FHIR_UPSTREAM_KEY_ID",
    "FHIRAI_FHIR_UPSTREAM_TOKEN_URL",
    "FHIRAI_FHIR_UPSTREAM_SCOPE",
]


def _settings_with(monkeypatch: pytest.MonkeyPatch, **env: str) -> Any:
    """fhirai/settings.py executed afresh (as at startup) with these upstream variables."""
    for name in SMART_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    spec = importlib.util.spec_from_file_location("fhirai_settings_probe", SETTINGS_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_settings_read_the_smart_key_from_a_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    (tmp_path / "key.pem").write_text(_pem(ec_key))
    loaded = _settings_with(
        monkeypatch,
        FHIRAI_FHIR_UPSTREAM_CLIENT_ID=CLIENT_ID,
        FHIRAI_FHIR_UPSTREAM_PRIVATE_KEY_FILE=str(tmp_path / "key.pem"),
    )
    assert signing_key(loaded.FHIRAI_FHIR_UPSTREAM_PRIVATE_KEY)[1] == "ES384"
    assert loaded.FHIRAI_FHIR_UPSTREAM_SCOPE == DEFAULT_SCOPE
    assert loaded.FHIRAI_FHIR_UPSTREAM_TOKEN_URL == ""


@pytest.mark.parametrize(
    ("env", "complaint"),
    [
        ({"FHIRAI_FHIR_UPSTREAM_CLIENT_ID": CLIENT_ID}, "needs both"),
        ({"FHIRAI_FHIR_UPSTREAM_PRIVATE_KEY": "<pem>"}, "needs both"),
        (
            {
                "FHIRAI_FHIR_UPSTREAM_TOKEN": "s3cret",
                "FHIRAI_FHIR_UPSTREAM_CLIENT_ID": CLIENT_ID,
                "FHIRAI_FHIR_UPSTREAM_PRIVATE_KEY": "<pem>",
            },
            "not both",
        ),
        (
            {"FHIRAI_FHIR_UPSTREAM_CLIENT_ID": CLIENT_ID, "FHIRAI_FHIR_UPSTREAM_PRIVATE_KEY": "junk"},
            "not an unencrypted PEM",
        ),
    ],
)
def test_settings_refuse_an_ambiguous_upstream_authorization_at_startup(
    env: dict[str, str], complaint: str, monkeypatch: pytest.MonkeyPatch, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    env = {name: _pem(ec_key) if value == "<pem>" else value for name, value in env.items()}
    with pytest.raises(ImproperlyConfigured, match=complaint):
        _settings_with(monkeypatch, **env)


# --- write-back end to end -----------------------------------------------------------------------
@pytest.fixture
def smart_upstream(settings: Any, fhir: FhirUpstream, tokens: TokenEndpoint, ec_key: Any) -> FhirUpstream:
    settings.FHIRAI_FHIR_UPSTREAM_URL = fhir.url
    settings.FHIRAI_FHIR_UPSTREAM_TOKEN = ""
    settings.FHIRAI_FHIR_UPSTREAM_CLIENT_ID = CLIENT_ID
    settings.FHIRAI_FHIR_UPSTREAM_PRIVATE_KEY = _pem(ec_key)
    settings.FHIRAI_FHIR_UPSTREAM_KEY_ID = KID
    settings.FHIRAI_FHIR_UPSTREAM_TOKEN_URL = tokens.url
    settings.FHIRAI_FHIR_UPSTREAM_SCOPE = DEFAULT_SCOPE
    return fhir


@pytest.mark.django_db
def test_a_delivery_is_authorized_with_smart_backend_services(
    phantom: Any, settings: Any, blob_dir: Path, smart_upstream: FhirUpstream, tokens: TokenEndpoint
) -> None:
    pipeline.run_all(phantom, settings)
    delivery = Delivery.objects.get()
    delivery_attempt(delivery.pk)
    delivery.refresh_from_db()
    assert delivery.state == DeliveryState.DELIVERED and delivery.last_status == 200
    assert Study.objects.get().state == StudyState.WRITTEN_BACK
    assert smart_upstream.state.auth_headers == ["Bearer tok-1"]
    assert tokens.state.rejections == [] and len(smart_upstream.state.all("DiagnosticReport")) == 1


@pytest.mark.django_db
def test_a_refused_token_request_fails_the_delivery_visibly(
    phantom: Any, settings: Any, blob_dir: Path, smart_upstream: FhirUpstream, tokens: TokenEndpoint
) -> None:
    tokens.state.refuse_with = (400, "invalid_client", "client not registered")
    pipeline.run_all(phantom, settings)
    delivery = Delivery.objects.get()
    delivery_attempt(delivery.pk)
    delivery.refresh_from_db()
    assert delivery.state == DeliveryState.FAILED and delivery.last_status == 400
    assert "client not registered" in delivery.last_response
    assert all(a not in delivery.last_response for a in tokens.state.assertions)
    study = Study.objects.get()
    assert study.state == StudyState.FAILED
    assert "token endpoint refused: HTTP 400 invalid_client" in study.error
    assert smart_upstream.state.requests == 0
