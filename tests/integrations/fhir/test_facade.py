"""The FHIR facade over plain HTTP: history and vread, the search parameters the
CapabilityStatement declares, XML both ways, Task per AI job, AuditEvents, FHIR context driving a
study, and every emitted resource valid R4 (plus US Core DiagnosticReport Report and Note)."""

from __future__ import annotations

import base64
import json

import pytest
from fhir.resources.R4B import get_fhir_model_class

from fhirai.audit.models import TimelineEvent
from fhirai.results.models import FhirResource
from fhirai.results.resources import system
from tests.support import pipeline

pytestmark = pytest.mark.django_db
FHIR = "application/fhir+json"
ACCEPT = {"HTTP_ACCEPT": FHIR}
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"


def post(client, path, body, **headers):
    return client.post(path, data=json.dumps(body), content_type=FHIR, **headers)


def put(client, path, body, **headers):
    return client.put(path, data=json.dumps(body), content_type=FHIR, **headers)


def get(client, path, params=None, **headers):
    return client.get(path, params or {}, **{**ACCEPT, **headers})


def patient(mrn="P1", family="Doe", birth="1970-01-02"):
    return {
        "resourceType": "Patient",
        "identifier": [
            {"type": {"coding": [{"system": V2_0203, "code": "MR"}]}, "system": "urn:oid:1.2.3", "value": mrn}
        ],
        "name": [{"use": "official", "family": family, "given": ["Ann"]}],
        "gender": "female",
        "birthDate": birth,
    }


def test_update_keeps_versions_for_vread_and_history(client):
    created = post(client, "/fhir/Patient", patient())
    rid = created.json()["id"]
    body = {**patient(family="Roe"), "id": rid}
    assert put(client, f"/fhir/Patient/{rid}", body, HTTP_IF_MATCH='W/"1"').status_code == 200
    assert put(client, f"/fhir/Patient/{rid}", body, HTTP_IF_MATCH='W/"1"').status_code == 412
    v1 = get(client, f"/fhir/Patient/{rid}/_history/1")
    assert v1.status_code == 200 and v1["ETag"] == 'W/"1"' and v1.json()["name"][0]["family"] == "Doe"
    assert get(client, f"/fhir/Patient/{rid}/_history/2").json()["name"][0]["family"] == "Roe"
    assert get(client, f"/fhir/Patient/{rid}/_history/9").status_code == 404
    history = get(client, f"/fhir/Patient/{rid}/_history").json()
    assert history["type"] == "history" and history["total"] == 2
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["2", "1"]
    assert history["entry"][1]["request"] == {"method": "POST", "url": "Patient"}
    assert history["entry"][0]["response"]["status"] == "200 OK"
    assert get(client, "/fhir/Patient/_history").json()["total"] == 2
    assert get(client, "/fhir/_history", {"_since": "2999-01-01"}).json()["total"] == 0
    assert get(client, "/fhir/Patient/nope/_history").status_code == 404


def test_search_parameters_by_kind(client):
    for mrn, family, birth in (("A1", "Alpha", "1950-05-01"), ("B2", "Beta", "1980-07-15")):
        assert post(client, "/fhir/Patient", patient(mrn, family, birth)).status_code == 201

    def total(params):
        response = get(client, "/fhir/Patient", params)
        assert response.status_code == 200, response.content
        return response.json()["total"]

    assert total({"birthdate": "1950"}) == 1
    assert total({"birthdate": "ge1960-01-01"}) == 1
    assert total({"birthdate": "lt1990"}) == 2
    assert total({"birthdate": "1950-05"}) == 1
    assert total({"birthdate": "ne1950-05-01"}) == 1
    assert total({"birthdate": "sa1950-05-01"}) == 1
    assert total({"family": "al"}) == 1 and total({"name": "BET"}) == 1
    assert total({"family:contains": "ph"}) == 1
    assert total({"gender": "female"}) == 2 and total({"gender": "male"}) == 0
    assert total({"identifier": "urn:oid:1.2.3|A1,urn:oid:1.2.3|B2"}) == 2
    assert total({"_lastUpdated": "gt2000-01-01"}) == 2 and total({"_lastUpdated": "lt2000-01-01"}) == 0
    bad = get(client, "/fhir/Patient", {"birthdate": "yesterday"})
    assert bad.status_code == 400 and bad.json()["issue"][0]["expression"] == ["birthdate"]
    assert get(client, "/fhir/Patient", {"birthdate": "ap1950"}).status_code == 400


