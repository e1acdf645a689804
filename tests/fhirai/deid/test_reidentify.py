"""Re-identification: results come back naming pseudonyms only; the write-back stage maps them
through the vault, checks they are the job's study, and nothing but the vault keeps the mapping."""

from __future__ import annotations

import json
from io import BytesIO

import pytest
from django.apps import apps
from django.core import serializers
from pydicom import dcmread

from fhirai import blobs
from fhirai.deid.models import VaultAccess, VaultEntry
from fhirai.ingest.models import Study, StudyState
from fhirai.results.models import FhirResource
from fhirai.routing.jobs import job_record_result
from fhirai.routing.models import InferenceJob, JobState
from tests.support import pipeline

pytestmark = pytest.mark.django_db


def _pseudonyms(job: InferenceJob) -> tuple[str, str]:
    ds = dcmread(BytesIO(blobs.get(job.inputs[0])))
    return str(ds.StudyInstanceUID), str(ds.PatientID)


def test_report_carries_the_originals_and_only_the_vault_maps_them(phantom, settings, blob_dir):
    study = pipeline.run_all(phantom, settings)
    job = InferenceJob.objects.get()
    study_pseudonym, patient_pseudonym = _pseudonyms(job)
    assert study_pseudonym != phantom.identifiers["StudyInstanceUID"]
    [report] = FhirResource.objects.filter(resource_type="DiagnosticReport")
    assert report.content["imagingStudy"][0]["identifier"]["value"] == f"urn:oid:{study.study_uid}"
    assert report.content["subject"]["identifier"]["value"] == "MRN-7734921"
    assert VaultAccess.objects.filter(purpose="write-back", pseudonym=study_pseudonym).exists()
    everything = []
    for model in apps.get_models():
        if model in (VaultEntry, VaultAccess):
            continue  # the vault (originals sealed) and its audit (pseudonyms only)
        everything.append(serializers.serialize("json", model.objects.all()))
    dump = json.dumps(everything)
    assert study_pseudonym not in dump and patient_pseudonym not in dump


def test_a_result_about_another_study_is_refused(phantom, settings, blob_dir):
    study = pipeline.receive(phantom)
    job = pipeline.complete_and_deidentify(study, settings)
    output = pipeline.infer(job)
    output["subject"]["study_uid"] = "2.25.1234"  # not this study's pseudonym
    job_record_result(job.pk, output)
    job.refresh_from_db()
    study.refresh_from_db()
    assert job.state == JobState.FAILED and study.state == StudyState.FAILED
    assert not FhirResource.objects.filter(resource_type="DiagnosticReport").exists()
    assert Study.objects.get().error.startswith(f"job {job.pk}:")
