"""DICOM SR (TID 1500) output: built from identified instances, read back with pydicom, highdicom's
reading side and dcmtk's dsrdump (the outside peer). No database: the model record is a plain object."""

from __future__ import annotations

import copy
import logging
import shutil
import subprocess
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import (
    Comprehensive3DSRStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)

from fhirai.results.sr import sr_build, sr_bytes
from tests.support.phantom import ct_phantom

CT_CODES = "urn:fhirai:ct-lung-quant"
MEASUREMENTS = {
    "lung_volume": {
        "coding": {"system": CT_CODES, "code": "lung-volume", "display": "Total lung volume"},
        "unit": "mL",
        "decimals": 1,
    },
    "laa950": {
        "coding": {"system": CT_CODES, "code": "laa-950", "display": "Lung volume below -950 HU (%LAA-950)"},
        "unit": "%",
        "decimals": 2,
    },
}
PNEUMOTHORAX = {"system": "http://snomed.info/sct", "code": "36118008", "display": "Pneumothorax"}
EFFUSION = {"system": "http://snomed.info/sct", "code": "60046008", "display": "Pleural effusion"}
PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyInstanceUID",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


def ct_model(outputs: dict[str, Any] | None = None) -> SimpleNamespace:
    """The CT lung record as migration 0002 registers it (outputs = the measurement mapping)."""
    return SimpleNamespace(
        name="ct-lung-quant",
        version="1.0.0",
        title="CT lung quantification",
        task="quantification",
        outputs=MEASUREMENTS if outputs is None else outputs,
        report_code={
            "coding": [{"system": "http://loinc.org", "code": "24627-2", "display": "CT Chest"}],
            "text": "CT lung quantification (AI)",
        },
    )


def cxr_model() -> SimpleNamespace:
    """A chest radiograph classifier with the full manifest outputs and no report code."""
    return SimpleNamespace(
        name="cxr-densenet121",
        version="1.0.0",
        title="Chest radiograph findings (DenseNet-121)",
        task="classification",
        outputs={
            "activation": "sigmoid",
            "labels": [
                {"name": "pneumothorax", "threshold": 0.5, "coding": PNEUMOTHORAX},
                {"name": "effusion", "threshold": 0.4, "coding": EFFUSION},
            ],
        },
        report_code={},
    )


def dx_images(count: int = 2) -> list[Dataset]:
    """Identified DX instances of one study (Latin-1 patient name), read back from Part 10 bytes."""
    study_uid, series_uid = generate_uid(), generate_uid()
    images = []
    for k in range(count):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID, ds.SOPInstanceUID = DigitalXRayImageStorageForPresentation, generate_uid()
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = (
            "Größe^Jörg",
            "MRN-4411",
            "19600229",
            "M",
        )
        ds.AccessionNumber, ds.StudyID, ds.StudyDate, ds.StudyTime = "ACC-9001", "77", "20260316", "101500"
        ds.ReferringPhysicianName = "Referrer^Rita"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "DX", 1, k + 1
        ds.PatientOrientation = ["P", "F"] if k == 0 else ["L", "F"]
        ds.ImagerPixelSpacing = [0.2, 0.2]
        ds.Rows = ds.Columns = 8
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = np.arange(64, dtype=np.uint16).tobytes()
        out = BytesIO()
        ds.save_as(out, enforce_file_format=True)
        images.append(pydicom.dcmread(BytesIO(out.getvalue())))
    return images


@pytest.fixture(scope="module")
def ct_images() -> list[Dataset]:
    return [pydicom.dcmread(BytesIO(raw)) for raw in ct_phantom(slices=8, size=32).files]


def quant_result() -> dict[str, Any]:
    return {
        "measurements": [{"name": "lung_volume", "value": 4321.456}, {"name": "laa950", "value": 12.3456}],
        "conclusion": "Lung volume 4321.5 mL; %LAA-950 12.35.",
    }


