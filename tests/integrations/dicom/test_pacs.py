"""Results back into the PACS: a real Orthanc (Debian's package, started by the test) gets the
DICOM SR and the key image of an end-to-end run in the original study by C-STORE from the outbox,
a C-FIND finds them there, and both pass dciodvfy (Debian's dicom3tools). A PACS that is down is retried, not
lost; the console's Test button answers with C-ECHO."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from io import BytesIO

import pytest
from pydicom import dcmread

from fhirai import blobs
from fhirai.results.destinations import destination_probe
from fhirai.results.models import Delivery, DeliveryAttempt
from fhirai.results.writeback import delivery_attempt
from fhirai.routing.models import InferenceJob
from tests.support import pipeline
from tests.support.orthanc import ORTHANC, orthanc_find, orthanc_running
from tests.support.product import free_port

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(not shutil.which(ORTHANC), reason="needs Debian's orthanc package"),
]


@pytest.fixture
def orthanc(tmp_path):
    with orthanc_running(tmp_path) as running:
        yield running


def test_the_sr_lands_in_the_original_study_in_the_pacs_and_validates(
    phantom, settings, blob_dir, orthanc, tmp_path
):
    settings.FHIRAI_FHIR_UPSTREAM_URL = ""
    settings.FHIRAI_PACS_DESTINATIONS = {"PACS": ("ORTHANC", "127.0.0.1", orthanc["dicom"])}
    study = pipeline.run_all(phantom, settings)
    [delivery] = Delivery.objects.all()
    assert delivery.destination == "dicom:PACS"
    delivery_attempt(delivery.pk)
    delivery.refresh_from_db()
    assert delivery.state == "delivered", delivery.last_response
    assert DeliveryAttempt.objects.get().summary.endswith("all stored")

    [found] = orthanc_find(orthanc["dicom"], "STUDY", StudyInstanceUID=study.study_uid, PatientID="")
    assert found.PatientID == study.patient_id  # the original identity, re-identified
    series = orthanc_find(
        orthanc["dicom"], "SERIES", StudyInstanceUID=study.study_uid, Modality="", SeriesInstanceUID=""
    )
    assert sorted(str(s.Modality) for s in series) == ["OT", "SR"]

    job = InferenceJob.objects.get()
    sr_bytes, key_bytes = blobs.get(job.sr_blob_key), blobs.get(job.key_image_blob_key)
    sr, key = dcmread(BytesIO(sr_bytes)), dcmread(BytesIO(key_bytes))
    for made in (sr, key):
        assert made.StudyInstanceUID == study.study_uid and made.PatientName == study.patient_name
    assert key.BurnedInAnnotation == "YES" and "NOT FOR DIAGNOSTIC USE" in key.ImageComments
    assert key.pixel_array.shape == (512, 512, 3)
    with urllib.request.urlopen(f"http://127.0.0.1:{orthanc['http']}/statistics", timeout=5) as answer:
        assert json.load(answer)["CountInstances"] == 2
    if shutil.which("dciodvfy"):  # every object fhirai makes passes Debian's dicom3tools validator
        for name, data in (("sr.dcm", sr_bytes), ("key.dcm", key_bytes)):
            path = tmp_path / name
            path.write_bytes(data)
            check = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
            errors = [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")]
            assert errors == [], name


def test_a_pacs_that_is_down_is_retried_and_the_test_button_echoes(phantom, settings, blob_dir, orthanc):
    settings.FHIRAI_FHIR_UPSTREAM_URL = ""
    settings.FHIRAI_PACS_DESTINATIONS = {"PACS": ("ORTHANC", "127.0.0.1", orthanc["dicom"])}
    assert "answers C-ECHO" in destination_probe("dicom:PACS")
    pipeline.run_all(phantom, settings)
    delivery = Delivery.objects.get()
    settings.FHIRAI_PACS_DESTINATIONS = {"PACS": ("ORTHANC", "127.0.0.1", free_port())}  # nobody there
    delivery_attempt(delivery.pk)
    delivery.refresh_from_db()
    assert delivery.state == "pending" and delivery.attempts == 1
    assert DeliveryAttempt.objects.get().outcome == "unreachable"
    wrong_ae = {"PACS": ("NOT_ORTHANC", "127.0.0.1", orthanc["dicom"])}  # Orthanc checks the called AE
    settings.FHIRAI_PACS_DESTINATIONS = wrong_ae
    Delivery.objects.filter(pk=delivery.pk).update(next_attempt_at=delivery.created_at)
    delivery_attempt(delivery.pk)
    delivery.refresh_from_db()
    assert delivery.state == "failed" and "association rejected" in delivery.last_response
