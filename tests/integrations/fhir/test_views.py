from __future__ import annotations

import pytest

from tests.support import pipeline

pytestmark = pytest.mark.django_db
FHIR = {"HTTP_ACCEPT": "application/fhir+json"}


@pytest.fixture
def reported(phantom, settings, blob_dir):
    return pipeline.run_all(phantom, settings)


def test_metadata_is_an_r4_capability_statement(client):
    response = client.get("/fhir/metadata", **FHIR)
    body = response.json()
    assert response.status_code == 200 and response["Content-Type"].startswith("application/fhir+json")
    assert body["resourceType"] == "CapabilityStatement" and body["fhirVersion"] == "4.0.1"
    types = {r["type"]: r for r in body["rest"][0]["resource"]}
    assert "DiagnosticReport" in types and "study" in {
        p["name"] for p in types["DiagnosticReport"]["searchParam"]
    }


def test_read_a_report_with_etag(client, reported):
    bundle = client.get("/fhir/DiagnosticReport", **FHIR).json()
    rid = bundle["entry"][0]["resource"]["id"]
    response = client.get(f"/fhir/DiagnosticReport/{rid}", **FHIR)
    assert response.status_code == 200 and response["ETag"] == 'W/"1"'
    assert response.json()["id"] == rid


def test_unknown_report_is_a_404_operation_outcome(client):
    response = client.get("/fhir/DiagnosticReport/nope", **FHIR)
    assert response.status_code == 404
    assert response.json()["issue"][0]["code"] == "not-found"


def test_search_by_patient_identifier_and_by_study(client, reported, phantom):
    by_patient = client.get("/fhir/DiagnosticReport", {"subject:identifier": "MRN-7734921"}, **FHIR).json()
    assert by_patient["total"] == 1
    system = by_patient["entry"][0]["resource"]["subject"]["identifier"]["system"]
    assert (
        client.get("/fhir/DiagnosticReport", {"patient:identifier": f"{system}|MRN-7734921"}, **FHIR).json()[
            "total"
        ]
        == 1
    )
    assert (
        client.get("/fhir/DiagnosticReport", {"subject:identifier": "someone-else"}, **FHIR).json()["total"]
        == 0
    )
    uid = phantom.identifiers["StudyInstanceUID"]
    for value in (uid, f"urn:oid:{uid}", f"urn:dicom:uid|urn:oid:{uid}"):
        assert client.get("/fhir/DiagnosticReport", {"study": value}, **FHIR).json()["total"] == 1


def test_include_returns_the_observations(client, reported):
    bundle = client.get("/fhir/DiagnosticReport", {"_include": "DiagnosticReport:result"}, **FHIR).json()
    modes = [(e["resource"]["resourceType"], e["search"]["mode"]) for e in bundle["entry"]]
    assert modes.count(("Observation", "include")) == 2


def test_paging_gives_next_links(client, reported):
    bundle = client.get("/fhir/Observation", {"_count": 1}, **FHIR).json()
    assert bundle["total"] == 2 and len(bundle["entry"]) == 1
    next_url = next(link["url"] for link in bundle["link"] if link["relation"] == "next")
    second = client.get(next_url.split("127.0.0.1:8000", 1)[-1].replace("http://", ""), **FHIR).json()
    assert second["entry"][0]["resource"]["id"] != bundle["entry"][0]["resource"]["id"]


def test_unknown_format_is_406_and_delete_is_405(client):
    assert client.get("/fhir/metadata", {"_format": "text/turtle"}).status_code == 406
    assert client.get("/fhir/metadata", HTTP_ACCEPT="text/turtle").status_code == 406
    response = client.delete("/fhir/DiagnosticReport/x")
    assert response.status_code == 405 and response.json()["resourceType"] == "OperationOutcome"


def test_bad_count_is_a_400_and_strict_unknown_parameter_too(client):
    assert client.get("/fhir/Observation", {"_count": "x"}, **FHIR).status_code == 400
    assert client.get("/fhir/Observation", {"foo": "1"}, **FHIR).status_code == 200
    strict = client.get("/fhir/Observation", {"foo": "1"}, HTTP_PREFER="handling=strict", **FHIR)
    assert strict.status_code == 400