def cxr_result(pneumothorax_uid: str, effusion_uid: str) -> dict[str, Any]:
    return {
        "findings": [
            {
                "name": "pneumothorax",
                "coding": PNEUMOTHORAX,
                "probability": 0.93127,
                "threshold": 0.5,
                "present": True,
                "instance": pneumothorax_uid,
            },
            {
                "name": "effusion",
                "coding": EFFUSION,
                "probability": 0.12,
                "threshold": 0.4,
                "present": False,
                "instance": effusion_uid,
            },
        ],
        "conclusion": "Pneumothorax suspected.",
    }


def round_trip(sr: Dataset) -> tuple[bytes, Dataset, hd.sr.Comprehensive3DSR]:
    data = sr_bytes(sr)
    ds = pydicom.dcmread(BytesIO(data))
    return data, ds, hd.sr.Comprehensive3DSR.from_dataset(ds)


def only_group(doc: hd.sr.Comprehensive3DSR, tracking_uid: str | None = None) -> Any:
    groups = doc.content.get_image_measurement_groups(tracking_uid=tracking_uid)
    assert len(groups) == 1
    return groups[0]


def texts(item: Dataset, concept: tuple[str, str]) -> list[str]:
    """TEXT values under `item` (recursively) whose concept name is (code, designator)."""
    name = hd.sr.CodedConcept(value=concept[0], scheme_designator=concept[1], meaning="")
    return [
        i.TextValue
        for i in hd.sr.utils.find_content_items(item, name=name, value_type="TEXT", recursive=True)
    ]


