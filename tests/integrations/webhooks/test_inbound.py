from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks import Webhook

from fhirai.api.tokens import token_issue
from fhirai.ingest.models import Message, Rejection
from fhirai.results.models import FhirResource
from fhirai.webhooks.models import HookReceipt
from tests.support.hl7msg import adt

pytestmark = pytest.mark.django_db
SECRET = "whsec_" + base64.b64encode(b"engine-secret-for-tests-only-32b").decode()
ER7 = "x-application/hl7-v2+er7"
FHIR_JSON = "application/fhir+json"
PATIENT = {
    "resourceType": "Patient",
    "identifier": [{"system": "urn:oid:1.2.840.99.1", "value": "MRN-HOOK-1"}],
    "name": [{"family": "Hookperson", "given": ["Ada"]}],
    "gender": "female",
    "birthDate": "1970-01-02",
}


@pytest.fixture(autouse=True)
def sources(settings, blob_dir):
    settings.FHIRAI_HOOK_SOURCES = {"engine": SECRET}


def _signed(
    body: bytes, *, msg_id: str | None = None, at: datetime | None = None, secret: str = SECRET
) -> dict:
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    at = at or datetime.now(tz=UTC)
    signature = Webhook(secret).sign(msg_id, at, body.decode())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature,
    }


def _post(client, body: bytes, content_type: str, headers: dict, source: str = "engine"):
    return client.post(f"/hooks/{source}", data=body, content_type=content_type, headers=headers)


def test_a_signed_hl7_adt_is_stored_and_acknowledged_aa(client):
    raw = adt("HOOK-1")
    response = _post(client, raw, ER7, _signed(raw))
    assert response.status_code == 200 and response["Content-Type"] == ER7
    assert "MSA|AA|HOOK-1" in response.content.decode()
    message = Message.objects.get()
    assert message.control_id == "HOOK-1" and message.peer.startswith("hook:engine")


def test_hl7_sent_as_text_starting_with_msh_is_taken_as_hl7(client):
    raw = adt("HOOK-2")
    response = _post(client, raw, "text/plain", _signed(raw))
    assert "MSA|AA|HOOK-2" in response.content.decode() and Message.objects.count() == 1


def test_a_signed_fhir_patient_is_created(client):
    body = json.dumps(PATIENT).encode()
    response = _post(client, body, FHIR_JSON, _signed(body))
    assert response.status_code == 201
    created = response.json()
    assert created["resourceType"] == "Patient" and created["id"]
    assert FhirResource.objects.filter(resource_type="Patient", rid=created["id"]).exists()


def test_a_signed_transaction_bundle_gets_the_transaction_response(client):
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:p1", "resource": PATIENT, "request": {"method": "POST", "url": "Patient"}}
        ],
    }
    body = json.dumps(bundle).encode()
    response = _post(client, body, FHIR_JSON, _signed(body))
    assert response.status_code == 200 and response.json()["type"] == "transaction-response"
    assert FhirResource.objects.filter(resource_type="Patient").count() == 1


def test_a_forged_signature_is_refused_401_and_kept_out(client):
    raw = adt("HOOK-F")
    forged = "whsec_" + base64.b64encode(b"not-the-engine-secret-at-all-32b").decode()
    response = _post(client, raw, ER7, _signed(raw, secret=forged))
    assert response.status_code == 401 and response.json()["error"] == "unauthenticated"
    assert Message.objects.count() == 0
    rejection = Rejection.objects.get()
    assert rejection.protocol == "webhook" and rejection.blob_key  # kept for inspection


def test_a_tampered_body_is_refused_401(client):
    headers = _signed(adt("HOOK-T"))
    response = _post(client, adt("HOOK-X"), ER7, headers)
    assert response.status_code == 401 and Message.objects.count() == 0


def test_an_unsigned_request_is_refused_401(client):
    raw = adt("HOOK-U")
    response = _post(client, raw, ER7, {})
    assert response.status_code == 401 and Message.objects.count() == 0


def test_a_stale_timestamp_is_refused_401(client):
    raw = adt("HOOK-S")
    response = _post(client, raw, ER7, _signed(raw, at=datetime.now(tz=UTC) - timedelta(minutes=6)))
    assert response.status_code == 401 and "webhook-timestamp" in response.json()["detail"]
    future = _post(client, raw, ER7, _signed(raw, at=datetime.now(tz=UTC) + timedelta(minutes=6)))
    assert future.status_code == 401 and Message.objects.count() == 0


