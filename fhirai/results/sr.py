"""An image-based AI result as a DICOM Structured Report, for PACS and viewers that read SR rather
than FHIR: a Measurement Report (PS3.16 TID 1500) in a Comprehensive 3D SR instance (PS3.3 A.35.13),
built with highdicom on the trusted side from the IDENTIFIED original instances, so the SR joins the
real study (same patient, study, accession) next to the images it describes.

Why Comprehensive 3D SR: it is the SOP class IHE AI Results (AIR) names for TID 1500 results and the
one highdicom's SR examples use, and it leaves room for SCOORD3D regions when a model returns them;
Enhanced SR could not hold those (today's content would fit in either).

Content tree (PS3.16):
- TID 1500 root "Imaging Measurement Report" (CID 7021), English (TID 1204);
- observer context (TID 1001/1002): the model as a DEVICE observer (TID 1004): UID derived from
  name + version, name = model title, manufacturer, model name, serial number "<name>-<version>" (the
  FHIR Device's identifier value, so the two outputs name the same device);
- procedure reported (CID 100): the model record's report_code codings, else the generic
  "<modality> unspecified body region" LOINC code CID 100 lists for the source's modality (CT, MR,
  XR, NM, PET), else SCT 363679005 "Imaging procedure";
- ONE measurement group (TID 1501) per result: tracking identifier = model name, tracking UID
  derived from study UID + model name + version (stable across revisions, so a viewer tracks the
  same result), algorithm identification (TID 4019: name, version, family DCM 123110 "Artificial
  Intelligence" from CID 7162, classifier decision thresholds as parameters), the images read (IMAGE
  items DCM 121112 "Source of Measurement"), and
    - quantification: one NUM (TID 300) per measurement, concept = the record's coding, unit = its
      UCUM code, value rounded to the record's decimals (as the FHIR Observation is);
    - classification: per label a qualitative evaluation (CODE, concept = the label's coding, value
      SCT 52101004 "Present" or SCT 272519000 "Absent", the pair DICOM CID 240/241 list; FHIR's
      Observation uses SNOMED 2667000 for the same qualifier) and the probability as a NUM with the
      same concept and UCUM unit "{probability}" (a UCUM annotation: dimension 1, as FHIR's "1", but
      a reader shows "Pneumothorax 0.93 probability" rather than a bare number), referencing the image
      it was seen on (SourceImageForMeasurement). Same concept name for CODE and NUM keeps the pair
      together in one group without a per-finding group or a post-coordinated modifier.
- TID 1500 row 12 "Qualitative Evaluations" (UMLS C0034375): the model's conclusion (TEXT, DCM 121077
  "Conclusion") and a note that this is an AI result no clinician has verified (TEXT, DCM 121106
  "Comment").

The document says the same in its header: Completion Flag PARTIAL, Verification Flag UNVERIFIED
(no verifying observer exists: software cannot be one), Preliminary Flag PRELIMINARY unless the
report status is final, and Series Description "<title> (AI, unverified)".

Series and SOP Instance UIDs are derived (2.25 UIDs from name-based UUIDs, PS3.5 B.2) from the study
UID, the model name and version, and, for the instance, the instance number (the study's revision):
building again gives the same object, so a resend replaces rather than duplicates it (DESIGN
invariant 2). The series holds every revision; the tracking UID stays the same across them.

Codes arrive as FHIR codings (system URI, code, display); DICOM wants Coding Scheme Designators
(PS3.16 Table 8-1). Known URIs map to SCT, LN, DCM, UCUM, RADLEX, NCIt; any other system (a
model's own, e.g. urn:fhirai:ct-lung-quant) gets a private designator "99..." (PS3.3 8.2: "99"
prefixes local schemes) derived from the URI, declared with the URI in the Coding Scheme
Identification Sequence so it stays resolvable.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from io import BytesIO
from typing import Any, Protocol

import highdicom as hd
from django.utils import timezone
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

__all__ = ["sr_build", "sr_bytes"]

# FHIR code system URIs -> DICOM Coding Scheme Designators (PS3.16 Table 8-1; the URIs are those
# HL7 THO registers for the same schemes).
DESIGNATORS = {
    "http://snomed.info/sct": "SCT",
    "http://loinc.org": "LN",
    "http://dicom.nema.org/resources/ontology/DCM": "DCM",
    "http://unitsofmeasure.org": "UCUM",
    "http://radlex.org": "RADLEX",
    "http://www.radlex.org": "RADLEX",
    "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl": "NCIt",
    "urn:oid:2.16.840.1.113883.6.96": "SCT",
    "urn:oid:2.16.840.1.113883.6.1": "LN",
    "urn:oid:1.2.840.10008.2.16.4": "DCM",
    "urn:oid:2.16.840.1.113883.6.8": "UCUM",
}
PRIVATE_PREFIX = "99FHIRAI"  # + 8 hex digits of the system URI's SHA-256: 16 characters (SH)

PRESENT = hd.sr.CodedConcept(value="52101004", scheme_designator="SCT", meaning="Present")
ABSENT = hd.sr.CodedConcept(value="272519000", scheme_designator="SCT", meaning="Absent")
PROBABILITY_UNIT = hd.sr.CodedConcept(value="{probability}", scheme_designator="UCUM", meaning="probability")
QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept(
    value="C0034375", scheme_designator="UMLS", meaning="Qualitative Evaluations"
)
UNIT_MEANINGS = {"1": "no units", "%": "Percent", "{probability}": "probability"}
# CID 100 "Quantitative Diagnostic Imaging Procedures": the generic entry per modality.
GENERIC_PROCEDURES = {
    "CT": codes.cid100.CTUnspecifiedBodyRegion,
    "MR": codes.cid100.MRIUnspecifiedBodyRegion,
    "CR": codes.cid100.XRUnspecifiedBodyRegion,
    "DX": codes.cid100.XRUnspecifiedBodyRegion,
    "NM": codes.cid100.NMUnspecifiedBodyRegion,
    "PT": codes.cid100.PETUnspecifiedBodyRegion,
}
IMAGE_TASKS = ("classification", "quantification")
STATUSES = ("preliminary", "final", "amended")
# Type 2 attributes highdicom reads from the first evidence dataset without a default.
TYPE2_HEADER = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)
# The same words as the FHIR report's note (fhirai.results.report.AI_NOTE, not imported: report.py
# is the likely caller of this module).
AI_NOTE = "AI-generated result, not yet reviewed by a clinician."
LO_MAX = 64
UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:fhirai:dicom-sr")
SEP = "\x1f"  # unit separator: no part of a UID's name can contain it, so names cannot run together

# highdicom logs, at INFO, the SOP Instance UID of the dataset it copies the patient from: an
# identifier of the identified study. Keep it to warnings unless LOGGING configures it explicitly.
if logging.getLogger("highdicom").level == logging.NOTSET:
    logging.getLogger("highdicom").setLevel(logging.WARNING)


class ModelLike(Protocol):
    """What the builder reads of a model record (fhirai.routing.models.ModelRecord or a Manifest)."""

    name: str
    version: str
    title: str
    task: str
    outputs: dict[str, Any]


def sr_build(
    *,
    source: Dataset,
    result: dict[str, Any],
    model: ModelLike,
    series_number: int = 990,
    instance_number: int = 1,
    manufacturer: str = "fhirai",
    status: str = "preliminary",
    instance_map: Mapping[str, Dataset] | None = None,
    evidence: Sequence[Dataset] = (),
    created: datetime | None = None,
    previous: Sequence[Dataset] = (),
) -> hd.sr.Comprehensive3DSR:
    """The result of an image model as a TID 1500 Measurement Report in a Comprehensive 3D SR.

    `source` is an identified instance of the study (patient and study modules are copied from it);
    `evidence` adds the other identified instances the model read (headers suffice), e.g. the whole
    CT series; `instance_map` maps the de-identified SOP Instance UID a finding names to the
    identified dataset it came from (a finding whose image is not in it is referenced to `source`).
    `instance_number` is the study's revision; `created` is the Content Date/Time (default now);
    `previous` are the SRs of the earlier revisions it replaces (PredecessorDocumentsSequence).
    Raises ValueError for a text (nlp) result, a result with nothing to report, a measurement the
    record does not declare, or an instance from another study.
    """
    if model.task not in IMAGE_TASKS or any(
        "probability" not in f or "present" not in f for f in result.get("findings", [])
    ):
        raise ValueError(
            f"model {model.name} {model.version} ({model.task}): DICOM SR carries image-based "
            "results (measurements, or findings with a probability), not findings read from text"
        )
    if status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}, not {status!r}")
    study_uid = str(source.StudyInstanceUID)
    mapped = dict(instance_map or {})
    images = _unique([source, *evidence, *mapped.values()])
    for ds in images:
        if str(ds.StudyInstanceUID) != study_uid:
            # Never let a result point into another study (the FHIR side refuses the same).
            raise ValueError(f"instance {ds.SOPInstanceUID} belongs to another study than the source")
    schemes: dict[str, CodingSchemeIdentificationItem] = {}
    texts: list[str] = [model.title, model.name, model.version, manufacturer]
    measurements, evaluations, parameters = _measurements(model, result, mapped, source, schemes, texts)
    if not measurements and not evaluations:
        raise ValueError(f"model {model.name} {model.version}: the result has nothing to report")
    algorithm = hd.sr.AlgorithmIdentification(
        name=model.name,
        version=model.version,
        family=codes.cid7162.ArtificialIntelligence,
        parameters=parameters or None,
    )
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=_uid("tracking", study_uid, model.name, model.version), identifier=model.name
        ),
        algorithm_id=algorithm,
        measurements=measurements or None,
        qualitative_evaluations=evaluations or None,
        source_images=[
            hd.sr.SourceImageForMeasurementGroup(str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in images
        ],
    )
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=_uid("device", model.name, model.version),
        name=model.title,
        manufacturer_name=manufacturer,
        model_name=model.name,
        serial_number=f"{model.name}-{model.version}",
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_device_context=hd.sr.ObserverContext(
                observer_type=codes.cid270.Device, observer_identifying_attributes=device
            )
        ),
        procedure_reported=_procedures(model, source, schemes, texts),
        imaging_measurements=[group],
    )
    conclusion = str(result.get("conclusion") or "").strip()
    texts.append(conclusion)
    report[0].ContentSequence.append(_qualitative_evaluations(model, conclusion))
    when = timezone.localtime(created) if created and timezone.is_aware(created) else created
    when = when or timezone.localtime()
    suffix = " (AI, unverified)"
    return hd.sr.Comprehensive3DSR(
        evidence=[_header(source), *images[1:]],
        content=report,
        series_instance_uid=_uid("series", study_uid, model.name, model.version),
        series_number=series_number,
        sop_instance_uid=_uid("instance", study_uid, model.name, model.version, str(instance_number)),
        instance_number=instance_number,
        manufacturer=manufacturer[:LO_MAX],
        is_complete=False,
        is_final=status != "preliminary",
        is_verified=False,
        series_description=model.title[: LO_MAX - len(suffix)] + suffix,
        manufacturer_model_name=model.name[:LO_MAX],
        software_versions=model.version[:LO_MAX],
        coding_schemes=list(schemes.values()) or None,
        content_date=when.date(),
        content_time=when.time().replace(microsecond=0),
        specific_character_set=_character_set(source, texts),
        previous_versions=list(previous) or None,
    )


def sr_bytes(ds: Dataset) -> bytes:
    """The SR as a DICOM Part 10 file (PS3.10: preamble, file meta), explicit VR little endian."""
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _measurements(
    model: ModelLike,
    result: dict[str, Any],
    mapped: dict[str, Dataset],
    source: Dataset,
    schemes: dict[str, CodingSchemeIdentificationItem],
    texts: list[str],
) -> tuple[list[hd.sr.Measurement], list[hd.sr.QualitativeEvaluation], list[str]]:
    """The group's NUMs and CODEs, and the algorithm parameters (classifier thresholds)."""
    outputs = model.outputs or {}
    specs = outputs.get("measurements", outputs)
    labels = {label.get("name"): label for label in outputs.get("labels", [])}
    measurements: list[hd.sr.Measurement] = []
    evaluations: list[hd.sr.QualitativeEvaluation] = []
    parameters: list[str] = []
    for item in result.get("measurements", []):
        name = str(item["name"])
        spec = specs.get(name)
        if not isinstance(spec, dict) or "coding" not in spec or "unit" not in spec:
            raise ValueError(f"model {model.name} returned {name!r}, which its record does not declare")
        value = round(float(item["value"]), int(spec.get("decimals", 2)))
        measurements.append(
            hd.sr.Measurement(
                name=_concept(spec["coding"], schemes, texts), value=value, unit=_unit(str(spec["unit"]))
            )
        )
    for finding in result.get("findings", []):
        name = str(finding["name"])
        coding = finding.get("coding") or labels.get(name, {}).get("coding")
        if not coding:
            raise ValueError(f"model {model.name} returned finding {name!r} without a coding")
        concept = _concept(coding, schemes, texts)
        evaluations.append(
            hd.sr.QualitativeEvaluation(name=concept, value=PRESENT if finding["present"] else ABSENT)
        )
        image = mapped.get(str(finding.get("instance", ""))) or source
        measurements.append(
            hd.sr.Measurement(
                name=concept,
                value=round(float(finding["probability"]), 4),
                unit=PROBABILITY_UNIT,
                referenced_images=[
                    hd.sr.SourceImageForMeasurement(str(image.SOPClassUID), str(image.SOPInstanceUID))
                ],
            )
        )
        threshold = finding.get("threshold", labels.get(name, {}).get("threshold"))
        if threshold is not None:
            parameters.append(f"{name} decision threshold {float(threshold):g}")
    texts.extend(parameters)
    return measurements, evaluations, parameters


