"""The item page's side-by-side diff: what fhirai's own de-identification changed, row by row."""

from __future__ import annotations

import copy
import json
import warnings
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from django.utils import timezone
from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from fhirai import blobs
from fhirai.context.models import ClinicalReport
from fhirai.deid.fhir import resource_deidentify
from fhirai.deid.hl7v2 import message_deidentify
from fhirai.deid.profile import DeidProfile, dataset_deidentify
from fhirai.ingest.models import Instance, Message
from fhirai.results.models import FhirResource
from fhirai.routing.rules import WITHHELD
from fhirai.ui.diff import DiffRow, dicom_diff, fhir_diff, hl7_diff, instance_diff, message_diff, report_diff
from tests.support import pipeline
from tests.support.hl7msg import adt, message, msh

TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"  # shipped with pydicom: no download


def by_path(rows: list[DiffRow]) -> dict[str, DiffRow]:
    return {row.path: row for row in rows}


def by_name(rows: list[DiffRow]) -> dict[str, DiffRow]:
    return {row.name: row for row in rows if " > " not in row.path}


def read(data: bytes) -> Dataset:
    return dcmread(BytesIO(data))


def test_fhirai_deidentified_ct_shows_replaced_removed_kept(phantom):
    raw = phantom.files[0]
    deid, _ = dataset_deidentify(raw, profile=DeidProfile())
    rows = dicom_diff(read(raw), read(deid))
    names, paths = by_name(rows), by_path(rows)

    assert names["PatientName"].change == "replaced"
    assert names["PatientName"].raw == "Testperson^Alma^Q"
    assert names["PatientName"].vr == "PN"
    assert names["InstitutionName"].change == "removed" and names["InstitutionName"].deid == ""
    assert names["Modality"].change == "kept" and names["Modality"].raw == names["Modality"].deid == "CT"
    assert names["PatientIdentityRemoved"].change == "added" and names["PatientIdentityRemoved"].raw == ""
    # The private element, named by its creator, and the creator itself are gone.
    private = paths["(0009,1010)"]
    assert private.change == "removed" and private.name.startswith("[EXAMPLE VENDOR]")
    assert private.raw == f"private {phantom.identifiers['PatientID']}"
    assert paths["(0009,0010)"].change == "removed"
    # Pixel data untouched: summarised by length and digest, the same on both sides.
    pixels = names["PixelData"]
    assert pixels.change == "kept" and pixels.raw.startswith("<18432 bytes, sha256 ")
    # File meta first; sequence items recursed (the referenced UID is remapped).
    assert rows[0].path.startswith("(0002,")
    assert names["MediaStorageSOPInstanceUID"].change == "replaced"
    ref = paths["(0008,1140)[0] > (0008,1155)"]
    assert ref.name == "ReferencedSOPInstanceUID" and ref.change == "replaced"
    assert paths["(0008,1140)"].raw == "<1 item>"


def test_rows_are_ordered_by_tag_within_meta_and_dataset(phantom):
    raw = phantom.files[0]
    deid, _ = dataset_deidentify(raw, profile=DeidProfile())
    top = [r.path for r in dicom_diff(read(raw), read(deid)) if " > " not in r.path]
    meta = [p for p in top if p.startswith("(0002,")]
    rest = top[len(meta) :]
    assert top[: len(meta)] == meta
    assert rest == sorted(rest) and meta == sorted(meta)


def test_cleaned_pixels_show_replaced(phantom):
    raw = read(phantom.files[0])
    cleaned = copy.deepcopy(raw)
    pixels = bytearray(cleaned.PixelData)
    pixels[:200] = bytes(200)  # text painted over
    cleaned.PixelData = bytes(pixels)
    row = by_name(dicom_diff(raw, cleaned))["PixelData"]
    assert row.change == "replaced" and row.raw != row.deid and row.deid.startswith("<18432 bytes")


def test_overlay_data_is_summarised_and_its_removal_shown():
    raw = dcmread(TEST_FILES / "examples_overlay.dcm")
    deid = copy.deepcopy(raw)
    del deid[0x60003000]
    row = by_path(dicom_diff(raw, deid))["(6000,3000)"]
    assert row.change == "removed" and row.raw.startswith("<") and "bytes, sha256" in row.raw


