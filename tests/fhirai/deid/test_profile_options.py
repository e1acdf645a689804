"""The PS3.15 E.3 options against the action table: each option changes exactly its attributes,
sequences are walked, private attributes go unless safelisted, and the method codes record it."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from fhirai.deid.profile import OPTIONS, DeidProfile, dataset_deidentify, date_shift_days, patient_pseudonym
from fhirai.deid.pseudonym import uid_remap


@pytest.fixture(scope="module")
def rich(phantom) -> bytes:
    """A phantom slice with the attributes each option is about."""
    ds = dcmread(BytesIO(phantom.files[0]))
    ds.PatientAge, ds.PatientSex, ds.PatientWeight, ds.SmokingStatus = "078Y", "F", "61", "NO"
    ds.StudyDescription = "CT chest for Alma Testperson MRN-7734921"
    ds.SeriesDescription = "Lung 1mm"
    ds.ImageComments = "Called 555-201-3344, spoke to Rita Referrer"
    ds.StudyDate, ds.SeriesDate, ds.StudyTime = "20241105", "20241105", "101500"
    ds.AcquisitionDateTime = "20241105101612.5"
    ds.PatientBirthDate = "19471103"
    ds.PatientTelephoneNumbers = "555-201-3344"
    ds.DeviceSerialNumber, ds.StationName = "SN-4471", "CTROOM7"
    ds.InstitutionName = "Saint Example Hospital"
    block = ds.private_block(0x0029, "ACME 1.0", create=True)
    block.add_new(0x10, "LO", "kept dose value")
    block.add_new(0x11, "LO", "Testperson private note")
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.2.1125.9"
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    item.PerformingPhysicianName = "Doctor^Who"
    item.StudyDate = "20241105"
    ds.ReferencedStudySequence = Sequence([Dataset()])
    ds.SourceImageSequence = Sequence([item])
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def deid(raw: bytes, *options: str, safelist=()) -> Dataset:
    profile = DeidProfile(
        name="test", version="7", options=frozenset(options), private_safelist=frozenset(safelist)
    )
    out, _ = dataset_deidentify(raw, profile=profile)
    return dcmread(BytesIO(out))


def codes(ds: Dataset) -> list[str]:
    return [c.CodeValue for c in ds.DeidentificationMethodCodeSequence]


def test_basic_profile_without_options(rich):
    ds = deid(rich)
    assert codes(ds) == ["113100"] and ds.DeidentificationMethod.startswith("fhirai test v7")
    for keyword in ("PatientAge", "PatientWeight", "SmokingStatus", "StudyDescription", "SeriesDescription",
                    "ImageComments", "DeviceSerialNumber", "StationName", "InstitutionName", "SeriesDate",
                    "AcquisitionDateTime", "PatientTelephoneNumbers", "ReferencedStudySequence"):  # fmt: skip
        assert keyword not in ds, keyword  # X
    assert ds.StudyDate == "" and ds.PatientSex == "" and ds.PatientBirthDate == ""  # Z
    assert not any(e.tag.is_private for e in ds)
    [item] = ds.SourceImageSequence  # sequences walked: PN removed, UIDs remapped, standard UIDs kept
    assert "PerformingPhysicianName" not in item
    assert item.ReferencedSOPInstanceUID == uid_remap("1.2.826.0.1.3680043.2.1125.9")
    assert item.ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert "LongitudinalTemporalInformationModified" not in ds


def test_retain_patient_characteristics(rich):
    ds = deid(rich, "retain-patient-characteristics")
    assert (ds.PatientAge, ds.PatientSex, ds.PatientWeight, ds.SmokingStatus) == ("078Y", "F", 61, "NO")
    assert ds.PatientBirthDate == "" and "113108" in codes(ds)


def test_clean_descriptors_keeps_text_without_the_identifiers(rich):
    ds = deid(rich, "clean-descriptors")
    assert "113105" in codes(ds)
    assert ds.SeriesDescription == "Lung 1mm"
    assert ds.StudyDescription.startswith("CT chest for")
    for leaked in ("Alma", "Testperson", "7734921"):
        assert leaked not in ds.StudyDescription
    assert "555" not in ds.ImageComments and "Rita" not in ds.ImageComments


def test_retain_longitudinal_with_modified_dates(rich):
    ds = deid(rich, "retain-longitudinal-modified-dates")
    shift = date_shift_days(patient_pseudonym("MRN-7734921"))
    assert -3650 <= shift <= -1 and "113107" in codes(ds)
    from datetime import date, timedelta

    moved = (date(2024, 11, 5) + timedelta(days=shift)).strftime("%Y%m%d")
    assert ds.StudyDate == ds.SeriesDate == moved
    assert ds.AcquisitionDateTime == moved + "101612.5" and ds.StudyTime == "101500"
    assert ds.SourceImageSequence[0].StudyDate == moved
    assert ds.PatientBirthDate == "" and ds.LongitudinalTemporalInformationModified == "MODIFIED"


def test_retain_uids(rich):
    ds = deid(rich, "retain-uids")
    original = dcmread(BytesIO(rich))
    assert ds.StudyInstanceUID == original.StudyInstanceUID and ds.SOPInstanceUID == original.SOPInstanceUID
    assert "113110" in codes(ds)


def test_retain_device_and_institution_identity(rich):
    ds = deid(rich, "retain-device-identity", "retain-institution-identity")
    assert ds.DeviceSerialNumber == "SN-4471" and ds.StationName == "CTROOM7"
    assert ds.InstitutionName == "Saint Example Hospital"
    assert {"113109", "113112"} <= set(codes(ds))


def test_retain_safe_private_keeps_only_the_safelisted_element(rich):
    ds = deid(rich, "retain-safe-private", safelist=[("ACME 1.0", 0x0029, 0x10)])
    private = {e.tag: e.value for e in ds if e.tag.is_private}
    assert "kept dose value" in private.values() and "ACME 1.0" in private.values()
    assert "Testperson private note" not in private.values()
    assert "113111" in codes(ds)


def test_every_option_is_known_and_unknown_ones_are_refused():
    assert len(OPTIONS) == 8
    with pytest.raises(ValueError):
        DeidProfile(options=frozenset({"retain-everything"}))