def dsrdump(data: bytes, tmp_path: Path) -> str | None:
    """dcmtk's reading of the bytes (None when dcmtk is not installed)."""
    if shutil.which("dsrdump") is None:
        return None
    path = tmp_path / "sr.dcm"
    path.write_bytes(data)
    run = subprocess.run(
        ["dsrdump", "+Pc", "+Pt", "+Pl", "+U8", str(path)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    # No warnings about the encoding or the content tree (dcmtk 3.6.7's VR checker says it cannot
    # check UTF-8 strings: that one is about dcmtk, not the file).
    warnings = [line for line in run.stderr.splitlines() if "VR checker does not support" not in line]
    assert warnings == [], run.stderr
    return run.stdout


def test_quantification_sr_is_a_tid1500_report_on_the_identified_study(ct_images, tmp_path):
    source, rest = ct_images[0], ct_images[1:]
    data, ds, doc = round_trip(
        sr_build(source=source, evidence=rest, result=quant_result(), model=ct_model())
    )

    assert ds.SOPClassUID == Comprehensive3DSRStorage and ds.Modality == "SR"
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian and data[128:132] == b"DICM"
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert ds.ContentTemplateSequence[0].MappingResource == "DCMR"
    assert (
        ds.ConceptNameCodeSequence[0].CodeValue,
        ds.ConceptNameCodeSequence[0].CodingSchemeDesignator,
    ) == (
        "126000",
        "DCM",
    )
    for keyword in PATIENT_STUDY:
        assert ds[keyword].value == source[keyword].value, keyword
    assert ds.PatientName == "Testperson^Alma^Q" and ds.AccessionNumber == "ACC-55501"
    assert "PixelData" not in ds
    # AI, not verified: said in the header flags, the series description and the content.
    assert (ds.CompletionFlag, ds.VerificationFlag, ds.PreliminaryFlag) == (
        "PARTIAL",
        "UNVERIFIED",
        "PRELIMINARY",
    )
    assert "VerifyingObserverSequence" not in ds
    assert ds.SeriesDescription == "CT lung quantification (AI, unverified)"
    assert (ds.Manufacturer, ds.ManufacturerModelName, ds.SoftwareVersions) == (
        "fhirai",
        "ct-lung-quant",
        "1.0.0",
    )
    assert (ds.SeriesNumber, ds.InstanceNumber) == (990, 1)
    assert any("not yet reviewed by a clinician" in t for t in texts(ds, ("121106", "DCM")))
    assert texts(ds, ("121077", "DCM")) == ["Lung volume 4321.5 mL; %LAA-950 12.35."]

    # Every instance read is evidence of the current procedure, in its own series.
    evidence = ds.CurrentRequestedProcedureEvidenceSequence
    assert len(evidence) == 1 and evidence[0].StudyInstanceUID == source.StudyInstanceUID
    series = evidence[0].ReferencedSeriesSequence
    assert len(series) == 1 and series[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in series[0].ReferencedSOPSequence} == {
        i.SOPInstanceUID for i in ct_images
    }

    procedures = [
        i.ConceptCodeSequence[0]
        for i in ds.ContentSequence
        if i.ConceptNameCodeSequence[0].CodeValue == "121058"  # Procedure reported
    ]
    assert [(p.CodeValue, p.CodingSchemeDesignator) for p in procedures] == [("24627-2", "LN")]

    group = only_group(doc)
    assert group.tracking_identifier == "ct-lung-quant"
    got = {m.name.value: m for m in group.get_measurements()}
    assert set(got) == {"lung-volume", "laa-950"}
    assert got["lung-volume"].value == 4321.5 and got["laa-950"].value == 12.35  # the record's decimals
    assert (got["lung-volume"].unit.value, got["lung-volume"].unit.scheme_designator) == ("mL", "UCUM")
    assert (got["laa-950"].unit.value, got["laa-950"].unit.scheme_designator) == ("%", "UCUM")
    assert got["lung-volume"].name.meaning == "Total lung volume"
    # The model's own code system: a private ("99") designator, declared with its URI.
    designator = got["lung-volume"].name.scheme_designator
    assert designator.startswith("99") and len(designator) <= 16
    declared = {s.CodingSchemeDesignator: s for s in ds.CodingSchemeIdentificationSequence}
    assert declared[designator].CodingSchemeName == CT_CODES
    assert {s.referenced_sop_instance_uid for s in group.source_images} == {
        i.SOPInstanceUID for i in ct_images
    }

    observers = doc.content.get_observer_contexts(observer_type=codes.cid270.Device)
    assert len(observers) == 1
    device = observers[0].observer_identifying_attributes
    assert device.name == "CT lung quantification" and device.manufacturer_name == "fhirai"
    assert device.model_name == "ct-lung-quant" and device.serial_number == "ct-lung-quant-1.0.0"
    # The device is the model, whatever study it read: its UID comes from name and version alone.
    elsewhere = copy.deepcopy(source)
    elsewhere.StudyInstanceUID = generate_uid()
    other_study = sr_build(source=elsewhere, result=quant_result(), model=ct_model())
    other_device = hd.sr.Comprehensive3DSR.from_dataset(other_study).content.get_observer_contexts()[0]
    assert other_device.observer_identifying_attributes.uid == device.uid
    assert texts(group[0], ("111001", "DCM")) == ["ct-lung-quant"]  # TID 4019 Algorithm Name
    assert texts(group[0], ("111003", "DCM")) == ["1.0.0"]  # Algorithm Version
    family = hd.sr.utils.find_content_items(group[0], name=codes.DCM.AlgorithmFamily, value_type="CODE")
    assert family[0].value == codes.cid7162.ArtificialIntelligence

    dump = dsrdump(data, tmp_path)
    if dump is not None:
        assert "# TID 1500 (DCMR)" in dump and "# TID 1501 (DCMR)" in dump
        assert '"Total lung volume")="4321.5" (mL,UCUM' in dump
        assert '"Lung volume below -950 HU (%LAA-950)")="12.35" (%,UCUM' in dump
        assert '(121007,DCM,"Device")' in dump and "Verification Flag   : UNVERIFIED" in dump


def test_rebuilding_gives_the_same_uids_and_a_new_revision_a_new_instance_in_the_same_series(ct_images):
    def build(**kwargs: Any) -> Dataset:
        return sr_build(source=ct_images[0], result=quant_result(), model=ct_model(), **kwargs)

    first, again, revised = build(), build(), build(instance_number=2)
    assert first.SOPInstanceUID == again.SOPInstanceUID
    assert first.SeriesInstanceUID == again.SeriesInstanceUID == revised.SeriesInstanceUID
    assert revised.SOPInstanceUID != first.SOPInstanceUID and revised.InstanceNumber == 2
    assert (
        only_group(hd.sr.Comprehensive3DSR.from_dataset(revised)).tracking_uid
        == only_group(hd.sr.Comprehensive3DSR.from_dataset(first)).tracking_uid
    )
    other_version = sr_build(
        source=ct_images[0],
        result=quant_result(),
        model=SimpleNamespace(**{**vars(ct_model()), "version": "1.1.0"}),
    )
    assert other_version.SeriesInstanceUID != first.SeriesInstanceUID
    assert first.SOPInstanceUID.startswith("2.25.")


def test_full_manifest_outputs_give_the_same_measurements_as_the_legacy_mapping(ct_images):
    legacy = sr_build(source=ct_images[0], result=quant_result(), model=ct_model())
    manifest = sr_build(
        source=ct_images[0], result=quant_result(), model=ct_model({"measurements": MEASUREMENTS})
    )

    def values(sr: Dataset) -> dict[str, tuple[float, str]]:
        group = only_group(hd.sr.Comprehensive3DSR.from_dataset(sr))
        return {m.name.value: (m.value, m.unit.value) for m in group.get_measurements()}

    assert values(legacy) == values(manifest) == {"lung-volume": (4321.5, "mL"), "laa-950": (12.35, "%")}


def test_classification_sr_has_present_absent_and_probabilities_on_their_images(tmp_path):
    source, lateral = dx_images()
    # The findings name de-identified SOP UIDs; the map leads back to the identified images.
    deid_pa, deid_lateral, deid_unknown = generate_uid(), generate_uid(), generate_uid()
    result = cxr_result(deid_lateral, deid_unknown)
    sr = sr_build(
        source=source,
        result=result,
        model=cxr_model(),
        instance_map={deid_pa: source, deid_lateral: lateral},
        status="final",
    )
    data, ds, doc = round_trip(sr)

    for keyword in PATIENT_STUDY:
        assert ds[keyword].value == source[keyword].value, keyword
    assert ds.PatientName == "Größe^Jörg" and ds.SpecificCharacterSet == "ISO_IR 100"
    # Final per the site's policy, yet never verified: no clinician signed it.
    assert (ds.PreliminaryFlag, ds.VerificationFlag, ds.CompletionFlag) == ("FINAL", "UNVERIFIED", "PARTIAL")
    procedures = [i for i in ds.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "121058"]
    assert procedures[0].ConceptCodeSequence[0].CodeValue == "43468-8"  # XR unspecified body region

    group = only_group(doc)
    assert group.tracking_identifier == "cxr-densenet121"
    evaluations = {e.name.value: e.value for e in group.get_qualitative_evaluations()}
    assert evaluations["36118008"] == hd.sr.CodedConcept("52101004", "SCT", "Present")
    assert evaluations["60046008"] == hd.sr.CodedConcept("272519000", "SCT", "Absent")
    probabilities = {m.name.value: m for m in group.get_measurements()}
    assert probabilities["36118008"].value == pytest.approx(0.9313)
    assert probabilities["60046008"].value == pytest.approx(0.12)
    assert probabilities["36118008"].unit.value == "{probability}"
    assert probabilities["36118008"].name.scheme_designator == "SCT"
    # Each probability points at the image it was seen on; an unmapped one at the source.
    refs = {k: [r.referenced_sop_instance_uid for r in m.referenced_images] for k, m in probabilities.items()}
    assert refs == {"36118008": [lateral.SOPInstanceUID], "60046008": [source.SOPInstanceUID]}
    evidence_uids = {
        i.ReferencedSOPInstanceUID
        for s in ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
        for i in s.ReferencedSOPSequence
    }
    assert evidence_uids == {source.SOPInstanceUID, lateral.SOPInstanceUID}
    assert texts(group[0], ("111002", "DCM")) == [  # TID 4019 Algorithm Parameters
        "pneumothorax decision threshold 0.5",
        "effusion decision threshold 0.4",
    ]
    assert texts(group[0], ("111001", "DCM")) == ["cxr-densenet121"]
    assert texts(ds, ("121077", "DCM")) == ["Pneumothorax suspected."]

    dump = dsrdump(data, tmp_path)
    if dump is not None:
        assert '(36118008,SCT,"Pneumothorax")=(52101004,SCT,"Present")' in dump
        assert '(60046008,SCT,"Pleural effusion")=(272519000,SCT,"Absent")' in dump
        assert '(36118008,SCT,"Pneumothorax")="0.9313" ({probability},UCUM,"probability")' in dump
        assert "Größe^Jörg" in dump


def test_non_ascii_model_text_switches_the_sr_to_utf8_and_keeps_the_patient_name(tmp_path):
    source = dx_images(1)[0]
    model = SimpleNamespace(**{**vars(cxr_model()), "title": "Thorax-Befund (Röntgen → KI)"})
    data, ds, _ = round_trip(sr_build(source=source, result=cxr_result("", ""), model=model))
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert ds.PatientName == "Größe^Jörg"
    assert ds.SeriesDescription == "Thorax-Befund (Röntgen → KI) (AI, unverified)"
    dump = dsrdump(data, tmp_path)
    if dump is not None:
        assert "Röntgen → KI" in dump


def test_text_results_and_bad_inputs_are_refused(ct_images):
    source = dx_images(1)[0]
    nlp = SimpleNamespace(
        name="chest-report-findings", version="1.0.0", title="Chest report findings", task="nlp", outputs={}
    )
    nlp_result = {
        "findings": [
            {
                "name": "pneumothorax",
                "coding": PNEUMOTHORAX,
                "present": True,
                "status": "affirmed",
                "mentions": [],
            }
        ]
    }
    with pytest.raises(ValueError, match="image-based"):
        sr_build(source=source, result=nlp_result, model=nlp)
    # The same finding shape under an image model's name is refused too: it has no probability.
    with pytest.raises(ValueError, match="image-based"):
        sr_build(source=source, result=nlp_result, model=cxr_model())
    with pytest.raises(ValueError, match="does not declare"):
        sr_build(
            source=ct_images[0],
            result={"measurements": [{"name": "emphysema", "value": 1}]},
            model=ct_model(),
        )
    with pytest.raises(ValueError, match="nothing to report"):
        sr_build(source=ct_images[0], result={"measurements": []}, model=ct_model())
    with pytest.raises(ValueError, match="another study"):
        sr_build(
            source=source,
            result=cxr_result("x", "y"),
            model=cxr_model(),
            instance_map={"x": ct_images[0]},
        )
    with pytest.raises(ValueError, match="status"):
        sr_build(source=ct_images[0], result=quant_result(), model=ct_model(), status="draft")


def test_building_logs_no_identifiers_and_leaves_the_source_unchanged(caplog):
    source = dx_images(1)[0]
    source.PatientSex = "U"  # not an enumerated value (M, F, O): blank in the SR, untouched in the source
    del source.StudyID  # Type 2 attributes may be absent on real instances
    before = pydicom.dcmread(BytesIO(_bytes(source)))
    caplog.set_level(logging.DEBUG)
    sr = sr_build(source=source, result=cxr_result("", ""), model=cxr_model())
    for value in (source.SOPInstanceUID, source.StudyInstanceUID, source.PatientID, "Größe", "ACC-9001"):
        assert value not in caplog.text
    assert sr.PatientSex == "" and sr.StudyID == ""
    assert source.PatientSex == "U" and "StudyID" not in source
    assert _bytes(source) == _bytes(before)


def _bytes(ds: Dataset) -> bytes:
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