def test_long_values_are_truncated(phantom):
    raw = read(phantom.files[0])
    deid = copy.deepcopy(raw)
    raw.ImageComments = "x" * 500
    row = by_name(dicom_diff(raw, deid))["ImageComments"]
    assert len(row.raw) <= 120 and row.raw.endswith("…") and row.change == "removed"


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns while the bad file is written
def test_bad_values_and_undecodable_charsets_never_raise(caplog):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 999"  # no such character set
    for tag, vr, value in [  # written as raw bytes: pydicom would refuse to build them
        (0x00100010, "PN", b"\xff\xfe\x00Bad^Name"),
        (0x00200013, "IS", b"1A"),
        (0x00280030, "DS", b"not-a-number"),
        (0x00080020, "DA", b"2026-13-45"),
        (0x00181030, "LO", b"\x1b$B\xff\xff\x1b(B "),
    ]:
        ds[tag] = RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    raw = read(out.getvalue())
    caplog.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = dicom_diff(raw, Dataset())
    # pydicom's warnings quote the bad value (PHI): none may reach the logs.
    assert not caught and not [r for r in caplog.records if r.name.startswith("pydicom")]
    assert {r.change for r in rows} == {"removed"}
    assert by_name(rows)["InstanceNumber"].raw == "1A"
    assert "PatientName" in by_name(rows)


@pytest.mark.parametrize(
    "name", sorted(p.name for p in TEST_FILES.glob("*.dcm")) or ["(pydicom test files missing)"]
)
def test_any_pydicom_test_file_diffs_against_itself_as_kept(name):
    path = TEST_FILES / name
    if not path.exists():
        pytest.skip("pydicom's shipped test files are not installed")
    try:
        ds = dcmread(path, force=True)
    except Exception as exc:  # noqa: BLE001 - a file pydicom cannot parse is not the diff's concern
        pytest.skip(f"pydicom cannot read {name}: {type(exc).__name__}")
    rows = dicom_diff(ds, copy.deepcopy(ds))
    assert all(r.change == "kept" for r in rows)
    assert all(isinstance(v, str) for r in rows for v in (r.path, r.name, r.vr, r.raw, r.deid))


def test_hl7_diff_of_fhirai_deidentified_adt():
    raw = adt("DIFF-1").decode()
    deid = message_deidentify(raw, DeidProfile()).message
    rows = by_path(hl7_diff(raw, deid))
    assert rows["PID-5"].change == "removed" and rows["PID-5"].raw == "Examplo^Berta^M"
    assert rows["PID-3"].change == "replaced"
    assert rows["PID-3"].raw == "MRN-4411^^^HOSP^MR~998877^^^SSA^SS"
    assert rows["PID-3"].deid.endswith("^^^HOSP^MR~" + rows["PID-3"].deid.split("~")[1])
    assert rows["MSH-9"].change == "kept" and rows["MSH-9"].raw == "ADT^A01^ADT_A01"
    assert rows["PID-7"].change == "replaced" and rows["PID-7"].deid == "1961"


def test_hl7_diff_replaced_field_and_repeated_segments():
    raw = message(
        msh("DIFF-2", "ORU^R01"),
        "PID|1||MRN-1||Examplo^Berta",
        "OBX|1|ST|code||first",
        "OBX|2|ST|code||second",
        "NTE|1||note",
    ).decode()
    deid = message(
        msh("DIFF-2", "ORU^R01"),
        "PID|1||P123||REPLACED^NAME",
        "OBX|1|ST|code||first",
        "OBX|2|ST|code||[NAME] second",
        "ZZZ|1|extra",
    ).decode()
    rows = hl7_diff(raw, deid)
    paths = by_path(rows)
    assert paths["PID-5"].change == "replaced" and paths["PID-5"].deid == "REPLACED^NAME"
    assert paths["PID-5"].name == "PID-5"
    assert paths["OBX[1]-5"].change == "kept"
    assert paths["OBX[2]-5"].change == "replaced" and paths["OBX[2]-5"].vr == "ST"
    assert paths["OBX[2]-5"].name == "OBX-5"
    assert paths["NTE-3"].change == "removed" and paths["NTE-1"].change == "removed"
    assert paths["ZZZ-2"].change == "added"
    order = [r.path for r in rows]
    assert order.index("MSH-9") < order.index("PID-5") < order.index("OBX[2]-5") < order.index("ZZZ-2")


def test_fhir_diff_of_fhirai_deidentified_report():
    raw = {
        "resourceType": "DiagnosticReport",
        "id": "rep-1",
        "status": "final",
        "identifier": [{"system": "urn:oid:1.2.3", "value": "ACC-9001"}],
        "subject": {"reference": "Patient/pat-1", "display": "Berta Examplo"},
        "code": {"coding": [{"system": "http://loinc.org", "code": "18782-3"}]},
    }
    deid = resource_deidentify(raw, DeidProfile())
    rows = by_path(fhir_diff(raw, deid))
    assert rows["identifier[0].value"].change == "replaced"
    assert rows["identifier[0].value"].name == "identifier.value"
    assert rows["identifier[0].system"].change == "kept"
    assert rows["subject.display"].change == "removed"
    assert rows["subject.reference"].change == "replaced" and rows["subject.reference"].raw == "Patient/pat-1"
    assert rows["code.coding[0].code"].change == "kept" and rows["status"].vr == "string"