def test_reference_search_accepts_type_id_bare_id_and_absolute_url(client, settings):
    rid = post(client, "/fhir/Patient", patient()).json()["id"]
    order = {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "subject": {"reference": f"Patient/{rid}"},
        "authoredOn": "2026-11-20T10:00:00+01:00",
    }
    assert post(client, "/fhir/ServiceRequest", order).status_code == 201
    for value in (f"Patient/{rid}", rid, f"{settings.FHIRAI_BASE_URL}/fhir/Patient/{rid}"):
        assert get(client, "/fhir/ServiceRequest", {"patient": value}).json()["total"] == 1
    assert get(client, "/fhir/ServiceRequest", {"subject": "Patient/other"}).json()["total"] == 0
    assert get(client, "/fhir/ServiceRequest", {"authored": "2026-11-20"}).json()["total"] == 1
    assert get(client, "/fhir/ServiceRequest", {"authored": "gt2026-11-21"}).json()["total"] == 0


def test_every_declared_search_parameter_is_accepted_strictly(client):
    statement = get(client, "/fhir/metadata").json()
    get_fhir_model_class("CapabilityStatement").model_validate(statement)
    samples = {"date": "2026", "token": "x", "reference": "x", "string": "x"}
    for resource in statement["rest"][0]["resource"]:
        for param in resource["searchParam"]:
            value = samples[param["type"]]
            response = get(
                client, f"/fhir/{resource['type']}", {param["name"]: value}, HTTP_PREFER="handling=strict"
            )
            assert response.status_code == 200, (resource["type"], param["name"], response.content)
        for include in resource.get("searchInclude", []):
            response = get(
                client, f"/fhir/{resource['type']}", {"_include": include}, HTTP_PREFER="handling=strict"
            )
            assert response.status_code == 200, include


def test_xml_read_create_and_errors(client):
    xml = (
        b'<Patient xmlns="http://hl7.org/fhir"><identifier><system value="urn:oid:1.2.3"/>'
        b'<value value="X1"/></identifier><name><family value="M\xc3\xbcller"/></name>'
        b'<birthDate value="1961-02-03"/></Patient>'
    )
    created = client.post("/fhir/Patient", data=xml, content_type="application/fhir+xml")
    assert created.status_code == 201
    rid = created["Location"].split("/fhir/Patient/")[1].split("/")[0]
    as_json = get(client, f"/fhir/Patient/{rid}").json()
    assert as_json["name"][0]["family"] == "Müller" and as_json["birthDate"] == "1961-02-03"
    for kwargs in ({"HTTP_ACCEPT": "application/fhir+xml"}, {"data": {"_format": "xml"}}):
        response = client.get(f"/fhir/Patient/{rid}", **kwargs)
        assert response["Content-Type"].startswith("application/fhir+xml")
        model = get_fhir_model_class("Patient").model_validate_xml(response.content)
        assert model.name[0].family == "Müller"
    bundle = client.get("/fhir/Patient", {"_format": "xml"})
    assert get_fhir_model_class("Bundle").model_validate_xml(bundle.content).total == 1
    broken = client.post(
        "/fhir/Patient",
        data=b"<Patient xmlns=",
        content_type="application/fhir+xml",
        HTTP_ACCEPT="application/fhir+xml",
    )
    assert broken.status_code == 400 and b"<OperationOutcome" in broken.content
    invalid = client.post(
        "/fhir/Patient",
        data=b'<Patient xmlns="http://hl7.org/fhir"><birthDate value="nope"/></Patient>',
        content_type="application/fhir+xml",
    )
    assert invalid.status_code == 400 and "Patient.birthDate" in invalid.json()["issue"][0]["expression"][0]


def _reported(phantom, settings, client, *, with_context=True):
    """Patient and order from FHIR (as an EHR would send them), then the study through the pipeline."""
    ids = {}
    if with_context:
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "fullUrl": "urn:uuid:11111111-1111-4111-8111-111111111111",
                    "resource": patient("MRN-7734921", "Testperson", "1947-11-03"),
                    "request": {
                        "method": "POST",
                        "url": "Patient",
                        "ifNoneExist": "identifier=urn:oid:1.2.3|MRN-7734921",
                    },
                },
                {
                    "fullUrl": "urn:uuid:22222222-2222-4222-8222-222222222222",
                    "resource": {
                        "resourceType": "ServiceRequest",
                        "identifier": [
                            {
                                "type": {"coding": [{"system": V2_0203, "code": "ACSN"}]},
                                "system": "urn:oid:1.2.4",
                                "value": "ACC-55501",
                            }
                        ],
                        "status": "active",
                        "intent": "order",
                        "code": {
                            "coding": [{"system": "http://loinc.org", "code": "24627-2"}],
                            "text": "CT chest",
                        },
                        "subject": {"reference": "urn:uuid:11111111-1111-4111-8111-111111111111"},
                    },
                    "request": {"method": "POST", "url": "ServiceRequest"},
                },
            ],
        }
        response = post(client, "/fhir/", bundle)
        assert response.status_code == 200, response.content
        locations = [e["response"]["location"] for e in response.json()["entry"]]
        ids = {loc.split("/")[0]: loc.split("/")[1] for loc in locations}
    study = pipeline.run_all(phantom, settings)
    return study, ids