def _procedures(
    model: ModelLike,
    source: Dataset,
    schemes: dict[str, CodingSchemeIdentificationItem],
    texts: list[str],
) -> list[hd.sr.CodedConcept]:
    """TID 1500 row 4: the record's report_code codings, else CID 100's generic code for the modality."""
    report_code = getattr(model, "report_code", None) or {}
    codings = [c for c in report_code.get("coding", []) if c.get("system") and c.get("code")]
    if codings:
        return [_concept(c, schemes, texts) for c in codings]
    code = GENERIC_PROCEDURES.get(str(source.get("Modality", "")), codes.cid100.ImagingProcedure)
    return [hd.sr.CodedConcept.from_code(code)]


def _qualitative_evaluations(model: ModelLike, conclusion: str) -> hd.sr.ContainerContentItem:
    """TID 1500 rows 12-14: the conclusion and the not-verified note, as TEXT items."""
    container = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    note = f"{AI_NOTE} Produced by {model.title} {model.version} (software, not a clinician)."
    items = [(codes.DCM.Conclusion, conclusion)] if conclusion else []
    items.append((codes.DCM.Comment, note))
    container.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.TextContentItem(
                name=name, value=value, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
            )
            for name, value in items
        ]
    )
    return container


def _concept(
    coding: Mapping[str, Any], schemes: dict[str, CodingSchemeIdentificationItem], texts: list[str]
) -> hd.sr.CodedConcept:
    """A FHIR coding as a DICOM coded concept (private systems declared in `schemes`)."""
    system, code = str(coding.get("system", "")), str(coding.get("code", ""))
    if not system or not code:
        raise ValueError("a coding needs system and code")
    meaning = str(coding.get("display") or code)[:LO_MAX]
    texts.append(meaning)
    designator = DESIGNATORS.get(system)
    if designator is None:
        designator = PRIVATE_PREFIX + hashlib.sha256(system.encode()).hexdigest()[:8].upper()
        schemes.setdefault(
            designator,
            CodingSchemeIdentificationItem(designator=designator, name=system[:LO_MAX]),
        )
    return hd.sr.CodedConcept(value=code, scheme_designator=designator, meaning=meaning)