def test_a_replayed_webhook_id_is_refused_409(client):
    raw = adt("HOOK-R")
    headers = _signed(raw)
    assert _post(client, raw, ER7, headers).status_code == 200
    again = _post(client, raw, ER7, headers)
    assert again.status_code == 409 and again.json()["error"] == "replayed"
    assert Message.objects.count() == 1 and HookReceipt.objects.count() == 1
    assert Rejection.objects.get().code == "replayed"


def test_an_unknown_source_is_404(client):
    raw = adt("HOOK-N")
    response = _post(client, raw, ER7, _signed(raw), source="stranger")
    assert response.status_code == 404 and Message.objects.count() == 0


def test_the_acceptance_probe_without_a_signature_is_refused(client):
    # ../shared/acceptance/ui-api: curl -X POST /hooks/test -H 'Content-Type: application/json' -d '{}'
    response = client.post("/hooks/test", data="{}", content_type="application/json")
    assert response.status_code in (401, 403, 404)
    ours = client.post("/hooks/engine", data="{}", content_type="application/json")
    assert ours.status_code == 401 and Rejection.objects.filter(protocol="webhook").count() == 2


def test_an_unsupported_body_is_415_and_a_corrected_resend_is_not_a_replay(client):
    body = b"hello"
    headers = _signed(body)
    response = _post(client, body, "text/plain", headers)
    assert response.status_code == 415 and "application/fhir+json" in response.json()["detail"]
    assert HookReceipt.objects.count() == 0
    raw = adt("HOOK-C")
    assert _post(client, raw, ER7, _signed(raw, msg_id=headers["webhook-id"])).status_code == 200


def test_an_invalid_fhir_resource_is_an_operation_outcome_and_kept(client):
    body = json.dumps({"resourceType": "Patient", "gender": 12}).encode()
    response = _post(client, body, FHIR_JSON, _signed(body))
    assert response.status_code == 400 and response.json()["resourceType"] == "OperationOutcome"
    assert not FhirResource.objects.filter(resource_type="Patient").exists()
    assert Rejection.objects.get().protocol == "webhook"


def test_get_is_not_allowed(client):
    assert client.get("/hooks/engine").status_code == 405


def test_an_operator_token_may_post_hl7_and_a_sent_webhook_id_is_still_checked(client):
    _, token = token_issue("engine-token", role="operator")
    raw = adt("HOOK-T1")
    headers = {"Authorization": f"Bearer {token}", "webhook-id": "msg_token_1"}
    response = _post(client, raw, ER7, headers, source="mirth")
    assert response.status_code == 200 and "MSA|AA|HOOK-T1" in response.content.decode()
    assert _post(client, raw, ER7, headers, source="mirth").status_code == 409
    assert Message.objects.get().peer.startswith("hook:mirth")


def test_a_viewer_token_or_a_bad_token_may_not_post_hooks(client):
    _, token = token_issue("reader", role="viewer")
    raw = adt("HOOK-T2")
    assert _post(client, raw, ER7, {"Authorization": f"Bearer {token}"}).status_code == 403
    assert _post(client, raw, ER7, {"Authorization": "Bearer fhirai_nope_nope"}).status_code == 401
    assert not Message.objects.exists() and Rejection.objects.count() == 2


def test_a_json_event_retries_a_failed_message(client):
    message = Message.objects.create(
        sender="RIS^HOSP",
        control_id="C1",
        message_type="ADT^A01",
        version="2.5.1",
        codec="utf-8",
        raw=adt("C1"),
        state="failed",
        error="no PID",
        received_at=datetime.now(tz=UTC),
    )
    event = json.dumps({"type": "item.retry", "item": f"message/{message.pk}"}).encode()
    response = _post(client, event, "application/json", _signed(event))
    assert response.status_code == 202 and "retry by hook:engine" in response.json()["detail"]
    message.refresh_from_db()
    assert message.state == "received"
    again = _post(client, event, "application/json", _signed(event))
    assert again.status_code == 409
    bad = json.dumps({"type": "item.delete", "item": "message/1"}).encode()
    assert _post(client, bad, "application/json", _signed(bad)).status_code == 422