def test_fhir_patient_and_order_drive_the_report_like_hl7(client, phantom, settings, blob_dir):
    study, ids = _reported(phantom, settings, client)
    [report] = FhirResource.objects.filter(resource_type="DiagnosticReport")
    assert report.content["subject"]["reference"] == f"Patient/{ids['Patient']}"
    assert report.content["basedOn"][0]["reference"] == f"ServiceRequest/{ids['ServiceRequest']}"
    assert FhirResource.objects.filter(resource_type="Patient").count() == 1  # no second Patient
    by_order = get(client, "/fhir/DiagnosticReport", {"based-on": f"ServiceRequest/{ids['ServiceRequest']}"})
    assert by_order.json()["total"] == 1
    assert get(client, "/fhir/DiagnosticReport", {"patient": ids["Patient"]}).json()["total"] == 1
    assert get(client, "/fhir/DiagnosticReport", {"date": "1990"}).json()["total"] == 0


def test_fhir_imaging_study_links_a_reported_study_to_its_patient(client, phantom, settings, blob_dir):
    study, _ = _reported(phantom, settings, client, with_context=False)
    [report] = FhirResource.objects.filter(resource_type="DiagnosticReport")
    assert "reference" not in report.content["subject"]  # only the DICOM PatientID so far
    rid = post(client, "/fhir/Patient", patient("MRN-7734921", "Testperson", "1947-11-03")).json()["id"]
    imaging = {
        "resourceType": "ImagingStudy",
        "identifier": [{"type": {"coding": [{"system": V2_0203, "code": "ACSN"}]}, "value": "ACC-55501"}],
        "status": "available",
        "subject": {"reference": f"Patient/{rid}"},
    }
    assert post(client, "/fhir/ImagingStudy", imaging).status_code == 201
    report.refresh_from_db()
    assert report.version_id == 2 and report.content["subject"]["reference"] == f"Patient/{rid}"
    assert TimelineEvent.objects.filter(item_id=study.pk, detail__startswith="ImagingStudy").exists()


def test_task_per_job_and_audit_events(client, phantom, settings, blob_dir):
    _reported(phantom, settings, client)
    [task] = get(client, "/fhir/Task", {"status": "completed"}).json()["entry"]
    content = task["resource"]
    [report] = FhirResource.objects.filter(resource_type="DiagnosticReport")
    assert content["output"][0]["valueReference"]["reference"] == f"DiagnosticReport/{report.rid}"
    assert content["focus"]["reference"].startswith("ImagingStudy/")
    assert content["owner"]["reference"].startswith("Device/")
    history = get(client, f"/fhir/Task/{content['id']}/_history").json()
    assert [e["resource"]["status"] for e in history["entry"]][-1] == "in-progress"
    assert get(client, "/fhir/Task", {"focus": content["focus"]["reference"]}).json()["total"] == 1
    audit = get(client, "/fhir/AuditEvent", {"subtype": "reported"}).json()
    assert audit["total"] == 1
    event = audit["entry"][0]["resource"]
    get_fhir_model_class("AuditEvent").model_validate(event)
    assert get(client, f"/fhir/AuditEvent/{event['id']}").json()["subtype"][0]["code"] == "reported"
    assert get(client, "/fhir/AuditEvent", {"date": "ge2000-01-01", "_count": 2}).json()["total"] > 2
    assert client.post("/fhir/AuditEvent", data="{}", content_type=FHIR).status_code == 405


def test_every_emitted_resource_is_valid_r4_and_the_report_meets_us_core(client, phantom, settings, blob_dir):
    _reported(phantom, settings, client)
    for row in FhirResource.objects.all():
        get_fhir_model_class(row.resource_type).model_validate(row.content)
    [report] = [r.content for r in FhirResource.objects.filter(resource_type="DiagnosticReport")]
    assert_us_core_report_and_note(report)