def _unit(unit: str) -> hd.sr.CodedConcept:
    """A UCUM unit (the record's units are UCUM codes, as on the FHIR Observation)."""
    return hd.sr.CodedConcept(value=unit, scheme_designator="UCUM", meaning=UNIT_MEANINGS.get(unit, unit))


def _uid(kind: str, *parts: str) -> str:
    """A UUID-derived UID (PS3.5 B.2) from a name-based UUID (RFC 4122 version 5) of `parts`: the
    same inputs always give the same UID. (pydicom's generate_uid ignores entropy_srcs when prefix
    is None, returning a random UUID, and joins the sources without a separator otherwise.)"""
    return f"2.25.{uuid.uuid5(UID_NAMESPACE, SEP.join([kind, *parts])).int}"


def _header(source: Dataset) -> Dataset:
    """The source without pixel data, with the Type 2 attributes highdicom reads present (empty when
    the source lacks them) and Patient's Sex blank unless an enumerated value (PS3.3 C.7.1.1)."""
    # Copies of the elements: setting a value below must not change the caller's dataset.
    header = Dataset({elem.tag: copy.copy(elem) for elem in source if elem.tag < 0x7FE00010})
    for keyword in TYPE2_HEADER:
        if keyword not in header:
            setattr(header, keyword, "")
    sex = str(header.PatientSex or "").strip().upper()
    header.PatientSex = sex if sex in ("M", "F", "O") else ""
    return header


def _character_set(source: Dataset, texts: Iterable[str]) -> str | list[str] | None:
    """Keep the source's character set unless our own text needs more; then UTF-8 (ISO_IR 192),
    which also holds every copied patient value (pydicom has decoded them)."""
    if all(text.isascii() for text in texts):
        value = source.get("SpecificCharacterSet")
        return None if value is None else (list(value) if not isinstance(value, str) else value)
    return "ISO_IR 192"


def _unique(datasets: Iterable[Dataset]) -> list[Dataset]:
    seen: set[str] = set()
    out = []
    for ds in datasets:
        uid = str(ds.SOPInstanceUID)
        if uid not in seen:
            seen.add(uid)
            out.append(ds)
    return out
