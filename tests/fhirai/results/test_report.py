from __future__ import annotations

import pytest
from fhir.resources.R4B.diagnosticreport import DiagnosticReport

from fhirai.ingest.models import StudyState
from fhirai.results.models import FhirResource
from fhirai.results.store import resource_read
from fhirai.routing.jobs import job_record_result
from fhirai.routing.models import InferenceJob, JobState
from tests.support import pipeline

pytestmark = pytest.mark.django_db


def test_report_carries_the_models_values_for_the_original_patient_and_study(phantom, settings, blob_dir):
    study = pipeline.run_all(phantom, settings)
    assert study.state == StudyState.REPORTED
    report = FhirResource.objects.get(resource_type="DiagnosticReport").content
    DiagnosticReport.model_validate(report)
    # IHE AI Results: preliminary until a clinician reviews it (the default policy), marked AI-asserted.
    assert report["status"] == "preliminary"
    assert {"code": "AIAST"}.items() <= report["meta"]["tag"][0].items()
    assert report["subject"]["identifier"]["value"] == "MRN-7734921"
    assert (
        report["imagingStudy"][0]["identifier"]["value"]
        == f"urn:oid:{phantom.identifiers['StudyInstanceUID']}"
    )
    assert {c["code"] for c in report["category"][0]["coding"]} == {"RAD", "LP29684-5"}
    assert report["effectiveDateTime"].startswith("2026-03-15T08:30:00")
    values = {}
    for ref in report["result"]:
        obs = resource_read(*ref["reference"].split("/")).content
        assert obs["subject"] == report["subject"] and obs["device"]["reference"].startswith("Device/")
        assert obs["status"] == "preliminary" and obs["meta"]["tag"][0]["code"] == "AIAST"
        values[obs["valueQuantity"]["code"]] = obs["valueQuantity"]["value"]
    assert values["mL"] == pytest.approx(phantom.lung_volume_ml, rel=0.02)
    assert values["%"] == pytest.approx(phantom.laa950_pct, abs=0.5)
    device = FhirResource.objects.get(resource_type="Device").content
    assert device["version"][0]["value"] == "1.0.0"
    provenance = FhirResource.objects.get(resource_type="Provenance").content
    assert provenance["target"][0]["reference"] == f"DiagnosticReport/{report['id']}"
    assert provenance["agent"][0]["who"]["reference"] == f"Device/{device['id']}"


def test_a_result_delivered_twice_makes_one_report_version(phantom, settings, blob_dir):
    study = pipeline.run_all(phantom, settings)
    job = InferenceJob.objects.get(study=study)
    assert job.state == JobState.DONE
    job_record_result(job.pk, job.result)
    assert FhirResource.objects.filter(resource_type="DiagnosticReport").count() == 1
    assert FhirResource.objects.get(resource_type="DiagnosticReport").version_id == 1


def test_resending_a_reported_study_creates_no_new_job(phantom, settings, blob_dir):
    study = pipeline.run_all(phantom, settings)
    again = pipeline.receive(phantom)
    assert again.pk == study.pk and again.state == StudyState.REPORTED
    assert InferenceJob.objects.count() == 1


def test_a_site_whose_policy_lets_ai_results_stand_gets_final_reports(phantom, settings, blob_dir):
    settings.FHIRAI_AI_REPORT_STATUS = "final"
    pipeline.run_all(phantom, settings)
    report = FhirResource.objects.get(resource_type="DiagnosticReport").content
    assert report["status"] == "final" and report["meta"]["tag"][0]["code"] == "AIAST"


def test_a_dicom_sr_is_built_for_the_real_study_when_the_site_asks(phantom, settings, blob_dir):
    from io import BytesIO

    from pydicom import dcmread

    from fhirai import blobs

    settings.FHIRAI_DICOM_SR = True
    study = pipeline.run_all(phantom, settings)
    job = InferenceJob.objects.get(study=study)
    assert job.sr_blob_key.startswith("out/")
    sr = dcmread(BytesIO(blobs.get(job.sr_blob_key)))
    assert sr.StudyInstanceUID == phantom.identifiers["StudyInstanceUID"]  # re-identified: the real study
    assert sr.PatientID == "MRN-7734921" and sr.VerificationFlag == "UNVERIFIED"
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
