"""fhirai's /fhir/ driven by a third-party FHIR client (fhirpy's SyncFHIRClient) over a real
socket: CRUD, search with paging through next links, a transaction Bundle with references, and the
errors a client sees as OperationOutcomes."""

from __future__ import annotations

import pytest
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import OperationOutcome, ResourceNotFound

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def fhir(live_server, settings) -> SyncFHIRClient:
    settings.FHIRAI_BASE_URL = live_server.url  # so next links point where the client can follow
    return SyncFHIRClient(f"{live_server.url}/fhir", extra_headers={"Accept": "application/fhir+json"})


def test_create_read_update_and_versions(fhir):
    patient = fhir.resource(
        "Patient",
        identifier=[{"system": "urn:oid:1.2.3", "value": "FP-1"}],
        name=[{"family": "Client", "given": ["Fhir"]}],
        birthDate="1980-02-03",
    )
    patient.save()
    assert patient.id and patient["meta"]["versionId"] == "1"
    fetched = fhir.reference("Patient", patient.id).to_resource()
    assert fetched["name"][0]["family"] == "Client"
    fetched["name"][0]["family"] = "Renamed"
    fetched.save()
    again = fhir.reference("Patient", patient.id).to_resource()
    assert again["meta"]["versionId"] == "2" and again["name"][0]["family"] == "Renamed"
    history = fhir.execute(f"Patient/{patient.id}/_history", method="get")
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["2", "1"]
    found = fhir.resources("Patient").search(identifier="urn:oid:1.2.3|FP-1").get()
    assert found.id == patient.id


def test_search_pages_through_next_links(fhir):
    for i in range(7):
        fhir.resource(
            "Patient",
            identifier=[{"system": "urn:oid:1.2.3", "value": f"PG-{i}"}],
            name=[{"family": "Pager"}],
        ).save()
    search = fhir.resources("Patient").search(family="pager").limit(3)
    assert search.count() == 7
    first_page = search.fetch()
    assert len(first_page) == 3
    everything = search.fetch_all()  # follows Bundle.link next
    assert len({p.id for p in everything}) == 7


def test_transaction_bundle_with_references(fhir):
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:6b0f3d2e-0000-4000-8000-000000000001",
                "resource": {
                    "resourceType": "Patient",
                    "identifier": [{"system": "urn:oid:1.2.3", "value": "TX-1"}],
                },
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"text": "note"},
                    "subject": {"reference": "urn:uuid:6b0f3d2e-0000-4000-8000-000000000001"},
                    "valueString": "hello",
                },
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
    response = fhir.execute("", method="post", data=bundle)
    assert response["type"] == "transaction-response"
    patient_id = response["entry"][0]["response"]["location"].split("/")[1]
    [observation] = fhir.resources("Observation").search(subject=f"Patient/{patient_id}").fetch()
    assert observation["subject"]["reference"] == f"Patient/{patient_id}"


def test_errors_arrive_as_operation_outcomes(fhir):
    with pytest.raises(ResourceNotFound):
        fhir.reference("Patient", "does-not-exist").to_resource()
    with pytest.raises(OperationOutcome) as invalid:
        fhir.resource("Patient", birthDate="not-a-date").save()
    assert "Patient.birthDate" in str(invalid.value)
    with pytest.raises(OperationOutcome):
        fhir.resource("Patient", id="x", identifier=[{"value": "1"}]).delete()
    broken = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"request": {"method": "DELETE", "url": "Patient/x"}}],
    }
    with pytest.raises(OperationOutcome) as refused:
        fhir.execute("", method="post", data=broken)
    assert "Bundle.entry[0]" in str(refused.value)
