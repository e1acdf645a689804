"""Which registered, enabled model gets which study, and which of its instances it reads.

A model's `accepts` record names modalities, body parts (BodyPartExamined) and description
keywords, and optionally SOP classes; a study matches when its modality is accepted and either its
body part or its study description names one of the accepted regions. The model reads one series:
the largest series of an accepted modality and SOP class (localizers and dose screens are small
series of their own). NLP models accept HL7 message types instead and read clinical reports."""

from __future__ import annotations

import re
from dataclasses import dataclass

from django.conf import settings

from fhirai.ingest.models import Instance, Study
from fhirai.routing.models import ModelRecord

# Never what an image model reads, whatever it accepts: localizers and scouts, dose reports and
# dose screens, and other non-image objects (SR, presentation states, key objects, documents).
LOCALIZER_TYPES = ("LOCALIZER", "SCOUT")
NON_IMAGE_SOP_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.88.",  # structured reports, RDSR among them
    "1.2.840.10008.5.1.4.1.1.11.",  # presentation states
    "1.2.840.10008.5.1.4.1.1.104.",  # encapsulated documents
    "1.2.840.10008.5.1.4.1.1.66",  # raw data, registrations, segmentations
    "1.2.840.10008.5.1.4.1.1.481.",  # RT objects
)
DOSE_SCREEN = re.compile(r"\bdose\b|\bdlp\b|\bctdi", re.IGNORECASE)

WITHHELD = "-"  # deid_blob_key of an instance de-identification withheld (burned-in text)


def study_is_qa(study: Study) -> bool:
    """A daily-QA or phantom study (FHIRAI_QA_PATTERNS on the patient's name or ID or the study
    description): clinical models never read it; models that accept {"qa": true} read only those."""
    text = f"{study.patient_name} {study.patient_id} {study.study_description}"
    return any(re.search(pattern, text, re.IGNORECASE) for pattern in settings.FHIRAI_QA_PATTERNS)


def study_models(study: Study) -> list[ModelRecord]:
    """The enabled image models that accept this study."""
    qa = study_is_qa(study)
    return [
        m
        for m in ModelRecord.objects.filter(enabled=True).exclude(task="nlp").order_by("name", "version")
        if bool((m.accepts or {}).get("qa")) == qa and model_accepts(m, study) and model_inputs(m, study)
    ]


def report_models(message_type: str) -> list[ModelRecord]:
    """The enabled NLP models that read reports carried by this message type: an accepted type
    matches exactly (ORU^R01) or by its message code alone (ORU); "DiagnosticReport" stands for
    reports written to /fhir/ or notified by an EHR's Subscription."""
    code = message_type.split("^")[0].upper()
    return [
        m
        for m in ModelRecord.objects.filter(enabled=True, task="nlp").order_by("name", "version")
        if any(t.upper() in (message_type.upper(), code) for t in (m.accepts or {}).get("message_types", []))
    ]


def model_accepts(model: ModelRecord, study: Study) -> bool:
    """The study's modality and body part (or description) are among those the model accepts."""
    accepts = model.accepts or {}
    modalities = {m.upper() for m in accepts.get("modalities", [])}
    if modalities and not modalities & {m.upper() for m in study.modalities.split(",") if m}:
        return False
    regions = [r.upper() for r in accepts.get("body_parts", [])]
    if not regions:
        return True
    text = f"{study.body_part} {study.study_description}".upper()
    return any(region in text for region in regions)


def _sop_accepted(model: ModelRecord, instance: Instance) -> bool:
    sop_classes = (model.accepts or {}).get("sop_classes", [])
    return not sop_classes or instance.sop_class_uid in sop_classes


def never_read(instance: Instance) -> str:
    """Why no image model reads this instance ("" when one may): a localizer or scout, a dose
    report or dose screen, or a non-image object."""
    types = {t.strip().upper() for t in instance.image_type.split("\\")}
    if types & set(LOCALIZER_TYPES):
        return "localizer"
    if instance.sop_class_uid.startswith(NON_IMAGE_SOP_PREFIXES):
        return "not an image"
    if DOSE_SCREEN.search(instance.series_description):
        return "dose report"
    return ""


@dataclass(frozen=True)
class Selection:
    """The series a model reads, and the series it leaves out with the reason for each."""

    inputs: list[Instance]
    dropped: dict[str, str]  # series UID -> why


def series_select(model: ModelRecord, study: Study) -> Selection:
    """The series the model reads: the largest series of de-identified instances that fit what it
    accepts (modality, SOP class, image type, plane, at least min_instances), localizers, scouts,
    dose reports and non-image objects left out and named."""
    accepts = model.accepts or {}
    modalities = {m.upper() for m in accepts.get("modalities", [])}
    image_types = {t.upper() for t in accepts.get("image_types", [])}
    planes = {p.lower() for p in accepts.get("planes", [])}
    minimum = int(accepts.get("min_instances", 1) or 1)
    by_series: dict[str, list[Instance]] = {}
    dropped: dict[str, str] = {}
    for i in study.instances.exclude(deid_blob_key__in=("", WITHHELD)).order_by("id"):
        why = never_read(i)
        if not why and modalities and i.modality.upper() not in modalities:
            why = f"modality {i.modality or '?'}"
        if not why and not _sop_accepted(model, i):
            why = "SOP class not accepted"
        if not why and image_types and not image_types <= {t.upper() for t in i.image_type.split("\\")}:
            why = "image type " + (i.image_type or "?")
        if not why and planes and i.plane not in planes:
            why = f"{i.plane or 'no'} plane"
        if why:
            dropped.setdefault(i.series_uid, why)
        else:
            by_series.setdefault(i.series_uid, []).append(i)
    for uid, members in list(by_series.items()):
        if len(members) < minimum:
            dropped[uid] = f"{len(members)} instance(s), fewer than {minimum}"
            del by_series[uid]
    if not by_series:
        return Selection([], dropped)
    chosen = max(by_series, key=lambda uid: (len(by_series[uid]), -by_series[uid][0].pk))
    for uid in by_series:
        if uid != chosen:
            dropped[uid] = "a smaller series"
    dropped.pop(chosen, None)
    return Selection(by_series[chosen], dropped)


def model_inputs(model: ModelRecord, study: Study) -> list[Instance]:
    """The de-identified instances of the series the model reads (see series_select)."""
    return series_select(model, study).inputs
