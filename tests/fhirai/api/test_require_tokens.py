from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest
from django.db import OperationalError

from fhirai.api import auth
from fhirai.api.tokens import token_issue, token_revoke
from tests.support.product import ROOT

pytestmark = pytest.mark.django_db


def test_fhir_stays_open_without_tokens_required(client, settings):
    settings.FHIRAI_REQUIRE_TOKENS = False
    assert client.get("/fhir/metadata").status_code == 200


def test_a_sent_token_must_be_valid_even_when_not_required(client, settings):
    settings.FHIRAI_REQUIRE_TOKENS = False
    _, token = token_issue("engine", role="operator")
    assert client.get("/fhir/Patient", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    response = client.get("/fhir/Patient", headers={"Authorization": "Bearer fhirai_dead_beef"})
    assert response.status_code == 401 and response["WWW-Authenticate"].startswith("Bearer")


def test_required_tokens_guard_fhir_hl7_and_api_but_not_health(client, settings):
    settings.FHIRAI_REQUIRE_TOKENS = True
    _, token = token_issue("engine", role="operator")
    auth = {"Authorization": f"Bearer {token}"}
    assert client.get("/fhir/Patient").status_code == 401
    assert client.get("/fhir/Patient", headers=auth).status_code == 200
    assert client.get("/fhir/metadata").status_code == 200  # discovery stays open
    assert client.get("/api/schema").status_code == 401
    assert client.get("/api/schema", headers=auth).status_code == 200
    assert client.get("/api/health").status_code in (200, 503)
    assert client.post("/hl7/", "MSH|", content_type="application/hl7-v2").status_code == 401
    token_revoke("engine")
    assert client.get("/fhir/Patient", headers=auth).status_code == 401


def test_the_product_requires_tokens_unless_a_site_opens_it():
    """The installed default (fhirai.settings, no environment): closed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FHIRAI_", "DJANGO_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="fhirai.settings", FHIRAI_DATA_DIR=tempfile.mkdtemp(prefix="fhirai-req-")
    )
    code = "from django.conf import settings; print(settings.FHIRAI_REQUIRE_TOKENS)"
    done = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "True"


def test_while_the_database_is_away_a_token_gets_503_with_retry_after(client, settings, monkeypatch):
    # The real outage (PostgreSQL stopped under a running site) is in tests/faults, whose probes
    # send the EHR's token; here the token lookup alone fails, as it does then.
    settings.FHIRAI_REQUIRE_TOKENS = True

    def database_gone(token: str) -> None:
        raise OperationalError("connection refused")

    monkeypatch.setattr(auth, "token_check", database_gone)
    headers = {"Authorization": "Bearer fhirai_abcd1234_secret"}
    fhir = client.get("/fhir/Patient", headers=headers)
    assert fhir.status_code == 503 and fhir["Retry-After"] == "30"
    assert (
        fhir.json()["resourceType"] == "OperationOutcome" and fhir.json()["issue"][0]["code"] == "transient"
    )
    api = client.get("/api/studies", headers=headers)
    assert api.status_code == 503 and api["Retry-After"] == "30"