def test_fhir_diff_shows_added_leaves_after_their_neighbour():
    rows = fhir_diff({"a": 1, "c": {"d": True}}, {"a": 1, "b": [], "c": {"d": None}})
    assert [(r.path, r.change) for r in rows] == [("a", "kept"), ("b", "added"), ("c.d", "replaced")]
    assert rows[2].raw == "true" and rows[2].deid == "null"


@pytest.mark.django_db
def test_instance_diff_pending_then_compared(phantom, settings, blob_dir):
    study = pipeline.receive(phantom)
    instance = study.instances.order_by("id").first()
    pending = instance_diff(instance)
    assert pending and {r.change for r in pending} == {"pending"} and {r.deid for r in pending} == {""}
    pipeline.complete_and_deidentify(study, settings)
    instance.refresh_from_db()
    assert instance.deid_blob_key
    rows = by_name(instance_diff(instance))
    assert rows["PatientName"].change == "replaced" and rows["PixelData"].change == "kept"
    Instance.objects.filter(pk=instance.pk).update(deid_blob_key=WITHHELD)
    instance.refresh_from_db()
    assert {r.change for r in instance_diff(instance)} == {"withheld"}


def _message(raw: bytes) -> Message:
    return Message.objects.create(
        sender="RIS^HOSP",
        control_id="DIFF-M1",
        message_type="ORU^R01",
        version="2.5.1",
        codec="utf-8",
        raw=raw,
        received_at=timezone.now(),
    )


@pytest.mark.django_db
def test_message_diff_deidentifies_in_memory_without_storing(blob_dir):
    row = _message(adt("DIFF-M1"))
    rows = by_path(message_diff(row))
    assert rows["PID-5"].change == "removed" and rows["PID-3"].change == "replaced"
    assert not (Path(blob_dir) / "deid").exists()


@pytest.mark.django_db
def test_message_diff_reads_the_reports_stored_copy(blob_dir):
    raw = adt("DIFF-M1")
    row = _message(raw)
    stored = raw.decode().replace("Examplo^Berta^M", "STORED^COPY")
    key = blobs.put(stored.encode(), area="deid")
    ClinicalReport.objects.create(message=row, deid_blob_key=key, received_at=timezone.now())
    rows = by_path(message_diff(row))
    assert rows["PID-5"].change == "replaced" and rows["PID-5"].deid == "STORED^COPY"
    assert rows["PID-3"].change == "kept"


@pytest.mark.django_db
def test_report_diff_for_a_fhir_report(blob_dir):
    content = {
        "resourceType": "DiagnosticReport",
        "id": "rep-2",
        "status": "final",
        "subject": {"reference": "Patient/pat-2", "display": "Berta Examplo"},
    }
    resource = FhirResource.objects.create(
        resource_type="DiagnosticReport",
        rid="rep-2",
        version_id=1,
        last_updated=timezone.now(),
        content=content,
    )
    report = ClinicalReport.objects.create(resource=resource, resource_version=1, received_at=timezone.now())
    assert {r.change for r in report_diff(report)} == {"pending"}
    deid = resource_deidentify(content, DeidProfile())
    report.deid_blob_key = blobs.put(json.dumps(deid, sort_keys=True).encode(), area="deid")
    report.save(update_fields=["deid_blob_key"])
    rows = by_path(report_diff(report))
    assert rows["subject.display"].change == "removed" and rows["status"].change == "kept"
    assert rows["subject.reference"].change == "replaced"


def test_hl7_diff_of_a_report_whose_text_names_the_patient():
    raw = message(
        msh("DIFF-3", "ORU^R01^ORU_R01"),
        "PID|1||MRN-4411^^^HOSP^MR||Examplo^Berta^M||19610704|F",
        "OBX|1|TX|18782-3^Radiology Study observation^LN||Berta Examplo: lungs clear.||||||F",
    ).decode()
    deid = message_deidentify(raw, DeidProfile()).message
    rows = by_path(hl7_diff(raw, deid, limit=500))
    assert rows["OBX-5"].change == "replaced" and rows["OBX-5"].vr == "TX"
    assert "Examplo" in rows["OBX-5"].raw and "Examplo" not in rows["OBX-5"].deid
    assert rows["OBX-3"].change == "kept"
