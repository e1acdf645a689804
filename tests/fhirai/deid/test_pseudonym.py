from __future__ import annotations

from fhirai.deid.pseudonym import pseudonym, uid_remap


def test_pseudonym_is_consistent_per_site_and_keyed(settings):
    a = pseudonym("patient-id", "MRN-1", prefix="P")
    assert a == pseudonym("patient-id", "MRN-1", prefix="P")
    assert a != pseudonym("patient-id", "MRN-2", prefix="P")
    assert a != pseudonym("accession", "MRN-1", prefix="P")
    settings.FHIRAI_DEID_SECRET = "another site"
    assert a != pseudonym("patient-id", "MRN-1", prefix="P")
    assert len(a) <= 16 and a.startswith("P")


def test_uid_remap_keeps_dicom_uids_and_makes_valid_consistent_uids(settings):
    assert uid_remap("1.2.840.10008.5.1.4.1.1.2") == "1.2.840.10008.5.1.4.1.1.2"
    new = uid_remap("1.2.3.4.5")
    assert new == uid_remap("1.2.3.4.5") and new != uid_remap("1.2.3.4.6")
    assert new.startswith("2.25.") and len(new) <= 64
    assert all(part == "0" or not part.startswith("0") for part in new.split("."))
    settings.FHIRAI_DEID_UID_ROOT = "1.2.826.0.1.3680043.10.999.123456789"
    assert len(uid_remap("1.2.3.4.5")) <= 64
