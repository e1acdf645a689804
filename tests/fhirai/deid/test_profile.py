from __future__ import annotations

from io import BytesIO

import pytest
from pydicom import dcmread

from fhirai.deid.profile import dataset_deidentify, patient_pseudonym
from fhirai.deid.pseudonym import uid_remap

pytestmark = pytest.mark.django_db  # the site profile is read from the database


def test_basic_profile_leaves_no_identifier_in_the_bytes(phantom):
    out, used = dataset_deidentify(phantom.files[0])
    for keyword, value in phantom.identifiers.items():
        assert value.encode() not in out, keyword
    for part in ("Testperson", "Alma", "Rita", "19471103", "MRN-7734921"):
        assert part.encode() not in out
    ds = dcmread(BytesIO(out))
    assert ds.PatientIdentityRemoved == "YES"
    assert ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert ds.PatientID == used.patient == patient_pseudonym("MRN-7734921")
    assert "OtherPatientIDs" not in ds and "InstitutionName" not in ds and "ReferringPhysicianName" in ds
    assert not any(elem.tag.is_private for elem in ds)


def test_basic_profile_remaps_uids_consistently_and_keeps_pixels(phantom):
    out_a, _ = dataset_deidentify(phantom.files[0])
    out_b, _ = dataset_deidentify(phantom.files[1])
    a, b = dcmread(BytesIO(out_a)), dcmread(BytesIO(out_b))
    original = dcmread(BytesIO(phantom.files[0]))
    assert a.StudyInstanceUID == b.StudyInstanceUID == uid_remap(original.StudyInstanceUID)
    assert a.SOPInstanceUID != original.SOPInstanceUID
    assert a.file_meta.MediaStorageSOPInstanceUID == a.SOPInstanceUID
    assert a.SOPClassUID == original.SOPClassUID  # a DICOM standard UID: kept
    assert (
        a.ReferencedImageSequence[0].ReferencedSOPInstanceUID
        != original.ReferencedImageSequence[0].ReferencedSOPInstanceUID
    )
    assert a.PixelData == original.PixelData
    assert a.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
