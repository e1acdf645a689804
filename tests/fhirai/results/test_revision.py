"""A late instance after completion revises the result: the study runs again as revision 2, the
DiagnosticReport becomes amended (with final AI reports) and the new DICOM SR names the one it
replaces in its PredecessorDocumentsSequence; the key image is rebuilt under its stable UID."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from fhirai import blobs
from fhirai.ingest.models import Study
from fhirai.ingest.receive import instance_receive
from fhirai.results.models import FhirResource
from fhirai.routing.jobs import job_record_result
from fhirai.routing.models import InferenceJob
from tests.support import pipeline

pytestmark = pytest.mark.django_db


def test_a_late_instance_amends_the_report_and_the_sr_names_its_predecessor(phantom, settings, blob_dir):
    settings.FHIRAI_DICOM_SR = True
    settings.FHIRAI_AI_REPORT_STATUS = "final"
    study = pipeline.run_all(phantom, settings)
    first = InferenceJob.objects.get()
    sr1 = dcmread(BytesIO(blobs.get(first.sr_blob_key)))

    late = dcmread(BytesIO(phantom.files[-1]))
    late.SOPInstanceUID = generate_uid()
    late.file_meta.MediaStorageSOPInstanceUID = late.SOPInstanceUID
    late.InstanceNumber = len(phantom.files) + 1
    out = BytesIO()
    late.save_as(out, enforce_file_format=True)
    instance_receive(raw=out.getvalue(), calling_ae="TESTSCU")
    study.refresh_from_db()
    assert study.revision == 2 and study.state == "receiving"
    job = pipeline.complete_and_deidentify(study, settings)
    assert job.revision == 2
    job_record_result(job.pk, pipeline.infer(job))

    job.refresh_from_db()
    sr2 = dcmread(BytesIO(blobs.get(job.sr_blob_key)))
    [predecessor] = sr2.PredecessorDocumentsSequence
    referenced = predecessor.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert referenced.ReferencedSOPInstanceUID == sr1.SOPInstanceUID
    assert sr2.SOPInstanceUID != sr1.SOPInstanceUID and sr2.InstanceNumber == 2
    report = FhirResource.objects.get(resource_type="DiagnosticReport", study=study)
    assert report.content["status"] == "amended" and report.version_id >= 2
    key1, key2 = first.key_image_blob_key, job.key_image_blob_key
    assert key1 and key2 and key1 != key2
    assert Study.objects.get(pk=study.pk).state == "reported"