US_CORE_CATEGORIES = {"LP29684-5", "LP29708-2", "LP7839-6"}  # Radiology, Cardiology, Pathology (LOINC)


def assert_us_core_report_and_note(report: dict) -> None:
    """US Core DiagnosticReport Profile for Report and Note Exchange (STU 6.1/7): the mandatory
    elements and the must-support ones fhirai has data for (encounter: fhirai has none)."""
    assert report["status"] in {
        "registered",
        "partial",
        "preliminary",
        "final",
        "amended",
        "corrected",
        "appended",
        "cancelled",
        "entered-in-error",
        "unknown",
    }
    codings = [c for cat in report["category"] for c in cat["coding"]]
    assert any(c["system"] == "http://loinc.org" and c["code"] in US_CORE_CATEGORIES for c in codings)
    assert any(c["system"] == "http://loinc.org" for c in report["code"]["coding"])  # US Core Report Codes
    assert report["subject"]["reference"].startswith("Patient/")  # US Core Patient
    assert report["effectiveDateTime"] and report["issued"]
    assert report["performer"] and report["performer"][0].get("display")
    assert report["result"] and all(r["reference"].startswith("Observation/") for r in report["result"])
    [form] = report["presentedForm"]
    assert form["contentType"].startswith("text/plain")
    assert report["conclusion"] in base64.b64decode(form["data"]).decode()
    assert system("report") in {i["system"] for i in report["identifier"]}


def test_unknown_type_is_404_and_post_search_reads_the_form(client):
    response = get(client, "/fhir/Medication")
    assert response.status_code == 404 and response.json()["issue"][0]["code"] == "not-supported"
    assert post(client, "/fhir/Medication", {"resourceType": "Medication"}).status_code == 404
    post(client, "/fhir/Patient", patient("F1", "Formsearch"))
    found = client.post(
        "/fhir/Patient/_search", data="family=formsearch", content_type="application/x-www-form-urlencoded"
    )
    assert found.status_code == 200 and found.json()["total"] == 1


def test_xml_transaction_bundle_resolves_references(client):
    xml = b"""<Bundle xmlns="http://hl7.org/fhir"><type value="transaction"/>
      <entry><fullUrl value="urn:uuid:0a1b2c3d-0000-4000-8000-00000000000a"/>
        <resource><Patient><identifier><system value="urn:oid:1.2.3"/><value value="XT-1"/></identifier></Patient></resource>
        <request><method value="POST"/><url value="Patient"/></request></entry>
      <entry><resource><Observation><status value="final"/><code><text value="weight"/></code>
          <subject><reference value="urn:uuid:0a1b2c3d-0000-4000-8000-00000000000a"/></subject>
          <valueQuantity><value value="72.50"/><unit value="kg"/><system value="http://unitsofmeasure.org"/><code value="kg"/></valueQuantity>
        </Observation></resource>
        <request><method value="POST"/><url value="Observation"/></request></entry></Bundle>"""
    response = client.post(
        "/fhir/", data=xml, content_type="application/fhir+xml", HTTP_ACCEPT="application/fhir+xml"
    )
    assert response.status_code == 200 and response["Content-Type"].startswith("application/fhir+xml")
    answer = get_fhir_model_class("Bundle").model_validate_xml(response.content)
    assert answer.type == "transaction-response"
    patient_ref = answer.entry[0].response.location.split("/_history")[0]
    [observation] = get(client, "/fhir/Observation", {"subject": patient_ref}).json()["entry"]
    assert observation["resource"]["valueQuantity"]["value"] == 72.5


def test_database_away_gives_503_and_a_write_is_not_kept_without_its_access_record(client, monkeypatch):
    """A failure of the database mid-request (the real outage is in tests/faults, whose probes read
    and write while PostgreSQL is stopped): FHIR's 503 with Retry-After, never a 500 page, and a
    create whose access record cannot be written is rolled back with it."""
    from django.db import OperationalError

    from integrations.fhir import views

    def gone(*args, **kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(views, "access_record", gone)
    created = post(client, "/fhir/Patient", patient("P-AWAY"))
    assert created.status_code == 503 and created["Retry-After"] == "30"
    assert created.json()["issue"][0]["code"] == "transient"
    assert not FhirResource.objects.filter(resource_type="Patient").exists()
    found = get(client, "/fhir/Patient", {"identifier": "P-AWAY"}, HTTP_ACCEPT="application/fhir+xml")
    assert found.status_code == 503 and found["Content-Type"].startswith("application/fhir+xml")
