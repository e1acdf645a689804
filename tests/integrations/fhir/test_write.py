"""FHIR writes over plain HTTP: create, conditional create, update, transactions and batches."""

from __future__ import annotations

import json

import pytest

from fhirai.results.models import FhirResource

pytestmark = pytest.mark.django_db
FHIR = "application/fhir+json"
PATIENT = {
    "resourceType": "Patient",
    "identifier": [{"system": "urn:oid:1.2.3", "value": "P1"}],
    "name": [{"family": "Doe"}],
    "birthDate": "1970-01-02",
}


def post(client, path, body, **headers):
    return client.post(path, data=json.dumps(body), content_type=FHIR, **headers)


def test_create_then_read_with_location_and_etag(client):
    response = post(client, "/fhir/Patient", PATIENT)
    assert response.status_code == 201 and response["ETag"] == 'W/"1"'
    location = response["Location"]
    assert "/fhir/Patient/" in location and location.endswith("/_history/1")
    rid = location.split("/fhir/Patient/")[1].split("/")[0]
    read = client.get(f"/fhir/Patient/{rid}")
    assert read.status_code == 200 and read.json()["name"][0]["family"] == "Doe"


def test_conditional_create_returns_the_existing_resource(client):
    first = post(client, "/fhir/Patient", PATIENT)
    again = post(client, "/fhir/Patient", PATIENT, HTTP_IF_NONE_EXIST="identifier=urn:oid:1.2.3|P1")
    assert again.status_code == 200 and again["Location"] == first["Location"]
    assert FhirResource.objects.filter(resource_type="Patient").count() == 1


def test_invalid_resource_is_a_400_outcome_with_the_location_and_without_the_value(client):
    response = post(client, "/fhir/Patient", {"resourceType": "Patient", "birthDate": "not-a-date"})
    body = response.json()
    assert response.status_code == 400 and body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["expression"] == ["Patient.birthDate"]
    assert "not-a-date" not in response.content.decode()
    assert post(client, "/fhir/Patient", {"resourceType": "Observation"}).status_code == 400
    wrong_type = client.post("/fhir/Patient", data="Patient", content_type="text/plain")
    assert wrong_type.status_code == 415


def test_update_versions_if_match_and_update_as_create(client):
    rid = post(client, "/fhir/Patient", PATIENT).json()["id"]
    changed = {**PATIENT, "id": rid, "name": [{"family": "Doe-Smith"}]}
    response = client.put(
        f"/fhir/Patient/{rid}", data=json.dumps(changed), content_type=FHIR, HTTP_IF_MATCH='W/"1"'
    )
    assert response.status_code == 200 and response["ETag"] == 'W/"2"'
    stale = client.put(
        f"/fhir/Patient/{rid}", data=json.dumps(changed), content_type=FHIR, HTTP_IF_MATCH='W/"1"'
    )
    assert stale.status_code == 412 and stale.json()["resourceType"] == "OperationOutcome"
    new = client.put(
        "/fhir/Patient/chosen-id", data=json.dumps({**PATIENT, "id": "chosen-id"}), content_type=FHIR
    )
    assert new.status_code == 201


def test_transaction_resolves_urn_uuid_references_and_is_atomic(client):
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:1",
                "resource": {"resourceType": "Patient", "name": [{"family": "Roe"}]},
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"text": "x"},
                    "subject": {"reference": "urn:uuid:1"},
                },
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
    reply = post(client, "/fhir/", bundle).json()
    assert reply["type"] == "transaction-response"
    patient_loc, obs_loc = (e["response"]["location"] for e in reply["entry"])
    patient_ref = patient_loc.split("/_history")[0]
    observation = client.get(f"/fhir/{obs_loc.split('/_history')[0]}").json()
    assert observation["subject"]["reference"] == patient_ref
    assert client.get("/fhir/Observation", {"subject": patient_ref}).json()["total"] == 1
    bad = {
        **bundle,
        "entry": [bundle["entry"][0], {**bundle["entry"][1], "resource": {"resourceType": "Observation"}}],
    }
    response = post(client, "/fhir/", bad)
    assert response.status_code == 400
    assert response.json()["issue"][0]["expression"][0].startswith("Bundle.entry[1].resource.Observation")
    assert (
        FhirResource.objects.filter(resource_type="Patient").count() == 1
    )  # nothing of the failed one stayed


def test_transaction_conditional_create_points_references_at_the_existing_patient(client):
    existing = post(client, "/fhir/Patient", PATIENT).json()["id"]
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:p",
                "resource": PATIENT,
                "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:oid:1.2.3|P1"},
            },
            {
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"text": "y"},
                    "subject": {"reference": "urn:uuid:p"},
                },
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
    reply = post(client, "/fhir/", bundle).json()
    assert reply["entry"][0]["response"]["status"] == "200 OK"
    obs = client.get(f"/fhir/{reply['entry'][1]['response']['location'].split('/_history')[0]}").json()
    assert obs["subject"]["reference"] == f"Patient/{existing}"


def test_batch_answers_each_entry_on_its_own(client):
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": PATIENT, "request": {"method": "POST", "url": "Patient"}},
            {
                "resource": {"resourceType": "Patient", "birthDate": "x"},
                "request": {"method": "POST", "url": "Patient"},
            },
            {"request": {"method": "GET", "url": "Patient/nope"}},
        ],
    }
    reply = post(client, "/fhir/", bundle).json()
    assert reply["type"] == "batch-response"
    assert [e["response"]["status"][:3] for e in reply["entry"]] == ["201", "400", "404"]
