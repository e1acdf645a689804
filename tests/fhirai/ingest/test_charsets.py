"""Specific Character Sets (PS3.5 6.1) through receive, de-identification and DICOMweb: every
file of pydicom's character-set test set is kept as sent, its names are read in its own
character set (ISO 8859 parts, ISO 2022 with Japanese and Korean escapes, UTF-8, GB18030), and the
de-identified copy keeps the Specific Character Set and still decodes."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom import dcmread

from fhirai import blobs
from fhirai.assembly.complete import study_mark_complete
from fhirai.deid.study import study_deidentify
from fhirai.ingest.models import Instance, Study
from fhirai.ingest.receive import instance_receive

pytestmark = pytest.mark.django_db
CHARSETS = Path(pydicom.__file__).parent / "data" / "charset_files"
FILES = sorted(
    p.name
    for p in CHARSETS.glob("chr*.dcm")
    if dcmread(p, stop_before_pixels=True).get("StudyInstanceUID")  # two are sequence-only fragments
)


def test_the_test_set_is_all_here():
    assert len(FILES) >= 15 and {"chrH31.dcm", "chrI2.dcm", "chrX1.dcm", "chrX2.dcm", "chrArab.dcm"} <= set(
        FILES
    )


@pytest.mark.parametrize("name", FILES)
def test_names_are_read_in_the_files_character_set_and_survive_deidentification(
    name, settings, blob_dir, monkeypatch
):
    raw = (CHARSETS / name).read_bytes()
    original = dcmread(BytesIO(raw))
    instance_receive(raw=raw, calling_ae="CHARSETS")
    study = Study.objects.get()
    assert study.patient_name == str(original.PatientName)
    stored = Instance.objects.get()
    assert blobs.get(stored.blob_key) == raw  # kept as sent, byte for byte
    settings.FHIRAI_STUDY_QUIET_SECONDS = 0
    # Most of these are Secondary Capture, which the pixel rule withholds (burned-in text risk);
    # the header's character set is what is tested here.
    monkeypatch.setattr("fhirai.deid.profile.at_risk", lambda ds: False)
    assert study_mark_complete(study.pk, revision=study.revision)
    study_deidentify(study.pk)
    stored.refresh_from_db()
    deid = dcmread(BytesIO(blobs.get(stored.deid_blob_key)))
    assert deid.get("SpecificCharacterSet") == original.get("SpecificCharacterSet")
    assert str(deid.PatientName) != str(original.PatientName)
    for element in deid.iterall():  # every text element still decodes in the kept character set
        if element.VR in ("PN", "LO", "SH", "ST", "LT", "UT", "UC"):
            str(element.value)


def test_dicomweb_answers_names_in_unicode(client, blob_dir):
    for name in ("chrH31.dcm", "chrX2.dcm"):
        instance_receive(raw=(CHARSETS / name).read_bytes(), calling_ae="CHARSETS")
    found = {
        row["00100010"]["Value"][0]["Alphabetic"]
        for row in client.get("/dicomweb/studies", {"PatientName": "*"}).json()
    }
    assert "Yamada^Tarou=山田^太郎=やまだ^たろう" in found and "Wang^XiaoDong=王^小东" in found
