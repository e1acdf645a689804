from __future__ import annotations

import pytest

from fhirai.api.tokens import token_issue, token_revoke

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
