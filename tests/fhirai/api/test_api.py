from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client

from fhirai.api.models import AccessEvent
from fhirai.deid.profile import patient_pseudonym
from fhirai.deid.vault import vault_put
from fhirai.routing.models import ModelRecord

pytestmark = pytest.mark.django_db

PHI = ("Testperson", "MRN-7734921", "ACC-55501", "19610203")


def test_schema_is_openapi_with_the_paths(client):
    schema = client.get("/api/schema").json()
    assert schema["openapi"].startswith("3.")
    for path in (
        "/api/health",
        "/api/studies",
        "/api/studies/{study_id}",
        "/api/studies/{study_id}/retry",
        "/api/messages",
        "/api/messages/{message_id}",
        "/api/deliveries",
        "/api/deliveries/{delivery_id}/retry",
        "/api/models",
        "/api/models/{model_id}",
    ):
        assert path in schema["paths"]
    assert "StudyOut" in schema["components"]["schemas"]


def test_docs_page_loads_swagger_from_this_server_only(client):
    html = client.get("/api/docs").content.decode()
    assert "swagger-ui-bundle.js" in html
    assert "cdn." not in html and "https://" not in html
    assert client.get("/static/ninja/swagger-ui-bundle.js").status_code == 200


def test_health_needs_no_token(client):
    body = client.get("/api/health").json()
    assert body["database"] == "ok" and "default" in body["queues"]


def test_without_credentials_the_api_answers_401_as_json(client, study):
    response = client.get("/api/studies")
    assert response.status_code == 401 and "detail" in response.json()
    bad = client.get("/api/studies", headers={"Authorization": "Bearer fhirai_x_y"})
    assert bad.status_code == 401


@pytest.mark.parametrize("role", ["viewer", "auditor"])
def test_viewer_and_auditor_see_pseudonyms_only(as_role, study, role):
    api = as_role(role)
    listing = api.get("/api/studies")
    detail = api.get(f"/api/studies/{study.pk}")
    for response in (listing, detail):
        assert response.status_code == 200
        assert not any(value in response.content.decode() for value in PHI)
    item = listing.json()["items"][0]
    assert item["phi"] is None and item["patient_pseudonym"] == patient_pseudonym("MRN-7734921")
    assert not AccessEvent.objects.exists()  # nothing identified was shown


def test_admin_sees_phi_and_the_view_is_audited(as_role, study):
    response = as_role("admin").get(f"/api/studies/{study.pk}")
    assert response.json()["phi"]["patient_name"] == "Testperson^Alma^Q"
    event = AccessEvent.objects.get()
    assert (event.actor, event.action, event.item_ids) == ("token:admin-client", "study.view", [study.pk])


def test_search_by_mrn_is_for_operators_and_audited_without_the_value(as_role, study):
    assert as_role("viewer").get("/api/studies", mrn="MRN-7734921").status_code == 403
    response = as_role("operator").get("/api/studies", mrn="MRN-7734921")
    assert [i["id"] for i in response.json()["items"]] == [study.pk]
    event = AccessEvent.objects.get(action="study.search")
    assert event.item_ids == [study.pk] and "mrn" in event.detail and "MRN-7734921" not in event.detail


def test_studies_filter_and_page(as_role, study):
    api = as_role("viewer")
    assert api.get("/api/studies", state="failed", modality="CT").json()["count"] == 1
    assert api.get("/api/studies", state="queued").json()["count"] == 0
    assert api.get("/api/studies", limit=1, offset=1).json()["items"] == []
    assert api.get("/api/studies", limit=0).status_code == 422
    assert api.get("/api/studies", received_from="2999-01-01T00:00:00Z").json()["count"] == 0
    assert api.get("/api/studies", received_from="0.5").status_code == 422
    assert api.get("/api/studies", state="a\x00b").json()["count"] == 0  # not a database error


def test_filter_by_patient_pseudonym_goes_through_the_vault(as_role, study):
    pseudo = patient_pseudonym("MRN-7734921")
    vault_put("patient-id", pseudonym=pseudo, original="\x1fMRN-7734921")
    api = as_role("viewer")
    assert [i["id"] for i in api.get("/api/studies", patient=pseudo).json()["items"]] == [study.pk]
    assert api.get("/api/studies", patient="PUNKNOWN").json()["count"] == 0


def test_unknown_study_is_404_json(as_role):
    response = as_role("viewer").get("/api/studies/999999")
    assert response.status_code == 404 and response.json()["detail"]


def test_message_raw_text_only_for_operators(as_role, message):
    viewer = as_role("viewer").get(f"/api/messages/{message.pk}").json()
    assert viewer["raw"] is None and viewer["control_id"] == "C123"
    operator = as_role("operator").get(f"/api/messages/{message.pk}").json()
    assert operator["raw"].startswith("MSH|")
    assert AccessEvent.objects.get().action == "message.view"
    listing = as_role("viewer").get("/api/messages", message_type="ADT^A01").json()
    assert listing["count"] == 1 and "Testperson" not in str(listing)


def test_models_listed_for_all_and_changed_by_operators_only(as_role):
    model = ModelRecord.objects.create(name="m", version="1", title="M", task="classify", accepts={})
    assert "m" in [m["name"] for m in as_role("viewer").get("/api/models").json()]
    assert as_role("viewer").patch(f"/api/models/{model.pk}", {"enabled": False}).status_code == 403
    response = as_role("operator").patch(
        f"/api/models/{model.pk}", {"enabled": False, "accepts": {"modalities": ["CT"]}}
    )
    assert response.status_code == 200 and response.json()["enabled"] is False
    model.refresh_from_db()
    assert not model.enabled and model.accepts == {"modalities": ["CT"]}
    assert (
        as_role("admin").patch(f"/api/models/{model.pk}", {"accepts": {"colour": ["red"]}}).status_code == 422
    )


def test_retry_is_for_operators_only(as_role, study):
    for role in ("viewer", "auditor"):
        assert as_role(role).post(f"/api/studies/{study.pk}/retry").status_code == 403


def test_audit_log_is_for_admin_and_auditor(as_role, study):
    as_role("admin").get(f"/api/studies/{study.pk}")
    assert as_role("operator").get("/api/audit").status_code == 403
    [event] = as_role("auditor").get("/api/audit").json()
    assert event["action"] == "study.view"


def test_console_session_by_group_role(study):
    user = User.objects.create_user("vera", password="pw")
    user.groups.add(Group.objects.get_or_create(name="viewer")[0])
    client = Client()
    client.force_login(user)
    assert client.get(f"/api/studies/{study.pk}").json()["phi"] is None
    user.groups.clear()
    assert client.get("/api/studies").status_code == 401  # logged in, but no role
    admin = User.objects.create_superuser("root", password="pw")
    client.force_login(admin)
    assert client.get(f"/api/studies/{study.pk}").json()["phi"]["accession_number"] == "ACC-55501"
    # a session POST needs the CSRF token, like any form
    csrf_client = Client(enforce_csrf_checks=True)
    csrf_client.force_login(admin)
    assert csrf_client.post(f"/api/studies/{study.pk}/retry").status_code == 403


def test_a_filter_value_with_a_nul_character_matches_nothing(as_role, study):
    admin = as_role("admin")
    for path, params in [
        ("/api/studies", {"model": "a\x00b"}),
        ("/api/studies", {"patient": "P\x00"}),
        ("/api/messages", {"sender": "\x00"}),
        ("/api/deliveries", {"destination": "x\x00"}),
        ("/api/rejections", {"code": "\x00"}),
    ]:
        response = admin.get(path, **params)
        assert response.status_code == 200 and response.json()["count"] == 0, path
