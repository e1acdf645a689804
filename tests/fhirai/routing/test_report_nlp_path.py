"""The NLP path end to end, in process: an ORU^R01 from the RIS -> its text de-identified -> a job
for the reference NLP model -> medspaCy on the de-identified text only -> coded Observations
(present / absent) with their evidence -> a DiagnosticReport about the real patient."""

from __future__ import annotations

import pytest

from fhirai import blobs
from fhirai.context.messages import messages_process
from fhirai.context.models import ClinicalReport
from fhirai.context.reports import clinical_report_deidentify
from fhirai.ingest.messages import messages_receive
from fhirai.results.models import FhirResource
from fhirai.results.store import resource_read
from fhirai.routing.jobs import job_fail, job_record_result
from fhirai.routing.models import InferenceJob, JobState
from integrations.hl7.handlers import inbound_from
from tests.support.hl7msg import PID, message, msh
from workers.inference.runtime import run_model

pytestmark = pytest.mark.django_db
SCT = "http://snomed.info/sct"


def oru_with_findings(control_id: str = "NLP-1") -> bytes:
    return message(
        msh(control_id, "ORU^R01^ORU_R01"),
        PID,
        "OBR|1|PL-77|FL-88|XRCHEST^XR Chest^L|||20260315083000|||||||||||ACC-9001|||||||F",
        "OBX|1|TX|18782-3^Radiology Study observation^LN||Small right pleural effusion."
        "\\.br\\No pneumothorax. Examplo Berta was seen by Dr Smith.||||||F",
        "OBX|2|TX|19005-8^Impression^LN||Possible consolidation in the left lower lobe.||||||F",
    )


def _report() -> ClinicalReport:
    stored = messages_receive([inbound_from(oru_with_findings(), "127.0.0.1:1")[1]])
    messages_process(up_to=stored[0].message_id)
    return ClinicalReport.objects.get()


def test_report_text_becomes_coded_findings_with_negation(settings, blob_dir):
    report = _report()
    key = clinical_report_deidentify(report.pk)
    job = InferenceJob.objects.get(clinical_report=report, model__name="chest-report-findings")
    assert job.inputs == [key] and job.state == JobState.QUEUED
    # The model reads the de-identified text only: the patient's name never reaches it.
    assert "Examplo" not in blobs.get(key).decode()
    output = run_model(job.model.name, job.model.version, job.inputs)
    by_name = {f["name"]: f for f in output["findings"]}
    assert by_name["pleural effusion"]["present"] is True
    assert by_name["pneumothorax"]["present"] is False and by_name["pneumothorax"]["status"] == "negated"
    assert by_name["consolidation"]["status"] == "uncertain"
    assert output["subject"]["patient_id"] and output["subject"]["patient_id"] != "MRN-4411"
    job_record_result(job.pk, output)
    job.refresh_from_db()
    assert job.state == JobState.DONE and "subject" not in job.result

    dr = FhirResource.objects.get(resource_type="DiagnosticReport").content
    assert dr["status"] == "preliminary" and dr["meta"]["tag"][0]["code"] == "AIAST"
    assert dr["subject"]["reference"].startswith("Patient/")  # the real patient, from the ORU's PID
    values = {}
    for ref in dr["result"]:
        obs = resource_read(*ref["reference"].split("/")).content
        values[obs["code"]["coding"][0]["code"]] = obs["valueCodeableConcept"]["coding"][0]["code"]
        assert any("Evidence:" in n["text"] for n in obs["note"])
    assert values["60046008"] == "52101004"  # pleural effusion: present
    assert values["36118008"] == "2667000"  # pneumothorax: absent
    assert values["95436008"] == "82334004"  # consolidation: indeterminate
    assert "46621007" not in values  # atelectasis: not mentioned, no Observation
    task = FhirResource.objects.get(resource_type="Task").content
    assert task["status"] == "completed" and task["output"][0]["valueReference"]["reference"].endswith(
        dr["id"]
    )


def test_a_result_naming_another_patient_is_refused(settings, blob_dir):
    report = _report()
    clinical_report_deidentify(report.pk)
    job = InferenceJob.objects.get(clinical_report=report)
    job_record_result(job.pk, {"findings": [], "subject": {"patient_id": "P-not-issued-here"}})
    job.refresh_from_db()
    assert job.state == JobState.FAILED and not FhirResource.objects.filter(resource_type="DiagnosticReport")


def test_a_failed_nlp_job_is_visible_on_the_message(settings, blob_dir):
    from fhirai.audit.timeline import events_for

    report = _report()
    clinical_report_deidentify(report.pk)
    job = InferenceJob.objects.get(clinical_report=report)
    job_fail(job.pk, "no narrative text")
    job.refresh_from_db()
    assert job.state == JobState.FAILED
    assert any(e.event == "failed" for e in events_for("message", report.message_id))
    task = FhirResource.objects.get(resource_type="Task").content
    assert task["status"] == "failed" and task["statusReason"]["text"] == "no narrative text"


def test_a_fhir_diagnostic_report_from_the_ehr_is_read_too(settings, blob_dir):
    import base64

    from fhirai.ingest.fhir import fhir_create, fhir_update

    fhir_update(
        "Patient",
        "pat-1",
        {
            "resourceType": "Patient",
            "id": "pat-1",
            "identifier": [{"system": "urn:oid:1.2.3.4", "value": "MRN-5150"}],
            "name": [{"family": "Quorvath", "given": ["Ilse"]}],
            "birthDate": "1950-02-03",
        },
    )
    text = "Chest radiograph. Ilse Quorvath, MRN-5150.\nNo pleural effusion. Mild cardiomegaly."
    row, _ = fhir_create(
        {
            "resourceType": "DiagnosticReport",
            "status": "final",
            "code": {"text": "XR chest"},
            "subject": {"reference": "Patient/pat-1"},
            "presentedForm": [
                {"contentType": "text/plain", "data": base64.b64encode(text.encode()).decode()}
            ],
        }
    )
    clinical = ClinicalReport.objects.get(resource=row)
    assert clinical.patient is not None and clinical.patient.mrn == "MRN-5150"
    key = clinical_report_deidentify(clinical.pk)
    deid = blobs.get(key).decode()
    assert "Quorvath" not in deid and "5150" not in deid and "pat-1" not in deid
    job = InferenceJob.objects.get(clinical_report=clinical)
    output = run_model(job.model.name, job.model.version, job.inputs)
    by_name = {f["name"]: f for f in output["findings"]}
    assert by_name["cardiomegaly"]["present"] and by_name["pleural effusion"]["status"] == "negated"
    job_record_result(job.pk, output)
    job.refresh_from_db()
    assert job.state == JobState.DONE, job.error
    ours = [
        r.content
        for r in FhirResource.objects.filter(resource_type="DiagnosticReport")
        if r.content.get("meta", {}).get("tag")
    ]
    assert len(ours) == 1 and ours[0]["subject"]["reference"] == "Patient/pat-1"
    # fhirai's own AI report is not read back as a clinical report.
    assert ClinicalReport.objects.count() == 1
    # A result naming another patient is refused.
    other = ClinicalReport.objects.create(
        resource=row, resource_version=99, text="x", received_at=clinical.received_at, deid_blob_key=key
    )
    job2 = InferenceJob.objects.create(
        clinical_report=other, model=job.model, revision=1, inputs=[key], dispatched_at=job.dispatched_at
    )
    job_record_result(job2.pk, {"findings": [], "subject": {"patient_ref": "Patient/someone-else"}})
    job2.refresh_from_db()
    assert job2.state == JobState.FAILED
